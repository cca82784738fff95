//! The directory of live users' devices, for fan-out.
//!
//! Each user actor owns the list of its user's connected devices
//! ([`Devices`]) and registers it here when it starts; it alone changes the
//! list (a device subscribes, unsubscribes, or is found closed). Conversation
//! actors push an event's frame, serialized once, straight into the queues of
//! the members' devices through the directory: neither the router nor the
//! user actor's mailbox carries a message per delivery. At a few thousand
//! messages a second into groups of twenty, first the router and then the
//! per-member casts to user actors were the node's largest costs.
//!
//! A delivery needs no place in the router's idle accounting: a user actor
//! with a device connected never stops, and one without devices has no one
//! to deliver to (its devices get the event from storage when they sync).
//! Order holds: one conversation actor pushes its events in version order
//! into each queue.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use ractor::ActorId;
use tidings_protocol::UserId;

use serde::{Deserialize, Serialize};

use crate::cluster::peer::PeerMsg;
use crate::cluster::Peers;
use crate::codec;
use crate::metrics::Metrics;
use crate::outbound::{Frame, Outbound};

/// One user's connected devices: written by its user actor, read by
/// everyone who delivers to it.
#[derive(Default)]
pub struct Devices {
    queues: RwLock<Vec<Outbound>>,
}

impl Devices {
    pub fn add(&self, device: Outbound) {
        self.queues.write().expect("devices lock").push(device);
    }

    pub fn remove(&self, id: u64) {
        self.queues
            .write()
            .expect("devices lock")
            .retain(|d| d.id() != id);
    }

    /// Forgets closed devices; returns how many remain.
    pub fn prune(&self) -> usize {
        let mut queues = self.queues.write().expect("devices lock");
        queues.retain(Outbound::is_open);
        queues.len()
    }

    /// Queues `frame` on every device; returns how many took it.
    pub fn push(&self, frame: &Frame, metrics: &Metrics) -> u64 {
        let queues = self.queues.read().expect("devices lock");
        let mut queued = 0;
        for device in queues.iter() {
            if device.push(frame.clone()) {
                queued += 1;
            } else if device.is_closed_for_slowness() {
                metrics.slow_consumer_closes.inc();
            }
        }
        queued
    }
}

/// An event for the devices on another node: one message per node that has
/// a device of a recipient, naming those recipients.
#[derive(Debug, Serialize, Deserialize)]
pub struct Delivery {
    pub users: Vec<UserId>,
    pub except: Option<UserId>,
    pub frame: Vec<u8>,
}

/// A [`Delivery`] as it is sent: encodes the same, without copying the
/// frame or the recipients for each node.
#[derive(Serialize)]
struct DeliveryRef<'a> {
    users: &'a [UserId],
    except: Option<&'a UserId>,
    frame: &'a [u8],
}

#[derive(Clone, Default)]
pub struct Directory {
    users: Arc<RwLock<HashMap<UserId, (ActorId, Arc<Devices>)>>>,
    /// In a cluster, the other nodes, whose devices get events too.
    peers: Option<Peers>,
}

impl Directory {
    /// A directory that also hands every event to the nodes in `peers`.
    pub fn with_peers(peers: Peers) -> Directory {
        Directory {
            users: Arc::default(),
            peers: Some(peers),
        }
    }

    /// Registers the devices of `user`, served by `actor`.
    pub(crate) fn insert(&self, user: UserId, actor: ActorId, devices: Arc<Devices>) {
        self.users
            .write()
            .expect("directory lock")
            .insert(user, (actor, devices));
    }

    /// Removes `user` if it is still served by `actor`.
    pub(crate) fn remove(&self, user: &UserId, actor: ActorId) {
        let mut users = self.users.write().expect("directory lock");
        if users.get(user).is_some_and(|(a, _)| *a == actor) {
            users.remove(user);
        }
    }

    /// Queues `frame` on every device of the online ones among `users`,
    /// except `except`'s, here and, in a cluster, on every other node that
    /// has (or may have) a device of one of them.
    pub fn deliver(
        &self,
        users: &[UserId],
        except: Option<&UserId>,
        frame: &Frame,
        metrics: &Metrics,
    ) {
        self.deliver_here(users, except, frame, metrics);
        let Some(peers) = &self.peers else { return };
        for (node, users) in peers.recipients(users) {
            let delivery = DeliveryRef {
                users: &users,
                except,
                frame: frame.as_ref(),
            };
            match codec::encode(&delivery) {
                Ok(bytes) => {
                    let _ = node.cast(PeerMsg::Deliver(bytes));
                }
                Err(err) => tracing::error!(error = %err, "cannot encode a delivery"),
            }
        }
    }

    /// In a cluster: tells the other nodes whether `user` has a device
    /// here (they send its events here only if so).
    pub(crate) fn announce(&self, user: &UserId, online: bool) {
        if let Some(peers) = &self.peers {
            peers.announce(user, online);
        }
    }

    /// Queues `frame` on every device connected here.
    pub fn deliver_everyone(&self, frame: &Frame, metrics: &Metrics) {
        let live = self.users.read().expect("directory lock");
        let queued: u64 = live
            .values()
            .map(|(_, devices)| devices.push(frame, metrics))
            .sum();
        metrics.deliveries.inc_by(queued);
    }

    /// Queues a [`Delivery`] from another node on the devices here.
    pub fn deliver_from_peer(&self, bytes: &[u8], metrics: &Metrics) {
        metrics.peer_deliveries_received.inc();
        match codec::decode::<Delivery>(bytes) {
            Ok(d) => self.deliver_here(&d.users, d.except.as_ref(), &d.frame.into(), metrics),
            Err(err) => tracing::warn!(error = %err, "undecodable delivery dropped"),
        }
    }

    fn deliver_here(
        &self,
        users: &[UserId],
        except: Option<&UserId>,
        frame: &Frame,
        metrics: &Metrics,
    ) {
        let live = self.users.read().expect("directory lock");
        let mut queued = 0;
        for user in users {
            if Some(user) == except {
                continue;
            }
            if let Some((_, devices)) = live.get(user) {
                queued += devices.push(frame, metrics);
            }
        }
        metrics.deliveries.inc_by(queued);
    }

    pub fn len(&self) -> usize {
        self.users.read().expect("directory lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_delivery_sent_by_reference_reads_back_as_a_delivery() {
        let users = [
            UserId::try_from("al").unwrap(),
            UserId::try_from("bo").unwrap(),
        ];
        let sent = codec::encode(&DeliveryRef {
            users: &users,
            except: Some(&users[1]),
            frame: b"{\"type\":\"event\"}",
        })
        .unwrap();
        let read: Delivery = codec::decode(&sent).unwrap();
        assert_eq!(read.users, users);
        assert_eq!(read.except.as_ref(), Some(&users[1]));
        assert_eq!(read.frame, b"{\"type\":\"event\"}");
    }
}
