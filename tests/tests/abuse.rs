//! Limits that hold under abuse, against the real binary: replies bounded
//! in bytes, a connection's queue bounded in bytes, and requests for
//! conversations that do not exist answered without keeping anything.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};
use tidings_protocol::client::{Client, ClientConfig, Push};
use tidings_tests::{metric, process, token, Closed, Ws, WAIT};
use tokio::process::Child;

/// Flags that keep the rate limit out of the way of a test's bursts.
const FAST: [&str; 4] = ["--rate-limit", "100000", "--rate-burst", "100000"];

async fn node(data: &Path, extra: &[&str]) -> (Child, String) {
    let args: Vec<&str> = FAST.iter().chain(extra).copied().collect();
    process::spawn(data, args).await
}

async fn connect(addr: &str, user: &str) -> Ws {
    Ws::subscribed(&format!("ws://{addr}/v1/ws"), &token(user)).await
}

/// The length of a reply as the node sent it (serde_json writes the same
/// text back).
fn len(frame: &Value) -> usize {
    frame.to_string().len()
}

/// A line of `/proc/PID/status`, in KiB.
fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// Sends `n` messages of `size` bytes to `conv`, pipelined in windows, and
/// waits for every ack.
async fn fill(ws: &mut Ws, conv: &str, n: usize, size: usize) {
    let body = "m".repeat(size);
    let mut sent = 0;
    while sent < n {
        let window = (n - sent).min(32);
        for i in 0..window {
            ws.send(json!({"type":"send","req":format!("f{}", sent + i),"conv":conv,"body":body}))
                .await;
        }
        for i in 0..window {
            let req = format!("f{}", sent + i);
            let reply = ws.take("an ack", |v| v["req"] == json!(req)).await.unwrap();
            assert_eq!(reply["type"], "ack", "{reply}");
        }
        sent += window;
    }
    ws.inbox.clear();
}

#[tokio::test]
async fn history_sync_and_convs_replies_stop_at_the_byte_bound_and_the_client_catches_up() {
    const BOUND: usize = 64 * 1024;
    const CONVS: usize = 6;
    const MESSAGES: usize = 12;
    const BODY: usize = 16 * 1024;
    let data = tempfile::tempdir().unwrap();
    let (_node, addr) = node(data.path(), &["--max-reply-bytes", "65536"]).await;
    let mut alice = connect(&addr, "alice").await;
    // Six conversations of twelve 16 KiB messages: 1.2 MB for bob to sync.
    let mut convs = Vec::new();
    for _ in 0..CONVS {
        let conv = alice.create(["bob"]).await;
        fill(&mut alice, &conv, MESSAGES, BODY).await;
        convs.push(conv);
    }
    let mut bob = connect(&addr, "bob").await;

    // history: one page of at most the bound, saying more follow.
    let history = bob
        .ok(
            json!({"type":"history","conv":convs[0],"after":0,"limit":200}),
            "history",
        )
        .await;
    let events = history["events"].as_array().unwrap();
    assert!(len(&history) <= BOUND, "history of {} bytes", len(&history));
    assert!(events.len() < MESSAGES + 1, "{} events", events.len());
    assert_eq!(history["more"], true);
    assert_eq!(events[0]["version"], 1, "the page starts after `after`");
    // Latest first when paging back: the newest events are kept.
    let latest = bob
        .ok(
            json!({"type":"history","conv":convs[0],"limit":200}),
            "history",
        )
        .await;
    let last = latest["events"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["version"], (MESSAGES + 1) as u64);
    assert_eq!(latest["more"], true);

    // sync: bounded too; conversations left out make the reply's `more`.
    let synced = bob.ok(json!({"type":"sync"}), "synced").await;
    assert!(len(&synced) <= BOUND, "synced of {} bytes", len(&synced));
    assert_eq!(synced["more"], true, "conversations were left out");
    let listed = synced["convs"].as_array().unwrap();
    assert!(
        !listed.is_empty() && listed.len() < CONVS,
        "{}",
        listed.len()
    );
    // Asking again with the versions had: every conversation comes, in
    // rounds of at most the bound.
    let mut had: BTreeMap<String, u64> = BTreeMap::new();
    for _ in 0..20 {
        let synced = bob.ok(json!({"type":"sync","convs":had}), "synced").await;
        assert!(len(&synced) <= BOUND, "synced of {} bytes", len(&synced));
        for conv in synced["convs"].as_array().unwrap() {
            let version = conv["events"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|e| e["version"].as_u64())
                .max();
            if let Some(version) = version {
                had.insert(conv["conv"].as_str().unwrap().to_owned(), version);
            }
        }
        if synced["more"] == false {
            break;
        }
    }
    assert_eq!(had.len(), CONVS, "every conversation was synced: {had:?}");

    // The Rust client, connecting as bob, is brought up to date with every
    // conversation: it syncs again while the node says `more` (a device
    // new to a conversation gets its latest events, as many as fit).
    let (client, mut pushes) =
        Client::connect(ClientConfig::new([format!("ws://{addr}")], token("bob")));
    let mut seen: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    let latest = (MESSAGES + 1) as u64;
    let deadline = tokio::time::Instant::now() + WAIT;
    while seen.len() < CONVS || seen.values().any(|v| v.last() != Some(&latest)) {
        let push = tokio::time::timeout_at(deadline, pushes.recv())
            .await
            .unwrap_or_else(|_| panic!("the client was not brought up to date: {seen:?}"))
            .expect("the client runs");
        if let Push::Event(event) = push {
            seen.entry(event.conv.to_string())
                .or_default()
                .push(event.version);
        }
    }
    for (conv, versions) in &seen {
        let first = versions[0];
        let want: Vec<u64> = (first..=latest).collect();
        assert_eq!(versions, &want, "{conv} in order, without gaps");
    }
    client.close();

    // convs: conversations with many long-named members make a list
    // longer than the bound; it comes in pages, `after` the last listed.
    let members: Vec<String> = (0..250)
        .map(|i| format!("{i:03}{}", "u".repeat(57)))
        .collect();
    let mut carol = connect(&addr, "carol").await;
    let mut big = Vec::new();
    for _ in 0..5 {
        big.push(carol.create(&members).await);
    }
    big.sort();
    let mut listed: Vec<String> = Vec::new();
    let mut pages = 0;
    let mut after: Option<String> = None;
    loop {
        pages += 1;
        assert!(pages <= 10, "convs never ended");
        let mut frame = json!({"type":"convs"});
        if let Some(after) = &after {
            frame["after"] = json!(after);
        }
        let reply = carol.ok(frame, "convs").await;
        assert!(len(&reply) <= BOUND, "convs of {} bytes", len(&reply));
        let ids: Vec<String> = reply["conversations"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["conv"].as_str().unwrap().to_owned())
            .collect();
        assert!(!ids.is_empty(), "a page lists at least one");
        after = ids.last().cloned();
        listed.extend(ids);
        if reply["more"] == false {
            break;
        }
    }
    assert!(pages > 1, "the list was cut");
    assert_eq!(listed, big);
}

