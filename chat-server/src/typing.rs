//! Typing indicators: ephemeral, never stored, never pushed.
//!
//! A member says they are typing in a channel; the other members connected
//! now get a `typing` event through the delivery bus (so it reaches them on
//! any node), and show it until it expires without a refresh. Each user and
//! channel publishes at most once per [`MIN_INTERVAL`] on this node: a
//! client that refreshes more often is answered as usual, but nothing more
//! is published (the indicator the others show lasts longer than the
//! interval, so they see no gap).

use std::time::Duration;

use chat_core::protocol::{Event, TYPING_EXPIRES_MS};
use chat_core::{ChannelId, UserId};

use crate::limits::Buckets;
use crate::server::{ApiResult, ChatServer};

/// Shortest time between two publications for one user and channel.
pub(crate) const MIN_INTERVAL: Duration = Duration::from_secs(2);

/// One bucket per user and channel: one publication per [`MIN_INTERVAL`].
#[derive(Debug)]
pub(crate) struct TypingLimit {
    buckets: Buckets<(UserId, ChannelId)>,
}

impl TypingLimit {
    pub(crate) fn new() -> Self {
        Self {
            buckets: Buckets::new(1.0 / MIN_INTERVAL.as_secs_f64(), 1.0),
        }
    }
}

impl ChatServer {
    /// `user` is typing in `channel` (members only: `not_found` otherwise):
    /// tells the other members connected now, unless this user and channel
    /// published within the last 2 seconds. Answers how long the indicator
    /// lasts. Nothing is stored or pushed.
    pub async fn typing(&self, user: UserId, channel: ChannelId) -> ApiResult<u64> {
        let members = self.member_channel(user, channel).await?.members;
        if self.inner.typing.buckets.take((user, channel), 1.0).is_ok() {
            let others: Vec<UserId> = members.into_iter().filter(|m| *m != user).collect();
            if !others.is_empty() {
                let event = Event::Typing {
                    channel,
                    user,
                    expires_in_ms: TYPING_EXPIRES_MS,
                };
                self.notify(&others, event).await;
            }
        }
        Ok(TYPING_EXPIRES_MS)
    }
}
