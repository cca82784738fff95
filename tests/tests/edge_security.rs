//! The client edge under abuse: secrets and modes at start, tokens that
//! expire on open sockets, HTTP connection limits, devices per user, rate
//! limits that count every frame, and strict frames and close codes.

use std::time::Duration;

use serde_json::{json, Value};
use tidings_protocol::client::{Client, ClientConfig, ConnState};
use tidings_tests::{
    eventually, http, now_secs, process, token, token_with, Closed, TestNode, Ws, SECRET, WAIT,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::{self, Message};

/// The binary's stderr when started with `args`, which it must refuse.
async fn refused_start(args: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let output = tokio::time::timeout(
        WAIT,
        tokio::process::Command::new(process::binary())
            .args(["--data-dir"])
            .arg(dir.path())
            .args(args)
            .env_remove("TIDINGS_AUTH_SECRET")
            .env_remove("TIDINGS_DEV")
            .output(),
    )
    .await
    .expect("the binary exits in time")
    .unwrap();
    assert!(!output.status.success(), "started with {args:?}");
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[tokio::test]
async fn a_secret_shorter_than_32_bytes_is_refused_at_start() {
    for short in ["", "change-me", &"s".repeat(31)] {
        let stderr = refused_start(&["--listen", "127.0.0.1:0", "--auth-secret", short]).await;
        assert!(stderr.contains("at least 32 bytes"), "{short:?}: {stderr}");
    }
}

#[tokio::test]
async fn dev_mode_refuses_an_address_that_is_not_loopback() {
    let stderr = refused_start(&["--dev", "--listen", "0.0.0.0:0"]).await;
    assert!(stderr.contains("loopback"), "{stderr}");
}

/// The status and JSON body of a refused upgrade.
async fn refused_upgrade(url: &str, token: &str) -> (u16, Value) {
    let err = Ws::connect(url, token)
        .await
        .err()
        .expect("upgrade refused");
    match err.downcast_ref::<tungstenite::Error>() {
        Some(tungstenite::Error::Http(response)) => {
            let body = serde_json::from_slice(response.body().as_deref().unwrap()).unwrap();
            (response.status().as_u16(), body)
        }
        other => panic!("expected an HTTP refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn a_token_with_critical_header_extensions_is_refused() {
    let node = TestNode::start().await;
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    header.crit = Some(vec!["b64".into()]);
    let critical = jsonwebtoken::encode(
        &header,
        &json!({"sub": "alice", "exp": now_secs() + 60}),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    let (status, body) = refused_upgrade(&node.ws_url(), &critical).await;
    assert_eq!(status, 401);
    assert_eq!(body["error"]["code"], "unauthorized");
    let refused = http()
        .get(node.http("/v1/conversations"))
        .bearer_auth(&critical)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
}

/// A token for `user` that expires `secs` seconds from now.
fn short_token(user: &str, secs: u64) -> String {
    token_with(json!({"sub": user, "exp": now_secs() + secs}), SECRET)
}

#[tokio::test]
async fn a_socket_is_closed_with_4001_when_its_token_expires() {
    let node = TestNode::start().await;
    let mut alice = Ws::subscribed(&node.ws_url(), &short_token("alice", 2)).await;
    let started = tokio::time::Instant::now();
    assert_eq!(alice.closed().await, Closed::Code(4001));
    assert!(
        started.elapsed() <= Duration::from_secs(3),
        "closed on time"
    );
}

#[tokio::test]
async fn a_refresh_for_the_same_user_keeps_the_socket_open() {
    let node = TestNode::start().await;
    let opened_with = short_token("alice", 2);
    let expires = tokio::time::Instant::now() + Duration::from_secs(2);
    let mut alice = Ws::subscribed(&node.ws_url(), &opened_with).await;

    // Another user's token, and tokens that are not valid, are refused
    // and change nothing.
    alice
        .err(json!({"type":"refresh","token":token("bob")}), "forbidden")
        .await;
    for bad in [
        "garbage".to_owned(),
        token_with(
            json!({"sub":"alice","exp":now_secs() + 60}),
            "another-secret-of-at-least-32-bytes",
        ),
        token_with(json!({"sub":"alice","exp":now_secs() - 5}), SECRET),
    ] {
        alice
            .err(json!({"type":"refresh","token":bad}), "unauthorized")
            .await;
    }
    let fresh_exp = now_secs() + 3600;
    let fresh = token_with(json!({"sub":"alice","exp":fresh_exp}), SECRET);
    let refreshed = alice
        .ok(json!({"type":"refresh","token":fresh}), "refreshed")
        .await;
    assert_eq!(refreshed["exp"], fresh_exp);
    assert!(
        refreshed["req"].is_string(),
        "the req is echoed: {refreshed}"
    );

    // Past the first token's expiry the socket is still served.
    alice
        .drain_for(expires + Duration::from_secs(1) - tokio::time::Instant::now())
        .await;
    assert_eq!(alice.closed, None);
    alice.ok(json!({"type":"ping"}), "pong").await;
}

#[tokio::test]
async fn the_rust_client_refreshes_through_its_callback() {
    let node = TestNode::start().await;
    let config = ClientConfig::new([format!("ws://{}", node.addr)], short_token("alice", 3))
        .with_refresh(|| async { Some(token("alice")) });
    let (client, _pushes) = Client::connect(config);
    client.connected().await.unwrap();
    let mut state = client.state();
    // Past the first token's expiry the client never had to reconnect.
    let changed = tokio::time::timeout(
        Duration::from_secs(4),
        state.wait_for(|s| !matches!(s, ConnState::Connected)),
    )
    .await
    .map(|seen| seen.map(|s| *s));
    assert!(changed.is_err(), "the connection was replaced: {changed:?}");
    client.ping().await.unwrap();
}

#[tokio::test]
async fn the_rust_client_asks_its_callback_once_when_its_token_is_refused() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use tidings_protocol::client::ClientError;
    let node = TestNode::start().await;
    let url = format!("ws://{}", node.addr);
    let expired = || token_with(json!({"sub": "alice", "exp": now_secs() - 10}), SECRET);

    // Refused at the upgrade (expired): one fresh token, and it connects.
    let asked = Arc::new(AtomicUsize::new(0));
    let counter = asked.clone();
    let config = ClientConfig::new([url.clone()], expired()).with_refresh(move || {
        counter.fetch_add(1, Ordering::Relaxed);
        async { Some(token("alice")) }
    });
    let (client, _pushes) = Client::connect(config);
    tokio::time::timeout(WAIT, client.ping())
        .await
        .expect("answered in time")
        .expect("connected with the fresh token");
    assert_eq!(asked.load(Ordering::Relaxed), 1);

    // A callback whose token is refused too: asked once, then the client
    // ends with Unauthorized instead of asking forever.
    let asked = Arc::new(AtomicUsize::new(0));
    let counter = asked.clone();
    let config = ClientConfig::new([url], expired()).with_refresh(move || {
        counter.fetch_add(1, Ordering::Relaxed);
        async move { Some(expired()) }
    });
    let (client, _pushes) = Client::connect(config);
    let refused = tokio::time::timeout(WAIT, client.ping())
        .await
        .expect("answered in time");
    assert_eq!(refused, Err(ClientError::Unauthorized));
    assert_eq!(asked.load(Ordering::Relaxed), 1);
}

/// Reads from `tcp` until it is closed; what it read, or `None` if it was
/// not closed within `within`.
async fn read_until_closed(tcp: &mut TcpStream, within: Duration) -> Option<Vec<u8>> {
    let deadline = tokio::time::Instant::now() + within;
    let mut read = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(deadline, tcp.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(read),
            Ok(Ok(n)) => read.extend_from_slice(&buf[..n]),
        }
    }
}

#[tokio::test]
async fn a_connection_that_never_finishes_its_headers_is_closed() {
    let node = TestNode::start_with(|c| c.header_timeout = Duration::from_secs(1)).await;
    let mut slow = TcpStream::connect(node.addr).await.unwrap();
    let started = tokio::time::Instant::now();
    // Half a request, a header line now and then: never the blank line.
    slow.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    let closed = async {
        for i in 0.. {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let line = format!("x-slow-{i}: 1\r\n");
            if slow.write_all(line.as_bytes()).await.is_err() {
                return;
            }
            let mut buf = [0u8; 64];
            if let Ok(Ok(0) | Err(_)) =
                tokio::time::timeout(Duration::from_millis(1), slow.read(&mut buf)).await
            {
                return;
            }
        }
    };
    tokio::time::timeout(WAIT, closed)
        .await
        .expect("the slow connection was closed");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    // A prompt client is served as ever.
    let health = http().get(node.http("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
}

#[tokio::test]
async fn a_request_whose_body_trickles_in_is_answered_408_and_closed() {
    let node = TestNode::start_with(|c| {
        c.header_timeout = Duration::from_secs(1);
        c.idle_timeout = Duration::from_secs(30);
    })
    .await;
    let mut slow = TcpStream::connect(node.addr).await.unwrap();
    let head = format!(
        "POST /v1/conversations HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {}\r\n\
         content-type: application/json\r\ncontent-length: 1000\r\n\r\n",
        token("alice")
    );
    slow.write_all(head.as_bytes()).await.unwrap();
    let started = tokio::time::Instant::now();
    // A byte every 200 ms: traffic enough to keep any idle timer quiet.
    let mut read = Vec::new();
    let mut buf = [0u8; 4096];
    let closed = async {
        for _ in 0..100 {
            let _ = slow.write_all(b" ").await;
            match tokio::time::timeout(Duration::from_millis(200), slow.read(&mut buf)).await {
                Ok(Ok(0) | Err(_)) => return,
                Ok(Ok(n)) => read.extend_from_slice(&buf[..n]),
                Err(_) => {}
            }
        }
    };
    tokio::time::timeout(WAIT, closed)
        .await
        .expect("the trickling request was cut off");
    let elapsed = started.elapsed();
    let answer = String::from_utf8_lossy(&read);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("did not arrive"), "{answer}");
    assert!(elapsed < Duration::from_secs(4), "closed after {elapsed:?}");
    // A prompt request with a body is served as ever.
    let created = http()
        .post(node.http("/v1/conversations"))
        .bearer_auth(token("alice"))
        .json(&json!({"members":["bob"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_and_a_websocket_is_not() {
    let node = TestNode::start_with(|c| {
        c.header_timeout = Duration::from_secs(30);
        c.idle_timeout = Duration::from_secs(1);
    })
    .await;
    let mut ws = node.connect("alice").await;
    let mut idle = TcpStream::connect(node.addr).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let started = tokio::time::Instant::now();
    let read = read_until_closed(&mut idle, WAIT)
        .await
        .expect("the idle connection was closed");
    assert!(read.starts_with(b"HTTP/1.1 200"), "answered first");
    let idle_for = started.elapsed();
    assert!(
        idle_for >= Duration::from_millis(900) && idle_for < Duration::from_secs(4),
        "closed after {idle_for:?}"
    );
    // The WebSocket, as quiet meanwhile, is still open.
    assert_eq!(ws.closed, None);
    ws.ok(json!({"type":"ping"}), "pong").await;
}

#[tokio::test]
async fn connections_above_the_cap_get_503() {
    let node = TestNode::start_with(|c| c.max_connections = Some(5)).await;
    let request = b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n";
    let mut held = Vec::new();
    for _ in 0..5 {
        let mut tcp = TcpStream::connect(node.addr).await.unwrap();
        tcp.write_all(request).await.unwrap();
        let mut buf = [0u8; 512];
        let n = tokio::time::timeout(WAIT, tcp.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(
            buf[..n].starts_with(b"HTTP/1.1 200"),
            "served while under the cap"
        );
        held.push(tcp);
    }
    let mut sixth = TcpStream::connect(node.addr).await.unwrap();
    let answer = read_until_closed(&mut sixth, WAIT)
        .await
        .expect("the sixth connection is closed");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("\"unavailable\""), "{answer}");
    // Once one closes, a new connection is served again.
    drop(held.pop());
    let addr = node.addr;
    eventually("a connection under the cap again", || async move {
        let mut tcp = TcpStream::connect(addr).await.ok()?;
        tcp.write_all(request).await.ok()?;
        let mut buf = [0u8; 512];
        let n = tokio::time::timeout(WAIT, tcp.read(&mut buf))
            .await
            .ok()?
            .ok()?;
        buf[..n].starts_with(b"HTTP/1.1 200").then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_user_holds_at_most_max_devices_sockets() {
    let node = TestNode::start_with(|c| c.max_devices = 2).await;
    let url = node.ws_url();
    let first = node.connect("alice").await;
    let _second = node.connect("alice").await;
    let (status, body) = refused_upgrade(&url, &token("alice")).await;
    assert_eq!(status, 429);
    assert_eq!(body["error"]["code"], "rate_limited");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("WebSockets"),
        "{body}"
    );
    // Counted per user.
    let mut bob = node.connect("bob").await;
    bob.ok(json!({"type":"ping"}), "pong").await;
    // A device that leaves frees its place.
    drop(first);
    let url = &url;
    eventually("alice's third device is let in", || async move {
        Ws::connect(url, &token("alice")).await.ok()
    })
    .await;
}

/// A node that allows `burst` frames at once and then one a minute.
async fn slow_node(burst: f64) -> TestNode {
    TestNode::start_with(|c| {
        c.rate_limit = 1.0 / 60.0;
        c.rate_burst = burst;
    })
    .await
}

#[tokio::test]
async fn malformed_binary_and_ping_frames_count_against_the_rate() {
    let cases: [(&str, Message); 4] = [
        ("malformed", Message::Text("{not json".into())),
        ("numeric type", Message::Text(r#"{"type":3}"#.into())),
        ("binary", Message::Binary(vec![1, 2, 3].into())),
        ("ping", Message::Ping(vec![7].into())),
    ];
    let mut uncounted = Vec::new();
    for (what, frame) in cases {
        let node = slow_node(5.0).await;
        let mut alice = Ws::connect(&node.ws_url(), &token("alice")).await.unwrap();
        for _ in 0..5 {
            alice.send_message(frame.clone()).await;
        }
        alice.send(json!({"type":"ping","req":"after"})).await;
        let reply = alice.take(what, |v| v["req"] == "after").await.unwrap();
        if reply["code"] != "rate_limited" {
            uncounted.push(format!("after five {what} frames: {reply}"));
        }
    }
    assert!(uncounted.is_empty(), "{uncounted:#?}");
}

#[tokio::test]
async fn the_http_api_has_a_bucket_per_user() {
    let node = slow_node(3.0).await;
    let list = |user: &str| {
        http()
            .get(node.http("/v1/conversations"))
            .bearer_auth(token(user))
            .send()
    };
    for _ in 0..3 {
        assert_eq!(list("alice").await.unwrap().status(), 200);
    }
    let refused = list("alice").await.unwrap();
    assert_eq!(refused.status(), 429);
    let retry_after: u64 = refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry_after), "retry-after {retry_after}");
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limited");
    // Another user has a bucket of their own.
    assert_eq!(list("bob").await.unwrap().status(), 200);
}

#[tokio::test]
async fn a_numeric_or_unnamed_type_is_bad_request() {
    let node = TestNode::start().await;
    let mut alice = node.connect("alice").await;
    for frame in [
        json!({"type":0}),
        json!({"type":3,"user":"bob"}),
        json!({"type":"3","user":"bob"}),
        json!({"type":"Dm","user":"bob"}),
    ] {
        alice.err(frame, "bad_request").await;
    }
    // Nothing was created by the numeric `dm`.
    assert!(alice.conv_ids().await.is_empty());
}

/// A raw WebSocket over TCP after the opening handshake, for frames that
/// no WebSocket library sends.
async fn raw_socket(node: &TestNode) -> TcpStream {
    let mut tcp = TcpStream::connect(node.addr).await.unwrap();
    let request = format!(
        "GET /v1/ws?token={} HTTP/1.1\r\nhost: x\r\nconnection: upgrade\r\nupgrade: websocket\r\n\
         sec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        token("alice")
    );
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(WAIT, tcp.read(&mut byte))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(n, 1, "the handshake is answered");
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    tcp
}

/// A client frame: FIN, `opcode`, masked with `mask` if given.
fn frame(opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    assert!(payload.len() < 126);
    let mut out = vec![0x80 | opcode];
    match mask {
        Some(key) => {
            out.push(0x80 | payload.len() as u8);
            out.extend_from_slice(&key);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        }
        None => {
            out.push(payload.len() as u8);
            out.extend_from_slice(payload);
        }
    }
    out
}

/// The code of the close frame the node sends, skipping frames before it.
async fn close_code(tcp: &mut TcpStream) -> u16 {
    let read = read_until_closed(tcp, WAIT)
        .await
        .expect("the node closes the socket");
    let mut at = 0;
    while at + 2 <= read.len() {
        let (opcode, len) = (read[at] & 0x0f, usize::from(read[at + 1] & 0x7f));
        assert!(len < 126, "short frames only");
        if opcode == 0x8 {
            return u16::from_be_bytes([read[at + 2], read[at + 3]]);
        }
        at += 2 + len;
    }
    panic!("no close frame in {read:?}");
}

#[tokio::test]
async fn protocol_errors_close_with_the_rfc_6455_codes() {
    let node = TestNode::start().await;
    let key = Some([1, 2, 3, 4]);
    let cases: [(&str, Vec<u8>, u16); 6] = [
        (
            "invalid UTF-8",
            frame(0x1, b"{\"type\":\"ping\xff\"}", key),
            1007,
        ),
        (
            "an unmasked frame",
            frame(0x1, br#"{"type":"ping"}"#, None),
            1002,
        ),
        ("an unknown data opcode", frame(0x3, b"x", key), 1002),
        ("an unknown control opcode", frame(0xb, b"", key), 1002),
        // 1005 ("no status") is for APIs, never sent in a close frame.
        (
            "a close naming 1005",
            frame(0x8, &1005u16.to_be_bytes(), key),
            1002,
        ),
        (
            "a close naming 1000",
            frame(0x8, &1000u16.to_be_bytes(), key),
            1000,
        ),
    ];
    for (what, bytes, code) in cases {
        let mut tcp = raw_socket(&node).await;
        tcp.write_all(&bytes).await.unwrap();
        assert_eq!(close_code(&mut tcp).await, code, "{what}");
    }
    // A well-formed frame on a raw socket is served.
    let mut tcp = raw_socket(&node).await;
    tcp.write_all(&frame(0x1, br#"{"type":"ping","req":"1"}"#, key))
        .await
        .unwrap();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(WAIT, tcp.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&buf[..n]).contains("pong"),
        "{:?}",
        &buf[..n]
    );
}
