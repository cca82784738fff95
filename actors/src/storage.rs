//! Storage: one RocksDB per node, with named column families, and group
//! commit.
//!
//! Writers hand a [`WriteSet`] for one shard to [`Storage::commit`]; a
//! committer thread takes every write set that is waiting, writes them as one
//! batch with one WAL sync, and only then answers each writer. Many entity
//! actors' writes thus share one fsync, and a commit that returned `Ok` is on
//! disk. `commit` is the per-shard log seam: replication replaces what
//! happens behind it without touching the actors.

mod committer;
mod health;
pub mod keys;
pub mod records;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use rocksdb::{ColumnFamilyDescriptor, Direction, IteratorMode, Options, DB};
use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::codec::{self, CodecError};
use crate::shard::ShardId;

pub use committer::CommitStats;
pub use health::Health;

/// The column families, each named at open and checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Cf {
    /// conv → [`records::ConvMeta`]
    ConvMeta,
    /// conv, version → [`records::StoredEvent`]
    ConvLog,
    /// conv, target version → [`records::MessageState`]
    ConvMessages,
    /// conv, cmid → [`records::CmidRecord`]
    ConvCmids,
    /// user → [`records::UserMeta`]
    UserMeta,
    /// user, version → [`records::StoredNotification`]
    UserLog,
    /// user, conv → () : the conversations a user belongs to
    UserConvs,
    /// shard, index → a Raft log entry (in a cluster)
    RaftLog,
    /// shard, tag → a shard's Raft vote, applied position and membership
    RaftState,
}

impl Cf {
    pub const ALL: [Cf; 9] = [
        Cf::ConvMeta,
        Cf::ConvLog,
        Cf::ConvMessages,
        Cf::ConvCmids,
        Cf::UserMeta,
        Cf::UserLog,
        Cf::UserConvs,
        Cf::RaftLog,
        Cf::RaftState,
    ];

    /// Whether the family holds entities' records, under keys that
    /// [`keys::shard_of_key`] places in a shard (all but Raft's own). A
    /// shard's snapshot carries exactly these.
    pub fn in_shard(self) -> bool {
        match self {
            Cf::ConvMeta
            | Cf::ConvLog
            | Cf::ConvMessages
            | Cf::ConvCmids
            | Cf::UserMeta
            | Cf::UserLog
            | Cf::UserConvs => true,
            Cf::RaftLog | Cf::RaftState => false,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Cf::ConvMeta => "conv_meta",
            Cf::ConvLog => "conv_log",
            Cf::ConvMessages => "conv_messages",
            Cf::ConvCmids => "conv_cmids",
            Cf::UserMeta => "user_meta",
            Cf::UserLog => "user_log",
            Cf::UserConvs => "user_convs",
            Cf::RaftLog => "raft_log",
            Cf::RaftState => "raft_state",
        }
    }
}

impl Cf {
    /// Every family is read by key (a meta, a cmid, a message's state) or by
    /// a short range of one entity: Bloom filters, in the memtable too, let a
    /// lookup of a key that is not there (every new `cmid`) skip the search.
    fn options(self) -> Options {
        let mut table = rocksdb::BlockBasedOptions::default();
        table.set_bloom_filter(10.0, false);
        let mut options = Options::default();
        options.set_block_based_table_factory(&table);
        options.set_memtable_whole_key_filtering(true);
        options.set_memtable_prefix_bloom_ratio(0.05);
        options.set_compression_type(rocksdb::DBCompressionType::Lz4);
        options
    }
}

/// A record's value as stored (codec-encoded).
pub type RawValue = Box<[u8]>;
/// A record as stored: its key and its value.
pub type RawRecord = (Box<[u8]>, RawValue);

