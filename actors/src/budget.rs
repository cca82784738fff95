//! Byte bounds on replies: how many events or conversations a `history`,
//! `sync` or `convs` reply carries.
//!
//! A count alone does not bound a reply: 200 events of 16 KiB are 3.2 MB,
//! and a `sync` of a user in 100 such conversations was one 161 MB frame,
//! built in memory and queued whole. So every reply is filled against a
//! [`Budget`] of `--max-reply-bytes` (the JSON bytes of what it carries),
//! and says `more: true` where it stopped early; the client asks again
//! from where the reply ended. The first item of a reply always goes in,
//! however large, so that asking again always makes progress.
//!
//! Pure rules, no I/O: what fits is decided from serialized sizes alone.

use serde::Serialize;
use tidings_protocol::frames::SyncedConv;

/// `--max-reply-bytes` by default: 1 MiB.
pub const DEFAULT_MAX_REPLY_BYTES: usize = 1 << 20;

/// What is left of a reply's byte bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    left: usize,
    /// Whether anything has gone in yet.
    started: bool,
}

impl Budget {
    pub fn new(max_bytes: usize) -> Budget {
        Budget {
            left: max_bytes,
            started: false,
        }
    }

    /// Takes `size` bytes if they fit, or if nothing has gone in yet (the
    /// first item of a reply always does, so paging moves on).
    pub fn take(&mut self, size: usize) -> bool {
        if size <= self.left {
            self.left -= size;
        } else if self.started {
            return false;
        } else {
            self.left = 0;
        }
        self.started = true;
        true
    }

    /// Bytes still free.
    pub fn remaining(&self) -> usize {
        self.left
    }

    /// Whether nothing more can go in: something has, and no room is left.
    pub fn is_spent(&self) -> bool {
        self.started && self.left == 0
    }
}

/// Counts bytes written without keeping them.
struct Counter(usize);

impl std::io::Write for Counter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The length of `value` as JSON, counted without building the text.
pub fn json_len<T: Serialize + ?Sized>(value: &T) -> usize {
    let mut counter = Counter(0);
    // Serializing into a counter cannot fail for the wire's types.
    let _ = serde_json::to_writer(&mut counter, value);
    counter.0
}

/// An item's share of a JSON array: itself and the comma before the next.
fn item_len<T: Serialize>(item: &T) -> usize {
    json_len(item) + 1
}

/// How many of `items`, taken from the front, fit in `budget` (which they
/// use up).
pub fn fit_first<T: Serialize>(items: &[T], budget: &mut Budget) -> usize {
    items
        .iter()
        .take_while(|item| budget.take(item_len(*item)))
        .count()
}

/// How many of `items`, taken from the back, fit in `budget` (which they
/// use up).
pub fn fit_last<T: Serialize>(items: &[T], budget: &mut Budget) -> usize {
    items
        .iter()
        .rev()
        .take_while(|item| budget.take(item_len(*item)))
        .count()
}

/// Which end of a page to keep when it is cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keep {
    /// The earliest events: the page continues after them (`after`).
    First,
    /// The latest events: the page continues before them (`before`, or
    /// the latest of a log).
    Last,
}

/// Cuts `items` to what fits in `budget`, keeping the `keep` end; says
/// whether any were cut.
pub fn cut<T: Serialize>(items: &mut Vec<T>, keep: Keep, budget: &mut Budget) -> bool {
    match keep {
        Keep::First => {
            let n = fit_first(items, budget);
            let cut = n < items.len();
            items.truncate(n);
            cut
        }
        Keep::Last => {
            let n = fit_last(items, budget);
            let cut = n < items.len();
            items.drain(..items.len() - n);
            cut
        }
    }
}

/// Fills a page of a log into `budget`: `items` were read forward from
/// `after` or, when `after` is `None`, are the latest of the log, and the
/// log's last version is `latest`. Keeps the end the page continues from
/// and says whether more follow in the direction it pages: beyond the
/// page's last item (read from `after`), or before its first (the latest).
/// One rule for every log a client catches up on: a conversation's
/// (`sync`) and a user's notifications.
pub fn page<T: Serialize>(
    items: &mut Vec<T>,
    after: Option<u64>,
    latest: u64,
    version: impl Fn(&T) -> u64,
    budget: &mut Budget,
) -> bool {
    match after {
        Some(after) => {
            cut(items, Keep::First, budget);
            items.last().map_or(after, &version) < latest
        }
        None => {
            cut(items, Keep::Last, budget);
            items.first().is_some_and(|item| version(item) > 1)
        }
    }
}

