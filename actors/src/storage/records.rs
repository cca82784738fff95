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
    // New kinds go last: bincode stores the variant's index.
    Title {
        title: String,
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
            StoredKind::Title { title } => EventKind::Title { title },
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

/// The users a user has blocked (in the user meta family, in the user's
/// shard): none of them may open a direct conversation with the user or
/// add the user to a conversation.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockList {
    /// Sorted, without duplicates.
    pub users: Vec<UserId>,
}

/// Why a block list refuses a change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BlockError {
    #[error("a user cannot block themselves")]
    Themselves,
    #[error("a user may block at most {max} users")]
    Full { max: usize },
}

impl BlockList {
    pub fn contains(&self, user: &UserId) -> bool {
        self.users.binary_search(user).is_ok()
    }

    /// Adds `user` (blocked by `owner`); `Ok(false)` if already there.
    pub fn block(&mut self, owner: &UserId, user: UserId) -> Result<bool, BlockError> {
        if &user == owner {
            return Err(BlockError::Themselves);
        }
        match self.users.binary_search(&user) {
            Ok(_) => Ok(false),
            Err(_) if self.users.len() >= tidings_protocol::MAX_BLOCKED => Err(BlockError::Full {
                max: tidings_protocol::MAX_BLOCKED,
            }),
            Err(at) => {
                self.users.insert(at, user);
                Ok(true)
            }
        }
    }

    /// Removes `user`; `false` if it was not there.
    pub fn unblock(&mut self, user: &UserId) -> bool {
        match self.users.binary_search(user) {
            Ok(at) => {
                self.users.remove(at);
                true
            }
            Err(_) => false,
        }
    }
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

    fn user(name: &str) -> UserId {
        UserId::try_from(name.to_owned()).unwrap()
    }

    #[test]
    fn a_block_list_stays_sorted_and_says_what_changed() {
        let mut list = BlockList::default();
        let owner = user("me");
        assert_eq!(list.block(&owner, user("zed")), Ok(true));
        assert_eq!(list.block(&owner, user("al")), Ok(true));
        assert_eq!(list.block(&owner, user("zed")), Ok(false), "already there");
        assert_eq!(list.users, [user("al"), user("zed")]);
        assert!(list.contains(&user("al")) && !list.contains(&user("bo")));
        assert!(list.unblock(&user("al")));
        assert!(!list.unblock(&user("al")), "already gone");
        assert_eq!(list.users, [user("zed")]);
    }

    #[test]
    fn a_block_list_refuses_its_owner_and_growth_past_the_limit() {
        let owner = user("me");
        let mut list = BlockList::default();
        assert_eq!(
            list.block(&owner, owner.clone()),
            Err(BlockError::Themselves)
        );
        for i in 0..tidings_protocol::MAX_BLOCKED {
            assert_eq!(list.block(&owner, user(&format!("u{i}"))), Ok(true));
        }
        assert!(matches!(
            list.block(&owner, user("one-more")),
            Err(BlockError::Full { .. })
        ));
        assert_eq!(
            list.block(&owner, user("u7")),
            Ok(false),
            "no growth, no error"
        );
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
