//! Chat history and the per-recipient message sync queue (the inbox).

use std::fmt::Debug;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::id::{ChannelId, DeviceId, MessageId, UserId};
use crate::types::Message;

/// Largest page a store is asked for; callers clamp client input to this.
pub const MAX_PAGE: usize = 1_000;

/// Which slice of a channel's history to read.
///
/// Results are always in ascending id order.
/// * `after` set: the `limit` **oldest** messages with `after < id` (and
///   `id < before` if set) — reading forward.
/// * `after` unset: the `limit` **newest** messages with `id < before` (or
///   the newest overall) — reading backward from the end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Page {
    /// Exclusive upper bound.
    pub before: Option<MessageId>,
    /// Exclusive lower bound.
    pub after: Option<MessageId>,
    /// Most messages to return (at least 1 is asked for; 0 returns nothing).
    pub limit: usize,
}

impl Page {
    /// The newest `limit` messages.
    pub fn latest(limit: usize) -> Self {
        Self {
            before: None,
            after: None,
            limit,
        }
    }

    /// The `limit` messages just before `id`.
    pub fn before(id: MessageId, limit: usize) -> Self {
        Self {
            before: Some(id),
            after: None,
            limit,
        }
    }

    /// The `limit` messages just after `id`.
    pub fn after(id: MessageId, limit: usize) -> Self {
        Self {
            before: None,
            after: Some(id),
            limit,
        }
    }

    /// Whether `id` lies inside the page's bounds (ignoring the limit).
    pub fn contains(&self, id: MessageId) -> bool {
        self.after.is_none_or(|a| id > a) && self.before.is_none_or(|b| id < b)
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
/// # Contract
///
/// * **Layout**: partitioned by channel and ordered by message id; reads of
///   one channel never touch another's data.
/// * **Ordering**: [`page`](Self::page) returns messages in ascending id
///   order, as described on [`Page`].
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
    /// Stores a message unless its idempotency key is already stored.
    async fn append(&self, message: Message) -> Result<Appended>;

    /// One message by id, for "jump to message".
    async fn get(&self, channel: ChannelId, id: MessageId) -> Result<Option<Message>>;

    /// A page of one channel's history.
    async fn page(&self, channel: ChannelId, page: Page) -> Result<Vec<Message>>;
}

/// The message sync queue: one inbox per recipient, plus each device's cursor.
///
/// Group messages are copied into every member's inbox (fan-out on write), so
/// a device reads one inbox, whoever sent, and syncs with one cursor: its
/// `cur_max_message_id`.
///
/// # Contract
///
/// * **Ordering**: [`read`](Self::read) returns entries in ascending message
///   id order, only those with `id > after`.
/// * **Idempotency**: an inbox holds a message id at most once; pushing the
///   same message again (a retried send) changes nothing, and a different
///   message under an id already in the inbox leaves the first in place.
/// * **Atomicity**: a `push` that returns `Ok` has durably written the
///   message to every listed inbox. On `Err` some inboxes may hold it; the
///   caller retries the whole push, which idempotency makes safe.
/// * **Cursors** are monotonic: [`advance_cursor`](Self::advance_cursor)
///   keeps the larger of the stored and the given value and returns it. A
///   device never seen has cursor [`MessageId::ZERO`].
/// * **Expiry**: none; entries are kept, like history.
#[async_trait]
pub trait Inbox: Send + Sync + Debug + 'static {
    /// Writes `message` into the inbox of each of `recipients`.
    async fn push(&self, recipients: &[UserId], message: &Message) -> Result<()>;

    /// Up to `limit` messages from `user`'s inbox with id greater than `after`.
    async fn read(&self, user: UserId, after: MessageId, limit: usize) -> Result<Vec<Message>>;

    /// The stored cursor of one device.
    async fn cursor(&self, user: UserId, device: DeviceId) -> Result<MessageId>;

    /// Moves a device's cursor forward to `cursor` (never backward); returns
    /// the cursor now stored.
    async fn advance_cursor(
        &self,
        user: UserId,
        device: DeviceId,
        cursor: MessageId,
    ) -> Result<MessageId>;
}
