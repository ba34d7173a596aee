//! Every suite against the in-memory implementations of `chat_core::memory`.

use std::sync::Arc;

use async_trait::async_trait;
use chat_conformance::bus::{BusNodes, TestNode};
use chat_conformance::discovery::{Registries, TestClient};
use chat_conformance::presence::PresenceStores;
use chat_core::memory::{MemoryBus, MemoryBusHub, MemoryDiscovery, MemoryPresence};
use chat_core::PresenceTracker;

struct Hub(MemoryBusHub);

#[async_trait]
impl BusNodes for Hub {
    async fn node(&self) -> TestNode {
        let bus: Arc<MemoryBus> = Arc::new(self.0.node());
        let killed = bus.clone();
        TestNode {
            bus,
            kill: Box::new(move || Box::pin(async move { killed.crash() })),
        }
    }
}

#[tokio::test]
async fn memory_bus() {
    chat_conformance::bus::run_all(&Hub(MemoryBusHub::new())).await;
}

struct Presences;

#[async_trait]
impl PresenceStores for Presences {
    async fn trackers(&self, timeout_ms: u64, n: usize) -> Vec<Arc<dyn PresenceTracker>> {
        let first = MemoryPresence::new(timeout_ms);
        let mut all: Vec<Arc<dyn PresenceTracker>> = Vec::new();
        for _ in 1..n {
            all.push(Arc::new(first.handle()));
        }
        all.push(Arc::new(first));
        all
    }
}

#[tokio::test]
async fn memory_presence() {
    chat_conformance::presence::run_all(&Presences).await;
}

/// One registry on the system clock; each client a handle on it.
struct Registry(MemoryDiscovery);

#[async_trait]
impl Registries for Registry {
    async fn client(&self) -> TestClient {
        TestClient {
            discovery: Arc::new(self.0.handle()),
            // A memory client has nothing running: once its owner stops
            // refreshing, its lease simply runs out.
            kill: Box::new(|| Box::pin(async {})),
        }
    }

    fn min_ttl_ms(&self) -> u64 {
        500
    }
}

#[tokio::test]
async fn memory_discovery() {
    chat_conformance::discovery::run_all(&Registry(MemoryDiscovery::default())).await;
}
