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
//! Snapshots hold no copy of the state (see [`super::snapshot`]): building
//! one notes the applied position so that the log before it can be purged,
//! and a replica too far behind for the log is sent the shard's records as
//! they are when it asks.

#![allow(
    clippy::result_large_err,
    reason = "openraft's error types are large; these helpers return them to its trait methods"
)]

use std::collections::HashMap;
use std::fmt::Debug;
use std::io::Cursor;
use std::ops::{Bound, RangeBounds};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage, RaftStateMachine, Snapshot};
use openraft::{
    AnyError, Entry, EntryPayload, LogId, OptionalSend, RaftLogReader, RaftSnapshotBuilder,
    SnapshotMeta, StorageError, StorageIOError, StoredMembership, Vote,
};
use serde::{de::DeserializeOwned, Serialize};

use tidings_actors::codec;
use tidings_actors::storage::{keys, Cf, Storage, Write, WriteSet};
use tokio::sync::watch;

use super::snapshot::{self, Positions, ShardDump, SnapshotError};
use super::TypeConfig;

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

/// How far a replica has applied its log ([`ShardStore::purge`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Applied {
    index: Option<u64>,
    snapshot: Incoming,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum Incoming {
    #[default]
    None,
    Receiving,
    Failed,
}

/// One shard's view of the node's storage. Its clones (the log and the
/// state machine) share what is below.
#[derive(Clone)]
pub struct ShardStore {
    shard: u16,
    storage: Storage,
    /// The last index applied here, and whether a snapshot is coming in:
    /// openraft asks to purge the log behind a snapshot before the state
    /// machine has installed it, and the purge must wait for that.
    applied: Arc<watch::Sender<Applied>>,
    /// Whether a request for the current snapshot reads the shard's
    /// records: not while openraft starts, when it wants only the position.
    sends_snapshots: Arc<AtomicBool>,
}

impl ShardStore {
    pub fn new(shard: u16, storage: Storage) -> ShardStore {
        ShardStore {
            shard,
            storage,
            applied: Arc::new(watch::channel(Applied::default()).0),
            sends_snapshots: Arc::default(),
        }
    }

    /// From now on a snapshot asked for carries the shard's records (call
    /// once the shard's Raft has started).
    pub fn send_snapshots(&self) {
        self.sends_snapshots.store(true, Ordering::Release);
    }

    fn positions(&self) -> Positions {
        Positions {
            applied: keys::raft_state(self.shard, APPLIED),
            membership: keys::raft_state(self.shard, MEMBERSHIP),
        }
    }

