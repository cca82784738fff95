//! WebSocket: authenticate the upgrade, then one task reads and one writes;
//! when one ends the other is stopped.
//!
//! The reader hands each text frame to the connection actor and reads the
//! next only once it is served, so a client that sends faster than it is
//! served is slowed by TCP rather than by memory. The writer drains the
//! connection's bounded outbound queue, writing every queued frame before
//! one flush. A socket silent for the ping interval is pinged, and one
//! silent for the heartbeat timeout is closed as dead: the reader keeps
//! that one timer and asks the writer for the ping, so the writer waits on
//! its queue alone and a busy socket polls no timer per frame.

use std::future::Future;
use std::time::Duration;

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use ractor::Actor;
use serde::Deserialize;
use tidings_actors::connection::{ConnectionActor, ConnectionArgs, Inbound, RateLimit};
use tidings_actors::outbound::{
    self, Frame, Next, Outbound, OutboundReceiver, CLOSE_GOING_AWAY, CLOSE_INTERNAL,
};
use tidings_protocol::{ErrorCode, ErrorFrame, ServerFrame, UserId};
use tokio_util::sync::CancellationToken;

use crate::auth::bearer;
use crate::error::ApiError;
use crate::http::QueryArgs;
use crate::AppState;

/// Close code for a frame over the size limit.
pub const CLOSE_TOO_BIG: u16 = 1009;
/// Close code for a normal end.
pub const CLOSE_NORMAL: u16 = 1000;
/// Initial read buffer of each socket.
const READ_BUFFER: usize = 512;
/// How long a close frame may take to leave before the socket is dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

#[derive(Deserialize)]
pub struct WsQuery {
    token: Option<String>,
}

pub async fn upgrade(
    State(state): State<AppState>,
    headers: HeaderMap,
    QueryArgs(query): QueryArgs<WsQuery>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let header = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let Some(token) = query.token.as_deref().or_else(|| bearer(header)) else {
        return ApiError::unauthorized("missing token: pass ?token= or Authorization: Bearer")
            .into_response();
    };
    let user = match state.auth.verify(token) {
        Ok(user) => user,
        Err(err) => return err.into_response(),
    };
    let ws = match ws {
        Ok(ws) => ws,
        Err(rejection) => return ApiError::bad_request(rejection.body_text()).into_response(),
    };
    if state.shutdown.is_cancelled() {
        return ApiError::new(ErrorCode::Unavailable, "the node is shutting down").into_response();
    }
    let max = state.config.max_frame;
    let tracker = state.tracker.clone();
    // tungstenite allocates a 128 KiB read buffer per connection by default;
    // idle connections need little, and the buffer grows for large frames.
    // (The write buffer is not allocated ahead, so it keeps its default.)
    ws.read_buffer_size(READ_BUFFER)
        .max_message_size(max)
        .max_frame_size(max)
        .on_upgrade(move |socket| tracker.track_future(serve(state, user, socket)))
}

/// Serves one upgraded socket until it ends.
///
/// What can be done before the first await is done here, outside the
/// returned future: that future lives as long as the connection, and
/// whatever it captures (the socket before it is split, the whole state)
/// would be part of every idle connection's memory.
fn serve(state: AppState, user: UserId, socket: WebSocket) -> impl Future<Output = ()> {
    let config = &state.config;
    let (outbound, receiver) = outbound::channel(config.outbound_queue);
    let args = ConnectionArgs {
        user: user.clone(),
        service: state.service.clone(),
        outbound: outbound.clone(),
        rate: RateLimit {
            per_second: config.rate_limit,
            burst: config.rate_burst,
        },
        metrics: state.metrics.clone(),
    };
    let (sink, stream) = socket.split();
    let writer = tokio::spawn(write_frames(sink, receiver));
    let heartbeat = Heartbeat {
        ping_after: config.ping_interval,
        timeout: config.heartbeat_timeout,
    };
    let shutdown = state.shutdown.clone();
    async move {
        // Boxed for the same reason: starting an actor is a large future.
        let (connection, handle) = match Box::pin(Actor::spawn(None, ConnectionActor, args)).await {
            Ok(started) => started,
            Err(err) => {
                tracing::error!(%user, error = %err, "connection could not start");
                outbound.close(CLOSE_INTERNAL);
                let _ = writer.await;
                return;
            }
        };
        tracing::debug!(%user, "connected");
        let reason = read_frames(stream, &connection, &outbound, heartbeat, &shutdown).await;
        tracing::debug!(%user, ?reason, "disconnected");
        outbound.close(reason.close_code());
        connection.stop(None);
        let _ = handle.await;
        let _ = writer.await;
    }
}

/// Why a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    ClientClosed,
    Shutdown,
    HeartbeatTimeout,
    TooBig,
    Broken,
}

impl Ended {
    fn close_code(self) -> u16 {
        match self {
            Ended::ClientClosed => CLOSE_NORMAL,
            Ended::Shutdown | Ended::HeartbeatTimeout => CLOSE_GOING_AWAY,
            Ended::TooBig => CLOSE_TOO_BIG,
            Ended::Broken => CLOSE_INTERNAL,
        }
    }
}

