//! Commands for an entity, across nodes: the cluster's [`Placement`] of the
//! core's commands.
//!
//! In a cluster a node serves a command itself only if it leads the
//! entity's shard; otherwise it forwards the [`Command`] to the leader's
//! peer actor, which runs it through its own service ([`serve`]) and sends
//! the [`Answer`] back. A node that turns out not to lead the shard says
//! [`Forwarded::NotLeader`] without running anything, naming the leader it
//! knows, and the sender asks again where the leader is.
//!
//! They travel as JSON: notification payloads are arbitrary JSON values,
//! and answers carry the wire's events (tagged and flattened), neither of
//! which a non-self-describing format can read back.

use std::time::Duration;

use futures_util::future::{join_all, BoxFuture};
use ractor::rpc::CallResult;
use ractor::ActorRef;
use serde::{Deserialize, Serialize};
use tidings_actors::command::{Answer, Command};
use tidings_actors::remote::{Placed, Placement};
use tidings_actors::Service;
use tidings_protocol::frames::PresenceInfo;
use tidings_protocol::{ErrorFrame, UserId};

use crate::peer::PeerMsg;
use crate::replication::{Replicator, Route};

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

/// Sends `command` to the peer actor `to` and waits up to `wait`.
pub async fn forward(to: &ActorRef<PeerMsg>, command: &Command, wait: Duration) -> Outcome {
    let bytes = match serde_json::to_vec(command) {
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

impl Placement for Replicator {
    fn place<'a>(&'a self, command: &'a Command, wait: Duration) -> BoxFuture<'a, Placed> {
        Box::pin(async move {
            let shard = command.shard();
            match self.route(shard).await {
                Route::Local => Placed::Here,
                Route::Remote(leader) => match forward(&leader, command, wait).await {
                    Outcome::Ran(result) => Placed::Ran(result),
                    Outcome::Retry(leader) => {
                        self.note_leader(shard, leader);
                        Placed::NoLeader
                    }
                    Outcome::Lost => Placed::Lost,
                },
                Route::Unknown => Placed::NoLeader,
            }
        })
    }

    fn presence_elsewhere<'a>(
        &'a self,
        users: &'a [UserId],
        wait: Duration,
    ) -> BoxFuture<'a, Vec<Vec<PresenceInfo>>> {
        Box::pin(async move {
            let asks = self
                .peers()
                .all()
                .into_iter()
                .map(|peer| presence(peer, users, wait));
            join_all(asks).await.into_iter().flatten().collect()
        })
    }
}

/// Serves a command another node forwarded here, if this node leads its
/// shard; the encoded [`Forwarded`] answer.
pub async fn serve(replicator: &Replicator, service: &Service, bytes: &[u8]) -> Vec<u8> {
    let answer = match serde_json::from_slice::<Command>(bytes) {
        Err(err) => Forwarded::Ran(Err(ErrorFrame::bad_request(format!(
            "undecodable forwarded request: {err}"
        )))),
        Ok(command) => match replicator.route(command.shard()).await {
            Route::Local => Forwarded::Ran(service.run_here(command).await),
            _ => Forwarded::NotLeader {
                leader: replicator.leader_of(command.shard()),
            },
        },
    };
    serde_json::to_vec(&answer).unwrap_or_default()
}

/// Answers another node's presence question about the devices here.
pub fn serve_presence(service: &Service, bytes: &[u8]) -> Vec<u8> {
    let infos = match serde_json::from_slice::<Vec<UserId>>(bytes) {
        Ok(users) if users.len() <= tidings_protocol::MAX_PRESENCE_USERS => {
            service.local_presence(&users)
        }
        _ => Vec::new(),
    };
    serde_json::to_vec(&infos).unwrap_or_default()
}
