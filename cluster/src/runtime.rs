//! One start-up for a node's core and cluster: storage, the router and its
//! entity actors, and in a cluster the links to the other nodes and the
//! shard groups; [`Runtime::start`] starts them in the one order that
//! works, and [`Runtime::shutdown`] stops them in the reverse.
//!
//! The front end (`tidings-node`) starts a `Runtime`, serves HTTP and
//! WebSocket on its [`Service`], and knows nothing of the order below:
//!
//! 1. storage opens (RocksDB, the committer thread);
//! 2. in a cluster, the links start (the node's own listener and
//!    handshake, the peer actor, membership);
//! 3. the router starts, fanning out through a directory that reaches
//!    the other nodes' devices too;
//! 4. in a cluster, the shard groups start, and storage commits through
//!    them from then on;
//! 5. the service is handed to the router (entities reach each other
//!    through it) and, in a cluster, to the peer actor (to serve what
//!    other nodes forward); on a single node the outboxes a crash left
//!    owing are settled (a cluster node settles each shard it comes to
//!    lead).
//!
//! Shutdown stops the entity actors (nothing is written after), the shard
//! groups, the links and the router, then flushes and closes storage.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ractor::ActorRef;
use tidings_actors::directory::Directory;
use tidings_actors::remote::RemoteFanout;
use tidings_actors::{
    EntityConfig, Metrics, RouterMsg, Service, Storage, StorageError, StorageOptions,
};
use tokio::task::JoinHandle;

use crate::peer::Handlers;
use crate::replication::{RaftSettings, ReplicationError, Replicator};
use crate::{Cluster, ClusterConfig, ClusterError};

/// What the actors side of a node needs to start.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    pub data_dir: PathBuf,
    pub storage: StorageOptions,
    pub entity: EntityConfig,
    /// How long a request may take before it is answered `unavailable`.
    pub call_timeout: Duration,
    /// The most JSON bytes a `history`, `sync` or `convs` reply carries.
    pub max_reply_bytes: usize,
    /// `None` for a node on its own.
    pub cluster: Option<ClusterSettings>,
}

/// A node's part in a cluster.
#[derive(Debug, Clone)]
pub struct ClusterSettings {
    pub links: ClusterConfig,
    /// Copies of each shard.
    pub replicas: usize,
    pub raft: RaftSettings,
}

/// Why a node's actors did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("opening storage in {dir}: {source}")]
    Storage { dir: PathBuf, source: StorageError },
    #[error("starting the cluster links: {0}")]
    Cluster(#[from] ClusterError),
    #[error("starting the router: {0}")]
    Router(#[from] ractor::SpawnErr),
    #[error("starting the shard groups: {0}")]
    Replication(#[from] ReplicationError),
    #[error("reading conversations' outboxes: {0}")]
    Outboxes(StorageError),
}

/// A node's running actors, storage and, in a cluster, links and shard
/// groups.
pub struct Runtime {
    service: Service,
    storage: Storage,
    metrics: Arc<Metrics>,
    cluster: Option<Cluster>,
    replicator: Option<Replicator>,
    router: ActorRef<RouterMsg>,
    router_task: JoinHandle<()>,
}

impl Runtime {
    /// Starts everything in order (see the module's docs).
    pub async fn start(config: RuntimeConfig) -> Result<Runtime, StartError> {
        let storage = Storage::open_with(&config.data_dir, config.storage).map_err(|source| {
            StartError::Storage {
                dir: config.data_dir.clone(),
                source,
            }
        })?;
        let metrics = Arc::new(Metrics::new());
        let cluster = match &config.cluster {
            Some(settings) => Some(Cluster::start(settings.links.clone()).await?),
            None => None,
        };
        // In a cluster, fan-out reaches the devices on the other nodes too.
        let remote = cluster
            .as_ref()
            .map(|c| Arc::new(c.peers().clone()) as Arc<dyn RemoteFanout>);
        let directory = Directory::new(remote, metrics.users_online.clone());
        let (routes, router_task) = tidings_actors::start_router(
            storage.clone(),
            config.entity.clone(),
            metrics.clone(),
            directory.clone(),
        )
        .await?;
        let router = routes.router().clone();
        let (service, replicator) = match (&cluster, &config.cluster) {
            (Some(cluster), Some(settings)) => {
                let nodes = cluster.expected_peers() + 1;
                if settings.replicas > nodes {
                    tracing::warn!(
                        replicas = settings.replicas,
                        nodes,
                        "fewer nodes than --replicas: every node keeps a copy of every shard"
                    );
                }
                let replicator = Replicator::start(
                    settings.links.node_id.clone(),
                    storage.clone(),
                    cluster.peers().clone(),
                    cluster.expected_peers(),
                    settings.replicas,
                    routes.clone(),
                    settings.raft.clone(),
                    config.call_timeout,
                )
                .await?;
                storage.replicate_through(Arc::new(replicator.clone()));
                let service = Service::clustered(
                    routes,
                    directory.clone(),
                    config.call_timeout,
                    Arc::new(replicator.clone()),
                );
                (service, Some(replicator))
            }
            _ => (
                Service::new(routes, directory.clone(), config.call_timeout),
                None,
            ),
        };
        let service = service.with_max_reply_bytes(config.max_reply_bytes);
        // Before any request: entities reach each other through the service
        // (in a cluster, where their shards are led).
        let _ = router.cast(RouterMsg::Serve(Arc::new(service.clone())));
        match (&cluster, &replicator) {
            (Some(cluster), Some(replicator)) => cluster.serve(Handlers {
                replicator: replicator.clone(),
                service: service.clone(),
                directory,
                metrics: metrics.clone(),
            }),
            _ => {
                let owing = tidings_actors::settle_outboxes(&router, &storage, None)
                    .map_err(StartError::Outboxes)?;
                if owing > 0 {
                    tracing::info!(owing, "finishing conversations' index changes");
                }
            }
        }
        Ok(Runtime {
            service,
            storage,
            metrics,
            cluster,
            replicator,
            router,
            router_task,
        })
    }

    /// The operations users and backends ask for.
    pub fn service(&self) -> &Service {
        &self.service
    }

    pub fn storage(&self) -> &Storage {
        &self.storage
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The links to the other nodes, in a cluster.
    pub fn cluster(&self) -> Option<&Cluster> {
        self.cluster.as_ref()
    }

    /// This node's part in every shard's Raft group, in a cluster.
    pub fn replicator(&self) -> Option<&Replicator> {
        self.replicator.as_ref()
    }

    /// Resolves with the reason once the node must stop by itself: it
    /// started with an empty data directory, and its peers know it as a
    /// member ([`crate::replication::rejoin`]). Never on a node of its own.
    pub async fn failed(&self) -> String {
        match &self.replicator {
            Some(replicator) => replicator.failed().await,
            None => std::future::pending().await,
        }
    }

    /// Stops in the reverse order of the start: the entity actors, the
    /// shard groups, the links, the router; then flushes storage.
    pub async fn shutdown(self) -> Result<(), StorageError> {
        self.router
            .stop_children_and_wait(None, Some(Duration::from_secs(10)))
            .await;
        if let Some(replicator) = &self.replicator {
            replicator.shutdown().await;
        }
        if let Some(cluster) = &self.cluster {
            cluster.stop();
        }
        self.router.stop(None);
        let _ = self.router_task.await;
        self.storage.close().await
    }
}
