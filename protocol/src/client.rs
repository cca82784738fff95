//! A WebSocket client for Tidings (feature `client`).
//!
//! One background task owns the socket. [`Client`] is a cheap handle that
//! sends requests to it and waits for the reply with the same `req`;
//! [`Pushes`] yields events, notifications and typing in order.
//!
//! The resume contract:
//! - When the socket drops (a close, an error, or no frame for
//!   `idle_timeout`), the task reconnects with exponential backoff and full
//!   jitter, trying the configured URLs in turn.
//! - After every connect it sends `sync` with the last version delivered per
//!   conversation and the last notification version, delivers what was
//!   missed (paging with `history` while `more` is set), and only then the
//!   live pushes that arrived meanwhile. Events are deduplicated by
//!   conversation and version, so the application sees no gap and no
//!   duplicate.
//! - A `send` not acknowledged when the socket dropped is sent again with the
//!   same `cmid`; the node deduplicates it, and the caller gets the ack
//!   (with `dup: true` if the first attempt had been accepted). So is a
//!   send answered `unavailable` (a cluster between leaders), until the
//!   request timeout. Other requests in flight fail with
//!   [`ClientError::Disconnected`].
//! - Any request answered `rate_limited` (the connection sent more frames
//!   per second than the node allows; the request was not acted on) is
//!   sent again after a backoff, until the request timeout: a client that
//!   sends too fast is slowed down rather than refused. Requests made
//!   concurrently may then be stored in another order than they were
//!   made: await each where order matters. `typing`, which has no reply,
//!   is not sent again.
//! - The resume's own `sync` and `history` pages, refused `rate_limited`
//!   or `unavailable`, are asked for again after a backoff, live pushes
//!   still held: delivering them first would skip what the page holds.
//! - In a cluster, a `resync` push (the node lost a link to another node)
//!   or an event that skips a version makes the client `sync` again,
//!   holding live pushes until what was missed is delivered.
//! - A socket lives as long as the token it was opened with: the node
//!   closes it with 4001 when the token expires. Given a
//!   [`TokenSource`] ([`ClientConfig::with_refresh`]), the client asks it
//!   for a fresh token before then (`refresh_before` ahead, or half-way
//!   through a shorter life) and sends `refresh` on the open socket, which
//!   stays open; the fresh token is also the one the next connect uses.
//! - A token the node refuses (HTTP 401) ends the client with
//!   [`ClientError::Unauthorized`], unless the token source gives one the
//!   node accepts.
//!
//! ```no_run
//! # async fn demo() -> Result<(), tidings_protocol::client::ClientError> {
//! use tidings_protocol::client::{Client, ClientConfig, Push};
//! let (client, mut pushes) = Client::connect(ClientConfig::new(["ws://127.0.0.1:8080"], "TOKEN"));
//! let conv = client.dm("bob".try_into().unwrap()).await?;
//! client.send(&conv, "hi").await?;
//! while let Some(Push::Event(event)) = pushes.recv().await {
//!     println!("{event:?}");
//! }
//! # Ok(()) }
//! ```

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use rand::distr::{Alphanumeric, SampleString};
use rand::Rng;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_tungstenite::tungstenite::{self, Message};

use crate::frames::{ServerEnvelope, ServerFrame};
use crate::{ClientEnvelope, ClientFrame, Cmid, ConvId, ErrorFrame, Event, Notification, UserId};

/// Where and how to connect.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Base URLs such as `ws://127.0.0.1:8080`, tried in turn.
    pub urls: Vec<String>,
    pub token: String,
    pub backoff_base: Duration,
    pub backoff_cap: Duration,
    /// How long a request waits for its reply.
    pub request_timeout: Duration,
    /// A socket with no frame for this long is taken as dead.
    pub idle_timeout: Duration,
    /// Where fresh tokens come from, to keep sockets open past the
    /// current token's expiry.
    pub refresh: Option<TokenSource>,
    /// How long before the token expires a fresh one is asked for (half
    /// of what is left, if less than twice this is).
    pub refresh_before: Duration,
}

/// The application's way to a fresh token for the same user (its login
/// service, say); `None` when it has none now (asked again shortly).
#[derive(Clone)]
pub struct TokenSource(Arc<dyn Fn() -> FreshToken + Send + Sync>);

/// A token on its way from the application.
type FreshToken = Pin<Box<dyn Future<Output = Option<String>> + Send>>;

impl TokenSource {
    pub fn new<F, Fut>(source: F) -> TokenSource
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Option<String>> + Send + 'static,
    {
        TokenSource(Arc::new(move || Box::pin(source())))
    }

    /// A fresh token, asked of the application in a task of its own so the
    /// socket is served meanwhile.
    fn fetch(&self) -> oneshot::Receiver<Option<String>> {
        let (tx, rx) = oneshot::channel();
        let token = (self.0)();
        tokio::spawn(async move {
            let _ = tx.send(token.await);
        });
        rx
    }
}

impl std::fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenSource")
    }
}

/// How soon a token source that failed is asked again.
const REFRESH_RETRY: Duration = Duration::from_secs(5);

