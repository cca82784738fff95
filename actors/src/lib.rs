//! Tidings' core: users, conversations and connections as actors, their
//! commands and rules, the router that finds them, the directory their
//! events fan out through, the service both front ends call, and the
//! storage they own.
//!
//! The core knows nothing of a cluster. It defines what it needs of one
//! ([`remote::Placement`]: where a command runs; [`remote::RemoteFanout`]:
//! the devices on other nodes; [`storage::ReplicatedLog`]: a replicated
//! commit), and the `tidings-cluster` crate implements them, with the
//! links between nodes, the shard groups and the node's one start-up
//! (`tidings_cluster::runtime::Runtime`). Nothing here imports it.
//!
//! # Supervision tree
//!
//! ```text
//! Router                      one per node; starts entity actors and stops idle ones
//! │                           (a request for a live one goes straight to it)
//! ├── ConversationActor × n   started on demand from storage, stopped when idle;
//! │                           owns one conversation's version counter and log
//! └── UserActor × n           started on demand from storage, stopped when idle;
//!                             owns the user's notification log and counter
//! Connection × n              one per WebSocket, owned by its socket's reader
//!                             (not an actor: its one caller awaits each frame);
//!                             subscribes its device to the user's fan-out list
//!                             (the directory) and serves the client's frames
//! Storage                     one RocksDB, shared; a committer thread group-commits
//! ```
//!
//! (In a cluster, `tidings-cluster` adds the links, the peer actor,
//! membership and the shard groups beside these.)
//!
//! The router supervises the entity actors: an actor that fails is dropped
//! from the router's table and restarts from storage on the next request.
//! A write flows: connection → [`service`], which maps the client frame to
//! a [`command::Command`] (in a cluster, run where the entity's shard is
//! led) → conversation actor, found in the router's table or started by the
//! router; its rule decides ([`conversation::rules`]), then the next
//! version, a durable commit (in a cluster through the shard's Raft group)
//! and the ack → the outbound queue of each member's devices, found in the
//! [`directory`], each user's fan-out list, where every connection
//! subscribes its device. Reads go the same way, so a conversation's actor
//! is the one place that knows its state.
//!
//! A user's list of conversations is kept in the user's shard, not in each
//! conversation's. A membership change is therefore committed with an
//! outbox of the index changes it owes; the conversation then writes them
//! through the service to each member's user actor (wherever that shard is
//! led) before it acknowledges, and clears the outbox. An outbox left by a
//! failure is retried, by this actor or by the next leader's.

pub mod budget;
pub mod codec;
pub mod command;
pub mod connection;
pub mod conversation;
pub mod directory;
pub mod entity;
pub mod index;
pub mod messages;
pub mod metrics;
pub mod outbound;
pub mod remote;
pub mod router;
pub mod service;
pub mod shard;
pub mod storage;
pub mod user;

use std::sync::Arc;

use ractor::{Actor, ActorRef};

pub use entity::EntityConfig;
pub use messages::RouterMsg;
pub use metrics::Metrics;
pub use service::Service;
pub use storage::{Storage, StorageError, StorageOptions};

/// Starts the node's router over `storage`, delivering through `directory`;
/// returns the routes to its entity actors. Send the router
/// [`RouterMsg::Serve`] before any request: entities reach each other
/// through that service.
pub async fn start_router(
    storage: Storage,
    config: EntityConfig,
    metrics: Arc<Metrics>,
    directory: directory::Directory,
) -> Result<(router::Routes, tokio::task::JoinHandle<()>), ractor::SpawnErr> {
    let live = Arc::new(router::Live::default());
    let (router, task) = Actor::spawn(
        None,
        router::Router,
        router::RouterArgs {
            storage,
            config,
            metrics,
            directory,
            live: live.clone(),
        },
    )
    .await?;
    Ok((router::Routes::new(router, live), task))
}

/// Wakes every conversation of `shard` (of every shard if `None`) whose
/// stored outbox still owes its members' indexes, so that it finishes:
/// after a restart on a single node, or when this node starts leading the
/// shard in a cluster.
pub fn settle_outboxes(
    router: &ActorRef<RouterMsg>,
    storage: &Storage,
    shard: Option<shard::ShardId>,
) -> Result<usize, StorageError> {
    let shards = match shard {
        Some(shard) => shard.0..shard.0 + 1,
        None => 0..shard::SHARDS,
    };
    let mut woken = 0;
    for shard in shards {
        let from = storage::keys::outboxes(shard);
        let to = storage::keys::outboxes(shard + 1);
        for (key, _) in storage.scan_raw(storage::Cf::ConvMeta, &from, &to, usize::MAX)? {
            let conv = std::str::from_utf8(&key[from.len()..])
                .ok()
                .and_then(|id| tidings_protocol::ConvId::try_from(id).ok());
            if let Some(conv) = conv {
                let _ = router.cast(RouterMsg::Conv(conv, messages::ConvMsg::Settle));
                woken += 1;
            }
        }
    }
    Ok(woken)
}
