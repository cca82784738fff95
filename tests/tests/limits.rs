//! Bad input and limits: each gets a clear error, and the connection and
//! everything acknowledged survive it.

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::json;
use tidings_tests::{
    eventually, metric, now_secs, token, token_with, Closed, TestNode, Ws, SECRET,
};

#[tokio::test]
async fn bad_frames_get_bad_request_and_the_connection_stays_open() {
    let node = TestNode::start().await;
    let mut alice = node.connect("alice").await;
    alice.send_text("{not json").await;
    let err = alice.take("error", |v| v["type"] == "error").await.unwrap();
    assert_eq!(err["code"], "bad_request");
    assert!(
        err["message"].as_str().unwrap().contains("invalid JSON"),
        "{err}"
    );

    let cases = [
        json!({"type":"shout"}),
        json!({"nothing":"here"}),
        json!({"type":"send","body":"no conv"}),
        json!({"type":"send","conv":"dm:alice:bob","body":42}),
        json!({"type":"send","conv":"not-a-conv","body":"x"}),
        json!({"type":"dm","user":"has space"}),
        json!({"type":"dm","user":"x".repeat(65)}),
        json!({"type":"create","members":["ok","bad/id"]}),
        json!({"type":"create","members":[],"title":"t".repeat(201)}),
        json!({"type":"send","conv":"dm:alice:bob","body":"x","cmid":""}),
        json!({"type":"send","conv":"dm:alice:bob","body":"x","cmid":"tab\t"}),
        json!({"type":"history","conv":"dm:alice:bob","limit":"ten"}),
        json!({"type":"edit","conv":"dm:alice:bob","target":-1,"rev":1,"body":"x"}),
    ];
    for frame in cases {
        alice.err(frame, "bad_request").await;
    }
    // A req longer than 64 characters is itself bad.
    alice
        .send(json!({"type":"ping","req":"r".repeat(65)}))
        .await;
    let err = alice
        .take("error for long req", |v| v["type"] == "error")
        .await
        .unwrap();
    assert_eq!(err["code"], "bad_request");
    // Binary frames are refused with an error too.
    alice.ok(json!({"type":"ping"}), "pong").await;
}

#[tokio::test]
async fn a_body_over_16_kib_is_too_large_and_appends_nothing() {
    let node = TestNode::start().await;
    let mut alice = node.connect("alice").await;
    let conv = alice.create::<&str>([]).await;
    alice
        .err(
            json!({"type":"send","conv":conv,"body":"x".repeat(16 * 1024 + 1)}),
            "too_large",
        )
        .await;
    alice
        .ok(
            json!({"type":"send","conv":conv,"body":"x".repeat(16 * 1024)}),
            "ack",
        )
        .await;
    let history = alice
        .ok(json!({"type":"history","conv":conv}), "history")
        .await;
    assert_eq!(history["version"], 2);
}

#[tokio::test]
async fn a_frame_over_the_limit_closes_with_1009() {
    let node = TestNode::start().await;
    let mut alice = node.connect("alice").await;
    alice.send_text("x".repeat(70 * 1024)).await;
    assert_eq!(alice.closed().await, Closed::Code(1009));
}

