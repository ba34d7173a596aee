//! The embedded on-disk store: [`EmbeddedStore`], built on fjall 2.
//!
//! One directory holds one fjall keyspace; one [`EmbeddedStore`] implements
//! [`MessageStore`] (so [`HistoryStore`] and [`Inbox`]) and [`Directory`]
//! over it.
//!
//! # Data model (key layout)
//!
//! Every id in a key is fixed-width: users, devices and channels are their 16
//! UUID bytes, message ids and inbox positions are 8 bytes **big-endian** so
//! byte order equals numeric order. Values are JSON (`serde_json`) unless
//! noted.
//!
//! | partition | key | value |
//! |---|---|---|
//! | `history` | `channel_id ++ message_id` | the [`Message`] |
//! | `channel_idempotency` | `channel_id ++ sender ++ client_msg_id` (ASCII) | `channel_id ++ message_id`, then `user_id ++ seq` per inbox it reached (raw, 24 bytes each) |
//! | `inbox_entries` | `user_id ++ seq` | `channel_id ++ message_id` (raw, 24 bytes): the history record at that position of the user's inbox; for a change entry (an edit, a deletion, a reaction) the JSON [`Change`](chat_core::Change) follows |
//! | `cursors` | `user_id ++ device_id` | the cursor (an inbox position), 8 bytes big-endian |
//! | `users` | `user_id` | the user, its password hash, privacy settings and token epoch |
//! | `usernames` | username (UTF-8) | `user_id` (raw, 16 bytes) |
//! | `friends` | `user_id ++ friend_id` (both directions) | empty |
//! | `friend_requests` | `from ++ to` | request time, 8 bytes big-endian |
//! | `friend_requests_in` | `to ++ from` (index of the above by recipient) | empty |
//! | `channels` | `channel_id` | the [`Channel`] with its sorted members |
//! | `memberships` | `user_id ++ channel_id` | `d` (direct), `g` (group) or `o` (owned group); empty in stores written before the tags |
//! | `invitations` | `invitee ++ channel_id` | the [`Invitation`] |
//! | `invitations_sent` | `inviter ++ invitee ++ channel_id` (index by inviter) | empty |
//! | `devices` | `user_id ++ device_id` | the [`Device`] |
//! | `blocks` | `blocker ++ blocked` | empty |
//! | `reactions` | `channel_id ++ message_id ++ user_id ++ emoji` (UTF-8) | empty |
//! | `search` | `word ++ 0x00 ++ channel_id ++ message_id`: the full-text index (see `search.rs`), written with each message | empty |
//! | `attachments` | `attachment_id` | the [`AttachmentRecord`](chat_core::AttachmentRecord): uploader, blob ids, reference, channel once bound |
//! | `revoked_sessions` | `user_id ++ session` (8 bytes big-endian) | until when, 8 bytes big-endian |
//! | `numbers` | `channel_id ++ message_id` | the message's number in its channel, 8 bytes big-endian (the last key of a channel is its head) |
//! | `receipts` | `user_id ++ channel_id` | read marker then delivered marker, each `message_id ++ number` (raw, 32 bytes; number 0: none) |
//! | `meta` | `format` | the layout version, `4` |
//!
//! So a channel's history is one contiguous key range ordered by id (a page
//! is a bounded range scan, backward for "latest" and "before", forward for
//! "after", and never reads another channel); a user's inbox is one range
//! ordered by position, and a sync is a forward range scan from the cursor;
//! a user's friends, friend requests (either way), invitations (either
//! way), channels, devices and revoked sessions are each one prefix range,
//! already sorted by id. The per-user caps count these ranges (bounded by
//! the caps themselves), and groups joined and owned count the membership
//! tags. The partitions and fields added for consent (requests,
//! invitations, privacy, tokens, tags) need no upgrade: a store without
//! them reads as having none, with default settings and epoch 0. Messages,
//! inbox entries and idempotency records are never deleted or expired.
//!
//! Older layouts are upgraded when the store is opened, each in one atomic
//! batch (a crash leaves the old format, upgraded again at the next open):
//! format 1 kept idempotency records in a partition `idempotency` keyed
//! `sender ++ client_msg_id`, before the key was scoped to the channel;
//! format 2 kept inboxes in a partition `inbox` keyed `user_id ++
//! message_id` (with a copy of the message) and cursors as message ids,
//! before inboxes were ordered by positions. Each user's entries get
//! positions 1, 2, ... in message id order, referring to the history record
//! (restored from the inbox's copy where a crash of format 2's two-step send
//! left it missing), and each cursor becomes the number of entries at or
//! below it. Format 3 had no message numbers: every channel's history is
//! numbered 1, 2, ... in id order.
//!
//! # Durability
//!
//! Every write is one atomic batch (a message with its idempotency record
//! and every member's inbox entry; a channel and its membership index; both
//! directions of a friendship), and **no method returns `Ok` before a
//! journal `fsync` ([`PersistMode::SyncAll`]) covers it**. A crash of the
//! process or of the machine after `Ok` loses nothing acknowledged, and a
//! crash at any moment leaves each message in history and every member's
//! inbox, or in none of them.
//!
//! The syncs are shared (*group commit*, see `group.rs`): one committer
//! thread merges the writes of every caller waiting at that moment into one
//! fjall batch, commits it with `SyncAll`, and answers them all. One
//! `fsync` thus acknowledges the writes of every concurrent sender. The
//! committer is the only writer of history, idempotency records and
//! inboxes, so it decides duplicates, channel ids and inbox positions with
//! no locks, and message commits wait for it without holding a thread.
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
//! acknowledge: a commit answered as a duplicate, or a cursor that does not
//! move, report state that is on disk.
//!
//! # Failures: a full disk, a stalled disk, a failed write
//!
//! * **Free-space reserve**: while the disk holding the store has less free
//!   space than [`EmbeddedOptions::free_space_reserve`] (256 MiB by
//!   default), every write is refused with a *temporary* error before
//!   anything is written, and [`MessageStore::health`] reports it. Writes
//!   resume by themselves once space is freed. A store that fills its disk
//!   can never be left half-written or poisoned by it.
//! * **A stalled disk** (a write or `fsync` that does not come back: a
//!   frozen filesystem, a dying device, a network volume gone away): once
//!   the group being written has taken longer than
//!   [`EmbeddedOptions::stall_after`], new writes are refused at once with
//!   a *temporary* error instead of queueing, and `health` reports it; it
//!   passes when the write completes. Commits queued before have their own
//!   deadline (a commit that waited past its timeout is never applied).
//! * **A failed commit** (an I/O error on the journal) poisons the store:
//!   after a failed `fsync` the kernel may have dropped the unwritten pages,
//!   so a later successful `fsync` would prove nothing. The store then
//!   **reopens itself**: it refuses writes (temporary errors), waits for the
//!   calls in flight on the old keyspace to finish, drops it, and opens the
//!   directory again, replaying the journal (which holds exactly what
//!   reached the disk); until that succeeds, retried with backoff, every
//!   call fails with a temporary error and `health` reports it.
//!
//! # Concurrency
//!
//! fjall calls block, so reads and directory writes run on tokio's blocking
//! pool ([`tokio::task::spawn_blocking`]); the methods must be called from
//! inside a tokio runtime. Message commits, history appends and cursor
//! advances go to the committer and wait on a channel, holding no thread.
//! Directory read-modify-write operations — `create_user`'s uniqueness,
//! `update_profile`,
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
//! [`MessageStore`]: chat_core::MessageStore
//! [`MessageStore::health`]: chat_core::MessageStore::health
//! [`Directory`]: chat_core::Directory
//! [`Message`]: chat_core::Message
//! [`Channel`]: chat_core::Channel
//! [`Device`]: chat_core::Device
//! [`Invitation`]: chat_core::Invitation

