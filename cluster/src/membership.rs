//! Membership: dials the other nodes, dials again with backoff when a link
//! drops, and closes the link to a peer that stops answering heartbeats.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ractor::rpc::CallResult;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use ractor_cluster::node::NodeServerSessionInformation;
use ractor_cluster::RactorMessage;
use ractor_cluster::{NodeEventSubscription, NodeServerMessage, NodeSessionMessage};
use rand::Rng;
use tidings_actors::entity::now_ms;

use super::link::{self, Gate, LinkError};
use super::peer::{Hello, PeerMsg, GROUP};
use super::{ClusterConfig, ClusterView, NodeState, NodeView, Peers};
use tidings_actors::codec::Encoded;

/// Shortest and longest wait before dialling a peer again.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

pub struct Membership;

pub struct MembershipArgs {
    pub config: ClusterConfig,
    pub server: ActorRef<NodeServerMessage>,
    /// Kept up to date with the peer actors of the linked nodes.
    pub peers: Peers,
    /// Dials through the cluster handshake.
    pub gate: Gate,
}

#[derive(RactorMessage)]
pub enum MembershipMsg {
    /// Time to ping linked peers and dial unlinked ones.
    Tick,
    /// A link finished its handshake.
    Ready(NodeServerSessionInformation),
    /// A link closed.
    Gone(NodeServerSessionInformation),
    /// A dial attempt to `addr` ended; `ok` if a handshake is under way.
    Dialled {
        addr: SocketAddr,
        ok: bool,
    },
    /// The peer on link `node` answered a heartbeat.
    Heard {
        node: u64,
        hello: Hello,
    },
    View(RpcReplyPort<ClusterView>),
}

/// A handshaken link to a peer.
struct Link {
    session: ActorRef<NodeSessionMessage>,
    node: u64,
    last_heard: Instant,
}

struct Peer {
    addr: SocketAddr,
    id: Option<String>,
    state: NodeState,
    since: u64,
    link: Option<Link>,
    /// Failed or lost links since the last good one: the backoff grows.
    attempts: u32,
    next_dial: Instant,
    /// A dial under way, since when.
    dialing: Option<Instant>,
}

impl Peer {
    fn new(addr: SocketAddr) -> Peer {
        Peer {
            addr,
            id: None,
            state: NodeState::Down,
            since: now_ms(),
            link: None,
            attempts: 0,
            next_dial: Instant::now(),
            dialing: None,
        }
    }

    fn set(&mut self, state: NodeState) {
        if self.state != state {
            self.state = state;
            self.since = now_ms();
            match state {
                NodeState::Up => tracing::info!(peer = ?self.id, addr = %self.addr, "peer up"),
                NodeState::Down => tracing::warn!(peer = ?self.id, addr = %self.addr, "peer down"),
            }
        }
    }

    /// The link is gone: down, and dial again after a backoff.
    fn lost(&mut self) {
        self.link = None;
        self.dialing = None;
        self.set(NodeState::Down);
        self.next_dial = Instant::now() + backoff(self.attempts);
        self.attempts = self.attempts.saturating_add(1);
    }
}

/// Whether a process group member is the peer actor of link `node`. Link
/// ids count from 0, as local actors' node does: only a remote member can
/// be a peer's.
fn is_peer_of(cell: &ractor::ActorCell, node: u64) -> bool {
    !cell.get_id().is_local() && cell.get_id().node() == node
}

/// Exponential backoff with jitter: between half and all of
/// `BACKOFF_MIN · 2^attempts`, at most `BACKOFF_MAX`.
fn backoff(attempts: u32) -> Duration {
    let cap = BACKOFF_MIN
        .saturating_mul(1 << attempts.min(16))
        .min(BACKOFF_MAX);
    cap.mul_f64(rand::rng().random_range(0.5..=1.0))
}

pub struct MembershipState {
    config: ClusterConfig,
    server: ActorRef<NodeServerMessage>,
    published: Peers,
    peers: Vec<Peer>,
    started: u64,
    gate: Gate,
}

/// Forwards the node server's session events to the membership actor.
struct Events(ActorRef<MembershipMsg>);

impl NodeEventSubscription for Events {
    fn node_session_opened(&self, _: NodeServerSessionInformation) {}
    fn node_session_authenticated(&self, _: NodeServerSessionInformation) {}
    fn node_session_ready(&self, ses: NodeServerSessionInformation) {
        let _ = self.0.cast(MembershipMsg::Ready(ses));
    }
    fn node_session_disconnected(&self, ses: NodeServerSessionInformation) {
        let _ = self.0.cast(MembershipMsg::Gone(ses));
    }
}

