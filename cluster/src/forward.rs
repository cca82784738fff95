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
//! Commands, answers and presence questions cross in the core's one codec
//! ([`codec`]), as Raft's messages and deliveries do.

use std::time::Duration;

use futures_util::future::{join_all, BoxFuture};
use ractor::rpc::CallResult;
use ractor::ActorRef;
use serde::{Deserialize, Serialize};
use tidings_actors::codec::Encoded;
use tidings_actors::command::{Answer, Command};
use tidings_actors::remote::{Placed, Placement};
use tidings_actors::{Error, Service};
use tidings_protocol::frames::PresenceInfo;
use tidings_protocol::UserId;

use crate::peer::PeerMsg;
use crate::replication::{Replicator, Route};

/// A forwarded request's outcome, as the serving node reports it.
#[derive(Debug, Serialize, Deserialize)]
pub enum Forwarded {
    Ran(Answer),
    /// It ran and was refused, or failed.
    Refused(Error),
    /// This node does not lead the shard; nothing was run. The leader as
    /// this node knows it, if any.
    NotLeader {
        leader: Option<String>,
    },
}

impl Forwarded {
    fn ran(result: Result<Answer, Error>) -> Forwarded {
        match result {
            Ok(answer) => Forwarded::Ran(answer),
            Err(error) => Forwarded::Refused(error),
        }
    }
}

/// What became of a forwarded request, as the sender sees it.
pub enum Outcome {
    Ran(Result<Answer, Error>),
    /// Not run: ask where the leader is (the serving node's word on it, if
    /// it said) and send again.
    Retry(Option<String>),
    /// Sent, but no answer came: it may or may not have run.
    Lost,
}

/// Sends `command` to the peer actor `to` and waits up to `wait`.
pub async fn forward(to: &ActorRef<PeerMsg>, command: &Command, wait: Duration) -> Outcome {
    let command = match Encoded::new(command) {
        Ok(command) => command,
        Err(err) => {
            return Outcome::Ran(Err(Error::Internal(format!(
                "cannot forward the request: {err}"
            ))))
        }
    };
    match to
        .call(|reply| PeerMsg::Forward(command, reply), Some(wait))
        .await
    {
        Ok(CallResult::Success(answer)) => match answer.decode() {
            Ok(Forwarded::Ran(answer)) => Outcome::Ran(Ok(answer)),
            Ok(Forwarded::Refused(error)) => Outcome::Ran(Err(error)),
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
    let question = Encoded::new(&users.to_vec()).ok()?;
    match peer
        .call(|reply| PeerMsg::Presence(question, reply), Some(wait))
        .await
    {
        Ok(CallResult::Success(infos)) => {
            let infos = infos.decode().ok()?;
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
                Route::Local(tenure) => Placed::Here(tenure),
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
/// shard.
pub async fn serve(
    replicator: &Replicator,
    service: &Service,
    command: &Encoded<Command>,
) -> Forwarded {
    match command.decode() {
        Err(err) => Forwarded::Refused(Error::BadRequest(format!(
            "undecodable forwarded request: {err}"
        ))),
        Ok(command) => match replicator.route(command.shard()).await {
            Route::Local(tenure) => Forwarded::ran(service.run_here(command, tenure).await),
            _ => Forwarded::NotLeader {
                leader: replicator.leader_of(command.shard()),
            },
        },
    }
}

/// Answers another node's presence question about the devices of `users`
/// here; nothing for a question longer than a client may ask.
pub fn serve_presence(service: &Service, users: &[UserId]) -> Vec<PresenceInfo> {
    if users.len() > tidings_protocol::MAX_PRESENCE_USERS {
        return Vec::new();
    }
    service.local_presence(users)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tidings_actors::codec;
    use tidings_actors::error::Refusal;
    use tidings_protocol::error::CurrentMessage;
    use tidings_protocol::{ConvId, ErrorCode, ErrorFrame};

    fn back(forwarded: &Forwarded) -> Forwarded {
        codec::decode(&codec::encode(forwarded).unwrap()).unwrap()
    }

    #[test]
    fn a_refusal_crosses_with_what_is_current_and_without_it() {
        let conflict = Error::Refused(Refusal::StaleRevision {
            current: CurrentMessage {
                target: 3,
                rev: 2,
                body: None,
                from: UserId::try_from("ann").unwrap(),
            },
            rev: 1,
        });
        let missing = Error::Refused(Refusal::NoSuchConversation(ConvId::group("team").unwrap()));
        let blocked = Error::Forbidden("bo has blocked ann".into());
        for error in [conflict.clone(), missing, blocked, Error::Unconfirmed] {
            match back(&Forwarded::Refused(error.clone())) {
                Forwarded::Refused(back) => {
                    // The client is told the same on either node.
                    assert_eq!(
                        ErrorFrame::from(back.clone()),
                        ErrorFrame::from(error.clone())
                    );
                    assert_eq!(back, error);
                }
                other => panic!("came back as {other:?}"),
            }
        }
        let frame = ErrorFrame::from(conflict);
        assert_eq!(frame.code, ErrorCode::Conflict);
        assert_eq!(frame.current.map(|c| c.rev), Some(2));
        match back(&Forwarded::NotLeader {
            leader: Some("n2".into()),
        }) {
            Forwarded::NotLeader { leader } => assert_eq!(leader.as_deref(), Some("n2")),
            other => panic!("came back as {other:?}"),
        }
    }
}
