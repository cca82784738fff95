//! Tidings' cluster, over the core (`tidings-actors`), which it implements
//! the seams of: the links between nodes (this module and [`link`],
//! [`membership`], [`peer`], [`locations`]), a Raft group per shard
//! ([`replication`], the core's `CommitLog`), commands run where their
//! shard is led ([`forward`], the core's `Placement`), the devices on other
//! nodes ([`Peers`], the core's `RemoteFanout`), and the node's one
//! start-up ([`runtime::Runtime`]). The core imports nothing from here.
//!
//! # The links between nodes
//!
//! Each node listens on its cluster address itself and lets a connection in
//! only after [`link`]'s handshake (inside mutual TLS with
//! `--cluster-certs`): the peer proves the cookie in a way bound to the
//! direction and both node ids. Only then is the connection handed to a
//! ractor_cluster `NodeServer`, whose own listener (on loopback, port 0)
//! admits no one. Each node has one [`peer::PeerActor`] in the process group
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

pub mod forward;
pub mod link;
pub mod locations;
pub mod membership;
pub mod peer;
pub mod planner;
pub mod replication;
pub mod runtime;

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use ractor::{Actor, ActorRef};
use ractor_cluster::{IncomingEncryptionMode, NodeServer, NodeServerMessage};
use serde::Serialize;
use tidings_actors::directory::Delivery;
use tidings_actors::outbound::Frame;
use tidings_actors::remote::RemoteFanout;
use tidings_protocol::UserId;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::task::AbortHandle;

