//! Entity actors start on demand and stop when idle; state survives that.

use std::time::Duration;

use serde_json::json;
use tidings_tests::{metric, TestNode, WAIT};

async fn live_actors(node: &TestNode, kind: &str) -> u64 {
    let series = format!("tidings_entity_actors{{kind=\"{kind}\"}}");
    metric(&node.addr.to_string(), &series).await.unwrap_or(0)
}

#[tokio::test]
async fn idle_conversations_stop_and_start_again_from_storage() {
    let node = TestNode::start_with(|c| c.entity_idle = Duration::from_millis(100)).await;
    let mut alice = node.connect("alice").await;
    let conv = alice
        .ok(json!({"type":"create","members":["bob"]}), "created")
        .await["conv"]
        .clone();
    alice
        .ok(
            json!({"type":"send","conv":conv,"body":"one","cmid":"c1"}),
            "ack",
        )
        .await;
    assert_eq!(live_actors(&node, "conversation").await, 1);

    let deadline = tokio::time::Instant::now() + WAIT;
    while live_actors(&node, "conversation").await > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the idle conversation never stopped"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Alice is online, so her user actor stays.
    assert_eq!(live_actors(&node, "user").await, 1);

    // The next request starts it again from storage: versions and cmids hold.
    let dup = alice
        .ok(
            json!({"type":"send","conv":conv,"body":"one","cmid":"c1"}),
            "ack",
        )
        .await;
    assert_eq!(
        (dup["version"].as_u64(), dup["dup"].as_bool()),
        (Some(2), Some(true))
    );
    let next = alice
        .ok(json!({"type":"send","conv":conv,"body":"two"}), "ack")
        .await;
    assert_eq!(next["version"], 3);
    alice.event(conv.as_str().unwrap(), 3).await;
}
