//! The operations on entities: one [`ConvCommand`] or [`UserCommand`]
//! variant per operation, and one [`Answer`] for every reply.
//!
//! The same command is what a conversation's or user's mailbox carries
//! ([`crate::messages::ConvMsg::Command`]) and what crosses to the node
//! that leads the entity's shard ([`crate::service::forward`]): the service
//! maps a client frame to a command once ([`crate::service::Service`]),
//! and the entity's actor matches on it once. A new operation is one
//! variant here, one rule (`conversation::rules`), one arm in the actor,
//! and one mapping in the service.
//!
//! Commands and answers cross nodes in the one codec ([`crate::codec`]):
//! new variants go last. What has only the wire's JSON form (events,
//! notification payloads) rides inside as JSON text.

use serde::{Deserialize, Serialize};
use tidings_protocol::frames::{ConvSummary, SyncedConv, SyncedNotifications};
use tidings_protocol::{Cmid, ConvId, Event, UserId};

use crate::shard::{shard_of, ShardId};
use crate::storage::records::IndexEntry;

/// A conversation was created or opened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Created {
    pub conv: ConvId,
    pub version: u64,
}

/// A write was accepted and is durable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    pub conv: ConvId,
    pub version: u64,
    pub ts: u64,
    /// `Some` on sends: whether the cmid had been accepted before.
    pub dup: Option<bool>,
}

/// A page of a conversation's log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryPage {
    pub conv: ConvId,
    pub version: u64,
    #[serde(with = "crate::codec::json")]
    pub events: Vec<Event>,
    /// The page was cut at the reply's byte bound: more events follow in
    /// the direction it pages.
    pub more: bool,
}

/// Which part of a log a history request wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Page {
    pub after: Option<u64>,
    pub before: Option<u64>,
    pub limit: u32,
    /// The most JSON bytes of events the page may carry (at least one
    /// event goes in).
    pub max_bytes: usize,
}

/// A command for one entity.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Command {
    Conv(ConvId, ConvCommand),
    User(UserId, UserCommand),
}

impl Command {
    /// The shard of the entity it is for: where it runs.
    pub fn shard(&self) -> ShardId {
        match self {
            Command::Conv(conv, _) => shard_of(conv.as_str()),
            Command::User(user, _) => shard_of(user.as_str()),
        }
    }
}

/// What a conversation is asked. `by` is the authenticated user.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ConvCommand {
    Create {
        by: UserId,
        members: Vec<UserId>,
        title: Option<String>,
    },
    OpenDirect {
        by: UserId,
    },
    Send {
        by: UserId,
        body: String,
        cmid: Option<Cmid>,
        expect: Option<u64>,
    },
    Edit {
        by: UserId,
        target: u64,
        rev: u32,
        body: String,
    },
    Delete {
        by: UserId,
        target: u64,
        rev: u32,
    },
    Members {
        by: UserId,
        add: Vec<UserId>,
        remove: Vec<UserId>,
    },
    History {
        by: UserId,
        page: Page,
    },
    Summary {
        by: UserId,
    },
    /// The events after `after` (or the latest), for `sync`.
    Catchup {
        by: UserId,
        after: Option<u64>,
        limit: u32,
        /// The most JSON bytes of events to carry (at least one goes in).
        max_bytes: usize,
    },
    /// Answered [`Answer::Done`] at once; the other members' devices get
    /// `typing`.
    Typing {
        by: UserId,
    },
    Rename {
        by: UserId,
        title: String,
    },
}

impl ConvCommand {
    /// Whether it may start a conversation that is not stored: only the
    /// ones that create it. Any other for an unknown conversation is
    /// answered `not_found` without starting an actor.
    pub fn creates(&self) -> bool {
        match self {
            ConvCommand::Create { .. } | ConvCommand::OpenDirect { .. } => true,
            ConvCommand::Send { .. }
            | ConvCommand::Edit { .. }
            | ConvCommand::Delete { .. }
            | ConvCommand::Members { .. }
            | ConvCommand::History { .. }
            | ConvCommand::Summary { .. }
            | ConvCommand::Catchup { .. }
            | ConvCommand::Typing { .. }
            | ConvCommand::Rename { .. } => false,
        }
    }
}

/// What a user's actor is asked.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum UserCommand {
    /// A backend's notification: append it to the user's log, then push it.
    Notify {
        #[serde(with = "crate::codec::json")]
        payload: serde_json::Value,
    },
    Notifications {
        after: Option<u64>,
        limit: u32,
        /// The most JSON bytes of notifications to carry (at least one
        /// goes in).
        max_bytes: usize,
    },
    /// The conversations the user is a member of.
    Conversations,
    /// From a conversation (through the service): record in this user's
    /// index whether the user is a member of `conv` as of its `version`.
    Index { conv: ConvId, entry: IndexEntry },
    /// Add `user` to this user's block list (`block`), or take it off.
    Block { user: UserId, block: bool },
    /// Whether this user has blocked `user`.
    Blocks { user: UserId },
    /// This user's block list.
    BlockList,
}

