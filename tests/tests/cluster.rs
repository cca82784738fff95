//! Several `tidings` binaries on loopback forming one cluster: in any start
//! order, seeing a killed or frozen node go down, and seeing it come back
//! when it is restarted or resumed.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde_json::Value;
use tidings_tests::cluster::Member;
use tidings_tests::{eventually, http, process};

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
