//! The server on a real PostgreSQL whose connections die mid-send: the
//! sender gets an error reply and no acknowledgement, nothing half-written
//! shows, and a retry with the same client message id stores the message
//! exactly once once the database answers again.
//!
//! The database sits behind a TCP proxy the test can cut: cutting it closes
//! every pooled connection (as a restart or a network partition would) and
//! refuses new ones until it is restored.
#![cfg(feature = "postgres")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chat_client::{ChatClient, ClientEvent, ConnectOptions, MemoryCursorStore};
use chat_core::protocol::ErrorCode;
use chat_core::{ClientMsgId, DeviceId};
use chat_server::ChatServer;
use common::*;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// A TCP proxy to the test PostgreSQL that can be cut and restored.
struct Proxy {
    addr: SocketAddr,
    up: Arc<AtomicBool>,
    /// Cancelled to close every forwarded connection.
    live: Arc<Mutex<CancellationToken>>,
    /// Connections refused while cut.
    refused: Arc<AtomicUsize>,
}

impl Proxy {
    async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let up = Arc::new(AtomicBool::new(true));
        let live = Arc::new(Mutex::new(CancellationToken::new()));
        let refused = Arc::new(AtomicUsize::new(0));
        let (up2, live2, refused2) = (up.clone(), live.clone(), refused.clone());
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if !up2.load(Ordering::SeqCst) {
                    refused2.fetch_add(1, Ordering::SeqCst);
                    drop(client);
                    continue;
                }
                let cut = live2.lock().unwrap().clone();
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = cut.cancelled() => {}
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                    }
                });
            }
        });
        Self {
            addr,
            up,
            live,
            refused,
        }
    }

    /// Closes every connection and refuses new ones.
    fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        let mut live = self.live.lock().unwrap();
        live.cancel();
        *live = CancellationToken::new();
    }

    fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }

    /// The test database's URL, through this proxy.
    fn url(&self) -> String {
        let real = pg_url();
        let target = pg_addr();
        real.replacen(&target.to_string(), &self.addr.to_string(), 1)
    }
}

/// The `host:port` of the test PostgreSQL (as written in its URL).
fn pg_addr() -> SocketAddr {
    let url = pg_url();
    let host_port = url
        .split('@')
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .expect("CHAT_TEST_PG_URL is postgres://user@host:port/db");
    host_port.parse().expect("host:port")
}

/// How many rows of the schema's `messages` carry this client message id.
async fn stored_copies(schema: &PgSchema, key: &ClientMsgId) -> i64 {
    let (client, conn) = tokio_postgres::connect(&pg_url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client
        .query_one(
            &format!(
                "SELECT count(*) FROM \"{}\".messages WHERE client_msg_id = $1",
                schema.name
            ),
            &[&key.as_str()],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_cut_mid_send_gives_no_ack_and_a_retry_stores_once() {
    let proxy = Proxy::start(pg_addr()).await;
    let schema = PgSchema::new();
    let store = schema.store(&proxy.url()).await;
    let ts = start_with(ChatServer::builder(test_config()).storage(Arc::new(store))).await;
    let http = Http::new(&ts.http);
    let alice = http.signup("alice").await;
    let bob = http.signup("bob").await;
    let direct = http.open_direct(&alice.token, bob.user.id).await;
    let mut a = raw_connect(&ts, &alice.token, DeviceId::new_random()).await;
    let mut b = raw_connect(&ts, &bob.token, DeviceId::new_random()).await;

    // The database goes away with the pool's connections in it.
    proxy.cut();
    let key = ClientMsgId::new_random();
    let reply = a.send_msg(direct.id, key.as_str(), "hello?").await;
    let error = reply.error.expect("an error reply, not an acknowledgement");
    assert_eq!(error.code, ErrorCode::Unavailable, "{error:?}");
    assert!(error.code.is_retryable());
    // Nothing was delivered for the failed send: the next thing Bob sees is
    // the message of the retry below.

    // Back: the retry with the same key is stored once and delivered once.
    proxy.restore();
    let (id, duplicate) = sent_id(a.send_msg(direct.id, key.as_str(), "hello?").await);
    assert!(!duplicate, "the failed attempt stored nothing");
    let got = b.next_message().await;
    assert_eq!((got.id, got.client_msg_id.clone()), (id, key.clone()));
    let (again, duplicate) = sent_id(a.send_msg(direct.id, key.as_str(), "hello?").await);
    assert_eq!((again, duplicate), (id, true));
    assert_eq!(stored_copies(&schema, &key).await, 1);
    ts.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sdk_retries_through_an_outage_and_the_message_is_stored_once() {
    let proxy = Proxy::start(pg_addr()).await;
    let schema = PgSchema::new();
    let store = schema.store(&proxy.url()).await;
    let ts = start_with(ChatServer::builder(test_config()).storage(Arc::new(store))).await;
    let client = ChatClient::new(&ts.http).unwrap();
    let alice = client.signup("alice", "password123", None).await.unwrap();
    let bob = client.signup("bob", "password123", None).await.unwrap();
    make_friends(&alice, &bob).await;
    let direct = alice.open_direct(bob.user_id()).await.unwrap();
    let a = alice
        .connect(
            DeviceId::new_random(),
            Arc::new(MemoryCursorStore::new()),
            ConnectOptions::default(),
        )
        .await
        .unwrap();

    proxy.cut();
    let refused_before = proxy.refused.load(Ordering::SeqCst);
    let key = ClientMsgId::new_random();
    let send = {
        let a = a.handle();
        let key = key.clone();
        tokio::spawn(async move { a.send_with_id(direct.id, key, "through the outage").await })
    };
    // Wait until the server has tried the database and been refused, then
    // bring it back: the SDK's next retry goes through.
    tokio::time::timeout(Duration::from_secs(20), async {
        while proxy.refused.load(Ordering::SeqCst) == refused_before {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the server tried the database");
    assert!(
        !send.is_finished(),
        "no acknowledgement while the database is down"
    );
    proxy.restore();
    let sent = tokio::time::timeout(Duration::from_secs(60), send)
        .await
        .expect("the send completes once the database is back")
        .unwrap()
        .expect("stored");
    assert_eq!(stored_copies(&schema, &key).await, 1);

    // Bob, connecting afterwards, syncs it exactly once.
    let mut b = bob
        .connect(
            DeviceId::new_random(),
            Arc::new(MemoryCursorStore::new()),
            ConnectOptions::default(),
        )
        .await
        .unwrap();
    let mut seen = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match b.next_event().await {
                Some(ClientEvent::Message(d)) => seen.push(d.message.id),
                Some(ClientEvent::Synced { .. }) if !seen.is_empty() => break,
                Some(_) => {}
                None => panic!("connection ended"),
            }
        }
    })
    .await
    .expect("bob syncs");
    assert_eq!(seen, vec![sent.message_id]);
    ts.stop().await;
}
