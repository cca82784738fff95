//! The conversation actor: owns one conversation's version counter and log.
//!
//! Its mailbox serializes every write to the conversation. A write is
//! checked against the current state (membership, `expect`, `rev`), given
//! the next version, committed durably, and only then acknowledged and
//! handed to the directory for fan-out to the members' devices. The in-memory
//! state moves only after the commit succeeded, so a failed commit changes
//! nothing.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tidings_protocol::frames::{ConvSummary, SyncedConv};
use tidings_protocol::{Cmid, ConvId, Event, ServerFrame, UserId};

use crate::budget::{cut, page, Budget, Keep};
use crate::command::{Ack, Answer, ConvCommand, Created, HistoryPage, Page};
use crate::directory::{Directory, Fanout};
use crate::entity::{commit_failed, now_ms, storage_failed, EntityArgs, IdleClock};
use crate::index::Indexes;
use crate::messages::{ConvMsg, EntityKey, RouterMsg};
use crate::metrics::Metrics;
use crate::shard::{shard_of, ShardId};
use crate::storage::records::{
    CmidRecord, ConvMeta, IndexOutbox, MessageState, StoredEvent, StoredKind,
};
use crate::storage::{keys, Cf, CommitLog, Storage, WriteSet};

use rules::Refusal;

pub mod rules;

pub struct ConversationActor;

pub struct Conversation {
    id: ConvId,
    shard: ShardId,
    meta: Option<ConvMeta>,
    /// The members, shared by every fan-out until membership changes.
    audience: Arc<[UserId]>,
    /// The devices here that events go to.
    fanout: Fanout,
    storage: Storage,
    log: Arc<dyn CommitLog>,
    router: ActorRef<RouterMsg>,
    directory: Directory,
    metrics: Arc<Metrics>,
    idle: IdleClock,
    /// A replicated commit failed without saying whether it took: this
    /// actor's counter may be behind storage, so it stops and the next
    /// request loads the conversation afresh.
    stale: bool,
    /// Changes to members' indexes not yet known to be written.
    outbox: IndexOutbox,
    /// Whether the outbox was written out and may be cleared.
    outbox_sent: bool,
    /// The version since which `audience` has been the audience: the last
    /// change of the stored meta (members or title) this actor knows of.
    audience_since: u64,
    /// When to try the outbox again after a failure.
    outbox_retry: Instant,
    indexes: Arc<dyn Indexes>,
}

use crate::error::{Error, Result};

/// How long a conversation waits before writing its members' indexes again
/// after a failure.
const OUTBOX_RETRY: Duration = Duration::from_secs(1);

impl Actor for ConversationActor {
    type Msg = ConvMsg;
    type State = Conversation;
    type Arguments = EntityArgs<ConvId>;

