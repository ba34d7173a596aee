//! Sharding: chat history spread over several stores by channel, with the
//! send path kept whole by a transactional outbox.
//!
//! * [`ShardedHistory`] holds N [`HistoryStore`]s and routes every call to
//!   one of them by a **stable hash** of the channel id: one channel's
//!   messages and idempotency records are always on one shard, so its
//!   order, its pages and its idempotent appends are exactly those of that
//!   shard's backend. It works over any backend (PostgreSQL databases,
//!   embedded stores, a mix) and passes the history conformance suite.
//! * [`ShardedMessageStore`] is the [`MessageStore`] of such a deployment:
//!   inboxes, cursors, idempotency and id assignment stay in one
//!   coordinating store (a [`FanoutStore`], the database that also holds the
//!   directory), history goes to the shards.
//!
//! ```no_run
//! # #[cfg(feature = "postgres")]
//! # async fn run() -> chat_core::Result<()> {
//! use std::sync::Arc;
//! use chat_core::HistoryStore;
//! use chat_store::postgres::{PostgresConfig, PostgresStore};
//! use chat_store::sharded::{ShardedHistory, ShardedMessageStore};
//!
//! let main = Arc::new(PostgresStore::connect(PostgresConfig::new("postgres://chat@db-main/chat")).await?);
//! let mut shards: Vec<Arc<dyn HistoryStore>> = Vec::new();
//! for url in ["postgres://chat@db-0/chat", "postgres://chat@db-1/chat"] {
//!     shards.push(Arc::new(PostgresStore::connect(PostgresConfig::new(url)).await?));
//! }
//! let messages = ShardedMessageStore::new(main.clone(), ShardedHistory::new(shards)?);
//! // The server gets `messages` as its message store and `main` as its directory.
//! # let _ = messages;
//! # Ok(()) }
//! ```
//!
//! # The send path across databases
//!
//! A commit cannot be atomic across two databases, so it is a
//! transactional outbox ([`FanoutStore`]):
//!
//! 1. the coordinator commits, atomically: the idempotency record (kept
//!    forever, as history's are), the id (raised above the channel's
//!    last), every member's inbox entry at its next position, and an
//!    **outbox** entry holding the message;
//! 2. the message is appended to its shard (idempotent on its key);
//! 3. the outbox entry is marked drained (its content dropped: it lives in
//!    history now).
//!
//! The send is acknowledged after step 2. A crash between 1 and 3 leaves an
//! outbox entry: [`ShardedMessageStore::drain`] (run by every server at
//! start and periodically, see [`ShardedMessageStore::spawn_drainer`])
//! finishes steps 2 and 3, and so does the sender's retry. What holds
//! instead of atomicity:
//!
//! * a message is in every member's inbox or in none (step 1 is atomic);
//! * a message in an inbox reaches its history shard: once drained, it is
//!   in both; until then it is in the outbox, and every drain retries it;
//! * inbox positions are assigned in step 1, at commit, so no entry ever
//!   lands below a cursor a device holds, whatever the timing of steps 2
//!   and 3;
//! * a message reaches history only after it is in every inbox, so history
//!   never shows a message an inbox will not have.
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

use std::time::Duration;

use async_trait::async_trait;
use chat_core::rules::check_duplicate;
use chat_core::{
    Appended, ChannelId, Committed, DeviceId, Error, Fanout, FanoutStore, HistoryStore, Inbox,
    InboxEntry, Message, MessageId, MessageStore, NewMessage, Page, Paged, Result, Seq, UserId,
};
use tokio_util::sync::CancellationToken;

/// N backends of one trait, each call routed to one of them by a stable
/// hash of its partition key. See the [module docs](self).
#[derive(Debug)]
pub struct Sharded<T: ?Sized> {
    shards: Vec<Arc<T>>,
}

/// Chat history over N stores, by channel.
pub type ShardedHistory = Sharded<dyn HistoryStore>;

impl<T: ?Sized> Sharded<T> {
    /// Shards `shards`, in this order (the order is part of the layout).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] for an empty list, or more than `u32::MAX` shards.
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
        batch = from
            .page(channel, Page::after(after, page_size))
            .await?
            .items;
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

    async fn page(&self, channel: ChannelId, page: Page) -> Result<Paged<Message>> {
        self.pick(channel.as_bytes()).page(channel, page).await
    }

    async fn reactions(
        &self,
        channel: ChannelId,
        messages: &[MessageId],
        viewer: UserId,
    ) -> Result<Vec<(MessageId, Vec<chat_core::Reactions>)>> {
        self.pick(channel.as_bytes())
            .reactions(channel, messages, viewer)
            .await
    }
}

/// The [`MessageStore`] of a deployment with sharded history: inboxes in a
/// coordinating [`FanoutStore`], history in a [`ShardedHistory`], joined by
/// a transactional outbox. See the [module docs](self).
#[derive(Debug)]
pub struct ShardedMessageStore {
    coordinator: Arc<dyn FanoutStore>,
    history: ShardedHistory,
}