mod attachments;
mod directory;
mod files;
mod group;
mod history;
mod keys;
mod locks;
mod receipts;
mod search;

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use chat_core::{Error, Health, Result};
use fjall::{Config, Keyspace, PartitionCreateOptions, PartitionHandle, PersistMode};
use serde::de::DeserializeOwned;
use serde::Serialize;

use group::{Committer, Refusing, SpaceReserve, Tables};
use locks::Stripes;

/// Name of the backend in [`Error::Backend`].
const BACKEND: &str = "fjall";

/// Durability of every commit; see the module docs.
const DURABILITY: PersistMode = PersistMode::SyncAll;

/// Version of the key layout in the module docs, kept in the `meta`
/// partition; stores of formats 1, 2 and 3 are upgraded at open, another
/// is refused.
const FORMAT_VERSION: &[u8] = b"4";

/// Format 3, whose messages had no numbers (see `receipts.rs`).
const FORMAT_3: &[u8] = b"3";

/// Format 1, whose idempotency keys were not scoped to the channel.
const FORMAT_1: &[u8] = b"1";

/// Format 2, whose inboxes were ordered by message id.
const FORMAT_2: &[u8] = b"2";

/// The partition of format 1's idempotency records.
const IDEMPOTENCY_V1: &str = "idempotency";

