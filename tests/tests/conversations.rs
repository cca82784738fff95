//! Conversations over WebSocket: create, direct, send, history paging,
//! convs, members, rename, and multi-device fan-out.

use serde_json::json;
use tidings_tests::TestNode;

#[tokio::test]
async fn every_device_of_every_member_gets_every_event_in_order() {
    let node = TestNode::start().await;
    let mut alice1 = node.connect("alice").await;
    let mut alice2 = node.connect("alice").await;
    let mut bob = node.connect("bob").await;
    let mut carol = node.connect("carol").await;

    let created = alice1
        .ok(
            json!({"type":"create","members":["bob"],"title":"plans"}),
            "created",
        )
        .await;
    let conv = created["conv"].as_str().unwrap().to_owned();
    assert!(conv.starts_with("g:"), "{conv}");
    assert_eq!(created["version"], 1);

    for i in 0..20 {
        let (sender, from) = if i % 2 == 0 {
            (&mut alice1, "alice")
        } else {
            (&mut bob, "bob")
        };
        let ack = sender
            .ok(
                json!({"type":"send","conv":conv,"body":format!("m{i}"),"cmid":format!("c{i}")}),
                "ack",
            )
            .await;
        assert_eq!(ack["version"], 2 + i, "versions follow each other");
        assert_eq!(ack["dup"], false);
        assert!(ack["ts"].as_u64().unwrap() > 0);
        let _ = from;
    }
    for device in [&mut alice1, &mut alice2, &mut bob] {
        let created = device.event(&conv, 1).await;
        assert_eq!(created["kind"], "created");
        assert_eq!(created["title"], "plans");
        assert_eq!(created["members"], json!(["alice", "bob"]));
        for i in 0..20u64 {
            let event = device.event(&conv, 2 + i).await;
            assert_eq!(event["kind"], "message");
            assert_eq!(event["body"], format!("m{i}"));
            assert_eq!(event["from"], if i % 2 == 0 { "alice" } else { "bob" });
            assert_eq!(event["cmid"], format!("c{i}"));
        }
        // Pushes of one conversation arrive in version order.
        device.ok(json!({"type":"ping"}), "pong").await;
    }
    // A non-member hears nothing of it and may not read it: to her it
    // does not exist.
    carol.ok(json!({"type":"ping"}), "pong").await;
    assert!(carol.events().is_empty(), "{:?}", carol.events());
    carol
        .err(json!({"type":"history","conv":conv}), "not_found")
        .await;
    carol
        .err(json!({"type":"send","conv":conv,"body":"hi"}), "not_found")
        .await;
}

#[tokio::test]
async fn direct_conversations_are_derived_and_idempotent() {
    let node = TestNode::start().await;
    let mut bob = node.connect("bob").await;
    let mut alice = node.connect("alice").await;
    let first = bob.ok(json!({"type":"dm","user":"alice"}), "created").await;
    assert_eq!(first["conv"], "dm:alice:bob");
    assert_eq!(first["version"], 1);
    bob.ok(
        json!({"type":"send","conv":"dm:alice:bob","body":"hi"}),
        "ack",
    )
    .await;
    let again = alice.ok(json!({"type":"dm","user":"bob"}), "created").await;
    assert_eq!(again["conv"], "dm:alice:bob");
    assert_eq!(
        again["version"], 2,
        "the same conversation, at its current version"
    );
    let event = alice.event("dm:alice:bob", 2).await;
    assert_eq!(event["body"], "hi");
    // Direct conversations keep their two members.
    alice
        .err(
            json!({"type":"members","conv":"dm:alice:bob","add":["carol"]}),
            "forbidden",
        )
        .await;
    let mut carol = node.connect("carol").await;
    carol
        .err(json!({"type":"history","conv":"dm:alice:bob"}), "not_found")
        .await;
}

