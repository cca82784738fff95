//! Entity actors start on demand and stop when idle; state survives that.

use std::time::Duration;

use serde_json::json;
use tidings_tests::{eventually, metric, notify, TestNode, WAIT};

async fn live_actors(node: &TestNode, kind: &str) -> u64 {
    actors_metric(node, "tidings_entity_actors", kind).await
}

/// Entity actors of `kind` started since the node started.
async fn started_actors(node: &TestNode, kind: &str) -> u64 {
    actors_metric(node, "tidings_entity_actors_started_total", kind).await
}

async fn actors_metric(node: &TestNode, name: &str, kind: &str) -> u64 {
    let series = format!("{name}{{kind=\"{kind}\"}}");
    metric(&node.addr.to_string(), &series).await.unwrap_or(0)
}

/// Polls until no actor of `kind` is alive.
async fn until_none_live(node: &TestNode, kind: &str) {
    eventually(&format!("the idle {kind} actors to stop"), || async {
        (live_actors(node, kind).await == 0).then_some(())
    })
    .await;
}

#[tokio::test]
async fn idle_conversations_stop_and_start_again_from_storage() {
    let node = TestNode::start_with(|c| c.entity_idle = Duration::from_secs(1)).await;
    let mut alice = node.connect("alice").await;
    let conv = alice.create(["bob"]).await;
    alice
        .ok(
            json!({"type":"send","conv":conv,"body":"one","cmid":"c1"}),
            "ack",
        )
        .await;
    assert_eq!(live_actors(&node, "conversation").await, 1);
    until_none_live(&node, "conversation").await;

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
    alice.event(conv.as_str(), 3).await;
}

#[tokio::test]
async fn a_connected_users_actor_stops_when_idle_and_her_devices_still_get_everything() {
    let node = TestNode::start_with(|c| c.entity_idle = Duration::from_secs(1)).await;
    let mut alice = node.connect("alice").await;
    let mut bob = node.connect("bob").await;
    // Creating writes both users' indexes: their actors start.
    let conv = bob.create(["alice"]).await;
    alice.event(&conv, 1).await;
    assert_eq!(live_actors(&node, "user").await, 2);
    until_none_live(&node, "user").await;
    until_none_live(&node, "conversation").await;

    // Presence counts the devices subscribed, with no user actor running.
    let presence = bob
        .ok(json!({"type":"presence","users":["alice"]}), "presence")
        .await;
    assert_eq!(
        presence["users"]["alice"],
        json!({"online": true, "devices": 1})
    );
    // A message and a notification still reach her device.
    bob.ok(
        json!({"type":"send","conv":conv,"body":"still there?"}),
        "ack",
    )
    .await;
    let event = alice.event(&conv, 2).await;
    assert_eq!(event["body"], "still there?");
    let version = notify(&node.addr.to_string(), "alice", json!({"n": 1})).await;
    let pushed = alice
        .take("notification", |v| v["type"] == "notification")
        .await
        .unwrap();
    assert_eq!(pushed["version"], version);
    assert_eq!(pushed["payload"], json!({"n": 1}));

    // Once her device has gone, she is offline, and her entry in the
    // node's directory is gone with it.
    let addr = node.addr.to_string();
    let online = || metric(&addr, "tidings_users_online");
    assert_eq!(online().await, Some(2));
    drop(alice);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let presence = bob
            .ok(json!({"type":"presence","users":["alice"]}), "presence")
            .await;
        if presence["users"]["alice"] == json!({"online": false, "devices": 0}) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "alice's closed device still counted"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eventually("alice's directory entry to go", || async {
        (online().await == Some(1)).then_some(())
    })
    .await;
}

