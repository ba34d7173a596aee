//! The password-hashing pool: a fixed number of hashes at once (about one
//! per core), each in one of as many Argon2 working memories allocated at
//! start and reused for every hash, behind a bounded queue.
//!
//! Before it, every sign-up and login took a thread from tokio's blocking
//! pool (up to 512) and allocated 19 MiB: 32 concurrent failed logins grew
//! the process by gigabytes that the allocator kept, and a real user's
//! login waited behind all of them. Now the memory is `workers × 19 MiB`
//! for good, a burst waits in a queue of known length, and beyond it
//! callers are told `unavailable` (retryable) at once.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use chat_core::protocol::ErrorCode;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::auth::{HashMemory, Passwords};
use crate::server::{err, wire, ApiResult};

/// Counters of the pool.
#[derive(Debug, Default)]
pub(crate) struct PoolStats {
    /// Hashes running now (each on a thread of its own).
    pub(crate) running: AtomicU64,
    /// The most hashes that ever ran at once: at most the worker count.
    pub(crate) peak: AtomicU64,
    /// Requests turned away because the queue was full.
    pub(crate) rejected: AtomicU64,
    /// Hashes computed (sign-ups, logins, decoy checks included).
    pub(crate) completed: AtomicU64,
}

/// At most `workers` hashes at once, each in one of `workers` working
/// memories allocated at start, with at most `queue` more waiting.
///
/// The hashes run on tokio's blocking pool (so tests on paused time see
/// them as work in progress), but never more than `workers` of them: the
/// pool's threads beyond that are never asked for by hashing.
#[derive(Debug)]
pub(crate) struct HashPool {
    passwords: Passwords,
    slots: Arc<Semaphore>,
    memories: Arc<Mutex<Vec<HashMemory>>>,
    waiting: AtomicUsize,
    queue: usize,
    /// Verified against for unknown usernames: costs what a real hash does.
    decoy: String,
    pub(crate) stats: Arc<PoolStats>,
}

/// Decrements the waiting count however the wait ends.
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl HashPool {
    /// A pool of `workers` with room for `queue` waiting requests.
    pub(crate) fn start(
        passwords: Passwords,
        workers: usize,
        queue: usize,
    ) -> chat_core::Result<Self> {
        let memories = (0..workers).map(|_| passwords.memory()).collect();
        Ok(Self {
            slots: Arc::new(Semaphore::new(workers)),
            memories: Arc::new(Mutex::new(memories)),
            waiting: AtomicUsize::new(0),
            queue,
            decoy: passwords.decoy(),
            passwords,
            stats: Arc::new(PoolStats::default()),
        })
    }

    /// A slot: at once if one is free, after a wait in the queue if the
    /// queue has room, else `unavailable`.
    async fn slot(&self) -> ApiResult<OwnedSemaphorePermit> {
        if let Ok(permit) = self.slots.clone().try_acquire_owned() {
            return Ok(permit);
        }
        if self.waiting.fetch_add(1, Ordering::Relaxed) >= self.queue {
            self.waiting.fetch_sub(1, Ordering::Relaxed);
            self.stats.rejected.fetch_add(1, Ordering::Relaxed);
            return Err(err(
                ErrorCode::Unavailable,
                "too many sign-ups and logins at once; retry shortly",
            ));
        }
        let _waiting = Waiting(&self.waiting);
        self.slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| err(ErrorCode::Internal, "password hashing stopped"))
    }

    /// Runs `work` with a working memory on a blocking thread. The memory
    /// and the slot are given back by the thread itself, so a caller that
    /// gives up (its request timed out) loses neither.
    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Passwords, &mut HashMemory) -> T + Send + 'static,
    ) -> ApiResult<T> {
        let permit = self.slot().await?;
        let memories = self.memories.clone();
        let passwords = self.passwords.clone();
        let stats = self.stats.clone();
        let task = tokio::task::spawn_blocking(move || {
            let running = stats.running.fetch_add(1, Ordering::Relaxed) + 1;
            stats.peak.fetch_max(running, Ordering::Relaxed);
            let taken = memories.lock().unwrap_or_else(|p| p.into_inner()).pop();
            // One memory per slot: a slot holder always finds one.
            let mut memory = taken.unwrap_or_else(|| passwords.memory());
            let out = work(&passwords, &mut memory);
            memories
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(memory);
            stats.running.fetch_sub(1, Ordering::Relaxed);
            stats.completed.fetch_add(1, Ordering::Relaxed);
            drop(permit);
            out
        });
        task.await
            .map_err(|_| err(ErrorCode::Internal, "password hashing failed"))
    }

    /// A PHC hash of `password`.
    pub(crate) async fn hash(&self, password: String) -> ApiResult<String> {
        self.run(move |p, memory| p.hash_with(&password, memory))
            .await?
            .map_err(wire)
    }

    /// Whether `password` matches `hash`; with no hash (an unknown user),
    /// the same work is done against the decoy and the answer is `false`.
    pub(crate) async fn verify(&self, password: String, hash: Option<String>) -> ApiResult<bool> {
        let known = hash.is_some();
        let hash = hash.unwrap_or_else(|| self.decoy.clone());
        let ok = self
            .run(move |p, memory| p.verify_with(&password, &hash, memory))
            .await?;
        Ok(ok && known)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hashes_verifies_and_refuses_beyond_its_queue() {
        // The default cost (19 MiB, two passes): a hash takes milliseconds,
        // far longer than submitting every call below.
        let pool = HashPool::start(Passwords::new(19_456, 2).unwrap(), 2, 4).unwrap();
        let hash = pool.hash("correct horse".into()).await.unwrap();
        assert!(pool
            .verify("correct horse".into(), Some(hash.clone()))
            .await
            .unwrap());
        assert!(!pool.verify("wrong".into(), Some(hash)).await.unwrap());
        assert!(!pool.verify("anything".into(), None).await.unwrap());

        // Far more at once than threads plus queue: every call is
        // submitted in the first poll of `join_all`, long before a hash
        // finishes; some are refused at once, none waits forever, and no
        // thread is added.
        let calls = (0..64).map(|_| pool.verify("x".into(), None));
        let mut refused = 0;
        for answer in futures::future::join_all(calls).await {
            match answer {
                Ok(ok) => assert!(!ok),
                Err(e) => {
                    assert_eq!(e.code, ErrorCode::Unavailable);
                    assert!(e.retryable);
                    refused += 1;
                }
            }
        }
        assert!(
            refused >= 64 - 2 - 4,
            "2 slots and a queue of 4 hold at most 6"
        );
        assert_eq!(pool.stats.rejected.load(Ordering::Relaxed), refused);
        assert!(
            pool.stats.peak.load(Ordering::Relaxed) <= 2,
            "never over 2 at once"
        );
        assert_eq!(pool.stats.running.load(Ordering::Relaxed), 0);
        assert_eq!(
            pool.memories.lock().unwrap().len(),
            2,
            "every memory given back"
        );
    }
}
