//! Message id generation.
//!
//! Two schemes sit behind one trait, [`MessageIdGenerator`]:
//!
//! * [`Snowflake`]: 64-bit ids of `41 bits milliseconds | 10 bits node |
//!   12 bits sequence`, unique across nodes and ordered by time across every
//!   channel. The reference server's default.
//! * [`ChannelSequence`]: a dense local sequence per channel (1, 2, 3, ...),
//!   unique only within the channel (Tinode's per-topic `seq`, Centrifugo's
//!   per-channel offset). Simpler to reason about for per-channel streams;
//!   its ids carry no time, so [`MessageIdGenerator::floor_at`] returns
//!   `None` for it.
//!
//! Either works for the server: inboxes are ordered by positions the store
//! assigns at commit ([`crate::Seq`]), not by message ids, and the store
//! raises a proposed id that is not above its channel's last one
//! ([`crate::MessageStore`]), so ids always increase per channel.

use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;

use crate::clock::{Clock, SystemClock};
use crate::error::{Error, Result};
use crate::id::{ChannelId, MessageId};
use crate::store::HistoryStore;

/// Produces message ids.
///
/// # Contract
///
/// * Ids from one generator are strictly increasing for a channel: a later
///   call for the same channel never returns a smaller or equal id.
/// * Ids are unique within their scope: for a generator whose
///   [`floor_at`](Self::floor_at) returns `Some`, across all channels and all
///   nodes configured with distinct node ids; otherwise within one channel.
/// * `floor_at(t)` is a lower bound on every id this generator (or any other
///   node using the same layout) can issue at or after wall time `t`: ids
///   carry their time, so "everything issued before `t`" is "every id below
///   `floor_at(t)`".
/// * [`next_id_after`](Self::next_id_after) returns an id above the given
///   one (a channel's last id, which may come from another node whose clock
///   runs ahead), in the same scope of uniqueness, and no later call for the
///   channel returns one at or below it.
#[async_trait]
pub trait MessageIdGenerator: Send + Sync + Debug + 'static {
    /// The next id for a message in `channel`.
    async fn next_id(&self, channel: ChannelId) -> Result<MessageId>;

    /// The next id for a message in `channel` that is above `after`.
    async fn next_id_after(&self, channel: ChannelId, after: MessageId) -> Result<MessageId>;

    /// The smallest id that can be issued at or after `unix_ms`, or `None`
    /// when ids are not globally ordered by time.
    fn floor_at(&self, unix_ms: u64) -> Option<MessageId>;
}

/// Bits of the sequence field.
const SEQ_BITS: u32 = 12;
/// Bits of the node field.
const NODE_BITS: u32 = 10;
/// Largest sequence number in one millisecond (4,095).
const MAX_SEQ: u64 = (1 << SEQ_BITS) - 1;

/// Snowflake-style 64-bit ids: `timestamp | node | sequence`.
///
/// Lock-free: the last issued `(millisecond, sequence)` pair lives in one
/// atomic word updated by compare-and-swap, so concurrent callers never
/// wait on a mutex.
///
/// * **4,096 ids per millisecond** is the format's limit. When a millisecond's
///   sequence is used up, the caller spins until the clock moves on (at most
///   one millisecond), so the limit is never exceeded while the clock is sane.
/// * **The clock stepping back** (NTP correction, VM migration) must not
///   produce smaller or duplicate ids. The generator keeps its own logical
///   time: while the wall clock is behind the last issued millisecond it goes
///   on from that millisecond, carrying into the next one when the sequence
///   runs out, and waits for nobody. The timestamps in ids then run slightly
///   ahead of the wall clock until it catches up.
#[derive(Debug)]
pub struct Snowflake {
    node: u64,
    /// `(ms_since_epoch << SEQ_BITS) | sequence` of the last id issued.
    state: AtomicU64,
    clock: Arc<dyn Clock>,
}

impl Snowflake {
    /// Custom epoch: 2024-01-01T00:00:00Z. 41 bits of milliseconds from here
    /// last until the year 2093.
    pub const EPOCH_MS: u64 = 1_704_067_200_000;
    /// Largest node id (1,023).
    pub const MAX_NODE: u16 = (1 << NODE_BITS) - 1;

    /// A generator for `node` (0 to 1,023) on the system clock.
    pub fn new(node: u16) -> Result<Self> {
        Self::with_clock(node, Arc::new(SystemClock))
    }

