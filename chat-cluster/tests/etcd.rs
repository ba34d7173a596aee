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

/// Regression (found by the harness's partition test, chat-bench
/// tests/faults.rs): a server cut off from etcd past its lease got "lease
/// not found" for every keep-alive after the cut healed, an error it
/// returned instead of granting a new lease, so it never registered again
/// and `route` never named it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_that_ran_out_is_replaced_at_the_next_register() {
    use chat_core::{ServerInfo, ServiceDiscovery};
    let prefix = format!("test-{}", uuid::Uuid::new_v4().simple());
    let d = EtcdDiscovery::connect(EtcdDiscoveryConfig::new(endpoints(), &prefix))
        .await
        .unwrap();
    let info = ServerInfo {
        id: "lapsed".into(),
        node_id: 7,
        ws_url: "ws://lapsed.test/v1/ws".into(),
        http_url: "http://lapsed.test".into(),
        region: None,
        capacity: 100,
        connections: 0,
    };
    d.register(info.clone(), 2_000).await.unwrap();
    // The lease runs out behind the client's back (as over a partition).
    let mut etcd = etcd_client::Client::connect(endpoints(), None)
        .await
        .unwrap();
    let key = format!("/{prefix}/servers/lapsed");
    let got = etcd.get(key.as_str(), None).await.unwrap();
    let lease = got.kvs()[0].lease();
    etcd.lease_revoke(lease).await.unwrap();
    assert!(etcd.get(key.as_str(), None).await.unwrap().kvs().is_empty());

    d.register(info.clone(), 2_000)
        .await
        .expect("registers again under a new lease");
    let got = etcd.get(key.as_str(), None).await.unwrap();
    assert_eq!(got.kvs().len(), 1, "the entry is back");
    assert_ne!(got.kvs()[0].lease(), lease);
    let other = EtcdDiscovery::connect(EtcdDiscoveryConfig::new(endpoints(), &prefix))
        .await
        .unwrap();
    let ids: Vec<String> = other
        .servers()
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.id)
        .collect();
    assert_eq!(ids, vec!["lapsed".to_string()]);
    d.deregister("lapsed").await.unwrap();
}
