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
//! shards this node leads, each in the shard's current [`Tenure`]. A
//! shard's conversation actors are stopped and taken out of the table when
//! a new tenure's first request comes ([`Routes::conv_in`]), and when the
//! node stops leading it ([`Routes::shard_lost`]).
//!
//! What entities write their members' indexes through (the service) is
//! made from the router's own routes as it starts, by a function it is
//! started with: nothing is handed to it later.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, SupervisionEvent};
use tidings_protocol::{ConvId, UserId};

use crate::command::{Answer, ConvCommand};
use crate::conversation::{no_such_conversation, ConversationActor};
use crate::directory::Directory;
use crate::entity::{tick_every, EntityArgs, EntityConfig};
use crate::index::Indexes;
use crate::messages::{ConvMsg, EntityKey, RouterMsg, UserMsg};
use crate::metrics::Metrics;
use crate::remote::Tenure;
use crate::shard::{shard_of, ShardId, SHARDS};
use crate::storage::{keys, Cf, CommitLog, Storage, StorageError};
use crate::user::UserActor;

pub struct Router;

pub struct RouterArgs {
    pub storage: Storage,
    /// Where entities' writes become durable.
    pub log: Arc<dyn CommitLog>,
    pub config: EntityConfig,
    pub metrics: Arc<Metrics>,
    /// Where fan-out finds devices: in a cluster, one that reaches the
    /// other nodes too.
    pub directory: Directory,
    /// Whether a cluster places commands (else every shard is this
    /// node's, from start to stop).
    pub clustered: bool,
    /// Makes, from the router's own routes, what entities write members'
    /// indexes through (the service, [`crate::start`]).
    pub indexes: Box<dyn FnOnce(Routes) -> Arc<dyn Indexes> + Send>,
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
    /// Per shard, the tenure its live conversation actors serve in;
    /// changed only under the `convs` write lock.
    tenures: Vec<AtomicU64>,
}

impl Default for Live {
    fn default() -> Self {
        Live {
            convs: RwLock::new(Slots::new()),
            users: RwLock::new(Slots::new()),
            tenures: (0..SHARDS)
                .map(|_| AtomicU64::new(Tenure::SOLE.0))
                .collect(),
        }
    }
}

