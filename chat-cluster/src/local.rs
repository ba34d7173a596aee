//! The users a bus node holds, with their subscription counts, shared by
//! the NATS and Redis buses.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};

use chat_core::{Result, UserId};
use tokio::sync::Notify;

/// Striped locks that order one user's route writes.
const ROUTE_LOCKS: usize = 64;

/// Subscription counts per user on this node, the locks that order the
/// route writes a count's first and last change make, and whether the
/// routes need writing again (a lost connection, a failed write).
#[derive(Debug)]
pub(crate) struct LocalUsers {
    counts: Mutex<HashMap<UserId, usize>>,
    locks: Vec<tokio::sync::Mutex<()>>,
    dirty: AtomicBool,
    repair: Notify,
}

impl LocalUsers {
    pub(crate) fn new() -> Self {
        Self {
            counts: Mutex::new(HashMap::new()),
            locks: (0..ROUTE_LOCKS)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
            dirty: AtomicBool::new(false),
            repair: Notify::new(),
        }
    }

    /// The routes need writing again, and live delivery may have had a gap.
    pub(crate) fn mark_dirty(&self) {
        self.dirty.store(true, Ordering::SeqCst);
    }

    /// Whether the routes need writing again.
    pub(crate) fn is_dirty(&self) -> bool {
        self.dirty.load(Ordering::SeqCst)
    }

    /// The repair is starting: later failures mark it dirty again.
    pub(crate) fn clear_dirty(&self) {
        self.dirty.store(false, Ordering::SeqCst);
    }

    /// Wakes the task that repairs the routes.
    pub(crate) fn wake_repair(&self) {
        self.repair.notify_one();
    }

    /// Resolves when the repair task is woken.
    pub(crate) async fn repair_wanted(&self) {
        self.repair.notified().await
    }

    /// One more subscription of `user`. On its first here, `write`s the
    /// route now if the broker is `reachable`; otherwise, or if the write
    /// fails, the route is left to the repair, which writes every route
    /// and then asks the node to resync, so nothing is missed for good.
    pub(crate) async fn subscribe<F, Fut>(&self, user: UserId, reachable: bool, write: F)
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<()>>,
    {
        let _order = self.route_lock(user).lock().await;
        if !self.add(user) {
            return;
        }
        if !reachable {
            // No waiting on a broker that is away.
            self.mark_dirty();
        } else if let Err(e) = write().await {
            tracing::warn!(error = %e, %user, "bus route write failed; will retry");
            self.mark_dirty();
            self.wake_repair();
        }
    }

    /// One subscription of `user` less. On its last here, `remove`s the
    /// route if the broker is `reachable`: a stale route only costs a
    /// message this node drops, so a failure is not retried.
    pub(crate) async fn unsubscribe<F, Fut>(&self, user: UserId, reachable: bool, remove: F)
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<()>>,
    {
        let _order = self.route_lock(user).lock().await;
        if self.remove(user) && reachable {
            if let Err(e) = remove().await {
                tracing::debug!(error = %e, %user, "bus route removal failed");
            }
        }
    }

    fn counts(&self) -> MutexGuard<'_, HashMap<UserId, usize>> {
        self.counts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Held across a count change and the route write it calls for, so a
    /// user's writes reach the broker in the order of the changes.
    pub(crate) fn route_lock(&self, user: UserId) -> &tokio::sync::Mutex<()> {
        &self.locks[(user.0.as_u128() % ROUTE_LOCKS as u128) as usize]
    }

    /// Counts one more subscription; `true` if it is the user's first here.
    pub(crate) fn add(&self, user: UserId) -> bool {
        let mut counts = self.counts();
        let count = counts.entry(user).or_insert(0);
        *count += 1;
        *count == 1
    }

    /// Counts one subscription less; `true` if it was the user's last here.
    pub(crate) fn remove(&self, user: UserId) -> bool {
        let mut counts = self.counts();
        match counts.get_mut(&user) {
            Some(count) if *count > 1 => {
                *count -= 1;
                false
            }
            Some(_) => {
                counts.remove(&user);
                true
            }
            None => false,
        }
    }

    /// Whether the user has a subscription here.
    pub(crate) fn holds(&self, user: UserId) -> bool {
        self.counts().contains_key(&user)
    }

    /// Every user held here.
    pub(crate) fn all(&self) -> Vec<UserId> {
        self.counts().keys().copied().collect()
    }

    /// Those of `users` held here (a sender's view of the routes may be a
    /// little stale, so a delivery is filtered on arrival).
    pub(crate) fn here(&self, users: &[UserId]) -> Vec<UserId> {
        let counts = self.counts();
        users
            .iter()
            .filter(|u| counts.contains_key(u))
            .copied()
            .collect()
    }
}
