//! The inputs the fuzz targets are driven with: wholly random bytes, and
//! valid messages with random damage, so that cases get past the first
//! check of each decoder and into the ones behind it.

use proptest::collection::{btree_map, vec};
use proptest::prelude::*;
use proptest::sample::select;
use serde_json::{json, Map, Value};
use tidings_actors::codec;
use tidings_actors::command::{Ack, Page};
use tidings_actors::command::{Answer, Command, ConvCommand, UserCommand};
use tidings_actors::directory::Delivery;
use tidings_actors::storage::{Cf, WriteSet};
use tidings_cluster::forward::Forwarded;
use tidings_cluster::peer::Hello;
use tidings_cluster::replication::network::{RaftRequest, RaftResponse};
use tidings_protocol::frames::PresenceInfo;
use tidings_protocol::{ConvId, UserId};

/// Every client frame type, and some that are not.
const TYPES: &[&str] = &[
    "ping", "create", "dm", "send", "edit", "delete", "history", "sync", "convs", "members",
    "presence", "typing", "block", "unblock", "pong", "event", "", "PING", "0",
];

/// Every client frame field, and some that are not.
const FIELDS: &[&str] = &[
    "type",
    "req",
    "conv",
    "body",
    "cmid",
    "expect",
    "target",
    "rev",
    "after",
    "before",
    "limit",
    "convs",
    "notifications",
    "members",
    "title",
    "add",
    "remove",
    "users",
    "user",
    "token",
    "more",
];

/// Strings that ids and fields are made of, valid and not.
const WORDS: &[&str] = &[
    "alice",
    "bob",
    "dm:alice:bob",
    "dm:bob:alice",
    "dm:a:b:c",
    "g:abcdefghij0123456789",
    "g:",
    "",
    " ",
    "a b",
    "\u{0}",
    "é",
    "🦀",
    "-",
    "_.",
    "r1",
    "a-1",
];

/// One JSON scalar, biased towards what frames hold.
fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        (0u64..300).prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| json!(f)),
        select(WORDS).prop_map(|w| Value::from(w.to_owned())),
        vec(any::<char>(), 0..80).prop_map(|c| Value::from(String::from_iter(c))),
        (1usize..70).prop_map(|n| Value::from("x".repeat(n))),
    ]
}

/// Any JSON value, a few levels deep.
pub fn json_value() -> impl Strategy<Value = Value> {
    scalar().prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..4).prop_map(Value::Array),
            btree_map(field(), inner, 0..4).prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn field() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => select(FIELDS).prop_map(str::to_owned),
        1 => vec(any::<char>(), 0..8).prop_map(String::from_iter),
    ]
}

/// A client frame's JSON: a `type` (named or not, a string or not) and
/// fields (named or not) holding any values.
pub fn frame_object() -> impl Strategy<Value = String> {
    let kind = prop_oneof![
        4 => select(TYPES).prop_map(|t| Value::from(t.to_owned())),
        1 => scalar(),
    ];
    (kind, btree_map(field(), json_value(), 0..6), any::<bool>()).prop_map(
        |(kind, fields, typed_first)| {
            let mut object = Map::new();
            if typed_first {
                object.insert("type".into(), kind.clone());
            }
            object.extend(fields);
            if !typed_first {
                object.insert("type".into(), kind);
            }
            Value::Object(object).to_string()
        },
    )
}

/// Frames the node accepts, to be damaged.
const VALID: &[&str] = &[
    r#"{"type":"ping","req":"1"}"#,
    r#"{"type":"create","members":["bob","carol"],"title":"trip"}"#,
    r#"{"type":"dm","user":"bob"}"#,
    r#"{"type":"send","conv":"dm:alice:bob","body":"hi","cmid":"a-1","expect":3}"#,
    r#"{"type":"edit","conv":"g:abcdefghij0123456789","target":2,"rev":1,"body":"x"}"#,
    r#"{"type":"delete","conv":"dm:alice:bob","target":2,"rev":1}"#,
    r#"{"type":"history","conv":"dm:alice:bob","after":1,"before":9,"limit":50}"#,
    r#"{"type":"sync","convs":{"dm:alice:bob":3},"notifications":2,"limit":100}"#,
    r#"{"type":"convs"}"#,
    r#"{"type":"members","conv":"g:abcdefghij0123456789","add":["dan"],"remove":["bob"]}"#,
    r#"{"type":"presence","users":["alice","bob"]}"#,
    r#"{"type":"typing","conv":"dm:alice:bob"}"#,
    r#"{"type":"block","user":"bob","req":"b"}"#,
    r#"{"type":"unblock","user":"bob"}"#,
];

