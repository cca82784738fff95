//! WebSocket: authenticate the upgrade, then one task reads and one writes.
//! When the reader ends, the writer sends the close frame and stops. When
//! the node closes the socket first (a slow reader closed with 1013, say),
//! the writer sends the close frame and stops, and the reader serves
//! nothing more: it waits for the client's close reply, for at most
//! [`CLOSE_GRACE`].
//!
//! The upgrade is answered here rather than by axum's `WebSocketUpgrade`,
//! so the writer holds the socket's write half itself: it encodes each
//! queued frame with tungstenite's `Frame` straight into one buffer and
//! writes the batch at once, with no WebSocket state machine or sink in
//! between. The reader runs tungstenite's protocol over the read half; the
//! replies tungstenite would write itself (a pong, the close reply) are
//! asked of the writer instead.
//!
//! The reader hands each frame to the socket's connection and reads the
//! next only once it is served, so a client that sends faster than it is
//! served is slowed by TCP rather than by memory. The writer drains the
//! connection's bounded outbound queue, writing every queued frame with
//! one write. A socket silent for the ping interval is pinged, and one
//! silent for the heartbeat timeout is closed as dead: the reader keeps
//! that one timer and asks the writer for the ping, so the writer waits on
//! its queue alone and a busy socket polls no timer per frame.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode, Version};
use axum::response::{IntoResponse, Response};
use futures_util::future::BoxFuture;
use futures_util::{Stream, StreamExt};
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use tidings_actors::connection::{
    ClientData, Connection, ConnectionArgs, Expiry, RateLimit, TokenCheck,
};
use tidings_actors::outbound::{
    self, Frame, Next, Outbound, OutboundReceiver, CLOSE_GOING_AWAY, CLOSE_INTERNAL,
};
use tidings_protocol::{ErrorCode, ErrorFrame, UserId};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf, ReadHalf};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::{CloseFrame, Frame as WsFrame, Utf8Bytes};
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;

use crate::auth::{bearer, Auth};
use crate::error::ApiError;
use crate::http::QueryArgs;
use crate::AppState;

/// Close code for a frame over the size limit.
pub const CLOSE_TOO_BIG: u16 = 1009;
/// Close code for a normal end.
pub const CLOSE_NORMAL: u16 = 1000;
/// Close code for a frame that breaks the WebSocket protocol (an unmasked
/// frame, an unknown opcode).
pub const CLOSE_PROTOCOL: u16 = 1002;
/// Close code for a text frame that is not UTF-8.
pub const CLOSE_BAD_DATA: u16 = 1007;
/// Close code for a socket whose token expired without a `refresh`.
pub const CLOSE_TOKEN_EXPIRED: u16 = 4001;
/// Initial read buffer of each socket.
const READ_BUFFER: usize = 512;
/// How long a close frame may take to leave before the socket is dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(5);
/// Largest write buffer a writer keeps while it waits: room for a batch
/// of a frame or two, and not a burst's buffer for the rest of the
/// connection.
const WRITE_BUFFER_KEPT: usize = 512;

/// An upgraded connection.
type Socket = TokioIo<Upgraded>;

#[derive(Deserialize)]
pub struct WsQuery {
    token: Option<String>,
}

pub async fn upgrade(
    State(state): State<AppState>,
    QueryArgs(query): QueryArgs<WsQuery>,
    mut request: Request,
) -> Response {
    let headers = request.headers();
    let header = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let Some(token) = query.token.as_deref().or_else(|| bearer(header)) else {
        return ApiError::unauthorized("missing token: pass ?token= or Authorization: Bearer")
            .into_response();
    };
    let verified = match state.auth.verify_token(token) {
        Ok(verified) => verified,
        Err(err) => return err.into_response(),
    };
    let user = verified.user;
    let accept = match accept_key(request.method(), request.version(), headers) {
        Ok(accept) => accept,
        Err(refused) => return refused.into_response(),
    };
    let Some(on_upgrade) = request.extensions_mut().remove::<OnUpgrade>() else {
        return ApiError::bad_request("this connection cannot be upgraded").into_response();
    };
    if state.shutdown.is_cancelled() {
        return ApiError::new(ErrorCode::Unavailable, "the node is shutting down").into_response();
    }
    if state.leaving.is_cancelled() {
        return ApiError::new(
            ErrorCode::Unavailable,
            "this node is leaving the cluster: connect to another node",
        )
        .into_response();
    }
    let Some(device) = state.devices.admit(&user, state.config.max_devices) else {
        tracing::info!(%user, max = state.config.max_devices, "device refused: too many open sockets");
        return ApiError::new(
            ErrorCode::RateLimited,
            format!(
                "this user has {} open WebSockets on this node, the most allowed; close one first",
                state.config.max_devices
            ),
        )
        .into_response();
    };
    let tracker = state.tracker.clone();
    tracker.spawn(serve(state, user, verified.exp, device, on_upgrade));
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, "websocket")
        .header(header::SEC_WEBSOCKET_ACCEPT, accept)
        .body(Body::empty())
        .expect("a valid response")
}