    /// A generator for `node` reading time from `clock`.
    pub fn with_clock(node: u16, clock: Arc<dyn Clock>) -> Result<Self> {
        if node > Self::MAX_NODE {
            return Err(Error::invalid(format!(
                "snowflake node id {node} is above {}",
                Self::MAX_NODE
            )));
        }
        Ok(Self {
            node: node as u64,
            state: AtomicU64::new(0),
            clock,
        })
    }

    /// The next id. Never fails and never goes backwards.
    pub fn generate(&self) -> MessageId {
        loop {
            // Load the state *before* reading the clock: whoever stored it
            // read the clock earlier, so `now < cur_ms` below means the clock
            // really stepped back. Read the other way round, a thread whose
            // clock reading went stale while another moved to the next
            // millisecond would take that for a step back and carry into a
            // future millisecond, and from then on every caller would, with
            // no limit on the rate.
            let cur = self.state.load(Ordering::Acquire);
            let now = self.clock.now_ms().saturating_sub(Self::EPOCH_MS);
            let cur_ms = cur >> SEQ_BITS;
            let next = if now > cur_ms {
                now << SEQ_BITS
            } else if cur & MAX_SEQ < MAX_SEQ || now < cur_ms {
                // Same millisecond with sequence left, or the clock is behind
                // our logical time: go on from the last id (carrying into the
                // next millisecond when the sequence is used up).
                cur + 1
            } else {
                // 4,096 ids issued this millisecond: wait for the next one.
                std::hint::spin_loop();
                std::thread::yield_now();
                continue;
            };
            if self
                .state
                .compare_exchange_weak(cur, next, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                let ms = next >> SEQ_BITS;
                let seq = next & MAX_SEQ;
                return MessageId((ms << (NODE_BITS + SEQ_BITS)) | (self.node << SEQ_BITS) | seq);
            }
        }
    }

    /// The next id above `after`: the generator's logical time first moves
    /// past `after`'s millisecond (as after a clock step back, it then runs
    /// ahead of the wall clock until that catches up), so the id is above
    /// `after` whatever node issued it, and keeps this node's bits, so it
    /// stays unique.
    pub fn generate_after(&self, after: MessageId) -> MessageId {
        let past = ((after.0 >> (NODE_BITS + SEQ_BITS)) << SEQ_BITS) | MAX_SEQ;
        self.state.fetch_max(past, Ordering::AcqRel);
        self.generate()
    }

    /// The Unix time in milliseconds encoded in a Snowflake id.
    pub fn unix_ms_of(id: MessageId) -> u64 {
        (id.0 >> (NODE_BITS + SEQ_BITS)) + Self::EPOCH_MS
    }

    /// The node id encoded in a Snowflake id.
    pub fn node_of(id: MessageId) -> u16 {
        ((id.0 >> SEQ_BITS) & ((1 << NODE_BITS) - 1)) as u16
    }

    /// The smallest Snowflake id any node can issue at Unix time `unix_ms`.
    pub fn floor_id(unix_ms: u64) -> MessageId {
        MessageId(unix_ms.saturating_sub(Self::EPOCH_MS) << (NODE_BITS + SEQ_BITS))
    }
}

#[async_trait]
impl MessageIdGenerator for Snowflake {
    async fn next_id(&self, _channel: ChannelId) -> Result<MessageId> {
        Ok(self.generate())
    }

    async fn next_id_after(&self, _channel: ChannelId, after: MessageId) -> Result<MessageId> {
        Ok(self.generate_after(after))
    }

    fn floor_at(&self, unix_ms: u64) -> Option<MessageId> {
        Some(Self::floor_id(unix_ms))
    }
}

/// A dense sequence per channel: 1, 2, 3, ...
///
/// On first use of a channel the counter is seeded from the newest message in
/// the history store, so a restart continues where the channel left off.
/// Correct only when one process issues ids for a given channel at a time
/// (route each channel to one writer); ids are unique within a channel only.
#[derive(Debug)]
pub struct ChannelSequence {
    history: Arc<dyn HistoryStore>,
    counters: tokio::sync::Mutex<HashMap<ChannelId, Arc<AtomicU64>>>,
}

impl ChannelSequence {
    /// A sequence seeded from `history`.
    pub fn new(history: Arc<dyn HistoryStore>) -> Self {
        Self {
            history,
            counters: tokio::sync::Mutex::new(HashMap::new()),
        }
    }
}

