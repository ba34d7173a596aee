//! The committer: every write of the store, one thread, one `fsync` per
//! group of writes.
//!
//! Every write of the store goes to one committer thread as a [`Request`]:
//! a plain [`Batch`] of inserts and removes (the directory), a device
//! cursor to [advance](Committer::advance_cursor), a
//! message [commit](Committer::commit_message) (history, idempotency record
//! and every member's inbox entry), or a raw history
//! [append](Committer::append). The committer takes whatever is queued,
//! turns it into **one** fjall batch, commits it with
//! [`PersistMode::SyncAll`] (the journal `fsync`ed before the batch is
//! applied), and then answers every request of the group. One `fsync` thus
//! acknowledges the writes of every concurrent caller.
//!
//! Because the committer is the only writer of history, idempotency
//! records and inboxes, it needs no locks for their read-modify-write
//! steps: it decides duplicates, checks ids against each channel's last
//! one, and hands out each inbox's next position from its own state — a cache
//! of channels (with their members), each channel's last id and each
//! inbox's last position, loaded from disk on first use and updated by
//! every request in queue order, so a membership change and a message
//! commit are applied in the order they were queued. Message commits
//! never block a thread of the caller: they wait on a channel.
//!
//! The guarantees are those of one synced commit per write:
//!
//! * a write is answered `Ok` only after the `fsync` that covers it;
//! * fjall applies a batch to its memtables only after persisting it, so
//!   anything a read can see is already durable, which makes the no-write
//!   answers (a duplicate, a cursor that does not move) safe;
//! * the writes of a group become visible together, each one whole, and a
//!   message with all of its inbox entries.
//!
//! A commit request that waited in the queue longer than its timeout is
//! refused (temporary error, nothing written) when the committer reaches
//! it: a send the server has already given up on is never applied late.
//!
//! Writes are refused (temporary error, nothing written) while the disk
//! holding the store has less free space than the configured reserve; they
//! resume by themselves once space is freed.
//!
//! A group that has been writing for longer than the stall threshold (a
//! frozen or failing disk: the `fsync`, or the write itself, does not come
//! back) makes the committer report itself stalled: new writes are refused
//! at once (temporary error) instead of queueing behind it, and the store's
//! health says so, until the group completes. The stalled group itself is
//! left to finish; nothing else waits on a thread for it.
//!
//! A failed commit fails every write of its group and poisons the
//! committer: after a failed `fsync` the kernel may have dropped the
//! unwritten pages, so a later success would prove nothing. The store then
//! reopens itself (see `mod.rs`), replaying the journal, which holds
//! exactly what reached the disk.

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use chat_core::changes::{decide, Decision};
use chat_core::rules::check_duplicate;
use chat_core::{
    Appended, Channel, ChannelId, ChannelKind, Committed, Error, Marker, MarkerKind, MarkerUpdate,
    Message, MessageId, NewMessage, Receipt, Result, Seq, UserId,
};
use chat_core::{Change, Changed, NewChange};
use fjall::{Keyspace, PartitionHandle, PersistMode, UserKey, UserValue};
use tokio::sync::oneshot;

use super::{db, decode, encode, keys, BACKEND};

/// Most requests merged into one commit; more wait for the next.
const MAX_GROUP: usize = 1_024;

/// Entries the committer's caches hold before they are dropped (and
/// reloaded from disk as needed): a bound on its memory, not a tuning knob.
const CACHE_LIMIT: usize = 1 << 20;

/// How often the free space of the disk is measured.
const SPACE_CHECK_EVERY: Duration = Duration::from_millis(500);

/// One atomic write: inserts and removes across partitions.
#[derive(Default)]
pub(super) struct Batch {
    ops: Vec<(PartitionHandle, UserKey, Option<UserValue>)>,
}

impl Batch {
    /// Inserts (or overwrites) `key` in partition `p`.
    pub(super) fn insert<K: Into<UserKey>, V: Into<UserValue>>(
        &mut self,
        p: &PartitionHandle,
        key: K,
        value: V,
    ) {
        self.ops.push((p.clone(), key.into(), Some(value.into())));
    }

    /// Removes `key` from partition `p`.
    pub(super) fn remove<K: Into<UserKey>>(&mut self, p: &PartitionHandle, key: K) {
        self.ops.push((p.clone(), key.into(), None));
    }

    /// Whether there is nothing to write.
    pub(super) fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
}

/// The partitions the committer reads and writes itself.
#[derive(Clone)]
pub(super) struct Tables {
    pub(super) history: PartitionHandle,
    pub(super) idempotency: PartitionHandle,
    pub(super) inbox: PartitionHandle,
    pub(super) channels: PartitionHandle,
    pub(super) cursors: PartitionHandle,
    /// Read for commits to direct channels (`blocker ++ blocked`).
    pub(super) blocks: PartitionHandle,
    /// Message numbers, written with each commit.
    pub(super) numbers: PartitionHandle,
    /// Read and delivered markers.
    pub(super) receipts: PartitionHandle,
    /// Reactions (`channel ++ message ++ user ++ emoji`), written by changes.
    pub(super) reactions: PartitionHandle,
    /// The full-text index, written with each message (`search.rs`).
    pub(super) search: PartitionHandle,
}