fn is_too_big(err: &axum::Error) -> bool {
    use std::error::Error as _;
    let mut source: Option<&(dyn std::error::Error + 'static)> = err.source();
    while let Some(err) = source {
        if let Some(ws) = err.downcast_ref::<tokio_tungstenite::tungstenite::Error>() {
            return matches!(ws, tokio_tungstenite::tungstenite::Error::Capacity(_));
        }
        source = err.source();
    }
    false
}

/// How long a socket may be silent.
#[derive(Debug, Clone, Copy)]
struct Heartbeat {
    /// Silent this long: ping it.
    ping_after: Duration,
    /// Silent this long: closed as dead. Longer than `ping_after`.
    timeout: Duration,
}

/// Reads client frames until the socket ends, and says why it ended.
async fn read_frames<S>(
    mut stream: S,
    connection: &ractor::ActorRef<Inbound>,
    outbound: &Outbound,
    heartbeat: Heartbeat,
    shutdown: &CancellationToken,
) -> Ended
where
    S: Stream<Item = Result<Message, axum::Error>> + Unpin,
{
    // One timer, pushed back by every frame (pongs included) once it is
    // served: first it asks for a ping, then it ends the connection.
    let mut pinged = false;
    let silence = tokio::time::sleep(heartbeat.ping_after);
    tokio::pin!(silence);
    loop {
        let next = tokio::select! {
            () = shutdown.cancelled() => return Ended::Shutdown,
            () = &mut silence => {
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
            next = stream.next() => next,
        };
        let message = match next {
            None => return Ended::ClientClosed,
            Some(Err(err)) if is_too_big(&err) => return Ended::TooBig,
            Some(Err(_)) => return Ended::Broken,
            Some(Ok(message)) => message,
        };
        match message {
            Message::Text(text) => {
                // Boxed: a call is a large future, and it would otherwise
                // take room in every connection's task while idle.
                let served = Box::pin(connection.call(
                    |done| Inbound {
                        text: text.as_str().to_owned(),
                        done,
                    },
                    None,
                ))
                .await;
                // Anything but an answer means the actor is gone (it
                // failed, and its reply port went with it).
                if !matches!(served, Ok(ractor::rpc::CallResult::Success(()))) {
                    return Ended::Broken;
                }
            }
            Message::Binary(_) => {
                let error = ServerFrame::Error(ErrorFrame::bad_request(
                    "frames must be JSON in text frames, not binary",
                ));
                outbound.push(error.push().to_json().into());
            }
            Message::Close(_) => return Ended::ClientClosed,
            Message::Ping(_) | Message::Pong(_) => {}
        }
        // Once the frame is served: time spent serving it is not the
        // client's silence.
        pinged = false;
        silence
            .as_mut()
            .reset(tokio::time::Instant::now() + heartbeat.ping_after);
    }
}

fn text(frame: Frame) -> Message {
    Message::Text(Utf8Bytes::try_from(frame).expect("server frames are UTF-8 JSON"))
}

/// Writes queued frames (all that are waiting, then one flush) and the
/// pings asked for, until a close is asked for; then sends the close frame.
async fn write_frames<S>(mut sink: S, mut receiver: OutboundReceiver)
where
    S: Sink<Message> + Unpin,
{
    // Made once, and polled only while a write is stalled: a close must
    // not wait for a socket that is not being read.
    let closed = receiver.closed();
    tokio::pin!(closed);
    let code = loop {
        let batch = match receiver.next().await {
            Next::Close(code) => break Some(code),
            Next::Ping => None,
            Next::Frames(batch) => Some(batch),
        };
        let write = async {
            let Some(batch) = batch else {
                return sink.send(Message::Ping(Default::default())).await.is_ok();
            };
            for frame in batch {
                if sink.feed(text(frame)).await.is_err() {
                    return false;
                }
            }
            sink.flush().await.is_ok()
        };
        tokio::select! {
            biased;
            open = write => if !open { break None },
            code = &mut closed => break Some(code),
        }
    };
    if let Some(code) = code {
        let close = Message::Close(Some(CloseFrame {
            code,
            reason: Utf8Bytes::from_static(match code {
                outbound::CLOSE_TOO_SLOW => "reading too slowly; reconnect and sync",
                CLOSE_GOING_AWAY => "going away",
                CLOSE_TOO_BIG => "frame too large",
                _ => "",
            }),
        }));
        let _ = tokio::time::timeout(CLOSE_GRACE, sink.send(close)).await;
    }
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use super::*;

    /// A socket nobody reads: every write waits forever.
    struct Stalled;

    impl Sink<Message> for Stalled {
        type Error = ();
        fn poll_ready(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), ()>> {
            Poll::Pending
        }
        fn start_send(self: Pin<&mut Self>, _: Message) -> Result<(), ()> {
            Ok(())
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), ()>> {
            Poll::Pending
        }
        fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), ()>> {
            Poll::Pending
        }
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
