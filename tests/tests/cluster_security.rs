//! Cluster links admit members only: a relayed challenge, a wrong cookie,
//! ractor_cluster's own listener, plaintext or certificate-less TLS, a
//! certificate of another CA or of another node are all refused, and
//! unauthenticated sockets are cut off before they cost the node memory.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use tidings_cluster::link::Hello;
use tidings_tests::cluster::{
    certs_of, form, free_addr, make_certs, one_cluster_at_a_time, with_certs, Member, COOKIE,
};
use tidings_tests::{eventually, process, API_KEY, SECRET, WAIT};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::Command;

/// A node's log lines (warnings and worse), as they come.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<String>>>);

impl Logs {
    fn find(&self, needle: &str) -> Option<String> {
        let lines = self.0.lock().unwrap();
        lines.iter().find(|l| l.contains(needle)).cloned()
    }

    /// The first line that has every one of `needles`.
    fn find_all(&self, needles: &[&str]) -> Option<String> {
        let lines = self.0.lock().unwrap();
        lines
            .iter()
            .find(|l| needles.iter().all(|n| l.contains(n)))
            .cloned()
    }

    fn all(&self) -> String {
        self.0.lock().unwrap().join("\n")
    }
}

/// Starts `member` as [`Member::start`] does, with `extra` flags, keeping
/// its log.
async fn start_logged(member: &mut Member, join: &[SocketAddr], extra: &[&str]) -> Logs {
    let join: Vec<String> = join.iter().map(ToString::to_string).collect();
    let own_cookie = member.args.iter().any(|a| a == "--cluster-cookie");
    let cookie: &[&str] = if own_cookie {
        &[]
    } else {
        &["--cluster-cookie", COOKIE]
    };
    let mut command = Command::new(process::binary());
    command
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(member.data.path())
        .args(["--node-id", member.id, "--cluster-listen"])
        .arg(member.cluster.to_string())
        .args(["--join", &join.join(",")])
        .args(cookie)
        .args(["--peer-timeout", "1s"])
        .args(["--call-timeout", "3s"])
        .args(&member.args)
        .args(extra)
        .env("TIDINGS_AUTH_SECRET", SECRET)
        .env("TIDINGS_API_KEY", API_KEY)
        .env("TIDINGS_LOG", "warn,openraft=off")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = command.spawn().expect("the tidings binary starts");
    let logs = Logs::default();
    let stderr = child.stderr.take().unwrap();
    let sink = logs.clone();
    tokio::spawn(async move {
        let mut lines = BufReader::new(stderr).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            sink.0.lock().unwrap().push(line);
        }
    });
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(WAIT, stdout.next_line())
        .await
        .expect("the node says where it listens")
        .unwrap()
        .unwrap_or_else(|| panic!("the node exited: {}", logs.all()));
    member.http = line
        .strip_prefix("listening on http://")
        .expect("the address line")
        .to_owned();
    member.child = Some(child);
    logs
}

/// `addr`'s entry in `member`'s view: (node id, state).
async fn seen(member: &Member, addr: SocketAddr) -> Option<(String, String)> {
    member.view().await?.get(&addr.to_string()).cloned()
}

// ractor_cluster's wire format, just enough of it to attack with: frames
// are a u64 (big-endian) length and a protobuf message.

fn varint(mut n: u64, out: &mut Vec<u8>) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

fn field(tag: u64, bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    varint((tag << 3) | 2, &mut out);
    varint(bytes.len() as u64, &mut out);
    out.extend_from_slice(bytes);
    out
}

fn ractor_frame(message: &[u8]) -> Vec<u8> {
    let mut out = (message.len() as u64).to_be_bytes().to_vec();
    out.extend_from_slice(message);
    out
}

/// NetworkMessage { auth: { name: { name, flags: { version: 1 },
/// connection_string } } }
fn ractor_name(name: &str, connection_string: &str) -> Vec<u8> {
    let flags = [0x08, 0x01];
    let message = [
        field(1, name.as_bytes()),
        field(2, &flags),
        field(3, connection_string.as_bytes()),
    ]
    .concat();
    field(1, &field(1, &message))
}

/// NetworkMessage { control: { ready: {} } }
fn ractor_ready() -> Vec<u8> {
    field(3, &field(9, &[]))
}

/// Whether a frame is NetworkMessage { auth: { server_ack } }.
fn is_server_ack(frame: &[u8]) -> bool {
    frame.len() > 2 && frame[0] == 0x0a && frame[2] == ((6 << 3) | 2)
}