/// What the committer is asked to do.
enum Request {
    Write {
        batch: Batch,
        done: mpsc::SyncSender<std::result::Result<(), String>>,
    },
    Commit {
        message: NewMessage,
        queued: Instant,
        done: oneshot::Sender<Result<Committed>>,
    },
    Append {
        message: Message,
        done: oneshot::Sender<Result<Appended>>,
    },
    Cursor {
        key: [u8; 32],
        cursor: Seq,
        done: oneshot::Sender<Result<Seq>>,
    },
    Marker {
        user: UserId,
        channel: ChannelId,
        kind: MarkerKind,
        message: MessageId,
        done: oneshot::Sender<Result<MarkerUpdate>>,
    },
    Change {
        change: NewChange,
        queued: Instant,
        done: oneshot::Sender<Result<Changed>>,
    },
}

impl Request {
    /// Answers the request with an error, writing nothing.
    fn refuse(self, error: impl Fn() -> Error) {
        match self {
            Request::Write { done, .. } => {
                let _ = done.send(Err(error().to_string()));
            }
            Request::Commit { done, .. } => {
                let _ = done.send(Err(error()));
            }
            Request::Append { done, .. } => {
                let _ = done.send(Err(error()));
            }
            Request::Cursor { done, .. } => {
                let _ = done.send(Err(error()));
            }
            Request::Marker { done, .. } => {
                let _ = done.send(Err(error()));
            }
            Request::Change { done, .. } => {
                let _ = done.send(Err(error()));
            }
        }
    }
}

/// Why the committer refuses writes, if it does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Refusing {
    /// A commit failed: the committer is poisoned for good.
    Poisoned(String),
    /// Less free space than the reserve; passes when space is freed.
    DiskFull { available: u64, reserve: u64 },
    /// The group being written has not completed for `secs` seconds;
    /// passes when it completes.
    Stalled { secs: u64 },
}

/// Where the free-space reserve is measured, and how much it is.
#[derive(Debug, Clone)]
pub(super) struct SpaceReserve {
    pub(super) path: PathBuf,
    pub(super) bytes: u64,
}

/// The committer thread and its queue.
pub(super) struct Committer {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Committer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Committer").finish_non_exhaustive()
    }
}

struct Shared {
    state: Mutex<State>,
    /// How long a group may take before the committer counts as stalled.
    stall_after: Duration,
    /// Wakes the committer: a write is queued, or the store is closing.
    wake: Condvar,
}

