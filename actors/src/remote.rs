//! What the core needs of a cluster, as the two traits a cluster
//! implements (the `tidings-cluster` crate): where a command runs
//! ([`Placement`]), and the devices on other nodes ([`RemoteFanout`]).
//!
//! The core (entities, their commands, storage, the directory and the
//! service) knows nothing of links, peers or Raft: on a single node it has
//! neither trait object, and everything runs here. The third seam, the
//! commit, is [`crate::storage::CommitLog`]: `Storage` itself on a single
//! node, the shard groups in a cluster.

use std::time::Duration;

use futures_util::future::BoxFuture;
use tidings_protocol::frames::PresenceInfo;
use tidings_protocol::UserId;

use crate::error::Error;

use crate::command::{Answer, Command};
use crate::outbound::Frame;

/// A stretch of time in which this node serves a shard without a break.
/// A later tenure means that in between the shard was served elsewhere, or
/// its state was in doubt (a write went unconfirmed): its entity actors
/// loaded before it may hold stale counters, and are replaced before the
/// first command of the new tenure reaches them
/// ([`crate::router::Routes::conv_in`]). Tenures only grow, per shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Tenure(pub u64);

impl Tenure {
    /// A node on its own serves every shard in one tenure, from start to
    /// stop.
    pub const SOLE: Tenure = Tenure(0);
}

/// What became of asking where a command runs.
#[derive(Debug)]
pub enum Placed {
    /// This node leads the command's shard, in this tenure: run it here.
    Here(Tenure),
    /// The node that leads the shard ran it; its answer.
    Ran(Result<Answer, Error>),
    /// No leader is known or reachable right now, or the node asked no
    /// longer leads: nothing ran; ask again.
    NoLeader,
    /// Sent to the leader, and no answer came: it may or may not have run.
    Lost,
}

/// Where commands run in a cluster: on the node that leads their shard.
pub trait Placement: Send + Sync + 'static {
    /// Runs `command` where its shard is led if that is another node
    /// (waiting at most `wait` for it), or says to run it here.
    fn place<'a>(&'a self, command: &'a Command, wait: Duration) -> BoxFuture<'a, Placed>;

    /// The devices of `users` on each other node that answered within
    /// `wait`, one list per node in the order of `users`.
    fn presence_elsewhere<'a>(
        &'a self,
        users: &'a [UserId],
        wait: Duration,
    ) -> BoxFuture<'a, Vec<Vec<PresenceInfo>>>;
}

/// The devices on the other nodes of a cluster.
pub trait RemoteFanout: Send + Sync + 'static {
    /// Hands `frame` to every other node that has (or may have) a device
    /// of one of `users`, for those devices (not `except`'s).
    fn deliver(&self, users: &[UserId], except: Option<&UserId>, frame: &Frame);

    /// Tells the other nodes whether `user` has a device here (they send
    /// its events here only if so).
    fn announce(&self, user: &UserId, online: bool);
}
