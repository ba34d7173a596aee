//! Exponential backoff with full jitter.

use std::time::Duration;

use rand::Rng;

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
