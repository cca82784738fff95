//! Whether a node that starts with an empty data directory may take part
//! in the shard groups: the rules, kept free of I/O.
//!
//! A Raft voter's promises live on its disk: the term it voted in, and the
//! entries it acknowledged (a write is acknowledged once a majority has it
//! on disk). A node whose disk was wiped and that comes back under its old
//! id has forgotten both. It would grant its vote to any candidate, one
//! that lacks acknowledged entries included (the entries were on the wiped
//! disk and on one other node, which is now down), and it would accept
//! entries from a leader of a term it had already voted past. Either way
//! an acknowledged message can vanish from every history. Until the
//! cluster can give such a node a new identity (membership changes), it
//! must stay out: it refuses to start, and says what to do.
//!
//! Letting it rejoin as a non-voter that catches up first is not enough
//! with a fixed membership: the leader still counts its acknowledgements
//! towards the majority, and having forgotten its term it acknowledges a
//! deposed leader's entries too. That needs it to be a learner, which is a
//! membership change.
//!
//! How a node learns that its peers know it: every node knocks on every
//! peer it links to ([`Knock`]: its id and a number drawn at each start),
//! and the peer answers with the node list its groups were formed with,
//! if formed, and whether the knocking process is one it formed them with
//! ([`Answer`]). A node with an empty data directory serves no Raft
//! request until the first answer comes, and then takes part only if no
//! peer knows it from before ([`verdict`]).
//!
//! Founders that start together, all empty, must still form: a node
//! forms the groups only once every other node has knocked on it during
//! its run, and the processes that had knocked by then are its founders,
//! which it never reports as returning. So a founder's first answer never
//! says it is known, however its knock and the formation interleave; a
//! node that comes back empty after the formation knocks with a new
//! number, and hears that it is known.

use serde::{Deserialize, Serialize};

/// A node's greeting to a peer it has linked to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Knock {
    /// The knocking node's id.
    pub node: String,
    /// Drawn afresh each time the node starts: tells one run from another.
    pub boot: u64,
}

/// What a peer answers a [`Knock`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Answer {
    /// The answering node's id.
    pub node: String,
    /// The node names its shard groups were formed with, once formed.
    pub formed: Option<Vec<String>>,
    /// Whether the knocking process is one the answering node formed the
    /// groups with during its current run: such a process was there at
    /// the formation and has lost nothing since.
    pub founder: bool,
}

impl Answer {
    /// Whether this answer says that `node` was a member before this run
    /// of it: the groups were formed with it, and not with this process.
    fn knows(&self, node: &str) -> bool {
        !self.founder
            && self
                .formed
                .as_ref()
                .is_some_and(|members| members.iter().any(|m| m == node))
    }
}

/// Whether a node may take part in the shard groups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Its disk holds its promises, or nobody knows it: it takes part.
    Proceed,
    /// Its disk is empty and no peer has answered yet.
    Wait,
    /// Its disk is empty and its peers know it as a member.
    Refuse(Refusal),
}

/// Why a node with an empty data directory does not start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "node {node} has an empty data directory, but {known_by} know{s} it as a member of the \
     cluster of nodes {members}: with its votes and entries gone it could vote in a leader that \
     lacks acknowledged messages, so it does not start. Start it again with the data directory \
     it last ran with (not an older copy). If that is lost, keep {node} stopped (the other nodes \
     serve every shard while a majority of its replicas is up), start a new node under another \
     --node-id with --join naming any member, then remove {node}: \
     DELETE /v1/cluster/nodes/{node} or `tidings cluster remove --node {node}`",
    known_by = .known_by.join(", "),
    s = if .known_by.len() == 1 { "s" } else { "" },
    members = .members.join(", "),
)]
pub struct Refusal {
    /// The node that must not start.
    pub node: String,
    /// The peers that answered that they know it.
    pub known_by: Vec<String>,
    /// The nodes the groups were formed with.
    pub members: Vec<String>,
}

