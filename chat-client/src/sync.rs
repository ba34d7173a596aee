//! The sync and de-duplication state machine, free of I/O.
//!
//! Per connection: after `welcome`, page the inbox from the cursor
//! ([`SyncState::start_sync`], [`SyncState::on_page`]) while live messages
//! are buffered ([`SyncState::on_live`]); when the last page arrives, emit
//! the buffered messages not already emitted and move the cursor to the
//! page's settled watermark minus one. While the connection stays up, each
//! heartbeat's watermark moves it again ([`SyncState::on_watermark`]).
//! During a long sync each page already moves the cursor to
//! `min(last id of the page, stable - 1)` (emitting the buffered live
//! messages up to there first), so a sync cut short by a disconnect keeps
//! its progress.
//! Messages emitted above the cursor are remembered in `seen`, so nothing is
//! emitted twice; the set is pruned as the cursor passes its ids.

use std::collections::BTreeSet;

use chat_core::{Message, MessageId};

use crate::store::DeviceState;

/// Where the current connection is in the sync protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// No connection, or no sync started on it yet.
    Offline,
    /// Paging the inbox; live messages are buffered.
    Syncing,
    /// Synced; live messages are emitted at once and watermarks apply.
    Live,
}

/// What to do after a sync page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Next {
    /// Ask for the next page, after this id.
    Page(MessageId),
    /// The sync is complete.
    Done,
}

/// The result of [`SyncState::on_page`].
#[derive(Debug)]
pub(crate) struct PageOutcome {
    /// Messages to hand to the application, in this order.
    pub(crate) emit: Vec<Message>,
    /// What to do next.
    pub(crate) next: Next,
    /// Whether the cursor moved (persist it and ack it).
    pub(crate) advanced: bool,
}

/// The server broke the sync protocol: `has_more` with a page that does not
/// move past the requested cursor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StalledPage;

/// The sync and de-duplication state of one device.
#[derive(Debug)]
pub(crate) struct SyncState {
    cursor: MessageId,
    /// Emitted ids above `cursor`.
    seen: BTreeSet<MessageId>,
    phase: Phase,
    /// Live messages received while syncing, in arrival order.
    buffer: Vec<Message>,
    /// Most messages kept in `buffer`; past that the buffer is dropped and
    /// the sync makes another pass from the cursor once it ends.
    buffer_limit: usize,
    /// The buffer overflowed during this pass.
    overflowed: bool,
}

impl SyncState {
    /// State restored from a store (or the server's cursor).
    pub(crate) fn new(state: DeviceState, buffer_limit: usize) -> Self {
        let cursor = state.cursor;
        let seen = state.seen.into_iter().filter(|id| *id > cursor).collect();
        Self {
            cursor,
            seen,
            phase: Phase::Offline,
            buffer: Vec::new(),
            buffer_limit: buffer_limit.max(1),
            overflowed: false,
        }
    }

    /// The cursor: every message with an id up to it has been emitted.
    pub(crate) fn cursor(&self) -> MessageId {
        self.cursor
    }

    /// The current phase.
    #[cfg(test)]
    pub(crate) fn phase(&self) -> Phase {
        self.phase
    }

    /// The state to persist.
    pub(crate) fn snapshot(&self) -> DeviceState {
        DeviceState {
            cursor: self.cursor,
            seen: self.seen.iter().copied().collect(),
        }
    }

    /// Starts (or restarts) a sync on a fresh connection; returns the `after`
    /// of the first page.
    pub(crate) fn start_sync(&mut self) -> MessageId {
        self.phase = Phase::Syncing;
        self.buffer.clear();
        self.overflowed = false;
        self.cursor
    }

    /// The connection is gone: the next one syncs again.
    pub(crate) fn disconnected(&mut self) {
        self.phase = Phase::Offline;
        self.buffer.clear();
        self.overflowed = false;
    }

    /// Emits `m` unless it is at or below the cursor or already emitted.
    fn admit(&mut self, m: Message, out: &mut Vec<Message>) {
        if m.id > self.cursor && self.seen.insert(m.id) {
            out.push(m);
        }
    }

