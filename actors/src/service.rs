//! The operations a user or a backend can ask for, on top of the entity
//! actors.
//!
//! WebSocket connections and HTTP handlers both call these, so the two
//! front ends behave the same. Every failure comes back as an [`Error`],
//! which the front ends turn into the client's `error` frame.
//!
//! Each operation becomes a [`Command`] for one entity. On a single node
//! it goes to the entity's actor here ([`Routes`]). In a cluster it goes
//! where the entity's shard is led: here if this node leads it, else to
//! the leader, which the cluster's [`Placement`] finds and forwards to.
//! While a shard has no reachable leader the service asks again until the
//! call timeout, and answers `unavailable`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::{join_all, BoxFuture};
use rand::distr::{Alphanumeric, SampleString};
use tidings_protocol::frames::{
    validate_limit, validate_members, validate_title, ConvSummary, PresenceInfo, SyncedConv,
    SyncedNotifications,
};
use tidings_protocol::{
    ClientFrame, Cmid, ConvId, ServerFrame, UserId, DEFAULT_HISTORY_LIMIT, DEFAULT_SYNC_LIMIT,
};
use tokio::sync::oneshot;

use crate::budget::{cut, fit_conv, json_len, Budget, Keep, DEFAULT_MAX_REPLY_BYTES};
use crate::command::{Ack, Answer, Command, ConvCommand, Created, HistoryPage, Page, UserCommand};
use crate::directory::{Directory, Subscription};
use crate::index::Indexes;
use crate::messages::{ConvMsg, UserMsg};
use crate::outbound::Outbound;
use crate::remote::{Placed, Placement, Tenure};
use crate::router::Routes;
use crate::storage::records::IndexEntry;

use crate::error::{Error, Result};

/// A `sync` reply's content.
#[derive(Debug, Default)]
pub struct Synced {
    pub convs: Vec<SyncedConv>,
    pub notifications: SyncedNotifications,
    /// Conversations with events to deliver were left out at the byte
    /// bound: the client syncs again with the versions it now has.
    pub more: bool,
}

/// A handle on the node's entity actors and, in a cluster, on where each
/// shard is led; cheap to clone.
#[derive(Clone)]
pub struct Service {
    routes: Routes,
    config: ServiceConfig,
}

fn unavailable(message: &str) -> Error {
    Error::Unavailable(message.to_string())
}

fn unexpected() -> Error {
    Error::Internal("an entity gave an answer of the wrong kind".to_string())
}

/// Longest wait for another node's presence answer.
const PRESENCE_WAIT: Duration = Duration::from_secs(2);

/// How long to wait before asking again where a shard's leader is.
const LEADER_POLL: Duration = Duration::from_millis(50);

/// Room kept in every bounded reply for the frame around its items: the
/// type, a `req` of up to 64 characters, a conversation id, versions and
/// `more` flags.
const REPLY_FRAME_BYTES: usize = 512;

/// How many conversations a `sync` or `convs` asks at once: what is read
/// ahead of the reply's byte bound is at most this many pages.
const WAVE: usize = 8;

/// What a service is made of besides the routes to the entity actors.
#[derive(Clone)]
pub struct ServiceConfig {
    /// Where devices are, for presence and subscriptions.
    pub directory: Directory,
    /// How long a request may take before it is answered `unavailable`.
    pub timeout: Duration,
    /// In a cluster: where each command runs.
    pub placement: Option<Arc<dyn Placement>>,
    /// Bounds `history`, `sync` and `convs` replies to about this many
    /// bytes of JSON each (`--max-reply-bytes`); replies cut short say
    /// `more`.
    pub max_reply_bytes: usize,
}

impl ServiceConfig {
    /// A single node's service, with the default reply bound.
    pub fn new(directory: Directory, timeout: Duration) -> ServiceConfig {
        ServiceConfig {
            directory,
            timeout,
            placement: None,
            max_reply_bytes: DEFAULT_MAX_REPLY_BYTES,
        }
    }
}

