//! The sync and ordering state machine of one device, free of I/O.
//!
//! Every entry of the user's inbox has a position (a [`Seq`]): 1, 2, 3, ...
//! with no gaps, assigned by the server when the message is stored. The
//! device's cursor is the position of the last entry it has handled. Live
//! events and sync pages both bring entries with their positions; they are
//! kept in `pending` and handed to the application strictly in position
//! order, each exactly once: an entry is released when it is the one right
//! after the cursor, and the cursor moves onto it. So the application sees
//! every message once, in the order of the user's inbox (and so each
//! channel's messages in id order), however events and pages interleave.
//!
//! An entry that arrives with a position past the next one means another
//! is still on its way (two senders' events can overtake each other) or
//! was lost (a dropped connection, a bus outage): [`SyncState::has_gap`]
//! tells the worker, which syncs from the cursor if the gap is still there
//! after a short grace.
//!
//! This device's own messages are not shown to it as events: the
//! application has them from the send's receipt. The receipt names the
//! message's position in the user's inbox, which is then released silently;
//! an own message that comes back by sync before its receipt (the reply was
//! lost with a connection) is recognised by its client message id.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use chat_core::{Change, ChannelId, ClientMsgId, InboxEntry, Message, Seq, UserId};
use tokio::time::Instant;

/// What to do after a sync page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Next {
    /// Ask for the next page, after this position.
    Page(Seq),
    /// The sync is complete.
    Done,
}

/// The result of [`SyncState::on_page`].
#[derive(Debug)]
pub(crate) struct PageOutcome {
    /// Entries to hand to the application, in this order.
    pub(crate) emit: Vec<InboxEntry>,
    /// What to do next.
    pub(crate) next: Next,
}

/// The server broke the sync protocol: `has_more` with a page that does not
/// move past the requested position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StalledPage;

/// An entry waiting for the ones before it.
#[derive(Debug)]
enum Slot {
    /// A message, or a change entry, to hand to the application.
    Message(Box<(Message, Option<Change>)>),
    /// This device's own message: handled by its receipt.
    Own,
}

/// The sync and ordering state of one device.
#[derive(Debug)]
pub(crate) struct SyncState {
    /// The user this device belongs to.
    user: UserId,
    /// Every entry up to here has been handled.
    cursor: Seq,
    /// Entries past `cursor + 1`, waiting for the ones before them.
    pending: BTreeMap<Seq, Slot>,
    /// Most entries kept in `pending`; past that it is dropped and the
    /// next sync brings them again.
    limit: usize,
    /// This device's sends not yet acknowledged, by key, with when they
    /// were first written (forgotten after `own_ttl`).
    own: HashMap<(ChannelId, ClientMsgId), Instant>,
    own_ttl: Duration,
}

impl SyncState {
    /// State starting at `cursor`.
    pub(crate) fn new(user: UserId, cursor: Seq, limit: usize, own_ttl: Duration) -> Self {
        Self {
            user,
            cursor,
            pending: BTreeMap::new(),
            limit: limit.max(1),
            own: HashMap::new(),
            own_ttl,
        }
    }

    /// The cursor: every entry with a position up to it has been handled.
    pub(crate) fn cursor(&self) -> Seq {
        self.cursor
    }

