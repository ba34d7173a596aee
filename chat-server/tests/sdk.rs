//! The client SDK's ergonomics through the real server: sending from the
//! loop that reads events while hundreds wait, a new device starting from
//! now, credentials that log in again (a logged-out session, an expired
//! refresh token), the first log-in and connection retried while the
//! server is not up yet, the reason a connection stopped, and
//! configuration errors that stop retrying at once.

// Test scaffolding: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use chat_client::{
    ChatClient, ClientError, ClientEvent, ConnectOptions, DeviceId, ErrorCode, MemoryCursorStore,
    Password, Retry, StartFrom,
};
use chat_core::memory::MemoryStore;
use chat_server::{ChatServer, ServerConfig};
use common::*;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(30);

/// Requests as fast as the tests make them.
fn fast_config() -> ServerConfig {
    ServerConfig {
        rate_limit_per_sec: 100_000,
        rate_limit_burst: 100_000,
        ..test_config()
    }
}

/// The echo-bot loop with 400 messages queued for it: each answer is sent
/// from the loop that reads the events, and nothing stalls.
#[tokio::test]
async fn sends_from_the_event_loop_do_not_stall_behind_queued_events() {
    let ts = start(fast_config()).await;
    let alice = signup_open(&ts, "alice").await;
    let bot = signup_open(&ts, "bot").await;
    let channel = alice.open_direct(bot.user_id()).await.unwrap();
    let mut b = connect_synced_with(
        &bot,
        ConnectOptions {
            // Small queues, so that most of the 400 wait on the socket or
            // are fetched again by sync.
            event_capacity: 8,
            event_buffer_bytes: 32 << 10,
            ..ConnectOptions::default()
        },
    )
    .await;
    let a = connect_synced(&alice).await;
    let mut sent = Vec::new();
    for i in 0..400 {
        sent.push(
            a.send(channel.id, format!("q{i}"))
                .await
                .unwrap()
                .message_id,
        );
    }
    // None read yet: a send still completes.
    tokio::time::timeout(WAIT, b.send(channel.id, "before reading"))
        .await
        .expect("a receipt while 400 events wait")
        .unwrap();
    let mut got = Vec::new();
    while got.len() < sent.len() {
        if let ClientEvent::Message(d) =
            next_event(&mut b, |e| matches!(e, ClientEvent::Message(_))).await
        {
            got.push(d.message.id);
            tokio::time::timeout(
                WAIT,
                b.send(channel.id, format!("re: {}", d.message.content)),
            )
            .await
            .expect("an answer's receipt")
            .unwrap();
        }
    }
    assert_eq!(got, sent, "every message once, in order");
    ts.stop().await;
}

/// A new device with `StartFrom::Latest` skips the inbox it finds and
/// receives what comes after; the default replays the whole inbox.
#[tokio::test]
async fn a_new_device_starts_from_now_or_replays_the_inbox() {
    let ts = start(fast_config()).await;
    let alice = signup_open(&ts, "alice").await;
    let bob = signup_open(&ts, "bob").await;
    let channel = alice.open_direct(bob.user_id()).await.unwrap();
    let a = connect_synced(&alice).await;
    for i in 0..5 {
        a.send(channel.id, format!("old {i}")).await.unwrap();
    }
    let mut latest = connect_new(
        &bob,
        ConnectOptions {
            start_from: StartFrom::Latest,
            ..ConnectOptions::default()
        },
    )
    .await;
    match next_event(&mut latest, |e| {
        matches!(e, ClientEvent::Synced { .. } | ClientEvent::Message(_))
    })
    .await
    {
        ClientEvent::Synced { cursor } => assert_eq!(cursor.0, 5, "at the inbox's end"),
        other => panic!("an old message on a device starting from now: {other:?}"),
    }
    let new = a.send(channel.id, "new").await.unwrap();
    let ClientEvent::Message(d) =
        next_event(&mut latest, |e| matches!(e, ClientEvent::Message(_))).await
    else {
        unreachable!()
    };
    assert_eq!(d.message.id, new.message_id);
    assert_eq!(d.seq.0, 6);

    // By default a new device gets all six.
    let mut replay = connect_new(&bob, ConnectOptions::default()).await;
    let mut seen = 0;
    while let ClientEvent::Message(_) = next_event(&mut replay, |e| {
        matches!(e, ClientEvent::Synced { .. } | ClientEvent::Message(_))
    })
    .await
    {
        seen += 1;
    }
    assert_eq!(seen, 6);
    ts.stop().await;
}

/// A session logged out everywhere: a connection without credentials
/// stops with 4100, and says so from `closed()`; one with credentials logs
/// in again and carries on.
#[tokio::test]
async fn credentials_log_in_again_after_a_logout_and_closed_says_why() {
    let ts = start(fast_config()).await;
    let alice = signup_open(&ts, "alice").await;
    let bob = signup_open(&ts, "bob").await;
    let channel = alice.open_direct(bob.user_id()).await.unwrap();
    let client = ChatClient::new(&ts.http).unwrap();
    let with_credentials = client
        .login_with(Password::new("bob", "password123"))
        .await
        .unwrap();
    let without = client.login("bob", "password123").await.unwrap();
    let mut kept = connect_synced(&with_credentials).await;
    let mut lost = connect_synced(&without).await;

    // Every session of Bob's ends.
    without.logout_all().await.unwrap();
    while tokio::time::timeout(WAIT, lost.next_event())
        .await
        .unwrap()
        .is_some()
    {}
    let why = lost.closed().await;
    assert!(
        matches!(
            why,
            ClientError::Closed {
                code: Some(4100),
                ..
            }
        ),
        "{why:?}"
    );
    assert!(!why.is_retryable());

    // The one with credentials is back, with new tokens.
    next_event(&mut kept, |e| matches!(e, ClientEvent::Connected { .. })).await;
    let a = connect_synced(&alice).await;
    let sent = a.send(channel.id, "still there?").await.unwrap();
    let ClientEvent::Message(d) =
        next_event(&mut kept, |e| matches!(e, ClientEvent::Message(_))).await
    else {
        unreachable!()
    };
    assert_eq!(d.message.id, sent.message_id);
    assert!(!kept.is_closed());
    // Its HTTP calls work too, on the new tokens.
    assert_eq!(with_credentials.me().await.unwrap().id, bob.user_id());
    assert_eq!(
        api_code(without.me().await),
        ErrorCode::Unauthorized,
        "no credentials, no new log-in"
    );
    ts.stop().await;
}

