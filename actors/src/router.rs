//! The router: one per node. Every request for an entity passes through it.
//!
//! It finds the entity's actor or starts it from storage, and forwards the
//! request. It counts what it forwards to each actor, so that an actor that
//! reports itself idle is stopped only when nothing is in flight to it: the
//! stop request then queues behind everything already sent, and no request
//! is ever dropped with a stopping actor.
//!
//! Entities map to shards ([`crate::shard`]). On a single node every shard
//! is local; in a cluster, [`crate::service`] sends here only requests for
//! shards this node leads, and the router stops a shard's conversation
//! actors when the node stops leading it.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Arc;

use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, SupervisionEvent};
use tidings_protocol::{ConvId, ServerFrame, UserId};

use crate::conversation::ConversationActor;
use crate::directory::Directory;
use crate::entity::{tick_every, EntityArgs, EntityConfig};
use crate::messages::{ConvMsg, EntityKey, RouterMsg, UserMsg};
use crate::metrics::Metrics;
use crate::service::Service;
use crate::shard::shard_of;
use crate::storage::Storage;
use crate::user::UserActor;

pub struct Router;

pub struct RouterArgs {
    pub storage: Storage,
    pub config: EntityConfig,
    pub metrics: Arc<Metrics>,
    /// Where fan-out finds devices: in a cluster, one that reaches the
    /// other nodes too.
    pub directory: Directory,
}

struct Slot<M> {
    actor: ActorRef<M>,
    forwarded: u64,
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

    /// Forwards to a live actor; hands the message back if there is none.
    fn forward(&mut self, id: &Id, message: M) -> Result<(), M> {
        let Some(slot) = self.live.get_mut(id) else {
            return Err(message);
        };
        match slot.actor.send_message(message) {
            Ok(()) => {
                slot.forwarded += 1;
                Ok(())
            }
            Err(err) => {
                // The actor died on its own (a crash): start a fresh one.
                self.live.remove(id);
                match err {
                    ractor::MessagingErr::SendErr(message) => Err(message),
                    _ => unreachable!("send_message only fails with SendErr"),
                }
            }
        }
    }

    fn insert(&mut self, id: Id, actor: ActorRef<M>, message: M) {
        let forwarded = u64::from(actor.send_message(message).is_ok());
        self.live.insert(id, Slot { actor, forwarded });
    }

    /// Stops the actor if it has handled all that was forwarded to it.
    fn retire(&mut self, id: &Id, handled: u64, shutdown: M) -> Option<ActorId> {
        let slot = self.live.get(id)?;
        if slot.forwarded != handled {
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

pub struct RouterState {
    convs: Slots<ConvId, ConvMsg>,
    users: Slots<UserId, UserMsg>,
    by_actor: HashMap<ActorId, EntityKey>,
    directory: Directory,
    storage: Storage,
    config: EntityConfig,
    metrics: Arc<Metrics>,
    service: Option<Service>,
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
            service: self.service.clone(),
        }
    }

    async fn to_conv(&mut self, myself: &ActorRef<RouterMsg>, id: ConvId, message: ConvMsg) {
        let Err(message) = self.convs.forward(&id, message) else {
            return;
        };
        let args = self.args(myself, id.clone());
        match Actor::spawn_linked(None, ConversationActor, args, myself.get_cell()).await {
            Ok((actor, _)) => {
                self.by_actor
                    .insert(actor.get_id(), EntityKey::Conv(id.clone()));
                self.convs.insert(id, actor, message);
            }
            // Dropping the message drops its reply port: the caller sees
            // the entity as unavailable and may retry.
            Err(err) => tracing::error!(conv = %id, error = %err, "conversation failed to start"),
        }
    }

    async fn to_user(&mut self, myself: &ActorRef<RouterMsg>, id: UserId, message: UserMsg) {
        let Err(message) = self.users.forward(&id, message) else {
            return;
        };
        let args = self.args(myself, id.clone());
        match Actor::spawn_linked(None, UserActor, args, myself.get_cell()).await {
            Ok((actor, _)) => {
                self.by_actor
                    .insert(actor.get_id(), EntityKey::User(id.clone()));
                self.users.insert(id, actor, message);
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
            convs: Slots::new(),
            users: Slots::new(),
            by_actor: HashMap::new(),
            directory: args.directory,
            storage: args.storage,
            config: args.config,
            metrics: args.metrics,
            service: None,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<RouterMsg>,
        message: RouterMsg,
        state: &mut RouterState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            RouterMsg::Conv(id, message) => state.to_conv(&myself, id, message).await,
            RouterMsg::User(id, message) => state.to_user(&myself, id, message).await,
            RouterMsg::Idle { key, handled } => {
                let retired = match &key {
                    EntityKey::Conv(id) => state.convs.retire(id, handled, ConvMsg::Shutdown),
                    EntityKey::User(id) => state.users.retire(id, handled, UserMsg::Shutdown),
                };
                if let Some(actor) = retired {
                    state.by_actor.remove(&actor);
                    tracing::trace!(?key, "idle entity stopped");
                }
            }
            RouterMsg::Tick => {
                // Not counted as forwarded: ticks are not requests, and an
                // actor does not count them as handled either.
                for slot in state.convs.live.values() {
                    let _ = slot.actor.send_message(ConvMsg::Tick);
                }
                for slot in state.users.live.values() {
                    let _ = slot.actor.send_message(UserMsg::Tick);
                }
            }
            RouterMsg::Census { reply } => {
                let _ = reply.send((state.convs.live.len(), state.users.live.len()));
            }
            RouterMsg::ShardLost(shard) => {
                // Stopped at once: requests already queued to them fail and
                // are retried by their clients on the new leader.
                for (conv, slot) in &state.convs.live {
                    if shard_of(conv.as_str()) == shard {
                        slot.actor.stop(Some("shard leadership lost".into()));
                    }
                }
            }
            RouterMsg::Deliver(bytes) => {
                state.directory.deliver_from_peer(&bytes, &state.metrics);
            }
            RouterMsg::Serve(service) => state.service = Some(service),
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
                EntityKey::Conv(conv) => state.convs.remove_actor(&conv, id),
                EntityKey::User(user) => state.users.remove_actor(&user, id),
            }
        }
        Ok(())
    }
}
