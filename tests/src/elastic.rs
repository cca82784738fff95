//! A cluster whose membership changes, as its nodes report it: every
//! shard's group as its leader says, each node's shares, whether they are
//! balanced, each node's membership state.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde_json::Value;
use tokio::time::Instant;

use crate::cluster::Member;
use crate::{eventually_within, http, API_KEY};

pub const SHARDS: usize = 64;
pub const REPLICAS: usize = 3;
/// How long a cluster may take to balance after one step.
pub const BALANCE: Duration = Duration::from_secs(180);

/// One shard's group as its leader reports it.
#[derive(Debug, Clone)]
pub struct Group {
    pub voters: BTreeSet<String>,
    pub learners: BTreeSet<String>,
    pub joint: bool,
    pub leader: String,
}

/// Every shard's group, each as the node leading it says, once every shard
/// has a leader that answers.
pub async fn groups(nodes: &[&Member]) -> Option<BTreeMap<u64, Group>> {
    let mut groups = BTreeMap::new();
    for node in nodes {
        let Some(shards) = node.shards().await else {
            continue;
        };
        for shard in shards {
            if shard["held"] != true || shard["leader"] != node.id {
                continue;
            }
            let names = |key: &str| -> BTreeSet<String> {
                shard[key]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|n| n.as_str().map(str::to_owned))
                    .collect()
            };
            groups.insert(
                shard["shard"].as_u64()?,
                Group {
                    voters: names("replicas"),
                    learners: names("learners"),
                    joint: shard["joint"] == true,
                    leader: node.id.to_owned(),
                },
            );
        }
    }
    (groups.len() == SHARDS).then_some(groups)
}

/// Replicas and leaderships per node.
pub fn shares(groups: &BTreeMap<u64, Group>) -> (BTreeMap<String, usize>, BTreeMap<String, usize>) {
    let mut replicas = BTreeMap::new();
    let mut leaders = BTreeMap::new();
    for group in groups.values() {
        for voter in &group.voters {
            *replicas.entry(voter.clone()).or_default() += 1;
        }
        *leaders.entry(group.leader.clone()).or_default() += 1;
    }
    (replicas, leaders)
}

/// Whether `groups` are settled and balanced over exactly `ids`: three
/// voters each, no learner, no joint configuration, every node within ±3
/// replicas and ±4 leaderships of its share.
pub fn balanced(groups: &BTreeMap<u64, Group>, ids: &[&str]) -> bool {
    let settled = groups
        .values()
        .all(|g| g.voters.len() == REPLICAS && g.learners.is_empty() && !g.joint);
    let (replicas, leaders) = shares(groups);
    let n = ids.len() as f64;
    let within = |count: usize, share: f64, slack: f64| (count as f64 - share).abs() <= slack;
    settled
        && replicas.keys().all(|id| ids.contains(&id.as_str()))
        && ids.iter().all(|id| {
            within(
                replicas.get(*id).copied().unwrap_or(0),
                (SHARDS * REPLICAS) as f64 / n,
                3.0,
            ) && within(
                leaders.get(*id).copied().unwrap_or(0),
                SHARDS as f64 / n,
                4.0,
            )
        })
}

/// Each node's membership state, as `node` reports the cluster record.
pub async fn memberships(node: &Member) -> Option<BTreeMap<String, String>> {
    let view = node.cluster_json().await?;
    view["nodes"]
        .as_array()?
        .iter()
        .map(|n| {
            Some((
                n["id"].as_str()?.to_owned(),
                n["membership"].as_str()?.to_owned(),
            ))
        })
        .collect()
}

/// Waits until the shards are balanced over `ids` and every one of them
/// is active; prints how long it took and the shares.
pub async fn until_balanced(step: &str, live: &[&Member], ids: &[&str]) -> Duration {
    let began = Instant::now();
    let groups = eventually_within(
        &format!("the cluster to balance after {step}"),
        BALANCE,
        || async {
            let groups = groups(live).await?;
            if !balanced(&groups, ids) {
                return None;
            }
            let states = memberships(live[0]).await?;
            ids.iter()
                .all(|id| states.get(*id).map(String::as_str) == Some("active"))
                .then_some(groups)
        },
    )
    .await;
    let took = began.elapsed();
    let (replicas, leaders) = shares(&groups);
    println!("{step}: balanced in {took:?}; replicas {replicas:?}; leaders {leaders:?}");
    took
}

/// `POST` or `DELETE` on a cluster endpoint of `node` with the API key.
pub async fn admin(node: &Member, method: reqwest::Method, path: &str) -> (u16, Value) {
    let response = http()
        .request(method, format!("http://{}{path}", node.http))
        .bearer_auth(API_KEY)
        .send()
        .await
        .expect("the node answers");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}
