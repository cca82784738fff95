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
//!    handshake, membership) and then the shard groups, which send
//!    through the links;
//! 3. the core starts ([`tidings_actors::start`]): the router, and with
//!    it the service, over the commit log (storage, or the shard groups),
//!    the placement (in a cluster) and a directory whose fan-out reaches
//!    the other nodes' devices too;
//! 4. in a cluster, the peer actor starts with the service, the shard
//!    groups and the directory, and only then do other nodes see this one
//!    as up; a lost shard leadership stops the shard's actors, and a lost
//!    link makes every device here sync.
//!
//! Each part gets what it needs as it starts; nothing is handed to one
//! later. Shutdown stops the entity actors (nothing is written after), the
//! peer actor, the shard groups, the links and the router, then flushes
//! and closes storage.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ractor::ActorRef;
use tidings_actors::directory::Directory;
use tidings_actors::remote::{Placement, RemoteFanout};
use tidings_actors::storage::CommitLog;
use tidings_actors::{
    CoreArgs, EntityConfig, Metrics, RouterMsg, Service, ServiceConfig, Storage, StorageError,
    StorageOptions,
};
use tidings_protocol::ServerFrame;
use tokio::task::JoinHandle;

use crate::peer::{Handlers, PeerMsg};
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
}

/// A node's running actors, storage and, in a cluster, links and shard
/// groups.
pub struct Runtime {
    service: Service,
    storage: Storage,
    metrics: Arc<Metrics>,
    cluster: Option<Cluster>,
    replicator: Option<Replicator>,
    peer: Option<ActorRef<PeerMsg>>,
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
        let replicator = match (&cluster, &config.cluster) {
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
                    settings.raft.clone(),
                    config.call_timeout,
                )
                .await?;
                Some(replicator)
            }
            _ => None,
        };
        // In a cluster, fan-out reaches the devices on the other nodes too.
        let remote = cluster
            .as_ref()
            .map(|c| Arc::new(c.peers().clone()) as Arc<dyn RemoteFanout>);
        let directory = Directory::new(remote, metrics.users_online.clone());
        let log: Arc<dyn CommitLog> = match &replicator {
            Some(replicator) => Arc::new(replicator.clone()),
            None => Arc::new(storage.clone()),
        };
        let core = tidings_actors::start(CoreArgs {
            storage: storage.clone(),
            log,
            entity: config.entity.clone(),
            metrics: metrics.clone(),
            service: ServiceConfig {
                placement: replicator
                    .as_ref()
                    .map(|r| Arc::new(r.clone()) as Arc<dyn Placement>),
                max_reply_bytes: config.max_reply_bytes,
                ..ServiceConfig::new(directory.clone(), config.call_timeout)
            },
        })
        .await?;
        let (service, router, router_task) =
            (core.service, core.routes.router().clone(), core.router_task);
        let peer = match (&cluster, &replicator) {
            (Some(cluster), Some(replicator)) => {
                let routes = core.routes.clone();
                replicator.on_leadership_lost(move |shard| routes.shard_lost(shard));
                tokio::spawn(resync_on_loss(
                    cluster.peers().losses(),
                    directory.clone(),
                    metrics.clone(),
                ));
                let handlers = Handlers {
                    replicator: replicator.clone(),
                    service: service.clone(),
                    directory,
                    metrics: metrics.clone(),
                };
                Some(cluster.serve(handlers).await?)
            }
            _ => None,
        };
        Ok(Runtime {
            service,
            storage,
            metrics,
            cluster,
            replicator,
            peer,
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
    /// peer actor, the shard groups, the links, the router; then flushes
    /// storage.
    pub async fn shutdown(self) -> Result<(), StorageError> {
        self.router
            .stop_children_and_wait(None, Some(Duration::from_secs(10)))
            .await;
        if let Some(peer) = &self.peer {
            peer.stop(None);
        }
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

/// Events the lost link carried are gone: every device here syncs. (Their
/// sync waits for the shards' new leaders, so it sees every committed
/// event.)
async fn resync_on_loss(
    mut losses: tokio::sync::watch::Receiver<u64>,
    directory: Directory,
    metrics: Arc<Metrics>,
) {
    while losses.changed().await.is_ok() {
        let frame = ServerFrame::Resync.push().to_json().into();
        directory.deliver_everyone(&frame, &metrics);
    }
}