#[derive(Default)]
struct State {
    queue: Vec<Request>,
    refusing: Option<Refusing>,
    /// When the group being written was taken from the queue.
    busy_since: Option<Instant>,
    closing: bool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl State {
    /// Why writes are refused now: a recorded refusal, or a group that has
    /// been writing for longer than `stall_after`.
    fn refusal(&self, stall_after: Duration) -> Option<Refusing> {
        if let Some(r) = &self.refusing {
            return Some(r.clone());
        }
        let busy = self.busy_since?.elapsed();
        (busy >= stall_after).then_some(Refusing::Stalled {
            secs: busy.as_secs(),
        })
    }
}

impl Refusing {
    fn error(&self) -> Error {
        match self {
            // Temporary: the store reopens itself, and the same write will
            // then succeed.
            Refusing::Poisoned(why) => Error::temporary(
                BACKEND,
                format!("a journal write failed ({why}); the store is reopening"),
            ),
            Refusing::DiskFull { available, reserve } => Error::temporary(
                BACKEND,
                format!(
                    "the disk has {available} bytes free, below the reserve of {reserve}: \
                     writes resume when space is freed"
                ),
            ),
            Refusing::Stalled { secs } => Error::temporary(
                BACKEND,
                format!("the disk has not completed a write for {secs} s"),
            ),
        }
    }
}

impl Committer {
    /// Starts the committer thread.
    pub(super) fn start(
        keyspace: Keyspace,
        tables: Tables,
        reserve: Option<SpaceReserve>,
        stall_after: Duration,
    ) -> Result<Self> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            stall_after,
            wake: Condvar::new(),
        });
        let thread = std::thread::Builder::new()
            .name("chat-store-commit".into())
            .spawn({
                let shared = shared.clone();
                move || {
                    let mut worker = Worker {
                        keyspace,
                        tables,
                        cache: Cache::default(),
                        reserve,
                        last_space_check: None,
                    };
                    worker.run(&shared)
                }
            })
            .map_err(|e| Error::backend(BACKEND, format!("cannot start the committer: {e}")))?;
        Ok(Self {
            shared,
            thread: Some(thread),
        })
    }

    /// Why writes are refused now, if they are.
    pub(super) fn refusing(&self) -> Option<Refusing> {
        self.shared.lock().refusal(self.shared.stall_after)
    }

    /// Poisons the committer as a failed commit would (tests of recovery).
    #[cfg(test)]
    pub(super) fn poison_for_test(&self) {
        self.shared.lock().refusing = Some(Refusing::Poisoned("poisoned by a test".into()));
    }

    /// Queues a request, or answers it at once when writes are refused.
    fn submit(&self, request: Request) {
        {
            let mut st = self.shared.lock();
            if st.closing {
                drop(st);
                request.refuse(|| Error::temporary(BACKEND, "the store is closing"));
                return;
            }
            if let Some(r @ (Refusing::Poisoned(_) | Refusing::Stalled { .. })) =
                st.refusal(self.shared.stall_after)
            {
                drop(st);
                request.refuse(|| r.error());
                return;
            }
            st.queue.push(request);
        }
        self.shared.wake.notify_one();
    }

    /// Writes `batch` durably with whatever else is waiting; blocks until
    /// the group's commit (and its `fsync`) is done.
    pub(super) fn commit(&self, batch: Batch) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let (done, result) = mpsc::sync_channel(1);
        self.submit(Request::Write { batch, done });
        match result.recv() {
            Ok(Ok(())) => Ok(()),
            Ok(Err(why)) => Err(Error::temporary(BACKEND, why)),
            Err(_) => Err(Error::temporary(BACKEND, "the store is closing")),
        }
    }

    /// Commits a message to history and every member's inbox.
    pub(super) async fn commit_message(&self, message: NewMessage) -> Result<Committed> {
        let (done, result) = oneshot::channel();
        self.submit(Request::Commit {
            message,
            queued: Instant::now(),
            done,
        });
        result
            .await
            .unwrap_or_else(|_| Err(Error::temporary(BACKEND, "the store is closing")))
    }

    /// Moves a device cursor (`key`: user ++ device) forward to `cursor`;
    /// answers the cursor now stored. Cursors are acked often (every device,
    /// about once a second): the committer keeps the maximum without a lock
    /// and without parking a thread per ack.
    pub(super) async fn advance_cursor(&self, key: [u8; 32], cursor: Seq) -> Result<Seq> {
        let (done, result) = oneshot::channel();
        self.submit(Request::Cursor { key, cursor, done });
        result
            .await
            .unwrap_or_else(|_| Err(Error::temporary(BACKEND, "the store is closing")))
    }

    /// Moves a read or delivered marker forward (see `receipts.rs`).
    pub(super) async fn set_marker(
        &self,
        user: UserId,
        channel: ChannelId,
        kind: MarkerKind,
        message: MessageId,
    ) -> Result<MarkerUpdate> {
        let (done, result) = oneshot::channel();
        self.submit(Request::Marker {
            user,
            channel,
            kind,
            message,
            done,
        });
        result
            .await
            .unwrap_or_else(|_| Err(Error::temporary(BACKEND, "the store is closing")))
    }

    /// Edits, deletes or reacts to a message (see
    /// `MessageStore::change`).
    pub(super) async fn change(&self, change: NewChange) -> Result<Changed> {
        let (done, result) = oneshot::channel();
        self.submit(Request::Change {
            change,
            queued: Instant::now(),
            done,
        });
        result
            .await
            .unwrap_or_else(|_| Err(Error::temporary(BACKEND, "the store is closing")))
    }

    /// Appends a message to history as given.
    pub(super) async fn append(&self, message: Message) -> Result<Appended> {
        let (done, result) = oneshot::channel();
        self.submit(Request::Append { message, done });
        result
            .await
            .unwrap_or_else(|_| Err(Error::temporary(BACKEND, "the store is closing")))
    }
}

