//! Elastic membership, over the shard groups: the cluster record followed
//! on every node, a new node admitted through any member, and the
//! balancer, which the metadata group's leader runs.
//!
//! Once a second, the balancer gathers each shard's group as its leader
//! sees it, asks the planner for the next steps ([`crate::planner`]) and
//! hands each to the shard's leader, a couple at a time. A replica move is
//! openraft's learner, catch-up, joint change: [`Task::Step`] adds the new
//! node as a learner, waits until it has caught up, then replaces the
//! voters in one membership change. A move cut short (a leader lost in
//! the middle) leaves a learner or a joint configuration, which
//! [`Task::Finish`] completes or takes back; nothing is remembered
//! outside the groups' own memberships, so whatever state a crash leaves
//! is planned again from what the groups hold.
//!
//! openraft 0.9 has no leader transfer. A leadership moves by the leader
//! pausing its heartbeats and serving nothing of the shard while the new
//! node stands for election once the followers' lease on the old leader
//! has run out: the shard serves nothing for about the election timeout
//! (see the README).

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use openraft::{BasicNode, ChangeMembers, ServerState};
use ractor::rpc::CallResult;
use rand::Rng;
use serde::{Deserialize, Serialize};
use tidings_actors::codec::Encoded;
use tidings_actors::shard::SHARDS;
use tidings_actors::storage::{keys, Cf, WriteSet};

use super::meta::{ClusterRecord, Operation, Refused, META};
use super::{raft_id, Replicator, ShardView};
use crate::peer::PeerMsg;
use crate::planner::{self, NodeState, Step};

/// At most this many steps under way in the whole cluster.
const STEPS_AT_ONCE: usize = 2;
/// How long a learner may take to catch up before its move is given up.
const CATCH_UP: Duration = Duration::from_secs(120);
/// How long a new leader may take to win its election.
const HAND_OVER: Duration = Duration::from_secs(6);

/// What the balancer asks of a shard's leader.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Task {
    Step(Step),
    /// A change cut short: finish a joint configuration, or take back a
    /// learner that was never made a voter.
    Finish {
        shard: u16,
    },
    /// The metadata group's voters become these (the others stay its
    /// learners, but for removed nodes, which it forgets).
    Metadata {
        voters: BTreeSet<String>,
    },
}

impl Task {
    pub fn shard(&self) -> u16 {
        match self {
            Task::Step(step) => step.shard(),
            Task::Finish { shard } => *shard,
            Task::Metadata { .. } => META,
        }
    }
}

/// A node's groups as it sees them, for the balancer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Views {
    pub node: String,
    pub shards: Vec<ShardView>,
}

impl Replicator {
    /// The cluster record as this node has applied it.
    pub fn record(&self) -> Option<ClusterRecord> {
        self.inner.record.borrow().clone()
    }

