//! The bounded queue from the actors to one connection's socket writer.
//!
//! Frames are serialized once and shared (`Bytes`, reference counted) by every connection
//! they go to. A connection whose queue is full reads too slowly to keep up:
//! it is closed with 1013 rather than let memory grow; the client reconnects
//! and syncs, and loses nothing.

use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::{mpsc, Notify};

/// One serialized server frame.
pub type Frame = bytes::Bytes;

/// WebSocket close code for a client that reads too slowly.
pub const CLOSE_TOO_SLOW: u16 = 1013;
/// WebSocket close code for a node going away.
pub const CLOSE_GOING_AWAY: u16 = 1001;

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// Why and whether a connection is to be closed.
#[derive(Default)]
pub struct CloseSignal {
    code: AtomicU16,
    notify: Notify,
}

impl CloseSignal {
    /// Asks the writer to close with `code`; the first code asked wins.
    pub fn close(&self, code: u16) {
        if self
            .code
            .compare_exchange(0, code, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            self.notify.notify_one();
        }
    }

    /// The close code asked for, if any.
    pub fn code(&self) -> Option<u16> {
        match self.code.load(Ordering::Acquire) {
            0 => None,
            code => Some(code),
        }
    }

    /// Resolves once a close is asked for.
    pub async fn closed(&self) -> u16 {
        loop {
            let notified = self.notify.notified();
            if let Some(code) = self.code() {
                return code;
            }
            notified.await;
        }
    }
}

/// The sending side, held by the connection actor and the user actor.
#[derive(Clone)]
pub struct Outbound {
    id: u64,
    tx: mpsc::Sender<Frame>,
    signal: Arc<CloseSignal>,
}

/// The receiving side, held by the socket writer.
pub struct OutboundReceiver {
    pub frames: mpsc::Receiver<Frame>,
    pub signal: Arc<CloseSignal>,
}

/// A queue of at most `capacity` frames.
pub fn channel(capacity: usize) -> (Outbound, OutboundReceiver) {
    let (tx, frames) = mpsc::channel(capacity.max(1));
    let signal = Arc::new(CloseSignal::default());
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    (
        Outbound {
            id,
            tx,
            signal: signal.clone(),
        },
        OutboundReceiver { frames, signal },
    )
}

impl Outbound {
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Queues a frame. Returns `false` when the connection is gone or has
    /// just been closed for reading too slowly.
    pub fn push(&self, frame: Frame) -> bool {
        if self.signal.code().is_some() {
            return false;
        }
        match self.tx.try_send(frame) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.signal.close(CLOSE_TOO_SLOW);
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    pub fn close(&self, code: u16) {
        self.signal.close(code);
    }

    /// Whether this queue was closed because its reader fell behind.
    pub fn is_closed_for_slowness(&self) -> bool {
        self.signal.code() == Some(CLOSE_TOO_SLOW)
    }

    pub fn is_open(&self) -> bool {
        self.signal.code().is_none() && !self.tx.is_closed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_full_queue_closes_with_1013() {
        let (out, mut rx) = channel(2);
        assert!(out.push("a".into()));
        assert!(out.push("b".into()));
        assert!(!out.push("c".into()), "third frame does not fit");
        assert_eq!(rx.signal.closed().await, CLOSE_TOO_SLOW);
        assert!(!out.push("d".into()));
        assert_eq!(&rx.frames.recv().await.unwrap()[..], b"a");
    }

    #[tokio::test]
    async fn the_first_close_code_wins() {
        let (out, rx) = channel(2);
        out.close(CLOSE_GOING_AWAY);
        out.close(CLOSE_TOO_SLOW);
        assert_eq!(rx.signal.closed().await, CLOSE_GOING_AWAY);
        assert!(!out.is_open());
    }
}