/// The verdict on node `me`, whose data directory holds no Raft state if
/// `empty`, in a cluster of itself and `expected_peers` others, given the
/// peers' answers so far.
pub fn verdict(me: &str, empty: bool, expected_peers: usize, answers: &[Answer]) -> Verdict {
    // A node alone in its cluster has nobody to have promised anything to.
    if !empty || expected_peers == 0 {
        return Verdict::Proceed;
    }
    if answers.is_empty() {
        return Verdict::Wait;
    }
    let knowing: Vec<&Answer> = answers.iter().filter(|a| a.knows(me)).collect();
    let Some(first) = knowing.first() else {
        return Verdict::Proceed;
    };
    let mut members = first.formed.clone().unwrap_or_default();
    members.sort();
    Verdict::Refuse(Refusal {
        node: me.to_owned(),
        known_by: knowing.iter().map(|a| a.node.clone()).collect(),
        members,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(node: &str, formed: Option<&[&str]>, founder: bool) -> Answer {
        Answer {
            node: node.into(),
            formed: formed.map(|f| f.iter().map(|s| (*s).to_owned()).collect()),
            founder,
        }
    }

    const THREE: &[&str] = &["n1", "n2", "n3"];

    #[test]
    fn a_node_with_its_disk_takes_part_at_once() {
        assert_eq!(verdict("n3", false, 2, &[]), Verdict::Proceed);
        let known = [answer("n1", Some(THREE), false)];
        assert_eq!(verdict("n3", false, 2, &known), Verdict::Proceed);
    }

    #[test]
    fn a_node_alone_takes_part_even_when_empty() {
        assert_eq!(verdict("n1", true, 0, &[]), Verdict::Proceed);
    }

    #[test]
    fn an_empty_node_waits_for_a_peer_to_answer() {
        assert_eq!(verdict("n3", true, 2, &[]), Verdict::Wait);
    }

    #[test]
    fn an_empty_founder_takes_part_when_nothing_is_formed() {
        let answers = [answer("n1", None, false)];
        assert_eq!(verdict("n3", true, 2, &answers), Verdict::Proceed);
    }

    #[test]
    fn a_founder_is_not_refused_by_the_groups_formed_with_it() {
        // Its first knock was answered before the formation, its retry
        // after: it is still the process the groups were formed with.
        let answers = [answer("n1", Some(THREE), true)];
        assert_eq!(verdict("n3", true, 2, &answers), Verdict::Proceed);
    }

    #[test]
    fn an_empty_node_its_peers_know_is_refused() {
        let answers = [
            answer("n1", Some(&["n2", "n3", "n1"]), false),
            answer("n2", Some(THREE), false),
        ];
        let Verdict::Refuse(refusal) = verdict("n3", true, 2, &answers) else {
            panic!("n3 is refused");
        };
        assert_eq!(refusal.node, "n3");
        assert_eq!(refusal.known_by, ["n1", "n2"]);
        assert_eq!(refusal.members, THREE);
        let message = refusal.to_string();
        for part in ["node n3", "n1, n2 know it", "n1, n2, n3", "data directory"] {
            assert!(message.contains(part), "{message:?} names {part:?}");
        }
    }

    #[test]
    fn one_knowing_peer_is_enough_to_refuse() {
        let answers = [answer("n1", None, false), answer("n2", Some(THREE), false)];
        let Verdict::Refuse(refusal) = verdict("n3", true, 2, &answers) else {
            panic!("n3 is refused");
        };
        assert_eq!(refusal.known_by, ["n2"]);
        assert!(refusal.to_string().contains("n2 knows it"));
    }

    #[test]
    fn groups_formed_without_the_node_do_not_refuse_it() {
        let answers = [answer("n1", Some(&["n1", "n2"]), false)];
        assert_eq!(verdict("n3", true, 2, &answers), Verdict::Proceed);
    }
}
