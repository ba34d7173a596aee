//! A network namespace per server, so that a partition is a firewall rule.
//!
//! Each node gets a namespace `chatbench-{pid}-{run}-{node}` with a veth
//! pair: the host's end `cbh{pid:x}-{run:x}-{node:x}` holds `10.201.B.1/30`,
//! the node's end `10.201.B.2/30`, where the block `B` is the first one no
//! interface on the machine uses. The node listens on its end; the engines
//! (PostgreSQL, NATS, Redis, etcd), which listen on the host's loopback,
//! are reached through the harness's proxies on the host's end. Nothing is
//! routed beyond the pair: the namespace has no default route.
//!
//! A partition ([`NetNs::partition`]) is an `iptables` DROP of the node's
//! packets to the host's end on the given ports (and of the answers), in
//! the host's INPUT and OUTPUT chains: packets vanish, no connection is
//! reset, as on a real network split. Every rule carries the comment
//! `chatbench-{pid}-…`.
//!
//! Clean-up: dropping a [`NetNs`] removes its rules and its namespace
//! (which removes the veth pair). [`clean_stale`] removes namespaces,
//! veths and rules left by a run whose process is gone (a killed test).
//!
//! Needs root, `ip` (iproute2) with netns support and `iptables`;
//! [`check_available`] says plainly what is missing.

use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;

use crate::error::{BenchError, Result};

/// Prefix of every namespace name.
const NS_PREFIX: &str = "chatbench-";
/// Prefix of every host-side veth name.
const VETH_PREFIX: &str = "cbh";
/// Comment prefix of every iptables rule.
const RULE_PREFIX: &str = "chatbench-";
/// The harness's /30 blocks are taken from 10.201.0.0/16.
const NET: [u8; 2] = [10, 201];

/// Namespaces made by this process so far (part of their names).
static RUNS: AtomicU32 = AtomicU32::new(0);
/// One namespace set up at a time in this process (address choice).
static SETUP: Mutex<()> = Mutex::new(());

