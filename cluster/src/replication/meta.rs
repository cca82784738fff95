//! The cluster record: what the metadata group (a Raft group of its own,
//! numbered [`META`], past the shards) agrees on. It holds the cluster's
//! id, drawn once at formation, every node with its cluster address, Raft
//! id and membership state, and each shard's voters as last seen settled.
//!
//! Every node holds a replica of the group (its founders as voters, nodes
//! that joined later as learners), so each reads placement and the node
//! list locally. Only the group's leader changes the record, through the
//! pure rules here ([`ClusterRecord::apply`]): admitting a joining node,
//! draining one, removing a dead one.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};
use tidings_actors::shard::SHARDS;

use crate::planner::{self, NodeState};

/// The metadata group's number: the first past the shards.
pub const META: u16 = SHARDS;

/// What the metadata group holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterRecord {
    /// Drawn at formation: a node of another cluster cannot join this one.
    pub id: u64,
    /// Copies of each shard.
    pub replicas: usize,
    pub nodes: BTreeMap<String, NodeRecord>,
    /// Per shard, its voters' node names as last seen with no change under
    /// way: where a node that holds no replica sends requests.
    pub shards: Vec<Vec<String>>,
}

/// One node as the cluster record knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// Where the other nodes dial it.
    pub addr: SocketAddr,
    /// Its id in every Raft group.
    pub raft: u64,
    pub state: NodeState,
}

/// A change to the cluster, asked of the metadata group's leader.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Operation {
    /// A node with an empty data directory asks to be admitted.
    Join {
        node: String,
        addr: SocketAddr,
        raft: u64,
        /// The cluster it belonged to before, if any.
        cluster: Option<u64>,
    },
    /// Move everything off `node` so it can leave.
    Drain { node: String },
    /// Forget `node`, which is down: its replicas are placed elsewhere.
    Remove { node: String },
}

/// Why an [`Operation`] was not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum Refused {
    #[error("no node {0} in this cluster")]
    Unknown(String),
    #[error(
        "a node named {node} is already {state} in this cluster at {addr}; start the new node \
         under another --node-id"
    )]
    NameTaken {
        node: String,
        state: String,
        addr: SocketAddr,
    },
    #[error(
        "node {node} was removed from this cluster; its Raft identity is retired, so start it \
         under another --node-id"
    )]
    Retired { node: String },
    #[error("node {node} belongs to cluster {theirs:016x}, not to this cluster ({ours:016x})")]
    OtherCluster {
        node: String,
        theirs: u64,
        ours: u64,
    },
    #[error(
        "without {node}, {left} node(s) would hold the {replicas} replicas of every shard; add a \
         node first"
    )]
    TooFew {
        node: String,
        left: usize,
        replicas: usize,
    },
    #[error("node {0} is up: drain it (POST /v1/cluster/nodes/{0}/drain), or stop it first")]
    StillUp(String),
    #[error("the cluster's metadata group has no reachable leader: {0}")]
    Unavailable(String),
}

impl ClusterRecord {
    /// The record a new cluster starts with: every founder active.
    pub fn found(
        id: u64,
        replicas: usize,
        founders: &[(String, SocketAddr, u64)],
        shards: Vec<Vec<String>>,
    ) -> ClusterRecord {
        let nodes = founders
            .iter()
            .map(|(name, addr, raft)| {
                let node = NodeRecord {
                    addr: *addr,
                    raft: *raft,
                    state: NodeState::Active,
                };
                (name.clone(), node)
            })
            .collect();
        ClusterRecord {
            id,
            replicas,
            nodes,
            shards,
        }
    }

