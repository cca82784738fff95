//! The bounded queue from the actors to one connection's socket writer.
//!
//! Frames are serialized once and shared (`Bytes`, reference counted) by every connection
//! they go to. A connection whose queue is full reads too slowly to keep up:
//! it is closed with 1013 rather than let memory grow; the client reconnects
//! and syncs, and loses nothing.
//!
//! The queue is bounded twice: in frames (`--outbound-queue`) and in bytes
//! (`--outbound-bytes`). Frames alone do not bound memory: a client that
//! never reads and keeps asking for history gets replies of up to a MiB
//! each, and 1,024 of them held for it would be a GiB.

use std::collections::vec_deque::Drain;
use std::collections::VecDeque;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

/// One serialized server frame.
pub type Frame = bytes::Bytes;

/// WebSocket close code for a client that reads too slowly.
pub const CLOSE_TOO_SLOW: u16 = 1013;
/// WebSocket close code for a node going away.
pub const CLOSE_GOING_AWAY: u16 = 1001;
/// WebSocket close code for a node that cannot serve the connection.
pub const CLOSE_INTERNAL: u16 = 1011;

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// Why and whether a connection is to be closed.
#[derive(Default)]
struct CloseSignal {
    code: AtomicU16,
    notify: Notify,
}

impl CloseSignal {
    /// Asks the writer to close with `code`; the first code asked wins.
    /// Says whether this was the first.
    fn close(&self, code: u16) -> bool {
        let first = self
            .code
            .compare_exchange(0, code, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        if first {
            // Every waiter: the writer and the reader may both wait.
            self.notify.notify_waiters();
        }
        first
    }

    /// The close code asked for, if any.
    fn code(&self) -> Option<u16> {
        match self.code.load(Ordering::Acquire) {
            0 => None,
            code => Some(code),
        }
    }

    /// Resolves once a close is asked for.
    async fn closed(&self) -> u16 {
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
    /// A plain deque under a lock rather than a channel: it allocates
    /// nothing until a frame comes, and afterwards keeps at most
    /// [`SPARE_KEPT`] slots, as the writer's spare deque does.
    queue: Mutex<Queue>,
    limits: Limits,
    /// Wakes the writer when the queue stops being empty, a ping is asked
    /// for, or a close.
    ready: Notify,
    /// A ping is asked for.
    ping: AtomicBool,
    /// Set, under the queue's lock, when the writer is gone: nothing queued
    /// would be sent.
    gone: AtomicBool,
    signal: CloseSignal,
}

#[derive(Default)]
struct Queue {
    /// Frames not yet taken by the writer.
    frames: VecDeque<Frame>,
    /// Bytes of the frames not yet taken.
    bytes: usize,
    /// Frames the writer took in its last batch: they count against the
    /// capacity until it asks for the next batch, by which time it has
    /// written them.
    taken: usize,
    /// Bytes of the frames taken in the last batch.
    taken_bytes: usize,
    /// The payload of the client's last ping, not yet answered.
    pong: Option<Frame>,
}

/// Why a frame was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The queue was full: this push closed the connection with 1013.
    TooSlow,
    /// The connection is closed, or gone, already.
    Closed,
}

/// The sending side, held by the connection and the directory.
#[derive(Clone)]
pub struct Outbound {
    id: u64,
    shared: Arc<Shared>,
}

/// The receiving side, held by the socket writer.
pub struct OutboundReceiver {
    shared: Arc<Shared>,
    /// The last batch's deque, emptied by the writer: swapped with the
    /// queue's at the next batch, so a connection that gets a frame at a
    /// time allocates nothing per frame.
    spare: VecDeque<Frame>,
}

/// What the socket writer is to do next.
#[derive(Debug)]
pub enum Next<'a> {
    /// Answer the client's last ping with `pong`, if there is one, then
    /// write `frames` (perhaps none), all at once.
    Frames {
        pong: Option<Frame>,
        frames: Drain<'a, Frame>,
    },
    /// Send a ping.
    Ping,
    /// Send a close frame with this code, and stop.
    Close(u16),
}

/// Largest spare deque kept between batches, in frames: a burst's buffer
/// is not kept for the rest of the connection, and a connection that has
/// had traffic and gone quiet keeps two small deques.
const SPARE_KEPT: usize = 4;

