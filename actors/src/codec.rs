//! The one place values are encoded for storage and between nodes.
//!
//! Every stored value and every message between nodes is a format version
//! byte followed by bincode 2 (serde) bytes. Changing the encoding means a
//! new version byte here and nothing anywhere else.
//!
//! Values whose only form is the wire's JSON (a backend's notification
//! payload, the client's tagged events) go inside such a message as a
//! JSON string ([`json`]): bincode cannot read back what is
//! self-describing only. A message between nodes is an [`Encoded`] value,
//! typed at both ends.

use std::marker::PhantomData;

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

/// A `T` in the codec, as a message between nodes carries it. Sender and
/// receiver both name `T`, so the compiler keeps them agreed on what the
/// bytes are; only [`Encoded::decode`] reads them.
pub struct Encoded<T> {
    bytes: Vec<u8>,
    of: PhantomData<fn() -> T>,
}

impl<T: Serialize> Encoded<T> {
    pub fn new(value: &T) -> Result<Encoded<T>, CodecError> {
        encode(value).map(Encoded::of_bytes)
    }
}

impl<T: DeserializeOwned> Encoded<T> {
    pub fn decode(&self) -> Result<T, CodecError> {
        decode(&self.bytes)
    }
}

impl<T> Encoded<T> {
    /// Bytes that decode as a `T`: written from a borrowed form of it,
    /// which encodes the same.
    pub(crate) fn of_bytes(bytes: Vec<u8>) -> Encoded<T> {
        Encoded {
            bytes,
            of: PhantomData,
        }
    }
}

impl<T> Clone for Encoded<T> {
    fn clone(&self) -> Encoded<T> {
        Encoded::of_bytes(self.bytes.clone())
    }
}

impl<T> std::fmt::Debug for Encoded<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Encoded<{}>({} bytes)",
            std::any::type_name::<T>(),
            self.bytes.len()
        )
    }
}

/// How a cluster link carries it: the bytes as they are. Bytes that do not
/// decode are found when the receiver decodes them.
impl<T> ractor::BytesConvertable for Encoded<T> {
    fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }

    fn from_bytes(bytes: Vec<u8>) -> Encoded<T> {
        Encoded::of_bytes(bytes)
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
    fn a_value_crosses_a_link_as_its_codec_bytes_and_decodes_on_the_other_side() {
        use ractor::BytesConvertable;
        let value = Sample {
            a: 7,
            b: None,
            c: vec!["z".into()],
        };
        let sent = Encoded::new(&value).unwrap().into_bytes();
        assert_eq!(sent, encode(&value).unwrap());
        let arrived = Encoded::<Sample>::from_bytes(sent);
        assert_eq!(arrived.decode().unwrap(), value);
        // What is not a `Sample` is found when it is decoded.
        assert!(Encoded::<Sample>::from_bytes(vec![FORMAT_V1, 0xff])
            .decode()
            .is_err());
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
