//! Optimistic concurrency and exactly-once sends: `expect`, `rev`, `cmid`.

use serde_json::json;
use tidings_tests::TestNode;

#[tokio::test]
async fn a_stale_expect_is_refused_with_the_current_version() {
    let node = TestNode::start().await;
    let mut alice = node.connect("alice").await;
    let mut bob = node.connect("bob").await;
    let conv = alice.ok(json!({"type":"dm","user":"bob"}), "created").await["conv"].clone();
    let ack = alice
        .ok(
            json!({"type":"send","conv":conv,"body":"a","expect":1}),
            "ack",
        )
        .await;
    assert_eq!(ack["version"], 2);
    // Bob writes based on version 1 too: stale.
    let err = bob
        .err(
            json!({"type":"send","conv":conv,"body":"b","expect":1}),
            "conflict",
        )
        .await;
    assert_eq!(err["current_version"], 2);
    let ack = bob
        .ok(
            json!({"type":"send","conv":conv,"body":"b","expect":2}),
            "ack",
        )
        .await;
    assert_eq!(ack["version"], 3);
    let history = bob
        .ok(json!({"type":"history","conv":conv}), "history")
        .await;
    assert_eq!(
        history["events"].as_array().unwrap().len(),
        3,
        "the refused send left nothing"
    );
}

#[tokio::test]
async fn edits_and_deletes_name_the_revision_they_replace() {
    let node = TestNode::start().await;
    let mut alice1 = node.connect("alice").await;
    let mut alice2 = node.connect("alice").await;
    let mut bob = node.connect("bob").await;
    let conv = alice1
        .ok(json!({"type":"dm","user":"bob"}), "created")
        .await["conv"]
        .clone();
    let target = alice1
        .ok(json!({"type":"send","conv":conv,"body":"draft"}), "ack")
        .await["version"]
        .clone();

    let ack = alice1
        .ok(
            json!({"type":"edit","conv":conv,"target":target,"rev":1,"body":"first"}),
            "ack",
        )
        .await;
    assert_eq!(ack["version"], 3);
    assert!(ack.get("dup").is_none());
    let edit = bob.event(conv.as_str().unwrap(), 3).await;
    assert_eq!(edit["kind"], "edit");
    assert_eq!(edit["target"], target);
    assert_eq!(edit["rev"], 2);
    assert_eq!(edit["body"], "first");

    // Her other device edits from revision 1 as well: conflict, with what is current.
    let err = alice2
        .err(
            json!({"type":"edit","conv":conv,"target":target,"rev":1,"body":"second"}),
            "conflict",
        )
        .await;
    assert_eq!(
        err["current"],
        json!({"target": target, "rev": 2, "body": "first", "from": "alice"})
    );
    // Only the author edits.
    bob.err(
        json!({"type":"edit","conv":conv,"target":target,"rev":2,"body":"x"}),
        "forbidden",
    )
    .await;
    bob.err(
        json!({"type":"delete","conv":conv,"target":target,"rev":2}),
        "forbidden",
    )
    .await;
    // Not a message.
    alice1
        .err(
            json!({"type":"edit","conv":conv,"target":1,"rev":1,"body":"x"}),
            "not_found",
        )
        .await;
    alice1
        .err(
            json!({"type":"edit","conv":conv,"target":99,"rev":1,"body":"x"}),
            "not_found",
        )
        .await;

    let ack = alice2
        .ok(
            json!({"type":"delete","conv":conv,"target":target,"rev":2}),
            "ack",
        )
        .await;
    assert_eq!(ack["version"], 4);
    let delete = bob.event(conv.as_str().unwrap(), 4).await;
    assert_eq!(delete["kind"], "delete");
    assert_eq!(delete["rev"], 3);
    // Deletion is final.
    let err = alice1
        .err(
            json!({"type":"edit","conv":conv,"target":target,"rev":3,"body":"back"}),
            "conflict",
        )
        .await;
    assert_eq!(err["current"]["body"], serde_json::Value::Null);
    assert_eq!(err["current"]["rev"], 3);
    alice1
        .err(
            json!({"type":"delete","conv":conv,"target":target,"rev":3}),
            "conflict",
        )
        .await;
}

