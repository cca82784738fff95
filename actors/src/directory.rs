//! The directory of live user actors, for fan-out.
//!
//! Conversation actors hand events straight to the members' user actors
//! through it, instead of through the router: at a few thousand messages a
//! second into groups of twenty, a single router forwarding every delivery
//! was the node's bottleneck. The router alone writes the directory (when
//! it starts and stops user actors); everyone reads it.
//!
//! A delivery needs no place in the router's idle accounting: a user actor
//! with a device connected never stops, and one without devices has no one
//! to deliver to (its devices get the event from storage when they sync).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use ractor::{ActorId, ActorRef};
use tidings_protocol::UserId;

use crate::messages::UserMsg;
use crate::outbound::Frame;

#[derive(Clone, Default)]
pub struct Directory {
    users: Arc<RwLock<HashMap<UserId, ActorRef<UserMsg>>>>,
}

impl Directory {
    pub(crate) fn insert(&self, user: UserId, actor: ActorRef<UserMsg>) {
        self.users
            .write()
            .expect("directory lock")
            .insert(user, actor);
    }

    /// Removes `user` if it is still served by `actor`.
    pub(crate) fn remove(&self, user: &UserId, actor: ActorId) {
        let mut users = self.users.write().expect("directory lock");
        if users.get(user).is_some_and(|a| a.get_id() == actor) {
            users.remove(user);
        }
    }

    /// Hands `frame` to the online ones among `users`, except one.
    pub fn deliver(&self, users: &[UserId], except: Option<&UserId>, frame: &Frame) {
        let live = self.users.read().expect("directory lock");
        for user in users {
            if Some(user) == except {
                continue;
            }
            if let Some(actor) = live.get(user) {
                let _ = actor.send_message(UserMsg::Deliver(frame.clone()));
            }
        }
    }

    pub fn len(&self) -> usize {
        self.users.read().expect("directory lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