impl Service {
    /// The router's entities get a service made from the same parts as
    /// the one the front ends get ([`crate::start`]).
    pub(crate) fn new(routes: Routes, config: ServiceConfig) -> Service {
        Service { routes, config }
    }

    /// The byte bound of what a reply carries: the bound less room for the
    /// frame around it (its type, `req`, ids and versions).
    fn reply_budget(&self) -> Budget {
        Budget::new(
            self.config
                .max_reply_bytes
                .saturating_sub(REPLY_FRAME_BYTES),
        )
    }

    /// How long a request may take before it is answered `unavailable`.
    pub fn timeout(&self) -> Duration {
        self.config.timeout
    }

    /// Waits for an entity's answer, up to the call timeout.
    async fn answer<T>(&self, answer: oneshot::Receiver<Result<T>>) -> Result<T> {
        match tokio::time::timeout(self.config.timeout, answer).await {
            Ok(Ok(result)) => result,
            Err(_) => Err(unavailable("the request timed out; retry")),
            Ok(Err(_)) => Err(unavailable("the request could not be served; retry")),
        }
    }

    /// Runs `command` where its shard is led: here, or on the leader
    /// ([`Placement`]). Waits for a leader up to the call timeout; a
    /// request that reached a leader and got no answer is not sent again
    /// (it may have run), and the client decides.
    async fn run(&self, command: Command) -> Result<Answer> {
        let Some(placement) = &self.config.placement else {
            return self.run_here(command, Tenure::SOLE).await;
        };
        let shard = command.shard();
        let deadline = Instant::now() + self.config.timeout;
        loop {
            let wait = deadline.saturating_duration_since(Instant::now());
            match placement.place(&command, wait).await {
                Placed::Here(tenure) => return self.run_here(command, tenure).await,
                Placed::Ran(result) => return result,
                Placed::Lost => {
                    return Err(unavailable(
                        "the shard's leader did not answer; retry (with the same cmid)",
                    ))
                }
                Placed::NoLeader => {}
            }
            if Instant::now() + LEADER_POLL >= deadline {
                return Err(unavailable(&format!(
                    "shard {} has no reachable leader; retry",
                    shard.0
                )));
            }
            tokio::time::sleep(LEADER_POLL).await;
        }
    }

    /// Runs `command` on this node's entity actor, which serves its shard
    /// in `tenure`: on a single node, once placed here in a cluster, or for
    /// a command another node forwarded here once the cluster has checked
    /// this node leads its shard.
    pub async fn run_here(&self, command: Command, tenure: Tenure) -> Result<Answer> {
        let (reply, answer) = oneshot::channel();
        match command {
            Command::Conv(conv, command) => {
                self.routes
                    .conv_in(tenure, &conv, ConvMsg::Command(command, reply.into()))
            }
            Command::User(user, command) => self
                .routes
                .user(&user, UserMsg::Command(command, reply.into())),
        }
        self.answer(answer).await
    }

    /// Runs `command` for `conv`, wherever it is led, and takes its
    /// answer as the `T` the command answers with.
    async fn conv<T: TryFrom<Answer>>(&self, conv: &ConvId, command: ConvCommand) -> Result<T> {
        let answer = self.run(Command::Conv(conv.clone(), command)).await?;
        T::try_from(answer).map_err(|_| unexpected())
    }

    /// Runs `command` for `user`, wherever it is led.
    async fn user<T: TryFrom<Answer>>(&self, user: &UserId, command: UserCommand) -> Result<T> {
        let answer = self.run(Command::User(user.clone(), command)).await?;
        T::try_from(answer).map_err(|_| unexpected())
    }

    async fn convs_of(&self, user: &UserId) -> Result<Vec<ConvId>> {
        self.user(user, UserCommand::Conversations).await
    }

