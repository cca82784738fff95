//! The HTTP server loop: accept, count, and serve each connection with
//! hyper under the node's limits.
//!
//! `axum::serve` has no limits of its own, and under abuse that shows: a
//! client that sends its headers a byte a minute keeps a connection (and
//! an open file) for as long as it likes, and once the open-file limit is
//! reached `accept` fails on every call. So the node runs its own loop:
//!
//! - A connection that has not sent a request's complete headers within
//!   `--header-timeout` is closed (hyper's `header_read_timeout`; between
//!   requests on a kept-alive connection it runs too). A request whose
//!   body has not all arrived within `--header-timeout` after its headers
//!   is answered `408` and its connection closed ([`body_deadline`]):
//!   otherwise a body sent a byte at a time holds the connection forever,
//!   each byte counting as traffic.
//! - A connection with no traffic at all for `--idle-timeout` is shut down
//!   gracefully: a request in flight is answered first. Once a connection
//!   is upgraded to a WebSocket it is no longer hyper's, and the socket's
//!   own heartbeat governs it.
//! - Every accepted connection is counted until its socket closes, upgraded
//!   ones included. Above `--max-connections` a new one is answered with a
//!   bare `503` and closed, so the node keeps files in hand for its own
//!   work and stays reachable for the connections it has. An `accept` that
//!   fails anyway (out of files) is retried after a pause that grows while
//!   it keeps failing, instead of at once in a busy loop.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tidings_protocol::ErrorCode;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::error::ApiError;

/// What a shed connection is told before it is closed.
const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
content-length: 91\r\nretry-after: 1\r\nconnection: close\r\n\r\n\
{\"error\":{\"code\":\"unavailable\",\"message\":\"the node has too many connections; retry later\"}}";
/// How long a shed connection may take to take its 503.
const SHED_WRITE: Duration = Duration::from_secs(1);
/// Shed connections being answered at once; past this, more are closed
/// without an answer.
const MAX_SHEDDING: usize = 64;
/// Idle checks per `--idle-timeout`: a connection is closed after between
/// one and one and a quarter timeouts of silence.
const IDLE_CHECKS: u32 = 4;
/// Longest pause after a failed `accept`.
const MAX_ACCEPT_PAUSE: Duration = Duration::from_secs(1);

/// The limits one server loop applies.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
}

/// The default `--max-connections`: a tenth (at least 64) below the
/// open-file limit, leaving files for storage, the cluster links and the
/// 503s themselves.
pub fn default_max_connections(open_files: u64) -> usize {
    let margin = (open_files / 10).max(64);
    usize::try_from(open_files.saturating_sub(margin))
        .unwrap_or(usize::MAX)
        .max(1)
}

/// The process's soft open-file limit, if it can be read.
pub fn open_file_limit() -> Option<u64> {
    rlimit::getrlimit(rlimit::Resource::NOFILE)
        .ok()
        .map(|(soft, _)| soft)
}

/// Live connections, shared by the loop and each connection's socket.
#[derive(Clone, Default)]
pub struct Connections(Arc<AtomicUsize>);

impl Connections {
    /// A slot for one more connection, unless `max` are open.
    fn admit(&self, max: usize) -> Option<Slot> {
        self.0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| Slot(self.0.clone()))
    }

    pub fn open(&self) -> usize {
        self.0.load(Ordering::Acquire)
    }
}

/// One counted connection; dropped with its socket.
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Serves `app` on `listener` until `stop` is cancelled, then lets each
/// open connection finish its request in flight and waits for them.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    connections: Connections,
    stop: CancellationToken,
) -> io::Result<()> {
    let deadline = limits.header_timeout;
    let app = app.layer(axum::middleware::from_fn(
        move |request: Request, next: Next| body_deadline(deadline, request, next),
    ));
    let tasks = TaskTracker::new();
    let shedding = Arc::new(AtomicUsize::new(0));
    let mut failures = 0u32;
    loop {
        let accepted = tokio::select! {
            biased;
            () = stop.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let tcp = match accepted {
            Ok((tcp, _)) => {
                failures = 0;
                tcp
            }
            // The peer gave up before it was accepted: nothing to wait for.
            Err(error) if is_connection_error(&error) => continue,
            Err(error) => {
                failures += 1;
                let pause = accept_pause(failures);
                if failures == 1 || failures.is_power_of_two() {
                    tracing::warn!(%error, failures, ?pause, open = connections.open(), "accept failed");
                }
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = tokio::time::sleep(pause) => continue,
                }
            }
        };
        let Some(slot) = connections.admit(limits.max_connections) else {
            shed(tcp, &shedding, &tasks);
            continue;
        };
        // No Nagle: a small frame (an ack, then the event) must not wait
        // for the peer's delayed ack of the one before it.
        if let Err(error) = tcp.set_nodelay(true) {
            tracing::warn!(%error, "TCP_NODELAY not set on a connection");
        }
        tasks.spawn(serve_connection(
            tcp,
            slot,
            app.clone(),
            limits,
            stop.clone(),
        ));
    }
    tasks.close();
    tasks.wait().await;
    Ok(())
}