/// Why an opening handshake is refused.
struct Refused {
    why: &'static str,
    /// The version asked for is not 13: answered 426, naming 13, so a
    /// client can retry with it.
    wrong_version: bool,
}

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        let refused = ApiError::bad_request(self.why);
        if self.wrong_version {
            let spoken = [(header::SEC_WEBSOCKET_VERSION, "13")];
            (StatusCode::UPGRADE_REQUIRED, spoken, refused).into_response()
        } else {
            refused.into_response()
        }
    }
}

/// Checks a WebSocket opening handshake (RFC 6455, 4.2.1) and returns the
/// `Sec-WebSocket-Accept` that answers it.
fn accept_key(method: &Method, version: Version, headers: &HeaderMap) -> Result<String, Refused> {
    let refuse = |why| {
        Err(Refused {
            why,
            wrong_version: false,
        })
    };
    let has_token = |name: header::HeaderName, token: &str| {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    };
    if method != Method::GET {
        return refuse("a WebSocket upgrade is a GET request");
    }
    if version != Version::HTTP_11 {
        return refuse("a WebSocket upgrade needs HTTP/1.1");
    }
    if !has_token(header::CONNECTION, "upgrade") {
        return refuse("not a WebSocket upgrade: `Connection` must include `upgrade`");
    }
    if !has_token(header::UPGRADE, "websocket") {
        return refuse("not a WebSocket upgrade: `Upgrade` must be `websocket`");
    }
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .map(|v| v.as_bytes())
        != Some(b"13")
    {
        return Err(Refused {
            why: "`Sec-WebSocket-Version` must be 13",
            wrong_version: true,
        });
    }
    // A nonce of 16 bytes, base64: 24 characters ending in `==`.
    let mut keys = headers.get_all(header::SEC_WEBSOCKET_KEY).iter();
    let key = match (keys.next(), keys.next()) {
        (Some(key), None) if key.len() == 24 && key.as_bytes().ends_with(b"==") => key,
        _ => return refuse("`Sec-WebSocket-Key` must be one base64 nonce of 16 bytes"),
    };
    Ok(derive_accept_key(key.as_bytes()))
}

