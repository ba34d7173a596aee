//! # chat-bench
//!
//! The load tool of the chat SDK: it drives a running chat server (or one it
//! starts, in this process or a child) through the real protocol and reports
//! what users judge a chat system by — connections held and their memory,
//! messages per second, end-to-end latency, recovery from a reconnect storm —
//! and checks, every time, that every acknowledged message is delivered
//! exactly once.
//!
//! Load connections are lean: a bare tokio-tungstenite stream per
//! connection with 4 KiB buffers, bound round-robin to loopback source
//! addresses, speaking `chat_core::protocol` directly; the SDK
//! (`chat-client`) is used only for setup over HTTP (sign-up, channels,
//! groups, `route`).
//!
//! Scenarios (see `chat-bench --help`):
//!
//! * [`connections()`]: N authenticated, heartbeating connections held;
//!   `--processes K` splits them over K processes;
//! * [`one_to_one`] and [`group`]: throughput and latency with a delivery
//!   check; `one-to-one --baseline` also runs [`baseline`];
//! * [`reconnect_storm`]: drop N clients at once, send to them while away,
//!   reconnect all, time until all are synced;
//! * [`baseline`]: the one-to-one workload against [`relay::Relay`], a bare
//!   WebSocket relay on the same stack, for ratios;
//! * [`signups::signups`]: users signed up one after another, the server's
//!   memory sampled as it goes;
//! * [`login_storm::login_storm`]: failed logins hammered while a real user
//!   logs in.
//!
//! And for many servers as one system (docs/cluster.md):
//!
//! * [`harness`]: a local cluster of `chat-server` processes on
//!   PostgreSQL, NATS, Redis and etcd, with faults (kill, SIGTERM, SIGSTOP,
//!   restart, a node cut from the broker); `chat-bench cluster up`;
//! * [`workload`] and [`checker`]: SDK devices through `route` under a
//!   fault, and the verdict on what they showed (nothing lost, nothing
//!   twice, in order, history reaching every device, no cursor past an
//!   unshown message).
//!
//! Only loopback addresses are ever loaded. Every loop is bounded in count
//! and time.
//!
//! ```no_run
//! use clap::Parser;
//!
//! # async fn demo() -> Result<(), chat_bench::BenchError> {
//! let cli = chat_bench::Cli::parse_from([
//!     "chat-bench", "one-to-one", "--embedded-server", "memory", "--pairs", "10", "--duration", "2",
//! ]);
//! let report = chat_bench::run(&cli).await?;
//! println!("{}", report.table());
//! assert!(report.passed);
//! # Ok(()) }
//! ```

pub mod checker;
pub mod cli;
pub mod cluster;
pub mod connections;
pub mod error;
pub mod harness;
pub mod limits;
pub mod login_storm;
pub mod messages;
pub mod net;
pub mod payload;
pub mod progress;
pub mod reconnect;
pub mod relay;
pub mod report;
pub mod setup;
pub mod signups;
pub mod stats;
pub mod target;
pub mod traffic;
pub mod watch;
pub mod wire;
pub mod workload;

pub use cli::{Cli, Command};
pub use connections::connections;
pub use error::{BenchError, Result};
pub use messages::{baseline, group, one_to_one};
pub use reconnect::reconnect_storm;
pub use report::{Report, RunReport};

use std::time::{SystemTime, UNIX_EPOCH};

/// Runs the scenario `cli` names and returns its report (also written to
/// `--json` when given). A correctness failure is a report with
/// `passed == false`; an `Err` means the scenario could not run.
///
/// `serve` runs a server until interrupted and has no report: it returns
/// an error here (use the binary, or [`target::serve`]).
pub async fn run(cli: &Cli) -> Result<RunReport> {
    payload::now_us();
    let started_at_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let quiet = cli.quiet;
    let (report, target) =
        match &cli.command {
            Command::Connections(a) => {
                let (r, t) = connections(a, quiet).await?;
                (Report::Connections(r), Some(t))
            }
            Command::OneToOne(a) => {
                let (r, t) = one_to_one(a, quiet).await?;
                (Report::OneToOne(r), Some(t))
            }
            Command::Group(a) => {
                let (r, t) = group(a, quiet).await?;
                (Report::Group(r), Some(t))
            }
            Command::ReconnectStorm(a) => {
                let (r, t) = reconnect_storm(a, quiet).await?;
                (Report::ReconnectStorm(r), Some(t))
            }
            Command::Signups(a) => {
                let (r, t) = signups::signups(a, quiet).await?;
                (Report::Signups(r), Some(t))
            }
            Command::LoginStorm(a) => {
                let (r, t) = login_storm::login_storm(a).await?;
                (Report::LoginStorm(r), Some(t))
            }
            Command::Baseline(a) => (Report::Baseline(baseline(a, quiet).await?), None),
            Command::Serve(_) | Command::Cluster(_) => return Err(BenchError::plan(
                "`serve` and `cluster` run until interrupted; call chat_bench::target::serve or \
                 chat_bench::harness::up",
            )),
        };
    let run = RunReport::new(report, target, started_at_ms);
    if let Some(path) = &cli.json {
        run.write_json(path)?;
    }
    Ok(run)
}
