//! The directory of connected devices, by user: each user's fan-out list.
//!
//! A connection subscribes its device here under its user when it opens
//! ([`Directory::subscribe`]); the [`Subscription`] it holds takes the
//! device out again when the connection ends, however it ends. Conversation
//! actors push an event's frame, serialized once, straight into the queues
//! of the members' devices, and a user actor pushes a notification into its
//! user's: neither the router nor any mailbox carries a message per
//! delivery. At a few thousand messages a second into groups of twenty,
//! first the router and then per-member casts to user actors were the
//! node's largest costs.
//!
//! The list lives here and not in the user actor so that a user's actor
//! need not run while the user is merely connected: it is started for the
//! user's own log (notifications, the list of conversations) and stops when
//! idle like every entity actor. An idle connection then costs its socket,
//! its connection (in its reader's task) and one entry here. A delivery needs no place in the
//! router's idle accounting: the list does not depend on any actor.
//! Order holds: one conversation actor pushes its events in version order
//! into each queue.
//!
//! A conversation keeps its members' devices between events in a
//! [`Fanout`], looked up again only when a device here subscribed or left
//! since: per event, one check of a counter instead of a lookup per member.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use prometheus_client::metrics::gauge::Gauge;
use serde::{Deserialize, Serialize};
use tidings_protocol::UserId;

use crate::codec::{self, Encoded};
use crate::metrics::Metrics;
use crate::outbound::{Frame, Outbound, Refused};
use crate::remote::RemoteFanout;

/// Queues `frame` on every device in `devices`; returns how many took it.
fn push(devices: &[Outbound], frame: &Frame, metrics: &Metrics) -> u64 {
    let mut queued = 0;
    for device in devices {
        match device.try_push(frame.clone()) {
            Ok(()) => queued += 1,
            Err(Refused::TooSlow) => {
                metrics.slow_consumer_closes.inc();
            }
            Err(Refused::Closed) => {}
        }
    }
    queued
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

impl Delivery {
    /// A delivery of `frame` to `users` (not `except`), encoded for
    /// [`Directory::deliver_from_peer`] on the other node.
    pub fn encode(
        users: &[UserId],
        except: Option<&UserId>,
        frame: &Frame,
    ) -> Result<Encoded<Delivery>, codec::CodecError> {
        codec::encode(&DeliveryRef {
            users,
            except,
            frame: frame.as_ref(),
        })
        .map(Encoded::of_bytes)
    }
}

#[derive(Clone, Default)]
pub struct Directory {
    /// Every user with a device connected here, with those devices. A user
    /// whose last device leaves is removed.
    users: Arc<RwLock<HashMap<UserId, Vec<Outbound>>>>,
    /// Counts the changes to `users`; moved only under its write lock.
    changes: Arc<AtomicU64>,
    /// In a cluster, the other nodes, whose devices get events too.
    remote: Option<Arc<dyn RemoteFanout>>,
    /// How many users are in `users`.
    online: Gauge,
}

/// The devices of one audience found at the last delivery, kept by the
/// conversation that delivers to it.
#[derive(Default)]
pub struct Fanout {
    audience: Option<Arc<[UserId]>>,
    /// [`Directory::changes`] when `devices` were found.
    changes: u64,
    devices: Vec<Outbound>,
}

/// A device's place in its user's fan-out list; dropping it takes the
/// device out.
#[must_use = "the device leaves the fan-out list when this is dropped"]
pub struct Subscription {
    directory: Directory,
    user: UserId,
    device: u64,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.directory.unsubscribe(&self.user, self.device);
    }
}

impl Directory {
    /// A directory that, in a cluster, also hands every event to the other
    /// nodes through `remote`, and counts the users online in `online`.
    pub fn new(remote: Option<Arc<dyn RemoteFanout>>, online: Gauge) -> Directory {
        Directory {
            users: Arc::default(),
            changes: Arc::default(),
            remote,
            online,
        }
    }

    /// Adds `device` to `user`'s fan-out list: whatever is delivered to the
    /// user from now on is queued on it. Devices found closed are dropped
    /// on the way.
    pub fn subscribe(&self, user: &UserId, device: Outbound) -> Subscription {
        let id = device.id();
        let mut users = self.users.write().expect("directory lock");
        let devices = users.entry(user.clone()).or_insert_with(|| {
            self.online.inc();
            Vec::with_capacity(1)
        });
        devices.retain(Outbound::is_open);
        devices.push(device);
        self.changes.fetch_add(1, Ordering::Relaxed);
        // Under the lock, so that announcements leave in the order of the
        // changes; and before returning, so that the device's first `sync`
        // comes after it (see the cluster crate's `locations`).
        self.announce(user, true);
        Subscription {
            directory: self.clone(),
            user: user.clone(),
            device: id,
        }
    }

