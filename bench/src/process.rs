//! The server under test as child processes (one, or three for a Tidings
//! cluster): started on 127.0.0.1:0 with temporary data directories, their
//! CPU time and peak RSS read from /proc and added up.

use std::path::Path;
use std::process::Stdio;

use anyhow::{bail, Context};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::{ServerArgs, Target};

pub(crate) struct Server {
    children: Vec<Child>,
    /// The first process's address.
    pub(crate) addr: String,
    /// Every process's address: clients spread over them.
    pub(crate) addrs: Vec<String>,
    pids: Vec<u32>,
    _data: Vec<tempfile::TempDir>,
}

/// Nodes in a `tidings-cluster` target.
pub(crate) const CLUSTER_NODES: usize = 3;

/// Flags every Tidings process under test gets.
const TIDINGS_FLAGS: [&str; 10] = [
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
];

impl Server {
    pub(crate) async fn start(args: &ServerArgs, extra: &[&str]) -> anyhow::Result<Server> {
        let data = tempfile::tempdir()?;
        let mut command = match args.target {
            Target::Tidings => {
                let mut c = Command::new(&args.server);
                c.args(TIDINGS_FLAGS).arg(data.path()).args(extra);
                c
            }
            Target::TidingsCluster => return Server::start_cluster(args, extra).await,
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
        let (child, addr) = spawn(&mut command, args.target).await?;
        Server::of(vec![(child, addr)], vec![data])
    }

    fn of(processes: Vec<(Child, String)>, data: Vec<tempfile::TempDir>) -> anyhow::Result<Server> {
        let pids = processes
            .iter()
            .map(|(c, _)| c.id().context("the server has a pid"))
            .collect::<anyhow::Result<Vec<u32>>>()?;
        let addrs: Vec<String> = processes.iter().map(|(_, a)| a.clone()).collect();
        Ok(Server {
            addr: addrs[0].clone(),
            addrs,
            children: processes.into_iter().map(|(c, _)| c).collect(),
            pids,
            _data: data,
        })
    }

    /// Three Tidings nodes as one cluster, once every shard has a leader.
    async fn start_cluster(args: &ServerArgs, extra: &[&str]) -> anyhow::Result<Server> {
        let free = || -> anyhow::Result<String> {
            Ok(std::net::TcpListener::bind("127.0.0.1:0")?
                .local_addr()?
                .to_string())
        };
        let cluster: Vec<String> = (0..CLUSTER_NODES)
            .map(|_| free())
            .collect::<Result<_, _>>()?;
        let join = cluster.join(",");
        let mut processes = Vec::new();
        let mut dirs = Vec::new();
        for (i, listen) in cluster.iter().enumerate() {
            let data = tempfile::tempdir()?;
            let mut c = Command::new(&args.server);
            c.args(TIDINGS_FLAGS)
                .arg(data.path())
                .args(extra)
                .args(["--node-id", &format!("n{}", i + 1)])
                .args(["--cluster-listen", listen, "--join", &join])
                .args(["--cluster-cookie", "bench-cookie"]);
            processes.push(spawn(&mut c, args.target).await?);
            dirs.push(data);
        }
        let server = Server::of(processes, dirs)?;
        let deadline = std::time::Instant::now() + crate::seconds(30);
        while !server.formed().await {
            anyhow::ensure!(
                std::time::Instant::now() < deadline,
                "the cluster did not form in 30 s"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        Ok(server)
    }

    /// `GET /v1/cluster` of node `i`, parsed.
    pub(crate) async fn cluster_view(&self, i: usize) -> Option<serde_json::Value> {
        self.get_json(i, "/v1/cluster").await
    }

    /// `GET path` of process `i`, its body parsed as JSON.
    pub(crate) async fn get_json(&self, i: usize, path: &str) -> Option<serde_json::Value> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut socket = tokio::net::TcpStream::connect(self.addrs.get(i)?)
            .await
            .ok()?;
        socket
            .write_all(format!("GET {path} HTTP/1.0\r\nHost: bench\r\n\r\n").as_bytes())
            .await
            .ok()?;
        let mut response = Vec::new();
        socket.read_to_end(&mut response).await.ok()?;
        let start = memchr::memmem::find(&response, b"\r\n\r\n")? + 4;
        serde_json::from_slice(&response[start..]).ok()
    }

    /// Whether node 0 sees a leader for every shard.
    async fn formed(&self) -> bool {
        let Some(view) = self.cluster_view(0).await else {
            return false;
        };
        view["shards"]
            .as_array()
            .is_some_and(|s| !s.is_empty() && s.iter().all(|s| s["leader"].is_string()))
    }

    /// SIGKILLs process `i`: a crash, for failover runs.
    pub(crate) async fn kill(&mut self, i: usize) -> anyhow::Result<()> {
        self.children[i].kill().await?;
        Ok(())
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
        let addr = format!("127.0.0.1:{ws_port}");
        let deadline = std::time::Instant::now() + crate::seconds(10);
        while tokio::net::TcpStream::connect(&addr).await.is_err() {
            anyhow::ensure!(
                std::time::Instant::now() < deadline,
                "nats-server did not listen"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        Server::of(vec![(child, addr)], vec![data])
    }

    /// User plus system CPU time so far, in seconds, of every process.
    pub(crate) fn cpu_seconds(&self) -> anyhow::Result<f64> {
        self.pids
            .iter()
            .map(|pid| cpu_seconds(Path::new(&format!("/proc/{pid}/stat"))))
            .sum()
    }

    /// Resident set size now, in KiB, of every process.
    pub(crate) fn rss_kib(&self) -> anyhow::Result<u64> {
        self.status_sum("VmRSS:")
    }

    /// Peak resident set size in KiB, of every process.
    pub(crate) fn peak_rss_kib(&self) -> anyhow::Result<u64> {
        self.status_sum("VmHWM:")
    }

    fn status_sum(&self, field: &str) -> anyhow::Result<u64> {
        self.pids
            .iter()
            .map(|pid| status_field(Path::new(&format!("/proc/{pid}/status")), field))
            .sum()
    }

    pub(crate) async fn stop(mut self) {
        for pid in &self.pids {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
        for child in &mut self.children {
            let _ = tokio::time::timeout(crate::seconds(10), child.wait()).await;
        }
    }
}

/// Spawns `command` and returns it with the HTTP address it prints first.
async fn spawn(command: &mut Command, target: Target) -> anyhow::Result<(Child, String)> {
    command
        .env("TIDINGS_LOG", "warn,openraft=off")
        .stdout(Stdio::piped())
        .kill_on_drop(true);
    let mut child = command
        .spawn()
        .with_context(|| format!("starting {target:?}"))?;
    let mut lines = BufReader::new(child.stdout.take().expect("piped")).lines();
    let line = tokio::time::timeout(crate::seconds(30), lines.next_line())
        .await
        .context("the server did not say where it listens")??
        .context("the server exited")?;
    let Some(addr) = line.strip_prefix("listening on http://") else {
        bail!("unexpected first line {line:?}");
    };
    Ok((child, addr.to_owned()))
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
