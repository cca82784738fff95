//! The cluster: the links between nodes.
//!
//! Each node runs a ractor_cluster `NodeServer` on its cluster address, with
//! the shared cookie, and one [`peer::PeerActor`] in the process group
//! [`peer::GROUP`]: the only actor of a node that the others see. Entity
//! actors never cross nodes (their messages are local-only), so a peer link
//! carries no per-entity mirrors.
//!
//! ractor_cluster neither re-dials a lost peer nor notices a hung one (a
//! frozen process keeps its TCP connections open, and the kernel waits for
//! minutes). [`membership::Membership`] does both: it dials every node it
//! knows of, again with exponential backoff whenever the link drops, pings
//! each connected peer's `PeerActor`, and closes the link to a peer that has
//! not answered for `peer_timeout`, so that it is redialled and seen as down
//! meanwhile. Nodes started in any order thus form one cluster, and a node
//! restarted with the same address joins again.

pub mod locations;
pub mod membership;
pub mod peer;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

use ractor::{Actor, ActorRef};
use ractor_cluster::{NodeServer, NodeServerMessage};
use serde::Serialize;
use tidings_protocol::UserId;
use tokio::sync::watch;

use locations::Locations;
use membership::{Membership, MembershipArgs, MembershipMsg};
use peer::{Handlers, PeerActor, PeerMsg};

/// What a node needs to take part in a cluster.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// This node's name, unique in the cluster.
    pub node_id: String,
    /// The address the other nodes dial.
    pub listen: SocketAddr,
    /// The other nodes' cluster addresses.
    pub join: Vec<SocketAddr>,
    /// The secret every node shares.
    pub cookie: String,
    /// How long a peer may go without answering before it counts as down.
    pub peer_timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("starting the cluster listener: {0}")]
    Spawn(#[from] ractor::SpawnErr),
}

/// Whether a node is reachable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeState {
    Up,
    Down,
}

/// One node as this node sees it.
#[derive(Debug, Clone, Serialize)]
pub struct NodeView {
    /// Its node id, once a link to it has told us.
    pub id: Option<String>,
    pub addr: SocketAddr,
    pub state: NodeState,
    /// When it last changed state (ms since the Unix epoch).
    pub since: u64,
    /// Whether this is the node answering.
    #[serde(rename = "self")]
    pub local: bool,
    /// How many nodes it was started with (itself and its `--join`), once
    /// a heartbeat has told; the same on every node of a healthy cluster.
    pub nodes: Option<usize>,
}

/// The cluster as this node sees it.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterView {
    pub node: String,
    pub nodes: Vec<NodeView>,
}

/// The peer actors of the nodes linked now, by node id: kept by
/// [`membership::Membership`], read by whoever sends to another node; and
/// where users' devices are on them ([`Locations`]).
#[derive(Clone)]
pub struct Peers {
    linked: Arc<RwLock<HashMap<String, ActorRef<PeerMsg>>>>,
    /// Counts links lost: whatever was queued on them is gone.
    losses: Arc<watch::Sender<u64>>,
    locations: Arc<Locations>,
    /// How many nodes this node's cluster has (itself and its `--join`).
    size: usize,
    /// How many each other node says its cluster has, from heartbeats.
    sizes: Arc<RwLock<HashMap<String, usize>>>,
}

/// Whether the linked nodes were started with as many cluster nodes as
/// this one ([`Peers::agreement`]).
#[derive(Debug, PartialEq, Eq)]
pub enum Agreement {
    /// Every one of them has said so.
    Agreed,
    /// Some have not said yet.
    Unknown,
    /// These nodes (and their counts) differ.
    Disagree(Vec<(String, usize)>),
}

impl Peers {
    /// The peers of the node named `node`, in a cluster of `size` nodes.
    pub fn new(node: String, size: usize) -> Peers {
        Peers {
            linked: Arc::default(),
            losses: Arc::new(watch::Sender::new(0)),
            locations: Arc::new(Locations::new(node)),
            size,
            sizes: Arc::default(),
        }
    }

    /// How many nodes this node's cluster has.
    pub fn size(&self) -> usize {
        self.size
    }

    /// Notes how many nodes `node` says its cluster has (from its
    /// heartbeat or its answer to ours); says so once if that differs from
    /// this node's count.
    pub fn heard_size(&self, node: &str, size: usize) {
        let mut sizes = self.sizes.write().expect("peers lock");
        let before = sizes.insert(node.to_owned(), size);
        if size != self.size && before != Some(size) {
            tracing::error!(
                peer = %node,
                its_nodes = size,
                our_nodes = self.size,
                "this node and its peer were started with different --join lists; \
                 shard groups will not form until every node gets the same list"
            );
        }
    }

    /// How many nodes `node` said its cluster has, once heard.
    pub fn size_of(&self, node: &str) -> Option<usize> {
        self.sizes.read().expect("peers lock").get(node).copied()
    }

    /// Whether `nodes` were all started with as many cluster nodes as this
    /// one. Shards are placed by the node list, so nodes that disagree on
    /// it must not form groups together.
    pub fn agreement(&self, nodes: &[String]) -> Agreement {
        let sizes = self.sizes.read().expect("peers lock");
        let mut differ = Vec::new();
        for node in nodes {
            match sizes.get(node) {
                None => return Agreement::Unknown,
                Some(&size) if size != self.size => differ.push((node.clone(), size)),
                Some(_) => {}
            }
        }
        if differ.is_empty() {
            Agreement::Agreed
        } else {
            Agreement::Disagree(differ)
        }
    }

