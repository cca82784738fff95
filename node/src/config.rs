//! Configuration: command-line flags, each with a `TIDINGS_*` environment
//! twin, parsed and validated before anything starts.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

/// The command line: a node's flags, or a subcommand.
#[derive(Debug, Parser)]
#[command(
    name = "tidings",
    version,
    about,
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub config: Config,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Writes a CA and, for each node, the directory --cluster-certs takes.
    Certs(crate::certs::CertsArgs),
    /// Shows a running cluster, or drains or removes one of its nodes.
    Cluster(crate::admin::ClusterArgs),
}

/// A real-time messaging node.
#[derive(Debug, Clone, Parser)]
#[command(name = "tidings", version, about)]
pub struct Config {
    /// Address for HTTP and WebSocket clients. Port 0 picks a free port.
    #[arg(long, env = "TIDINGS_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Directory of the node's RocksDB database.
    #[arg(long, env = "TIDINGS_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,

    /// Least time from the start of one sync of the write-ahead log to the
    /// start of the next: writes arriving within it share one sync. At most
    /// 20ms; 0 syncs again as soon as the last sync is done.
    #[arg(long, env = "TIDINGS_COMMIT_INTERVAL", default_value = "1ms", value_parser = humantime::parse_duration)]
    pub commit_interval: Duration,

    /// Secret that signs users' tokens (HS256), at least 32 bytes.
    /// Required unless --dev.
    #[arg(long, env = "TIDINGS_AUTH_SECRET", hide_env_values = true)]
    pub auth_secret: Option<String>,

    /// Key that backends present to push notifications. Without one the
    /// server endpoints refuse every request (with --dev, a random key is
    /// made and logged).
    #[arg(long, env = "TIDINGS_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,

    /// Development mode: POST /v1/dev/token issues tokens, and a random
    /// auth secret is used when none is given. Only on a loopback --listen
    /// address: the endpoint hands out tokens for any user.
    #[arg(long, env = "TIDINGS_DEV")]
    pub dev: bool,

    /// With --dev: how long the tokens POST /v1/dev/token issues live (the
    /// web page refreshes them on its open socket before they expire).
    #[arg(long, env = "TIDINGS_DEV_TOKEN_TTL", default_value = "24h", value_parser = humantime::parse_duration)]
    pub dev_token_ttl: Duration,

    /// A WebSocket that has sent nothing for this long is pinged.
    #[arg(long, env = "TIDINGS_PING_INTERVAL", default_value = "15s", value_parser = humantime::parse_duration)]
    pub ping_interval: Duration,

    /// A WebSocket silent for this long is closed as dead.
    #[arg(long, env = "TIDINGS_HEARTBEAT_TIMEOUT", default_value = "45s", value_parser = humantime::parse_duration)]
    pub heartbeat_timeout: Duration,

    /// Frames per second one connection may send, sustained.
    #[arg(long, env = "TIDINGS_RATE_LIMIT", default_value_t = 100.0)]
    pub rate_limit: f64,

    /// Frames one connection may send at once after a quiet spell.
    #[arg(long, env = "TIDINGS_RATE_BURST", default_value_t = 200.0)]
    pub rate_burst: f64,

    /// Frames queued for one connection before it is closed as too slow
    /// (close code 1013).
    #[arg(long, env = "TIDINGS_OUTBOUND_QUEUE", default_value_t = 1024)]
    pub outbound_queue: usize,

    /// Bytes of frames queued for one connection before it is closed as too
    /// slow (close code 1013), as well as --outbound-queue frames. At least
    /// --max-reply-bytes.
    #[arg(long, env = "TIDINGS_OUTBOUND_BYTES", default_value_t = 8 << 20)]
    pub outbound_bytes: usize,

    /// Most JSON bytes of events or conversations one `history`, `sync` or
    /// `convs` reply carries; a reply cut there says `more: true`.
    #[arg(long, env = "TIDINGS_MAX_REPLY_BYTES", default_value_t = 1 << 20)]
    pub max_reply_bytes: usize,

