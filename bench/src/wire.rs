//! What each target's rooms frames look like on the wire: the URL to open,
//! the frame that joins a room, publish frames built in one reused buffer,
//! and the message bodies of a received frame found in place, with no
//! allocation, since the generator reads every delivery on the same two
//! cores as the server it measures.
//!
//! The JSON servers send compact JSON (Tidings' serde_json, or our own
//! publish frame copied as it is), and a key with its quotes, such as
//! `"body":"`, cannot occur inside a JSON string, where quotes are escaped:
//! so a byte search for a key finds that key. The bench's bodies (a number,
//! or the probe) never need escapes; a body that has one is not ours.

use bytes::{BufMut, BytesMut};
use memchr::memmem;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::rooms::token;
use crate::Target;

/// The body that tells a connection it is subscribed.
pub(crate) const PROBE: &[u8] = b"probe";

pub(crate) fn url(target: Target, addr: &str, user: &str) -> String {
    match target {
        Target::Tidings | Target::TidingsCluster => {
            format!("ws://{addr}/v1/ws?token={}", token(user))
        }
        Target::Baseline | Target::NodeWs | Target::Nats => format!("ws://{addr}/"),
    }
}

/// The frame that joins `room`, for the servers that need one.
pub(crate) fn join_frame(target: Target, room: &str) -> Option<String> {
    match target {
        Target::Tidings | Target::TidingsCluster => None,
        Target::Baseline | Target::NodeWs => {
            Some(serde_json::json!({"type":"join","room":room}).to_string())
        }
        Target::Nats => Some(format!(
            "CONNECT {{\"verbose\":false,\"pedantic\":false}}\r\nSUB {room} 1\r\n"
        )),
    }
}

/// Builds one room's publish frames in a buffer whose space is reclaimed
/// once the previous frame has been written out and dropped.
pub(crate) struct Publish {
    target: Target,
    /// Everything before the body (NATS: before the body's length).
    prefix: Vec<u8>,
    buf: BytesMut,
}

impl Publish {
    pub(crate) fn new(target: Target, room: &str) -> Publish {
        let prefix = match target {
            Target::Tidings | Target::TidingsCluster => {
                format!(r#"{{"type":"send","conv":"{room}","body":""#)
            }
            Target::Baseline | Target::NodeWs => {
                format!(r#"{{"type":"pub","room":"{room}","body":""#)
            }
            Target::Nats => format!("PUB {room} "),
        };
        Publish {
            target,
            prefix: prefix.into_bytes(),
            buf: BytesMut::new(),
        }
    }

    /// The frame that publishes `body`, which must need no JSON escapes.
    pub(crate) fn frame(&mut self, body: &[u8]) -> Utf8Bytes {
        let mut digits = [0; 20];
        self.buf.reserve(self.prefix.len() + body.len() + 24);
        self.buf.put_slice(&self.prefix);
        if self.target == Target::Nats {
            self.buf.put_slice(decimal(body.len() as u64, &mut digits));
            self.buf.put_slice(b"\r\n");
            self.buf.put_slice(body);
            self.buf.put_slice(b"\r\n");
        } else {
            self.buf.put_slice(body);
            self.buf.put_slice(b"\"}");
        }
        Utf8Bytes::try_from(self.buf.split().freeze()).expect("frames are built from UTF-8")
    }
}

/// `n` in decimal, written into `buf`.
pub(crate) fn decimal(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[at..];
        }
    }
}

/// A decimal number of at most 19 digits.
pub(crate) fn parse_decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 19 {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &d| {
        d.is_ascii_digit().then(|| n * 10 + u64::from(d - b'0'))
    })
}

