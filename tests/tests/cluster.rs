//! Several `tidings` binaries on loopback forming one cluster: in any start
//! order, seeing a killed or frozen node go down, and seeing it come back
//! when it is restarted or resumed.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde_json::Value;
use tempfile::TempDir;
use tidings_tests::{eventually, http, process};
use tokio::process::Child;

const COOKIE: &str = "cluster-test-cookie";

struct Member {
    id: &'static str,
    cluster: SocketAddr,
    data: TempDir,
    child: Option<Child>,
    http: String,
}

/// A free loopback port for a node's cluster address, which the other
/// nodes must know before it starts.
fn free_addr() -> SocketAddr {
    let socket = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    socket.local_addr().unwrap()
}

impl Member {
    fn new(id: &'static str) -> Member {
        Member {
            id,
            cluster: free_addr(),
            data: tempfile::tempdir().unwrap(),
            child: None,
            http: String::new(),
        }
    }

    async fn start(&mut self, all: &[SocketAddr]) {
        // Every node gets the same list, its own address included.
        let join: Vec<String> = all.iter().map(ToString::to_string).collect();
        let (child, http) = process::spawn(
            self.data.path(),
            [
                "--node-id",
                self.id,
                "--cluster-listen",
                &self.cluster.to_string(),
                "--join",
                &join.join(","),
                "--cluster-cookie",
                COOKIE,
                "--peer-timeout",
                "1s",
            ],
        )
        .await;
        self.child = Some(child);
        self.http = http;
    }

    fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().unwrap().id().unwrap();
        let status = std::process::Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill {signal} {pid}");
    }

    /// This node's view: cluster address → (node id, "up" or "down").
    async fn view(&self) -> Option<BTreeMap<String, (String, String)>> {
        let view: Value = http()
            .get(format!("http://{}/v1/cluster", self.http))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        assert_eq!(view["node"], self.id);
        let nodes = view["nodes"].as_array()?;
        Some(
            nodes
                .iter()
                .map(|n| {
                    (
                        n["addr"].as_str().unwrap_or_default().to_owned(),
                        (
                            n["id"].as_str().unwrap_or_default().to_owned(),
                            n["state"].as_str().unwrap_or_default().to_owned(),
                        ),
                    )
                })
                .collect(),
        )
    }
}

/// Waits until `observer` sees every node of `members` as `expected[i]`.
async fn sees(observer: &Member, members: &[Member], expected: &[&str]) {
    let want: BTreeMap<String, (String, String)> = members
        .iter()
        .zip(expected)
        .map(|(m, state)| {
            (
                m.cluster.to_string(),
                (m.id.to_owned(), (*state).to_owned()),
            )
        })
        .collect();
    let what = format!("{} to see {want:?}", observer.id);
    eventually(&what, || async {
        (observer.view().await? == want).then_some(())
    })
    .await;
}

#[tokio::test]
async fn nodes_form_one_cluster_in_any_order_and_notice_loss_and_return() {
    let mut members = [Member::new("n1"), Member::new("n2"), Member::new("n3")];
    let all: Vec<SocketAddr> = members.iter().map(|m| m.cluster).collect();
    // Started out of order: whoever comes first dials peers not yet there.
    for i in [2, 0, 1] {
        members[i].start(&all).await;
    }
    for observer in &members {
        sees(observer, &members, &["up", "up", "up"]).await;
    }

    // SIGKILL: the links close at once.
    members[1].child.as_mut().unwrap().kill().await.unwrap();
    sees(&members[0], &members, &["up", "down", "up"]).await;
    sees(&members[2], &members, &["up", "down", "up"]).await;

    // Restarted with its data and addresses, it rejoins.
    members[1].start(&all).await;
    for observer in &members {
        sees(observer, &members, &["up", "up", "up"]).await;
    }

    // SIGSTOP: the links stay open, but the heartbeats go unanswered.
    members[2].signal("-STOP");
    sees(&members[0], &members, &["up", "up", "down"]).await;
    sees(&members[1], &members, &["up", "up", "down"]).await;
    members[2].signal("-CONT");
    for observer in &members {
        sees(observer, &members, &["up", "up", "up"]).await;
    }
}

#[tokio::test]
async fn a_node_alone_lists_only_itself() {
    let data = tempfile::tempdir().unwrap();
    let (_child, addr) = process::spawn(data.path(), ["--node-id", "solo"]).await;
    let view: Value = http()
        .get(format!("http://{addr}/v1/cluster"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(view["node"], "solo");
    assert_eq!(view["nodes"].as_array().unwrap().len(), 1);
    assert_eq!(view["nodes"][0]["self"], true);
}
