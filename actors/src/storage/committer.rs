//! Group commit: one thread, one WAL sync per batch of waiting writers.
//!
//! The thread paces its syncs: a sync starts no sooner than the commit
//! interval after the start of the one before it, and every write set that
//! arrived meanwhile shares it. A sync costs the same CPU and disk work
//! whatever it carries, so at thousands of small writes a second pacing
//! saves both, for at most one interval of latency. A write that comes
//! later than that after the last sync started is synced at once; one that
//! comes sooner waits out the rest of the interval, even alone (so one
//! writer that waits for each commit manages at most one per interval).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use rocksdb::{WriteBatch, WriteOptions, DB};
use tokio::sync::oneshot;

use super::health::Health;
use super::{StorageError, Write, WriteSet};

/// Most write sets folded into one batch.
const MAX_BATCH: usize = 4096;

type Reply = oneshot::Sender<Result<(), StorageError>>;

enum Command {
    Commit(WriteSet, Reply),
    /// Finish what is queued, let go of the database, then answer.
    Stop(oneshot::Sender<()>),
}

#[derive(Clone)]
pub(super) struct Committer {
    // Declared before `_thread`: the last clone drops its sender first, which
    // lets the thread finish, and then waits for it.
    queue: mpsc::Sender<Command>,
    stats: Arc<Counters>,
    _thread: Arc<Thread>,
}

/// Joins the commit thread when the last handle goes. The thread closes the
/// database as it ends, so a dropped [`super::Storage`] is closed on return:
/// a process that exits right after (a test binary, say) never tears RocksDB's
/// globals down under a close still running on another thread.
struct Thread(Option<std::thread::JoinHandle<()>>);

impl Drop for Thread {
    fn drop(&mut self) {
        if let Some(handle) = self.0.take() {
            let _ = handle.join();
        }
    }
}

#[derive(Default)]
struct Counters {
    batches: AtomicU64,
    write_sets: AtomicU64,
}

/// How well group commit is sharing syncs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommitStats {
    /// Synced batches written.
    pub batches: u64,
    /// Write sets committed in them.
    pub write_sets: u64,
}

impl Committer {
    pub(super) fn start(db: Arc<DB>, interval: Duration, health: Arc<Health>) -> Committer {
        let (queue, rx) = mpsc::channel::<Command>();
        let stats = Arc::new(Counters::default());
        let counters = stats.clone();
        let thread = std::thread::Builder::new()
            .name("tidings-commit".into())
            .spawn(move || {
                let stopped = run(&db, &rx, interval, &counters, &health);
                drop(db);
                if let Some(stopped) = stopped {
                    let _ = stopped.send(());
                }
            })
            .expect("spawn the commit thread");
        Committer {
            queue,
            stats,
            _thread: Arc::new(Thread(Some(thread))),
        }
    }

    pub(super) async fn commit(&self, writes: WriteSet) -> Result<(), StorageError> {
        let (tx, rx) = oneshot::channel();
        self.queue
            .send(Command::Commit(writes, tx))
            .map_err(|_| StorageError::Closed)?;
        rx.await.map_err(|_| StorageError::Closed)?
    }

    /// Commits what is queued, then stops the thread; later commits fail
    /// with [`StorageError::Closed`].
    pub(super) async fn stop(&self) {
        let (tx, rx) = oneshot::channel();
        if self.queue.send(Command::Stop(tx)).is_ok() {
            let _ = rx.await;
        }
    }

    pub(super) fn stats(&self) -> CommitStats {
        CommitStats {
            batches: self.stats.batches.load(Ordering::Relaxed),
            write_sets: self.stats.write_sets.load(Ordering::Relaxed),
        }
    }
}