    fn unsubscribe(&self, user: &UserId, device: u64) {
        let mut users = self.users.write().expect("directory lock");
        let Some(devices) = users.get_mut(user) else {
            return;
        };
        devices.retain(|d| d.id() != device && d.is_open());
        self.changes.fetch_add(1, Ordering::Relaxed);
        if devices.is_empty() {
            users.remove(user);
            self.online.dec();
            self.announce(user, false);
        }
    }

    /// How many devices of `user` are connected here.
    pub fn devices(&self, user: &UserId) -> usize {
        let users = self.users.read().expect("directory lock");
        users
            .get(user)
            .map_or(0, |devices| devices.iter().filter(|d| d.is_open()).count())
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
        self.deliver_to_peers(users, except, frame);
    }

    /// Queues `frame` on every device of `audience`, here and on the other
    /// nodes, as [`Self::deliver`] does; the devices here are those kept in
    /// `fanout`, found again only if a device subscribed or left since.
    pub fn deliver_to_audience(
        &self,
        fanout: &mut Fanout,
        audience: &Arc<[UserId]>,
        frame: &Frame,
        metrics: &Metrics,
    ) {
        {
            let live = self.users.read().expect("directory lock");
            // Under the read lock the count cannot move: equal, and the
            // same audience, means the same devices as a lookup would find.
            let changes = self.changes.load(Ordering::Relaxed);
            let same = fanout.changes == changes
                && fanout
                    .audience
                    .as_ref()
                    .is_some_and(|kept| Arc::ptr_eq(kept, audience));
            if !same {
                fanout.devices.clear();
                for user in audience.iter() {
                    if let Some(devices) = live.get(user) {
                        fanout.devices.extend(devices.iter().cloned());
                    }
                }
                fanout.changes = changes;
                fanout.audience = Some(audience.clone());
            }
            let queued = push(&fanout.devices, frame, metrics);
            metrics.deliveries.inc_by(queued);
        }
        self.deliver_to_peers(audience, None, frame);
    }

    /// In a cluster: hands `frame` to every other node that has (or may
    /// have) a device of one of `users`.
    fn deliver_to_peers(&self, users: &[UserId], except: Option<&UserId>, frame: &Frame) {
        if let Some(remote) = &self.remote {
            remote.deliver(users, except, frame);
        }
    }

    /// In a cluster: tells the other nodes whether `user` has a device
    /// here (they send its events here only if so).
    fn announce(&self, user: &UserId, online: bool) {
        if let Some(remote) = &self.remote {
            remote.announce(user, online);
        }
    }

    /// Queues `frame` on every device connected here.
    pub fn deliver_everyone(&self, frame: &Frame, metrics: &Metrics) {
        let live = self.users.read().expect("directory lock");
        let queued: u64 = live
            .values()
            .map(|devices| push(devices, frame, metrics))
            .sum();
        metrics.deliveries.inc_by(queued);
    }