#[tokio::test]
async fn a_retried_cmid_returns_the_original_ack_even_after_restart() {
    let mut node = TestNode::start().await;
    let dir = node.dir.path().to_owned();
    let mut alice = node.connect("alice").await;
    let conv = alice.create(["bob"]).await;
    let first = alice
        .ok(
            json!({"type":"send","conv":conv,"body":"once","cmid":"k1"}),
            "ack",
        )
        .await;
    assert_eq!(first["dup"], false);
    alice
        .ok(
            json!({"type":"send","conv":conv,"body":"other","cmid":"k2"}),
            "ack",
        )
        .await;
    let retry = alice
        .ok(
            json!({"type":"send","conv":conv,"body":"once","cmid":"k1"}),
            "ack",
        )
        .await;
    assert_eq!(retry["dup"], true);
    assert_eq!(retry["version"], first["version"]);
    assert_eq!(retry["ts"], first["ts"]);
    drop(alice);

    // However late: after the node restarts on the same data.
    node.shutdown().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let restarted = tidings_node::Node::start(tidings_tests::config(&dir), listener)
        .await
        .unwrap();
    let url = format!("ws://{}/v1/ws", restarted.local_addr());
    let mut alice = tidings_tests::Ws::connect(&url, &tidings_tests::token("alice"))
        .await
        .unwrap();
    let late = alice
        .ok(
            json!({"type":"send","conv":conv,"body":"once","cmid":"k1"}),
            "ack",
        )
        .await;
    assert_eq!(late["dup"], true);
    assert_eq!(late["version"], first["version"]);
    let history = alice
        .ok(json!({"type":"history","conv":conv}), "history")
        .await;
    let bodies: Vec<_> = history["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["body"].clone())
        .collect();
    assert_eq!(
        bodies,
        [serde_json::Value::Null, json!("once"), json!("other")]
    );
    let next = alice
        .ok(json!({"type":"send","conv":conv,"body":"new"}), "ack")
        .await;
    assert_eq!(next["version"], 4, "versions continue after restart");
    restarted.shutdown().await.unwrap();
}

#[tokio::test]
async fn sync_returns_exactly_what_was_missed() {
    let node = TestNode::start().await;
    let mut alice = node.connect("alice").await;
    let mut bob = node.connect("bob").await;
    let conv = alice.create(["bob"]).await;
    let dm = alice.ok(json!({"type":"dm","user":"bob"}), "created").await["conv"].clone();
    alice
        .ok(json!({"type":"send","conv":conv,"body":"seen"}), "ack")
        .await;
    bob.event(conv.as_str(), 2).await;
    drop(bob);
    for i in 0..5 {
        alice
            .ok(
                json!({"type":"send","conv":conv,"body":format!("missed {i}")}),
                "ack",
            )
            .await;
    }
    alice
        .ok(json!({"type":"send","conv":dm,"body":"dm missed"}), "ack")
        .await;

    let mut bob = node.connect("bob").await;
    let synced = bob
        .ok(
            json!({"type":"sync","convs":{conv.as_str(): 2, dm.as_str().unwrap(): 1},"limit":3}),
            "synced",
        )
        .await;
    let convs = synced["convs"].as_array().unwrap();
    assert_eq!(convs.len(), 2);
    let group = convs.iter().find(|c| c["conv"] == conv).unwrap();
    let versions: Vec<_> = group["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["version"].as_u64().unwrap())
        .collect();
    assert_eq!(versions, [3, 4, 5], "the first page after what was seen");
    assert_eq!(group["more"], true);
    assert_eq!(group["version"], 7);
    assert_eq!(group["members"], json!(["alice", "bob"]));
    let direct = convs.iter().find(|c| c["conv"] == dm).unwrap();
    assert_eq!(direct["events"][0]["body"], "dm missed");
    assert_eq!(direct["more"], false);
    assert_eq!(synced["notifications"]["version"], 0);

    // With nothing named, the latest events of every conversation.
    let fresh = bob.ok(json!({"type":"sync","limit":2}), "synced").await;
    for c in fresh["convs"].as_array().unwrap() {
        let last = c["events"].as_array().unwrap().last().unwrap();
        assert_eq!(last["version"], c["version"]);
    }
    // Live pushes keep coming after a sync.
    alice
        .ok(json!({"type":"send","conv":conv,"body":"live"}), "ack")
        .await;
    assert_eq!(bob.event(conv.as_str(), 8).await["body"], "live");
}