    /// Records in `user`'s index (in the user's shard) whether the user is
    /// a member of `conv`, as of `entry.version`.
    pub async fn index(&self, user: &UserId, conv: &ConvId, entry: IndexEntry) -> Result<()> {
        let conv = conv.clone();
        self.user(user, UserCommand::Index { conv, entry }).await
    }

    /// `by` blocks `user` (`block`) or unblocks it: kept in `by`'s shard.
    pub async fn block(&self, by: &UserId, user: &UserId, block: bool) -> Result<()> {
        let user = user.clone();
        self.user(by, UserCommand::Block { user, block }).await
    }

    /// The users `by` has blocked.
    pub async fn blocked(&self, by: &UserId) -> Result<Vec<UserId>> {
        self.user(by, UserCommand::BlockList).await
    }

    /// `forbidden` if any of `others` has blocked `by`: a blocked user may
    /// not open a direct conversation with, or add to a conversation, the
    /// user who blocked them. Each block list is asked in its own shard.
    async fn refuse_if_blocked(&self, by: &UserId, others: &[UserId]) -> Result<()> {
        let others: BTreeSet<&UserId> = others.iter().filter(|u| *u != by).collect();
        let asks = others.iter().map(|other| async move {
            let command = UserCommand::Blocks { user: by.clone() };
            (*other, self.user::<bool>(other, command).await)
        });
        for (other, blocks) in join_all(asks).await {
            if blocks? {
                return Err(Error::Forbidden(format!("{other} has blocked {by}")));
            }
        }
        Ok(())
    }

    /// `forbidden` if `conv` is a direct conversation of `by` and a user
    /// who has blocked `by`: a blocked user may not write to the blocker,
    /// in a direct conversation opened before the block too. Groups are
    /// not checked: blocking removes nobody from a group. Someone outside
    /// `conv` is not checked either, and learns from the conversation what
    /// anyone outside learns.
    async fn refuse_if_blocked_in(&self, by: &UserId, conv: &ConvId) -> Result<()> {
        match conv.direct_members() {
            Some((a, b)) if &a == by => self.refuse_if_blocked(by, &[b]).await,
            Some((a, b)) if &b == by => self.refuse_if_blocked(by, &[a]).await,
            _ => Ok(()),
        }
    }

    /// A new group conversation with `by` and `members`.
    pub async fn create(
        &self,
        by: &UserId,
        members: Vec<UserId>,
        title: Option<String>,
    ) -> Result<Created> {
        validate_members(&members)?;
        validate_title(title.as_deref())?;
        self.refuse_if_blocked(by, &members).await?;
        let suffix = Alphanumeric.sample_string(&mut rand::rng(), 20);
        let conv = ConvId::group(&suffix).map_err(|e| Error::Internal(e.to_string()))?;
        let by = by.clone();
        self.conv(&conv, ConvCommand::Create { by, members, title })
            .await
    }

    /// The direct conversation of `by` and `other`, created on first use.
    pub async fn dm(&self, by: &UserId, other: &UserId) -> Result<Created> {
        self.refuse_if_blocked(by, std::slice::from_ref(other))
            .await?;
        let conv = ConvId::direct(by, other);
        self.conv(&conv, ConvCommand::OpenDirect { by: by.clone() })
            .await
    }

    pub async fn send(
        &self,
        by: &UserId,
        conv: &ConvId,
        body: String,
        cmid: Option<Cmid>,
        expect: Option<u64>,
    ) -> Result<Ack> {
        tidings_protocol::frames::validate_body(&body)?;
        self.refuse_if_blocked_in(by, conv).await?;
        let by = by.clone();
        self.conv(
            conv,
            ConvCommand::Send {
                by,
                body,
                cmid,
                expect,
            },
        )
        .await
    }

