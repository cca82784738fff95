//! A shard's snapshot: every record of its entities, read as of one applied
//! position, for a replica that is missing log entries the others have
//! purged.
//!
//! Every replica already holds the shard's state, in its entity column
//! families, so Tidings keeps no separate copy of it. Building a snapshot
//! only notes how far the shard has applied, which lets Raft purge the log
//! before that point (all but its last entries, see `RaftSettings`). The
//! records are read only when a replica needs them, all at one moment, with
//! the applied position and membership stored with them in the same write,
//! so a [`ShardDump`] always describes exactly one point of the log.

use openraft::{BasicNode, LogId, StoredMembership};
use serde::{Deserialize, Serialize};

use crate::storage::{keys, Cf, Storage, StorageError, Write, WriteSet};

/// One shard's state as of `applied`.
#[derive(Debug, Serialize, Deserialize)]
pub struct ShardDump {
    pub applied: Option<LogId<u64>>,
    pub membership: StoredMembership<u64, BasicNode>,
    /// Every record of the shard's entities, as puts.
    pub records: WriteSet,
}

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("a snapshot of shard {shard} holds a write outside it: {write}")]
    Foreign { shard: u16, write: String },
    #[error("a snapshot of shard {0} has no applied position")]
    Unplaced(u16),
    #[error("a snapshot of shard {shard} was sent as of {meta} but holds {dump}")]
    Mismatch {
        shard: u16,
        meta: String,
        dump: String,
    },
}

/// Where a shard keeps its applied position and membership.
pub struct Positions {
    pub applied: Vec<u8>,
    pub membership: Vec<u8>,
}

/// Reads `shard`'s records, applied position and membership as of one
/// moment. Scans every entity family: it runs only when a replica is
/// too far behind for the log.
pub fn read(storage: &Storage, shard: u16, at: &Positions) -> Result<ShardDump, SnapshotError> {
    storage.read_at_once(|view| {
        let mut records = WriteSet::default();
        for cf in Cf::ENTITIES {
            view.for_each_raw(cf, |key, value| {
                if keys::shard_of_key(key) == Some(shard) {
                    records.writes.push(Write::Put {
                        cf,
                        key: key.to_vec(),
                        value: value.to_vec(),
                    });
                }
                Ok::<_, StorageError>(())
            })?;
        }
        Ok(ShardDump {
            applied: view.get(Cf::RaftState, &at.applied)?,
            membership: view.get(Cf::RaftState, &at.membership)?.unwrap_or_default(),
            records,
        })
    })
}

/// The writes that make this replica's `shard` what `dump` describes: every
/// record of the shard it holds now is deleted, then the dump's are put,
/// with its applied position and membership. One write set, so a crash
/// leaves either the old state or the new one.
pub fn install(
    storage: &Storage,
    shard: u16,
    dump: ShardDump,
    at: &Positions,
) -> Result<WriteSet, SnapshotError> {
    let applied = dump.applied.ok_or(SnapshotError::Unplaced(shard))?;
    let mut writes = WriteSet::default();
    for cf in Cf::ENTITIES {
        storage.for_each_raw(cf, |key, _| {
            if keys::shard_of_key(key) == Some(shard) {
                writes.delete(cf, key.to_vec());
            }
            Ok::<_, StorageError>(())
        })?;
    }
    for write in dump.records.writes {
        match write {
            Write::Put { cf, ref key, .. }
                if Cf::ENTITIES.contains(&cf) && keys::shard_of_key(&key) == Some(shard) =>
            {
                writes.writes.push(write)
            }
            other => {
                return Err(SnapshotError::Foreign {
                    shard,
                    write: format!("{other:?}"),
                })
            }
        }
    }
    writes
        .put(Cf::RaftState, at.applied.clone(), &applied)
        .map_err(StorageError::from)?;
    writes
        .put(Cf::RaftState, at.membership.clone(), &dump.membership)
        .map_err(StorageError::from)?;
    Ok(writes)
}
