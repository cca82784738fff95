//! The peer actor: the one actor of each node that the other nodes see.
//! It starts once the node has all it serves with ([`Handlers`]); until
//! then the other nodes see this one as not up yet.
//!
//! It answers heartbeats, serves the Raft requests of the shard groups,
//! runs requests forwarded by nodes that do not lead the entity's shard,
//! and hands events for this node's devices to the directory, which
//! pushes them to the devices' queues (no other actor's mailbox on the
//! way: the router handles no message per delivery).

use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use ractor_cluster::RactorClusterMessage;
use serde::{Deserialize, Serialize};
use tidings_actors::codec::Encoded;
use tidings_actors::command::Command;
use tidings_actors::directory::{Delivery, Directory};
use tidings_actors::metrics::Metrics;
use tidings_actors::service::Service;
use tidings_protocol::frames::PresenceInfo;
use tidings_protocol::UserId;

use crate::forward::Forwarded;
use crate::locations::Located;
use crate::replication::elastic::{Task, Views};
use crate::replication::meta::{ClusterRecord, Operation, Refused};
use crate::replication::network::{RaftRequest, RaftResponse};
use crate::replication::rejoin::{self, Knock};
use crate::replication::Replicator;
use crate::Peers;

/// What a heartbeat says of its node: its id, and how many nodes its
/// cluster has (itself and its `--join`), which must be the same on every
/// node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub node: String,
    pub nodes: usize,
}

/// The process group every node's peer actor joins.
pub const GROUP: &str = "tidings.peers";

/// Messages between nodes. Variants travel by name: renaming one breaks a
/// cluster running mixed versions. Each carries its values [`Encoded`] in
/// the core's codec, typed, so sender and receiver agree on them at
/// compile time; the receiver decodes once, here or in the handler named.
#[derive(RactorClusterMessage)]
pub enum PeerMsg {
    /// A heartbeat carrying the sender's [`Hello`]; answered with this
    /// node's.
    #[rpc]
    Ping(Encoded<Hello>, RpcReplyPort<Encoded<Hello>>),
    /// A Raft request for one shard ([`crate::replication::network`]);
    /// `None` from a node that does not serve it (yet).
    #[rpc]
    Raft(
        Encoded<RaftRequest>,
        RpcReplyPort<Encoded<Option<RaftResponse>>>,
    ),
    /// A client request for an entity this node should lead
    /// ([`crate::forward`]).
    #[rpc]
    Forward(Encoded<Command>, RpcReplyPort<Encoded<Forwarded>>),
    /// Which of some users' devices are connected here
    /// ([`crate::forward::presence`]).
    #[rpc]
    Presence(
        Encoded<Vec<UserId>>,
        RpcReplyPort<Encoded<Vec<PresenceInfo>>>,
    ),
    /// An event for the devices connected here.
    Deliver(Encoded<Delivery>),
    /// Which users have devices on the sending node
    /// ([`crate::locations`]).
    Located(Encoded<Located>),
    /// A linked node's greeting: whether this node formed the shard groups
    /// with it ([`crate::replication::rejoin`]).
    #[rpc]
    Knock(Encoded<Knock>, RpcReplyPort<Encoded<rejoin::Answer>>),
    /// A change to the cluster for the metadata group's leader: run there,
    /// or passed on to it ([`crate::replication::meta`]).
    #[rpc]
    Operate(
        Encoded<Operation>,
        RpcReplyPort<Encoded<Result<ClusterRecord, Refused>>>,
    ),
    /// The groups this node holds, as it sees them, for the balancer.
    #[rpc]
    Shards(RpcReplyPort<Encoded<Views>>),
    /// A balancer task for a shard this node leads
    /// ([`crate::replication::elastic`]).
    #[rpc]
    Reconfigure(Encoded<Task>, RpcReplyPort<Encoded<Result<(), String>>>),
    /// Stand for election in a shard whose leader hands it over; answers
    /// whether this node won.
    #[rpc]
    Elect(Encoded<u16>, RpcReplyPort<Encoded<bool>>),
}

/// `encoded` as a `T`, or `None` with a warning naming `what` was dropped.
fn open<T: serde::de::DeserializeOwned>(encoded: &Encoded<T>, what: &str) -> Option<T> {
    encoded
        .decode()
        .inspect_err(|err| tracing::warn!(error = %err, "undecodable {what} dropped"))
        .ok()
}