    pub fn locations(&self) -> &Locations {
        &self.locations
    }

    pub fn get(&self, node: &str) -> Option<ActorRef<PeerMsg>> {
        self.linked.read().expect("peers lock").get(node).cloned()
    }

    /// The ids of the linked nodes.
    pub fn names(&self) -> Vec<String> {
        let linked = self.linked.read().expect("peers lock");
        linked.keys().cloned().collect()
    }

    /// Every linked node's peer actor.
    pub fn all(&self) -> Vec<ActorRef<PeerMsg>> {
        let linked = self.linked.read().expect("peers lock");
        linked.values().cloned().collect()
    }

    /// Changes whenever a link to a node is lost.
    pub fn losses(&self) -> watch::Receiver<u64> {
        self.losses.subscribe()
    }

    /// For an event to `users`: each linked node that has (or may have) a
    /// device of one of them, with those of them.
    pub fn recipients(&self, users: &[UserId]) -> Vec<(ActorRef<PeerMsg>, Vec<UserId>)> {
        let linked = self.linked.read().expect("peers lock");
        linked
            .iter()
            .filter_map(|(name, peer)| {
                Some((peer.clone(), self.locations.recipients(name, users)?))
            })
            .collect()
    }

    /// Tells the linked nodes whether `user` has a device here, if that
    /// changed ([`Locations::announce`]).
    pub fn announce(&self, user: &UserId, online: bool) {
        self.locations.announce(user, online, || self.all());
    }

    /// Publishes the nodes linked now. A node whose link is gone or new
    /// (a new session) is forgotten in [`Locations`]; a new link is sent
    /// this node's users and asked for its own.
    fn replace(&self, peers: HashMap<String, ActorRef<PeerMsg>>) {
        let mut fresh = Vec::new();
        {
            let mut linked = self.linked.write().expect("peers lock");
            for (name, old) in linked.iter() {
                if peers
                    .get(name)
                    .is_none_or(|new| new.get_id() != old.get_id())
                {
                    self.locations.forget(name);
                }
            }
            for (name, new) in &peers {
                if linked
                    .get(name)
                    .is_none_or(|old| old.get_id() != new.get_id())
                {
                    fresh.push(new.clone());
                }
            }
            *linked = peers;
        }
        for peer in fresh {
            self.locations.introduce(&peer, true);
        }
    }

    fn lost_one(&self) {
        self.losses.send_modify(|n| *n += 1);
    }
}

/// This node's part of the cluster: cheap to clone.
#[derive(Clone)]
pub struct Cluster {
    membership: ActorRef<MembershipMsg>,
    server: ActorRef<NodeServerMessage>,
    peer: ActorRef<PeerMsg>,
    peers: Peers,
    handlers: Arc<OnceLock<Handlers>>,
    expected: usize,
}

impl Cluster {
    /// Listens on `config.listen` and starts dialling the other nodes.
    pub async fn start(config: ClusterConfig) -> Result<Cluster, ClusterError> {
        // Peers learn our address from this host and the port: bracket an
        // IPv6 address so that "host:port" parses back.
        let host = match config.listen.ip() {
            std::net::IpAddr::V4(ip) => ip.to_string(),
            std::net::IpAddr::V6(ip) => format!("[{ip}]"),
        };
        let server = NodeServer::new(
            config.listen.port(),
            config.cookie.clone(),
            config.node_id.clone(),
            host,
            None,
            Some(ractor_cluster::node::NodeConnectionMode::Isolated),
        )
        .with_listen_addr(config.listen.ip());
        let (server, _) = Actor::spawn(None, server, ()).await?;
        let handlers = Arc::new(OnceLock::new());
        let peers = Peers::new(config.node_id.clone(), config.join.len() + 1);
        let (peer, _) = Actor::spawn(
            None,
            PeerActor,
            (config.node_id.clone(), handlers.clone(), peers.clone()),
        )
        .await?;
        let expected = config.join.len();
        let (membership, _) = Actor::spawn(
            None,
            Membership,
            MembershipArgs {
                config,
                server: server.clone(),
                peers: peers.clone(),
            },
        )
        .await?;
        Ok(Cluster {
            membership,
            server,
            peer,
            peers,
            handlers,
            expected,
        })
    }

    /// The linked nodes' peer actors.
    pub fn peers(&self) -> &Peers {
        &self.peers
    }

    /// How many other nodes the cluster was started with.
    pub fn expected_peers(&self) -> usize {
        self.expected
    }

    /// Starts serving other nodes' Raft, forwarded and delivery requests.
    pub fn serve(&self, handlers: Handlers) {
        let _ = self.handlers.set(handlers);
    }

    /// Every node this one knows of, and whether each is up.
    pub async fn view(&self) -> Option<ClusterView> {
        self.membership
            .call(MembershipMsg::View, Some(Duration::from_secs(2)))
            .await
            .ok()?
            .success_or(())
            .ok()
    }

    /// Closes every link and stops listening.
    pub fn stop(&self) {
        self.membership.stop(None);
        self.peer.stop(None);
        self.server.stop(None);
    }
}