    async fn pre_start(
        &self,
        myself: ActorRef<ConvMsg>,
        args: EntityArgs<ConvId>,
    ) -> std::result::Result<Conversation, ActorProcessingErr> {
        let mut meta: Option<ConvMeta> = args
            .storage
            .get(Cf::ConvMeta, &keys::entity(args.id.as_str()))?;
        // The stored meta is rewritten only when members or title change;
        // the version is the last one in the log.
        let audience_since = meta.as_ref().map_or(0, |m| m.version);
        if let Some(meta) = &mut meta {
            let last = args.storage.last_version(Cf::ConvLog, args.id.as_str())?;
            meta.version = meta.version.max(last.unwrap_or(0));
        }
        let outbox = args
            .storage
            .get(
                Cf::ConvMeta,
                &keys::index_outbox(shard_of(args.id.as_str()).0, args.id.as_str()),
            )?
            .unwrap_or_default();
        let audience = meta
            .as_ref()
            .map(|m| Arc::from(m.members.clone()))
            .unwrap_or_else(|| Arc::from(Vec::new()));
        let key = EntityKey::Conv(args.id.clone());
        let idle = IdleClock::new(key, myself.get_id(), args.config.idle_after);
        args.metrics.entity_started("conversation");
        Ok(Conversation {
            shard: shard_of(args.id.as_str()),
            id: args.id,
            meta,
            audience,
            fanout: Fanout::default(),
            audience_since,
            storage: args.storage,
            log: args.log,
            router: args.router,
            directory: args.directory,
            metrics: args.metrics,
            idle,
            stale: false,
            outbox,
            outbox_sent: false,
            outbox_retry: Instant::now(),
            indexes: args.indexes,
        })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<ConvMsg>,
        state: &mut Conversation,
    ) -> std::result::Result<(), ActorProcessingErr> {
        state.metrics.entity_gauge("conversation").dec();
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<ConvMsg>,
        message: ConvMsg,
        state: &mut Conversation,
    ) -> std::result::Result<(), ActorProcessingErr> {
        match message {
            ConvMsg::Tick => {
                // An outbox left by a failure (or by an earlier leader) is
                // retried, and keeps the actor alive until it is done.
                if !state.outbox.changes.is_empty() && Instant::now() >= state.outbox_retry {
                    state.send_outbox().await;
                }
                state.finish(&myself).await;
                let busy = !state.outbox.changes.is_empty();
                state.idle.tick(&state.router, busy);
                return Ok(());
            }
            ConvMsg::Shutdown => {
                myself.stop(None);
                return Ok(());
            }
            _ => state.idle.handled(),
        }
        match message {
            ConvMsg::Command(command, reply) => {
                let _ = reply.send(state.run(command).await);
            }
            ConvMsg::Settle => state.send_outbox().await,
            ConvMsg::Tick | ConvMsg::Shutdown => unreachable!("handled above"),
        }
        // After the reply.
        state.finish(&myself).await;
        Ok(())
    }
}

/// The error for a conversation that does not exist: the actor's, and the
/// router's for a request it answers without starting one.
pub(crate) fn no_such_conversation(conv: &ConvId) -> Error {
    Refusal::NoSuchConversation(conv.clone()).into()
}

impl Conversation {
    /// Runs one command: its rule decides, and what it decided is written
    /// and fanned out before the answer.
    async fn run(&mut self, command: ConvCommand) -> Result<Answer> {
        match command {
            ConvCommand::Create { by, members, title } => {
                self.create(by, members, title).await.map(Answer::Created)
            }
            ConvCommand::OpenDirect { by } => self.open_direct(by).await.map(Answer::Created),
            ConvCommand::Send {
                by,
                body,
                cmid,
                expect,
            } => self.send(by, body, cmid, expect).await.map(Answer::Ack),
            ConvCommand::Edit {
                by,
                target,
                rev,
                body,
            } => self
                .revise(by, target, rev, Some(body))
                .await
                .map(Answer::Ack),
            ConvCommand::Delete { by, target, rev } => {
                self.revise(by, target, rev, None).await.map(Answer::Ack)
            }
            ConvCommand::Members { by, add, remove } => {
                self.change_members(by, add, remove).await.map(Answer::Ack)
            }
            ConvCommand::Rename { by, title } => self.rename(by, title).await.map(Answer::Ack),
            ConvCommand::History { by, page } => self.history(&by, page).map(Answer::History),
            ConvCommand::Summary { by } => self.summary(&by).map(Answer::Summary),
            ConvCommand::Catchup {
                by,
                after,
                limit,
                max_bytes,
            } => self
                .catchup(&by, after, limit, max_bytes)
                .map(Answer::Synced),
            ConvCommand::Typing { by } => {
                self.typing(by);
                Ok(Answer::Done)
            }
        }
    }

    /// The state, if the conversation exists and `by` is a member
    /// ([`rules::member`]).
    fn member_meta(&self, by: &UserId) -> Result<&ConvMeta> {
        Ok(rules::member(&self.id, self.meta.as_ref(), by)?)
    }

