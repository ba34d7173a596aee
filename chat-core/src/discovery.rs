//! Service discovery: which chat servers exist and which one a client
//! should connect to.

use std::fmt::Debug;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::error::Result;

/// A chat server as registered in discovery.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerInfo {
    /// Unique server id.
    pub id: String,
    /// WebSocket URL clients connect to, e.g. `ws://10.0.0.5:8080/v1/ws`.
    pub ws_url: String,
    /// Base URL of the server's HTTP API.
    pub http_url: String,
    /// Location label (region or zone) used to prefer nearby servers.
    #[serde(default)]
    pub region: Option<String>,
    /// Connections the server is sized for.
    pub capacity: u32,
    /// Connections it holds now.
    pub connections: u32,
}

impl ServerInfo {
    /// Fraction of capacity in use (1.0 or more = full).
    pub fn load(&self) -> f64 {
        if self.capacity == 0 {
            return f64::INFINITY;
        }
        self.connections as f64 / self.capacity as f64
    }
}

/// The registry of chat servers.
///
/// # Contract
///
/// * [`register`](Self::register) inserts or replaces the entry for `info.id`
///   and gives it a lease of `ttl_ms`; a server re-registers (with its current
///   connection count) well within the lease. An entry whose lease ran out is
///   not returned by [`servers`](Self::servers): a dead server disappears by
///   itself and its clients, asking `route` again, move elsewhere.
/// * [`deregister`](Self::deregister) removes the entry at once (graceful
///   shutdown); removing an unknown id is not an error.
#[async_trait]
pub trait ServiceDiscovery: Send + Sync + Debug + 'static {
    /// Registers or refreshes a server with a lease.
    async fn register(&self, info: ServerInfo, ttl_ms: u64) -> Result<()>;

    /// Removes a server.
    async fn deregister(&self, id: &str) -> Result<()>;

    /// The servers whose lease is current.
    async fn servers(&self) -> Result<Vec<ServerInfo>>;
}

/// Picks the best server for a client: not full, in the client's region if
/// any such server exists, and the least loaded of those (ties broken by id
/// so the choice is deterministic).
pub fn pick_server<'a>(servers: &'a [ServerInfo], region: Option<&str>) -> Option<&'a ServerInfo> {
    let open = || servers.iter().filter(|s| s.load() < 1.0);
    let in_region: Vec<_> = match region {
        Some(r) => open().filter(|s| s.region.as_deref() == Some(r)).collect(),
        None => Vec::new(),
    };
    let candidates = if in_region.is_empty() {
        open().collect()
    } else {
        in_region
    };
    candidates
        .into_iter()
        .min_by(|a, b| a.load().total_cmp(&b.load()).then_with(|| a.id.cmp(&b.id)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(id: &str, region: &str, capacity: u32, connections: u32) -> ServerInfo {
        ServerInfo {
            id: id.into(),
            ws_url: format!("ws://{id}"),
            http_url: format!("http://{id}"),
            region: Some(region.into()),
            capacity,
            connections,
        }
    }

    #[test]
    fn picks_least_loaded_in_region_and_skips_full() {
        let servers = vec![
            server("a", "eu", 100, 10),
            server("b", "eu", 100, 5),
            server("c", "us", 100, 0),
            server("d", "eu", 100, 100),
        ];
        assert_eq!(pick_server(&servers, Some("eu")).unwrap().id, "b");
        assert_eq!(pick_server(&servers, Some("us")).unwrap().id, "c");
        // Unknown region: least loaded anywhere.
        assert_eq!(pick_server(&servers, Some("ap")).unwrap().id, "c");
        assert_eq!(pick_server(&servers, None).unwrap().id, "c");
        assert!(pick_server(&[server("x", "eu", 1, 1)], None).is_none());
    }
}