    /// Largest WebSocket frame a client may send, in bytes (close 1009).
    #[arg(long, env = "TIDINGS_MAX_FRAME", default_value_t = 64 * 1024)]
    pub max_frame: usize,

    /// An HTTP connection that has not sent a request's complete headers
    /// within this long is closed; a request whose body has not all come
    /// within this long after its headers is answered 408 and closed.
    #[arg(long, env = "TIDINGS_HEADER_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub header_timeout: Duration,

    /// An HTTP connection with no traffic for this long is closed (once its
    /// request in flight, if any, is answered). WebSockets are not affected.
    #[arg(long, env = "TIDINGS_IDLE_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration)]
    pub idle_timeout: Duration,

    /// Open client connections (HTTP and WebSocket) above which a new one
    /// is answered 503 and closed. Default: a tenth below the open-file
    /// limit.
    #[arg(long, env = "TIDINGS_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,

    /// Open WebSockets one user may have on this node; the next upgrade
    /// is refused with 429.
    #[arg(long, env = "TIDINGS_MAX_DEVICES", default_value_t = 32)]
    pub max_devices: usize,

    /// An idle user or conversation actor stops after this long.
    #[arg(long, env = "TIDINGS_ENTITY_IDLE", default_value = "60s", value_parser = humantime::parse_duration)]
    pub entity_idle: Duration,

    /// How long a request waits for its entity before `unavailable`.
    #[arg(long, env = "TIDINGS_CALL_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub call_timeout: Duration,

    /// This node's name in a cluster: letters, digits and '-', unique among
    /// the nodes.
    #[arg(long, env = "TIDINGS_NODE_ID", default_value = "n1")]
    pub node_id: String,

    /// Address for the other nodes of a cluster. Without it the node runs
    /// alone.
    #[arg(long, env = "TIDINGS_CLUSTER_LISTEN")]
    pub cluster_listen: Option<SocketAddr>,

    /// Cluster addresses of the other nodes, comma-separated (this node's
    /// own address, if listed, is skipped). They are dialled, and
    /// re-dialled with backoff whenever the link drops.
    #[arg(long, env = "TIDINGS_JOIN", value_delimiter = ',')]
    pub join: Vec<SocketAddr>,

    /// Secret shared by the nodes of a cluster; a node that does not know it
    /// cannot join. Required with --cluster-listen.
    #[arg(long, env = "TIDINGS_CLUSTER_COOKIE", hide_env_values = true)]
    pub cluster_cookie: Option<String>,

    /// Directory holding `ca.crt`, `node.crt` and `node.key` (PEM): every
    /// cluster link is then mutual TLS, and a peer's certificate must chain
    /// to `ca.crt` and name its node id. Required for a --cluster-listen
    /// address that is not loopback. `tidings certs` makes them.
    #[arg(long, env = "TIDINGS_CLUSTER_CERTS")]
    pub cluster_certs: Option<PathBuf>,

    /// A cluster connection that has not finished TLS and the cluster
    /// handshake within this long is closed.
    #[arg(long, env = "TIDINGS_CLUSTER_HANDSHAKE_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub cluster_handshake_timeout: Duration,

    /// Nodes that keep a copy of each shard (at most every node; a node that
    /// holds no copy of a shard forwards its requests).
    #[arg(long, env = "TIDINGS_REPLICAS", default_value_t = 3)]
    pub replicas: usize,

    /// A peer that has not answered a heartbeat for this long is taken as
    /// down and its link is closed and dialled again.
    #[arg(long, env = "TIDINGS_PEER_TIMEOUT", default_value = "3s", value_parser = humantime::parse_duration)]
    pub peer_timeout: Duration,

