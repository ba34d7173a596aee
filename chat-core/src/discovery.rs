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
    /// The server's Snowflake node id (it is in every message id the server
    /// makes), unique among live servers.
    #[serde(default)]
    pub node_id: u16,
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

    /// Connections it can still take.
    pub fn free(&self) -> u32 {
        self.capacity.saturating_sub(self.connections)
    }
}

/// The registry of chat servers.
///
/// A `ServiceDiscovery` value is one client of the registry: each chat
/// server holds its own, and its registrations live as long as that client
/// keeps them alive.
///
/// # Contract
///
/// * [`register`](Self::register) inserts or replaces the entry for `info.id`
///   and gives it a lease of `ttl_ms`; a server re-registers (with its current
///   connection count) well within the lease. An entry whose lease ran out is
///   not returned by [`servers`](Self::servers): a dead server disappears by
///   itself and its clients, asking `route` again, move elsewhere.
/// * **Unique ids**: a live entry's `id` and `node_id` belong to the client
///   that registered it. `register` from another client (another process,
///   or the same process restarted) with the same `id`, or with the same
///   `node_id` under another id, fails with [`Error::AlreadyExists`] until
///   the holder deregisters or its lease runs out. Two servers never both
///   advertise one node id, so they never make the same message id.
/// * [`deregister`](Self::deregister) removes this client's entry at once
///   (graceful shutdown); removing an unknown id, or another client's entry,
///   does nothing and is not an error.
/// * [`servers`](Self::servers) may answer from a local view that a watch
///   keeps current, so that `route` costs no round trip: an entry registered
///   or removed through one client shows in every other client's view within
///   a short propagation delay. While the registry cannot be reached the
///   view is the last one known, and `servers` still answers.
///
/// [`Error::AlreadyExists`]: crate::Error::AlreadyExists
#[async_trait]
pub trait ServiceDiscovery: Send + Sync + Debug + 'static {
    /// Registers or refreshes a server with a lease.
    async fn register(&self, info: ServerInfo, ttl_ms: u64) -> Result<()>;

    /// Removes a server.
    async fn deregister(&self, id: &str) -> Result<()>;

    /// The servers whose lease is current.
    async fn servers(&self) -> Result<Vec<ServerInfo>>;
}

/// Picks a server for a client: not full, in the client's region if any
/// such server exists, and the less loaded of two candidates drawn at
/// random with odds in proportion to their free capacity.
///
/// Discovery's view of the load is only as fresh as the last lease refresh,
/// so always taking the least loaded server would send every login between
/// two refreshes to the same one, and every client of a dead server to one
/// survivor. Two random choices ("the power of two choices") keep the
/// spread even with a stale view, and still steer towards emptier servers.
pub fn pick_server<'a>(servers: &'a [ServerInfo], region: Option<&str>) -> Option<&'a ServerInfo> {
    pick_server_with(servers, region, &mut rand::thread_rng())
}

/// [`pick_server`] with the caller's random number generator.
pub fn pick_server_with<'a, R: rand::Rng + ?Sized>(
    servers: &'a [ServerInfo],
    region: Option<&str>,
    rng: &mut R,
) -> Option<&'a ServerInfo> {
    let open = || servers.iter().filter(|s| s.load() < 1.0);
    let in_region: Vec<&ServerInfo> = match region {
        Some(r) => open().filter(|s| s.region.as_deref() == Some(r)).collect(),
        None => Vec::new(),
    };
    let mut candidates = if in_region.is_empty() {
        open().collect()
    } else {
        in_region
    };
    let first = take_weighted(&mut candidates, rng)?;
    let Some(second) = take_weighted(&mut candidates, rng) else {
        return Some(first);
    };
    Some(if second.load() < first.load() {
        second
    } else {
        first
    })
}