impl Actor for Membership {
    type Msg = MembershipMsg;
    type State = MembershipState;
    type Arguments = MembershipArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<MembershipMsg>,
        args: MembershipArgs,
    ) -> Result<MembershipState, ActorProcessingErr> {
        args.server.cast(NodeServerMessage::SubscribeToEvents {
            id: "tidings.membership".into(),
            subscription: Box::new(Events(myself.clone())),
        })?;
        let every = (args.config.peer_timeout / 6)
            .clamp(Duration::from_millis(50), Duration::from_millis(500));
        myself.send_interval(every, || MembershipMsg::Tick);
        Ok(MembershipState {
            peers: args
                .config
                .join
                .iter()
                .map(|&addr| Peer::new(addr))
                .collect(),
            config: args.config,
            server: args.server,
            published: args.peers,
            started: now_ms(),
            gate: args.gate,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<MembershipMsg>,
        message: MembershipMsg,
        state: &mut MembershipState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            MembershipMsg::Tick => state.tick(&myself),
            MembershipMsg::Ready(ses) => state.ready(ses),
            MembershipMsg::Gone(ses) => {
                if let Some(peer) = state.linked(ses.node_id) {
                    tracing::debug!(addr = %peer.addr, "link closed");
                    peer.lost();
                    state.published.lost_one();
                }
                state.publish();
            }
            MembershipMsg::Dialled { addr, ok } => {
                if let Some(peer) = state.peers.iter_mut().find(|p| p.addr == addr) {
                    if !ok && peer.link.is_none() {
                        peer.lost();
                    }
                }
            }
            MembershipMsg::Heard { node, hello } => {
                state.published.heard_size(&hello.node, hello.nodes);
                if let Some(link) = state.linked(node).and_then(|p| p.link.as_mut()) {
                    link.last_heard = Instant::now();
                }
            }
            MembershipMsg::View(reply) => {
                let _ = reply.send(state.view());
            }
        }
        Ok(())
    }
}

impl MembershipState {
    fn linked(&mut self, node: u64) -> Option<&mut Peer> {
        self.peers
            .iter_mut()
            .find(|p| p.link.as_ref().is_some_and(|l| l.node == node))
    }

    fn ready(&mut self, ses: NodeServerSessionInformation) {
        let Some(name) = ses.peer_name.clone() else {
            return;
        };
        // Who the peer is and where it listens come from the handshake it
        // passed (the connection's label), not from what it told
        // ractor_cluster afterwards.
        let Some((id, addr)) = link::parse_label(&ses.peer_addr) else {
            tracing::error!(peer = %name.name, label = %ses.peer_addr, "a link that did not pass the cluster handshake; closing it");
            ses.actor.kill();
            return;
        };
        // ractor_cluster names a node `<name>@<host>`.
        let claimed = name
            .name
            .split_once('@')
            .map_or(name.name.as_str(), |(id, _)| id);
        if link::session_name_mismatch(&id, claimed) {
            tracing::warn!(proven = %id, claimed = %claimed, "a peer's session names another node than its handshake proved; closing it");
            ses.actor.kill();
            return;
        }
        let index = self
            .peers
            .iter()
            .position(|p| p.addr == addr)
            .or_else(|| self.peers.iter().position(|p| p.id.as_deref() == Some(&id)));
        let peer = match index {
            Some(i) => &mut self.peers[i],
            // A node that dialled us without being in our --join: keep it.
            None => {
                self.peers.push(Peer::new(addr));
                self.peers.last_mut().expect("just pushed")
            }
        };
        peer.id = Some(id);
        peer.link = Some(Link {
            session: ses.actor,
            node: ses.node_id,
            last_heard: Instant::now(),
        });
        peer.dialing = None;
        peer.attempts = 0;
        peer.set(NodeState::Up);
    }

    /// Publishes the peer actors of the nodes linked now.
    fn publish(&self) {
        let members = ractor::pg::get_members(&GROUP.to_owned());
        let mut linked = std::collections::HashMap::new();
        let mut addrs = std::collections::HashMap::new();
        for peer in &self.peers {
            let (Some(id), Some(link)) = (peer.id.clone(), peer.link.as_ref()) else {
                continue;
            };
            if let Some(cell) = members.iter().find(|c| is_peer_of(c, link.node)) {
                addrs.insert(id.clone(), peer.addr);
                linked.insert(id, ActorRef::<PeerMsg>::from(cell.clone()));
            }
        }
        self.published.replace(linked, addrs);
    }

