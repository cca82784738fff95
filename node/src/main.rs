//! The `tidings` binary: parse flags, set up logging, serve until SIGINT or
//! SIGTERM.

use std::io::Write;

use anyhow::Context;
use clap::Parser;
use tidings_node::config::{Cli, Command};
use tidings_node::Node;
use tracing_subscriber::EnvFilter;

// jemalloc rather than the system's: glibc's malloc (and the fastbin
// consolidation each request's large future set off) was 5–10% of the
// node's CPU per delivered message; see BENCHMARKS.md.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("TIDINGS_LOG")
                .unwrap_or_else(|_| EnvFilter::new("info,openraft=off")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    if let Some(Command::Cluster(args)) = &cli.command {
        let key = std::env::var("TIDINGS_API_KEY").ok();
        match tidings_node::admin::run(args, key.as_deref()).await {
            Ok(text) => {
                println!("{}", text.trim_end());
                return Ok(());
            }
            Err(err) => {
                eprintln!("tidings cluster: {err:#}");
                std::process::exit(1);
            }
        }
    }
    if let Some(Command::Certs(args)) = cli.command {
        match tidings_node::certs::write(&args) {
            Ok(written) => {
                for path in written {
                    println!("wrote {}", path.display());
                }
                eprintln!(
                    "tidings certs: give each node its own directory (--cluster-certs); keep {} off the nodes, whoever holds it can make members",
                    args.out.join("ca.key").display()
                );
                return Ok(());
            }
            Err(err) => {
                eprintln!("tidings certs: {err:#}");
                std::process::exit(1);
            }
        }
    }
    let config = cli.config;
    if let Err(err) = config.validate() {
        eprintln!("tidings: {err}");
        std::process::exit(2);
    }
    raise_open_file_limit();
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    let node = Node::start(config, listener).await?;
    // Scripts and tests read the address from this line. Whoever reads it
    // may stop reading (`tidings | head -1`): a node keeps serving then.
    let mut stdout = std::io::stdout();
    if let Err(err) =
        writeln!(stdout, "listening on http://{}", node.local_addr()).and_then(|()| stdout.flush())
    {
        tracing::warn!(error = %err, "could not print the address to stdout");
    }
    let failed = tokio::select! {
        () = shutdown_signal() => None,
        reason = node.failed() => Some(reason),
    };
    node.shutdown().await?;
    if let Some(reason) = failed {
        eprintln!("tidings: {reason}");
        std::process::exit(FAILED);
    }
    Ok(())
}

/// The exit status of a node that stops by itself because it must not run
/// (see [`Node::failed`]); 2 is a configuration refused at start.
const FAILED: i32 = 3;

/// Below this many open files a node turns clients away while still idle.
const FEW_OPEN_FILES: u64 = 4096;

/// Every connection holds a socket, and a shell's usual soft limit is 1,024
/// open files: past that, `accept` fails and clients wait unanswered. The
/// node raises its soft limit to the hard one, which only an operator can
/// raise (`ulimit -Hn`, systemd's `LimitNOFILE`).
fn raise_open_file_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) if limit < FEW_OPEN_FILES => tracing::warn!(
            limit,
            "few open files allowed: this node can hold fewer than {limit} connections; \
             raise the hard limit (ulimit -Hn, or LimitNOFILE under systemd)"
        ),
        Ok(limit) => tracing::info!(limit, "open-file limit"),
        Err(err) => tracing::warn!(error = %err, "could not raise the open-file limit"),
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
