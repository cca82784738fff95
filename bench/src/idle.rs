//! Idle: ramp to N authenticated connections that do nothing, and report
//! the server's resident memory per connection.
//!
//! One process may hold about 20,000 open files here, so N beyond ~19,000
//! needs several generator processes; the default stays below that.

use std::time::Instant;

use anyhow::Context;
use serde::Serialize;

use crate::process::Server;
use crate::report::print;
use crate::rooms::{token, SECRET};
use crate::ServerArgs;

#[derive(Debug, Clone, clap::Args)]
pub(crate) struct Args {
    #[command(flatten)]
    pub(crate) server: ServerArgs,
    #[arg(long, default_value_t = 10_000)]
    pub(crate) connections: usize,
}

#[derive(Debug, Serialize)]
struct IdleResult {
    connections: usize,
    ramp_seconds: f64,
    rss_before_mib: f64,
    rss_after_mib: f64,
    rss_per_connection_kib: f64,
}

pub(crate) async fn run(args: Args) -> anyhow::Result<serde_json::Value> {
    let server = Server::start(&args.server, &["--auth-secret", SECRET]).await?;
    let before = server.rss_kib()?;
    let start = Instant::now();
    let mut sockets = Vec::with_capacity(args.connections);
    for batch in (0..args.connections).collect::<Vec<_>>().chunks(500) {
        let opened = futures_util::future::join_all(batch.iter().map(|i| {
            let url = format!(
                "ws://{}/v1/ws?token={}",
                server.addr,
                token(&format!("idle{i}"))
            );
            async move { tokio_tungstenite::connect_async(url.as_str()).await }
        }))
        .await;
        for socket in opened {
            sockets.push(socket.context("opening an idle connection")?.0);
        }
    }
    let ramp = start.elapsed().as_secs_f64();
    let after = server.rss_kib()?;
    let result = IdleResult {
        connections: sockets.len(),
        ramp_seconds: ramp,
        rss_before_mib: before as f64 / 1024.0,
        rss_after_mib: after as f64 / 1024.0,
        rss_per_connection_kib: after.saturating_sub(before) as f64 / sockets.len().max(1) as f64,
    };
    drop(sockets);
    server.stop().await;
    print("idle", &result);
    Ok(serde_json::to_value(result)?)
}
