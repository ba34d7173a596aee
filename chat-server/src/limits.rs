//! Token buckets: the one rate-limiting mechanism of the server. A
//! connection's request rate, a user's send bytes per second, and
//! sign-ups and logins per address and per username are all buckets; the
//! keyed ones live in a map that forgets a key once its bucket has
//! refilled (a full bucket is the same as no entry), so the map holds only
//! keys active in the last `burst / rate` seconds.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash};
use std::sync::Mutex;
use std::time::Duration;

use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use chat_core::protocol::{ErrorCode, WireError};
use tokio::time::Instant;

use crate::config::RateSpec;
use crate::http::ApiError;

/// `rate` units per second sustained, `burst` at once. Follows tokio's
/// clock, so tests on paused time control it.
#[derive(Debug, Clone)]
pub(crate) struct Bucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    /// A full bucket.
    pub(crate) fn new(rate_per_sec: f64, burst: f64) -> Self {
        let burst = burst.max(1.0);
        Self {
            rate: rate_per_sec,
            burst,
            tokens: burst,
            last: Instant::now(),
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
    }

    /// Takes `cost` units, or says how long until they will be there. A
    /// cost above the burst is taken from a full bucket (so one large item
    /// always passes eventually) and leaves it in debt.
    pub(crate) fn take(&mut self, cost: f64) -> Result<(), Duration> {
        self.refill(Instant::now());
        let need = cost.min(self.burst);
        if self.tokens >= need {
            self.tokens -= cost;
            return Ok(());
        }
        let secs = if self.rate > 0.0 {
            (need - self.tokens) / self.rate
        } else {
            f64::MAX
        };
        Err(Duration::try_from_secs_f64(secs).unwrap_or(Duration::MAX))
    }

    fn is_full(&self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens + elapsed * self.rate >= self.burst
    }
}

/// One bucket per key, created full on first use.
#[derive(Debug)]
pub(crate) struct Buckets<K> {
    rate: f64,
    burst: f64,
    map: Mutex<HashMap<K, Bucket>>,
    /// The map's size at which full buckets are swept out next.
    sweep_at: Mutex<usize>,
}

/// Map size of the first sweep; then twice the size a sweep leaves.
const FIRST_SWEEP: usize = 1_024;

impl<K: Hash + Eq> Buckets<K> {
    /// `rate_per_sec` sustained and `burst` at once per key; a rate of 0
    /// turns the limit off.
    pub(crate) fn new(rate_per_sec: f64, burst: f64) -> Self {
        Self {
            rate: rate_per_sec,
            burst,
            map: Mutex::new(HashMap::new()),
            sweep_at: Mutex::new(FIRST_SWEEP),
        }
    }

    /// Buckets of a per-minute [`RateSpec`].
    pub(crate) fn per_minute(spec: RateSpec) -> Self {
        Self::new(f64::from(spec.per_minute) / 60.0, f64::from(spec.burst))
    }

    /// Whether the limit is on.
    pub(crate) fn is_on(&self) -> bool {
        self.rate > 0.0
    }

    /// Takes `cost` from `key`'s bucket, or says how long to wait.
    pub(crate) fn take(&self, key: K, cost: f64) -> Result<(), Duration> {
        if !self.is_on() {
            return Ok(());
        }
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let mut sweep_at = self.sweep_at.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= *sweep_at {
            let now = Instant::now();
            map.retain(|_, b| !b.is_full(now));
            *sweep_at = (map.len() * 2).max(FIRST_SWEEP);
        }
        drop(sweep_at);
        map.entry(key)
            .or_insert_with(|| Bucket::new(self.rate, self.burst))
            .take(cost)
    }

