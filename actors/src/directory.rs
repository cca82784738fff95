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

#[derive(Clone, Default)]
pub struct Directory {
    users: Arc<RwLock<HashMap<UserId, (ActorId, Arc<Devices>)>>>,
}

impl Directory {
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
    /// except `except`'s.
    pub fn deliver(
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
