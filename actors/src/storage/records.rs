//! What is stored: the records of conversations and users.
//!
//! These are the storage format (bincode through [`crate::codec`]), kept apart
//! from the wire format in `tidings-protocol` so either can change alone.

use serde::{Deserialize, Serialize};
use tidings_protocol::{Cmid, ConvId, Event, EventKind, UserId};

/// A conversation's state as of its latest committed event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConvMeta {
    pub title: Option<String>,
    pub members: Vec<UserId>,
    pub creator: UserId,
    pub version: u64,
}

/// One event of a conversation's log, without the conversation and version
/// that its key carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredEvent {
    pub ts: u64,
    pub from: UserId,
    pub kind: StoredKind,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum StoredKind {
    Created {
        title: Option<String>,
        members: Vec<UserId>,
    },
    Message {
        body: String,
        cmid: Option<Cmid>,
    },
    Edit {
        target: u64,
        rev: u32,
        body: String,
    },
    Delete {
        target: u64,
        rev: u32,
    },
    Join {
        users: Vec<UserId>,
    },
    Leave {
        users: Vec<UserId>,
    },
}

impl StoredEvent {
    pub fn into_event(self, conv: ConvId, version: u64) -> Event {
        let kind = match self.kind {
            StoredKind::Created { title, members } => EventKind::Created { title, members },
            StoredKind::Message { body, cmid } => EventKind::Message { body, cmid },
            StoredKind::Edit { target, rev, body } => EventKind::Edit { target, rev, body },
            StoredKind::Delete { target, rev } => EventKind::Delete { target, rev },
            StoredKind::Join { users } => EventKind::Join { users },
            StoredKind::Leave { users } => EventKind::Leave { users },
        };
        Event {
            conv,
            version,
            ts: self.ts,
            from: self.from,
            kind,
        }
    }
}

/// The current state of one message, for edit and delete conflicts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageState {
    pub from: UserId,
    pub rev: u32,
    /// `None` once deleted.
    pub body: Option<String>,
}

/// The ack of an accepted `cmid`, returned again to retries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CmidRecord {
    pub version: u64,
    pub ts: u64,
}

/// A user's own state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserMeta {
    pub notification_version: u64,
}

/// One notification of a user's log. The payload is kept as JSON text: it
/// is arbitrary JSON, which bincode cannot describe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredNotification {
    pub ts: u64,
    pub payload: String,
}

/// A conversation in a user's index (`user_convs`, in the user's shard):
/// whether the user is a member as of the conversation's `version`. A
/// change older than the entry is ignored, so changes that arrive out of
/// order leave the latest. Entries written before versions were kept hold
/// no value that decodes as this, and mean "member".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexEntry {
    pub version: u64,
    pub member: bool,
}

/// One change a conversation owes its members' indexes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexChange {
    pub user: UserId,
    pub entry: IndexEntry,
}

/// A conversation's index outbox: the changes to its members' indexes
/// (which live in other shards) that are not yet known to be written. It is
/// committed with the membership change itself, and cleared once every
/// change is written, so a leader that dies in between leaves it for the
/// next one to finish.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexOutbox {
    pub changes: Vec<IndexChange>,
}

impl IndexOutbox {
    /// Queues `users`' index changes, to be committed with the change at
    /// `version`.
    pub fn index(&mut self, users: &[UserId], version: u64, member: bool) {
        self.merge(users.iter().map(|user| IndexChange {
            user: user.clone(),
            entry: IndexEntry { version, member },
        }));
    }

    /// Adds `changes`; a newer change for a user replaces an older one.
    pub fn merge(&mut self, changes: impl IntoIterator<Item = IndexChange>) {
        for change in changes {
            match self.changes.iter_mut().find(|c| c.user == change.user) {
                Some(old) if old.entry.version <= change.entry.version => *old = change,
                Some(_) => {}
                None => self.changes.push(change),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(user: &str, version: u64, member: bool) -> IndexChange {
        IndexChange {
            user: UserId::try_from(user.to_owned()).unwrap(),
            entry: IndexEntry { version, member },
        }
    }

    #[test]
    fn an_outbox_keeps_each_users_latest_change() {
        let mut outbox = IndexOutbox::default();
        outbox.merge([change("al", 1, true), change("bo", 1, true)]);
        outbox.merge([change("al", 3, false), change("bo", 0, false)]);
        assert_eq!(
            outbox.changes,
            [change("al", 3, false), change("bo", 1, true)],
            "a newer change replaces, an older one does not"
        );
    }
}
