//! A user's rules: what a change to the user's own state does, decided
//! from the state alone (no actor, no storage, no I/O). The user actor
//! reads the state, asks the rule, and writes what it decided. The block
//! list's own rules are [`BlockList::block`] and [`BlockList::unblock`].

use crate::storage::records::{BlockError, BlockList, IndexEntry, UserMeta};
use tidings_protocol::UserId;

/// The version the next notification gets, and the user's state once it
/// is written.
pub fn next_notification(meta: &UserMeta) -> (u64, UserMeta) {
    let version = meta.notification_version + 1;
    (
        version,
        UserMeta {
            notification_version: version,
        },
    )
}

/// Whether `entry` (a conversation's word on whether the user is a member,
/// as of its version) changes an index that holds `current`: not if the
/// index already holds a later word, or this very one. Conversations write
/// their members' indexes again after failures, and from any leader, so
/// words arrive late and twice; the latest version wins. A legacy entry
/// (no version, read as `None`) is replaced.
pub fn index_changes(current: Option<IndexEntry>, entry: IndexEntry) -> bool {
    !current.is_some_and(|c| c.version > entry.version || c == entry)
}

/// Whether an index entry lists its conversation as the user's: a member
/// entry, or a legacy one (written before entries had versions: "member").
pub fn listed(entry: Option<IndexEntry>) -> bool {
    entry.is_none_or(|e| e.member)
}

/// `owner` blocks `user` (`block`) or unblocks them: the list to write, or
/// `None` if nothing changes (nothing is written then).
pub fn block(
    mut list: BlockList,
    owner: &UserId,
    user: UserId,
    block: bool,
) -> Result<Option<BlockList>, BlockError> {
    let changed = if block {
        list.block(owner, user)?
    } else {
        list.unblock(&user)
    };
    Ok(changed.then_some(list))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(version: u64, member: bool) -> IndexEntry {
        IndexEntry { version, member }
    }

    #[test]
    fn notifications_take_the_versions_one_after_another() {
        let (first, meta) = next_notification(&UserMeta::default());
        assert_eq!((first, meta.notification_version), (1, 1));
        let (second, _) = next_notification(&meta);
        assert_eq!(second, 2);
    }

    #[test]
    fn the_latest_word_on_membership_wins_whatever_order_words_come_in() {
        // Joined at 3, left at 5: the leave is kept even if the join comes
        // again afterwards (an outbox retried late).
        assert!(index_changes(None, entry(3, true)));
        assert!(index_changes(Some(entry(3, true)), entry(5, false)));
        assert!(!index_changes(Some(entry(5, false)), entry(3, true)));
        // The same word twice writes once.
        assert!(!index_changes(Some(entry(5, false)), entry(5, false)));
        // Rejoined later.
        assert!(index_changes(Some(entry(5, false)), entry(8, true)));
    }

    #[test]
    fn only_member_and_legacy_entries_are_listed() {
        assert!(listed(Some(entry(3, true))));
        assert!(!listed(Some(entry(5, false))));
        assert!(listed(None), "an entry from before versions means member");
    }

    #[test]
    fn a_block_that_changes_nothing_writes_nothing() {
        let owner = UserId::try_from("bob").unwrap();
        let alice = UserId::try_from("alice").unwrap();
        let list = block(BlockList::default(), &owner, alice.clone(), true)
            .unwrap()
            .expect("a change");
        assert!(list.contains(&alice));
        assert_eq!(block(list.clone(), &owner, alice.clone(), true), Ok(None));
        let unblocked = block(list, &owner, alice.clone(), false).unwrap().unwrap();
        assert!(!unblocked.contains(&alice));
        assert_eq!(block(unblocked, &owner, alice, false), Ok(None));
        assert_eq!(
            block(BlockList::default(), &owner, owner.clone(), true),
            Err(BlockError::Themselves)
        );
    }
}
