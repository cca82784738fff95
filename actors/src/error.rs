//! The core's errors: why a command failed, as entities and the service
//! see it. Each becomes the wire's [`ErrorFrame`] only at the edge (the
//! connection, the HTTP handlers): `From<Error> for ErrorFrame` is the one
//! place that picks a client's error code and words.
//!
//! Both cross nodes in the codec, inside a forwarded command's answer, so
//! a refusal reads the same wherever its conversation is led.

use serde::{Deserialize, Serialize};
use tidings_protocol::error::CurrentMessage;
use tidings_protocol::{ConvId, ErrorCode, ErrorFrame, UserId, MAX_MEMBERS};

/// Why a command failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum Error {
    /// A conversation's rule refused it ([`crate::conversation::rules`]).
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// It breaks a rule of the protocol: a field out of bounds, an
    /// operation not served here.
    #[error("{0}")]
    BadRequest(String),
    /// It carries more than the protocol allows.
    #[error("{0}")]
    TooLarge(String),
    /// The asker may not do it: a block stands between the users.
    #[error("{0}")]
    Forbidden(String),
    /// Nobody could serve it now (no leader, no answer in time); the
    /// client may retry.
    #[error("{0}")]
    Unavailable(String),
    /// Its write was not confirmed and may yet commit: retrying with the
    /// same `cmid` cannot apply it twice.
    #[error("the write was not confirmed; retry it (with the same cmid)")]
    Unconfirmed,
    /// Storage failed here, and nothing was written.
    #[error("storage failed; nothing was written")]
    Storage,
    /// Tidings itself went wrong: an answer of the wrong kind, a command
    /// that would not encode.
    #[error("{0}")]
    Internal(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// Whether this says that what was asked for does not exist (or that
    /// the asker may not know it does).
    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::Refused(refusal) if refusal.code() == ErrorCode::NotFound)
    }
}

/// A protocol check's refusal ([`tidings_protocol::frames`]'s `validate_*`):
/// those refuse with `bad_request` or `too_large` only.
impl From<ErrorFrame> for Error {
    fn from(frame: ErrorFrame) -> Error {
        match frame.code {
            ErrorCode::BadRequest => Error::BadRequest(frame.message),
            ErrorCode::TooLarge => Error::TooLarge(frame.message),
            ErrorCode::Forbidden => Error::Forbidden(frame.message),
            ErrorCode::Unavailable => Error::Unavailable(frame.message),
            _ => Error::Internal(frame.message),
        }
    }
}

/// The client's error: its code, its words, and for a conflict what is
/// current.
impl From<Error> for ErrorFrame {
    fn from(error: Error) -> ErrorFrame {
        let code = match &error {
            Error::Refused(refusal) => return ErrorFrame::from(refusal.clone()),
            Error::BadRequest(_) => ErrorCode::BadRequest,
            Error::TooLarge(_) => ErrorCode::TooLarge,
            Error::Forbidden(_) => ErrorCode::Forbidden,
            Error::Unavailable(_) | Error::Unconfirmed => ErrorCode::Unavailable,
            Error::Storage | Error::Internal(_) => ErrorCode::Internal,
        };
        ErrorFrame::new(code, error.to_string())
    }
}

/// Why a conversation refused a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum Refusal {
    /// The conversation does not exist, or the asker is not a member: the
    /// two are told apart by nobody outside.
    #[error("no conversation {0}")]
    NoSuchConversation(ConvId),
    #[error("conversation {0} already exists")]
    Exists(ConvId),
    #[error("{by} is not a member of {conv}")]
    NotInDirect { by: UserId, conv: ConvId },
    #[error("conversation is at version {current}, not {expected}")]
    StaleVersion { current: u64, expected: u64 },
    #[error("no message at version {target} of {conv}")]
    NoSuchMessage { conv: ConvId, target: u64 },
    #[error("only the author may edit or delete a message")]
    NotAuthor,
    #[error("message {} is deleted", .0.target)]
    Deleted(CurrentMessage),
    #[error("message {} is at revision {}, not {rev}", .current.target, .current.rev)]
    StaleRevision { current: CurrentMessage, rev: u32 },
    #[error("a direct conversation's members cannot change")]
    DirectMembers,
    #[error("a direct conversation has no title")]
    DirectTitle,
    #[error("only the creator may remove other members")]
    NotCreator,
    #[error("a conversation has at most {MAX_MEMBERS} members")]
    TooManyMembers,
}