#[tokio::test]
async fn missing_forged_expired_and_early_tokens_get_401_and_no_upgrade() {
    let node = TestNode::start().await;
    let url = node.ws_url();
    let now = now_secs();
    let tokens = [
        String::new(),
        "garbage".to_owned(),
        token_with(json!({"sub":"alice","exp":now + 60}), "wrong-secret"),
        token_with(json!({"sub":"alice","exp":now - 5}), SECRET),
        token_with(json!({"sub":"alice"}), SECRET),
        token_with(json!({"sub":"alice","exp":now + 60,"nbf":now + 60}), SECRET),
        token_with(json!({"sub":"not valid","exp":now + 60}), SECRET),
    ];
    for bad in tokens {
        let err = Ws::connect(&url, &bad)
            .await
            .err()
            .expect("upgrade refused");
        match err.downcast_ref::<tokio_tungstenite::tungstenite::Error>() {
            Some(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                assert_eq!(response.status(), 401, "token {bad:?}");
                let body: serde_json::Value =
                    serde_json::from_slice(response.body().as_deref().unwrap()).unwrap();
                assert_eq!(body["error"]["code"], "unauthorized");
            }
            other => panic!("expected HTTP 401 for {bad:?}, got {other:?}"),
        }
    }
    // The token may come as a bearer header instead.
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut request = url.as_str().into_client_request().unwrap();
    request.headers_mut().insert(
        "authorization",
        format!("Bearer {}", token("alice")).parse().unwrap(),
    );
    let (mut socket, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    use futures_util::SinkExt;
    socket
        .send(tokio_tungstenite::tungstenite::Message::Text(
            r#"{"type":"ping","req":"1"}"#.into(),
        ))
        .await
        .unwrap();
    let reply = socket.next().await.unwrap().unwrap();
    assert_eq!(reply.to_text().unwrap(), r#"{"req":"1","type":"pong"}"#);
}

#[tokio::test]
async fn a_client_over_its_rate_is_told_to_slow_down() {
    let node = TestNode::start_with(|c| {
        c.rate_limit = 5.0;
        c.rate_burst = 5.0;
    })
    .await;
    let mut alice = node.connect("alice").await;
    let mut limited = 0;
    for i in 0..20 {
        let reply = alice.request(json!({"type":"ping","n":i})).await;
        if reply["type"] == "error" {
            assert_eq!(reply["code"], "rate_limited");
            limited += 1;
        }
    }
    assert!(
        limited >= 10,
        "only {limited} of 20 rapid frames were limited"
    );
}

/// Also: once closed, the slow reader's connection serves nothing more,
/// for its replies could not be sent.
#[tokio::test]
async fn a_client_that_reads_too_slowly_is_closed_with_1013_and_loses_nothing() {
    let node = TestNode::start_with(|c| {
        c.outbound_queue = 8;
        c.rate_limit = 1e6;
        c.rate_burst = 1e6;
    })
    .await;
    let mut alice = node.connect("alice").await;
    let conv = alice.create(["bob"]).await;
    let mut slow = node.connect("bob").await; // never reads until the end
    let body = "y".repeat(16 * 1024);
    let mut acked = 0u64;
    let mut closed = false;
    // Each event is 16 KiB: the socket buffers fill, then the queue of 8.
    for _ in 0..2000 {
        alice
            .ok(json!({"type":"send","conv":conv,"body":body}), "ack")
            .await;
        acked += 1;
        let presence = alice
            .ok(json!({"type":"presence","users":["bob"]}), "presence")
            .await;
        if presence["users"]["bob"]["online"] == false {
            closed = true;
            break;
        }
    }
    assert!(closed, "bob was never closed after {acked} events");
    println!("the slow reader was closed after {acked} events of 16 KiB");
    // Sent after the close, before bob reads it: not served, so not in
    // the log that the sync below reads.
    slow.send(json!({"type":"send","conv":conv,"body":"after the close"}))
        .await;
    assert_eq!(slow.closed().await, Closed::Code(1013));
    // Bob's connection ends (on his close reply, or after the grace);
    // once it has, whatever its reader was going to serve is served.
    let addr = node.addr.to_string();
    eventually("bob's connection to end", || async {
        (metric(&addr, "tidings_connections").await == Some(1)).then_some(())
    })
    .await;
    // Reconnecting and syncing gets everything.
    let mut bob = node.connect("bob").await;
    let synced = bob
        .ok(
            json!({"type":"sync","convs":{conv.as_str(): 0},"limit":200}),
            "synced",
        )
        .await;
    let mut events = synced["convs"][0]["events"].as_array().unwrap().clone();
    // The sync stops at the reply byte bound; history pages on from there.
    for _ in 0..100 {
        let after = events.last().unwrap()["version"].as_u64().unwrap();
        let page = bob
            .ok(
                json!({"type":"history","conv":conv,"after":after,"limit":200}),
                "history",
            )
            .await;
        let more = page["events"].as_array().unwrap();
        if more.is_empty() {
            break;
        }
        events.extend(more.iter().cloned());
    }
    let versions: Vec<u64> = events
        .iter()
        .map(|e| e["version"].as_u64().unwrap())
        .collect();
    assert_eq!(versions, (1..=acked + 1).collect::<Vec<u64>>());
    // The creation and the acknowledged sends, and nothing after them.
    assert_eq!(synced["convs"][0]["version"], acked + 1);
}

#[tokio::test]
async fn a_silent_peer_is_closed_after_the_heartbeat_timeout() {
    let node = TestNode::start_with(|c| {
        c.ping_interval = Duration::from_millis(100);
        c.heartbeat_timeout = Duration::from_millis(400);
    })
    .await;
    // A raw TCP peer that completes the upgrade and then never reads or answers.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(node.addr).await.unwrap();
    let request = format!(
        "GET /v1/ws?token={} HTTP/1.1\r\nHost: {}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        token("mute"),
        node.addr
    );
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut head = [0u8; 12];
    tcp.read_exact(&mut head).await.unwrap();
    assert_eq!(&head, b"HTTP/1.1 101");
    let mut watcher = node.connect("watcher").await;
    // Presence is only for those who share a conversation.
    watcher.create(["mute"]).await;
    let deadline = tokio::time::Instant::now() + tidings_tests::WAIT;
    loop {
        let reply = watcher
            .ok(json!({"type":"presence","users":["mute"]}), "presence")
            .await;
        if reply["users"]["mute"]["online"] == false {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the silent peer was never dropped"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A peer that answers pings (tungstenite does while reading) stays.
    let mut live = node.connect("live").await;
    live.drain_for(Duration::from_millis(800)).await;
    live.ok(json!({"type":"ping"}), "pong").await;
}

#[tokio::test]
async fn a_client_ping_is_answered_with_its_payload() {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    let node = TestNode::start().await;
    let url = format!("{}?token={}", node.ws_url(), token("pinger"));
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    for payload in ["are you there", "and now?"] {
        ws.send(Message::Ping(payload.as_bytes().to_vec().into()))
            .await
            .unwrap();
        let pong = tokio::time::timeout(tidings_tests::WAIT, async {
            loop {
                match ws.next().await {
                    Some(Ok(Message::Pong(pong))) => return pong,
                    Some(Ok(_)) => continue,
                    other => panic!("the socket ended before a pong: {other:?}"),
                }
            }
        })
        .await
        .expect("no pong came");
        assert_eq!(&pong[..], payload.as_bytes());
    }
    // The same connection still serves requests after its pings.
    ws.send(Message::Text(
        json!({"type":"ping","req":"after"}).to_string().into(),
    ))
    .await
    .unwrap();
    let reply = tokio::time::timeout(tidings_tests::WAIT, async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(text))) => {
                    let reply: serde_json::Value = serde_json::from_str(&text).unwrap();
                    if reply["req"] == "after" {
                        return reply;
                    }
                }
                Some(Ok(_)) => continue,
                other => panic!("the socket ended after its pings: {other:?}"),
            }
        }
    })
    .await
    .expect("no reply after the pings");
    assert_eq!(reply["type"], "pong", "{reply}");
}

