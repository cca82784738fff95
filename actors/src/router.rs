//! The router: one per node. It starts each entity's actor (from storage)
//! and stops it when idle.
//!
//! The table of live actors, [`Routes`], is shared: a request for an entity
//! whose actor is live goes straight to that actor's mailbox, and only a
//! request for an entity with no live actor passes through the router, which
//! starts one. The table counts what is sent to each actor, so that an actor
//! that reports itself idle is stopped only when nothing is in flight to it:
//! the count is raised under the table's read lock and checked under its
//! write lock, and the stop request then queues behind everything already
//! sent, so no request is ever dropped with a stopping actor.
//!
//! Entities map to shards ([`crate::shard`]). On a single node every shard
//! is local; in a cluster, [`crate::service`] sends here only requests for
//! shards this node leads, and a shard's conversation actors are stopped
//! and taken out of the table when the node stops leading it
//! ([`Routes::shard_lost`]).

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, SupervisionEvent};
use tidings_protocol::{ConvId, ServerFrame, UserId};

use crate::command::{Answer, ConvCommand};
use crate::conversation::{no_such_conversation, ConversationActor};
use crate::directory::Directory;
use crate::entity::{tick_every, EntityArgs, EntityConfig};
use crate::index::Indexes;
use crate::messages::{ConvMsg, EntityKey, RouterMsg, UserMsg};
use crate::metrics::Metrics;
use crate::shard::{shard_of, ShardId};
use crate::storage::{keys, Cf, Storage};
use crate::user::UserActor;

pub struct Router;

pub struct RouterArgs {
    pub storage: Storage,
    pub config: EntityConfig,
    pub metrics: Arc<Metrics>,
    /// Where fan-out finds devices: in a cluster, one that reaches the
    /// other nodes too.
    pub directory: Directory,
    /// The table of live actors, shared with [`Routes`].
    pub live: Arc<Live>,
}

struct Slot<M> {
    actor: ActorRef<M>,
    /// Messages sent to the actor (ticks and the stop request aside).
    forwarded: AtomicU64,
}

/// The live entity actors of one kind.
struct Slots<Id, M> {
    live: HashMap<Id, Slot<M>>,
}

impl<Id: Eq + Hash + Clone, M: ractor::Message> Slots<Id, M> {
    fn new() -> Self {
        Slots {
            live: HashMap::new(),
        }
    }

    /// Sends to a live actor (under the read lock); hands the message back
    /// if there is none, or it has stopped.
    fn send(&self, id: &Id, message: M) -> Result<(), M> {
        let Some(slot) = self.live.get(id) else {
            return Err(message);
        };
        match slot.actor.send_message(message) {
            Ok(()) => {
                slot.forwarded.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(ractor::MessagingErr::SendErr(message)) => Err(message),
            Err(_) => unreachable!("send_message only fails with SendErr"),
        }
    }

    /// Puts a freshly started actor in the table (replacing one that
    /// stopped on its own) and sends it its first message.
    fn insert(&mut self, id: Id, actor: ActorRef<M>, message: M) {
        let forwarded = u64::from(actor.send_message(message).is_ok());
        let forwarded = AtomicU64::new(forwarded);
        self.live.insert(id, Slot { actor, forwarded });
    }

    /// Stops `actor` if it is still the entity's live one and has handled
    /// all that was sent to it.
    fn retire(&mut self, id: &Id, actor: ActorId, handled: u64, shutdown: M) -> Option<ActorId> {
        let slot = self.live.get(id)?;
        if slot.actor.get_id() != actor || slot.forwarded.load(Ordering::Relaxed) != handled {
            return None;
        }
        let slot = self.live.remove(id)?;
        let _ = slot.actor.send_message(shutdown);
        Some(slot.actor.get_id())
    }

    fn remove_actor(&mut self, id: &Id, actor: ActorId) {
        if self.live.get(id).is_some_and(|s| s.actor.get_id() == actor) {
            self.live.remove(id);
        }
    }
}

/// Every live entity actor of the node.
pub struct Live {
    convs: RwLock<Slots<ConvId, ConvMsg>>,
    users: RwLock<Slots<UserId, UserMsg>>,
}

impl Default for Live {
    fn default() -> Self {
        Live {
            convs: RwLock::new(Slots::new()),
            users: RwLock::new(Slots::new()),
        }
    }
}

/// How requests reach entity actors: straight to a live one, else through
/// the router, which starts it.
#[derive(Clone)]
pub struct Routes {
    router: ActorRef<RouterMsg>,
    live: Arc<Live>,
}

impl Routes {
    pub(crate) fn new(router: ActorRef<RouterMsg>, live: Arc<Live>) -> Routes {
        Routes { router, live }
    }

