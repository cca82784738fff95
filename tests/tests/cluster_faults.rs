//! A three-node cluster of real binaries under faults that are not a clean
//! crash: a leader frozen with SIGSTOP, two of three nodes gone, and (where
//! the machine allows network namespaces) a node cut off from the others.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde_json::{json, Value};
use tidings_actors::shard::shard_of;
use tidings_protocol::client::Client;
use tidings_protocol::{Cmid, ConvId, EventKind, UserId};
use tidings_tests::cluster::{busiest, client, form, one_cluster_at_a_time, start_cluster, Member};
use tidings_tests::eventually;
use tidings_tests::netns::{self, Net};
use tokio::time::Instant;

fn leader_of(leaders: &BTreeMap<u64, String>, conv: &ConvId) -> String {
    leaders[&u64::from(shard_of(conv.as_str()).0)].clone()
}

/// Conversations of `members` until at least `want` are on shards led by
/// `on` and `want` are not (bounded).
async fn spread_convs(
    creator: &Client,
    members: Vec<UserId>,
    leaders: &BTreeMap<u64, String>,
    on: &str,
    want: usize,
) -> (Vec<ConvId>, Vec<ConvId>) {
    let (mut mine, mut others) = (Vec::new(), Vec::new());
    for _ in 0..60 {
        if mine.len() >= want && others.len() >= want {
            break;
        }
        let conv = creator.create(members.clone(), None).await.unwrap();
        if leader_of(leaders, &conv) == on {
            mine.push(conv);
        } else {
            others.push(conv);
        }
    }
    assert!(
        mine.len() >= want && others.len() >= want,
        "conversations spread over shards"
    );
    (mine, others)
}