    pub async fn edit(
        &self,
        by: &UserId,
        conv: &ConvId,
        target: u64,
        rev: u32,
        body: String,
    ) -> Result<Ack> {
        tidings_protocol::frames::validate_body(&body)?;
        self.refuse_if_blocked_in(by, conv).await?;
        let by = by.clone();
        self.conv(
            conv,
            ConvCommand::Edit {
                by,
                target,
                rev,
                body,
            },
        )
        .await
    }

    pub async fn delete(&self, by: &UserId, conv: &ConvId, target: u64, rev: u32) -> Result<Ack> {
        let by = by.clone();
        self.conv(conv, ConvCommand::Delete { by, target, rev })
            .await
    }

    pub async fn members(
        &self,
        by: &UserId,
        conv: &ConvId,
        add: Vec<UserId>,
        remove: Vec<UserId>,
    ) -> Result<Ack> {
        validate_members(&add)?;
        validate_members(&remove)?;
        self.refuse_if_blocked(by, &add).await?;
        let by = by.clone();
        self.conv(conv, ConvCommand::Members { by, add, remove })
            .await
    }

    /// `by` gives the group `conv` a new title.
    pub async fn rename(&self, by: &UserId, conv: &ConvId, title: String) -> Result<Ack> {
        tidings_protocol::frames::validate_new_title(&title)?;
        let by = by.clone();
        self.conv(conv, ConvCommand::Rename { by, title }).await
    }

    pub async fn history(
        &self,
        by: &UserId,
        conv: &ConvId,
        after: Option<u64>,
        before: Option<u64>,
        limit: Option<u32>,
    ) -> Result<HistoryPage> {
        let limit = validate_limit(limit, DEFAULT_HISTORY_LIMIT)?;
        let page = Page {
            after,
            before,
            limit,
            max_bytes: self.reply_budget().remaining(),
        };
        let by = by.clone();
        self.conv(conv, ConvCommand::History { by, page }).await
    }

    /// `conv` as `by`, a member, sees it listed.
    async fn summary(&self, by: &UserId, conv: &ConvId) -> Result<ConvSummary> {
        let by = by.clone();
        self.conv(conv, ConvCommand::Summary { by }).await
    }

    /// The conversations `by` belongs to, in id order from after `after`,
    /// as many as the reply's byte bound holds; `true` if more follow (ask
    /// again after the last one listed).
    pub async fn conversations(
        &self,
        by: &UserId,
        after: Option<&ConvId>,
    ) -> Result<(Vec<ConvSummary>, bool)> {
        let mut ids = self.convs_of(by).await?;
        ids.sort();
        ids.retain(|conv| after.is_none_or(|after| conv > after));
        let mut budget = self.reply_budget();
        let mut listed = Vec::new();
        for wave in ids.chunks(WAVE) {
            if budget.is_spent() {
                return Ok((listed, true));
            }
            let summaries = join_all(wave.iter().map(|conv| self.summary(by, conv))).await;
            // A conversation left between the two reads is simply not listed.
            for summary in summaries.into_iter().flatten() {
                if !budget.take(json_len(&summary) + 1) {
                    return Ok((listed, true));
                }
                listed.push(summary);
            }
        }
        Ok((listed, false))
    }

