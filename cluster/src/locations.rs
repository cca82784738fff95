//! Where users' devices are: which users have a device connected to each
//! linked node, so that an event crosses only to the nodes that have one of
//! its recipients, carrying just those.
//!
//! Each node tells every peer when one of its users gets a first device or
//! loses the last ([`Locations::announce`]), and sends its whole set when a
//! link comes up (and asks for the peer's). What a node has not heard a
//! whole set from, it knows nothing about, and sends it every event with
//! every recipient, as before: a location that is missing or late costs
//! traffic, never an event.
//!
//! A device that connects misses nothing: the node announces it before the
//! device's first `sync`, on the same link (and so ahead of) any request
//! that sync forwards to the conversation's leader. An event that leader
//! published before it heard the announcement is therefore already in what
//! the sync reads.

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, RwLock};

use ractor::ActorRef;
use serde::{Deserialize, Serialize};
use tidings_actors::codec::Encoded;
use tidings_protocol::UserId;

use crate::peer::PeerMsg;

/// What one node tells another about its users.
#[derive(Debug, Serialize, Deserialize)]
pub struct Located {
    from: String,
    news: News,
}

#[derive(Debug, Serialize, Deserialize)]
pub enum News {
    /// Every user with a device on the sender; `answer` asks for the
    /// receiver's own set in return.
    All {
        users: Vec<UserId>,
        answer: bool,
    },
    Online(UserId),
    Offline(UserId),
}

pub struct Locations {
    node: String,
    /// The users with a device here, as announced to the peers. Held while
    /// announcing, so that announcements leave in the order of changes.
    here: Mutex<HashSet<UserId>>,
    /// Per peer that has sent its whole set: its users with a device.
    there: RwLock<HashMap<String, HashSet<UserId>>>,
}

impl Locations {
    pub fn new(node: String) -> Locations {
        Locations {
            node,
            here: Mutex::default(),
            there: RwLock::default(),
        }
    }

    /// Tells the nodes `peers` lists that `user` now has (or no longer has)
    /// a device here, if that changed.
    pub fn announce(
        &self,
        user: &UserId,
        online: bool,
        peers: impl FnOnce() -> Vec<ActorRef<PeerMsg>>,
    ) {
        let mut here = self.here.lock().expect("locations lock");
        let changed = if online {
            here.insert(user.clone())
        } else {
            here.remove(user)
        };
        if !changed {
            return;
        }
        let peers = peers();
        if peers.is_empty() {
            return;
        }
        let news = if online {
            News::Online(user.clone())
        } else {
            News::Offline(user.clone())
        };
        if let Some(located) = self.encode(news) {
            for peer in &peers {
                let _ = peer.cast(PeerMsg::Located(located.clone()));
            }
        }
    }

    /// Sends `peer` every user with a device here (on a new link).
    pub fn introduce(&self, peer: &ActorRef<PeerMsg>, answer: bool) {
        let here = self.here.lock().expect("locations lock");
        let users = here.iter().cloned().collect();
        if let Some(located) = self.encode(News::All { users, answer }) {
            let _ = peer.cast(PeerMsg::Located(located));
        }
    }

    fn encode(&self, news: News) -> Option<Encoded<Located>> {
        let located = Located {
            from: self.node.clone(),
            news,
        };
        Encoded::new(&located)
            .inspect_err(|err| tracing::error!(error = %err, "cannot encode a location"))
            .ok()
    }

    /// Takes in what a peer said; returns the peer's name if it asked for
    /// this node's whole set in return.
    pub fn apply(&self, located: Located) -> Option<String> {
        let mut there = self.there.write().expect("locations lock");
        match located.news {
            News::All { users, answer } => {
                there.insert(located.from.clone(), users.into_iter().collect());
                return answer.then_some(located.from);
            }
            News::Online(user) => {
                if let Some(users) = there.get_mut(&located.from) {
                    users.insert(user);
                }
            }
            News::Offline(user) => {
                if let Some(users) = there.get_mut(&located.from) {
                    users.remove(&user);
                }
            }
        }
        None
    }

    /// Forgets what `node` said: its link went down or was replaced, and
    /// what it sends next starts from a whole set again.
    pub fn forget(&self, node: &str) {
        self.there.write().expect("locations lock").remove(node);
    }

    /// The recipients among `users` to send to `node`: those with a device
    /// there, or all of them if this node does not know; `None` if none.
    pub fn recipients(&self, node: &str, users: &[UserId]) -> Option<Vec<UserId>> {
        let there = self.there.read().expect("locations lock");
        let chosen: Vec<UserId> = match there.get(node) {
            None => users.to_vec(),
            Some(online) => users
                .iter()
                .filter(|u| online.contains(*u))
                .cloned()
                .collect(),
        };
        (!chosen.is_empty()).then_some(chosen)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(name: &str) -> UserId {
        UserId::try_from(name.to_owned()).unwrap()
    }

    /// What `from` says, as it arrives: through the codec.
    fn news(from: &str, news: News) -> Located {
        Encoded::new(&Located {
            from: from.to_owned(),
            news,
        })
        .unwrap()
        .decode()
        .unwrap()
    }

    #[test]
    fn events_go_only_where_a_recipient_is_once_the_whole_set_is_known() {
        let locations = Locations::new("n1".into());
        let all = [user("al"), user("bo"), user("cy")];
        assert_eq!(
            locations.recipients("n2", &all).unwrap(),
            all,
            "nothing heard from n2: everyone"
        );
        // An update before the whole set changes nothing.
        locations.apply(news("n2", News::Online(user("al"))));
        assert_eq!(locations.recipients("n2", &all).unwrap(), all);
        let asked = locations.apply(news(
            "n2",
            News::All {
                users: vec![user("bo")],
                answer: true,
            },
        ));
        assert_eq!(asked.as_deref(), Some("n2"));
        assert_eq!(locations.recipients("n2", &all).unwrap(), [user("bo")]);
        locations.apply(news("n2", News::Online(user("cy"))));
        locations.apply(news("n2", News::Offline(user("bo"))));
        assert_eq!(locations.recipients("n2", &all).unwrap(), [user("cy")]);
        assert_eq!(locations.recipients("n2", &[user("al")]), None);
        locations.forget("n2");
        assert_eq!(locations.recipients("n2", &all).unwrap(), all);
    }
}