/// The partition of format 2's inboxes.
const INBOX_V2: &str = "inbox";

/// The partition of inboxes by position (format 3).
const INBOX: &str = "inbox_entries";

/// Settings of an [`EmbeddedStore`] beyond its directory.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct EmbeddedOptions {
    /// Writes are refused (temporary errors) while the disk holding the
    /// store has less free space than this, so a full disk never leaves the
    /// store half-written; `0` turns the check off. Default: 256 MiB.
    pub free_space_reserve: u64,
    /// Segment files fjall keeps open at once (its descriptor table, an
    /// LRU cache: a smaller table reopens files more often, it never
    /// fails). At least 2. Default: 900, fjall's own. See
    /// [`EmbeddedOptions::file_budget`].
    pub max_open_files: usize,
    /// A write (one group commit, its `fsync` included) that has not
    /// completed after this long marks the store stalled: new writes are
    /// refused at once (temporary errors) and [`MessageStore::health`](chat_core::MessageStore::health)
    /// reports it, until the write completes. Default: 3 s.
    pub stall_after: Duration,
}

impl Default for EmbeddedOptions {
    fn default() -> Self {
        Self {
            free_space_reserve: 256 << 20,
            max_open_files: 900,
            stall_after: Duration::from_secs(3),
        }
    }
}

impl EmbeddedOptions {
    /// The same options with another free-space reserve, in bytes.
    pub fn with_free_space_reserve(mut self, bytes: u64) -> Self {
        self.free_space_reserve = bytes;
        self
    }

    /// The same options with another stall threshold (at least 100 ms).
    pub fn with_stall_after(mut self, after: Duration) -> Self {
        self.stall_after = after.max(Duration::from_millis(100));
        self
    }
}

/// The embedded, durable store: chat history, inboxes and cursors, and the
/// directory, in one local directory.
///
/// Cloning is cheap (an [`Arc`]); clones share the keyspace and the locks.
/// See the [module docs](self) for the key layout, durability, failures
/// and concurrency.
#[derive(Clone)]
pub struct EmbeddedStore {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedStore")
            .field("path", &self.shared.path)
            .finish_non_exhaustive()
    }
}

/// What every clone shares: the open keyspace (swapped when the store
/// reopens itself) and how to open it again.
struct Shared {
    path: PathBuf,
    options: EmbeddedOptions,
    /// The open store; `None` while it reopens.
    current: RwLock<Option<Arc<Inner>>>,
    /// Set while a reopen is under way (only one runs).
    reopening: std::sync::atomic::AtomicBool,
}

/// The keyspace, one handle per partition, the lock stripes and the
/// committer.
struct Inner {
    keyspace: Keyspace,
    history: PartitionHandle,
    inbox: PartitionHandle,
    cursors: PartitionHandle,
    users: PartitionHandle,
    usernames: PartitionHandle,
    friends: PartitionHandle,
    friend_requests: PartitionHandle,
    friend_requests_in: PartitionHandle,
    channels: PartitionHandle,
    memberships: PartitionHandle,
    invitations: PartitionHandle,
    invitations_sent: PartitionHandle,
    devices: PartitionHandle,
    revoked_sessions: PartitionHandle,
    blocks: PartitionHandle,
    /// Message numbers (see `receipts.rs`).
    numbers: PartitionHandle,
    /// Read and delivered markers.
    receipts: PartitionHandle,
    reactions: PartitionHandle,
    attachments: PartitionHandle,
    search: PartitionHandle,
    stripes: Stripes,
    group: Committer,
}