    /// Queues a [`Delivery`] from another node on the devices here.
    pub fn deliver_from_peer(&self, delivery: &Encoded<Delivery>, metrics: &Metrics) {
        metrics.peer_deliveries_received.inc();
        match delivery.decode() {
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
            if let Some(devices) = live.get(user) {
                queued += push(devices, frame, metrics);
            }
        }
        metrics.deliveries.inc_by(queued);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbound::tests::batch;
    use crate::outbound::{self, CLOSE_GOING_AWAY};

    fn user(name: &str) -> UserId {
        UserId::try_from(name).unwrap()
    }

    #[tokio::test]
    async fn a_device_gets_deliveries_while_its_subscription_is_held() {
        let directory = Directory::default();
        let metrics = Metrics::default();
        let (al, bo) = (user("al"), user("bo"));
        let (phone, mut phone_rx) = outbound::channel(8);
        let (laptop, mut laptop_rx) = outbound::channel(8);
        let phone_sub = directory.subscribe(&al, phone);
        let laptop_sub = directory.subscribe(&al, laptop);
        assert_eq!(directory.devices(&al), 2);
        assert_eq!(directory.devices(&bo), 0);

        directory.deliver(&[al.clone(), bo.clone()], None, &"one".into(), &metrics);
        assert_eq!(batch(&mut phone_rx).await, ["one"]);
        assert_eq!(batch(&mut laptop_rx).await, ["one"]);
        directory.deliver(
            std::slice::from_ref(&al),
            Some(&al),
            &"skipped".into(),
            &metrics,
        );

        drop(phone_sub);
        assert_eq!(directory.devices(&al), 1);
        directory.deliver(std::slice::from_ref(&al), None, &"two".into(), &metrics);
        assert_eq!(batch(&mut laptop_rx).await, ["two"], "not \"skipped\"");
        let more = tokio::time::timeout(std::time::Duration::from_millis(50), batch(&mut phone_rx));
        assert!(more.await.is_err(), "unsubscribed: nothing more");

        assert_eq!(directory.online.get(), 1);
        drop(laptop_sub);
        assert_eq!(directory.devices(&al), 0);
        assert!(
            directory.users.read().unwrap().is_empty(),
            "no device, no entry"
        );
        assert_eq!(directory.online.get(), 0);
    }

    /// Whether a frame is waiting, without waiting for one.
    async fn has_frame(rx: &mut outbound::OutboundReceiver) -> bool {
        tokio::time::timeout(std::time::Duration::from_millis(20), batch(rx))
            .await
            .is_ok()
    }

    #[tokio::test]
    async fn a_kept_fanout_follows_devices_and_members() {
        let directory = Directory::default();
        let metrics = Metrics::default();
        let (al, bo) = (user("al"), user("bo"));
        let mut fanout = Fanout::default();
        let both: Arc<[UserId]> = Arc::from(vec![al.clone(), bo.clone()]);
        let (phone, mut phone_rx) = outbound::channel(8);
        let _phone_sub = directory.subscribe(&al, phone);
        directory.deliver_to_audience(&mut fanout, &both, &"one".into(), &metrics);
        assert_eq!(batch(&mut phone_rx).await, ["one"]);

        // A device that comes after the fanout was found gets the next event.
        let (tablet, mut tablet_rx) = outbound::channel(8);
        let tablet_sub = directory.subscribe(&bo, tablet);
        directory.deliver_to_audience(&mut fanout, &both, &"two".into(), &metrics);
        assert_eq!(batch(&mut phone_rx).await, ["two"]);
        assert_eq!(batch(&mut tablet_rx).await, ["two"]);

        // One that leaves gets nothing more.
        drop(tablet_sub);
        directory.deliver_to_audience(&mut fanout, &both, &"three".into(), &metrics);
        assert_eq!(batch(&mut phone_rx).await, ["three"]);
        assert!(
            !has_frame(&mut tablet_rx).await,
            "unsubscribed: nothing more"
        );

        // Another device of bo's comes; then new members: the new audience
        // is found again though no device came or went since.
        let (laptop, mut laptop_rx) = outbound::channel(8);
        let _laptop_sub = directory.subscribe(&bo, laptop);
        directory.deliver_to_audience(&mut fanout, &both, &"four".into(), &metrics);
        assert_eq!(batch(&mut laptop_rx).await, ["four"]);
        let only_bo: Arc<[UserId]> = Arc::from(vec![bo.clone()]);
        directory.deliver_to_audience(&mut fanout, &only_bo, &"five".into(), &metrics);
        assert_eq!(batch(&mut phone_rx).await, ["four"]);
        assert!(!has_frame(&mut phone_rx).await, "al is no longer a member");
        assert_eq!(batch(&mut laptop_rx).await, ["five"]);
        assert_eq!(metrics.deliveries.get(), 7);
    }

    #[test]
    fn a_closed_device_is_not_counted_and_is_dropped_by_the_next_subscription() {
        let directory = Directory::default();
        let al = user("al");
        let (gone, _gone_rx) = outbound::channel(8);
        let (here, _here_rx) = outbound::channel(8);
        let _gone_sub = directory.subscribe(&al, gone.clone());
        gone.close(CLOSE_GOING_AWAY);
        assert_eq!(directory.devices(&al), 0);
        let _here_sub = directory.subscribe(&al, here);
        assert_eq!(directory.devices(&al), 1);
        assert_eq!(directory.users.read().unwrap()[&al].len(), 1);
    }

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
