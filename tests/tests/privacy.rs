//! Privacy and consent: presence only among people who share a
//! conversation, conversations invisible to outsiders (an existing one and
//! a missing one answer alike), and block lists that keep a blocked user
//! from opening a direct conversation with, or adding to a conversation,
//! the user who blocked them, durably and on every node of a cluster.

use serde_json::{json, Value};
use tidings_tests::cluster::{all_leaders, one_cluster_at_a_time, start_cluster};
use tidings_tests::process;
use tidings_tests::{http, token, TestNode, Ws};

/// The users a `presence` reply answers for, sorted.
fn answered(reply: &Value) -> Vec<String> {
    let mut users: Vec<String> = reply["users"]
        .as_object()
        .expect("a map of users")
        .keys()
        .cloned()
        .collect();
    users.sort();
    users
}

#[tokio::test]
async fn presence_answers_only_for_users_who_share_a_conversation() {
    let node = TestNode::start().await;
    let mut alice = node.connect("alice").await;
    let _bob = node.connect("bob").await;
    let _carol = node.connect("carol").await;
    let _dave = node.connect("dave").await;
    alice.ok(json!({"type":"dm","user":"bob"}), "created").await;
    let group = alice.create(["carol"]).await;

    let asked = json!({"type":"presence","users":["bob","carol","dave","alice","nobody"]});
    let reply = alice.ok(asked, "presence").await;
    assert_eq!(answered(&reply), ["alice", "bob", "carol"], "{reply}");
    assert_eq!(reply["users"]["bob"], json!({"online": true, "devices": 1}));

    // The same over HTTP.
    let (status, body) = get(&node.http("/v1/presence?users=bob,dave"), "alice").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(answered(&body), ["bob"], "{body}");

    // Dave, who shares nothing with anyone, learns nothing about them.
    let mut dave = node.connect("dave").await;
    let reply = dave
        .ok(
            json!({"type":"presence","users":["alice","bob","dave"]}),
            "presence",
        )
        .await;
    assert_eq!(answered(&reply), ["dave"], "{reply}");

    // Once carol has left the group, alice no longer sees her.
    let mut carol = node.connect("carol").await;
    carol
        .ok(
            json!({"type":"members","conv":group,"remove":["carol"]}),
            "ack",
        )
        .await;
    let reply = alice
        .ok(json!({"type":"presence","users":["carol"]}), "presence")
        .await;
    assert_eq!(answered(&reply), Vec::<String>::new(), "{reply}");
}

