//! Idle: ramp to N authenticated connections that do nothing, and report
//! the server's resident memory per connection.
//!
//! Two limits stand between one machine and 100,000 connections. The
//! server, one process, must be allowed N open files and a few more: that
//! is checked before anything is opened, and with no `--connections` the
//! run takes 20,000 or what the limit allows, whichever is less. And one
//! loopback source address reaches the server's port from only the
//! ephemeral port range (about 28,000 ports): connections are spread over
//! 127.0.0.1, 127.0.0.2, … as N needs. The generator holds as many sockets
//! as the server, under the same limit, so one generator process suffices.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use serde::Serialize;
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::WebSocketStream;

use crate::process::Server;
use crate::report::print;
use crate::rooms::{token, SECRET};
use crate::{ServerArgs, Target};

/// Connections when `--connections` is not given and the limit allows.
const DEFAULT_CONNECTIONS: u64 = 20_000;

/// Open files the server needs besides its connections (its listener,
/// database and logs): kept free below the limit.
const SPARE_FILES: u64 = 128;

/// Connections opened at once.
const BATCH: usize = 500;

/// How long opening every connection may take.
const RAMP_LIMIT: Duration = Duration::from_secs(600);

/// How long the server may take to count the last connections.
const SETTLE: Duration = Duration::from_secs(10);

/// The idle connections never read, so never answer a ping: Tidings gets
/// heartbeat settings longer than any ramp, or it would close them.
const QUIET: [&str; 4] = ["--ping-interval", "1h", "--heartbeat-timeout", "2h"];

#[derive(Debug, Clone, clap::Args)]
pub(crate) struct Args {
    #[command(flatten)]
    pub(crate) server: ServerArgs,
    /// Idle connections to open [default: 20,000, or fewer if the
    /// open-file limit allows fewer]
    #[arg(long)]
    pub(crate) connections: Option<usize>,
    /// Loopback source addresses to spread the connections over
    /// (127.0.0.1, 127.0.0.2, …) [default: enough for the ephemeral port
    /// range in /proc/sys/net/ipv4/ip_local_port_range]
    #[arg(long, value_parser = clap::value_parser!(u8).range(1..=254))]
    pub(crate) source_addrs: Option<u8>,
}

#[derive(Debug, Serialize)]
struct IdleResult {
    connections: usize,
    source_addrs: u8,
    ramp_seconds: f64,
    rss_before_mib: f64,
    rss_after_mib: f64,
    rss_per_connection_kib: f64,
}

pub(crate) async fn run(args: Args) -> anyhow::Result<serde_json::Value> {
    let (files, _) = rlimit::Resource::NOFILE.get()?;
    let room = files.saturating_sub(SPARE_FILES);
    let n = match args.connections {
        Some(n) => {
            ensure!(n > 0, "--connections must be at least 1");
            ensure!(
                n as u64 <= room,
                "{n} idle connections need a server that may hold {} open files; \
                 processes here may hold {files} (ulimit -Hn): lower --connections \
                 or raise the hard limit",
                n as u64 + SPARE_FILES
            );
            n
        }
        None => {
            ensure!(room > 0, "processes here may hold only {files} open files");
            if room < DEFAULT_CONNECTIONS {
                eprintln!(
                    "idle: {room} connections, the most an open-file limit of {files} allows"
                );
            }
            room.min(DEFAULT_CONNECTIONS) as usize
        }
    };
    let ports = ephemeral_ports()?;
    let source_addrs = match args.source_addrs {
        Some(k) => k,
        // A tenth of the range is left for whatever else uses ports.
        None => match n.div_ceil((ports * 9 / 10).max(1)) {
            k @ 1..=254 => k as u8,
            _ => bail!(
                "{n} connections need more than 254 loopback source addresses \
                 of {ports} ephemeral ports each: widen net.ipv4.ip_local_port_range"
            ),
        },
    };
    ensure!(
        n <= ports * usize::from(source_addrs),
        "{n} connections from {source_addrs} source address(es) need more than \
         the {ports} ephemeral ports each has: raise --source-addrs"
    );

    // Every connection the bench opens is to be held, not shed at the
    // node's default cap (a tenth below its open-file limit).
    let cap = (n + 16).to_string();
    let mut flags = vec!["--auth-secret", SECRET, "--max-connections", &cap];
    flags.extend(QUIET);
    let server = Server::start(&args.server, &flags).await?;
    let addr: SocketAddr = server.addr.parse().context("the server's address")?;
    let before = server.rss_kib()?;
    let start = Instant::now();
    let sockets = open(addr, n, source_addrs).await?;
    let ramp = start.elapsed().as_secs_f64();
    if args.server.target == Target::Tidings {
        counted(&server, n).await?;
    }
    let after = server.rss_kib()?;
    let result = IdleResult {
        connections: sockets.len(),
        source_addrs,
        ramp_seconds: ramp,
        rss_before_mib: before as f64 / 1024.0,
        rss_after_mib: after as f64 / 1024.0,
        rss_per_connection_kib: after.saturating_sub(before) as f64 / n as f64,
    };
    drop(sockets);
    server.stop().await;
    print("idle", &result);
    Ok(serde_json::to_value(result)?)
}