    /// The record after `op`, or why not. `up` says whether a node's link
    /// is up now, as the leader sees it.
    pub fn apply(&self, op: &Operation, up: impl Fn(&str) -> bool) -> Result<Self, Refused> {
        let mut next = self.clone();
        match op {
            Operation::Join {
                node,
                addr,
                raft,
                cluster,
            } => {
                if let Some(theirs) = cluster.filter(|theirs| *theirs != self.id) {
                    return Err(Refused::OtherCluster {
                        node: node.clone(),
                        theirs,
                        ours: self.id,
                    });
                }
                match self.nodes.get(node) {
                    // The same node asking again (its first answer lost),
                    // while it is still joining: once active it holds
                    // replicas, and an empty node under its name must not
                    // take its place.
                    Some(known)
                        if known.addr == *addr
                            && known.raft == *raft
                            && known.state == NodeState::Joining =>
                    {
                        return Ok(next);
                    }
                    Some(known) if known.state == NodeState::Removed => {
                        return Err(Refused::Retired { node: node.clone() })
                    }
                    Some(known) => {
                        return Err(Refused::NameTaken {
                            node: node.clone(),
                            state: state_name(known.state).to_owned(),
                            addr: known.addr,
                        })
                    }
                    None => {}
                }
                next.nodes.insert(
                    node.clone(),
                    NodeRecord {
                        addr: *addr,
                        raft: *raft,
                        state: NodeState::Joining,
                    },
                );
            }
            Operation::Drain { node } => {
                let known = self.member(node)?;
                if matches!(known.state, NodeState::Draining | NodeState::Drained) {
                    return Ok(next);
                }
                self.enough_without(node)?;
                next.set(node, NodeState::Draining);
            }
            Operation::Remove { node } => {
                // Asked again (an answer lost, or --dead-after first):
                // done already.
                if self
                    .nodes
                    .get(node)
                    .is_some_and(|n| n.state == NodeState::Removed)
                {
                    return Ok(next);
                }
                let known = self.member(node)?;
                if up(node) {
                    return Err(Refused::StillUp(node.clone()));
                }
                if known.state != NodeState::Drained {
                    self.enough_without(node)?;
                }
                next.set(node, NodeState::Removed);
            }
        }
        Ok(next)
    }

    /// A node that is in the cluster and not removed.
    fn member(&self, node: &str) -> Result<&NodeRecord, Refused> {
        match self.nodes.get(node) {
            None => Err(Refused::Unknown(node.to_owned())),
            Some(known) if known.state == NodeState::Removed => Err(Refused::Retired {
                node: node.to_owned(),
            }),
            Some(known) => Ok(known),
        }
    }

    /// Whether enough nodes would take replicas without `node`.
    fn enough_without(&self, node: &str) -> Result<(), Refused> {
        let left = self
            .nodes
            .iter()
            .filter(|(name, n)| *name != node && takes_replicas(n.state))
            .count();
        if left < self.replicas {
            return Err(Refused::TooFew {
                node: node.to_owned(),
                left,
                replicas: self.replicas,
            });
        }
        Ok(())
    }

    fn set(&mut self, node: &str, state: NodeState) {
        if let Some(known) = self.nodes.get_mut(node) {
            known.state = state;
        }
    }

    /// The nodes as the planner takes them.
    pub fn planner_nodes(&self, up: impl Fn(&str) -> bool) -> Vec<planner::Node> {
        self.nodes
            .iter()
            .map(|(name, n)| planner::Node {
                id: name.clone(),
                state: n.state,
                up: up(name),
            })
            .collect()
    }

    /// The record once the balancer has seen the shards as they are: each
    /// settled shard's voters noted, a draining node that holds nothing
    /// drained, and joining nodes active once nothing is left to move.
    /// `meta` are the metadata group's voters: a draining node is drained
    /// only once it is not one of them either.
    pub fn settled(
        &self,
        shards: &[planner::Shard],
        meta: &BTreeSet<String>,
        balanced: bool,
    ) -> ClusterRecord {
        let mut next = self.clone();
        for (i, shard) in shards.iter().enumerate().take(next.shards.len()) {
            if !shard.voters.is_empty() && !shard.joint && shard.learners.is_empty() {
                next.shards[i] = shard.voters.iter().cloned().collect();
            }
        }
        let holds = |node: &str| {
            meta.contains(node)
                || shards.iter().any(|s| {
                    s.voters.contains(node)
                        || s.learners.contains(node)
                        || s.leader.as_deref() == Some(node)
                })
        };
        for (name, n) in next.nodes.iter_mut() {
            match n.state {
                NodeState::Draining if !holds(name) => n.state = NodeState::Drained,
                NodeState::Joining if balanced => n.state = NodeState::Active,
                _ => {}
            }
        }
        next
    }

