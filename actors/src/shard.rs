//! Shards: every entity belongs to one of a fixed number of shards, by a
//! stable hash of its id. A shard is the unit that replication and placement
//! work on; on a single node every shard is local.

/// Shards per cluster. Fixed: changing it moves every entity.
pub const SHARDS: u16 = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ShardId(pub u16);

/// The shard of an entity id (a user id or a conversation id).
pub fn shard_of(entity: &str) -> ShardId {
    let hash = xxhash_rust::xxh3::xxh3_64(entity.as_bytes());
    ShardId((hash % u64::from(SHARDS)) as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_are_stable_and_spread() {
        assert_eq!(shard_of("alice"), shard_of("alice"));
        let mut seen = std::collections::HashSet::new();
        for i in 0..1000 {
            let s = shard_of(&format!("user{i}"));
            assert!(s.0 < SHARDS);
            seen.insert(s);
        }
        assert_eq!(seen.len(), SHARDS as usize, "1000 ids cover every shard");
    }
}