/// Connections `0..n` as users `idle{i}`, connection `i` from
/// 127.0.0.(1 + i mod `source_addrs`).
async fn open(
    addr: SocketAddr,
    n: usize,
    source_addrs: u8,
) -> anyhow::Result<Vec<WebSocketStream<TcpStream>>> {
    let deadline = tokio::time::Instant::now() + RAMP_LIMIT;
    let mut sockets = Vec::with_capacity(n);
    for first in (0..n).step_by(BATCH) {
        let opened = tokio::time::timeout_at(
            deadline,
            futures_util::future::join_all((first..n.min(first + BATCH)).map(|i| {
                let source = Ipv4Addr::new(127, 0, 0, 1 + (i % usize::from(source_addrs)) as u8);
                connect(addr, source, i)
            })),
        )
        .await
        .with_context(|| format!("opening {n} connections took over {RAMP_LIMIT:?}"))?;
        for socket in opened {
            sockets.push(socket?);
        }
    }
    Ok(sockets)
}

async fn connect(
    addr: SocketAddr,
    source: Ipv4Addr,
    i: usize,
) -> anyhow::Result<WebSocketStream<TcpStream>> {
    let socket = TcpSocket::new_v4().with_context(|| format!("a socket for connection {i}"))?;
    // From 127.0.0.1 the kernel picks the port at connect time, and may
    // share it with connections to other servers; a bound address takes a
    // port of its own before it knows where it will connect.
    if source != Ipv4Addr::LOCALHOST {
        socket
            .bind(SocketAddr::from((source, 0)))
            .with_context(|| format!("binding a port on {source}"))?;
    }
    let stream = socket
        .connect(addr)
        .await
        .with_context(|| format!("connecting from {source} to {addr}"))?;
    let url = format!("ws://{addr}/v1/ws?token={}", token(&format!("idle{i}")));
    let (ws, _) = tokio_tungstenite::client_async(url.as_str(), stream)
        .await
        .with_context(|| format!("opening idle connection {i}"))?;
    Ok(ws)
}

/// Waits until Tidings counts `n` open connections (`/healthz`), so the
/// RSS read next is that of `n` connections.
async fn counted(server: &Server, n: usize) -> anyhow::Result<()> {
    let deadline = Instant::now() + SETTLE;
    loop {
        let open = server
            .get_json(0, "/healthz")
            .await
            .and_then(|h| h["connections"].as_u64());
        if open == Some(n as u64) {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "the server counts {open:?} open connections, not {n}, {SETTLE:?} after the ramp"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Ports one source address may use to reach one server port.
fn ephemeral_ports() -> anyhow::Result<usize> {
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .context("reading the ephemeral port range")?;
    let mut bounds = range.split_whitespace().map(str::parse::<usize>);
    match (bounds.next(), bounds.next()) {
        (Some(Ok(low)), Some(Ok(high))) if high >= low => Ok(high - low + 1),
        _ => bail!("unexpected ip_local_port_range {range:?}"),
    }
}