    /// Keys tracked now (for tests and stats).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.map.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

/// A `rate_limited` answer with how long to wait, as HTTP 429 with a
/// `Retry-After` header (whole seconds, at least 1).
#[derive(Debug)]
pub(crate) struct Throttled {
    pub(crate) error: WireError,
    pub(crate) retry_after: Duration,
}

impl Throttled {
    pub(crate) fn new(message: &str, retry_after: Duration) -> Self {
        Self {
            error: WireError::new(ErrorCode::RateLimited, message),
            retry_after,
        }
    }
}

/// An HTTP error that may carry a `Retry-After`.
#[derive(Debug)]
pub(crate) enum HttpError {
    Api(ApiError),
    Throttled(Throttled),
}

impl From<WireError> for HttpError {
    fn from(e: WireError) -> Self {
        HttpError::Api(ApiError(e))
    }
}

impl From<ApiError> for HttpError {
    fn from(e: ApiError) -> Self {
        HttpError::Api(e)
    }
}

impl From<Throttled> for HttpError {
    fn from(t: Throttled) -> Self {
        HttpError::Throttled(t)
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        match self {
            HttpError::Api(e) => e.into_response(),
            HttpError::Throttled(t) => {
                let secs = t.retry_after.as_secs_f64().ceil().clamp(1.0, 86_400.0) as u64;
                let mut response = ApiError(t.error).into_response();
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(secs));
                response
            }
        }
    }
}

/// Sign-up and login attempts per source address and logins per username.
#[derive(Debug)]
pub(crate) struct AuthLimits {
    per_address: Buckets<std::net::IpAddr>,
    /// Keyed by a keyed hash of the username: a fixed size per entry
    /// whatever the client sent.
    per_username: Buckets<u64>,
    hasher: std::collections::hash_map::RandomState,
}

impl AuthLimits {
    pub(crate) fn new(per_address: RateSpec, per_username: RateSpec) -> Self {
        Self {
            per_address: Buckets::per_minute(per_address),
            per_username: Buckets::per_minute(per_username),
            hasher: Default::default(),
        }
    }

    /// One attempt from `address` (if known: a host that mounts the router
    /// without connect info gets no per-address limit).
    pub(crate) fn address(&self, address: Option<std::net::IpAddr>) -> Result<(), Throttled> {
        let Some(ip) = address else { return Ok(()) };
        self.per_address
            .take(crate::accept::address_key(ip), 1.0)
            .map_err(|wait| {
                Throttled::new("too many attempts from this address; retry later", wait)
            })
    }

    /// One login attempt to `username`.
    pub(crate) fn username(&self, username: &str) -> Result<(), Throttled> {
        let key = self.hasher.hash_one(username);
        self.per_username.take(key, 1.0).map_err(|wait| {
            Throttled::new("too many login attempts for this user; retry later", wait)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn bucket_refills_at_its_rate_and_says_how_long_to_wait() {
        let mut b = Bucket::new(2.0, 4.0);
        for _ in 0..4 {
            assert!(b.take(1.0).is_ok());
        }
        let wait = b.take(1.0).unwrap_err();
        assert_eq!(wait, Duration::from_millis(500));
        tokio::time::advance(Duration::from_millis(500)).await;
        assert!(b.take(1.0).is_ok());
        assert!(b.take(1.0).is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn a_cost_above_the_burst_passes_a_full_bucket_and_leaves_debt() {
        let mut b = Bucket::new(100.0, 1_000.0);
        assert!(b.take(5_000.0).is_ok(), "one large item from a full bucket");
        let wait = b.take(1.0).unwrap_err();
        assert_eq!(
            wait,
            Duration::from_millis(40_010),
            "4,000 of debt + 1 at 100/s"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn keyed_buckets_are_independent_and_refilled_keys_are_forgotten() {
        let buckets = Buckets::<u32>::new(1.0, 2.0);
        assert!(buckets.take(1, 2.0).is_ok());
        assert!(buckets.take(1, 1.0).is_err());
        assert!(
            buckets.take(2, 1.0).is_ok(),
            "another key has its own bucket"
        );
        // Up to the sweep size, none of them refilled yet.
        for k in 3..(FIRST_SWEEP as u32 + 1) {
            buckets.take(k, 1.0).unwrap();
        }
        assert_eq!(buckets.len(), FIRST_SWEEP);
        tokio::time::advance(Duration::from_secs(3)).await;
        buckets.take(0, 1.0).unwrap();
        assert_eq!(buckets.len(), 1, "every refilled bucket was swept out");
        let off = Buckets::<u32>::new(0.0, 0.0);
        for _ in 0..10_000 {
            assert!(off.take(1, 1e9).is_ok());
        }
        assert_eq!(off.len(), 0, "an unlimited map keeps nothing");
    }
}
