//! Rooms: C connections in G groups of S members. One member of each group
//! publishes at a fixed rate (open loop: it does not wait for replies); each
//! message carries its send time, and every member's connection records
//! send-to-deliver latency. Bounded by `--seconds`.

use std::borrow::Cow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures_util::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;
use tokio_tungstenite::tungstenite::Message;

use crate::process::{own_cpu_seconds, Server};
use crate::report::{histogram, print, Latency};
use crate::{ServerArgs, Target};

/// The secret the bench starts Tidings with, to sign its users' tokens.
pub(crate) const SECRET: &str = "tidings-bench-secret";

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
    /// Messages per second published in total.
    #[arg(long, default_value_t = 2000)]
    pub(crate) rate: u64,
    /// How long to publish.
    #[arg(long, default_value_t = 10)]
    pub(crate) seconds: u64,
}

#[derive(Debug, Serialize)]
pub(crate) struct RoomsResult {
    pub(crate) target: Target,
    pub(crate) connections: usize,
    pub(crate) rate: u64,
    pub(crate) sent: u64,
    pub(crate) delivered: u64,
    pub(crate) lost: u64,
    pub(crate) delivered_per_sec: f64,
    pub(crate) latency: Latency,
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

#[derive(Deserialize)]
struct Delivery<'a> {
    #[serde(rename = "type", borrow)]
    frame: Cow<'a, str>,
    #[serde(default, borrow)]
    kind: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    body: Option<Cow<'a, str>>,
}

const PROBE: &str = "probe";

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(addr: &str, user: &str, target: Target) -> anyhow::Result<Socket> {
    let url = match target {
        Target::Tidings => format!("ws://{addr}/v1/ws?token={}", token(user)),
        Target::Baseline | Target::NodeWs | Target::Nats => format!("ws://{addr}/"),
    };
    let (socket, _) = tokio_tungstenite::connect_async(url.as_str()).await?;
    Ok(socket)
}

/// The frame that joins `room`, for the servers that need one.
fn join_frame(target: Target, room: &str) -> Option<String> {
    match target {
        Target::Tidings => None,
        Target::Baseline | Target::NodeWs => {
            Some(serde_json::json!({"type":"join","room":room}).to_string())
        }
        Target::Nats => Some(format!(
            "CONNECT {{\"verbose\":false,\"pedantic\":false}}\r\nSUB {room} 1\r\n"
        )),
    }
}

/// The frame that publishes `body` to `room`.
fn publish_frame(target: Target, room: &str, body: &str) -> String {
    match target {
        Target::Tidings => serde_json::json!({"type":"send","conv":room,"body":body}).to_string(),
        Target::Baseline | Target::NodeWs => {
            serde_json::json!({"type":"pub","room":room,"body":body}).to_string()
        }
        Target::Nats => format!("PUB {room} {}\r\n{body}\r\n", body.len()),
    }
}

/// The message bodies a received frame carries (NATS packs several).
fn bodies(target: Target, text: &str, out: &mut Vec<String>) {
    out.clear();
    if target == Target::Nats {
        let mut lines = text.split("\r\n");
        while let Some(line) = lines.next() {
            if line.starts_with("MSG ") {
                if let Some(payload) = lines.next() {
                    out.push(payload.to_owned());
                }
            }
        }
        return;
    }
    let Ok(frame) = serde_json::from_str::<Delivery>(text) else {
        return;
    };
    let is_message = match target {
        Target::Tidings => frame.frame == "event" && frame.kind.as_deref() == Some("message"),
        _ => frame.frame == "pub",
    };
    if let Some(body) = frame.body.filter(|_| is_message) {
        out.push(body.into_owned());
    }
}

