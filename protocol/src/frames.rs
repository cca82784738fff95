//! The JSON frames of protocol v1, both directions.
//!
//! Over WebSocket every frame is one JSON object in one text frame, tagged by
//! `type`. Any client frame may carry `req`; the reply to it carries the same
//! `req`, so a client can match replies to requests.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{ErrorCode, ErrorFrame};
use crate::ids::{Cmid, ConvId, UserId};

/// A client frame with its optional correlation id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClientEnvelope {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub req: Option<String>,
    #[serde(flatten)]
    pub frame: ClientFrame,
}

/// What a client asks of the node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientFrame {
    Ping,
    Create {
        members: Vec<UserId>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        title: Option<String>,
    },
    Dm {
        user: UserId,
    },
    Send {
        conv: ConvId,
        body: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cmid: Option<Cmid>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        expect: Option<u64>,
    },
    Edit {
        conv: ConvId,
        target: u64,
        rev: u32,
        body: String,
    },
    Delete {
        conv: ConvId,
        target: u64,
        rev: u32,
    },
    History {
        conv: ConvId,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        after: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        before: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        limit: Option<u32>,
    },
    Sync {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        convs: Option<BTreeMap<ConvId, u64>>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        notifications: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        limit: Option<u32>,
    },
    Convs {
        /// List the conversations after this id (ids in order): the next
        /// page after a reply that said `more`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        after: Option<ConvId>,
    },
    /// A member gives a group a new title.
    Rename {
        conv: ConvId,
        title: String,
    },
    Members {
        conv: ConvId,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        add: Option<Vec<UserId>>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        remove: Option<Vec<UserId>>,
    },
    Presence {
        users: Vec<UserId>,
    },
    Typing {
        conv: ConvId,
    },
    /// A fresh token for the same user, before the one the socket was
    /// opened with expires.
    Refresh {
        token: String,
    },
    /// Refuse direct conversations and additions to conversations from
    /// `user`, until `unblock`.
    Block {
        user: UserId,
    },
    Unblock {
        user: UserId,
    },
}

#[derive(Deserialize)]
struct ReqOnly {
    #[serde(default)]
    req: Option<Value>,
}

impl ClientEnvelope {
    /// Parses and validates one client text frame. On failure the error
    /// comes with the frame's `req`, when one could be read, so the reply
    /// still correlates.
    #[allow(clippy::result_large_err)] // the error path is the rare one
    pub fn parse(text: &str) -> Result<ClientEnvelope, (Option<String>, ErrorFrame)> {
        let parsed = check_type(text).and_then(|()| serde_json::from_str::<ClientEnvelope>(text));
        match parsed {
            Ok(envelope) => {
                // A `req` over its limit is not echoed back: the error says
                // it is too long.
                let req = envelope
                    .req
                    .clone()
                    .filter(|r| r.chars().count() <= crate::MAX_REQ_CHARS);
                envelope.validate().map_err(|e| (req, e))?;
                Ok(envelope)
            }
            Err(err) => Err((
                ClientEnvelope::req_of(text),
                ErrorFrame::bad_request(describe_json_error(&err)),
            )),
        }
    }

    /// The `req` of a frame that is not otherwise read (it failed to
    /// parse, or it is refused before parsing), when it has a valid one.
    pub fn req_of(text: &str) -> Option<String> {
        serde_json::from_str::<ReqOnly>(text)
            .ok()
            .and_then(|r| match r.req {
                Some(Value::String(s)) if s.chars().count() <= crate::MAX_REQ_CHARS => Some(s),
                _ => None,
            })
    }

    /// Checks the limits that the types alone do not express.
    pub fn validate(&self) -> Result<(), ErrorFrame> {
        if let Some(req) = &self.req {
            if req.chars().count() > crate::MAX_REQ_CHARS {
                return Err(ErrorFrame::bad_request(format!(
                    "req must be at most {} characters",
                    crate::MAX_REQ_CHARS
                )));
            }
        }
        self.frame.validate()
    }
}

/// The `type` of a frame, read on its own.
#[derive(Deserialize)]
struct TypeOnly {
    #[serde(rename = "type", default)]
    _kind: Option<TypeName>,
}

/// A `type` must be a string: serde would also take a variant's index
/// (`{"type":3}`), which the protocol does not name. Its value is not
/// kept; the frame's own parse reads it.
struct TypeName;

impl<'de> Deserialize<'de> for TypeName {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Name;
        impl serde::de::Visitor<'_> for Name {
            type Value = TypeName;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a frame type's name, a string")
            }
            fn visit_str<E: serde::de::Error>(self, _: &str) -> Result<TypeName, E> {
                Ok(TypeName)
            }
        }
        deserializer.deserialize_str(Name)
    }
}

