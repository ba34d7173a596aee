//! Group commit: many writers, one `fsync`.
//!
//! Every write of the store is a list of inserts and removes ([`Batch`])
//! handed to one committer thread, which merges whatever is waiting into a
//! single fjall batch, commits it with [`PersistMode::SyncAll`] (the journal
//! `fsync`ed before the batch is applied), and then answers every writer
//! of the group at once. Under load one `fsync` thus acknowledges the writes
//! of every concurrent caller, instead of each paying its own and queueing
//! behind fjall's journal lock.
//!
//! The guarantees are those of one synced commit per write:
//!
//! * a write returns `Ok` only after the `fsync` that covers it;
//! * fjall applies a batch to its memtables only after persisting it, so
//!   anything a read can see is already durable, which makes the no-write
//!   answers (an append answered `Duplicate`, a cursor that does not move)
//!   safe;
//! * the writes of a group become visible together, each one whole.
//!
//! Writers keep holding their lock stripes (see `locks.rs`) while they wait,
//! so the read-modify-write checks stay atomic per key; only writers of the
//! same keys wait for each other's group.
//!
//! A failed commit fails every write of its group (the caller retries,
//! as for any error) and poisons the store: after a failed `fsync` the
//! kernel may have dropped the unwritten pages, so a later success would
//! prove nothing. Every later write fails until the store is reopened
//! (recovery replays the journal, which holds exactly what reached the
//! disk).

use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use chat_core::{Error, Result};
use fjall::{Keyspace, PartitionHandle, PersistMode, UserKey, UserValue};

use super::{db, BACKEND};

/// Most writes merged into one commit; more wait for the next.
const MAX_GROUP: usize = 1_024;

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

/// A write waiting for its group's commit.
struct Pending {
    batch: Batch,
    done: mpsc::SyncSender<std::result::Result<(), String>>,
}

/// The committer thread and its queue.
pub(super) struct GroupCommit {
    shared: Arc<Shared>,
    committer: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for GroupCommit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupCommit").finish_non_exhaustive()
    }
}

struct Shared {
    state: Mutex<State>,
    /// Wakes the committer: a write is queued, or the store is closing.
    wake: Condvar,
}

#[derive(Default)]
struct State {
    queue: Vec<Pending>,
    /// Why the store is poisoned, after a failed commit.
    failed: Option<String>,
    closing: bool,
}

impl GroupCommit {
    /// Starts the committer thread for `keyspace`.
    pub(super) fn start(keyspace: Keyspace) -> Result<Self> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            wake: Condvar::new(),
        });
        let committer = std::thread::Builder::new()
            .name("chat-store-commit".into())
            .spawn({
                let shared = shared.clone();
                move || committer(&shared, &keyspace)
            })
            .map_err(|e| Error::backend(BACKEND, format!("cannot start the committer: {e}")))?;
        Ok(Self {
            shared,
            committer: Some(committer),
        })
    }

    /// Writes `batch` durably with whatever else is waiting; blocks until
    /// the group's commit (and its `fsync`) is done.
    pub(super) fn commit(&self, batch: Batch) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let (done, result) = mpsc::sync_channel(1);
        {
            let mut st = self.shared.lock();
            if let Some(why) = &st.failed {
                return Err(poisoned(why));
            }
            if st.closing {
                return Err(Error::temporary(BACKEND, "the store is closing"));
            }
            st.queue.push(Pending { batch, done });
        }
        self.shared.wake.notify_one();
        match result.recv() {
            Ok(Ok(())) => Ok(()),
            Ok(Err(why)) => Err(Error::backend(BACKEND, why)),
            Err(_) => Err(Error::temporary(BACKEND, "the store is closing")),
        }
    }
}

impl Drop for GroupCommit {
    fn drop(&mut self) {
        self.shared.lock().closing = true;
        self.shared.wake.notify_one();
        if let Some(t) = self.committer.take() {
            let _ = t.join();
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn poisoned(why: &str) -> Error {
    Error::backend(
        BACKEND,
        format!("a journal write failed earlier ({why}); reopen the store"),
    )
}

/// The committer: takes every queued write (up to [`MAX_GROUP`]), commits
/// them as one synced fjall batch, answers them all. Drains the queue
/// before exiting.
fn committer(shared: &Shared, keyspace: &Keyspace) {
    loop {
        let group: Vec<Pending> = {
            let mut st = shared.lock();
            while st.queue.is_empty() && !st.closing {
                st = shared.wake.wait(st).unwrap_or_else(|p| p.into_inner());
            }
            if st.queue.is_empty() {
                return;
            }
            let n = st.queue.len().min(MAX_GROUP);
            st.queue.drain(..n).collect()
        };
        let mut batch = keyspace.batch().durability(Some(PersistMode::SyncAll));
        let mut waiting = Vec::with_capacity(group.len());
        for Pending { batch: ops, done } in group {
            for (partition, key, value) in ops.ops {
                match value {
                    Some(v) => batch.insert(&partition, key, v),
                    None => batch.remove(&partition, key),
                }
            }
            waiting.push(done);
        }
        let result = batch.commit().map_err(|e| db(e).to_string());
        if let Err(why) = &result {
            tracing::error!(error = %why, "journal commit failed; the store is poisoned");
            shared.lock().failed = Some(why.clone());
        }
        for done in waiting {
            // A writer that gave up waiting is fine to ignore.
            let _ = done.send(result.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (
        tempfile::TempDir,
        Keyspace,
        PartitionHandle,
        Arc<GroupCommit>,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let keyspace = fjall::Config::new(dir.path()).open().unwrap();
        let p = keyspace
            .open_partition("p", fjall::PartitionCreateOptions::default())
            .unwrap();
        let group = Arc::new(GroupCommit::start(keyspace.clone()).unwrap());
        (dir, keyspace, p, group)
    }

    #[test]
    fn concurrent_writers_are_all_committed() {
        let (_dir, _keyspace, p, group) = store();
        let writers: Vec<_> = (0..32u32)
            .map(|i| {
                let (group, p) = (group.clone(), p.clone());
                std::thread::spawn(move || {
                    let mut b = Batch::default();
                    b.insert(&p, i.to_be_bytes(), b"v".as_slice());
                    b.insert(&p, (i + 1000).to_be_bytes(), b"w".as_slice());
                    group.commit(b)
                })
            })
            .collect();
        for w in writers {
            w.join().unwrap().unwrap();
        }
        assert_eq!(p.len().unwrap(), 64);
        let mut b = Batch::default();
        b.remove(&p, 3u32.to_be_bytes());
        group.commit(b).unwrap();
        assert!(p.get(3u32.to_be_bytes()).unwrap().is_none());
        // Nothing to write: answered at once.
        group.commit(Batch::default()).unwrap();
    }

    #[test]
    fn a_poisoned_store_refuses_writes() {
        let (_dir, _keyspace, p, group) = store();
        group.shared.lock().failed = Some("disk gone".into());
        let mut b = Batch::default();
        b.insert(&p, b"k".as_slice(), b"v".as_slice());
        let err = group.commit(b).unwrap_err();
        assert!(err.to_string().contains("disk gone"), "{err}");
    }
}