async fn read_ractor_frame<R: AsyncReadExt + Unpin>(from: &mut R) -> std::io::Result<Vec<u8>> {
    let len = from.read_u64().await?;
    if len > 1 << 20 {
        return Err(std::io::ErrorKind::InvalidData.into());
    }
    let mut frame = vec![0; len as usize];
    from.read_exact(&mut frame).await?;
    Ok(frame)
}

/// The attack: answer the node's dial to `relay`, introduce ourselves to
/// the node's own listener under another name, and pass the node's
/// challenge to its own dial and the dial's answer back. Returns once the
/// node closes the listener side: never, if it let us in.
async fn relay_challenge(relay: &TcpListener, node: SocketAddr) -> std::io::Result<()> {
    let (mut dialled, _) = relay.accept().await?;
    let mut listener = TcpStream::connect(node).await?;
    // The node's own introduction is dropped ...
    let _ = tokio::time::timeout(Duration::from_secs(1), read_ractor_frame(&mut dialled)).await;
    listener
        .write_all(&ractor_frame(&ractor_name(
            "intruder@127.0.0.9",
            &relay.local_addr()?.to_string(),
        )))
        .await?;
    // ... and everything else relayed, the node's challenge to its own
    // dial and the dial's answer to the node.
    let (mut dialled_read, mut dialled_write) = dialled.into_split();
    let (mut listener_read, listener_write) = listener.into_split();
    let listener_write = Arc::new(tokio::sync::Mutex::new(listener_write));
    let up = {
        let listener_write = listener_write.clone();
        tokio::spawn(async move {
            let mut chunk = vec![0; 16 * 1024];
            while let Ok(n @ 1..) = dialled_read.read(&mut chunk).await {
                if listener_write
                    .lock()
                    .await
                    .write_all(&chunk[..n])
                    .await
                    .is_err()
                {
                    break;
                }
            }
        })
    };
    let result = async {
        loop {
            let frame = read_ractor_frame(&mut listener_read).await?;
            let _ = dialled_write.write_all(&ractor_frame(&frame)).await;
            if is_server_ack(&frame) {
                // In: say we are ready, as a peer does.
                listener_write
                    .lock()
                    .await
                    .write_all(&ractor_frame(&ractor_ready()))
                    .await?;
            }
        }
    }
    .await;
    up.abort();
    result
}

#[tokio::test]
async fn a_relayed_challenge_does_not_make_a_peer() {
    let _turn = one_cluster_at_a_time().await;
    // The node dials an address in its --join that answers as the attacker.
    let relay = TcpListener::bind(free_addr()).await.unwrap();
    let relay_addr = relay.local_addr().unwrap();
    let mut node = Member::new("n1");
    let all = [node.cluster, relay_addr];
    let logs = start_logged(&mut node, &all, &[]).await;

    let attacked = tokio::time::timeout(WAIT, relay_challenge(&relay, node.cluster)).await;
    // A peer's id is listed once its session is ready: the node must never
    // have taken the relay for a peer.
    let (id, _) = seen(&node, relay_addr).await.expect("the relay is listed");
    assert_ne!(id, "intruder", "the node took the relay for a peer");
    assert!(
        attacked.is_ok(),
        "the node kept the relayed session open; it sees the relay as {:?}",
        seen(&node, relay_addr).await
    );
    let refused = eventually("the node to log the refusal", || async {
        logs.find("cluster connection refused")
    })
    .await;
    assert!(refused.contains("not a Tidings cluster hello"), "{refused}");

    // A plain relay of the node's dial to its own listener: both ends see
    // the node's own id and refuse it.
    let (mut dialled, _) = tokio::time::timeout(WAIT, relay.accept())
        .await
        .expect("the node dials again")
        .unwrap();
    let mut listener = TcpStream::connect(node.cluster).await.unwrap();
    let relayed = tokio::time::timeout(
        WAIT,
        tokio::io::copy_bidirectional(&mut dialled, &mut listener),
    )
    .await;
    assert!(
        relayed.is_ok(),
        "the node kept a relay of its own dial open"
    );
    eventually("the node to refuse its own id", || async {
        logs.find("claims this node's own id")
    })
    .await;

    let (id, state) = seen(&node, relay_addr).await.expect("the relay is listed");
    assert_eq!(state, "down", "the relay must never be up");
    assert_ne!(id, "intruder");
    node.kill().await;
}

