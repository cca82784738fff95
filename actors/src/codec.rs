//! The one place values are encoded for storage and between nodes.
//!
//! Every stored value and every message between nodes is a format version
//! byte followed by bincode 2 (serde) bytes. Changing the encoding means a
//! new version byte here and nothing anywhere else.
//!
//! Values whose only form is the wire's JSON (a backend's notification
//! payload, the client's tagged events, error frames that leave empty
//! fields out) go inside such a message as a JSON string ([`json`]):
//! bincode cannot read back what is self-describing only.

use serde::{de::DeserializeOwned, Serialize};

/// Format of every value written today.
pub const FORMAT_V1: u8 = 1;

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("empty value")]
    Empty,
    #[error("unknown format version {0}")]
    UnknownVersion(u8),
    #[error("cannot encode: {0}")]
    Encode(#[from] bincode::error::EncodeError),
    #[error("cannot decode: {0}")]
    Decode(#[from] bincode::error::DecodeError),
    #[error("{0} trailing bytes after the value")]
    Trailing(usize),
}

/// Most bytes the strings and byte buffers of one decoded value may claim:
/// the largest frame a cluster link carries. bincode allocates a string's
/// length as the value states it before reading it, so without this a few
/// bytes claiming an exabyte-long string abort the process.
pub const MAX_DECODED_BYTES: usize = 16 * 1024 * 1024;

/// How values are written; they are read with the same settings and
/// [`MAX_DECODED_BYTES`].
fn config() -> impl bincode::config::Config {
    bincode::config::standard()
}

pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, CodecError> {
    let mut out = Vec::with_capacity(64);
    out.push(FORMAT_V1);
    bincode::serde::encode_into_std_write(value, &mut out, config())?;
    Ok(out)
}

pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    let (&version, rest) = bytes.split_first().ok_or(CodecError::Empty)?;
    match version {
        FORMAT_V1 => {
            let limited = bincode::config::standard().with_limit::<MAX_DECODED_BYTES>();
            let (value, used) = bincode::serde::decode_from_slice(rest, limited)?;
            if used != rest.len() {
                return Err(CodecError::Trailing(rest.len() - used));
            }
            Ok(value)
        }
        other => Err(CodecError::UnknownVersion(other)),
    }
}

/// A field kept as its JSON text inside a bincode value:
/// `#[serde(with = "crate::codec::json")]`.
pub mod json {
    use serde::de::{DeserializeOwned, Error as _};
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<T: Serialize, S: Serializer>(value: &T, out: S) -> Result<S::Ok, S::Error> {
        let text = serde_json::to_string(value).map_err(serde::ser::Error::custom)?;
        out.serialize_str(&text)
    }

    pub fn deserialize<'de, T: DeserializeOwned, D: Deserializer<'de>>(
        input: D,
    ) -> Result<T, D::Error> {
        let text = String::deserialize(input)?;
        serde_json::from_str(&text).map_err(D::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Sample {
        a: u64,
        b: Option<String>,
        c: Vec<String>,
    }

    #[test]
    fn round_trips_with_a_version_byte() {
        let value = Sample {
            a: 42,
            b: Some("x".into()),
            c: vec!["y".into()],
        };
        let bytes = encode(&value).unwrap();
        assert_eq!(bytes[0], FORMAT_V1);
        assert_eq!(decode::<Sample>(&bytes).unwrap(), value);
    }

    #[test]
    fn a_string_claiming_more_than_the_limit_is_refused_before_it_is_allocated() {
        // Format byte, then a string whose varint length (0xFD: a u64
        // follows) says 2^60 bytes.
        let mut bytes = vec![FORMAT_V1, 0xFD];
        bytes.extend_from_slice(&(1u64 << 60).to_le_bytes());
        assert!(matches!(
            decode::<String>(&bytes),
            Err(CodecError::Decode(
                bincode::error::DecodeError::LimitExceeded
            ))
        ));
        let within = encode(&"x".repeat(1000)).unwrap();
        assert_eq!(decode::<String>(&within).unwrap().len(), 1000);
    }

    #[test]
    fn refuses_unknown_versions_empty_and_trailing_bytes() {
        let mut bytes = encode(&7u64).unwrap();
        assert!(matches!(decode::<u64>(&[]), Err(CodecError::Empty)));
        bytes.push(0);
        assert!(matches!(
            decode::<u64>(&bytes),
            Err(CodecError::Trailing(1))
        ));
        bytes[0] = 9;
        assert!(matches!(
            decode::<u64>(&bytes),
            Err(CodecError::UnknownVersion(9))
        ));
    }
}
