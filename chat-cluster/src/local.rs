//! The users a bus node holds, with their subscription counts, shared by
//! the NATS and Redis buses.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use chat_core::UserId;

/// Striped locks that order one user's route writes.
const ROUTE_LOCKS: usize = 64;

/// Subscription counts per user on this node, and the locks that order the
/// route writes a count's first and last change make.
#[derive(Debug)]
pub(crate) struct LocalUsers {
    counts: Mutex<HashMap<UserId, usize>>,
    locks: Vec<tokio::sync::Mutex<()>>,
}

impl LocalUsers {
    pub(crate) fn new() -> Self {
        Self {
            counts: Mutex::new(HashMap::new()),
            locks: (0..ROUTE_LOCKS)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
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
