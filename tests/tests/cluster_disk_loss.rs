//! A node that lost its disk, on a three-node cluster of real binaries:
//! it comes back under its old id with an empty data directory. Having
//! forgotten its votes and the entries it acknowledged, it must not help
//! elect a leader that lacks acknowledged messages: it refuses to start,
//! and every acknowledged message stays on every live node at the version
//! it was acknowledged with.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tidings_actors::storage::records::{StoredEvent, StoredKind};
use tidings_actors::storage::{Cf, Storage};
use tidings_protocol::client::Client;
use tidings_protocol::{Cmid, ConvId, EventKind, UserId};
use tidings_tests::cluster::{
    busiest, client, form, free_addr, one_cluster_at_a_time, start_cluster, Member,
};
use tidings_tests::{eventually, WAIT};
use tokio::time::Instant;

/// The exit status of a node that must not run (see the README).
const REFUSED: i32 = 3;

/// (conversation, version, cmid) of every acknowledged send.
type Acked = Arc<Mutex<Vec<(ConvId, u64, String)>>>;

/// Sends `cmid` (also its body) to `conv` and records the ack, if any.
async fn send(client: &Client, conv: &ConvId, cmid: String, acked: &Acked) -> bool {
    let sent = client
        .send_with(
            conv,
            cmid.clone(),
            Some(Cmid::try_from(cmid.clone()).unwrap()),
            None,
        )
        .await;
    match sent {
        Ok(ack) => {
            acked
                .lock()
                .unwrap()
                .push((conv.clone(), ack.version, cmid));
            true
        }
        Err(_) => false,
    }
}

