//! A conversation's rules: what a request may do, decided from the state it
//! is made against. No actor, no storage, no I/O: the conversation actor
//! reads what a rule needs, asks the rule, and writes and fans out what the
//! rule decided. Every rule is unit-tested here.
//!
//! A refusal is a [`Refusal`], one of the core's errors
//! ([`crate::error`]); it becomes the client's `error` frame only at the
//! edge.

pub use crate::error::Refusal;
use tidings_protocol::error::CurrentMessage;
use tidings_protocol::{ConvId, UserId, MAX_MEMBERS};

use crate::storage::records::{CmidRecord, ConvMeta, MessageState, StoredKind};

type Result<T> = std::result::Result<T, Refusal>;

/// The state of `conv` if it exists and `by` is a member. A non-member
/// gets the very refusal of a conversation that does not exist, so that
/// nobody outside can tell whether it does (whether two users have a
/// direct conversation, say).
pub fn member<'a>(conv: &ConvId, meta: Option<&'a ConvMeta>, by: &UserId) -> Result<&'a ConvMeta> {
    meta.filter(|meta| meta.members.contains(by))
        .ok_or_else(|| Refusal::NoSuchConversation(conv.clone()))
}

/// Whether a group may be created under `conv`: only once, and never under
/// a direct conversation's id.
pub fn may_create(conv: &ConvId, meta: Option<&ConvMeta>) -> Result<()> {
    if meta.is_some() || conv.is_direct() {
        return Err(Refusal::Exists(conv.clone()));
    }
    Ok(())
}

/// The other member of the direct conversation `conv` that `by` opens.
pub fn direct_partner(conv: &ConvId, by: &UserId) -> Result<UserId> {
    let (a, b) = conv
        .direct_members()
        .ok_or_else(|| Refusal::NoSuchConversation(conv.clone()))?;
    if by == &a {
        Ok(b)
    } else if by == &b {
        Ok(a)
    } else {
        Err(Refusal::NotInDirect {
            by: by.clone(),
            conv: conv.clone(),
        })
    }
}

/// `users` without repeats, in order.
pub fn dedup(users: impl IntoIterator<Item = UserId>) -> Vec<UserId> {
    let mut out: Vec<UserId> = Vec::new();
    for user in users {
        if !out.contains(&user) {
            out.push(user);
        }
    }
    out
}

fn within_limit(members: &[UserId]) -> Result<()> {
    if members.len() > MAX_MEMBERS {
        return Err(Refusal::TooManyMembers);
    }
    Ok(())
}

/// The members of a new conversation: its founder first, then `members`,
/// without repeats.
pub fn founding_members(by: &UserId, members: Vec<UserId>) -> Result<Vec<UserId>> {
    let members = dedup(std::iter::once(by.clone()).chain(members));
    within_limit(&members)?;
    Ok(members)
}

/// What a `send` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Send {
    /// Its `cmid` was accepted before: the same ack again, and nothing is
    /// written. Checked before `expect`, so that a retry whose first try
    /// moved the version is still recognised.
    Again(CmidRecord),
    /// Append the message at `version`.
    Append { version: u64 },
}

/// Decides a `send` to a conversation at version `current`: `seen` is what
/// its `cmid` was accepted as, if it was.
pub fn send(current: u64, seen: Option<CmidRecord>, expect: Option<u64>) -> Result<Send> {
    if let Some(seen) = seen {
        return Ok(Send::Again(seen));
    }
    match expect {
        Some(expected) if expected != current => Err(Refusal::StaleVersion { current, expected }),
        _ => Ok(Send::Append {
            version: current + 1,
        }),
    }
}

