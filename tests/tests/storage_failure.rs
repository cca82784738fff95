//! A node whose disk fills up: writes are refused (never acknowledged),
//! `/healthz` says why with 503, and once space is back the node recovers
//! by itself, without a restart, having lost nothing it acknowledged.
//!
//! The data directory is a small tmpfs, mounted for the test: it needs
//! root (or CAP_SYS_ADMIN); without it the test says so and passes.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};
use tidings_tests::{http, process, token, Ws};

/// The tmpfs's size. RocksDB resumes writes after a full disk only once
/// there is room for a memtable (64 MiB) again.
const SIZE_MIB: u64 = 160;
/// Room left when the node starts: less than RocksDB preallocates for a
/// write-ahead log (70 MiB), so the log's appends are what meets the full
/// disk, as they would on a real one that is nearly full.
const ROOM_MIB: u64 = 12;

/// A tmpfs mounted on a directory, unmounted when dropped.
struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    fn mount(path: &Path, size_mib: u64) -> Result<Tmpfs, String> {
        let output = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size_mib}m"), "tmpfs"])
            .arg(path)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !output.status.success() {
            return Err(String::from_utf8_lossy(&output.stderr).trim().to_owned());
        }
        Ok(Tmpfs {
            path: path.to_owned(),
        })
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazy: the node's files may still be closing.
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

/// Writes `path` in chunks of `chunk` bytes until the disk refuses one, or
/// `most` bytes; returns how much was written.
fn fill(path: &Path, chunk: usize, most: u64) -> u64 {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    let block = vec![0x5au8; chunk];
    let mut written = 0;
    while written + chunk as u64 <= most {
        if file
            .write_all(&block)
            .and_then(|()| file.sync_data())
            .is_err()
        {
            break;
        }
        written += chunk as u64;
    }
    written
}

async fn healthz(addr: &str) -> (u16, Value) {
    let response = http()
        .get(format!("http://{addr}/healthz"))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

/// One send with `cmid`: its ack's version, or the error's code.
async fn send(ws: &mut Ws, conv: &str, cmid: &str) -> Result<u64, String> {
    let body = format!("{cmid} {}", "x".repeat(16 * 1024 - 64));
    let reply = ws
        .request(json!({"type":"send","conv":conv,"body":body,"cmid":cmid}))
        .await;
    match reply["type"].as_str() {
        Some("ack") => Ok(reply["version"].as_u64().unwrap()),
        _ => Err(reply["code"].as_str().unwrap_or("?").to_owned()),
    }
}

#[tokio::test]
async fn a_full_disk_fails_writes_and_healthz_until_space_is_back_and_nothing_acked_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let mount = dir.path().join("mnt");
    std::fs::create_dir(&mount).unwrap();
    let _tmpfs = match Tmpfs::mount(&mount, SIZE_MIB) {
        Ok(tmpfs) => tmpfs,
        Err(why) => {
            eprintln!("skipped: cannot mount a tmpfs for the full disk ({why}); run as root");
            return;
        }
    };
    let data = mount.join("data");
    std::fs::create_dir(&data).unwrap();
    // Most of the disk is taken before the node starts.
    let ballast = mount.join("ballast");
    let taken = fill(&ballast, 1 << 20, (SIZE_MIB - ROOM_MIB) << 20);
    assert_eq!(taken, (SIZE_MIB - ROOM_MIB) << 20);
    // Declared after the mount: dropped (killed) before it is unmounted.
    let (_node, addr) =
        process::spawn(&data, ["--rate-limit", "100000", "--rate-burst", "100000"]).await;
    let mut alice = Ws::subscribed(&format!("ws://{addr}/v1/ws"), &token("alice")).await;
    let conv = alice.create::<&str>([]).await;
    let mut acked: Vec<(String, u64)> = Vec::new();
    let mut refused: Vec<String> = Vec::new();
    for i in 0..5 {
        let cmid = format!("before-{i}");
        let version = send(&mut alice, &conv, &cmid)
            .await
            .expect("room for these");
        acked.push((cmid, version));
    }
    assert_eq!(healthz(&addr).await.0, 200);

    // Fill the rest until the disk refuses even a small write.
    let filler = mount.join("filler");
    fill(&filler, 1 << 20, SIZE_MIB << 20);
    fill(&filler, 4096, SIZE_MIB << 20);
    let mut failing = None;
    for i in 0..500 {
        let cmid = format!("full-{i}");
        match send(&mut alice, &conv, &cmid).await {
            Ok(version) => acked.push((cmid, version)),
            Err(code) => {
                assert_eq!(code, "internal", "a failed write is an internal error");
                refused.push(cmid);
                let (status, body) = healthz(&addr).await;
                if status == 503 {
                    failing = Some(body);
                    break;
                }
            }
        }
    }
    let body = failing.expect("writes never failed on a full disk");
    println!("healthz on a full disk: {body}");
    assert_eq!(body["status"], "failing");
    let reason = body["reason"].as_str().unwrap();
    assert!(reason.to_lowercase().contains("space"), "{reason}");
    // Still refused while the disk is full, and still 503.
    for i in 0..3 {
        let cmid = format!("still-full-{i}");
        assert_eq!(send(&mut alice, &conv, &cmid).await, Err("internal".into()));
        refused.push(cmid);
    }
    assert_eq!(healthz(&addr).await.0, 503);

    // Space is back: the node recovers by itself.
    std::fs::remove_file(&filler).unwrap();
    std::fs::remove_file(&ballast).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (status, body) = healthz(&addr).await;
        if status == 200 {
            assert_eq!(body["status"], "ok");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the node did not recover: {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for i in 0..5 {
        let cmid = format!("after-{i}");
        let version = send(&mut alice, &conv, &cmid)
            .await
            .expect("writes succeed again");
        acked.push((cmid, version));
    }

    // Every acknowledged send is in history at its version, and none of
    // the refused ones is.
    let mut stored: Vec<(String, u64)> = Vec::new();
    let mut after = 0;
    for _ in 0..1000 {
        let page = alice
            .ok(
                json!({"type":"history","conv":conv,"after":after,"limit":200}),
                "history",
            )
            .await;
        let events = page["events"].as_array().unwrap();
        let Some(last) = events.last() else { break };
        after = last["version"].as_u64().unwrap();
        stored.extend(events.iter().filter(|e| e["kind"] == "message").map(|e| {
            (
                e["cmid"].as_str().unwrap().to_owned(),
                e["version"].as_u64().unwrap(),
            )
        }));
    }
    assert_eq!(stored, acked, "what was acknowledged, and only that");
    for cmid in &refused {
        assert!(
            !stored.iter().any(|(c, _)| c == cmid),
            "{cmid} was refused yet stored"
        );
    }
    // A refused send sent again is stored now, as new.
    let again = alice
        .ok(
            json!({"type":"send","conv":conv,"body":"again","cmid":refused[0]}),
            "ack",
        )
        .await;
    assert_eq!(again["dup"], false);
}