    /// Resolves once the cluster record says this node is leaving
    /// (draining, drained or removed), or never.
    pub async fn leaving(&self) {
        let mut record = self.inner.record.subscribe();
        let node = self.inner.node.clone();
        let leaving = |record: &Option<ClusterRecord>| {
            record
                .as_ref()
                .and_then(|r| r.nodes.get(&node))
                .is_some_and(|n| {
                    matches!(
                        n.state,
                        NodeState::Draining | NodeState::Drained | NodeState::Removed
                    )
                })
        };
        if record.wait_for(leaving).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// The record as stored now.
    fn stored_record(&self) -> Option<ClusterRecord> {
        self.inner
            .storage
            .get(Cf::ConvMeta, &keys::group_record(META))
            .inspect_err(|err| tracing::error!(error = %err, "reading the cluster record"))
            .ok()
            .flatten()
    }

    /// Takes the stored record as this node's: placement, the nodes to
    /// dial, and which groups this node campaigns in.
    pub(super) fn read_record(&self) {
        let Some(record) = self.stored_record() else {
            return;
        };
        if record.shards.len() == SHARDS as usize {
            self.set_placement(record.shards.clone());
            // A replica the balancer has moved away keeps its Raft state
            // until the node leaves; it must not stand for election in a
            // group that no longer counts it.
            for (shard, voters) in record.shards.iter().enumerate() {
                let member = voters.contains(&self.inner.node);
                self.inner.rafts[shard].runtime_config().elect(member);
            }
        }
        self.inner
            .peers
            .want(record.addrs(), record.removed_addrs());
        self.inner.record.send_replace(Some(record));
    }

    /// Reads the record again whenever the metadata replica applies more.
    pub(super) async fn follow_record(self) {
        let mut metrics = self.inner.rafts[META as usize].metrics();
        let mut applied = None;
        loop {
            let now = metrics.borrow_and_update().last_applied;
            if now != applied {
                applied = now;
                self.read_record();
            }
            if metrics.changed().await.is_err() {
                return;
            }
        }
    }

    /// Asks the cluster to admit this node, through any linked member,
    /// until one answers; a refusal stops the node with its reason.
    pub(super) async fn join(&self) {
        let op = Operation::Join {
            node: self.inner.node.clone(),
            addr: self.inner.peers.addr(),
            raft: self.inner.id,
            cluster: None,
        };
        let Ok(op) = Encoded::new(&op) else { return };
        let mut said = None;
        while !self.inner.stopped.load(Ordering::Acquire) {
            for peer in self.inner.peers.all() {
                let call = peer.call(
                    |reply| PeerMsg::Operate(op.clone(), reply),
                    Some(self.inner.timeout),
                );
                let Ok(CallResult::Success(answer)) = call.await else {
                    continue;
                };
                match answer.decode() {
                    Ok(Ok(record)) => {
                        tracing::info!(
                            cluster = format!("{:016x}", record.id),
                            "admitted to the cluster"
                        );
                        return;
                    }
                    Ok(Err(Refused::Unavailable(why))) => {
                        if said.as_ref() != Some(&why) {
                            tracing::warn!(reason = %why, "asking to join: trying again");
                            said = Some(why);
                        }
                    }
                    Ok(Err(refused)) => {
                        tracing::error!(reason = %refused, "the cluster refused this node");
                        self.inner.fatal.send_replace(Some(refused.to_string()));
                        return;
                    }
                    Err(err) => tracing::warn!(error = %err, "undecodable answer to a join"),
                }
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    /// Whether `node` is this node or linked now.
    fn is_up(&self, node: &str) -> bool {
        node == self.inner.node || self.inner.peers.get(node).is_some()
    }

    /// Whether this node leads the metadata group.
    fn leads_meta(&self) -> bool {
        let metrics = self.inner.rafts[META as usize].metrics();
        let m = metrics.borrow();
        m.state == ServerState::Leader && m.current_leader == Some(self.inner.id)
    }

    /// Carries out `op` on the metadata group's leader (this node, or the
    /// one it knows of) and answers the record after it.
    pub async fn operate(&self, op: Operation) -> Result<ClusterRecord, Refused> {
        if self.leads_meta() {
            return self.operate_here(op).await;
        }
        let leader = {
            let metrics = self.inner.rafts[META as usize].metrics();
            let m = metrics.borrow();
            m.current_leader
                .and_then(|id| m.membership_config.membership().get_node(&id).cloned())
        };
        let Some(peer) = leader.and_then(|node| self.inner.peers.get(&node.addr)) else {
            return Err(Refused::Unavailable(
                "this node knows of no leader of the metadata group".into(),
            ));
        };
        let op = Encoded::new(&op).map_err(|e| Refused::Unavailable(e.to_string()))?;
        let call = peer.call(
            |reply| PeerMsg::Operate(op, reply),
            Some(self.inner.timeout),
        );
        match call.await {
            Ok(CallResult::Success(answer)) => answer
                .decode()
                .map_err(|e| Refused::Unavailable(e.to_string()))?,
            _ => Err(Refused::Unavailable(
                "the metadata group's leader did not answer in time".into(),
            )),
        }
    }

    /// [`Self::change_record`] within the call timeout: a metadata group
    /// without a majority answers `Unavailable` rather than hanging.
    async fn operate_here(&self, op: Operation) -> Result<ClusterRecord, Refused> {
        tokio::time::timeout(self.inner.timeout, self.change_record(op))
            .await
            .unwrap_or_else(|_| {
                Err(Refused::Unavailable(
                    "the metadata group did not answer in time".into(),
                ))
            })
    }

    async fn change_record(&self, op: Operation) -> Result<ClusterRecord, Refused> {
        let _one = self.inner.operating.lock().await;
        let raft = &self.inner.rafts[META as usize];
        raft.ensure_linearizable()
            .await
            .map_err(|e| Refused::Unavailable(e.to_string()))?;
        let record = self
            .stored_record()
            .ok_or_else(|| Refused::Unavailable("the cluster record is not written yet".into()))?;
        let next = record.apply(&op, |node| self.is_up(node))?;
        if next != record {
            self.write_record(&next).await?;
        }
        if let Operation::Join { node, raft: id, .. } = &op {
            // Every node follows the metadata group, so placement is read
            // locally.
            raft.add_learner(*id, BasicNode::new(node), false)
                .await
                .map_err(|e| Refused::Unavailable(e.to_string()))?;
            tracing::info!(node = %node, "node admitted to the cluster");
        }
        Ok(next)
    }

    async fn write_record(&self, record: &ClusterRecord) -> Result<(), Refused> {
        let mut writes = WriteSet::default();
        writes
            .put(Cf::ConvMeta, keys::group_record(META), record)
            .map_err(|e| Refused::Unavailable(e.to_string()))?;
        let raft = &self.inner.rafts[META as usize];
        match tokio::time::timeout(self.inner.timeout, raft.client_write(writes)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(err)) => Err(Refused::Unavailable(err.to_string())),
            Err(_) => Err(Refused::Unavailable(
                "the metadata group did not commit in time".into(),
            )),
        }
    }

    /// The record of a cluster formed before there was one: its founders,
    /// once the leader knows all their addresses, and the placement.
    async fn found_record(&self) {
        let _one = self.inner.operating.lock().await;
        if self.stored_record().is_some() {
            return;
        }
        let (Some(names), Some(shards)) = (self.inner.nodes.get(), self.placement_all()) else {
            return;
        };
        let mut founders = Vec::new();
        for name in names {
            let addr = if *name == self.inner.node {
                Some(self.inner.peers.addr())
            } else {
                self.inner.peers.addr_of(name)
            };
            let Some(addr) = addr else { return };
            founders.push((name.clone(), addr, raft_id(name)));
        }
        let record =
            ClusterRecord::found(rand::rng().random(), self.inner.replicas, &founders, shards);
        match self.write_record(&record).await {
            Ok(()) => {
                tracing::info!(cluster = format!("{:016x}", record.id), nodes = ?names, "cluster record written")
            }
            Err(err) => tracing::warn!(error = %err, "writing the cluster record"),
        }
    }

    /// This node's view of the groups it holds.
    pub fn views(&self) -> Views {
        Views {
            node: self.inner.node.clone(),
            shards: self.shards().into_iter().filter(|s| s.held).collect(),
        }
    }

    /// Every shard's group as its leader sees it (or the newest view of it
    /// when no leader answers), from this node and every linked one.
    async fn gather(&self) -> Vec<Option<ShardView>> {
        let mut all = vec![self.views()];
        let ask = self.inner.peers.all().into_iter().map(|peer| async move {
            let call = peer.call(|reply| PeerMsg::Shards(reply), Some(Duration::from_secs(2)));
            match call.await {
                Ok(CallResult::Success(views)) => views.decode().ok(),
                _ => None,
            }
        });
        all.extend(
            futures_util::future::join_all(ask)
                .await
                .into_iter()
                .flatten(),
        );
        let mut best: Vec<Option<(bool, u64, ShardView)>> = vec![None; SHARDS as usize];
        for views in all {
            for view in views.shards {
                let Some(slot) = best.get_mut(view.shard as usize) else {
                    continue;
                };
                let own = view.leader.as_deref() == Some(views.node.as_str());
                let rank = (own, view.term);
                if slot.as_ref().is_none_or(|(o, t, _)| (*o, *t) < rank) {
                    *slot = Some((own, view.term, view));
                }
            }
        }
        best.into_iter()
            .map(|b| b.map(|(_, _, view)| view))
            .collect()
    }

    /// One round of the balancer, on the metadata group's leader.
    async fn balance_once(&self) {
        let Some(record) = self.stored_record() else {
            self.found_record().await;
            return;
        };
        let views = self.gather().await;
        let set = |names: &[String]| names.iter().cloned().collect::<BTreeSet<String>>();
        let shards: Vec<planner::Shard> = views
            .iter()
            .enumerate()
            .map(|(i, view)| match view {
                Some(view) => planner::Shard {
                    voters: set(&view.replicas),
                    learners: set(&view.learners),
                    leader: view.leader.clone(),
                    joint: view.joint,
                },
                None => planner::Shard {
                    voters: set(record.shards.get(i).map(Vec::as_slice).unwrap_or_default()),
                    ..Default::default()
                },
            })
            .collect();
        let nodes = record.planner_nodes(|node| self.is_up(node));
        if let Some(dead) = self.down_too_long(&nodes) {
            match self
                .operate_here(Operation::Remove { node: dead.clone() })
                .await
            {
                Ok(_) => tracing::warn!(
                    node = %dead,
                    after = ?self.inner.dead_after,
                    "node down longer than --dead-after: removed, its replicas are placed anew"
                ),
                Err(err) => tracing::warn!(
                    node = %dead,
                    error = %err,
                    "node down longer than --dead-after, but not removed"
                ),
            }
            return;
        }
        // A node that is down but not removed may come back with all it
        // holds: nothing moves until it does, or an operator removes it.
        let down: Vec<&str> = nodes
            .iter()
            .filter(|n| !n.up && matches!(n.state, NodeState::Joining | NodeState::Active))
            .map(|n| n.id.as_str())
            .collect();
        let plan = if down.is_empty() {
            planner::plan(&nodes, &shards, record.replicas, STEPS_AT_ONCE)
        } else {
            tracing::debug!(
                ?down,
                "nodes down: the balancer moves nothing until they are back or removed"
            );
            planner::Plan::default()
        };
        let mut tasks: Vec<Task> = Vec::new();
        for (shard, group) in shards.iter().enumerate() {
            if (group.joint || !group.learners.is_empty()) && group.leader.is_some() {
                tasks.push(Task::Finish {
                    shard: shard as u16,
                });
            }
        }
        tasks.extend(plan.steps.iter().cloned().map(Task::Step));
        let meta_voters = self.meta_voters();
        if down.is_empty() {
            if let Some(voters) = record.metadata_voters(&meta_voters) {
                tasks.push(Task::Metadata { voters });
            } else if self.meta_members().iter().any(|name| {
                record
                    .nodes
                    .get(name)
                    .is_none_or(|n| n.state == NodeState::Removed)
            }) {
                tasks.push(Task::Metadata {
                    voters: meta_voters.clone(),
                });
            }
        }
        let idle = self
            .inner
            .under_way
            .lock()
            .expect("not poisoned")
            .is_empty();
        let balanced = idle
            && down.is_empty()
            && views.iter().all(Option::is_some)
            && tasks.is_empty()
            && !plan.short;
        {
            // On the record as it is now: a drain, removal or join may have
            // been committed while the views were gathered.
            let _one = self.inner.operating.lock().await;
            if let Some(now) = self.stored_record() {
                let next = now.settled(&shards, &meta_voters, balanced && now == record);
                if next != now {
                    if let Err(err) = self.write_record(&next).await {
                        tracing::warn!(error = %err, "noting the shards in the cluster record");
                    }
                }
            }
        }
        if !plan.stuck.is_empty() {
            tracing::warn!(shards = ?plan.stuck, "shards that cannot move without losing their majority");
        }
        for task in tasks {
            let shard = task.shard();
            let leader = match shards.get(shard as usize) {
                Some(group) => group.leader.clone(),
                None => Some(self.inner.node.clone()),
            };
            let Some(leader) = leader else {
                continue;
            };
            {
                let mut under_way = self.inner.under_way.lock().expect("not poisoned");
                if under_way.len() >= STEPS_AT_ONCE || under_way.contains_key(&shard) {
                    continue;
                }
                under_way.insert(shard, task.clone());
            }
            let this = self.clone();
            tokio::spawn(async move {
                let started = Instant::now();
                let done = this.hand_to(&leader, task.clone()).await;
                match &done {
                    Ok(()) => {
                        tracing::info!(?task, took = ?started.elapsed(), "balancer step done")
                    }
                    Err(err) => tracing::warn!(?task, error = %err, "balancer step failed"),
                }
                this.inner
                    .under_way
                    .lock()
                    .expect("not poisoned")
                    .remove(&shard);
            });
        }
    }

    /// A node this metadata leader has seen down for `--dead-after`, if
    /// any. The clock starts when this leader first sees the node down, so
    /// a new leader waits the whole time again. A node whose removal was
    /// refused starts its clock again: it is tried once per period.
    fn down_too_long(&self, nodes: &[planner::Node]) -> Option<String> {
        let after = self.inner.dead_after?;
        let now = Instant::now();
        let down = |n: &&planner::Node| !n.up && n.state != NodeState::Removed;
        let mut since = self.inner.down_since.lock().expect("not poisoned");
        since.retain(|name, _| nodes.iter().filter(down).any(|n| &n.id == name));
        for node in nodes.iter().filter(down) {
            since.entry(node.id.clone()).or_insert(now);
        }
        let dead = since
            .iter()
            .find(|(_, at)| now.duration_since(**at) >= after)
            .map(|(name, _)| name.clone())?;
        since.insert(dead.clone(), now);
        Some(dead)
    }

    /// Runs the balancer for as long as the node runs; only the metadata
    /// group's leader acts.
    pub(super) async fn balance(self) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while !self.inner.stopped.load(Ordering::Acquire) {
            tick.tick().await;
            if self.leads_meta() {
                self.balance_once().await;
            }
        }
    }

    /// The balancer's steps under way (on the metadata group's leader;
    /// empty elsewhere), for `GET /v1/cluster`.
    pub fn moves(&self) -> Vec<serde_json::Value> {
        let under_way = self.inner.under_way.lock().expect("not poisoned");
        under_way
            .values()
            .map(|task| match task {
                Task::Step(Step::Move { shard, from, to }) => {
                    serde_json::json!({"shard": shard, "kind": "replica", "from": from, "to": to})
                }
                Task::Step(Step::Lead { shard, to }) => {
                    serde_json::json!({"shard": shard, "kind": "leader", "to": to})
                }
                Task::Finish { shard } => serde_json::json!({"shard": shard, "kind": "finish"}),
                Task::Metadata { voters } => {
                    serde_json::json!({"group": "metadata", "kind": "voters", "to": voters})
                }
            })
            .collect()
    }

    /// Has `leader` (this node or a peer) carry out `task`.
    async fn hand_to(&self, leader: &str, task: Task) -> Result<(), String> {
        if leader == self.inner.node {
            return self.carry_out(task).await;
        }
        let peer = self
            .inner
            .peers
            .get(leader)
            .ok_or_else(|| format!("no link to {leader}"))?;
        let task = Encoded::new(&task).map_err(|e| e.to_string())?;
        let call = peer.call(
            |reply| PeerMsg::Reconfigure(task, reply),
            Some(CATCH_UP + HAND_OVER),
        );
        match call.await {
            Ok(CallResult::Success(done)) => done.decode().map_err(|e| e.to_string())?,
            _ => Err(format!("{leader} did not answer in time")),
        }
    }

    /// The metadata group's voters, by node name, as this node sees them.
    fn meta_voters(&self) -> BTreeSet<String> {
        let metrics = self.inner.rafts[META as usize].metrics();
        let m = metrics.borrow();
        let membership = m.membership_config.membership();
        membership
            .voter_ids()
            .filter_map(|id| membership.get_node(&id).map(|n| n.addr.clone()))
            .collect()
    }

    /// Every node in the metadata group, voter or learner, by name.
    fn meta_members(&self) -> Vec<String> {
        let metrics = self.inner.rafts[META as usize].metrics();
        let m = metrics.borrow();
        let membership = m.membership_config.membership();
        membership.nodes().map(|(_, n)| n.addr.clone()).collect()
    }

    /// Makes `voters` the metadata group's voters, keeping every other
    /// member as a learner but removed nodes; a voter joins as a learner
    /// first if it is not one.
    async fn change_metadata(&self, voters: BTreeSet<String>) -> Result<(), String> {
        let record = self.record().ok_or("no cluster record")?;
        let raft = &self.inner.rafts[META as usize];
        let id = |name: &String| {
            record
                .nodes
                .get(name)
                .map_or_else(|| raft_id(name), |n| n.raft)
        };
        let members = self.meta_members();
        for voter in &voters {
            if !members.contains(voter) {
                raft.add_learner(id(voter), BasicNode::new(voter), true)
                    .await
                    .map_err(|e| format!("adding {voter} to the metadata group: {e}"))?;
            }
        }
        let ids: BTreeSet<u64> = voters.iter().map(id).collect();
        if voters != self.meta_voters() {
            raft.change_membership(ChangeMembers::ReplaceAllVoters(ids), true)
                .await
                .map_err(|e| format!("changing the metadata group's voters: {e}"))?;
        }
        // Read again: a node admitted during the changes above is in the
        // stored record, and must stay.
        let record = self.stored_record().ok_or("no cluster record")?;
        let gone: BTreeSet<u64> = {
            let metrics = raft.metrics();
            let m = metrics.borrow();
            let membership = m.membership_config.membership();
            membership
                .learner_ids()
                .filter(|learner| {
                    membership.get_node(learner).is_none_or(|n| {
                        record
                            .nodes
                            .get(&n.addr)
                            .is_none_or(|r| r.state == NodeState::Removed)
                    })
                })
                .collect()
        };
        if !gone.is_empty() {
            raft.change_membership(ChangeMembers::RemoveNodes(gone), false)
                .await
                .map_err(|e| format!("forgetting removed nodes: {e}"))?;
        }
        Ok(())
    }

    /// Carries out a balancer task for a shard this node leads.
    pub async fn carry_out(&self, task: Task) -> Result<(), String> {
        if let Task::Metadata { voters } = task {
            if !self.leads_meta() {
                return Err(format!(
                    "{} does not lead the metadata group",
                    self.inner.node
                ));
            }
            return self.change_metadata(voters).await;
        }
        let shard = task.shard();
        let raft = self
            .inner
            .rafts
            .get(shard as usize)
            .filter(|_| shard < SHARDS)
            .ok_or_else(|| format!("no shard {shard}"))?;
        let (membership, leads) = {
            let metrics = raft.metrics();
            let m = metrics.borrow();
            let leads = m.state == ServerState::Leader;
            (m.membership_config.membership().clone(), leads)
        };
        if !leads {
            return Err(format!("{} does not lead shard {shard}", self.inner.node));
        }
        let id_of = |name: &str| {
            membership
                .nodes()
                .find(|(_, node)| node.addr == name)
                .map(|(id, _)| *id)
        };
        let record = self.record();
        let raft_of = |name: &str| {
            record
                .as_ref()
                .and_then(|r| r.nodes.get(name))
                .map_or_else(|| raft_id(name), |n| n.raft)
        };
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        match task {
            Task::Step(Step::Move { from, to, .. }) => {
                let from_name = from;
                let from = id_of(&from_name)
                    .ok_or_else(|| format!("{from_name} holds no replica of shard {shard}"))?;
                let to_id = raft_of(&to);
                if voters.contains(&to_id) || !voters.contains(&from) {
                    return Err(format!(
                        "shard {shard} changed: {to} is a voter or {from_name} is not"
                    ));
                }
                let added = tokio::time::timeout(
                    CATCH_UP,
                    raft.add_learner(to_id, BasicNode::new(&to), true),
                )
                .await;
                match added {
                    Ok(Ok(_)) => {}
                    Ok(Err(err)) => return Err(format!("adding {to} as a learner: {err}")),
                    Err(_) => return Err(format!("{to} did not catch up within {CATCH_UP:?}")),
                }
                // The voters as they are after the catch-up, which may
                // have taken long: the move replaces one voter, or nothing.
                let now = {
                    let metrics = raft.metrics();
                    let m = metrics.borrow();
                    let membership = m.membership_config.membership().clone();
                    (m.state == ServerState::Leader).then_some(membership)
                };
                let now = now.ok_or_else(|| {
                    format!("{} lost shard {shard} during the catch-up", self.inner.node)
                })?;
                let mut next: BTreeSet<u64> = now.voter_ids().collect();
                if now.get_joint_config().len() > 1
                    || next != voters
                    || !next.remove(&from)
                    || !next.insert(to_id)
                {
                    return Err(format!("shard {shard} changed during the catch-up"));
                }
                raft.change_membership(ChangeMembers::ReplaceAllVoters(next), false)
                    .await
                    .map_err(|e| format!("changing the voters: {e}"))?;
                Ok(())
            }
            Task::Step(Step::Lead { to, .. }) => self.hand_over(shard, &to).await,
            Task::Metadata { .. } => unreachable!("handled above"),
            Task::Finish { .. } => {
                if membership.get_joint_config().len() > 1 {
                    let last = membership
                        .get_joint_config()
                        .last()
                        .cloned()
                        .unwrap_or_default();
                    raft.change_membership(ChangeMembers::ReplaceAllVoters(last), false)
                        .await
                        .map_err(|e| format!("finishing a joint change: {e}"))?;
                } else {
                    let learners: BTreeSet<u64> = membership.learner_ids().collect();
                    if !learners.is_empty() {
                        raft.change_membership(ChangeMembers::RemoveNodes(learners), false)
                            .await
                            .map_err(|e| format!("taking back learners: {e}"))?;
                    }
                }
                Ok(())
            }
        }
    }

    /// Hands the leadership of `shard` to voter `to`: this leader pauses
    /// its heartbeats and serves nothing of the shard, and `to` stands for
    /// election once the followers' lease on this leader runs out.
    async fn hand_over(&self, shard: u16, to: &str) -> Result<(), String> {
        let index = shard as usize;
        let raft = self.inner.rafts[index].clone();
        let peer = self
            .inner
            .peers
            .get(to)
            .ok_or_else(|| format!("no link to {to}"))?;
        self.inner.handing_over[index].store(true, Ordering::Release);
        raft.runtime_config().heartbeat(false);
        let call = peer.call(
            |reply| PeerMsg::Elect(Encoded::new(&shard).expect("a number encodes"), reply),
            Some(HAND_OVER),
        );
        let won =
            matches!(call.await, Ok(CallResult::Success(won)) if won.decode().unwrap_or(false));
        raft.runtime_config().heartbeat(true);
        self.inner.handing_over[index].store(false, Ordering::Release);
        if won {
            Ok(())
        } else {
            Err(format!("{to} did not win shard {shard}'s election"))
        }
    }

    /// Stands for election in `shard` until this node leads it, another
    /// node than the one handing over does, or time runs out.
    pub async fn elect(&self, shard: u16) -> bool {
        let Some(raft) = self
            .inner
            .rafts
            .get(shard as usize)
            .filter(|_| shard < SHARDS)
        else {
            return false;
        };
        let before = raft.metrics().borrow().current_leader;
        let deadline = Instant::now() + HAND_OVER - Duration::from_millis(500);
        raft.runtime_config().elect(true);
        while Instant::now() < deadline {
            let (state, leader) = {
                let metrics = raft.metrics();
                let m = metrics.borrow();
                (m.state, m.current_leader)
            };
            if state == ServerState::Leader {
                return true;
            }
            if leader.is_some() && leader != before && leader != Some(self.inner.id) {
                return false;
            }
            if raft.trigger().elect().await.is_err() {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        false
    }

    fn placement_all(&self) -> Option<Vec<Vec<String>>> {
        self.inner.placement.read().expect("not poisoned").clone()
    }
}

/// The record a peer knows the groups by: its node names, for a knock's
/// answer.
pub(super) fn member_names(record: &ClusterRecord) -> Vec<String> {
    record
        .nodes
        .iter()
        .filter(|(_, n)| n.state != planner::NodeState::Removed)
        .map(|(name, _)| name.clone())
        .collect()
}
