//! The per-user send byte rate: one token bucket in bytes per user, shared
//! by all of that user's connections on this node, charged by every send
//! before anything is stored. It bounds what one account can make this
//! node write (history plus one inbox copy per member), which a request
//! count cannot: a 100,000-character message costs as much as thousands
//! of short ones.

use chat_core::protocol::ErrorCode;
use chat_core::UserId;

use crate::config::ServerConfig;
use crate::limits::Buckets;
use crate::server::{err, ApiResult};

/// What a send costs beyond its content: ids, keys and framing, so that a
/// flood of one-character messages is not free.
pub(crate) const PER_MESSAGE_BYTES: u64 = 256;

/// Send byte buckets by user.
#[derive(Debug)]
pub(crate) struct SendQuota {
    buckets: Buckets<UserId>,
}

impl SendQuota {
    pub(crate) fn new(config: &ServerConfig) -> Self {
        Self {
            buckets: Buckets::new(
                config.send_bytes_per_sec as f64,
                config.send_bytes_burst as f64,
            ),
        }
    }

    /// Charges `user` for sending `content`; `rate_limited` (retryable)
    /// when the user's bucket is short.
    pub(crate) fn charge(&self, user: UserId, content: &str) -> ApiResult<()> {
        let cost = (content.len() as u64).saturating_add(PER_MESSAGE_BYTES);
        self.buckets.take(user, cost as f64).map_err(|wait| {
            err(
                ErrorCode::RateLimited,
                format!(
                    "over this user's send byte rate; retry in {} ms",
                    wait.as_millis().max(1)
                ),
            )
        })
    }
}