/// The body of the message a JSON target's frame delivers, if it is one:
/// Tidings' `event` of kind `message`, or the peers' copy of a `pub`.
pub(crate) fn json_body(target: Target, frame: &[u8]) -> Option<&[u8]> {
    let has = |key: &[u8]| memmem::find(frame, key).is_some();
    let is_message = match target {
        Target::Tidings | Target::TidingsCluster => {
            has(br#""type":"event""#) && has(br#""kind":"message""#)
        }
        Target::Baseline | Target::NodeWs => has(br#""type":"pub""#),
        Target::Nats => false,
    };
    if !is_message {
        return None;
    }
    let key = br#""body":""#;
    let start = memmem::find(frame, key)? + key.len();
    let len = memchr::memchr(b'"', &frame[start..])?;
    let body = &frame[start..start + len];
    (!body.contains(&b'\\')).then_some(body)
}

/// Calls `each` with the payload of every whole `MSG` in `buf`, which
/// holds NATS protocol lines (one WebSocket frame may pack several
/// messages, and a message may in principle go on in the next frame).
/// Returns how many bytes were consumed: the rest is an unfinished line or
/// message to be completed by the next frame.
pub(crate) fn nats_bodies<'a>(buf: &'a [u8], mut each: impl FnMut(&'a [u8])) -> usize {
    let mut at = 0;
    // Every turn consumes at least one line, so this ends.
    while let Some(eol) = memmem::find(&buf[at..], b"\r\n") {
        let line = &buf[at..at + eol];
        let mut next = at + eol + 2;
        // MSG <subject> <sid> [reply-to] <#bytes>
        if let Some(args) = line.strip_prefix(b"MSG ") {
            let len = args.rsplit(|&b| b == b' ').next().and_then(parse_decimal);
            if let Some(len) = len {
                let end = next + len as usize;
                if buf.len() < end + 2 {
                    return at;
                }
                each(&buf[next..end]);
                next = end + 2;
            }
        }
        at = next;
    }
    at
}

#[cfg(test)]
mod tests {
    use super::*;
    use tidings_protocol::frames::{Event, EventKind, ServerFrame};

    fn tidings_event(kind: EventKind) -> String {
        ServerFrame::Event(Event {
            conv: "g:0123456789abcdef".try_into().unwrap(),
            version: 42,
            ts: 1_700_000_000_000,
            from: "u20".try_into().unwrap(),
            kind,
        })
        .push()
        .to_json()
    }

    #[test]
    fn finds_the_body_of_a_tidings_message_event() {
        let frame = tidings_event(EventKind::Message {
            body: "1234567".into(),
            cmid: None,
        });
        assert_eq!(
            json_body(Target::Tidings, frame.as_bytes()),
            Some(&b"1234567"[..])
        );
    }

    #[test]
    fn ignores_other_tidings_frames() {
        let edit = tidings_event(EventKind::Edit {
            target: 3,
            rev: 1,
            body: "99".into(),
        });
        assert_eq!(json_body(Target::Tidings, edit.as_bytes()), None);
        let ack = r#"{"req":"r1","type":"ack","conv":"c:1","version":3,"ts":9}"#;
        assert_eq!(json_body(Target::Tidings, ack.as_bytes()), None);
        let escaped = tidings_event(EventKind::Message {
            body: "say \"hi\"".into(),
            cmid: None,
        });
        assert_eq!(json_body(Target::Tidings, escaped.as_bytes()), None);
    }

    #[test]
    fn a_published_frame_comes_back_with_its_body() {
        for target in [Target::Baseline, Target::NodeWs] {
            let mut publish = Publish::new(target, "room7");
            let frame = publish.frame(b"555");
            let parsed: serde_json::Value = serde_json::from_str(&frame).unwrap();
            assert_eq!(
                parsed,
                serde_json::json!({"type":"pub","room":"room7","body":"555"})
            );
            assert_eq!(
                json_body(target, frame.as_bytes()),
                Some(&b"555"[..]),
                "{target:?}"
            );
            let join = join_frame(target, "room7").unwrap();
            assert_eq!(json_body(target, join.as_bytes()), None);
        }
    }

    #[test]
    fn tidings_publish_frames_are_sends() {
        let mut publish = Publish::new(Target::Tidings, "g:1");
        let first = publish.frame(b"1");
        let second = publish.frame(PROBE);
        assert_eq!(first.as_str(), r#"{"type":"send","conv":"g:1","body":"1"}"#);
        let parsed = tidings_protocol::ClientEnvelope::parse(&second).unwrap();
        assert!(matches!(
            parsed.frame,
            tidings_protocol::ClientFrame::Send { ref body, .. } if body == "probe"
        ));
    }

    #[test]
    fn nats_frames_pack_several_messages() {
        let mut publish = Publish::new(Target::Nats, "room3");
        assert_eq!(publish.frame(b"12345").as_str(), "PUB room3 5\r\n12345\r\n");
        let frame = b"INFO {\"server_id\":\"x\"}\r\nMSG room3 1 5\r\n12345\r\nPING\r\n\
                      MSG room3 1 reply.to 5\r\nprobe\r\nMSG room3 1 0\r\n\r\n";
        let mut found = Vec::new();
        let used = nats_bodies(frame, |b| found.push(b));
        assert_eq!(used, frame.len());
        assert_eq!(found, [&b"12345"[..], b"probe", b""]);
    }

    #[test]
    fn a_nats_message_split_across_frames_is_completed() {
        let whole = b"MSG room3 1 5\r\n11111\r\nMSG room3 1 5\r\n22222\r\n";
        for split in 0..whole.len() {
            let mut found = Vec::new();
            let first = &whole[..split];
            let used = nats_bodies(first, |b| found.push(b.to_vec()));
            let mut rest = first[used..].to_vec();
            rest.extend_from_slice(&whole[split..]);
            let used = nats_bodies(&rest, |b| found.push(b.to_vec()));
            assert_eq!(used, rest.len(), "split at {split}");
            assert_eq!(found, [b"11111".to_vec(), b"22222".to_vec()]);
        }
    }

    #[test]
    fn decimals_round_trip() {
        let mut buf = [0; 20];
        for n in [0, 7, 10, 999, 1_234_567_890, u64::MAX / 10] {
            let digits = decimal(n, &mut buf);
            assert_eq!(digits, n.to_string().as_bytes());
            assert_eq!(parse_decimal(digits), Some(n));
        }
        assert_eq!(parse_decimal(b""), None);
        assert_eq!(parse_decimal(b"12a"), None);
        assert_eq!(parse_decimal(b"probe"), None);
    }
}
