//! Several `tidings` binaries on loopback forming one cluster: in any start
//! order, seeing a killed or frozen node go down, and seeing it come back
//! when it is restarted or resumed.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde_json::Value;
use tidings_tests::cluster::{one_cluster_at_a_time, Member};
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
    let _turn = one_cluster_at_a_time().await;
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

#[tokio::test]
async fn nodes_started_with_different_node_lists_form_no_groups_until_they_agree() {
    let _turn = one_cluster_at_a_time().await;
    let mut members = [Member::new("n1"), Member::new("n2"), Member::new("n3")];
    let all: Vec<SocketAddr> = members.iter().map(|m| m.cluster).collect();
    members[0].start(&all).await;
    members[1].start(&all).await;
    // n3 is given n1's address and its own only: a cluster of two.
    members[2].start(&[all[0], all[2]]).await;

    // Every node hears the others' counts: n3 counts 2, n1 and n2 count 3.
    for observer in &members {
        eventually(&format!("{} to hear every count", observer.id), || async {
            let view = observer.cluster_json().await?;
            let counts: BTreeMap<String, u64> = view["nodes"]
                .as_array()?
                .iter()
                .map(|n| Some((n["id"].as_str()?.to_owned(), n["nodes"].as_u64()?)))
                .collect::<Option<_>>()?;
            let want = BTreeMap::from([("n1".into(), 3), ("n2".into(), 3), ("n3".into(), 2)]);
            (counts == want).then_some(())
        })
        .await;
    }
    // Shards would be placed differently on each side: no node forms them.
    for node in &members {
        let shards = node.shards().await.unwrap();
        assert!(!shards.is_empty());
        assert!(
            shards.iter().all(|s| s["leader"].is_null()),
            "{} formed groups",
            node.id
        );
    }

    // Given the same list, n3 joins and the groups form.
    members[2].kill().await;
    members[2].start(&all).await;
    for node in &members {
        eventually(&format!("{} to see every shard led", node.id), || {
            node.leaders()
        })
        .await;
    }
}
