//! A connection: one per WebSocket, owned by the socket's reader.
//!
//! It subscribes its device to its user's fan-out list when it opens, so
//! pushes begin as soon as the connection is open (the list is in the
//! [`crate::directory`]; the device leaves it when the connection is
//! dropped), and serves the client's frames one at a time, in order: the
//! reader awaits each before it reads the next. (It is not an actor: its
//! one caller awaited every call, so a mailbox only added a hop and a
//! task per socket.) Replies and pushes
//! share the connection's bounded outbound queue ([`crate::outbound`]). A
//! token bucket limits how fast one connection may send: every frame
//! takes a token before anything else is done with it, malformed, binary,
//! ping and pong frames included, so a flood of frames that fail to parse
//! costs no more than one of good ones.
//!
//! A socket lives as long as the token it was opened with; `refresh`
//! moves that deadline to a fresh token's expiry. The deadline is shared
//! with the socket reader, which closes the socket with 4001 when it
//! passes.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tidings_protocol::{ClientEnvelope, ClientFrame, ErrorCode, ErrorFrame, ServerFrame, UserId};

use crate::directory::Subscription;
use crate::metrics::Metrics;
use crate::outbound::{Outbound, Refused, CLOSE_INTERNAL};
use crate::service::Service;

/// How fast one connection may send frames.
#[derive(Debug, Clone, Copy)]
pub struct RateLimit {
    /// Frames per second, sustained.
    pub per_second: f64,
    /// Frames that may come at once after a quiet spell.
    pub burst: f64,
}

impl Default for RateLimit {
    fn default() -> Self {
        RateLimit {
            per_second: 100.0,
            burst: 200.0,
        }
    }
}

/// A token bucket.
#[derive(Debug, Clone)]
pub struct Bucket {
    limit: RateLimit,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    pub fn new(limit: RateLimit) -> Bucket {
        Bucket {
            limit,
            tokens: limit.burst,
            at: Instant::now(),
        }
    }

    pub fn take(&mut self, now: Instant) -> bool {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.at = self.at.max(now);
        self.tokens = (self.tokens + elapsed * self.limit.per_second).min(self.limit.burst);
    }

    /// How long until the next token, from `now` (zero if one is there).
    pub fn retry_after(&mut self, now: Instant) -> Duration {
        self.refill(now);
        let missing = (1.0 - self.tokens).max(0.0);
        Duration::from_secs_f64(missing / self.limit.per_second)
    }

    /// Whether the bucket is full at `now`: a full bucket holds nothing
    /// that a new one would not.
    pub fn is_full(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.tokens >= self.limit.burst
    }

    pub fn limit(&self) -> RateLimit {
        self.limit
    }
}

/// Checks a token a client presents in `refresh`: the user it speaks for
/// and its expiry (unix seconds), or the error to answer.
pub trait TokenCheck: Send + Sync + 'static {
    fn check(&self, token: &str) -> Result<(UserId, u64), ErrorFrame>;
}

/// When a connection's token expires, in unix seconds: set when the
/// socket opens, moved by `refresh`, watched by the socket reader.
#[derive(Debug, Clone, Default)]
pub struct Expiry(Arc<AtomicU64>);

impl Expiry {
    pub fn new(exp: u64) -> Expiry {
        Expiry(Arc::new(AtomicU64::new(exp)))
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Acquire)
    }

    /// Moves the expiry to `exp`, never earlier than it is.
    fn extend(&self, exp: u64) -> u64 {
        self.0.fetch_max(exp, Ordering::AcqRel).max(exp)
    }
}

pub struct ConnectionArgs {
    pub user: UserId,
    pub service: Service,
    pub outbound: Outbound,
    pub rate: RateLimit,
    pub metrics: Arc<Metrics>,
    /// Checks the tokens of `refresh` frames.
    pub tokens: Arc<dyn TokenCheck>,
    /// The socket's deadline, shared with its reader.
    pub expiry: Expiry,
}

pub struct Connection {
    user: UserId,
    service: Service,
    outbound: Outbound,
    bucket: Bucket,
    metrics: Arc<Metrics>,
    tokens: Arc<dyn TokenCheck>,
    expiry: Expiry,
    /// Held for the connection's life: dropped with it, however it ends, it
    /// takes the device out of the fan-out list.
    _subscription: Subscription,
}

impl Drop for Connection {
    /// However the connection ends (its socket closed, a panic), its socket
    /// is closed with it: the device has just left the fan-out list, so the
    /// socket would get no more pushes. After a normal end the socket
    /// reader has already asked for a close, and the first code asked wins.
    fn drop(&mut self) {
        self.metrics.connections.dec();
        self.outbound.close(CLOSE_INTERNAL);
    }
}

/// What a client frame carried, as far as the connection needs to know.
#[derive(Debug)]
pub enum ClientData {
    Text(String),
    /// A binary frame: refused, the protocol is JSON in text frames.
    Binary,
    /// A WebSocket ping, with its payload for the pong.
    Ping(bytes::Bytes),
    /// A WebSocket pong (or an unsolicited one, a heartbeat).
    Pong,
}