    /// Appends `events` (versions following the current one) with `extra`
    /// writes, durably, then fans out. `changed` is the new meta when the
    /// members or title change (it is written with the events); otherwise
    /// only the version moves, and the log already records that.
    async fn commit(
        &mut self,
        mut changed: Option<ConvMeta>,
        events: Vec<(StoredEvent, Arc<[UserId]>)>,
        mut writes: WriteSet,
    ) -> Result<Vec<u64>> {
        let first = self.meta.as_ref().map_or(0, |m| m.version) + 1;
        let versions: Vec<u64> = (first..first + events.len() as u64).collect();
        let last = first + events.len() as u64 - 1;
        let conv = self.id.as_str();
        for ((event, _), version) in events.iter().zip(&versions) {
            writes
                .put(Cf::ConvLog, keys::versioned(conv, *version), event)
                .map_err(storage_failed)?;
        }
        // In a cluster, a replica applies this only if the log still ends
        // where this actor believes it does.
        writes.expect(Cf::ConvLog, conv, first - 1, last);
        if let Some(meta) = &mut changed {
            meta.version = last;
            writes
                .put(Cf::ConvMeta, keys::entity(conv), meta)
                .map_err(storage_failed)?;
        }
        if let Err(err) = self.log.append(self.shard, writes).await {
            // The write may still commit: what this actor holds can no
            // longer be trusted, and it stops once the reply is out.
            self.stale |= err.leaves_state_unknown();
            return Err(commit_failed(err));
        }
        match changed {
            Some(meta) => {
                if self.meta.as_ref().map(|m| &m.members) != Some(&meta.members) {
                    self.audience = Arc::from(meta.members.clone());
                }
                self.audience_since = last;
                self.meta = Some(meta);
            }
            None => {
                if let Some(meta) = &mut self.meta {
                    meta.version = last;
                }
            }
        }
        self.metrics.events_committed.inc_by(events.len() as u64);
        for ((event, audience), version) in events.into_iter().zip(&versions) {
            self.publish(event.into_event(self.id.clone(), *version), audience);
        }
        Ok(versions)
    }

    /// Commits a membership change (`meta` and its `events`) with the
    /// index changes it owes in `outbox`, then writes those out.
    async fn commit_members(
        &mut self,
        meta: ConvMeta,
        events: Vec<(StoredEvent, Arc<[UserId]>)>,
        outbox: IndexOutbox,
    ) -> Result<Vec<u64>> {
        let mut writes = WriteSet::default();
        self.stage_outbox(&outbox, &mut writes)?;
        let versions = self.commit(Some(meta), events, writes).await?;
        self.outbox = outbox;
        self.send_outbox().await;
        Ok(versions)
    }

    /// Pushes the event at `version` once more, for a send that came again
    /// (the sender never saw its ack): the first push may have been lost
    /// with the node or the leader that committed it. Devices drop what
    /// they already have by version. Only while the members are those the
    /// event went to.
    fn deliver_again(&mut self, version: u64) -> Result<()> {
        if version < self.audience_since {
            return Ok(());
        }
        let key = keys::versioned(self.id.as_str(), version);
        if let Some(event) = self
            .storage
            .get::<StoredEvent>(Cf::ConvLog, &key)
            .map_err(storage_failed)?
        {
            let event = event.into_event(self.id.clone(), version);
            self.publish(event, self.audience.clone());
        }
        Ok(())
    }

    fn publish(&mut self, event: Event, audience: Arc<[UserId]>) {
        let frame = ServerFrame::Event(event).push().to_json().into();
        self.directory
            .deliver_to_audience(&mut self.fanout, &audience, &frame, &self.metrics);
    }

    /// The version the next committed event gets.
    fn next_version(&self) -> u64 {
        self.meta.as_ref().map_or(0, |m| m.version) + 1
    }

