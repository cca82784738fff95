//! Helpers for Tidings' integration tests: a real node on port 0 with a
//! temporary data directory, tokens, and a raw WebSocket client that
//! speaks JSON frames over a real socket.
//!
//! Every wait polls with a deadline; nothing sleeps for a condition.

pub mod cluster;
pub mod elastic;
pub mod netns;
pub mod process;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tempfile::TempDir;
use tidings_node::{Config, Node};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// The auth secret test nodes run with.
pub const SECRET: &str = "integration-test-secret-of-at-least-32-bytes";
/// The API key test nodes run with.
pub const API_KEY: &str = "integration-test-api-key";
/// How long any single wait in a test may take.
pub const WAIT: Duration = Duration::from_secs(10);

/// A node running in this process.
pub struct TestNode {
    pub node: Option<Node>,
    pub addr: SocketAddr,
    pub dir: TempDir,
}

/// The configuration test nodes start from: port 0, a known secret and
/// API key, dev mode on.
pub fn config(dir: impl Into<PathBuf>) -> Config {
    let mut config = Config::for_tests(dir);
    config.auth_secret = Some(SECRET.into());
    config.api_key = Some(API_KEY.into());
    config
}

impl TestNode {
    pub async fn start() -> TestNode {
        TestNode::start_with(|_| {}).await
    }

    /// Starts a node after `adjust` changes its configuration.
    pub async fn start_with(adjust: impl FnOnce(&mut Config)) -> TestNode {
        let dir = tempfile::tempdir().expect("temporary directory");
        TestNode::start_in(dir, adjust).await
    }

    /// Starts a node on port 0 over the data directory `dir`.
    async fn start_in(dir: TempDir, adjust: impl FnOnce(&mut Config)) -> TestNode {
        let mut config = config(dir.path());
        adjust(&mut config);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let node = Node::start(config, listener).await.expect("node starts");
        let addr = node.local_addr();
        TestNode {
            node: Some(node),
            addr,
            dir,
        }
    }

    pub fn http(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/v1/ws", self.addr)
    }

    /// A WebSocket connection as `user`, subscribed: see [`Ws::subscribed`].
    pub async fn connect(&self, user: &str) -> Ws {
        Ws::subscribed(&self.ws_url(), &token(user)).await
    }

    pub async fn shutdown(&mut self) {
        if let Some(node) = self.node.take() {
            node.shutdown().await.unwrap();
        }
    }

    /// Shuts the node down and starts it again on the same data
    /// directory, with the test configuration (on a new port).
    pub async fn restart(mut self) -> TestNode {
        self.shutdown().await;
        TestNode::start_in(self.dir, |_| {}).await
    }
}

/// A token for `user` signed with [`SECRET`], valid for an hour.
pub fn token(user: &str) -> String {
    token_with(json!({"sub": user, "exp": now_secs() + 3600}), SECRET)
}

pub fn token_with(claims: Value, secret: &str) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Polls `check` until it returns `Some`, or fails after `WAIT`.
pub async fn eventually<T, F, Fut>(what: &str, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    eventually_within(what, WAIT, check).await
}

/// Like [`eventually`], for conditions that take longer than [`WAIT`].
pub async fn eventually_within<T, F, Fut>(what: &str, within: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// How a connection ended, seen from the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Closed {
    Code(u16),
    /// The socket ended without a close frame.
    Dropped,
}

/// A raw WebSocket client: JSON frames in and out, replies matched by `req`,
/// pushes kept in arrival order.
pub struct Ws {
    stream: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// Frames received but not yet taken (pushes, and replies not asked for).
    pub inbox: VecDeque<Value>,
    next_req: u64,
    pub closed: Option<Closed>,
}

impl Ws {
    pub async fn connect(url: &str, token: &str) -> anyhow::Result<Ws> {
        let request = format!("{url}?token={token}").into_client_request()?;
        let (stream, _) = tokio_tungstenite::connect_async(request).await?;
        Ok(Ws {
            stream,
            inbox: VecDeque::new(),
            next_req: 0,
            closed: None,
        })
    }