    /// The router itself.
    pub fn router(&self) -> &ActorRef<RouterMsg> {
        &self.router
    }

    /// Sends `message` to the conversation's actor.
    pub fn conv(&self, id: &ConvId, message: ConvMsg) {
        let sent = read(&self.live.convs).send(id, message);
        if let Err(message) = sent {
            let _ = self.router.cast(RouterMsg::Conv(id.clone(), message));
        }
    }

    /// Sends `message` to the user's actor.
    pub fn user(&self, id: &UserId, message: UserMsg) {
        let sent = read(&self.live.users).send(id, message);
        if let Err(message) = sent {
            let _ = self.router.cast(RouterMsg::User(id.clone(), message));
        }
    }

    /// In a cluster: this node no longer leads `shard`, or leads it anew.
    /// Its conversation actors, whose counters may be stale, are stopped at
    /// once and are gone from the table when this returns, so the next
    /// request starts a fresh one from storage; requests queued to the old
    /// ones fail, and their clients retry.
    pub fn shard_lost(&self, shard: ShardId) {
        write(&self.live.convs).live.retain(|conv, slot| {
            let keep = shard_of(conv.as_str()) != shard;
            if !keep {
                slot.actor.stop(Some("shard leadership lost".into()));
            }
            keep
        });
    }
}

/// The table is left consistent at every step, so a panic elsewhere while
/// it was held does not make it unusable.
fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Whether `message` can only be served by a conversation that exists: all
/// commands but the ones that create it, and none of the internal
/// messages, which never come for an entity without an actor.
fn needs_existing(message: &ConvMsg) -> bool {
    match message {
        ConvMsg::Command(command, _) => !command.creates(),
        ConvMsg::Settle | ConvMsg::Tick | ConvMsg::Shutdown => false,
    }
}

pub struct RouterState {
    live: Arc<Live>,
    by_actor: HashMap<ActorId, EntityKey>,
    directory: Directory,
    storage: Storage,
    config: EntityConfig,
    metrics: Arc<Metrics>,
    indexes: Option<Arc<dyn Indexes>>,
}

impl RouterState {
    fn args<Id>(&self, myself: &ActorRef<RouterMsg>, id: Id) -> EntityArgs<Id> {
        EntityArgs {
            id,
            storage: self.storage.clone(),
            router: myself.clone(),
            directory: self.directory.clone(),
            config: self.config.clone(),
            metrics: self.metrics.clone(),
            indexes: self.indexes.clone(),
        }
    }

    async fn deliver_conv(&mut self, myself: &ActorRef<RouterMsg>, id: ConvId, message: ConvMsg) {
        // Started since the request was sent here, or stopped on its own
        // (a crash: a fresh one starts).
        let Err(message) = read(&self.live.convs).send(&id, message) else {
            return;
        };
        let message = match self.unknown(&id, message) {
            Some(message) => message,
            None => return,
        };
        let args = self.args(myself, id.clone());
        match Actor::spawn_linked(None, ConversationActor, args, myself.get_cell()).await {
            Ok((actor, _)) => {
                self.by_actor
                    .insert(actor.get_id(), EntityKey::Conv(id.clone()));
                write(&self.live.convs).insert(id, actor, message);
            }
            // Dropping the message drops its reply port: the caller sees
            // the entity as unavailable and may retry.
            Err(err) => tracing::error!(conv = %id, error = %err, "conversation failed to start"),
        }
    }

    /// Answers a request that needs an existing conversation when `id` has
    /// none stored, without starting an actor for it; hands the message
    /// back otherwise. Asked here, where the shard is led: the stored state
    /// is the one the actor would load.
    fn unknown(&self, id: &ConvId, message: ConvMsg) -> Option<ConvMsg> {
        if !needs_existing(&message) {
            return Some(message);
        }
        match self
            .storage
            .get_raw(Cf::ConvMeta, &keys::entity(id.as_str()))
        {
            Ok(None) => {}
            // Stored, or unreadable: the actor loads it, or fails saying why.
            Ok(Some(_)) | Err(_) => return Some(message),
        }
        tracing::trace!(conv = %id, "request for an unknown conversation");
        match message {
            // Typing to nobody reaches nobody, as typing as a non-member does.
            ConvMsg::Command(ConvCommand::Typing { .. }, reply) => {
                let _ = reply.send(Ok(Answer::Done));
            }
            ConvMsg::Command(_, reply) => {
                let _ = reply.send(Err(no_such_conversation(id)));
            }
            other => return Some(other),
        }
        None
    }