/// Serves one socket, once upgraded, until it ends.
///
/// What can be done before the first await is done here, outside the
/// returned future: that future lives as long as the connection, and
/// whatever it captures (the whole state, say) would be part of every
/// idle connection's memory.
fn serve(
    state: AppState,
    user: UserId,
    exp: u64,
    device: DeviceSlot,
    upgrade: OnUpgrade,
) -> impl Future<Output = ()> {
    let config = &state.config;
    let expiry = Expiry::new(exp);
    let (outbound, receiver) = outbound::bounded(outbound::Limits {
        frames: config.outbound_queue,
        bytes: config.outbound_bytes,
    });
    let args = ConnectionArgs {
        user: user.clone(),
        service: state.service.clone(),
        outbound: outbound.clone(),
        rate: RateLimit {
            per_second: config.rate_limit,
            burst: config.rate_burst,
        },
        metrics: state.metrics.clone(),
        tokens: state.auth.clone(),
        expiry: expiry.clone(),
    };
    let max = config.max_frame;
    let heartbeat = Heartbeat {
        ping_after: config.ping_interval,
        timeout: config.heartbeat_timeout,
    };
    let shutdown = stop_token(&state);
    async move {
        // Held while the socket is open: it counts as one of the user's
        // devices on this node.
        let _device = device;
        let _unwatch = shutdown.clone().drop_guard();
        let socket = match upgrade.await {
            Ok(upgraded) => TokioIo::new(upgraded),
            Err(err) => {
                tracing::debug!(%user, error = %err, "the upgrade failed");
                return;
            }
        };
        let (read, write) = tokio::io::split(socket);
        let writer = tokio::spawn(write_frames(write, receiver));
        if shutdown.is_cancelled() {
            // Upgraded after shutdown began: no actor for it.
            outbound.close(CLOSE_GOING_AWAY);
            let _ = writer.await;
            return;
        }
        let protocol = protocol(max);
        // Read in place (`&mut`): moved into `read_frames`, the stream
        // would take room twice in every connection's task.
        let mut stream =
            WebSocketStream::from_raw_socket(ReadOnly(read), Role::Server, Some(protocol)).await;
        let mut connection = Connection::open(args);
        tracing::debug!(%user, "connected");
        let reason = read_frames(
            &mut stream,
            &mut connection,
            &outbound,
            heartbeat,
            &expiry,
            &shutdown,
        )
        .await;
        tracing::debug!(%user, ?reason, "disconnected");
        outbound.close(reason.close_code());
        // Out of the fan-out list before the writer's last frames go.
        drop(connection);
        let _ = writer.await;
    }
}

/// The reader's protocol settings. tungstenite allocates a 128 KiB read
/// buffer per connection by default; idle connections need little, and
/// the buffer grows for large frames.
fn protocol(max_frame: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .max_message_size(Some(max_frame))
        .max_frame_size(Some(max_frame))
}

/// Why a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    ClientClosed,
    Shutdown,
    HeartbeatTimeout,
    TooBig,
    Broken,
    /// The node closed the socket, and the client's close reply did not
    /// come within [`CLOSE_GRACE`].
    NodeClosed,
    /// A text frame was not UTF-8.
    BadUtf8,
    /// A frame broke the WebSocket protocol (unmasked, unknown opcode, …).
    ProtocolError,
    /// The socket's token expired and no `refresh` replaced it.
    TokenExpired,
}

impl Ended {
    fn close_code(self) -> u16 {
        match self {
            Ended::ClientClosed => CLOSE_NORMAL,
            Ended::Shutdown | Ended::HeartbeatTimeout => CLOSE_GOING_AWAY,
            Ended::TooBig => CLOSE_TOO_BIG,
            Ended::BadUtf8 => CLOSE_BAD_DATA,
            Ended::ProtocolError => CLOSE_PROTOCOL,
            Ended::TokenExpired => CLOSE_TOKEN_EXPIRED,
            // Asked for already; the first code asked is the one sent.
            Ended::Broken | Ended::NodeClosed => CLOSE_INTERNAL,
        }
    }
}

/// The read half as the reader's tungstenite sees it. What tungstenite
/// writes on it (its automatic pong and close replies) is dropped: the
/// reader asks the writer for those instead.
struct ReadOnly<R = ReadHalf<Socket>>(R);

impl<R: AsyncRead + Unpin> AsyncRead for ReadOnly<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<R: Unpin> AsyncWrite for ReadOnly<R> {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// What a socket's reader hands each client frame to, and awaits before it
/// reads the next: the socket's [`Connection`] (the fuzz harness has a
/// stand-in).
pub trait Serves: Send {
    /// Serves one frame. Boxed: serving is a large future, and it would
    /// otherwise take room in every connection's task while idle.
    fn serve(&mut self, data: ClientData) -> BoxFuture<'_, ()>;
}

impl Serves for Connection {
    fn serve(&mut self, data: ClientData) -> BoxFuture<'_, ()> {
        Box::pin(Connection::serve(self, data))
    }
}

