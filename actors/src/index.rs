//! The one thing an entity asks of other entities: a conversation writes
//! its members' indexes (each user's list of conversations, in the user's
//! own shard) after a membership change. The service implements it,
//! wherever the user's shard is led; an entity gets it when it starts, and
//! knows nothing of the service.

use std::time::Duration;

use futures_util::future::BoxFuture;
use tidings_protocol::{ConvId, UserId};

use crate::error::Error;

use crate::storage::records::IndexEntry;

/// Writes members' indexes.
pub trait Indexes: Send + Sync + 'static {
    /// Records in `user`'s index whether the user is a member of `conv` as
    /// of `entry.version` (a later entry already there wins).
    fn index<'a>(
        &'a self,
        user: &'a UserId,
        conv: &'a ConvId,
        entry: IndexEntry,
    ) -> BoxFuture<'a, Result<(), Error>>;

    /// How long one write may take before it is answered `unavailable`.
    fn timeout(&self) -> Duration;
}