/// Refuses a frame whose `type` is there and is not a string. A missing
/// or unknown name is left to the frame's own parse, which says which.
fn check_type(text: &str) -> Result<(), serde_json::Error> {
    serde_json::from_str::<TypeOnly>(text).map(drop)
}

fn describe_json_error(err: &serde_json::Error) -> String {
    use serde_json::error::Category;
    match err.classify() {
        Category::Syntax | Category::Eof => format!("invalid JSON: {err}"),
        Category::Data => format!("malformed frame: {err}"),
        Category::Io => format!("unreadable frame: {err}"),
    }
}

/// Checks a message body's size.
pub fn validate_body(body: &str) -> Result<(), ErrorFrame> {
    if body.len() > crate::MAX_BODY_BYTES {
        return Err(ErrorFrame::new(
            ErrorCode::TooLarge,
            format!(
                "body is {} bytes; the limit is {} bytes",
                body.len(),
                crate::MAX_BODY_BYTES
            ),
        ));
    }
    Ok(())
}

/// Checks a page size, returning the default when none is given.
pub fn validate_limit(limit: Option<u32>, default: u32) -> Result<u32, ErrorFrame> {
    match limit {
        None => Ok(default),
        Some(l) if (1..=crate::MAX_LIMIT).contains(&l) => Ok(l),
        Some(l) => Err(ErrorFrame::bad_request(format!(
            "limit must be between 1 and {}, not {l}",
            crate::MAX_LIMIT
        ))),
    }
}

/// Checks a conversation title's length.
pub fn validate_title(title: Option<&str>) -> Result<(), ErrorFrame> {
    if let Some(title) = title {
        if title.chars().count() > crate::MAX_TITLE_CHARS {
            return Err(ErrorFrame::bad_request(format!(
                "title must be at most {} characters",
                crate::MAX_TITLE_CHARS
            )));
        }
    }
    Ok(())
}

/// Checks the title a `rename` gives: not empty, and not too long.
pub fn validate_new_title(title: &str) -> Result<(), ErrorFrame> {
    if title.trim().is_empty() {
        return Err(ErrorFrame::bad_request("title must not be empty"));
    }
    validate_title(Some(title))
}

/// Checks a member list's length.
pub fn validate_members(members: &[UserId]) -> Result<(), ErrorFrame> {
    if members.len() > crate::MAX_MEMBERS {
        return Err(ErrorFrame::bad_request(format!(
            "a conversation has at most {} members",
            crate::MAX_MEMBERS
        )));
    }
    Ok(())
}

impl ClientFrame {
    /// Checks the limits that the types alone do not express.
    pub fn validate(&self) -> Result<(), ErrorFrame> {
        match self {
            ClientFrame::Create { members, title } => {
                validate_members(members)?;
                validate_title(title.as_deref())
            }
            ClientFrame::Send { body, .. } | ClientFrame::Edit { body, .. } => validate_body(body),
            ClientFrame::Rename { title, .. } => validate_new_title(title),
            ClientFrame::History { limit, .. } => {
                validate_limit(*limit, crate::DEFAULT_HISTORY_LIMIT).map(drop)
            }
            ClientFrame::Sync { limit, .. } => {
                validate_limit(*limit, crate::DEFAULT_SYNC_LIMIT).map(drop)
            }
            ClientFrame::Members { add, remove, .. } => {
                validate_members(add.as_deref().unwrap_or_default())?;
                validate_members(remove.as_deref().unwrap_or_default())
            }
            ClientFrame::Presence { users } if users.len() > crate::MAX_PRESENCE_USERS => {
                Err(ErrorFrame::bad_request(format!(
                    "presence takes at most {} users",
                    crate::MAX_PRESENCE_USERS
                )))
            }
            _ => Ok(()),
        }
    }
}

/// One event of a conversation's log. Pushes, `history` and `synced` all
/// carry this same object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub conv: ConvId,
    pub version: u64,
    /// Milliseconds since the Unix epoch.
    pub ts: u64,
    pub from: UserId,
    #[serde(flatten)]
    pub kind: EventKind,
}

/// What happened, tagged by `kind`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum EventKind {
    Created {
        title: Option<String>,
        members: Vec<UserId>,
    },
    Message {
        body: String,
        cmid: Option<Cmid>,
    },
    Edit {
        target: u64,
        rev: u32,
        body: String,
    },
    Delete {
        target: u64,
        rev: u32,
    },
    Join {
        users: Vec<UserId>,
    },
    Leave {
        users: Vec<UserId>,
    },
    /// The group was renamed (`rename`).
    Title {
        title: String,
    },
}