/// A valid frame with one field set to any value.
fn valid_with_a_changed_field() -> impl Strategy<Value = String> {
    (select(VALID), field(), json_value()).prop_map(|(frame, name, value)| {
        let mut object: Map<String, Value> = serde_json::from_str(frame).expect("valid JSON");
        object.insert(name, value);
        Value::Object(object).to_string()
    })
}

/// One change to a byte string.
#[derive(Debug, Clone)]
pub enum Damage {
    Flip(usize, u8),
    Insert(usize, Vec<u8>),
    Remove(usize, usize),
    Truncate(usize),
}

fn damage() -> impl Strategy<Value = Damage> {
    // Lengths that bincode reads as huge, and JSON's delimiters.
    let nasty = prop_oneof![
        vec(any::<u8>(), 1..4),
        Just(vec![0xFD, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F]),
        Just(vec![0xFC, 0xFF, 0xFF, 0xFF, 0x7F]),
        Just(vec![0xFB, 0xFF, 0xFF]),
        (any::<u64>()).prop_map(|n| {
            let mut v = vec![0xFD];
            v.extend_from_slice(&n.to_le_bytes());
            v
        }),
        select(vec![
            b"{".to_vec(),
            b"}".to_vec(),
            b"\"".to_vec(),
            b"[".to_vec(),
            b"\\u".to_vec(),
        ]),
    ];
    prop_oneof![
        3 => (any::<usize>(), any::<u8>()).prop_map(|(at, bit)| Damage::Flip(at, bit)),
        2 => (any::<usize>(), nasty).prop_map(|(at, bytes)| Damage::Insert(at, bytes)),
        1 => (any::<usize>(), 1usize..8).prop_map(|(at, n)| Damage::Remove(at, n)),
        1 => any::<usize>().prop_map(Damage::Truncate),
    ]
}

/// `bytes` after `damages`, each at a place taken modulo the length.
pub fn damaged(mut bytes: Vec<u8>, damages: &[Damage]) -> Vec<u8> {
    for damage in damages {
        let len = bytes.len();
        match damage {
            Damage::Flip(at, bits) if len > 0 => bytes[at % len] ^= bits | 1,
            Damage::Insert(at, more) => {
                let at = at % (len + 1);
                bytes.splice(at..at, more.iter().copied());
            }
            Damage::Remove(at, n) if len > 0 => {
                let at = at % len;
                bytes.drain(at..(at + n).min(len));
            }
            Damage::Truncate(at) => bytes.truncate(at % (len + 1)),
            _ => {}
        }
    }
    bytes
}

fn damages() -> impl Strategy<Value = Vec<Damage>> {
    vec(damage(), 1..4)
}

/// Client text frames: random text, built frames, valid frames with a
/// changed field, and any of those damaged (read as UTF-8, lossily, as
/// a text frame must be valid UTF-8).
pub fn client_text() -> impl Strategy<Value = String> {
    fn built() -> impl Strategy<Value = String> {
        prop_oneof![
            2 => frame_object(),
            2 => valid_with_a_changed_field(),
            1 => select(VALID).prop_map(str::to_owned),
        ]
    }
    prop_oneof![
        1 => vec(any::<char>(), 0..64).prop_map(String::from_iter),
        4 => built(),
        2 => (built(), damages()).prop_map(|(text, d)| {
            String::from_utf8_lossy(&damaged(text.into_bytes(), &d)).into_owned()
        }),
    ]
}

/// One WebSocket frame as a client might send it.
#[derive(Debug, Clone)]
pub struct WsFrame {
    pub fin: bool,
    pub rsv: u8,
    pub opcode: u8,
    pub mask: Option<[u8; 4]>,
    pub payload: Vec<u8>,
    /// A length field that does not match the payload.
    pub claimed: Option<u64>,
}

const TEXT: u8 = 1;
const BINARY: u8 = 2;
const CLOSE: u8 = 8;
const PING: u8 = 9;
const PONG: u8 = 10;

