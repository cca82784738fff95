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
use tidings_actors::directory::Directory;
use tidings_actors::metrics::Metrics;
use tidings_actors::service::Service;

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

impl Hello {
    pub fn encode(&self) -> Vec<u8> {
        tidings_actors::codec::encode(self).unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> Option<Hello> {
        tidings_actors::codec::decode(bytes).ok()
    }
}

/// The process group every node's peer actor joins.
pub const GROUP: &str = "tidings.peers";

/// Messages between nodes. Variants travel by name: renaming one breaks a
/// cluster running mixed versions.
#[derive(RactorClusterMessage)]
pub enum PeerMsg {
    /// A heartbeat carrying the sender's [`Hello`]; answered with this
    /// node's.
    #[rpc]
    Ping(Vec<u8>, RpcReplyPort<Vec<u8>>),
    /// A Raft request for one shard ([`crate::replication::network`]).
    #[rpc]
    Raft(Vec<u8>, RpcReplyPort<Vec<u8>>),
    /// A client request for an entity this node should lead
    /// ([`crate::forward`]).
    #[rpc]
    Forward(Vec<u8>, RpcReplyPort<Vec<u8>>),
    /// Which of some users' devices are connected here
    /// ([`crate::forward::presence`]).
    #[rpc]
    Presence(Vec<u8>, RpcReplyPort<Vec<u8>>),
    /// An event for the devices connected here
    /// ([`tidings_actors::directory::Delivery`]).
    Deliver(Vec<u8>),
    /// Which users have devices on the sending node
    /// ([`crate::locations`]).
    Located(Vec<u8>),
    /// A linked node's greeting: whether this node formed the shard groups
    /// with it ([`crate::replication::rejoin`]).
    #[rpc]
    Knock(Vec<u8>, RpcReplyPort<Vec<u8>>),
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
                if let Some(hello) = Hello::decode(&hello) {
                    state.peers.heard_size(&hello.node, hello.nodes);
                }
                let mine = Hello {
                    node: state.node_id.clone(),
                    nodes: state.peers.size(),
                };
                let _ = reply.send(mine.encode());
                return Ok(());
            }
            // At once, in order: a request the same node sends after this
            // must find the location in place.
            PeerMsg::Located(bytes) => {
                let locations = state.peers.locations();
                if let Some(from) = locations.apply(&bytes) {
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
            PeerMsg::Raft(bytes, reply) => {
                tokio::spawn(async move {
                    let _ = reply.send(handlers.replicator.serve(bytes).await);
                });
            }
            PeerMsg::Forward(bytes, reply) => {
                tokio::spawn(async move {
                    let served =
                        crate::forward::serve(&handlers.replicator, &handlers.service, &bytes);
                    let _ = reply.send(served.await);
                });
            }
            PeerMsg::Knock(bytes, reply) => {
                tokio::spawn(async move {
                    let _ = reply.send(handlers.replicator.answer_knock(&bytes).await);
                });
            }
            PeerMsg::Presence(bytes, reply) => {
                let _ = reply.send(crate::forward::serve_presence(&handlers.service, &bytes));
            }
            PeerMsg::Deliver(bytes) => {
                handlers
                    .directory
                    .deliver_from_peer(&bytes, &handlers.metrics);
            }
        }
        Ok(())
    }
}
