//! Growing and shrinking a running cluster of real binaries while clients
//! write without pause: three founders, a fourth node started with one
//! seed, a fifth whose seed is the fourth, a drained node stopped, and a
//! SIGKILLed node removed as dead. After each step the shards are
//! balanced; at the end every acknowledged message is there exactly once,
//! with contiguous versions, and every live replica holds the same
//! history.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tidings_protocol::client::{Client, ClientConfig};
use tidings_protocol::{Cmid, ConvId, UserId};
use tidings_tests::cluster::{messages, one_cluster_at_a_time, start_cluster, Member};
use tidings_tests::elastic::{admin, memberships, until_balanced, BALANCE};
use tidings_tests::{eventually_within, token, Closed, Ws};
use tokio::time::Instant;

const CONVS: usize = 8;
/// Sockets held open on the node that is drained.
const WATCHERS: usize = 6;
/// Sends per writer at most, and how long the whole run may take.
const MAX_SENDS: usize = 20_000;
const RUN: Duration = Duration::from_secs(600);

fn rust_client(user: &str, urls: &[&Member]) -> Client {
    let urls: Vec<String> = urls.iter().map(|m| format!("ws://{}", m.http)).collect();
    let mut config = ClientConfig::new(urls, token(user));
    config.request_timeout = Duration::from_secs(30);
    Client::connect(config).0
}

/// (conversation, version, cmid, when the send began, when it was acked)
type Acked = (ConvId, u64, String, Instant, Instant);