async fn get(url: &str, user: &str) -> (u16, Value) {
    let response = http()
        .get(url)
        .bearer_auth(token(user))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn call(method: reqwest::Method, url: &str, user: &str, body: Option<Value>) -> (u16, Value) {
    let mut request = http().request(method, url).bearer_auth(token(user));
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// An error reply with the conversation's id taken out of its message, so
/// that the errors for two ids compare.
fn without_id(mut reply: Value, conv: &str) -> Value {
    if let Some(object) = reply.as_object_mut() {
        object.remove("req");
    }
    let text = reply.to_string().replace(conv, "<conv>");
    serde_json::from_str(&text).unwrap()
}

/// Every operation an outsider could try on `conv`.
fn probes(conv: &str) -> Vec<Value> {
    vec![
        json!({"type":"history","conv":conv}),
        json!({"type":"history","conv":conv,"after":0,"limit":1}),
        json!({"type":"send","conv":conv,"body":"hi"}),
        json!({"type":"send","conv":conv,"body":"hi","cmid":"c-1","expect":1}),
        json!({"type":"edit","conv":conv,"target":1,"rev":1,"body":"x"}),
        json!({"type":"delete","conv":conv,"target":1,"rev":1}),
        json!({"type":"members","conv":conv,"add":["mallory"]}),
        json!({"type":"members","conv":conv,"remove":["alice"]}),
        json!({"type":"members","conv":conv,"remove":["mallory"]}),
    ]
}

#[tokio::test]
async fn an_outsider_cannot_tell_whether_a_conversation_exists() {
    let node = TestNode::start().await;
    let mut alice = node.connect("alice").await;
    alice.ok(json!({"type":"dm","user":"bob"}), "created").await;
    let group = alice.create(["bob"]).await;
    alice
        .ok(
            json!({"type":"send","conv":"dm:alice:bob","body":"secret"}),
            "ack",
        )
        .await;
    let mut mallory = node.connect("mallory").await;

    // Pairs: one that exists (with members other than mallory), one that
    // does not.
    let missing_group = "g:00000000000000000000";
    for (existing, missing) in [("dm:alice:bob", "dm:alice:zed"), (&*group, missing_group)] {
        for (there, absent) in probes(existing).into_iter().zip(probes(missing)) {
            let seen = mallory.request(there.clone()).await;
            let unseen = mallory.request(absent).await;
            assert_eq!(seen["type"], "error", "{there} got {seen}");
            assert_eq!(
                without_id(seen.clone(), existing),
                without_id(unseen.clone(), missing),
                "{there}: an existing conversation answers unlike a missing one"
            );
            assert_eq!(seen["code"], "not_found", "{seen}");
        }
    }

    // Over HTTP, every route that names a conversation.
    for (existing, missing) in [("dm:alice:bob", "dm:alice:zed"), (&*group, missing_group)] {
        let url = |conv: &str| node.http(&format!("/v1/conversations/{conv}/messages"));
        let seen = get(&url(existing), "mallory").await;
        let unseen = get(&url(missing), "mallory").await;
        assert_eq!(seen.0, 404, "{seen:?}");
        assert_eq!(
            (seen.0, without_id(seen.1, existing)),
            (unseen.0, without_id(unseen.1, missing))
        );
        let body = Some(json!({"body":"hi"}));
        let seen = call(
            reqwest::Method::POST,
            &url(existing),
            "mallory",
            body.clone(),
        )
        .await;
        let unseen = call(reqwest::Method::POST, &url(missing), "mallory", body).await;
        assert_eq!(seen.0, 404, "{seen:?}");
        assert_eq!(
            (seen.0, without_id(seen.1, existing)),
            (unseen.0, without_id(unseen.1, missing))
        );
    }

    // Nothing mallory tried changed anything.
    let history = alice
        .ok(json!({"type":"history","conv":"dm:alice:bob"}), "history")
        .await;
    assert_eq!(history["version"], 2, "{history}");
}

#[tokio::test]
async fn a_blocked_user_cannot_open_a_direct_conversation_or_add_the_blocker() {
    let node = TestNode::start().await;
    let mut alice = node.connect("alice").await;
    let mut bob = node.connect("bob").await;
    let mut carol = node.connect("carol").await;

    let reply = bob
        .ok(json!({"type":"block","user":"alice"}), "blocked")
        .await;
    assert_eq!(reply["user"], "alice");
    // Blocking again changes nothing and is answered the same.
    bob.ok(json!({"type":"block","user":"alice"}), "blocked")
        .await;
    let listed = bob.ok(json!({"type":"convs"}), "convs").await;
    assert_eq!(listed["blocked"], json!(["alice"]), "{listed}");
    let listed = alice.ok(json!({"type":"convs"}), "convs").await;
    assert_eq!(listed["blocked"], json!([]), "{listed}");

    let refused = alice
        .err(json!({"type":"dm","user":"bob"}), "forbidden")
        .await;
    assert!(
        refused["message"].as_str().unwrap().contains("blocked"),
        "{refused}"
    );
    alice
        .err(
            json!({"type":"create","members":["bob","carol"]}),
            "forbidden",
        )
        .await;
    let group = alice.create(["carol"]).await;
    alice
        .err(
            json!({"type":"members","conv":group,"add":["bob"]}),
            "forbidden",
        )
        .await;
    // Nothing was created or changed by the refusals.
    assert_eq!(bob.conv_ids().await, Vec::<String>::new());
    // Only the blocked user is kept out: carol may add bob, and bob may
    // still open a direct conversation with alice himself.
    carol
        .ok(json!({"type":"members","conv":group,"add":["bob"]}), "ack")
        .await;
    bob.ok(json!({"type":"dm","user":"alice"}), "created").await;

    // Over HTTP: a direct message is refused the same way.
    let (status, body) = call(
        reqwest::Method::POST,
        &node.http("/v1/users/carol/messages"),
        "alice",
        Some(json!({"body":"hi"})),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let (status, _) = call(
        reqwest::Method::PUT,
        &node.http("/v1/blocks/alice"),
        "carol",
        None,
    )
    .await;
    assert_eq!(status, 200);
    let (status, body) = get(&node.http("/v1/blocks"), "carol").await;
    assert_eq!((status, body["blocked"].clone()), (200, json!(["alice"])));
    let (status, body) = call(
        reqwest::Method::POST,
        &node.http("/v1/users/carol/messages"),
        "alice",
        Some(json!({"body":"again"})),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (403, json!("forbidden")),
        "{body}"
    );
    let (status, body) = get(&node.http("/v1/conversations"), "carol").await;
    assert_eq!(
        (status, body["blocked"].clone()),
        (200, json!(["alice"])),
        "{body}"
    );
    let (status, body) = call(
        reqwest::Method::DELETE,
        &node.http("/v1/blocks/alice"),
        "carol",
        None,
    )
    .await;
    assert_eq!(
        (status, body),
        (200, json!({"user":"alice","blocked":false}))
    );

    // Unblocked: alice may open the conversation again.
    bob.ok(json!({"type":"unblock","user":"alice"}), "unblocked")
        .await;
    bob.ok(json!({"type":"unblock","user":"alice"}), "unblocked")
        .await;
    let listed = bob.ok(json!({"type":"convs"}), "convs").await;
    assert_eq!(listed["blocked"], json!([]), "{listed}");
    alice.ok(json!({"type":"dm","user":"bob"}), "created").await;

    // Bad input gets a clear error.
    bob.err(json!({"type":"block","user":"bob"}), "bad_request")
        .await;
    bob.err(json!({"type":"block","user":"no such user"}), "bad_request")
        .await;
    bob.err(json!({"type":"block"}), "bad_request").await;
}

#[tokio::test]
async fn a_blocked_user_cannot_write_to_the_blocker_in_a_direct_conversation_they_share() {
    let node = TestNode::start().await;
    let mut alice = node.connect("alice").await;
    let mut bob = node.connect("bob").await;
    let dm = alice.ok(json!({"type":"dm","user":"bob"}), "created").await["conv"].clone();
    let first = alice
        .ok(json!({"type":"send","conv":dm,"body":"hi"}), "ack")
        .await["version"]
        .clone();
    let group = alice.create(["bob"]).await;

    bob.ok(json!({"type":"block","user":"alice"}), "blocked")
        .await;
    // The conversation existed before the block: writing to it is refused
    // all the same, over WebSocket and HTTP, and nothing is appended.
    let refused = alice
        .err(
            json!({"type":"send","conv":dm,"body":"still here?"}),
            "forbidden",
        )
        .await;
    assert!(
        refused["message"].as_str().unwrap().contains("blocked"),
        "{refused}"
    );
    alice
        .err(
            json!({"type":"edit","conv":dm,"target":first,"rev":1,"body":"hi!!"}),
            "forbidden",
        )
        .await;
    let (status, _) = call(
        reqwest::Method::POST,
        &node.http("/v1/conversations/dm:alice:bob/messages"),
        "alice",
        Some(json!({"body":"over http"})),
    )
    .await;
    assert_eq!(status, 403);
    let history = bob.ok(json!({"type":"history","conv":dm}), "history").await;
    assert_eq!(history["version"], first, "{history}");
    // She may still read it and delete her own message; the blocker may
    // still write to her; a group they share is not affected.
    alice
        .ok(json!({"type":"history","conv":dm}), "history")
        .await;
    alice
        .ok(
            json!({"type":"delete","conv":dm,"target":first,"rev":1}),
            "ack",
        )
        .await;
    bob.ok(json!({"type":"send","conv":dm,"body":"bye"}), "ack")
        .await;
    alice
        .ok(
            json!({"type":"send","conv":group,"body":"in the group"}),
            "ack",
        )
        .await;
    // An outsider is still told only that there is no such conversation.
    let mut carol = node.connect("carol").await;
    carol
        .err(json!({"type":"send","conv":dm,"body":"x"}), "not_found")
        .await;

    bob.ok(json!({"type":"unblock","user":"alice"}), "unblocked")
        .await;
    alice
        .ok(json!({"type":"send","conv":dm,"body":"thanks"}), "ack")
        .await;
}

#[tokio::test]
async fn a_block_survives_a_kill_and_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, addr) = process::spawn(dir.path(), std::iter::empty::<&str>()).await;
    let url = format!("ws://{addr}/v1/ws");
    let mut bob = Ws::subscribed(&url, &token("bob")).await;
    bob.ok(json!({"type":"block","user":"alice"}), "blocked")
        .await;
    // Acknowledged, so on disk: SIGKILL loses nothing of it.
    child.kill().await.unwrap();
    drop(bob);

    let (mut child, addr) = process::spawn(dir.path(), std::iter::empty::<&str>()).await;
    let url = format!("ws://{addr}/v1/ws");
    let mut alice = Ws::subscribed(&url, &token("alice")).await;
    alice
        .err(json!({"type":"dm","user":"bob"}), "forbidden")
        .await;
    let mut bob = Ws::subscribed(&url, &token("bob")).await;
    let listed = bob.ok(json!({"type":"convs"}), "convs").await;
    assert_eq!(listed["blocked"], json!(["alice"]), "{listed}");
    child.kill().await.unwrap();
}

#[tokio::test]
async fn in_a_cluster_presence_and_blocks_hold_on_every_node() {
    let _turn = one_cluster_at_a_time().await;
    let nodes = start_cluster(&["n1", "n2", "n3"]).await;
    let mut alice = nodes[0].connect("alice").await;
    let mut bob = nodes[1].connect("bob").await;
    let _eve = nodes[2].connect("eve").await;
    let mut carol = nodes[2].connect("carol").await;
    alice.ok(json!({"type":"dm","user":"bob"}), "created").await;

    // Bob and eve are both online on other nodes; alice shares a
    // conversation with bob only.
    let reply = alice
        .ok(json!({"type":"presence","users":["bob","eve"]}), "presence")
        .await;
    assert_eq!(answered(&reply), ["bob"], "{reply}");
    assert_eq!(reply["users"]["bob"], json!({"online": true, "devices": 1}));

    // A block made on n3 holds when asked on n1 and on n2.
    carol
        .ok(json!({"type":"block","user":"alice"}), "blocked")
        .await;
    alice
        .err(json!({"type":"dm","user":"carol"}), "forbidden")
        .await;
    let group = alice.create(["bob"]).await;
    alice
        .err(
            json!({"type":"members","conv":group,"add":["carol"]}),
            "forbidden",
        )
        .await;
    bob.ok(
        json!({"type":"members","conv":group,"add":["carol"]}),
        "ack",
    )
    .await;
    let mut carol_elsewhere = nodes[1].connect("carol").await;
    let listed = carol_elsewhere.ok(json!({"type":"convs"}), "convs").await;
    assert_eq!(listed["blocked"], json!(["alice"]), "{listed}");

    // The block is on a majority's disks, not in the memory of the node
    // that led carol's shard: with that node killed, the new leader
    // refuses alice too.
    let shard = u64::from(tidings_actors::shard::shard_of("carol").0);
    let leaders = all_leaders(&nodes).await;
    let leader = nodes
        .iter()
        .position(|n| Some(n.id) == leaders.get(&shard).map(String::as_str))
        .expect("carol's shard has a leader");
    let mut nodes = nodes;
    nodes[leader].kill().await;
    let survivor = &nodes[(leader + 1) % nodes.len()];
    let mut alice = survivor.connect("alice").await;
    // Asked again while the shard has no leader (bounded by a deadline).
    let deadline = tokio::time::Instant::now() + 3 * tidings_tests::WAIT;
    let refused = loop {
        let reply = alice.request(json!({"type":"dm","user":"carol"})).await;
        if reply["code"] != "unavailable" {
            break reply;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "carol's shard never got a new leader"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!(refused["code"], "forbidden", "{refused}");
}

#[tokio::test]
async fn the_rust_client_blocks_and_unblocks() {
    use tidings_protocol::client::{Client, ClientConfig};
    let node = TestNode::start().await;
    let config = ClientConfig::new([format!("ws://{}", node.addr)], token("bob"));
    let (bob, _pushes) = Client::connect(config);
    let alice_id = tidings_protocol::UserId::try_from("alice").unwrap();
    bob.block(alice_id.clone()).await.unwrap();
    let mut alice = node.connect("alice").await;
    alice
        .err(json!({"type":"dm","user":"bob"}), "forbidden")
        .await;
    bob.unblock(alice_id).await.unwrap();
    alice.ok(json!({"type":"dm","user":"bob"}), "created").await;
    bob.close();
}
