//! Several `tidings` binaries on loopback forming one cluster.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tempfile::TempDir;
use tidings_protocol::client::{Client, ClientConfig, Pushes};
use tidings_protocol::{Event, EventKind};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Child;

use crate::{eventually, http, process, token, Ws, API_KEY, SECRET};

pub const COOKIE: &str = "cluster-test-cookie";

static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Held for the whole of a test that runs a cluster, so that the tests of
/// one binary run their clusters one at a time. Their timeouts are short
/// (a peer is down after 1 s of silence, a request gives up after 3 s);
/// two clusters of debug binaries on two cores stall each other past them.
pub async fn one_cluster_at_a_time() -> tokio::sync::MutexGuard<'static, ()> {
    TURN.lock().await
}

pub struct Member {
    pub id: &'static str,
    pub cluster: SocketAddr,
    /// The network namespace the node runs in, and its client address
    /// there; loopback otherwise.
    pub netns: Option<(String, String)>,
    pub data: TempDir,
    pub child: Option<Child>,
    /// The HTTP address of the running process.
    pub http: String,
    /// Flags added to every start.
    pub args: Vec<String>,
    /// The certificates of its cluster, once [`with_certs`] made them.
    pub certs: Option<Arc<TempDir>>,
    /// A fixed HTTP address, kept across restarts so that clients reach
    /// the node again; port 0 (a new one each start) otherwise.
    pub http_listen: Option<SocketAddr>,
}

/// Runs `tidings certs` for `nodes`: a CA and a directory per node, under
/// `<returned dir>/certs`.
pub fn make_certs(nodes: &[&str]) -> TempDir {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(process::binary())
        .arg("certs")
        .arg("--out")
        .arg(dir.path().join("certs"))
        .arg("--nodes")
        .arg(nodes.join(","))
        .output()
        .expect("tidings certs runs");
    assert!(
        out.status.success(),
        "tidings certs: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    dir
}

/// The directory `--cluster-certs` takes for `node`, in `make_certs`' output.
pub fn certs_of(certs: &TempDir, node: &str) -> std::path::PathBuf {
    certs.path().join("certs").join(node)
}

/// Gives `members` one CA and each its certificate (`--cluster-certs`).
pub fn with_certs(members: &mut [Member]) {
    let ids: Vec<&str> = members.iter().map(|m| m.id).collect();
    let certs = Arc::new(make_certs(&ids));
    for member in members {
        let dir = certs_of(&certs, member.id);
        member.args.push("--cluster-certs".into());
        member.args.push(dir.display().to_string());
        member.certs = Some(certs.clone());
    }
}

/// A free loopback port for a node's cluster address, which the other
/// nodes must know before it starts.
///
/// Taken below the ephemeral port range: a port found by binding port 0
/// and let go is the kernel's to hand out again, and another test's
/// listener or outgoing connection could take it before the node binds
/// it (or between a node's kill and restart). Ports below the range are
/// only ever bound by name, and each test process walks its own sequence
/// of them.
pub fn free_addr() -> SocketAddr {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    const LOWEST: u32 = 10_000;
    let ephemeral = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32_768);
    let span = ephemeral.saturating_sub(LOWEST);
    if span > 0 {
        let start = std::process::id().wrapping_mul(7_919);
        for _ in 0..span {
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let port = LOWEST + start.wrapping_add(n) % span;
            let addr = SocketAddr::from(([127, 0, 0, 1], port as u16));
            if std::net::TcpListener::bind(addr).is_ok() {
                return addr;
            }
        }
    }
    let socket = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    socket.local_addr().unwrap()
}

impl Member {
    /// A node in namespace `i` of `net`.
    pub fn in_net(id: &'static str, net: &crate::netns::Net, i: usize) -> Member {
        let mut member = Member::new(id);
        member.cluster = SocketAddr::new(net.cluster_ip(i).parse().unwrap(), 7000);
        member.netns = Some((net.namespace(i), net.client_ip(i)));
        member
    }

    pub fn new(id: &'static str) -> Member {
        Member {
            id,
            cluster: free_addr(),
            netns: None,
            data: tempfile::tempdir().unwrap(),
            child: None,
            http: String::new(),
            args: Vec::new(),
            certs: None,
            http_listen: None,
        }
    }

