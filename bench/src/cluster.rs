//! `cluster`: rooms against one Tidings node and against three nodes as one
//! cluster on the same cores, runs interleaved, as medians and the ratio of
//! the cluster's figure to the single node's; then failover: the time from
//! SIGKILLing the node that leads the most shards until every conversation
//! takes writes again.

use std::time::{Duration, Instant};

use anyhow::Context;
use tidings_protocol::client::{Client, ClientConfig};
use tidings_protocol::{Cmid, UserId};

use crate::compare::{interleaved, median, FIGURES};
use crate::process::{Server, CLUSTER_NODES};
use crate::rooms::{token, Args, SECRET};
use crate::Target;

/// Conversations written to across a failover.
const FAILOVER_CONVS: usize = 24;

pub(crate) async fn cluster(
    args: Args,
    runs: usize,
    failovers: usize,
) -> anyhow::Result<serde_json::Value> {
    anyhow::ensure!(
        runs > 0 && failovers > 0,
        "--runs and --failovers must be at least 1"
    );
    let targets = [Target::Tidings, Target::TidingsCluster];
    let results = interleaved(&args, &targets, runs).await?;
    println!(
        "medians of {runs} runs, {} connections, {} msg/s offered; cluster = {CLUSTER_NODES} nodes on the same cores",
        args.groups * args.members,
        args.rate
    );
    println!(
        "  {:<30} {:>10} {:>10}   cluster over one node",
        "figure", "one node", "cluster"
    );
    let mut json = serde_json::Map::new();
    for (name, f) in FIGURES {
        let one = median(results[0].iter().map(f).collect());
        let many = median(results[1].iter().map(f).collect());
        let ratio = if one == 0.0 { f64::NAN } else { many / one };
        println!("  {name:<30} {one:>10.2} {many:>10.2}   {ratio:.2}");
        json.insert(
            name.into(),
            serde_json::json!({ "one_node": one, "cluster": many, "cluster_over_one_node": ratio }),
        );
    }

    let mut times = Vec::new();
    for run in 0..failovers {
        let seconds = failover(&args).await?;
        eprintln!(
            "failover {} of {failovers}: every conversation writable again after {seconds:.2} s",
            run + 1
        );
        times.push(seconds);
    }
    let failover_s = median(times.clone());
    println!("  failover (median of {failovers}): {failover_s:.2} s from SIGKILL of the busiest leader to every conversation writable");
    json.insert(
        "failover_s".into(),
        serde_json::json!({ "median": failover_s, "runs": times }),
    );
    json.insert("runs".into(), serde_json::to_value(&results)?);
    Ok(serde_json::Value::Object(json))
}

/// One failover: a fresh cluster, conversations over every shard's leader,
/// SIGKILL of the node leading the most shards, then a write to every
/// conversation at once, each resent by its client until acknowledged.
/// Returns the seconds until the last of them was acknowledged.
async fn failover(args: &Args) -> anyhow::Result<f64> {
    let mut server_args = args.server.clone();
    server_args.target = Target::TidingsCluster;
    let mut server = Server::start(&server_args, &["--auth-secret", SECRET]).await?;
    let view = server.cluster_view(0).await.context("the cluster view")?;
    let mut counts = [0usize; CLUSTER_NODES];
    for shard in view["shards"].as_array().context("shards")? {
        let leader = shard["leader"].as_str().unwrap_or_default();
        if let Some(n) = leader
            .strip_prefix('n')
            .and_then(|n| n.parse::<usize>().ok())
        {
            counts[n - 1] += 1;
        }
    }
    let victim = (0..CLUSTER_NODES).max_by_key(|&i| counts[i]).unwrap_or(0);
    let survivors: Vec<String> = (0..CLUSTER_NODES)
        .filter(|&i| i != victim)
        .map(|i| format!("ws://{}", server.addrs[i]))
        .collect();
    let mut config = ClientConfig::new(survivors, token("writer"));
    config.request_timeout = Duration::from_secs(30);
    let (client, _) = Client::connect(config);
    let reader: UserId = "reader".try_into()?;
    let mut convs = Vec::new();
    for _ in 0..FAILOVER_CONVS {
        convs.push(client.create(vec![reader.clone()], None).await?);
    }
    server.kill(victim).await?;
    let killed = Instant::now();
    let writes = convs.iter().enumerate().map(|(i, conv)| {
        let client = client.clone();
        async move {
            let cmid = Cmid::try_from(format!("after-kill-{i}"))?;
            client
                .send_with(conv, "after the kill", Some(cmid), None)
                .await
                .with_context(|| format!("writing to {conv} after the kill"))?;
            anyhow::Ok(killed.elapsed())
        }
    });
    let took = futures_util::future::try_join_all(writes).await?;
    client.close();
    server.stop().await;
    Ok(took.into_iter().max().unwrap_or_default().as_secs_f64())
}
