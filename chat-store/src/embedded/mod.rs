//! The embedded on-disk store: [`EmbeddedStore`], built on fjall 2.
//!
//! One directory holds one fjall keyspace; one [`EmbeddedStore`] implements
//! [`HistoryStore`], [`Inbox`] and [`Directory`] over it.
//!
//! # Data model (key layout)
//!
//! Every id in a key is fixed-width: users, devices and channels are their 16
//! UUID bytes, message ids are 8 bytes **big-endian** so byte order equals
//! numeric order. Values are JSON (`serde_json`) unless noted.
//!
//! | partition | key | value |
//! |---|---|---|
//! | `history` | `channel_id ++ message_id` | the [`Message`] |
//! | `channel_idempotency` | `channel_id ++ sender ++ client_msg_id` (ASCII) | `channel_id ++ message_id` (raw, 24 bytes) |
//! | `inbox` | `user_id ++ message_id` | the [`Message`] |
//! | `cursors` | `user_id ++ device_id` | the cursor, 8 bytes big-endian |
//! | `users` | `user_id` | the user and its password hash |
//! | `usernames` | username (UTF-8) | `user_id` (raw, 16 bytes) |
//! | `friends` | `user_id ++ friend_id` (both directions) | empty |
//! | `channels` | `channel_id` | the [`Channel`] with its sorted members |
//! | `memberships` | `user_id ++ channel_id` | empty |
//! | `devices` | `user_id ++ device_id` | the [`Device`] |
//! | `meta` | `format` | the layout version, `2` |
//!
//! So a channel's history is one contiguous key range ordered by id (a page
//! is a bounded range scan, backward for "latest" and "before", forward for
//! "after", and never reads another channel); a user's inbox, friends,
//! channels and devices are each one prefix range, already sorted by id.
//! Messages and idempotency records are never deleted or expired.
//!
//! Format 1 kept idempotency records in a partition `idempotency` keyed
//! `sender ++ client_msg_id`, before the key was scoped to the channel;
//! [`EmbeddedStore::open`] upgrades such a store in one atomic batch.
//!
//! Every key is bounded well below fjall's 64 KiB key limit: ids are fixed
//! width, client message ids are at most 64 bytes by construction, and
//! usernames are at most 32 bytes (`rules::validate_new_user`); lookups of
//! longer names never reach fjall.
//!
//! # Durability
//!
//! Every write is one atomic batch (across partitions: a message and its
//! idempotency record, a channel and its membership index, both directions
//! of a friendship), and **no method returns `Ok` before a journal `fsync`
//! ([`PersistMode::SyncAll`]) covers it**. A crash of the process or of the
//! machine after `Ok` loses nothing acknowledged.
//!
//! The syncs are shared (*group commit*, see `group.rs`): one committer
//! thread merges the batches of every writer waiting at that moment into
//! one fjall batch, commits it with `SyncAll`, and answers them all. One
//! `fsync` thus acknowledges the writes of every concurrent sender.
//!
//! `SyncAll` (`fsync`) rather than `SyncData` (`fdatasync`): the journal is
//! append-only, so every sync changes the file length and `fdatasync` has to
//! write that metadata anyway; the saving is small, while `fsync` is the
//! guarantee that holds on every platform and filesystem without reasoning
//! about which metadata each one considers "needed to read the data back".
//!
//! fjall applies a batch to its memtables only *after* persisting it, and
//! this store never commits without `SyncAll`, so **anything a read can see
//! is already durable**. That is what makes the no-write answers safe to
//! acknowledge: an append answered `Duplicate`, a push of a message already
//! in every inbox, or a cursor that does not move, all report state that is
//! on disk.
//!
//! A failed commit poisons the store (every later write fails until it is
//! reopened): after a failed `fsync` the kernel may have dropped the
//! unwritten pages, so a later successful `fsync` would prove nothing.
//!
//! # Concurrency
//!
//! fjall calls block, so every method runs its work on tokio's blocking
//! pool ([`tokio::task::spawn_blocking`]); the methods must be called from
//! inside a tokio runtime. Read-modify-write operations — the duplicate
//! check of `append`, `push`'s "already in this inbox" check,
//! `advance_cursor`'s max, `create_user`'s uniqueness, `update_profile`,
//! `create_channel`'s existence check and `add_member`/`remove_member`'s
//! limit check — hold striped `std::sync::Mutex`es for the keys they read
//! and write, inside the blocking closure only (never across an `.await`).
//! This makes them atomic against every caller using the same
//! [`EmbeddedStore`] (or its clones) in this process. One directory must be
//! opened by one process, once: open it once and share the handle.
//!
//! Reads that combine several partitions (`user_by_name`, `channels_of`)
//! read from one fjall snapshot, so they never see half of a batch.
//!
//! [`HistoryStore`]: chat_core::HistoryStore
//! [`Inbox`]: chat_core::Inbox
//! [`Directory`]: chat_core::Directory
//! [`Message`]: chat_core::Message
//! [`Channel`]: chat_core::Channel
//! [`Device`]: chat_core::Device

