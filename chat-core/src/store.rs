//! Chat history, the per-recipient message sync queue (the inbox), and the
//! one write that fills both: [`MessageStore::commit`].
//!
//! # Why inbox positions, not message ids
//!
//! A message id is assigned before the message is stored, so with many
//! senders a message with a smaller id can reach an inbox after one with a
//! larger id. A device that synced up to the larger id would then never see
//! the smaller one. Positions avoid that by construction: each user's inbox
//! numbers its entries `1, 2, 3, ...` (a [`Seq`]) **at commit**, under that
//! user's lock, so an entry becomes visible only after every entry with a
//! smaller position is visible, and a commit that comes late (a stalled
//! disk, a slow transaction) simply takes the next position, above every
//! cursor any device holds. A device's cursor is the last position it has
//! handled; a sync reads the positions above it. This is how Matrix orders
//! its event streams (a stream position assigned at persist time), and
//! Centrifugo its per-channel offsets.
//!
//! Message ids stay what history is ordered by: per channel, the store
//! commits messages in id order (it refuses a proposed id that is not above
//! the channel's last one, and the caller proposes again), so in every inbox
//! the messages of one channel appear in id order too.

use std::fmt::Debug;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::id::{ChannelId, ClientMsgId, DeviceId, MessageId, UserId};
use crate::types::Message;

/// Largest page a store is asked for, in entries; callers clamp client input
/// to this.
pub const MAX_PAGE: usize = 1_000;

/// What one entry of a page is taken to cost in a reply, on top of its
/// content: its ids, times and JSON syntax (about 200 bytes) rounded up.
pub const ENTRY_OVERHEAD: usize = 256;

/// The size a message is counted at in a byte budget ([`Page::max_bytes`],
/// [`Inbox::read`]): its content's UTF-8 bytes plus [`ENTRY_OVERHEAD`].
pub fn entry_bytes(message: &Message) -> usize {
    message.content.len().saturating_add(ENTRY_OVERHEAD)
}

/// A position in one user's inbox: the `n`-th entry ever committed to it
/// has position `n` (from 1). `Seq(0)` is "before the first entry", the
/// cursor of a device that has handled nothing.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(value_type = u64))]
#[serde(transparent)]
pub struct Seq(pub u64);

impl Seq {
    /// Before the first entry.
    pub const ZERO: Seq = Seq(0);

    /// The next position.
    pub fn next(self) -> Seq {
        Seq(self.0.saturating_add(1))
    }
}

impl std::fmt::Display for Seq {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(&self.0, f)
    }
}

/// One entry of a user's inbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InboxEntry {
    /// Its position in this user's inbox.
    pub seq: Seq,
    /// The message as this entry committed or changed it (without
    /// reactions), or a later state of it: a backend whose entries refer
    /// to history (the embedded store) shows the message as it is now, an
    /// edit or a tombstone included. Applying the entries of an inbox in
    /// order ends on the current state either way.
    pub message: Message,
    /// Set on a **change entry**: what changed about `message` (an edit, a
    /// deletion, a reaction; see [`crate::changes`]). `None` for the entry
    /// of a new message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub change: Option<crate::changes::Change>,
}

/// Some items of a longer sequence, and whether more follow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paged<T> {
    /// The items, in the order the call describes.
    pub items: Vec<T>,
    /// Whether the call stopped before the end (its entry or byte limit),
    /// so asking on from the last item returns more.
    pub has_more: bool,
}

impl<T> Paged<T> {
    /// No items and nothing more.
    pub fn empty() -> Self {
        Self {
            items: Vec::new(),
            has_more: false,
        }
    }
}

/// Collects `items` (in the order a page reads them) while they fit in
/// `limit` entries and `max_bytes`: the rule every backend shares. The first
/// item is always taken, however large, so a page always makes progress;
/// `has_more` is set when an item was left out. Reads only one item past
/// the page.
pub fn take_within<T>(
    items: impl IntoIterator<Item = Result<T>>,
    limit: usize,
    max_bytes: usize,
    size: impl Fn(&T) -> usize,
) -> Result<Paged<T>> {
    let mut page = Paged::empty();
    if limit == 0 {
        return Ok(page);
    }
    let mut used = 0usize;
    for item in items {
        let item = item?;
        let cost = size(&item);
        if page.items.len() == limit
            || (!page.items.is_empty() && used.saturating_add(cost) > max_bytes)
        {
            page.has_more = true;
            break;
        }
        used = used.saturating_add(cost);
        page.items.push(item);
    }
    Ok(page)
}

