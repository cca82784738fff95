//! Catch-up: a device is offline while X events happen in its
//! conversations; measures the time from reconnecting to fully synced
//! (`sync`, then `history` pages while `more` is set).

use std::collections::BTreeMap;
use std::time::Instant;

use serde::Serialize;
use tidings_protocol::client::{Client, ClientConfig};
use tidings_protocol::frames::ServerFrame;
use tidings_protocol::ClientFrame;

use crate::process::Server;
use crate::report::print;
use crate::rooms::{token, SECRET};
use crate::ServerArgs;

#[derive(Debug, Clone, clap::Args)]
pub(crate) struct Args {
    #[command(flatten)]
    pub(crate) server: ServerArgs,
    /// Events written while the device is away.
    #[arg(long, default_value_t = 10_000)]
    pub(crate) events: usize,
    /// Conversations they are spread over.
    #[arg(long, default_value_t = 10)]
    pub(crate) convs: usize,
}

#[derive(Debug, Serialize)]
struct CatchupResult {
    events: usize,
    convs: usize,
    received: usize,
    sync_seconds: f64,
    events_per_second: f64,
}

pub(crate) async fn run(args: Args) -> anyhow::Result<serde_json::Value> {
    anyhow::ensure!(args.convs > 0, "--convs must be at least 1");
    let server = Server::start(&args.server, &["--auth-secret", SECRET]).await?;
    let url = format!("ws://{}", server.addr);
    let (writer, _) = Client::connect(ClientConfig::new([url.clone()], token("writer")));
    let mut seen = BTreeMap::new();
    let mut convs = Vec::new();
    for _ in 0..args.convs {
        let conv = writer.create(vec!["reader".try_into()?], None).await?;
        seen.insert(conv.clone(), 1u64);
        convs.push(conv);
    }
    // The reader is away: nothing is connected as "reader" while these land.
    for start in (0..args.events).step_by(64) {
        let batch = (start..(start + 64).min(args.events))
            .map(|i| writer.send(&convs[i % convs.len()], format!("missed {i}")));
        for result in futures_util::future::join_all(batch).await {
            result?;
        }
    }
    writer.close();

    let start = Instant::now();
    let (reader, _) = Client::connect(ClientConfig::new([url], token("reader")));
    let mut received = 0usize;
    let frame = ClientFrame::Sync {
        convs: Some(seen.clone()),
        notifications: None,
        limit: Some(200),
    };
    let ServerFrame::Synced { convs: synced, .. } = reader.request(frame).await? else {
        anyhow::bail!("sync did not answer with synced");
    };
    for conv in synced {
        received += conv.events.len();
        let mut last = conv.events.last().map_or(seen[&conv.conv], |e| e.version);
        let mut more = conv.more;
        while more {
            let (version, events) = reader
                .history(&conv.conv, Some(last), None, Some(200))
                .await?;
            received += events.len();
            last = events.last().map_or(version, |e| e.version);
            more = !events.is_empty() && last < version;
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    reader.close();
    server.stop().await;
    let result = CatchupResult {
        events: args.events,
        convs: args.convs,
        received,
        sync_seconds: elapsed,
        events_per_second: received as f64 / elapsed,
    };
    print("catch-up", &result);
    Ok(serde_json::to_value(result)?)
}