/// The result of a command.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Answer {
    Created(Created),
    Ack(Ack),
    History(HistoryPage),
    Summary(ConvSummary),
    Synced(#[serde(with = "crate::codec::json")] SyncedConv),
    Version(u64),
    Notifications(#[serde(with = "crate::codec::json")] SyncedNotifications),
    Convs(Vec<ConvId>),
    Users(Vec<UserId>),
    Flag(bool),
    Done,
}

/// The answer a command was not expected to give.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("an entity gave an answer of the wrong kind")]
pub struct WrongAnswer;

macro_rules! answers {
    ($($variant:ident => $ty:ty),* $(,)?) => {$(
        impl TryFrom<Answer> for $ty {
            type Error = WrongAnswer;
            fn try_from(answer: Answer) -> Result<$ty, WrongAnswer> {
                match answer {
                    Answer::$variant(value) => Ok(value),
                    _ => Err(WrongAnswer),
                }
            }
        }
    )*};
}

answers! {
    Created => Created,
    Ack => Ack,
    History => HistoryPage,
    Summary => ConvSummary,
    Synced => SyncedConv,
    Version => u64,
    Notifications => SyncedNotifications,
    Convs => Vec<ConvId>,
    Users => Vec<UserId>,
    Flag => bool,
}

impl TryFrom<Answer> for () {
    type Error = WrongAnswer;
    fn try_from(answer: Answer) -> Result<(), WrongAnswer> {
        match answer {
            Answer::Done => Ok(()),
            _ => Err(WrongAnswer),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_create_and_open_direct_may_start_an_unstored_conversation() {
        let by = UserId::try_from("alice").unwrap();
        let page = Page {
            after: None,
            before: None,
            limit: 1,
            max_bytes: 1,
        };
        let creating = [
            ConvCommand::Create {
                by: by.clone(),
                members: Vec::new(),
                title: None,
            },
            ConvCommand::OpenDirect { by: by.clone() },
        ];
        assert!(creating.iter().all(ConvCommand::creates));
        let others = [
            ConvCommand::Send {
                by: by.clone(),
                body: "hi".into(),
                cmid: None,
                expect: None,
            },
            ConvCommand::History {
                by: by.clone(),
                page,
            },
            ConvCommand::Catchup {
                by: by.clone(),
                after: None,
                limit: 1,
                max_bytes: 1,
            },
            ConvCommand::Summary { by: by.clone() },
            ConvCommand::Rename {
                by: by.clone(),
                title: "x".into(),
            },
            ConvCommand::Typing { by },
        ];
        assert!(!others.iter().any(ConvCommand::creates));
    }

    #[test]
    fn an_answer_is_taken_only_as_the_kind_it_is() {
        assert_eq!(u64::try_from(Answer::Version(3)), Ok(3));
        assert_eq!(<()>::try_from(Answer::Done), Ok(()));
        assert_eq!(bool::try_from(Answer::Version(3)), Err(WrongAnswer));
        assert!(Ack::try_from(Answer::Done).is_err());
    }

    fn round_trip<T: Serialize + serde::de::DeserializeOwned + std::fmt::Debug>(value: &T) {
        let bytes = crate::codec::encode(value).unwrap();
        let back: T = crate::codec::decode(&bytes).unwrap();
        assert_eq!(format!("{back:?}"), format!("{value:?}"));
    }

    #[test]
    fn commands_and_answers_cross_nodes_in_the_codec_and_come_back_the_same() {
        let bob = UserId::try_from("bob").unwrap();
        let conv = ConvId::try_from("g:abcdefghij0123456789").unwrap();
        round_trip(&Command::User(
            bob.clone(),
            UserCommand::Notify {
                payload: serde_json::json!({"kind": "invoice", "n": [1, 2.5, null]}),
            },
        ));
        round_trip(&Command::Conv(
            conv.clone(),
            ConvCommand::Send {
                by: bob.clone(),
                body: "hi".into(),
                cmid: Some(Cmid::try_from("m1").unwrap()),
                expect: Some(3),
            },
        ));
        let event = Event {
            conv: conv.clone(),
            version: 2,
            ts: 7,
            from: bob.clone(),
            kind: tidings_protocol::EventKind::Message {
                body: "hi".into(),
                cmid: None,
            },
        };
        round_trip(&Answer::History(HistoryPage {
            conv: conv.clone(),
            version: 2,
            events: vec![event.clone()],
            more: true,
        }));
        round_trip(&Answer::Synced(SyncedConv {
            conv: conv.clone(),
            title: Some("t".into()),
            members: vec![bob],
            version: 2,
            events: vec![event],
            more: false,
        }));
        round_trip(&Answer::Notifications(SyncedNotifications {
            version: 1,
            events: vec![tidings_protocol::frames::Notification {
                version: 1,
                ts: 5,
                payload: serde_json::json!({"a": {"b": []}}),
            }],
            more: false,
        }));
        round_trip(&Answer::Ack(Ack {
            conv,
            version: 4,
            ts: 9,
            dup: Some(false),
        }));
    }
}
