//! The product server of `examples/embed_in_axum.rs`: the chat router
//! mounted under `/chat` in the product's own axum app, without
//! `advertise`, works for the client SDK as it is (route answers the
//! mounted server, at the prefix the client used); shutting down the
//! product closes chat sessions with 4000 and lets axum finish; the token
//! secret is made once, kept with mode 0600, and the next start takes it
//! back, so sessions survive a restart.

// Test scaffolding: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use chat_client::{
    ChatClient, ClientEvent, ConnectOptions, Connection, DeviceId, MemoryCursorStore, Session,
};
use chat_server::{CancellationToken, ChatServer, ServerConfig};
use examples::product;

const WAIT: Duration = Duration::from_secs(30);

fn config() -> ServerConfig {
    ServerConfig {
        argon2_memory_kib: 256,
        argon2_iterations: 1,
        drain_timeout: Duration::from_secs(5),
        ..ServerConfig::default()
    }
}

struct Running {
    base: String,
    chat: ChatServer,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

async fn start(dir: &std::path::Path) -> Running {
    let chat = product::chat_server(dir, config()).await.unwrap();
    let app = product::app(&chat);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let stop = CancellationToken::new();
    let task = tokio::spawn(product::serve(listener, chat.clone(), app, stop.clone()));
    Running {
        base,
        chat,
        stop,
        task,
    }
}

async fn connect(session: &Session) -> Connection {
    let mut conn = session
        .connect(
            DeviceId::new_random(),
            Arc::new(MemoryCursorStore::new()),
            ConnectOptions::default(),
        )
        .await
        .unwrap();
    next(&mut conn, |e| matches!(e, ClientEvent::Synced { .. })).await;
    conn
}

async fn next(conn: &mut Connection, wanted: impl Fn(&ClientEvent) -> bool) -> ClientEvent {
    loop {
        match tokio::time::timeout(WAIT, conn.next_event()).await.unwrap() {
            Some(e) if wanted(&e) => return e,
            Some(_) => {}
            None => panic!("stopped: {}", conn.closed().await),
        }
    }
}

#[tokio::test]
async fn the_mounted_router_works_by_itself_and_stops_with_the_product() {
    let dir = tempfile::tempdir().unwrap();
    let product = start(dir.path()).await;
    assert!(!product.chat.is_advertised(), "nobody called advertise");

    // The product's own routes answer beside chat.
    let home = reqwest::get(format!("{}/", product.base))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(home.contains("Welcome to the product"), "{home}");

    // Clients use the prefix as their base URL; route names the mounted
    // server, under the same prefix.
    let chat_url = format!("{}{}", product.base, product::CHAT_PREFIX);
    let client = ChatClient::new(&chat_url).unwrap();
    let alice = client
        .signup("alice", "alice password", None)
        .await
        .unwrap();
    let bob = client.signup("bob", "bob password", None).await.unwrap();
    let route = alice.route(None).await.unwrap();
    assert_eq!(
        route.ws_url,
        format!("{}/chat/v1/ws", product.base.replace("http://", "ws://"))
    );
    alice.add_friend(bob.user_id()).await.unwrap();
    bob.add_friend(alice.user_id()).await.unwrap();
    let channel = alice.open_direct(bob.user_id()).await.unwrap();
    let a = connect(&alice).await;
    let mut b = connect(&bob).await;
    let sent = a
        .send(channel.id, "hello from inside the product")
        .await
        .unwrap();
    let ClientEvent::Message(d) = next(&mut b, |e| matches!(e, ClientEvent::Message(_))).await
    else {
        unreachable!()
    };
    assert_eq!(d.message.id, sent.message_id);
    let status: serde_json::Value = reqwest::get(format!("{}/api/status", product.base))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(status["chat_connections"], 2);

    // The product stops: chat sessions are told to reconnect (4000) and
    // axum's graceful shutdown completes.
    product.stop.cancel();
    let event = next(&mut b, |e| matches!(e, ClientEvent::Disconnected { .. })).await;
    assert!(
        matches!(
            event,
            ClientEvent::Disconnected {
                code: Some(4000),
                ..
            }
        ),
        "{event:?}"
    );
    tokio::time::timeout(WAIT, product.task)
        .await
        .expect("the product stops")
        .unwrap()
        .unwrap();
    drop((a, b));
    drop(product.chat);

    // The secret was made once, for the owner only...
    let secret_file = dir.path().join("token.secret");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&secret_file)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{mode:o}");
    }
    let secret = std::fs::read(&secret_file).unwrap();
    // ...and the next start takes it back: Alice's tokens still work.
    let product = start(dir.path()).await;
    assert_eq!(std::fs::read(&secret_file).unwrap(), secret);
    let client = ChatClient::new(&format!("{}{}", product.base, product::CHAT_PREFIX)).unwrap();
    let again = client.session(alice.auth());
    assert_eq!(again.me().await.unwrap().id, alice.user_id());
    product.stop.cancel();
    product.task.await.unwrap().unwrap();
}