impl Live {
    fn tenure(&self, shard: ShardId) -> u64 {
        self.tenures[shard.0 as usize].load(Ordering::Acquire)
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

    /// Sends `message` to the conversation's actor (on a single node).
    pub fn conv(&self, id: &ConvId, message: ConvMsg) {
        self.conv_in(Tenure::SOLE, id, message);
    }

    /// Sends `message` to the conversation's actor, for a shard this node
    /// serves in `tenure`. The first message of a later tenure than the
    /// shard's actors serve in first replaces them: they are stopped and
    /// out of the table before it is sent, and the outboxes an earlier
    /// leader left owing are woken.
    pub fn conv_in(&self, tenure: Tenure, id: &ConvId, message: ConvMsg) {
        // No tenure is earlier than the sole one: a single node never
        // renews, and hashes nothing per message.
        if tenure > Tenure::SOLE {
            let shard = shard_of(id.as_str());
            if self.live.tenure(shard) < tenure.0 {
                self.renew(shard, tenure);
            }
        }
        let sent = read(&self.live.convs).send(id, message);
        if let Err(message) = sent {
            let _ = self.router.cast(RouterMsg::Conv(id.clone(), message));
        }
    }

    /// Begins `tenure` for `shard`, once: the shard's conversation actors
    /// go, then its owed outboxes are woken.
    fn renew(&self, shard: ShardId, tenure: Tenure) {
        {
            let mut convs = write(&self.live.convs);
            let current = &self.live.tenures[shard.0 as usize];
            if current.load(Ordering::Acquire) >= tenure.0 {
                return;
            }
            stop_shard(&mut convs, shard, "a new tenure began");
            current.store(tenure.0, Ordering::Release);
        }
        let _ = self.router.cast(RouterMsg::Settle(Some(shard)));
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
        stop_shard(&mut write(&self.live.convs), shard, "shard leadership lost");
    }
}

/// Stops the conversation actors of `shard` and takes them out of the
/// table.
fn stop_shard(convs: &mut Slots<ConvId, ConvMsg>, shard: ShardId, why: &str) {
    convs.live.retain(|conv, slot| {
        let keep = shard_of(conv.as_str()) != shard;
        if !keep {
            slot.actor.stop(Some(why.into()));
        }
        keep
    });
}

/// The conversations of `shard` (of every shard if `None`) whose stored
/// outbox still owes their members' indexes.
fn owing(storage: &Storage, shard: Option<ShardId>) -> Result<Vec<ConvId>, StorageError> {
    let shards = match shard {
        Some(shard) => shard.0..shard.0 + 1,
        None => 0..SHARDS,
    };
    let mut owing = Vec::new();
    for shard in shards {
        let from = keys::outboxes(shard);
        let to = keys::outboxes(shard + 1);
        for (key, _) in storage.scan_raw(Cf::ConvMeta, &from, &to, usize::MAX)? {
            let conv = std::str::from_utf8(&key[from.len()..])
                .ok()
                .and_then(|id| ConvId::try_from(id).ok());
            owing.extend(conv);
        }
    }
    if !owing.is_empty() {
        tracing::info!(
            owing = owing.len(),
            "finishing conversations' index changes"
        );
    }
    Ok(owing)
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
    log: Arc<dyn CommitLog>,
    config: EntityConfig,
    metrics: Arc<Metrics>,
    indexes: Arc<dyn Indexes>,
}

impl RouterState {
    fn args<Id>(&self, myself: &ActorRef<RouterMsg>, id: Id) -> EntityArgs<Id> {
        EntityArgs {
            id,
            storage: self.storage.clone(),
            log: self.log.clone(),
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
        let shard = shard_of(id.as_str());
        let tenure = self.live.tenure(shard);
        let args = self.args(myself, id.clone());
        match Actor::spawn_linked(None, ConversationActor, args, myself.get_cell()).await {
            Ok((actor, _)) => {
                let mut convs = write(&self.live.convs);
                if self.live.tenure(shard) != tenure {
                    // A new tenure began while it loaded: what it loaded
                    // may be stale. A fresh one starts for the message.
                    drop(convs);
                    actor.stop(Some("a new tenure began".into()));
                    let _ = myself.cast(RouterMsg::Conv(id, message));
                    return;
                }
                self.by_actor
                    .insert(actor.get_id(), EntityKey::Conv(id.clone()));
                convs.insert(id, actor, message);
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
        // On a single node, what a crash left owing is finished at once; a
        // cluster node settles each shard as its tenure there begins.
        // (A node whose outboxes cannot be read does not start.)
        if !args.clustered {
            for conv in owing(&args.storage, None)? {
                let _ = myself.cast(RouterMsg::Conv(conv, ConvMsg::Settle));
            }
        }
        let indexes = (args.indexes)(Routes::new(myself.clone(), args.live.clone()));
        Ok(RouterState {
            live: args.live,
            by_actor: HashMap::new(),
            directory: args.directory,
            storage: args.storage,
            log: args.log,
            config: args.config,
            metrics: args.metrics,
            indexes,
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
            RouterMsg::Settle(shard) => match owing(&state.storage, shard) {
                Ok(convs) => {
                    for conv in convs {
                        state.deliver_conv(&myself, conv, ConvMsg::Settle).await;
                    }
                }
                Err(err) => {
                    tracing::error!(error = %err, "reading conversations' outboxes failed");
                }
            },
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

    /// Stands in for an actor of any message type: tells `seen` a word for
    /// each message it gets.
    struct Recorder<M>(std::marker::PhantomData<fn() -> M>);

    impl<M: ractor::Message> Actor for Recorder<M> {
        type Msg = M;
        type State = tokio::sync::mpsc::UnboundedSender<&'static str>;
        type Arguments = tokio::sync::mpsc::UnboundedSender<&'static str>;

        async fn pre_start(
            &self,
            _: ActorRef<M>,
            seen: Self::Arguments,
        ) -> Result<Self::State, ActorProcessingErr> {
            Ok(seen)
        }

        async fn handle(
            &self,
            _: ActorRef<M>,
            message: M,
            seen: &mut Self::State,
        ) -> Result<(), ActorProcessingErr> {
            let any: &dyn std::any::Any = &message;
            let word = match (
                any.downcast_ref::<ConvMsg>(),
                any.downcast_ref::<RouterMsg>(),
            ) {
                (Some(_), _) => "conv",
                (_, Some(RouterMsg::Settle(_))) => "settle",
                (_, Some(RouterMsg::Conv(..))) => "routed",
                _ => "other",
            };
            let _ = seen.send(word);
            Ok(())
        }
    }

    async fn next(seen: &mut tokio::sync::mpsc::UnboundedReceiver<&'static str>) -> &'static str {
        tokio::time::timeout(std::time::Duration::from_secs(5), seen.recv())
            .await
            .expect("a message within 5 s")
            .expect("the recorder is alive")
    }

    #[tokio::test]
    async fn a_new_tenure_replaces_the_shards_actors_before_its_first_message() {
        let (router_seen, mut router_log) = tokio::sync::mpsc::unbounded_channel();
        let (conv_seen, mut conv_log) = tokio::sync::mpsc::unbounded_channel();
        let (router, router_task) =
            Actor::spawn(None, Recorder::<RouterMsg>(Default::default()), router_seen)
                .await
                .unwrap();
        let (old, old_task) =
            Actor::spawn(None, Recorder::<ConvMsg>(Default::default()), conv_seen)
                .await
                .unwrap();
        let live = Arc::new(Live::default());
        let routes = Routes::new(router.clone(), live.clone());
        let conv = ConvId::try_from("g:abcdefghij0123456789").unwrap();
        write(&live.convs).insert(conv.clone(), old.clone(), ConvMsg::Tick);
        assert_eq!(next(&mut conv_log).await, "conv");

        // In the actors' own tenure: straight to the live one.
        routes.conv_in(Tenure::SOLE, &conv, ConvMsg::Tick);
        assert_eq!(next(&mut conv_log).await, "conv");

        // A later tenure: the old actor is stopped and out of the table, the
        // shard's outboxes are woken, and then the message goes to the
        // router, which starts a fresh actor.
        routes.conv_in(Tenure(3), &conv, ConvMsg::Tick);
        tokio::time::timeout(std::time::Duration::from_secs(5), old_task)
            .await
            .expect("the old actor stopped")
            .unwrap();
        assert_eq!(next(&mut router_log).await, "settle");
        assert_eq!(next(&mut router_log).await, "routed");

        // The same tenure again, or an earlier one late: nothing is
        // replaced or woken again.
        routes.conv_in(Tenure(3), &conv, ConvMsg::Tick);
        routes.conv_in(Tenure(2), &conv, ConvMsg::Tick);
        assert_eq!(next(&mut router_log).await, "routed");
        assert_eq!(next(&mut router_log).await, "routed");
        assert_eq!(live.tenure(shard_of(conv.as_str())), 3);

        router.stop(None);
        router_task.await.unwrap();
    }
}