/// A token's `exp` claim (unix seconds), read without checking the
/// signature: the node checks it; the client only needs to know when to
/// refresh.
pub fn token_expiry(token: &str) -> Option<u64> {
    use base64::Engine;
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()?
        .get("exp")?
        .as_u64()
}

/// When to refresh a token expiring at `exp` (unix seconds), `now` being
/// the unix time: `before` ahead, or half-way through a shorter life.
fn refresh_delay(exp: u64, now: Duration, before: Duration) -> Duration {
    let left = Duration::from_secs(exp).saturating_sub(now);
    left - before.min(left / 2)
}

fn unix_now() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

impl ClientConfig {
    pub fn new<U: Into<String>>(
        urls: impl IntoIterator<Item = U>,
        token: impl Into<String>,
    ) -> Self {
        ClientConfig {
            urls: urls.into_iter().map(Into::into).collect(),
            token: token.into(),
            backoff_base: Duration::from_millis(100),
            backoff_cap: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            refresh: None,
            refresh_before: Duration::from_secs(60),
        }
    }

    /// Keeps sockets open past the token's expiry with tokens from
    /// `source`.
    pub fn with_refresh<F, Fut>(mut self, source: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Option<String>> + Send + 'static,
    {
        self.refresh = Some(TokenSource::new(source));
        self
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ClientError {
    #[error("server refused: {0}")]
    Server(ErrorFrame),
    #[error("the connection dropped before the reply came")]
    Disconnected,
    #[error("no reply in time")]
    Timeout,
    #[error("the node refused the token")]
    Unauthorized,
    #[error("the client is closed")]
    Closed,
    #[error("unexpected reply: {0}")]
    Unexpected(String),
}

/// What the node pushes, deduplicated and in order per conversation.
#[derive(Debug, Clone, PartialEq)]
pub enum Push {
    Event(Event),
    Notification(Notification),
    Typing { conv: ConvId, user: UserId },
}

/// The connection's state, for UIs, tests and the bench.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnState {
    Connecting,
    Connected,
    Reconnecting { attempt: u32 },
    Closed,
}

/// An acknowledged write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    pub conv: ConvId,
    pub version: u64,
    pub ts: u64,
    pub dup: bool,
}

/// The stream of pushes.
pub type Pushes = mpsc::UnboundedReceiver<Push>;

type ReplyTx = oneshot::Sender<Result<ServerFrame, ClientError>>;

enum Command {
    Request { frame: ClientFrame, reply: ReplyTx },
    Close,
}

/// A handle on a connection; clone freely.
#[derive(Clone)]
pub struct Client {
    commands: mpsc::UnboundedSender<Command>,
    state: watch::Receiver<ConnState>,
    timeout: Duration,
    /// Why the client stopped for good, once it has.
    fatal: Arc<OnceLock<ClientError>>,
}

/// Backoff before asking again after a refusal worth retrying: a
/// `rate_limited` request (the node's token bucket refills one frame every
/// 1/rate seconds, 10 ms at its default 100 per second), or a resume's
/// `sync` or `history` page refused `rate_limited` or `unavailable`.
const RETRY_BACKOFF_BASE: Duration = Duration::from_millis(10);
const RETRY_BACKOFF_CAP: Duration = Duration::from_secs(1);

/// A resume's `sync` or `history` pages to ask for again, and when.
#[derive(Default)]
struct Again {
    at: Option<tokio::time::Instant>,
    sync: bool,
    pages: Vec<ConvId>,
    /// Refusals since the last answer, for the backoff.
    attempt: u32,
    /// The last `synced` stopped at the node's byte bound (conversations
    /// or notifications left out): once its pages are in, sync again from
    /// what was delivered, live pushes still held.
    unfinished: bool,
}

impl Again {
    fn schedule(&mut self) {
        let pause = backoff(RETRY_BACKOFF_BASE, RETRY_BACKOFF_CAP, self.attempt);
        self.attempt += 1;
        self.at
            .get_or_insert_with(|| tokio::time::Instant::now() + pause);
    }

    /// Resolves when it is time to ask again; never if nothing is to be.
    async fn due(&self) {
        match self.at {
            Some(at) => tokio::time::sleep_until(at).await,
            None => std::future::pending().await,
        }
    }

