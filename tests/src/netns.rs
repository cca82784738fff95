//! Network namespaces that a test creates for itself, to cut nodes apart.
//!
//! Node `i` runs in its own namespace with two links to this one: a client
//! link (`198.18.<net>.<4i+2>`, reached from here through `…<4i+1>`) and a
//! cluster link into a bridge that joins every node (`198.19.<net>.<i+1>`).
//! Cutting a node's cluster link partitions it from the others while its
//! clients still reach it. The addresses are from 198.18.0.0/15, the range
//! set aside for such tests. Everything is removed on drop.

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// Whether this machine lets a test create network namespaces.
pub fn available() -> bool {
    let name = format!("tdg-probe-{}", std::process::id());
    let ok = ip(&["netns", "add", &name]);
    if ok {
        ip(&["netns", "del", &name]);
    }
    ok
}

fn ip(args: &[&str]) -> bool {
    Command::new("ip")
        .args(args)
        .output()
        .is_ok_and(|o| o.status.success())
}

fn must(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("ip runs");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A set of namespaces, one per node, and the bridge between them.
pub struct Net {
    tag: String,
    /// The third octet of this net's addresses.
    net: u32,
    nodes: usize,
}

impl Net {
    pub fn new(nodes: usize) -> Net {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let seq = NEXT.fetch_add(1, Ordering::Relaxed);
        let tag = format!("t{}{seq}", std::process::id() % 100_000);
        // A net per test in this process, unlikely to meet another's.
        let net = (std::process::id() + seq * 37) % 256;
        let this = Net { tag, net, nodes };
        let bridge = this.bridge();
        must(&["link", "add", &bridge, "type", "bridge"]);
        must(&["link", "set", &bridge, "up"]);
        for i in 0..nodes {
            let ns = this.namespace(i);
            must(&["netns", "add", &ns]);
            must(&["-n", &ns, "link", "set", "lo", "up"]);
            // Client link: this namespace ↔ the node's.
            let (here, there) = (format!("{}c{i}", this.tag), format!("{}d{i}", this.tag));
            must(&["link", "add", &here, "type", "veth", "peer", "name", &there]);
            must(&["link", "set", &there, "netns", &ns]);
            let host = format!("198.18.{}.{}/30", this.net, 4 * i + 1);
            must(&["addr", "add", &host, "dev", &here]);
            must(&["link", "set", &here, "up"]);
            let node = format!("{}/30", this.client_ip(i));
            must(&["-n", &ns, "addr", "add", &node, "dev", &there]);
            must(&["-n", &ns, "link", "set", &there, "up"]);
            // Cluster link: the node's namespace ↔ the bridge.
            let (port, inside) = (this.cluster_port(i), format!("{}k{i}", this.tag));
            must(&[
                "link", "add", &port, "type", "veth", "peer", "name", &inside,
            ]);
            must(&["link", "set", &inside, "netns", &ns]);
            must(&["link", "set", &port, "master", &bridge]);
            must(&["link", "set", &port, "up"]);
            let addr = format!("{}/24", this.cluster_ip(i));
            must(&["-n", &ns, "addr", "add", &addr, "dev", &inside]);
            must(&["-n", &ns, "link", "set", &inside, "up"]);
        }
        this
    }

    fn bridge(&self) -> String {
        format!("{}br", self.tag)
    }

    fn cluster_port(&self, i: usize) -> String {
        format!("{}p{i}", self.tag)
    }

    /// The namespace node `i` runs in.
    pub fn namespace(&self, i: usize) -> String {
        format!("{}n{i}", self.tag)
    }

    /// Node `i`'s address for clients.
    pub fn client_ip(&self, i: usize) -> String {
        format!("198.18.{}.{}", self.net, 4 * i + 2)
    }

    /// Node `i`'s address on the cluster bridge.
    pub fn cluster_ip(&self, i: usize) -> String {
        format!("198.19.{}.{}", self.net, i + 1)
    }

    /// Cuts node `i` off from the other nodes (its clients still reach it).
    pub fn isolate(&self, i: usize) {
        must(&["link", "set", &self.cluster_port(i), "down"]);
    }

    /// Puts node `i` back.
    pub fn heal(&self, i: usize) {
        must(&["link", "set", &self.cluster_port(i), "up"]);
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for i in 0..self.nodes {
            ip(&["netns", "del", &self.namespace(i)]);
            ip(&["link", "del", &format!("{}c{i}", self.tag)]);
            ip(&["link", "del", &self.cluster_port(i)]);
        }
        ip(&["link", "del", &self.bridge()]);
    }
}
