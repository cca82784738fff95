//! The messages the actors exchange. Entity actors' messages are local-only:
//! the commands they carry ([`crate::command`]) are what crosses nodes
//! (replies carry client-safe [`ErrorFrame`]s).

use ractor::{ActorId, RpcReplyPort};
use ractor_cluster::RactorMessage;
use tidings_protocol::{ConvId, ErrorFrame, Event, UserId};

use serde::{Deserialize, Serialize};

use crate::command::{Answer, ConvCommand, UserCommand};
use crate::service::Service;

/// A reply that is either what was asked or a client-safe error.
pub type Reply<T> = RpcReplyPort<Result<T, ErrorFrame>>;

/// A conversation was created or opened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Created {
    pub conv: ConvId,
    pub version: u64,
}

/// A write was accepted and is durable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    pub conv: ConvId,
    pub version: u64,
    pub ts: u64,
    /// `Some` on sends: whether the cmid had been accepted before.
    pub dup: Option<bool>,
}

/// A page of a conversation's log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryPage {
    pub conv: ConvId,
    pub version: u64,
    pub events: Vec<Event>,
    /// The page was cut at the reply's byte bound: more events follow in
    /// the direction it pages.
    #[serde(default)]
    pub more: bool,
}

/// Which part of a log a history request wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Page {
    pub after: Option<u64>,
    pub before: Option<u64>,
    pub limit: u32,
    /// The most JSON bytes of events the page may carry (at least one
    /// event goes in).
    #[serde(default = "default_reply_bytes")]
    pub max_bytes: usize,
}

/// The byte bound of a request from a node that named none.
pub fn default_reply_bytes() -> usize {
    crate::budget::DEFAULT_MAX_REPLY_BYTES
}

/// What a conversation actor is asked.
#[derive(RactorMessage)]
pub enum ConvMsg {
    /// A command, and where its answer goes.
    Command(ConvCommand, Reply<Answer>),
    /// Finish the index changes a stored outbox still owes (after a
    /// restart, or on a shard's new leader).
    Settle,
    /// Internal: check whether the actor has been idle long enough to stop.
    Tick,
    /// Internal, from the router: stop now.
    Shutdown,
}

/// What a user actor is asked.
#[derive(RactorMessage)]
pub enum UserMsg {
    /// A command, and where its answer goes.
    Command(UserCommand, Reply<Answer>),
    Tick,
    Shutdown,
}

/// Which entity an actor serves.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum EntityKey {
    Conv(ConvId),
    User(UserId),
}

/// What the router is asked. A request for an entity comes here only when
/// the entity has no live actor ([`crate::router::Routes`]).
#[derive(RactorMessage)]
pub enum RouterMsg {
    Conv(ConvId, ConvMsg),
    User(UserId, UserMsg),
    /// An entity actor has been idle after handling `handled` messages.
    /// `actor` says which: a report that reaches the router after the actor
    /// it came from was replaced (it failed) must not stop the new one.
    Idle {
        key: EntityKey,
        actor: ActorId,
        handled: u64,
    },
    /// Time for every live entity actor to check whether it is idle (one
    /// timer per node rather than one task per actor).
    Tick,
    /// In a cluster: a link to another node was lost with whatever was on
    /// it; every device here is told to sync.
    Resync,
    /// The service entity actors use to reach other entities (a
    /// conversation writing its members' indexes), wherever they are led.
    /// Sent once at start, before any request.
    Serve(Service),
}
