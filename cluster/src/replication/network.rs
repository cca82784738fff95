//! Raft's messages between nodes ride on the peer actors' cluster links.
//!
//! A request names its shard; the receiving node's peer actor hands it to
//! that shard's Raft. Both directions are encoded with the storage codec.

#![allow(
    clippy::result_large_err,
    reason = "openraft's error types are large; these helpers return them to its trait methods"
)]

use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::BasicNode;
use ractor::rpc::CallResult;
use serde::{Deserialize, Serialize};
use tidings_actors::codec::{self, Encoded};

use super::TypeConfig;
use crate::peer::PeerMsg;
use crate::Peers;

/// A Raft request for one shard, as it crosses nodes.
#[derive(Serialize, Deserialize)]
pub enum RaftRequest {
    Append(u16, AppendEntriesRequest<TypeConfig>),
    Vote(u16, VoteRequest<u64>),
    /// One chunk of a snapshot.
    Snapshot(u16, InstallSnapshotRequest<TypeConfig>),
}

/// The answer to a [`RaftRequest`].
#[derive(Serialize, Deserialize)]
pub enum RaftResponse {
    Append(Result<AppendEntriesResponse<u64>, RaftError<u64>>),
    Vote(Result<VoteResponse<u64>, RaftError<u64>>),
    Snapshot(Result<InstallSnapshotResponse<u64>, RaftError<u64, InstallSnapshotError>>),
}

/// Makes a [`Link`] to each member of one shard's group.
pub struct Network {
    pub shard: u16,
    pub peers: Peers,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Link;

    async fn new_client(&mut self, target: u64, node: &BasicNode) -> Link {
        Link {
            shard: self.shard,
            target,
            // A member's address in the group is its node id.
            node: node.addr.clone(),
            peers: self.peers.clone(),
        }
    }
}

/// One shard's way to one other member.
pub struct Link {
    shard: u16,
    target: u64,
    node: String,
    peers: Peers,
}

#[derive(Debug, thiserror::Error)]
enum LinkError {
    #[error("no link to node {0}")]
    Down(String),
    #[error("node {0} did not answer in time")]
    Timeout(String),
    #[error("bad Raft message: {0}")]
    Codec(#[from] codec::CodecError),
    #[error("node {0} does not serve the shard's group yet")]
    NotServing(String),
    #[error("node {0} answered out of turn")]
    Mismatch(String),
}

type Rpc<T, E = openraft::error::Infallible> =
    Result<T, RPCError<u64, BasicNode, RaftError<u64, E>>>;

impl Link {
    async fn call(&self, request: RaftRequest, ttl: Duration) -> Result<RaftResponse, LinkError> {
        let peer = self
            .peers
            .get(&self.node)
            .ok_or_else(|| LinkError::Down(self.node.clone()))?;
        let request = Encoded::new(&request)?;
        match peer
            .call(|reply| PeerMsg::Raft(request, reply), Some(ttl))
            .await
        {
            Ok(CallResult::Success(response)) => response
                .decode()?
                .ok_or(LinkError::NotServing(self.node.clone())),
            Ok(CallResult::Timeout) => Err(LinkError::Timeout(self.node.clone())),
            _ => Err(LinkError::Down(self.node.clone())),
        }
    }

    fn failed<E: std::error::Error>(
        &self,
        err: LinkError,
    ) -> RPCError<u64, BasicNode, RaftError<u64, E>> {
        match err {
            LinkError::Down(_) => RPCError::Unreachable(Unreachable::new(&err)),
            _ => RPCError::Network(NetworkError::new(&err)),
        }
    }

    fn remote<T, E: std::error::Error>(&self, answer: Result<T, RaftError<u64, E>>) -> Rpc<T, E> {
        answer.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for Link {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Rpc<AppendEntriesResponse<u64>> {
        match self
            .call(RaftRequest::Append(self.shard, rpc), option.hard_ttl())
            .await
        {
            Ok(RaftResponse::Append(answer)) => self.remote(answer),
            Ok(_) => Err(self.failed(LinkError::Mismatch(self.node.clone()))),
            Err(err) => Err(self.failed(err)),
        }
    }

    async fn vote(&mut self, rpc: VoteRequest<u64>, option: RPCOption) -> Rpc<VoteResponse<u64>> {
        match self
            .call(RaftRequest::Vote(self.shard, rpc), option.hard_ttl())
            .await
        {
            Ok(RaftResponse::Vote(answer)) => self.remote(answer),
            Ok(_) => Err(self.failed(LinkError::Mismatch(self.node.clone()))),
            Err(err) => Err(self.failed(err)),
        }
    }

    /// One chunk of a snapshot, for a replica missing entries the log no
    /// longer holds.
    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Rpc<InstallSnapshotResponse<u64>, InstallSnapshotError> {
        match self
            .call(RaftRequest::Snapshot(self.shard, rpc), option.hard_ttl())
            .await
        {
            Ok(RaftResponse::Snapshot(answer)) => self.remote(answer),
            Ok(_) => Err(self.failed(LinkError::Mismatch(self.node.clone()))),
            Err(err) => Err(self.failed(err)),
        }
    }
}
