//! Addresses: URL parsing without a URL crate, the loopback-only rule, and
//! round-robin source addresses.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::error::{BenchError, Result};

/// The parts of an `http://` or `ws://` URL the tool needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// `http`, `https`, `ws` or `wss`.
    pub scheme: String,
    /// Host name or address (IPv6 without brackets).
    pub host: String,
    /// Port (the scheme's default if absent).
    pub port: u16,
    /// Path and query, at least `/`.
    pub path: String,
}

impl Endpoint {
    /// Parses `scheme://host[:port][/path]`.
    pub fn parse(url: &str) -> Result<Self> {
        let bad = |why: &str| BenchError::plan(format!("invalid URL {url:?}: {why}"));
        let (scheme, rest) = url.split_once("://").ok_or_else(|| bad("no scheme"))?;
        let scheme = scheme.to_ascii_lowercase();
        let default_port = match scheme.as_str() {
            "http" | "ws" => 80,
            "https" | "wss" => 443,
            _ => return Err(bad("scheme must be http or ws")),
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, after) = v6.split_once(']').ok_or_else(|| bad("unclosed ["))?;
            let port = match after.strip_prefix(':') {
                Some(p) => p.parse().map_err(|_| bad("bad port"))?,
                None => default_port,
            };
            (h.to_owned(), port)
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h.to_owned(), p.parse().map_err(|_| bad("bad port"))?),
                None => (authority.to_owned(), default_port),
            }
        };
        if host.is_empty() {
            return Err(bad("no host"));
        }
        Ok(Self {
            scheme,
            host,
            port,
            path: path.to_owned(),
        })
    }

    /// Resolves the host and checks that every address is loopback: the tool
    /// only ever loads this machine. Prefers an IPv4 address.
    pub async fn loopback_addr(&self) -> Result<SocketAddr> {
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((self.host.as_str(), self.port))
            .await
            .map_err(|e| BenchError::plan(format!("cannot resolve {}: {e}", self.host)))?
            .collect();
        if addrs.is_empty() {
            return Err(BenchError::plan(format!(
                "{} resolves to nothing",
                self.host
            )));
        }
        if let Some(bad) = addrs.iter().find(|a| !a.ip().is_loopback()) {
            return Err(BenchError::plan(format!(
                "{} resolves to {}, which is not a loopback address: chat-bench only loads \
                 servers on this machine (127.0.0.0/8 or ::1)",
                self.host,
                bad.ip()
            )));
        }
        Ok(addrs
            .iter()
            .find(|a| a.is_ipv4())
            .copied()
            .unwrap_or(addrs[0]))
    }
}

/// Parses `--source-ips 127.0.0.1,127.0.0.2`: every address must be in
/// 127.0.0.0/8.
pub fn parse_source_ips(list: &str) -> Result<Vec<IpAddr>> {
    let mut out = Vec::new();
    for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let ip: Ipv4Addr = item.parse().map_err(|_| {
            BenchError::plan(format!("--source-ips: {item:?} is not an IPv4 address"))
        })?;
        if !ip.is_loopback() {
            return Err(BenchError::plan(format!(
                "--source-ips: {ip} is not in 127.0.0.0/8; only loopback addresses are allowed"
            )));
        }
        out.push(IpAddr::V4(ip));
    }
    Ok(out)
}

/// Hands out source addresses round-robin; empty means "let the kernel
/// choose".
#[derive(Debug, Default)]
pub struct SourceIps {
    ips: Vec<IpAddr>,
    next: AtomicUsize,
}

impl SourceIps {
    /// Round-robin over `ips`.
    pub fn new(ips: Vec<IpAddr>) -> Self {
        Self {
            ips,
            next: AtomicUsize::new(0),
        }
    }

    /// How many addresses (at least 1: the kernel's choice counts as one).
    pub fn count(&self) -> usize {
        self.ips.len().max(1)
    }

    /// The next address, or `None` when none was given.
    pub fn next(&self) -> Option<IpAddr> {
        if self.ips.is_empty() {
            return None;
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        Some(self.ips[i % self.ips.len()])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls() {
        let e = Endpoint::parse("http://127.0.0.1:8080").unwrap();
        assert_eq!(
            (e.host.as_str(), e.port, e.path.as_str()),
            ("127.0.0.1", 8080, "/")
        );
        let e = Endpoint::parse("ws://localhost:9/v1/ws").unwrap();
        assert_eq!(
            (e.host.as_str(), e.port, e.path.as_str()),
            ("localhost", 9, "/v1/ws")
        );
        let e = Endpoint::parse("ws://[::1]:7/x").unwrap();
        assert_eq!((e.host.as_str(), e.port), ("::1", 7));
        assert_eq!(Endpoint::parse("http://h").unwrap().port, 80);
        assert!(Endpoint::parse("ftp://h").is_err());
        assert!(Endpoint::parse("127.0.0.1:80").is_err());
    }

    #[test]
    fn only_loopback_sources() {
        assert_eq!(parse_source_ips("127.0.0.1, 127.0.0.2").unwrap().len(), 2);
        assert!(parse_source_ips("10.0.0.1").is_err());
        assert!(parse_source_ips("nope").is_err());
        let s = SourceIps::new(parse_source_ips("127.0.0.1,127.0.0.2").unwrap());
        let a = s.next();
        let b = s.next();
        assert_ne!(a, b);
        assert_eq!(s.next(), a);
    }

    #[tokio::test]
    async fn refuses_non_loopback_hosts() {
        let e = Endpoint::parse("http://127.0.0.9:1").unwrap();
        assert!(e.loopback_addr().await.is_ok());
        let e = Endpoint::parse("http://192.0.2.1:1").unwrap();
        assert!(e.loopback_addr().await.is_err());
    }
}
