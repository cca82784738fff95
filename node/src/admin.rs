//! `tidings cluster status|drain|remove`: the cluster endpoints of a
//! running node, from a shell. The API key comes from `TIDINGS_API_KEY`.

use std::net::SocketAddr;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use serde_json::Value;

#[derive(Debug, Args)]
pub struct ClusterArgs {
    #[command(subcommand)]
    pub action: Action,
    /// The HTTP address of any node of the cluster.
    #[arg(long, global = true, default_value = "127.0.0.1:8080")]
    pub addr: SocketAddr,
}

#[derive(Debug, Subcommand)]
pub enum Action {
    /// Every node with its state, each shard's group, the moves under way.
    Status,
    /// Moves everything off a node so it can be stopped.
    Drain {
        #[arg(long)]
        node: String,
    },
    /// Forgets a node that is down; its replicas are placed elsewhere.
    Remove {
        #[arg(long)]
        node: String,
    },
}

/// Runs `args` against the node and returns what to print.
pub async fn run(args: &ClusterArgs, api_key: Option<&str>) -> anyhow::Result<String> {
    let client = reqwest::Client::new();
    let base = format!("http://{}", args.addr);
    let request = match &args.action {
        Action::Status => client.get(format!("{base}/v1/cluster")),
        Action::Drain { node } => client.post(format!("{base}/v1/cluster/nodes/{node}/drain")),
        Action::Remove { node } => client.delete(format!("{base}/v1/cluster/nodes/{node}")),
    };
    let request = match (&args.action, api_key) {
        (Action::Status, _) => request,
        (_, Some(key)) => request.bearer_auth(key),
        (_, None) => bail!("set TIDINGS_API_KEY to the nodes' API key"),
    };
    let response = request
        .send()
        .await
        .with_context(|| format!("asking the node at {}", args.addr))?;
    let status = response.status();
    let body: Value = response
        .json()
        .await
        .with_context(|| format!("reading the answer of {}", args.addr))?;
    if !status.is_success() {
        let message = body["error"]["message"]
            .as_str()
            .unwrap_or("no reason given");
        bail!("{status}: {message}");
    }
    Ok(match &args.action {
        Action::Status => status_text(&body),
        _ => format!(
            "{}: {}",
            body["node"].as_str().unwrap_or_default(),
            body["membership"].as_str().unwrap_or("unknown")
        ),
    })
}

/// `GET /v1/cluster` as a table: one line per node with its replicas and
/// leaderships, then the moves under way.
pub fn status_text(view: &Value) -> String {
    let shards = view["shards"].as_array().cloned().unwrap_or_default();
    let count = |id: &str, key: &str| {
        shards
            .iter()
            .filter(|s| match &s[key] {
                Value::Array(names) => names.iter().any(|n| n == id),
                other => other == id,
            })
            .count()
    };
    let mut out = format!(
        "cluster {} (as node {} sees it)\n{:<16} {:<22} {:<5} {:<10} {:>8} {:>8}\n",
        view["cluster"].as_str().unwrap_or("-"),
        view["node"].as_str().unwrap_or("-"),
        "node",
        "addr",
        "link",
        "membership",
        "replicas",
        "leads"
    );
    for node in view["nodes"].as_array().into_iter().flatten() {
        let id = node["id"].as_str().unwrap_or("?");
        out.push_str(&format!(
            "{:<16} {:<22} {:<5} {:<10} {:>8} {:>8}\n",
            id,
            node["addr"].as_str().unwrap_or("-"),
            node["state"].as_str().unwrap_or("-"),
            node["membership"].as_str().unwrap_or("-"),
            count(id, "replicas"),
            count(id, "leader"),
        ));
    }
    let moves = view["moves"].as_array().cloned().unwrap_or_default();
    let changing = shards
        .iter()
        .filter(|s| s["joint"] == true || s["learners"].as_array().is_some_and(|l| !l.is_empty()))
        .count();
    out.push_str(&format!(
        "{} shards, {changing} changing; {} moves under way\n",
        shards.len(),
        moves.len()
    ));
    for step in moves {
        out.push_str(&format!("  {step}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn status_counts_each_nodes_replicas_and_leaderships() {
        let view = json!({
            "cluster": "00000000000000ab",
            "node": "n1",
            "nodes": [
                {"id": "n1", "addr": "127.0.0.1:1", "state": "up", "membership": "active"},
                {"id": "n2", "addr": "127.0.0.1:2", "state": "down", "membership": "draining"},
            ],
            "shards": [
                {"shard": 0, "replicas": ["n1", "n2"], "learners": [], "joint": false, "leader": "n1"},
                {"shard": 1, "replicas": ["n1"], "learners": ["n2"], "joint": false, "leader": "n1"},
            ],
            "moves": [{"shard": 1, "kind": "replica", "from": "n3", "to": "n2"}],
        });
        let text = status_text(&view);
        let line = |id: &str| text.lines().find(|l| l.starts_with(id)).unwrap().to_owned();
        let words = |l: String| l.split_whitespace().map(str::to_owned).collect::<Vec<_>>();
        assert_eq!(
            words(line("n1")),
            ["n1", "127.0.0.1:1", "up", "active", "2", "2"]
        );
        assert_eq!(
            words(line("n2")),
            ["n2", "127.0.0.1:2", "down", "draining", "1", "0"]
        );
        assert!(
            text.contains("2 shards, 1 changing; 1 moves under way"),
            "{text}"
        );
    }
}