impl ChannelSequence {
    /// The counter of `channel`, seeded from history on first use.
    async fn counter(&self, channel: ChannelId) -> Result<Arc<AtomicU64>> {
        // The async mutex is held across the seeding read so two first
        // callers for one channel cannot both seed from the same value.
        let mut counters = self.counters.lock().await;
        if let Some(c) = counters.get(&channel) {
            return Ok(c.clone());
        }
        let last = self
            .history
            .page(channel, crate::store::Page::latest(1))
            .await?
            .items
            .first()
            .map(|m| m.id.0)
            .unwrap_or(0);
        let c = Arc::new(AtomicU64::new(last));
        counters.insert(channel, c.clone());
        Ok(c)
    }
}

#[async_trait]
impl MessageIdGenerator for ChannelSequence {
    async fn next_id_after(&self, channel: ChannelId, after: MessageId) -> Result<MessageId> {
        let counter = self.counter(channel).await?;
        counter.fetch_max(after.0, Ordering::AcqRel);
        Ok(MessageId(counter.fetch_add(1, Ordering::AcqRel) + 1))
    }

    async fn next_id(&self, channel: ChannelId) -> Result<MessageId> {
        let counter = self.counter(channel).await?;
        Ok(MessageId(counter.fetch_add(1, Ordering::AcqRel) + 1))
    }

    fn floor_at(&self, _unix_ms: u64) -> Option<MessageId> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use std::collections::HashSet;

    const T0: u64 = Snowflake::EPOCH_MS + 1_000_000;

    #[test]
    fn node_and_time_round_trip() {
        let clock = Arc::new(ManualClock::new(T0));
        let g = Snowflake::with_clock(513, clock).unwrap();
        let id = g.generate();
        assert_eq!(Snowflake::node_of(id), 513);
        assert_eq!(Snowflake::unix_ms_of(id), T0);
        assert!(Snowflake::floor_id(T0) <= id);
        assert!(Snowflake::floor_id(T0 + 1) > id);
        assert!(Snowflake::new(1024).is_err());
    }

