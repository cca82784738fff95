//! Requests for an entity, in a form that crosses nodes.
//!
//! In a cluster a node serves a request itself only if it leads the
//! entity's shard; otherwise it forwards an [`Op`] to the leader's peer
//! actor, which runs it through its own service and sends the [`Answer`]
//! back. A node that turns out not to lead the shard says
//! [`Forwarded::NotLeader`] without running anything, naming the leader it
//! knows, and the sender asks again where the leader is.
//!
//! They travel as JSON: notification payloads are arbitrary JSON values,
//! which a non-self-describing format cannot read back.

use std::time::Duration;

use ractor::rpc::CallResult;
use ractor::ActorRef;
use serde::{Deserialize, Serialize};
use tidings_protocol::frames::{ConvSummary, SyncedConv, SyncedNotifications};
use tidings_protocol::{Cmid, ConvId, ErrorFrame, UserId};

use crate::cluster::peer::PeerMsg;
use crate::messages::{Ack, Created, HistoryPage, Page};
use crate::shard::{shard_of, ShardId};
use crate::storage::records::IndexEntry;

/// A request for one entity.
#[derive(Debug, Serialize, Deserialize)]
pub enum Op {
    Conv(ConvId, ConvOp),
    User(UserId, UserOp),
}

impl Op {
    pub fn shard(&self) -> ShardId {
        match self {
            Op::Conv(conv, _) => shard_of(conv.as_str()),
            Op::User(user, _) => shard_of(user.as_str()),
        }
    }
}

/// What a conversation is asked (the data of a [`crate::messages::ConvMsg`]).
#[derive(Debug, Serialize, Deserialize)]
pub enum ConvOp {
    Create {
        by: UserId,
        members: Vec<UserId>,
        title: Option<String>,
    },
    OpenDirect {
        by: UserId,
    },
    Send {
        by: UserId,
        body: String,
        cmid: Option<Cmid>,
        expect: Option<u64>,
    },
    Edit {
        by: UserId,
        target: u64,
        rev: u32,
        body: String,
    },
    Delete {
        by: UserId,
        target: u64,
        rev: u32,
    },
    Members {
        by: UserId,
        add: Vec<UserId>,
        remove: Vec<UserId>,
    },
    History {
        by: UserId,
        page: Page,
    },
    Summary {
        by: UserId,
    },
    Catchup {
        by: UserId,
        after: Option<u64>,
        limit: u32,
        #[serde(default = "crate::messages::default_reply_bytes")]
        max_bytes: usize,
    },
    Typing {
        by: UserId,
    },
}

/// What a user's stored state is asked (the data of a
/// [`crate::messages::UserMsg`]).
#[derive(Debug, Serialize, Deserialize)]
pub enum UserOp {
    Notify {
        payload: serde_json::Value,
    },
    Notifications {
        after: Option<u64>,
        limit: u32,
        #[serde(default = "crate::messages::default_reply_bytes")]
        max_bytes: usize,
    },
    Conversations,
    Index {
        conv: ConvId,
        entry: IndexEntry,
    },
    Block {
        user: UserId,
        block: bool,
    },
    Blocks {
        user: UserId,
    },
    BlockList,
}

/// The result of an [`Op`].
#[derive(Debug, Serialize, Deserialize)]
pub enum Answer {
    Created(Created),
    Ack(Ack),
    History(HistoryPage),
    Summary(ConvSummary),
    Synced(SyncedConv),
    Version(u64),
    Notifications(SyncedNotifications),
    Convs(Vec<ConvId>),
    Users(Vec<UserId>),
    Flag(bool),
    Done,
}

/// A forwarded request's outcome, as the serving node reports it.
#[derive(Debug, Serialize, Deserialize)]
pub enum Forwarded {
    Ran(Result<Answer, ErrorFrame>),
    /// This node does not lead the shard; nothing was run. The leader as
    /// this node knows it, if any.
    NotLeader {
        leader: Option<String>,
    },
}

/// What became of a forwarded request, as the sender sees it.
pub enum Outcome {
    Ran(Result<Answer, ErrorFrame>),
    /// Not run: ask where the leader is (the serving node's word on it, if
    /// it said) and send again.
    Retry(Option<String>),
    /// Sent, but no answer came: it may or may not have run.
    Lost,
}

/// Sends `op` to the peer actor `to` and waits up to `wait`.
pub async fn forward(to: &ActorRef<PeerMsg>, op: &Op, wait: Duration) -> Outcome {
    let bytes = match serde_json::to_vec(op) {
        Ok(bytes) => bytes,
        Err(err) => {
            return Outcome::Ran(Err(ErrorFrame::new(
                tidings_protocol::ErrorCode::Internal,
                format!("cannot forward the request: {err}"),
            )))
        }
    };
    match to
        .call(|reply| PeerMsg::Forward(bytes, reply), Some(wait))
        .await
    {
        Ok(CallResult::Success(bytes)) => match serde_json::from_slice(&bytes) {
            Ok(Forwarded::Ran(result)) => Outcome::Ran(result),
            Ok(Forwarded::NotLeader { leader }) => Outcome::Retry(leader),
            Err(err) => {
                tracing::warn!(error = %err, "undecodable answer to a forwarded request");
                Outcome::Lost
            }
        },
        // Not even queued towards the node: nothing left this one.
        Err(_) => Outcome::Retry(None),
        // The reply port was dropped (the link died on the way back, say)
        // or no answer came in time.
        Ok(CallResult::SenderError | CallResult::Timeout) => Outcome::Lost,
    }
}

/// The devices of `users` connected to the node of `peer`, in order; `None`
/// if it does not answer within `wait`.
pub async fn presence(
    peer: ActorRef<PeerMsg>,
    users: &[UserId],
    wait: Duration,
) -> Option<Vec<tidings_protocol::frames::PresenceInfo>> {
    let bytes = serde_json::to_vec(users).ok()?;
    match peer
        .call(|reply| PeerMsg::Presence(bytes, reply), Some(wait))
        .await
    {
        Ok(CallResult::Success(bytes)) => {
            let infos: Vec<_> = serde_json::from_slice(&bytes).ok()?;
            (infos.len() == users.len()).then_some(infos)
        }
        _ => None,
    }
}
