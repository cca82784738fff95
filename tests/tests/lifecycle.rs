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
    alice.event(conv.as_str(), 3).await;
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
