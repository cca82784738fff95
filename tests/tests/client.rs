//! The Rust client against the real node: pushes, reconnect after the node
//! restarts, resume with no gap or duplicate, resending unacknowledged
//! sends with their cmid, and pacing requests the node rate-limits.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::json;
use tidings_protocol::client::{Client, ClientConfig, ClientError, ConnState, Push, Pushes};
use tidings_protocol::{ConvId, EventKind};
use tidings_tests::{config, token, Ws, WAIT};

async fn next_message(pushes: &mut Pushes) -> (u64, String) {
    loop {
        let push = tokio::time::timeout(WAIT, pushes.recv())
            .await
            .expect("a push in time")
            .expect("open");
        if let Push::Event(event) = push {
            if let EventKind::Message { body, .. } = event.kind {
                return (event.version, body);
            }
        }
    }
}

/// A node over `config` listening on `addr` (port 0 picks one), and the
/// address it listens on.
async fn start_at(addr: &str, config: tidings_node::Config) -> (tidings_node::Node, SocketAddr) {
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let addr = listener.local_addr().unwrap();
    (
        tidings_node::Node::start(config, listener).await.unwrap(),
        addr,
    )
}

fn client(addr: SocketAddr, user: &str) -> (Client, Pushes) {
    let mut config = ClientConfig::new([format!("ws://{addr}")], token(user));
    config.backoff_base = Duration::from_millis(20);
    config.backoff_cap = Duration::from_millis(200);
    Client::connect(config)
}

#[tokio::test]
async fn the_client_resumes_across_a_restart_with_no_gap_or_duplicate() {
    let dir = tempfile::tempdir().unwrap();
    let (node, addr) = start_at("127.0.0.1:0", config(dir.path())).await;

    let (alice, mut pushes) = client(addr, "alice");
    alice.connected().await.unwrap();
    let conv = alice.dm("bob".try_into().unwrap()).await.unwrap();
    let mut bob = Ws::connect(&format!("ws://{addr}/v1/ws"), &token("bob"))
        .await
        .unwrap();
    for i in 0..5 {
        bob.ok(
            json!({"type":"send","conv":conv,"body":format!("before {i}")}),
            "ack",
        )
        .await;
    }
    for i in 0..5 {
        assert_eq!(
            next_message(&mut pushes).await,
            (2 + i, format!("before {i}"))
        );
    }

    // The node goes away; alice's client notices and keeps trying.
    drop(bob);
    node.shutdown().await.unwrap();
    let mut state = alice.state();
    tokio::time::timeout(
        WAIT,
        state.wait_for(|s| matches!(s, ConnState::Reconnecting { .. })),
    )
    .await
    .unwrap()
    .unwrap();
    // A send made while disconnected waits and goes out after reconnecting.
    let pending = tokio::spawn({
        let alice = alice.clone();
        let conv = conv.clone();
        async move { alice.send(&conv, "sent while away").await }
    });

    // The node comes back on the same address and data; bob writes more.
    let (node, _) = start_at(&addr.to_string(), config(dir.path())).await;
    let mut bob = Ws::connect(&format!("ws://{addr}/v1/ws"), &token("bob"))
        .await
        .unwrap();
    for i in 0..3 {
        bob.ok(
            json!({"type":"send","conv":conv,"body":format!("after {i}")}),
            "ack",
        )
        .await;
    }
    let ack = tokio::time::timeout(WAIT, pending)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(!ack.dup);

    // Exactly the missed messages and alice's own, each once, in order.
    let mut got = Vec::new();
    for _ in 0..4 {
        got.push(next_message(&mut pushes).await);
    }
    let versions: Vec<u64> = got.iter().map(|(v, _)| *v).collect();
    assert_eq!(versions, [7, 8, 9, 10], "{got:?}");
    let mut bodies: Vec<_> = got.into_iter().map(|(_, b)| b).collect();
    bodies.sort();
    assert_eq!(bodies, ["after 0", "after 1", "after 2", "sent while away"]);
    alice.ping().await.unwrap();
    assert!(pushes.try_recv().is_err(), "no duplicates after the resume");
    alice.close();
    node.shutdown().await.unwrap();
}

