//! The connection actor: one per WebSocket.
//!
//! It subscribes its device to its user's fan-out list when it starts, so
//! pushes begin as soon as the connection is open (the list is in the
//! [`crate::directory`]; the device leaves it when the actor stops), and
//! serves the client's frames one at a time, in order. Replies and pushes
//! share the connection's bounded outbound queue ([`crate::outbound`]). A
//! token bucket limits how fast one connection may send.

use std::sync::Arc;
use std::time::Instant;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use ractor_cluster::RactorMessage;
use tidings_protocol::{ClientEnvelope, ErrorCode, ErrorFrame, ServerFrame, UserId};

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
struct Bucket {
    limit: RateLimit,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn new(limit: RateLimit) -> Bucket {
        Bucket {
            limit,
            tokens: limit.burst,
            at: Instant::now(),
        }
    }

    fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.duration_since(self.at).as_secs_f64();
        self.at = now;
        self.tokens = (self.tokens + elapsed * self.limit.per_second).min(self.limit.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

pub struct ConnectionActor;

pub struct ConnectionArgs {
    pub user: UserId,
    pub service: Service,
    pub outbound: Outbound,
    pub rate: RateLimit,
    pub metrics: Arc<Metrics>,
}

pub struct Connection {
    user: UserId,
    service: Service,
    outbound: Outbound,
    bucket: Bucket,
    metrics: Arc<Metrics>,
    /// Held for the connection's life: dropped with the state, however the
    /// actor ends, it takes the device out of the fan-out list.
    _subscription: Subscription,
}

impl Drop for Connection {
    /// However the actor ends (a stop, a failure, a panic), its socket is
    /// closed with it: the device has just left the fan-out list, so the
    /// socket would get no more pushes. After a normal stop the socket
    /// reader has already asked for a close, and the first code asked wins.
    fn drop(&mut self) {
        self.outbound.close(CLOSE_INTERNAL);
    }
}

/// A text frame from the client; the reply port answers once it is served,
/// so the socket reader reads the next frame only then.
#[derive(RactorMessage)]
pub struct Inbound {
    pub text: String,
    pub done: RpcReplyPort<()>,
}

impl Actor for ConnectionActor {
    type Msg = Inbound;
    type State = Connection;
    type Arguments = ConnectionArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Inbound>,
        args: ConnectionArgs,
    ) -> Result<Connection, ActorProcessingErr> {
        let subscription = args.service.subscribe(&args.user, args.outbound.clone());
        args.metrics.connections.inc();
        Ok(Connection {
            user: args.user,
            service: args.service,
            outbound: args.outbound,
            bucket: Bucket::new(args.rate),
            metrics: args.metrics,
            _subscription: subscription,
        })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Inbound>,
        state: &mut Connection,
    ) -> Result<(), ActorProcessingErr> {
        state.metrics.connections.dec();
        Ok(())
    }

    async fn handle(
        &self,
        _myself: ActorRef<Inbound>,
        message: Inbound,
        state: &mut Connection,
    ) -> Result<(), ActorProcessingErr> {
        state.serve(&message.text).await;
        let _ = message.done.send(());
        Ok(())
    }
}

impl Connection {
    async fn serve(&mut self, text: &str) {
        self.metrics.frames_received.inc();
        let (req, result) = match ClientEnvelope::parse(text) {
            Err((req, err)) => (req, Err(err)),
            Ok(envelope) if !self.bucket.take(Instant::now()) => (
                envelope.req,
                Err(ErrorFrame::new(
                    ErrorCode::RateLimited,
                    format!(
                        "more than {} frames per second; slow down",
                        self.bucket.limit.per_second
                    ),
                )),
            ),
            // Boxed: the service's future is large, and unboxed it would be
            // part of every idle connection actor's task.
            Ok(envelope) => (
                envelope.req,
                Box::pin(self.service.handle(&self.user, envelope.frame)).await,
            ),
        };
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
}