    /// The snapshot's description of `dump`'s position.
    fn meta_of(
        &self,
        applied: Option<LogId<u64>>,
        membership: StoredMembership<u64, openraft::BasicNode>,
    ) -> SnapshotMeta<u64, openraft::BasicNode> {
        let snapshot_id = match &applied {
            Some(id) => format!("{}-{}-{}", self.shard, id.leader_id.term, id.index),
            None => format!("{}-empty", self.shard),
        };
        SnapshotMeta {
            last_log_id: applied,
            last_membership: membership,
            snapshot_id,
        }
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

    /// Whether this shard has no Raft state here at all: no vote, no log
    /// entry, nothing purged. A replica that ever voted or took an entry
    /// has a vote stored, synced before it answered.
    pub fn holds_nothing(&self) -> Result<bool> {
        let vote: Option<Vote<u64>> = self.get(VOTE)?;
        let purged: Option<LogId<u64>> = self.get(PURGED)?;
        let last = self
            .storage
            .last_raw(Cf::RaftLog, &self.entry_key(0), &self.log_end())
            .map_err(read_err)?;
        Ok(vote.is_none() && purged.is_none() && last.is_none())
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

    /// Purges the log up to `log_id`, once it is applied: openraft asks for
    /// the purge behind a snapshot while the state machine may still be
    /// installing it, and a crash in between must not leave a replica whose
    /// log starts past its state. (The purge's synced write also makes the
    /// unsynced applied state before it durable: the WAL is one sequence.)
    async fn purge(&mut self, log_id: LogId<u64>) -> Result<()> {
        let upto = Some(log_id.index);
        let applied = *self
            .applied
            .subscribe()
            .wait_for(|a| a.index >= upto || a.snapshot != Incoming::Receiving)
            .await
            .map_err(write_err)?;
        if applied.index < upto && applied.snapshot == Incoming::Failed {
            return Err(write_err(std::io::Error::other(format!(
                "shard {}: not purging up to {} after a snapshot failed to install",
                self.shard, log_id.index
            ))));
        }
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

impl ShardStore {
    /// Installs a received snapshot ([`snapshot::install`]), synced.
    async fn install(
        &self,
        meta: &SnapshotMeta<u64, openraft::BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<()> {
        let dump: ShardDump = codec::decode(snapshot.get_ref()).map_err(read_err)?;
        if dump.applied != meta.last_log_id {
            return Err(read_err(SnapshotError::Mismatch {
                shard: self.shard,
                meta: format!("{:?}", meta.last_log_id),
                dump: format!("{:?}", dump.applied),
            }));
        }
        let (storage, shard, at) = (self.storage.clone(), self.shard, self.positions());
        let writes =
            tokio::task::spawn_blocking(move || snapshot::install(&storage, shard, dump, &at))
                .await
                .map_err(|e| write_err(std::io::Error::other(e.to_string())))?
                .map_err(write_err)?;
        self.storage.commit_local(writes).await.map_err(write_err)?;
        tracing::info!(shard, snapshot = %meta.snapshot_id, "installed a snapshot");
        Ok(())
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
        let applied: Option<LogId<u64>> = self.get(APPLIED)?;
        self.applied
            .send_modify(|a| a.index = applied.as_ref().map(|id| id.index));
        Ok((applied, self.get(MEMBERSHIP)?.unwrap_or_default()))
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
            self.applied.send_modify(|a| a.index = Some(last.index));
        }
        Ok(answers)
    }

    async fn get_snapshot_builder(&mut self) -> ShardStore {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>> {
        self.applied
            .send_modify(|a| a.snapshot = Incoming::Receiving);
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    /// Makes this replica's shard what the snapshot holds, in one synced
    /// write.
    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<u64, openraft::BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<()> {
        let installed = self.install(meta, snapshot).await;
        self.applied.send_modify(|a| match &installed {
            Ok(()) => {
                a.index = meta.last_log_id.as_ref().map(|id| id.index);
                a.snapshot = Incoming::None;
            }
            Err(_) => a.snapshot = Incoming::Failed,
        });
        installed
    }

    /// The shard's records as they are now, with the position they reflect
    /// (see [`super::snapshot`]); nothing while openraft starts.
    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>> {
        if !self.sends_snapshots.load(Ordering::Acquire) {
            return Ok(None);
        }
        let (storage, shard, at) = (self.storage.clone(), self.shard, self.positions());
        let dump = tokio::task::spawn_blocking(move || snapshot::read(&storage, shard, &at))
            .await
            .map_err(|e| read_err(std::io::Error::other(e.to_string())))?
            .map_err(read_err)?;
        if dump.applied.is_none() {
            return Ok(None);
        }
        let meta = self.meta_of(dump.applied, dump.membership.clone());
        let bytes = codec::encode(&dump).map_err(read_err)?;
        Ok(Some(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(bytes)),
        }))
    }
}

impl RaftSnapshotBuilder<TypeConfig> for ShardStore {
    /// Notes the applied position only: the records stay where they are.
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>> {
        let at = self.positions();
        let (applied, membership) = self
            .storage
            .read_at_once(|view| at.read(view))
            .map_err(read_err)?;
        Ok(Snapshot {
            meta: self.meta_of(applied, membership),
            snapshot: Box::new(Cursor::new(Vec::new())),
        })
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

    use futures_util::FutureExt;
    use openraft::storage::{RaftLogStorage, RaftStateMachine};

    use super::ShardStore;
    use crate::replication::TypeConfig;
    use tidings_actors::shard::shard_of;
    use tidings_actors::storage::{keys, Cf, Storage, WriteSet};

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

    /// An id of shard 7 (the tests' shard), or of another, starting with
    /// `prefix`.
    fn id_in_shard(prefix: &str, seven: bool) -> String {
        (0..)
            .map(|i| format!("{prefix}{i}"))
            .find(|id| (shard_of(id).0 == 7) == seven)
            .unwrap()
    }

    fn entry(index: u64, set: WriteSet) -> openraft::Entry<TypeConfig> {
        openraft::Entry {
            log_id: openraft::LogId::new(openraft::CommittedLeaderId::new(1, 1), index),
            payload: openraft::EntryPayload::Normal(set),
        }
    }

    /// Every record of `shard` in `storage`: (family, key, value).
    fn records(storage: &Storage, shard: u16) -> Vec<(Cf, Vec<u8>, Vec<u8>)> {
        let mut all = Vec::new();
        storage
            .read_at_once(|view| {
                view.for_each_in_shard(shard, |cf, k, v| all.push((cf, k.to_vec(), v.to_vec())))
            })
            .unwrap();
        all
    }

    #[tokio::test]
    async fn a_snapshot_gives_a_replica_exactly_the_shards_records() {
        let (conv, user) = (id_in_shard("g:", true), id_in_shard("u", true));
        let elsewhere = id_in_shard("g:", false);
        let (_a, _, mut leader) = Builder.build().await.unwrap();
        let mut sets = Vec::new();
        for version in 1..=3 {
            let mut set = WriteSet::default();
            set.put(Cf::ConvLog, keys::versioned(&conv, version), &version)
                .unwrap();
            sets.push(set);
        }
        let mut set = WriteSet::default();
        set.put(Cf::UserConvs, keys::named(&user, &conv), &())
            .unwrap();
        set.put(Cf::ConvMeta, keys::index_outbox(7, &conv), &1u8)
            .unwrap();
        // Another shard's record on this node is not part of shard 7.
        set.put(Cf::ConvLog, keys::versioned(&elsewhere, 1), &9u64)
            .unwrap();
        sets.push(set);
        let entries: Vec<_> = sets
            .into_iter()
            .enumerate()
            .map(|(i, set)| entry(i as u64 + 1, set))
            .collect();
        leader.apply(entries).await.unwrap();

        // Nothing is read while openraft starts.
        assert!(leader.get_current_snapshot().await.unwrap().is_none());
        leader.send_snapshots();
        let snapshot = leader.get_current_snapshot().await.unwrap().unwrap();
        assert_eq!(snapshot.meta.last_log_id.unwrap().index, 4);

        // A replica with a stale record of shard 7 and one of another shard.
        let (_b, _, mut replica) = Builder.build().await.unwrap();
        let mut stale = WriteSet::default();
        stale
            .put(Cf::ConvLog, keys::versioned(&conv, 9), &0u64)
            .unwrap();
        stale
            .put(Cf::UserLog, keys::versioned(&elsewhere, 1), &5u64)
            .unwrap();
        replica.storage.commit_local(stale).await.unwrap();
        replica.begin_receiving_snapshot().await.unwrap();
        replica
            .install_snapshot(&snapshot.meta, snapshot.snapshot)
            .await
            .unwrap();

        let expected = records(&leader.storage, 7);
        assert_eq!(expected.len(), 5, "three messages, an index, an outbox");
        assert_eq!(records(&replica.storage, 7), expected);
        let kept: Option<u64> = replica
            .storage
            .get(Cf::UserLog, &keys::versioned(&elsewhere, 1))
            .unwrap();
        assert_eq!(kept, Some(5), "other shards are left alone");
        let (applied, membership) = replica.applied_state().await.unwrap();
        assert_eq!(applied, snapshot.meta.last_log_id);
        assert_eq!(membership, snapshot.meta.last_membership);
    }

    #[tokio::test]
    async fn the_log_behind_an_incoming_snapshot_is_purged_only_once_it_is_installed() {
        let (_a, _, mut leader) = Builder.build().await.unwrap();
        let set = |v: u64| {
            let mut set = WriteSet::default();
            set.put(
                Cf::ConvLog,
                keys::versioned(&id_in_shard("g:", true), v),
                &v,
            )
            .unwrap();
            set
        };
        leader
            .apply((1..=5).map(|i| entry(i, set(i))).collect::<Vec<_>>())
            .await
            .unwrap();
        leader.send_snapshots();
        let snapshot = leader.get_current_snapshot().await.unwrap().unwrap();
        let upto = snapshot.meta.last_log_id.unwrap();

        let (_b, log, mut replica) = Builder.build().await.unwrap();
        replica.begin_receiving_snapshot().await.unwrap();
        let mut purging = log.clone();
        let mut purge = Box::pin(async move { purging.purge(upto).await });
        assert!(
            purge.as_mut().now_or_never().is_none(),
            "the purge waits for the snapshot"
        );
        replica
            .install_snapshot(&snapshot.meta, snapshot.snapshot)
            .await
            .unwrap();
        purge.await.unwrap();

        // A snapshot that fails to install leaves the log unpurged.
        let (_c, log, mut replica) = Builder.build().await.unwrap();
        replica.begin_receiving_snapshot().await.unwrap();
        let mut purging = log.clone();
        let purge = tokio::spawn(async move { purging.purge(upto).await });
        let garbage = Box::new(std::io::Cursor::new(b"not a snapshot".to_vec()));
        assert!(replica
            .install_snapshot(&snapshot.meta, garbage)
            .await
            .is_err());
        assert!(purge.await.unwrap().is_err());
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