    /// Whether nothing more is to come for the current sync: live pushes
    /// held meanwhile may be delivered.
    fn settled(&self, paging: &HashMap<String, ConvId>) -> bool {
        paging.is_empty() && self.pages.is_empty() && !self.sync
    }
}

/// Refusals after which the same `sync` or page may succeed.
fn worth_asking_again(err: &crate::ErrorFrame) -> bool {
    matches!(
        err.code,
        crate::ErrorCode::RateLimited | crate::ErrorCode::Unavailable
    )
}

/// Sleeps until `at`; never if it is `None`.
async fn sleep_until_some(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Exponential backoff with full jitter: a random delay up to
/// `min(cap, base · 2^attempt)`.
pub fn backoff(base: Duration, cap: Duration, attempt: u32) -> Duration {
    let ceiling = base
        .saturating_mul(2u32.saturating_pow(attempt.min(30)))
        .min(cap);
    let nanos = ceiling.as_nanos().min(u128::from(u64::MAX)) as u64;
    Duration::from_nanos(rand::rng().random_range(0..=nanos))
}

impl Client {
    /// Starts connecting in the background; returns at once.
    pub fn connect(config: ClientConfig) -> (Client, Pushes) {
        let (commands, rx) = mpsc::unbounded_channel();
        let (pushes_tx, pushes) = mpsc::unbounded_channel();
        let (state_tx, state) = watch::channel(ConnState::Connecting);
        let timeout = config.request_timeout;
        let fatal = Arc::new(OnceLock::new());
        let mut driver = Driver::new(config, pushes_tx, state_tx);
        driver.fatal = fatal.clone();
        tokio::spawn(driver.run(rx));
        (
            Client {
                commands,
                state,
                timeout,
                fatal,
            },
            pushes,
        )
    }

    pub fn state(&self) -> watch::Receiver<ConnState> {
        self.state.clone()
    }

    /// Waits until the connection is up (or the client has closed).
    pub async fn connected(&self) -> Result<(), ClientError> {
        let mut state = self.state.clone();
        let seen = state
            .wait_for(|s| matches!(s, ConnState::Connected | ConnState::Closed))
            .await
            .map_err(|_| ClientError::Closed)?;
        match *seen {
            ConnState::Connected => Ok(()),
            _ => Err(ClientError::Closed),
        }
    }

    /// Sends a frame and waits for its reply; an `error` reply is
    /// [`ClientError::Server`]. A frame the node refused as `rate_limited`
    /// was not acted on: it is sent again after a backoff, until the
    /// request timeout, and only then is the refusal returned.
    pub async fn request(&self, frame: ClientFrame) -> Result<ServerFrame, ClientError> {
        self.request_until(&frame, self.deadline()).await
    }

    /// The request timeout from now (far off if the timeout is too long to
    /// add to a clock).
    fn deadline(&self) -> tokio::time::Instant {
        let now = tokio::time::Instant::now();
        now.checked_add(self.timeout)
            .unwrap_or_else(|| now + Duration::from_secs(86_400 * 365))
    }

    async fn request_until(
        &self,
        frame: &ClientFrame,
        deadline: tokio::time::Instant,
    ) -> Result<ServerFrame, ClientError> {
        let mut attempt = 0;
        loop {
            match self.request_once(frame.clone(), deadline).await {
                Err(ClientError::Server(err)) if err.code == crate::ErrorCode::RateLimited => {
                    let pause = backoff(RETRY_BACKOFF_BASE, RETRY_BACKOFF_CAP, attempt);
                    attempt += 1;
                    if tokio::time::Instant::now() + pause >= deadline {
                        return Err(ClientError::Server(err));
                    }
                    tokio::time::sleep(pause).await;
                }
                result => return result,
            }
        }
    }

    async fn request_once(
        &self,
        frame: ClientFrame,
        deadline: tokio::time::Instant,
    ) -> Result<ServerFrame, ClientError> {
        let closed = || self.fatal.get().cloned().unwrap_or(ClientError::Closed);
        let (reply, rx) = oneshot::channel();
        self.commands
            .send(Command::Request { frame, reply })
            .map_err(|_| closed())?;
        match tokio::time::timeout_at(deadline, rx).await {
            Err(_) => Err(ClientError::Timeout),
            Ok(Err(_)) => Err(closed()),
            Ok(Ok(Err(ClientError::Closed))) => Err(closed()),
            Ok(Ok(result)) => result,
        }
    }

    /// Sends a message with a fresh cmid; resent after a reconnect until acked.
    pub async fn send(&self, conv: &ConvId, body: impl Into<String>) -> Result<Ack, ClientError> {
        let cmid = Cmid::try_from(Alphanumeric.sample_string(&mut rand::rng(), 20))
            .expect("20 alphanumerics make a cmid");
        self.send_with(conv, body, Some(cmid), None).await
    }

    pub async fn send_with(
        &self,
        conv: &ConvId,
        body: impl Into<String>,
        cmid: Option<Cmid>,
        expect: Option<u64>,
    ) -> Result<Ack, ClientError> {
        let retry = cmid.is_some();
        let frame = ClientFrame::Send {
            conv: conv.clone(),
            body: body.into(),
            cmid,
            expect,
        };
        // In a cluster a send may meet a shard between leaders, or one
        // whose fate is unknown: with a cmid, sending it again is safe
        // (the node deduplicates), so it is retried until the request
        // timeout.
        let deadline = self.deadline();
        let mut attempt = 0;
        loop {
            match self.request_until(&frame, deadline).await {
                Err(ClientError::Server(err))
                    if retry
                        && err.code == crate::ErrorCode::Unavailable
                        && tokio::time::Instant::now() < deadline =>
                {
                    attempt += 1;
                    let pause = backoff(
                        Duration::from_millis(20),
                        Duration::from_millis(500),
                        attempt,
                    );
                    tokio::time::sleep(pause).await;
                }
                result => return ack(result?),
            }
        }
    }

    pub async fn create(
        &self,
        members: Vec<UserId>,
        title: Option<String>,
    ) -> Result<ConvId, ClientError> {
        created(self.request(ClientFrame::Create { members, title }).await?)
    }

    pub async fn dm(&self, user: UserId) -> Result<ConvId, ClientError> {
        created(self.request(ClientFrame::Dm { user }).await?)
    }

    pub async fn edit(
        &self,
        conv: &ConvId,
        target: u64,
        rev: u32,
        body: impl Into<String>,
    ) -> Result<Ack, ClientError> {
        let frame = ClientFrame::Edit {
            conv: conv.clone(),
            target,
            rev,
            body: body.into(),
        };
        ack(self.request(frame).await?)
    }

    /// Gives the group `conv` a new title; its members get a `title` event.
    pub async fn rename(
        &self,
        conv: &ConvId,
        title: impl Into<String>,
    ) -> Result<Ack, ClientError> {
        let frame = ClientFrame::Rename {
            conv: conv.clone(),
            title: title.into(),
        };
        ack(self.request(frame).await?)
    }

    pub async fn delete(&self, conv: &ConvId, target: u64, rev: u32) -> Result<Ack, ClientError> {
        let frame = ClientFrame::Delete {
            conv: conv.clone(),
            target,
            rev,
        };
        ack(self.request(frame).await?)
    }

    /// A page of history: `(current version, events)`.
    pub async fn history(
        &self,
        conv: &ConvId,
        after: Option<u64>,
        before: Option<u64>,
        limit: Option<u32>,
    ) -> Result<(u64, Vec<Event>), ClientError> {
        let frame = ClientFrame::History {
            conv: conv.clone(),
            after,
            before,
            limit,
        };
        match self.request(frame).await? {
            ServerFrame::History {
                version, events, ..
            } => Ok((version, events)),
            other => Err(unexpected(other)),
        }
    }

    /// Blocks `user`: it can no longer open a direct conversation with
    /// this user or add this user to a conversation.
    pub async fn block(&self, user: UserId) -> Result<(), ClientError> {
        match self.request(ClientFrame::Block { user }).await? {
            ServerFrame::Blocked { .. } => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    pub async fn unblock(&self, user: UserId) -> Result<(), ClientError> {
        match self.request(ClientFrame::Unblock { user }).await? {
            ServerFrame::Unblocked { .. } => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    pub async fn ping(&self) -> Result<(), ClientError> {
        match self.request(ClientFrame::Ping).await? {
            ServerFrame::Pong => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    pub async fn typing(&self, conv: &ConvId) -> Result<(), ClientError> {
        // Typing has no reply: queue it without waiting.
        let (reply, _) = oneshot::channel();
        self.commands
            .send(Command::Request {
                frame: ClientFrame::Typing { conv: conv.clone() },
                reply,
            })
            .map_err(|_| ClientError::Closed)
    }

    /// Closes the connection; pending requests fail with `Closed`.
    pub fn close(&self) {
        let _ = self.commands.send(Command::Close);
    }
}

fn unexpected(frame: ServerFrame) -> ClientError {
    ClientError::Unexpected(format!("{frame:?}"))
}

fn ack(frame: ServerFrame) -> Result<Ack, ClientError> {
    match frame {
        ServerFrame::Ack {
            conv,
            version,
            ts,
            dup,
        } => Ok(Ack {
            conv,
            version,
            ts,
            dup: dup.unwrap_or(false),
        }),
        other => Err(unexpected(other)),
    }
}

fn created(frame: ServerFrame) -> Result<ConvId, ClientError> {
    match frame {
        ServerFrame::Created { conv, .. } => Ok(conv),
        other => Err(unexpected(other)),
    }
}

/// What the client has delivered, to resume from and to deduplicate by.
#[derive(Debug, Default)]
pub struct Seen {
    pub convs: BTreeMap<ConvId, u64>,
    pub notifications: u64,
}

impl Seen {
    /// Whether `event` is new; records it if so.
    pub fn admit_event(&mut self, event: &Event) -> bool {
        let last = self.convs.entry(event.conv.clone()).or_insert(0);
        if event.version <= *last {
            return false;
        }
        *last = event.version;
        true
    }

    /// Whether `event` comes after a version of a known conversation that
    /// was never delivered.
    pub fn skips(&self, event: &Event) -> bool {
        self.convs
            .get(&event.conv)
            .is_some_and(|last| event.version > last + 1)
    }

    pub fn admit_notification(&mut self, notification: &Notification) -> bool {
        if notification.version <= self.notifications {
            return false;
        }
        self.notifications = notification.version;
        true
    }

    /// The `sync` frame that resumes from here.
    pub fn sync_frame(&self) -> ClientFrame {
        ClientFrame::Sync {
            convs: Some(self.convs.clone()),
            notifications: Some(self.notifications),
            limit: None,
        }
    }
}

struct Pending {
    frame: ClientFrame,
    reply: ReplyTx,
}

struct Driver {
    config: ClientConfig,
    /// The token the next connect presents: the configured one, then the
    /// last one the node accepted in a `refresh`.
    token: String,
    pushes: mpsc::UnboundedSender<Push>,
    state: watch::Sender<ConnState>,
    seen: Seen,
    pending: HashMap<String, Pending>,
    next_req: AtomicU64,
    fatal: Arc<OnceLock<ClientError>>,
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Why a connected session ended.
enum End {
    Dropped,
    Closed,
}

impl Driver {
    fn new(
        config: ClientConfig,
        pushes: mpsc::UnboundedSender<Push>,
        state: watch::Sender<ConnState>,
    ) -> Self {
        Driver {
            token: config.token.clone(),
            config,
            pushes,
            state,
            seen: Seen::default(),
            pending: HashMap::new(),
            next_req: AtomicU64::new(1),
            fatal: Arc::new(OnceLock::new()),
        }
    }

    fn req(&self) -> String {
        format!("c{}", self.next_req.fetch_add(1, Ordering::Relaxed))
    }

    async fn run(mut self, mut commands: mpsc::UnboundedReceiver<Command>) {
        let mut attempt: u32 = 0;
        let mut queued: Vec<Pending> = Vec::new();
        // Whether the token was refused since the last open socket, and a
        // fresh one has been asked for since.
        let mut refused_once = false;
        loop {
            let url = &self.config.urls[attempt as usize % self.config.urls.len().max(1)];
            let url = format!("{}/v1/ws?token={}", url.trim_end_matches('/'), self.token);
            // No Nagle: a request must not wait for the ack of the last one.
            match tokio_tungstenite::connect_async_with_config(url.as_str(), None, true).await {
                Ok((socket, _)) => {
                    attempt = 0;
                    refused_once = false;
                    let _ = self.state.send(ConnState::Connected);
                    match self.session(socket, &mut commands, &mut queued).await {
                        End::Closed => break,
                        End::Dropped => {}
                    }
                }
                Err(tungstenite::Error::Http(response))
                    if response.status() == 401
                        && !refused_once
                        && self.config.refresh.is_some() =>
                {
                    // Expired, most likely: one fresh token, and try again.
                    refused_once = true;
                    let source = self.config.refresh.clone().expect("a token source");
                    if let Ok(Some(token)) = source.fetch().await {
                        self.token = token;
                        continue;
                    }
                }
                Err(tungstenite::Error::Http(response)) if response.status() == 401 => {
                    let _ = self.fatal.set(ClientError::Unauthorized);
                    for p in self.pending.drain().map(|(_, p)| p).chain(queued.drain(..)) {
                        let _ = p.reply.send(Err(ClientError::Unauthorized));
                    }
                    break;
                }
                Err(err) => tracing::debug!(error = %err, "connect failed"),
            }
            // Requests other than sends fail; sends wait to be sent again.
            for (_, p) in std::mem::take(&mut self.pending) {
                if matches!(p.frame, ClientFrame::Send { .. }) {
                    queued.push(p);
                } else {
                    let _ = p.reply.send(Err(ClientError::Disconnected));
                }
            }
            attempt += 1;
            let _ = self.state.send(ConnState::Reconnecting { attempt });
            let delay = backoff(self.config.backoff_base, self.config.backoff_cap, attempt);
            let sleep = tokio::time::sleep(delay);
            tokio::pin!(sleep);
            loop {
                tokio::select! {
                    () = &mut sleep => break,
                    command = commands.recv() => match command {
                        Some(Command::Request { frame, reply }) => queued.push(Pending { frame, reply }),
                        Some(Command::Close) | None => {
                            self.finish(queued);
                            return;
                        }
                    },
                }
            }
        }
        self.finish(queued);
    }

    fn finish(&mut self, queued: Vec<Pending>) {
        for p in self.pending.drain().map(|(_, p)| p).chain(queued) {
            let _ = p.reply.send(Err(ClientError::Closed));
        }
        let _ = self.state.send(ConnState::Closed);
    }

    /// Sends `sync` from what has been delivered; its `req`, or `None` if
    /// the socket is gone.
    async fn send_sync(&self, socket: &mut Socket) -> Option<String> {
        let req = self.req();
        Self::write(socket, Some(req.clone()), &self.seen.sync_frame())
            .await
            .then_some(req)
    }

    /// The next `history` page of `conv` after what was delivered (from
    /// its start if nothing was).
    fn page(&self, conv: &ConvId) -> ClientFrame {
        ClientFrame::History {
            conv: conv.clone(),
            after: Some(self.seen.convs.get(conv).copied().unwrap_or(0)),
            before: None,
            limit: Some(crate::MAX_LIMIT),
        }
    }

    async fn write(socket: &mut Socket, req: Option<String>, frame: &ClientFrame) -> bool {
        let text = serde_json::to_string(&ClientEnvelope {
            req,
            frame: frame.clone(),
        })
        .expect("client frames serialize");
        socket.send(Message::Text(text.into())).await.is_ok()
    }

    async fn session(
        &mut self,
        mut socket: Socket,
        commands: &mut mpsc::UnboundedReceiver<Command>,
        queued: &mut Vec<Pending>,
    ) -> End {
        // Resume: sync first, holding live pushes until it is applied.
        let Some(mut sync_req) = self.send_sync(&mut socket).await else {
            return End::Dropped;
        };
        let mut held: Option<Vec<Push>> = Some(Vec::new());
        let mut paging: HashMap<String, ConvId> = HashMap::new();
        let mut again = Again::default();
        // Refreshing the token: when to ask the source, its answer on the
        // way, and the `refresh` sent (its req and token) awaiting reply.
        let mut refresh_at = self.refresh_at(token_expiry(&self.token));
        let mut fetching: Option<oneshot::Receiver<Option<String>>> = None;
        let mut refreshing: Option<(String, String)> = None;
        for p in queued.drain(..) {
            let req = self.req();
            if !Self::write(&mut socket, Some(req.clone()), &p.frame).await {
                self.pending.insert(req, p);
                return End::Dropped;
            }
            self.pending.insert(req, p);
        }
        loop {
            let next = tokio::select! {
                command = commands.recv() => {
                    match command {
                        Some(Command::Request { frame, reply }) => {
                            if matches!(frame, ClientFrame::Typing { .. }) {
                                if !Self::write(&mut socket, None, &frame).await {
                                    return End::Dropped;
                                }
                                continue;
                            }
                            let req = self.req();
                            let ok = Self::write(&mut socket, Some(req.clone()), &frame).await;
                            self.pending.insert(req, Pending { frame, reply });
                            if !ok {
                                return End::Dropped;
                            }
                        }
                        Some(Command::Close) | None => {
                            let _ = socket.close(None).await;
                            return End::Closed;
                        }
                    }
                    continue;
                }
                () = again.due(), if again.at.is_some() => {
                    again.at = None;
                    if std::mem::take(&mut again.sync) {
                        match self.send_sync(&mut socket).await {
                            Some(req) => sync_req = req,
                            None => return End::Dropped,
                        }
                    }
                    for conv in std::mem::take(&mut again.pages) {
                        let req = self.req();
                        if !Self::write(&mut socket, Some(req.clone()), &self.page(&conv)).await {
                            return End::Dropped;
                        }
                        paging.insert(req, conv);
                    }
                    continue;
                }
                () = sleep_until_some(refresh_at), if refresh_at.is_some() => {
                    refresh_at = None;
                    fetching = self.config.refresh.as_ref().map(TokenSource::fetch);
                    continue;
                }
                fetched = async { fetching.as_mut().expect("a token on its way").await },
                    if fetching.is_some() =>
                {
                    fetching = None;
                    let Ok(Some(token)) = fetched else {
                        refresh_at = Some(tokio::time::Instant::now() + REFRESH_RETRY);
                        continue;
                    };
                    let req = self.req();
                    let frame = ClientFrame::Refresh { token: token.clone() };
                    if !Self::write(&mut socket, Some(req.clone()), &frame).await {
                        return End::Dropped;
                    }
                    refreshing = Some((req, token));
                    continue;
                }
                next = tokio::time::timeout(self.config.idle_timeout, socket.next()) => next,
            };
            let text = match next {
                Ok(Some(Ok(Message::Text(text)))) => text,
                Ok(Some(Ok(Message::Close(_)))) | Ok(Some(Err(_))) | Ok(None) | Err(_) => {
                    return End::Dropped
                }
                Ok(Some(Ok(_))) => continue,
            };
            let Ok(envelope) = serde_json::from_str::<ServerEnvelope>(&text) else {
                tracing::warn!(frame = %text, "unreadable frame from the node");
                continue;
            };
            match (envelope.req, envelope.frame) {
                (
                    Some(req),
                    ServerFrame::Synced {
                        convs,
                        notifications,
                        more,
                    },
                ) if req == sync_req => {
                    again.attempt = 0;
                    again.unfinished = more || notifications.more;
                    for conv in convs {
                        for event in conv.events {
                            self.deliver(Push::Event(event));
                        }
                        if conv.more {
                            let req = self.req();
                            let frame = self.page(&conv.conv);
                            if !Self::write(&mut socket, Some(req.clone()), &frame).await {
                                return End::Dropped;
                            }
                            paging.insert(req, conv.conv);
                        }
                    }
                    for n in notifications.events {
                        self.deliver(Push::Notification(n));
                    }
                    if !self
                        .after_sync(&mut socket, &mut held, &mut sync_req, &mut again, &paging)
                        .await
                    {
                        return End::Dropped;
                    }
                }
                (
                    Some(req),
                    ServerFrame::History {
                        conv,
                        version,
                        events,
                        ..
                    },
                ) if paging.contains_key(&req) => {
                    paging.remove(&req);
                    again.attempt = 0;
                    for event in events {
                        self.deliver(Push::Event(event));
                    }
                    let last = self.seen.convs.get(&conv).copied().unwrap_or(0);
                    if last < version {
                        let req = self.req();
                        if !Self::write(&mut socket, Some(req.clone()), &self.page(&conv)).await {
                            return End::Dropped;
                        }
                        paging.insert(req, conv);
                    }
                    if !self
                        .after_sync(&mut socket, &mut held, &mut sync_req, &mut again, &paging)
                        .await
                    {
                        return End::Dropped;
                    }
                }
                (Some(req), ServerFrame::Error(err)) if req == sync_req => {
                    if worth_asking_again(&err) {
                        // Rate-limited, or a shard between leaders: ask
                        // again after a pause, still holding live pushes.
                        again.sync = true;
                        again.schedule();
                    } else {
                        tracing::warn!(error = %err.message, "sync refused");
                        self.release_all(&mut held);
                    }
                }
                (Some(req), ServerFrame::Error(err)) if paging.contains_key(&req) => {
                    let conv = paging.remove(&req).expect("a page being fetched");
                    if worth_asking_again(&err) {
                        // Rate-limited, or a shard between leaders: the same
                        // page again after a pause, still holding live
                        // pushes (delivering them now would skip it).
                        again.pages.push(conv);
                        again.schedule();
                        continue;
                    }
                    // A page refused for good (no longer a member, say):
                    // give up paging that conversation, deliver what is
                    // held, and sync again from what was delivered.
                    tracing::debug!(error = %err.message, "history page refused");
                    if again.settled(&paging) {
                        again.unfinished = false;
                        self.release_all(&mut held);
                        match self.send_sync(&mut socket).await {
                            Some(req) => sync_req = req,
                            None => return End::Dropped,
                        }
                        held = Some(Vec::new());
                    }
                }
                (Some(req), frame) if refreshing.as_ref().is_some_and(|(r, _)| *r == req) => {
                    let (_, token) = refreshing.take().expect("a refresh awaiting reply");
                    match frame {
                        ServerFrame::Refreshed { exp } => {
                            self.token = token;
                            refresh_at = self.refresh_at(Some(exp));
                        }
                        other => {
                            tracing::warn!(reply = ?other, "token refresh refused");
                            refresh_at = Some(tokio::time::Instant::now() + REFRESH_RETRY);
                        }
                    }
                }
                (Some(req), frame) => {
                    if let Some(p) = self.pending.remove(&req) {
                        let result = match frame {
                            ServerFrame::Error(err) => Err(ClientError::Server(err)),
                            other => Ok(other),
                        };
                        let _ = p.reply.send(result);
                    }
                }
                (None, ServerFrame::Resync) => {
                    // Events may have been lost between nodes: sync again,
                    // holding live pushes until the answer is applied.
                    match self.send_sync(&mut socket).await {
                        Some(req) => sync_req = req,
                        None => return End::Dropped,
                    }
                    held.get_or_insert_with(Vec::new);
                }
                (None, ServerFrame::Event(event)) if held.is_none() && self.seen.skips(&event) => {
                    // A version is missing before this one: fetch what was
                    // missed before delivering it.
                    match self.send_sync(&mut socket).await {
                        Some(req) => sync_req = req,
                        None => return End::Dropped,
                    }
                    held = Some(vec![Push::Event(event)]);
                }
                (None, frame) => {
                    let push = match frame {
                        ServerFrame::Event(event) => Push::Event(event),
                        ServerFrame::Notification(n) => Push::Notification(n),
                        ServerFrame::Typing { conv, user } => Push::Typing { conv, user },
                        other => {
                            tracing::debug!(frame = ?other, "unsolicited frame");
                            continue;
                        }
                    };
                    match &mut held {
                        Some(held) => held.push(push),
                        None => self.deliver(push),
                    }
                }
            }
        }
    }

    /// When to refresh a token expiring at `exp`; never without a token
    /// source or an expiry.
    fn refresh_at(&self, exp: Option<u64>) -> Option<tokio::time::Instant> {
        self.config.refresh.as_ref()?;
        let delay = refresh_delay(exp?, unix_now(), self.config.refresh_before);
        // A far-off expiry is not a refresh to plan for (nor a clock to
        // overflow): a week at most, when it is looked at again.
        let delay = delay.min(Duration::from_secs(7 * 24 * 3600));
        Some(tokio::time::Instant::now() + delay)
    }

    /// Delivers what was held during a sync, in order. If a held event
    /// skips a version the sync did not bring (an event lost on its way
    /// here), that event and the rest stay held and this returns `false`:
    /// the caller syncs again.
    fn release(&mut self, held: &mut Option<Vec<Push>>) -> bool {
        let mut pushes = held.take().unwrap_or_default().into_iter();
        while let Some(push) = pushes.next() {
            if matches!(&push, Push::Event(event) if self.seen.skips(event)) {
                *held = Some(std::iter::once(push).chain(pushes).collect());
                return false;
            }
            self.deliver(push);
        }
        true
    }

    /// Once nothing more is to come for the current sync: syncs again if
    /// its reply stopped at the node's byte bound (live pushes still held:
    /// delivering one of a conversation left out would skip what it
    /// missed), else delivers what was held. `false` if the socket failed.
    async fn after_sync(
        &mut self,
        socket: &mut Socket,
        held: &mut Option<Vec<Push>>,
        sync_req: &mut String,
        again: &mut Again,
        paging: &HashMap<String, ConvId>,
    ) -> bool {
        if !again.settled(paging) {
            return true;
        }
        if std::mem::take(&mut again.unfinished) {
            return match self.send_sync(socket).await {
                Some(req) => {
                    *sync_req = req;
                    true
                }
                None => false,
            };
        }
        self.release_or_resync(socket, held, sync_req).await
    }

    /// [`Self::release`], syncing again on a gap; `false` if the socket
    /// failed.
    async fn release_or_resync(
        &mut self,
        socket: &mut Socket,
        held: &mut Option<Vec<Push>>,
        sync_req: &mut String,
    ) -> bool {
        if self.release(held) {
            return true;
        }
        match self.send_sync(socket).await {
            Some(req) => {
                *sync_req = req;
                true
            }
            None => false,
        }
    }

    /// Delivers everything held, gaps or not (a sync the node refused
    /// cannot fill them).
    fn release_all(&mut self, held: &mut Option<Vec<Push>>) {
        for push in held.take().unwrap_or_default() {
            self.deliver(push);
        }
    }

    fn deliver(&mut self, push: Push) {
        let fresh = match &push {
            Push::Event(event) => self.seen.admit_event(event),
            Push::Notification(n) => self.seen.admit_notification(n),
            Push::Typing { .. } => true,
        };
        if fresh {
            let _ = self.pushes.send(push);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::EventKind;

    #[test]
    fn tokens_are_refreshed_ahead_of_their_expiry() {
        let now = Duration::from_secs(1_000);
        let minute = Duration::from_secs(60);
        // A long life: a minute ahead.
        assert_eq!(
            refresh_delay(4_600, now, minute),
            Duration::from_secs(3_540)
        );
        // A short one: half-way.
        assert_eq!(refresh_delay(1_010, now, minute), Duration::from_secs(5));
        // Expired already: at once.
        assert_eq!(refresh_delay(900, now, minute), Duration::ZERO);
    }

    #[test]
    fn a_tokens_expiry_is_read_from_its_payload() {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let token = format!(
            "{}.{}.sig",
            b64.encode(r#"{"alg":"HS256"}"#),
            b64.encode(r#"{"sub":"alice","exp":1795369414}"#)
        );
        assert_eq!(token_expiry(&token), Some(1_795_369_414));
        assert_eq!(token_expiry("not-a-token"), None);
        let no_exp = format!("h.{}.s", b64.encode(r#"{"sub":"a"}"#));
        assert_eq!(token_expiry(&no_exp), None);
    }

    #[test]
    fn backoff_grows_to_its_cap_with_jitter() {
        let base = Duration::from_millis(100);
        let cap = Duration::from_secs(2);
        for attempt in 0..40 {
            let ceiling = (base * 2u32.pow(attempt.min(20))).min(cap);
            for _ in 0..20 {
                assert!(backoff(base, cap, attempt) <= ceiling);
            }
        }
        let spread: std::collections::HashSet<_> = (0..50).map(|_| backoff(base, cap, 5)).collect();
        assert!(spread.len() > 10, "full jitter spreads the delays");
    }

    fn event(conv: &str, version: u64) -> Event {
        Event {
            conv: ConvId::try_from(conv).unwrap(),
            version,
            ts: 0,
            from: UserId::try_from("a").unwrap(),
            kind: EventKind::Message {
                body: String::new(),
                cmid: None,
            },
        }
    }

    #[test]
    fn held_events_after_a_gap_stay_held_until_a_sync_fills_it() {
        let (pushes, mut received) = mpsc::unbounded_channel();
        let (state, _) = watch::channel(ConnState::Connecting);
        let config = ClientConfig::new(["ws://127.0.0.1:1"], "t");
        let mut driver = Driver::new(config, pushes, state);
        driver.seen.admit_event(&event("g:x", 2));
        let mut held = Some(
            [3, 5, 6]
                .into_iter()
                .map(|v| Push::Event(event("g:x", v)))
                .collect(),
        );
        assert!(!driver.release(&mut held), "4 is missing");
        let versions = |held: &Option<Vec<Push>>| -> Vec<u64> {
            held.iter()
                .flatten()
                .filter_map(|p| match p {
                    Push::Event(e) => Some(e.version),
                    _ => None,
                })
                .collect()
        };
        assert_eq!(versions(&held), [5, 6]);
        // The next sync brings 4; then the rest goes out in order.
        driver.deliver(Push::Event(event("g:x", 4)));
        assert!(driver.release(&mut held));
        assert!(held.is_none());
        let mut delivered = Vec::new();
        while let Ok(Push::Event(e)) = received.try_recv() {
            delivered.push(e.version);
        }
        assert_eq!(delivered, [3, 4, 5, 6]);
    }

    #[test]
    fn seen_drops_duplicates_and_resumes_from_the_last_version() {
        let mut seen = Seen::default();
        assert!(seen.admit_event(&event("g:x", 1)));
        assert!(seen.admit_event(&event("g:x", 2)));
        assert!(!seen.admit_event(&event("g:x", 2)));
        assert!(!seen.admit_event(&event("g:x", 1)));
        assert!(seen.admit_event(&event("g:y", 7)));
        let n = Notification {
            version: 3,
            ts: 0,
            payload: serde_json::Value::Null,
        };
        assert!(seen.admit_notification(&n));
        assert!(!seen.admit_notification(&n));
        match seen.sync_frame() {
            ClientFrame::Sync {
                convs,
                notifications,
                ..
            } => {
                let convs = convs.unwrap();
                assert_eq!(convs[&ConvId::try_from("g:x").unwrap()], 2);
                assert_eq!(convs[&ConvId::try_from("g:y").unwrap()], 7);
                assert_eq!(notifications, Some(3));
            }
            other => panic!("{other:?}"),
        }
    }
}