    /// The metadata group's voters as they should be, if not as they are
    /// (`voters`): those of them that take replicas, topped up by name
    /// from the other nodes that do, up to the replica count.
    pub fn metadata_voters(&self, voters: &BTreeSet<String>) -> Option<BTreeSet<String>> {
        let takers: Vec<&String> = self
            .nodes
            .iter()
            .filter(|(_, n)| takes_replicas(n.state))
            .map(|(name, _)| name)
            .collect();
        let want = self.replicas.min(takers.len());
        let mut next: BTreeSet<String> = voters
            .iter()
            .filter(|v| takers.contains(v))
            .cloned()
            .collect();
        for taker in &takers {
            if next.len() >= want {
                break;
            }
            next.insert((*taker).clone());
        }
        (!next.is_empty() && next != *voters).then_some(next)
    }

    /// The cluster addresses of the removed nodes, but those a node in
    /// the cluster uses now (a replacement on the same host and port).
    pub fn removed_addrs(&self) -> Vec<SocketAddr> {
        let used = self.addrs();
        self.nodes
            .values()
            .filter(|n| n.state == NodeState::Removed && !used.contains(&n.addr))
            .map(|n| n.addr)
            .collect()
    }

    /// The cluster addresses of the nodes that are not removed.
    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.nodes
            .values()
            .filter(|n| n.state != NodeState::Removed)
            .map(|n| n.addr)
            .collect()
    }
}

fn takes_replicas(state: NodeState) -> bool {
    matches!(state, NodeState::Joining | NodeState::Active)
}

