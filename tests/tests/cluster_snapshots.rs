//! Raft log compaction on real binaries: the shards' logs are purged
//! behind snapshots, and a node that was down for the purged entries
//! catches up from a snapshot with every record.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde_json::Value;
use tidings_actors::shard::shard_of;
use tidings_actors::storage::records::{StoredEvent, StoredKind};
use tidings_actors::storage::{Cf, Storage};
use tidings_protocol::{ConvId, UserId};
use tidings_tests::cluster::{client, form, one_cluster_at_a_time, Member};
use tidings_tests::eventually;

/// Entries a shard applies between snapshots in this test.
const SNAPSHOT_EVERY: u64 = 20;
/// Messages sent to each conversation while n3 is down: enough for two
/// snapshots of its shard and a purge well past where n3 stopped.
const MESSAGES: usize = 3 * SNAPSHOT_EVERY as usize;

fn index(shard: &Value, field: &str) -> Option<u64> {
    shard[field].as_u64()
}

/// `field` of each of `shards` in `node`'s view, once it has all of them.
async fn indexes(node: &Member, shards: &[u64], field: &str) -> Option<BTreeMap<u64, u64>> {
    let view = node.shards().await?;
    shards
        .iter()
        .map(|&s| Some((s, index(view.get(s as usize)?, field)?)))
        .collect()
}

/// Waits until `node` has applied, in each of `shards`, what `reference`
/// has applied now.
async fn catch_up(node: &Member, reference: &Member, shards: &[u64]) {
    let goal = indexes(reference, shards, "committed").await.unwrap();
    let what = format!("{} to apply what {} applied", node.id, reference.id);
    eventually(&what, || async {
        let applied = indexes(node, shards, "committed").await?;
        shards.iter().all(|s| applied[s] >= goal[s]).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_missed_purged_entries_catches_up_from_a_snapshot() {
    let _turn = one_cluster_at_a_time().await;
    let members = ["n1", "n2", "n3"].map(|id| {
        let mut member = Member::new(id);
        member.args = vec!["--snapshot-every".into(), SNAPSHOT_EVERY.to_string()];
        member
    });
    let all: Vec<SocketAddr> = members.iter().map(|m| m.cluster).collect();
    let mut nodes = form(members.into()).await;

    let writer = client("writer", &nodes[..2], 0).0;
    let reader: UserId = "reader".try_into().unwrap();
    let mut convs = Vec::new();
    for _ in 0..3 {
        convs.push(writer.create(vec![reader.clone()], None).await.unwrap());
    }
    let mut shards: Vec<u64> = convs
        .iter()
        .map(|c| u64::from(shard_of(c.as_str()).0))
        .collect();
    shards.sort();
    shards.dedup();

    // n3 goes down; what it has applied of those shards is what n1 has.
    let at_kill = eventually("n1's applied indexes", || {
        indexes(&nodes[0], &shards, "committed")
    })
    .await;
    nodes[2].kill().await;

    let mut sent: BTreeMap<ConvId, Vec<String>> = BTreeMap::new();
    for i in 0..MESSAGES {
        for conv in &convs {
            let body = format!("{conv} #{i}");
            writer.send(conv, body.clone()).await.unwrap();
            sent.entry(conv.clone()).or_default().push(body);
        }
    }

    // Both remaining replicas purge their logs past where n3 stopped, so
    // whichever leads can give n3 only a snapshot.
    for node in &nodes[..2] {
        eventually(&format!("{} to purge past n3", node.id), || async {
            let purged = indexes(node, &shards, "purged").await?;
            shards.iter().all(|s| purged[s] > at_kill[s]).then_some(())
        })
        .await;
    }

    nodes[2].start(&all).await;
    catch_up(&nodes[2], &nodes[0], &shards).await;
    let snapshots = indexes(&nodes[2], &shards, "snapshot").await.unwrap();
    for s in &shards {
        assert!(
            snapshots[s] > at_kill[s],
            "shard {s}: n3 holds a snapshot past where it stopped"
        );
    }

    // n3's own storage holds every conversation whole.
    nodes[2].stop().await;
    let storage = Storage::open(nodes[2].data.path()).unwrap();
    for (conv, bodies) in &sent {
        let log: Vec<(u64, StoredEvent)> = storage
            .log_range(Cf::ConvLog, conv.as_str(), 0, u64::MAX, 10_000, false)
            .unwrap();
        let versions: Vec<u64> = log.iter().map(|(v, _)| *v).collect();
        assert_eq!(versions, (1..=bodies.len() as u64 + 1).collect::<Vec<_>>());
        assert!(matches!(log[0].1.kind, StoredKind::Created { .. }));
        let stored: Vec<&str> = log[1..]
            .iter()
            .map(|(_, e)| match &e.kind {
                StoredKind::Message { body, .. } => body.as_str(),
                other => panic!("{conv}: unexpected {other:?}"),
            })
            .collect();
        assert_eq!(stored, *bodies, "{conv} on n3");
    }
    drop(storage);

    // Restarted again, with a log that now starts past its purge, n3 rejoins
    // and goes on applying.
    nodes[2].start(&all).await;
    writer.send(&convs[0], "after").await.unwrap();
    catch_up(&nodes[2], &nodes[0], &shards).await;
}