impl WsFrame {
    /// The frame's bytes on the wire (RFC 6455, 5.2).
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.push((u8::from(self.fin) << 7) | ((self.rsv & 7) << 4) | (self.opcode & 0xF));
        let masked = u8::from(self.mask.is_some()) << 7;
        let len = self.claimed.unwrap_or(self.payload.len() as u64);
        if len < 126 {
            out.push(masked | len as u8);
        } else if len <= u64::from(u16::MAX) {
            out.push(masked | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            out.push(masked | 127);
            out.extend_from_slice(&len.to_be_bytes());
        }
        match self.mask {
            Some(mask) => {
                out.extend_from_slice(&mask);
                out.extend(
                    self.payload
                        .iter()
                        .zip(mask.iter().cycle())
                        .map(|(b, m)| b ^ m),
                );
            }
            None => out.extend_from_slice(&self.payload),
        }
    }

    /// Whether the reader serves this frame and goes on to the next: a
    /// whole masked data or control frame, within the limits. Text frames
    /// must hold UTF-8.
    fn goes_on(&self, max: usize) -> bool {
        let well_formed =
            self.fin && self.rsv == 0 && self.mask.is_some() && self.claimed.is_none();
        let fits = match self.opcode {
            TEXT => self.payload.len() <= max && std::str::from_utf8(&self.payload).is_ok(),
            BINARY => self.payload.len() <= max,
            PING | PONG => self.payload.len() <= 125,
            _ => false,
        };
        well_formed && fits
    }
}

/// What the reader must hand on from `frames` that are not damaged: the
/// texts of the frames before the first it does not go on after.
pub fn expected_texts(frames: &[WsFrame], max: usize) -> Vec<String> {
    frames
        .iter()
        .take_while(|f| f.goes_on(max))
        .filter(|f| f.opcode == TEXT)
        .map(|f| String::from_utf8(f.payload.clone()).expect("checked UTF-8"))
        .collect()
}

fn ws_frame() -> impl Strategy<Value = WsFrame> {
    let opcode = prop_oneof![
        8 => Just(TEXT),
        1 => Just(BINARY),
        1 => Just(PING),
        1 => Just(PONG),
        1 => Just(CLOSE),
        1 => Just(0u8),
        1 => 0u8..16,
    ];
    let payload = prop_oneof![
        4 => client_text().prop_map(String::into_bytes),
        1 => vec(any::<u8>(), 0..200),
        1 => (any::<u16>(), vec(any::<char>(), 0..10))
            .prop_map(|(code, why)| {
                let mut p = code.to_be_bytes().to_vec();
                p.extend_from_slice(String::from_iter(why).as_bytes());
                p
            }),
        1 => (120usize..300).prop_map(|n| vec![b'x'; n]),
    ];
    let claimed = prop_oneof![
        20 => Just(None),
        1 => any::<u64>().prop_map(Some),
        1 => (0u64..300).prop_map(Some),
        1 => Just(Some(u64::MAX)),
    ];
    (
        prop::bool::weighted(0.9),
        prop_oneof![12 => Just(0u8), 1 => 0u8..8],
        opcode,
        prop::option::weighted(0.95, any::<[u8; 4]>()),
        payload,
        claimed,
    )
        .prop_map(|(fin, rsv, opcode, mask, payload, claimed)| WsFrame {
            fin,
            rsv,
            opcode,
            mask,
            payload,
            claimed,
        })
}

/// Bytes a client sends after the upgrade: frames, or frames damaged, or
/// random bytes. The frames come along when they are whole, so that what
/// the reader must hand on can be checked.
pub fn ws_bytes() -> impl Strategy<Value = (Vec<u8>, Option<Vec<WsFrame>>)> {
    let frames = || vec(ws_frame(), 0..6);
    prop_oneof![
        4 => frames().prop_map(|frames| {
            let mut bytes = Vec::new();
            frames.iter().for_each(|f| f.encode(&mut bytes));
            (bytes, Some(frames))
        }),
        2 => (frames(), damages()).prop_map(|(frames, d)| {
            let mut bytes = Vec::new();
            frames.iter().for_each(|f| f.encode(&mut bytes));
            (damaged(bytes, &d), None)
        }),
        1 => vec(any::<u8>(), 0..256).prop_map(|b| (b, None)),
    ]
}

fn user(name: &str) -> UserId {
    UserId::try_from(name.to_owned()).expect("a valid user id")
}

fn conv(id: &str) -> ConvId {
    ConvId::try_from(id.to_owned()).expect("a valid conversation id")
}

/// A copy of the shape of a location message (`cluster::locations`), whose
/// type is private there: the same fields in the same order encode the
/// same.
#[derive(serde::Serialize)]
struct Located {
    from: String,
    news: News,
}

#[derive(serde::Serialize)]
#[allow(dead_code, reason = "each variant only has to encode")]
enum News {
    All { users: Vec<UserId>, answer: bool },
    Online(UserId),
    Offline(UserId),
}

