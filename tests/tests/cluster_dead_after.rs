//! A node that stays down is removed by the cluster itself once it has
//! been down for `--dead-after`, and its replicas are placed on the live
//! nodes; `tidings cluster` shows it and refuses what it must.

use std::process::Output;

use tidings_tests::cluster::{form, one_cluster_at_a_time, Member};
use tidings_tests::elastic::{memberships, until_balanced, BALANCE};
use tidings_tests::{eventually_within, process, API_KEY};

/// `tidings cluster <args>` against a node, with `key` as the API key.
async fn cli(args: &[&str], key: Option<&str>) -> Output {
    let mut command = tokio::process::Command::new(process::binary());
    command
        .arg("cluster")
        .args(args)
        .env_remove("TIDINGS_API_KEY");
    if let Some(key) = key {
        command.env("TIDINGS_API_KEY", key);
    }
    command.output().await.expect("the tidings binary runs")
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_down_past_dead_after_is_removed_and_its_replicas_placed_anew() {
    let _turn = one_cluster_at_a_time().await;
    let members = ["n1", "n2", "n3", "n4"].map(|id| {
        let mut member = Member::new(id);
        member.args = vec!["--dead-after".into(), "10s".into()];
        member
    });
    let mut nodes = form(members.into_iter().collect()).await;
    let all: Vec<&Member> = nodes.iter().collect();
    until_balanced("forming", &all, &["n1", "n2", "n3", "n4"]).await;
    let addr = nodes[0].http.clone();

    // The shell's view of the cluster, and its refusals.
    let status = cli(&["status", "--addr", &addr], None).await;
    let shown = text(&status);
    assert!(status.status.success(), "{shown}");
    for id in ["n1", "n2", "n3", "n4"] {
        let line = shown.lines().find(|l| l.starts_with(id));
        assert!(
            line.is_some_and(|l| l.contains("up") && l.contains("active")),
            "{id} in {shown}"
        );
    }
    let keyless = cli(&["remove", "--node", "n4", "--addr", &addr], None).await;
    assert_eq!(keyless.status.code(), Some(1), "{}", text(&keyless));
    assert!(
        text(&keyless).contains("TIDINGS_API_KEY"),
        "{}",
        text(&keyless)
    );
    let live = cli(&["remove", "--node", "n4", "--addr", &addr], Some(API_KEY)).await;
    assert_eq!(live.status.code(), Some(1), "{}", text(&live));
    assert!(
        text(&live).contains("409"),
        "a live node is not removed: {}",
        text(&live)
    );
    let wrong_key = cli(
        &["drain", "--node", "n4", "--addr", &addr],
        Some("not-the-key"),
    )
    .await;
    assert_eq!(wrong_key.status.code(), Some(1), "{}", text(&wrong_key));
    assert!(text(&wrong_key).contains("401"), "{}", text(&wrong_key));

    // n4 dies and nobody removes it: the cluster does, after 10 s.
    let killed = std::time::Instant::now();
    nodes[3].kill().await;
    eventually_within("n4 to be removed as dead", BALANCE, || async {
        let states = memberships(&nodes[0]).await?;
        (states.get("n4").map(String::as_str) == Some("removed")).then_some(())
    })
    .await;
    let removed_after = killed.elapsed();
    assert!(
        removed_after >= std::time::Duration::from_secs(10),
        "removed before --dead-after: {removed_after:?}"
    );
    let live: Vec<&Member> = nodes[..3].iter().collect();
    let took = until_balanced("n4 removed", &live, &["n1", "n2", "n3"]).await;
    println!("n4 removed {removed_after:?} after its SIGKILL, replicas placed anew {took:?} later");

    let status = cli(&["status", "--addr", &addr], None).await;
    let shown = text(&status);
    let line = shown
        .lines()
        .find(|l| l.starts_with("n4"))
        .unwrap_or_default();
    assert!(line.contains("removed"), "{shown}");
    // Nothing is left to drain onto: three nodes, three replicas.
    let drain = cli(&["drain", "--node", "n1", "--addr", &addr], Some(API_KEY)).await;
    assert_eq!(drain.status.code(), Some(1), "{}", text(&drain));
    assert!(
        text(&drain).contains("add a node first"),
        "{}",
        text(&drain)
    );
}
