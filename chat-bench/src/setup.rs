//! Accounts, channels and groups for a run, made over the HTTP API with the
//! SDK, with bounded concurrency and bounded retries.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use chat_client::{ChatClient, Session};
use chat_core::api::UpdatePrivacyRequest;
use chat_core::{ChannelId, UserId, WhoMayAdd};
use futures::stream::{self, StreamExt, TryStreamExt};

use crate::error::{BenchError, Result};
use crate::stats::Counters;

/// The password of every user the tool creates.
pub const PASSWORD: &str = "chat-bench-password";
/// Attempts of one setup call that fails with a retryable error.
const ATTEMPTS: u32 = 8;

/// A user of the run: id and token.
#[derive(Debug, Clone)]
pub struct BenchUser {
    /// The user's id.
    pub id: UserId,
    /// Bearer token for the WebSocket.
    pub token: Arc<str>,
    /// The SDK session, for HTTP calls.
    pub session: Session,
}

/// A prefix that makes this run's usernames unique on a long-lived server:
/// `cb` and 8 random hex digits.
pub fn run_prefix() -> String {
    format!("cb{:08x}", rand::random::<u32>())
}

/// Retries `call` on retryable errors (rate limited, unavailable, timeouts),
/// with a growing pause, at most eight times.
pub async fn retrying<T, F, Fut>(what: &str, mut call: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = chat_client::Result<T>>,
{
    let mut pause = Duration::from_millis(50);
    for attempt in 1..=ATTEMPTS {
        match call().await {
            Ok(v) => return Ok(v),
            Err(e) if e.is_retryable() && attempt < ATTEMPTS => {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(2));
            }
            Err(e) => return Err(BenchError::setup(format!("{what}: {e}"))),
        }
    }
    Err(BenchError::setup(format!("{what}: gave up")))
}

/// Signs up `count` users named `<prefix>-<i>`, at most `concurrency` at a
/// time (sign-up hashes a password: on an external server with the default
/// Argon2 cost this is the slow part of setup). Each lets anyone add them
/// to groups and open direct channels with them (`who_may_add:
/// everyone`), so the run's channels need no invitations.
pub async fn signup_users(
    client: &ChatClient,
    prefix: &str,
    count: usize,
    concurrency: usize,
    counters: &Counters,
) -> Result<Vec<BenchUser>> {
    stream::iter(0..count)
        .map(|i| {
            let name = format!("{prefix}-{i}");
            async move {
                let session = retrying("sign-up", || client.signup(&name, PASSWORD, None)).await?;
                let open = UpdatePrivacyRequest {
                    who_may_add: Some(WhoMayAdd::Everyone),
                    hide_last_seen: None,
                };
                retrying("privacy settings", || session.update_privacy(&open)).await?;
                Counters::add(&counters.signed_up, 1);
                Ok::<_, BenchError>(BenchUser {
                    id: session.user_id(),
                    token: Arc::from(session.token()),
                    session,
                })
            }
        })
        .buffered(concurrency.max(1))
        .try_collect()
        .await
}

/// Opens the direct channel of each `(a, b)` pair (called by `a`).
pub async fn open_directs(
    pairs: &[(&BenchUser, &BenchUser)],
    concurrency: usize,
) -> Result<Vec<ChannelId>> {
    stream::iter(pairs.iter().copied())
        .map(|(a, b)| async move {
            let ch = retrying("open direct channel", || a.session.open_direct(b.id)).await?;
            Ok::<_, BenchError>(ch.id)
        })
        .buffered(concurrency.max(1))
        .try_collect()
        .await
}

/// Creates one group per slice of `members`, owned by its first member.
pub async fn create_groups(
    groups: &[&[BenchUser]],
    prefix: &str,
    concurrency: usize,
) -> Result<Vec<ChannelId>> {
    stream::iter(groups.iter().enumerate())
        .map(|(g, members)| async move {
            let (owner, rest) = members
                .split_first()
                .ok_or_else(|| BenchError::plan("a group needs at least one member"))?;
            let ids: Vec<UserId> = rest.iter().map(|u| u.id).collect();
            let name = format!("{prefix} group {g}");
            let group =
                retrying("create group", || owner.session.create_group(&name, &ids)).await?;
            Ok::<_, BenchError>(group.channel.id)
        })
        .buffered(concurrency.max(1))
        .try_collect()
        .await
}