/// A state as `/v1/cluster` names it.
pub fn state_name(state: NodeState) -> &'static str {
    match state {
        NodeState::Joining => "joining",
        NodeState::Active => "active",
        NodeState::Draining => "draining",
        NodeState::Drained => "drained",
        NodeState::Removed => "removed",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    fn three() -> ClusterRecord {
        let founders: Vec<_> = (1..=3)
            .map(|i| (format!("n{i}"), addr(7000 + i), u64::from(i)))
            .collect();
        ClusterRecord::found(42, 3, &founders, vec![vec!["n1".into()]; 2])
    }

    fn join(node: &str, port: u16, cluster: Option<u64>) -> Operation {
        Operation::Join {
            node: node.into(),
            addr: addr(port),
            raft: u64::from(port),
            cluster,
        }
    }

    const DOWN: fn(&str) -> bool = |_| false;

    #[test]
    fn a_new_node_joins_and_asking_again_changes_nothing() {
        let joined = three().apply(&join("n4", 7004, None), DOWN).unwrap();
        assert_eq!(joined.nodes["n4"].state, NodeState::Joining);
        assert_eq!(
            joined.apply(&join("n4", 7004, Some(42)), DOWN),
            Ok(joined.clone())
        );
        // Once active it holds replicas: the same name, address and Raft
        // id asking again is a node that lost its disk.
        let mut active = joined;
        active.set("n4", NodeState::Active);
        assert!(matches!(
            active.apply(&join("n4", 7004, Some(42)), DOWN),
            Err(Refused::NameTaken { .. })
        ));
    }

    #[test]
    fn a_name_in_use_or_another_cluster_is_refused() {
        let record = three();
        let taken = record.apply(&join("n1", 7009, None), DOWN).unwrap_err();
        assert!(matches!(taken, Refused::NameTaken { ref node, .. } if node == "n1"));
        assert!(taken.to_string().contains("already active"), "{taken}");
        let other = record.apply(&join("n4", 7004, Some(7)), DOWN).unwrap_err();
        assert!(matches!(
            other,
            Refused::OtherCluster {
                theirs: 7,
                ours: 42,
                ..
            }
        ));
    }

    #[test]
    fn draining_needs_enough_nodes_left() {
        let record = three();
        let refused = record
            .apply(&Operation::Drain { node: "n2".into() }, DOWN)
            .unwrap_err();
        assert_eq!(
            refused,
            Refused::TooFew {
                node: "n2".into(),
                left: 2,
                replicas: 3
            }
        );
        let four = record.apply(&join("n4", 7004, None), DOWN).unwrap();
        let draining = four
            .apply(&Operation::Drain { node: "n2".into() }, DOWN)
            .unwrap();
        assert_eq!(draining.nodes["n2"].state, NodeState::Draining);
        // A second drain would leave two.
        assert!(matches!(
            draining.apply(&Operation::Drain { node: "n3".into() }, DOWN),
            Err(Refused::TooFew { left: 2, .. })
        ));
    }

    #[test]
    fn only_a_node_that_is_down_is_removed_and_its_name_is_retired() {
        let four = three().apply(&join("n4", 7004, None), DOWN).unwrap();
        let remove = Operation::Remove { node: "n3".into() };
        assert_eq!(
            four.apply(&remove, |n| n == "n3"),
            Err(Refused::StillUp("n3".into()))
        );
        let removed = four.apply(&remove, DOWN).unwrap();
        assert_eq!(removed.nodes["n3"].state, NodeState::Removed);
        assert!(!removed.addrs().contains(&addr(7003)));
        assert_eq!(removed.removed_addrs(), [addr(7003)]);
        // Asking again answers the same record.
        assert_eq!(removed.apply(&remove, DOWN), Ok(removed.clone()));
        // A replacement on the removed node's address is dialled.
        let replaced = removed.apply(&join("n6", 7003, None), DOWN).unwrap();
        assert!(replaced.addrs().contains(&addr(7003)));
        assert!(replaced.removed_addrs().is_empty());
        assert_eq!(
            removed.apply(&join("n3", 7003, None), DOWN),
            Err(Refused::Retired { node: "n3".into() })
        );
        assert_eq!(
            removed.apply(&Operation::Drain { node: "n3".into() }, DOWN),
            Err(Refused::Retired { node: "n3".into() })
        );
        assert_eq!(
            removed.apply(&Operation::Drain { node: "n9".into() }, DOWN),
            Err(Refused::Unknown("n9".into()))
        );
    }

    #[test]
    fn settling_notes_voters_drains_and_activates() {
        let four = three().apply(&join("n4", 7004, None), DOWN).unwrap();
        let draining = four
            .apply(&Operation::Drain { node: "n1".into() }, DOWN)
            .unwrap();
        let set = |names: &[&str]| names.iter().map(|n| n.to_string()).collect::<BTreeSet<_>>();
        let settled = planner::Shard {
            voters: set(&["n2", "n3", "n4"]),
            leader: Some("n2".into()),
            ..Default::default()
        };
        let moving = planner::Shard {
            voters: set(&["n1", "n2", "n3"]),
            learners: set(&["n4"]),
            leader: Some("n1".into()),
            ..Default::default()
        };
        let meta = BTreeSet::from(["n2".to_owned()]);
        let busy = draining.settled(&[settled.clone(), moving], &meta, false);
        assert_eq!(busy.shards[0], ["n2", "n3", "n4"]);
        assert_eq!(busy.shards[1], ["n1"], "a shard under way keeps its record");
        assert_eq!(busy.nodes["n1"].state, NodeState::Draining);
        assert_eq!(busy.nodes["n4"].state, NodeState::Joining);
        let done = draining.settled(&[settled.clone(), settled.clone()], &meta, true);
        assert_eq!(done.nodes["n1"].state, NodeState::Drained);
        assert_eq!(done.nodes["n4"].state, NodeState::Active);
        let still_voting = BTreeSet::from(["n1".to_owned()]);
        let held = draining.settled(&[settled.clone(), settled], &still_voting, true);
        assert_eq!(
            held.nodes["n1"].state,
            NodeState::Draining,
            "a metadata voter"
        );
    }

    #[test]
    fn the_metadata_voters_leave_nodes_that_leave() {
        let four = three().apply(&join("n4", 7004, None), DOWN).unwrap();
        let set = |names: &[&str]| names.iter().map(|n| n.to_string()).collect::<BTreeSet<_>>();
        assert_eq!(four.metadata_voters(&set(&["n1", "n2", "n3"])), None);
        let draining = four
            .apply(&Operation::Drain { node: "n2".into() }, DOWN)
            .unwrap();
        assert_eq!(
            draining.metadata_voters(&set(&["n1", "n2", "n3"])),
            Some(set(&["n1", "n3", "n4"]))
        );
        // Fewer founders than replicas: topped up as nodes join.
        let one = ClusterRecord::found(1, 3, &[("a".into(), addr(1), 1)], Vec::new());
        let two = one.apply(&join("b", 2, None), DOWN).unwrap();
        assert_eq!(two.metadata_voters(&set(&["a"])), Some(set(&["a", "b"])));
    }
}
