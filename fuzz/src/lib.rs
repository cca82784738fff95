//! Fuzz targets: what Tidings does with bytes that come from outside, one
//! function per entry point, each taking one input and panicking only on a
//! bug. Everything a node reads from a client or a peer goes through one
//! of them:
//!
//! - [`client_frame`]: a client's text frame, parsed and validated as the
//!   connection does before it serves it;
//! - [`WsReader`]: raw client bytes after the upgrade, read by the node's
//!   own WebSocket reader (`tidings_node::ws::read_client_bytes`), each text
//!   frame handed on to [`client_frame`];
//! - [`ClusterDecoders`]: a payload from another node, through every
//!   decoder a peer message reaches (heartbeats, Raft requests and answers,
//!   forwarded requests and their answers, presence, event deliveries,
//!   device locations).
//!
//! `make fuzz` drives them with proptest for a bounded number of cases
//! (`tests/fuzz.rs`, run only there); every input that ever crashed one is
//! a named test in `tests/regressions.rs`, which `make test` runs.

use std::time::Duration;

use tidings_actors::codec::Encoded;
use tidings_actors::command::Command;
use tidings_actors::connection::ClientData;
use tidings_actors::directory::Directory;
use tidings_actors::metrics::Metrics;
use tidings_actors::outbound;
use tidings_cluster::forward::Forwarded;
use tidings_cluster::locations::{Located, Locations};
use tidings_cluster::peer::Hello;
use tidings_cluster::replication::network::{RaftRequest, RaftResponse};
use tidings_cluster::replication::rejoin::{self, Knock};
use tidings_protocol::frames::PresenceInfo;
use tidings_protocol::{ClientEnvelope, ErrorCode, UserId};

pub mod inputs;

/// The largest client frame the reader takes, as a node runs by default.
pub const MAX_FRAME: usize = 64 * 1024;

/// Parses one client text frame as a connection does. A frame that parses
/// is valid, and reads back the same once serialized; one that does not
/// gets a client error with a message and, if it named one, its `req`.
pub fn client_frame(text: &str) {
    match ClientEnvelope::parse(text) {
        Ok(envelope) => {
            if let Err(err) = envelope.validate() {
                panic!("{text:?} parsed but is invalid: {}", err.message);
            }
            let again = serde_json::to_string(&envelope).expect("a parsed frame serializes");
            match ClientEnvelope::parse(&again) {
                Ok(back) => assert_eq!(back, envelope, "{text:?} read back as {again:?}"),
                Err((_, err)) => panic!("{text:?} serialized as {again:?}: {}", err.message),
            }
        }
        Err((req, err)) => {
            assert!(
                matches!(err.code, ErrorCode::BadRequest | ErrorCode::TooLarge),
                "{text:?} refused with {:?}",
                err.code
            );
            assert!(!err.message.is_empty(), "{text:?} refused without a reason");
            if let Some(req) = req {
                assert!(req.chars().count() <= tidings_protocol::MAX_REQ_CHARS);
            }
        }
    }
}

/// Stands in for the connection: keeps each text frame the reader hands
/// over, and is done with it at once.
#[derive(Default)]
struct Collector {
    texts: Vec<String>,
}

impl tidings_node::ws::Serves for Collector {
    fn serve(&mut self, data: ClientData) -> futures_util::future::BoxFuture<'_, ()> {
        if let ClientData::Text(text) = data {
            self.texts.push(text);
        }
        Box::pin(std::future::ready(()))
    }
}

/// The node's WebSocket reader over bytes in memory, on one runtime for
/// every input, with a stand-in connection.
pub struct WsReader {
    runtime: tokio::runtime::Runtime,
}

impl Default for WsReader {
    fn default() -> Self {
        Self::new()
    }
}

impl WsReader {
    pub fn new() -> WsReader {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        WsReader { runtime }
    }

    /// Reads `bytes` as a client's bytes after the upgrade, until they end
    /// (which must be soon), and returns the text frames handed on, each
    /// also parsed as the connection would.
    pub fn read(&self, bytes: &[u8]) -> Vec<String> {
        let mut collector = Collector::default();
        self.runtime.block_on(async {
            let (out, _receiver) = outbound::channel(1024);
            let read = tidings_node::ws::read_client_bytes(bytes, &mut collector, &out, MAX_FRAME);
            if tokio::time::timeout(Duration::from_secs(10), read)
                .await
                .is_err()
            {
                panic!("the reader did not end on {} bytes: {bytes:?}", bytes.len());
            }
        });
        for text in &collector.texts {
            client_frame(text);
        }
        collector.texts
    }
}

/// Every decoder a payload from another node reaches.
#[derive(Default)]
pub struct ClusterDecoders {
    directory: Directory,
    metrics: Metrics,
}

impl ClusterDecoders {
    pub fn new() -> ClusterDecoders {
        ClusterDecoders::default()
    }

    /// Feeds `bytes`, as every message a peer sends them, to its decoder;
    /// none may panic or abort.
    pub fn feed(&self, bytes: &[u8]) {
        let _ = arrived::<Hello>(bytes).decode();
        let _ = arrived::<RaftRequest>(bytes).decode();
        let _ = arrived::<Option<RaftResponse>>(bytes).decode();
        let _ = arrived::<Command>(bytes).decode();
        let _ = arrived::<Forwarded>(bytes).decode();
        let _ = arrived::<Vec<UserId>>(bytes).decode();
        let _ = arrived::<Vec<PresenceInfo>>(bytes).decode();
        let _ = arrived::<Knock>(bytes).decode();
        let _ = arrived::<rejoin::Answer>(bytes).decode();
        self.directory
            .deliver_from_peer(&arrived(bytes), &self.metrics);
        if let Ok(located) = arrived::<Located>(bytes).decode() {
            // A fresh table each time: what it learns from one input must
            // not pile up over a million.
            let _ = Locations::new("fuzz".to_owned()).apply(located);
        }
    }
}

/// `bytes` as a cluster link hands them to the peer actor, in a
/// [`PeerMsg`](tidings_cluster::peer::PeerMsg) field of type `T`.
fn arrived<T>(bytes: &[u8]) -> Encoded<T> {
    ractor::BytesConvertable::from_bytes(bytes.to_vec())
}