/// Decides an edit (`body` is `Some`) or a delete (`None`) by `by` of the
/// message at `target`, now `current`, made against revision `rev`. Only
/// the author revises; a deleted message stays deleted; a revision made
/// against an older one is refused with what is current. Returns the
/// message's new state and the event that records the change.
pub fn revise(
    current: MessageState,
    target: u64,
    by: &UserId,
    rev: u32,
    body: Option<String>,
) -> Result<(MessageState, StoredKind)> {
    if &current.from != by {
        return Err(Refusal::NotAuthor);
    }
    let deleted = current.body.is_none();
    if deleted || current.rev != rev {
        let current = CurrentMessage {
            target,
            rev: current.rev,
            body: current.body,
            from: current.from,
        };
        return Err(if deleted {
            Refusal::Deleted(current)
        } else {
            Refusal::StaleRevision { current, rev }
        });
    }
    let rev = rev + 1;
    let kind = match &body {
        Some(body) => StoredKind::Edit {
            target,
            rev,
            body: body.clone(),
        },
        None => StoredKind::Delete { target, rev },
    };
    let state = MessageState {
        from: by.clone(),
        rev,
        body,
    };
    Ok((state, kind))
}

/// A membership change that changes something.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberChange {
    /// Who joins (not members before), in the order asked.
    pub joining: Vec<UserId>,
    /// Who leaves (members before, not joining), in the order asked.
    pub leaving: Vec<UserId>,
    /// The members once the joining joined, before the leaving left: the
    /// audience of both events.
    pub joined: Vec<UserId>,
    /// The members after the change.
    pub members: Vec<UserId>,
}

/// Decides `by`'s change of `meta`'s members: anyone may add and leave,
/// only the creator removes others, a direct conversation's members never
/// change. `None` if nothing would change.
pub fn change_members(
    conv: &ConvId,
    meta: &ConvMeta,
    by: &UserId,
    add: Vec<UserId>,
    remove: Vec<UserId>,
) -> Result<Option<MemberChange>> {
    if conv.is_direct() {
        return Err(Refusal::DirectMembers);
    }
    let joining: Vec<UserId> = dedup(add)
        .into_iter()
        .filter(|u| !meta.members.contains(u))
        .collect();
    let leaving: Vec<UserId> = dedup(remove)
        .into_iter()
        .filter(|u| meta.members.contains(u))
        .collect();
    if leaving.iter().any(|u| u != by) && by != &meta.creator {
        return Err(Refusal::NotCreator);
    }
    if joining.is_empty() && leaving.is_empty() {
        return Ok(None);
    }
    let mut joined = meta.members.clone();
    joined.extend(joining.iter().cloned());
    within_limit(&joined)?;
    let members = joined
        .iter()
        .filter(|u| !leaving.contains(u))
        .cloned()
        .collect();
    Ok(Some(MemberChange {
        joining,
        leaving,
        joined,
        members,
    }))
}