/// Which slice of a channel's history to read.
///
/// Results are always in ascending id order.
/// * `after` set: the **oldest** messages with `after < id` (and
///   `id < before` if set) — reading forward.
/// * `after` unset: the **newest** messages with `id < before` (or the
///   newest overall) — reading backward from the end.
///
/// A page holds at most `limit` messages and stops before the message that
/// would take their [`entry_bytes`] above `max_bytes` (but always holds at
/// least one message if any matches).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Page {
    /// Exclusive upper bound.
    pub before: Option<MessageId>,
    /// Exclusive lower bound.
    pub after: Option<MessageId>,
    /// Most messages to return (0 returns nothing).
    pub limit: usize,
    /// Most bytes to return, counted with [`entry_bytes`].
    pub max_bytes: usize,
}

impl Page {
    /// The newest `limit` messages.
    pub fn latest(limit: usize) -> Self {
        Self {
            before: None,
            after: None,
            limit,
            max_bytes: usize::MAX,
        }
    }

    /// The `limit` messages just before `id`.
    pub fn before(id: MessageId, limit: usize) -> Self {
        Self {
            before: Some(id),
            ..Self::latest(limit)
        }
    }

    /// The `limit` messages just after `id`.
    pub fn after(id: MessageId, limit: usize) -> Self {
        Self {
            after: Some(id),
            ..Self::latest(limit)
        }
    }

    /// The same page, limited to `max_bytes`.
    pub fn with_max_bytes(self, max_bytes: usize) -> Self {
        Self { max_bytes, ..self }
    }

    /// Whether `id` lies inside the page's bounds (ignoring the limits).
    pub fn contains(&self, id: MessageId) -> bool {
        self.after.is_none_or(|a| id > a) && self.before.is_none_or(|b| id < b)
    }

    /// Whether the page reads forward (oldest first) rather than backward.
    pub fn is_forward(&self) -> bool {
        self.after.is_some()
    }
}

/// What [`HistoryStore::append`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Appended {
    /// The message is new and is now stored.
    Stored(Message),
    /// The sender already sent this client message id with the same channel
    /// and content; nothing was written and this is the original message
    /// (with its original id and time).
    Duplicate(Message),
}

impl Appended {
    /// The stored message, new or original.
    pub fn message(&self) -> &Message {
        match self {
            Appended::Stored(m) | Appended::Duplicate(m) => m,
        }
    }

    /// Whether this append was a retry of an earlier one.
    pub fn is_duplicate(&self) -> bool {
        matches!(self, Appended::Duplicate(_))
    }
}