    /// The cluster flags of a start among the nodes at `all`.
    fn flags(&self, all: &[SocketAddr]) -> Vec<String> {
        // Every node gets the same list, its own address included.
        let join: Vec<String> = all.iter().map(ToString::to_string).collect();
        let flags = [
            "--node-id",
            self.id,
            "--cluster-listen",
            &self.cluster.to_string(),
            "--join",
            &join.join(","),
            "--cluster-cookie",
            COOKIE,
            "--peer-timeout",
            "1s",
            // Writes without a majority give up quickly.
            "--call-timeout",
            "3s",
        ];
        flags
            .into_iter()
            .map(str::to_owned)
            .chain(self.args.iter().cloned())
            .collect()
    }

    pub async fn start(&mut self, all: &[SocketAddr]) {
        let (netns, listen) = match (&self.netns, self.http_listen) {
            (Some((ns, ip)), _) => (Some(ns.as_str()), format!("{ip}:0")),
            (None, Some(addr)) => (None, addr.to_string()),
            (None, None) => (None, "127.0.0.1:0".to_owned()),
        };
        let (child, http) =
            process::spawn_in(netns, &listen, self.data.path(), self.flags(all)).await;
        self.child = Some(child);
        self.http = http;
    }

    /// Like [`Member::start`] (on loopback), keeping what the node writes
    /// to stderr (its logs, and why it stopped) in the returned buffer.
    pub async fn start_logged(&mut self, all: &[SocketAddr]) -> Arc<Mutex<String>> {
        let mut child = tokio::process::Command::new(process::binary())
            .arg("--listen")
            .arg(
                self.http_listen
                    .map_or_else(|| "127.0.0.1:0".to_owned(), |a| a.to_string()),
            )
            .arg("--data-dir")
            .arg(self.data.path())
            .args(self.flags(all))
            .env("TIDINGS_AUTH_SECRET", SECRET)
            .env("TIDINGS_API_KEY", API_KEY)
            .env("TIDINGS_LOG", process::node_log())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("the tidings binary starts");
        let logged = Arc::new(Mutex::new(String::new()));
        let mut stderr = BufReader::new(child.stderr.take().expect("piped stderr")).lines();
        let (into, id) = (logged.clone(), self.id);
        tokio::spawn(async move {
            // Drained to the end, so the node never blocks on a full pipe;
            // the last 64 KiB are kept.
            while let Ok(Some(line)) = stderr.next_line().await {
                eprintln!("[{id}] {line}");
                let mut kept = into.lock().unwrap();
                kept.push_str(&line);
                kept.push('\n');
                if kept.len() > 64 << 10 {
                    let cut = kept.len() - (32 << 10);
                    let cut = (cut..kept.len())
                        .find(|&i| kept.is_char_boundary(i))
                        .unwrap_or(0);
                    kept.drain(..cut);
                }
            }
        });
        let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
        let line = tokio::time::timeout(crate::WAIT, stdout.next_line())
            .await
            .expect("the node says where it listens")
            .expect("stdout is readable")
            .expect("a line on stdout");
        self.http = line
            .strip_prefix("listening on http://")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_owned();
        self.child = Some(child);
        logged
    }

    /// The process's exit status, if it exits within `within`; it keeps
    /// running (and counts as started) otherwise.
    pub async fn exited(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let child = self.child.as_mut()?;
        let status = tokio::time::timeout(within, child.wait()).await.ok()?;
        self.child = None;
        Some(status.unwrap())
    }

    /// Whether the process runs.
    pub fn running(&self) -> bool {
        self.child.is_some()
    }

    /// Replaces the (stopped) node's data directory with an empty one, as
    /// a lost disk would.
    pub fn wipe(&mut self) {
        assert!(
            self.child.is_none(),
            "{} is stopped before its wipe",
            self.id
        );
        self.data = tempfile::tempdir().unwrap();
    }

