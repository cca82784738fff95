//! Tidings' core: users, conversations and connections as actors, their
//! commands and rules, the router that finds them, the directory their
//! events fan out through, the service both front ends call, and the
//! storage they own.
//!
//! The core knows nothing of a cluster. It defines what it needs of one
//! ([`remote::Placement`]: where a command runs; [`remote::RemoteFanout`]:
//! the devices on other nodes; [`storage::CommitLog`]: where writes
//! become durable), and the `tidings-cluster` crate implements them, with
//! the links between nodes, the shard groups and the node's one start-up
//! (`tidings_cluster::runtime::Runtime`). Nothing here imports it. The
//! core is started with them, or without on a single node ([`start`]);
//! nothing is handed to it later.
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
pub mod error;
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

use ractor::Actor;

pub use entity::EntityConfig;
pub use error::Error;
pub use messages::RouterMsg;
pub use metrics::Metrics;
pub use service::{Service, ServiceConfig};
pub use storage::{Storage, StorageError, StorageOptions};

/// What the core starts with.
pub struct CoreArgs {
    pub storage: Storage,
    /// Where entities' writes become durable: `storage` itself on a single
    /// node, the shard groups in a cluster.
    pub log: Arc<dyn storage::CommitLog>,
    pub entity: EntityConfig,
    pub metrics: Arc<Metrics>,
    /// The service's parts: the directory fan-out goes through, the call
    /// timeout, the reply bound and, in a cluster, the placement.
    pub service: ServiceConfig,
}

/// The core, started: the service the front ends call, the routes to the
/// entity actors, and the router's task.
pub struct Core {
    pub service: Service,
    pub routes: router::Routes,
    pub router_task: tokio::task::JoinHandle<()>,
}

/// Starts the node's router and, through it, everything the entities need:
/// they get the service they reach each other through, the commit log and
/// the directory as they start. On a single node, conversations whose
/// outboxes a crash left owing are woken at once.
pub async fn start(args: CoreArgs) -> Result<Core, ractor::SpawnErr> {
    let live = Arc::new(router::Live::default());
    let config = args.service.clone();
    let (router, router_task) = Actor::spawn(
        None,
        router::Router,
        router::RouterArgs {
            storage: args.storage,
            log: args.log,
            config: args.entity,
            metrics: args.metrics,
            directory: args.service.directory.clone(),
            clustered: args.service.placement.is_some(),
            indexes: Box::new(move |routes| Arc::new(Service::new(routes, config))),
            live: live.clone(),
        },
    )
    .await?;
    // The same parts the router built its entities' service from.
    let routes = router::Routes::new(router, live);
    Ok(Core {
        service: Service::new(routes.clone(), args.service),
        routes,
        router_task,
    })
}
