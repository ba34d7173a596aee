//! The conformance suite: every clause of the storage contracts in
//! `chat-core`, as public async functions any backend can run.
//!
//! Each function takes the backend as a trait object and **panics** (with a
//! message naming the clause) on the first violation, so it is meant to be
//! called from a test:
//!
//! ```
//! use chat_core::memory::MemoryStore;
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let store = MemoryStore::default();
//! chat_store::conformance::run_all(&store, &*store.directory()).await;
//! # });
//! ```
//!
//! | function | what it checks |
//! |---|---|
//! | [`history_suite`] | [`HistoryStore`](chat_core::HistoryStore): append/get, every [`Page`](chat_core::Page) mode with entry and byte limits and `has_more`, ordering by numeric id, channel isolation, idempotent retries returning the original message, conflicts that write nothing, per-sender keys |
//! | [`message_store_suite`] | [`MessageStore`]: the atomic commit to history and every member's inbox, dense per-user positions, ids raised to keep each channel increasing, members as of the commit, refusals and late commits that write nothing, duplicates with their original positions, inbox reads with entry and byte limits, monotonic per-device cursors |
//! | [`directory_suite`] | [`Directory`]: unique usernames, users, profiles and privacy settings, token epochs and revoked sessions, friend requests and their acceptance, direct and group channels, invitations, membership limits, per-user caps, paged `channels_of`, `contacts`, devices, compare-and-clear of push tokens |
//! | [`concurrency_suite`] | the clauses only concurrency can break: one winner per idempotency key (appends and commits), username, group seat; concurrent commits from several nodes keep each channel in id order in every inbox at dense positions; a member added during commits gets a suffix of history; cursors keep the maximum; crossed friend requests end as one friendship; per-user caps hold; every epoch bump counts; a push-token clear never erases a newer token or re-creates a removed device |
//! | [`changes_suite`] | [`MessageStore::change`] and [`HistoryStore::reactions`](chat_core::HistoryStore::reactions): edits, deletions (tombstones) and reactions in history and as change entries in every member's inbox, who may make which change, idempotent repeats that write nothing, the reaction cap, refusals and late changes that write nothing |
//! | [`durability_check_write`] / [`durability_check_read`] | everything acknowledged before a restart (or a crash) is there after it |
//! | [`receipts_suite`] | [`Receipts`](chat_core::Receipts): dense per-channel message numbers and heads, unread after N sends, own sends read atomically, monotonic and idempotent markers, refusals for messages outside the channel, concurrent markers keeping the largest, bounded reads |
//! | [`blob_store_suite`] | [`BlobStore`](chat_core::BlobStore): byte-exact round trips (empty, many chunks, past a multipart part), new ids, the size limit at every size, failing streams, idempotent deletes, concurrent puts |
//! | [`attachment_store_suite`] | [`AttachmentStore`](chat_core::AttachmentStore): records read back as created, unique ids, bind once (idempotent, conflicting, unknown), one winner among concurrent binds |
//! | [`search_suite`] | [`MessageSearch`](chat_core::MessageSearch): every word, whole, any case; only the channels asked; newest first by `(id, channel)`; paging by cursor visiting each match once; committed and appended messages found at once |
//! | [`run_all`] | all of the above but the restart |
//!
//! Every check uses fresh random ids, usernames and message ids, so the
//! suite can run any number of times against the same persistent store, and
//! concurrently with other runs.
//!
//! The concurrency checks poll many calls at once from one task. A backend
//! whose calls do their work on other threads (such as the embedded store,
//! through `spawn_blocking`) or over the network then really runs them in
//! parallel; run the suite on a multi-threaded runtime for the most
//! interleavings.

use std::fmt::Debug;
use std::future::Future;
use std::pin::Pin;
use std::task::Poll;

use chat_core::{
    ChannelId, ClientMsgId, Directory, FriendOutcome, Limits, Message, MessageId, MessageStore,
    Profile, Result, User, UserId, UserRecord,
};
use uuid::Uuid;

/// Asserts that `$result` is an `Err` matching `$pattern`.
macro_rules! assert_err {
    ($result:expr, $pattern:pat, $($ctx:tt)+) => {
        match $result {
            Err(e) if matches!(e, $pattern) => {}
            other => panic!(
                "{}: expected Err({}), got {:?}",
                format_args!($($ctx)+),
                stringify!($pattern),
                other
            ),
        }
    };
}

mod attachments;
mod changes;
mod concurrency;
mod directory;
mod durability;
mod history;
mod messages;
mod receipts;

pub use changes::changes_suite;
mod search;

pub use attachments::{attachment_store_suite, blob_store_suite};
pub use concurrency::concurrency_suite;
pub use directory::directory_suite;
pub use durability::{durability_check_read, durability_check_write, DurabilityProbe};
pub use history::history_suite;
pub use messages::message_store_suite;
pub use receipts::receipts_suite;
pub use search::search_suite;

