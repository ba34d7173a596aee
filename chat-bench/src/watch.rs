//! Other processes watched during a run (`connections --watch NAME=PID`):
//! the nodes of a cluster, the broker, the presence store. Their resident
//! memory and CPU time are read from `/proc` before the connections open,
//! once they are all open, and at the end of the hold.

use serde::{Deserialize, Serialize};

use crate::error::{BenchError, Result};
use crate::limits::vm_rss_kib;

/// Clock ticks per second of `/proc/<pid>/stat` (`USER_HZ`, 100 on Linux).
const TICKS_PER_SEC: f64 = 100.0;

/// One watched process and what it cost.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Watched {
    /// The name given (`--watch NAME=PID`); a node's `host:port` names
    /// its connections in [`crate::report::ConnectionsReport::per_server`].
    pub name: String,
    /// Its process id.
    pub pid: u32,
    /// Resident memory before the connections, KiB.
    pub rss_before_kib: Option<u64>,
    /// Resident memory with every connection open, KiB.
    pub rss_after_kib: Option<u64>,
    /// Resident memory at the end of the hold, KiB.
    pub rss_end_kib: Option<u64>,
    /// CPU seconds (user + system) spent while the connections opened.
    pub cpu_connect_secs: Option<f64>,
    /// CPU seconds spent while they were held (heartbeats).
    pub cpu_hold_secs: Option<f64>,
    /// Seconds of that hold.
    pub hold_secs: f64,
}

/// Parses `--watch NAME=PID`.
pub fn parse_watch(spec: &str) -> Result<(String, u32)> {
    let (name, pid) = spec
        .rsplit_once('=')
        .ok_or_else(|| BenchError::plan(format!("--watch {spec:?}: give NAME=PID")))?;
    let pid = pid
        .trim()
        .parse()
        .map_err(|_| BenchError::plan(format!("--watch {spec:?}: {pid:?} is not a pid")))?;
    Ok((name.trim().to_owned(), pid))
}

/// CPU seconds (user + system) of `pid` so far.
pub fn cpu_secs(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_cpu_ticks(&stat).map(|t| t as f64 / TICKS_PER_SEC)
}

/// utime + stime (fields 14 and 15) of a `/proc/<pid>/stat` line; the
/// command name in parentheses may hold spaces.
fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let after = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // `after` starts at field 3 (state).
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// The watched processes of a run, measured in three steps.
#[derive(Debug, Default)]
pub struct Watch {
    procs: Vec<Watched>,
    cpu_at: Vec<Option<f64>>,
    hold_started: Option<std::time::Instant>,
}

impl Watch {
    /// Parses every `--watch` and reads the "before" figures.
    pub fn start(specs: &[String]) -> Result<Self> {
        let mut procs = Vec::new();
        for spec in specs {
            let (name, pid) = parse_watch(spec)?;
            procs.push(Watched {
                name,
                pid,
                rss_before_kib: vm_rss_kib(pid).ok(),
                ..Default::default()
            });
        }
        let cpu_at = procs.iter().map(|p| cpu_secs(p.pid)).collect();
        Ok(Self {
            procs,
            cpu_at,
            hold_started: None,
        })
    }

    /// Every connection is open: memory now, CPU of the connect phase.
    pub fn connected(&mut self) {
        for (p, at) in self.procs.iter_mut().zip(self.cpu_at.iter_mut()) {
            p.rss_after_kib = vm_rss_kib(p.pid).ok();
            let now = cpu_secs(p.pid);
            p.cpu_connect_secs = now.zip(*at).map(|(n, a)| n - a);
            *at = now;
        }
        self.hold_started = Some(std::time::Instant::now());
    }

    /// The hold ends: memory now, CPU of the hold.
    pub fn finish(mut self) -> Vec<Watched> {
        let hold = self
            .hold_started
            .map(|s| s.elapsed().as_secs_f64())
            .unwrap_or(0.0);
        for (p, at) in self.procs.iter_mut().zip(&self.cpu_at) {
            p.rss_end_kib = vm_rss_kib(p.pid).ok();
            p.cpu_hold_secs = cpu_secs(p.pid).zip(*at).map(|(n, a)| n - a);
            p.hold_secs = hold;
        }
        self.procs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watch_specs_parse() {
        assert_eq!(
            parse_watch("127.0.0.1:8080=42").unwrap(),
            ("127.0.0.1:8080".into(), 42)
        );
        assert!(parse_watch("redis").is_err());
        assert!(parse_watch("redis=x").is_err());
    }

    #[test]
    fn cpu_ticks_are_fields_14_and_15() {
        let stat = "42 (chat server) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 4 0 1 2 3";
        assert_eq!(parse_cpu_ticks(stat), Some(300));
        assert!(cpu_secs(std::process::id()).is_some());
    }
}
