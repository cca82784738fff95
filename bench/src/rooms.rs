//! Rooms: C connections in G groups of S members. One member of each group
//! publishes at a fixed rate (open loop: it does not wait for replies); each
//! message carries its send time, and every member's connection records
//! send-to-deliver latency. Bounded by `--seconds`.
//!
//! A [`Session`] connects everyone once and can then run several
//! measurements ([`Session::step`]) at different rates, as `--sweep` does.
//! The generator runs on the same cores as the server, so its receive path
//! finds bodies in the frame bytes in place and allocates nothing, and
//! each step reports the generator's own CPU per delivery.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use futures_util::stream::SplitSink;
use futures_util::{SinkExt, Stream, StreamExt};
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::{self, protocol::WebSocketConfig, Message};

use crate::process::{own_cpu_seconds, Server};
use crate::report::{histogram, Latency};
use crate::wire::{self, Publish, PROBE};
use crate::{progress, ServerArgs, Target};

/// The secret the bench starts Tidings with, to sign its users' tokens.
pub(crate) const SECRET: &str = "tidings-bench-secret-of-at-least-32-bytes";

/// How long in-flight messages may take to arrive after the last send.
const DRAIN: Duration = Duration::from_secs(5);

/// Each connection's read buffer.
const READ_BUFFER: usize = 8 * 1024;

/// Latency histograms are sharded so readers on different threads seldom
/// wait for each other, without one histogram per connection.
const SHARDS: usize = 16;