mod directory;
mod group;
mod history;
mod keys;
mod locks;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use chat_core::{Error, Result};
use fjall::{Config, Keyspace, PartitionCreateOptions, PartitionHandle, PersistMode};
use serde::de::DeserializeOwned;
use serde::Serialize;

use group::GroupCommit;
use locks::Stripes;

/// Name of the backend in [`Error::Backend`].
const BACKEND: &str = "fjall";

/// Durability of every commit; see the module docs.
const DURABILITY: PersistMode = PersistMode::SyncAll;

/// Version of the key layout in the module docs, kept in the `meta`
/// partition; a store of format 1 is upgraded at open, another is refused.
const FORMAT_VERSION: &[u8] = b"2";

/// Format 1, whose idempotency keys were not scoped to the channel.
const FORMAT_1: &[u8] = b"1";

/// The partition of format 1's idempotency records.
const IDEMPOTENCY_V1: &str = "idempotency";

/// The embedded, durable store: chat history, inboxes and cursors, and the
/// directory, in one local directory.
///
/// Cloning is cheap (an [`Arc`]); clones share the keyspace and the locks.
/// See the [module docs](self) for the key layout, durability and
/// concurrency.
#[derive(Clone)]
pub struct EmbeddedStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedStore")
            .field("path", &self.inner.path)
            .finish_non_exhaustive()
    }
}

/// The keyspace, one handle per partition, and the lock stripes.
struct Inner {
    path: PathBuf,
    keyspace: Keyspace,
    history: PartitionHandle,
    idempotency: PartitionHandle,
    inbox: PartitionHandle,
    cursors: PartitionHandle,
    users: PartitionHandle,
    usernames: PartitionHandle,
    friends: PartitionHandle,
    channels: PartitionHandle,
    memberships: PartitionHandle,
    devices: PartitionHandle,
    stripes: Stripes,
    group: GroupCommit,
}

impl EmbeddedStore {
    /// Opens the store in directory `path`, creating it if it does not
    /// exist and recovering it (replaying the journal) if it does.
    ///
    /// Blocks while fjall recovers; call it at start-up, or from
    /// [`tokio::task::spawn_blocking`]. Open a directory once per process
    /// and share the handle (it is cheap to clone).
    ///
    /// # Errors
    ///
    /// [`Error::Backend`] if the directory cannot be opened or holds data
    /// of another format.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let keyspace = Config::new(&path).open().map_err(db)?;
        let open = |name: &str| {
            keyspace
                .open_partition(name, PartitionCreateOptions::default())
                .map_err(db)
        };
        let meta = open("meta")?;
        let idempotency = open("channel_idempotency")?;
        match meta.get("format").map_err(db)? {
            Some(v) if &*v == FORMAT_VERSION => {}
            Some(v) if &*v == FORMAT_1 => upgrade_from_format_1(&keyspace, &meta, &idempotency)?,
            Some(v) => {
                return Err(Error::backend(
                    BACKEND,
                    format!(
                        "{} holds store format {:?}, this build reads format {:?}",
                        path.display(),
                        String::from_utf8_lossy(&v),
                        String::from_utf8_lossy(FORMAT_VERSION),
                    ),
                ))
            }
            None => {
                let mut batch = keyspace.batch().durability(Some(DURABILITY));
                batch.insert(&meta, "format", FORMAT_VERSION);
                batch.commit().map_err(db)?;
            }
        }
        let inner = Inner {
            history: open("history")?,
            idempotency,
            inbox: open("inbox")?,
            cursors: open("cursors")?,
            users: open("users")?,
            usernames: open("usernames")?,
            friends: open("friends")?,
            channels: open("channels")?,
            memberships: open("memberships")?,
            devices: open("devices")?,
            stripes: Stripes::default(),
            group: GroupCommit::start(keyspace.clone())?,
            path,
            keyspace,
        };
        Ok(Self {
            inner: Arc::new(inner),
        })
    }

    /// The directory the store lives in.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Runs `f` on the blocking pool: every fjall call blocks.
    async fn blocking<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Inner) -> Result<T> + Send + 'static,
    {
        let inner = self.inner.clone();
        match tokio::task::spawn_blocking(move || f(&inner)).await {
            Ok(result) => result,
            // A panic in the closure is a bug: surface it where it happened.
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            // The runtime is shutting down.
            Err(e) => Err(Error::temporary(BACKEND, e)),
        }
    }
}

