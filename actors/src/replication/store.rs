//! A shard's Raft log and state machine, both in the node's RocksDB.
//!
//! The log lives in [`Cf::RaftLog`] under `[shard][index]`, the vote and the
//! applied position in [`Cf::RaftState`] under `[shard][tag]`. Log writes and
//! votes are synced through the committer, so the 64 shards' appends share
//! fsyncs. Applying an entry writes its [`WriteSet`] into the entity column
//! families together with the applied position, in one unsynced batch:
//! after a crash the position and the data are lost together, and Raft
//! applies the entries again from the synced log.
//!
//! Snapshots are not built: the log is kept whole, and a replica that
//! falls behind catches up from it.

use std::collections::HashMap;
use std::fmt::Debug;
use std::io::Cursor;
use std::ops::{Bound, RangeBounds};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage, RaftStateMachine, Snapshot};
use openraft::{
    AnyError, Entry, EntryPayload, LogId, OptionalSend, RaftLogReader, RaftSnapshotBuilder,
    SnapshotMeta, StorageError, StorageIOError, StoredMembership, Vote,
};
use serde::{de::DeserializeOwned, Serialize};

use super::TypeConfig;
use crate::codec;
use crate::storage::{keys, Cf, Storage, Write, WriteSet};

type Result<T> = std::result::Result<T, StorageError<u64>>;

const VOTE: u8 = b'v';
const COMMITTED: u8 = b'c';
const PURGED: u8 = b'p';
const APPLIED: u8 = b'a';
const MEMBERSHIP: u8 = b'm';

fn read_err(e: impl std::error::Error + 'static) -> StorageError<u64> {
    StorageIOError::read(AnyError::new(&e)).into()
}

fn write_err(e: impl std::error::Error + 'static) -> StorageError<u64> {
    StorageIOError::write(AnyError::new(&e)).into()
}

/// One shard's view of the node's storage.
#[derive(Clone)]
pub struct ShardStore {
    shard: u16,
    storage: Storage,
}

impl ShardStore {
    pub fn new(shard: u16, storage: Storage) -> ShardStore {
        ShardStore { shard, storage }
    }

    fn get<T: DeserializeOwned>(&self, tag: u8) -> Result<Option<T>> {
        self.storage
            .get(Cf::RaftState, &keys::raft_state(self.shard, tag))
            .map_err(read_err)
    }

    fn put<T: Serialize>(&self, writes: &mut WriteSet, tag: u8, value: &T) -> Result<()> {
        writes
            .put(Cf::RaftState, keys::raft_state(self.shard, tag), value)
            .map_err(write_err)
    }

    async fn put_synced<T: Serialize>(&self, tag: u8, value: &T) -> Result<()> {
        let mut writes = WriteSet::default();
        self.put(&mut writes, tag, value)?;
        self.storage.commit_local(writes).await.map_err(write_err)
    }

    fn entry_key(&self, index: u64) -> Vec<u8> {
        keys::raft_entry(self.shard, index)
    }

    /// Just past this shard's last possible entry.
    fn log_end(&self) -> Vec<u8> {
        let mut end = self.entry_key(u64::MAX);
        end.push(0);
        end
    }
}

impl RaftLogReader<TypeConfig> for ShardStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>> {
        let from = match range.start_bound() {
            Bound::Included(&i) => i,
            Bound::Excluded(&i) => i + 1,
            Bound::Unbounded => 0,
        };
        let to = match range.end_bound() {
            Bound::Included(&i) => self.entry_key(i + 1),
            Bound::Excluded(&i) => self.entry_key(i),
            Bound::Unbounded => self.log_end(),
        };
        let records = self
            .storage
            .scan_raw(Cf::RaftLog, &self.entry_key(from), &to, usize::MAX)
            .map_err(read_err)?;
        records
            .iter()
            .map(|(_, value)| codec::decode(value).map_err(read_err))
            .collect()
    }
}

