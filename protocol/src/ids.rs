//! Identifiers: user ids, conversation ids and client message ids.
//!
//! Each is a validated newtype: a value of the type is always well formed,
//! and deserializing a malformed one fails with a message that says why.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Why a string is not a valid identifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("{what} must be 1 to {max} characters long")]
    Length { what: &'static str, max: usize },
    #[error("{what} may contain only {alphabet}")]
    Alphabet {
        what: &'static str,
        alphabet: &'static str,
    },
}

fn is_user_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-')
}

macro_rules! string_id {
    ($name:ident) => {
        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(value: String) -> Result<Self, IdError> {
                Self::parse(&value)?;
                Ok(Self(value))
            }
        }
        impl TryFrom<&str> for $name {
            type Error = IdError;
            fn try_from(value: &str) -> Result<Self, IdError> {
                Self::parse(value)?;
                Ok(Self(value.to_owned()))
            }
        }
        impl std::str::FromStr for $name {
            type Err = IdError;
            fn from_str(value: &str) -> Result<Self, IdError> {
                Self::try_from(value)
            }
        }
        impl From<$name> for String {
            fn from(value: $name) -> String {
                value.0
            }
        }
    };
}

/// A user: 1–64 characters of `A-Z a-z 0-9 _ . -`. Any valid id is a user.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct UserId(String);
string_id!(UserId);

impl UserId {
    pub const MAX_LEN: usize = 64;

    fn parse(value: &str) -> Result<(), IdError> {
        if value.is_empty() || value.len() > Self::MAX_LEN {
            return Err(IdError::Length {
                what: "a user id",
                max: Self::MAX_LEN,
            });
        }
        if !value.bytes().all(is_user_char) {
            return Err(IdError::Alphabet {
                what: "a user id",
                alphabet: "A-Z a-z 0-9 _ . -",
            });
        }
        Ok(())
    }
}

/// A conversation, named by the server: `dm:<a>:<b>` for the direct
/// conversation of users a and b (sorted bytewise), `g:<id>` for a group.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ConvId(String);
string_id!(ConvId);

impl ConvId {
    pub const MAX_LEN: usize = 3 + 2 * UserId::MAX_LEN + 1;

    fn parse(value: &str) -> Result<(), IdError> {
        let malformed = IdError::Alphabet {
            what: "a conversation id",
            alphabet: "dm:<user>:<user> or g:<id>",
        };
        if value.is_empty() || value.len() > Self::MAX_LEN {
            return Err(IdError::Length {
                what: "a conversation id",
                max: Self::MAX_LEN,
            });
        }
        if let Some(rest) = value.strip_prefix("dm:") {
            let (a, b) = rest.split_once(':').ok_or(malformed.clone())?;
            let (a, b) = (
                UserId::try_from(a).map_err(|_| malformed.clone())?,
                UserId::try_from(b).map_err(|_| malformed.clone())?,
            );
            if a > b {
                return Err(malformed);
            }
            return Ok(());
        }
        if let Some(rest) = value.strip_prefix("g:") {
            if !rest.is_empty() && rest.bytes().all(is_user_char) {
                return Ok(());
            }
        }
        Err(malformed)
    }

    /// The direct conversation of two users; both sides derive the same id.
    pub fn direct(a: &UserId, b: &UserId) -> ConvId {
        let (x, y) = if a.as_str() <= b.as_str() {
            (a, b)
        } else {
            (b, a)
        };
        ConvId(format!("dm:{x}:{y}"))
    }

    /// A group conversation with the given server-chosen suffix.
    pub fn group(suffix: &str) -> Result<ConvId, IdError> {
        ConvId::try_from(format!("g:{suffix}"))
    }

    pub fn is_direct(&self) -> bool {
        self.0.starts_with("dm:")
    }

    /// The two members of a direct conversation.
    pub fn direct_members(&self) -> Option<(UserId, UserId)> {
        let rest = self.0.strip_prefix("dm:")?;
        let (a, b) = rest.split_once(':')?;
        Some((UserId(a.to_owned()), UserId(b.to_owned())))
    }
}

/// A client message id: 1–64 printable ASCII characters chosen by the client.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Cmid(String);
string_id!(Cmid);

impl Cmid {
    pub const MAX_LEN: usize = 64;

    fn parse(value: &str) -> Result<(), IdError> {
        if value.is_empty() || value.len() > Self::MAX_LEN {
            return Err(IdError::Length {
                what: "a cmid",
                max: Self::MAX_LEN,
            });
        }
        if !value.bytes().all(|c| (0x20..0x7f).contains(&c)) {
            return Err(IdError::Alphabet {
                what: "a cmid",
                alphabet: "printable ASCII",
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_ids_follow_their_alphabet_and_length() {
        assert!(UserId::try_from("alice").is_ok());
        assert!(UserId::try_from("A.b_c-9").is_ok());
        assert!(UserId::try_from("x".repeat(64)).is_ok());
        assert!(UserId::try_from("x".repeat(65)).is_err());
        assert!(UserId::try_from("").is_err());
        assert!(UserId::try_from("al ice").is_err());
        assert!(UserId::try_from("al:ice").is_err());
        assert!(UserId::try_from("ålice").is_err());
    }

    #[test]
    fn direct_ids_are_the_same_from_both_sides() {
        let a = UserId::try_from("bob").unwrap();
        let b = UserId::try_from("alice").unwrap();
        assert_eq!(ConvId::direct(&a, &b).as_str(), "dm:alice:bob");
        assert_eq!(ConvId::direct(&b, &a), ConvId::direct(&a, &b));
        let (x, y) = ConvId::direct(&a, &b).direct_members().unwrap();
        assert_eq!((x.as_str(), y.as_str()), ("alice", "bob"));
    }

    #[test]
    fn conversation_ids_are_validated() {
        assert!(ConvId::try_from("dm:alice:bob").is_ok());
        assert!(ConvId::try_from("dm:bob:alice").is_err(), "unsorted");
        assert!(ConvId::try_from("dm:alice").is_err());
        assert!(ConvId::try_from("g:01abc").is_ok());
        assert!(ConvId::try_from("g:").is_err());
        assert!(ConvId::try_from("x:1").is_err());
    }

    #[test]
    fn cmids_are_printable_ascii() {
        assert!(Cmid::try_from("a b~!").is_ok());
        assert!(Cmid::try_from("tab\there").is_err());
        assert!(Cmid::try_from("x".repeat(65)).is_err());
    }

    #[test]
    fn deserializing_a_bad_id_says_why() {
        let err = serde_json::from_str::<UserId>("\"no spaces\"").unwrap_err();
        assert!(err.to_string().contains("A-Z a-z 0-9 _ . -"), "{err}");
    }
}
