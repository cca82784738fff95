//! Replication: every shard is a Raft group (openraft) over the cluster's
//! nodes, with its log and state machine in the node's RocksDB.
//!
//! An entity actor's [`WriteSet`] becomes one entry of its shard's log
//! ([`Storage::commit`] goes through [`Replicator`] once a node is in a
//! cluster). The write is acknowledged only after a majority has the entry
//! on disk and this node has applied it, and applying writes the same keys
//! on every replica: the entity's log, its versions and its `cmid`s. A new
//! leader therefore serves history at once and continues the versions with
//! no gap and no reuse.
//!
//! The shard's leader hosts the shard's entity actors. [`Replicator::route`]
//! says, per shard, whether this node may serve it (it leads, and has
//! applied everything committed before its term), and in which
//! [`Tenure`], or which node to forward to. Each confirmation begins a new
//! tenure, before whose first request the core replaces the shard's
//! conversation actors, so that none keeps a version counter that another
//! leader has moved on from; [`Replicator::on_leadership_lost`] tells when
//! this node stops leading a shard.
//!
//! The groups form once every node in `--join` is linked and has knocked
//! on this one ([`rejoin`]): the node names,
//! sorted, place shard `s` on the `--replicas` nodes from position `s` on
//! (so that shards and leadership start spread out), and the first of
//! those initializes the group with all of them as voters. The names are
//! kept in storage, so a node restarted with its data directory knows the
//! placement at once, finds its groups and rejoins them. A node that
//! starts with an empty data directory takes no part in any group until a
//! peer has answered its knock, and refuses to start if its peers know it
//! as a member: having forgotten its votes and entries, it could let an
//! acknowledged message be lost ([`rejoin`]).
//!
//! A node that holds no replica of a shard forwards its requests to the
//! leader it last heard of, or else to one of the replicas, which either
//! serves the request or answers with the leader it knows.
//!
//! Logs are compacted every `RaftSettings::snapshot_every` entries: a
//! snapshot only notes the applied position, and a replica that needs
//! entries already purged is sent the shard's records ([`snapshot`]).

pub mod elastic;
pub mod meta;
pub mod network;
pub mod rejoin;
pub mod snapshot;
pub mod store;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Cursor;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use openraft::error::{ClientWriteError, InitializeError, RaftError};
use openraft::{BasicNode, Config, Raft, ServerState, SnapshotPolicy};
use ractor::rpc::CallResult;
use ractor::ActorRef;
use rand::Rng;
use serde::Serialize;
use tidings_actors::codec::Encoded;
use tidings_actors::remote::Tenure;
use tidings_actors::shard::{ShardId, SHARDS};
use tidings_actors::storage::{keys, Cf, CommitLog, Storage, StorageError, WriteSet};
use tokio::sync::watch;

use crate::peer::PeerMsg;
use crate::{Agreement, Peers};
use meta::{ClusterRecord, META};
use network::{Network, RaftRequest, RaftResponse};
use rejoin::{Answer, Knock, Verdict};
use store::ShardStore;