/// Creates the groups and returns each group's room or conversation id.
async fn setup(args: &Args, addr: &str) -> anyhow::Result<Vec<String>> {
    let mut rooms = Vec::with_capacity(args.groups);
    for g in 0..args.groups {
        match args.server.target {
            Target::Baseline | Target::NodeWs | Target::Nats => rooms.push(format!("room{g}")),
            Target::Tidings => {
                use tidings_protocol::client::{Client, ClientConfig};
                let creator = format!("u{}", g * args.members);
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

pub(crate) async fn run(args: Args) -> anyhow::Result<()> {
    let server = Server::start(&args.server, &["--auth-secret", SECRET]).await?;
    let result = measure(&args, &server).await;
    server.stop().await;
    print("rooms", &result?);
    Ok(())
}

pub(crate) async fn measure(args: &Args, server: &Server) -> anyhow::Result<RoomsResult> {
    let target = args.server.target;
    let rooms = setup(args, &server.addr)
        .await
        .context("setting up groups")?;
    let connections = args.groups * args.members;
    let delivered = Arc::new(AtomicU64::new(0));
    let latencies = Arc::new(Mutex::new(histogram()));
    let probed = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let (stop, stopped) = tokio::sync::watch::channel(false);

    // Connect everyone in batches, so the accept backlog is never overrun.
    let mut senders = Vec::new();
    let mut readers = Vec::new();
    for batch in (0..connections).collect::<Vec<_>>().chunks(200) {
        let opened = futures_util::future::join_all(batch.iter().map(|&i| {
            let addr = server.addr.clone();
            async move { (i, connect(&addr, &format!("u{i}"), target).await) }
        }))
        .await;
        for (i, socket) in opened {
            let mut socket = socket.with_context(|| format!("connecting u{i}"))?;
            let room = &rooms[i / args.members];
            if let Some(join) = join_frame(target, room) {
                socket.send(Message::Text(join.into())).await?;
            }
            let (sink, mut stream) = socket.split();
            if i % args.members == 0 {
                senders.push((sink, room.clone()));
            }
            let delivered = delivered.clone();
            let latencies = latencies.clone();
            let probed = probed.clone();
            let mut stopped = stopped.clone();
            readers.push(tokio::spawn(async move {
                let mut local = histogram();
                let mut seen_probe = false;
                let mut found = Vec::new();
                loop {
                    let message = tokio::select! {
                        _ = stopped.changed() => break,
                        message = stream.next() => message,
                    };
                    let text = match message {
                        None | Some(Err(_)) => break,
                        Some(Ok(Message::Text(text))) => text.to_string(),
                        Some(Ok(Message::Binary(data))) => {
                            String::from_utf8_lossy(&data).into_owned()
                        }
                        Some(Ok(_)) => continue,
                    };
                    bodies(target, &text, &mut found);
                    for body in &found {
                        if body == PROBE {
                            if !seen_probe {
                                seen_probe = true;
                                probed.fetch_add(1, Ordering::Relaxed);
                            }
                            continue;
                        }
                        let Ok(sent_us) = body.parse::<u64>() else {
                            continue;
                        };
                        let now_us = start.elapsed().as_micros() as u64;
                        let _ = local.record(now_us.saturating_sub(sent_us).max(1));
                        delivered.fetch_add(1, Ordering::Relaxed);
                    }
                }
                latencies.lock().await.add(&local).ok();
            }));
        }
    }
    // Every connection is subscribed once it has received a probe from its
    // group: probe until all have, for at most 30 seconds.
    let probe_deadline = Instant::now() + Duration::from_secs(30);
    while (probed.load(Ordering::Relaxed) as usize) < connections {
        anyhow::ensure!(
            Instant::now() < probe_deadline,
            "not every connection was subscribed in time"
        );
        for (sink, room) in &mut senders {
            let frame = publish_frame(target, room, PROBE);
            sink.send(Message::Text(frame.into())).await?;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let cpu_before = server.cpu_seconds()?;
    let own_cpu_before = own_cpu_seconds()?;
    let publish_start = Instant::now();
    let per_sender = args.rate as f64 / senders.len() as f64;
    let sent = Arc::new(AtomicU64::new(0));
    let duration = Duration::from_secs(args.seconds);
    let publishers: Vec<_> = senders
        .into_iter()
        .enumerate()
        .map(|(s, (mut sink, room))| {
            let sent = sent.clone();
            tokio::spawn(async move {
                // Spread the senders' schedules across one interval.
                let interval = Duration::from_secs_f64(1.0 / per_sender);
                let offset = interval.mul_f64(s as f64 / 100.0 % 1.0);
                let mut k: u32 = 0;
                loop {
                    let due = publish_start + offset + interval * k;
                    if due.duration_since(publish_start) >= duration {
                        break;
                    }
                    tokio::time::sleep_until(due.into()).await;
                    let body = (start.elapsed().as_micros() as u64).to_string();
                    let frame = publish_frame(target, &room, &body);
                    if sink.send(Message::Text(frame.into())).await.is_err() {
                        break;
                    }
                    sent.fetch_add(1, Ordering::Relaxed);
                    k += 1;
                }
                sink
            })
        })
        .collect();
    let mut sinks = Vec::new();
    for p in publishers {
        sinks.push(p.await?);
    }
    let sent = sent.load(Ordering::Relaxed);
    let expected = sent * args.members as u64;
    // Let what is in flight arrive, for at most five seconds.
    let drain_deadline = Instant::now() + Duration::from_secs(5);
    while delivered.load(Ordering::Relaxed) < expected && Instant::now() < drain_deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = publish_start.elapsed().as_secs_f64();
    let cpu = server.cpu_seconds()? - cpu_before;
    let own_cpu = own_cpu_seconds()? - own_cpu_before;
    let got = delivered.load(Ordering::Relaxed);
    let _ = stop.send(true);
    for reader in readers {
        let _ = reader.await;
    }
    for mut sink in sinks {
        let _ = sink.close().await;
    }
    let latencies = latencies.lock().await;
    Ok(RoomsResult {
        target,
        connections,
        rate: args.rate,
        sent,
        delivered: got,
        lost: expected.saturating_sub(got),
        delivered_per_sec: got as f64 / elapsed,
        latency: Latency::of(&latencies),
        server_cpu_seconds: cpu,
        server_cpu_us_per_delivery: cpu * 1e6 / got.max(1) as f64,
        server_peak_rss_mib: server.peak_rss_kib()? as f64 / 1024.0,
        generator_cpu_seconds: own_cpu,
        generator_cpu_us_per_delivery: own_cpu * 1e6 / got.max(1) as f64,
    })
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Runs rooms against each target in turn, `runs` times, and prints the
/// median of each figure per target and Tidings' figure over each peer's.
pub(crate) async fn compare(args: Args, runs: usize) -> anyhow::Result<()> {
    anyhow::ensure!(runs > 0, "--runs must be at least 1");
    let targets = [
        Target::Baseline,
        Target::Tidings,
        Target::NodeWs,
        Target::Nats,
    ];
    let mut results: Vec<Vec<RoomsResult>> = targets.iter().map(|_| Vec::new()).collect();
    for run in 0..runs {
        for (t, target) in targets.iter().enumerate() {
            let mut args = args.clone();
            args.server.target = *target;
            let server = Server::start(&args.server, &["--auth-secret", SECRET]).await?;
            let result = measure(&args, &server).await;
            server.stop().await;
            let result = result?;
            print(&format!("run {} of {runs}: {target:?}", run + 1), &result);
            results[t].push(result);
        }
    }
    let figure =
        |t: usize, f: &dyn Fn(&RoomsResult) -> f64| median(results[t].iter().map(f).collect());
    let figures: [(&str, &dyn Fn(&RoomsResult) -> f64); 7] = [
        ("delivered_per_sec", &|r| r.delivered_per_sec),
        ("lost", &|r| r.lost as f64),
        ("p50_ms", &|r| r.latency.p50_ms),
        ("p99_ms", &|r| r.latency.p99_ms),
        ("server_cpu_us_per_delivery", &|r| {
            r.server_cpu_us_per_delivery
        }),
        ("server_peak_rss_mib", &|r| r.server_peak_rss_mib),
        ("generator_cpu_us_per_delivery", &|r| {
            r.generator_cpu_us_per_delivery
        }),
    ];
    println!(
        "medians of {runs} runs, {} connections, {} msg/s offered",
        args.groups * args.members,
        args.rate
    );
    println!(
        "  {:<30} {:>10} {:>10} {:>10} {:>10}   tidings over baseline / node-ws / nats",
        "figure", "baseline", "tidings", "node-ws", "nats"
    );
    let mut json = serde_json::Map::new();
    for (name, f) in figures {
        let m: Vec<f64> = (0..targets.len()).map(|t| figure(t, f)).collect();
        let over = |peer: f64| if peer == 0.0 { f64::NAN } else { m[1] / peer };
        println!(
            "  {name:<30} {:>10.2} {:>10.2} {:>10.2} {:>10.2}   {:.2} / {:.2} / {:.2}",
            m[0],
            m[1],
            m[2],
            m[3],
            over(m[0]),
            over(m[2]),
            over(m[3])
        );
        json.insert(
            name.into(),
            serde_json::json!({
                "baseline": m[0], "tidings": m[1], "node_ws": m[2], "nats": m[3],
                "tidings_over_baseline": over(m[0]),
                "tidings_over_node_ws": over(m[2]),
                "tidings_over_nats": over(m[3]),
            }),
        );
    }
    println!("JSON {}", serde_json::Value::Object(json));
    Ok(())
}