impl Connection {
    /// Opens a connection for `args.user`'s device: subscribes it to the
    /// user's fan-out list, so pushes begin at once.
    pub fn open(args: ConnectionArgs) -> Connection {
        let subscription = args.service.subscribe(&args.user, args.outbound.clone());
        args.metrics.connections.inc();
        Connection {
            user: args.user,
            service: args.service,
            outbound: args.outbound,
            bucket: Bucket::new(args.rate),
            metrics: args.metrics,
            tokens: args.tokens,
            expiry: args.expiry,
            _subscription: subscription,
        }
    }
}

impl Connection {
    /// Serves one client frame: the socket's reader awaits it before it
    /// reads the next, so frames are served one at a time, in order.
    pub async fn serve(&mut self, data: ClientData) {
        self.metrics.frames_received.inc();
        // Counted before anything is read from the frame.
        let allowed = self.bucket.take(Instant::now());
        let text = match data {
            ClientData::Text(text) => text,
            ClientData::Ping(payload) => {
                // Over the rate a ping gets no pong.
                if allowed {
                    self.outbound.pong(payload);
                }
                return;
            }
            ClientData::Pong => return,
            ClientData::Binary => {
                let err = if allowed {
                    ErrorFrame::bad_request("frames must be JSON in text frames, not binary")
                } else {
                    self.rate_limited()
                };
                self.reply(None, Err(err));
                return;
            }
        };
        let (req, result) = if !allowed {
            (ClientEnvelope::req_of(&text), Err(self.rate_limited()))
        } else {
            match ClientEnvelope::parse(&text) {
                Err((req, err)) => (req, Err(err)),
                Ok(ClientEnvelope {
                    req,
                    frame: ClientFrame::Refresh { token },
                }) => (req, self.refresh(&token).map(Some)),
                // Not boxed again: the reader boxes this whole future
                // (`ws::Serves`), so it is no part of an idle socket's task.
                Ok(envelope) => (
                    envelope.req,
                    self.service
                        .handle(&self.user, envelope.frame)
                        .await
                        .map_err(ErrorFrame::from),
                ),
            }
        };
        self.reply(req, result);
    }

    fn rate_limited(&self) -> ErrorFrame {
        ErrorFrame::new(
            ErrorCode::RateLimited,
            format!(
                "more than {} frames per second; slow down",
                self.bucket.limit.per_second
            ),
        )
    }

    /// Serves `refresh`: a valid token for this connection's user moves the
    /// socket's deadline to the token's expiry.
    #[allow(clippy::result_large_err)] // the error is the reply
    fn refresh(&self, token: &str) -> Result<ServerFrame, ErrorFrame> {
        let (user, exp) = self.tokens.check(token)?;
        if user != self.user {
            return Err(ErrorFrame::new(
                ErrorCode::Forbidden,
                "the token is for another user than this connection's",
            ));
        }
        let exp = self.expiry.extend(exp);
        tracing::debug!(user = %self.user, exp, "token refreshed");
        Ok(ServerFrame::Refreshed { exp })
    }

    fn reply(&self, req: Option<String>, result: Result<Option<ServerFrame>, ErrorFrame>) {
        let frame = match result {
            Ok(Some(frame)) => frame,
            Ok(None) => return,
            Err(err) => {
                self.metrics.error(err.code);
                ServerFrame::Error(err)
            }
        };
        let refused = self.outbound.try_push(frame.reply(req).to_json().into());
        if refused == Err(Refused::TooSlow) {
            self.metrics.slow_consumer_closes.inc();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_bucket_allows_a_burst_then_the_rate() {
        let limit = RateLimit {
            per_second: 10.0,
            burst: 3.0,
        };
        let mut bucket = Bucket::new(limit);
        let start = bucket.at;
        assert!(bucket.take(start));
        assert!(bucket.take(start));
        assert!(bucket.take(start));
        assert!(!bucket.take(start), "burst spent");
        assert!(
            bucket.take(start + Duration::from_millis(100)),
            "one token per 100 ms"
        );
        assert!(!bucket.take(start + Duration::from_millis(100)));
        assert!(bucket.take(start + Duration::from_secs(10)));
    }

    #[test]
    fn the_bucket_says_when_the_next_token_comes() {
        let limit = RateLimit {
            per_second: 4.0,
            burst: 2.0,
        };
        let mut bucket = Bucket::new(limit);
        let start = bucket.at;
        assert!(bucket.is_full(start));
        assert_eq!(bucket.retry_after(start), Duration::ZERO);
        assert!(bucket.take(start) && bucket.take(start));
        assert!(!bucket.is_full(start));
        let near =
            |d: Duration, ms: u64| d.abs_diff(Duration::from_millis(ms)) < Duration::from_millis(1);
        assert!(near(bucket.retry_after(start), 250));
        assert!(near(
            bucket.retry_after(start + Duration::from_millis(100)),
            150
        ));
        assert!(bucket.is_full(start + Duration::from_secs(1)));
    }

    #[test]
    fn an_expiry_only_moves_later() {
        let expiry = Expiry::new(100);
        assert_eq!(expiry.extend(200), 200);
        assert_eq!(expiry.extend(150), 200);
        assert_eq!(expiry.get(), 200);
    }
}