    /// Adds the nodes the cluster record names that this node does not
    /// dial yet, and drops those it says were removed.
    fn add_wanted(&mut self) {
        let (wanted, forget) = self.published.wanted();
        for addr in wanted {
            if addr != self.config.listen && !self.peers.iter().any(|p| p.addr == addr) {
                tracing::info!(%addr, "dialling a node the cluster record names");
                self.peers.push(Peer::new(addr));
            }
        }
        self.peers.retain(|peer| {
            let keep = !forget.contains(&peer.addr);
            if !keep {
                tracing::info!(addr = %peer.addr, node = ?peer.id, "node removed from the cluster: no longer dialled");
                if let Some(link) = &peer.link {
                    link.session.kill();
                }
            }
            keep
        });
    }

    fn tick(&mut self, myself: &ActorRef<MembershipMsg>) {
        self.add_wanted();
        let timeout = self.config.peer_timeout;
        let now = Instant::now();
        let members = ractor::pg::get_members(&GROUP.to_owned());
        for peer in &mut self.peers {
            if let Some(link) = &peer.link {
                if now.duration_since(link.last_heard) > timeout {
                    // Hung or cut off: closing the link makes the node server
                    // forget it, and we dial again.
                    tracing::warn!(peer = ?peer.id, "no heartbeat for {timeout:?}; closing the link");
                    link.session.kill();
                    peer.lost();
                    self.published.lost_one();
                    continue;
                }
                let node = link.node;
                if let Some(cell) = members.iter().find(|c| is_peer_of(c, node)) {
                    let remote: ActorRef<PeerMsg> = cell.clone().into();
                    let me = Encoded::new(&Hello {
                        node: self.config.node_id.clone(),
                        nodes: self.published.size(),
                    });
                    let (Ok(me), myself) = (me, myself.clone()) else {
                        continue;
                    };
                    tokio::spawn(async move {
                        let answer = remote
                            .call(|reply| PeerMsg::Ping(me, reply), Some(timeout / 2))
                            .await;
                        if let Ok(CallResult::Success(hello)) = answer {
                            if let Ok(hello) = hello.decode() {
                                let _ = myself.cast(MembershipMsg::Heard { node, hello });
                            }
                        }
                    });
                }
                continue;
            }
            if peer
                .dialing
                .is_some_and(|since| now.duration_since(since) > timeout)
            {
                // The handshake never finished (a frozen peer still accepts
                // TCP connections).
                peer.lost();
            }
            if peer.dialing.is_none() && now >= peer.next_dial {
                peer.dialing = Some(now);
                let (server, addr, myself) = (self.server.clone(), peer.addr, myself.clone());
                let gate = self.gate.clone();
                tokio::spawn(async move {
                    // As long as a handshake may take here, and no longer than a
                    // peer may stay silent.
                    let dialled = tokio::time::timeout(timeout, gate.dial(addr))
                        .await
                        .unwrap_or(Err(LinkError::TimedOut(timeout)));
                    let ok = match dialled {
                        Ok(stream) => server
                            .cast(NodeServerMessage::ConnectionOpenedExternal {
                                stream,
                                is_server: false,
                            })
                            .is_ok(),
                        // Down, most likely: dialled again after a backoff.
                        Err(error @ (LinkError::Io(_) | LinkError::TimedOut(_))) => {
                            tracing::debug!(%addr, %error, "dialling a peer");
                            false
                        }
                        Err(error) => {
                            tracing::warn!(%addr, %error, "cluster link refused");
                            false
                        }
                    };
                    let _ = myself.cast(MembershipMsg::Dialled { addr, ok });
                });
            }
        }
        self.publish();
    }

    fn view(&self) -> ClusterView {
        let mut nodes = vec![NodeView {
            id: Some(self.config.node_id.clone()),
            addr: self.config.listen,
            state: NodeState::Up,
            since: self.started,
            local: true,
            nodes: Some(self.published.size()),
        }];
        nodes.extend(self.peers.iter().map(|p| NodeView {
            id: p.id.clone(),
            addr: p.addr,
            state: p.state,
            since: p.since,
            local: false,
            nodes: p.id.as_deref().and_then(|id| self.published.size_of(id)),
        }));
        nodes.sort_by_key(|n| n.addr);
        ClusterView {
            node: self.config.node_id.clone(),
            nodes,
        }
    }
}