impl Refusal {
    /// The client's code for it.
    pub fn code(&self) -> ErrorCode {
        match self {
            Refusal::NoSuchConversation(_) | Refusal::NoSuchMessage { .. } => ErrorCode::NotFound,
            Refusal::Exists(_)
            | Refusal::StaleVersion { .. }
            | Refusal::Deleted(_)
            | Refusal::StaleRevision { .. } => ErrorCode::Conflict,
            Refusal::NotInDirect { .. }
            | Refusal::NotAuthor
            | Refusal::DirectMembers
            | Refusal::DirectTitle
            | Refusal::NotCreator => ErrorCode::Forbidden,
            Refusal::TooManyMembers => ErrorCode::BadRequest,
        }
    }
}

impl From<Refusal> for ErrorFrame {
    fn from(refusal: Refusal) -> ErrorFrame {
        let mut frame = ErrorFrame::new(refusal.code(), refusal.to_string());
        match refusal {
            Refusal::StaleVersion { current, .. } => frame.current_version = Some(current),
            Refusal::Deleted(current) | Refusal::StaleRevision { current, .. } => {
                frame.current = Some(current)
            }
            _ => {}
        }
        frame
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_error_reaches_the_client_with_its_code_and_words() {
        let cases = [
            (
                Error::Unconfirmed,
                ErrorCode::Unavailable,
                "the write was not confirmed; retry it (with the same cmid)",
            ),
            (
                Error::Storage,
                ErrorCode::Internal,
                "storage failed; nothing was written",
            ),
            (Error::BadRequest("no".into()), ErrorCode::BadRequest, "no"),
            (Error::TooLarge("big".into()), ErrorCode::TooLarge, "big"),
            (
                Error::Forbidden("bo has blocked al".into()),
                ErrorCode::Forbidden,
                "bo has blocked al",
            ),
            (
                Error::Unavailable("retry".into()),
                ErrorCode::Unavailable,
                "retry",
            ),
            (Error::Internal("oops".into()), ErrorCode::Internal, "oops"),
        ];
        for (error, code, message) in cases {
            let frame = ErrorFrame::from(error);
            assert_eq!((frame.code, frame.message.as_str()), (code, message));
            assert_eq!((frame.current_version, frame.current), (None, None));
        }
        let stale = ErrorFrame::from(Error::from(Refusal::StaleVersion {
            current: 5,
            expected: 4,
        }));
        assert_eq!(stale.code, ErrorCode::Conflict);
        assert_eq!(stale.message, "conversation is at version 5, not 4");
        assert_eq!(stale.current_version, Some(5));
    }

    #[test]
    fn a_protocol_check_reaches_the_client_as_it_refused() {
        for frame in [
            ErrorFrame::bad_request("body must not be empty"),
            ErrorFrame::new(ErrorCode::TooLarge, "body is too large"),
        ] {
            assert_eq!(ErrorFrame::from(Error::from(frame.clone())), frame);
        }
    }

    #[test]
    fn only_a_missing_conversation_or_message_is_not_found() {
        let conv = ConvId::group("team").unwrap();
        assert!(Error::from(Refusal::NoSuchConversation(conv.clone())).is_not_found());
        assert!(Error::from(Refusal::NoSuchMessage { conv, target: 3 }).is_not_found());
        assert!(!Error::from(Refusal::NotAuthor).is_not_found());
        assert!(!Error::Storage.is_not_found());
    }
}
