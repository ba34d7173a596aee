//! Read markers, delivery markers and unread counts: [`Receipts`].
//!
//! # Message numbers
//!
//! Every message committed to a channel ([`MessageStore::commit`], or
//! [`FanoutStore::commit_fanout`] in a sharded deployment) gets the next
//! **number** of its channel, `1, 2, 3, ...` with no gap, assigned in the
//! same atomic write as the message (so numbers follow id order, like the
//! commits). A channel's **head** is its last message and that message's
//! number, which is also the number of messages the channel holds.
//!
//! # Markers
//!
//! A [`Marker`] is a message id and its number. Each user has, per
//! channel, a **read marker** (the last message the user has read) and a
//! **delivered marker** (the last message one of the user's devices has
//! received). Both only move forward: setting a marker at or below the
//! stored one changes nothing. Unread messages are then counted without
//! reading history: `head.number - read.number` (all of the channel's
//! messages without a read marker).
//!
//! A sender has read their own message: the commit that stores a message
//! moves the sender's read marker to it, in the same atomic write. So a
//! user's own messages never count as unread, and a device that sends
//! shows its channel as read on every device of the user.
//!
//! [`MessageStore::commit`]: crate::MessageStore::commit
//! [`FanoutStore::commit_fanout`]: crate::FanoutStore::commit_fanout

use std::fmt::Debug;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::id::{ChannelId, MessageId, UserId};

/// Most `(user, channel)` pairs, or channels, one [`Receipts`] read takes;
/// callers split longer lists.
pub const MAX_RECEIPTS: usize = 1_000;

/// A message and its number in its channel (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Marker {
    /// The message.
    pub id: MessageId,
    /// Its number in its channel, from 1.
    pub number: u64,
}

/// One user's markers in one channel.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    /// The last message the user has read; `None` before the first.
    pub read: Option<Marker>,
    /// The last message one of the user's devices has received; `None`
    /// before the first.
    pub delivered: Option<Marker>,
}

impl Receipt {
    /// Messages of a channel whose head is `head` that are not read.
    pub fn unread(&self, head: Option<Marker>) -> u64 {
        let last = head.map_or(0, |h| h.number);
        last.saturating_sub(self.read.map_or(0, |r| r.number))
    }
}

/// Which marker to move.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MarkerKind {
    /// The read marker.
    Read,
    /// The delivered marker.
    Delivered,
}

/// What [`Receipts::set_marker`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MarkerUpdate {
    /// The marker stored now (the given one, or a later one already there).
    pub marker: Marker,
    /// Whether this call moved it.
    pub moved: bool,
}

/// Read and delivered markers, and channel heads.
///
/// Every [`MessageStore`](crate::MessageStore) and
/// [`FanoutStore`](crate::FanoutStore) is one: the commit that stores a
/// message gives it its number (see the module docs).
///
/// # Contract
///
/// * **Numbers**: the `n`-th message committed to a channel has number `n`,
///   assigned atomically with the commit; a duplicate commit assigns
///   nothing. Messages stored with [`HistoryStore::append`] (a copy, a
///   history shard) get no number.
/// * **Own messages are read**: a commit moves the sender's read marker in
///   the channel to the new message, atomically with it (after a crash the
///   message and the marker are both there or neither).
/// * **Monotonic, atomic, idempotent**:
///   [`set_marker`](Self::set_marker) moves the marker of its kind to the
///   given message if that message's number is above the stored one, and
///   otherwise changes nothing (`moved: false`, answering the stored
///   marker); concurrent calls, and commits, never move a marker back. A
///   message that is not a numbered message of the channel is `NotFound`,
///   writing nothing. The store does not check membership: the caller
///   does.
/// * **Reads** ([`receipts`](Self::receipts), [`heads`](Self::heads)) answer
///   one entry per key, in the order given, from stored state only: no
///   history is read. At most [`MAX_RECEIPTS`] keys (`InvalidInput`
///   beyond).
/// * **Durability**: a marker answered is durable, like a commit.
/// * **Expiry**: none.
///
/// [`HistoryStore::append`]: crate::HistoryStore::append
#[async_trait]
pub trait Receipts: Send + Sync + Debug + 'static {
    /// Moves `user`'s marker of `kind` in `channel` forward to `message`.
    async fn set_marker(
        &self,
        user: UserId,
        channel: ChannelId,
        kind: MarkerKind,
        message: MessageId,
    ) -> Result<MarkerUpdate>;

    /// The markers of each `(user, channel)`, in the order given.
    async fn receipts(&self, keys: &[(UserId, ChannelId)]) -> Result<Vec<Receipt>>;

    /// The head (last message and its number) of each channel, in the
    /// order given; `None` for a channel without numbered messages.
    async fn heads(&self, channels: &[ChannelId]) -> Result<Vec<Option<Marker>>>;
}

/// `InvalidInput` for a read of more than [`MAX_RECEIPTS`] keys.
pub fn check_receipt_keys(len: usize) -> Result<()> {
    if len > MAX_RECEIPTS {
        return Err(crate::Error::invalid(format!(
            "at most {MAX_RECEIPTS} keys per receipts read"
        )));
    }
    Ok(())
}

/// The marker `stored` after a [`Receipts::set_marker`] to `proposed`:
/// the later of the two, and whether `proposed` moved it. The rule every
/// backend shares.
pub fn advance(stored: Option<Marker>, proposed: Marker) -> MarkerUpdate {
    match stored {
        Some(s) if s.number >= proposed.number => MarkerUpdate {
            marker: s,
            moved: false,
        },
        _ => MarkerUpdate {
            marker: proposed,
            moved: true,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(id: u64, number: u64) -> Marker {
        Marker {
            id: MessageId(id),
            number,
        }
    }

    #[test]
    fn markers_only_move_forward() {
        assert_eq!(
            advance(None, m(5, 1)),
            MarkerUpdate {
                marker: m(5, 1),
                moved: true
            }
        );
        assert!(!advance(Some(m(9, 3)), m(9, 3)).moved, "equal: no-op");
        assert_eq!(advance(Some(m(9, 3)), m(5, 1)).marker, m(9, 3));
        assert!(advance(Some(m(9, 3)), m(12, 4)).moved);
    }

    #[test]
    fn unread_is_head_minus_read() {
        let r = Receipt {
            read: Some(m(9, 3)),
            delivered: None,
        };
        assert_eq!(r.unread(Some(m(20, 10))), 7);
        assert_eq!(r.unread(None), 0);
        assert_eq!(Receipt::default().unread(Some(m(20, 10))), 10);
    }
}