    /// Writes `outbox` with a membership change: the members' indexes are
    /// in their own shards, so the change is committed first and the
    /// indexes follow ([`Self::send_outbox`]).
    fn stage_outbox(&self, outbox: &IndexOutbox, writes: &mut WriteSet) -> Result<()> {
        writes
            .put(
                Cf::ConvMeta,
                keys::index_outbox(self.shard.0, self.id.as_str()),
                outbox,
            )
            .map_err(storage_failed)
    }

    /// Writes the outbox's changes into the members' indexes, wherever
    /// their shards are led, waiting at most half the call timeout so the
    /// caller still gets its answer; what fails is tried again on a later
    /// tick. Every change carries its version, so a late or repeated one
    /// changes nothing.
    async fn send_outbox(&mut self) {
        let indexes = &self.indexes;
        if self.outbox.changes.is_empty() {
            return;
        }
        let writes = join_all(
            self.outbox
                .changes
                .iter()
                .map(|change| indexes.index(&change.user, &self.id, change.entry)),
        );
        let wait = indexes.timeout() / 2;
        match tokio::time::timeout(wait, writes).await {
            Ok(results) if results.iter().all(Result::is_ok) => self.outbox_sent = true,
            outcome => {
                let failed = outcome.map_or(self.outbox.changes.len(), |results| {
                    results.iter().filter(|r| r.is_err()).count()
                });
                tracing::warn!(conv = %self.id, failed, "members' indexes not written yet; retrying");
                self.outbox_retry = Instant::now() + OUTBOX_RETRY;
            }
        }
    }

    /// Ends a message: clears the outbox if it was sent, and stops the
    /// actor if a write left its state unknown (it reloads from storage).
    async fn finish(&mut self, myself: &ActorRef<ConvMsg>) {
        self.clear_outbox().await;
        if self.stale {
            myself.stop(Some("a write was not confirmed".into()));
        }
    }

    /// Deletes the stored outbox once every change in it is written.
    async fn clear_outbox(&mut self) {
        if !self.outbox_sent {
            return;
        }
        let mut writes = WriteSet::default();
        writes.delete(
            Cf::ConvMeta,
            keys::index_outbox(self.shard.0, self.id.as_str()),
        );
        match self.log.append(self.shard, writes).await {
            Ok(()) => {
                self.outbox = IndexOutbox::default();
                self.outbox_sent = false;
            }
            Err(err) => self.stale |= err.leaves_state_unknown(),
        }
    }

    async fn start(
        &mut self,
        by: UserId,
        members: Vec<UserId>,
        title: Option<String>,
    ) -> Result<Created> {
        let members = rules::founding_members(&by, members)?;
        let meta = ConvMeta {
            title: title.clone(),
            members: members.clone(),
            creator: by.clone(),
            version: 0,
        };
        let mut outbox = self.outbox.clone();
        outbox.index(&members, self.next_version(), true);
        let event = StoredEvent {
            ts: now_ms(),
            from: by,
            kind: StoredKind::Created {
                title,
                members: members.clone(),
            },
        };
        let versions = self
            .commit_members(meta, vec![(event, Arc::from(members))], outbox)
            .await?;
        Ok(Created {
            conv: self.id.clone(),
            version: versions[0],
        })
    }

    async fn create(
        &mut self,
        by: UserId,
        members: Vec<UserId>,
        title: Option<String>,
    ) -> Result<Created> {
        rules::may_create(&self.id, self.meta.as_ref())?;
        self.start(by, members, title).await
    }

    async fn open_direct(&mut self, by: UserId) -> Result<Created> {
        let other = rules::direct_partner(&self.id, &by)?;
        if let Some(meta) = &self.meta {
            return Ok(Created {
                conv: self.id.clone(),
                version: meta.version,
            });
        }
        self.start(by, vec![other], None).await
    }

