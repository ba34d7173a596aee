//! `signups`: users signed up one after another, with the server's
//! resident memory sampled before, every `--sample-every` sign-ups, and
//! after. Memory that grows with every sign-up (issue 9, item 5: 1.5 MiB
//! each on the embedded store, never levelling off) shows as a slope in
//! the samples; the target is under 300 MiB above the empty server after
//! 20,000 sign-ups.

use std::time::Instant;

use futures::stream::{self, StreamExt};
use serde::{Deserialize, Serialize};

use crate::cli::SignupsArgs;
use crate::error::{BenchError, Result};
use crate::limits::vm_rss_kib;
use crate::progress::Progress;
use crate::report::TargetInfo;
use crate::setup::{retrying, run_prefix, PASSWORD};
use crate::stats::Counters;
use crate::target::Target;

/// What `signups` measured.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SignupsReport {
    /// Sign-ups asked for.
    pub requested: u64,
    /// Sign-ups that succeeded.
    pub signed_up: u64,
    /// Sign-ups that failed (after retries of retryable errors).
    pub failed: u64,
    /// Sign-ups in flight at once.
    pub concurrency: usize,
    /// Seconds from the first sign-up to the last.
    pub secs: f64,
    /// Sign-ups per second.
    pub per_sec: f64,
    /// Server resident memory before the first sign-up, KiB.
    pub server_rss_before_kib: Option<u64>,
    /// Server resident memory after the last, KiB.
    pub server_rss_after_kib: Option<u64>,
    /// `(sign-ups done, server RSS KiB)` every `--sample-every` sign-ups.
    pub samples: Vec<(u64, u64)>,
    /// Growth over the second half of the run per sign-up, bytes: near
    /// zero once memory has levelled off.
    pub late_growth_bytes_per_signup: Option<f64>,
    /// A few error messages.
    pub errors: Vec<String>,
}

impl SignupsReport {
    /// Correctness problems: sign-ups that failed.
    pub fn failures(&self) -> Vec<String> {
        let mut f = Vec::new();
        if self.signed_up < self.requested {
            f.push(format!(
                "signed up {} of {} users ({} failed)",
                self.signed_up, self.requested, self.failed
            ));
        }
        f
    }
}

/// Runs `signups` against the server `args` names.
pub async fn signups(args: &SignupsArgs, quiet: bool) -> Result<(SignupsReport, TargetInfo)> {
    if args.n == 0 || args.sample_every == 0 {
        return Err(BenchError::plan("-n and --sample-every must be positive"));
    }
    let target = Target::start(&args.target).await?;
    let report = run(args, quiet, &target).await;
    let info = TargetInfo::from(&target);
    target.stop().await;
    Ok((report, info))
}

async fn run(args: &SignupsArgs, quiet: bool, target: &Target) -> SignupsReport {
    let rss = || target.pid.and_then(|p| vm_rss_kib(p).ok());
    let counters = std::sync::Arc::new(Counters::default());
    let progress = Progress::start(quiet, "signups", counters.clone());
    let prefix = run_prefix();
    let before = rss();
    let mut report = SignupsReport {
        requested: args.n,
        concurrency: args.concurrency.max(1),
        server_rss_before_kib: before,
        ..Default::default()
    };
    if let Some(b) = before {
        report.samples.push((0, b));
    }
    let start = Instant::now();
    let client = &target.client;
    let mut results = stream::iter(0..args.n)
        .map(|i| {
            let name = format!("{prefix}-{i}");
            async move { retrying("sign-up", || client.signup(&name, PASSWORD, None)).await }
        })
        .buffer_unordered(report.concurrency);
    let mut done = 0u64;
    while let Some(result) = results.next().await {
        done += 1;
        match result {
            Ok(_) => {
                report.signed_up += 1;
                Counters::add(&counters.signed_up, 1);
            }
            Err(e) => {
                report.failed += 1;
                if report.errors.len() < 5 {
                    report.errors.push(e.to_string());
                }
            }
        }
        if done.is_multiple_of(args.sample_every) {
            if let Some(kib) = rss() {
                report.samples.push((done, kib));
            }
        }
    }
    report.secs = start.elapsed().as_secs_f64();
    report.per_sec = report.signed_up as f64 / report.secs.max(1e-9);
    report.server_rss_after_kib = rss();
    if let Some(after) = report.server_rss_after_kib {
        if report.samples.last().map(|s| s.0) != Some(done) {
            report.samples.push((done, after));
        }
    }
    report.late_growth_bytes_per_signup = late_growth(&report.samples);
    progress.stop();
    report
}

/// Bytes per sign-up between the middle sample and the last.
fn late_growth(samples: &[(u64, u64)]) -> Option<f64> {
    let last = *samples.last()?;
    let mid = *samples.get(samples.len() / 2)?;
    (last.0 > mid.0).then(|| (last.1 as f64 - mid.1 as f64) * 1024.0 / (last.0 - mid.0) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn late_growth_is_the_slope_of_the_second_half() {
        let flat = [(0, 1000), (10, 2000), (20, 2000), (30, 2000)];
        assert_eq!(late_growth(&flat), Some(0.0));
        let rising = [(0, 1000), (10, 2000), (20, 3000)];
        assert_eq!(late_growth(&rising), Some(1024.0 * 1000.0 / 10.0));
        assert_eq!(late_growth(&[(0, 5)]), None);
    }
}