    /// A node the cluster has seen down for this long is removed as dead,
    /// as `DELETE /v1/cluster/nodes/{id}` would, and its replicas placed
    /// on live nodes. Off unless given: a node that is only down for a
    /// while comes back with everything it held.
    #[arg(long, env = "TIDINGS_DEAD_AFTER", value_parser = humantime::parse_duration)]
    pub dead_after: Option<Duration>,

    /// Each shard compacts its Raft log every this many entries: it notes a
    /// snapshot and drops the entries before it but the last tenth. A
    /// replica that missed dropped entries is sent the shard's records.
    #[arg(long, env = "TIDINGS_SNAPSHOT_EVERY", default_value_t = 10_000)]
    pub snapshot_every: u64,
}

/// Smallest `--max-reply-bytes`: room for an event with a body of the
/// largest size (16 KiB, escaped characters aside) and its frame.
const MIN_REPLY_BYTES: usize = 32 * 1024;

/// Longest `--commit-interval` allowed: well inside a Raft heartbeat
/// (150 ms), since a shard's Raft core waits for each of its log writes.
const MAX_COMMIT_INTERVAL: Duration = Duration::from_millis(20);

/// Shortest `--dead-after`: a node restarting, or a link dialled again,
/// must not count as dead.
const MIN_DEAD_AFTER: Duration = Duration::from_secs(10);

/// Shortest `--auth-secret`: an HS256 key must have at least 256 bits
/// (RFC 7518, section 3.2).
pub const MIN_SECRET_BYTES: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("no auth secret: pass --auth-secret (or TIDINGS_AUTH_SECRET) to verify users' tokens, or --dev to run with a random one")]
    NoAuthSecret,
    #[error("--auth-secret is {0} bytes; an HS256 secret must be at least {MIN_SECRET_BYTES} bytes (RFC 7518, section 3.2)")]
    SecretTooShort(usize),
    #[error("--dev hands out tokens for any user, so it serves only a loopback --listen address, not {0}")]
    DevNotLoopback(SocketAddr),
    #[error("{0} must be positive")]
    NotPositive(&'static str),
    #[error("--heartbeat-timeout ({timeout:?}) must be longer than --ping-interval ({ping:?})")]
    HeartbeatTooShort { ping: Duration, timeout: Duration },
    #[error(
        "--commit-interval ({0:?}) must be at most {MAX_COMMIT_INTERVAL:?}: a write may wait that long, and Raft's heartbeats with it"
    )]
    CommitIntervalTooLong(Duration),
    #[error(
        "--dead-after ({after:?}) must be at least {MIN_DEAD_AFTER:?} and three times --peer-timeout ({peer:?}): a node restarting is not dead"
    )]
    DeadAfterTooShort { after: Duration, peer: Duration },
    #[error("--max-frame must be at least 1024 bytes")]
    FrameTooSmall,
    #[error("--max-reply-bytes must be at least {MIN_REPLY_BYTES} bytes, to hold one event of the largest size")]
    ReplyBoundTooSmall,
    #[error("--outbound-bytes ({outbound}) must be at least --max-reply-bytes ({reply}): a reply must fit in a connection's queue")]
    OutboundBelowReply { outbound: usize, reply: usize },
    #[error("--node-id {0:?} must be 1 to 32 lowercase letters, digits or '-'")]
    BadNodeId(String),
    #[error("--cluster-listen needs --cluster-cookie (or TIDINGS_CLUSTER_COOKIE), the secret every node of the cluster shares")]
    NoClusterCookie,
    #[error("--join needs --cluster-listen: a node joins a cluster on its own cluster address")]
    JoinWithoutListen,
    #[error(
        "--cluster-listen {0} is not a loopback address: links between machines need --cluster-certs \
         (mutual TLS; `tidings certs --out DIR --nodes n1,n2,n3` makes a CA and the nodes' certificates)"
    )]
    ClusterNeedsTls(SocketAddr),
}

