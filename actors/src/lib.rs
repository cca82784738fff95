//! Tidings' actors: users, conversations and connections, the router that
//! finds them, and the storage they own.
//!
//! # Supervision tree
//!
//! ```text
//! node (tidings-node: HTTP + WebSocket front end)
//! ├── Router                      one per node; starts entity actors and stops idle ones
//! │                               (a request for a live one goes straight to it)
//! │   ├── ConversationActor × n   started on demand from storage, stopped when idle;
//! │   │                           owns one conversation's version counter and log
//! │   └── UserActor × n           started on demand from storage, stopped when idle;
//! │                               owns the user's notification log and counter
//! ├── ConnectionActor × n         one per WebSocket; subscribes its device to the
//! │                               user's fan-out list (the directory) and serves
//! │                               the client's frames
//! ├── NodeServer (ractor_cluster) in a cluster only: the links to the other
//! │                               nodes, one NodeSession each, every one
//! │                               admitted first by the node's own listener
//! │                               and handshake (`cluster::link`)
//! ├── PeerActor                   in a cluster only: this node's face to the others,
//! │                               in the process group `tidings.peers`
//! └── Membership                  in a cluster only: dials, re-dials with backoff,
//!                                 closes the link to a peer that stops answering
//! Replicator                      in a cluster only: this node's member of each
//!                                 shard's Raft group (openraft tasks, not actors)
//! Storage                         one RocksDB, shared; a committer thread group-commits
//! ```
//!
//! The router supervises the entity actors: an actor that fails is dropped
//! from the router's table and restarts from storage on the next request.
//! A write flows: connection → [`service`] (in a cluster, forwarded to the
//! node leading the entity's shard) → conversation actor, found in the
//! router's table or started by the router (check,
//! next version, durable commit — in a cluster through the shard's Raft
//! group, see [`replication`] — ack) → the outbound queue of each member's
//! devices, found in the [`directory`], each user's fan-out list, where
//! every connection subscribes its device. Reads go the same way, so a
//! conversation's actor is the one place that knows its state.
//!
//! A user's list of conversations is kept in the user's shard, not in each
//! conversation's. A membership change is therefore committed with an
//! outbox of the index changes it owes; the conversation then writes them
//! through the service to each member's user actor (wherever that shard is
//! led) before it acknowledges, and clears the outbox. An outbox left by a
//! failure is retried, by this actor or by the next leader's.

pub mod budget;
pub mod cluster;
pub mod codec;
pub mod command;
pub mod connection;
pub mod conversation;
pub mod directory;
pub mod entity;
pub mod messages;
pub mod metrics;
pub mod outbound;
pub mod replication;
pub mod router;
pub mod runtime;
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