    /// What `by` missed: events of every conversation after the versions
    /// given (the latest `limit` of those not named), and notifications,
    /// as much as the reply's byte bound holds.
    ///
    /// The bound is filled in an order that makes every `sync` asked again
    /// progress: first the conversations with events to deliver (a
    /// conversation left out of those makes the reply's `more` true), then
    /// the notifications, then the conversations the client is up to date
    /// with, while room remains (those left out have nothing to tell).
    pub async fn sync(
        &self,
        by: &UserId,
        seen: BTreeMap<ConvId, u64>,
        notifications: Option<u64>,
        limit: Option<u32>,
    ) -> Result<Synced> {
        let limit = validate_limit(limit, DEFAULT_SYNC_LIMIT)?;
        let ids = self.convs_of(by).await?;
        let mut budget = self.reply_budget();
        let mut synced = Synced::default();
        let mut current = Vec::new();
        let mut current_bytes = 0;
        for wave in ids.chunks(WAVE) {
            if budget.is_spent() {
                synced.more = true;
                break;
            }
            let max_bytes = budget.remaining();
            let pages = join_all(wave.iter().map(|conv| {
                let after = seen.get(conv).copied();
                let by = by.clone();
                self.conv::<SyncedConv>(
                    conv,
                    ConvCommand::Catchup {
                        by,
                        after,
                        limit,
                        max_bytes,
                    },
                )
            }))
            .await;
            for page in pages {
                let page = match page {
                    Ok(page) => page,
                    // Left between the two reads.
                    Err(err) if err.is_not_found() => continue,
                    Err(err) => return Err(err),
                };
                let named = seen.get(&page.conv).copied();
                if named.is_some() && page.events.is_empty() && !page.more {
                    // Up to date: kept for the end only while it could fit.
                    current_bytes += json_len(&page) + 1;
                    if current_bytes <= budget.remaining() {
                        current.push(page);
                    }
                    continue;
                }
                let keep = if named.is_some() {
                    Keep::First
                } else {
                    Keep::Last
                };
                match fit_conv(page, keep, &mut budget) {
                    Some(page) => synced.convs.push(page),
                    None => synced.more = true,
                }
            }
        }
        synced.notifications = self
            .notifications_within(by, notifications, limit, &mut budget)
            .await?;
        for page in current {
            if let Some(page) = fit_conv(page, Keep::First, &mut budget) {
                synced.convs.push(page);
            }
        }
        Ok(synced)
    }

    pub async fn notifications(
        &self,
        user: &UserId,
        after: Option<u64>,
        limit: Option<u32>,
    ) -> Result<SyncedNotifications> {
        let limit = validate_limit(limit, DEFAULT_SYNC_LIMIT)?;
        self.notifications_within(user, after, limit, &mut self.reply_budget())
            .await
    }

    /// A page of `user`'s notifications that fits in `budget`.
    async fn notifications_within(
        &self,
        user: &UserId,
        after: Option<u64>,
        limit: u32,
        budget: &mut Budget,
    ) -> Result<SyncedNotifications> {
        let command = UserCommand::Notifications {
            after,
            limit,
            max_bytes: budget.remaining(),
        };
        let mut page: SyncedNotifications = self.user(user, command).await?;
        let keep = if after.is_some() {
            Keep::First
        } else {
            Keep::Last
        };
        page.more |= cut(&mut page.events, keep, budget);
        Ok(page)
    }

    /// A backend's notification for `user`; returns its version.
    pub async fn notify(&self, user: &UserId, payload: serde_json::Value) -> Result<u64> {
        let size = payload.to_string().len();
        if size > tidings_protocol::MAX_PAYLOAD_BYTES {
            return Err(Error::TooLarge(format!(
                "payload is {size} bytes; the limit is {} bytes",
                tidings_protocol::MAX_PAYLOAD_BYTES
            )));
        }
        self.user(user, UserCommand::Notify { payload }).await
    }

    /// Of `users`, those who share a conversation with `by` (and `by`):
    /// the only ones whose presence `by` may see. A direct conversation
    /// names its other member; groups are asked for their members only
    /// while someone asked about is still unaccounted for.
    async fn contacts_among(&self, by: &UserId, users: &[UserId]) -> Result<Vec<UserId>> {
        let asked: BTreeSet<&UserId> = users.iter().filter(|u| *u != by).collect();
        if asked.is_empty() {
            return Ok(dedup_users(users));
        }
        let convs = self.convs_of(by).await?;
        let (direct, groups): (Vec<&ConvId>, Vec<&ConvId>) =
            convs.iter().partition(|conv| conv.is_direct());
        let mut shared: BTreeSet<UserId> = direct
            .iter()
            .filter_map(|conv| conv.direct_members())
            .flat_map(|(a, b)| [a, b])
            .collect();
        if asked.iter().any(|u| !shared.contains(*u)) {
            let summaries = join_all(groups.iter().map(|conv| self.summary(by, conv))).await;
            for summary in summaries.into_iter().flatten() {
                shared.extend(summary.members);
            }
        }
        Ok(visible(by, users, &shared))
    }

