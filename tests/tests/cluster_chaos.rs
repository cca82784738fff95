//! Chaos on a cluster of real binaries: Rust clients on every node send
//! without pause over many conversations while the node leading the most
//! shards is SIGKILLed, then restarted. Nothing acknowledged may be lost,
//! duplicated or reordered, and every reader sees each conversation's
//! events in one order with no gap. Once with three nodes, each holding
//! every shard, and once with four, each shard on three of them.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tidings_actors::shard::shard_of;
use tidings_protocol::client::{Client, Push};
use tidings_protocol::{Cmid, ConvId, Event, UserId};
use tidings_tests::cluster::{
    all_leaders, busiest, client, messages, one_cluster_at_a_time, start_cluster, Member,
};
use tidings_tests::eventually;
use tokio::time::Instant;

const ROUNDS: usize = 15;
const CONVS: usize = 12;
/// Sends acknowledged before the kill.
const KILL_AFTER: usize = 120;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_busiest_leader_mid_traffic_loses_and_repeats_nothing() {
    chaos(&["n1", "n2", "n3"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_shards_on_three_of_four_nodes_a_kill_loses_nothing() {
    chaos(&["n1", "n2", "n3", "n4"]).await;
}

async fn chaos(ids: &[&'static str]) {
    let _turn = one_cluster_at_a_time().await;
    let mut nodes = start_cluster(ids).await;
    let leaders = all_leaders(&nodes).await;
    let victim = busiest(&nodes, &leaders);
    let victim_id = nodes[victim].id;

    // A sender and a reader connected to each node (failing over to the
    // others), all in every conversation.
    let senders: Vec<String> = (0..nodes.len()).map(|i| format!("sender{i}")).collect();
    let readers: Vec<String> = (0..nodes.len()).map(|i| format!("reader{i}")).collect();
    let everyone: Vec<UserId> = senders
        .iter()
        .chain(&readers)
        .map(|u| UserId::try_from(u.clone()).unwrap())
        .collect();
    let mut reader_pushes = Vec::new();
    let mut reader_clients = Vec::new();
    for (i, reader) in readers.iter().enumerate() {
        let (client, pushes) = client(reader, &nodes, i);
        client.connected().await.unwrap();
        reader_clients.push(client);
        reader_pushes.push(pushes);
    }
    let sender_clients: Vec<Client> = senders
        .iter()
        .enumerate()
        .map(|(i, s)| client(s, &nodes, i).0)
        .collect();
    // Conversation ids, and so their shards, are random: create until the
    // kill is sure to hit some of them (bounded).
    let on_victim = |c: &ConvId| leaders[&u64::from(shard_of(c.as_str()).0)] == victim_id;
    let mut convs: Vec<ConvId> = Vec::new();
    while convs.len() < CONVS || convs.iter().filter(|c| on_victim(c)).count() < 2 {
        assert!(
            convs.len() < 4 * CONVS,
            "no conversation on {victim_id}'s shards"
        );
        let conv = sender_clients[0]
            .create(everyone.clone(), Some(format!("room {}", convs.len())))
            .await
            .unwrap();
        convs.push(conv);
    }
    let affected: BTreeSet<ConvId> = convs.iter().filter(|c| on_victim(c)).cloned().collect();

    // Senders: every conversation in turn, each send waiting for its ack
    // (resent by the client through failovers), bounded in count and time.
    // (conversation, version, cmid, when the send began, when it was acked)
    type Acked = (ConvId, u64, String, Instant, Instant);
    let acked: Arc<Mutex<Vec<Acked>>> = Arc::default();
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut tasks = Vec::new();
    for (i, client) in sender_clients.iter().enumerate() {
        let (client, convs, acked) = (client.clone(), convs.clone(), acked.clone());
        tasks.push(tokio::spawn(async move {
            for round in 0..ROUNDS {
                for conv in &convs {
                    assert!(Instant::now() < deadline, "the senders ran out of time");
                    let cmid = format!("s{i}-r{round}-{conv}");
                    let began = Instant::now();
                    let ack = client
                        .send_with(
                            conv,
                            cmid.clone(),
                            Some(Cmid::try_from(cmid.clone()).unwrap()),
                            None,
                        )
                        .await
                        .unwrap_or_else(|e| panic!("{cmid} not acknowledged: {e}"));
                    acked.lock().unwrap().push((
                        conv.clone(),
                        ack.version,
                        cmid,
                        began,
                        Instant::now(),
                    ));
                }
            }
        }));
    }
    eventually("traffic before the kill", || async {
        (acked.lock().unwrap().len() >= KILL_AFTER).then_some(())
    })
    .await;
    nodes[victim].kill().await;
    let killed = Instant::now();
    for task in tasks {
        task.await.unwrap();
    }
    let all: Vec<_> = nodes.iter().map(|m| m.cluster).collect();
    nodes[victim].start(&all).await;

    // The truth: each conversation's history, read through a survivor.
    let auditor = &sender_clients[(victim + 1) % nodes.len()];
    let mut histories: BTreeMap<ConvId, Vec<Event>> = BTreeMap::new();
    for conv in &convs {
        let (_, events) = auditor
            .history(conv, Some(0), None, Some(200))
            .await
            .unwrap();
        histories.insert(conv.clone(), events);
    }

    let acked = acked.lock().unwrap().clone();
    let mut lost = 0;
    let mut duplicated = 0;
    for (conv, events) in &histories {
        let versions: Vec<u64> = events.iter().map(|e| e.version).collect();
        assert_eq!(
            versions,
            (1..=versions.len() as u64).collect::<Vec<_>>(),
            "versions of {conv} are contiguous"
        );
        let cmids: Vec<String> = messages(events).into_iter().map(|(_, c)| c).collect();
        let unique: BTreeSet<&String> = cmids.iter().collect();
        duplicated += cmids.len() - unique.len();
        for (c, version, cmid, ..) in acked.iter().filter(|(c, ..)| c == conv) {
            match messages(events).iter().find(|(_, m)| m == cmid) {
                Some((v, _)) => assert_eq!(v, version, "{cmid} was acked at {version} in {c}"),
                None => lost += 1,
            }
        }
    }
    // Acks already on their way when the node died do not count: only
    // writes begun after the kill show how long the shards were without a
    // leader.
    let first_affected = acked
        .iter()
        .filter(|(conv, _, _, began, _)| *began > killed && affected.contains(conv))
        .map(|(.., at)| at.duration_since(killed))
        .min();
    println!(
        "acknowledged {}, lost {lost}, duplicated {duplicated}; {} of {} conversations on the killed leader's shards; first acknowledged write on one of them {:?} after the kill",
        acked.len(),
        affected.len(),
        convs.len(),
        first_affected,
    );
    assert_eq!(acked.len(), senders.len() * ROUNDS * convs.len());
    assert!(
        first_affected.is_some(),
        "no write on the killed leader's shards after the kill"
    );
    assert_eq!(lost, 0, "acknowledged messages lost");
    assert_eq!(duplicated, 0, "messages stored twice");

    // Every reader ends up with each conversation's history exactly, in
    // order and without a gap, whichever node it was on.
    for (i, pushes) in reader_pushes.iter_mut().enumerate() {
        let mut seen: BTreeMap<ConvId, Vec<Event>> = BTreeMap::new();
        let complete = |seen: &BTreeMap<ConvId, Vec<Event>>| {
            histories
                .iter()
                .all(|(conv, events)| seen.get(conv).map(Vec::len) == Some(events.len()))
        };
        let until = Instant::now() + Duration::from_secs(30);
        while !complete(&seen) {
            let push = tokio::time::timeout_at(until, pushes.recv())
                .await
                .unwrap_or_else(|_| panic!("reader{i} did not see everything"))
                .expect("the reader's client runs");
            if let Push::Event(event) = push {
                seen.entry(event.conv.clone()).or_default().push(event);
            }
        }
        for (conv, events) in &histories {
            let got: Vec<(u64, String)> = messages(&seen[conv]);
            assert_eq!(got, messages(events), "reader{i}'s view of {conv}");
        }
    }
    // The killed node, restarted with its data, catches up: it applies what
    // the others committed meanwhile, in every shard it holds.
    let mut target: BTreeMap<u64, u64> = BTreeMap::new();
    for (i, node) in nodes.iter().enumerate() {
        if i != victim {
            for (shard, index) in node.committed().await {
                let max = target.entry(shard).or_default();
                *max = (*max).max(index);
            }
        }
    }
    let back: &Member = &nodes[victim];
    let held = back.committed().await;
    target.retain(|shard, _| held.contains_key(shard));
    assert!(!target.is_empty(), "the restarted node holds shards");
    eventually("the restarted node to catch up", || async {
        let mine = back.committed().await;
        target
            .iter()
            .all(|(shard, index)| mine.get(shard).is_some_and(|m| m >= index))
            .then_some(())
    })
    .await;
    for client in reader_clients.iter().chain(&sender_clients) {
        client.close();
    }
}