impl Config {
    /// Parses flags and environment, as the binary does.
    pub fn from_args<I, T>(args: I) -> Result<Config, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        Config::try_parse_from(args)
    }

    /// A dev-mode configuration for tests: port 0, the given data directory,
    /// and every default.
    pub fn for_tests(data_dir: impl Into<PathBuf>) -> Config {
        let mut config = Config::try_parse_from(["tidings", "--dev", "--listen", "127.0.0.1:0"])
            .expect("the defaults parse");
        config.data_dir = data_dir.into();
        config
    }

    /// Checks what flags alone cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        match &self.auth_secret {
            None if !self.dev => return Err(ConfigError::NoAuthSecret),
            Some(secret) if secret.len() < MIN_SECRET_BYTES => {
                return Err(ConfigError::SecretTooShort(secret.len()))
            }
            _ => {}
        }
        if self.dev && !self.listen.ip().is_loopback() {
            return Err(ConfigError::DevNotLoopback(self.listen));
        }
        if self.ping_interval.is_zero() {
            return Err(ConfigError::NotPositive("--ping-interval"));
        }
        if self.commit_interval > MAX_COMMIT_INTERVAL {
            return Err(ConfigError::CommitIntervalTooLong(self.commit_interval));
        }
        if self.heartbeat_timeout <= self.ping_interval {
            return Err(ConfigError::HeartbeatTooShort {
                ping: self.ping_interval,
                timeout: self.heartbeat_timeout,
            });
        }
        // Any comparison with NaN is false, so NaN is refused too.
        let positive = self.rate_limit > 0.0;
        let at_least_one = self.rate_burst >= 1.0;
        if !positive || !at_least_one {
            return Err(ConfigError::NotPositive("--rate-limit and --rate-burst"));
        }
        if self.outbound_queue == 0 {
            return Err(ConfigError::NotPositive("--outbound-queue"));
        }
        if self.entity_idle.is_zero() || self.call_timeout.is_zero() {
            return Err(ConfigError::NotPositive("--entity-idle and --call-timeout"));
        }
        if self.dev_token_ttl < Duration::from_secs(1) {
            return Err(ConfigError::NotPositive(
                "--dev-token-ttl (in whole seconds)",
            ));
        }
        if self.header_timeout.is_zero() || self.idle_timeout.is_zero() {
            return Err(ConfigError::NotPositive(
                "--header-timeout and --idle-timeout",
            ));
        }
        if self.max_connections == Some(0) || self.max_devices == 0 {
            return Err(ConfigError::NotPositive(
                "--max-connections and --max-devices",
            ));
        }
        if self.max_frame < 1024 {
            return Err(ConfigError::FrameTooSmall);
        }
        if self.max_reply_bytes < MIN_REPLY_BYTES {
            return Err(ConfigError::ReplyBoundTooSmall);
        }
        if self.outbound_bytes < self.max_reply_bytes {
            return Err(ConfigError::OutboundBelowReply {
                outbound: self.outbound_bytes,
                reply: self.max_reply_bytes,
            });
        }
        if !tidings_cluster::link::valid_id(&self.node_id) {
            return Err(ConfigError::BadNodeId(self.node_id.clone()));
        }
        if self.replicas == 0
            || self.peer_timeout.is_zero()
            || self.snapshot_every == 0
            || self.cluster_handshake_timeout.is_zero()
        {
            return Err(ConfigError::NotPositive(
                "--replicas, --peer-timeout, --snapshot-every and --cluster-handshake-timeout",
            ));
        }
        if let Some(after) = self.dead_after {
            if after < MIN_DEAD_AFTER.max(self.peer_timeout * 3) {
                return Err(ConfigError::DeadAfterTooShort {
                    after,
                    peer: self.peer_timeout,
                });
            }
        }
        if let Some(listen) = self.cluster_listen {
            if self.cluster_certs.is_none() && !listen.ip().is_loopback() {
                return Err(ConfigError::ClusterNeedsTls(listen));
            }
        }
        match self.cluster_listen {
            None if !self.join.is_empty() => return Err(ConfigError::JoinWithoutListen),
            Some(_) if self.cluster_cookie.as_deref().is_none_or(str::is_empty) => {
                return Err(ConfigError::NoClusterCookie)
            }
            _ => {}
        }
        Ok(())
    }

    /// The other nodes' cluster addresses: `--join` without this node's own.
    pub fn peers(&self) -> Vec<SocketAddr> {
        let mut peers: Vec<SocketAddr> = self
            .join
            .iter()
            .copied()
            .filter(|a| Some(*a) != self.cluster_listen)
            .collect();
        peers.sort();
        peers.dedup();
        peers
    }

    /// How many nodes the cluster has, this one included.
    pub fn cluster_nodes(&self) -> usize {
        self.peers().len() + 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_to_start_without_a_secret_unless_dev() {
        let config = Config::from_args(["tidings"]).unwrap();
        assert!(matches!(config.validate(), Err(ConfigError::NoAuthSecret)));
        let secret = "s".repeat(MIN_SECRET_BYTES);
        let config = Config::from_args(["tidings", "--auth-secret", &secret]).unwrap();
        config.validate().unwrap();
        Config::from_args(["tidings", "--dev"])
            .unwrap()
            .validate()
            .unwrap();
    }

    #[test]
    fn refuses_a_secret_shorter_than_256_bits() {
        for short in ["", "s", &"s".repeat(MIN_SECRET_BYTES - 1)] {
            let config = Config::from_args(["tidings", "--auth-secret", short]).unwrap();
            assert!(
                matches!(config.validate(), Err(ConfigError::SecretTooShort(n)) if n == short.len()),
                "{short:?}"
            );
        }
        // Dev mode with a secret of its own is held to the same rule.
        let config = Config::from_args(["tidings", "--dev", "--auth-secret", "short"]).unwrap();
        assert!(matches!(
            config.validate(),
            Err(ConfigError::SecretTooShort(5))
        ));
    }

    #[test]
    fn dead_after_is_off_by_default_and_never_shorter_than_a_restart() {
        let dead_after = |args: &[&str]| {
            let mut all = vec!["tidings", "--dev"];
            all.extend_from_slice(args);
            let config = Config::from_args(all).unwrap();
            config.validate().map(|()| config.dead_after)
        };
        assert_eq!(dead_after(&[]).unwrap(), None);
        assert_eq!(
            dead_after(&["--dead-after", "10m"]).unwrap(),
            Some(Duration::from_secs(600))
        );
        assert!(matches!(
            dead_after(&["--dead-after", "5s"]),
            Err(ConfigError::DeadAfterTooShort { .. })
        ));
        // Three peer timeouts at least.
        assert!(matches!(
            dead_after(&["--dead-after", "20s", "--peer-timeout", "10s"]),
            Err(ConfigError::DeadAfterTooShort { .. })
        ));
        dead_after(&["--dead-after", "30s", "--peer-timeout", "10s"]).unwrap();
    }

    #[test]
    fn dev_mode_serves_only_loopback() {
        let dev = |listen: &str| {
            Config::from_args(["tidings", "--dev", "--listen", listen])
                .unwrap()
                .validate()
        };
        dev("127.0.0.1:0").unwrap();
        dev("127.9.9.9:8080").unwrap();
        dev("[::1]:8080").unwrap();
        for open in ["0.0.0.0:8080", "[::]:8080", "192.168.1.10:8080"] {
            assert!(
                matches!(dev(open), Err(ConfigError::DevNotLoopback(_))),
                "{open}"
            );
        }
        // Without --dev any address is served.
        let secret = "s".repeat(MIN_SECRET_BYTES);
        Config::from_args([
            "tidings",
            "--auth-secret",
            &secret,
            "--listen",
            "0.0.0.0:8080",
        ])
        .unwrap()
        .validate()
        .unwrap();
    }

    #[test]
    fn http_limits_must_be_positive() {
        for flags in [
            ["--header-timeout", "0s"],
            ["--idle-timeout", "0s"],
            ["--max-connections", "0"],
            ["--max-devices", "0"],
        ] {
            let mut args = vec!["tidings", "--dev"];
            args.extend_from_slice(&flags);
            let config = Config::from_args(args).unwrap();
            assert!(
                matches!(config.validate(), Err(ConfigError::NotPositive(_))),
                "{flags:?}"
            );
        }
        let config = Config::from_args(["tidings", "--dev"]).unwrap();
        assert_eq!(config.header_timeout, Duration::from_secs(10));
        assert_eq!(config.idle_timeout, Duration::from_secs(60));
        assert_eq!(config.max_connections, None);
        assert_eq!(config.max_devices, 32);
    }

    #[test]
    fn a_cluster_needs_a_cookie_a_listen_address_and_a_sane_id() {
        let parse = |extra: &[&str]| {
            let mut args = vec!["tidings", "--dev"];
            args.extend_from_slice(extra);
            Config::from_args(args).unwrap().validate()
        };
        let clustered = |join: &str| {
            parse(&[
                "--cluster-listen",
                "127.0.0.1:9081",
                "--cluster-cookie",
                "c",
                "--join",
                join,
            ])
        };
        parse(&[]).unwrap();
        clustered("127.0.0.1:9082,127.0.0.1:9083").unwrap();
        // More nodes than --replicas: each shard lives on three of five.
        clustered("127.0.0.1:9082,127.0.0.1:9083,127.0.0.1:9084,127.0.0.1:9085").unwrap();
        assert!(matches!(
            parse(&["--cluster-listen", "127.0.0.1:9081"]),
            Err(ConfigError::NoClusterCookie)
        ));
        assert!(matches!(
            parse(&["--join", "127.0.0.1:9082"]),
            Err(ConfigError::JoinWithoutListen)
        ));
        // One --join list can serve every node: a node skips its own address.
        clustered("127.0.0.1:9081,127.0.0.1:9082").unwrap();
        assert!(matches!(
            parse(&["--node-id", "n 1"]),
            Err(ConfigError::BadNodeId(_))
        ));
        // Certificates name node ids without regard to case: an id that
        // differed from another only in case could pass for it.
        assert!(matches!(
            parse(&["--node-id", "N1"]),
            Err(ConfigError::BadNodeId(_))
        ));
        assert!(matches!(
            parse(&["--replicas", "0"]),
            Err(ConfigError::NotPositive(_))
        ));
        assert!(matches!(
            parse(&["--snapshot-every", "0"]),
            Err(ConfigError::NotPositive(_))
        ));
    }

    #[test]
    fn a_cluster_address_off_loopback_needs_certificates() {
        let parse = |extra: &[&str]| {
            let mut args = vec!["tidings", "--dev", "--cluster-cookie", "c"];
            args.extend_from_slice(extra);
            Config::from_args(args).unwrap().validate()
        };
        parse(&["--cluster-listen", "127.0.0.1:9081"]).unwrap();
        parse(&["--cluster-listen", "127.0.0.2:9081"]).unwrap();
        parse(&["--cluster-listen", "[::1]:9081"]).unwrap();
        for open in ["0.0.0.0:9081", "10.0.0.5:9081", "[::]:9081"] {
            let refused = parse(&["--cluster-listen", open]);
            assert!(
                matches!(refused, Err(ConfigError::ClusterNeedsTls(_))),
                "{open}: {refused:?}"
            );
            assert!(refused.unwrap_err().to_string().contains("--cluster-certs"));
            parse(&["--cluster-listen", open, "--cluster-certs", "/etc/tidings"]).unwrap();
        }
    }

    #[test]
    fn the_cluster_handshake_has_five_seconds_unless_told() {
        let config = Config::from_args(["tidings", "--dev"]).unwrap();
        assert_eq!(config.cluster_handshake_timeout, Duration::from_secs(5));
        let config =
            Config::from_args(["tidings", "--dev", "--cluster-handshake-timeout", "0s"]).unwrap();
        assert!(matches!(
            config.validate(),
            Err(ConfigError::NotPositive(_))
        ));
    }

    #[test]
    fn a_reply_bound_must_hold_an_event_and_fit_in_the_queue() {
        let check = |extra: &[&str]| {
            let mut args = vec!["tidings", "--dev"];
            args.extend_from_slice(extra);
            Config::from_args(args).unwrap().validate()
        };
        let defaults = Config::from_args(["tidings", "--dev"]).unwrap();
        assert_eq!(defaults.max_reply_bytes, 1 << 20);
        assert_eq!(defaults.outbound_bytes, 8 << 20);
        check(&["--max-reply-bytes", "32768", "--outbound-bytes", "32768"]).unwrap();
        assert!(matches!(
            check(&["--max-reply-bytes", "1000"]),
            Err(ConfigError::ReplyBoundTooSmall)
        ));
        assert!(matches!(
            check(&["--outbound-bytes", "65536"]),
            Err(ConfigError::OutboundBelowReply { .. })
        ));
    }

    #[test]
    fn the_node_starts_from_plain_flags_and_certs_is_a_subcommand() {
        let cli = Cli::try_parse_from(["tidings", "--dev", "--listen", "127.0.0.1:0"]).unwrap();
        assert!(cli.command.is_none());
        assert!(cli.config.dev);
        let cli =
            Cli::try_parse_from(["tidings", "certs", "--out", "d", "--nodes", "n1,n2"]).unwrap();
        let Some(Command::Certs(args)) = cli.command else {
            panic!("certs parses as the subcommand");
        };
        assert_eq!(args.nodes, ["n1", "n2"]);
        assert!(Cli::try_parse_from(["tidings", "certs", "--out", "d"]).is_err());
    }

    #[test]
    fn rates_must_be_positive_numbers() {
        let check = |limit: &str, burst: &str| {
            let limit = format!("--rate-limit={limit}");
            let burst = format!("--rate-burst={burst}");
            Config::from_args(["tidings", "--dev", &limit, &burst])
                .unwrap()
                .validate()
        };
        check("0.5", "1").unwrap();
        for (limit, burst) in [
            ("0", "1"),
            ("-1", "1"),
            ("NaN", "1"),
            ("1", "0.5"),
            ("1", "NaN"),
        ] {
            assert!(
                matches!(check(limit, burst), Err(ConfigError::NotPositive(_))),
                "--rate-limit {limit} --rate-burst {burst}"
            );
        }
    }

    #[test]
    fn durations_read_as_humans_write_them() {
        let config = Config::from_args([
            "tidings",
            "--dev",
            "--ping-interval",
            "200ms",
            "--heartbeat-timeout",
            "1s",
        ])
        .unwrap();
        assert_eq!(config.ping_interval, Duration::from_millis(200));
        assert_eq!(config.commit_interval, Duration::from_millis(1));
        config.validate().unwrap();
        let config = Config::from_args(["tidings", "--dev", "--commit-interval", "0"]).unwrap();
        assert_eq!(config.commit_interval, Duration::ZERO);
        config.validate().unwrap();
        let config = Config::from_args(["tidings", "--dev", "--commit-interval", "21ms"]).unwrap();
        assert!(matches!(
            config.validate(),
            Err(ConfigError::CommitIntervalTooLong(_))
        ));
        let config = Config::from_args([
            "tidings",
            "--dev",
            "--ping-interval",
            "2s",
            "--heartbeat-timeout",
            "1s",
        ])
        .unwrap();
        assert!(matches!(
            config.validate(),
            Err(ConfigError::HeartbeatTooShort { .. })
        ));
    }
}
