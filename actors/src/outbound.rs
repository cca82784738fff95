//! The bounded queue from the actors to one connection's socket writer.
//!
//! Frames are serialized once and shared (`Bytes`, reference counted) by every connection
//! they go to. A connection whose queue is full reads too slowly to keep up:
//! it is closed with 1013 rather than let memory grow; the client reconnects
//! and syncs, and loses nothing.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

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

/// What the senders and the socket writer share.
struct Shared {
    /// Frames not yet taken by the writer. A plain deque under a lock
    /// rather than a channel: it allocates nothing until a frame comes, and
    /// an idle connection's queue costs a few words.
    queue: Mutex<VecDeque<Frame>>,
    capacity: usize,
    /// Wakes the writer when the queue stops being empty.
    ready: Notify,
    /// Set when the writer is gone: nothing queued would be sent.
    gone: AtomicBool,
    signal: Arc<CloseSignal>,
}

/// The sending side, held by the connection actor and the directory.
#[derive(Clone)]
pub struct Outbound {
    id: u64,
    shared: Arc<Shared>,
}

/// The receiving side, held by the socket writer.
pub struct OutboundReceiver {
    shared: Arc<Shared>,
    pub signal: Arc<CloseSignal>,
}

/// A queue of at most `capacity` frames.
pub fn channel(capacity: usize) -> (Outbound, OutboundReceiver) {
    let signal = Arc::new(CloseSignal::default());
    let shared = Arc::new(Shared {
        queue: Mutex::default(),
        capacity: capacity.max(1),
        ready: Notify::new(),
        gone: AtomicBool::new(false),
        signal: signal.clone(),
    });
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    (
        Outbound {
            id,
            shared: shared.clone(),
        },
        OutboundReceiver { shared, signal },
    )
}

impl Outbound {
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Queues a frame. Returns `false` when the connection is gone or has
    /// just been closed for reading too slowly.
    pub fn push(&self, frame: Frame) -> bool {
        if !self.is_open() {
            return false;
        }
        let mut queue = self.shared.queue.lock().expect("outbound lock");
        if queue.len() >= self.shared.capacity {
            drop(queue);
            self.shared.signal.close(CLOSE_TOO_SLOW);
            return false;
        }
        let was_empty = queue.is_empty();
        queue.push_back(frame);
        drop(queue);
        // The writer takes everything queued at once, so only the first
        // frame after it emptied the queue needs to wake it.
        if was_empty {
            self.shared.ready.notify_one();
        }
        true
    }

    pub fn close(&self, code: u16) {
        self.shared.signal.close(code);
    }

    /// Whether this queue was closed because its reader fell behind.
    pub fn is_closed_for_slowness(&self) -> bool {
        self.shared.signal.code() == Some(CLOSE_TOO_SLOW)
    }

    pub fn is_open(&self) -> bool {
        self.shared.signal.code().is_none() && !self.shared.gone.load(Ordering::Acquire)
    }
}

impl OutboundReceiver {
    /// Waits until a frame is queued, then moves every queued frame, in
    /// order, to the end of `batch`. Cancel-safe: a frame is either moved or
    /// still queued.
    pub async fn next_batch(&mut self, batch: &mut VecDeque<Frame>) {
        loop {
            // Registered before looking, so a push in between still wakes it.
            let ready = self.shared.ready.notified();
            {
                let mut queue = self.shared.queue.lock().expect("outbound lock");
                if !queue.is_empty() {
                    // Leaves an empty deque that has allocated nothing: a
                    // burst's buffer does not stay with an idle connection.
                    let taken = std::mem::take(&mut *queue);
                    if batch.is_empty() {
                        *batch = taken;
                    } else {
                        batch.extend(taken);
                    }
                    return;
                }
            }
            ready.await;
        }
    }
}

impl Drop for OutboundReceiver {
    fn drop(&mut self) {
        self.shared.gone.store(true, Ordering::Release);
        self.shared.queue.lock().expect("outbound lock").clear();
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
        let mut batch = VecDeque::new();
        rx.next_batch(&mut batch).await;
        assert_eq!(batch, ["a", "b"]);
    }

    #[tokio::test]
    async fn the_writer_gets_every_frame_in_order_in_batches() {
        let (out, mut rx) = channel(1024);
        let sender = tokio::spawn(async move {
            for i in 0..1000u32 {
                assert!(out.push(i.to_string().into()));
                if i % 7 == 0 {
                    tokio::task::yield_now().await;
                }
            }
            out
        });
        let mut got = Vec::new();
        let mut batch = VecDeque::new();
        while got.len() < 1000 {
            tokio::time::timeout(
                std::time::Duration::from_secs(10),
                rx.next_batch(&mut batch),
            )
            .await
            .expect("a queued frame wakes the writer");
            got.extend(batch.drain(..));
        }
        let want: Vec<Frame> = (0..1000u32).map(|i| i.to_string().into()).collect();
        assert_eq!(got, want);
        let out = sender.await.unwrap();
        drop(rx);
        assert!(!out.is_open(), "the writer is gone");
        assert!(!out.push("late".into()));
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