impl EmbeddedStore {
    /// Opens the store in directory `path` with default
    /// [`EmbeddedOptions`], creating it if it does not exist and recovering
    /// it (replaying the journal) if it does.
    ///
    /// Blocks while fjall recovers: from async code use
    /// [`open_async`](Self::open_async). Open a directory once per process
    /// and share the handle (it is cheap to clone).
    ///
    /// # Errors
    ///
    /// [`Error::Backend`] if the directory cannot be opened or holds data
    /// of another format.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        Self::open_with(path, EmbeddedOptions::default())
    }

    /// [`open`](Self::open) with options.
    pub fn open_with(path: impl AsRef<Path>, options: EmbeddedOptions) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let inner = Inner::open(&path, &options)?;
        Ok(Self {
            shared: Arc::new(Shared {
                path,
                options,
                current: RwLock::new(Some(Arc::new(inner))),
                reopening: std::sync::atomic::AtomicBool::new(false),
            }),
        })
    }

    /// [`open_with`](Self::open_with) on tokio's blocking pool, for async
    /// callers: recovery reads the journal and may take a while.
    pub async fn open_async(path: impl AsRef<Path>, options: EmbeddedOptions) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        tokio::task::spawn_blocking(move || Self::open_with(path, options))
            .await
            .map_err(|e| Error::backend(BACKEND, format!("opening the store panicked: {e}")))?
    }

    /// The directory the store lives in.
    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    /// The open keyspace, or a temporary error while the store reopens.
    fn inner(&self) -> Result<Arc<Inner>> {
        let current = self
            .shared
            .current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let inner = current.ok_or_else(|| {
            Error::temporary(BACKEND, "the store is reopening after a failed write")
        })?;
        if let Some(Refusing::Poisoned(_)) = inner.group.refusing() {
            self.reopen();
        }
        Ok(inner)
    }

    /// Runs `f` on the blocking pool: every fjall call blocks.
    async fn blocking<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Inner) -> Result<T> + Send + 'static,
    {
        let inner = self.inner()?;
        match tokio::task::spawn_blocking(move || f(&inner)).await {
            Ok(result) => result,
            // A panic in the closure is a bug: surface it where it happened.
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            // The runtime is shutting down.
            Err(e) => Err(Error::temporary(BACKEND, e)),
        }
    }

    /// Whether the store takes writes, and why not.
    pub(crate) fn health_now(&self) -> Health {
        let current = self
            .shared
            .current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        match current {
            None => Health::Unavailable("reopening after a failed write".into()),
            Some(inner) => match inner.group.refusing() {
                None => Health::Ok,
                Some(Refusing::Poisoned(why)) => {
                    self.reopen();
                    Health::Unavailable(format!("a write failed ({why}); reopening"))
                }
                Some(Refusing::DiskFull { available, reserve }) => Health::Unavailable(format!(
                    "{available} bytes free on disk, below the reserve of {reserve}"
                )),
                Some(Refusing::Stalled { secs }) => {
                    Health::Unavailable(format!("the disk has not completed a write for {secs} s"))
                }
            },
        }
    }

    /// Starts reopening the store in a thread of its own, unless that is
    /// under way: waits for calls in flight on the poisoned keyspace, drops
    /// it, and opens the directory again, retrying with backoff.
    fn reopen(&self) {
        use std::sync::atomic::Ordering;
        if self.shared.reopening.swap(true, Ordering::AcqRel) {
            return;
        }
        let shared = self.shared.clone();
        let spawned = std::thread::Builder::new()
            .name("chat-store-reopen".into())
            .spawn(move || {
                let old = shared
                    .current
                    .write()
                    .unwrap_or_else(|p| p.into_inner())
                    .take();
                if let Some(old) = old {
                    // Calls in flight hold the old keyspace; wait for them
                    // so that only one keyspace is ever open on the
                    // directory.
                    let mut old = old;
                    loop {
                        match Arc::try_unwrap(old) {
                            Ok(inner) => {
                                drop(inner);
                                break;
                            }
                            Err(still_shared) => {
                                old = still_shared;
                                std::thread::sleep(Duration::from_millis(10));
                            }
                        }
                    }
                }
                let mut delay = Duration::from_millis(100);
                loop {
                    match Inner::open(&shared.path, &shared.options) {
                        Ok(inner) => {
                            *shared.current.write().unwrap_or_else(|p| p.into_inner()) =
                                Some(Arc::new(inner));
                            tracing::info!(path = %shared.path.display(), "embedded store reopened");
                            break;
                        }
                        Err(e) => {
                            tracing::error!(error = %e, ?delay, "reopening the embedded store failed; retrying");
                            std::thread::sleep(delay);
                            delay = (delay * 2).min(Duration::from_secs(10));
                        }
                    }
                }
                shared.reopening.store(false, Ordering::Release);
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start reopening the embedded store");
            self.shared.reopening.store(false, Ordering::Release);
        }
    }

    /// Poisons the committer as a failed `fsync` would: for tests of the
    /// recovery path.
    #[cfg(test)]
    pub(crate) fn poison_for_test(&self) {
        if let Ok(inner) = self.inner() {
            inner.group.poison_for_test();
        }
    }
}