/// Key in the default column family that records the storage layout.
const LAYOUT_KEY: &[u8] = b"tidings.layout";
/// The layout written by this version of Tidings.
const LAYOUT_VERSION: u8 = 1;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("rocksdb: {0}")]
    Rocks(#[from] rocksdb::Error),
    #[error("corrupt record: {0}")]
    Codec(#[from] CodecError),
    #[error("unknown column family {0:?} in the data directory; is it from a newer Tidings?")]
    UnknownColumnFamily(String),
    #[error("data directory has storage layout {0}; this build reads layout {LAYOUT_VERSION}")]
    Layout(u8),
    #[error("storage is shut down")]
    Closed,
    /// In a cluster: the write was proposed but its fate is unknown (the
    /// leader changed or the majority stopped answering). Retrying with the
    /// same `cmid` is safe.
    #[error("replication did not confirm the write: {0}")]
    Unconfirmed(String),
    /// In a cluster: the entity's log had moved past what the writer
    /// loaded (an entry it did not know of was applied first); nothing
    /// was written.
    #[error("the entity's log moved on before this write; nothing was written")]
    Superseded,
}

impl StorageError {
    /// Whether the entity's in-memory state may no longer match storage:
    /// the actor must reload before it writes again.
    pub fn leaves_state_unknown(&self) -> bool {
        matches!(
            self,
            StorageError::Unconfirmed(_) | StorageError::Superseded
        )
    }
}

/// One write of a [`WriteSet`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Write {
    Put {
        cf: Cf,
        key: Vec<u8>,
        value: Vec<u8>,
    },
    Delete {
        cf: Cf,
        key: Vec<u8>,
    },
    /// Every key in `[from, to)`.
    DeleteRange {
        cf: Cf,
        from: Vec<u8>,
        to: Vec<u8>,
    },
    /// Not a write: a condition on the set. `entity`'s log in `cf` must end
    /// at version `last` (0: empty) for the set to apply, and ends at
    /// `then` after it. A replica checks it when it applies a Raft entry,
    /// so an actor that loaded the log before an entry it did not know of
    /// was applied cannot reuse that entry's versions. (On a single node
    /// the entity's one actor already guarantees it.)
    Expect {
        cf: Cf,
        entity: String,
        last: u64,
        then: u64,
    },
}

/// The writes of one entity's change, committed atomically. In a cluster
/// it is also what a shard's Raft log carries.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteSet {
    pub writes: Vec<Write>,
}

impl WriteSet {
    pub fn put<T: Serialize>(&mut self, cf: Cf, key: Vec<u8>, value: &T) -> Result<(), CodecError> {
        let value = codec::encode(value)?;
        self.writes.push(Write::Put { cf, key, value });
        Ok(())
    }

    pub fn delete(&mut self, cf: Cf, key: Vec<u8>) {
        self.writes.push(Write::Delete { cf, key });
    }

    pub fn delete_range(&mut self, cf: Cf, from: Vec<u8>, to: Vec<u8>) {
        self.writes.push(Write::DeleteRange { cf, from, to });
    }

    /// Applies the set only if `entity`'s log in `cf` still ends at `last`;
    /// it ends at `then` after (see [`Write::Expect`]).
    pub fn expect(&mut self, cf: Cf, entity: &str, last: u64, then: u64) {
        self.writes.push(Write::Expect {
            cf,
            entity: entity.to_owned(),
            last,
            then,
        });
    }
}

/// A read of the storage as of one moment ([`Storage::read_at_once`]).
pub struct View<'a> {
    storage: &'a Storage,
    snapshot: rocksdb::SnapshotWithThreadMode<'a, DB>,
}

impl View<'_> {
    pub fn get<T: DeserializeOwned>(&self, cf: Cf, key: &[u8]) -> Result<Option<T>, StorageError> {
        match self.snapshot.get_pinned_cf(self.storage.cf(cf), key)? {
            Some(bytes) => Ok(Some(codec::decode(&bytes)?)),
            None => Ok(None),
        }
    }

    /// Calls `each` with every record of `shard`'s entities as of this
    /// view ([`Cf::in_shard`]), family by family in key order. Scans every
    /// such family whole.
    pub fn for_each_in_shard(
        &self,
        shard: u16,
        mut each: impl FnMut(Cf, &[u8], &[u8]),
    ) -> Result<(), StorageError> {
        for cf in Cf::ALL.into_iter().filter(|cf| cf.in_shard()) {
            let iter = self
                .snapshot
                .iterator_cf(self.storage.cf(cf), IteratorMode::Start);
            for item in iter {
                let (key, value) = item?;
                if keys::shard_of_key(&key) == Some(shard) {
                    each(cf, &key, &value);
                }
            }
        }
        Ok(())
    }
}

/// Where an entity's writes become durable. On a single node, [`Storage`]
/// itself: once they are in the synced WAL. In a cluster, the shard's Raft
/// group (`tidings-cluster`): once committed on a majority and applied
/// here. Entities get one when they start.
pub trait CommitLog: Send + Sync + 'static {
    /// Returns once `writes` are durable.
    fn append(
        &self,
        shard: ShardId,
        writes: WriteSet,
    ) -> BoxFuture<'static, Result<(), StorageError>>;
}

impl CommitLog for Storage {
    fn append(
        &self,
        _shard: ShardId,
        writes: WriteSet,
    ) -> BoxFuture<'static, Result<(), StorageError>> {
        let committer = self.committer.clone();
        Box::pin(async move { committer.commit(writes).await })
    }
}

/// How the node's storage is tuned; [`Storage::open`] takes the defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StorageOptions {
    /// Least time from the start of one WAL sync to the start of the next:
    /// the writes that arrive within it share one sync. Zero syncs again as
    /// soon as the last sync is done.
    pub commit_interval: Duration,
}