#[tokio::test]
async fn server_errors_and_bad_tokens_surface_as_errors() {
    let node = tidings_tests::TestNode::start().await;
    let (alice, _pushes) = client(node.addr, "alice");
    let missing = ConvId::try_from("g:missing").unwrap();
    match alice.send(&missing, "x").await {
        Err(ClientError::Server(err)) => {
            assert_eq!(err.code, tidings_protocol::ErrorCode::NotFound)
        }
        other => panic!("{other:?}"),
    }
    let mut config = ClientConfig::new([format!("ws://{}", node.addr)], "forged");
    config.backoff_base = Duration::from_millis(10);
    let (forged, _) = Client::connect(config);
    assert_eq!(forged.ping().await, Err(ClientError::Unauthorized));
    assert_eq!(*forged.state().borrow(), ConnState::Closed);
}

/// A client that sends faster than its connection may is slowed down, not
/// refused: a `rate_limited` request was not acted on, so the client sends
/// it again after a backoff, and every send is stored exactly once.
#[tokio::test]
async fn sends_past_the_rate_limit_are_paced_not_refused() {
    const SENDS: u64 = 40;
    let node = tidings_tests::TestNode::start_with(|c| {
        c.rate_limit = 50.0;
        c.rate_burst = 5.0;
    })
    .await;
    let (alice, _pushes) = client(node.addr, "alice");
    let conv = alice.create(Vec::new(), None).await.unwrap();
    // Half with a cmid (what `send` gives), half without: neither kind may
    // be stored twice.
    let sends = (0..SENDS).map(|i| {
        let alice = alice.clone();
        let conv = conv.clone();
        async move {
            match i % 2 {
                0 => alice.send(&conv, format!("m{i}")).await,
                _ => alice.send_with(&conv, format!("m{i}"), None, None).await,
            }
        }
    });
    let acks = tokio::time::timeout(WAIT, futures_util::future::join_all(sends))
        .await
        .expect("every send answered in time");
    for ack in &acks {
        let ack = ack.as_ref().expect("acknowledged, not refused");
        assert!(!ack.dup, "a first send, not a resend of a stored one");
    }
    let refused = tidings_tests::metric(
        &node.addr.to_string(),
        "tidings_errors_total{code=\"rate_limited\"}",
    )
    .await
    .unwrap_or(0);
    assert!(refused > 0, "the burst went past the rate limit");
    // The conversation's log holds each body once.
    let (_, events) = alice.history(&conv, None, None, Some(100)).await.unwrap();
    let mut bodies: Vec<String> = events
        .into_iter()
        .filter_map(|e| match e.kind {
            EventKind::Message { body, .. } => Some(body),
            _ => None,
        })
        .collect();
    bodies.sort();
    let mut sent: Vec<String> = (0..SENDS).map(|i| format!("m{i}")).collect();
    sent.sort();
    assert_eq!(bodies, sent);
}

/// A resume that needs more than one page, on a node whose rate limit
/// refuses the page: the client asks for it again after a pause, still
/// holding live pushes, and delivers every missed message in order.
#[tokio::test]
async fn a_rate_limited_resume_page_is_asked_again_with_no_gap() {
    const MISSED: u64 = 150;
    let dir = tempfile::tempdir().unwrap();
    let (node, addr) = start_at("127.0.0.1:0", config(dir.path())).await;
    let (alice, mut pushes) = client(addr, "alice");
    let conv = alice.dm("bob".try_into().unwrap()).await.unwrap();
    alice.send(&conv, "first").await.unwrap();
    assert_eq!(next_message(&mut pushes).await, (2, "first".into()));
    node.shutdown().await.unwrap();

    // While alice is away, bob writes more than a sync returns (100) on a
    // node elsewhere over the same data.
    let node = tidings_tests::TestNode::start_with(|c| c.data_dir = dir.path().into()).await;
    let mut bob = Ws::connect(&format!("ws://{}/v1/ws", node.addr), &token("bob"))
        .await
        .unwrap();
    for i in 0..MISSED {
        bob.ok(
            json!({"type":"send","conv":conv,"body":format!("m{i}")}),
            "ack",
        )
        .await;
    }
    drop(bob);
    let mut node = node;
    node.shutdown().await;

    // Back on alice's address, allowing one frame a second: her `sync`
    // takes it, and the page after it is refused at first.
    let mut strict = config(dir.path());
    strict.rate_limit = 1.0;
    strict.rate_burst = 1.0;
    let (node, _) = start_at(&addr.to_string(), strict).await;
    for i in 0..MISSED {
        assert_eq!(next_message(&mut pushes).await, (3 + i, format!("m{i}")));
    }
    alice.close();
    node.shutdown().await.unwrap();
}
