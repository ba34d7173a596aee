//! The bus conformance suite on a real NATS server with JetStream
//! (`CHAT_TEST_NATS_URL`, default 127.0.0.1:4222), under a fresh prefix per
//! run so concurrent runs never meet.

#![cfg(feature = "nats")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use async_trait::async_trait;
use chat_cluster::nats::{NatsBus, NatsBusConfig};
use chat_conformance::bus::{BusNodes, TestNode};

fn url() -> String {
    std::env::var("CHAT_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

struct Nats {
    prefix: String,
}

impl Nats {
    fn new() -> Self {
        Self {
            prefix: format!("test-{}", uuid::Uuid::new_v4().simple()),
        }
    }

    fn config(&self) -> NatsBusConfig {
        let mut c = NatsBusConfig::new(url(), &self.prefix);
        c.heartbeat = Duration::from_millis(500);
        c.dead_after = Duration::from_secs(3);
        c
    }
}

#[async_trait]
impl BusNodes for Nats {
    async fn node(&self) -> TestNode {
        let bus = NatsBus::connect(self.config())
            .await
            .expect("connect to NATS");
        let killed = bus.clone();
        TestNode {
            bus: std::sync::Arc::new(bus),
            kill: Box::new(move || Box::pin(async move { killed.close().await })),
        }
    }
}

impl Nats {
    /// Removes the run's routes bucket from the shared server.
    async fn clean_up(&self) {
        let client = async_nats::connect(url()).await.expect("connect");
        let js = async_nats::jetstream::new(client);
        let _ = js.delete_stream(format!("KV_{}-routes", self.prefix)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_bus_conformance() {
    let nats = Nats::new();
    chat_conformance::bus::run_all(&nats).await;
    nats.clean_up().await;
}