    async fn send(
        &mut self,
        by: UserId,
        body: String,
        cmid: Option<Cmid>,
        expect: Option<u64>,
    ) -> Result<Ack> {
        let current = self.member_meta(&by)?.version;
        let seen = match &cmid {
            Some(cmid) => self
                .storage
                .get::<CmidRecord>(Cf::ConvCmids, &keys::named(self.id.as_str(), cmid.as_str()))
                .map_err(storage_failed)?,
            None => None,
        };
        let version = match rules::send(current, seen, expect)? {
            rules::Send::Again(seen) => {
                self.deliver_again(seen.version)?;
                return Ok(Ack {
                    conv: self.id.clone(),
                    version: seen.version,
                    ts: seen.ts,
                    dup: Some(true),
                });
            }
            rules::Send::Append { version } => version,
        };
        let ts = now_ms();
        let mut writes = WriteSet::default();
        if let Some(cmid) = &cmid {
            let record = CmidRecord { version, ts };
            writes
                .put(
                    Cf::ConvCmids,
                    keys::named(self.id.as_str(), cmid.as_str()),
                    &record,
                )
                .map_err(storage_failed)?;
        }
        let event = StoredEvent {
            ts,
            from: by,
            kind: StoredKind::Message { body, cmid },
        };
        self.append(event, writes, Some(false)).await
    }

    /// Appends one event for every member and acks it.
    async fn append(
        &mut self,
        event: StoredEvent,
        writes: WriteSet,
        dup: Option<bool>,
    ) -> Result<Ack> {
        let ts = event.ts;
        let audience = self.audience.clone();
        let versions = self.commit(None, vec![(event, audience)], writes).await?;
        Ok(Ack {
            conv: self.id.clone(),
            version: versions[0],
            ts,
            dup,
        })
    }

    /// The current state of the message at `target`.
    fn message_state(&self, target: u64) -> Result<MessageState> {
        let conv = self.id.as_str();
        if let Some(state) = self
            .storage
            .get::<MessageState>(Cf::ConvMessages, &keys::versioned(conv, target))
            .map_err(storage_failed)?
        {
            return Ok(state);
        }
        match self
            .storage
            .get::<StoredEvent>(Cf::ConvLog, &keys::versioned(conv, target))
            .map_err(storage_failed)?
        {
            Some(StoredEvent {
                from,
                kind: StoredKind::Message { body, .. },
                ..
            }) => Ok(MessageState {
                from,
                rev: 1,
                body: Some(body),
            }),
            _ => Err(Refusal::NoSuchMessage {
                conv: self.id.clone(),
                target,
            }
            .into()),
        }
    }

    /// An edit (`body` is `Some`) or a delete (`None`) of a message.
    async fn revise(
        &mut self,
        by: UserId,
        target: u64,
        rev: u32,
        body: Option<String>,
    ) -> Result<Ack> {
        self.member_meta(&by)?;
        let current = self.message_state(target)?;
        let (state, kind) = rules::revise(current, target, &by, rev, body)?;
        let mut writes = WriteSet::default();
        writes
            .put(
                Cf::ConvMessages,
                keys::versioned(self.id.as_str(), target),
                &state,
            )
            .map_err(storage_failed)?;
        let event = StoredEvent {
            ts: now_ms(),
            from: by,
            kind,
        };
        self.append(event, writes, None).await
    }

    async fn change_members(
        &mut self,
        by: UserId,
        add: Vec<UserId>,
        remove: Vec<UserId>,
    ) -> Result<Ack> {
        let meta = self.member_meta(&by)?;
        let ts = now_ms();
        let Some(change) = rules::change_members(&self.id, meta, &by, add, remove)? else {
            return Ok(self.ack(meta.version, ts));
        };
        let meta = ConvMeta {
            members: change.members,
            ..meta.clone()
        };
        let joined: Arc<[UserId]> = Arc::from(change.joined);
        let mut events = Vec::new();
        let mut outbox = self.outbox.clone();
        if !change.joining.is_empty() {
            outbox.index(&change.joining, self.next_version(), true);
            let event = StoredEvent {
                ts,
                from: by.clone(),
                kind: StoredKind::Join {
                    users: change.joining,
                },
            };
            events.push((event, joined.clone()));
        }
        if !change.leaving.is_empty() {
            let version = self.next_version() + events.len() as u64;
            outbox.index(&change.leaving, version, false);
            let event = StoredEvent {
                ts,
                from: by.clone(),
                kind: StoredKind::Leave {
                    users: change.leaving,
                },
            };
            // The leaving hear that they left.
            events.push((event, joined));
        }
        let versions = self.commit_members(meta, events, outbox).await?;
        Ok(self.ack(*versions.last().expect("at least one event"), ts))
    }

