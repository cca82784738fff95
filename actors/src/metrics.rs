//! Prometheus metrics of a node, rendered at `GET /metrics`.

use prometheus_client::encoding::{text::encode, EncodeLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tidings_protocol::ErrorCode;

use crate::storage::CommitStats;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabel {
    pub code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: &'static str,
}

pub struct Metrics {
    registry: Registry,
    pub connections: Gauge,
    pub users_online: Gauge,
    pub frames_received: Counter,
    pub events_committed: Counter,
    pub notifications_committed: Counter,
    pub deliveries: Counter,
    pub peer_deliveries_received: Counter,
    pub slow_consumer_closes: Counter,
    pub errors: Family<CodeLabel, Counter>,
    pub entity_actors: Family<KindLabel, Gauge>,
    entity_actors_started: Family<KindLabel, Counter>,
    commit_batches: Gauge,
    commit_write_sets: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("tidings");
        let metrics = Metrics {
            registry: Registry::default(),
            connections: Gauge::default(),
            users_online: Gauge::default(),
            frames_received: Counter::default(),
            events_committed: Counter::default(),
            notifications_committed: Counter::default(),
            deliveries: Counter::default(),
            peer_deliveries_received: Counter::default(),
            slow_consumer_closes: Counter::default(),
            errors: Family::default(),
            entity_actors: Family::default(),
            entity_actors_started: Family::default(),
            commit_batches: Gauge::default(),
            commit_write_sets: Gauge::default(),
        };
        registry.register(
            "connections",
            "Open WebSocket connections",
            metrics.connections.clone(),
        );
        registry.register(
            "users_online",
            "Users with a device connected to this node",
            metrics.users_online.clone(),
        );
        registry.register(
            "frames_received",
            "Client frames received over WebSocket",
            metrics.frames_received.clone(),
        );
        registry.register(
            "events_committed",
            "Conversation events made durable",
            metrics.events_committed.clone(),
        );
        registry.register(
            "notifications_committed",
            "Notifications made durable",
            metrics.notifications_committed.clone(),
        );
        registry.register(
            "peer_deliveries_received",
            "Events another node sent here for the devices connected here",
            metrics.peer_deliveries_received.clone(),
        );
        registry.register(
            "deliveries",
            "Frames queued to devices by fan-out",
            metrics.deliveries.clone(),
        );
        registry.register(
            "slow_consumer_closes",
            "Connections closed with 1013 for reading too slowly",
            metrics.slow_consumer_closes.clone(),
        );
        registry.register(
            "errors",
            "Errors returned to clients, by code",
            metrics.errors.clone(),
        );
        registry.register(
            "entity_actors",
            "Live entity actors, by kind",
            metrics.entity_actors.clone(),
        );
        registry.register(
            "entity_actors_started",
            "Entity actors started since the node started, by kind: if this \
             rises fast while the live count stays level, actors stop when \
             idle only to start again (raise --entity-idle)",
            metrics.entity_actors_started.clone(),
        );
        registry.register(
            "commit_batches",
            "Synced write batches (group commits) since start",
            metrics.commit_batches.clone(),
        );
        registry.register(
            "commit_write_sets",
            "Write sets committed in those batches since start",
            metrics.commit_write_sets.clone(),
        );
        Metrics {
            registry,
            ..metrics
        }
    }

    pub fn error(&self, code: ErrorCode) {
        self.errors
            .get_or_create(&CodeLabel {
                code: code.as_str().to_owned(),
            })
            .inc();
    }

    /// An entity actor of `kind` has started: one more live, one more
    /// started.
    pub fn entity_started(&self, kind: &'static str) {
        self.entity_gauge(kind).inc();
        self.entity_actors_started
            .get_or_create(&KindLabel { kind })
            .inc();
    }

    pub fn entity_gauge(&self, kind: &'static str) -> Gauge {
        self.entity_actors
            .get_or_create(&KindLabel { kind })
            .clone()
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self, commits: CommitStats) -> String {
        self.commit_batches.set(commits.batches as i64);
        self.commit_write_sets.set(commits.write_sets as i64);
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}