#[derive(Debug, Clone, clap::Args)]
pub(crate) struct Args {
    #[command(flatten)]
    pub(crate) server: ServerArgs,
    /// Groups (rooms).
    #[arg(long, default_value_t = 100)]
    pub(crate) groups: usize,
    /// Members per group; connections = groups × members.
    #[arg(long, default_value_t = 20)]
    pub(crate) members: usize,
    /// Messages per second published in total (with --sweep: the first
    /// rate tried).
    #[arg(long, default_value_t = 2000)]
    pub(crate) rate: u64,
    /// How long to publish (with --sweep: per step).
    #[arg(long, default_value_t = 10)]
    pub(crate) seconds: u64,
    #[command(flatten)]
    pub(crate) sweep: crate::sweep::SweepArgs,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct RoomsResult {
    pub(crate) target: Target,
    pub(crate) connections: usize,
    pub(crate) rate: u64,
    pub(crate) sent: u64,
    /// Deliveries expected: every member, the sender included, gets each
    /// message.
    pub(crate) expected: u64,
    pub(crate) delivered: u64,
    pub(crate) lost: u64,
    pub(crate) delivered_per_sec: f64,
    pub(crate) latency: Latency,
    /// How late the senders were against their schedule, at the 99th
    /// percentile: above a millisecond or so the generator is falling
    /// behind, and the offered rate is not what was asked.
    pub(crate) send_lag_p99_ms: f64,
    pub(crate) server_cpu_seconds: f64,
    pub(crate) server_cpu_us_per_delivery: f64,
    pub(crate) server_peak_rss_mib: f64,
    /// The load generator's own CPU over the same window: it shares the
    /// cores with the server, so a cheap generator leaves more to measure.
    pub(crate) generator_cpu_seconds: f64,
    pub(crate) generator_cpu_us_per_delivery: f64,
}

pub(crate) fn token(user: &str) -> String {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
        + 3600;
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &serde_json::json!({"sub": user, "exp": exp}),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("HS256 signing")
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Creates the groups and returns each group's room or conversation id.
async fn setup(args: &Args, addrs: &[String]) -> anyhow::Result<Vec<String>> {
    let mut rooms = Vec::with_capacity(args.groups);
    for g in 0..args.groups {
        match args.server.target {
            Target::Baseline | Target::NodeWs | Target::Nats => rooms.push(format!("room{g}")),
            Target::Tidings | Target::TidingsCluster => {
                use tidings_protocol::client::{Client, ClientConfig};
                let creator = format!("u{}", g * args.members);
                let addr = &addrs[(g * args.members) % addrs.len()];
                let (client, _) =
                    Client::connect(ClientConfig::new([format!("ws://{addr}")], token(&creator)));
                let members = (1..args.members)
                    .map(|m| format!("u{}", g * args.members + m).try_into())
                    .collect::<Result<Vec<_>, _>>()?;
                let conv = client.create(members, None).await?;
                client.close();
                rooms.push(conv.to_string());
            }
        }
    }
    Ok(rooms)
}

/// Starts the server, measures one step at `--rate`, stops the server.
pub(crate) async fn run(args: Args) -> anyhow::Result<RoomsResult> {
    let server = Server::start(&args.server, &["--auth-secret", SECRET]).await?;
    let result = measure(&args, &server).await;
    server.stop().await;
    result
}

/// One rooms measurement at `--rate` on a running server.
pub(crate) async fn measure(args: &Args, server: &Server) -> anyhow::Result<RoomsResult> {
    let mut session = Session::open(args, server).await?;
    let result = match session.warm_up(server, args.rate).await {
        Ok(()) => session.step(server, args.rate, args.seconds).await,
        Err(e) => Err(e),
    };
    session.close().await;
    result
}

/// What the readers share with the run: counters and latencies.
struct Shared {
    start: Instant,
    /// Send times (µs since `start`) before this belong to an earlier step.
    step_start_us: AtomicU64,
    /// This step's deliveries.
    delivered: Arc<AtomicU64>,
    /// Every body received, of any step: settled once this stops moving.
    arrived: AtomicU64,
    /// Readers whose connection is still open.
    open: AtomicUsize,
    /// Per group, the members that have received a probe.
    probed: Vec<AtomicUsize>,
    latencies: Vec<Mutex<Histogram<u64>>>,
}

impl Shared {
    fn now_us(&self) -> u64 {
        self.start.elapsed().as_micros() as u64
    }

    /// This step's latencies, merged, leaving the shards empty.
    fn take_latencies(&self) -> Histogram<u64> {
        let mut all = histogram();
        for shard in &self.latencies {
            let mut shard = shard.lock().expect("latency shard");
            all.add(&*shard).expect("same bounds");
            shard.reset();
        }
        all
    }
}

/// One connection's receive side.
struct Reader {
    shared: Arc<Shared>,
    target: Target,
    group: usize,
    shard: usize,
    seen_probe: bool,
    /// NATS only: the start of a message the next frame completes.
    carry: Vec<u8>,
}

impl Reader {
    async fn run<S>(mut self, mut stream: S)
    where
        S: Stream<Item = Result<Message, tungstenite::Error>> + Unpin,
    {
        while let Some(Ok(message)) = stream.next().await {
            match &message {
                Message::Text(text) => self.frame(text.as_bytes()),
                Message::Binary(data) => self.frame(data),
                _ => {}
            }
        }
        self.shared.open.fetch_sub(1, Ordering::Relaxed);
    }

    fn frame(&mut self, data: &[u8]) {
        if self.target != Target::Nats {
            if let Some(body) = wire::json_body(self.target, data) {
                self.body(body);
            }
            return;
        }
        let mut carry = std::mem::take(&mut self.carry);
        if carry.is_empty() {
            let used = wire::nats_bodies(data, |body| self.body(body));
            carry.extend_from_slice(&data[used..]);
        } else {
            carry.extend_from_slice(data);
            let used = wire::nats_bodies(&carry, |body| self.body(body));
            carry.drain(..used);
        }
        self.carry = carry;
    }

    fn body(&mut self, body: &[u8]) {
        let shared = &*self.shared;
        shared.arrived.fetch_add(1, Ordering::Relaxed);
        if body == PROBE {
            if !self.seen_probe {
                self.seen_probe = true;
                shared.probed[self.group].fetch_add(1, Ordering::Relaxed);
            }
            return;
        }
        let Some(sent_us) = wire::parse_decimal(body) else {
            return;
        };
        if sent_us < shared.step_start_us.load(Ordering::Relaxed) {
            return;
        }
        let latency = shared.now_us().saturating_sub(sent_us).max(1);
        let _ = shared.latencies[self.shard]
            .lock()
            .expect("latency shard")
            .record(latency);
        shared.delivered.fetch_add(1, Ordering::Relaxed);
    }
}

/// One member of each group, publishing.
struct Sender {
    sink: SplitSink<Socket, Message>,
    publish: Publish,
}

/// Every connection open, every member subscribed: ready for steps.
pub(crate) struct Session {
    target: Target,
    members: usize,
    connections: usize,
    shared: Arc<Shared>,
    senders: Vec<Sender>,
    readers: Vec<JoinHandle<()>>,
}

impl Session {
    /// Creates the groups, opens every connection and waits until every
    /// member has received a probe from its group.
    pub(crate) async fn open(args: &Args, server: &Server) -> anyhow::Result<Session> {
        anyhow::ensure!(
            args.groups > 0 && args.members > 0,
            "need at least one group of one member"
        );
        let target = args.server.target;
        let rooms = setup(args, &server.addrs)
            .await
            .context("setting up groups")?;
        let connections = args.groups * args.members;
        let shared = Arc::new(Shared {
            start: Instant::now(),
            step_start_us: AtomicU64::new(u64::MAX),
            delivered: Arc::default(),
            arrived: AtomicU64::new(0),
            open: AtomicUsize::new(0),
            probed: (0..args.groups).map(|_| AtomicUsize::new(0)).collect(),
            latencies: (0..SHARDS).map(|_| Mutex::new(histogram())).collect(),
        });
        let mut session = Session {
            target,
            members: args.members,
            connections,
            shared,
            senders: Vec::with_capacity(args.groups),
            readers: Vec::with_capacity(connections),
        };
        // tungstenite zeroes its whole read buffer before every read: at the
        // default 128 KiB that was most of the generator's CPU. Frames here
        // are small. No Nagle: a send must not wait for the last one's ack.
        let config = WebSocketConfig::default().read_buffer_size(READ_BUFFER);
        // Connect everyone in batches, so the accept backlog is never overrun.
        let bar = progress::connecting(connections);
        for batch in (0..connections).collect::<Vec<_>>().chunks(200) {
            let opened = futures_util::future::join_all(batch.iter().map(|&i| {
                // Spread over the nodes of a cluster.
                let addr = &server.addrs[i % server.addrs.len()];
                let url = wire::url(target, addr, &format!("u{i}"));
                async move {
                    let opened = tokio_tungstenite::connect_async_with_config(
                        url.as_str(),
                        Some(config),
                        true,
                    );
                    (i, opened.await)
                }
            }))
            .await;
            for (i, socket) in opened {
                let (mut socket, _) = socket.with_context(|| format!("connecting u{i}"))?;
                let group = i / args.members;
                let room = &rooms[group];
                if let Some(join) = wire::join_frame(target, room) {
                    socket.send(Message::Text(join.into())).await?;
                }
                let reader = Reader {
                    shared: session.shared.clone(),
                    target,
                    group,
                    shard: i % SHARDS,
                    seen_probe: false,
                    carry: Vec::new(),
                };
                session.shared.open.fetch_add(1, Ordering::Relaxed);
                // Only senders split their socket: a split stream takes a
                // lock on every poll.
                let read = if i % args.members == 0 {
                    let (sink, stream) = socket.split();
                    session.senders.push(Sender {
                        sink,
                        publish: Publish::new(target, room),
                    });
                    tokio::spawn(reader.run(stream))
                } else {
                    tokio::spawn(reader.run(socket))
                };
                session.readers.push(read);
                bar.inc(1);
            }
        }
        bar.finish_and_clear();
        session.probe().await?;
        Ok(session)
    }

    /// Every connection is subscribed once it has received a probe from
    /// its group: probe the groups that are not complete until all are,
    /// for at most 30 seconds.
    async fn probe(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let mut waiting = false;
            for (group, sender) in self.senders.iter_mut().enumerate() {
                if self.shared.probed[group].load(Ordering::Relaxed) < self.members {
                    waiting = true;
                    sender
                        .sink
                        .feed(Message::Text(sender.publish.frame(PROBE)))
                        .await?;
                }
            }
            if !waiting {
                return Ok(());
            }
            for sender in &mut self.senders {
                sender.sink.flush().await?;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "not every connection was subscribed in time"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Publishes at `rate` messages per second in total for `seconds`,
    /// waits for what is in flight, and reports.
    pub(crate) async fn step(
        &mut self,
        server: &Server,
        rate: u64,
        seconds: u64,
    ) -> anyhow::Result<RoomsResult> {
        anyhow::ensure!(rate > 0 && seconds > 0, "need a rate and a duration");
        let shared = self.shared.clone();
        shared
            .step_start_us
            .store(shared.now_us(), Ordering::Relaxed);
        shared.delivered.store(0, Ordering::Relaxed);
        drop(shared.take_latencies());
        let cpu_before = server.cpu_seconds()?;
        let own_cpu_before = own_cpu_seconds()?;
        let publish_start = Instant::now();
        let duration = Duration::from_secs(seconds);
        let senders = std::mem::take(&mut self.senders);
        let interval = Duration::from_secs_f64(senders.len() as f64 / rate as f64);
        let count = senders.len() as u32;
        let sent = Arc::new(AtomicU64::new(0));
        let progress =
            progress::Publishing::start(rate * seconds, sent.clone(), shared.delivered.clone());
        let publishers: Vec<_> = senders
            .into_iter()
            .enumerate()
            .map(|(s, mut sender)| {
                let (sent, shared) = (sent.clone(), shared.clone());
                // Spread the senders' schedules across one interval.
                let offset = interval * s as u32 / count;
                tokio::spawn(async move {
                    let mut lag = histogram();
                    let mut digits = [0; 20];
                    let mut ok = true;
                    for k in 0u32.. {
                        let due = publish_start + offset + interval * k;
                        if due.duration_since(publish_start) >= duration {
                            break;
                        }
                        tokio::time::sleep_until(due.into()).await;
                        let _ = lag.record(due.elapsed().as_micros().max(1) as u64);
                        let body = wire::decimal(shared.now_us(), &mut digits);
                        let frame = sender.publish.frame(body);
                        if sender.sink.send(Message::Text(frame)).await.is_err() {
                            ok = false;
                            break;
                        }
                        sent.fetch_add(1, Ordering::Relaxed);
                    }
                    (sender, lag, ok)
                })
            })
            .collect();
        let mut lags = histogram();
        let mut senders_ok = true;
        for publisher in publishers {
            let (sender, lag, ok) = publisher.await?;
            self.senders.push(sender);
            lags.add(lag)?;
            senders_ok &= ok;
        }
        if !senders_ok {
            // Fewer sent than planned: a sweep counts the step as failed
            // and restarts the server; a single run shows it in `sent`.
            eprintln!("a sender's connection failed during the step");
        }
        let sent = sent.load(Ordering::Relaxed);
        let expected = sent * self.members as u64;
        let drain_deadline = Instant::now() + DRAIN;
        while shared.delivered.load(Ordering::Relaxed) < expected && Instant::now() < drain_deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        drop(progress);
        let elapsed = publish_start.elapsed().as_secs_f64();
        let cpu = server.cpu_seconds()? - cpu_before;
        let own_cpu = own_cpu_seconds()? - own_cpu_before;
        let got = shared.delivered.load(Ordering::Relaxed);
        let latencies = shared.take_latencies();
        Ok(RoomsResult {
            target: self.target,
            connections: self.connections,
            rate,
            sent,
            expected,
            delivered: got,
            lost: expected.saturating_sub(got),
            delivered_per_sec: got as f64 / elapsed,
            latency: Latency::of(&latencies),
            send_lag_p99_ms: lags.value_at_quantile(0.99) as f64 / 1000.0,
            server_cpu_seconds: cpu,
            server_cpu_us_per_delivery: cpu * 1e6 / got.max(1) as f64,
            server_peak_rss_mib: server.peak_rss_kib()? as f64 / 1024.0,
            generator_cpu_seconds: own_cpu,
            generator_cpu_us_per_delivery: own_cpu * 1e6 / got.max(1) as f64,
        })
    }

    /// Publishes for two seconds at up to 1,000 msg/s and forgets the
    /// figures: a fresh server's first second (lazy allocation, page faults,
    /// a first memtable) is not its steady state, and showed as a p99 ten
    /// times that of the steps after it.
    pub(crate) async fn warm_up(&mut self, server: &Server, rate: u64) -> anyhow::Result<()> {
        self.step(server, rate.min(1000), 2).await?;
        self.settle().await;
        Ok(())
    }

    /// Waits until nothing has arrived for half a second, for at most ten:
    /// false if messages still arrive then or a connection has closed,
    /// and the next step would start behind.
    pub(crate) async fn settle(&self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut last = self.shared.arrived.load(Ordering::Relaxed);
        while Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let now = self.shared.arrived.load(Ordering::Relaxed);
            if now == last {
                return self.shared.open.load(Ordering::Relaxed) == self.connections;
            }
            last = now;
        }
        false
    }

    /// Closes every connection.
    pub(crate) async fn close(self) {
        for reader in &self.readers {
            reader.abort();
        }
        for mut sender in self.senders {
            let _ = tokio::time::timeout(Duration::from_secs(1), sender.sink.close()).await;
        }
        for reader in self.readers {
            let _ = reader.await;
        }
    }
}