    async fn deliver_user(&mut self, myself: &ActorRef<RouterMsg>, id: UserId, message: UserMsg) {
        let Err(message) = read(&self.live.users).send(&id, message) else {
            return;
        };
        let args = self.args(myself, id.clone());
        match Actor::spawn_linked(None, UserActor, args, myself.get_cell()).await {
            Ok((actor, _)) => {
                self.by_actor
                    .insert(actor.get_id(), EntityKey::User(id.clone()));
                write(&self.live.users).insert(id, actor, message);
            }
            Err(err) => tracing::error!(user = %id, error = %err, "user failed to start"),
        }
    }
}

impl Actor for Router {
    type Msg = RouterMsg;
    type State = RouterState;
    type Arguments = RouterArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<RouterMsg>,
        args: RouterArgs,
    ) -> Result<RouterState, ActorProcessingErr> {
        // Stops by itself once the router has stopped.
        myself.send_interval(tick_every(args.config.idle_after), || RouterMsg::Tick);
        Ok(RouterState {
            live: args.live,
            by_actor: HashMap::new(),
            directory: args.directory,
            storage: args.storage,
            config: args.config,
            metrics: args.metrics,
            indexes: None,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<RouterMsg>,
        message: RouterMsg,
        state: &mut RouterState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            RouterMsg::Conv(id, message) => state.deliver_conv(&myself, id, message).await,
            RouterMsg::User(id, message) => state.deliver_user(&myself, id, message).await,
            RouterMsg::Idle {
                key,
                actor,
                handled,
            } => {
                let retired = match &key {
                    EntityKey::Conv(id) => {
                        write(&state.live.convs).retire(id, actor, handled, ConvMsg::Shutdown)
                    }
                    EntityKey::User(id) => {
                        write(&state.live.users).retire(id, actor, handled, UserMsg::Shutdown)
                    }
                };
                if let Some(actor) = retired {
                    state.by_actor.remove(&actor);
                    tracing::trace!(?key, "idle entity stopped");
                }
            }
            RouterMsg::Tick => {
                // Not counted as forwarded: ticks are not requests, and an
                // actor does not count them as handled either.
                for slot in read(&state.live.convs).live.values() {
                    let _ = slot.actor.send_message(ConvMsg::Tick);
                }
                for slot in read(&state.live.users).live.values() {
                    let _ = slot.actor.send_message(UserMsg::Tick);
                }
            }
            RouterMsg::Serve(indexes) => state.indexes = Some(indexes),
            RouterMsg::Resync => {
                let frame = ServerFrame::Resync.push().to_json().into();
                state.directory.deliver_everyone(&frame, &state.metrics);
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        _myself: ActorRef<RouterMsg>,
        event: SupervisionEvent,
        state: &mut RouterState,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, failure) = match event {
            SupervisionEvent::ActorTerminated(cell, _, _) => (cell, None),
            SupervisionEvent::ActorFailed(cell, err) => (cell, Some(err)),
            _ => return Ok(()),
        };
        let id = cell.get_id();
        if let Some(key) = state.by_actor.remove(&id) {
            if let Some(err) = failure {
                tracing::error!(?key, error = %err, "entity actor failed; it restarts from storage on the next request");
            }
            match key {
                EntityKey::Conv(conv) => write(&state.live.convs).remove_actor(&conv, id),
                EntityKey::User(user) => write(&state.live.users).remove_actor(&user, id),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ractor_cluster::RactorMessage;

    #[derive(RactorMessage)]
    struct Note;

    struct Sink;

    impl Actor for Sink {
        type Msg = Note;
        type State = ();
        type Arguments = ();

        async fn pre_start(&self, _: ActorRef<Note>, (): ()) -> Result<(), ActorProcessingErr> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn only_the_live_actor_with_nothing_in_flight_is_retired() {
        let (old, old_task) = Actor::spawn(None, Sink, ()).await.unwrap();
        let (live, live_task) = Actor::spawn(None, Sink, ()).await.unwrap();
        let mut slots = Slots::new();
        slots.insert("c", live.clone(), Note);
        assert!(slots.send(&"c", Note).is_ok(), "a live actor takes it");
        assert!(slots.send(&"d", Note).is_err(), "no actor: handed back");

        // A report from an actor the entity no longer has, though its count
        // matches, stops nothing.
        assert_eq!(slots.retire(&"c", old.get_id(), 2, Note), None);
        // The live actor reported before the second message was sent.
        assert_eq!(slots.retire(&"c", live.get_id(), 1, Note), None);
        assert_eq!(
            slots.retire(&"c", live.get_id(), 2, Note),
            Some(live.get_id())
        );
        assert!(slots.send(&"c", Note).is_err(), "gone from the table");

        for (actor, task) in [(old, old_task), (live, live_task)] {
            actor.stop(None);
            task.await.unwrap();
        }
    }
}