/// Runs every suite: [`history_suite`], [`message_store_suite`],
/// [`directory_suite`], [`concurrency_suite`], [`receipts_suite`], [`changes_suite`], and a
/// [`durability_check_write`] / [`durability_check_read`] round trip
/// without a restart (a backend's own tests add the restart).
///
/// `directory` must be the directory `store` reads channel members from
/// (the same object, for the embedded and PostgreSQL stores).
///
/// # Panics
///
/// On the first contract violation, naming it.
pub async fn run_all(store: &dyn MessageStore, directory: &dyn Directory) {
    history_suite(store).await;
    message_store_suite(store, directory).await;
    directory_suite(directory).await;
    concurrency_suite(store, directory).await;
    receipts_suite(store, directory).await;
    changes_suite(store, directory).await;
    let probe = durability_check_write(store, directory).await;
    durability_check_read(store, directory, &probe).await;
}

/// Unwraps a backend result, panicking with the clause being checked.
#[track_caller]
fn ok<T>(result: Result<T>, what: &str) -> T {
    match result {
        Ok(v) => v,
        Err(e) => panic!("{what}: unexpected error: {e} ({e:?})"),
    }
}

/// Fresh message ids: a random base below 2^62 whose low 24 bits are zero,
/// so `at(k)` for small `k` is unique to this run and crosses byte
/// boundaries where the test wants it to.
#[derive(Debug, Clone, Copy)]
struct Ids {
    base: u64,
}

impl Ids {
    fn fresh() -> Self {
        let random = Uuid::new_v4().as_u64_pair().0;
        Self {
            base: ((random >> 2) & !0xFF_FFFF).max(1 << 32),
        }
    }

    fn at(self, k: u64) -> MessageId {
        MessageId(self.base + k)
    }
}

/// A message with a fresh client message id.
fn message(
    channel: ChannelId,
    sender: UserId,
    id: MessageId,
    content: impl Into<String>,
) -> Message {
    Message {
        id,
        channel_id: channel,
        sender,
        content: content.into(),
        created_at: 1_700_000_000_000 + id.0 % 1_000,
        client_msg_id: ClientMsgId::new_random(),
        reply_to: None,
        edited_at: None,
        deleted: false,
        reactions: Vec::new(),
        attachments: Vec::new(),
    }
}

/// A username no other run uses: `tag` (up to 8 characters) and 20 random
/// hex digits, within the 32-character limit.
fn fresh_username(tag: &str) -> String {
    let random = Uuid::new_v4().simple().to_string();
    format!("{tag}_{}", &random[..20])
}

/// A new user record with a fresh id and username.
fn user_record(tag: &str) -> UserRecord {
    UserRecord {
        user: User {
            id: UserId::new_random(),
            username: fresh_username(tag),
            profile: Profile {
                display_name: format!("{tag} (display)"),
                about: String::new(),
            },
            created_at: 1_700_000_000_000,
        },
        password_hash: format!("$argon2id$v=19$m=19456,t=2,p=1$c2FsdA${tag}"),
    }
}

/// Creates a fresh user and returns its id.
async fn new_user(directory: &dyn Directory, tag: &str) -> UserId {
    let record = user_record(tag);
    ok(directory.create_user(record).await, "create_user").id
}

/// Makes `a` and `b` friends the only way there is: a request and its
/// acceptance.
async fn befriend(directory: &dyn Directory, a: UserId, b: UserId) {
    let limits = Limits::default();
    assert_eq!(
        ok(
            directory.request_friend(a, b, 1_000, &limits).await,
            "request_friend"
        ),
        FriendOutcome::Requested
    );
    assert_eq!(
        ok(
            directory.request_friend(b, a, 2_000, &limits).await,
            "request_friend"
        ),
        FriendOutcome::Accepted
    );
}

/// Polls all `futures` concurrently from the current task and returns their
/// outputs in order (a dependency-free `join_all`).
async fn join_all<F: Future>(futures: impl IntoIterator<Item = F>) -> Vec<F::Output> {
    let mut futures: Vec<Pin<Box<F>>> = futures.into_iter().map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(move |cx| {
        let mut pending = false;
        for (future, output) in futures.iter_mut().zip(outputs.iter_mut()) {
            if output.is_none() {
                match future.as_mut().poll(cx) {
                    Poll::Ready(v) => *output = Some(v),
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(outputs.drain(..).flatten().collect())
        }
    })
    .await
}

/// The ids of `messages`, for readable assertion failures.
fn ids_of(messages: &[Message]) -> Vec<MessageId> {
    messages.iter().map(|m| m.id).collect()
}

/// Sorted copy of `v`.
fn sorted<T: Ord + Clone + Debug>(v: &[T]) -> Vec<T> {
    let mut v = v.to_vec();
    v.sort();
    v
}