/// A notification a backend pushed to a user, from the user's own log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Notification {
    pub version: u64,
    pub ts: u64,
    pub payload: Value,
}

/// A conversation as listed by `convs`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConvSummary {
    pub conv: ConvId,
    pub title: Option<String>,
    pub members: Vec<UserId>,
    pub version: u64,
}

/// One conversation of a `synced` reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncedConv {
    pub conv: ConvId,
    pub title: Option<String>,
    pub members: Vec<UserId>,
    pub version: u64,
    pub events: Vec<Event>,
    /// More events exist beyond this page; page on with `history`.
    pub more: bool,
}

/// The notifications part of a `synced` reply.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SyncedNotifications {
    pub version: u64,
    pub events: Vec<Notification>,
    pub more: bool,
}

/// Whether a user is online, and on how many devices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresenceInfo {
    pub online: bool,
    pub devices: u32,
}

/// A server frame with the `req` of the client frame it answers, if any.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerEnvelope {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub req: Option<String>,
    #[serde(flatten)]
    pub frame: ServerFrame,
}

/// What the node says: replies and pushes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame {
    Pong,
    Created {
        conv: ConvId,
        version: u64,
    },
    Ack {
        conv: ConvId,
        version: u64,
        ts: u64,
        /// Only on `send` acks: whether this was a retry of an accepted cmid.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        dup: Option<bool>,
    },
    History {
        conv: ConvId,
        version: u64,
        events: Vec<Event>,
        /// The page stopped at the node's reply byte bound
        /// (`--max-reply-bytes`): more events follow in the direction it
        /// pages; ask again from its last (`after`) or first (`before`).
        #[serde(default)]
        more: bool,
    },
    Synced {
        convs: Vec<SyncedConv>,
        notifications: SyncedNotifications,
        /// Conversations with events to deliver were left out at the
        /// node's reply byte bound: sync again with the versions now had.
        #[serde(default)]
        more: bool,
    },
    Convs {
        conversations: Vec<ConvSummary>,
        /// The list stopped at the node's reply byte bound: ask again with
        /// `after` set to the last conversation listed.
        #[serde(default)]
        more: bool,
        /// The users this user has blocked.
        #[serde(default)]
        blocked: Vec<UserId>,
    },
    Presence {
        users: BTreeMap<UserId, PresenceInfo>,
    },
    /// The answer to `block`: `user` is blocked (whether or not it was).
    Blocked {
        user: UserId,
    },
    /// The answer to `unblock`: `user` is not blocked (whether or not it was).
    Unblocked {
        user: UserId,
    },
    Event(Event),
    Notification(Notification),
    Typing {
        conv: ConvId,
        user: UserId,
    },
    /// A push in a cluster: the node lost its link to another node, and
    /// events sent over that link may not have arrived. The client sends
    /// `sync` with what it has, as after a reconnect.
    Resync,
    /// The answer to `refresh`: the socket now lives until `exp` (unix
    /// seconds), the new token's expiry.
    Refreshed {
        exp: u64,
    },
    Error(ErrorFrame),
}

impl ServerFrame {
    /// This frame as a reply to the request with `req`.
    pub fn reply(self, req: Option<String>) -> ServerEnvelope {
        ServerEnvelope { req, frame: self }
    }

    /// This frame as a push, answering no request.
    pub fn push(self) -> ServerEnvelope {
        ServerEnvelope {
            req: None,
            frame: self,
        }
    }
}

impl ServerEnvelope {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("server frames always serialize")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn client_frames_parse_with_their_req() {
        let env = ClientEnvelope::parse(
            r#"{"type":"send","req":"r1","conv":"dm:a:b","body":"hi","cmid":"c1"}"#,
        )
        .unwrap();
        assert_eq!(env.req.as_deref(), Some("r1"));
        match env.frame {
            ClientFrame::Send {
                conv,
                body,
                cmid,
                expect,
            } => {
                assert_eq!(conv.as_str(), "dm:a:b");
                assert_eq!(body, "hi");
                assert_eq!(cmid.unwrap().as_str(), "c1");
                assert_eq!(expect, None);
            }
            other => panic!("parsed as {other:?}"),
        }
        assert_eq!(
            ClientEnvelope::parse(r#"{"type":"ping"}"#).unwrap().frame,
            ClientFrame::Ping
        );
    }

