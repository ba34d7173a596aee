//! A gap in live delivery reaches every session as a `resync` event: the
//! bus tells the node its broker connection broke and is back, and the node
//! tells each of its connections to sync from its cursor. (The same against
//! a real NATS restarted under two server processes is in `cluster.rs`.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;

use chat_core::memory::MemoryBus;
use chat_core::protocol::{Event, ServerFrame};
use chat_core::DeviceId;
use chat_server::ChatServer;
use common::*;

#[tokio::test]
async fn a_bus_gap_sends_resync_to_every_session() {
    let bus = Arc::new(MemoryBus::default());
    let ts = start_with(ChatServer::builder(test_config()).bus(bus.clone())).await;
    let http = Http::new(&ts.http);
    let alice = http.signup("alice").await;
    let bob = http.signup("bob").await;
    let mut sessions = vec![
        raw_connect(&ts, &alice.token, DeviceId::new_random()).await,
        raw_connect(&ts, &alice.token, DeviceId::new_random()).await,
        raw_connect(&ts, &bob.token, DeviceId::new_random()).await,
    ];
    bus.simulate_gap();
    for s in &mut sessions {
        assert_eq!(
            next_frame(&mut s.ws).await,
            ServerFrame::Event(Event::Resync {}),
            "each session is told to sync"
        );
    }
    ts.stop().await;
}