/// How much one connection's queue may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Frames queued or being written.
    pub frames: usize,
    /// Bytes of the frames queued or being written.
    pub bytes: usize,
}

/// `--outbound-bytes` by default: 8 MiB.
pub const DEFAULT_OUTBOUND_BYTES: usize = 8 << 20;

impl Limits {
    /// Whether a frame of `len` bytes may join `frames` frames of `bytes`
    /// bytes already held. A frame that comes to an empty queue always
    /// may, however large: what bounds a single frame is the reply bound.
    pub fn admit(&self, frames: usize, bytes: usize, len: usize) -> bool {
        frames == 0 || (frames < self.frames && bytes.saturating_add(len) <= self.bytes)
    }
}

/// A queue of at most `capacity` frames (and [`DEFAULT_OUTBOUND_BYTES`]).
pub fn channel(capacity: usize) -> (Outbound, OutboundReceiver) {
    bounded(Limits {
        frames: capacity,
        bytes: DEFAULT_OUTBOUND_BYTES,
    })
}

/// A queue within `limits`.
pub fn bounded(limits: Limits) -> (Outbound, OutboundReceiver) {
    let shared = Arc::new(Shared {
        queue: Mutex::default(),
        limits: Limits {
            frames: limits.frames.max(1),
            bytes: limits.bytes,
        },
        ready: Notify::new(),
        ping: AtomicBool::new(false),
        gone: AtomicBool::new(false),
        signal: CloseSignal::default(),
    });
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    (
        Outbound {
            id,
            shared: shared.clone(),
        },
        OutboundReceiver {
            shared,
            spare: VecDeque::new(),
        },
    )
}

impl Outbound {
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Queues a frame. Returns `false` when the connection is gone or has
    /// just been closed for reading too slowly.
    pub fn push(&self, frame: Frame) -> bool {
        self.try_push(frame).is_ok()
    }

    /// Queues a frame, or says why not: [`Refused::TooSlow`] only to the
    /// push that found the queue full and closed it (count closes by it).
    pub fn try_push(&self, frame: Frame) -> Result<(), Refused> {
        if self.shared.signal.code().is_some() {
            return Err(Refused::Closed);
        }
        let mut queue = self.shared.queue.lock().expect("outbound lock");
        // Under the lock: the writer's end clears the queue under it too.
        if self.shared.gone.load(Ordering::Acquire) {
            return Err(Refused::Closed);
        }
        let held = queue.frames.len() + queue.taken;
        let held_bytes = queue.bytes + queue.taken_bytes;
        if !self.shared.limits.admit(held, held_bytes, frame.len()) {
            drop(queue);
            return Err(match self.shared.signal.close(CLOSE_TOO_SLOW) {
                true => {
                    self.shared.ready.notify_one();
                    Refused::TooSlow
                }
                false => Refused::Closed,
            });
        }
        let was_empty = queue.frames.is_empty();
        queue.bytes += frame.len();
        queue.frames.push_back(frame);
        drop(queue);
        // The writer takes everything queued at once, so only the first
        // frame after it emptied the queue needs to wake it.
        if was_empty {
            self.shared.ready.notify_one();
        }
        Ok(())
    }

    /// Asks the writer to send a close frame with `code` and stop; frames
    /// still queued are not sent. The first code asked wins.
    pub fn close(&self, code: u16) {
        if self.shared.signal.close(code) {
            self.shared.ready.notify_one();
        }
    }

    /// Asks the writer to answer the client's ping. Only the latest ping
    /// is answered, as the WebSocket protocol allows.
    pub fn pong(&self, payload: Frame) {
        self.shared.queue.lock().expect("outbound lock").pong = Some(payload);
        self.shared.ready.notify_one();
    }

    /// Asks the writer to send a ping.
    pub fn ping(&self) {
        self.shared.ping.store(true, Ordering::Release);
        self.shared.ready.notify_one();
    }

    /// Whether this queue was closed because its reader fell behind.
    pub fn is_closed_for_slowness(&self) -> bool {
        self.shared.signal.code() == Some(CLOSE_TOO_SLOW)
    }

