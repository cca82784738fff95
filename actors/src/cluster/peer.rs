//! The peer actor: the one actor of each node that the other nodes see.
//!
//! It answers heartbeats now; requests for entities a node does not host
//! will come through it too.

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use ractor_cluster::RactorClusterMessage;

/// The process group every node's peer actor joins.
pub const GROUP: &str = "tidings.peers";

/// Messages between nodes. Variants travel by name: renaming one breaks a
/// cluster running mixed versions.
#[derive(RactorClusterMessage)]
pub enum PeerMsg {
    /// A heartbeat from the node named in it; answered with this node's id.
    #[rpc]
    Ping(String, RpcReplyPort<String>),
}

pub struct PeerActor;

impl Actor for PeerActor {
    type Msg = PeerMsg;
    type State = String;
    type Arguments = String;

    async fn pre_start(
        &self,
        myself: ActorRef<PeerMsg>,
        node_id: String,
    ) -> Result<String, ActorProcessingErr> {
        ractor::pg::join(GROUP.to_owned(), vec![myself.get_cell()]);
        Ok(node_id)
    }

    async fn handle(
        &self,
        _myself: ActorRef<PeerMsg>,
        message: PeerMsg,
        node_id: &mut String,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            PeerMsg::Ping(_from, reply) => {
                let _ = reply.send(node_id.clone());
            }
        }
        Ok(())
    }
}