impl Drop for Committer {
    fn drop(&mut self) {
        self.shared.lock().closing = true;
        self.shared.wake.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// What the committer remembers between groups. Everything in it is
/// durable (it is updated only after a successful commit, or reloaded).
#[derive(Default)]
struct Cache {
    /// A channel (with its members), or `None` if it does not exist.
    channels: HashMap<ChannelId, Option<Arc<Channel>>>,
    /// The largest message id stored in each channel.
    last_ids: HashMap<ChannelId, MessageId>,
    /// The last position of each inbox.
    heads: HashMap<UserId, u64>,
    /// The last numbered message of each channel.
    channel_heads: HashMap<ChannelId, Option<Marker>>,
}

impl Cache {
    fn bound(&mut self) {
        if self.channels.len() > CACHE_LIMIT {
            self.channels.clear();
        }
        if self.last_ids.len() > CACHE_LIMIT {
            self.last_ids.clear();
        }
        if self.heads.len() > CACHE_LIMIT {
            self.heads.clear();
        }
        if self.channel_heads.len() > CACHE_LIMIT {
            self.channel_heads.clear();
        }
    }
}

/// What an idempotency key answers: the message and its inbox positions.
type Sent = (Message, keys::Positions);

/// The changes one group makes to the cache, applied once it is durable.
#[derive(Default)]
struct Changes {
    channels: HashMap<ChannelId, Option<Arc<Channel>>>,
    last_ids: HashMap<ChannelId, MessageId>,
    heads: HashMap<UserId, u64>,
    /// Idempotency keys written in this group, with what they answer.
    keys: HashMap<Vec<u8>, Sent>,
    /// Cursors written in this group.
    cursors: HashMap<[u8; 32], Seq>,
    /// Channel heads moved in this group.
    channel_heads: HashMap<ChannelId, Option<Marker>>,
    /// Numbers given in this group.
    numbers: HashMap<(ChannelId, MessageId), u64>,
    /// Receipts written in this group (`user ++ channel`).
    receipts: HashMap<[u8; 32], Receipt>,
    /// Messages changed in this group, by history key, as staged.
    messages: HashMap<[u8; 24], Message>,
    /// Reaction keys written in this group: present (added) or not.
    reactions: HashMap<Vec<u8>, bool>,
}

/// An answer to send once the group's commit is known.
enum Answer {
    Write(mpsc::SyncSender<std::result::Result<(), String>>),
    Commit(oneshot::Sender<Result<Committed>>, Result<Committed>),
    Append(oneshot::Sender<Result<Appended>>, Result<Appended>),
    Cursor(oneshot::Sender<Result<Seq>>, Result<Seq>),
    Marker(oneshot::Sender<Result<MarkerUpdate>>, Result<MarkerUpdate>),
    Change(oneshot::Sender<Result<Changed>>, Result<Changed>),
}

struct Worker {
    keyspace: Keyspace,
    tables: Tables,
    cache: Cache,
    reserve: Option<SpaceReserve>,
    last_space_check: Option<(Instant, Option<Refusing>)>,
}

impl Worker {
    fn run(&mut self, shared: &Shared) {
        loop {
            let group: Vec<Request> = {
                let mut st = shared.lock();
                while st.queue.is_empty() && !st.closing {
                    st = shared.wake.wait(st).unwrap_or_else(|p| p.into_inner());
                }
                if st.queue.is_empty() {
                    return;
                }
                let n = st.queue.len().min(MAX_GROUP);
                st.busy_since = Some(Instant::now());
                st.queue.drain(..n).collect()
            };
            let result = self.write_group(shared, group);
            shared.lock().busy_since = None;
            if result.is_break() {
                return;
            }
        }
    }

    /// Writes one group (or refuses it); `Break` once the committer is
    /// poisoned.
    fn write_group(&mut self, shared: &Shared, group: Vec<Request>) -> ControlFlow<()> {
        // Out of space: refuse the group before writing anything, so a full
        // disk never poisons the store.
        let space = self.space_refusal();
        if space.is_some() || matches!(shared.lock().refusing, Some(Refusing::DiskFull { .. })) {
            let mut st = shared.lock();
            if !matches!(st.refusing, Some(Refusing::Poisoned(_))) {
                st.refusing = space.clone();
            }
        }
        if let Some(refusal) = space {
            for r in group {
                r.refuse(|| refusal.error());
            }
            return ControlFlow::Continue(());
        }
        if let Err(why) = self.commit_group(group) {
            tracing::error!(error = %why, "journal commit failed; the store is poisoned");
            let mut st = shared.lock();
            st.refusing = Some(Refusing::Poisoned(why.clone()));
            let queued = std::mem::take(&mut st.queue);
            drop(st);
            let refusal = Refusing::Poisoned(why);
            for r in queued {
                r.refuse(|| refusal.error());
            }
            return ControlFlow::Break(());
        }
        ControlFlow::Continue(())
    }

    /// `Some` while the disk has less free space than the reserve.
    fn space_refusal(&mut self) -> Option<Refusing> {
        let reserve = self.reserve.as_ref()?;
        if let Some((at, known)) = &self.last_space_check {
            if at.elapsed() < SPACE_CHECK_EVERY {
                return known.clone();
            }
        }
        let refusal = match rustix::fs::statvfs(&reserve.path) {
            Ok(st) => {
                let available = st.f_bavail.saturating_mul(st.f_frsize);
                (available < reserve.bytes).then_some(Refusing::DiskFull {
                    available,
                    reserve: reserve.bytes,
                })
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot measure the store's free disk space");
                None
            }
        };
        if let Some(Refusing::DiskFull { available, reserve }) = &refusal {
            if !matches!(self.last_space_check, Some((_, Some(_)))) {
                tracing::error!(
                    available,
                    reserve,
                    "disk space below the reserve: the store refuses writes until space is freed"
                );
            }
        } else if matches!(self.last_space_check, Some((_, Some(_)))) {
            tracing::info!("disk space above the reserve again: writes resume");
        }
        self.last_space_check = Some((Instant::now(), refusal.clone()));
        refusal
    }

    /// Builds one fjall batch from the group, commits it, answers it.
    fn commit_group(&mut self, group: Vec<Request>) -> std::result::Result<(), String> {
        let mut batch = self.keyspace.batch().durability(Some(PersistMode::SyncAll));
        let mut changes = Changes::default();
        let mut answers = Vec::with_capacity(group.len());
        for request in group {
            match request {
                Request::Write { batch: ops, done } => {
                    for (partition, key, value) in ops.ops {
                        if partition.name == self.tables.channels.name {
                            self.note_channel_write(&key, value.as_deref(), &mut changes);
                        }
                        match value {
                            Some(v) => batch.insert(&partition, key, v),
                            None => batch.remove(&partition, key),
                        }
                    }
                    answers.push(Answer::Write(done));
                }
                Request::Commit {
                    message,
                    queued,
                    done,
                } => {
                    let result = if queued.elapsed() >= message.timeout {
                        Err(Error::temporary(
                            BACKEND,
                            "the commit waited past its timeout and was not applied",
                        ))
                    } else {
                        self.stage_commit(message, &mut batch, &mut changes)
                    };
                    answers.push(Answer::Commit(done, result));
                }
                Request::Append { message, done } => {
                    let result = self.stage_append(message, &mut batch, &mut changes);
                    answers.push(Answer::Append(done, result));
                }
                Request::Cursor { key, cursor, done } => {
                    let result = self.stage_cursor(key, cursor, &mut batch, &mut changes);
                    answers.push(Answer::Cursor(done, result));
                }
                Request::Marker {
                    user,
                    channel,
                    kind,
                    message,
                    done,
                } => {
                    let result =
                        self.stage_marker(user, channel, kind, message, &mut batch, &mut changes);
                    answers.push(Answer::Marker(done, result));
                }
                Request::Change {
                    change,
                    queued,
                    done,
                } => {
                    let result = if queued.elapsed() >= change.timeout {
                        Err(Error::temporary(
                            BACKEND,
                            "the change waited past its timeout and was not applied",
                        ))
                    } else {
                        self.stage_change(change, &mut batch, &mut changes)
                    };
                    answers.push(Answer::Change(done, result));
                }
            }
        }
        let outcome = batch.commit().map_err(|e| db(e).to_string());
        match &outcome {
            Ok(()) => {
                self.cache.channels.extend(changes.channels);
                self.cache.last_ids.extend(changes.last_ids);
                self.cache.heads.extend(changes.heads);
                self.cache.channel_heads.extend(changes.channel_heads);
                self.cache.bound();
            }
            // Nothing of the group is known to be on disk: forget it all.
            Err(_) => self.cache = Cache::default(),
        }
        for answer in answers {
            match (answer, &outcome) {
                (Answer::Write(done), Ok(())) => {
                    let _ = done.send(Ok(()));
                }
                (Answer::Write(done), Err(why)) => {
                    let _ = done.send(Err(why.clone()));
                }
                (Answer::Commit(done, result), Ok(())) => {
                    let _ = done.send(result);
                }
                (Answer::Append(done, result), Ok(())) => {
                    let _ = done.send(result);
                }
                (Answer::Commit(done, _), Err(why)) => {
                    let _ = done.send(Err(Error::temporary(BACKEND, why.clone())));
                }
                (Answer::Append(done, _), Err(why)) => {
                    let _ = done.send(Err(Error::temporary(BACKEND, why.clone())));
                }
                (Answer::Cursor(done, result), Ok(())) => {
                    let _ = done.send(result);
                }
                (Answer::Cursor(done, _), Err(why)) => {
                    let _ = done.send(Err(Error::temporary(BACKEND, why.clone())));
                }
                (Answer::Marker(done, result), Ok(())) => {
                    let _ = done.send(result);
                }
                (Answer::Marker(done, _), Err(why)) => {
                    let _ = done.send(Err(Error::temporary(BACKEND, why.clone())));
                }
                (Answer::Change(done, result), Ok(())) => {
                    let _ = done.send(result);
                }
                (Answer::Change(done, _), Err(why)) => {
                    let _ = done.send(Err(Error::temporary(BACKEND, why.clone())));
                }
            }
        }
        outcome
    }

    /// A directory write to the `channels` partition: the new state of the
    /// channel, in queue order.
    fn note_channel_write(&mut self, key: &[u8], value: Option<&[u8]>, changes: &mut Changes) {
        let Ok(id) = keys::parse_id16(key, "channel key") else {
            return;
        };
        let id = ChannelId::from_bytes(id);
        let channel = value.and_then(|v| match decode::<Channel>(v, "channel") {
            Ok(c) => Some(Arc::new(c)),
            Err(e) => {
                tracing::error!(error = %e, "a channel written to the store does not decode");
                None
            }
        });
        changes.channels.insert(id, channel);
    }

    fn channel(&mut self, id: ChannelId, changes: &Changes) -> Result<Option<Arc<Channel>>> {
        if let Some(c) = changes.channels.get(&id) {
            return Ok(c.clone());
        }
        if let Some(c) = self.cache.channels.get(&id) {
            return Ok(c.clone());
        }
        let loaded = match self.tables.channels.get(id.as_bytes()).map_err(db)? {
            Some(v) => Some(Arc::new(decode::<Channel>(&v, "channel")?)),
            None => None,
        };
        self.cache.channels.insert(id, loaded.clone());
        Ok(loaded)
    }

    fn last_id(&mut self, channel: ChannelId, changes: &Changes) -> Result<MessageId> {
        if let Some(id) = changes.last_ids.get(&channel) {
            return Ok(*id);
        }
        if let Some(id) = self.cache.last_ids.get(&channel) {
            return Ok(*id);
        }
        let last = match self
            .tables
            .history
            .prefix(channel.as_bytes())
            .next_back()
            .transpose()
            .map_err(db)?
        {
            Some((key, _)) => keys::parse_id_key(&key, "history key")?.1,
            None => MessageId::ZERO,
        };
        self.cache.last_ids.insert(channel, last);
        Ok(last)
    }

    fn head(&mut self, user: UserId, changes: &Changes) -> Result<u64> {
        if let Some(h) = changes.heads.get(&user) {
            return Ok(*h);
        }
        if let Some(h) = self.cache.heads.get(&user) {
            return Ok(*h);
        }
        let head = match self
            .tables
            .inbox
            .prefix(user.as_bytes())
            .next_back()
            .transpose()
            .map_err(db)?
        {
            Some((key, _)) => keys::parse_id_key(&key, "inbox key")?.1 .0,
            None => 0,
        };
        self.cache.heads.insert(user, head);
        Ok(head)
    }

    /// The message and positions an idempotency key answers, if any.
    fn existing(&self, key: &[u8], changes: &Changes) -> Result<Option<Sent>> {
        if let Some(found) = changes.keys.get(key) {
            return Ok(Some(found.clone()));
        }
        let Some(record) = self.tables.idempotency.get(key).map_err(db)? else {
            return Ok(None);
        };
        let (channel, id, positions) = keys::parse_idempotency_value(&record)?;
        let message = match self
            .tables
            .history
            .get(keys::history(channel, id))
            .map_err(db)?
        {
            Some(v) => decode::<Message>(&v, "message")?,
            None => {
                return Err(keys::corrupt(
                    "idempotency record",
                    "its message is missing",
                ))
            }
        };
        Ok(Some((message, positions)))
    }

    fn stage_commit(
        &mut self,
        new: NewMessage,
        batch: &mut fjall::Batch,
        changes: &mut Changes,
    ) -> Result<Committed> {
        let channel = self
            .channel(new.channel_id, changes)?
            .ok_or(Error::not_found("channel"))?;
        if !channel.is_member(new.sender) {
            return Err(Error::forbidden("not a member of this channel"));
        }
        if channel.kind == ChannelKind::Direct {
            // Blocks are written by the committer too, so one queued
            // before this commit is already applied.
            for other in channel.members.iter().filter(|m| **m != new.sender) {
                let key = keys::pair(other.as_bytes(), new.sender.as_bytes());
                if self.tables.blocks.contains_key(key).map_err(db)? {
                    return Err(Error::Blocked);
                }
            }
        }
        let key = keys::idempotency(new.channel_id, new.sender, &new.client_msg_id);
        if let Some((original, positions)) = self.existing(&key, changes)? {
            let message = check_duplicate(&original, &new.to_message(original.id))?
                .message()
                .clone();
            return Ok(Committed {
                message,
                duplicate: true,
                positions,
            });
        }
        let last = self.last_id(new.channel_id, changes)?;
        let id = chat_core::rules::check_channel_id(new.id, last)?;
        let message = new.to_message(id);
        // Inbox entries refer to the history record (24 bytes each) rather
        // than copy the message: a 100-member group writes its text once.
        let location = keys::history(new.channel_id, id);
        let mut positions = Vec::with_capacity(channel.members.len());
        for member in &channel.members {
            let seq = self.head(*member, changes)? + 1;
            changes.heads.insert(*member, seq);
            batch.insert(
                &self.tables.inbox,
                keys::inbox(*member, Seq(seq)),
                location.as_slice(),
            );
            positions.push((*member, Seq(seq)));
        }
        batch.insert(&self.tables.history, location, encode(&message)?);
        super::search::stage_index(batch, &self.tables.search, &message);
        batch.insert(
            &self.tables.idempotency,
            key.clone(),
            keys::idempotency_value(new.channel_id, id, &positions),
        );
        self.stage_number(new.channel_id, id, new.sender, batch, changes)?;
        changes.last_ids.insert(new.channel_id, id);
        changes
            .keys
            .insert(key, (message.clone(), positions.clone()));
        Ok(Committed {
            message,
            duplicate: false,
            positions,
        })
    }

    /// The last numbered message of `channel`.
    fn channel_head(&mut self, channel: ChannelId, changes: &Changes) -> Result<Option<Marker>> {
        if let Some(h) = changes.channel_heads.get(&channel) {
            return Ok(*h);
        }
        if let Some(h) = self.cache.channel_heads.get(&channel) {
            return Ok(*h);
        }
        let head = super::receipts::head(&self.tables.numbers, channel)?;
        self.cache.channel_heads.insert(channel, head);
        Ok(head)
    }

    /// `user`'s markers in `channel`, as this group leaves them so far.
    fn receipt(&self, key: &[u8; 32], changes: &Changes) -> Result<Receipt> {
        if let Some(r) = changes.receipts.get(key) {
            return Ok(*r);
        }
        match self.tables.receipts.get(key).map_err(db)? {
            Some(v) => super::receipts::decode_receipt(&v),
            None => Ok(Receipt::default()),
        }
    }

    /// Gives a new message its channel's next number and moves its
    /// sender's read marker to it, in the commit's batch.
    fn stage_number(
        &mut self,
        channel: ChannelId,
        id: MessageId,
        sender: UserId,
        batch: &mut fjall::Batch,
        changes: &mut Changes,
    ) -> Result<()> {
        let number = self
            .channel_head(channel, changes)?
            .map_or(1, |h| h.number + 1);
        let marker = Marker { id, number };
        batch.insert(
            &self.tables.numbers,
            keys::history(channel, id),
            number.to_be_bytes(),
        );
        changes.channel_heads.insert(channel, Some(marker));
        changes.numbers.insert((channel, id), number);
        let key = keys::pair(sender.as_bytes(), channel.as_bytes());
        let mut receipt = self.receipt(&key, changes)?;
        receipt.read = Some(chat_core::receipts::advance(receipt.read, marker).marker);
        batch.insert(
            &self.tables.receipts,
            key,
            super::receipts::encode_receipt(&receipt),
        );
        changes.receipts.insert(key, receipt);
        Ok(())
    }

    fn stage_marker(
        &mut self,
        user: UserId,
        channel: ChannelId,
        kind: MarkerKind,
        message: MessageId,
        batch: &mut fjall::Batch,
        changes: &mut Changes,
    ) -> Result<MarkerUpdate> {
        let number = match changes.numbers.get(&(channel, message)) {
            Some(n) => *n,
            None => match self
                .tables
                .numbers
                .get(keys::history(channel, message))
                .map_err(db)?
            {
                Some(v) => keys::parse_message_id(&v, "message number")?.0,
                None => return Err(Error::not_found("message")),
            },
        };
        let key = keys::pair(user.as_bytes(), channel.as_bytes());
        let mut receipt = self.receipt(&key, changes)?;
        let slot = match kind {
            MarkerKind::Read => &mut receipt.read,
            MarkerKind::Delivered => &mut receipt.delivered,
        };
        let update = chat_core::receipts::advance(
            *slot,
            Marker {
                id: message,
                number,
            },
        );
        if update.moved {
            *slot = Some(update.marker);
            batch.insert(
                &self.tables.receipts,
                key,
                super::receipts::encode_receipt(&receipt),
            );
            changes.receipts.insert(key, receipt);
        }
        Ok(update)
    }

    /// The reaction keys under `prefix`, as stored and as this group has
    /// changed them.
    fn reaction_keys(&self, prefix: &[u8], changes: &Changes) -> Result<Vec<Vec<u8>>> {
        let mut found: Vec<Vec<u8>> = Vec::new();
        for kv in self.tables.reactions.prefix(prefix) {
            let (key, _) = kv.map_err(db)?;
            if changes.reactions.get(&*key) != Some(&false) {
                found.push(key.to_vec());
            }
        }
        for (key, present) in &changes.reactions {
            if *present && key.starts_with(prefix) && !found.contains(key) {
                found.push(key.clone());
            }
        }
        Ok(found)
    }

    fn stage_change(
        &mut self,
        change: NewChange,
        batch: &mut fjall::Batch,
        changes: &mut Changes,
    ) -> Result<Changed> {
        let (channel_id, id, actor) = (change.channel_id, change.message_id, change.actor);
        let channel = self
            .channel(channel_id, changes)?
            .ok_or(Error::not_found("channel"))?;
        if !channel.is_member(actor) {
            return Err(Error::forbidden("not a member of this channel"));
        }
        let location = keys::history(channel_id, id);
        let current = match changes.messages.get(&location) {
            Some(m) => m.clone(),
            None => match self.tables.history.get(location).map_err(db)? {
                Some(v) => decode::<Message>(&v, "message")?,
                None => return Err(Error::not_found("message")),
            },
        };
        let mut reacted = Vec::new();
        for key in self.reaction_keys(&keys::reactions_of(channel_id, id, Some(actor)), changes)? {
            reacted.push(keys::parse_reaction(&key)?.1);
        }
        let owner = match channel.kind {
            ChannelKind::Group => channel.owner,
            _ => None,
        };
        let (message, what) = match decide(&current, owner, &change, &reacted)? {
            Decision::Unchanged(what) => {
                return Ok(Changed {
                    message: current,
                    change: what,
                    unchanged: true,
                    positions: Vec::new(),
                })
            }
            Decision::Apply { message, change } => (message, change),
        };
        match &what {
            Change::Reacted { user, emoji } => {
                let key = keys::reaction(channel_id, id, *user, emoji);
                batch.insert(&self.tables.reactions, key.clone(), []);
                changes.reactions.insert(key, true);
            }
            Change::Unreacted { user, emoji } => {
                let key = keys::reaction(channel_id, id, *user, emoji);
                batch.remove(&self.tables.reactions, key.clone());
                changes.reactions.insert(key, false);
            }
            _ => {
                if matches!(what, Change::Deleted { .. }) {
                    for key in
                        self.reaction_keys(&keys::reactions_of(channel_id, id, None), changes)?
                    {
                        batch.remove(&self.tables.reactions, key.clone());
                        changes.reactions.insert(key, false);
                    }
                }
                // The search index follows the content: the old words out,
                // the new ones in (none for a tombstone), in the same batch.
                super::search::stage_unindex(batch, &self.tables.search, &current);
                super::search::stage_index(batch, &self.tables.search, &message);
                batch.insert(&self.tables.history, location, encode(&message)?);
                changes.messages.insert(location, message.clone());
            }
        }
        // A change entry: the history record's location, then the change.
        let mut value = location.to_vec();
        value.extend_from_slice(&encode(&what)?);
        let mut positions = Vec::with_capacity(channel.members.len());
        for member in &channel.members {
            let seq = self.head(*member, changes)? + 1;
            changes.heads.insert(*member, seq);
            batch.insert(
                &self.tables.inbox,
                keys::inbox(*member, Seq(seq)),
                value.as_slice(),
            );
            positions.push((*member, Seq(seq)));
        }
        Ok(Changed {
            message,
            change: what,
            unchanged: false,
            positions,
        })
    }

    fn stage_cursor(
        &mut self,
        key: [u8; 32],
        cursor: Seq,
        batch: &mut fjall::Batch,
        changes: &mut Changes,
    ) -> Result<Seq> {
        let stored = match changes.cursors.get(&key) {
            Some(s) => *s,
            None => match self.tables.cursors.get(key).map_err(db)? {
                Some(v) => Seq(keys::parse_message_id(&v, "cursor")?.0),
                None => Seq::ZERO,
            },
        };
        if cursor <= stored {
            return Ok(stored);
        }
        batch.insert(&self.tables.cursors, key, cursor.0.to_be_bytes());
        changes.cursors.insert(key, cursor);
        Ok(cursor)
    }

    fn stage_append(
        &mut self,
        message: Message,
        batch: &mut fjall::Batch,
        changes: &mut Changes,
    ) -> Result<Appended> {
        let key = keys::idempotency(message.channel_id, message.sender, &message.client_msg_id);
        if let Some((original, _)) = self.existing(&key, changes)? {
            return check_duplicate(&original, &message);
        }
        let history_key = keys::history(message.channel_id, message.id);
        let staged = changes
            .keys
            .values()
            .any(|(m, _)| m.channel_id == message.channel_id && m.id == message.id);
        if staged || self.tables.history.contains_key(history_key).map_err(db)? {
            return Err(Error::conflict(format!(
                "message id {} already used in this channel",
                message.id
            )));
        }
        batch.insert(&self.tables.history, history_key, encode(&message)?);
        super::search::stage_index(batch, &self.tables.search, &message);
        batch.insert(
            &self.tables.idempotency,
            key.clone(),
            keys::idempotency_value(message.channel_id, message.id, &[]),
        );
        let last = self.last_id(message.channel_id, changes)?;
        changes
            .last_ids
            .insert(message.channel_id, last.max(message.id));
        changes.keys.insert(key, (message.clone(), Vec::new()));
        Ok(Appended::Stored(message))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, Keyspace, PartitionHandle, Arc<Committer>) {
        let dir = tempfile::tempdir().unwrap();
        let keyspace = fjall::Config::new(dir.path()).open().unwrap();
        let open = |name: &str| {
            keyspace
                .open_partition(name, fjall::PartitionCreateOptions::default())
                .unwrap()
        };
        let p = open("p");
        let tables = Tables {
            history: open("history"),
            idempotency: open("idempotency"),
            inbox: open("inbox"),
            channels: open("channels"),
            cursors: open("cursors"),
            blocks: open("blocks"),
            numbers: open("numbers"),
            receipts: open("receipts"),
            reactions: open("reactions"),
            search: open("search"),
        };
        let committer = Arc::new(
            Committer::start(keyspace.clone(), tables, None, Duration::from_secs(3)).unwrap(),
        );
        (dir, keyspace, p, committer)
    }

    #[test]
    fn concurrent_writers_are_all_committed() {
        let (_dir, _keyspace, p, committer) = store();
        let writers: Vec<_> = (0..32u32)
            .map(|i| {
                let (committer, p) = (committer.clone(), p.clone());
                std::thread::spawn(move || {
                    let mut b = Batch::default();
                    b.insert(&p, i.to_be_bytes(), b"v".as_slice());
                    b.insert(&p, (i + 1000).to_be_bytes(), b"w".as_slice());
                    committer.commit(b)
                })
            })
            .collect();
        for w in writers {
            w.join().unwrap().unwrap();
        }
        assert_eq!(p.len().unwrap(), 64);
        let mut b = Batch::default();
        b.remove(&p, 3u32.to_be_bytes());
        committer.commit(b).unwrap();
        assert!(p.get(3u32.to_be_bytes()).unwrap().is_none());
        // Nothing to write: answered at once.
        committer.commit(Batch::default()).unwrap();
    }

    #[test]
    fn a_poisoned_committer_refuses_writes_as_temporary() {
        let (_dir, _keyspace, p, committer) = store();
        committer.shared.lock().refusing = Some(Refusing::Poisoned("disk gone".into()));
        let mut b = Batch::default();
        b.insert(&p, b"k".as_slice(), b"v".as_slice());
        let err = committer.commit(b).unwrap_err();
        assert!(err.to_string().contains("disk gone"), "{err}");
        assert!(err.is_temporary(), "the store reopens itself: retry");
    }

    #[test]
    fn a_full_disk_refuses_writes_and_they_resume() {
        let (dir, _keyspace, p, _) = store();
        // Rebuild with a reserve larger than any disk, then none.
        let keyspace = fjall::Config::new(dir.path().join("second"))
            .open()
            .unwrap();
        let open = |name: &str| {
            keyspace
                .open_partition(name, fjall::PartitionCreateOptions::default())
                .unwrap()
        };
        let tables = Tables {
            history: open("history"),
            idempotency: open("idempotency"),
            inbox: open("inbox"),
            channels: open("channels"),
            cursors: open("cursors"),
            blocks: open("blocks"),
            numbers: open("numbers"),
            receipts: open("receipts"),
            reactions: open("reactions"),
            search: open("search"),
        };
        let q = open("q");
        let committer = Committer::start(
            keyspace.clone(),
            tables,
            Some(SpaceReserve {
                path: dir.path().to_path_buf(),
                bytes: u64::MAX,
            }),
            Duration::from_secs(3),
        )
        .unwrap();
        let mut b = Batch::default();
        b.insert(&q, b"k".as_slice(), b"v".as_slice());
        let err = committer.commit(b).unwrap_err();
        assert!(err.is_temporary(), "{err}");
        assert!(matches!(
            committer.refusing(),
            Some(Refusing::DiskFull { .. })
        ));
        assert!(q.get(b"k").unwrap().is_none(), "nothing written");
        drop(p);
    }
}