    /// Connects and returns once a `sync` is answered. The node subscribes
    /// a connection a moment after the upgrade; the reply to `sync` is built
    /// after that, so no push to this user after this returns is missed.
    ///
    /// A `sync` answered `unavailable` is asked again, as the protocol
    /// says to: in a cluster one of the user's shards may be between
    /// leaders (a node was just killed, say). Bounded by a deadline.
    pub async fn subscribed(url: &str, token: &str) -> Ws {
        let mut ws = Ws::connect(url, token).await.unwrap();
        let deadline = tokio::time::Instant::now() + 3 * WAIT;
        loop {
            let reply = ws.request(json!({"type":"sync"})).await;
            if reply["type"] == "synced" {
                return ws;
            }
            assert!(
                reply["code"] == "unavailable" && tokio::time::Instant::now() < deadline,
                "sync got {reply}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn send_text(&mut self, text: impl Into<String>) {
        self.stream
            .send(Message::Text(text.into().into()))
            .await
            .expect("send a frame");
    }

    /// Sends any WebSocket message: a binary frame, a ping.
    pub async fn send_message(&mut self, message: Message) {
        self.stream.send(message).await.expect("send a frame");
    }

    pub async fn send(&mut self, frame: Value) {
        self.send_text(frame.to_string()).await;
    }

    /// Reads one frame into the inbox; `false` once the socket has ended.
    async fn read_one(&mut self, deadline: tokio::time::Instant) -> anyhow::Result<bool> {
        if self.closed.is_some() {
            return Ok(false);
        }
        let next = tokio::time::timeout_at(deadline, self.stream.next())
            .await
            .map_err(|_| anyhow!("timed out reading a frame"))?;
        match next {
            Some(Ok(Message::Text(text))) => {
                self.inbox.push_back(serde_json::from_str(&text)?);
                Ok(true)
            }
            Some(Ok(Message::Close(frame))) => {
                self.closed = Some(
                    frame
                        .map(|f| Closed::Code(u16::from(f.code)))
                        .unwrap_or(Closed::Code(u16::from(CloseCode::Status))),
                );
                Ok(false)
            }
            Some(Ok(_)) => Ok(true),
            Some(Err(_)) | None => {
                self.closed.get_or_insert(Closed::Dropped);
                Ok(false)
            }
        }
    }

    /// Takes the first inbox frame matching `pred`, reading until one comes.
    pub async fn take(
        &mut self,
        what: &str,
        pred: impl Fn(&Value) -> bool,
    ) -> anyhow::Result<Value> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Some(i) = self.inbox.iter().position(&pred) {
                return Ok(self.inbox.remove(i).expect("index from position"));
            }
            if !self
                .read_one(deadline)
                .await
                .with_context(|| format!("waiting for {what}"))?
            {
                bail!(
                    "connection closed ({:?}) while waiting for {what}",
                    self.closed
                );
            }
        }
    }

    /// Sends `frame` with a fresh `req` and returns the reply to it.
    pub async fn request(&mut self, mut frame: Value) -> Value {
        self.next_req += 1;
        let req = format!("r{}", self.next_req);
        frame["req"] = json!(req);
        self.send(frame.clone()).await;
        self.take(&format!("reply to {frame}"), |v| v["req"] == json!(req))
            .await
            .unwrap()
    }

    /// Like [`Ws::request`], and panics unless the reply is of `kind`.
    pub async fn ok(&mut self, frame: Value, kind: &str) -> Value {
        let reply = self.request(frame.clone()).await;
        assert_eq!(reply["type"], kind, "{frame} got {reply}");
        reply
    }

    /// Like [`Ws::request`], and panics unless the reply is an error of `code`.
    pub async fn err(&mut self, frame: Value, code: &str) -> Value {
        let reply = self.request(frame.clone()).await;
        assert_eq!(reply["type"], "error", "{frame} got {reply}");
        assert_eq!(reply["code"], code, "{frame} got {reply}");
        assert!(reply["message"].as_str().is_some_and(|m| !m.is_empty()));
        reply
    }

    /// Creates a group conversation with `members` and returns its id.
    pub async fn create<S: AsRef<str>>(&mut self, members: impl IntoIterator<Item = S>) -> String {
        let members: Vec<String> = members.into_iter().map(|m| m.as_ref().to_owned()).collect();
        let created = self
            .ok(json!({"type":"create","members":members}), "created")
            .await;
        created["conv"]
            .as_str()
            .expect("a conversation id")
            .to_owned()
    }

    /// The ids of the conversations `convs` lists for this user, sorted.
    pub async fn conv_ids(&mut self) -> Vec<String> {
        let listed = self.ok(json!({"type":"convs"}), "convs").await;
        let mut ids: Vec<String> = listed["conversations"]
            .as_array()
            .expect("a list of conversations")
            .iter()
            .map(|c| c["conv"].as_str().expect("a conversation id").to_owned())
            .collect();
        ids.sort();
        ids
    }

    /// The next pushed `event` of `conv` at `version`.
    pub async fn event(&mut self, conv: &str, version: u64) -> Value {
        self.take(&format!("event {conv}#{version}"), |v| {
            v["type"] == "event" && v["conv"] == conv && v["version"] == version
        })
        .await
        .unwrap()
    }

    /// Waits for the server to close the connection and returns how.
    pub async fn closed(&mut self) -> Closed {
        let deadline = tokio::time::Instant::now() + WAIT;
        while self.closed.is_none() {
            self.read_one(deadline)
                .await
                .expect("connection closes in time");
        }
        self.closed.clone().unwrap()
    }

    /// Reads whatever frames arrive within `window`, keeping them.
    pub async fn drain_for(&mut self, window: Duration) {
        let deadline = tokio::time::Instant::now() + window;
        while self.read_one(deadline).await.unwrap_or(false) {}
    }

    /// The events in the inbox, in arrival order.
    pub fn events(&self) -> Vec<Value> {
        self.inbox
            .iter()
            .filter(|v| v["type"] == "event")
            .cloned()
            .collect()
    }
}

/// An HTTP client for the node.
pub fn http() -> reqwest::Client {
    reqwest::Client::new()
}

/// The value of the `/metrics` line that starts with `series ` on the node
/// at `addr` (host:port), if listed.
pub async fn metric(addr: &str, series: &str) -> Option<u64> {
    let text = http()
        .get(format!("http://{addr}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let prefix = format!("{series} ");
    text.lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .map(|n| n.trim().parse().unwrap())
}

/// A backend's notification for `user` through the node at `addr`
/// (host:port); returns its version.
pub async fn notify(addr: &str, user: &str, payload: Value) -> u64 {
    let accepted: Value = http()
        .post(format!("http://{addr}/v1/users/{user}/notifications"))
        .bearer_auth(API_KEY)
        .json(&json!({ "payload": payload }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    accepted["version"]
        .as_u64()
        .expect("a notification version")
}
