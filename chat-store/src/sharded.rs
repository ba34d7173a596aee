//! Sharding: chat history spread over several stores by channel, inboxes
//! by user.
//!
//! [`Sharded`] holds N backends of one trait and routes every call to one of
//! them by a **stable hash** of the partition key of the data model:
//!
//! * as a [`HistoryStore`] (see [`ShardedHistory`]), by channel id: one
//!   channel's messages and idempotency records are always on one shard, so
//!   its order, its pages and its idempotent appends are exactly those of
//!   that shard's backend;
//! * as an [`Inbox`] (see [`ShardedInbox`]), by user id: one user's inbox
//!   and device cursors are always on one shard; a push to several
//!   recipients writes to each recipient's shard.
//!
//! It works over any backend of the trait (PostgreSQL databases, embedded
//! stores, a mix), and passes the same conformance suite as its shards.
//!
//! ```no_run
//! # #[cfg(feature = "postgres")]
//! # async fn run() -> chat_core::Result<()> {
//! use std::sync::Arc;
//! use chat_core::HistoryStore;
//! use chat_store::postgres::{PostgresConfig, PostgresStore};
//! use chat_store::sharded::ShardedHistory;
//!
//! let mut shards: Vec<Arc<dyn HistoryStore>> = Vec::new();
//! for url in ["postgres://chat@db-0/chat", "postgres://chat@db-1/chat"] {
//!     shards.push(Arc::new(PostgresStore::connect(PostgresConfig::new(url)).await?));
//! }
//! let history = ShardedHistory::new(shards)?;
//! # let _ = history;
//! # Ok(()) }
//! ```
//!
//! # The hash, and adding shards
//!
//! [`shard_index`] maps the 16 bytes of the id to a 64-bit key (the two
//! halves folded and mixed by the SplitMix64 finalizer) and the key to a
//! shard with Lamping and Veach's *jump consistent hash*. Both are fixed
//! arithmetic, the same on every platform and in every version: the shard
//! of a channel is part of the stored data's layout, pinned by a test.
//!
//! The shard list is ordered: shard `i` is the `i`-th store given, and every
//! server of a deployment must list the same stores in the same order.
//! Jump hashing moves the fewest keys when a shard is appended: going from N
//! to N+1 shards moves about 1/(N+1) of the channels, every one of them to
//! the new shard, and no channel moves between old shards. Adding a shard
//! is therefore: stop the writers (or put them in maintenance), copy each
//! channel whose [`shard_index`] changes with [`copy_channel`] from its old
//! shard to the new one (idempotent, so an interrupted copy is simply run
//! again), start the servers with the longer list, and delete the moved
//! channels from the old shards at leisure. Removing or reordering shards
//! moves far more data and is not supported.

use std::fmt::Debug;
use std::sync::Arc;

use async_trait::async_trait;
use chat_core::{
    Appended, ChannelId, DeviceId, Error, HistoryStore, Inbox, Message, MessageId, Page, Result,
    UserId,
};
use futures::future::try_join_all;

/// N backends of one trait, each call routed to one of them by a stable
/// hash of its partition key. See the [module docs](self).
#[derive(Debug)]
pub struct Sharded<T: ?Sized> {
    shards: Vec<Arc<T>>,
}

/// Chat history over N stores, by channel.
pub type ShardedHistory = Sharded<dyn HistoryStore>;

/// Inboxes and cursors over N stores, by user.
pub type ShardedInbox = Sharded<dyn Inbox>;

impl<T: ?Sized> Sharded<T> {
    /// Shards `shards`, in this order (the order is part of the layout).
    ///
    /// # Errors
    ///
    /// [`Error::Invalid`] for an empty list, or more than `u32::MAX` shards.
    pub fn new(shards: Vec<Arc<T>>) -> Result<Self> {
        if shards.is_empty() || shards.len() > u32::MAX as usize {
            return Err(Error::invalid("a sharded store needs 1 to 2^32-1 shards"));
        }
        Ok(Self { shards })
    }