/// Fits one conversation of a `synced` reply into `budget`: its summary,
/// then as many of its events as fit (the `keep` end), with `more` set if
/// some were cut. `None`, leaving `budget` as it was, if its summary does
/// not fit or none of its events do: the conversation is left out.
pub fn fit_conv(mut conv: SyncedConv, keep: Keep, budget: &mut Budget) -> Option<SyncedConv> {
    let mut events = std::mem::take(&mut conv.events);
    // The summary and the event nearest the kept end go in together or
    // not at all: a conversation without any of its events is no help.
    let nearest = match keep {
        Keep::First => events.first(),
        Keep::Last => events.last(),
    };
    let mut trial = *budget;
    if !trial.take(item_len(&conv) + nearest.map_or(0, item_len)) {
        return None;
    }
    if !events.is_empty() {
        let rest = match keep {
            Keep::First => events.split_off(1),
            Keep::Last => {
                let mut last = events.split_off(events.len() - 1);
                std::mem::swap(&mut last, &mut events);
                last
            }
        };
        // `events` holds the nearest one; `rest` the others, in order.
        let mut rest = rest;
        if cut(&mut rest, keep, &mut trial) {
            conv.more = true;
        }
        match keep {
            Keep::First => events.extend(rest),
            Keep::Last => {
                rest.extend(events);
                events = rest;
            }
        }
    }
    conv.events = events;
    *budget = trial;
    Some(conv)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tidings_protocol::{ConvId, Event, EventKind, UserId};

    fn event(version: u64, body_len: usize) -> Event {
        Event {
            conv: ConvId::try_from("g:aaaaaaaaaaaaaaaaaaaa").unwrap(),
            version,
            ts: 0,
            from: UserId::try_from("alice").unwrap(),
            kind: EventKind::Message {
                body: "x".repeat(body_len),
                cmid: None,
            },
        }
    }

    fn conv(events: Vec<Event>) -> SyncedConv {
        SyncedConv {
            conv: ConvId::try_from("g:aaaaaaaaaaaaaaaaaaaa").unwrap(),
            title: None,
            members: vec![UserId::try_from("alice").unwrap()],
            version: events.last().map_or(1, |e| e.version),
            events,
            more: false,
        }
    }

    fn versions(events: &[Event]) -> Vec<u64> {
        events.iter().map(|e| e.version).collect()
    }

    #[test]
    fn a_page_read_after_a_version_says_more_until_it_reaches_the_latest() {
        // Read after 2 with a limit of 3, in a log at 9: more follow.
        let mut events: Vec<Event> = (3..=5).map(|v| event(v, 10)).collect();
        let more = page(
            &mut events,
            Some(2),
            9,
            |e| e.version,
            &mut Budget::new(1 << 20),
        );
        assert!(more);
        assert_eq!(versions(&events), vec![3, 4, 5]);
        // The same page in a log at 5: the page reaches the end.
        let mut events: Vec<Event> = (3..=5).map(|v| event(v, 10)).collect();
        assert!(!page(
            &mut events,
            Some(2),
            5,
            |e| e.version,
            &mut Budget::new(1 << 20)
        ));
        // Nothing after 5 in a log at 5.
        let mut none: Vec<Event> = Vec::new();
        assert!(!page(
            &mut none,
            Some(5),
            5,
            |e| e.version,
            &mut Budget::new(1 << 20)
        ));
    }

    #[test]
    fn a_page_cut_at_the_byte_bound_keeps_the_end_it_continues_from() {
        let size = json_len(&event(3, 100)) + 1;
        let mut forward: Vec<Event> = (3..=5).map(|v| event(v, 100)).collect();
        let more = page(
            &mut forward,
            Some(2),
            5,
            |e| e.version,
            &mut Budget::new(2 * size),
        );
        assert!(more, "cut short of the latest");
        assert_eq!(versions(&forward), vec![3, 4]);
        let mut latest: Vec<Event> = (3..=5).map(|v| event(v, 100)).collect();
        let more = page(
            &mut latest,
            None,
            5,
            |e| e.version,
            &mut Budget::new(2 * size),
        );
        assert!(more, "earlier events were left out");
        assert_eq!(versions(&latest), vec![4, 5]);
    }

    #[test]
    fn the_latest_page_says_more_only_if_it_does_not_start_at_the_first_version() {
        let mut whole: Vec<Event> = (1..=3).map(|v| event(v, 10)).collect();
        assert!(!page(
            &mut whole,
            None,
            3,
            |e| e.version,
            &mut Budget::new(1 << 20)
        ));
        let mut tail: Vec<Event> = (2..=3).map(|v| event(v, 10)).collect();
        assert!(page(
            &mut tail,
            None,
            3,
            |e| e.version,
            &mut Budget::new(1 << 20)
        ));
        let mut empty: Vec<Event> = Vec::new();
        assert!(!page(
            &mut empty,
            None,
            0,
            |e| e.version,
            &mut Budget::new(1 << 20)
        ));
    }

    #[test]
    fn json_len_is_the_length_of_the_text() {
        let e = event(3, 100);
        assert_eq!(json_len(&e), serde_json::to_string(&e).unwrap().len());
        assert_eq!(json_len(&vec![1, 2, 3]), "[1,2,3]".len());
    }

    #[test]
    fn the_first_item_always_goes_in_and_later_ones_only_if_they_fit() {
        let mut budget = Budget::new(10);
        assert!(budget.take(100), "the first item of a reply goes in");
        assert!(budget.is_spent());
        assert!(!budget.take(1));
        let mut budget = Budget::new(10);
        assert!(budget.take(4));
        assert!(budget.take(6));
        assert!(budget.is_spent());
        assert!(!budget.take(1));
        assert!(budget.take(0), "nothing always fits");
        let budget = Budget::new(10);
        assert!(!budget.is_spent(), "an empty reply is not spent");
        assert_eq!(budget.remaining(), 10);
    }

    #[test]
    fn a_page_is_cut_at_the_bound_keeping_the_end_it_pages_from() {
        let events: Vec<Event> = (1..=10).map(|v| event(v, 1000)).collect();
        let one = item_len(&events[0]);
        let mut first = events.clone();
        let mut budget = Budget::new(3 * one + one / 2);
        assert!(cut(&mut first, Keep::First, &mut budget));
        assert_eq!(
            first.iter().map(|e| e.version).collect::<Vec<_>>(),
            [1, 2, 3]
        );
        let mut last = events.clone();
        let mut budget = Budget::new(3 * one + one / 2);
        assert!(cut(&mut last, Keep::Last, &mut budget));
        assert_eq!(
            last.iter().map(|e| e.version).collect::<Vec<_>>(),
            [8, 9, 10]
        );
        // Room for all: nothing cut, and what is left is what they left.
        let mut all = events.clone();
        let mut budget = Budget::new(100 * one);
        assert!(!cut(&mut all, Keep::First, &mut budget));
        assert_eq!(all.len(), 10);
        let used: usize = events.iter().map(item_len).sum();
        assert_eq!(budget.remaining(), 100 * one - used);
        // A bound smaller than one event still carries one.
        let mut tiny = events;
        assert!(cut(&mut tiny, Keep::First, &mut Budget::new(1)));
        assert_eq!(tiny.len(), 1);
    }

    #[test]
    fn a_conversation_goes_in_with_what_fits_or_not_at_all() {
        let events: Vec<Event> = (1..=4).map(|v| event(v, 1000)).collect();
        let one = item_len(&events[0]);
        let summary = item_len(&conv(Vec::new()));
        // Room for the summary and two events: cut, and `more` says so.
        let mut budget = Budget::new(summary + 2 * one);
        let fitted = fit_conv(conv(events.clone()), Keep::First, &mut budget).unwrap();
        assert_eq!(fitted.events.len(), 2);
        assert!(fitted.more);
        assert!(budget.is_spent());
        // A second conversation finds no room: left out, budget untouched.
        let before = budget;
        assert!(fit_conv(conv(events.clone()), Keep::First, &mut budget).is_none());
        assert_eq!(budget, before);
        // Room for its summary but not one event: left out too.
        let mut budget = Budget::new(summary + one / 2);
        assert!(budget.take(1));
        assert!(fit_conv(conv(events.clone()), Keep::Last, &mut budget).is_none());
        // A conversation with nothing new needs room for its summary only.
        let mut budget = Budget::new(summary + 5);
        assert!(budget.take(5));
        let up_to_date = fit_conv(conv(Vec::new()), Keep::First, &mut budget).unwrap();
        assert!(!up_to_date.more);
        // The first of a reply goes in whatever its size.
        let mut budget = Budget::new(10);
        let first = fit_conv(conv(events), Keep::Last, &mut budget).unwrap();
        assert_eq!(first.events.len(), 1);
        assert_eq!(first.events[0].version, 4);
        assert!(first.more);
    }
}