/// Chat history: every message of every channel, kept forever.
///
/// Messages reach history through [`MessageStore::commit`], together with
/// every member's inbox entry. [`append`](Self::append) stores a message as
/// given, for a store that is one shard of a larger history or the target
/// of a copy.
///
/// # Contract
///
/// * **Layout**: partitioned by channel and ordered by message id; reads of
///   one channel never touch another's data.
/// * **Ordering**: [`page`](Self::page) returns messages in ascending id
///   order, as described on [`Page`], within its entry and byte limits.
/// * **Atomicity and durability**: an `append` that returns `Ok` has stored
///   the message *and* its idempotency record together, durably for durable
///   backends: a crash after `Ok` loses neither. An `append` that returns
///   `Err` stored nothing visible, or stored the whole message (the caller
///   cannot tell, and must retry with the same client message id).
/// * **Idempotency**: the key is `(channel, sender, client_msg_id)`.
///   Appending a message whose key is already stored returns
///   [`Appended::Duplicate`] with the *original* message if the content
///   matches, and [`Error::Conflict`](crate::Error::Conflict) otherwise;
///   neither writes anything. The id of the repeated message is ignored.
///   The key is scoped to the channel so that a channel's idempotency
///   records live in the channel's own partition, written atomically with
///   its messages: a backend (or a deployment sharded by channel) never
///   needs a write across partitions. The same client message id in
///   another channel is another message.
///   A `Duplicate` is only answered for an original that is itself durable
///   (a retry must never be acknowledged on the strength of a write a crash
///   could still lose).
/// * **Id collisions**: appending a new key under an id already stored in
///   the channel is a `Conflict`.
/// * **Expiry**: none. Messages and idempotency records are kept forever.
#[async_trait]
pub trait HistoryStore: Send + Sync + Debug + 'static {
    /// Stores a message as given unless its idempotency key is already
    /// stored.
    async fn append(&self, message: Message) -> Result<Appended>;

    /// One message by id, for "jump to message".
    async fn get(&self, channel: ChannelId, id: MessageId) -> Result<Option<Message>>;

    /// A page of one channel's history.
    async fn page(&self, channel: ChannelId, page: Page) -> Result<Paged<Message>>;

    /// The reactions of some messages of one channel, counted per emoji for
    /// `viewer` ([`Reactions::me`](crate::changes::Reactions::me)): one
    /// `(message, reactions)` per asked message that has any, in the asked
    /// order, each list sorted by emoji. Messages of other channels, unknown
    /// ones and ones without reactions are left out. Reads only the asked
    /// messages' reactions (at most [`MAX_PAGE`] messages are asked at once).
    ///
    /// Reactions are written by [`MessageStore::change`]. The default
    /// answers [`Error::Unsupported`](crate::Error::Unsupported), for a
    /// store that keeps none.
    async fn reactions(
        &self,
        channel: ChannelId,
        messages: &[MessageId],
        viewer: UserId,
    ) -> Result<Vec<(MessageId, Vec<crate::changes::Reactions>)>> {
        let _ = (channel, messages, viewer);
        Err(crate::Error::Unsupported {
            operation: "reactions",
        })
    }
}

/// The message sync queue: one inbox per recipient, plus each device's
/// cursor.
///
/// Group messages are copied into every member's inbox (fan-out on write),
/// so a device reads one inbox, whoever sent, and syncs with one cursor: the
/// [`Seq`] of the last entry it has handled.
///
/// # Contract
///
/// * **Positions are dense and appear in order**: a user's entries have
///   positions `1, 2, 3, ...` with no gap, and an entry is visible to
///   [`read`](Self::read) only once every entry with a smaller position is.
///   So a reader that has seen position `n` has seen everything up to `n`,
///   and a gap in what it received live means it missed something.
/// * **Reads**: `read` returns entries with `seq > after` in ascending
///   order, at most `limit` of them, stopping before the entry that would
///   take their [`entry_bytes`] above `max_bytes` (the first entry is always
///   returned, however large), with `has_more` telling whether entries were
///   left out.
/// * **Head**: [`head`](Self::head) is the largest position `read` can
///   return at the time of the call.
/// * **Cursors** are monotonic: [`advance_cursor`](Self::advance_cursor)
///   keeps the larger of the stored and the given value and returns it. A
///   device never seen has cursor [`Seq::ZERO`].
/// * **Expiry**: none; entries are kept, like history.
#[async_trait]
pub trait Inbox: Send + Sync + Debug + 'static {
    /// Entries of `user`'s inbox after position `after`.
    async fn read(
        &self,
        user: UserId,
        after: Seq,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Paged<InboxEntry>>;

    /// The stored cursor of one device.
    async fn cursor(&self, user: UserId, device: DeviceId) -> Result<Seq>;

    /// Moves a device's cursor forward to `cursor` (never backward); returns
    /// the cursor now stored.
    async fn advance_cursor(&self, user: UserId, device: DeviceId, cursor: Seq) -> Result<Seq>;

    /// The position of the last entry of `user`'s inbox, [`Seq::ZERO`] if
    /// it is empty: where a new device that starts "from now" puts its
    /// cursor.
    ///
    /// Provided: since positions are dense, a search with one-entry
    /// [`read`](Self::read)s finds it in about `2 * log2(head)` reads. A
    /// backend that knows it directly should say so.
    async fn head(&self, user: UserId) -> Result<Seq> {
        // An entry after `p` exists exactly when `p < head`.
        let above = |p: u64| async move {
            Ok::<_, crate::Error>(!self.read(user, Seq(p), 1, 1).await?.items.is_empty())
        };
        if !above(0).await? {
            return Ok(Seq::ZERO);
        }
        // `lo < head <= hi`, doubling `hi` until it holds.
        let (mut lo, mut hi) = (0u64, 1u64);
        while above(hi).await? {
            lo = hi;
            hi = hi.saturating_mul(2);
            if lo == u64::MAX {
                return Ok(Seq(u64::MAX));
            }
        }
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if above(mid).await? {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        Ok(Seq(hi))
    }
}

/// A message on its way into the store: what the sender gave, plus what the
/// server decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewMessage {
    /// The proposed id, from the node's [`MessageIdGenerator`](crate::MessageIdGenerator).
    /// The store takes it if it is above the channel's last id, and refuses
    /// the commit with [`Error::StaleId`](crate::Error::StaleId) otherwise
    /// (see [`MessageStore`]).
    pub id: MessageId,
    /// The channel posted to.
    pub channel_id: ChannelId,
    /// The authenticated sender.
    pub sender: UserId,
    /// The text.
    pub content: String,
    /// Server time of acceptance, Unix milliseconds.
    pub created_at: u64,
    /// The sender's idempotency key.
    pub client_msg_id: ClientMsgId,
    /// The message of the same channel this one replies to, checked by the
    /// caller to exist in the channel (messages are never removed, so it
    /// still does at commit). Stored and returned as given.
    pub reply_to: Option<MessageId>,
    /// The files the message carries, checked and bound to the channel by
    /// the caller. Stored and returned as given.
    pub attachments: Vec<crate::Attachment>,
    /// How long the store may take before it starts the write: past it,
    /// the commit is refused with a temporary error and writes nothing.
    pub timeout: Duration,
}