/// Answers on `reply` with `value` encoded; a value that does not encode
/// gets no answer, which the sender sees as none coming.
fn answer<T: Serialize>(reply: RpcReplyPort<Encoded<T>>, value: &T) {
    match Encoded::new(value) {
        Ok(encoded) => {
            let _ = reply.send(encoded);
        }
        Err(err) => tracing::error!(error = %err, "cannot encode an answer to a peer"),
    }
}

/// What the peer actor serves with.
#[derive(Clone)]
pub struct Handlers {
    pub replicator: Replicator,
    pub service: Service,
    /// Where this node's devices are.
    pub directory: Directory,
    pub metrics: Arc<Metrics>,
}

pub struct PeerActor;

pub struct PeerState {
    node_id: String,
    handlers: Handlers,
    peers: Peers,
}

impl Actor for PeerActor {
    type Msg = PeerMsg;
    type State = PeerState;
    type Arguments = (String, Handlers, Peers);

    async fn pre_start(
        &self,
        myself: ActorRef<PeerMsg>,
        (node_id, handlers, peers): (String, Handlers, Peers),
    ) -> Result<PeerState, ActorProcessingErr> {
        ractor::pg::join(GROUP.to_owned(), vec![myself.get_cell()]);
        Ok(PeerState {
            node_id,
            handlers,
            peers,
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<PeerMsg>,
        message: PeerMsg,
        state: &mut PeerState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            PeerMsg::Ping(hello, reply) => {
                if let Some(hello) = open(&hello, "heartbeat") {
                    state.peers.heard_size(&hello.node, hello.nodes);
                }
                let mine = Hello {
                    node: state.node_id.clone(),
                    nodes: state.peers.size(),
                };
                answer(reply, &mine);
                return Ok(());
            }
            // At once, in order: a request the same node sends after this
            // must find the location in place.
            PeerMsg::Located(located) => {
                let Some(located) = open(&located, "location") else {
                    return Ok(());
                };
                let locations = state.peers.locations();
                if let Some(from) = locations.apply(located) {
                    if let Some(peer) = state.peers.get(&from) {
                        locations.introduce(&peer, false);
                    }
                }
                return Ok(());
            }
            _ => {}
        }
        let handlers = state.handlers.clone();
        // Raft and forwarded requests wait on disks and other nodes: they
        // run beside the actor, which keeps answering heartbeats.
        match message {
            PeerMsg::Ping(..) | PeerMsg::Located(_) => unreachable!("handled above"),
            PeerMsg::Raft(request, reply) => {
                // An undecodable request is answered like one this node
                // does not serve.
                let request = open(&request, "Raft request");
                tokio::spawn(async move {
                    let response = match request {
                        Some(request) => handlers.replicator.serve(request).await,
                        None => None,
                    };
                    answer(reply, &response);
                });
            }
            PeerMsg::Forward(command, reply) => {
                tokio::spawn(async move {
                    let served =
                        crate::forward::serve(&handlers.replicator, &handlers.service, &command);
                    answer(reply, &served.await);
                });
            }
            PeerMsg::Knock(knock, reply) => {
                let Some(knock) = open(&knock, "knock") else {
                    return Ok(());
                };
                tokio::spawn(async move {
                    answer(reply, &handlers.replicator.answer_knock(knock).await);
                });
            }
            PeerMsg::Presence(users, reply) => {
                let infos = match open(&users, "presence question") {
                    Some(users) => crate::forward::serve_presence(&handlers.service, &users),
                    None => Vec::new(),
                };
                answer(reply, &infos);
            }
            PeerMsg::Operate(op, reply) => {
                let Some(op) = open(&op, "cluster operation") else {
                    return Ok(());
                };
                tokio::spawn(async move {
                    answer(reply, &handlers.replicator.operate(op).await);
                });
            }
            PeerMsg::Shards(reply) => answer(reply, &handlers.replicator.views()),
            PeerMsg::Reconfigure(task, reply) => {
                let Some(task) = open(&task, "balancer task") else {
                    return Ok(());
                };
                tokio::spawn(async move {
                    answer(reply, &handlers.replicator.carry_out(task).await);
                });
            }
            PeerMsg::Elect(shard, reply) => {
                let Some(shard) = open(&shard, "election request") else {
                    return Ok(());
                };
                tokio::spawn(async move {
                    answer(reply, &handlers.replicator.elect(shard).await);
                });
            }
            PeerMsg::Deliver(delivery) => {
                handlers
                    .directory
                    .deliver_from_peer(&delivery, &handlers.metrics);
            }
        }
        Ok(())
    }
}