/// One valid payload of each kind a peer sends.
pub fn cluster_seeds() -> Vec<Vec<u8>> {
    use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, Vote};
    let log_id = |index| LogId::new(CommittedLeaderId::new(2, 7), index);
    let mut writes = WriteSet::default();
    writes
        .put(
            Cf::ConvLog,
            b"\x04g:ab\0\0\0\0\0\0\0\x01".to_vec(),
            &"event",
        )
        .expect("encodes");
    writes.delete(Cf::UserConvs, b"\x05alice".to_vec());
    writes.expect(Cf::ConvLog, "g:ab", 0, 1);
    let append = openraft::raft::AppendEntriesRequest {
        vote: Vote::new_committed(2, 7),
        prev_log_id: Some(log_id(4)),
        entries: vec![
            Entry {
                log_id: log_id(5),
                payload: EntryPayload::Normal(writes),
            },
            Entry {
                log_id: log_id(6),
                payload: EntryPayload::Blank,
            },
        ],
        leader_commit: Some(log_id(4)),
    };
    let vote = openraft::raft::VoteRequest::new(Vote::new(3, 9), Some(log_id(6)));
    let voted = openraft::raft::VoteResponse {
        vote: Vote::new(3, 9),
        vote_granted: true,
        last_log_id: Some(log_id(6)),
    };
    let op = Command::Conv(
        conv("dm:alice:bob"),
        ConvCommand::Send {
            by: user("alice"),
            body: "hi".into(),
            cmid: Some("a-1".to_owned().try_into().expect("a cmid")),
            expect: Some(3),
        },
    );
    let history = Command::Conv(
        conv("g:abcdefghij0123456789"),
        ConvCommand::History {
            by: user("bob"),
            page: Page {
                after: Some(1),
                before: None,
                limit: 50,
                max_bytes: 1 << 20,
            },
        },
    );
    let notify = Command::User(
        user("bob"),
        UserCommand::Notify {
            payload: json!({"kind":"invoice","id":42}),
        },
    );
    let ran = Forwarded::Ran(Answer::Ack(Ack {
        conv: conv("dm:alice:bob"),
        version: 4,
        ts: 1,
        dup: Some(false),
    }));
    let refused = Forwarded::Refused(tidings_actors::Error::BadRequest("no".into()));
    let moved = Forwarded::NotLeader {
        leader: Some("n2".into()),
    };
    let delivery = Delivery {
        users: vec![user("alice"), user("bob")],
        except: Some(user("bob")),
        frame: br#"{"type":"typing","conv":"dm:alice:bob","user":"bob"}"#.to_vec(),
    };
    let located = Located {
        from: "n2".into(),
        news: News::All {
            users: vec![user("alice")],
            answer: true,
        },
    };
    let online = Located {
        from: "n2".into(),
        news: News::Online(user("bob")),
    };
    let bin = |v: Result<Vec<u8>, codec::CodecError>| v.expect("encodes");
    vec![
        bin(codec::encode(&Hello {
            node: "n1".into(),
            nodes: 3,
        })),
        bin(codec::encode(&RaftRequest::Append(3, append))),
        bin(codec::encode(&RaftRequest::Vote(3, vote))),
        bin(codec::encode(&Some(RaftResponse::Vote(Ok(voted))))),
        bin(codec::encode(&Some(RaftResponse::Append(Ok(
            openraft::raft::AppendEntriesResponse::Success,
        ))))),
        bin(codec::encode(&None::<RaftResponse>)),
        bin(codec::encode(&delivery)),
        bin(codec::encode(&located)),
        bin(codec::encode(&online)),
        bin(codec::encode(&op)),
        bin(codec::encode(&history)),
        bin(codec::encode(&notify)),
        bin(codec::encode(&ran)),
        bin(codec::encode(&refused)),
        bin(codec::encode(&moved)),
        bin(codec::encode(&vec![user("alice"), user("bob")])),
        bin(codec::encode(&vec![PresenceInfo {
            online: true,
            devices: 2,
        }])),
    ]
}

/// Payloads from a peer: random bytes, or a valid one of some kind,
/// damaged.
pub fn cluster_bytes() -> impl Strategy<Value = Vec<u8>> {
    let seeds = cluster_seeds();
    prop_oneof![
        1 => vec(any::<u8>(), 0..256),
        4 => (select(seeds), damages()).prop_map(|(seed, d)| damaged(seed, &d)),
    ]
}