    pub fn is_open(&self) -> bool {
        self.shared.signal.code().is_none() && !self.shared.gone.load(Ordering::Acquire)
    }

    /// Resolves once a close is asked for, with its code: the socket's
    /// reader stops serving the client then.
    pub fn closed(&self) -> impl Future<Output = u16> + Send + 'static {
        closed(&self.shared)
    }
}

fn closed(shared: &Arc<Shared>) -> impl Future<Output = u16> + Send + 'static {
    let shared = shared.clone();
    async move { shared.signal.closed().await }
}

impl OutboundReceiver {
    /// Waits for the writer's next job: a close, if one is asked for;
    /// otherwise a ping, if one is asked for; otherwise every queued frame,
    /// in order, after the answer to the client's last ping if one is due.
    ///
    /// Calling it again says the last batch is written: until then its
    /// frames count against the capacity, so a writer stuck on a stalled
    /// socket still fills the queue to its limit, not twice it.
    /// Cancel-safe: a frame is either returned or still queued (frames of
    /// a batch dropped unread are dropped with it).
    pub async fn next(&mut self) -> Next<'_> {
        self.spare.clear();
        if self.spare.capacity() > SPARE_KEPT {
            self.spare = VecDeque::new();
        }
        let pong = loop {
            // A wake-up given in between is kept by the Notify for this.
            let ready = self.shared.ready.notified();
            if let Some(code) = self.shared.signal.code() {
                return Next::Close(code);
            }
            {
                let mut queue = self.shared.queue.lock().expect("outbound lock");
                queue.taken = 0;
                queue.taken_bytes = 0;
                // Before the frames: a writer that is always a little
                // behind still pings, and a client that only listens
                // still gets the chance to show it is alive.
                if self.shared.ping.swap(false, Ordering::AcqRel) {
                    return Next::Ping;
                }
                // With the frames, not before them: a client that pings
                // without pause must not hold its own frames back.
                if queue.pong.is_some() || !queue.frames.is_empty() {
                    std::mem::swap(&mut queue.frames, &mut self.spare);
                    queue.taken = self.spare.len();
                    queue.taken_bytes = std::mem::take(&mut queue.bytes);
                    break queue.pong.take();
                }
            }
            ready.await;
        };
        Next::Frames {
            pong,
            frames: self.spare.drain(..),
        }
    }

    /// Resolves once a close is asked for, with its code. Holds no borrow
    /// of the receiver, so a writer stalled on a socket can wait on it
    /// beside its write.
    pub fn closed(&self) -> impl Future<Output = u16> + Send + 'static {
        closed(&self.shared)
    }
}