/// Outbox entries one drain pass takes at most.
const DRAIN_BATCH: usize = 500;

/// How old an outbox entry must be before a drain takes it: younger ones
/// belong to sends still in flight, which finish them themselves.
pub const DRAIN_MIN_AGE: Duration = Duration::from_secs(10);

impl ShardedMessageStore {
    /// History in `history`, everything else in `coordinator` (which must
    /// also be the deployment's directory: it resolves channel members).
    pub fn new(coordinator: Arc<dyn FanoutStore>, history: ShardedHistory) -> Self {
        Self {
            coordinator,
            history,
        }
    }

    /// Finishes sends whose history write did not complete (a crash, a
    /// shard that was down): appends every outbox entry older than
    /// `min_age` to its shard and marks it drained. Returns how many it
    /// drained. Stops at the first shard error (the entry stays for the
    /// next pass).
    pub async fn drain(&self, min_age: Duration) -> Result<usize> {
        let mut drained = 0;
        loop {
            let due = self.coordinator.outbox(min_age, DRAIN_BATCH).await?;
            let full = due.len() == DRAIN_BATCH;
            for message in due {
                let (channel, id) = (message.channel_id, message.id);
                self.history.append(message).await?;
                self.coordinator.outbox_done(channel, id).await?;
                drained += 1;
            }
            if !full {
                return Ok(drained);
            }
        }
    }

    /// Runs [`drain`](Self::drain) now and then every `every` until
    /// `shutdown`, logging what it finished and any error. Every server of
    /// the deployment may run one: drains are idempotent.
    pub fn spawn_drainer(
        self: Arc<Self>,
        every: Duration,
        shutdown: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tick.tick() => {}
                }
                match self.drain(DRAIN_MIN_AGE).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(drained = n, "history outbox drained"),
                    Err(e) => {
                        tracing::warn!(error = %e, "history outbox drain failed; retrying later")
                    }
                }
            }
        })
    }
}

#[async_trait]
impl HistoryStore for ShardedMessageStore {
    async fn append(&self, message: Message) -> Result<Appended> {
        self.history.append(message).await
    }

    async fn get(&self, channel: ChannelId, id: MessageId) -> Result<Option<Message>> {
        self.history.get(channel, id).await
    }

    async fn page(&self, channel: ChannelId, page: Page) -> Result<Paged<Message>> {
        self.history.page(channel, page).await
    }

    async fn reactions(
        &self,
        channel: ChannelId,
        messages: &[MessageId],
        viewer: UserId,
    ) -> Result<Vec<(MessageId, Vec<chat_core::Reactions>)>> {
        self.history.reactions(channel, messages, viewer).await
    }
}

#[async_trait]
impl Inbox for ShardedMessageStore {
    async fn read(
        &self,
        user: UserId,
        after: Seq,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Paged<InboxEntry>> {
        self.coordinator.read(user, after, limit, max_bytes).await
    }

    async fn cursor(&self, user: UserId, device: DeviceId) -> Result<Seq> {
        self.coordinator.cursor(user, device).await
    }

    async fn advance_cursor(&self, user: UserId, device: DeviceId, cursor: Seq) -> Result<Seq> {
        self.coordinator.advance_cursor(user, device, cursor).await
    }

    async fn head(&self, user: UserId) -> Result<Seq> {
        self.coordinator.head(user).await
    }
}

/// Numbers and markers live with the inboxes, in the coordinator: its
/// fan-out commit numbers each message (and its outbox and idempotency
/// records keep the numbers after the drain).
#[async_trait]
impl chat_core::Receipts for ShardedMessageStore {
    async fn set_marker(
        &self,
        user: UserId,
        channel: ChannelId,
        kind: chat_core::MarkerKind,
        message: MessageId,
    ) -> Result<chat_core::MarkerUpdate> {
        self.coordinator
            .set_marker(user, channel, kind, message)
            .await
    }

    async fn receipts(&self, keys: &[(UserId, ChannelId)]) -> Result<Vec<chat_core::Receipt>> {
        self.coordinator.receipts(keys).await
    }

    async fn heads(&self, channels: &[ChannelId]) -> Result<Vec<Option<chat_core::Marker>>> {
        self.coordinator.heads(channels).await
    }
}

#[async_trait]
impl MessageStore for ShardedMessageStore {
    /// Not supported yet: a change writes the message's state on its
    /// history shard and change entries in the coordinator's inboxes, which
    /// needs an outbox of its own to stay whole across the two databases.
    /// Answers [`Error::Unsupported`].
    async fn change(&self, change: chat_core::NewChange) -> Result<chat_core::Changed> {
        let _ = change;
        Err(Error::Unsupported {
            operation: "change (edits, deletions, reactions) on a sharded history",
        })
    }