/// Removes and returns one of `candidates` with odds in proportion to its
/// free capacity (every candidate is open, so has some).
fn take_weighted<'a, R: rand::Rng + ?Sized>(
    candidates: &mut Vec<&'a ServerInfo>,
    rng: &mut R,
) -> Option<&'a ServerInfo> {
    let total: u64 = candidates.iter().map(|s| u64::from(s.free())).sum();
    if total == 0 {
        return None;
    }
    let mut ticket = rng.gen_range(0..total);
    let index = candidates
        .iter()
        .position(|s| {
            let free = u64::from(s.free());
            if ticket < free {
                true
            } else {
                ticket -= free;
                false
            }
        })
        .unwrap_or(0);
    Some(candidates.swap_remove(index))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn server(id: &str, region: &str, capacity: u32, connections: u32) -> ServerInfo {
        ServerInfo {
            id: id.into(),
            node_id: 0,
            ws_url: format!("ws://{id}"),
            http_url: format!("http://{id}"),
            region: Some(region.into()),
            capacity,
            connections,
        }
    }

    #[test]
    fn prefers_region_and_skips_full() {
        let servers = vec![
            server("a", "eu", 100, 10),
            server("b", "eu", 100, 5),
            server("c", "us", 100, 0),
            server("d", "eu", 100, 100),
        ];
        let mut rng = StdRng::seed_from_u64(7);
        for _ in 0..200 {
            let eu = pick_server_with(&servers, Some("eu"), &mut rng).unwrap();
            assert!(eu.id == "a" || eu.id == "b", "{}", eu.id);
            assert_eq!(
                pick_server_with(&servers, Some("us"), &mut rng).unwrap().id,
                "c"
            );
            // Unknown region or none: any open server, never the full one.
            assert_ne!(
                pick_server_with(&servers, Some("ap"), &mut rng).unwrap().id,
                "d"
            );
            assert_ne!(pick_server_with(&servers, None, &mut rng).unwrap().id, "d");
        }
        assert!(pick_server(&[server("x", "eu", 1, 1)], None).is_none());
        assert!(pick_server(&[], None).is_none());
    }

    #[test]
    fn the_less_loaded_of_two_wins() {
        // Two open servers: both are always drawn, so the emptier one wins.
        let servers = vec![server("a", "eu", 100, 90), server("b", "eu", 100, 10)];
        let mut rng = StdRng::seed_from_u64(1);
        for _ in 0..100 {
            assert_eq!(pick_server_with(&servers, None, &mut rng).unwrap().id, "b");
        }
    }

    /// Logins routed from a view that is refreshed only every `refresh`
    /// logins, as discovery's is between lease refreshes: returns the
    /// connections each server ends with.
    fn route_logins(
        mut servers: Vec<ServerInfo>,
        logins: u32,
        refresh: u32,
        rng: &mut StdRng,
    ) -> Vec<u32> {
        let mut view = servers.clone();
        for n in 0..logins {
            if n % refresh == 0 {
                view = servers.clone();
            }
            let id = pick_server_with(&view, None, rng).unwrap().id.clone();
            let s = servers.iter_mut().find(|s| s.id == id).unwrap();
            s.connections += 1;
        }
        servers.iter().map(|s| s.connections).collect()
    }

    #[test]
    fn ten_thousand_logins_spread_evenly_over_four_equal_servers() {
        let servers: Vec<_> = ["a", "b", "c", "d"]
            .iter()
            .map(|id| server(id, "eu", 100_000, 0))
            .collect();
        let mut rng = StdRng::seed_from_u64(42);
        // The view is refreshed every 1,000 logins: always taking the least
        // loaded server would put each thousand on one server.
        let counts = route_logins(servers, 10_000, 1_000, &mut rng);
        for c in &counts {
            assert!(
                (2_250..=2_750).contains(c),
                "{counts:?} is not within 10 % of even"
            );
        }
    }

    #[test]
    fn a_dead_servers_clients_spread_over_every_survivor() {
        // Three survivors at 2,500 connections each; the dead server's 2,500
        // clients log in again while the view is refreshed every 500 logins.
        let survivors: Vec<_> = ["a", "b", "c"]
            .iter()
            .map(|id| server(id, "eu", 10_000, 2_500))
            .collect();
        let mut rng = StdRng::seed_from_u64(9);
        let counts = route_logins(survivors, 2_500, 500, &mut rng);
        for c in &counts {
            let moved = c - 2_500;
            assert!(
                (2_500 / 3 * 9 / 10..=2_500 / 3 * 11 / 10).contains(&moved),
                "{counts:?}: each survivor should take about a third"
            );
        }
    }
}