/// An expired refresh token: a session with credentials logs in again
/// on its next call; one without fails with `unauthorized`.
#[tokio::test]
async fn credentials_replace_an_expired_refresh_token() {
    let ts = start(ServerConfig {
        token_ttl: Duration::from_millis(500),
        refresh_token_ttl: Duration::from_secs(1),
        ..fast_config()
    })
    .await;
    signup_open(&ts, "carol").await;
    let client = ChatClient::new(&ts.http).unwrap();
    let with_credentials = client
        .login_with(Password::new("carol", "password123"))
        .await
        .unwrap();
    let without = client.login("carol", "password123").await.unwrap();
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(
        with_credentials.me().await.unwrap().username,
        "carol",
        "logged in again"
    );
    assert_eq!(api_code(without.me().await), ErrorCode::Unauthorized);
    ts.stop().await;
}

/// The server is not up yet: `Retry` keeps trying the log-in, and a
/// connection with `retry_initial_connect` returns at once, queues a
/// send, and connects when the server comes.
#[tokio::test]
async fn the_first_log_in_and_connection_wait_for_a_server_that_is_not_up_yet() {
    // Two nodes on one store: the first to sign up on, the second bound to
    // its address but not listening yet (connections are refused).
    let store = Arc::new(MemoryStore::default());
    let node = |id: u16| {
        ChatServer::builder(ServerConfig {
            node_id: id,
            ..fast_config()
        })
        .directory(store.directory())
        .messages(store.clone())
    };
    let first = start_with(node(1)).await;
    let alice = signup_open(&first, "alice").await;
    let bob = signup_open(&first, "bob").await;
    let channel = alice.open_direct(bob.user_id()).await.unwrap();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let later = format!("http://{}", socket.local_addr().unwrap());
    let client = ChatClient::new(&later).unwrap();
    let refused = client.login("alice", "password123").await.unwrap_err();
    assert!(refused.is_retryable(), "{refused:?}");

    let retry = Retry {
        min_delay: Duration::from_millis(20),
        max_delay: Duration::from_millis(200),
        ..Retry::default()
    };
    let logging_in = tokio::spawn({
        let client = client.clone();
        async move { retry.run(|| client.login("alice", "password123")).await }
    });
    let mut conn = tokio::time::timeout(
        Duration::from_secs(1),
        client.session(alice.auth()).connect(
            DeviceId::new_random(),
            Arc::new(MemoryCursorStore::new()),
            ConnectOptions {
                retry_initial_connect: true,
                reconnect_min: Duration::from_millis(20),
                reconnect_max: Duration::from_millis(200),
                ..ConnectOptions::default()
            },
        ),
    )
    .await
    .expect("connect returns at once")
    .unwrap();
    let handle = conn.handle();
    let sending = tokio::spawn(async move { handle.send(channel.id, "queued").await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!logging_in.is_finished() && !sending.is_finished());

    // The server comes up.
    let listener = socket.listen(1024).unwrap();
    let stop = CancellationToken::new();
    let second = node(2).build().await.unwrap();
    let serving = tokio::spawn(chat_server::serve(second, listener, stop.clone()));
    let session = tokio::time::timeout(WAIT, logging_in)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(session.user_id(), alice.user_id());
    next_event(&mut conn, |e| matches!(e, ClientEvent::Connected { .. })).await;
    let receipt = tokio::time::timeout(WAIT, sending)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(!receipt.duplicate);
    conn.close().await;
    stop.cancel();
    serving.await.unwrap().unwrap();
    first.stop().await;
}

/// A server that routes to a URL the client cannot use: the error is a
/// configuration error, not retryable, and a connection retrying its
/// first connect stops at once instead of spinning.
#[tokio::test]
async fn configuration_errors_stop_retrying() {
    let ts = start(ServerConfig {
        public_ws_url: Some("not a url".into()),
        ..fast_config()
    })
    .await;
    let alice = signup_open(&ts, "alice").await;
    let err = alice
        .connect(
            DeviceId::new_random(),
            Arc::new(MemoryCursorStore::new()),
            ConnectOptions::default(),
        )
        .await
        .unwrap_err();
    assert!(!err.is_retryable(), "{err:?}");
    let conn = connect_new(
        &alice,
        ConnectOptions {
            retry_initial_connect: true,
            ..ConnectOptions::default()
        },
    )
    .await;
    let why = tokio::time::timeout(Duration::from_secs(5), conn.closed())
        .await
        .expect("stops at once");
    assert_eq!(why.kind(), err.kind());
    assert!(!why.is_retryable());
    // Bad base URLs are configuration errors at once.
    for bad in ["not a url", "ftp://example.com"] {
        let e = ChatClient::new(bad).unwrap_err();
        assert_eq!(e.kind(), "config");
        assert!(!e.is_retryable());
    }
    ts.stop().await;
}