    async fn commit(&self, message: NewMessage) -> Result<Committed> {
        let (channel, key) = (message.channel_id, message.clone());
        // Inboxes, idempotency, id, outbox: atomic in the coordinator.
        let committed = match self.coordinator.commit_fanout(message).await? {
            Fanout::Committed(c) => c,
            Fanout::Drained { id, positions } => {
                // A retry of a message already in history: its content is
                // there, and decides duplicate or conflict.
                let original = self.history.get(channel, id).await?.ok_or_else(|| {
                    Error::backend(
                        "sharded",
                        format!("message {id} is drained from the outbox but not in history"),
                    )
                })?;
                let original = check_duplicate(&original, &key.to_message(id))?
                    .message()
                    .clone();
                return Ok(Committed {
                    message: original,
                    duplicate: true,
                    positions,
                });
            }
        };
        // History (also for a duplicate still in the outbox: its first
        // attempt may have stopped before this step).
        self.history.append(committed.message.clone()).await?;
        // Drained. A failure here only leaves work for a drain.
        if let Err(e) = self
            .coordinator
            .outbox_done(committed.message.channel_id, committed.message.id)
            .await
        {
            tracing::warn!(error = %e, "marking an outbox entry drained failed; a drain will");
        }
        Ok(committed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chat_core::memory::MemoryStore;
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

    fn sharded_over_memory() -> (ShardedMessageStore, Arc<MemoryStore>, Vec<Arc<MemoryStore>>) {
        let coordinator = Arc::new(MemoryStore::default());
        let shards: Vec<Arc<MemoryStore>> =
            (0..3).map(|_| Arc::new(MemoryStore::default())).collect();
        let history = ShardedHistory::new(
            shards
                .iter()
                .map(|s| s.clone() as Arc<dyn HistoryStore>)
                .collect(),
        )
        .unwrap();
        (
            ShardedMessageStore::new(coordinator.clone(), history),
            coordinator,
            shards,
        )
    }

    #[tokio::test]
    async fn the_conformance_suite_passes_over_memory_shards() {
        let (store, coordinator, _) = sharded_over_memory();
        // Every suite but changes_suite: a sharded history does not take
        // changes yet (MessageStore::change answers Unsupported).
        let directory = coordinator.directory();
        crate::conformance::history_suite(&store).await;
        crate::conformance::message_store_suite(&store, &*directory).await;
        crate::conformance::directory_suite(&*directory).await;
        crate::conformance::concurrency_suite(&store, &*directory).await;
        let probe = crate::conformance::durability_check_write(&store, &*directory).await;
        crate::conformance::durability_check_read(&store, &*directory, &probe).await;
    }

    /// A send whose history write never happened (the process died after
    /// the coordinator's commit): the message is in every inbox and in the
    /// outbox, not in history; a drain finishes it, and a retry of the send
    /// answers a duplicate with the original positions.
    #[tokio::test]
    async fn a_drain_finishes_sends_cut_after_the_coordinator_commit() {
        use chat_core::{Channel, ClientMsgId, Directory, User, UserRecord};
        let (store, coordinator, _) = sharded_over_memory();
        let directory = coordinator.directory();
        let mut users = Vec::new();
        for name in ["drain_a", "drain_b"] {
            let user = User {
                id: UserId::new_random(),
                username: name.into(),
                profile: Default::default(),
                created_at: 0,
            };
            users.push(
                directory
                    .create_user(UserRecord {
                        user,
                        password_hash: String::new(),
                    })
                    .await
                    .unwrap()
                    .id,
            );
        }
        let channel = directory
            .create_channel(
                Channel::direct(users[0], users[1], 0),
                &chat_core::Limits::default(),
            )
            .await
            .unwrap();
        let send = NewMessage {
            id: MessageId(1 << 40),
            channel_id: channel.id,
            sender: users[0],
            content: "cut short".into(),
            created_at: 0,
            client_msg_id: ClientMsgId::new_random(),
            timeout: Duration::from_secs(5),
            reply_to: None,
            attachments: Vec::new(),
        };
        // Step 1 only, as if the process died right after it.
        let Fanout::Committed(cut) = coordinator.commit_fanout(send.clone()).await.unwrap() else {
            panic!("a new key commits");
        };
        assert_eq!(
            store
                .read(users[1], Seq::ZERO, 10, usize::MAX)
                .await
                .unwrap()
                .items
                .len(),
            1,
            "the inbox has it"
        );
        assert!(store
            .get(channel.id, cut.message.id)
            .await
            .unwrap()
            .is_none());
        assert_eq!(
            store.drain(Duration::from_secs(3600)).await.unwrap(),
            0,
            "too young"
        );
        assert_eq!(store.drain(Duration::ZERO).await.unwrap(), 1);
        assert_eq!(
            store.get(channel.id, cut.message.id).await.unwrap(),
            Some(cut.message.clone()),
            "the drain put it in history"
        );
        assert_eq!(
            store.drain(Duration::ZERO).await.unwrap(),
            0,
            "drained once"
        );
        let retry = store.commit(send).await.unwrap();
        assert!(retry.duplicate);
        assert_eq!(
            (retry.message, retry.positions),
            (cut.message, cut.positions)
        );
    }
}