#[tokio::test]
async fn history_pages_after_before_and_latest() {
    let node = TestNode::start().await;
    let mut alice = node.connect("alice").await;
    let conv = alice.create::<&str>([]).await;
    for i in 0..30 {
        alice
            .ok(
                json!({"type":"send","conv":conv,"body":format!("m{i}")}),
                "ack",
            )
            .await;
    }
    let versions = |reply: &serde_json::Value| -> Vec<u64> {
        reply["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["version"].as_u64().unwrap())
            .collect()
    };
    let latest = alice
        .ok(json!({"type":"history","conv":conv,"limit":5}), "history")
        .await;
    assert_eq!(latest["version"], 31);
    assert_eq!(versions(&latest), [27, 28, 29, 30, 31]);
    let older = alice
        .ok(
            json!({"type":"history","conv":conv,"before":27,"limit":5}),
            "history",
        )
        .await;
    assert_eq!(versions(&older), [22, 23, 24, 25, 26]);
    let after = alice
        .ok(
            json!({"type":"history","conv":conv,"after":2,"limit":3}),
            "history",
        )
        .await;
    assert_eq!(versions(&after), [3, 4, 5]);
    let start = alice
        .ok(json!({"type":"history","conv":conv,"before":3}), "history")
        .await;
    assert_eq!(versions(&start), [1, 2]);
    assert_eq!(start["events"][0]["kind"], "created");
    let default = alice
        .ok(json!({"type":"history","conv":conv}), "history")
        .await;
    assert_eq!(
        versions(&default).len(),
        31,
        "default limit 50 covers all 31"
    );
    alice
        .err(
            json!({"type":"history","conv":conv,"limit":0}),
            "bad_request",
        )
        .await;
    alice
        .err(
            json!({"type":"history","conv":conv,"limit":201}),
            "bad_request",
        )
        .await;
    alice
        .err(
            json!({"type":"history","conv":"g:doesnotexist"}),
            "not_found",
        )
        .await;
}

#[tokio::test]
async fn convs_lists_the_users_conversations() {
    let node = TestNode::start().await;
    let mut alice = node.connect("alice").await;
    let group = alice
        .ok(
            json!({"type":"create","members":["bob","carol"],"title":"trip"}),
            "created",
        )
        .await["conv"]
        .clone();
    alice.ok(json!({"type":"dm","user":"bob"}), "created").await;
    let mut bob = node.connect("bob").await;
    let listed = bob.ok(json!({"type":"convs"}), "convs").await;
    let mut convs: Vec<_> = listed["conversations"].as_array().unwrap().clone();
    convs.sort_by_key(|c| c["conv"].as_str().unwrap().to_owned());
    assert_eq!(convs.len(), 2, "{convs:?}");
    assert_eq!(convs[0]["conv"], "dm:alice:bob");
    assert_eq!(convs[1]["conv"], group);
    assert_eq!(convs[1]["title"], "trip");
    assert_eq!(convs[1]["members"], json!(["alice", "bob", "carol"]));
    assert_eq!(convs[1]["version"], 1);
    let mut dave = node.connect("dave").await;
    let none = dave.ok(json!({"type":"convs"}), "convs").await;
    assert_eq!(none["conversations"], json!([]));
}

#[tokio::test]
async fn members_join_and_leave_under_the_rules() {
    let node = TestNode::start().await;
    let mut alice = node.connect("alice").await;
    let mut bob = node.connect("bob").await;
    let mut carol = node.connect("carol").await;
    let conv = alice.create(["bob"]).await;

    // Any member may add; the joiner gets the join event and later events.
    let ack = bob
        .ok(json!({"type":"members","conv":conv,"add":["carol"]}), "ack")
        .await;
    assert_eq!(ack["version"], 2);
    let join = carol.event(&conv, 2).await;
    assert_eq!(join["kind"], "join");
    assert_eq!(join["users"], json!(["carol"]));
    assert_eq!(join["from"], "bob");
    carol
        .ok(json!({"type":"history","conv":conv}), "history")
        .await;

    // Only the creator removes others; anyone may leave.
    bob.err(
        json!({"type":"members","conv":conv,"remove":["carol"]}),
        "forbidden",
    )
    .await;
    let ack = carol
        .ok(
            json!({"type":"members","conv":conv,"remove":["carol"]}),
            "ack",
        )
        .await;
    assert_eq!(ack["version"], 3);
    let leave = carol.event(&conv, 3).await;
    assert_eq!(leave["kind"], "leave");
    carol
        .err(json!({"type":"send","conv":conv,"body":"x"}), "not_found")
        .await;
    assert!(carol.conv_ids().await.is_empty(), "carol left");
    let ack = alice
        .ok(
            json!({"type":"members","conv":conv,"add":["carol"],"remove":["bob"]}),
            "ack",
        )
        .await;
    assert_eq!(ack["version"], 5, "a join and a leave");
    bob.event(&conv, 5).await;
    bob.err(json!({"type":"history","conv":conv}), "not_found")
        .await;
    alice
        .ok(json!({"type":"send","conv":conv,"body":"after"}), "ack")
        .await;
    carol.event(&conv, 6).await;
    bob.ok(json!({"type":"ping"}), "pong").await;
    assert!(
        !bob.events().iter().any(|e| e["version"] == 6),
        "a removed member gets nothing more"
    );
    // Each user's own list follows: carol is back, bob is out.
    assert_eq!(carol.conv_ids().await, std::slice::from_ref(&conv));
    assert!(bob.conv_ids().await.is_empty(), "bob was removed");
    assert_eq!(alice.conv_ids().await, [conv]);
}

#[tokio::test]
async fn presence_and_typing() {
    let node = TestNode::start().await;
    let mut alice1 = node.connect("alice").await;
    let mut alice2 = node.connect("alice").await;
    let mut bob = node.connect("bob").await;
    let conv = alice1
        .ok(json!({"type":"dm","user":"bob"}), "created")
        .await["conv"]
        .clone();
    // Zed shares no conversation with bob: left out.
    let presence = bob
        .ok(
            json!({"type":"presence","users":["alice","bob","zed"]}),
            "presence",
        )
        .await;
    assert_eq!(
        presence["users"]["alice"],
        json!({"online": true, "devices": 2})
    );
    assert_eq!(
        presence["users"]["bob"],
        json!({"online": true, "devices": 1})
    );
    assert_eq!(presence["users"].get("zed"), None, "{presence}");

    alice1.send(json!({"type":"typing","conv":conv})).await;
    let typing = bob.take("typing", |v| v["type"] == "typing").await.unwrap();
    assert_eq!(typing, json!({"type":"typing","conv":conv,"user":"alice"}));
    // The typist's own devices are not told.
    alice2.ok(json!({"type":"ping"}), "pong").await;
    assert!(!alice2.inbox.iter().any(|v| v["type"] == "typing"));

    drop(alice2);
    let deadline = tokio::time::Instant::now() + tidings_tests::WAIT;
    loop {
        let reply = bob
            .ok(json!({"type":"presence","users":["alice"]}), "presence")
            .await;
        if reply["users"]["alice"]["devices"] == 1 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "alice's closed device still counted"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let too_many: Vec<String> = (0..101).map(|i| format!("u{i}")).collect();
    bob.err(json!({"type":"presence","users":too_many}), "bad_request")
        .await;
}

#[tokio::test]
async fn a_send_that_comes_again_is_pushed_again_to_the_members_it_went_to() {
    let node = TestNode::start().await;
    let mut alice = node.connect("alice").await;
    let mut bob = node.connect("bob").await;
    let mut carol = node.connect("carol").await;
    let conv = alice.create(["bob"]).await;
    let send = json!({"type":"send","conv":conv,"body":"hello","cmid":"k1"});
    let first = alice.ok(send.clone(), "ack").await;
    let version = first["version"].as_u64().unwrap();
    bob.event(&conv, version).await;

    // The sender never saw its ack and sends again. The first push may
    // have been lost with the node that made it, so it goes out again.
    let again = alice.ok(send.clone(), "ack").await;
    assert_eq!(
        (again["dup"].clone(), again["version"].clone()),
        (json!(true), json!(version))
    );
    assert_eq!(bob.event(&conv, version).await["body"], "hello");

    // Once the members have changed, an old message is not pushed to the
    // member who joined since.
    alice
        .ok(json!({"type":"members","conv":conv,"add":["carol"]}), "ack")
        .await;
    assert_eq!(alice.ok(send, "ack").await["dup"], true);
    let next = alice
        .ok(
            json!({"type":"send","conv":conv,"body":"welcome","cmid":"k2"}),
            "ack",
        )
        .await;
    carol.event(&conv, next["version"].as_u64().unwrap()).await;
    assert!(
        carol.events().iter().all(|e| e["version"] != version),
        "{:?}",
        carol.events()
    );
}

#[tokio::test]
async fn a_member_renames_a_group_and_every_member_sees_the_new_title() {
    let node = TestNode::start().await;
    let mut alice = node.connect("alice").await;
    let mut bob = node.connect("bob").await;
    let mut bob_phone = node.connect("bob").await;
    let mut carol = node.connect("carol").await;
    let conv = alice.create(["bob"]).await;

    // Any member renames; every device of every member gets the event.
    let ack = bob
        .ok(
            json!({"type":"rename","conv":conv,"title":"trip 2027"}),
            "ack",
        )
        .await;
    assert_eq!(ack["version"], 2, "a title event takes the next version");
    for device in [&mut alice, &mut bob, &mut bob_phone] {
        let event = device.event(&conv, 2).await;
        assert_eq!(event["kind"], "title");
        assert_eq!(event["title"], "trip 2027");
        assert_eq!(event["from"], "bob");
    }
    // convs and sync show it, and so does history.
    let listed = alice.ok(json!({"type":"convs"}), "convs").await;
    assert_eq!(listed["conversations"][0]["title"], "trip 2027", "{listed}");
    let synced = bob
        .ok(json!({"type":"sync","convs":{conv.clone(): 2}}), "synced")
        .await;
    assert_eq!(synced["convs"][0]["title"], "trip 2027", "{synced}");
    let history = alice
        .ok(json!({"type":"history","conv":conv}), "history")
        .await;
    assert_eq!(history["events"][1]["kind"], "title");

    // The same title again appends nothing.
    let again = alice
        .ok(
            json!({"type":"rename","conv":conv,"title":"trip 2027"}),
            "ack",
        )
        .await;
    assert_eq!(again["version"], 2);

    // Later members see the title they joined under.
    alice
        .ok(json!({"type":"members","conv":conv,"add":["carol"]}), "ack")
        .await;
    let listed = carol.ok(json!({"type":"convs"}), "convs").await;
    assert_eq!(listed["conversations"][0]["title"], "trip 2027");

    // The title survives the node's restart: it is in the stored state.
    let node = node.restart().await;
    let mut alice = node.connect("alice").await;
    let listed = alice.ok(json!({"type":"convs"}), "convs").await;
    assert_eq!(listed["conversations"][0]["title"], "trip 2027");
}

#[tokio::test]
async fn a_rename_is_refused_to_outsiders_to_direct_conversations_and_empty_titles() {
    let node = TestNode::start().await;
    let mut alice = node.connect("alice").await;
    let mut dave = node.connect("dave").await;
    let conv = alice.create(["bob"]).await;
    // An outsider is told what a missing conversation is told.
    dave.err(
        json!({"type":"rename","conv":conv,"title":"mine"}),
        "not_found",
    )
    .await;
    let dm = alice.ok(json!({"type":"dm","user":"bob"}), "created").await["conv"].clone();
    alice
        .err(json!({"type":"rename","conv":dm,"title":"us"}), "forbidden")
        .await;
    alice
        .err(
            json!({"type":"rename","conv":conv,"title":"  "}),
            "bad_request",
        )
        .await;
    alice
        .err(
            json!({"type":"rename","conv":conv,"title":"x".repeat(201)}),
            "bad_request",
        )
        .await;
    alice
        .err(json!({"type":"rename","conv":conv}), "bad_request")
        .await;
    // None of it wrote anything.
    let history = alice
        .ok(json!({"type":"history","conv":conv}), "history")
        .await;
    assert_eq!(history["version"], 1, "{history}");
}