/// Each conversation's messages as (version, cmid), read by `reader`,
/// checking that versions run 1, 2, 3, …
async fn histories(reader: &Client, convs: &[ConvId]) -> BTreeMap<ConvId, Vec<(u64, String)>> {
    let mut out = BTreeMap::new();
    for conv in convs {
        let (_, events) = reader
            .history(conv, Some(0), None, Some(200))
            .await
            .unwrap();
        let versions: Vec<u64> = events.iter().map(|e| e.version).collect();
        assert_eq!(versions, (1..=versions.len() as u64).collect::<Vec<_>>());
        let messages = events
            .iter()
            .filter_map(|e| match &e.kind {
                EventKind::Message { cmid: Some(c), .. } => Some((e.version, c.to_string())),
                _ => None,
            })
            .collect();
        out.insert(conv.clone(), messages);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_leader_is_replaced_and_steps_down_when_it_thaws() {
    let _turn = one_cluster_at_a_time().await;
    let nodes = start_cluster(&["n1", "n2", "n3"]).await;
    let leaders = nodes[0].leaders().await.unwrap();
    let frozen = busiest(&nodes, &leaders);
    let (a, b) = ((frozen + 1) % 3, (frozen + 2) % 3);
    let writer = client("writer", &nodes, a).0;
    let reader = client("reader", &nodes, b).0;
    let members: Vec<UserId> = vec!["reader".try_into().unwrap()];
    let (affected, others) = spread_convs(&writer, members, &leaders, nodes[frozen].id, 2).await;
    let convs: Vec<ConvId> = affected.iter().chain(&others).cloned().collect();

    let mut acked: Vec<(ConvId, u64, String)> = Vec::new();
    let send = |conv: ConvId, cmid: String| {
        let writer = writer.clone();
        async move {
            let ack = writer
                .send_with(
                    &conv,
                    cmid.clone(),
                    Some(Cmid::try_from(cmid.clone()).unwrap()),
                    None,
                )
                .await
                .unwrap_or_else(|e| panic!("{cmid}: {e}"));
            (conv, ack.version, cmid)
        }
    };
    for conv in &convs {
        acked.push(send(conv.clone(), format!("before-{conv}")).await);
    }

    nodes[frozen].signal("-STOP");
    let stopped = Instant::now();
    // Writes to the frozen leader's shards resume on the others.
    let (_, _, first) = send(affected[0].clone(), "during-first".into()).await;
    let resumed = stopped.elapsed();
    acked.push((affected[0].clone(), 0, first));
    println!("writes to a frozen leader's shard resumed after {resumed:?}");
    // A request forwarded to the frozen node is given up after the call
    // timeout (3 s here), then an election (0.75–1.5 s, more after a split
    // vote) and the new leader's first commit.
    assert!(resumed < Duration::from_secs(12), "took {resumed:?}");
    // Keep writing until the freeze has lasted 10 s (bounded in count, and
    // paced under the node's limit of 100 frames a second per connection).
    let mut pace = tokio::time::interval(Duration::from_millis(15) * convs.len() as u32);
    let mut round = 0;
    while stopped.elapsed() < Duration::from_secs(10) && round < 200 {
        pace.tick().await;
        for conv in &convs {
            acked.push(send(conv.clone(), format!("during-{round}-{conv}")).await);
        }
        round += 1;
    }
    // While it is frozen, the others lead its shards.
    eventually("the others to lead the frozen node's shards", || async {
        let view = nodes[a].leaders().await?;
        let moved = |conv: &ConvId| leader_of(&view, conv) != nodes[frozen].id;
        affected.iter().all(moved).then_some(())
    })
    .await;
    nodes[frozen].signal("-CONT");

    // It steps down: every node, the thawed one too, agrees on each
    // shard's leader again, and the thawed node applies what was committed
    // without it.
    eventually("one leader per shard on every node", || async {
        let views = [
            nodes[0].leaders().await?,
            nodes[1].leaders().await?,
            nodes[2].leaders().await?,
        ];
        (views[0] == views[1] && views[1] == views[2]).then_some(())
    })
    .await;
    for conv in &convs {
        acked.push(send(conv.clone(), format!("after-{conv}")).await);
    }

    // One history per conversation, whichever node is asked, holding each
    // acknowledged message once.
    let thawed = client("reader", &nodes, frozen).0;
    let seen = [
        histories(&writer, &convs).await,
        histories(&reader, &convs).await,
        histories(&thawed, &convs).await,
    ];
    assert_eq!(seen[0], seen[1]);
    assert_eq!(seen[1], seen[2]);
    for (conv, version, cmid) in &acked {
        let found: Vec<&(u64, String)> = seen[0][conv].iter().filter(|(_, c)| c == cmid).collect();
        assert_eq!(found.len(), 1, "{cmid} stored once");
        if *version != 0 {
            assert_eq!(found[0].0, *version, "{cmid} at its acknowledged version");
        }
    }
    for c in [&writer, &reader, &thawed] {
        c.close();
    }
}

/// Sends over a raw socket and returns the reply and how long it took.
async fn timed(ws: &mut tidings_tests::Ws, frame: Value) -> (Value, Duration) {
    let started = Instant::now();
    let reply = ws.request(frame).await;
    (reply, started.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_majority_writes_are_refused_and_nothing_acknowledged_is_lost() {
    let _turn = one_cluster_at_a_time().await;
    let mut nodes = start_cluster(&["n1", "n2", "n3"]).await;
    let leaders = nodes[0].leaders().await.unwrap();
    let mut alice = nodes[0].connect("alice").await;
    // Both ways to be refused get tried: shards n1 leads (it must notice it
    // lost its majority) and shards it forwards for (bounded).
    let on_n1 = |c: &&String| leaders[&u64::from(shard_of(c).0)] == "n1";
    let mut convs = Vec::new();
    while convs.iter().filter(on_n1).count() < 2 || convs.iter().filter(|c| !on_n1(c)).count() < 2 {
        assert!(convs.len() < 60, "no shard led on both sides: {leaders:?}");
        convs.push(alice.create(["bob"]).await);
    }
    for conv in &convs {
        alice
            .ok(
                json!({"type":"send","conv":conv,"body":"kept","cmid":format!("kept-{conv}")}),
                "ack",
            )
            .await;
    }

    nodes[1].kill().await;
    nodes[2].kill().await;
    // Every write is refused, in bounded time, whoever led its shard.
    for conv in &convs {
        let (reply, took) = timed(
            &mut alice,
            json!({"type":"send","conv":conv,"body":"lonely","cmid":format!("lonely-{conv}")}),
        )
        .await;
        assert_eq!(reply["code"], "unavailable", "{reply}");
        assert!(took < Duration::from_secs(8), "refused after {took:?}");
    }

    // One node back makes a majority: writes go through again, and the
    // refused ones, resent with their cmid, are stored once.
    let all: Vec<_> = nodes.iter().map(|m| m.cluster).collect();
    nodes[1].start(&all).await;
    let mut stored: BTreeSet<String> = BTreeSet::new();
    for conv in &convs {
        for cmid in [format!("lonely-{conv}"), format!("back-{conv}")] {
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                let reply = alice
                    .request(json!({"type":"send","conv":conv,"body":cmid,"cmid":cmid}))
                    .await;
                if reply["type"] == "ack" {
                    break;
                }
                assert_eq!(reply["code"], "unavailable", "{reply}");
                assert!(Instant::now() < deadline, "{conv} never recovered");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            stored.insert(cmid);
        }
        let page = alice
            .ok(json!({"type":"history","conv":conv,"after":0}), "history")
            .await;
        let cmids: Vec<&str> = page["events"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|e| e["cmid"].as_str())
            .collect();
        let want = [
            format!("kept-{conv}"),
            format!("lonely-{conv}"),
            format!("back-{conv}"),
        ];
        assert_eq!(cmids, want.iter().map(String::as_str).collect::<Vec<_>>());
    }
    assert_eq!(stored.len(), convs.len() * 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_minority_refuses_writes_and_heals_into_one_history() {
    let _turn = one_cluster_at_a_time().await;
    if !netns::available() {
        eprintln!("skipped: this machine does not let a test create network namespaces");
        return;
    }
    let net = Net::new(3);
    let nodes = form(vec![
        Member::in_net("n1", &net, 0),
        Member::in_net("n2", &net, 1),
        Member::in_net("n3", &net, 2),
    ])
    .await;
    let leaders = nodes[0].leaders().await.unwrap();
    let cut = busiest(&nodes, &leaders);
    let other = (cut + 1) % 3;
    let mut inside = nodes[cut].connect("alice").await;
    let mut outside = nodes[other].connect("alice").await;
    // Conversation ids are random, so their shards are too: create until
    // both sides lead a few of them (bounded).
    let led_inside = |c: &&String| leaders[&u64::from(shard_of(c).0)] == nodes[cut].id;
    let mut convs = Vec::new();
    while convs.iter().filter(led_inside).count() < 2
        || convs.iter().filter(|c| !led_inside(c)).count() < 2
    {
        assert!(convs.len() < 60, "no shard led on both sides: {leaders:?}");
        convs.push(outside.create(["bob"]).await);
    }

    net.isolate(cut);
    // The majority side goes on.
    for conv in &convs {
        let cmid = format!("outside-{conv}");
        let reply = until_acked(&mut outside, conv, &cmid).await;
        assert_eq!(reply["type"], "ack", "{reply}");
    }
    // The cut-off side does not serve reads it can no longer vouch for: a
    // conversation it led has moved on without it.
    let conv = convs.iter().find(led_inside).expect("created above");
    let outside_cmid = format!("outside-{conv}");
    let (reply, took) = timed(&mut inside, json!({"type":"history","conv":conv,"after":0})).await;
    let stale = reply["type"] == "history"
        && !reply["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["cmid"] == outside_cmid.as_str());
    assert!(!stale, "the cut-off node served a stale history: {reply}");
    assert!(took < Duration::from_secs(8), "answered after {took:?}");

    // The minority side refuses writes, in bounded time, whether it led
    // the conversation's shard or not. (A connection serves its requests in
    // turn: one led inside, two led outside keep this short.)
    let probes: Vec<&String> = convs
        .iter()
        .filter(led_inside)
        .take(1)
        .chain(convs.iter().filter(|c| !led_inside(c)).take(2))
        .collect();
    for conv in probes {
        let cmid = format!("inside-{conv}");
        let (reply, took) = timed(
            &mut inside,
            json!({"type":"send","conv":conv,"body":cmid,"cmid":cmid}),
        )
        .await;
        assert_eq!(reply["code"], "unavailable", "{reply}");
        assert!(took < Duration::from_secs(8), "refused after {took:?}");
    }

    net.heal(cut);
    eventually("one leader per shard on every node", || async {
        let views = [
            nodes[0].leaders().await?,
            nodes[1].leaders().await?,
            nodes[2].leaders().await?,
        ];
        (views[0] == views[1] && views[1] == views[2]).then_some(())
    })
    .await;
    // The refused writes, resent with their cmid, are stored once; every
    // node tells one history.
    for conv in &convs {
        let cmid = format!("inside-{conv}");
        let reply = until_acked(&mut inside, conv, &cmid).await;
        assert_eq!(reply["type"], "ack", "{reply}");
    }
    let mut views = Vec::new();
    for node in &nodes {
        let mut ws = node.connect("bob").await;
        let mut view = Vec::new();
        for conv in &convs {
            let page = ws
                .ok(json!({"type":"history","conv":conv,"after":0}), "history")
                .await;
            let events = page["events"].as_array().unwrap();
            let versions: Vec<u64> = events
                .iter()
                .map(|e| e["version"].as_u64().unwrap())
                .collect();
            assert_eq!(versions, (1..=versions.len() as u64).collect::<Vec<_>>());
            let cmids: Vec<String> = events
                .iter()
                .filter_map(|e| e["cmid"].as_str().map(str::to_owned))
                .collect();
            let want: BTreeSet<String> =
                [format!("inside-{conv}"), format!("outside-{conv}")].into();
            assert_eq!(cmids.len(), 2, "{conv}: {cmids:?}");
            assert_eq!(cmids.iter().cloned().collect::<BTreeSet<_>>(), want);
            view.push(cmids);
        }
        views.push(view);
    }
    assert_eq!(views[0], views[1]);
    assert_eq!(views[1], views[2]);
}

/// Sends until acknowledged, resending with the same cmid while the
/// answer is `unavailable` (bounded).
async fn until_acked(ws: &mut tidings_tests::Ws, conv: &str, cmid: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let reply = ws
            .request(json!({"type":"send","conv":conv,"body":cmid,"cmid":cmid}))
            .await;
        if reply["code"] != "unavailable" || Instant::now() > deadline {
            return reply;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
