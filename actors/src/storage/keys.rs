//! Key layout: the one module that builds storage keys.
//!
//! An entity's keys start with its id prefixed by the id's length, so no id
//! is a prefix of another's keys, and each entity's records are contiguous.
//! Versions follow as big-endian `u64`, so byte order is version order and a
//! log reads with one range scan.

/// `[len][id]`: the prefix of every key of one entity.
pub fn entity(id: &str) -> Vec<u8> {
    let bytes = id.as_bytes();
    debug_assert!(bytes.len() <= u8::MAX as usize, "ids are at most 255 bytes");
    let mut key = Vec::with_capacity(1 + bytes.len() + 8);
    key.push(bytes.len() as u8);
    key.extend_from_slice(bytes);
    key
}

/// `[len][id][version be]`: one record of an entity's log.
pub fn versioned(id: &str, version: u64) -> Vec<u8> {
    let mut key = entity(id);
    key.extend_from_slice(&version.to_be_bytes());
    key
}

/// `[len][id][name]`: a named record of an entity (a cmid, a member).
pub fn named(id: &str, name: &str) -> Vec<u8> {
    let mut key = entity(id);
    key.extend_from_slice(name.as_bytes());
    key
}

/// `[len][user]blocked`: a user's
/// [`BlockList`](super::records::BlockList), in the user meta family beside
/// the user's meta (whose key is the bare entity prefix).
pub fn block_list(user: &str) -> Vec<u8> {
    named(user, "blocked")
}

/// `[0][shard be][conv]`: a conversation's
/// [`IndexOutbox`](super::records::IndexOutbox), in the conversation meta
/// family. No entity key starts with 0 (ids are not empty), and a shard's
/// outboxes are contiguous, so a new leader finds them with one scan.
pub fn index_outbox(shard: u16, conv: &str) -> Vec<u8> {
    let mut key = outboxes(shard);
    key.extend_from_slice(conv.as_bytes());
    key
}

/// `[0][shard be]`: the prefix of a shard's outboxes.
pub fn outboxes(shard: u16) -> Vec<u8> {
    let mut key = vec![0];
    key.extend_from_slice(&shard.to_be_bytes());
    key
}

/// `[0][group be]record`: the one record of a Raft group that holds no
/// entities (the cluster's metadata group, numbered past the shards), in
/// the conversation meta family under the form outboxes use. It is in
/// the group's key range, so the group's snapshot carries it.
pub fn group_record(group: u16) -> Vec<u8> {
    let mut key = outboxes(group);
    key.extend_from_slice(b"record");
    key
}

/// `[shard be][index be]`: one entry of a shard's Raft log.
pub fn raft_entry(shard: u16, index: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(10);
    key.extend_from_slice(&shard.to_be_bytes());
    key.extend_from_slice(&index.to_be_bytes());
    key
}

/// `[shard be][tag]`: one of a shard's Raft records (vote, applied, …).
pub fn raft_state(shard: u16, tag: u8) -> Vec<u8> {
    let mut key = shard.to_be_bytes().to_vec();
    key.push(tag);
    key
}

/// The cluster's node names, as the shard groups were formed with: a
/// record of the `raft_state` family outside every shard's range.
pub fn cluster_nodes() -> Vec<u8> {
    raft_state(u16::MAX, b'n')
}

/// The shard a key of an entity family belongs to: its entity's, or for
/// an outbox the shard in the key. `None` for a key of no known form.
pub fn shard_of_key(key: &[u8]) -> Option<u16> {
    match key {
        [0, hi, lo, ..] => Some(u16::from_be_bytes([*hi, *lo])),
        [0, ..] => None,
        [len, rest @ ..] => {
            let id = std::str::from_utf8(rest.get(..usize::from(*len))?).ok()?;
            Some(crate::shard::shard_of(id).0)
        }
        [] => None,
    }
}

/// The version at the end of a `versioned` key.
pub fn version_of(key: &[u8]) -> Option<u64> {
    let tail: [u8; 8] = key.get(key.len().checked_sub(8)?..)?.try_into().ok()?;
    Some(u64::from_be_bytes(tail))
}

/// The name at the end of a `named` key with this entity prefix.
pub fn name_of<'k>(prefix: &[u8], key: &'k [u8]) -> Option<&'k str> {
    std::str::from_utf8(key.strip_prefix(prefix)?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_sort_numerically_within_an_entity() {
        let mut keys: Vec<_> = [1u64, 256, 2, 65_536, 255]
            .iter()
            .map(|&v| versioned("c", v))
            .collect();
        keys.sort();
        let order: Vec<_> = keys.iter().map(|k| version_of(k).unwrap()).collect();
        assert_eq!(order, [1, 2, 255, 256, 65_536]);
    }

    #[test]
    fn no_entity_is_a_prefix_of_another() {
        let short = entity("ab");
        assert!(!versioned("abc", 1).starts_with(&short));
        assert!(!named("abc", "x").starts_with(&short));
        assert!(versioned("ab", u64::MAX).starts_with(&short));
    }

    #[test]
    fn every_key_of_an_entity_is_in_its_shard() {
        let shard = crate::shard::shard_of("g:1").0;
        for key in [
            entity("g:1"),
            versioned("g:1", 7),
            named("g:1", "cmid-1"),
            index_outbox(shard, "g:1"),
            block_list("g:1"),
        ] {
            assert_eq!(shard_of_key(&key), Some(shard), "{key:?}");
        }
        assert_eq!(shard_of_key(&index_outbox(5, "g:1")), Some(5));
        assert_eq!(shard_of_key(&[9, b'x']), None, "an id cut short");
        assert_eq!(shard_of_key(&[]), None);
    }

    #[test]
    fn a_block_list_is_apart_from_every_users_meta() {
        assert_ne!(block_list("al"), entity("al"));
        assert_ne!(block_list("al"), entity("alblocked"));
        assert!(block_list("al").starts_with(&entity("al")));
    }

    #[test]
    fn names_come_back_out() {
        let prefix = entity("alice");
        assert_eq!(name_of(&prefix, &named("alice", "g:1")), Some("g:1"));
        assert_eq!(name_of(&prefix, &named("bob", "g:1")), None);
    }
}