impl Inner {
    fn open(path: &Path, options: &EmbeddedOptions) -> Result<Self> {
        // A directory it creates is private to its owner (0700).
        files::private_dir(path)?;
        let keyspace = Config::new(path)
            .max_open_files(options.max_open_files.max(2))
            .open()
            .map_err(db)?;
        let open = |name: &str| {
            keyspace
                .open_partition(name, PartitionCreateOptions::default())
                .map_err(db)
        };
        let meta = open("meta")?;
        let idempotency = open("channel_idempotency")?;
        let inbox = open(INBOX)?;
        let cursors = open("cursors")?;
        let mut format = meta.get("format").map_err(db)?;
        if format.as_deref() == Some(FORMAT_1) {
            upgrade_from_format_1(&keyspace, &meta, &idempotency)?;
            format = Some(FORMAT_2.into());
        }
        if format.as_deref() == Some(FORMAT_2) {
            upgrade_from_format_2(&keyspace, &meta, &inbox, &cursors, &open("history")?)?;
            format = Some(FORMAT_3.into());
        }
        if format.as_deref() == Some(FORMAT_3) {
            receipts::upgrade_from_format_3(
                &keyspace,
                &meta,
                &open("history")?,
                &open(receipts::NUMBERS)?,
            )?;
            format = Some(FORMAT_VERSION.into());
        }
        match format {
            Some(v) if &*v == FORMAT_VERSION => {}
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
        let history = open("history")?;
        let channels = open("channels")?;
        let blocks = open("blocks")?;
        let numbers = open(receipts::NUMBERS)?;
        let receipts = open(receipts::RECEIPTS)?;
        let reactions = open("reactions")?;
        let search = open("search")?;
        search::build_if_missing(&keyspace, &meta, &history, &search)?;
        let tables = Tables {
            numbers: numbers.clone(),
            receipts: receipts.clone(),
            history: history.clone(),
            idempotency,
            inbox: inbox.clone(),
            channels: channels.clone(),
            cursors: cursors.clone(),
            blocks: blocks.clone(),
            reactions: reactions.clone(),
            search: search.clone(),
        };
        let reserve = (options.free_space_reserve > 0).then(|| SpaceReserve {
            path: path.to_path_buf(),
            bytes: options.free_space_reserve,
        });
        Ok(Inner {
            history,
            inbox,
            cursors,
            users: open("users")?,
            usernames: open("usernames")?,
            friends: open("friends")?,
            friend_requests: open("friend_requests")?,
            friend_requests_in: open("friend_requests_in")?,
            channels,
            memberships: open("memberships")?,
            invitations: open("invitations")?,
            invitations_sent: open("invitations_sent")?,
            devices: open("devices")?,
            revoked_sessions: open("revoked_sessions")?,
            blocks,
            numbers,
            receipts,
            reactions,
            attachments: open("attachments")?,
            search,
            stripes: Stripes::default(),
            group: Committer::start(keyspace.clone(), tables, reserve, options.stall_after)?,
            keyspace,
        })
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
    batch.insert(meta, "format", FORMAT_2);
    batch.commit().map_err(db)?;
    tracing::info!(upgraded, "embedded store upgraded from format 1 to 2");
    keyspace.delete_partition(old).map_err(db)?;
    Ok(())
}

/// Upgrades a format-2 store: every user's inbox entries, in message id
/// order, get positions 1, 2, ... in the `inbox_entries` partition, each a
/// reference to its history record (written from the inbox's copy if
/// format 2's two-step send left it missing), and each cursor (a message id)
/// becomes the number of the user's entries at or below it; then format 3
/// is recorded, all in one atomic batch (a crash leaves format 2, upgraded
/// again at the next open), and the old partition is dropped.
fn upgrade_from_format_2(
    keyspace: &Keyspace,
    meta: &PartitionHandle,
    inbox: &PartitionHandle,
    cursors: &PartitionHandle,
    history: &PartitionHandle,
) -> Result<()> {
    let old = keyspace
        .open_partition(INBOX_V2, PartitionCreateOptions::default())
        .map_err(db)?;
    let mut batch = keyspace.batch().durability(Some(DURABILITY));
    // user → (message id, position) of every entry, in order.
    let mut positions: std::collections::HashMap<[u8; 16], Vec<(chat_core::MessageId, u64)>> =
        std::collections::HashMap::new();
    let mut entries = 0u64;
    for entry in old.iter() {
        let (key, value) = entry.map_err(db)?;
        let (user, id) = keys::parse_id_key(&key, "format-2 inbox key")?;
        let message: chat_core::Message = decode(&value, "format-2 inbox entry")?;
        let location = keys::history(message.channel_id, message.id);
        if !history.contains_key(location).map_err(db)? {
            batch.insert(history, location, value);
        }
        let list = positions.entry(user).or_default();
        let seq = list.len() as u64 + 1;
        list.push((id, seq));
        batch.insert(
            inbox,
            keys::inbox(chat_core::UserId::from_bytes(user), chat_core::Seq(seq)),
            location,
        );
        entries += 1;
    }
    for entry in cursors.iter() {
        let (key, value) = entry.map_err(db)?;
        let user = keys::parse_id16(&key[..16.min(key.len())], "cursor key")?;
        let cursor = keys::parse_message_id(&value, "cursor")?;
        let seq = positions.get(&user).map_or(0, |list| {
            // The entries at or below the old cursor: a prefix of the list.
            list.partition_point(|(id, _)| *id <= cursor) as u64
        });
        batch.insert(cursors, key, seq.to_be_bytes());
    }
    batch.insert(meta, "format", FORMAT_3);
    batch.commit().map_err(db)?;
    tracing::info!(entries, "embedded store upgraded from format 2 to 3");
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
    group: &'a Committer,
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

#[cfg(test)]
mod tests {
    use super::*;
    use chat_core::{
        Channel, ClientMsgId, Directory, HistoryStore, MessageId, MessageStore, NewMessage,
        Profile, User, UserId, UserRecord,
    };

    /// A failed write poisons the store; it reports itself unavailable,
    /// refuses writes with temporary errors, reopens itself, and then takes
    /// writes again with everything acknowledged before still there.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_poisoned_store_reopens_itself() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let mut ids = Vec::new();
        for name in ["reopen_a", "reopen_b"] {
            let user = User {
                id: UserId::new_random(),
                username: name.into(),
                profile: Profile::default(),
                created_at: 0,
            };
            ids.push(
                store
                    .create_user(UserRecord {
                        user,
                        password_hash: "h".into(),
                    })
                    .await
                    .unwrap()
                    .id,
            );
        }
        let channel = store
            .create_channel(
                Channel::direct(ids[0], ids[1], 0),
                &chat_core::Limits::default(),
            )
            .await
            .unwrap();
        let send = |k: u64| NewMessage {
            id: MessageId(k),
            channel_id: channel.id,
            sender: ids[0],
            content: format!("message {k}"),
            created_at: k,
            client_msg_id: ClientMsgId::new_random(),
            timeout: std::time::Duration::from_secs(30),
            reply_to: None,
            attachments: Vec::new(),
        };
        let before = store.commit(send(1)).await.unwrap();
        assert_eq!(store.health(), Health::Ok);

        store.poison_for_test();
        let err = store.commit(send(2)).await.unwrap_err();
        assert!(err.is_temporary(), "{err}");
        assert!(!store.health().is_ok(), "a poisoned store is unhealthy");

        let mut waited = 0;
        while !store.health().is_ok() {
            assert!(waited < 1_000, "the store did not reopen within 10 s");
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            waited += 1;
        }
        let after = store.commit(send(3)).await.unwrap();
        assert!(after.message.id > before.message.id);
        assert_eq!(
            store.get(channel.id, before.message.id).await.unwrap(),
            Some(before.message),
            "acknowledged data survives the reopen"
        );
    }
}