/// Upgrades a format-1 store: rewrites every idempotency record under its
/// channel-scoped key and records format 2, in one atomic batch (a crash
/// leaves format 1, upgraded again at the next open), then drops the old
/// partition.
fn upgrade_from_format_1(
    keyspace: &Keyspace,
    meta: &PartitionHandle,
    idempotency: &PartitionHandle,
) -> Result<()> {
    let old = keyspace
        .open_partition(IDEMPOTENCY_V1, PartitionCreateOptions::default())
        .map_err(db)?;
    let mut batch = keyspace.batch().durability(Some(DURABILITY));
    let mut upgraded = 0u64;
    for entry in old.iter() {
        let (key, value) = entry.map_err(db)?;
        batch.insert(
            idempotency,
            keys::upgrade_idempotency_v1(&key, &value)?,
            value,
        );
        upgraded += 1;
    }
    batch.insert(meta, "format", FORMAT_VERSION);
    batch.commit().map_err(db)?;
    tracing::info!(upgraded, "embedded store upgraded from format 1 to 2");
    keyspace.delete_partition(old).map_err(db)?;
    Ok(())
}

impl Inner {
    /// A batch for [`commit`], which writes it durably through the group
    /// commit.
    fn batch(&self) -> Batch<'_> {
        Batch {
            inner: group::Batch::default(),
            group: &self.group,
        }
    }

    /// Snapshots of two partitions at the same instant (the last fully
    /// applied batch), for reads that must not see half of a batch.
    fn snapshots(
        &self,
        a: &PartitionHandle,
        b: &PartitionHandle,
    ) -> (fjall::Snapshot, fjall::Snapshot) {
        let instant = self.keyspace.instant();
        (a.snapshot_at(instant), b.snapshot_at(instant))
    }
}

/// Commits a batch (durably: every batch comes from [`Inner::batch`]).
fn commit(batch: Batch<'_>) -> Result<()> {
    if batch.is_empty() {
        return Ok(());
    }
    let Batch { inner, group } = batch;
    group.commit(inner)
}

/// One atomic write of the store, committed durably by [`commit`].
struct Batch<'a> {
    inner: group::Batch,
    group: &'a GroupCommit,
}

impl std::ops::Deref for Batch<'_> {
    type Target = group::Batch;
    fn deref(&self) -> &group::Batch {
        &self.inner
    }
}

impl std::ops::DerefMut for Batch<'_> {
    fn deref_mut(&mut self) -> &mut group::Batch {
        &mut self.inner
    }
}

/// Maps a fjall (or lsm-tree) error into the shared error type.
fn db(e: impl Into<fjall::Error>) -> Error {
    let e = e.into();
    let temporary = matches!(
        &e,
        fjall::Error::Io(io) if matches!(
            io.kind(),
            std::io::ErrorKind::Interrupted
                | std::io::ErrorKind::TimedOut
                | std::io::ErrorKind::WouldBlock
        )
    );
    if temporary {
        Error::temporary(BACKEND, e)
    } else {
        Error::backend(BACKEND, e)
    }
}

/// Encodes a value as JSON.
fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(value).map_err(|e| Error::backend(BACKEND, e))
}

/// Decodes a JSON value.
fn decode<T: DeserializeOwned>(bytes: &[u8], what: &'static str) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| keys::corrupt(what, e))
}
