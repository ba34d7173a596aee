//! Latency histograms (HDR) and the live counters behind the progress line.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Highest latency recorded, microseconds (larger values are clamped).
const MAX_US: u64 = 600_000_000;
/// Samples a task gathers before it takes the shared histogram's lock.
const BATCH: usize = 256;

/// A latency histogram shared by many tasks, each buffering samples locally
/// ([`LatencyBuffer`]) so the lock is taken once per batch.
#[derive(Debug, Clone)]
pub struct Latency {
    hist: Arc<Mutex<Histogram<u64>>>,
}

impl Default for Latency {
    fn default() -> Self {
        Self::new()
    }
}

impl Latency {
    /// An empty histogram: 1 µs to 600 s at 3 significant digits.
    pub fn new() -> Self {
        let hist =
            Histogram::new_with_bounds(1, MAX_US, 3).expect("constant histogram bounds are valid");
        Self {
            hist: Arc::new(Mutex::new(hist)),
        }
    }

    /// A local buffer that feeds this histogram.
    pub fn buffer(&self) -> LatencyBuffer {
        LatencyBuffer {
            shared: self.clone(),
            samples: Vec::new(),
        }
    }

    fn record_all(&self, samples: &[u64]) {
        let mut h = self.hist.lock().unwrap_or_else(|p| p.into_inner());
        for &s in samples {
            h.saturating_record(s.clamp(1, MAX_US));
        }
    }

    /// Percentiles of everything recorded so far.
    pub fn summary(&self) -> LatencySummary {
        let h = self.hist.lock().unwrap_or_else(|p| p.into_inner());
        LatencySummary::of(&h)
    }
}

/// Samples of one task, flushed to the shared [`Latency`] in batches and
/// when dropped.
#[derive(Debug)]
pub struct LatencyBuffer {
    shared: Latency,
    samples: Vec<u64>,
}

impl LatencyBuffer {
    /// Records one latency in microseconds.
    pub fn record(&mut self, us: u64) {
        if self.samples.capacity() == 0 {
            self.samples.reserve_exact(BATCH);
        }
        self.samples.push(us);
        if self.samples.len() >= BATCH {
            self.flush();
        }
    }

    /// Hands buffered samples to the shared histogram.
    pub fn flush(&mut self) {
        if !self.samples.is_empty() {
            self.shared.record_all(&self.samples);
            self.samples.clear();
        }
    }
}

impl Drop for LatencyBuffer {
    fn drop(&mut self) {
        self.flush();
    }
}

/// Percentiles of a latency distribution, in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct LatencySummary {
    /// Samples.
    pub count: u64,
    /// Mean.
    pub mean_ms: f64,
    /// Median.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
    /// Largest sample.
    pub max_ms: f64,
}

impl LatencySummary {
    /// The summary of a histogram of microseconds.
    pub fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Self {
            count: h.len(),
            mean_ms: h.mean() / 1000.0,
            p50_ms: ms(h.value_at_quantile(0.50)),
            p90_ms: ms(h.value_at_quantile(0.90)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
        }
    }
}

/// Live counters, shared by every task of a run and read by the progress
/// line.
#[derive(Debug, Default)]
pub struct Counters {
    /// Connections open now.
    pub open: AtomicU64,
    /// Connections opened in total.
    pub connected: AtomicU64,
    /// Connection attempts that failed.
    pub connect_failures: AtomicU64,
    /// Connections that the server closed or that broke.
    pub dropped: AtomicU64,
    /// Users signed up.
    pub signed_up: AtomicU64,
    /// Requests sent (sends, retries included).
    pub sent: AtomicU64,
    /// Sends acknowledged.
    pub acked: AtomicU64,
    /// Messages received live.
    pub delivered: AtomicU64,
    /// Error replies (any code).
    pub errors: AtomicU64,
    /// `rate_limited` error replies.
    pub rate_limited: AtomicU64,
    /// Clients that finished a step (reconnect storm: back and synced).
    pub done: AtomicU64,
}

impl Counters {
    /// Reads a counter.
    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }

    /// Adds to a counter.
    pub fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }

    /// Subtracts from a counter (never below zero).
    pub fn sub(c: &AtomicU64, n: u64) {
        let _ = c.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
            Some(v.saturating_sub(n))
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summarises() {
        let lat = Latency::new();
        {
            let mut b = lat.buffer();
            for us in 1..=1000u64 {
                b.record(us * 1000);
            }
        }
        let s = lat.summary();
        assert_eq!(s.count, 1000);
        assert!((s.p50_ms - 500.0).abs() < 1.0, "{s:?}");
        assert!((s.p99_ms - 990.0).abs() < 2.0, "{s:?}");
        assert!((s.max_ms - 1000.0).abs() < 1.0, "{s:?}");
        assert_eq!(Latency::new().summary(), LatencySummary::default());
    }
}
