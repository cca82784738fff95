//! The HTTP API, over real sockets: user endpoints, the backends'
//! notification endpoint, and the open ones.

use serde_json::{json, Value};
use tidings_tests::{http, token, TestNode, API_KEY};

async fn call(
    method: reqwest::Method,
    url: String,
    bearer: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = http().request(method, url);
    if let Some(bearer) = bearer {
        request = request.bearer_auth(bearer);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

fn assert_error(status: u16, body: &Value, want_status: u16, code: &str) {
    assert_eq!(status, want_status, "{body}");
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(body["error"]["message"]
        .as_str()
        .is_some_and(|m| !m.is_empty()));
}

#[tokio::test]
async fn conversations_and_messages_over_http() {
    let node = TestNode::start().await;
    let (alice, bob) = (token("alice"), token("bob"));
    use reqwest::Method;

    let (status, created) = call(
        Method::POST,
        node.http("/v1/conversations"),
        Some(&alice),
        Some(json!({"members":["bob"],"title":"http"})),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let conv = created["conv"].as_str().unwrap().to_owned();
    assert_eq!(created["version"], 1);

    let messages = node.http(&format!("/v1/conversations/{conv}/messages"));
    let (status, ack) = call(
        Method::POST,
        messages.clone(),
        Some(&bob),
        Some(json!({"body":"hi","cmid":"h1"})),
    )
    .await;
    assert_eq!(status, 201, "{ack}");
    assert_eq!(ack["version"], 2);
    assert_eq!(ack["dup"], false);
    let (_, dup) = call(
        Method::POST,
        messages.clone(),
        Some(&bob),
        Some(json!({"body":"hi","cmid":"h1"})),
    )
    .await;
    assert_eq!(dup["dup"], true);
    assert_eq!(dup["version"], 2);

    let (status, conflict) = call(
        Method::POST,
        messages.clone(),
        Some(&alice),
        Some(json!({"body":"late","expect":1})),
    )
    .await;
    assert_error(status, &conflict, 409, "conflict");
    assert_eq!(conflict["error"]["current_version"], 2);

    let (status, page) = call(
        Method::GET,
        format!("{messages}?after=1&limit=5"),
        Some(&alice),
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(page["version"], 2);
    assert_eq!(page["events"][0]["body"], "hi");
    assert_eq!(page["events"].as_array().unwrap().len(), 1);
    let (status, page) = call(
        Method::GET,
        format!("{messages}?before=2"),
        Some(&alice),
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(page["events"][0]["kind"], "created");
    let (status, err) = call(
        Method::GET,
        format!("{messages}?limit=500"),
        Some(&alice),
        None,
    )
    .await;
    assert_error(status, &err, 400, "bad_request");
    let (status, err) = call(
        Method::GET,
        format!("{messages}?limit=abc"),
        Some(&alice),
        None,
    )
    .await;
    assert_error(status, &err, 400, "bad_request");

    let (status, list) = call(
        Method::GET,
        node.http("/v1/conversations"),
        Some(&bob),
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(list["conversations"][0]["conv"], conv);
    assert_eq!(list["conversations"][0]["title"], "http");

    // Direct messages by user.
    let (status, ack) = call(
        Method::POST,
        node.http("/v1/users/bob/messages"),
        Some(&alice),
        Some(json!({"body":"psst"})),
    )
    .await;
    assert_eq!(status, 201, "{ack}");
    assert_eq!(ack["conv"], "dm:alice:bob");
    assert_eq!(ack["version"], 2);
    let (status, page) = call(
        Method::GET,
        node.http("/v1/users/alice/messages"),
        Some(&bob),
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(page["conv"], "dm:alice:bob");
    assert_eq!(page["events"][1]["body"], "psst");
}

#[tokio::test]
async fn http_errors_map_to_their_statuses() {
    use reqwest::Method;
    let node = TestNode::start().await;
    let (alice, carol) = (token("alice"), token("carol"));
    // Alice and bob's direct conversation exists; carol is not in it.
    call(
        Method::POST,
        node.http("/v1/users/bob/messages"),
        Some(&alice),
        Some(json!({"body":"x"})),
    )
    .await;
    let big = "x".repeat(16 * 1024 + 1);
    let huge = "x".repeat(100 * 1024);
    // (method, path, token, body, status, error code)
    type Case<'a> = (
        Method,
        &'a str,
        Option<&'a str>,
        Option<Value>,
        u16,
        &'a str,
    );
    let cases: Vec<Case> = vec![
        (
            Method::GET,
            "/v1/conversations",
            None,
            None,
            401,
            "unauthorized",
        ),
        (
            Method::GET,
            "/v1/conversations",
            Some("forged"),
            None,
            401,
            "unauthorized",
        ),
        (
            Method::POST,
            "/v1/conversations/g:nope/messages",
            Some(&alice),
            Some(json!({"body":"x"})),
            404,
            "not_found",
        ),
        (
            Method::POST,
            "/v1/conversations/bad id/messages",
            Some(&alice),
            Some(json!({"body":"x"})),
            400,
            "bad_request",
        ),
        (
            Method::POST,
            "/v1/users/bob/messages",
            Some(&alice),
            Some(json!({"text":"wrong field"})),
            400,
            "bad_request",
        ),
        (
            Method::POST,
            "/v1/users/bob/messages",
            Some(&alice),
            Some(json!({"body": big})),
            413,
            "too_large",
        ),
        (
            Method::POST,
            "/v1/users/bob/messages",
            Some(&alice),
            Some(json!({"body": huge})),
            413,
            "too_large",
        ),
        (
            Method::GET,
            "/v1/conversations/dm:alice:bob/messages",
            Some(&carol),
            None,
            404,
            "not_found",
        ),
        (
            Method::GET,
            "/v1/nothing-here",
            None,
            None,
            404,
            "not_found",
        ),
        (
            Method::GET,
            "/v1/presence?users=ok,bad%20id",
            Some(&alice),
            None,
            400,
            "bad_request",
        ),
    ];
    for (method, path, bearer, body, status, code) in cases {
        let (got, err) = call(method.clone(), node.http(path), bearer, body).await;
        assert_eq!(got, status, "{method} {path}: {err}");
        assert_error(got, &err, status, code);
    }
}

#[tokio::test]
async fn backends_push_notifications_with_the_api_key() {
    let node = TestNode::start().await;
    let mut phone = node.connect("alice").await;
    let mut laptop = node.connect("alice").await;
    use reqwest::Method;
    let url = node.http("/v1/users/alice/notifications");
    let (status, err) = call(Method::POST, url.clone(), None, Some(json!({"payload":1}))).await;
    assert_error(status, &err, 401, "unauthorized");
    let (status, err) = call(
        Method::POST,
        url.clone(),
        Some(&token("alice")),
        Some(json!({"payload":1})),
    )
    .await;
    assert_error(status, &err, 401, "unauthorized");
    let (status, err) = call(
        Method::POST,
        url.clone(),
        Some(API_KEY),
        Some(json!({"payload":"x".repeat(16 * 1024 + 1)})),
    )
    .await;
    assert_error(status, &err, 413, "too_large");
    let (status, err) = call(
        Method::POST,
        url.clone(),
        Some(API_KEY),
        Some(json!({"nopayload":1})),
    )
    .await;
    assert_error(status, &err, 400, "bad_request");

    for i in 1..=3 {
        let (status, accepted) = call(
            Method::POST,
            url.clone(),
            Some(API_KEY),
            Some(json!({"payload":{"kind":"invoice","n":i}})),
        )
        .await;
        assert_eq!(status, 202, "{accepted}");
        assert_eq!(accepted, json!({"user":"alice","version":i}));
    }
    for device in [&mut phone, &mut laptop] {
        for i in 1..=3 {
            let pushed = device
                .take("notification", |v| {
                    v["type"] == "notification" && v["version"] == i
                })
                .await
                .unwrap();
            assert_eq!(pushed["payload"], json!({"kind":"invoice","n":i}));
            assert!(pushed["ts"].as_u64().unwrap() > 0);
        }
    }
    let (status, page) = call(
        Method::GET,
        node.http("/v1/notifications?after=1&limit=1"),
        Some(&token("alice")),
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(page["version"], 3);
    assert_eq!(page["events"].as_array().unwrap().len(), 1);
    assert_eq!(page["events"][0]["version"], 2);
    let synced = phone
        .ok(json!({"type":"sync","notifications":2}), "synced")
        .await;
    assert_eq!(synced["notifications"]["version"], 3);
    assert_eq!(synced["notifications"]["events"][0]["payload"]["n"], 3);
    assert_eq!(synced["notifications"]["more"], false);
}

#[tokio::test]
async fn open_endpoints_health_metrics_page_and_presence() {
    let node = TestNode::start().await;
    let mut alice = node.connect("alice").await;
    // Presence is only for those who share a conversation.
    alice.ok(json!({"type":"dm","user":"bob"}), "created").await;
    use reqwest::Method;
    let (status, health) = call(Method::GET, node.http("/healthz"), None, None).await;
    assert_eq!(status, 200);
    assert_eq!(health["status"], "ok");
    let (status, metrics) = call(Method::GET, node.http("/metrics"), None, None).await;
    assert_eq!(status, 200);
    let metrics = metrics.as_str().unwrap().to_owned();
    assert!(metrics.contains("tidings_connections 1"), "{metrics}");
    assert!(
        metrics.contains("# TYPE tidings_events_committed counter"),
        "{metrics}"
    );
    let page = http().get(node.http("/")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    let (status, presence) = call(
        Method::GET,
        node.http("/v1/presence?users=alice,bob"),
        Some(&token("bob")),
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        presence["users"]["alice"],
        json!({"online":true,"devices":1})
    );
    assert_eq!(
        presence["users"]["bob"],
        json!({"online":false,"devices":0})
    );
}

#[tokio::test]
async fn dev_tokens_only_in_dev_mode() {
    let dev = TestNode::start().await;
    use reqwest::Method;
    let (status, body) = call(
        Method::POST,
        dev.http("/v1/dev/token"),
        None,
        Some(json!({"user":"zoe"})),
    )
    .await;
    assert_eq!(status, 200);
    let minted = body["token"].as_str().unwrap().to_owned();
    let (status, _) = call(
        Method::GET,
        dev.http("/v1/conversations"),
        Some(&minted),
        None,
    )
    .await;
    assert_eq!(status, 200, "a dev token works");
    let (status, err) = call(
        Method::POST,
        dev.http("/v1/dev/token"),
        None,
        Some(json!({"user":"no way"})),
    )
    .await;
    assert_error(status, &err, 400, "bad_request");

    let prod = TestNode::start_with(|c| c.dev = false).await;
    let (status, err) = call(
        Method::POST,
        prod.http("/v1/dev/token"),
        None,
        Some(json!({"user":"zoe"})),
    )
    .await;
    assert_error(status, &err, 404, "not_found");
}