#[tokio::test]
async fn a_node_with_another_cookie_is_refused() {
    let _turn = one_cluster_at_a_time().await;
    let (mut a, mut b) = (Member::new("n1"), Member::new("n2"));
    let all = [a.cluster, b.cluster];
    let a_logs = start_logged(&mut a, &all, &[]).await;
    b.args = vec!["--cluster-cookie".into(), "another-cookie".into()];
    let b_logs = start_logged(&mut b, &all, &[]).await;
    let refused = eventually("a refusal of the wrong cookie", || async {
        a_logs
            .find("proof of the cookie is wrong")
            .or_else(|| b_logs.find("proof of the cookie is wrong"))
    })
    .await;
    assert!(refused.contains("cluster connection refused"), "{refused}");
    assert_eq!(seen(&a, b.cluster).await.unwrap().1, "down");
    assert_eq!(seen(&b, a.cluster).await.unwrap().1, "down");
    a.kill().await;
    b.kill().await;
}

/// The TCP ports `pid` listens on.
fn listening_ports(pid: u32) -> HashSet<u16> {
    let mut inodes = HashSet::new();
    for fd in std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
    {
        if let Ok(link) = std::fs::read_link(fd.path()) {
            let link = link.display().to_string();
            if let Some(inode) = link
                .strip_prefix("socket:[")
                .and_then(|l| l.strip_suffix(']'))
            {
                inodes.insert(inode.to_owned());
            }
        }
    }
    let mut ports = HashSet::new();
    for table in ["tcp", "tcp6"] {
        let text = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).unwrap_or_default();
        for row in text.lines().skip(1) {
            let cols: Vec<&str> = row.split_whitespace().collect();
            if cols.len() > 9 && cols[3] == "0A" && inodes.contains(cols[9]) {
                let port = cols[1].rsplit(':').next().unwrap();
                ports.insert(u16::from_str_radix(port, 16).unwrap());
            }
        }
    }
    ports
}