use link::{Gate, Tls, TlsError};

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
    /// The directory of `ca.crt`, `node.crt` and `node.key`: every link is
    /// mutual TLS. Without it, links are plaintext (loopback only).
    pub certs: Option<PathBuf>,
    /// How long a connection has to finish TLS and the handshake.
    pub handshake_timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("starting an actor: {0}")]
    Spawn(#[from] ractor::SpawnErr),
    #[error("listening on {addr}: {error}")]
    Bind {
        addr: SocketAddr,
        error: std::io::Error,
    },
    #[error("loading --cluster-certs: {0}")]
    Tls(#[from] TlsError),
}

/// At most this many connections may be in their handshake at once; more
/// are closed at once, so that a flood of silent sockets holds a bounded
/// number of tasks and buffers.
const MAX_HANDSHAKES: usize = 256;

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
    /// This node's cluster address.
    addr: SocketAddr,
    /// The cluster address of each node linked now, by node id.
    addrs: Arc<RwLock<HashMap<String, SocketAddr>>>,
    /// Nodes to dial beyond `--join`, and nodes never to dial again (the
    /// removed ones): the cluster record's.
    wanted: Arc<watch::Sender<(Vec<SocketAddr>, Vec<SocketAddr>)>>,
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

/// Events for devices on other nodes: one [`PeerMsg::Deliver`] to each
/// node that has (or may have) a device of a recipient.
impl RemoteFanout for Peers {
    fn deliver(&self, users: &[UserId], except: Option<&UserId>, frame: &Frame) {
        for (node, users) in self.recipients(users) {
            match Delivery::encode(&users, except, frame) {
                Ok(delivery) => {
                    let _ = node.cast(PeerMsg::Deliver(delivery));
                }
                Err(err) => tracing::error!(error = %err, "cannot encode a delivery"),
            }
        }
    }

    fn announce(&self, user: &UserId, online: bool) {
        Peers::announce(self, user, online);
    }
}

impl Peers {
    /// The peers of the node named `node`, listening on `addr`, in a
    /// cluster of `size` nodes.
    pub fn new(node: String, addr: SocketAddr, size: usize) -> Peers {
        Peers {
            linked: Arc::default(),
            losses: Arc::new(watch::Sender::new(0)),
            locations: Arc::new(Locations::new(node)),
            size,
            sizes: Arc::default(),
            addr,
            addrs: Arc::default(),
            wanted: Arc::new(watch::Sender::new((Vec::new(), Vec::new()))),
        }
    }

    /// This node's cluster address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The cluster address of linked node `node`.
    pub fn addr_of(&self, node: &str) -> Option<SocketAddr> {
        self.addrs.read().expect("peers lock").get(node).copied()
    }

    /// Asks for links to `addrs` too (the cluster record's nodes), and
    /// for none to `forget` (nodes removed from the cluster).
    pub fn want(&self, addrs: Vec<SocketAddr>, forget: Vec<SocketAddr>) {
        let next = (addrs, forget);
        self.wanted.send_if_modified(|wanted| {
            let changed = *wanted != next;
            *wanted = next.clone();
            changed
        });
    }

    fn wanted(&self) -> (Vec<SocketAddr>, Vec<SocketAddr>) {
        self.wanted.borrow().clone()
    }

    /// How many nodes this node's cluster has.
    pub fn size(&self) -> usize {
        self.size
    }

    /// Notes how many nodes `node` says its cluster has (from its
    /// heartbeat or its answer to ours). Founders that disagree do not
    /// form the groups, and say so (`Replicator`); a node that joins a
    /// formed cluster names fewer, as expected.
    pub fn heard_size(&self, node: &str, size: usize) {
        let mut sizes = self.sizes.write().expect("peers lock");
        sizes.insert(node.to_owned(), size);
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
    fn replace(
        &self,
        peers: HashMap<String, ActorRef<PeerMsg>>,
        addrs: HashMap<String, SocketAddr>,
    ) {
        *self.addrs.write().expect("peers lock") = addrs;
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
    peers: Peers,
    node_id: String,
    expected: usize,
    accepting: AbortHandle,
}

impl Cluster {
    /// Listens on `config.listen` and starts dialling the other nodes.
    pub async fn start(config: ClusterConfig) -> Result<Cluster, ClusterError> {
        let tls = config.certs.as_deref().map(Tls::load).transpose()?;
        let gate = Gate::new(
            config.node_id.clone(),
            config.listen,
            &config.cookie,
            tls,
            config.handshake_timeout,
        );
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|error| ClusterError::Bind {
                    addr: config.listen,
                    error,
                })?;
        // The node server always opens a listener of its own: on loopback,
        // on a free port, behind TLS that nobody can complete. Its "host"
        // only names this node in ractor_cluster's own handshake (which
        // refuses a peer of the same name and address as itself), so it
        // carries the node id and the cluster address.
        let server = NodeServer::new(
            0,
            config.cookie.clone(),
            config.node_id.clone(),
            format!("{}/{}", config.node_id, config.listen),
            Some(IncomingEncryptionMode::Tls(link::closed_door())),
            Some(ractor_cluster::node::NodeConnectionMode::Isolated),
        )
        .with_listen_addr(Ipv4Addr::LOCALHOST.into());
        let (server, _) = Actor::spawn(None, server, ()).await?;
        let accepting = tokio::spawn(accept(listener, gate.clone(), server.clone())).abort_handle();
        let peers = Peers::new(config.node_id.clone(), config.listen, config.join.len() + 1);
        let node_id = config.node_id.clone();
        let expected = config.join.len();
        let (membership, _) = Actor::spawn(
            None,
            Membership,
            MembershipArgs {
                config,
                server: server.clone(),
                peers: peers.clone(),
                gate,
            },
        )
        .await?;
        Ok(Cluster {
            membership,
            server,
            peers,
            node_id,
            expected,
            accepting,
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

    /// Starts this node's peer actor, which serves other nodes' Raft,
    /// forwarded and delivery requests with `handlers`; stop it before
    /// [`Cluster::stop`].
    pub async fn serve(&self, handlers: Handlers) -> Result<ActorRef<PeerMsg>, ClusterError> {
        let args = (self.node_id.clone(), handlers, self.peers.clone());
        let (peer, _) = Actor::spawn(None, PeerActor, args).await?;
        Ok(peer)
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
        self.accepting.abort();
        self.membership.stop(None);
        self.server.stop(None);
    }
}

/// Accepts cluster connections and hands each to the node server once it
/// has passed the handshake; closes it otherwise.
async fn accept(listener: TcpListener, gate: Gate, server: ActorRef<NodeServerMessage>) {
    let pending = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    loop {
        let (socket, from) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of file descriptors, most likely: wait rather than spin.
                tracing::warn!(%error, "accepting a cluster connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = pending.clone().try_acquire_owned() else {
            tracing::warn!(%from, limit = MAX_HANDSHAKES, "too many cluster handshakes under way; connection closed");
            continue;
        };
        let (gate, server) = (gate.clone(), server.clone());
        tokio::spawn(async move {
            let admitted = gate.accept(socket).await;
            drop(permit);
            match admitted {
                Ok(stream) => {
                    tracing::debug!(%from, peer = ?stream.peer_label(), "cluster connection admitted");
                    let _ = server.cast(NodeServerMessage::ConnectionOpenedExternal {
                        stream,
                        is_server: true,
                    });
                }
                Err(error) => {
                    tracing::warn!(%from, %error, "cluster connection refused");
                }
            }
        });
    }
}
