//! The presence and bus conformance suites on a real Redis
//! (`CHAT_TEST_REDIS_URL`, default 127.0.0.1:6379), under a fresh key prefix
//! per run.

#![cfg(feature = "redis")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use async_trait::async_trait;
use chat_cluster::redis::{RedisBus, RedisBusConfig, RedisPresence, RedisPresenceConfig};
use chat_conformance::bus::{BusNodes, TestNode};
use chat_conformance::presence::PresenceStores;
use chat_core::PresenceTracker;
use tokio::sync::Mutex;

fn url() -> String {
    std::env::var("CHAT_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// Each call makes trackers on a fresh prefix; all are cleared at the end.
#[derive(Default)]
struct Stores {
    made: Mutex<Vec<RedisPresence>>,
}

#[async_trait]
impl PresenceStores for Stores {
    async fn trackers(&self, timeout_ms: u64, n: usize) -> Vec<Arc<dyn PresenceTracker>> {
        let mut config =
            RedisPresenceConfig::new(url(), format!("test-{}", uuid::Uuid::new_v4().simple()));
        config.timeout = std::time::Duration::from_millis(timeout_ms);
        let first = RedisPresence::connect(config)
            .await
            .expect("connect to Redis");
        self.made.lock().await.push(first.clone());
        let mut all: Vec<Arc<dyn PresenceTracker>> = Vec::new();
        for _ in 1..n {
            all.push(Arc::new(first.handle()));
        }
        all.push(Arc::new(first));
        all
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_presence_conformance() {
    let stores = Stores::default();
    chat_conformance::presence::run_all(&stores).await;
    for p in stores.made.lock().await.iter() {
        p.clear().await.expect("clean up");
    }
}

struct Buses {
    prefix: String,
}

#[async_trait]
impl BusNodes for Buses {
    async fn node(&self) -> TestNode {
        let bus = RedisBus::connect(RedisBusConfig::new(url(), &self.prefix))
            .await
            .expect("connect to Redis");
        let killed = bus.clone();
        TestNode {
            bus: Arc::new(bus),
            kill: Box::new(move || Box::pin(async move { killed.close() })),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_bus_conformance() {
    let prefix = format!("test-{}", uuid::Uuid::new_v4().simple());
    chat_conformance::bus::run_all(&Buses {
        prefix: prefix.clone(),
    })
    .await;
    // The route sets left by the suite's users.
    let mut config = RedisPresenceConfig::new(url(), prefix);
    config.timeout = std::time::Duration::from_secs(1);
    RedisPresence::connect(config)
        .await
        .unwrap()
        .clear()
        .await
        .unwrap();
}
