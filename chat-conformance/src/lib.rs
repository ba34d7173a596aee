//! # chat-conformance
//!
//! The conformance suites of the chat SDK's cluster traits, as public async
//! functions in the style of `object_store`'s integration suite: each takes
//! a factory for the backend under test and asserts every clause of the
//! trait's `# Contract` in `chat-core`, the multi-node clauses included.
//! A backend is done when its suite passes against the real engine.
//!
//! | suite | trait | factory |
//! |---|---|---|
//! | [`bus::run_all`] | [`DeliveryBus`](chat_core::DeliveryBus) | [`bus::BusNodes`]: nodes on one shared bus |
//! | [`presence::run_all`] | [`PresenceTracker`](chat_core::PresenceTracker) | [`presence::PresenceStores`]: trackers on one fresh store |
//! | [`discovery::run_all`] | [`ServiceDiscovery`](chat_core::ServiceDiscovery) | [`discovery::Registries`]: clients of one fresh registry |
//!
//! [`engines`] starts private engine processes (NATS, Redis, etcd) that fault
//! tests may kill and restart.
//!
//! The in-memory implementations of `chat_core::memory` run every suite in
//! this crate's tests; `chat-cluster` runs them against NATS, Redis and
//! etcd. (The storage suites still live in `chat_store::conformance`.)
//!
//! ```no_run
//! use std::sync::Arc;
//! use chat_core::memory::MemoryPresence;
//! use chat_core::PresenceTracker;
//! use chat_conformance::presence::{self, PresenceStores};
//!
//! struct Memory;
//!
//! #[async_trait::async_trait]
//! impl PresenceStores for Memory {
//!     async fn trackers(&self, timeout_ms: u64, n: usize) -> Vec<Arc<dyn PresenceTracker>> {
//!         let first = MemoryPresence::new(timeout_ms);
//!         let mut all: Vec<Arc<dyn PresenceTracker>> = Vec::new();
//!         for _ in 1..n {
//!             all.push(Arc::new(first.handle()));
//!         }
//!         all.push(Arc::new(first));
//!         all
//!     }
//! }
//!
//! # async fn run() {
//! presence::run_all(&Memory).await;
//! # }
//! ```

pub mod bus;
pub mod discovery;
pub mod engines;
pub mod presence;

use std::future::Future;
use std::time::Duration;

/// Polls `check` until it returns `Some`, for at most `within`; panics with
/// `what` otherwise. For effects that cross a broker and so arrive a little
/// later (a watch, a delivery).
pub async fn eventually<T, F, Fut>(within: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {within:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