impl NewMessage {
    /// The message as it would be stored under `id`.
    pub fn to_message(&self, id: MessageId) -> Message {
        Message {
            id,
            channel_id: self.channel_id,
            sender: self.sender,
            content: self.content.clone(),
            created_at: self.created_at,
            client_msg_id: self.client_msg_id.clone(),
            reply_to: self.reply_to,
            edited_at: None,
            deleted: false,
            reactions: Vec::new(),
            attachments: self.attachments.clone(),
        }
    }
}

/// What [`MessageStore::commit`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    /// The stored message: this one, or the original of a duplicate (with
    /// its original id and time).
    pub message: Message,
    /// Whether the message was already stored (a retried send). Nothing was
    /// written.
    pub duplicate: bool,
    /// Where the message sits in the inbox of each member it was fanned out
    /// to (every member at the time of the original commit, the sender
    /// included), sorted by user.
    pub positions: Vec<(UserId, Seq)>,
}

impl Committed {
    /// The message's position in `user`'s inbox, if it was fanned out to
    /// them.
    pub fn position_of(&self, user: UserId) -> Option<Seq> {
        self.positions
            .binary_search_by_key(&user, |(u, _)| *u)
            .ok()
            .map(|i| self.positions[i].1)
    }
}

/// History and inboxes, with the one write that fills both.
///
/// # Contract
///
/// [`commit`](Self::commit) stores a message in its channel's history and
/// appends it to the inbox of every member of the channel, the sender
/// included:
///
/// * **Atomic**: all of it or nothing. After a crash at any moment the
///   message is in history and in every member's inbox, or in none of them.
///   `Ok` means all of it is durable (on disk for the embedded store,
///   committed with `synchronous_commit = on` for PostgreSQL).
/// * **Members as of the commit**: the store reads the channel and its
///   members from its own directory data, and membership changes and
///   commits to one channel are serialized: a member added before the
///   commit gets the message, one added after does not. A channel that does
///   not exist is `NotFound`; a sender who is not a member is `Forbidden`;
///   a sender to a **direct** channel whose other member has blocked them
///   ([`Directory::block`](crate::Directory::block)) is
///   [`Error::Blocked`](crate::Error::Blocked). Nothing is written in any
///   of these cases. (Only direct channels pay for the block check.)
/// * **Ids increase per channel in commit order**: a proposed id that is not
///   above the channel's last id is refused with
///   [`Error::StaleId`](crate::Error::StaleId) (carrying the last id),
///   writing nothing; the caller asks its generator for an id above it
///   ([`MessageIdGenerator::next_id_after`](crate::MessageIdGenerator::next_id_after))
///   and commits again. So the messages of a channel appear in every inbox
///   in id order, whatever the clocks of the nodes that proposed them, and
///   ids keep the generator's uniqueness (a store never makes one up).
/// * **Positions**: each member's entry takes the next position of their
///   inbox, assigned at commit (see [`Inbox`]); [`Committed::positions`]
///   lists them.
/// * **Idempotency**: the key is `(channel, sender, client_msg_id)`, as for
///   [`HistoryStore::append`]. A key already committed returns the
///   *original* message with `duplicate: true` and its original positions
///   if the content matches, and `Conflict` otherwise; neither writes
///   anything (the content decides: the original's `reply_to` is
///   answered). A duplicate is only answered for an original that is durable.
/// * **Numbers and the sender's read marker**: a new message takes its
///   channel's next number and moves the sender's read marker to it, in
///   the same atomic write (see [`Receipts`](crate::Receipts)).
/// * **Replies**: [`NewMessage::reply_to`] is stored with the message, in
///   history and in every inbox entry, and read back by every read.
/// * **Attachments**: [`NewMessage::attachments`] likewise, in their order.
///   An `Err` other than these means the commit may or may not have
///   happened: retry with the same key, which returns the outcome.
/// * **No late writes**: a commit that has not started its write within
///   [`NewMessage::timeout`] is refused with a temporary error and writes
///   nothing. (A write already started when the timeout passes, such as a
///   stalled `fsync`, may still complete; its entries then take positions
///   above every cursor, and the retry the sender makes finds it.)
#[async_trait]
pub trait MessageStore: HistoryStore + Inbox + crate::receipts::Receipts {
    /// Stores `message` in history and every member's inbox, atomically.
    async fn commit(&self, message: NewMessage) -> Result<Committed>;