impl RaftLogStorage<TypeConfig> for ShardStore {
    type LogReader = ShardStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>> {
        let purged: Option<LogId<u64>> = self.get(PURGED)?;
        let last = self
            .storage
            .last_raw(Cf::RaftLog, &self.entry_key(0), &self.log_end())
            .map_err(read_err)?;
        let last_log_id = match last {
            Some((_, value)) => {
                let entry: Entry<TypeConfig> = codec::decode(&value).map_err(read_err)?;
                Some(entry.log_id)
            }
            None => purged,
        };
        Ok(LogState {
            last_purged_log_id: purged,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> ShardStore {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<u64>) -> Result<()> {
        self.put_synced(VOTE, vote).await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<u64>>> {
        self.get(VOTE)
    }

    async fn save_committed(&mut self, committed: Option<LogId<u64>>) -> Result<()> {
        let mut writes = WriteSet::default();
        self.put(&mut writes, COMMITTED, &committed)?;
        self.storage.write_unsynced(writes).map_err(write_err)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<u64>>> {
        Ok(self.get::<Option<LogId<u64>>>(COMMITTED)?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<()>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut writes = WriteSet::default();
        for entry in entries {
            writes
                .put(Cf::RaftLog, self.entry_key(entry.log_id.index), &entry)
                .map_err(write_err)?;
        }
        match self.storage.commit_local(writes).await {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(err) => {
                callback.log_io_completed(Err(std::io::Error::other(err.to_string())));
                Err(write_err(err))
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId<u64>) -> Result<()> {
        let mut writes = WriteSet::default();
        writes.delete_range(Cf::RaftLog, self.entry_key(log_id.index), self.log_end());
        self.storage.commit_local(writes).await.map_err(write_err)
    }

    async fn purge(&mut self, log_id: LogId<u64>) -> Result<()> {
        let mut writes = WriteSet::default();
        self.put(&mut writes, PURGED, &log_id)?;
        writes.delete_range(
            Cf::RaftLog,
            self.entry_key(0),
            self.entry_key(log_id.index + 1),
        );
        self.storage.commit_local(writes).await.map_err(write_err)
    }
}

impl ShardStore {
    /// Whether `set`'s expectations hold, given where earlier entries of
    /// the batch left each log (`ends`, updated if they hold).
    fn holds(&self, set: &WriteSet, ends: &mut HashMap<(Cf, String), u64>) -> Result<bool> {
        for write in &set.writes {
            let Write::Expect {
                cf,
                entity,
                last,
                then,
            } = write
            else {
                continue;
            };
            let key = (*cf, entity.clone());
            let end = match ends.get(&key) {
                Some(end) => *end,
                None => self
                    .storage
                    .last_version(*cf, entity)
                    .map_err(read_err)?
                    .unwrap_or(0),
            };
            if end != *last {
                return Ok(false);
            }
            ends.insert(key, *then);
        }
        Ok(true)
    }
}

impl RaftStateMachine<TypeConfig> for ShardStore {
    type SnapshotBuilder = ShardStore;

    async fn applied_state(
        &mut self,
    ) -> Result<(
        Option<LogId<u64>>,
        StoredMembership<u64, openraft::BasicNode>,
    )> {
        Ok((
            self.get(APPLIED)?,
            self.get(MEMBERSHIP)?.unwrap_or_default(),
        ))
    }

    /// Applies `entries` in one write. An entity write set whose
    /// [`Write::Expect`] no longer holds (checked against storage and the
    /// entries before it in this batch) is skipped, on every replica alike,
    /// and answered `false`.
    async fn apply<I>(&mut self, entries: I) -> Result<Vec<bool>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut writes = WriteSet::default();
        let mut answers = Vec::new();
        let mut last = None;
        // Where this batch leaves each expected log.
        let mut ends: HashMap<(Cf, String), u64> = HashMap::new();
        for entry in entries {
            let mut applied = true;
            match entry.payload {
                EntryPayload::Blank => {}
                EntryPayload::Normal(set) => {
                    applied = self.holds(&set, &mut ends)?;
                    if applied {
                        writes.writes.extend(set.writes);
                    }
                }
                EntryPayload::Membership(membership) => {
                    let stored = StoredMembership::new(Some(entry.log_id), membership);
                    self.put(&mut writes, MEMBERSHIP, &stored)?;
                }
            }
            last = Some(entry.log_id);
            answers.push(applied);
        }
        if let Some(last) = last {
            self.put(&mut writes, APPLIED, &last)?;
            self.storage.write_unsynced(writes).map_err(write_err)?;
        }
        Ok(answers)
    }

    async fn get_snapshot_builder(&mut self) -> ShardStore {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        _meta: &SnapshotMeta<u64, openraft::BasicNode>,
        _snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<()> {
        Err(write_err(std::io::Error::other(
            "Tidings keeps whole Raft logs and installs no snapshots",
        )))
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>> {
        Ok(None)
    }
}

impl RaftSnapshotBuilder<TypeConfig> for ShardStore {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>> {
        Err(read_err(std::io::Error::other(
            "Tidings keeps whole Raft logs and builds no snapshots",
        )))
    }
}

/// openraft's own storage suite, run against a shard's store in a fresh
/// RocksDB: every case but those that build a snapshot (`snapshot_meta`,
/// `transfer_snapshot`, and four `get_initial_state_*` cases that purge
/// the log behind one). Tidings builds no snapshots.
#[cfg(test)]
mod tests {
    use openraft::testing::{StoreBuilder, Suite};
    use openraft::StorageError;

    use openraft::storage::RaftStateMachine;

    use super::ShardStore;
    use crate::replication::TypeConfig;
    use crate::storage::{keys, Cf, Storage, WriteSet};

    struct Builder;

    impl StoreBuilder<TypeConfig, ShardStore, ShardStore, tempfile::TempDir> for Builder {
        async fn build(
            &self,
        ) -> Result<(tempfile::TempDir, ShardStore, ShardStore), StorageError<u64>> {
            let dir = tempfile::tempdir().expect("a temporary directory");
            let storage = Storage::open(dir.path()).expect("storage opens");
            // Not shard 0: keys must stay inside their shard's prefix.
            let store = ShardStore::new(7, storage);
            Ok((dir, store.clone(), store))
        }
    }

    type S = Suite<TypeConfig, ShardStore, ShardStore, Builder, tempfile::TempDir>;

    /// A message at `version` of conversation "c", written by a writer that
    /// believes the log ends at `version - 1`.
    fn message(index: u64, version: u64, body: &str) -> openraft::Entry<TypeConfig> {
        let mut set = WriteSet::default();
        set.expect(Cf::ConvLog, "c", version - 1, version);
        set.put(Cf::ConvLog, keys::versioned("c", version), &body.to_owned())
            .unwrap();
        openraft::Entry {
            log_id: openraft::LogId::new(openraft::CommittedLeaderId::new(1, 1), index),
            payload: openraft::EntryPayload::Normal(set),
        }
    }

    #[tokio::test]
    async fn a_write_set_whose_log_moved_on_is_skipped_on_apply() {
        let (_dir, _log, mut machine) = Builder.build().await.unwrap();
        // In one batch: the second writer of version 1 is too late.
        let answers = machine
            .apply([
                message(1, 1, "first"),
                message(2, 1, "reused"),
                message(3, 2, "next"),
            ])
            .await
            .unwrap();
        assert_eq!(answers, [true, false, true]);
        // And across batches, against what is stored.
        let answers = machine
            .apply([message(4, 2, "again"), message(5, 3, "third")])
            .await
            .unwrap();
        assert_eq!(answers, [false, true]);
        let storage = machine.storage.clone();
        let log: Vec<(u64, String)> = storage
            .log_range(Cf::ConvLog, "c", 0, u64::MAX, 10, false)
            .unwrap();
        let bodies: Vec<&str> = log.iter().map(|(_, b)| b.as_str()).collect();
        assert_eq!(bodies, ["first", "next", "third"]);
    }

    macro_rules! suite {
        ($($case:ident),* $(,)?) => {$(
            #[tokio::test]
            async fn $case() {
                let (_dir, store, machine) = Builder.build().await.unwrap();
                S::$case(store, machine).await.unwrap();
            }
        )*};
    }

    suite!(
        last_membership_in_log_initial,
        last_membership_in_log,
        last_membership_in_log_multi_step,
        get_membership_initial,
        get_membership_from_log_and_empty_sm,
        get_membership_from_empty_log_and_sm,
        get_membership_from_log_le_sm_last_applied,
        get_membership_from_log_gt_sm_last_applied_1,
        get_membership_from_log_gt_sm_last_applied_2,
        get_initial_state_without_init,
        get_initial_state_with_state,
        get_initial_state_last_log_gt_sm,
        save_vote,
        get_log_entries,
        limited_get_log_entries,
        try_get_log_entry,
        initial_logs,
        get_log_state,
        get_log_id,
        last_id_in_log,
        last_applied_state,
        purge_logs_upto_0,
        purge_logs_upto_5,
        purge_logs_upto_20,
        delete_logs_since_11,
        delete_logs_since_0,
        append_to_log,
        apply_single,
        apply_multiple,
    );
}