/// ractor_cluster's session events, as a test sees them.
struct Events(tokio::sync::mpsc::UnboundedSender<&'static str>);

impl ractor_cluster::NodeEventSubscription for Events {
    fn node_session_opened(&self, _: ractor_cluster::node::NodeServerSessionInformation) {}
    fn node_session_authenticated(&self, _: ractor_cluster::node::NodeServerSessionInformation) {
        let _ = self.0.send("authenticated");
    }
    fn node_session_ready(&self, _: ractor_cluster::node::NodeServerSessionInformation) {
        let _ = self.0.send("ready");
    }
    fn node_session_disconnected(&self, _: ractor_cluster::node::NodeServerSessionInformation) {
        let _ = self.0.send("disconnected");
    }
}

#[tokio::test]
async fn ractor_clusters_own_handshake_is_let_in_nowhere() {
    let _turn = one_cluster_at_a_time().await;
    let mut node = Member::new("n1");
    let all = [node.cluster];
    let _logs = start_logged(&mut node, &all, &["--replicas", "1"]).await;
    let pid = node.child.as_ref().unwrap().id().unwrap();
    let http: SocketAddr = node.http.parse().unwrap();
    let ports = listening_ports(pid);
    assert!(ports.contains(&node.cluster.port()), "{ports:?}");
    let others: Vec<u16> = ports
        .iter()
        .copied()
        .filter(|&p| p != http.port() && p != node.cluster.port())
        .collect();
    assert!(
        !others.is_empty(),
        "ractor_cluster's own listener is somewhere: {ports:?}"
    );

    // A ractor_cluster node that knows the cookie dials every port the
    // node listens on for the cluster: none lets it in.
    let server = ractor_cluster::NodeServer::new(
        0,
        COOKIE.into(),
        "intruder".into(),
        "127.0.0.1".into(),
        None,
        None,
    )
    .with_listen_addr([127, 0, 0, 1].into());
    let (server, _) = ractor::Actor::spawn(None, server, ()).await.unwrap();
    let (tx, mut events) = tokio::sync::mpsc::unbounded_channel();
    server
        .cast(ractor_cluster::NodeServerMessage::SubscribeToEvents {
            id: "test".into(),
            subscription: Box::new(Events(tx)),
        })
        .unwrap();
    let targets: Vec<u16> = std::iter::once(node.cluster.port()).chain(others).collect();
    for port in &targets {
        ractor_cluster::client_connect(&server, SocketAddr::from(([127, 0, 0, 1], *port)))
            .await
            .unwrap();
        let event = tokio::time::timeout(WAIT, events.recv())
            .await
            .unwrap_or_else(|_| panic!("port {port} neither closed nor admitted the dial"));
        assert_eq!(event, Some("disconnected"), "port {port}");
    }
    server.stop(None);
    node.kill().await;
}

#[tokio::test]
async fn a_session_naming_another_node_than_its_handshake_proved_is_closed() {
    let _turn = one_cluster_at_a_time().await;
    let mut node = Member::new("n1");
    let all = [node.cluster];
    let logs = start_logged(&mut node, &all, &["--replicas", "1"]).await;

    // Prove the cookie as n2, then speak ractor_cluster as n3.
    let claimed = free_addr();
    let gate = tidings_cluster::link::Gate::new(
        "n2".into(),
        claimed,
        COOKIE,
        None,
        Duration::from_secs(5),
    );
    let stream = gate.dial(node.cluster).await.expect("the handshake passes");
    let server = ractor_cluster::NodeServer::new(
        0,
        COOKIE.into(),
        "n3".into(),
        "127.0.0.1".into(),
        None,
        None,
    )
    .with_listen_addr([127, 0, 0, 1].into());
    let (server, _) = ractor::Actor::spawn(None, server, ()).await.unwrap();
    let (tx, mut events) = tokio::sync::mpsc::unbounded_channel();
    server
        .cast(ractor_cluster::NodeServerMessage::SubscribeToEvents {
            id: "test".into(),
            subscription: Box::new(Events(tx)),
        })
        .unwrap();
    server
        .cast(
            ractor_cluster::NodeServerMessage::ConnectionOpenedExternal {
                stream,
                is_server: false,
            },
        )
        .unwrap();
    tokio::time::timeout(WAIT, async {
        while let Some(event) = events.recv().await {
            if event == "disconnected" {
                return;
            }
        }
    })
    .await
    .expect("the node closes the session");
    let refused = eventually("the node to say why", || async {
        logs.find("names another node than its handshake proved")
    })
    .await;
    assert!(refused.contains("n3"), "{refused}");
    let view = node.view().await.unwrap();
    assert!(
        view.values()
            .all(|(id, state)| id == "n1" || state == "down"),
        "{view:?}"
    );
    server.stop(None);
    node.kill().await;
}

/// VmRSS of `pid`, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

/// Waits until the node closes `socket` (EOF or reset); how long it took.
async fn closed_within(socket: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let start = Instant::now();
    let mut buf = [0; 1024];
    tokio::time::timeout(limit, async {
        loop {
            match socket.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .ok()?;
    Some(start.elapsed())
}

#[tokio::test]
async fn unauthenticated_sockets_are_cut_off_before_they_cost_memory() {
    let _turn = one_cluster_at_a_time().await;
    let mut node = Member::new("n1");
    let all = [node.cluster];
    let timeout = Duration::from_secs(2);
    let _logs = start_logged(
        &mut node,
        &all,
        &["--replicas", "1", "--cluster-handshake-timeout", "2s"],
    )
    .await;
    let pid = node.child.as_ref().unwrap().id().unwrap();
    eventually("the node to answer", || node.cluster_json()).await;
    let before = rss_kib(pid);

    // Silent sockets: closed once the handshake timeout is up, each timed
    // from its connect.
    let mut silent = Vec::new();
    for _ in 0..10 {
        let mut socket = TcpStream::connect(node.cluster).await.unwrap();
        silent.push(tokio::spawn(async move {
            closed_within(&mut socket, timeout + Duration::from_secs(3)).await
        }));
    }
    // Forty sockets each announcing a 16 MiB frame (thirty in
    // ractor_cluster's framing, ten in the handshake's) and sending all of
    // it but the last byte.
    const FRAME: usize = 16 << 20;
    let mut floods = Vec::new();
    for i in 0..40 {
        let addr = node.cluster;
        floods.push(tokio::spawn(async move {
            let mut socket = TcpStream::connect(addr).await.unwrap();
            let header = if i < 30 {
                (FRAME as u64).to_be_bytes().to_vec()
            } else {
                (FRAME as u32).to_be_bytes().to_vec()
            };
            let chunk = vec![0x5a; 64 * 1024];
            let mut sent = 0;
            if socket.write_all(&header).await.is_ok() {
                while sent + chunk.len() < FRAME {
                    if socket.write_all(&chunk).await.is_err() {
                        break;
                    }
                    sent += chunk.len();
                }
            }
            (socket, sent)
        }));
    }
    let mut flooded = Vec::new();
    for flood in floods {
        let done = tokio::time::timeout(Duration::from_secs(60), flood)
            .await
            .expect("a flood socket finishes writing")
            .unwrap();
        flooded.push(done);
    }
    let grown = rss_kib(pid).saturating_sub(before);
    assert!(
        grown < 50 * 1024,
        "forty unauthenticated sockets grew the node by {} MiB",
        grown / 1024
    );
    for (mut socket, sent) in flooded {
        assert!(
            closed_within(&mut socket, WAIT).await.is_some(),
            "a socket that announced a 16 MiB frame stays open (it sent {sent} bytes)"
        );
    }
    for socket in silent {
        let took = socket
            .await
            .unwrap()
            .expect("a silent socket is closed within the handshake timeout and a margin");
        assert!(
            took >= timeout / 2,
            "closed after {took:?}, before its time"
        );
    }
    // Still a working node.
    eventually("the node to answer", || node.cluster_json()).await;
    node.kill().await;
}

#[tokio::test]
async fn three_nodes_with_generated_certificates_chat() {
    let _turn = one_cluster_at_a_time().await;
    let mut members = vec![Member::new("n1"), Member::new("n2"), Member::new("n3")];
    with_certs(&mut members);
    let nodes = form(members).await;
    let mut alice = nodes[0].connect("alice").await;
    let mut bob = nodes[1].connect("bob").await;
    let conv = alice.create(["bob"]).await;
    let ack = alice
        .ok(
            json!({"type":"send","conv":conv,"body":"over tls","cmid":"t-1"}),
            "ack",
        )
        .await;
    let version = ack["version"].as_u64().unwrap();
    assert_eq!(bob.event(&conv, version).await["body"], "over tls");
    for mut node in nodes {
        node.kill().await;
    }
}

/// A TLS client to `addr` that trusts `ca` and shows no certificate of
/// its own.
async fn tls_without_a_certificate(
    addr: SocketAddr,
    ca: &Path,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let socket = TcpStream::connect(addr).await?;
    let name = rustls::pki_types::ServerName::try_from("tidings-cluster").unwrap();
    connector.connect(name, socket).await
}

/// Reads what the node sends until it closes; fails after `WAIT`.
async fn read_until_closed<S: AsyncReadExt + Unpin>(stream: &mut S) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0; 4096];
    tokio::time::timeout(WAIT, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .expect("the node closes the connection");
    got
}

#[tokio::test]
async fn with_certificates_strangers_are_dropped_before_any_cluster_message() {
    let _turn = one_cluster_at_a_time().await;
    let ours = make_certs(&["n1", "n2"]);
    let theirs = make_certs(&["n2"]);
    let (mut n1, mut stranger, mut impostor) =
        (Member::new("n1"), Member::new("n2"), Member::new("n3"));
    let all = [n1.cluster, stranger.cluster, impostor.cluster];
    let certs = |c: &tempfile::TempDir, id: &str| certs_of(c, id).display().to_string();
    let logs = start_logged(&mut n1, &all, &["--cluster-certs", &certs(&ours, "n1")]).await;

    // A plaintext dialer, even one that speaks the handshake.
    let mut plain = TcpStream::connect(n1.cluster).await.unwrap();
    let hello = Hello::new("n2", stranger.cluster).encode();
    let mut frame = (hello.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(&hello);
    plain.write_all(&frame).await.unwrap();
    let answer = read_until_closed(&mut plain).await;
    assert!(!answer.windows(4).any(|w| w == b"TDGL"), "{answer:?}");

    // TLS without a client certificate.
    if let Ok(mut tls) =
        tls_without_a_certificate(n1.cluster, &certs_of(&ours, "n1").join("ca.crt")).await
    {
        let _ = tls.write_all(&frame).await;
        let answer = read_until_closed(&mut tls).await;
        assert!(answer.is_empty(), "{answer:?}");
    }

    // A node whose certificate is from another CA, and one of our CA that
    // shows another node's certificate.
    let stranger_logs = start_logged(
        &mut stranger,
        &all,
        &["--cluster-certs", &certs(&theirs, "n2")],
    )
    .await;
    let impostor_logs = start_logged(
        &mut impostor,
        &all,
        &["--cluster-certs", &certs(&ours, "n2")],
    )
    .await;
    let stranger_addr = format!("addr={}", stranger.cluster);
    eventually("n1 to refuse the other CA's node", || async {
        logs.find_all(&["cluster link refused", &stranger_addr, "tls"])
            .or_else(|| stranger_logs.find_all(&["cluster link refused", "tls"]))
    })
    .await;
    eventually(
        "the impostor to be refused for its certificate's name",
        || async {
            logs.find("does not name its node id")
                .or_else(|| impostor_logs.find("does not name its node id"))
        },
    )
    .await;
    for member in [&stranger, &impostor] {
        assert_eq!(seen(&n1, member.cluster).await.unwrap().1, "down");
    }
    for mut member in [n1, stranger, impostor] {
        member.kill().await;
    }
}