#[tokio::test]
async fn a_request_that_is_not_a_websocket_upgrade_is_refused_saying_why() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let node = TestNode::start().await;
    let upgrade = "Connection: keep-alive, Upgrade\r\nUpgrade: websocket\r\n";
    let cases = [
        ("GET", "Connection: keep-alive\r\n".to_string(), "400", "Connection"),
        (
            "GET",
            format!("{upgrade}Sec-WebSocket-Version: 8\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"),
            "426",
            "Sec-WebSocket-Version: 13",
        ),
        ("GET", format!("{upgrade}Sec-WebSocket-Version: 13\r\n"), "400", "Sec-WebSocket-Key"),
        (
            "GET",
            format!("{upgrade}Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: short\r\n"),
            "400",
            "Sec-WebSocket-Key",
        ),
        (
            "HEAD",
            format!("{upgrade}Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"),
            "400",
            "",
        ),
    ];
    for (method, headers, status, named) in cases {
        let mut tcp = tokio::net::TcpStream::connect(node.addr).await.unwrap();
        let request = format!(
            "{method} /v1/ws?token={} HTTP/1.1\r\nHost: {}\r\n{headers}Content-Length: 0\r\n\r\n",
            token("asker"),
            node.addr
        );
        tcp.write_all(request.as_bytes()).await.unwrap();
        tcp.shutdown().await.unwrap();
        let mut response = String::new();
        tokio::time::timeout(tidings_tests::WAIT, tcp.read_to_string(&mut response))
            .await
            .expect("no answer")
            .unwrap();
        assert!(
            response.starts_with(&format!("HTTP/1.1 {status}")),
            "{method} {headers}: {response}"
        );
        if method == "GET" {
            // (A HEAD answer has no body.) The error's own text names the
            // header, not just a header of the response.
            let (head, body) = response.split_once("\r\n\r\n").expect("a head and a body");
            assert!(body.contains("bad_request"), "{response}");
            let (name, value) = named.split_once(": ").unwrap_or((named, ""));
            assert!(body.contains(name), "{name} not named in {body}");
            if !value.is_empty() {
                let spoken = format!("{}: {value}", name.to_lowercase());
                assert!(
                    head.to_lowercase().contains(&spoken),
                    "{spoken} not in {head}"
                );
            }
        }
    }
}
