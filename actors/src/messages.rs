//! The messages the actors exchange. Entity actors' messages are local-only:
//! the commands they carry ([`crate::command`]) are what crosses nodes
//! (replies carry the core's [`Error`]).

use ractor::{ActorId, RpcReplyPort};
use ractor_cluster::RactorMessage;
use tidings_protocol::{ConvId, UserId};

use crate::error::Error;

use crate::command::{Answer, ConvCommand, UserCommand};
use crate::shard::ShardId;

/// A reply that is either what was asked or a client-safe error.
pub type Reply<T> = RpcReplyPort<Result<T, Error>>;

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
    /// Wake every conversation of the shard whose stored outbox still
    /// owes its members' indexes, so that it finishes: at start on a single
    /// node (every shard), and when a tenure begins in a cluster.
    Settle(Option<ShardId>),
}