/// Commits batches until told to stop (returning who to tell) or until
/// every sender is gone, starting syncs at least `interval` apart.
fn run(
    db: &DB,
    rx: &mpsc::Receiver<Command>,
    interval: Duration,
    counters: &Counters,
    health: &Health,
) -> Option<oneshot::Sender<()>> {
    let mut sync = WriteOptions::default();
    sync.set_sync(true);
    let mut waiting: Vec<Reply> = Vec::new();
    let mut stop = None;
    let mut last_sync: Option<Instant> = None;
    while stop.is_none() {
        let first = if health.failing().is_some() {
            // Writes are failing: try one of our own now and then, so the
            // node sees it when they succeed again, writers or not.
            match rx.recv_timeout(PROBE_EVERY) {
                Ok(first) => first,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    health.wrote(&probe(db, &sync));
                    continue;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        } else {
            match rx.recv() {
                Ok(first) => first,
                Err(_) => break,
            }
        };
        let mut batch = WriteBatch::default();
        stop = gather(db, rx, first, &mut batch, &mut waiting);
        // Too soon after the last sync: sleep out the interval (a sleeping
        // thread costs its writers no wake-up), then take what came
        // meanwhile.
        let rest = last_sync.and_then(|at| (at + interval).checked_duration_since(Instant::now()));
        let room = stop.is_none() && waiting.len() < MAX_BATCH;
        if let Some(rest) = rest.filter(|rest| room && !rest.is_zero()) {
            std::thread::sleep(rest);
            if let Ok(more) = rx.try_recv() {
                stop = gather(db, rx, more, &mut batch, &mut waiting);
            }
        }
        if waiting.is_empty() {
            continue;
        }
        last_sync = Some(Instant::now());
        let result = db.write_opt(batch, &sync);
        health.wrote(&result);
        counters.batches.fetch_add(1, Ordering::Relaxed);
        counters
            .write_sets
            .fetch_add(waiting.len() as u64, Ordering::Relaxed);
        if let Err(err) = &result {
            tracing::error!(error = %err, writers = waiting.len(), "group commit failed");
        }
        for reply in waiting.drain(..) {
            let _ = reply.send(result.clone().map_err(StorageError::from));
        }
    }
    stop
}

/// How often the committer tries a write of its own while writes fail.
const PROBE_EVERY: Duration = Duration::from_secs(1);

/// The key of that write, in the default column family.
const PROBE_KEY: &[u8] = b"tidings.probe";

/// A small synced write: whether the database takes writes again.
fn probe(db: &DB, sync: &WriteOptions) -> Result<(), rocksdb::Error> {
    db.put_opt(PROBE_KEY, [1u8], sync)
}

/// Folds `first` and whatever else is queued, up to [`MAX_BATCH`] write
/// sets, into `batch`; returns a stop met on the way, which ends the fold.
fn gather(
    db: &DB,
    rx: &mpsc::Receiver<Command>,
    first: Command,
    batch: &mut WriteBatch,
    waiting: &mut Vec<Reply>,
) -> Option<oneshot::Sender<()>> {
    let mut next = Some(first);
    while let Some(command) = next.take() {
        match command {
            Command::Commit(writes, reply) => {
                add(db, batch, writes);
                waiting.push(reply);
            }
            Command::Stop(reply) => return Some(reply),
        }
        if waiting.len() < MAX_BATCH {
            next = rx.try_recv().ok();
        }
    }
    None
}

pub(super) fn add(db: &DB, batch: &mut WriteBatch, writes: WriteSet) {
    for write in writes.writes {
        match write {
            Write::Put { cf, key, value } => {
                batch.put_cf(cf_handle(db, cf), key, value);
            }
            Write::Delete { cf, key } => batch.delete_cf(cf_handle(db, cf), key),
            Write::DeleteRange { cf, from, to } => {
                batch.delete_range_cf(cf_handle(db, cf), from, to);
            }
            Write::Expect { .. } => {}
        }
    }
}

fn cf_handle(db: &DB, cf: super::Cf) -> &rocksdb::ColumnFamily {
    db.cf_handle(cf.name())
        .expect("every column family is created at open")
}