    /// How many shards there are.
    pub fn len(&self) -> usize {
        self.shards.len()
    }

    /// Always false: there is at least one shard.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The shards, in order.
    pub fn shards(&self) -> &[Arc<T>] {
        &self.shards
    }

    /// The shard holding partition `key` (a channel's or a user's 16 id
    /// bytes).
    fn pick(&self, key: &[u8; 16]) -> &T {
        &self.shards[shard_index(key, self.shards.len())]
    }
}

/// The shard (0 to `shards - 1`) of the partition whose id has these 16
/// bytes, among `shards` shards: a channel's for history, a user's for
/// inboxes. Stable across platforms and versions. `shards == 0` gives 0.
pub fn shard_index(id: &[u8; 16], shards: usize) -> usize {
    let (hi, lo) = id.split_at(8);
    let hi = u64::from_be_bytes(hi.try_into().unwrap_or_default());
    let lo = u64::from_be_bytes(lo.try_into().unwrap_or_default());
    jump_consistent_hash(mix64(hi ^ lo.rotate_left(32)), shards)
}

/// SplitMix64's finalizer: every input bit affects every output bit, so
/// ids with structure (or few random bits) still spread evenly.
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Lamping and Veach, "A Fast, Minimal Memory, Consistent Hash Algorithm"
/// (2014): `key` to a bucket in `0..buckets`, moving only `1/(n+1)` of the
/// keys, all to the new bucket, when bucket `n` is added.
fn jump_consistent_hash(mut key: u64, buckets: usize) -> usize {
    let buckets = buckets as i64;
    let (mut b, mut j) = (-1i64, 0i64);
    while j < buckets {
        b = j;
        key = key.wrapping_mul(2_862_933_555_777_941_757).wrapping_add(1);
        j = ((b + 1) as f64 * ((1u64 << 31) as f64 / ((key >> 33) + 1) as f64)) as i64;
    }
    b.max(0) as usize
}

/// Copies every message of `channel` from `from` to `to`, oldest first, in
/// pages of `page_size`; returns how many were copied (new to `to`). The
/// copy goes through [`HistoryStore::append`], so it is idempotent and can
/// be run again after an interruption. Used when shards are added.
pub async fn copy_channel(
    from: &dyn HistoryStore,
    to: &dyn HistoryStore,
    channel: ChannelId,
    page_size: usize,
) -> Result<u64> {
    let page_size = page_size.clamp(1, chat_core::MAX_PAGE);
    let mut copied = 0;
    // Pages exclude their `after` bound, so id 0 (never a Snowflake id, but
    // a valid one) is read on its own.
    let mut batch: Vec<Message> = from
        .get(channel, MessageId::ZERO)
        .await?
        .into_iter()
        .collect();
    let mut after = MessageId::ZERO;
    loop {
        for m in batch {
            copied += u64::from(!to.append(m).await?.is_duplicate());
        }
        batch = from.page(channel, Page::after(after, page_size)).await?;
        match batch.last() {
            Some(last) => after = last.id,
            None => return Ok(copied),
        }
    }
}

#[async_trait]
impl HistoryStore for Sharded<dyn HistoryStore> {
    async fn append(&self, message: Message) -> Result<Appended> {
        self.pick(message.channel_id.as_bytes())
            .append(message)
            .await
    }

    async fn get(&self, channel: ChannelId, id: MessageId) -> Result<Option<Message>> {
        self.pick(channel.as_bytes()).get(channel, id).await
    }

    async fn page(&self, channel: ChannelId, page: Page) -> Result<Vec<Message>> {
        self.pick(channel.as_bytes()).page(channel, page).await
    }
}

