//! Striped locks for read-modify-write operations.
//!
//! A fixed array of `std::sync::Mutex<()>`; a logical key (a kind tag and
//! the key's bytes) hashes to one stripe. An operation that guards several
//! keys takes all their stripes in one call, in ascending stripe order and
//! without repeats, so two operations can never wait on each other in a
//! cycle. Locks are only ever taken inside a blocking closure and released
//! before it returns, never held across an `.await`.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Mutex, MutexGuard};

/// How many stripes: enough that unrelated keys rarely share one.
const STRIPES: usize = 64;

/// The kind of key a stripe guards, mixed into the hash.
#[derive(Debug, Clone, Copy, Hash)]
pub(super) enum Kind {
    /// A user record.
    User,
    /// A username.
    Username,
    /// A channel record and its membership.
    Channel,
    /// `(user, device)` of a device record.
    Device,
    /// An attachment record.
    Attachment,
}

/// The hashed identity of one guarded key.
#[derive(Debug, Clone, Copy)]
pub(super) struct StripeKey(u64);

impl StripeKey {
    /// The stripe key of `kind` + `bytes`.
    pub(super) fn new(kind: Kind, bytes: &[u8]) -> Self {
        let mut h = DefaultHasher::new();
        kind.hash(&mut h);
        bytes.hash(&mut h);
        Self(h.finish())
    }
}

/// The lock stripes.
#[derive(Debug)]
pub(super) struct Stripes {
    locks: Box<[Mutex<()>]>,
}

impl Default for Stripes {
    fn default() -> Self {
        Self {
            locks: (0..STRIPES).map(|_| Mutex::new(())).collect(),
        }
    }
}

/// The guards of one operation; dropping it releases every stripe.
#[derive(Debug)]
pub(super) struct Guards<'a> {
    _guards: Vec<MutexGuard<'a, ()>>,
}

impl Stripes {
    /// Locks the stripes of `keys` (deduplicated, in ascending order).
    ///
    /// Poisoning is ignored: the mutexes guard no data, only exclusion.
    pub(super) fn lock(&self, keys: &[StripeKey]) -> Guards<'_> {
        let mut indices: Vec<usize> = keys
            .iter()
            .map(|k| (k.0 % self.locks.len() as u64) as usize)
            .collect();
        indices.sort_unstable();
        indices.dedup();
        Guards {
            _guards: indices
                .into_iter()
                .map(|i| self.locks[i].lock().unwrap_or_else(|p| p.into_inner()))
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlapping_key_sets_do_not_deadlock() {
        let stripes = std::sync::Arc::new(Stripes::default());
        let keys: Vec<StripeKey> = (0u32..200)
            .map(|i| StripeKey::new(Kind::Device, &i.to_be_bytes()))
            .collect();
        let handles: Vec<_> = (0..4)
            .map(|t| {
                let stripes = stripes.clone();
                let mut keys = keys.clone();
                if t % 2 == 1 {
                    keys.reverse();
                }
                std::thread::spawn(move || {
                    for _ in 0..200 {
                        let _g = stripes.lock(&keys);
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
    }

    #[test]
    fn same_stripe_twice_in_one_call_is_fine() {
        let stripes = Stripes::default();
        let k = StripeKey::new(Kind::User, b"x");
        let _g = stripes.lock(&[k, k]);
    }
}