openraft::declare_raft_types!(
    /// Tidings' Raft types: a log entry carries one entity write set.
    pub TypeConfig:
        D = WriteSet,
        // Whether the entry's write set applied (its expectations held).
        R = bool,
        NodeId = u64,
        Node = BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

type ShardRaft = Raft<TypeConfig>;

/// A node's id in the Raft groups: a stable hash of its name.
pub fn raft_id(node: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64(node.as_bytes())
}

/// Timing and log compaction of every group, and the balancer's clock.
#[derive(Debug, Clone)]
pub struct RaftSettings {
    pub heartbeat: Duration,
    /// A follower that hears nothing for a random time in this range
    /// stands for election.
    pub election_min: Duration,
    pub election_max: Duration,
    /// A shard takes a snapshot every this many applied entries and purges
    /// its log up to it, keeping the last tenth (at least one entry) for
    /// replicas that are only a little behind.
    pub snapshot_every: u64,
    /// The balancer removes a node that has been down this long, as if an
    /// operator had (`--dead-after`); never when `None`.
    pub dead_after: Option<Duration>,
}

impl RaftSettings {
    /// Entries kept after a snapshot.
    fn keep_after_snapshot(&self) -> u64 {
        (self.snapshot_every / 10).max(1)
    }
}

impl Default for RaftSettings {
    fn default() -> Self {
        RaftSettings {
            heartbeat: Duration::from_millis(150),
            election_min: Duration::from_millis(750),
            election_max: Duration::from_millis(1500),
            snapshot_every: 10_000,
            dead_after: None,
        }
    }
}

/// Where a request for a shard goes.
pub enum Route {
    /// This node leads the shard and is caught up: serve it here, in this
    /// tenure.
    Local(Tenure),
    /// Forward to the leader's peer actor.
    Remote(ActorRef<PeerMsg>),
    /// No leader is known or reachable right now.
    Unknown,
}

/// One shard as `GET /v1/cluster` shows it.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct ShardView {
    pub shard: u16,
    /// Node ids of the group's voters.
    pub replicas: Vec<String>,
    pub leader: Option<String>,
    pub term: u64,
    /// The last index this node knows committed and has applied.
    pub committed: Option<u64>,
    /// The index of this replica's last snapshot, and the last index it
    /// has purged from its log.
    pub snapshot: Option<u64>,
    pub purged: Option<u64>,
    /// Node ids of the group's learners: replicas catching up to become
    /// voters.
    pub learners: Vec<String>,
    /// Whether the group is in a joint configuration (a change of its
    /// voters under way).
    pub joint: bool,
    /// Whether this node holds a replica of the shard.
    pub held: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ReplicationError {
    #[error("Raft config: {0}")]
    Config(#[from] openraft::ConfigError),
    #[error("starting shard {shard}'s Raft: {message}")]
    Start { shard: u16, message: String },
}

/// This node's member of every shard's group: cheap to clone.
#[derive(Clone)]
pub struct Replicator {
    inner: Arc<Inner>,
}

struct Inner {
    node: String,
    id: u64,
    /// Copies of each shard (at most the number of nodes).
    replicas: usize,
    /// Per shard, the nodes that hold it (founder first), once the cluster's
    /// nodes are known: at formation, or from storage after a restart, and
    /// then from the cluster record as replicas move.
    placement: std::sync::RwLock<Option<Vec<Vec<String>>>>,
    /// The cluster record as this node's metadata replica has applied it.
    record: watch::Sender<Option<ClusterRecord>>,
    /// Per shard, set while this node hands its leadership to another:
    /// it serves nothing of the shard meanwhile.
    handing_over: Vec<AtomicBool>,
    /// The steps the balancer has under way (on the metadata leader).
    under_way: std::sync::Mutex<BTreeMap<u16, elastic::Task>>,
    /// `--dead-after`, and since when the metadata leader has seen each
    /// node down.
    dead_after: Option<Duration>,
    down_since: std::sync::Mutex<BTreeMap<String, std::time::Instant>>,
    /// The node names a peer's answer says the groups were formed with,
    /// when this node is not among them: it joins instead of forming.
    formed_without_us: std::sync::Mutex<Option<Vec<String>>>,
    /// Held while this node, as the metadata group's leader, reads and
    /// rewrites the cluster record.
    operating: tokio::sync::Mutex<()>,
    /// Per shard this node holds no replica of: the leader it last heard of.
    hints: Vec<std::sync::Mutex<Option<String>>>,
    /// Turns the replica a request without a known leader goes to.
    turn: AtomicUsize,
    storage: Storage,
    rafts: Vec<ShardRaft>,
    /// Per shard, the term in which this node, as leader, confirmed it has
    /// applied everything committed before (0: not confirmed).
    ready: Vec<AtomicU64>,
    /// Per shard, held while a leader confirms it is caught up.
    confirming: Vec<tokio::sync::Mutex<()>>,
    /// Per shard, the tenure the last confirmation began.
    tenures: Vec<AtomicU64>,
    /// The last tenure begun, of any shard: tenures only grow.
    last_tenure: AtomicU64,
    /// A leader serves a shard only while a majority has acknowledged it
    /// within this long: no other leader can have been elected since.
    lease: Duration,
    peers: Peers,
    timeout: Duration,
    /// Drawn at this start: tells this run's knocks from another's.
    boot: u64,
    /// Whether the data directory held no Raft state at this start.
    empty: bool,
    /// Whether this node takes part in the groups ([`rejoin`]).
    part: watch::Sender<Part>,
    /// Why this node must stop, once it must.
    fatal: watch::Sender<Option<String>>,
    /// The knocks heard and who formed the groups, under one lock with the
    /// formation itself.
    formation: tokio::sync::Mutex<Formation>,
    /// The node names the groups are placed by, once known.
    nodes: std::sync::OnceLock<Vec<String>>,
    stopped: AtomicBool,
}

/// Whether this node takes part in the shard groups.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    /// Its data directory is empty and no peer has answered its knock: it
    /// serves no Raft request and forms nothing.
    Undecided,
    Serving,
    /// Its peers know it from before it lost its data: it must stop.
    Refused,
}

/// What the formation of the groups depends on ([`rejoin`]).
#[derive(Default)]
struct Formation {
    /// (node, boot) of every knock heard during this run.
    knocked: BTreeSet<(String, u64)>,
    /// The knocks heard when this run formed the groups; `None` if they
    /// were formed before it (read from storage) or are not yet.
    founders: Option<BTreeSet<(String, u64)>>,
}

impl Replicator {
    /// Opens every shard's group from `storage`, then forms the groups
    /// once the `expected` other nodes are linked, with `replicas` copies of
    /// each shard.
    pub async fn start(
        node: String,
        storage: Storage,
        peers: Peers,
        expected: usize,
        replicas: usize,
        settings: RaftSettings,
        timeout: Duration,
    ) -> Result<Replicator, ReplicationError> {
        let config = Config {
            cluster_name: "tidings".into(),
            heartbeat_interval: settings.heartbeat.as_millis() as u64,
            election_timeout_min: settings.election_min.as_millis() as u64,
            election_timeout_max: settings.election_max.as_millis() as u64,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(settings.snapshot_every.max(1)),
            max_in_snapshot_log_to_keep: settings.keep_after_snapshot(),
            // A snapshot crosses in chunks of 1 MiB, each within this long.
            snapshot_max_chunk_size: 1 << 20,
            install_snapshot_timeout: timeout.as_millis() as u64,
            max_payload_entries: 512,
            ..Config::default()
        };
        let config = Arc::new(config.validate()?);
        let id = raft_id(&node);
        let nodes: Option<Vec<String>> = storage
            .get(Cf::RaftState, &keys::cluster_nodes())
            .map_err(|e| ReplicationError::Start {
                shard: u16::MAX,
                message: format!("reading the cluster's nodes: {e}"),
            })?;
        // Read before any group starts: a node that has not taken part yet
        // writes no Raft state until it does.
        let mut empty = nodes.is_none();
        for shard in 0..=META {
            if !empty {
                break;
            }
            empty = ShardStore::new(shard, storage.clone())
                .holds_nothing()
                .map_err(|e| ReplicationError::Start {
                    shard,
                    message: format!("reading its Raft state: {e}"),
                })?;
        }
        let mut rafts = Vec::with_capacity(META as usize + 1);
        for shard in 0..=META {
            let store = ShardStore::new(shard, storage.clone());
            let network = Network {
                shard,
                peers: peers.clone(),
            };
            let raft = Raft::new(id, config.clone(), network, store.clone(), store.clone())
                .await
                .map_err(|e| ReplicationError::Start {
                    shard,
                    message: e.to_string(),
                })?;
            store.send_snapshots();
            rafts.push(raft);
        }
        let part = match rejoin::verdict(&node, empty, expected, &[]) {
            Verdict::Proceed => Part::Serving,
            _ => {
                tracing::warn!(
                    node = %node,
                    "empty data directory: taking part in no shard group until a peer \
                     says whether it knows this node"
                );
                Part::Undecided
            }
        };
        let replicator = Replicator {
            inner: Arc::new(Inner {
                node,
                id,
                replicas: replicas.max(1),
                placement: std::sync::RwLock::new(None),
                record: watch::Sender::new(None),
                handing_over: (0..SHARDS).map(|_| AtomicBool::new(false)).collect(),
                under_way: std::sync::Mutex::default(),
                dead_after: settings.dead_after,
                down_since: std::sync::Mutex::default(),
                formed_without_us: std::sync::Mutex::new(None),
                operating: tokio::sync::Mutex::new(()),
                hints: (0..SHARDS).map(|_| std::sync::Mutex::new(None)).collect(),
                turn: AtomicUsize::new(0),
                storage: storage.clone(),
                ready: (0..SHARDS).map(|_| AtomicU64::new(0)).collect(),
                confirming: (0..SHARDS).map(|_| tokio::sync::Mutex::new(())).collect(),
                tenures: (0..SHARDS).map(|_| AtomicU64::new(0)).collect(),
                last_tenure: AtomicU64::new(Tenure::SOLE.0),
                lease: settings.election_min,
                rafts,
                peers,
                timeout,
                boot: rand::rng().random(),
                empty,
                part: watch::Sender::new(part),
                fatal: watch::Sender::new(None),
                formation: tokio::sync::Mutex::default(),
                nodes: std::sync::OnceLock::new(),
                stopped: AtomicBool::new(false),
            }),
        };
        if let Some(nodes) = nodes {
            replicator.place(&nodes);
        }
        replicator.read_record();
        tokio::spawn(replicator.clone().follow_record());
        tokio::spawn(replicator.clone().knock(expected));
        tokio::spawn(replicator.clone().form(expected));
        tokio::spawn(replicator.clone().balance());
        Ok(replicator)
    }

    /// Calls `lost` with a shard whenever this node stops leading it (or
    /// leads it again in a new term, which it may have missed the end of),
    /// until the groups shut down.
    pub fn on_leadership_lost(&self, lost: impl Fn(ShardId) + Clone + Send + Sync + 'static) {
        for shard in 0..SHARDS {
            let raft = self.inner.rafts[shard as usize].clone();
            tokio::spawn(watch_leadership(raft, ShardId(shard), lost.clone()));
        }
    }

    /// Waits until this node takes part and the other `expected` nodes
    /// are linked and have knocked, then initializes the groups this node
    /// is the founder of. A group that already exists (a restart) refuses,
    /// which is fine.
    async fn form(self, expected: usize) {
        let decided = self
            .inner
            .part
            .subscribe()
            .wait_for(|part| *part != Part::Undecided)
            .await
            .map(|part| *part);
        if !matches!(decided, Ok(Part::Serving)) {
            return;
        }
        let mut told = None;
        let mut disagreed = 0;
        let names = loop {
            // Groups that already have a record were formed before this
            // start; a node the formation did not include joins instead.
            if self.inner.record.borrow().is_some() {
                return;
            }
            let elsewhere = self
                .inner
                .formed_without_us
                .lock()
                .expect("not poisoned")
                .clone();
            if let Some(formed) = elsewhere {
                if self.placement(0).is_none() {
                    tracing::info!(formed_with = ?formed, "the cluster is formed: joining it");
                    self.join().await;
                    return;
                }
            }
            let mut names = self.inner.peers.names();
            if names.len() >= expected {
                // Nodes started with different node lists would place the
                // shards differently: wait until every one agrees.
                match self.inner.peers.agreement(&names) {
                    Agreement::Agreed => {
                        // Groups formed with a node that has not knocked
                        // would report it as returning ([`rejoin`]).
                        let mut formation = self.inner.formation.lock().await;
                        let knocked =
                            |name: &String| formation.knocked.iter().any(|(node, _)| node == name);
                        if self.placement(0).is_some() || names.iter().all(knocked) {
                            names.push(self.inner.node.clone());
                            names.sort();
                            names.dedup();
                            if let Err(err) = self.remember_nodes(&names, &mut formation).await {
                                tracing::error!(error = %err, "storing the cluster's nodes failed");
                            }
                            break names;
                        }
                    }
                    Agreement::Unknown => {}
                    // Said only once it lasts: a node joining a formed
                    // cluster names fewer nodes until its knock is answered.
                    Agreement::Disagree(differ) => {
                        disagreed += 1;
                        if disagreed > 20 && told.as_ref() != Some(&differ) {
                            tracing::error!(
                                ?differ,
                                nodes = self.inner.peers.size(),
                                "not forming shard groups: nodes were started with \
                                 different numbers of cluster nodes (--join)"
                            );
                            told = Some(differ);
                        }
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let mut founded = 0;
        for (shard, raft) in self.inner.rafts.iter().enumerate() {
            let Some(replicas) = self.placement(shard as u16) else {
                continue;
            };
            if replicas.first() != Some(&self.inner.node) {
                continue;
            }
            let members: BTreeMap<u64, BasicNode> = replicas
                .iter()
                .map(|name| (raft_id(name), BasicNode::new(name)))
                .collect();
            match raft.initialize(members).await {
                Ok(()) => founded += 1,
                Err(RaftError::APIError(InitializeError::NotAllowed(_))) => {}
                Err(err) => {
                    tracing::error!(shard, error = %err, "forming the shard's group failed")
                }
            }
        }
        // The metadata group: every founder a voter, formed by the first.
        if names.first() == Some(&self.inner.node) {
            let members: BTreeMap<u64, BasicNode> = names
                .iter()
                .map(|name| (raft_id(name), BasicNode::new(name)))
                .collect();
            match self.inner.rafts[META as usize].initialize(members).await {
                Ok(()) | Err(RaftError::APIError(InitializeError::NotAllowed(_))) => {}
                Err(err) => tracing::error!(error = %err, "forming the metadata group failed"),
            }
        }
        tracing::info!(nodes = ?names, replicas = self.inner.replicas, founded, "shard groups formed");
    }

    /// Keeps the node names the groups are placed by. A restarted node
    /// keeps the names it first stored, so placement never moves.
    /// The processes that had knocked by then are the groups' founders.
    async fn remember_nodes(
        &self,
        names: &[String],
        formation: &mut Formation,
    ) -> Result<(), StorageError> {
        if self.placement(0).is_some() {
            return Ok(());
        }
        let mut writes = WriteSet::default();
        writes.put(Cf::RaftState, keys::cluster_nodes(), &names.to_vec())?;
        self.inner.storage.commit_local(writes).await?;
        formation.founders = Some(formation.knocked.clone());
        self.place(names);
        Ok(())
    }

    /// Knocks on every linked peer, once per link, for as long as the node
    /// runs: its peers form the groups only with nodes that have knocked.
    /// While this node is undecided, the answers decide whether it takes
    /// part or must stop ([`rejoin::verdict`]).
    async fn knock(self, expected: usize) {
        let knock = Knock {
            node: self.inner.node.clone(),
            boot: self.inner.boot,
        };
        let Ok(knock) = Encoded::new(&knock) else {
            return;
        };
        // Per peer, the peer actor that answered (a new link asks again).
        let mut answered: HashMap<String, ractor::ActorId> = HashMap::new();
        let mut answers: Vec<Answer> = Vec::new();
        while !self.inner.stopped.load(Ordering::Acquire) {
            for name in self.inner.peers.names() {
                let Some(peer) = self.inner.peers.get(&name) else {
                    continue;
                };
                if answered.get(&name) == Some(&peer.get_id()) {
                    continue;
                }
                let call = peer.call(
                    |reply| PeerMsg::Knock(knock.clone(), reply),
                    Some(self.inner.timeout.min(Duration::from_secs(1))),
                );
                if let Ok(CallResult::Success(answer)) = call.await {
                    match answer.decode() {
                        Ok(answer) => {
                            answered.insert(name, peer.get_id());
                            if let Some(formed) = &answer.formed {
                                if !formed.contains(&self.inner.node) {
                                    *self.inner.formed_without_us.lock().expect("not poisoned") =
                                        Some(formed.clone());
                                }
                            }
                            answers.push(answer);
                        }
                        Err(err) => {
                            tracing::warn!(peer = %name, error = %err, "undecodable answer to a knock")
                        }
                    }
                }
            }
            if *self.inner.part.borrow() == Part::Undecided {
                match rejoin::verdict(&self.inner.node, self.inner.empty, expected, &answers) {
                    Verdict::Wait => {}
                    Verdict::Proceed => {
                        tracing::info!(
                            node = %self.inner.node,
                            "no peer knows this node from before: taking part in the shard groups"
                        );
                        self.inner.part.send_replace(Part::Serving);
                    }
                    Verdict::Refuse(refusal) => {
                        tracing::error!(
                            node = %refusal.node,
                            known_by = ?refusal.known_by,
                            members = ?refusal.members,
                            "empty data directory on a known member: not starting"
                        );
                        self.inner.part.send_replace(Part::Refused);
                        self.inner.fatal.send_replace(Some(refusal.to_string()));
                        return;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Answers a peer's knock ([`rejoin`]), noting it for the formation.
    pub async fn answer_knock(&self, knock: Knock) -> Answer {
        let mut formation = self.inner.formation.lock().await;
        let founder = formation
            .founders
            .as_ref()
            .is_some_and(|founders| founders.contains(&(knock.node.clone(), knock.boot)));
        formation.knocked.insert((knock.node, knock.boot));
        // The founders and every node admitted since: a node that joined
        // later and comes back empty is known too.
        let mut formed = self.inner.nodes.get().cloned();
        if let Some(record) = self.record() {
            let names = formed.get_or_insert_with(Vec::new);
            for name in elastic::member_names(&record) {
                if !names.contains(&name) {
                    names.push(name);
                }
            }
        }
        Answer {
            node: self.inner.node.clone(),
            formed,
            founder,
        }
    }

    /// Resolves with the reason once this node must stop: its data
    /// directory is empty and its peers know it as a member ([`rejoin`]).
    pub async fn failed(&self) -> String {
        let mut fatal = self.inner.fatal.subscribe();
        let reason = fatal
            .wait_for(Option::is_some)
            .await
            .ok()
            .and_then(|reason| reason.clone());
        match reason {
            Some(reason) => reason,
            None => std::future::pending().await,
        }
    }

    /// Places every shard on `--replicas` of `nodes` (sorted names): shard
    /// `s` on the nodes from position `s` on.
    fn place(&self, nodes: &[String]) {
        if nodes.is_empty() {
            return;
        }
        let copies = self.inner.replicas.min(nodes.len());
        let placement = (0..SHARDS as usize)
            .map(|shard| {
                (0..copies)
                    .map(|i| nodes[(shard + i) % nodes.len()].clone())
                    .collect()
            })
            .collect();
        self.set_placement(placement);
        let _ = self.inner.nodes.set(nodes.to_vec());
    }

    fn set_placement(&self, placement: Vec<Vec<String>>) {
        *self.inner.placement.write().expect("not poisoned") = Some(placement);
    }

    /// The nodes that hold `shard`, founder first; `None` until the
    /// cluster's nodes are known.
    fn placement(&self, shard: u16) -> Option<Vec<String>> {
        let placement = self.inner.placement.read().expect("not poisoned");
        placement.as_ref()?.get(shard as usize).cloned()
    }

    /// Whether this node holds (or may come to hold) a replica of `shard`.
    fn holds(&self, shard: u16) -> bool {
        self.placement(shard)
            .is_none_or(|replicas| replicas.contains(&self.inner.node))
    }

    /// The leader of `shard` as this node's own group sees it, if another
    /// node: what a node that cannot serve a request tells its sender.
    pub fn leader_of(&self, shard: ShardId) -> Option<String> {
        if !self.holds(shard.0) {
            return self.inner.hints[shard.0 as usize]
                .lock()
                .expect("not poisoned")
                .clone();
        }
        let metrics = self.inner.rafts[shard.0 as usize].metrics();
        let m = metrics.borrow();
        let leader = m.current_leader.filter(|id| *id != self.inner.id)?;
        let node = m.membership_config.membership().get_node(&leader)?;
        Some(node.addr.clone())
    }

    /// What another node said about `shard`'s leader, for the next request
    /// from this node, if it holds no replica of the shard.
    pub fn note_leader(&self, shard: ShardId, leader: Option<String>) {
        if !self.holds(shard.0) {
            *self.inner.hints[shard.0 as usize]
                .lock()
                .expect("not poisoned") = leader;
        }
    }

    /// Where to send a request for a shard this node holds no replica of:
    /// the leader it last heard of, or else the next linked replica.
    fn route_elsewhere(&self, shard: ShardId) -> Route {
        let hint = self.inner.hints[shard.0 as usize]
            .lock()
            .expect("not poisoned")
            .clone();
        if let Some(peer) = hint.and_then(|name| self.inner.peers.get(&name)) {
            return Route::Remote(peer);
        }
        let linked: Vec<ActorRef<PeerMsg>> = self
            .placement(shard.0)
            .unwrap_or_default()
            .iter()
            .filter_map(|name| self.inner.peers.get(name))
            .collect();
        if linked.is_empty() {
            return Route::Unknown;
        }
        let turn = self.inner.turn.fetch_add(1, Ordering::Relaxed);
        Route::Remote(linked[turn % linked.len()].clone())
    }

    /// Where a request for `shard` should go now.
    pub async fn route(&self, shard: ShardId) -> Route {
        if !self.holds(shard.0) {
            return self.route_elsewhere(shard);
        }
        let index = shard.0 as usize;
        let raft = &self.inner.rafts[index];
        let (state, term, leader, leader_name, leased) = {
            let metrics = raft.metrics();
            let m = metrics.borrow();
            let membership = m.membership_config.membership();
            let name = m
                .current_leader
                .and_then(|id| membership.get_node(&id).map(|n| n.addr.clone()));
            let alone = membership.voter_ids().count() == 1;
            let lease = self.inner.lease.as_millis() as u64;
            let leased = alone || m.millis_since_quorum_ack.is_some_and(|ms| ms < lease);
            (m.state, m.current_term, m.current_leader, name, leased)
        };
        if state == ServerState::Leader {
            // Cut off from the majority for longer than a follower waits
            // before electing another leader: its state may be stale, so
            // it serves nothing, reads included, until it hears again or
            // steps down. Nor while it hands the shard to another leader.
            if !leased || self.inner.handing_over[index].load(Ordering::Acquire) {
                return Route::Unknown;
            }
            let tenure = || Tenure(self.inner.tenures[index].load(Ordering::Acquire));
            if self.inner.ready[index].load(Ordering::Acquire) == term {
                return Route::Local(tenure());
            }
            let _confirming = self.inner.confirming[index].lock().await;
            if self.inner.ready[index].load(Ordering::Acquire) == term {
                return Route::Local(tenure());
            }
            // A new leader (or one whose write went unconfirmed) first
            // makes sure it still leads and has applied every entry it
            // holds, so that actors load the end of the log.
            let confirm = async {
                raft.ensure_linearizable().await.ok()?;
                let last = raft.metrics().borrow().last_log_index;
                raft.wait(None)
                    .applied_index_at_least(last, "every entry applied")
                    .await
                    .ok()
            };
            return match tokio::time::timeout(self.inner.timeout, confirm).await {
                Ok(Some(_)) => {
                    // A new tenure: actors of an earlier term, or loaded
                    // before an unconfirmed entry was applied, are replaced
                    // before its first request reaches them, and the index
                    // changes an earlier leader left owing are finished
                    // (`Routes::conv_in`).
                    let begun = self.inner.last_tenure.fetch_add(1, Ordering::AcqRel) + 1;
                    self.inner.tenures[index].store(begun, Ordering::Release);
                    self.inner.ready[index].store(term, Ordering::Release);
                    Route::Local(Tenure(begun))
                }
                _ => Route::Unknown,
            };
        }
        match (leader, leader_name) {
            (Some(id), Some(name)) if id != self.inner.id => self
                .inner
                .peers
                .get(&name)
                .map_or(Route::Unknown, Route::Remote),
            _ => Route::Unknown,
        }
    }

    /// The other nodes linked now.
    pub fn peers(&self) -> &Peers {
        &self.inner.peers
    }

    /// Serves a Raft request from another node; `None` if this node does
    /// not serve the shard's group (yet).
    pub async fn serve(&self, request: RaftRequest) -> Option<RaftResponse> {
        // Until it is known that nobody counts on what this node's empty
        // disk forgot, it neither votes nor takes entries.
        if *self.inner.part.borrow() != Part::Serving {
            return None;
        }
        Some(match request {
            RaftRequest::Append(shard, rpc) => {
                let raft = self.inner.rafts.get(shard as usize)?;
                RaftResponse::Append(raft.append_entries(rpc).await)
            }
            RaftRequest::Vote(shard, rpc) => {
                let raft = self.inner.rafts.get(shard as usize)?;
                RaftResponse::Vote(raft.vote(rpc).await)
            }
            RaftRequest::Snapshot(shard, rpc) => {
                let raft = self.inner.rafts.get(shard as usize)?;
                RaftResponse::Snapshot(raft.install_snapshot(rpc).await)
            }
        })
    }

    /// Every shard as this node sees it. For a shard it holds no replica
    /// of, the replicas come from the placement and the leader is the one
    /// it last heard of.
    pub fn shards(&self) -> Vec<ShardView> {
        self.inner
            .rafts
            .iter()
            .take(SHARDS as usize)
            .enumerate()
            .map(|(shard, raft)| {
                if !self.holds(shard as u16) {
                    let mut replicas = self.placement(shard as u16).unwrap_or_default();
                    replicas.sort();
                    return ShardView {
                        shard: shard as u16,
                        replicas,
                        leader: self.leader_of(ShardId(shard as u16)),
                        term: 0,
                        committed: None,
                        snapshot: None,
                        purged: None,
                        learners: Vec::new(),
                        joint: false,
                        held: false,
                    };
                }
                let metrics = raft.metrics();
                let m = metrics.borrow();
                let membership = m.membership_config.membership();
                let name = |id: &u64| membership.get_node(id).map(|n| n.addr.clone());
                let voters: BTreeSet<u64> = membership.voter_ids().collect();
                let mut replicas: Vec<String> = voters.iter().filter_map(name).collect();
                replicas.sort();
                let mut learners: Vec<String> = membership
                    .learner_ids()
                    .filter_map(|id| name(&id))
                    .collect();
                learners.sort();
                ShardView {
                    shard: shard as u16,
                    replicas,
                    leader: m.current_leader.as_ref().and_then(name),
                    term: m.current_term,
                    committed: m.last_applied.map(|id| id.index),
                    snapshot: m.snapshot.map(|id| id.index),
                    purged: m.purged.map(|id| id.index),
                    learners,
                    joint: membership.get_joint_config().len() > 1,
                    held: true,
                }
            })
            .collect()
    }

    /// Leaves every group (on shutdown, before storage closes).
    pub async fn shutdown(&self) {
        self.inner.stopped.store(true, Ordering::Release);
        for raft in &self.inner.rafts {
            let _ = raft.shutdown().await;
        }
    }
}

impl CommitLog for Replicator {
    fn append(
        &self,
        shard: ShardId,
        writes: WriteSet,
    ) -> BoxFuture<'static, Result<(), StorageError>> {
        let raft = self.inner.rafts[shard.0 as usize].clone();
        let timeout = self.inner.timeout;
        let inner = self.inner.clone();
        Box::pin(async move {
            let written = tokio::time::timeout(timeout, raft.client_write(writes)).await;
            let result = match written {
                Ok(Ok(response)) if response.data => Ok(()),
                Ok(Ok(_)) => Err(StorageError::Superseded),
                // Even "not leader" may come after the entry was appended
                // (a leader that stepped down): its fate is unknown.
                Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_)))) => Err(
                    StorageError::Unconfirmed(format!("shard {} changed leader", shard.0)),
                ),
                Ok(Err(err)) => Err(StorageError::Unconfirmed(err.to_string())),
                Err(_) => Err(StorageError::Unconfirmed(format!(
                    "shard {} did not commit within {timeout:?}",
                    shard.0
                ))),
            };
            if result.is_err() {
                // The entry may still commit, or the log held one this
                // writer did not know: serve nothing more from this shard
                // until every entry is applied (see `route`).
                inner.ready[shard.0 as usize].store(0, Ordering::Release);
            }
            result
        })
    }
}

/// Calls `lost` whenever this node stops leading `shard` (or leads it again
/// in a new term, which it may have missed the end of).
async fn watch_leadership(raft: ShardRaft, shard: ShardId, lost: impl Fn(ShardId)) {
    let mut metrics = raft.metrics();
    let mut led: Option<u64> = None;
    loop {
        let (state, term) = {
            let m = metrics.borrow_and_update();
            (m.state, m.current_term)
        };
        let leads = (state == ServerState::Leader).then_some(term);
        if led.is_some() && leads != led {
            tracing::info!(shard = shard.0, "no longer leading the shard");
            lost(shard);
        }
        led = leads;
        if metrics.changed().await.is_err() {
            return;
        }
    }
}