impl StorageOptions {
    /// At most a thousand syncs a second, for a millisecond more at worst
    /// for a write that comes right after a sync.
    pub const DEFAULT_COMMIT_INTERVAL: Duration = Duration::from_millis(1);
}

impl Default for StorageOptions {
    fn default() -> Self {
        StorageOptions {
            commit_interval: Self::DEFAULT_COMMIT_INTERVAL,
        }
    }
}

/// The node's storage: cheap to clone, shared by every actor.
#[derive(Clone)]
pub struct Storage {
    // Dropped before `committer`, whose last clone waits for the commit
    // thread to close the database.
    db: Arc<DB>,
    committer: committer::Committer,
    health: Arc<Health>,
}

impl Storage {
    /// Opens (creating if needed) the database in `dir`, checking that every
    /// column family in it is one this build knows.
    pub fn open(dir: &Path) -> Result<Storage, StorageError> {
        Storage::open_with(dir, StorageOptions::default())
    }

    /// [`Storage::open`], with `options` in place of the defaults.
    pub fn open_with(dir: &Path, options: StorageOptions) -> Result<Storage, StorageError> {
        let mut db_options = Options::default();
        db_options.create_if_missing(true);
        db_options.create_missing_column_families(true);
        db_options.set_max_background_jobs(2);
        db_options.set_compression_type(rocksdb::DBCompressionType::Lz4);
        if let Ok(existing) = DB::list_cf(&db_options, dir) {
            for name in existing {
                if name != "default" && !Cf::ALL.iter().any(|cf| cf.name() == name) {
                    return Err(StorageError::UnknownColumnFamily(name));
                }
            }
        }
        let cfs = Cf::ALL
            .iter()
            .map(|cf| ColumnFamilyDescriptor::new(cf.name(), cf.options()));
        let db = Arc::new(DB::open_cf_descriptors(&db_options, dir, cfs)?);
        match db.get(LAYOUT_KEY)? {
            Some(v) if v.as_slice() == [LAYOUT_VERSION] => {}
            Some(v) => return Err(StorageError::Layout(v.first().copied().unwrap_or(0))),
            None => db.put(LAYOUT_KEY, [LAYOUT_VERSION])?,
        }
        let health = Arc::new(Health::default());
        let committer =
            committer::Committer::start(db.clone(), options.commit_interval, health.clone());
        Ok(Storage {
            db,
            committer,
            health,
        })
    }

    /// Writes to this node's disk only, synced (group commit): an entity's
    /// writes on a single node ([`CommitLog`]), Raft's own log and vote in
    /// a cluster.
    pub async fn commit_local(&self, writes: WriteSet) -> Result<(), StorageError> {
        self.committer.commit(writes).await
    }

    /// Writes to this node's disk only, in the WAL but not synced: what can
    /// be rebuilt from a synced log after a crash (Raft's applied state).
    pub fn write_unsynced(&self, writes: WriteSet) -> Result<(), StorageError> {
        let mut batch = rocksdb::WriteBatch::default();
        committer::add(&self.db, &mut batch, writes);
        let result = self.db.write(batch);
        self.health.wrote(&result);
        Ok(result?)
    }

    /// Why writes are failing (a full disk, an I/O error), while they are:
    /// from the last write that failed until one succeeds again. While
    /// failing, the committer tries a small write every second, so the
    /// node sees itself recover (RocksDB resumes by itself once the disk
    /// has room) without waiting for a client's write.
    pub fn failing(&self) -> Option<String> {
        self.health.failing()
    }