    /// Edits, deletes or reacts to a stored message (see
    /// [`crate::changes`] for the design).
    ///
    /// # Contract
    ///
    /// * **Checks**, in this order, each writing nothing when it fails: a
    ///   channel that does not exist is `NotFound { what: "channel" }`; an
    ///   actor who is not a member is `Forbidden`; a message not in the
    ///   channel's history is `NotFound { what: "message" }`; then the
    ///   rule every backend shares, [`changes::decide`](crate::changes::decide)
    ///   (who may edit and delete, deleted messages, the reaction cap).
    /// * **Atomic**, like [`commit`](Self::commit): the message's new state
    ///   in history (content and `edited_at`, or the tombstone with its
    ///   reactions removed, or the reaction added or removed) and a change
    ///   entry in the inbox of every member of the channel at that moment
    ///   (the actor included), all or nothing, durable on `Ok`.
    /// * **Ordering**: changes and commits to one channel are serialized
    ///   (and with membership changes), so a change entry follows the entry
    ///   of its message in every inbox, and two changes to one message
    ///   reach every inbox in the order history applied them. Each change
    ///   entry takes the next position of each inbox, like a message.
    /// * **Idempotency**: a change that would leave the message as it is
    ///   (the same content again, a deletion of a deleted message, a
    ///   reaction the actor already has, taking back one they do not have)
    ///   writes nothing and answers `unchanged: true` with the message as
    ///   it is and no positions. A message's id, channel, sender, creation
    ///   time, client message id and `reply_to` never change. A retried
    ///   *send* of a message edited or deleted since is a `Conflict` (its
    ///   content no longer matches).
    /// * **No late writes**: as for [`commit`](Self::commit), a change that
    ///   has not started its write within [`NewChange::timeout`](crate::changes::NewChange::timeout)
    ///   is refused with a temporary error and writes nothing.
    /// * **Expiry**: none; tombstones, reactions and change entries are
    ///   kept like messages.
    ///
    /// The default answers [`Error::Unsupported`](crate::Error::Unsupported).
    async fn change(&self, change: crate::changes::NewChange) -> Result<crate::changes::Changed> {
        let _ = change;
        Err(crate::Error::Unsupported {
            operation: "change",
        })
    }

    /// Whether the store can take writes now. A store that cannot (its
    /// disk is full, it is reopening after a failed write, its database is
    /// unreachable) makes the node unhealthy: the server reports it on
    /// `/healthz` and leaves discovery until the store is healthy again.
    /// The default is always healthy.
    fn health(&self) -> Health {
        Health::Ok
    }
}