/// Serves the client bytes `socket` yields as a connection's reader does
/// (same protocol settings, same reader), handing text frames to
/// `connection`, until the bytes end. What the fuzz harness drives with
/// arbitrary bytes; no timer fires while it reads from memory.
#[doc(hidden)]
pub async fn read_client_bytes<R: AsyncRead + Unpin>(
    socket: R,
    connection: &mut impl Serves,
    outbound: &Outbound,
    max_frame: usize,
) -> Ended {
    let protocol = protocol(max_frame);
    let mut stream =
        WebSocketStream::from_raw_socket(ReadOnly(socket), Role::Server, Some(protocol)).await;
    let heartbeat = Heartbeat {
        ping_after: Duration::from_secs(3600),
        timeout: Duration::from_secs(7200),
    };
    read_frames(
        &mut stream,
        connection,
        outbound,
        heartbeat,
        &Expiry::new(u64::MAX),
        &CancellationToken::new(),
    )
    .await
}

/// How long a socket may be silent.
#[derive(Debug, Clone, Copy)]
struct Heartbeat {
    /// Silent this long: ping it.
    ping_after: Duration,
    /// Silent this long: closed as dead. Longer than `ping_after`.
    timeout: Duration,
}

/// A draining node closes its sockets over this long, each at a moment
/// of its own, so their clients reconnect to other nodes a few at a time.
pub const LEAVE_SPREAD: Duration = Duration::from_secs(10);

/// What ends a socket from the node's side: the node shutting down, or,
/// on a node the cluster drains, a random moment within [`LEAVE_SPREAD`]
/// after the drain begins. Cancelling it ends its watcher.
fn stop_token(state: &AppState) -> CancellationToken {
    let stop = state.shutdown.child_token();
    if state.replicator.is_some() {
        let (leaving, stopped) = (state.leaving.clone(), stop.clone());
        let after = LEAVE_SPREAD.mul_f64(rand::random::<f64>());
        tokio::spawn(async move {
            let leave = async {
                leaving.cancelled().await;
                tokio::time::sleep(after).await;
            };
            tokio::select! {
                () = stopped.cancelled() => {}
                () = leave => stopped.cancel(),
            }
        });
    }
    stop
}

/// Reads client frames until the socket ends, and says why it ended.
async fn read_frames<S>(
    mut stream: S,
    connection: &mut impl Serves,
    outbound: &Outbound,
    heartbeat: Heartbeat,
    expiry: &Expiry,
    shutdown: &CancellationToken,
) -> Ended
where
    S: Stream<Item = Result<Message, tungstenite::Error>> + Unpin,
{
    // One timer, pushed back by every frame (pongs included) once it is
    // served: first it asks for a ping, then it ends the connection.
    let mut pinged = false;
    let silence = tokio::time::sleep(heartbeat.ping_after);
    tokio::pin!(silence);
    // Once the node has closed the socket, nothing the client sends is
    // served: its replies could not be sent.
    let closed = outbound.closed();
    tokio::pin!(closed);
    let mut closing = false;
    // The token's expiry: when it comes, the deadline is read again, as
    // a `refresh` may have moved it.
    let expires = tokio::time::sleep_until(deadline_of(expiry.get()));
    tokio::pin!(expires);
    loop {
        let next = tokio::select! {
            // In this order: a close asked for wins over a frame read at
            // the same time, and a frame (a pong, say) over the timer.
            biased;
            () = shutdown.cancelled() => return Ended::Shutdown,
            _ = &mut closed, if !closing => {
                closing = true;
                silence
                    .as_mut()
                    .reset(tokio::time::Instant::now() + CLOSE_GRACE);
                continue;
            }
            next = stream.next() => next,
            () = &mut expires, if !closing => {
                let exp = expiry.get();
                if exp <= unix_now() {
                    return Ended::TokenExpired;
                }
                expires.as_mut().reset(deadline_of(exp));
                continue;
            }
            () = &mut silence => {
                if closing {
                    return Ended::NodeClosed;
                }
                if pinged {
                    return Ended::HeartbeatTimeout;
                }
                pinged = true;
                outbound.ping();
                // Counted, like the ping, from the last frame heard.
                let heard = silence.deadline() - heartbeat.ping_after;
                silence.as_mut().reset(heard + heartbeat.timeout);
                continue;
            }
        };
        let message = match next {
            None => return Ended::ClientClosed,
            Some(Err(tungstenite::Error::Capacity(_))) => return Ended::TooBig,
            Some(Err(tungstenite::Error::Utf8(_))) => return Ended::BadUtf8,
            Some(Err(tungstenite::Error::Protocol(error))) => {
                tracing::debug!(%error, "a client broke the WebSocket protocol");
                return Ended::ProtocolError;
            }
            Some(Err(_)) => return Ended::Broken,
            Some(Ok(message)) => message,
        };
        if closing {
            if let Message::Close(_) = message {
                return Ended::ClientClosed;
            }
            // A client that sends without pause still meets the grace.
            if silence.is_elapsed() {
                return Ended::NodeClosed;
            }
            continue;
        }
        let data = match message {
            Message::Text(text) => ClientData::Text(text.as_str().to_owned()),
            Message::Binary(_) => ClientData::Binary,
            Message::Ping(payload) => ClientData::Ping(payload),
            Message::Pong(_) => ClientData::Pong,
            // A close naming a code no endpoint may send (1005, 1006, 1015,
            // reserved or out of range) breaks the protocol (RFC 6455,
            // section 7.4.1): tungstenite hands it on as 1002, which is
            // echoed (as is a client's own 1002).
            Message::Close(Some(close)) if close.code == CloseCode::Protocol => {
                return Ended::ProtocolError
            }
            Message::Close(_) => return Ended::ClientClosed,
            Message::Frame(_) => continue,
        };
        // Every frame goes to the connection, which counts it against the
        // rate before anything else.
        connection.serve(data).await;
        // Once the frame is served: time spent serving it is not the
        // client's silence.
        pinged = false;
        silence
            .as_mut()
            .reset(tokio::time::Instant::now() + heartbeat.ping_after);
    }
}

