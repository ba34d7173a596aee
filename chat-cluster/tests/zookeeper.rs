//! The discovery conformance suite on a real ZooKeeper
//! (`CHAT_TEST_ZOOKEEPER`, default 127.0.0.1:2181; its minimum session
//! timeout must allow 2 s), under a fresh path per run.

#![cfg(feature = "zookeeper")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chat_cluster::zookeeper::{ZooKeeperDiscovery, ZooKeeperDiscoveryConfig};
use chat_conformance::discovery::{Registries, TestClient};

fn connect() -> String {
    std::env::var("CHAT_TEST_ZOOKEEPER").unwrap_or_else(|_| "127.0.0.1:2181".into())
}

struct ZooKeeper {
    path: String,
}

#[async_trait]
impl Registries for ZooKeeper {
    async fn client(&self) -> TestClient {
        let mut config = ZooKeeperDiscoveryConfig::new(connect(), &self.path);
        config.session_timeout = Duration::from_millis(self.min_ttl_ms());
        let d = ZooKeeperDiscovery::connect(config)
            .await
            .expect("connect to ZooKeeper");
        let abandoned = d.clone();
        TestClient {
            discovery: Arc::new(d),
            kill: Box::new(move || Box::pin(async move { abandoned.abandon().await })),
        }
    }

    fn min_ttl_ms(&self) -> u64 {
        2_000
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zookeeper_discovery_conformance() {
    let zk = ZooKeeper {
        path: format!("/test-{}", uuid::Uuid::new_v4().simple()),
    };
    chat_conformance::discovery::run_all(&zk).await;
}