/// What [`MessageStore::health`] reports.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Health {
    /// Takes writes.
    Ok,
    /// Refuses writes for now (with temporary errors), for this reason;
    /// recovers by itself.
    Unavailable(String),
}

impl Health {
    /// Whether writes are taken.
    pub fn is_ok(&self) -> bool {
        matches!(self, Health::Ok)
    }
}

/// The coordinating half of a deployment whose history is sharded: inboxes,
/// idempotency and id assignment in one store, history in others.
///
/// Atomicity across databases is not available, so the sharded send is a
/// transactional outbox (see `chat_store::sharded::ShardedMessageStore`):
///
/// 1. [`commit_fanout`](Self::commit_fanout) does everything
///    [`MessageStore::commit`] does except the history write, and records
///    the message in this store's **outbox** in the same atomic unit;
/// 2. the message is appended to its history shard (idempotently);
/// 3. [`outbox_done`](Self::outbox_done) marks the outbox entry drained.
///
/// A crash between 1 and 3 leaves an outbox entry that a **drain** (any
/// node, periodically: [`outbox`](Self::outbox), step 2, step 3) completes;
/// the sender's retry completes it too. So a message is never in an inbox
/// without reaching history, and inbox positions, assigned in step 1, never
/// fall below a cursor.
///
/// # Contract
///
/// * `commit_fanout` follows every clause of [`MessageStore::commit`] but
///   writes no history. Its idempotency records are kept forever, like
///   history's: a retry of a message still in the outbox is answered
///   [`Fanout::Committed`] with `duplicate` and the whole message; a retry
///   of a drained one [`Fanout::Drained`] with its id and positions (its
///   content now lives in history, where the caller checks it).
/// * `outbox` returns undrained entries committed at least `min_age` ago,
///   oldest first, at most `limit`.
/// * `outbox_done` marks an entry drained and drops its content; unknown
///   or already drained entries are not an error.
#[async_trait]
pub trait FanoutStore: Inbox + crate::receipts::Receipts {
    /// Commits `message` to every member's inbox and to the outbox.
    async fn commit_fanout(&self, message: NewMessage) -> Result<Fanout>;

    /// Undrained outbox entries at least `min_age` old, oldest first.
    async fn outbox(&self, min_age: Duration, limit: usize) -> Result<Vec<Message>>;

    /// Marks the outbox entry of a message whose history write is durable.
    async fn outbox_done(&self, channel: ChannelId, id: MessageId) -> Result<()>;
}

/// What [`FanoutStore::commit_fanout`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fanout {
    /// Committed now, or a duplicate still in the outbox.
    Committed(Committed),
    /// A duplicate whose outbox entry was drained: its message is in
    /// history under `id`.
    Drained {
        /// The original message's id.
        id: MessageId,
        /// Its original positions.
        positions: Vec<(UserId, Seq)>,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sized(n: usize) -> Result<usize> {
        Ok(n)
    }

    #[test]
    fn take_within_keeps_limits_and_always_takes_one() {
        let items = |v: &[usize]| v.iter().map(|n| sized(*n)).collect::<Vec<_>>();
        let p = take_within(items(&[10, 10, 10]), 2, 100, |n| *n).unwrap();
        assert_eq!((p.items, p.has_more), (vec![10, 10], true));
        let p = take_within(items(&[10, 10, 10]), 5, 25, |n| *n).unwrap();
        assert_eq!((p.items, p.has_more), (vec![10, 10], true));
        let p = take_within(items(&[500, 1]), 5, 25, |n| *n).unwrap();
        assert_eq!((p.items, p.has_more), (vec![500], true), "the first always");
        let p = take_within(items(&[10, 10]), 5, 20, |n| *n).unwrap();
        assert_eq!((p.items, p.has_more), (vec![10, 10], false), "exact fit");
        let p = take_within(items(&[10]), 0, 20, |n| *n).unwrap();
        assert_eq!((p.items, p.has_more), (vec![], false));
    }

    #[test]
    fn seq_travels_as_a_number() {
        let e = serde_json::to_string(&Seq(42)).unwrap();
        assert_eq!(e, "42");
    }
}