/// Unix time now.
fn unix_time() -> Duration {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
}

/// Unix seconds now.
fn unix_now() -> u64 {
    unix_time().as_secs()
}

/// Longest a socket's expiry timer is set for at once; a later expiry is
/// read again when it fires (and no far-off `exp` overflows a clock).
const EXPIRY_TIMER_MAX: Duration = Duration::from_secs(7 * 24 * 3600);

/// The instant a token expiring at `exp` (unix seconds) stops being
/// valid, or [`EXPIRY_TIMER_MAX`] from now if that is sooner.
fn deadline_of(exp: u64) -> tokio::time::Instant {
    let left = Duration::from_secs(exp).saturating_sub(unix_time());
    tokio::time::Instant::now() + left.min(EXPIRY_TIMER_MAX)
}

impl TokenCheck for Auth {
    fn check(&self, token: &str) -> Result<(UserId, u64), ErrorFrame> {
        self.verify_token(token)
            .map(|verified| (verified.user, verified.exp))
            .map_err(|err| err.0)
    }
}

/// The open WebSockets of each user on this node, so that one user cannot
/// hold more than `--max-devices` of them.
#[derive(Clone, Default)]
pub struct Devices(Arc<Mutex<HashMap<UserId, usize>>>);

impl Devices {
    /// A slot for one more socket of `user`, unless the user has `max`.
    pub fn admit(&self, user: &UserId, max: usize) -> Option<DeviceSlot> {
        let mut open = self.0.lock().expect("devices lock");
        let count = open.entry(user.clone()).or_insert(0);
        if *count >= max {
            return None;
        }
        *count += 1;
        Some(DeviceSlot {
            devices: self.clone(),
            user: user.clone(),
        })
    }

    /// How many sockets `user` has open here.
    pub fn open(&self, user: &UserId) -> usize {
        let open = self.0.lock().expect("devices lock");
        open.get(user).copied().unwrap_or(0)
    }
}

/// One open socket of a user; dropped, it frees its slot.
pub struct DeviceSlot {
    devices: Devices,
    user: UserId,
}

impl Drop for DeviceSlot {
    fn drop(&mut self) {
        let mut open = self.devices.0.lock().expect("devices lock");
        if let Some(count) = open.get_mut(&self.user) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.user);
            }
        }
    }
}

/// Appends `frame` to `buf`, encoded as the server sends it (unmasked).
fn encode(buf: &mut Vec<u8>, frame: WsFrame) {
    frame.format(buf).expect("writing to a Vec cannot fail");
}