    /// Whether each of `users` is online, counting devices on every node,
    /// for those of them who share a conversation with `by`; the others
    /// are left out of the answer.
    pub async fn presence(
        &self,
        by: &UserId,
        users: &[UserId],
    ) -> Result<BTreeMap<UserId, PresenceInfo>> {
        if users.len() > tidings_protocol::MAX_PRESENCE_USERS {
            return Err(Error::BadRequest(format!(
                "presence takes at most {} users",
                tidings_protocol::MAX_PRESENCE_USERS
            )));
        }
        let users = &self.contacts_among(by, users).await?;
        let mut infos = self.local_presence(users);
        if let Some(placement) = &self.config.placement {
            // Devices are where they connected: ask every other node. A node
            // that does not answer in time counts as having none.
            let wait = self.config.timeout.min(PRESENCE_WAIT);
            for theirs in placement.presence_elsewhere(users, wait).await {
                for (mine, their) in infos.iter_mut().zip(theirs) {
                    mine.devices += their.devices;
                    mine.online |= their.online;
                }
            }
        }
        Ok(users.iter().cloned().zip(infos).collect())
    }

    /// The devices of `users` connected to this node.
    pub fn local_presence(&self, users: &[UserId]) -> Vec<PresenceInfo> {
        users
            .iter()
            .map(|user| {
                let devices = self.config.directory.devices(user);
                PresenceInfo {
                    online: devices > 0,
                    devices: devices as u32,
                }
            })
            .collect()
    }

    pub fn typing(&self, by: &UserId, conv: &ConvId) {
        let command = ConvCommand::Typing { by: by.clone() };
        if self.config.placement.is_none() {
            // Nobody waits for the answer.
            let (reply, _) = oneshot::channel();
            self.routes
                .conv(conv, ConvMsg::Command(command, reply.into()));
        } else {
            // Best effort, like typing itself: off the connection's path.
            let service = self.clone();
            let command = Command::Conv(conv.clone(), command);
            tokio::spawn(async move { service.run(command).await });
        }
    }

    /// Starts fanning `user`'s events out to `outbound`, until the
    /// subscription is dropped: whatever commits after this returns is
    /// pushed.
    pub fn subscribe(&self, user: &UserId, outbound: Outbound) -> Subscription {
        self.config.directory.subscribe(user, outbound)
    }

