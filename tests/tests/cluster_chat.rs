//! Three `tidings` binaries as one cluster: users connected to different
//! nodes chat, edit with conflicts and get notifications exactly as on one
//! node, and a killed leader loses nothing that was acknowledged.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde_json::{json, Value};
use tidings_tests::cluster::{start_cluster, Member};
use tidings_tests::{eventually, http, Ws, API_KEY};

/// Sends `frame` until a reply that is not `unavailable` comes (a client
/// resending through a failover), and returns it.
async fn until_served(ws: &mut Ws, frame: Value) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let reply = ws.request(frame.clone()).await;
        if reply["code"] != "unavailable" {
            return reply;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{frame} still unavailable: {reply}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn users_on_different_nodes_chat_as_on_one() {
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

    // A backend notifies bob through n3; his device on n2 gets it.
    let accepted: Value = http()
        .post(format!(
            "http://{}/v1/users/bob/notifications",
            nodes[2].http
        ))
        .bearer_auth(API_KEY)
        .json(&json!({"payload":{"kind":"invoice"}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let n = accepted["version"]
        .as_u64()
        .expect("a notification version");
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
    assert_eq!(missed, ((version + 1)..=(version + 2)).collect::<Vec<_>>());
}

/// The node leading the most shards.
fn busiest(leaders: &BTreeMap<u64, String>) -> String {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for leader in leaders.values() {
        *counts.entry(leader).or_default() += 1;
    }
    counts
        .into_iter()
        .max_by_key(|(_, n)| *n)
        .map(|(id, _)| id.to_owned())
        .unwrap()
}

#[tokio::test]
async fn killing_the_busiest_leader_loses_no_acknowledged_message() {
    let mut nodes = start_cluster(&["n1", "n2", "n3"]).await;
    let leaders = nodes[0].leaders().await.unwrap();
    let victim = nodes
        .iter()
        .position(|m| m.id == busiest(&leaders))
        .unwrap();
    let survivors: Vec<usize> = (0..nodes.len()).filter(|&i| i != victim).collect();

    // Writers on the survivors, over a few conversations.
    let mut writer = nodes[survivors[0]].connect("writer").await;
    let mut reader = nodes[survivors[1]].connect("reader").await;
    let mut convs = Vec::new();
    for i in 0..8 {
        let created = writer
            .ok(
                json!({"type":"create","members":["reader"],"title":format!("c{i}")}),
                "created",
            )
            .await;
        convs.push(created["conv"].as_str().unwrap().to_owned());
    }

    let mut acked: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut killed_at = None;
    let mut first_after_kill = None;
    for round in 0..30 {
        if round == 10 {
            nodes[victim].kill().await;
            killed_at = Some(tokio::time::Instant::now());
        }
        for conv in &convs {
            let cmid = format!("{conv}-{round}");
            let reply = until_served(
                &mut writer,
                json!({"type":"send","conv":conv,"body":cmid,"cmid":cmid}),
            )
            .await;
            assert_eq!(reply["type"], "ack", "{reply}");
            if let (Some(at), None) = (killed_at, first_after_kill) {
                first_after_kill = Some(at.elapsed());
            }
            acked.entry(conv.clone()).or_default().insert(cmid);
        }
    }
    let total: usize = acked.values().map(BTreeSet::len).sum();

    // Every acknowledged message is in the history exactly once, in one
    // order on every surviving node, with versions 1, 2, 3, …
    let mut lost = 0;
    let mut duplicated = 0;
    for conv in &convs {
        let mut seen = Vec::new();
        for ws in [&mut writer, &mut reader] {
            let page = until_served(
                ws,
                json!({"type":"history","conv":conv,"after":0,"limit":200}),
            )
            .await;
            assert_eq!(page["type"], "history", "{page}");
            let events = page["events"].as_array().unwrap().clone();
            let versions: Vec<u64> = events
                .iter()
                .map(|e| e["version"].as_u64().unwrap())
                .collect();
            assert_eq!(
                versions,
                (1..=versions.len() as u64).collect::<Vec<_>>(),
                "contiguous versions in {conv}"
            );
            let bodies: Vec<String> = events
                .iter()
                .filter(|e| e["kind"] == "message")
                .map(|e| e["body"].as_str().unwrap().to_owned())
                .collect();
            seen.push(bodies);
        }
        assert_eq!(seen[0], seen[1], "one order for {conv} on every node");
        let unique: BTreeSet<&String> = seen[0].iter().collect();
        duplicated += seen[0].len() - unique.len();
        lost += acked[conv]
            .iter()
            .filter(|cmid| !unique.contains(cmid))
            .count();
    }
    println!(
        "acknowledged {total}, lost {lost}, duplicated {duplicated}, first write after the kill {:?}",
        first_after_kill.unwrap()
    );
    assert_eq!(lost, 0);
    assert_eq!(duplicated, 0);

    // The killed node comes back with its data and catches up: its view of
    // every shard reaches the others' committed index.
    let all: Vec<_> = nodes.iter().map(|m| m.cluster).collect();
    nodes[victim].start(&all).await;
    let target = committed(&nodes[survivors[0]]).await;
    let back: &Member = &nodes[victim];
    eventually("the restarted node to catch up", || async {
        let mine = committed(back).await;
        target
            .iter()
            .all(|(shard, index)| mine.get(shard).is_some_and(|m| m >= index))
            .then_some(())
    })
    .await;
}

/// Shard → the index `member` has applied.
async fn committed(member: &Member) -> BTreeMap<u64, u64> {
    member
        .shards()
        .await
        .unwrap_or_default()
        .iter()
        .filter_map(|s| Some((s["shard"].as_u64()?, s["committed"].as_u64()?)))
        .collect()
}