    /// A page of the inbox arrived: the answer to a sync `after` `after`.
    pub(crate) fn on_page(
        &mut self,
        after: MessageId,
        messages: Vec<Message>,
        has_more: bool,
        stable: MessageId,
    ) -> Result<PageOutcome, StalledPage> {
        let mut emit = Vec::with_capacity(messages.len());
        let mut last = after;
        for m in messages {
            if m.id <= after {
                // Not what was asked for; a well-behaved server never sends it.
                continue;
            }
            last = last.max(m.id);
            self.admit(m, &mut emit);
        }
        if self.phase != Phase::Syncing {
            // A late page (should not happen): emit what is new, move nothing.
            return Ok(PageOutcome {
                emit,
                next: Next::Done,
                advanced: false,
            });
        }
        if has_more {
            if last == after {
                return Err(StalledPage);
            }
            // Everything up to this page's end that is also below the
            // watermark has been received: by this page or an earlier one,
            // or (having landed after its page was read) live, and then it
            // is in the buffer. Emit those buffered messages and move the
            // cursor, so a long sync on a flaky link still makes progress.
            // Not after an overflow: a dropped live message may be below.
            let mut advanced = false;
            if !self.overflowed {
                let upto = last.min(MessageId(stable.0.saturating_sub(1)));
                if upto > self.cursor {
                    let (now, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.buffer)
                        .into_iter()
                        .partition(|m| m.id <= upto);
                    self.buffer = later;
                    for m in now {
                        self.admit(m, &mut emit);
                    }
                    advanced = self.advance_to(upto);
                }
            }
            return Ok(PageOutcome {
                emit,
                next: Next::Page(last),
                advanced,
            });
        }
        // Complete: the live messages buffered meanwhile come next.
        for m in std::mem::take(&mut self.buffer) {
            self.admit(m, &mut emit);
        }
        if self.overflowed {
            // Some live messages were dropped; they are in the inbox, but
            // one that landed below a page already read is only found by
            // another pass from the cursor. `seen` keeps it exactly-once.
            self.overflowed = false;
            return Ok(PageOutcome {
                emit,
                next: Next::Page(self.cursor),
                advanced: false,
            });
        }
        self.phase = Phase::Live;
        let advanced = self.advance_to(MessageId(stable.0.saturating_sub(1)));
        Ok(PageOutcome {
            emit,
            next: Next::Done,
            advanced,
        })
    }

    /// A live message arrived: returns it if it is to be emitted now.
    pub(crate) fn on_live(&mut self, m: Message) -> Option<Message> {
        if self.phase == Phase::Syncing {
            if self.buffer.len() >= self.buffer_limit {
                self.buffer.clear();
                self.overflowed = true;
            }
            if !self.overflowed {
                self.buffer.push(m);
            }
            return None;
        }
        let mut out = Vec::with_capacity(1);
        self.admit(m, &mut out);
        out.pop()
    }

    /// This device sent message `id` (the server acknowledged it): the
    /// application has it from the receipt, so it is not emitted as an
    /// event when sync or another path brings it back.
    pub(crate) fn mark_seen(&mut self, id: MessageId) {
        if id > self.cursor {
            self.seen.insert(id);
        }
    }

    /// A settled watermark (from a heartbeat reply) arrived: while live,
    /// moves the cursor to `stable - 1`. Returns whether it moved.
    pub(crate) fn on_watermark(&mut self, stable: MessageId) -> bool {
        if self.phase != Phase::Live {
            return false;
        }
        self.advance_to(MessageId(stable.0.saturating_sub(1)))
    }