    /// Serves one client frame from a connection of `by`: the reply frame,
    /// or `None` for frames that get no reply.
    pub async fn handle(&self, by: &UserId, frame: ClientFrame) -> Result<Option<ServerFrame>> {
        let reply = match frame {
            ClientFrame::Ping => ServerFrame::Pong,
            ClientFrame::Create { members, title } => {
                let created = self.create(by, members, title).await?;
                created_frame(created)
            }
            ClientFrame::Dm { user } => created_frame(self.dm(by, &user).await?),
            ClientFrame::Send {
                conv,
                body,
                cmid,
                expect,
            } => ack_frame(self.send(by, &conv, body, cmid, expect).await?),
            ClientFrame::Edit {
                conv,
                target,
                rev,
                body,
            } => ack_frame(self.edit(by, &conv, target, rev, body).await?),
            ClientFrame::Delete { conv, target, rev } => {
                ack_frame(self.delete(by, &conv, target, rev).await?)
            }
            ClientFrame::History {
                conv,
                after,
                before,
                limit,
            } => {
                let page = self.history(by, &conv, after, before, limit).await?;
                ServerFrame::History {
                    conv: page.conv,
                    version: page.version,
                    events: page.events,
                    more: page.more,
                }
            }
            ClientFrame::Sync {
                convs,
                notifications,
                limit,
            } => {
                let synced = self
                    .sync(by, convs.unwrap_or_default(), notifications, limit)
                    .await?;
                ServerFrame::Synced {
                    convs: synced.convs,
                    notifications: synced.notifications,
                    more: synced.more,
                }
            }
            ClientFrame::Convs { after } => {
                let (conversations, blocked) =
                    tokio::join!(self.conversations(by, after.as_ref()), self.blocked(by));
                let (conversations, more) = conversations?;
                ServerFrame::Convs {
                    conversations,
                    more,
                    blocked: blocked?,
                }
            }
            ClientFrame::Members { conv, add, remove } => ack_frame(
                self.members(
                    by,
                    &conv,
                    add.unwrap_or_default(),
                    remove.unwrap_or_default(),
                )
                .await?,
            ),
            ClientFrame::Rename { conv, title } => ack_frame(self.rename(by, &conv, title).await?),
            ClientFrame::Presence { users } => ServerFrame::Presence {
                users: self.presence(by, &users).await?,
            },
            ClientFrame::Block { user } => {
                self.block(by, &user, true).await?;
                ServerFrame::Blocked { user }
            }
            ClientFrame::Unblock { user } => {
                self.block(by, &user, false).await?;
                ServerFrame::Unblocked { user }
            }
            ClientFrame::Typing { conv } => {
                self.typing(by, &conv);
                return Ok(None);
            }
            // A socket's own business: the connection serves it.
            ClientFrame::Refresh { .. } => {
                return Err(Error::BadRequest(
                    "refresh is sent over a WebSocket, for its own token".to_string(),
                ))
            }
        };
        Ok(Some(reply))
    }
}

/// Conversations write their members' indexes through the service, so
/// that each write goes where the user's shard is led.
impl Indexes for Service {
    fn index<'a>(
        &'a self,
        user: &'a UserId,
        conv: &'a ConvId,
        entry: IndexEntry,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(Service::index(self, user, conv, entry))
    }

    fn timeout(&self) -> Duration {
        self.config.timeout
    }
}

fn created_frame(created: Created) -> ServerFrame {
    ServerFrame::Created {
        conv: created.conv,
        version: created.version,
    }
}

fn ack_frame(ack: Ack) -> ServerFrame {
    ServerFrame::Ack {
        conv: ack.conv,
        version: ack.version,
        ts: ack.ts,
        dup: ack.dup,
    }
}

/// `users` without repeats, in the order asked.
fn dedup_users(users: &[UserId]) -> Vec<UserId> {
    let mut seen = BTreeSet::new();
    users.iter().filter(|u| seen.insert(*u)).cloned().collect()
}

/// Of `users`, those `by` may see the presence of: `by` itself and those in
/// `shared` (the members of `by`'s conversations), without repeats.
fn visible(by: &UserId, users: &[UserId], shared: &BTreeSet<UserId>) -> Vec<UserId> {
    dedup_users(users)
        .into_iter()
        .filter(|u| u == by || shared.contains(u))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(names: &[&str]) -> Vec<UserId> {
        names
            .iter()
            .map(|n| UserId::try_from(n.to_string()).unwrap())
            .collect()
    }

    #[test]
    fn presence_shows_only_the_asker_and_those_who_share_a_conversation() {
        let by = &ids(&["al"])[0];
        let shared: BTreeSet<UserId> = ids(&["al", "bo", "cy"]).into_iter().collect();
        let asked = ids(&["zed", "bo", "al", "bo", "dee"]);
        assert_eq!(visible(by, &asked, &shared), ids(&["bo", "al"]));
        assert_eq!(
            visible(by, &ids(&["al"]), &BTreeSet::new()),
            ids(&["al"]),
            "a user with no conversations still sees itself"
        );
        assert!(visible(by, &ids(&["zed"]), &BTreeSet::new()).is_empty());
    }
}