/// Runs `program args`; its stderr in the error.
fn run(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program).args(args).output().map_err(|e| {
        BenchError::setup(format!(
            "cannot run `{program}`: {e} (network namespaces need iproute2 and iptables)"
        ))
    })?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(BenchError::setup(format!(
            "`{program} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// Whether this process runs as root (uid 0).
fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

/// Checks that namespaces and firewall rules can be made here; the error
/// says what is missing.
pub fn check_available() -> Result<()> {
    if !is_root() {
        return Err(BenchError::plan(
            "a network namespace per server needs root (ip netns, veth, iptables): run as root",
        ));
    }
    run("ip", &["netns", "list"]).map_err(|e| {
        BenchError::plan(format!(
            "a network namespace per server needs `ip netns` (iproute2): {e}"
        ))
    })?;
    run("iptables", &["-w", "-S", "INPUT"]).map_err(|e| {
        BenchError::plan(format!(
            "a partition needs `iptables` (Debian: apt-get install iptables): {e}"
        ))
    })?;
    Ok(())
}

/// Whether process `pid` is alive.
fn alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// The pid in a name `{prefix}{pid}-…` (decimal) or `cbh{pid:x}-…` (hex).
fn pid_in(name: &str, prefix: &str, radix: u32) -> Option<u32> {
    let rest = name.strip_prefix(prefix)?;
    let pid = rest.split('-').next()?;
    u32::from_str_radix(pid, radix).ok()
}

/// Removes namespaces, veths and iptables rules of the harness whose
/// process is gone (a run that was killed before it could clean up).
pub fn clean_stale() -> Result<()> {
    for line in run("ip", &["netns", "list"])?.lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        if let Some(pid) = pid_in(name, NS_PREFIX, 10) {
            if !alive(pid) {
                let _ = run("ip", &["netns", "delete", name]);
            }
        }
    }
    for line in run("ip", &["-o", "link", "show", "type", "veth"])?.lines() {
        // `12: cbh1a2b-0-1@if11: <...`
        let Some(name) = line.split(": ").nth(1) else {
            continue;
        };
        let name = name.split('@').next().unwrap_or(name);
        if let Some(pid) = pid_in(name, VETH_PREFIX, 16) {
            if !alive(pid) {
                let _ = run("ip", &["link", "delete", name]);
            }
        }
    }
    for chain in ["INPUT", "OUTPUT"] {
        for rule in run("iptables", &["-w", "-S", chain])?.lines() {
            let Some(comment) = rule
                .split("--comment ")
                .nth(1)
                .and_then(|c| c.split_whitespace().next())
            else {
                continue;
            };
            let comment = comment.trim_matches('"');
            if let Some(pid) = pid_in(comment, RULE_PREFIX, 10) {
                if !alive(pid) {
                    delete_rule(rule);
                }
            }
        }
    }
    Ok(())
}

/// Deletes the rule that `iptables -S` printed as `rule` (`-A …`).
fn delete_rule(rule: &str) {
    let Some(spec) = rule.strip_prefix("-A ") else {
        return;
    };
    let mut args = vec!["-w", "-D"];
    args.extend(spec.split_whitespace().map(|a| a.trim_matches('"')));
    let _ = run("iptables", &args);
}

/// One node's namespace and veth pair. See the module docs.
#[derive(Debug)]
pub struct NetNs {
    name: String,
    host_if: String,
    host_ip: Ipv4Addr,
    node_ip: Ipv4Addr,
    tag: String,
    /// Rules in force (each an `iptables` rule spec after `-I`/`-D`).
    rules: Mutex<Vec<Vec<String>>>,
}

impl NetNs {
    /// Makes the namespace of node `node` with its veth pair, addresses
    /// and loopback up.
    pub fn create(node: u16) -> Result<Self> {
        let _one = SETUP.lock().unwrap_or_else(|e| e.into_inner());
        let pid = std::process::id();
        let k = RUNS.fetch_add(1, Ordering::Relaxed);
        let name = format!("{NS_PREFIX}{pid}-{k}-{node}");
        // veth names have at most 15 characters.
        let host_if = format!("{VETH_PREFIX}{pid:x}-{:x}-{:x}", k % 16, node % 256);
        let node_if = "eth0";
        let block = free_block()?;
        let host_ip = Ipv4Addr::new(
            NET[0],
            NET[1],
            (block / 64) as u8,
            (block % 64 * 4 + 1) as u8,
        );
        let node_ip = Ipv4Addr::new(
            NET[0],
            NET[1],
            (block / 64) as u8,
            (block % 64 * 4 + 2) as u8,
        );
        let ns = Self {
            tag: format!("{RULE_PREFIX}{pid}-{k}-{node}"),
            name,
            host_if,
            host_ip,
            node_ip,
            rules: Mutex::new(Vec::new()),
        };
        let tmp_if = format!("{}n", ns.host_if);
        let steps: Vec<Vec<String>> = vec![
            vec!["netns".into(), "add".into(), ns.name.clone()],
            vec![
                "link".into(),
                "add".into(),
                ns.host_if.clone(),
                "type".into(),
                "veth".into(),
                "peer".into(),
                "name".into(),
                tmp_if.clone(),
            ],
            vec![
                "link".into(),
                "set".into(),
                tmp_if.clone(),
                "netns".into(),
                ns.name.clone(),
            ],
            vec![
                "addr".into(),
                "add".into(),
                format!("{host_ip}/30"),
                "dev".into(),
                ns.host_if.clone(),
            ],
            vec!["link".into(), "set".into(), ns.host_if.clone(), "up".into()],
        ];
        for step in &steps {
            let args: Vec<&str> = step.iter().map(String::as_str).collect();
            run("ip", &args)?;
        }
        let inside: Vec<Vec<String>> = vec![
            vec![
                "link".into(),
                "set".into(),
                tmp_if,
                "name".into(),
                node_if.into(),
            ],
            vec![
                "addr".into(),
                "add".into(),
                format!("{node_ip}/30"),
                "dev".into(),
                node_if.into(),
            ],
            vec!["link".into(), "set".into(), node_if.into(), "up".into()],
            vec!["link".into(), "set".into(), "lo".into(), "up".into()],
        ];
        for step in &inside {
            let mut args = vec!["netns", "exec", ns.name.as_str(), "ip"];
            args.extend(step.iter().map(String::as_str));
            run("ip", &args)?;
        }
        Ok(ns)
    }

    /// The namespace's name (`ip netns exec NAME …`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The host's end of the pair: where the node reaches the engines.
    pub fn host_ip(&self) -> Ipv4Addr {
        self.host_ip
    }

    /// The node's address.
    pub fn node_ip(&self) -> Ipv4Addr {
        self.node_ip
    }

    /// Drops every packet between the node and the host's end on `ports`
    /// (services on the host's end): both directions, silently.
    pub fn partition(&self, ports: &[u16]) -> Result<()> {
        let mut rules = self.rules.lock().unwrap_or_else(|e| e.into_inner());
        for port in ports {
            let port = port.to_string();
            for (chain, dir, side) in [("INPUT", "-i", "--dport"), ("OUTPUT", "-o", "--sport")] {
                let spec: Vec<String> = [
                    chain,
                    dir,
                    &self.host_if,
                    "-p",
                    "tcp",
                    side,
                    &port,
                    "-m",
                    "comment",
                    "--comment",
                    &self.tag,
                    "-j",
                    "DROP",
                ]
                .iter()
                .map(|s| s.to_string())
                .collect();
                let mut args = vec!["-w", "-I"];
                args.extend(spec.iter().map(String::as_str));
                run("iptables", &args)?;
                rules.push(spec);
            }
        }
        Ok(())
    }

    /// Removes every rule of [`partition`](Self::partition).
    pub fn heal(&self) -> Result<()> {
        let mut rules = self.rules.lock().unwrap_or_else(|e| e.into_inner());
        let mut first_error = None;
        for spec in rules.drain(..) {
            let mut args = vec!["-w", "-D"];
            args.extend(spec.iter().map(String::as_str));
            if let Err(e) = run("iptables", &args) {
                first_error.get_or_insert(e);
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Whether a partition is in force.
    pub fn is_partitioned(&self) -> bool {
        !self
            .rules
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_empty()
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = self.heal();
        let _ = run("ip", &["netns", "delete", &self.name]);
        // Gone with the namespace once its last process has exited; a
        // process still running keeps it, so remove the host's end too.
        let _ = run("ip", &["link", "delete", &self.host_if]);
    }
}

/// The first /30 block of 10.201.0.0/16 that no interface here uses.
fn free_block() -> Result<u32> {
    let used: Vec<Ipv4Addr> = run("ip", &["-o", "-4", "addr", "show"])?
        .lines()
        .filter_map(|l| {
            let inet = l.split_whitespace().skip_while(|w| *w != "inet").nth(1)?;
            inet.split('/').next()?.parse().ok()
        })
        .collect();
    (0..16384u32)
        .find(|b| {
            !used.iter().any(|ip| {
                let o = ip.octets();
                o[0] == NET[0] && o[1] == NET[1] && u32::from(o[2]) * 64 + u32::from(o[3]) / 4 == *b
            })
        })
        .ok_or_else(|| BenchError::setup("no free /30 block left in 10.201.0.0/16"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pids_are_read_from_names() {
        assert_eq!(pid_in("chatbench-1234-0-1", NS_PREFIX, 10), Some(1234));
        assert_eq!(pid_in("cbh4d2-0-1", VETH_PREFIX, 16), Some(1234));
        assert_eq!(pid_in("other-1234", NS_PREFIX, 10), None);
        assert_eq!(pid_in("chatbench-x-0-1", NS_PREFIX, 10), None);
    }
}