/// Waits until `more` sends beyond `acked`'s count now are acknowledged,
/// for at most `within`.
async fn more_acks(acked: &Acked, more: usize, within: Duration) {
    let goal = acked.lock().unwrap().len() + more;
    let deadline = Instant::now() + within;
    while acked.lock().unwrap().len() < goal {
        assert!(
            Instant::now() < deadline,
            "{more} more acknowledgements within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until `node` sees a leader for every shard it holds.
async fn led(node: &Member) {
    eventually(&format!("{} to see every shard led", node.id), || {
        node.leaders()
    })
    .await;
}

/// Polls `check` until it holds, for at most `within`; whether it did.
async fn within<F, Fut>(within: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Brings the running nodes to the same applied index in every shard
/// (for a bounded time: a node whose groups failed may never get there,
/// and the check below tells), stops them, and returns, per node, the
/// acknowledged messages its own storage does not hold at their
/// acknowledged version.
async fn missing_on_live_nodes(
    nodes: &mut [Member],
    acked: &[(ConvId, u64, String)],
) -> BTreeMap<&'static str, Vec<String>> {
    let live: Vec<usize> = (0..nodes.len()).filter(|&i| nodes[i].running()).collect();
    for &i in &live {
        let node = &nodes[i];
        if !within(WAIT, || async { node.leaders().await.is_some() }).await {
            println!("{} does not see every shard led", node.id);
        }
    }
    let mut target: BTreeMap<u64, u64> = BTreeMap::new();
    for &i in &live {
        for (shard, index) in nodes[i].committed().await {
            let max = target.entry(shard).or_default();
            *max = (*max).max(index);
        }
    }
    for &i in &live {
        let node = &nodes[i];
        let caught_up = within(WAIT, || async {
            let mine = node.committed().await;
            target
                .iter()
                .all(|(shard, index)| mine.get(shard).is_some_and(|m| m >= index))
        })
        .await;
        if !caught_up {
            println!("{} has not applied every shard's log", node.id);
        }
    }
    let mut missing = BTreeMap::new();
    for &i in &live {
        nodes[i].signal("-TERM");
        if nodes[i].exited(WAIT).await.is_none() {
            nodes[i].kill().await;
        }
        let storage = Storage::open(nodes[i].data.path()).unwrap();
        let mut logs: BTreeMap<&ConvId, BTreeMap<u64, String>> = BTreeMap::new();
        let mut lost = Vec::new();
        for (conv, version, cmid) in acked {
            let log = logs.entry(conv).or_insert_with(|| {
                let events: Vec<(u64, StoredEvent)> = storage
                    .log_range(Cf::ConvLog, conv.as_str(), 0, u64::MAX, 1_000_000, false)
                    .unwrap();
                events
                    .into_iter()
                    .filter_map(|(v, e)| match e.kind {
                        StoredKind::Message { cmid: Some(c), .. } => Some((v, c.to_string())),
                        _ => None,
                    })
                    .collect()
            });
            if log.get(version) != Some(cmid) {
                lost.push(format!("{conv}#{version} {cmid}"));
            }
        }
        missing.insert(nodes[i].id, lost);
    }
    missing
}

/// What a cluster's client reads of each conversation (version → cmid),
/// or `None` for one it cannot read.
async fn read_back(
    reader: &Client,
    convs: &[ConvId],
) -> BTreeMap<ConvId, Option<BTreeMap<u64, String>>> {
    let mut out = BTreeMap::new();
    'convs: for conv in convs {
        let mut messages = BTreeMap::new();
        let mut after = 0;
        // Pages of at most 200 events, up to the conversation's version.
        for _ in 0..1_000 {
            let Ok((version, events)) = reader.history(conv, Some(after), None, Some(200)).await
            else {
                out.insert(conv.clone(), None);
                continue 'convs;
            };
            for event in &events {
                after = after.max(event.version);
                if let EventKind::Message { cmid: Some(c), .. } = &event.kind {
                    messages.insert(event.version, c.to_string());
                }
            }
            if events.is_empty() || after >= version {
                break;
            }
        }
        out.insert(conv.clone(), Some(messages));
    }
    out
}

/// Of `acked`, how many `read` lacks at their version, and how many are
/// in conversations that could not be read.
fn lost_in(
    read: &BTreeMap<ConvId, Option<BTreeMap<u64, String>>>,
    acked: &[(ConvId, u64, String)],
) -> (usize, usize) {
    let (mut lost, mut unread) = (0, 0);
    for (conv, version, cmid) in acked {
        match &read[conv] {
            Some(messages) if messages.get(version) == Some(cmid) => {}
            Some(_) => lost += 1,
            None => unread += 1,
        }
    }
    (lost, unread)
}

/// Asserts that the node stopped by itself because it must not run, and
/// said why in terms an operator can act on.
fn assert_refused(status: Option<std::process::ExitStatus>, logged: &Mutex<String>, id: &str) {
    let logged = logged.lock().unwrap().clone();
    let status = status.unwrap_or_else(|| panic!("{id}, wiped, was let into the cluster"));
    assert_eq!(status.code(), Some(REFUSED), "{id} exits with {REFUSED}");
    let reason = logged
        .lines()
        .find(|l| l.starts_with("tidings: "))
        .unwrap_or_else(|| panic!("{id} says why it stops: {logged}"));
    for part in [
        format!("node {id} has an empty data directory"),
        "n1, n2, n3".to_owned(),
        "data directory it last ran with".to_owned(),
    ] {
        assert!(reason.contains(&part), "{reason:?} says {part:?}");
    }
}

/// The hazard made certain: n3 is frozen while n1 and n2 acknowledge
/// messages, then both go down, n1 comes back with an empty disk and n3
/// thaws. An n1 that took part would vote n3 in, whose log lacks those
/// messages, and n3's log would then overwrite n2's when it returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_node_back_under_its_id_cannot_vote_away_acknowledged_messages() {
    let _turn = one_cluster_at_a_time().await;
    let mut nodes = start_cluster(&["n1", "n2", "n3"]).await;
    let all: Vec<_> = nodes.iter().map(|m| m.cluster).collect();
    let (wiped, kept, frozen) = (0, 1, 2);

    let writer = client("writer", &nodes[..2], 0).0;
    let reader: UserId = "reader".try_into().unwrap();
    let acked: Acked = Arc::default();
    let mut convs = Vec::new();
    for _ in 0..4 {
        convs.push(writer.create(vec![reader.clone()], None).await.unwrap());
    }
    for conv in &convs {
        assert!(send(&writer, conv, format!("before-{conv}"), &acked).await);
    }

    // Acknowledged by n1 and n2 only.
    nodes[frozen].signal("-STOP");
    for i in 0..10 {
        for conv in &convs {
            let cmid = format!("frozen-{i}-{conv}");
            assert!(send(&writer, conv, cmid.clone(), &acked).await, "{cmid}");
        }
    }
    nodes[wiped].kill().await;
    nodes[kept].kill().await;
    nodes[wiped].wipe();
    let logged = nodes[wiped].start_logged(&all).await;
    nodes[frozen].signal("-CONT");

    // Either n1 stops, or n3 leads every shard with n1's vote.
    let deadline = Instant::now() + Duration::from_secs(20);
    let refused = loop {
        if let Some(status) = nodes[wiped].exited(Duration::from_millis(100)).await {
            break Some(status);
        }
        let leaders = nodes[frozen].leaders().await.unwrap_or_default();
        if !leaders.is_empty() && leaders.values().all(|l| l == nodes[frozen].id) {
            break None;
        }
        assert!(
            Instant::now() < deadline,
            "n1 neither stopped nor let n3 lead"
        );
    };
    nodes[kept].start(&all).await;

    let reader_client = client("reader", &nodes[1..], 0).0;
    let read = read_back(&reader_client, &convs).await;
    let acked = acked.lock().unwrap().clone();
    let (lost_in_reads, unread) = lost_in(&read, &acked);
    if refused.is_some() {
        // Its disk still holds nothing: it refuses again, as often as it
        // is started.
        let again = nodes[wiped].start_logged(&all).await;
        let status = nodes[wiped].exited(Duration::from_secs(20)).await;
        assert_refused(status, &again, "n1");
    }
    let missing = missing_on_live_nodes(&mut nodes, &acked).await;
    println!(
        "acknowledged {}, lost in reads {lost_in_reads}, in unreadable conversations {unread}, missing per live node {:?}",
        acked.len(),
        missing.iter().map(|(n, m)| (n, m.len())).collect::<Vec<_>>()
    );
    assert_eq!(lost_in_reads, 0, "acknowledged messages lost");
    assert_eq!(unread, 0, "conversations without a leader");
    for (node, lost) in &missing {
        assert!(lost.is_empty(), "{node} lacks {lost:?}");
    }
    assert_refused(refused, &logged, "n1");
    reader_client.close();
    writer.close();
}

/// The operator's drill under continuous writers: each node SIGKILLed and
/// restarted in turn, the busiest leader frozen and thawed, one node's
/// data directory wiped and the node restarted under its id, another node
/// killed and brought back. Every acknowledged message must be on every
/// live node at its version, and the wiped node must have refused to run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_disk_loss_drill_loses_no_acknowledged_message() {
    let _turn = one_cluster_at_a_time().await;
    // Clients fail over among fixed addresses: every node keeps its own
    // through its restarts.
    let members = ["n1", "n2", "n3"].map(|id| {
        let mut member = Member::new(id);
        member.http_listen = Some(free_addr());
        member
    });
    let mut nodes = form(members.into()).await;
    let all: Vec<_> = nodes.iter().map(|m| m.cluster).collect();

    let senders: Vec<String> = (0..nodes.len()).map(|i| format!("sender{i}")).collect();
    let everyone: Vec<UserId> = senders
        .iter()
        .map(|u| UserId::try_from(u.clone()).unwrap())
        .collect();
    let clients: Vec<Client> = senders
        .iter()
        .enumerate()
        .map(|(i, s)| client(s, &nodes, i).0)
        .collect();
    let mut convs = Vec::new();
    for _ in 0..9 {
        convs.push(clients[0].create(everyone.clone(), None).await.unwrap());
    }

    // Writers: every conversation in turn, each send waiting for its ack
    // (or giving up after the client's timeout), bounded in count and time.
    let acked: Acked = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let deadline = Instant::now() + Duration::from_secs(240);
    let mut writers = Vec::new();
    for (i, client) in clients.iter().enumerate() {
        let (client, convs, acked, stop) =
            (client.clone(), convs.clone(), acked.clone(), stop.clone());
        writers.push(tokio::spawn(async move {
            for n in 0..20_000 {
                if stop.load(Ordering::Acquire) || Instant::now() > deadline {
                    return;
                }
                let conv = &convs[n % convs.len()];
                send(&client, conv, format!("s{i}-{n}"), &acked).await;
            }
        }));
    }
    let phase = Duration::from_secs(60);
    more_acks(&acked, 60, phase).await;

    // Rolling SIGKILL.
    for node in nodes.iter_mut() {
        node.kill().await;
        more_acks(&acked, 30, phase).await;
        node.start(&all).await;
        led(node).await;
        more_acks(&acked, 30, phase).await;
    }

    // A frozen leader.
    let leaders = nodes[0].leaders().await.unwrap_or_default();
    let frozen = busiest(&nodes, &leaders);
    nodes[frozen].signal("-STOP");
    more_acks(&acked, 30, phase).await;
    nodes[frozen].signal("-CONT");
    more_acks(&acked, 30, phase).await;

    // A lost disk, then another node down.
    let (wiped, other) = ((frozen + 1) % 3, (frozen + 2) % 3);
    nodes[wiped].kill().await;
    nodes[wiped].wipe();
    let logged = nodes[wiped].start_logged(&all).await;
    nodes[other].kill().await;
    let refused = nodes[wiped].exited(Duration::from_secs(15)).await;
    nodes[other].start(&all).await;
    let goal = acked.lock().unwrap().len() + 60;
    if !within(phase, || async { acked.lock().unwrap().len() >= goal }).await {
        println!("drill: writes did not resume after the lost disk");
    }

    stop.store(true, Ordering::Release);
    for writer in writers {
        writer.await.unwrap();
    }
    let survivor = (0..nodes.len()).find(|&i| nodes[i].running()).unwrap();
    let reader = client(&senders[survivor], &nodes[survivor..=survivor], 0).0;
    let read = read_back(&reader, &convs).await;
    let acked = acked.lock().unwrap().clone();
    let (lost_in_reads, unread) = lost_in(&read, &acked);
    let missing = missing_on_live_nodes(&mut nodes, &acked).await;
    println!(
        "drill: acknowledged {}, lost in reads {lost_in_reads}, in unreadable conversations {unread}, missing per live node {:?}, wiped node {} {}",
        acked.len(),
        missing.iter().map(|(n, m)| (n, m.len())).collect::<Vec<_>>(),
        nodes[wiped].id,
        if refused.is_some() { "refused" } else { "ran" },
    );
    assert_eq!(lost_in_reads, 0, "acknowledged messages lost");
    assert_eq!(unread, 0, "conversations without a leader");
    for (node, lost) in &missing {
        assert!(lost.is_empty(), "{node} lacks {lost:?}");
    }
    assert_refused(refused, &logged, nodes[wiped].id);
    reader.close();
    for client in &clients {
        client.close();
    }
}
