//! `tidings-bench`: load generator for Tidings and the servers it is
//! compared with. Every run is bounded in count and time and talks only to
//! 127.0.0.1.
//!
//! Run with `make bench`, or e.g.
//! `tidings-bench rooms --server target/release/tidings --rate 5000 --seconds 10`;
//! `rooms --sweep` finds the highest rate within a p99 latency bound, and
//! `compare --sweep` plots latency against rate for every server; `cluster`
//! sets three nodes as one cluster against one node, and times failover.
//! Every command prints a table, then its result as a `JSON {...}` line,
//! and with `--json PATH` writes that object to PATH too.

mod appends;
mod baseline;
mod catchup;
mod cluster;
mod compare;
mod idle;
mod plot;
mod process;
mod progress;
mod report;
mod rooms;
mod sweep;
mod wire;

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "tidings-bench", about = "Load generator for Tidings")]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Also write the result object (the `JSON` line) to this file. For
    /// `compare --sweep` and `--rates` it defaults to the plot's path with
    /// `.json`.
    #[arg(long, global = true, value_name = "PATH")]
    json: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Rooms: C connections in G groups; senders publish at a fixed total
    /// rate; measures deliveries, losses, latency, and server and generator
    /// CPU per delivery. With --sweep: the highest rate whose p99 latency
    /// stays within --p99-bound-ms.
    Rooms(rooms::Args),
    /// Appends: W senders over K conversations, each waiting for its ack.
    Appends(appends::Args),
    /// Idle: N authenticated connections doing nothing; RSS per connection.
    Idle(idle::Args),
    /// Catch-up: time for a device that missed X events to be synced.
    Catchup(catchup::Args),
    /// Rooms against every target, several runs interleaved, as medians and
    /// the ratio of Tidings' figure to each peer's. With --rates: several
    /// runs of those rates, interleaved, as each target's median p99 per
    /// rate and the highest rate most runs kept within --p99-bound-ms.
    /// With --sweep: each target's rate sweep once. Both plot p99 and p50
    /// latency against offered rate, one line per server (--plot).
    Compare {
        #[command(flatten)]
        rooms: rooms::Args,
        /// Runs per target (not with --sweep: one sweep per target).
        #[arg(long, default_value_t = 3, conflicts_with = "sweep")]
        runs: usize,
        /// Measure each of these rates (msg/s, comma-separated) in every
        /// run, in the order given, instead of the one --rate.
        #[arg(long, value_delimiter = ',', conflicts_with = "sweep")]
        rates: Vec<u64>,
        /// With --sweep or --rates: where to write the latency-versus-rate
        /// plot (SVG).
        #[arg(long, default_value = "bench/results/rooms-latency.svg")]
        plot: PathBuf,
    },
    /// Rooms against two builds of Tidings, --before and --server, runs
    /// interleaved: each figure's median per build and the new build's
    /// median over the old one's. For before/after compares of a change.
    Versus {
        #[command(flatten)]
        rooms: rooms::Args,
        /// The build to compare against (say, the release binary of the
        /// commit before a change, copied aside).
        #[arg(long)]
        before: PathBuf,
        /// Runs per build.
        #[arg(long, default_value_t = 5)]
        runs: usize,
    },
    /// Rooms against one Tidings node and three as one cluster on the same
    /// cores (runs interleaved; medians and ratios), then failover time.
    Cluster {
        #[command(flatten)]
        rooms: rooms::Args,
        /// Runs per setup.
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Failovers to time (each on a fresh cluster).
        #[arg(long, default_value_t = 3)]
        failovers: usize,
    },
    /// The ceiling of our own stack: a room broadcast server on
    /// tokio-tungstenite with no actors and no storage.
    BaselineServer {
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: std::net::SocketAddr,
    },
}

/// Which server a scenario runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
pub(crate) enum Target {
    /// The tidings binary: durable, acknowledged, fanned out by actors.
    Tidings,
    /// Three tidings nodes as one cluster on the same cores; clients spread
    /// over them.
    TidingsCluster,
    /// Our own stack's ceiling: tokio-tungstenite, no actors, no storage.
    Baseline,
    /// A Node.js `ws` room server (bench/peers/ws-rooms.js).
    NodeWs,
    /// NATS with its WebSocket listener, one subject per room.
    Nats,
}

/// How to start the server under test.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct ServerArgs {
    /// The tidings binary (release build for figures worth quoting).
    #[arg(long, default_value = "target/release/tidings")]
    pub(crate) server: PathBuf,
    /// Which server to measure.
    #[arg(long, value_enum, default_value = "tidings")]
    pub(crate) target: Target,
}

pub(crate) fn seconds(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // Rooms alone opens 2,000 sockets, past a shell's usual soft limit of
    // 1,024; the servers under test are children and inherit the limit.
    if let Err(err) = rlimit::increase_nofile_limit(u64::MAX) {
        eprintln!("tidings-bench: could not raise the open-file limit: {err}");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let mut json_path = cli.json;
    let result = runtime.block_on(async {
        Ok(Some(match cli.command {
            Command::Rooms(args) if args.sweep.sweep => {
                serde_json::to_value(sweep::sweep(&args).await?)?
            }
            Command::Rooms(args) => {
                let result = rooms::run(args).await?;
                report::print("rooms", &result);
                serde_json::to_value(result)?
            }
            Command::Appends(args) => appends::run(args).await?,
            Command::Idle(args) => idle::run(args).await?,
            Command::Catchup(args) => catchup::run(args).await?,
            Command::Compare { rooms, plot, .. } if rooms.sweep.sweep => {
                json_path.get_or_insert_with(|| plot.with_extension("json"));
                compare::sweeps(rooms, &plot).await?
            }
            Command::Compare {
                rooms,
                runs,
                rates,
                plot,
            } if !rates.is_empty() => {
                json_path.get_or_insert_with(|| plot.with_extension("json"));
                compare::ladders(rooms, &rates, runs, &plot).await?
            }
            Command::Compare { rooms, runs, .. } => compare::compare(rooms, runs).await?,
            Command::Versus {
                rooms,
                before,
                runs,
            } => compare::versus(rooms, before, runs).await?,
            Command::Cluster {
                rooms,
                runs,
                failovers,
            } => cluster::cluster(rooms, runs, failovers).await?,
            Command::BaselineServer { listen } => {
                baseline::serve(listen).await?;
                return anyhow::Ok(None);
            }
        }))
    })?;
    match result {
        Some(result) => report::finish(&result, json_path.as_deref()),
        None => Ok(()),
    }
}