    /// A member gives the group a new title: a `title` event to every
    /// member, and the stored meta (which `convs` and `sync` read) changes
    /// with it. The same title again writes nothing.
    async fn rename(&mut self, by: UserId, title: String) -> Result<Ack> {
        let meta = self.member_meta(&by)?;
        let ts = now_ms();
        let Some(renamed) = rules::rename(&self.id, meta, title.clone())? else {
            return Ok(self.ack(meta.version, ts));
        };
        let event = StoredEvent {
            ts,
            from: by,
            kind: StoredKind::Title { title },
        };
        let audience = self.audience.clone();
        let versions = self
            .commit(Some(renamed), vec![(event, audience)], WriteSet::default())
            .await?;
        Ok(self.ack(versions[0], ts))
    }

    /// The ack of a write (not a send) that left the conversation at
    /// `version`.
    fn ack(&self, version: u64, ts: u64) -> Ack {
        Ack {
            conv: self.id.clone(),
            version,
            ts,
            dup: None,
        }
    }

    fn events(&self, after: u64, before: u64, limit: u32, from_end: bool) -> Result<Vec<Event>> {
        let stored: Vec<(u64, StoredEvent)> = self
            .storage
            .log_range(
                Cf::ConvLog,
                self.id.as_str(),
                after,
                before,
                limit as usize,
                from_end,
            )
            .map_err(storage_failed)?;
        Ok(stored
            .into_iter()
            .map(|(version, event)| event.into_event(self.id.clone(), version))
            .collect())
    }

    fn history(&self, by: &UserId, page: Page) -> Result<HistoryPage> {
        let version = self.member_meta(by)?.version;
        let before = page.before.unwrap_or(u64::MAX);
        let (mut events, keep) = match page.after {
            Some(after) => (self.events(after, before, page.limit, false)?, Keep::First),
            None => (self.events(0, before, page.limit, true)?, Keep::Last),
        };
        let more = cut(&mut events, keep, &mut Budget::new(page.max_bytes));
        Ok(HistoryPage {
            conv: self.id.clone(),
            version,
            events,
            more,
        })
    }

    fn summary(&self, by: &UserId) -> Result<ConvSummary> {
        let meta = self.member_meta(by)?;
        Ok(ConvSummary {
            conv: self.id.clone(),
            title: meta.title.clone(),
            members: meta.members.clone(),
            version: meta.version,
        })
    }

    fn catchup(
        &self,
        by: &UserId,
        after: Option<u64>,
        limit: u32,
        max_bytes: usize,
    ) -> Result<SyncedConv> {
        let meta = self.member_meta(by)?;
        let mut events = match after {
            Some(after) => self.events(after, u64::MAX, limit, false)?,
            None => self.events(0, u64::MAX, limit, true)?,
        };
        let more = page(
            &mut events,
            after,
            meta.version,
            |e| e.version,
            &mut Budget::new(max_bytes),
        );
        Ok(SyncedConv {
            conv: self.id.clone(),
            title: meta.title.clone(),
            members: meta.members.clone(),
            version: meta.version,
            events,
            more,
        })
    }

    fn typing(&self, by: UserId) {
        if self.member_meta(&by).is_err() {
            return;
        }
        let frame = ServerFrame::Typing {
            conv: self.id.clone(),
            user: by.clone(),
        }
        .push()
        .to_json()
        .into();
        self.directory
            .deliver(&self.audience, Some(&by), &frame, &self.metrics);
    }
}
