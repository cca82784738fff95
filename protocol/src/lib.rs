//! Tidings wire protocol, version 1.
//!
//! Everything a client and a node say to each other over WebSocket and HTTP:
//! identifiers and their validation ([`ids`]), the JSON frames in both
//! directions ([`frames`]), and the error codes every failure maps to
//! ([`error`]). With the `client` feature, [`client`] is a WebSocket client
//! that reconnects with backoff, resumes with `sync` and resends
//! unacknowledged sends with their `cmid`.
//!
//! The full description, with examples, is `docs/PROTOCOL.md`.

pub mod error;
pub mod frames;
pub mod ids;

#[cfg(feature = "client")]
pub mod client;

pub use error::{ErrorCode, ErrorFrame};
pub use frames::{ClientEnvelope, ClientFrame, Event, EventKind, Notification, ServerFrame};
pub use ids::{Cmid, ConvId, IdError, UserId};

/// Largest message `body` in bytes of UTF-8.
pub const MAX_BODY_BYTES: usize = 16 * 1024;
/// Largest notification payload, as serialized JSON bytes.
pub const MAX_PAYLOAD_BYTES: usize = 16 * 1024;
/// Longest conversation title in characters.
pub const MAX_TITLE_CHARS: usize = 200;
/// Longest `req` correlation string in characters.
pub const MAX_REQ_CHARS: usize = 64;
/// Most users a `presence` query may name.
pub const MAX_PRESENCE_USERS: usize = 100;
/// Most users one user may block.
pub const MAX_BLOCKED: usize = 1000;
/// Most members a conversation may have.
pub const MAX_MEMBERS: usize = 1000;
/// Largest `limit` of a `history` or `sync` page.
pub const MAX_LIMIT: u32 = 200;
/// `limit` of a `history` page when none is given.
pub const DEFAULT_HISTORY_LIMIT: u32 = 50;
/// Per-conversation `limit` of a `sync` reply when none is given.
pub const DEFAULT_SYNC_LIMIT: u32 = 100;