    /// Whether entries are waiting for one that has not arrived.
    pub(crate) fn has_gap(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Where a sync starts.
    pub(crate) fn start_sync(&mut self) -> Seq {
        self.cursor
    }

    /// This device is sending `key` in `channel`: an entry from this user
    /// with that key is its own (see the module docs).
    pub(crate) fn sending(&mut self, channel: ChannelId, key: ClientMsgId) {
        let now = Instant::now();
        let ttl = self.own_ttl;
        self.own.retain(|_, at| now.duration_since(*at) < ttl);
        self.own.entry((channel, key)).or_insert(now);
    }

    /// The server acknowledged this device's send of `key`, stored at
    /// position `seq` of the user's inbox (if known). Returns messages
    /// released by it.
    pub(crate) fn sent(
        &mut self,
        channel: ChannelId,
        key: &ClientMsgId,
        seq: Option<Seq>,
    ) -> Vec<InboxEntry> {
        self.own.remove(&(channel, key.clone()));
        let mut out = Vec::new();
        if let Some(seq) = seq {
            if seq > self.cursor {
                self.pending.insert(seq, Slot::Own);
                self.drain(&mut out);
            }
        }
        out
    }

    /// This device's own change (an edit, a deletion, a reaction) is
    /// stored at `seq`: its reply stands for it, the position is handled
    /// silently. Returns entries released by it.
    pub(crate) fn changed(&mut self, seq: Seq) -> Vec<InboxEntry> {
        let mut out = Vec::new();
        if seq > self.cursor {
            self.pending.insert(seq, Slot::Own);
            self.drain(&mut out);
        }
        out
    }

    /// Takes in one entry (from a page or a live event).
    fn admit(
        &mut self,
        seq: Seq,
        message: Message,
        change: Option<Change>,
        out: &mut Vec<InboxEntry>,
    ) {
        if seq <= self.cursor {
            return; // handled already
        }
        // Change entries carry the key of the message they change: only
        // a message's own entry is recognised by it.
        let own = change.is_none()
            && message.sender == self.user
            && self
                .own
                .contains_key(&(message.channel_id, message.client_msg_id.clone()));
        let slot = if own {
            Slot::Own
        } else {
            Slot::Message(Box::new((message, change)))
        };
        // A receipt already placed here stays: the entry is this device's.
        if !matches!(self.pending.get(&seq), Some(Slot::Own)) {
            self.pending.insert(seq, slot);
        }
        self.drain(out);
        if self.pending.len() > self.limit {
            // Too far ahead of the cursor: let the next sync bring them
            // (receipts stay: their keys are forgotten already).
            self.pending.retain(|_, slot| matches!(slot, Slot::Own));
        }
    }

    /// Releases every entry that directly follows the cursor.
    fn drain(&mut self, out: &mut Vec<InboxEntry>) {
        while let Some(entry) = self.pending.first_entry() {
            if *entry.key() != self.cursor.next() {
                break;
            }
            let (seq, slot) = entry.remove_entry();
            self.cursor = seq;
            if let Slot::Message(entry) = slot {
                let (message, change) = *entry;
                out.push(InboxEntry {
                    seq,
                    message,
                    change,
                });
            }
        }
    }

    /// A live message arrived at position `seq`: returns what is released.
    pub(crate) fn on_live(&mut self, seq: Seq, message: Message) -> Vec<InboxEntry> {
        self.on_live_entry(seq, message, None)
    }

    /// A live message or change entry arrived at position `seq`: returns
    /// what is released.
    pub(crate) fn on_live_entry(
        &mut self,
        seq: Seq,
        message: Message,
        change: Option<Change>,
    ) -> Vec<InboxEntry> {
        let mut out = Vec::new();
        self.admit(seq, message, change, &mut out);
        out
    }

    /// A page of the inbox arrived: the answer to a sync after `after`.
    pub(crate) fn on_page(
        &mut self,
        after: Seq,
        entries: Vec<InboxEntry>,
        has_more: bool,
    ) -> Result<PageOutcome, StalledPage> {
        let mut emit = Vec::with_capacity(entries.len());
        let mut last = after;
        for e in entries {
            if e.seq <= after {
                // Not what was asked for; a well-behaved server never sends it.
                continue;
            }
            last = last.max(e.seq);
            self.admit(e.seq, e.message, e.change, &mut emit);
        }
        if has_more {
            if last == after {
                return Err(StalledPage);
            }
            return Ok(PageOutcome {
                emit,
                next: Next::Page(last.max(self.cursor)),
            });
        }
        Ok(PageOutcome {
            emit,
            next: Next::Done,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chat_core::MessageId;

    const ME: UserId = UserId(uuid::Uuid::from_u128(1));
    const OTHER: UserId = UserId(uuid::Uuid::from_u128(2));
    const CHANNEL: ChannelId = ChannelId(uuid::Uuid::from_u128(3));

    fn msg(seq: u64) -> Message {
        Message {
            id: MessageId(1_000 + seq),
            channel_id: CHANNEL,
            sender: OTHER,
            content: format!("m{seq}"),
            created_at: seq,
            client_msg_id: ClientMsgId::new(format!("k{seq}")).unwrap(),
            reply_to: None,
            edited_at: None,
            deleted: false,
            reactions: Vec::new(),
            attachments: Vec::new(),
        }
    }

    fn entry(seq: u64) -> InboxEntry {
        InboxEntry {
            seq: Seq(seq),
            message: msg(seq),
            change: None,
        }
    }

    /// The positions of released entries, checked against their messages
    /// (`msg(k)` is created at `k`).
    fn seqs(es: &[InboxEntry]) -> Vec<u64> {
        es.iter()
            .map(|e| {
                assert_eq!(e.seq.0, e.message.created_at, "position and message agree");
                e.seq.0
            })
            .collect()
    }

    fn fresh(cursor: u64) -> SyncState {
        SyncState::new(ME, Seq(cursor), 1_000, Duration::from_secs(60))
    }

    #[test]
    fn pages_release_in_order_and_move_the_cursor() {
        let mut s = fresh(3);
        assert_eq!(s.start_sync(), Seq(3));
        let out = s.on_page(Seq(3), vec![entry(4), entry(5)], true).unwrap();
        assert_eq!(seqs(&out.emit), vec![4, 5]);
        assert_eq!(out.next, Next::Page(Seq(5)));
        let out = s.on_page(Seq(5), vec![entry(6)], false).unwrap();
        assert_eq!(seqs(&out.emit), vec![6]);
        assert_eq!(out.next, Next::Done);
        assert_eq!(s.cursor(), Seq(6));
        assert!(!s.has_gap());
    }

    #[test]
    fn live_events_wait_for_the_ones_before_them() {
        let mut s = fresh(0);
        assert!(s.on_live(Seq(2), msg(2)).is_empty(), "1 is missing");
        assert!(s.has_gap());
        assert!(s.on_live(Seq(3), msg(3)).is_empty());
        assert_eq!(seqs(&s.on_live(Seq(1), msg(1))), vec![1, 2, 3]);
        assert!(!s.has_gap());
        assert!(s.on_live(Seq(2), msg(2)).is_empty(), "never twice");
        assert_eq!(s.cursor(), Seq(3));
    }

    #[test]
    fn a_sync_fills_a_gap_and_duplicates_are_dropped() {
        let mut s = fresh(0);
        s.on_live(Seq(1), msg(1));
        s.on_live(Seq(4), msg(4)); // 2 and 3 were lost
        assert!(s.has_gap());
        let after = s.start_sync();
        let out = s
            .on_page(after, vec![entry(2), entry(3), entry(4)], false)
            .unwrap();
        assert_eq!(seqs(&out.emit), vec![2, 3, 4], "4 once");
        assert_eq!(s.cursor(), Seq(4));
        assert!(!s.has_gap());
    }

    #[test]
    fn change_entries_keep_their_change_and_own_changes_are_silent() {
        let mut s = fresh(0);
        // A change entry of a message this device is still sending (same
        // key) is not taken for the device's own message.
        let key = ClientMsgId::new("mine").unwrap();
        s.sending(CHANNEL, key.clone());
        let mut mine = msg(1);
        mine.sender = ME;
        mine.client_msg_id = key;
        let out = s.on_live_entry(Seq(1), mine, Some(Change::Edited {}));
        assert_eq!(seqs(&out), vec![1]);
        assert_eq!(out[0].change, Some(Change::Edited {}), "the change is kept");
        // This device's own change, known from its reply, is released
        // silently and lets the entries after it through.
        assert!(s
            .on_live_entry(Seq(3), msg(3), Some(Change::Deleted { by: OTHER }))
            .is_empty());
        let out = s.changed(Seq(2));
        assert_eq!(seqs(&out), vec![3]);
        assert_eq!(out[0].change, Some(Change::Deleted { by: OTHER }));
        assert_eq!(s.cursor(), Seq(3));
        // Pages carry changes too.
        let mut changed = entry(4);
        changed.change = Some(Change::Edited {});
        let out = s.on_page(Seq(3), vec![changed], false).unwrap();
        assert_eq!(out.emit[0].change, Some(Change::Edited {}));
    }

    #[test]
    fn own_sends_are_handled_silently() {
        let mut s = fresh(0);
        let key = ClientMsgId::new("mine").unwrap();
        s.sending(CHANNEL, key.clone());
        // Another user's message after mine is held until my receipt.
        assert!(s.on_live(Seq(2), msg(2)).is_empty());
        assert_eq!(seqs(&s.sent(CHANNEL, &key, Some(Seq(1)))), vec![2]);
        assert_eq!(s.cursor(), Seq(2));
        // My message coming back by sync before the receipt is mine too.
        let key = ClientMsgId::new("lost-reply").unwrap();
        s.sending(CHANNEL, key.clone());
        let mut mine = msg(3);
        mine.sender = ME;
        mine.client_msg_id = key.clone();
        let out = s
            .on_page(
                Seq(2),
                vec![
                    InboxEntry {
                        seq: Seq(3),
                        message: mine,
                        change: None,
                    },
                    entry(4),
                ],
                false,
            )
            .unwrap();
        assert_eq!(seqs(&out.emit), vec![4], "not my own message");
        assert!(s.sent(CHANNEL, &key, Some(Seq(3))).is_empty());
        assert_eq!(s.cursor(), Seq(4));
        // A duplicate receipt for a position already passed changes nothing.
        assert!(s.sent(CHANNEL, &key, Some(Seq(3))).is_empty());
        assert_eq!(s.cursor(), Seq(4));
    }

    #[test]
    fn a_message_of_mine_from_another_device_is_shown() {
        let mut s = fresh(0);
        let mut from_phone = msg(1);
        from_phone.sender = ME;
        assert_eq!(seqs(&s.on_live(Seq(1), from_phone)), vec![1]);
    }

    #[test]
    fn malformed_pages_do_not_loop_or_regress() {
        let mut s = fresh(5);
        assert_eq!(s.on_page(Seq(5), vec![], true).unwrap_err(), StalledPage);
        assert_eq!(
            s.on_page(Seq(5), vec![entry(3)], true).unwrap_err(),
            StalledPage,
            "entries at or below `after` are no progress"
        );
        assert_eq!(s.cursor(), Seq(5));
    }

    #[test]
    fn too_many_pending_entries_are_dropped_for_the_next_sync() {
        let mut s = SyncState::new(ME, Seq(0), 3, Duration::from_secs(60));
        for k in 2..=5 {
            s.on_live(Seq(k), msg(k));
        }
        assert!(!s.has_gap(), "dropped past the limit");
        let out = s
            .on_page(Seq(0), (1..=5).map(entry).collect(), false)
            .unwrap();
        assert_eq!(seqs(&out.emit), vec![1, 2, 3, 4, 5]);
    }

    /// Random interleavings of live events (reordered, some lost, some
    /// repeated), sync pages and receipts of own sends: every entry is
    /// handled exactly once, in position order, and own messages are never
    /// shown.
    #[test]
    fn simulated_interleavings_release_everything_exactly_once_in_order() {
        use proptest::prelude::*;
        let mut runner = proptest::test_runner::TestRunner::default();
        runner
            .run(
                &(
                    proptest::collection::vec((0u8..5, any::<u16>()), 1..200),
                    1u64..60,
                ),
                |(ops, total)| {
                    let mut s = fresh(0);
                    let own: std::collections::BTreeSet<u64> =
                        (1..=total).filter(|k| k % 7 == 0).collect();
                    let message = |k: u64| {
                        let mut m = msg(k);
                        if own.contains(&k) {
                            m.sender = ME;
                        }
                        m
                    };
                    for k in &own {
                        s.sending(CHANNEL, message(*k).client_msg_id);
                    }
                    let mut shown = Vec::new();
                    let mut sent = std::collections::BTreeSet::new();
                    for (op, r) in ops {
                        let k = 1 + (r as u64) % total;
                        match op {
                            0 | 1 => shown.extend(s.on_live(Seq(k), message(k))),
                            2 if own.contains(&k) && sent.insert(k) => shown.extend(s.sent(
                                CHANNEL,
                                &message(k).client_msg_id,
                                Some(Seq(k)),
                            )),
                            _ => {
                                // A sync page of up to 5 entries from the cursor.
                                let after = s.start_sync();
                                let page: Vec<InboxEntry> = (after.0 + 1..=total)
                                    .take(5)
                                    .map(|k| InboxEntry {
                                        seq: Seq(k),
                                        message: message(k),
                                        change: None,
                                    })
                                    .collect();
                                let more = after.0 + 5 < total;
                                if let Ok(o) = s.on_page(after, page, more) {
                                    shown.extend(o.emit);
                                }
                            }
                        }
                    }
                    // Finish with a full sync.
                    loop {
                        let after = s.start_sync();
                        let page: Vec<InboxEntry> = (after.0 + 1..=total)
                            .map(|k| InboxEntry {
                                seq: Seq(k),
                                message: message(k),
                                change: None,
                            })
                            .collect();
                        let o = s.on_page(after, page, false).unwrap();
                        shown.extend(o.emit);
                        if o.next == Next::Done {
                            break;
                        }
                    }
                    let expected: Vec<u64> = (1..=total).filter(|k| !own.contains(k)).collect();
                    prop_assert_eq!(seqs(&shown), expected);
                    prop_assert_eq!(s.cursor(), Seq(total));
                    Ok(())
                },
            )
            .unwrap();
    }
}
