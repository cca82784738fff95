//! Three `tidings` binaries as one cluster: users connected to different
//! nodes chat, edit with conflicts, see presence and get notifications
//! exactly as on one node.

use serde_json::{json, Value};
use tidings_tests::cluster::{one_cluster_at_a_time, start_cluster, Member};
use tidings_tests::{metric, notify};

#[tokio::test]
async fn users_on_different_nodes_chat_as_on_one() {
    let _turn = one_cluster_at_a_time().await;
    let nodes = start_cluster(&["n1", "n2", "n3"]).await;
    let mut alice = nodes[0].connect("alice").await;
    let mut alice_laptop = nodes[2].connect("alice").await;
    let mut bob = nodes[1].connect("bob").await;
    let mut carol = nodes[2].connect("carol").await;

    let created = alice
        .ok(
            json!({"type":"create","members":["bob","carol"],"title":"trip"}),
            "created",
        )
        .await;
    let conv = created["conv"].as_str().unwrap().to_owned();

    // A message from n1 reaches devices on n2 and n3, the sender's other
    // device included.
    let ack = alice
        .ok(
            json!({"type":"send","conv":conv,"body":"hello","cmid":"a-1"}),
            "ack",
        )
        .await;
    let version = ack["version"].as_u64().unwrap();
    for ws in [&mut bob, &mut carol, &mut alice_laptop] {
        let event = ws.event(&conv, version).await;
        assert_eq!(event["body"], "hello");
        assert_eq!(event["from"], "alice");
    }
    // Presence counts devices on every node: alice is on n1 and n3.
    let presence = bob
        .ok(
            json!({"type":"presence","users":["alice","carol","nobody"]}),
            "presence",
        )
        .await;
    assert_eq!(
        presence["users"]["alice"],
        json!({"online": true, "devices": 2})
    );
    assert_eq!(
        presence["users"]["carol"],
        json!({"online": true, "devices": 1})
    );
    // Nobody shares no conversation with bob: left out.
    assert_eq!(presence["users"].get("nobody"), None, "{presence}");

    // Typing on n3 shows on n1 and n2.
    carol.send(json!({"type":"typing","conv":conv})).await;
    for ws in [&mut alice, &mut bob] {
        let typing = ws.take("typing", |v| v["type"] == "typing").await.unwrap();
        assert_eq!(typing, json!({"type":"typing","conv":conv,"user":"carol"}));
    }

    // The same cmid from another node is the same message.
    let dup = alice_laptop
        .ok(
            json!({"type":"send","conv":conv,"body":"hello","cmid":"a-1"}),
            "ack",
        )
        .await;
    assert_eq!(dup["version"], version);
    assert_eq!(dup["dup"], true);

    // Optimistic concurrency across nodes: bob writes against the version
    // he saw; carol, on a stale one, is refused with what is current.
    let bob_ack = bob
        .ok(
            json!({"type":"send","conv":conv,"body":"from bob","expect":version}),
            "ack",
        )
        .await;
    let err = carol
        .err(
            json!({"type":"send","conv":conv,"body":"from carol","expect":version}),
            "conflict",
        )
        .await;
    assert_eq!(err["current_version"], bob_ack["version"]);
    // Edits: alice edits on n1, her laptop's edit of the old revision
    // conflicts on n3.
    alice
        .ok(
            json!({"type":"edit","conv":conv,"target":version,"rev":1,"body":"hello!"}),
            "ack",
        )
        .await;
    let err = alice_laptop
        .err(
            json!({"type":"edit","conv":conv,"target":version,"rev":1,"body":"hi"}),
            "conflict",
        )
        .await;
    assert_eq!(err["current"]["body"], "hello!");

    // History reads the same from every node.
    let mut histories = Vec::new();
    for (i, ws) in [&mut alice, &mut bob, &mut carol].into_iter().enumerate() {
        let page = ws
            .ok(json!({"type":"history","conv":conv}), "history")
            .await;
        let bodies: Vec<Value> = page["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| json!([e["version"], e["kind"], e["body"]]))
            .collect();
        assert!(!bodies.is_empty(), "node {i} has history");
        histories.push(bodies);
    }
    assert_eq!(histories[0], histories[1]);
    assert_eq!(histories[1], histories[2]);

    // A rename from n3 reaches every member's devices, and n2 lists it.
    let renamed = carol
        .ok(
            json!({"type":"rename","conv":conv,"title":"trip 2027"}),
            "ack",
        )
        .await;
    let title_at = renamed["version"].as_u64().unwrap();
    for ws in [&mut alice, &mut bob, &mut alice_laptop] {
        let event = ws.event(&conv, title_at).await;
        assert_eq!(
            (&event["kind"], &event["title"]),
            (&json!("title"), &json!("trip 2027"))
        );
    }
    let listed = bob.ok(json!({"type":"convs"}), "convs").await;
    assert_eq!(listed["conversations"][0]["title"], "trip 2027", "{listed}");

    // A backend notifies bob through n3; his device on n2 gets it.
    let n = notify(&nodes[2].http, "bob", json!({"kind":"invoice"})).await;
    let pushed = bob
        .take("bob's notification", |v| {
            v["type"] == "notification" && v["version"] == n
        })
        .await
        .unwrap();
    assert_eq!(pushed["payload"]["kind"], "invoice");

    // Catching up works from any node: carol reconnects to n1.
    drop(carol);
    let mut carol = nodes[0].connect("carol").await;
    let mut seen = serde_json::Map::new();
    seen.insert(conv.clone(), json!(version));
    let synced = carol
        .ok(json!({"type":"sync","convs":seen}), "synced")
        .await;
    let missed: Vec<u64> = synced["convs"][0]["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["version"].as_u64().unwrap())
        .collect();
    // Bob's send, alice's edit and carol's rename.
    assert_eq!(missed, ((version + 1)..=(version + 3)).collect::<Vec<_>>());

    // A new conversation is in each member's list at once, whichever node
    // serves the list: the list lives in the user's shard, the
    // conversation in its own, and the ack waits for both.
    let mut bob_expects = bob.conv_ids().await;
    for round in 0..8 {
        let created = alice
            .ok(
                json!({"type":"create","members":["bob","carol"],"title":format!("round {round}")}),
                "created",
            )
            .await;
        let new = created["conv"].as_str().unwrap().to_owned();
        bob_expects.push(new.clone());
        bob_expects.sort();
        assert_eq!(
            bob.conv_ids().await,
            bob_expects,
            "round {round}, bob on n2"
        );
        assert!(
            carol.conv_ids().await.contains(&new),
            "round {round}, carol"
        );
        // And leaving is gone from the list at once.
        carol
            .ok(
                json!({"type":"members","conv":new,"remove":["carol"]}),
                "ack",
            )
            .await;
        assert!(!carol.conv_ids().await.contains(&new), "round {round}");
    }
}

#[tokio::test]
async fn four_nodes_keep_three_copies_of_each_shard_and_serve_every_request() {
    let _turn = one_cluster_at_a_time().await;
    let nodes = start_cluster(&["n1", "n2", "n3", "n4"]).await;
    // Every node agrees on the placement: three replicas per shard, each
    // node holding three quarters of the shards.
    let mut placements = Vec::new();
    for node in &nodes {
        let shards = node.shards().await.unwrap();
        assert_eq!(shards.len(), 64);
        let held = shards.iter().filter(|s| s["held"] == true).count();
        assert_eq!(held, 48, "{} holds 3/4 of the shards", node.id);
        let placement: Vec<Value> = shards.iter().map(|s| s["replicas"].clone()).collect();
        assert!(placement
            .iter()
            .all(|r| r.as_array().is_some_and(|r| r.len() == 3)));
        placements.push(placement);
    }
    assert!(placements.windows(2).all(|w| w[0] == w[1]));

    // A user on each node; every request works from every node, whether it
    // holds the entity's shard or not.
    let users = ["ann", "ben", "cat", "dan"];
    let mut sockets = Vec::new();
    for (node, user) in nodes.iter().zip(users) {
        sockets.push(node.connect(user).await);
    }
    let conv = sockets[0]
        .ok(
            json!({"type":"create","members":["ben","cat","dan"]}),
            "created",
        )
        .await["conv"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut version = 1;
    for i in 0..users.len() {
        let ack = sockets[i]
            .ok(
                json!({"type":"send","conv":conv,"body":format!("from {}", users[i])}),
                "ack",
            )
            .await;
        version = ack["version"].as_u64().unwrap();
        for ws in &mut sockets {
            assert_eq!(
                ws.event(&conv, version).await["body"],
                format!("from {}", users[i])
            );
        }
    }
    for ws in &mut sockets {
        assert_eq!(ws.conv_ids().await, std::slice::from_ref(&conv));
        let page = ws
            .ok(json!({"type":"history","conv":conv}), "history")
            .await;
        assert_eq!(page["version"], version);
    }
    // A notification through each node reaches dan's device on n4.
    for node in &nodes {
        let n = notify(&node.http, "dan", json!({"via":node.id})).await;
        let pushed = sockets[3]
            .take("dan's notification", |v| {
                v["type"] == "notification" && v["version"] == n
            })
            .await
            .unwrap();
        assert_eq!(pushed["payload"]["via"], node.id);
    }
}

/// How many events other nodes sent `node` for its devices.
async fn peer_deliveries(node: &Member) -> u64 {
    metric(&node.http, "tidings_peer_deliveries_received_total")
        .await
        .expect("the metric is listed")
}

#[tokio::test]
async fn events_cross_only_to_nodes_with_a_recipient() {
    let _turn = one_cluster_at_a_time().await;
    let nodes = start_cluster(&["n1", "n2", "n3"]).await;
    let mut alice = nodes[0].connect("alice").await;
    let mut bob = nodes[0].connect("bob").await;
    let mut carol = nodes[1].connect("carol").await;
    let conv = alice.create(["bob"]).await;
    for i in 0..5 {
        let ack = alice
            .ok(
                json!({"type":"send","conv":conv,"body":format!("m{i}")}),
                "ack",
            )
            .await;
        bob.event(&conv, ack["version"].as_u64().unwrap()).await;
    }
    // Whichever node leads the conversation, only n1 has its members.
    assert_eq!(peer_deliveries(&nodes[1]).await, 0, "n2 has no member");
    assert_eq!(peer_deliveries(&nodes[2]).await, 0, "n3 has no device");

    // Carol joins from n2: from now on n2 gets the conversation's events
    // (from the leader, or itself if it leads).
    alice
        .ok(json!({"type":"members","conv":conv,"add":["carol"]}), "ack")
        .await;
    let ack = alice
        .ok(json!({"type":"send","conv":conv,"body":"hi carol"}), "ack")
        .await;
    let event = carol.event(&conv, ack["version"].as_u64().unwrap()).await;
    assert_eq!(event["body"], "hi carol");
    assert_eq!(
        peer_deliveries(&nodes[2]).await,
        0,
        "n3 still has no device"
    );
}
