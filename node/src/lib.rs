//! The Tidings node: configuration, the HTTP and WebSocket front end, and
//! the order things start and stop in.
//!
//! [`Node::start`] takes an already-bound listener, so tests bind port 0;
//! [`run`] serves until a shutdown future resolves. Shutdown goes: stop
//! accepting, close every socket with 1001, stop the entity actors, flush
//! storage.

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
use ractor::ActorRef;
use rand::distr::{Alphanumeric, SampleString};
use rand::RngCore;
use tidings_actors::cluster::peer::Handlers;
use tidings_actors::cluster::{Cluster, ClusterConfig};
use tidings_actors::directory::Directory;
use tidings_actors::replication::{RaftSettings, Replicator};
use tidings_actors::{EntityConfig, Metrics, RouterMsg, Service, Storage, StorageOptions};
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
    router: ActorRef<RouterMsg>,
    router_task: JoinHandle<()>,
    server: JoinHandle<std::io::Result<()>>,
    stop_accepting: CancellationToken,
}

impl Node {
    /// Opens storage, starts the actors and serves on `listener`.
    pub async fn start(config: Config, listener: TcpListener) -> anyhow::Result<Node> {
        config.validate()?;
        let addr = listener.local_addr()?;
        let options = StorageOptions {
            commit_interval: config.commit_interval,
        };
        let storage = Storage::open_with(&config.data_dir, options)
            .with_context(|| format!("opening storage in {}", config.data_dir.display()))?;
        let metrics = Arc::new(Metrics::new());
        let entity = EntityConfig {
            idle_after: config.entity_idle,
            call_timeout: config.call_timeout,
        };
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
        let cluster = match (config.cluster_listen, &config.cluster_cookie) {
            (Some(listen), Some(cookie)) => Some(
                Cluster::start(ClusterConfig {
                    node_id: config.node_id.clone(),
                    listen,
                    join: config.peers(),
                    cookie: cookie.clone(),
                    peer_timeout: config.peer_timeout,
                    certs: config.cluster_certs.clone(),
                    handshake_timeout: config.cluster_handshake_timeout,
                })
                .await
                .context("starting the cluster links")?,
            ),
            _ => None,
        };
        // In a cluster, fan-out reaches the devices on the other nodes too.
        let directory = Directory::new(
            cluster.as_ref().map(|c| c.peers().clone()),
            metrics.users_online.clone(),
        );
        let (routes, router_task) = tidings_actors::start_router(
            storage.clone(),
            entity,
            metrics.clone(),
            directory.clone(),
        )
        .await
        .context("starting the router")?;
        let router = routes.router().clone();
        let (service, replicator) = match &cluster {
            None => (
                Service::new(routes, directory, config.call_timeout)
                    .with_max_reply_bytes(config.max_reply_bytes),
                None,
            ),
            Some(cluster) => {
                if config.replicas > config.cluster_nodes() {
                    tracing::warn!(
                        replicas = config.replicas,
                        nodes = config.cluster_nodes(),
                        "fewer nodes than --replicas: every node keeps a copy of every shard"
                    );
                }
                let replicator = Replicator::start(
                    config.node_id.clone(),
                    storage.clone(),
                    cluster.peers().clone(),
                    cluster.expected_peers(),
                    config.replicas,
                    routes.clone(),
                    RaftSettings {
                        snapshot_every: config.snapshot_every,
                        ..RaftSettings::default()
                    },
                    config.call_timeout,
                )
                .await
                .context("starting the shard groups")?;
                storage.replicate_through(Arc::new(replicator.clone()));
                let service =
                    Service::clustered(routes, directory, config.call_timeout, replicator.clone())
                        .with_max_reply_bytes(config.max_reply_bytes);
                (service, Some(replicator))
            }
        };
        // Before any request: entities reach each other through the service
        // (in a cluster, where their shards are led).
        let _ = router.cast(RouterMsg::Serve(service.clone()));
        match (&cluster, &replicator) {
            (Some(cluster), Some(replicator)) => cluster.serve(Handlers {
                replicator: replicator.clone(),
                service: service.clone(),
                router: router.clone(),
            }),
            _ => {
                // Index changes a crash left owing are finished now (a
                // cluster node does so for each shard it comes to lead).
                let owing = tidings_actors::settle_outboxes(&router, &storage, None)
                    .context("reading conversations' outboxes")?;
                if owing > 0 {
                    tracing::info!(owing, "finishing conversations' index changes");
                }
            }
        }
        let state = AppState {
            cluster,
            replicator,
            service,
            auth: Arc::new(auth::Auth::new(&secret, api_key)),
            config: Arc::new(config),
            metrics,
            storage,
            shutdown: CancellationToken::new(),
            tracker: TaskTracker::new(),
            devices: ws::Devices::default(),
            http_rates: http::UserRates::default(),
            connections: serve::Connections::default(),
        };
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
            router,
            router_task,
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
    /// member ([`tidings_actors::replication::rejoin`]).
    pub async fn failed(&self) -> String {
        match &self.state.replicator {
            Some(replicator) => replicator.failed().await,
            None => std::future::pending().await,
        }
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
        self.router
            .stop_children_and_wait(None, Some(Duration::from_secs(10)))
            .await;
        if let Some(replicator) = &self.state.replicator {
            replicator.shutdown().await;
        }
        if let Some(cluster) = &self.state.cluster {
            cluster.stop();
        }
        self.router.stop(None);
        let _ = self.router_task.await;
        self.state
            .storage
            .close()
            .await
            .context("closing storage")?;
        tracing::info!("stopped");
        Ok(())
    }
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