#[tokio::test]
async fn a_client_that_never_reads_and_asks_for_history_is_closed_with_1013_and_memory_stays_bounded(
) {
    let data = tempfile::tempdir().unwrap();
    let (node, addr) = node(data.path(), &[]).await;
    let pid = node.id().expect("the node runs");
    let mut alice = connect(&addr, "alice").await;
    let conv = alice.create(["bob"]).await;
    // 100 messages of 16 KiB: each history reply is cut at 1 MiB.
    fill(&mut alice, &conv, 100, 16 * 1024).await;
    let mut bob = connect(&addr, "bob").await;
    let before = status_kib(pid, "VmRSS:");
    // Never reads: 300 requests for about 300 MiB of replies.
    for i in 0..300 {
        bob.send(json!({"type":"history","req":format!("h{i}"),"conv":conv,"limit":200}))
            .await;
    }
    let deadline = tokio::time::Instant::now() + 2 * WAIT;
    loop {
        if metric(&addr, "tidings_slow_consumer_closes_total").await == Some(1) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the reader that never reads was not closed; peak RSS grew by {} MiB",
            (status_kib(pid, "VmHWM:").saturating_sub(before)) / 1024
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let grown = status_kib(pid, "VmHWM:").saturating_sub(before) / 1024;
    println!("peak RSS grew by {grown} MiB for the reader that never read");
    assert!(grown < 100, "peak RSS grew by {grown} MiB");
    // What was in the socket's buffers comes first, then the close.
    assert_eq!(bob.closed().await, Closed::Code(1013));
    // Others are served as before.
    alice.ok(json!({"type":"ping"}), "pong").await;
}

#[tokio::test]
async fn requests_for_conversations_that_do_not_exist_start_no_actor() {
    let data = tempfile::tempdir().unwrap();
    let (_node, addr) = node(data.path(), &[]).await;
    let mut mallory = connect(&addr, "mallory").await;
    // One that exists, for comparison.
    let real = mallory.create::<&str>([]).await;
    let started = |addr: String| async move {
        metric(
            &addr,
            "tidings_entity_actors_started_total{kind=\"conversation\"}",
        )
        .await
        .unwrap_or(0)
    };
    let live = |addr: String| async move {
        metric(&addr, "tidings_entity_actors{kind=\"conversation\"}")
            .await
            .unwrap_or(0)
    };
    let started_before = started(addr.clone()).await;
    let live_before = live(addr.clone()).await;
    const N: usize = 2000;
    let mut n = 0;
    while n < N {
        let window = (N - n).min(100);
        for i in n..n + window {
            let conv = format!("g:{:0>20}", i);
            let frame = match i % 5 {
                0 => json!({"type":"history","conv":conv}),
                1 => json!({"type":"send","conv":conv,"body":"hello?"}),
                2 => json!({"type":"members","conv":conv,"add":["mallory"]}),
                3 => json!({"type":"edit","conv":conv,"target":2,"rev":1,"body":"x"}),
                _ => json!({"type":"history","conv":format!("dm:mallory:u{i}")}),
            };
            let mut frame = frame;
            frame["req"] = json!(format!("u{i}"));
            mallory.send(frame).await;
            // Typing to a conversation that does not exist: no reply, no actor.
            mallory
                .send(json!({"type":"typing","conv":format!("g:{:0>20}", i + N)}))
                .await;
        }
        for i in n..n + window {
            let req = format!("u{i}");
            let reply = mallory
                .take("a reply", |v| v["req"] == json!(req))
                .await
                .unwrap();
            assert_eq!(reply["code"], "not_found", "{reply}");
        }
        n += window;
    }
    let started_after = started(addr.clone()).await;
    let live_after = live(addr.clone()).await;
    println!(
        "conversation actors: started {started_before} → {started_after}, live {live_before} → {live_after}"
    );
    assert_eq!(
        started_after, started_before,
        "no actor started for {N} unknown conversations"
    );
    assert!(live_after <= live_before);
    // The one that exists is served as before.
    mallory
        .ok(
            json!({"type":"send","conv":real,"body":"still here"}),
            "ack",
        )
        .await;
}