/// Writes queued frames (every one waiting, encoded into one buffer, one
/// write) and the pings and pongs asked for, until a close is asked for;
/// then sends the close frame.
async fn write_frames<W>(mut socket: W, mut receiver: OutboundReceiver)
where
    W: AsyncWrite + Unpin,
{
    // Made once, and polled only while a write is stalled: a close must
    // not wait for a socket that is not being read.
    let closed = receiver.closed();
    tokio::pin!(closed);
    let mut buf = Vec::new();
    // How much of `buf` has been written: a close that cuts a stalled
    // write short sends the rest first, so the close frame follows whole
    // frames.
    let mut at;
    let code = 'serve: loop {
        buf.clear();
        at = 0;
        if buf.capacity() > WRITE_BUFFER_KEPT {
            buf = Vec::new();
        }
        match receiver.next().await {
            Next::Close(code) => break Some(code),
            Next::Ping => encode(&mut buf, WsFrame::ping(Frame::new())),
            Next::Frames { pong, frames } => {
                if let Some(payload) = pong {
                    encode(&mut buf, WsFrame::pong(payload));
                }
                for frame in frames {
                    encode(
                        &mut buf,
                        WsFrame::message(frame, OpCode::Data(Data::Text), true),
                    );
                }
            }
        }
        while at < buf.len() {
            // `write` is cancel-safe: when the close wins, nothing of
            // this call was written.
            tokio::select! {
                biased;
                written = socket.write(&buf[at..]) => match written {
                    Ok(n) if n > 0 => at += n,
                    _ => break 'serve None,
                },
                code = &mut closed => break 'serve Some(code),
            }
        }
    };
    if let Some(code) = code {
        buf.drain(..at);
        let close = CloseFrame {
            code: CloseCode::from(code),
            reason: Utf8Bytes::from_static(match code {
                outbound::CLOSE_TOO_SLOW => "reading too slowly; reconnect and sync",
                CLOSE_GOING_AWAY => "going away",
                CLOSE_TOO_BIG => "frame too large",
                CLOSE_BAD_DATA => "a text frame is not UTF-8",
                CLOSE_PROTOCOL => "WebSocket protocol error",
                CLOSE_TOKEN_EXPIRED => "token expired; refresh before it expires",
                _ => "",
            }),
        };
        encode(&mut buf, WsFrame::close(Some(close)));
        let send = async {
            socket.write_all(&buf).await?;
            socket.shutdown().await
        };
        let _ = tokio::time::timeout(CLOSE_GRACE, send).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A socket nobody reads: every write waits forever.
    struct Stalled;

    impl AsyncWrite for Stalled {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            _: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            Poll::Pending
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Pending
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Pending
        }
    }

    #[test]
    fn a_user_holds_at_most_max_device_slots() {
        let devices = Devices::default();
        let alice = UserId::try_from("alice").unwrap();
        let bob = UserId::try_from("bob").unwrap();
        let first = devices.admit(&alice, 2).unwrap();
        let second = devices.admit(&alice, 2).unwrap();
        assert!(devices.admit(&alice, 2).is_none());
        assert!(devices.admit(&bob, 2).is_some(), "counted per user");
        drop(first);
        let third = devices.admit(&alice, 2).unwrap();
        assert_eq!(devices.open(&alice), 2);
        drop((second, third));
        assert_eq!(devices.open(&alice), 0);
        assert!(devices.0.lock().unwrap().is_empty(), "no entry kept");
    }

    #[tokio::test]
    async fn a_close_ends_a_writer_stalled_on_its_socket() {
        let (out, receiver) = outbound::channel(8);
        let writer = tokio::spawn(write_frames(Stalled, receiver));
        assert!(out.push("stuck".into()));
        // One thread: yielding lets the writer take the frame and stall.
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert!(!writer.is_finished());
        out.close(CLOSE_GOING_AWAY);
        // It gives the close frame CLOSE_GRACE, then lets go.
        tokio::time::timeout(CLOSE_GRACE + Duration::from_secs(5), writer)
            .await
            .expect("the stalled writer never ended")
            .expect("the writer did not panic");
    }
}