impl Drop for OutboundReceiver {
    fn drop(&mut self) {
        let mut queue = self.shared.queue.lock().expect("outbound lock");
        self.shared.gone.store(true, Ordering::Release);
        // Its buffer too: senders (a conversation's kept devices) may hold
        // this queue a while after the connection is gone.
        queue.frames = VecDeque::new();
        queue.bytes = 0;
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// How long a test waits for something that should come at once.
    pub(crate) const WAIT: std::time::Duration = std::time::Duration::from_secs(10);

    /// The next batch, as a list; fails rather than waits forever.
    pub(crate) async fn batch(rx: &mut OutboundReceiver) -> Vec<Frame> {
        match tokio::time::timeout(WAIT, rx.next()).await {
            Ok(Next::Frames { frames, .. }) => frames.collect(),
            Ok(other) => panic!("frames expected, got {other:?}"),
            Err(_) => panic!("no frames came"),
        }
    }

    /// Awaits a task, failing rather than waiting forever.
    async fn joined<T>(task: tokio::task::JoinHandle<T>) -> T {
        tokio::time::timeout(WAIT, task)
            .await
            .expect("the task never ended")
            .unwrap()
    }

    #[tokio::test]
    async fn a_full_queue_closes_with_1013() {
        let (out, mut rx) = channel(2);
        assert!(out.push("a".into()));
        assert!(out.push("b".into()));
        assert!(!out.push("c".into()), "third frame does not fit");
        assert_eq!(rx.closed().await, CLOSE_TOO_SLOW);
        assert!(!out.push("d".into()));
        assert!(matches!(rx.next().await, Next::Close(CLOSE_TOO_SLOW)));
    }

    #[test]
    fn a_frame_is_admitted_within_both_bounds_or_to_an_empty_queue() {
        let limits = Limits {
            frames: 3,
            bytes: 100,
        };
        assert!(limits.admit(0, 0, 1000), "an empty queue takes any frame");
        assert!(limits.admit(1, 60, 40));
        assert!(!limits.admit(1, 60, 41), "over the bytes");
        assert!(!limits.admit(3, 3, 1), "over the frames");
        assert!(limits.admit(2, 0, 100));
        assert!(!limits.admit(1, usize::MAX, 1), "no overflow");
    }

    #[tokio::test]
    async fn a_queue_over_its_bytes_closes_with_1013() {
        let (out, mut rx) = bounded(Limits {
            frames: 100,
            bytes: 10,
        });
        assert!(out.push("12345".into()));
        assert!(out.push("12345".into()));
        // Taken by the writer, not yet written: still held.
        assert_eq!(batch(&mut rx).await.len(), 2);
        assert!(!out.push("1".into()), "ten bytes held already");
        assert_eq!(rx.closed().await, CLOSE_TOO_SLOW);
        assert!(out.is_closed_for_slowness());
    }

    #[tokio::test]
    async fn a_large_frame_to_an_empty_queue_is_sent() {
        let (out, mut rx) = bounded(Limits {
            frames: 100,
            bytes: 10,
        });
        let large = Frame::from(vec![b'x'; 1000]);
        assert!(out.push(large.clone()));
        assert_eq!(batch(&mut rx).await, [large]);
        // Asking for the next batch says it is written: room again.
        let next = tokio::spawn(async move { batch(&mut rx).await });
        let deadline = tokio::time::Instant::now() + WAIT;
        while out.shared.queue.lock().unwrap().taken_bytes != 0 {
            assert!(tokio::time::Instant::now() < deadline);
            tokio::task::yield_now().await;
        }
        assert!(out.push("small".into()));
        assert_eq!(joined(next).await, ["small"]);
        assert!(!out.is_closed_for_slowness());
    }

    #[tokio::test]
    async fn a_close_wakes_the_writer_and_the_reader_both_waiting() {
        let (out, rx) = channel(2);
        let writer = tokio::spawn(rx.closed());
        let reader = tokio::spawn(out.closed());
        // Both are waiting before the close comes.
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert!(!writer.is_finished() && !reader.is_finished());
        out.close(CLOSE_GOING_AWAY);
        assert_eq!(joined(writer).await, CLOSE_GOING_AWAY);
        assert_eq!(joined(reader).await, CLOSE_GOING_AWAY);
    }

    #[tokio::test]
    async fn frames_being_written_count_against_the_capacity() {
        let (out, mut rx) = channel(3);
        assert!(out.push("a".into()));
        assert!(out.push("b".into()));
        assert_eq!(batch(&mut rx).await.len(), 2);
        // The writer is still writing a and b: one more fits, not three.
        assert!(out.push("c".into()));
        assert!(!out.push("d".into()), "a, b and c fill the queue");
        assert_eq!(rx.closed().await, CLOSE_TOO_SLOW);
    }

    #[tokio::test]
    async fn once_the_batch_is_written_its_room_is_free_again() {
        let (out, mut rx) = channel(2);
        assert!(out.push("a".into()));
        assert!(out.push("b".into()));
        batch(&mut rx).await;
        // Asking for the next batch says a and b are written.
        let next = tokio::spawn(async move {
            let batch = batch(&mut rx).await;
            (rx, batch)
        });
        tokio::task::yield_now().await;
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        while out.shared.queue.lock().unwrap().taken != 0 {
            assert!(tokio::time::Instant::now() < deadline);
            tokio::task::yield_now().await;
        }
        assert!(out.push("c".into()));
        assert!(out.push("d".into()));
        let (_rx, batch) = joined(next).await;
        assert_eq!(batch, ["c", "d"]);
        assert!(out.is_open(), "never closed for slowness");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
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
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        // A fast timer keeps cancelling the wait: nothing may be lost.
        let mut tick = tokio::time::interval(std::time::Duration::from_micros(50));
        while got.len() < 1000 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "frames went missing"
            );
            tokio::select! {
                next = rx.next() => match next {
                    Next::Frames { frames, .. } => got.extend(frames),
                    other => panic!("frames expected, got {other:?}"),
                },
                _ = tick.tick() => {}
            }
        }
        let want: Vec<Frame> = (0..1000u32).map(|i| i.to_string().into()).collect();
        assert_eq!(got, want);
        let out = joined(sender).await;
        drop(rx);
        assert!(!out.is_open(), "the writer is gone");
        assert!(!out.push("late".into()));
    }

    #[tokio::test]
    async fn a_bursts_buffer_is_not_kept() {
        let (out, mut rx) = channel(1024);
        for i in 0..200u32 {
            assert!(out.push(i.to_string().into()));
        }
        assert_eq!(batch(&mut rx).await.len(), 200);
        for _ in 0..3 {
            assert!(out.push("one".into()));
            assert_eq!(batch(&mut rx).await, ["one"]);
        }
        let queued = out.shared.queue.lock().unwrap().frames.capacity();
        assert!(queued <= SPARE_KEPT, "queue keeps {queued}");
        assert!(
            rx.spare.capacity() <= SPARE_KEPT,
            "spare keeps {}",
            rx.spare.capacity()
        );
    }

    #[tokio::test]
    async fn a_pong_wakes_the_writer_and_answers_the_latest_ping_only() {
        let (out, mut rx) = channel(8);
        let waiting = tokio::spawn(async move {
            let got = match rx.next().await {
                Next::Frames { pong, frames } => (pong, frames.count()),
                _ => (None, 0),
            };
            (rx, got)
        });
        tokio::task::yield_now().await;
        out.pong("first".into());
        let (mut rx, got) = joined(waiting).await;
        assert_eq!(got, (Some("first".into()), 0));
        out.pong("older".into());
        out.pong("latest".into());
        assert!(out.push("frame".into()));
        // The answer goes with the frames, not ahead of them.
        let (pong, frames) = match rx.next().await {
            Next::Frames { pong, frames } => (pong, frames.collect::<Vec<_>>()),
            other => panic!("frames expected, got {other:?}"),
        };
        assert_eq!(pong.as_deref(), Some(&b"latest"[..]));
        assert_eq!(frames, ["frame"]);
    }

    #[tokio::test]
    async fn a_ping_or_a_close_wakes_the_writer() {
        let (out, mut rx) = channel(8);
        let waiting = tokio::spawn(async move {
            let got = matches!(rx.next().await, Next::Ping);
            (rx, got)
        });
        tokio::task::yield_now().await;
        out.ping();
        let (mut rx, pinged) = joined(waiting).await;
        assert!(pinged, "a ping was asked for");
        let waiting = tokio::spawn(async move { matches!(rx.next().await, Next::Close(1000)) });
        tokio::task::yield_now().await;
        out.close(1000);
        assert!(joined(waiting).await, "the close woke the writer");
    }

    #[tokio::test]
    async fn a_ping_is_not_held_back_by_a_queue_that_never_empties() {
        let (out, mut rx) = channel(8);
        assert!(out.push("a".into()));
        out.ping();
        assert!(out.push("b".into()));
        assert!(matches!(rx.next().await, Next::Ping));
        assert_eq!(batch(&mut rx).await, ["a", "b"]);
        // Asked for once, sent once.
        assert!(out.push("c".into()));
        assert_eq!(batch(&mut rx).await, ["c"]);
    }

    #[tokio::test]
    async fn a_close_goes_before_queued_frames() {
        let (out, mut rx) = channel(8);
        assert!(out.push("a".into()));
        out.close(CLOSE_GOING_AWAY);
        assert!(matches!(rx.next().await, Next::Close(CLOSE_GOING_AWAY)));
    }

    #[tokio::test]
    async fn the_first_close_code_wins() {
        let (out, rx) = channel(2);
        out.close(CLOSE_GOING_AWAY);
        out.close(CLOSE_TOO_SLOW);
        assert_eq!(rx.closed().await, CLOSE_GOING_AWAY);
        assert!(!out.is_open());
    }
}