/// Requests reach a live actor straight from the connection, and only the
/// first after a stop goes through the router, which starts the actor
/// again. Senders pause for longer than the idle period now and then, so
/// the conversation stops and starts again while others are sending (the
/// test checks that it did): every send must still be acked once, by one
/// actor at a time, with versions that follow on.
#[tokio::test]
async fn no_request_is_lost_while_idle_actors_stop_and_start() {
    let node = TestNode::start_with(|c| c.entity_idle = Duration::from_millis(10)).await;
    let members = ["alice", "bob", "carol", "dave"];
    let mut creator = node.connect("alice").await;
    let conv = creator.create(&members[1..]).await;
    let started_before = started_actors(&node, "conversation").await;
    const SENDS: u64 = 100;
    let mut senders = Vec::new();
    for (k, member) in members.into_iter().enumerate() {
        let mut ws = node.connect(member).await;
        let conv = conv.clone();
        senders.push(tokio::spawn(async move {
            let mut versions = Vec::new();
            for i in 0..SENDS {
                let frame = json!({"type":"send","conv":conv,"body":format!("{member} {i}")});
                let ack = ws.ok(frame, "ack").await;
                versions.push(ack["version"].as_u64().expect("a version"));
                // Pacing, not waiting for a condition: gaps of 0 to 24 ms,
                // different for each sender, some longer than the idle time.
                let gap = (i * 7 + k as u64 * 5) % 25;
                tokio::time::sleep(Duration::from_millis(gap)).await;
            }
            versions
        }));
    }
    let mut versions = Vec::new();
    for sender in senders {
        versions.extend(sender.await.unwrap());
    }
    versions.sort_unstable();
    let expected: Vec<u64> = (2..2 + SENDS * members.len() as u64).collect();
    assert_eq!(
        versions, expected,
        "every send acked once, with its own version"
    );
    creator.event(&conv, 1 + SENDS * members.len() as u64).await;
    let restarts = started_actors(&node, "conversation").await - started_before;
    println!("the conversation's actor started {restarts} times during the sends");
    assert!(
        restarts >= 2,
        "the actor must stop and start again while others send"
    );
}

/// A conversation committed with its outbox, whose members' indexes were
/// never written (the node died in between), as storage holds it.
async fn seed_unindexed_conversation(dir: &std::path::Path, conv: &str) {
    use tidings_actors::shard::shard_of;
    use tidings_actors::storage::records::{
        ConvMeta, IndexChange, IndexEntry, IndexOutbox, StoredEvent, StoredKind,
    };
    use tidings_actors::storage::{keys, Cf, WriteSet};
    use tidings_actors::Storage;
    use tidings_protocol::UserId;

    let user = |name: &str| UserId::try_from(name).unwrap();
    let members = vec![user("alice"), user("bob")];
    let storage = Storage::open(dir).unwrap();
    let mut writes = WriteSet::default();
    let meta = ConvMeta {
        title: None,
        members: members.clone(),
        creator: user("alice"),
        version: 1,
    };
    writes.put(Cf::ConvMeta, keys::entity(conv), &meta).unwrap();
    let created = StoredEvent {
        ts: 1,
        from: user("alice"),
        kind: StoredKind::Created {
            title: None,
            members: members.clone(),
        },
    };
    writes
        .put(Cf::ConvLog, keys::versioned(conv, 1), &created)
        .unwrap();
    let outbox = IndexOutbox {
        changes: members
            .into_iter()
            .map(|user| IndexChange {
                user,
                entry: IndexEntry {
                    version: 1,
                    member: true,
                },
            })
            .collect(),
    };
    let key = keys::index_outbox(shard_of(conv).0, conv);
    writes.put(Cf::ConvMeta, key, &outbox).unwrap();
    storage.commit_local(writes).await.unwrap();
    storage.close().await.unwrap();
}

#[tokio::test]
async fn index_changes_a_crash_left_owing_are_finished_at_start() {
    let seeded = tempfile::tempdir().unwrap();
    let conv = "g:owing";
    seed_unindexed_conversation(seeded.path(), conv).await;
    let node = TestNode::start_with(|c| c.data_dir = seeded.path().into()).await;
    // Nobody touches the conversation: the node finishes its outbox itself.
    let mut bob = node.connect("bob").await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while bob.conv_ids().await != [conv] {
        assert!(
            tokio::time::Instant::now() < deadline,
            "bob's list never got the conversation"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