#[async_trait]
impl Inbox for Sharded<dyn Inbox> {
    async fn push(&self, recipients: &[UserId], message: &Message) -> Result<()> {
        // One call per shard with its recipients, the shards in parallel.
        let mut by_shard: Vec<Vec<UserId>> = vec![Vec::new(); self.shards.len()];
        for r in recipients {
            by_shard[shard_index(r.as_bytes(), self.shards.len())].push(*r);
        }
        try_join_all(
            by_shard
                .iter()
                .zip(&self.shards)
                .filter(|(users, _)| !users.is_empty())
                .map(|(users, shard)| shard.push(users, message)),
        )
        .await?;
        Ok(())
    }

    async fn read(&self, user: UserId, after: MessageId, limit: usize) -> Result<Vec<Message>> {
        self.pick(user.as_bytes()).read(user, after, limit).await
    }

    async fn cursor(&self, user: UserId, device: DeviceId) -> Result<MessageId> {
        self.pick(user.as_bytes()).cursor(user, device).await
    }

    async fn advance_cursor(
        &self,
        user: UserId,
        device: DeviceId,
        cursor: MessageId,
    ) -> Result<MessageId> {
        self.pick(user.as_bytes())
            .advance_cursor(user, device, cursor)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chat_core::memory::{MemoryHistory, MemoryInbox};
    use uuid::Uuid;

    #[test]
    fn the_shard_of_an_id_never_changes() {
        // Pinned: these are part of every sharded deployment's data layout.
        let id = |s: &str| *Uuid::parse_str(s).unwrap().as_bytes();
        let a = id("6d1c3f0e-9a51-4b7e-8d2f-0c6a1e3b5a77");
        let b = id("0b8e2f44-1c3d-4e5f-9a6b-7c8d9e0f1a2b");
        let c = id("f47ac10b-58cc-4372-a567-0e02b2c3d479");
        let got: Vec<Vec<usize>> = [a, b, c]
            .iter()
            .map(|k| [1, 2, 3, 8, 100].map(|n| shard_index(k, n)).to_vec())
            .collect();
        assert_eq!(got, PINNED.to_vec());
    }

    // Checked against an independent implementation (Python) of the same
    // arithmetic.
    const PINNED: [[usize; 5]; 3] = [[0, 0, 0, 5, 35], [0, 0, 0, 0, 37], [0, 1, 1, 4, 78]];

    #[test]
    fn ids_spread_evenly_and_adding_a_shard_moves_only_to_it() {
        let n = 4;
        let ids: Vec<[u8; 16]> = (0..20_000).map(|_| *Uuid::new_v4().as_bytes()).collect();
        let mut counts = vec![0usize; n];
        for id in &ids {
            counts[shard_index(id, n)] += 1;
        }
        for c in &counts {
            // 5,000 expected; 4 standard deviations is about 245.
            assert!((4_700..5_300).contains(c), "uneven: {counts:?}");
        }
        let mut moved = 0;
        for id in &ids {
            let (old, new) = (shard_index(id, n), shard_index(id, n + 1));
            if old != new {
                assert_eq!(new, n, "a key only ever moves to the new shard");
                moved += 1;
            }
        }
        // About 1/5 move.
        assert!((3_600..4_400).contains(&moved), "{moved} moved");
        assert_eq!(shard_index(&ids[0], 1), 0);
        assert_eq!(shard_index(&ids[0], 0), 0);
    }

    #[test]
    fn an_empty_shard_list_is_refused() {
        assert!(ShardedHistory::new(Vec::new()).is_err());
    }

    #[tokio::test]
    async fn the_conformance_suite_passes_over_memory_shards() {
        let history = ShardedHistory::new(
            (0..3)
                .map(|_| Arc::new(MemoryHistory::default()) as Arc<dyn HistoryStore>)
                .collect(),
        )
        .unwrap();
        let inbox = ShardedInbox::new(
            (0..3)
                .map(|_| Arc::new(MemoryInbox::default()) as Arc<dyn Inbox>)
                .collect(),
        )
        .unwrap();
        let directory = chat_core::memory::MemoryDirectory::default();
        crate::conformance::run_all(&history, &inbox, &directory).await;
    }
}