    fn advance_to(&mut self, cursor: MessageId) -> bool {
        if cursor <= self.cursor {
            return false;
        }
        self.cursor = cursor;
        match cursor.0.checked_add(1) {
            Some(next) => self.seen = self.seen.split_off(&MessageId(next)),
            None => self.seen.clear(),
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use chat_core::{ChannelId, ClientMsgId, UserId};

    use super::*;

    fn msg(id: u64) -> Message {
        Message {
            id: MessageId(id),
            channel_id: ChannelId::from_bytes([1; 16]),
            sender: UserId::from_bytes([2; 16]),
            content: format!("m{id}"),
            created_at: 0,
            client_msg_id: ClientMsgId::new_random(),
        }
    }

    fn msgs(ids: &[u64]) -> Vec<Message> {
        ids.iter().copied().map(msg).collect()
    }

    fn ids(ms: &[Message]) -> Vec<u64> {
        ms.iter().map(|m| m.id.0).collect()
    }

    fn fresh(cursor: u64) -> SyncState {
        SyncState::new(
            DeviceState {
                cursor: MessageId(cursor),
                seen: vec![],
            },
            1000,
        )
    }

    #[test]
    fn pages_then_buffered_live_then_cursor_to_watermark() {
        let mut s = fresh(10);
        assert_eq!(s.start_sync(), MessageId(10));
        // Live messages during the sync are buffered, not emitted.
        assert!(s.on_live(msg(15)).is_none());
        assert!(s.on_live(msg(40)).is_none());
        let p = s
            .on_page(MessageId(10), msgs(&[11, 12, 15]), true, MessageId(30))
            .unwrap();
        assert_eq!(ids(&p.emit), [11, 12, 15]);
        assert_eq!(p.next, Next::Page(MessageId(15)));
        // Mid-sync progress: up to min(last id, stable - 1).
        assert!(p.advanced);
        assert_eq!(s.cursor(), MessageId(15));
        assert!(s.on_live(msg(41)).is_none());
        let p = s
            .on_page(MessageId(15), msgs(&[20, 40]), false, MessageId(35))
            .unwrap();
        // Synced first, then buffered (15 and 40 were already emitted).
        assert_eq!(ids(&p.emit), [20, 40, 41]);
        assert_eq!(p.next, Next::Done);
        assert!(p.advanced);
        assert_eq!(s.cursor(), MessageId(34));
        assert_eq!(s.phase(), Phase::Live);
        // Seen keeps only ids above the cursor.
        assert_eq!(s.snapshot().seen, vec![MessageId(40), MessageId(41)]);
    }

    #[test]
    fn mid_sync_progress_emits_late_landers_first_and_respects_the_watermark() {
        let mut s = fresh(0);
        s.start_sync();
        // 3 landed after page 1 was read; it arrived live (buffered).
        let p = s
            .on_page(MessageId(0), msgs(&[1, 2, 4]), true, MessageId(3))
            .unwrap();
        assert_eq!(ids(&p.emit), [1, 2, 4]);
        assert_eq!(s.cursor(), MessageId(2), "capped at stable - 1");
        assert!(s.on_live(msg(3)).is_none());
        assert!(s.on_live(msg(9)).is_none());
        let p = s
            .on_page(MessageId(4), msgs(&[5, 6]), true, MessageId(50))
            .unwrap();
        // The buffered 3 goes out before the cursor passes it; 9 waits.
        assert_eq!(ids(&p.emit), [5, 6, 3]);
        assert!(p.advanced);
        assert_eq!(s.cursor(), MessageId(6));
        // Cut short here: the progress is kept, the rest is synced again.
        s.disconnected();
        assert_eq!(s.start_sync(), MessageId(6));
        let p = s
            .on_page(MessageId(6), msgs(&[9]), false, MessageId(50))
            .unwrap();
        assert_eq!(ids(&p.emit), [9]);
        assert_eq!(s.cursor(), MessageId(49));
    }

    #[test]
    fn live_messages_are_emitted_once_and_never_at_or_below_the_cursor() {
        let mut s = fresh(0);
        s.start_sync();
        let p = s
            .on_page(MessageId(0), vec![], false, MessageId(101))
            .unwrap();
        assert!(p.emit.is_empty());
        assert!(p.advanced);
        assert_eq!(s.cursor(), MessageId(100));
        assert!(s.on_live(msg(100)).is_none());
        assert!(s.on_live(msg(50)).is_none());
        assert_eq!(s.on_live(msg(120)).map(|m| m.id.0), Some(120));
        assert!(s.on_live(msg(120)).is_none());
        assert_eq!(s.on_live(msg(110)).map(|m| m.id.0), Some(110));
    }

    #[test]
    fn own_sends_are_not_emitted_again() {
        let mut s = fresh(10);
        s.mark_seen(MessageId(5)); // below the cursor: nothing to remember
        s.mark_seen(MessageId(12));
        assert_eq!(s.snapshot().seen, vec![MessageId(12)]);
        s.start_sync();
        let p = s
            .on_page(MessageId(10), msgs(&[11, 12, 13]), false, MessageId(12))
            .unwrap();
        assert_eq!(ids(&p.emit), [11, 13]);
    }

    #[test]
    fn watermarks_apply_only_when_live_and_only_forward() {
        let mut s = fresh(5);
        assert!(!s.on_watermark(MessageId(100)), "offline");
        s.start_sync();
        assert!(!s.on_watermark(MessageId(100)), "syncing");
        s.on_page(MessageId(5), msgs(&[6]), false, MessageId(7))
            .unwrap();
        assert_eq!(s.cursor(), MessageId(6));
        assert_eq!(s.on_live(msg(8)).map(|m| m.id.0), Some(8));
        assert_eq!(s.on_live(msg(12)).map(|m| m.id.0), Some(12));
        assert!(s.on_watermark(MessageId(10)));
        assert_eq!(s.cursor(), MessageId(9));
        assert_eq!(s.snapshot().seen, vec![MessageId(12)]);
        assert!(!s.on_watermark(MessageId(4)), "never backwards");
        assert!(!s.on_watermark(MessageId(0)), "zero saturates");
        assert_eq!(s.cursor(), MessageId(9));
        // After a disconnect, watermarks wait for the next complete sync.
        s.disconnected();
        assert!(!s.on_watermark(MessageId(1000)));
        assert_eq!(s.cursor(), MessageId(9));
    }

    #[test]
    fn resync_after_reconnect_skips_what_was_seen() {
        let mut s = fresh(0);
        s.start_sync();
        s.on_page(MessageId(0), msgs(&[1, 2]), false, MessageId(2))
            .unwrap();
        assert_eq!(s.cursor(), MessageId(1));
        assert_eq!(s.on_live(msg(5)).map(|m| m.id.0), Some(5));
        // Connection lost before a heartbeat moved the cursor past 5.
        s.disconnected();
        assert_eq!(s.start_sync(), MessageId(1));
        let p = s
            .on_page(MessageId(1), msgs(&[2, 3, 5, 6]), false, MessageId(7))
            .unwrap();
        assert_eq!(ids(&p.emit), [3, 6]);
        assert_eq!(s.cursor(), MessageId(6));
        assert!(s.snapshot().seen.is_empty());
    }

    #[test]
    fn restored_state_keeps_seen_ids_above_the_cursor() {
        let mut s = SyncState::new(
            DeviceState {
                cursor: MessageId(10),
                seen: vec![MessageId(3), MessageId(12), MessageId(14)],
            },
            100,
        );
        assert_eq!(s.snapshot().seen, vec![MessageId(12), MessageId(14)]);
        s.start_sync();
        let p = s
            .on_page(MessageId(10), msgs(&[11, 12, 13, 14]), false, MessageId(12))
            .unwrap();
        assert_eq!(ids(&p.emit), [11, 13]);
        assert_eq!(s.cursor(), MessageId(11));
        assert_eq!(
            s.snapshot().seen,
            vec![MessageId(12), MessageId(13), MessageId(14)]
        );
    }

    #[test]
    fn buffer_overflow_triggers_another_pass() {
        let mut s = SyncState::new(DeviceState::default(), 2);
        s.start_sync();
        for id in [3, 4, 5] {
            assert!(s.on_live(msg(id)).is_none());
        }
        // The buffer overflowed: after the last page, sync again from the
        // cursor instead of trusting the watermark.
        let p = s
            .on_page(MessageId(0), msgs(&[1, 2]), false, MessageId(10))
            .unwrap();
        assert_eq!(ids(&p.emit), [1, 2]);
        assert_eq!(p.next, Next::Page(MessageId(0)));
        assert!(!p.advanced);
        assert_eq!(s.phase(), Phase::Syncing);
        let p = s
            .on_page(MessageId(0), msgs(&[1, 2, 3, 4, 5]), false, MessageId(10))
            .unwrap();
        assert_eq!(ids(&p.emit), [3, 4, 5]);
        assert_eq!(p.next, Next::Done);
        assert_eq!(s.cursor(), MessageId(9));
    }

    #[test]
    fn malformed_pages_do_not_loop_or_regress() {
        let mut s = fresh(10);
        s.start_sync();
        // has_more without progress is a protocol error.
        assert_eq!(
            s.on_page(MessageId(10), vec![], true, MessageId(0))
                .unwrap_err(),
            StalledPage
        );
        assert_eq!(
            s.on_page(MessageId(10), msgs(&[9, 10]), true, MessageId(0))
                .unwrap_err(),
            StalledPage
        );
        // Out-of-range ids are skipped, out-of-order pages still page forward.
        let p = s
            .on_page(MessageId(10), msgs(&[14, 5, 12]), true, MessageId(0))
            .unwrap();
        assert_eq!(ids(&p.emit), [14, 12]);
        assert_eq!(p.next, Next::Page(MessageId(14)));
        // A watermark of zero never moves the cursor backwards.
        let p = s
            .on_page(MessageId(14), vec![], false, MessageId(0))
            .unwrap();
        assert!(!p.advanced);
        assert_eq!(s.cursor(), MessageId(10));
        // A page arriving when not syncing emits new messages only.
        s.disconnected();
        let p = s
            .on_page(MessageId(10), msgs(&[12, 13]), false, MessageId(100))
            .unwrap();
        assert_eq!(ids(&p.emit), [13]);
        assert_eq!(s.cursor(), MessageId(10));
        // The largest id is handled without overflow.
        let mut s = fresh(0);
        s.start_sync();
        s.on_page(MessageId(0), msgs(&[u64::MAX]), false, MessageId::MAX)
            .unwrap();
        assert!(!s.on_watermark(MessageId::MAX));
        assert_eq!(s.cursor(), MessageId(u64::MAX - 1));
        assert_eq!(s.snapshot().seen, vec![MessageId::MAX]);
    }

    /// A randomized interleaving: messages land in the inbox out of id order
    /// (within a settle window), live events reach the client after landing,
    /// syncs page the inbox, connections drop. Every message must be emitted
    /// exactly once.
    #[test]
    fn simulated_interleavings_emit_everything_exactly_once() {
        use rand::rngs::StdRng;
        use rand::{Rng, SeedableRng};

        const SETTLE: u64 = 20;
        for seed in 0..200u64 {
            let mut rng = StdRng::seed_from_u64(seed);
            let mut s = SyncState::new(DeviceState::default(), rng.gen_range(1..50));
            // Ids are issued at time = id; each lands after a delay < SETTLE.
            let total = 300u64;
            let mut landing: Vec<(u64, u64)> = (1..=total)
                .map(|id| (id + rng.gen_range(0..SETTLE), id))
                .collect();
            landing.sort();
            let mut inbox: BTreeSet<u64> = BTreeSet::new();
            let mut emitted: Vec<u64> = Vec::new();
            let mut connected = false;
            let mut sync_after: Option<MessageId> = None;
            let mut in_flight: std::collections::VecDeque<u64> = Default::default();
            let mut now = 0u64;
            let mut li = 0;
            while li < landing.len() || !in_flight.is_empty() || sync_after.is_some() {
                now += 1;
                // Land messages whose time has come; subscribed connections
                // get them live (in landing order, some time later).
                while li < landing.len() && landing[li].0 <= now {
                    inbox.insert(landing[li].1);
                    if connected {
                        in_flight.push_back(landing[li].1);
                    }
                    li += 1;
                }
                let stable = MessageId(now.saturating_sub(SETTLE));
                assert!(now < 1_000_000, "seed {seed}: no progress");
                match rng.gen_range(0..20) {
                    0 if connected => {
                        // Drop the connection; undelivered live events are lost.
                        connected = false;
                        in_flight.clear();
                        sync_after = None;
                        s.disconnected();
                    }
                    1 | 2 if !connected => {
                        connected = true;
                        sync_after = Some(s.start_sync());
                    }
                    3..=8 if connected => {
                        // Deliver pending live events first (FIFO), then a
                        // reply: a sync page or a heartbeat.
                        while let Some(id) = in_flight.pop_front() {
                            emitted.extend(s.on_live(msg(id)).map(|m| m.id.0));
                        }
                        if let Some(after) = sync_after {
                            let limit = rng.gen_range(1..8);
                            let page: Vec<u64> =
                                inbox.range(after.0 + 1..).take(limit).copied().collect();
                            let has_more = inbox.range(after.0 + 1..).nth(limit).is_some();
                            let out = s.on_page(after, msgs(&page), has_more, stable).unwrap();
                            emitted.extend(ids(&out.emit));
                            sync_after = match out.next {
                                Next::Page(a) => Some(a),
                                Next::Done => None,
                            };
                        } else {
                            s.on_watermark(stable);
                        }
                    }
                    _ if connected && !in_flight.is_empty() => {
                        let id = in_flight.pop_front().unwrap();
                        emitted.extend(s.on_live(msg(id)).map(|m| m.id.0));
                    }
                    _ => {}
                }
                if li == landing.len() && !connected {
                    connected = true;
                    sync_after = Some(s.start_sync());
                }
            }
            let mut sorted = emitted.clone();
            sorted.sort();
            sorted.dedup();
            assert_eq!(sorted.len(), emitted.len(), "seed {seed}: duplicates");
            assert_eq!(sorted, (1..=total).collect::<Vec<_>>(), "seed {seed}: gaps");
        }
    }
}
