//! The progress line: once a second on stderr, the phase and the live
//! counters (with per-second rates of acknowledgements and deliveries).

use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::stats::Counters;

/// A running progress line. Dropping it without [`Progress::stop`] stops it
/// too.
#[derive(Debug)]
pub struct Progress {
    phase: Arc<Mutex<String>>,
    stop: CancellationToken,
}

impl Progress {
    /// Starts printing `label` and the counters every second (nothing when
    /// `quiet`).
    pub fn start(quiet: bool, label: &'static str, counters: Arc<Counters>) -> Self {
        let phase = Arc::new(Mutex::new(String::from("starting")));
        let stop = CancellationToken::new();
        if !quiet {
            let phase = phase.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                let started = Instant::now();
                let mut tick = tokio::time::interval(Duration::from_secs(1));
                tick.tick().await;
                let (mut last_acked, mut last_delivered) = (0, 0);
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = tick.tick() => {}
                    }
                    let c = &counters;
                    let acked = Counters::get(&c.acked);
                    let delivered = Counters::get(&c.delivered);
                    let mut line = format!(
                        "[{:>6.1}s] {label} {}:",
                        started.elapsed().as_secs_f64(),
                        phase.lock().unwrap_or_else(|p| p.into_inner())
                    );
                    let mut field = |name: &str, v: u64| {
                        if v > 0 {
                            let _ = write!(line, " {name} {v}");
                        }
                    };
                    field("signed-up", Counters::get(&c.signed_up));
                    field("open", Counters::get(&c.open));
                    field("connected", Counters::get(&c.connected));
                    field("connect-failures", Counters::get(&c.connect_failures));
                    field("dropped", Counters::get(&c.dropped));
                    field("done", Counters::get(&c.done));
                    if acked > 0 {
                        let _ = write!(line, " acked {acked} ({}/s)", acked - last_acked);
                    }
                    if delivered > 0 {
                        let _ = write!(
                            line,
                            " delivered {delivered} ({}/s)",
                            delivered - last_delivered
                        );
                    }
                    let errors = Counters::get(&c.errors);
                    if errors > 0 {
                        let _ = write!(
                            line,
                            " errors {errors} (rate-limited {})",
                            Counters::get(&c.rate_limited)
                        );
                    }
                    last_acked = acked;
                    last_delivered = delivered;
                    eprintln!("{line}");
                }
            });
        }
        Self { phase, stop }
    }

    /// Names the current phase ("signing up", "connecting", ...).
    pub fn phase(&self, phase: &str) {
        let mut p = self.phase.lock().unwrap_or_else(|p| p.into_inner());
        p.clear();
        p.push_str(phase);
    }

    /// Stops printing.
    pub fn stop(&self) {
        self.stop.cancel();
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
