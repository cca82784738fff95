//! What every entity actor shares: its start-up arguments, the idle clock
//! that stops it when unused, and the time source.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ractor::{ActorId, ActorRef};

use crate::directory::Directory;
use crate::error::Error;
use crate::index::Indexes;
use crate::messages::{EntityKey, RouterMsg};
use crate::metrics::Metrics;
use crate::storage::{CommitLog, Storage, StorageError};

/// Settings of entity actors and connections.
#[derive(Debug, Clone)]
pub struct EntityConfig {
    /// An entity actor with nothing to do for this long stops; it starts
    /// again from storage on the next request.
    pub idle_after: Duration,
    /// How long a caller waits for an entity's reply before `unavailable`.
    pub call_timeout: Duration,
}

impl Default for EntityConfig {
    fn default() -> Self {
        EntityConfig {
            idle_after: Duration::from_secs(60),
            call_timeout: Duration::from_secs(10),
        }
    }
}

/// Start-up arguments of an entity actor.
pub struct EntityArgs<Id> {
    pub id: Id,
    /// What the entity reads and loads from.
    pub storage: Storage,
    /// Where its writes become durable: this node's WAL, or its shard's
    /// Raft group.
    pub log: Arc<dyn CommitLog>,
    pub router: ActorRef<RouterMsg>,
    /// Each user's connected devices, for fan-out.
    pub directory: Directory,
    pub config: EntityConfig,
    pub metrics: Arc<Metrics>,
    /// How a conversation writes its members' indexes, on this node or
    /// where their shards are led.
    pub indexes: Arc<dyn Indexes>,
}

/// The error for a failed commit. A local write that failed wrote
/// nothing; a replicated one may yet be committed, so the client is told to
/// retry with the same `cmid`, which cannot apply it twice.
pub(crate) fn commit_failed(err: StorageError) -> Error {
    if err.leaves_state_unknown() {
        tracing::warn!(error = %err, "write not confirmed");
        Error::Unconfirmed
    } else {
        storage_failed(err)
    }
}

/// The error for a read or write of storage that failed here: nothing
/// was written.
pub(crate) fn storage_failed(err: impl std::fmt::Display) -> Error {
    tracing::error!(error = %err, "entity storage failed");
    Error::Storage
}

/// Counts the requests handled (each counted in the router's table when
/// sent) and tells the router when the entity has been idle, so the router
/// can stop it without dropping anything in flight.
pub struct IdleClock {
    key: EntityKey,
    actor: ActorId,
    handled: u64,
    reported: u64,
    last_active: Instant,
    idle_after: Duration,
}

impl IdleClock {
    pub fn new(key: EntityKey, actor: ActorId, idle_after: Duration) -> IdleClock {
        IdleClock {
            key,
            actor,
            handled: 0,
            reported: u64::MAX,
            last_active: Instant::now(),
            idle_after,
        }
    }

    /// A request was handled.
    pub fn handled(&mut self) {
        self.handled += 1;
        self.last_active = Instant::now();
    }

    /// On a tick: tells the router once per quiet spell. `busy` keeps the
    /// actor alive regardless (a user with devices online).
    pub fn tick(&mut self, router: &ActorRef<RouterMsg>, busy: bool) {
        if busy || self.last_active.elapsed() < self.idle_after || self.reported == self.handled {
            return;
        }
        self.reported = self.handled;
        let _ = router.cast(RouterMsg::Idle {
            key: self.key.clone(),
            actor: self.actor,
            handled: self.handled,
        });
    }
}

/// How often entity actors check whether they are idle: a fraction of the
/// idle period. The router ticks them all on one timer.
pub fn tick_every(idle_after: Duration) -> Duration {
    (idle_after / 4).max(Duration::from_millis(5))
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
