//! Exponential backoff with full jitter, and [`Retry`] built on it.

use std::future::Future;
use std::time::Duration;

use rand::Rng;

use crate::error::Result;

/// Retries a call while it fails with a retryable error
/// ([`ClientError::is_retryable`](crate::ClientError::is_retryable)), with
/// exponential backoff and full jitter, for up to `deadline`.
///
/// For calls made before a connection exists, such as logging in while
/// the server is still starting; the live [`Connection`](crate::Connection)
/// retries by itself (see
/// [`ConnectOptions::retry_initial_connect`](crate::ConnectOptions::retry_initial_connect)).
///
/// ```no_run
/// # async fn run() -> chat_client::Result<()> {
/// use std::time::Duration;
/// use chat_client::{ChatClient, Retry};
///
/// let client = ChatClient::new("http://127.0.0.1:8080")?;
/// let retry = Retry { deadline: Some(Duration::from_secs(60)), ..Retry::default() };
/// let alice = retry.run(|| client.login("alice", "correct horse battery")).await?;
/// # let _ = alice;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retry {
    /// Ceiling of the first delay; each further attempt doubles it.
    /// Default 200 ms.
    pub min_delay: Duration,
    /// Largest delay. Default 30 s.
    pub max_delay: Duration,
    /// Draw each delay uniformly from zero to its ceiling. Default `true`.
    pub jitter: bool,
    /// Give up (returning the last error) once the next attempt would
    /// start later than this after the first. `None`, the default: retry as
    /// long as the errors are retryable.
    pub deadline: Option<Duration>,
}

impl Default for Retry {
    fn default() -> Self {
        Self {
            min_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(30),
            jitter: true,
            deadline: None,
        }
    }
}

impl Retry {
    /// Calls `call` until it succeeds, fails with an error that is not
    /// retryable, or the deadline passes; returns its last outcome.
    pub async fn run<T, F, Fut>(&self, mut call: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let give_up = self.deadline.map(crate::worker::deadline_in);
        let mut backoff = Backoff::new(self.min_delay, self.max_delay, self.jitter);
        loop {
            let error = match call().await {
                Ok(value) => return Ok(value),
                Err(e) if !e.is_retryable() => return Err(e),
                Err(e) => e,
            };
            let delay = backoff.next_delay();
            if give_up.is_some_and(|at| crate::worker::deadline_in(delay) > at) {
                return Err(error);
            }
            tracing::debug!(%error, ?delay, "retrying");
            tokio::time::sleep(delay).await;
        }
    }
}

/// Delays for retries: the `n`th delay (from 0) is drawn uniformly from
/// `[0, min(max, min * 2^n)]` ("full jitter"), or is exactly that ceiling
/// when jitter is off.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    min: Duration,
    max: Duration,
    jitter: bool,
    attempt: u32,
}

impl Backoff {
    pub(crate) fn new(min: Duration, max: Duration, jitter: bool) -> Self {
        let min = min.max(Duration::from_millis(1));
        Self {
            min,
            max: max.max(min),
            jitter,
            attempt: 0,
        }
    }

    /// The ceiling of the next delay.
    pub(crate) fn ceiling(&self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(31)).unwrap_or(u32::MAX);
        self.min.saturating_mul(factor).min(self.max)
    }

    /// The next delay, using the thread's random generator.
    pub(crate) fn next_delay(&mut self) -> Duration {
        self.next_delay_with(&mut rand::thread_rng())
    }

    /// The next delay, drawing jitter from `rng`.
    pub(crate) fn next_delay_with(&mut self, rng: &mut impl Rng) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        if !self.jitter {
            return ceiling;
        }
        let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(rng.gen_range(0..=nanos))
    }

    /// Starts over from the smallest delay (after a success).
    pub(crate) fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn without_jitter_doubles_up_to_the_cap() {
        let mut b = Backoff::new(100 * MS, 1000 * MS, false);
        let delays: Vec<_> = (0..7).map(|_| b.next_delay()).collect();
        assert_eq!(
            delays,
            [100, 200, 400, 800, 1000, 1000, 1000].map(|n| n * MS)
        );
        b.reset();
        assert_eq!(b.next_delay(), 100 * MS);
    }

    #[test]
    fn jitter_stays_within_the_ceiling_and_varies() {
        let mut rng = StdRng::seed_from_u64(7);
        for attempt in 0..40u32 {
            let mut b = Backoff::new(50 * MS, 5000 * MS, true);
            for _ in 0..attempt {
                b.next_delay_with(&mut rng);
            }
            let ceiling = b.ceiling();
            assert!(ceiling <= 5000 * MS);
            assert!(ceiling >= 50 * MS);
            let d = b.next_delay_with(&mut rng);
            assert!(d <= ceiling, "attempt {attempt}: {d:?} > {ceiling:?}");
        }
        // Full jitter spreads delays across the whole range.
        let samples: Vec<_> = (0..200)
            .map(|_| {
                let mut b = Backoff::new(1000 * MS, 1000 * MS, true);
                b.next_delay_with(&mut rng)
            })
            .collect();
        assert!(samples.iter().any(|d| *d < 250 * MS));
        assert!(samples.iter().any(|d| *d > 750 * MS));
    }

    #[tokio::test(start_paused = true)]
    async fn retry_runs_until_success_a_permanent_error_or_the_deadline() {
        use crate::ClientError;
        let retry = Retry {
            jitter: false,
            ..Retry::default()
        };
        // Two retryable failures, then success: waits 200 ms, then 400 ms.
        let start = tokio::time::Instant::now();
        let mut calls = 0;
        let out = retry
            .run(|| {
                calls += 1;
                let n = calls;
                async move {
                    if n < 3 {
                        Err(ClientError::Timeout)
                    } else {
                        Ok(n)
                    }
                }
            })
            .await;
        assert_eq!(out, Ok(3));
        assert_eq!(start.elapsed(), 600 * MS);
        // A permanent error ends it at once.
        let mut calls = 0;
        let out: Result<()> = retry
            .run(|| {
                calls += 1;
                async { Err(ClientError::Config("bad url".into())) }
            })
            .await;
        assert_eq!(out, Err(ClientError::Config("bad url".into())));
        assert_eq!(calls, 1);
        // The deadline: tries at 0, 0.2, 0.6 and 1.4 s; the next would be
        // at 3 s, past 1.5 s.
        let retry = Retry {
            deadline: Some(Duration::from_millis(1_500)),
            ..retry
        };
        let mut calls = 0;
        let out: Result<()> = retry
            .run(|| {
                calls += 1;
                async { Err(ClientError::Timeout) }
            })
            .await;
        assert_eq!(out, Err(ClientError::Timeout));
        assert_eq!(calls, 4);
        assert_eq!(start.elapsed(), (600 + 1_400) * MS);
    }

    #[test]
    fn huge_attempt_counts_do_not_overflow() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(60), false);
        for _ in 0..1000 {
            assert!(b.next_delay() <= Duration::from_secs(60));
        }
        // A zero minimum still backs off.
        let mut z = Backoff::new(Duration::ZERO, Duration::ZERO, false);
        assert_eq!(z.next_delay(), MS);
    }
}
