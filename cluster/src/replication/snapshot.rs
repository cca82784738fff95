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

use tidings_actors::storage::{keys, Cf, Storage, StorageError, View, Write, WriteSet};

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

/// How far a shard's state machine has applied, and its membership then.
pub type Applied = (Option<LogId<u64>>, StoredMembership<u64, BasicNode>);

impl Positions {
    /// The applied position and membership as of `view`.
    pub fn read(&self, view: &View<'_>) -> Result<Applied, StorageError> {
        Ok((
            view.get(Cf::RaftState, &self.applied)?,
            view.get(Cf::RaftState, &self.membership)?
                .unwrap_or_default(),
        ))
    }
}

/// Reads `shard`'s records, applied position and membership as of one
/// moment. Scans every entity family: it runs only when a replica is
/// too far behind for the log.
pub fn read(storage: &Storage, shard: u16, at: &Positions) -> Result<ShardDump, SnapshotError> {
    storage.read_at_once(|view| {
        let mut records = WriteSet::default();
        view.for_each_in_shard(shard, |cf, key, value| {
            records.writes.push(Write::Put {
                cf,
                key: key.to_vec(),
                value: value.to_vec(),
            });
        })?;
        let (applied, membership) = at.read(view)?;
        Ok(ShardDump {
            applied,
            membership,
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
    storage.read_at_once(|view| {
        view.for_each_in_shard(shard, |cf, key, _| writes.delete(cf, key.to_vec()))
    })?;
    for write in dump.records.writes {
        match write {
            Write::Put { cf, ref key, .. }
                if cf.in_shard() && keys::shard_of_key(key) == Some(shard) =>
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