    pub fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().unwrap().id().unwrap();
        let status = std::process::Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill {signal} {pid}");
    }

    /// This node's view: cluster address → (node id, "up" or "down").
    pub async fn view(&self) -> Option<BTreeMap<String, (String, String)>> {
        let view = self.cluster_json().await?;
        assert_eq!(view["node"], self.id);
        let nodes = view["nodes"].as_array()?;
        Some(
            nodes
                .iter()
                .map(|n| {
                    (
                        n["addr"].as_str().unwrap_or_default().to_owned(),
                        (
                            n["id"].as_str().unwrap_or_default().to_owned(),
                            n["state"].as_str().unwrap_or_default().to_owned(),
                        ),
                    )
                })
                .collect(),
        )
    }

    /// Stops the process as an operator would (SIGTERM), and waits for it
    /// to exit cleanly.
    pub async fn stop(&mut self) {
        self.signal("-TERM");
        let mut child = self.child.take().unwrap();
        let exit = tokio::time::timeout(crate::WAIT, child.wait())
            .await
            .expect("the node exits after SIGTERM")
            .unwrap();
        assert!(exit.success(), "{} exited with {exit}", self.id);
    }

    /// Stops the process at once, as a crash would.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().await.unwrap();
        }
    }

    /// The running process's peak resident memory (`VmHWM`), in KiB.
    pub fn peak_rss_kib(&self) -> Option<u64> {
        let pid = self.child.as_ref()?.id()?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    }

    /// A WebSocket connection to this node as `user`, subscribed: see
    /// [`Ws::subscribed`].
    pub async fn connect(&self, user: &str) -> Ws {
        Ws::subscribed(&format!("ws://{}/v1/ws", self.http), &token(user)).await
    }

    /// This node's view of the shards' groups, if it answers.
    pub async fn shards(&self) -> Option<Vec<Value>> {
        self.cluster_json().await?["shards"].as_array().cloned()
    }

    /// Shard → the last index this node has applied.
    pub async fn committed(&self) -> BTreeMap<u64, u64> {
        self.shards()
            .await
            .unwrap_or_default()
            .iter()
            .filter_map(|s| Some((s["shard"].as_u64()?, s["committed"].as_u64()?)))
            .collect()
    }

    /// `GET /v1/cluster`, if the node answers.
    pub async fn cluster_json(&self) -> Option<Value> {
        let response = http()
            .get(format!("http://{}/v1/cluster", self.http))
            .send()
            .await
            .ok()?;
        response.json().await.ok()
    }

    /// Shard → leader's node id for the shards this node holds a replica
    /// of, once each of them has a leader in this node's view.
    pub async fn leaders(&self) -> Option<BTreeMap<u64, String>> {
        let shards = self.shards().await?;
        if shards.is_empty() {
            return None;
        }
        shards
            .iter()
            .filter(|s| s["held"] == true)
            .map(|s| Some((s["shard"].as_u64()?, s["leader"].as_str()?.to_owned())))
            .collect()
    }
}

/// Starts `ids.len()` nodes that all know each other and waits until every
/// node sees a leader for every shard.
pub async fn start_cluster(ids: &[&'static str]) -> Vec<Member> {
    form(ids.iter().map(|id| Member::new(id)).collect()).await
}

/// Starts `members`, which all know each other, and waits until every node
/// sees a leader for every shard.
///
/// Nodes whose cluster addresses are not on loopback (in network
/// namespaces) get certificates first, as they must.
pub async fn form(mut members: Vec<Member>) -> Vec<Member> {
    let off_loopback = members.iter().any(|m| !m.cluster.ip().is_loopback());
    if off_loopback && members.iter().all(|m| m.certs.is_none()) {
        with_certs(&mut members);
    }
    let all: Vec<SocketAddr> = members.iter().map(|m| m.cluster).collect();
    for member in &mut members {
        member.start(&all).await;
    }
    for member in &members {
        eventually(&format!("{} to see every shard led", member.id), || {
            member.leaders()
        })
        .await;
    }
    members
}

/// Shard → leader's node id, as the replicas of each shard see it, once
/// every node answers with a leader for each shard it holds.
pub async fn all_leaders(nodes: &[Member]) -> BTreeMap<u64, String> {
    let mut all = BTreeMap::new();
    for node in nodes {
        let leaders = eventually(&format!("{} to see its shards led", node.id), || {
            node.leaders()
        })
        .await;
        all.extend(leaders);
    }
    all
}

/// The index of the node leading the most shards in `leaders`.
pub fn busiest(nodes: &[Member], leaders: &BTreeMap<u64, String>) -> usize {
    let count = |id: &str| leaders.values().filter(|l| *l == id).count();
    (0..nodes.len())
        .max_by_key(|&i| count(nodes[i].id))
        .expect("a cluster has nodes")
}

/// A Rust client for `user` that connects to `nodes[first]` first and
/// fails over to the others in turn.
pub fn client(user: &str, nodes: &[Member], first: usize) -> (Client, Pushes) {
    let urls: Vec<String> = (0..nodes.len())
        .map(|i| format!("ws://{}", nodes[(first + i) % nodes.len()].http))
        .collect();
    let mut config = ClientConfig::new(urls, token(user));
    config.request_timeout = Duration::from_secs(30);
    Client::connect(config)
}

/// The messages of a conversation in version order: (version, cmid).
pub fn messages(events: &[Event]) -> Vec<(u64, String)> {
    events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::Message {
                cmid: Some(cmid), ..
            } => Some((e.version, cmid.to_string())),
            _ => None,
        })
        .collect()
}