/// The longest wait for an ack among sends begun in `[from, to)`.
fn longest_stall(acked: &[Acked], from: Instant, to: Instant) -> Duration {
    acked
        .iter()
        .filter(|(.., began, _)| *began >= from && *began < to)
        .map(|(.., began, at)| at.duration_since(*began))
        .max()
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_join_drain_and_die_while_clients_write_and_nothing_is_lost() {
    let _turn = one_cluster_at_a_time().await;
    let mut founders = start_cluster(&["n1", "n2", "n3"]).await;
    eventually_within("the cluster record", BALANCE, || async {
        let states = memberships(&founders[0]).await?;
        (states.len() == 3 && states.values().all(|s| s == "active")).then_some(())
    })
    .await;

    // Draining one of three would leave too few for three replicas.
    let (status, body) = admin(
        &founders[0],
        reqwest::Method::POST,
        "/v1/cluster/nodes/n2/drain",
    )
    .await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("add a node first"),
        "{body}"
    );
    let (status, body) = admin(
        &founders[0],
        reqwest::Method::DELETE,
        "/v1/cluster/nodes/n2",
    )
    .await;
    assert_eq!(status, 409, "a live node is not removed: {body}");
    let (status, _) = admin(
        &founders[0],
        reqwest::Method::POST,
        "/v1/cluster/nodes/n9/drain",
    )
    .await;
    assert_eq!(status, 404);

    // Writers on n3 (which stays throughout) and n1 (drained later; its
    // client then fails over to n3).
    let writer = |i: usize| format!("writer{i}");
    let everyone: Vec<UserId> = (0..2)
        .map(|i| UserId::try_from(writer(i)).unwrap())
        .collect();
    let clients = [
        rust_client(&writer(0), &[&founders[2], &founders[0]]),
        rust_client(&writer(1), &[&founders[0], &founders[2]]),
    ];
    let mut convs = Vec::new();
    for i in 0..CONVS {
        convs.push(
            clients[0]
                .create(everyone.clone(), Some(format!("room {i}")))
                .await
                .unwrap(),
        );
    }
    let acked: Arc<Mutex<Vec<Acked>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let deadline = Instant::now() + RUN;
    let mut writers = Vec::new();
    for (i, client) in clients.iter().enumerate() {
        let (client, convs, acked, stop) =
            (client.clone(), convs.clone(), acked.clone(), stop.clone());
        writers.push(tokio::spawn(async move {
            for n in 0..MAX_SENDS {
                if stop.load(Ordering::Acquire) {
                    return;
                }
                assert!(Instant::now() < deadline, "the writers ran out of time");
                let conv = &convs[n % convs.len()];
                let cmid = format!("w{i}-{n}");
                let began = Instant::now();
                let ack = client
                    .send_with(
                        conv,
                        cmid.clone(),
                        Some(Cmid::try_from(cmid.clone()).unwrap()),
                        None,
                    )
                    .await
                    .unwrap_or_else(|e| {
                        panic!(
                            "{cmid} to {conv} not acknowledged (sent {:?} ago): {e}",
                            began.elapsed()
                        )
                    });
                acked.lock().unwrap().push((
                    conv.clone(),
                    ack.version,
                    cmid,
                    began,
                    Instant::now(),
                ));
            }
        }));
    }
    eventually_within("traffic before the first join", BALANCE, || async {
        (acked.lock().unwrap().len() >= 50).then_some(())
    })
    .await;

    // Grow: a fourth node knows one seed only.
    let mut steps: Vec<(&str, Duration, Duration)> = Vec::new();
    let seed: Vec<SocketAddr> = vec![founders[0].cluster];
    let mut n4 = Member::new("n4");
    let began = Instant::now();
    n4.start(&seed).await;
    let took = until_balanced(
        "n4 joined",
        &[&founders[0], &founders[1], &founders[2], &n4],
        &["n1", "n2", "n3", "n4"],
    )
    .await;
    steps.push((
        "add n4",
        took,
        longest_stall(&acked.lock().unwrap(), began, Instant::now()),
    ));

    // A fifth, whose only seed is the node that joined last. While a
    // replica moves onto it, the leader of the moving shard is SIGKILLed
    // and restarted with its data.
    let mut n5 = Member::new("n5");
    let began = Instant::now();
    n5.start(&[n4.cluster]).await;
    let (moving, leader) = eventually_within("a replica move under way", BALANCE, || async {
        let live = [&founders[0], &founders[1], &founders[2], &n4];
        for node in live {
            for shard in node.shards().await? {
                let learning = shard["learners"].as_array().is_some_and(|l| !l.is_empty());
                if shard["held"] == true && shard["leader"] == node.id && learning {
                    return Some((shard["shard"].as_u64()?, node.id));
                }
            }
        }
        None
    })
    .await;
    let founder_addrs: Vec<SocketAddr> = founders.iter().map(|m| m.cluster).collect();
    let victim = match founders.iter_mut().find(|m| m.id == leader) {
        Some(founder) => founder,
        None => &mut n4,
    };
    let rejoin = if victim.id == "n4" {
        seed.clone()
    } else {
        founder_addrs
    };
    // Back on the same HTTP port: the writers' clients know the nodes by
    // their addresses.
    victim.http_listen = victim.http.parse().ok();
    victim.kill().await;
    println!("killed {leader}, leader of shard {moving}, in the middle of a move onto n5");
    victim.start(&rejoin).await;
    let took = until_balanced(
        "n5 joined",
        &[&founders[0], &founders[1], &founders[2], &n4, &n5],
        &["n1", "n2", "n3", "n4", "n5"],
    )
    .await;
    steps.push((
        "add n5",
        took,
        longest_stall(&acked.lock().unwrap(), began, Instant::now()),
    ));

    // Drain n1 and stop it once it holds nothing. Its sockets close with
    // 1001, a few at a time, and it takes no new ones.
    let mut watchers = Vec::new();
    for i in 0..WATCHERS {
        watchers.push(founders[0].connect(&format!("watcher{i}")).await);
    }
    let began = Instant::now();
    let (status, body) = admin(&n5, reqwest::Method::POST, "/v1/cluster/nodes/n1/drain").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["membership"], "draining");
    let closes =
        futures_util::future::join_all(watchers.into_iter().map(|mut watcher| async move {
            let deadline = Instant::now() + BALANCE;
            while watcher.closed.is_none() && Instant::now() < deadline {
                watcher.drain_for(Duration::from_millis(100)).await;
            }
            assert_eq!(watcher.closed, Some(Closed::Code(1001)), "a socket on n1");
            began.elapsed()
        }))
        .await;
    let refused = Ws::connect(&format!("ws://{}/v1/ws", founders[0].http), &token("late")).await;
    let refused = refused.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(
        refused.contains("503"),
        "a draining node takes no new socket: {refused:?}"
    );
    println!(
        "n1 draining: its {WATCHERS} sockets closed with 1001 between {:?} and {:?} after the drain began",
        closes.iter().min().unwrap(),
        closes.iter().max().unwrap()
    );
    let live = [&founders[1], &founders[2], &n4, &n5];
    eventually_within("n1 to be drained", BALANCE, || async {
        let states = memberships(&n5).await?;
        (states.get("n1").map(String::as_str) == Some("drained")).then_some(())
    })
    .await;
    until_balanced("n1 drained", &live, &["n2", "n3", "n4", "n5"]).await;
    let took = began.elapsed();
    founders[0].stop().await;
    steps.push((
        "drain n1",
        took,
        longest_stall(&acked.lock().unwrap(), began, Instant::now()),
    ));

    // n2 dies; an operator removes it, and its replicas are placed anew.
    let began = Instant::now();
    founders[1].kill().await;
    let (status, body) = eventually_within("n2 to be seen down", BALANCE, || async {
        let (status, body) = admin(&n5, reqwest::Method::DELETE, "/v1/cluster/nodes/n2").await;
        // Refused while n2 still counts as up; unavailable while the
        // metadata group elects a leader, if n2 led it.
        (status != 409 && status != 503).then_some((status, body))
    })
    .await;
    assert_eq!(status, 200, "{body}");
    let live = [&founders[2], &n4, &n5];
    until_balanced("n2 removed", &live, &["n3", "n4", "n5"]).await;
    let took = began.elapsed();
    steps.push((
        "remove dead n2",
        took,
        longest_stall(&acked.lock().unwrap(), began, Instant::now()),
    ));

    stop.store(true, Ordering::Release);
    for writer in writers {
        writer.await.unwrap();
    }

    // The truth: each conversation's history through every live node.
    let acked = acked.lock().unwrap().clone();
    let readers: Vec<Client> = live
        .iter()
        .map(|node| rust_client(&writer(0), &[node]))
        .collect();
    let mut lost = 0;
    let mut duplicated = 0;
    for conv in &convs {
        let mut seen: Option<Vec<(u64, String)>> = None;
        for (reader, node) in readers.iter().zip(&live) {
            let mut events = Vec::new();
            let mut after = 0;
            loop {
                let (_, page) = reader
                    .history(conv, Some(after), None, Some(200))
                    .await
                    .unwrap();
                let Some(last) = page.last() else { break };
                after = last.version;
                events.extend(page);
            }
            let versions: Vec<u64> = events.iter().map(|e| e.version).collect();
            assert_eq!(
                versions,
                (1..=versions.len() as u64).collect::<Vec<_>>(),
                "versions of {conv} are contiguous on {}",
                node.id
            );
            let got = messages(&events);
            match &seen {
                None => {
                    let unique: BTreeSet<&String> = got.iter().map(|(_, c)| c).collect();
                    duplicated += got.len() - unique.len();
                    for (c, version, cmid, ..) in acked.iter().filter(|(c, ..)| c == conv) {
                        match got.iter().find(|(_, m)| m == cmid) {
                            Some((v, _)) => {
                                assert_eq!(v, version, "{cmid} was acked at {version} in {c}")
                            }
                            None => lost += 1,
                        }
                    }
                    seen = Some(got);
                }
                Some(first) => assert_eq!(&got, first, "{conv} reads the same on {}", node.id),
            }
        }
    }
    println!(
        "acknowledged {}, lost {lost}, duplicated {duplicated}",
        acked.len()
    );
    for node in &live {
        let peak = node.peak_rss_kib().unwrap_or_default();
        println!("{}: peak RSS {} MiB", node.id, peak / 1024);
    }
    for (step, took, stall) in &steps {
        println!("{step}: balanced after {took:?}, longest writer stall {stall:?}");
    }
    assert_eq!(lost, 0, "acknowledged messages lost");
    assert_eq!(duplicated, 0, "messages stored twice");
    for client in clients.iter().chain(&readers) {
        client.close();
    }

    // n4 joined a running cluster and holds replicas. Back under its name
    // with its disk lost, it would answer its shards' leaders with an
    // empty log (openraft's leader stops at that) and vote with nothing it
    // promised: its peers know it from the cluster record, and it refuses
    // to run, even when the only peer it reaches is a founder (n5, which
    // joined later too, is stopped meanwhile).
    n5.stop().await;
    n4.stop().await;
    n4.wipe();
    let logged = n4.start_logged(&[founders[2].cluster]).await;
    let status = n4.exited(Duration::from_secs(30)).await;
    let logged = logged.lock().unwrap().clone();
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(3),
        "n4, a joined node back with an empty disk, stops with exit status 3: {logged}"
    );
    let reason = logged
        .lines()
        .find(|l| l.starts_with("tidings: "))
        .unwrap_or_else(|| panic!("n4 says why it stops: {logged}"));
    for part in [
        "node n4 has an empty data directory",
        "start a new node under another --node-id",
        "DELETE /v1/cluster/nodes/n4",
    ] {
        assert!(reason.contains(part), "{reason:?} says {part:?}");
    }
    // And with n5 back, the two nodes serve every conversation: n4 took
    // part in no group on its way out.
    n5.start(&[founders[2].cluster]).await;
    let client = rust_client(&writer(0), &[&founders[2], &n5]);
    for (i, conv) in convs.iter().enumerate() {
        let cmid = format!("after-{i}");
        client
            .send_with(
                conv,
                cmid.clone(),
                Some(Cmid::try_from(cmid).unwrap()),
                None,
            )
            .await
            .unwrap_or_else(|e| panic!("{conv} takes a message with n4 refused: {e}"));
    }
    client.close();
}