/// Decides `by`'s rename of `meta`'s group to `title`: the new meta, or
/// `None` if the title is already that. A direct conversation has no title.
pub fn rename(conv: &ConvId, meta: &ConvMeta, title: String) -> Result<Option<ConvMeta>> {
    if conv.is_direct() {
        return Err(Refusal::DirectTitle);
    }
    if meta.title.as_deref() == Some(title.as_str()) {
        return Ok(None);
    }
    Ok(Some(ConvMeta {
        title: Some(title),
        ..meta.clone()
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tidings_protocol::{ErrorCode, ErrorFrame};

    fn user(name: &str) -> UserId {
        UserId::try_from(name.to_string()).unwrap()
    }

    fn users(names: &[&str]) -> Vec<UserId> {
        names.iter().map(|n| user(n)).collect()
    }

    fn group() -> ConvId {
        ConvId::group("abc").unwrap()
    }

    fn meta(members: &[&str]) -> ConvMeta {
        ConvMeta {
            title: Some("team".into()),
            members: users(members),
            creator: user(members[0]),
            version: 7,
        }
    }

    #[test]
    fn a_non_member_is_told_what_a_missing_conversation_is_told() {
        let conv = group();
        let meta = meta(&["al", "bo"]);
        assert_eq!(member(&conv, Some(&meta), &user("bo")), Ok(&meta));
        let outsider = member(&conv, Some(&meta), &user("zed")).unwrap_err();
        let missing = member(&conv, None, &user("zed")).unwrap_err();
        assert_eq!(outsider, missing);
        let frame = ErrorFrame::from(outsider);
        assert_eq!(frame.code, ErrorCode::NotFound);
    }

    #[test]
    fn a_group_is_created_once_and_never_under_a_direct_id() {
        assert_eq!(may_create(&group(), None), Ok(()));
        assert!(matches!(
            may_create(&group(), Some(&meta(&["al"]))),
            Err(Refusal::Exists(_))
        ));
        let dm = ConvId::direct(&user("al"), &user("bo"));
        assert!(matches!(may_create(&dm, None), Err(Refusal::Exists(_))));
    }

    #[test]
    fn only_its_two_members_open_a_direct_conversation() {
        let dm = ConvId::direct(&user("al"), &user("bo"));
        assert_eq!(direct_partner(&dm, &user("bo")), Ok(user("al")));
        assert_eq!(direct_partner(&dm, &user("al")), Ok(user("bo")));
        let frame = ErrorFrame::from(direct_partner(&dm, &user("cy")).unwrap_err());
        assert_eq!(frame.code, ErrorCode::Forbidden);
        assert!(matches!(
            direct_partner(&group(), &user("al")),
            Err(Refusal::NoSuchConversation(_))
        ));
    }

    #[test]
    fn the_founder_comes_first_and_nobody_twice() {
        let members = founding_members(&user("al"), users(&["bo", "al", "cy", "bo"])).unwrap();
        assert_eq!(members, users(&["al", "bo", "cy"]));
        let crowd: Vec<UserId> = (0..MAX_MEMBERS).map(|i| user(&format!("u{i}"))).collect();
        assert_eq!(
            founding_members(&user("al"), crowd),
            Err(Refusal::TooManyMembers),
            "the founder counts towards the limit"
        );
    }

    #[test]
    fn a_send_appends_at_the_next_version_when_expect_holds() {
        assert_eq!(send(7, None, None), Ok(Send::Append { version: 8 }));
        assert_eq!(send(7, None, Some(7)), Ok(Send::Append { version: 8 }));
        let stale = send(7, None, Some(6)).unwrap_err();
        assert_eq!(
            stale,
            Refusal::StaleVersion {
                current: 7,
                expected: 6
            }
        );
        let frame = ErrorFrame::from(stale);
        assert_eq!(frame.code, ErrorCode::Conflict);
        assert_eq!(frame.current_version, Some(7));
    }

    #[test]
    fn a_cmid_seen_before_is_acked_again_even_if_expect_no_longer_holds() {
        let seen = CmidRecord { version: 7, ts: 42 };
        // The first try moved the version from 6 to 7; the retry still
        // carries expect 6.
        assert_eq!(send(7, Some(seen), Some(6)), Ok(Send::Again(seen)));
    }

    fn message(from: &str, rev: u32, body: Option<&str>) -> MessageState {
        MessageState {
            from: user(from),
            rev,
            body: body.map(str::to_owned),
        }
    }

    #[test]
    fn an_edit_moves_the_revision_on_and_keeps_the_author() {
        let (state, kind) = revise(
            message("al", 1, Some("hi")),
            3,
            &user("al"),
            1,
            Some("hey".into()),
        )
        .unwrap();
        assert_eq!(state, message("al", 2, Some("hey")));
        assert_eq!(
            kind,
            StoredKind::Edit {
                target: 3,
                rev: 2,
                body: "hey".into()
            }
        );
        let (state, kind) = revise(message("al", 2, Some("hey")), 3, &user("al"), 2, None).unwrap();
        assert_eq!(state, message("al", 3, None));
        assert_eq!(kind, StoredKind::Delete { target: 3, rev: 3 });
    }

    #[test]
    fn only_the_author_revises() {
        let refused = revise(message("al", 1, Some("hi")), 3, &user("bo"), 1, None);
        assert_eq!(refused, Err(Refusal::NotAuthor));
    }

    #[test]
    fn a_stale_revision_is_refused_with_what_is_current() {
        let refused = revise(
            message("al", 2, Some("hey")),
            3,
            &user("al"),
            1,
            Some("x".into()),
        )
        .unwrap_err();
        let frame = ErrorFrame::from(refused);
        assert_eq!(frame.code, ErrorCode::Conflict);
        assert_eq!(frame.message, "message 3 is at revision 2, not 1");
        let current = frame.current.unwrap();
        assert_eq!((current.rev, current.body.as_deref()), (2, Some("hey")));
    }

    #[test]
    fn a_deleted_message_stays_deleted_whatever_revision_is_named() {
        for rev in [1, 2, 3] {
            let refused = revise(
                message("al", 2, None),
                3,
                &user("al"),
                rev,
                Some("back".into()),
            );
            let Err(Refusal::Deleted(current)) = refused else {
                panic!("revision {rev} of a deleted message was not refused as deleted");
            };
            assert_eq!((current.rev, current.body), (2, None));
        }
    }

    #[test]
    fn members_join_and_leave_in_one_change() {
        let meta = meta(&["al", "bo", "cy"]);
        let change = change_members(
            &group(),
            &meta,
            &user("al"),
            users(&["dee", "bo", "dee"]),
            users(&["cy", "zed"]),
        )
        .unwrap()
        .unwrap();
        assert_eq!(change.joining, users(&["dee"]));
        assert_eq!(change.leaving, users(&["cy"]));
        assert_eq!(change.joined, users(&["al", "bo", "cy", "dee"]));
        assert_eq!(change.members, users(&["al", "bo", "dee"]));
    }

    #[test]
    fn anyone_leaves_but_only_the_creator_removes_others() {
        let meta = meta(&["al", "bo", "cy"]);
        let left = change_members(&group(), &meta, &user("bo"), vec![], users(&["bo"]));
        assert_eq!(left.unwrap().unwrap().members, users(&["al", "cy"]));
        let removed = change_members(&group(), &meta, &user("bo"), vec![], users(&["cy"]));
        assert_eq!(removed, Err(Refusal::NotCreator));
    }

    #[test]
    fn a_change_that_changes_nothing_is_none_and_direct_members_never_change() {
        let meta = meta(&["al", "bo"]);
        let none = change_members(
            &group(),
            &meta,
            &user("al"),
            users(&["bo"]),
            users(&["zed"]),
        );
        assert_eq!(none, Ok(None));
        let dm = ConvId::direct(&user("al"), &user("bo"));
        let refused = change_members(&dm, &meta, &user("al"), users(&["cy"]), vec![]);
        assert_eq!(refused, Err(Refusal::DirectMembers));
    }

    #[test]
    fn members_beyond_the_limit_are_refused() {
        let meta = meta(&["al"]);
        let crowd: Vec<UserId> = (0..MAX_MEMBERS).map(|i| user(&format!("u{i}"))).collect();
        let refused = change_members(&group(), &meta, &user("al"), crowd, vec![]);
        assert_eq!(refused, Err(Refusal::TooManyMembers));
    }

    #[test]
    fn a_rename_changes_the_title_only_and_never_of_a_direct_conversation() {
        let meta = meta(&["al", "bo"]);
        let renamed = rename(&group(), &meta, "crew".into()).unwrap().unwrap();
        assert_eq!(renamed.title.as_deref(), Some("crew"));
        assert_eq!(
            (renamed.members, renamed.version),
            (meta.members.clone(), 7)
        );
        assert_eq!(rename(&group(), &meta, "team".into()), Ok(None));
        let dm = ConvId::direct(&user("al"), &user("bo"));
        let frame = ErrorFrame::from(rename(&dm, &meta, "x".into()).unwrap_err());
        assert_eq!(frame.code, ErrorCode::Forbidden);
    }
}
