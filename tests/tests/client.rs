//! The Rust client against the real node: pushes, reconnect after the node
//! restarts, resume with no gap or duplicate, and resending unacknowledged
//! sends with their cmid.

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

fn client(addr: std::net::SocketAddr, user: &str) -> (Client, Pushes) {
    let mut config = ClientConfig::new([format!("ws://{addr}")], token(user));
    config.backoff_base = Duration::from_millis(20);
    config.backoff_cap = Duration::from_millis(200);
    Client::connect(config)
}

#[tokio::test]
async fn the_client_resumes_across_a_restart_with_no_gap_or_duplicate() {
    let dir = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let node = tidings_node::Node::start(config(dir.path()), listener)
        .await
        .unwrap();

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
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let node = tidings_node::Node::start(config(dir.path()), listener)
        .await
        .unwrap();
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