    /// A value as stored, undecoded.
    pub fn get_raw(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self.db.get_cf(self.cf(cf), key)?)
    }

    /// Up to `limit` records with keys in `[from, to)`, in key order.
    pub fn scan_raw(
        &self,
        cf: Cf,
        from: &[u8],
        to: &[u8],
        limit: usize,
    ) -> Result<Vec<RawRecord>, StorageError> {
        let mut out = Vec::new();
        let iter = self
            .db
            .iterator_cf(self.cf(cf), IteratorMode::From(from, Direction::Forward));
        for item in iter {
            let (key, value) = item?;
            if &*key >= to || out.len() == limit {
                break;
            }
            out.push((key, value));
        }
        Ok(out)
    }

    /// The last record with a key in `[from, to)`.
    pub fn last_raw(
        &self,
        cf: Cf,
        from: &[u8],
        to: &[u8],
    ) -> Result<Option<RawRecord>, StorageError> {
        let mut iter = self
            .db
            .iterator_cf(self.cf(cf), IteratorMode::From(to, Direction::Reverse));
        while let Some(item) = iter.next().transpose()? {
            let (key, value) = item;
            if &*key >= to {
                continue;
            }
            return Ok((&*key >= from).then_some((key, value)));
        }
        Ok(None)
    }

    /// Reads through `read` as of one moment: writes made meanwhile are
    /// not seen, so records written together are read together.
    pub fn read_at_once<T>(&self, read: impl FnOnce(&View<'_>) -> T) -> T {
        let view = View {
            storage: self,
            snapshot: self.db.snapshot(),
        };
        read(&view)
    }

    /// Group commit figures since start.
    pub fn commit_stats(&self) -> CommitStats {
        self.committer.stats()
    }

    fn cf(&self, cf: Cf) -> &rocksdb::ColumnFamily {
        self.db
            .cf_handle(cf.name())
            .expect("every column family is created at open")
    }

    pub fn get<T: DeserializeOwned>(&self, cf: Cf, key: &[u8]) -> Result<Option<T>, StorageError> {
        match self.db.get_pinned_cf(self.cf(cf), key)? {
            Some(bytes) => Ok(Some(codec::decode(&bytes)?)),
            None => Ok(None),
        }
    }

    /// Up to `limit` records of `entity`'s log with versions in
    /// `(after, before)`, ascending. `from_end` takes the ones nearest
    /// `before` instead of those nearest `after`.
    pub fn log_range<T: DeserializeOwned>(
        &self,
        cf: Cf,
        entity: &str,
        after: u64,
        before: u64,
        limit: usize,
        from_end: bool,
    ) -> Result<Vec<(u64, T)>, StorageError> {
        let mut out = Vec::new();
        if before <= after.saturating_add(1) || limit == 0 {
            return Ok(out);
        }
        let prefix = keys::entity(entity);
        let (start, direction) = if from_end {
            (keys::versioned(entity, before - 1), Direction::Reverse)
        } else {
            (keys::versioned(entity, after + 1), Direction::Forward)
        };
        let iter = self
            .db
            .iterator_cf(self.cf(cf), IteratorMode::From(&start, direction));
        for item in iter {
            let (key, value) = item?;
            if !key.starts_with(&prefix) || key.len() != prefix.len() + 8 {
                break;
            }
            let version = keys::version_of(&key).expect("length checked");
            if version <= after || version >= before {
                break;
            }
            out.push((version, codec::decode(&value)?));
            if out.len() == limit {
                break;
            }
        }
        if from_end {
            out.reverse();
        }
        Ok(out)
    }

    /// The highest version in `entity`'s log, if it has any.
    pub fn last_version(&self, cf: Cf, entity: &str) -> Result<Option<u64>, StorageError> {
        let prefix = keys::entity(entity);
        let end = keys::versioned(entity, u64::MAX);
        let mut iter = self
            .db
            .iterator_cf(self.cf(cf), IteratorMode::From(&end, Direction::Reverse));
        match iter.next().transpose()? {
            Some((key, _)) if key.starts_with(&prefix) && key.len() == prefix.len() + 8 => {
                Ok(keys::version_of(&key))
            }
            _ => Ok(None),
        }
    }

    /// The names under `entity` in `cf` (say, a user's conversations).
    pub fn names(&self, cf: Cf, entity: &str) -> Result<Vec<String>, StorageError> {
        Ok(self
            .named_raw(cf, entity)?
            .into_iter()
            .map(|(name, _)| name)
            .collect())
    }

    /// The named records under `entity` in `cf`, each with its value, or
    /// `None` where the value is not a `T` (written in an older form).
    pub fn named<T: DeserializeOwned>(
        &self,
        cf: Cf,
        entity: &str,
    ) -> Result<Vec<(String, Option<T>)>, StorageError> {
        Ok(self
            .named_raw(cf, entity)?
            .into_iter()
            .map(|(name, value)| (name, codec::decode(&value).ok()))
            .collect())
    }

    fn named_raw(&self, cf: Cf, entity: &str) -> Result<Vec<(String, RawValue)>, StorageError> {
        let prefix = keys::entity(entity);
        let iter = self
            .db
            .iterator_cf(self.cf(cf), IteratorMode::From(&prefix, Direction::Forward));
        let mut out = Vec::new();
        for item in iter {
            let (key, value) = item?;
            match keys::name_of(&prefix, &key) {
                Some(name) if key.starts_with(&prefix) => out.push((name.to_owned(), value)),
                _ => break,
            }
        }
        Ok(out)
    }

    /// Commits what is queued, stops the committer and flushes memtables:
    /// the last step of shutdown. Commits after this fail with
    /// [`StorageError::Closed`]; the database closes when the last clone of
    /// this handle is dropped.
    pub async fn close(&self) -> Result<(), StorageError> {
        self.committer.stop().await;
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || {
            db.flush_wal(true)?;
            for cf in Cf::ALL {
                let handle = db.cf_handle(cf.name()).expect("created at open");
                db.flush_cf(handle)?;
            }
            Ok::<_, rocksdb::Error>(())
        })
        .await
        .map_err(|_| StorageError::Closed)??;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
