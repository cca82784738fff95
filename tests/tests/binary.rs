//! The `tidings` binary as a child process: refusing bad configuration,
//! shutting down cleanly on SIGTERM, losing nothing acknowledged to
//! SIGKILL, and holding more connections than the soft open-file limit it
//! was started with.
//!
//! `make test` builds the binary first; `TIDINGS_BIN` may point elsewhere
//! (see `tidings_tests::process`).

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{json, Value};
use tidings_tests::process::{self, binary};
use tidings_tests::{token, Closed, Ws, WAIT};
use tokio::process::{Child, Command};

/// Starts the binary on port 0 over `data` and returns it with its address.
async fn start(data: &Path) -> (Child, String) {
    process::spawn(data, std::iter::empty::<&str>()).await
}

#[tokio::test]
async fn refuses_to_start_without_an_auth_secret() {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(binary())
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .env_remove("TIDINGS_AUTH_SECRET")
        .env_remove("TIDINGS_DEV")
        .output()
        .await
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("auth secret"), "{stderr}");
}

#[tokio::test]
async fn sigterm_closes_sockets_with_1001_and_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, addr) = start(dir.path()).await;
    let mut alice = Ws::connect(&format!("ws://{addr}/v1/ws"), &token("alice"))
        .await
        .unwrap();
    alice.ok(json!({"type":"ping"}), "pong").await;
    let status = std::process::Command::new("kill")
        .args(["-TERM", &child.id().unwrap().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(alice.closed().await, Closed::Code(1001));
    let exit = tokio::time::timeout(WAIT, child.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(exit.code(), Some(0));
}

/// A shell's usual soft limit of 1,024 open files (128 here) would turn
/// clients away from a node that is still idle: the node raises it to the
/// hard limit.
#[tokio::test]
async fn holds_more_connections_than_its_inherited_soft_file_limit() {
    const SOFT: u64 = 128;
    const CONNECTIONS: usize = 300;
    let (_, hard) = rlimit::Resource::NOFILE.get().unwrap();
    assert!(
        hard > 2 * CONNECTIONS as u64,
        "this test needs a hard open-file limit above {}; it is {hard}",
        2 * CONNECTIONS
    );
    let dir = tempfile::tempdir().unwrap();
    let (child, addr) = process::spawn_with_soft_file_limit(dir.path(), SOFT).await;
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", child.id().unwrap())).unwrap();
    let open_files: Vec<&str> = limits
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))
        .expect("a Max open files line")
        .split_whitespace()
        .collect();
    assert_eq!(
        open_files[..2],
        [hard.to_string(), hard.to_string()],
        "soft and hard open-file limits of the node"
    );
    let url = format!("ws://{addr}/v1/ws");
    let mut open = Vec::with_capacity(CONNECTIONS);
    for i in 0..CONNECTIONS {
        let mut ws = tokio::time::timeout(WAIT, Ws::connect(&url, &token(&format!("u{i}"))))
            .await
            .unwrap_or_else(|_| panic!("connection {i} was not answered"))
            .unwrap();
        ws.ok(json!({"type":"ping"}), "pong").await;
        open.push(ws);
    }
    // The first connections are still served.
    open[0].ok(json!({"type":"ping"}), "pong").await;
}

/// One acknowledged send: the version and body the node promised.
type Acked = BTreeMap<(String, u64), String>;

async fn send_until_killed(addr: String, user: String, conv: String) -> Acked {
    let mut acked = Acked::new();
    let Ok(mut ws) = Ws::connect(&format!("ws://{addr}/v1/ws"), &token(&user)).await else {
        return acked;
    };
    for i in 0..100_000u64 {
        let body = format!("{user}-{i}");
        ws.send(json!({"type":"send","req":body,"conv":conv,"body":body,"cmid":body}))
            .await;
        match ws.take("ack", |v| v["req"] == json!(body)).await {
            Ok(reply) if reply["type"] == "ack" => {
                acked.insert((conv.clone(), reply["version"].as_u64().unwrap()), body);
            }
            // The node is gone: whatever was acked before is what counts.
            _ => break,
        }
    }
    acked
}

#[tokio::test]
async fn every_acknowledged_event_survives_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, addr) = start(dir.path()).await;
    let url = format!("ws://{addr}/v1/ws");
    let mut owner = Ws::connect(&url, &token("owner")).await.unwrap();
    let members: Vec<String> = (0..4).map(|i| format!("writer{i}")).collect();
    let mut convs = Vec::new();
    for _ in 0..3 {
        convs.push(owner.create(&members).await);
    }
    let senders: Vec<_> = members
        .iter()
        .enumerate()
        .map(|(i, user)| {
            tokio::spawn(send_until_killed(
                addr.clone(),
                user.clone(),
                convs[i % convs.len()].clone(),
            ))
        })
        .collect();
    // Kill in the middle of the stream, once plenty has been acknowledged.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let reply = owner
            .ok(
                json!({"type":"history","conv":convs[0],"limit":1}),
                "history",
            )
            .await;
        if reply["version"].as_u64().unwrap() >= 100 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "senders made no progress"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    child.kill().await.unwrap();
    let mut acked = Acked::new();
    for sender in senders {
        acked.extend(sender.await.unwrap());
    }
    assert!(
        acked.len() >= 100,
        "only {} acks before the kill",
        acked.len()
    );

    let (child, addr) = start(dir.path()).await;
    let mut owner = Ws::connect(&format!("ws://{addr}/v1/ws"), &token("owner"))
        .await
        .unwrap();
    let mut stored: BTreeMap<(String, u64), Value> = BTreeMap::new();
    for conv in &convs {
        let mut after = 0;
        loop {
            let page = owner
                .ok(
                    json!({"type":"history","conv":conv,"after":after,"limit":200}),
                    "history",
                )
                .await;
            let events = page["events"].as_array().unwrap();
            if events.is_empty() {
                break;
            }
            for event in events {
                let version = event["version"].as_u64().unwrap();
                assert_eq!(version, after + 1, "versions of {conv} are contiguous");
                after = version;
                stored.insert((conv.clone(), version), event.clone());
            }
        }
        // Versions continue after the restart with no gap or reuse.
        let next = owner
            .ok(
                json!({"type":"send","conv":conv,"body":"after restart"}),
                "ack",
            )
            .await;
        assert_eq!(next["version"], after + 1);
    }
    for ((conv, version), body) in &acked {
        let event = stored
            .get(&(conv.clone(), *version))
            .unwrap_or_else(|| panic!("acknowledged {conv}#{version} ({body}) is lost"));
        assert_eq!(event["body"], json!(body), "{conv}#{version}");
    }
    println!(
        "acknowledged before SIGKILL: {}, stored after restart: {} events, lost: 0",
        acked.len(),
        stored.len()
    );
    drop(child);
}