    #[test]
    fn bad_frames_get_bad_request_and_keep_req() {
        let (req, err) = ClientEnvelope::parse(r#"{"type":"nope","req":"x"}"#).unwrap_err();
        assert_eq!(req.as_deref(), Some("x"));
        assert_eq!(err.code, ErrorCode::BadRequest);
        assert!(err.message.contains("nope"), "{}", err.message);

        let (_, err) = ClientEnvelope::parse(r#"{"type":"send","body":"x"}"#).unwrap_err();
        assert!(err.message.contains("conv"), "{}", err.message);

        let (_, err) = ClientEnvelope::parse("{not json").unwrap_err();
        assert!(err.message.starts_with("invalid JSON"), "{}", err.message);

        let (_, err) =
            ClientEnvelope::parse(r#"{"type":"history","conv":"dm:a:b","limit":0}"#).unwrap_err();
        assert_eq!(err.code, ErrorCode::BadRequest);

        let body = "x".repeat(crate::MAX_BODY_BYTES + 1);
        let frame = json!({"type":"send","conv":"dm:a:b","body":body}).to_string();
        let (_, err) = ClientEnvelope::parse(&frame).unwrap_err();
        assert_eq!(err.code, ErrorCode::TooLarge);
    }

    #[test]
    fn a_type_must_be_a_name_the_protocol_gives() {
        // serde takes a variant's index for its name; the protocol does not.
        for frame in [
            r#"{"type":0}"#,
            r#"{"type":3,"req":"n","user":"bob"}"#,
            r#"{"type":2.0,"user":"bob"}"#,
            r#"{"type":true}"#,
            r#"{"type":null}"#,
            r#"{"type":["dm"],"user":"bob"}"#,
            r#"{"type":{"dm":1},"user":"bob"}"#,
            r#"{"type":"3","user":"bob"}"#,
            r#"{"type":"Dm","user":"bob"}"#,
            r#"{"type":"dm ","user":"bob"}"#,
        ] {
            let (_, err) = ClientEnvelope::parse(frame).unwrap_err();
            assert_eq!(err.code, ErrorCode::BadRequest, "{frame}");
        }
        let (req, _) = ClientEnvelope::parse(r#"{"type":3,"req":"n","user":"bob"}"#).unwrap_err();
        assert_eq!(req.as_deref(), Some("n"));
        // A name written with escapes is still the name.
        let env = ClientEnvelope::parse(r#"{"type":"d\u006d","user":"bob"}"#).unwrap();
        assert!(matches!(env.frame, ClientFrame::Dm { .. }));
        let (_, err) = ClientEnvelope::parse(r#"{"user":"bob"}"#).unwrap_err();
        assert!(err.message.contains("type"), "{}", err.message);
    }

    #[test]
    fn refresh_frames_round_trip() {
        let env = ClientEnvelope::parse(r#"{"type":"refresh","req":"t","token":"abc"}"#).unwrap();
        assert_eq!(
            env.frame,
            ClientFrame::Refresh {
                token: "abc".into()
            }
        );
        let reply = ServerFrame::Refreshed { exp: 42 }.reply(Some("t".into()));
        let value: Value = serde_json::from_str(&reply.to_json()).unwrap();
        assert_eq!(value, json!({"type":"refreshed","req":"t","exp":42}));
    }

    #[test]
    fn a_req_over_its_limit_is_refused_and_not_echoed() {
        let req = "r".repeat(crate::MAX_REQ_CHARS + 1);
        let frame = json!({"type":"ping","req":req}).to_string();
        let (echoed, err) = ClientEnvelope::parse(&frame).unwrap_err();
        assert_eq!(echoed, None);
        assert_eq!(err.code, ErrorCode::BadRequest);
        let req = "r".repeat(crate::MAX_REQ_CHARS);
        let frame = json!({"type":"ping","req":req}).to_string();
        assert_eq!(ClientEnvelope::parse(&frame).unwrap().req, Some(req));
    }

    #[test]
    fn events_serialize_flat() {
        let event = ServerFrame::Event(Event {
            conv: ConvId::try_from("dm:a:b").unwrap(),
            version: 2,
            ts: 7,
            from: UserId::try_from("a").unwrap(),
            kind: EventKind::Message {
                body: "hi".into(),
                cmid: None,
            },
        })
        .push();
        let value: Value = serde_json::from_str(&event.to_json()).unwrap();
        assert_eq!(
            value,
            json!({"type":"event","conv":"dm:a:b","version":2,"ts":7,"from":"a",
                   "kind":"message","body":"hi","cmid":null})
        );
        let back: ServerEnvelope = serde_json::from_value(value).unwrap();
        assert_eq!(back, event);
    }

    #[test]
    fn errors_carry_req_and_code() {
        let frame = ServerFrame::Error(ErrorFrame::new(ErrorCode::Forbidden, "not a member"))
            .reply(Some("q".into()));
        let value: Value = serde_json::from_str(&frame.to_json()).unwrap();
        assert_eq!(
            value,
            json!({"type":"error","req":"q","code":"forbidden","message":"not a member"})
        );
    }
}
