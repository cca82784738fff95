//! Idle: ramp to N authenticated connections that do nothing, and report
//! the server's resident memory per connection.
//!
//! Two limits stand between one generator and 100,000 connections: one
//! loopback source address reaches the server's port from about 28,000
//! ephemeral ports, and one process may hold only so many open files. So
//! connections are spread over source addresses 127.0.0.1, 127.0.0.2, …
//! and, past what this process may hold, over child generator processes
//! (`tidings-bench idle-clients`). The server is one process whatever N
//! is: its open-file limit is checked before anything is opened.

use std::net::{Ipv4Addr, SocketAddr};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use serde::Serialize;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};
use tokio::process::{Child, Command};
use tokio_tungstenite::WebSocketStream;

use crate::process::Server;
use crate::report::print;
use crate::rooms::{token, SECRET};
use crate::ServerArgs;

/// Open files a process needs besides its connections (listeners, its
/// database, pipes): kept free in every limit below.
const SPARE_FILES: u64 = 128;

/// Connections opened at once.
const BATCH: usize = 500;

/// How long opening every connection may take.
const RAMP_LIMIT: Duration = Duration::from_secs(600);

#[derive(Debug, Clone, clap::Args)]
pub(crate) struct Args {
    #[command(flatten)]
    pub(crate) server: ServerArgs,
    #[arg(long, default_value_t = 20_000)]
    pub(crate) connections: usize,
    /// Loopback source addresses to spread the connections over
    /// (127.0.0.1, 127.0.0.2, …). Default: enough for the ephemeral port
    /// range (`/proc/sys/net/ipv4/ip_local_port_range`).
    #[arg(long)]
    pub(crate) source_addrs: Option<u8>,
    /// Most connections one generator process holds; the rest go to child
    /// processes. Default: what the open-file limit allows.
    #[arg(long)]
    pub(crate) per_process: Option<usize>,
}

/// Connections `first..first + count`, opened by a child of `idle`.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct ClientsArgs {
    /// The server's address.
    #[arg(long)]
    addr: SocketAddr,
    #[arg(long)]
    first: usize,
    #[arg(long)]
    count: usize,
    #[arg(long)]
    source_addrs: u8,
}

#[derive(Debug, Serialize)]
struct IdleResult {
    connections: usize,
    source_addrs: u8,
    generator_processes: usize,
    ramp_seconds: f64,
    rss_before_mib: f64,
    rss_after_mib: f64,
    rss_per_connection_kib: f64,
}

pub(crate) async fn run(args: Args) -> anyhow::Result<serde_json::Value> {
    let n = args.connections;
    ensure!(n > 0, "--connections must be at least 1");
    let (files, _) = rlimit::Resource::NOFILE.get()?;
    ensure!(
        n as u64 + SPARE_FILES <= files,
        "{n} idle connections need a server that may hold {} open files; \
         processes here may hold {files} (ulimit -Hn): lower --connections \
         or raise the hard limit",
        n as u64 + SPARE_FILES
    );
    let per_process = args.per_process.unwrap_or((files - SPARE_FILES) as usize);
    ensure!(per_process > 0, "--per-process must be at least 1");
    let ports = ephemeral_ports()?;
    let source_addrs = match args.source_addrs {
        Some(k) => {
            ensure!(
                (1..=254).contains(&k),
                "--source-addrs must be 1 to 254 (127.0.0.1 to 127.0.0.254)"
            );
            k
        }
        // A tenth of the range is left for whatever else uses ports.
        None => match n.div_ceil(ports * 9 / 10) {
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

    let server = Server::start(&args.server, &["--auth-secret", SECRET]).await?;
    let addr: SocketAddr = server.addr.parse().context("the server's address")?;
    let before = server.rss_kib()?;
    let start = Instant::now();
    let processes = n.div_ceil(per_process);
    // Whichever holds the connections until the server's RSS is read:
    // this process, or child processes that exit when their stdin closes.
    let mut here = Vec::new();
    let mut children = Vec::new();
    if processes == 1 {
        here = open(addr, 0, n, source_addrs).await?;
    } else {
        for first in (0..n).step_by(per_process) {
            let count = per_process.min(n - first);
            children.push(spawn_clients(addr, first, count, source_addrs)?);
        }
        for (i, child) in children.iter_mut().enumerate() {
            wait_until_open(child)
                .await
                .with_context(|| format!("generator process {i}"))?;
        }
    }
    let ramp = start.elapsed().as_secs_f64();
    let after = server.rss_kib()?;
    let result = IdleResult {
        connections: n,
        source_addrs,
        generator_processes: processes,
        ramp_seconds: ramp,
        rss_before_mib: before as f64 / 1024.0,
        rss_after_mib: after as f64 / 1024.0,
        rss_per_connection_kib: after.saturating_sub(before) as f64 / n as f64,
    };
    drop((here, children));
    server.stop().await;
    print("idle", &result);
    Ok(serde_json::to_value(result)?)
}

/// `idle-clients`: opens its connections, says `open N` on stdout, and
/// holds them until its stdin closes.
pub(crate) async fn clients(args: ClientsArgs) -> anyhow::Result<()> {
    let sockets = open(args.addr, args.first, args.count, args.source_addrs).await?;
    println!("open {}", sockets.len());
    let mut sink = Vec::new();
    tokio::io::stdin().read_to_end(&mut sink).await?;
    Ok(())
}

/// Connections `first..first + count` as users `idle{i}`, connection `i`
/// from 127.0.0.(1 + i mod `source_addrs`).
async fn open(
    addr: SocketAddr,
    first: usize,
    count: usize,
    source_addrs: u8,
) -> anyhow::Result<Vec<WebSocketStream<TcpStream>>> {
    let deadline = tokio::time::Instant::now() + RAMP_LIMIT;
    let mut sockets = Vec::with_capacity(count);
    let all: Vec<usize> = (first..first + count).collect();
    for batch in all.chunks(BATCH) {
        let opened = tokio::time::timeout_at(
            deadline,
            futures_util::future::join_all(batch.iter().map(|&i| {
                let source = Ipv4Addr::new(127, 0, 0, 1 + (i % usize::from(source_addrs)) as u8);
                connect(addr, source, i)
            })),
        )
        .await
        .with_context(|| format!("opening {count} connections took over {RAMP_LIMIT:?}"))?;
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
    let socket = TcpSocket::new_v4()?;
    socket
        .bind(SocketAddr::from((source, 0)))
        .with_context(|| format!("binding a port on {source}"))?;
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

fn spawn_clients(
    addr: SocketAddr,
    first: usize,
    count: usize,
    source_addrs: u8,
) -> anyhow::Result<Child> {
    Command::new(std::env::current_exe()?)
        .arg("idle-clients")
        .args(["--addr", &addr.to_string()])
        .args(["--first", &first.to_string()])
        .args(["--count", &count.to_string()])
        .args(["--source-addrs", &source_addrs.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("starting a generator process")
}

async fn wait_until_open(child: &mut Child) -> anyhow::Result<()> {
    let stdout = child.stdout.take().context("piped stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    match tokio::time::timeout(RAMP_LIMIT, lines.next_line()).await {
        Ok(Ok(Some(line))) if line.starts_with("open ") => Ok(()),
        Ok(Ok(Some(line))) => bail!("said {line:?} instead of `open N`"),
        Ok(Ok(None)) => bail!(
            "exited before its connections were open: {:?}",
            child.wait().await?
        ),
        Ok(Err(err)) => Err(err.into()),
        Err(_) => bail!("its connections were not open after {RAMP_LIMIT:?}"),
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