    #[test]
    fn limit_of_4096_per_millisecond_waits_for_the_next_millisecond() {
        let clock = Arc::new(ManualClock::new(T0));
        let g = Arc::new(Snowflake::with_clock(1, clock.clone()).unwrap());
        let ids: Vec<_> = (0..4096).map(|_| g.generate()).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]));
        assert!(ids.iter().all(|id| Snowflake::unix_ms_of(*id) == T0));
        // The 4,097th id must not be issued in the same millisecond: the
        // generator waits until the clock moves.
        let g2 = g.clone();
        let handle = std::thread::spawn(move || g2.generate());
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(
            !handle.is_finished(),
            "issued a 4,097th id within one millisecond"
        );
        clock.advance(1);
        let next = handle.join().unwrap();
        assert_eq!(Snowflake::unix_ms_of(next), T0 + 1);
        assert!(next > ids[4095]);
    }

    #[test]
    fn clock_stepping_back_keeps_ids_increasing() {
        let clock = Arc::new(ManualClock::new(T0));
        let g = Snowflake::with_clock(7, clock.clone()).unwrap();
        let before: Vec<_> = (0..10).map(|_| g.generate()).collect();
        clock.set(T0 - 5_000);
        // More than a millisecond's worth while the clock is behind: the
        // generator carries into logical milliseconds instead of blocking.
        let during: Vec<_> = (0..10_000).map(|_| g.generate()).collect();
        clock.set(T0 + 60_000);
        let after = g.generate();
        let all: Vec<_> = before.into_iter().chain(during).chain([after]).collect();
        assert!(all.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(Snowflake::unix_ms_of(after), T0 + 60_000);
    }

    #[test]
    fn contended_generation_never_runs_ahead_of_the_clock() {
        // Several threads at full speed on the real clock: more than the
        // format's 4,096 ids per millisecond are asked for, so callers must
        // wait, and no id may carry a time later than the wall clock.
        let g = Arc::new(Snowflake::new(5).unwrap());
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let g = g.clone();
                std::thread::spawn(move || (0..250_000).map(|_| g.generate()).collect::<Vec<_>>())
            })
            .collect();
        let ids: Vec<MessageId> = handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        let now = crate::clock::system_now_ms();
        let mut per_ms = std::collections::HashMap::new();
        for id in &ids {
            let t = Snowflake::unix_ms_of(*id);
            assert!(t <= now, "id time {t} is ahead of the clock {now}");
            *per_ms.entry(t).or_insert(0u32) += 1;
        }
        assert!(per_ms.values().all(|n| *n <= 4096));
    }

    #[test]
    fn concurrent_callers_get_unique_ids() {
        let g = Arc::new(Snowflake::new(3).unwrap());
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let g = g.clone();
                std::thread::spawn(move || {
                    let v: Vec<_> = (0..20_000).map(|_| g.generate()).collect();
                    assert!(v.windows(2).all(|w| w[0] < w[1]));
                    v
                })
            })
            .collect();
        let mut seen = HashSet::new();
        for h in handles {
            for id in h.join().unwrap() {
                assert!(seen.insert(id), "duplicate id {id}");
            }
        }
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            /// Whatever the clock does (forward, still, backward), one
            /// generator's ids strictly increase, and two nodes never collide.
            #[test]
            fn increasing_per_generator_and_unique_across_nodes(
                steps in proptest::collection::vec((-3_000i64..3_000, 1usize..50), 1..60),
                node_a in 0u16..=1023,
                node_b in 0u16..=1023,
            ) {
                prop_assume!(node_a != node_b);
                let clock = Arc::new(ManualClock::new(T0));
                let a = Snowflake::with_clock(node_a, clock.clone()).unwrap();
                let b = Snowflake::with_clock(node_b, clock.clone()).unwrap();
                let mut last_a = MessageId::ZERO;
                let mut last_b = MessageId::ZERO;
                let mut seen = HashSet::new();
                for (delta, count) in steps {
                    let now = clock.now_ms() as i64 + delta;
                    clock.set(now.max(Snowflake::EPOCH_MS as i64) as u64);
                    for _ in 0..count {
                        let ia = a.generate();
                        let ib = b.generate();
                        prop_assert!(ia > last_a);
                        prop_assert!(ib > last_b);
                        last_a = ia;
                        last_b = ib;
                        prop_assert!(seen.insert(ia));
                        prop_assert!(seen.insert(ib));
                    }
                }
            }
        }
    }

    #[test]
    fn snowflake_ids_after_another_nodes_id_stay_ours_and_above_it() {
        let clock = Arc::new(ManualClock::new(T0));
        let ours = Snowflake::with_clock(3, clock.clone()).unwrap();
        let ahead = Snowflake::with_clock(7, Arc::new(ManualClock::new(T0 + 5_000))).unwrap();
        let theirs = ahead.generate();
        let id = ours.generate_after(theirs);
        assert!(id > theirs, "above the other node's id");
        assert_eq!(
            Snowflake::node_of(id),
            3,
            "with our node bits: still unique"
        );
        let next = ours.generate();
        assert!(next > id, "later ids stay above it");
        // Once our clock passes it, ids follow the clock again.
        clock.advance(10_000);
        let later = ours.generate();
        assert_eq!(Snowflake::unix_ms_of(later), T0 + 10_000);
        // An id already below ours changes nothing.
        let low = ours.generate_after(MessageId(1));
        assert!(low > later);
    }

    #[tokio::test]
    async fn channel_sequence_is_dense_per_channel_and_resumes_from_history() {
        use crate::memory::MemoryStore;
        use crate::store::HistoryStore;
        use crate::types::Message;

        let history = Arc::new(MemoryStore::default());
        let seq = ChannelSequence::new(history.clone());
        let c1 = ChannelId::new_random();
        let c2 = ChannelId::new_random();
        assert_eq!(seq.next_id(c1).await.unwrap(), MessageId(1));
        assert_eq!(seq.next_id(c1).await.unwrap(), MessageId(2));
        assert_eq!(seq.next_id(c2).await.unwrap(), MessageId(1));
        assert!(seq.floor_at(T0).is_none());

        // Above a given id, then on from there.
        assert_eq!(
            seq.next_id_after(c1, MessageId(10)).await.unwrap(),
            MessageId(11)
        );
        assert_eq!(seq.next_id(c1).await.unwrap(), MessageId(12));
        assert_eq!(
            seq.next_id_after(c1, MessageId(3)).await.unwrap(),
            MessageId(13)
        );

        // A restarted generator continues after the newest stored message.
        let m = Message::test_message(c1, MessageId(41));
        history.append(m).await.unwrap();
        let restarted = ChannelSequence::new(history);
        assert_eq!(restarted.next_id(c1).await.unwrap(), MessageId(42));
    }
}
