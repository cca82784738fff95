//! Appends: W senders over K conversations, each waiting for its ack, so
//! the figure is acknowledged durable events per second and ack latency.
//! Each conversation has one member, its sender, so no fan-out is measured.

use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;
use tidings_protocol::client::{Client, ClientConfig};

use crate::process::{own_cpu_seconds, Server};
use crate::report::{histogram, print, Latency};
use crate::rooms::{token, SECRET};
use crate::ServerArgs;

#[derive(Debug, Clone, clap::Args)]
pub(crate) struct Args {
    #[command(flatten)]
    pub(crate) server: ServerArgs,
    /// Concurrent senders, each waiting for its own ack.
    #[arg(long, default_value_t = 200)]
    pub(crate) senders: usize,
    /// Conversations the senders write to.
    #[arg(long, default_value_t = 1000)]
    pub(crate) convs: usize,
    #[arg(long, default_value_t = 10)]
    pub(crate) seconds: u64,
}

#[derive(Debug, Serialize)]
pub(crate) struct AppendsResult {
    pub(crate) senders: usize,
    pub(crate) convs: usize,
    pub(crate) acked: u64,
    pub(crate) acked_per_sec: f64,
    pub(crate) ack_latency: Latency,
    pub(crate) server_cpu_seconds: f64,
    pub(crate) server_cpu_us_per_ack: f64,
    pub(crate) generator_cpu_us_per_ack: f64,
    /// The rate at which the server and this generator together would keep
    /// every core of the machine busy: no server can be measured above it
    /// here, however fast.
    pub(crate) machine_ceiling_acks_per_sec: f64,
}

pub(crate) async fn run(args: Args) -> anyhow::Result<serde_json::Value> {
    anyhow::ensure!(
        args.senders > 0 && args.convs >= args.senders,
        "need convs >= senders > 0"
    );
    let server = Server::start(&args.server, &["--auth-secret", SECRET]).await?;
    let result = measure(&args, &server).await;
    server.stop().await;
    let result = result?;
    print("appends", &result);
    Ok(serde_json::to_value(result)?)
}

async fn measure(args: &Args, server: &Server) -> anyhow::Result<AppendsResult> {
    let url = format!("ws://{}", server.addr);
    let mut clients = Vec::new();
    for s in 0..args.senders {
        let (client, _pushes) =
            Client::connect(ClientConfig::new([url.clone()], token(&format!("w{s}"))));
        client.connected().await.context("sender connects")?;
        let mut convs = Vec::new();
        for _ in (s..args.convs).step_by(args.senders) {
            convs.push(client.create(Vec::new(), None).await?);
        }
        clients.push((client, convs));
    }
    let cpu_before = server.cpu_seconds()?;
    let own_before = own_cpu_seconds()?;
    let start = Instant::now();
    let deadline = start + Duration::from_secs(args.seconds);
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|(client, convs)| {
            tokio::spawn(async move {
                let mut latencies = histogram();
                let mut i = 0usize;
                while Instant::now() < deadline {
                    let began = Instant::now();
                    client.send(&convs[i % convs.len()], "x".repeat(64)).await?;
                    let _ = latencies.record(began.elapsed().as_micros().max(1) as u64);
                    i += 1;
                }
                client.close();
                anyhow::Ok(latencies)
            })
        })
        .collect();
    let mut all = histogram();
    for task in tasks {
        all.add(task.await??)?;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let server_cpu = server.cpu_seconds()? - cpu_before;
    let own_cpu = own_cpu_seconds()? - own_before;
    let acked = all.len();
    let per_ack = |cpu: f64| cpu * 1e6 / acked.max(1) as f64;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    Ok(AppendsResult {
        senders: args.senders,
        convs: args.convs,
        acked,
        acked_per_sec: acked as f64 / elapsed,
        ack_latency: Latency::of(&all),
        server_cpu_seconds: server_cpu,
        server_cpu_us_per_ack: per_ack(server_cpu),
        generator_cpu_us_per_ack: per_ack(own_cpu),
        machine_ceiling_acks_per_sec: cores * 1e6 / (per_ack(server_cpu) + per_ack(own_cpu)),
    })
}
