//! The server under test as a child process: started on 127.0.0.1:0 with a
//! temporary data directory, its CPU time and peak RSS read from /proc.

use std::path::Path;
use std::process::Stdio;

use anyhow::{bail, Context};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::{ServerArgs, Target};

pub(crate) struct Server {
    child: Child,
    pub(crate) addr: String,
    pid: u32,
    _data: tempfile::TempDir,
}

impl Server {
    pub(crate) async fn start(args: &ServerArgs, extra: &[&str]) -> anyhow::Result<Server> {
        let data = tempfile::tempdir()?;
        let mut command = match args.target {
            Target::Tidings => {
                let mut c = Command::new(&args.server);
                c.args([
                    "--dev",
                    "--listen",
                    "127.0.0.1:0",
                    "--rate-limit",
                    "1000000",
                    "--rate-burst",
                    "1000000",
                    "--outbound-queue",
                    "65536",
                    "--data-dir",
                ])
                .arg(data.path())
                .args(extra);
                c
            }
            Target::Baseline => {
                let mut c = Command::new(std::env::current_exe()?);
                c.args(["baseline-server", "--listen", "127.0.0.1:0"]);
                c
            }
            Target::NodeWs => {
                let mut c = Command::new("node");
                c.arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("peers/ws-rooms.js"));
                c
            }
            Target::Nats => return Server::start_nats(data).await,
        };
        command
            .env("TIDINGS_LOG", "warn")
            .stdout(Stdio::piped())
            .kill_on_drop(true);
        let mut child = command
            .spawn()
            .with_context(|| format!("starting {:?}", args.target))?;
        let pid = child.id().context("the server has a pid")?;
        let mut lines = BufReader::new(child.stdout.take().expect("piped")).lines();
        let line = tokio::time::timeout(crate::seconds(30), lines.next_line())
            .await
            .context("the server did not say where it listens")??
            .context("the server exited")?;
        let Some(addr) = line.strip_prefix("listening on http://") else {
            bail!("unexpected first line {line:?}");
        };
        Ok(Server {
            addr: addr.to_owned(),
            child,
            pid,
            _data: data,
        })
    }

    /// nats-server with a WebSocket listener on a free loopback port. The
    /// bench's readers answer no PING, so the server's pings are spaced
    /// beyond any run: a sweep keeps its connections for minutes.
    async fn start_nats(data: tempfile::TempDir) -> anyhow::Result<Server> {
        let free_port = || -> anyhow::Result<u16> {
            Ok(std::net::TcpListener::bind("127.0.0.1:0")?
                .local_addr()?
                .port())
        };
        let (client_port, ws_port) = (free_port()?, free_port()?);
        let config = data.path().join("nats.conf");
        std::fs::write(
            &config,
            format!(
                "listen: \"127.0.0.1:{client_port}\"\nmax_payload: 65536\n\
                 ping_interval: \"1h\"\n\
                 websocket {{ listen: \"127.0.0.1:{ws_port}\", no_tls: true }}\n"
            ),
        )?;
        let child = Command::new("nats-server")
            .arg("-c")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("starting nats-server (apt-get install nats-server)")?;
        let pid = child.id().context("nats-server has a pid")?;
        let addr = format!("127.0.0.1:{ws_port}");
        let deadline = std::time::Instant::now() + crate::seconds(10);
        while tokio::net::TcpStream::connect(&addr).await.is_err() {
            anyhow::ensure!(
                std::time::Instant::now() < deadline,
                "nats-server did not listen"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        Ok(Server {
            child,
            addr,
            pid,
            _data: data,
        })
    }

    /// User plus system CPU time so far, in seconds.
    pub(crate) fn cpu_seconds(&self) -> anyhow::Result<f64> {
        cpu_seconds(Path::new(&format!("/proc/{}/stat", self.pid)))
    }

    /// Resident set size now, in KiB.
    pub(crate) fn rss_kib(&self) -> anyhow::Result<u64> {
        status_field(Path::new(&format!("/proc/{}/status", self.pid)), "VmRSS:")
    }

    /// Peak resident set size in KiB.
    pub(crate) fn peak_rss_kib(&self) -> anyhow::Result<u64> {
        status_field(Path::new(&format!("/proc/{}/status", self.pid)), "VmHWM:")
    }

    pub(crate) async fn stop(mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status();
        let _ = tokio::time::timeout(crate::seconds(10), self.child.wait()).await;
    }
}

/// The generator's own user plus system CPU time so far, in seconds: it
/// shares the cores with the server, so its cost is part of every figure.
pub(crate) fn own_cpu_seconds() -> anyhow::Result<f64> {
    cpu_seconds(Path::new("/proc/self/stat"))
}

/// User plus system CPU time from a /proc/PID/stat file, in seconds.
fn cpu_seconds(stat: &Path) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(stat)?;
    // Fields after the command name, which is in parentheses.
    let rest = &stat[stat.rfind(')').context("stat format")? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields[11].parse()?;
    let stime: f64 = fields[12].parse()?;
    Ok((utime + stime) / clock_ticks())
}

/// A KiB figure such as `VmRSS:` from /proc/PID/status.
fn status_field(status: &Path, field: &str) -> anyhow::Result<u64> {
    let text = std::fs::read_to_string(status)?;
    let line = text
        .lines()
        .find(|l| l.starts_with(field))
        .with_context(|| format!("{field} in status"))?;
    Ok(line.split_whitespace().nth(1).context("a value")?.parse()?)
}

fn clock_ticks() -> f64 {
    // Linux reports /proc times in USER_HZ, 100 on every supported target.
    100.0
}
