//! What the operating system allows one load process: open files, ephemeral
//! ports, and the resident memory of the server process (all from `/proc`,
//! Linux only; elsewhere every figure is unknown and no check is made).

use std::fmt::Write as _;

/// File descriptors kept for everything but load connections (HTTP calls,
/// the runtime, stdio, a store's files).
pub const FD_RESERVE: u64 = 256;

/// The process's open-file limits (`RLIMIT_NOFILE`); `None` is unlimited or
/// unknown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct FileLimits {
    /// The soft limit, which is in force.
    pub soft: Option<u64>,
    /// The hard limit, up to which the soft one may be raised (`ulimit -n`).
    pub hard: Option<u64>,
}

impl FileLimits {
    /// This process's limits, from `/proc/self/limits`.
    pub fn current() -> Self {
        std::fs::read_to_string("/proc/self/limits")
            .map(|t| Self::parse(&t))
            .unwrap_or_default()
    }

    /// Parses the text of `/proc/<pid>/limits`.
    pub fn parse(text: &str) -> Self {
        let Some(line) = text.lines().find(|l| l.starts_with("Max open files")) else {
            return Self::default();
        };
        let mut fields = line["Max open files".len()..].split_whitespace();
        let parse = |f: Option<&str>| f.and_then(|v| v.parse::<u64>().ok());
        let soft = parse(fields.next());
        let hard = parse(fields.next());
        Self { soft, hard }
    }

    /// How many load connections one process can hold when each costs
    /// `fds_per_connection` descriptors (2 when the server runs in the same
    /// process), with [`FD_RESERVE`] kept back.
    pub fn connection_budget(&self, fds_per_connection: u64) -> Option<u64> {
        self.soft
            .map(|s| s.saturating_sub(FD_RESERVE) / fds_per_connection.max(1))
    }
}

/// Checks that one process can hold `connections` sockets (each costing
/// `fds_per_connection` descriptors). `Err` says plainly what the limit is and
/// what to do instead.
pub fn check_file_budget(connections: u64, fds_per_connection: u64) -> Result<(), String> {
    let limits = FileLimits::current();
    let Some(budget) = limits.connection_budget(fds_per_connection) else {
        return Ok(());
    };
    if connections <= budget {
        return Ok(());
    }
    let soft = limits.soft.unwrap_or(0);
    let mut msg = String::new();
    let _ = write!(
        msg,
        "{connections} connections need about {} open files in this process, but its \
         open-file limit is {soft} (soft)",
        connections * fds_per_connection + FD_RESERVE
    );
    match limits.hard {
        Some(hard) if hard > soft => {
            let _ = write!(
                msg,
                " / {hard} (hard): raise it with `ulimit -n {hard}` first, or"
            );
        }
        Some(hard) => {
            let _ = write!(msg, " / {hard} (hard, which cannot be raised here):");
        }
        None => msg.push(':'),
    }
    if fds_per_connection > 1 {
        let _ = write!(
            msg,
            " the server runs in this process, so each connection costs {fds_per_connection} \
             descriptors here: start it separately (--spawn-server, or --server with a server \
             of its own) and"
        );
    }
    // Split with the server elsewhere: one descriptor per connection.
    let per_process = limits.connection_budget(1).unwrap_or(budget).max(1);
    let processes = connections.div_ceil(per_process);
    if processes > 1 {
        let _ = write!(
            msg,
            " split the load over several processes with `--processes {processes}` (at most \
             {per_process} connections each) or several invocations"
        );
    } else {
        let _ = write!(msg, " the load fits in one process then");
    }
    Err(msg)
}

/// The kernel's ephemeral port range (`ip_local_port_range`): how many
/// outgoing connections one source address can have to one server.
pub fn ephemeral_ports() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    parse_port_range(&text)
}

/// Parses `"32768\t60999"` into the number of ports in the range.
pub fn parse_port_range(text: &str) -> Option<u64> {
    let mut it = text.split_whitespace().map(|v| v.parse::<u64>().ok());
    let lo = it.next()??;
    let hi = it.next()??;
    (hi >= lo).then(|| hi - lo + 1)
}

/// Checks that `connections` fit in the ephemeral ports of `sources` source
/// addresses.
pub fn check_ports(connections: u64, sources: usize) -> Result<(), String> {
    let Some(ports) = ephemeral_ports() else {
        return Ok(());
    };
    // Some ports are in use already (the server's, HTTP calls, other
    // programs): keep a margin.
    let usable = ports.saturating_sub(512) * sources as u64;
    if connections <= usable {
        return Ok(());
    }
    let needed = connections.div_ceil(ports.saturating_sub(512).max(1));
    Err(format!(
        "{connections} connections need more than the {ports} ephemeral ports of {sources} \
         source address(es) ({usable} usable): pass at least {needed} loopback addresses, e.g. \
         --source-ips {}",
        (1..=needed)
            .map(|i| format!("127.0.0.{i}"))
            .collect::<Vec<_>>()
            .join(",")
    ))
}

/// Resident memory of process `pid` in KiB (`VmRSS` of `/proc/<pid>/status`).
pub fn vm_rss_kib(pid: u32) -> std::io::Result<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    parse_vm_rss(&text).ok_or_else(|| std::io::Error::other(format!("no VmRSS for pid {pid}")))
}

/// The open-file limits of process `pid` (`/proc/<pid>/limits`).
pub fn file_limits_of(pid: u32) -> Option<FileLimits> {
    std::fs::read_to_string(format!("/proc/{pid}/limits"))
        .ok()
        .map(|t| FileLimits::parse(&t))
}

/// Parses the `VmRSS:  12345 kB` line of `/proc/<pid>/status`.
pub fn parse_vm_rss(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("VmRSS:"))?;
    line["VmRSS:".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_limits() {
        let text = "Limit                     Soft Limit           Hard Limit           Units     \n\
                    Max cpu time              unlimited            unlimited            seconds   \n\
                    Max open files            1024                 20000                files     \n";
        let l = FileLimits::parse(text);
        assert_eq!(l.soft, Some(1024));
        assert_eq!(l.hard, Some(20000));
        assert_eq!(l.connection_budget(1), Some(768));
        assert_eq!(l.connection_budget(2), Some(384));
        let unl = FileLimits::parse("Max open files unlimited unlimited files");
        assert_eq!(unl, FileLimits::default());
    }

    #[test]
    fn parses_rss_and_ports() {
        assert_eq!(parse_vm_rss("Name:\tx\nVmRSS:\t  51234 kB\n"), Some(51234));
        assert_eq!(parse_vm_rss("Name:\tx\n"), None);
        assert_eq!(parse_port_range("32768\t60999\n"), Some(28232));
        assert_eq!(parse_port_range("x"), None);
    }

    #[test]
    fn budget_message_is_plain() {
        let limits = FileLimits::current();
        if let Some(budget) = limits.connection_budget(1) {
            let msg = check_file_budget(budget + 10, 1).unwrap_err();
            assert!(msg.contains("--processes"), "{msg}");
            assert!(check_file_budget(budget, 1).is_ok());
        }
    }
}
