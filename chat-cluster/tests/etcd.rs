//! The discovery conformance suite on a real etcd
//! (`CHAT_TEST_ETCD_ENDPOINTS`, default http://127.0.0.1:2379), under a
//! fresh key prefix per run.

#![cfg(feature = "etcd")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use async_trait::async_trait;
use chat_cluster::etcd::{EtcdDiscovery, EtcdDiscoveryConfig};
use chat_conformance::discovery::{Registries, TestClient};

fn endpoints() -> Vec<String> {
    std::env::var("CHAT_TEST_ETCD_ENDPOINTS")
        .unwrap_or_else(|_| "http://127.0.0.1:2379".into())
        .split(',')
        .map(str::to_owned)
        .collect()
}

struct Etcd {
    prefix: String,
}

#[async_trait]
impl Registries for Etcd {
    async fn client(&self) -> TestClient {
        let d = EtcdDiscovery::connect(EtcdDiscoveryConfig::new(endpoints(), &self.prefix))
            .await
            .expect("connect to etcd");
        let abandoned = d.clone();
        TestClient {
            discovery: Arc::new(d),
            kill: Box::new(move || Box::pin(async move { abandoned.abandon() })),
        }
    }

    fn min_ttl_ms(&self) -> u64 {
        2_000
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_discovery_conformance() {
    let etcd = Etcd {
        prefix: format!("test-{}", uuid::Uuid::new_v4().simple()),
    };
    chat_conformance::discovery::run_all(&etcd).await;
}
