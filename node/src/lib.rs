//! The Tidings node: configuration, and the HTTP and WebSocket front end
//! on one [`Runtime`] (storage, entity actors, and in a cluster the links
//! and shard groups, started and stopped in order by
//! `tidings_cluster::runtime`).
//!
//! [`Node::start`] takes an already-bound listener, so tests bind port 0;
//! [`run`] serves until a shutdown future resolves. Shutdown goes: stop
//! accepting, close every socket with 1001, then the runtime's shutdown
//! (the entity actors, the shard groups and links, storage flushed).

pub mod admin;
pub mod assets;
pub mod auth;
pub mod certs;
pub mod config;
pub mod error;
pub mod http;
pub mod serve;
pub mod ws;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use rand::distr::{Alphanumeric, SampleString};
use rand::RngCore;
use tidings_actors::{EntityConfig, Metrics, Service, Storage, StorageOptions};
use tidings_cluster::replication::{RaftSettings, Replicator};
use tidings_cluster::runtime::{ClusterSettings, Runtime, RuntimeConfig};
use tidings_cluster::{Cluster, ClusterConfig};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use config::Config;

/// What every request handler shares.
#[derive(Clone)]
pub struct AppState {
    pub service: Service,
    pub auth: Arc<auth::Auth>,
    pub config: Arc<Config>,
    pub metrics: Arc<Metrics>,
    pub storage: Storage,
    /// Cancelled when the node starts shutting down.
    pub shutdown: CancellationToken,
    /// Cancelled when the cluster starts draining this node: its sockets
    /// close with 1001, spread over [`ws::LEAVE_SPREAD`], and it takes no
    /// new ones.
    pub leaving: CancellationToken,
    /// Every open WebSocket, so shutdown can wait for them to close.
    pub tracker: TaskTracker,
    /// The links to the other nodes, when this node is in a cluster.
    pub cluster: Option<Cluster>,
    /// This node's part in every shard's Raft group, in a cluster.
    pub replicator: Option<Replicator>,
    /// Each user's open WebSockets on this node (`--max-devices`).
    pub devices: ws::Devices,
    /// Each user's token bucket for the HTTP API.
    pub http_rates: http::UserRates,
    /// Open client connections (`--max-connections`).
    pub connections: serve::Connections,
}

/// A running node.
pub struct Node {
    addr: SocketAddr,
    state: AppState,
    runtime: Runtime,
    server: JoinHandle<std::io::Result<()>>,
    stop_accepting: CancellationToken,
}

impl Node {
    /// Opens storage, starts the actors and serves on `listener`.
    pub async fn start(config: Config, listener: TcpListener) -> anyhow::Result<Node> {
        config.validate()?;
        let addr = listener.local_addr()?;
        let secret = match &config.auth_secret {
            Some(secret) => secret.clone().into_bytes(),
            None => {
                tracing::warn!(
                    "dev mode: tokens are signed with a random secret and die with this process"
                );
                let mut secret = vec![0u8; 32];
                rand::rng().fill_bytes(&mut secret);
                secret
            }
        };
        let api_key = config.api_key.clone().or_else(|| {
            config.dev.then(|| {
                let key = Alphanumeric.sample_string(&mut rand::rng(), 32);
                tracing::warn!(api_key = %key, "dev mode: backends' API key for this run");
                key
            })
        });
        let runtime = Runtime::start(RuntimeConfig {
            data_dir: config.data_dir.clone(),
            storage: StorageOptions {
                commit_interval: config.commit_interval,
            },
            entity: EntityConfig {
                idle_after: config.entity_idle,
                call_timeout: config.call_timeout,
            },
            call_timeout: config.call_timeout,
            max_reply_bytes: config.max_reply_bytes,
            cluster: cluster_settings(&config),
        })
        .await?;
        let state = AppState {
            cluster: runtime.cluster().cloned(),
            replicator: runtime.replicator().cloned(),
            service: runtime.service().clone(),
            auth: Arc::new(auth::Auth::new(&secret, api_key)),
            config: Arc::new(config),
            metrics: runtime.metrics().clone(),
            storage: runtime.storage().clone(),
            shutdown: CancellationToken::new(),
            leaving: CancellationToken::new(),
            tracker: TaskTracker::new(),
            devices: ws::Devices::default(),
            http_rates: http::UserRates::default(),
            connections: serve::Connections::default(),
        };
        if let Some(replicator) = state.replicator.clone() {
            let (leaving, shutdown) = (state.leaving.clone(), state.shutdown.clone());
            tokio::spawn(async move {
                tokio::select! {
                    () = shutdown.cancelled() => {}
                    () = replicator.leaving() => {
                        tracing::info!(
                            over = ?ws::LEAVE_SPREAD,
                            "this node is draining: closing its client sockets, taking no new ones"
                        );
                        leaving.cancel();
                    }
                }
            });
        }
        let stop_accepting = CancellationToken::new();
        let app = http::app(state.clone());
        let stop = stop_accepting.clone();
        let limits = serve::Limits {
            header_timeout: state.config.header_timeout,
            idle_timeout: state.config.idle_timeout,
            max_connections: state.config.max_connections.unwrap_or_else(|| {
                serve::open_file_limit()
                    .map(serve::default_max_connections)
                    .unwrap_or(usize::MAX)
            }),
        };
        tracing::info!(max_connections = limits.max_connections, "connection limit");
        let server = tokio::spawn(serve::serve(
            listener,
            app,
            limits,
            state.connections.clone(),
            stop,
        ));
        tracing::info!(%addr, data_dir = %state.config.data_dir.display(), dev = state.config.dev, "node started");
        Ok(Node {
            addr,
            state,
            runtime,
            server,
            stop_accepting,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Resolves with the reason once the node must stop by itself: it
    /// started with an empty data directory, and its peers know it as a
    /// member ([`tidings_cluster::replication::rejoin`]).
    pub async fn failed(&self) -> String {
        self.runtime.failed().await
    }

    /// Stops in order: stop accepting, close sockets with 1001, stop the
    /// entity actors, flush storage.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        tracing::info!("shutting down");
        self.stop_accepting.cancel();
        self.state.shutdown.cancel();
        self.state.tracker.close();
        if tokio::time::timeout(Duration::from_secs(10), self.state.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!("some sockets did not close in time");
        }
        let _ = tokio::time::timeout(Duration::from_secs(10), self.server).await;
        self.runtime.shutdown().await.context("closing storage")?;
        tracing::info!("stopped");
        Ok(())
    }
}

/// The node's part in a cluster, if `config` names one.
fn cluster_settings(config: &Config) -> Option<ClusterSettings> {
    let (listen, cookie) = (config.cluster_listen?, config.cluster_cookie.clone()?);
    Some(ClusterSettings {
        links: ClusterConfig {
            node_id: config.node_id.clone(),
            listen,
            join: config.peers(),
            cookie,
            peer_timeout: config.peer_timeout,
            certs: config.cluster_certs.clone(),
            handshake_timeout: config.cluster_handshake_timeout,
        },
        replicas: config.replicas,
        raft: RaftSettings {
            snapshot_every: config.snapshot_every,
            dead_after: config.dead_after,
            ..RaftSettings::default()
        },
    })
}

/// Serves on `listener` until `shutdown` resolves, then stops in order.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let node = Node::start(config, listener).await?;
    shutdown.await;
    node.shutdown().await
}