/// Errors of one connection that `accept` reports, not of the listener.
fn is_connection_error(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// The pause after the `failures`th failed `accept` in a row: 5 ms,
/// doubling, at most [`MAX_ACCEPT_PAUSE`].
fn accept_pause(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(10);
    (Duration::from_millis(5) * 2u32.pow(doublings)).min(MAX_ACCEPT_PAUSE)
}

/// Answers a connection over the limit with a 503 and closes it.
fn shed(mut tcp: TcpStream, shedding: &Arc<AtomicUsize>, tasks: &TaskTracker) {
    if shedding.fetch_add(1, Ordering::AcqRel) >= MAX_SHEDDING {
        shedding.fetch_sub(1, Ordering::AcqRel);
        return;
    }
    tracing::debug!("connection shed: --max-connections reached");
    let shedding = shedding.clone();
    tasks.spawn(async move {
        let answer = async {
            tcp.write_all(BUSY).await?;
            tcp.shutdown().await
        };
        let _ = tokio::time::timeout(SHED_WRITE, answer).await;
        shedding.fetch_sub(1, Ordering::AcqRel);
    });
}

async fn serve_connection(
    tcp: TcpStream,
    slot: Slot,
    app: Router,
    limits: Limits,
    stop: CancellationToken,
) {
    let active = Arc::new(AtomicBool::new(false));
    let io = TokioIo::new(Counted {
        inner: tcp,
        active: active.clone(),
        _slot: slot,
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .serve_connection(io, TowerToHyperService::new(app))
        .with_upgrades();
    tokio::pin!(conn);
    let every = limits.idle_timeout / IDLE_CHECKS;
    let mut checks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    let mut quiet = 0;
    let mut closing = false;
    loop {
        tokio::select! {
            served = conn.as_mut() => {
                if let Err(error) = served {
                    tracing::debug!(%error, "HTTP connection ended");
                }
                return;
            }
            () = stop.cancelled(), if !closing => {
                closing = true;
                conn.as_mut().graceful_shutdown();
            }
            _ = checks.tick(), if !closing => {
                if active.swap(false, Ordering::Relaxed) {
                    quiet = 0;
                    continue;
                }
                quiet += 1;
                if quiet >= IDLE_CHECKS {
                    tracing::debug!("idle HTTP connection closed");
                    closing = true;
                    conn.as_mut().graceful_shutdown();
                }
            }
        }
    }
}

/// Reads a request's body (at most [`crate::http::MAX_BODY`] bytes) within
/// `deadline` before the route sees the request. A body that does not
/// arrive in time is answered `408` and the connection closed; one over
/// the limit, `413`, as the routes would.
pub async fn body_deadline(deadline: Duration, request: Request, next: Next) -> Response {
    let (parts, body) = request.into_parts();
    let limit = crate::http::MAX_BODY;
    match tokio::time::timeout(deadline, axum::body::to_bytes(body, limit)).await {
        Ok(Ok(bytes)) => {
            next.run(Request::from_parts(parts, Body::from(bytes)))
                .await
        }
        Ok(Err(_)) => {
            let mut refused =
                ApiError::new(ErrorCode::TooLarge, "request body is too large").into_response();
            refused
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            refused
        }
        Err(_) => {
            let message = format!(
                "the request body did not arrive within {} ms of its headers",
                deadline.as_millis()
            );
            let body = serde_json::json!({"error": {"code": "bad_request", "message": message}});
            (
                StatusCode::REQUEST_TIMEOUT,
                [(header::CONNECTION, HeaderValue::from_static("close"))],
                Json(body),
            )
                .into_response()
        }
    }
}

/// A client's socket, counted while it is open (upgraded or not), and
/// marked active whenever bytes move.
struct Counted {
    inner: TcpStream,
    active: Arc<AtomicBool>,
    _slot: Slot,
}

impl Counted {
    fn touch(&self) {
        // A plain store when already set would still dirty the line; most
        // calls find it set.
        if !self.active.load(Ordering::Relaxed) {
            self.active.store(true, Ordering::Relaxed);
        }
    }
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.touch();
        }
        polled
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_cap_leaves_a_margin_below_the_open_file_limit() {
        assert_eq!(default_max_connections(20_000), 18_000);
        assert_eq!(default_max_connections(1024), 922);
        assert_eq!(default_max_connections(200), 136);
        assert_eq!(default_max_connections(10), 1);
    }

    #[test]
    fn accept_pauses_grow_to_a_cap() {
        assert_eq!(accept_pause(1), Duration::from_millis(5));
        assert_eq!(accept_pause(2), Duration::from_millis(10));
        assert_eq!(accept_pause(100), MAX_ACCEPT_PAUSE);
    }

    #[test]
    fn connections_are_counted_up_to_the_cap() {
        let connections = Connections::default();
        let a = connections.admit(2).unwrap();
        let _b = connections.admit(2).unwrap();
        assert!(connections.admit(2).is_none());
        drop(a);
        assert_eq!(connections.open(), 1);
        assert!(connections.admit(2).is_some());
    }

    #[test]
    fn the_busy_answer_is_well_formed() {
        let text = std::str::from_utf8(BUSY).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 503 "));
        assert!(head.contains(&format!("content-length: {}", body.len())));
        serde_json::from_str::<serde_json::Value>(body).unwrap();
    }
}
