//! End-to-end tests: the real server on 127.0.0.1:0 and the real client SDK.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use chat_client::{
    ChatClient, ClientError, ClientEvent, ConnectOptions, Connection, CursorStore, FileCursorStore,
    MemoryCursorStore, Session,
};
use chat_core::memory::{
    MemoryBusHub, MemoryDiscovery, MemoryNotifier, MemoryPresence, MemoryStore,
};
use chat_core::protocol::ErrorCode;
use chat_core::{ClientMsgId, DeviceId, Message, MessageId, Platform, PresenceStatus, Seq, UserId};
use chat_server::{ChatServer, ServerConfig};
use common::*;

const WAIT: Duration = Duration::from_secs(20);

async fn signup(ts: &TestServer, name: &str) -> Session {
    signup_open(ts, name).await
}

fn fast_options() -> ConnectOptions {
    ConnectOptions {
        reconnect_min: Duration::from_millis(20),
        reconnect_max: Duration::from_millis(200),
        ..ConnectOptions::default()
    }
}

async fn connect_with(
    session: &Session,
    device: DeviceId,
    store: Arc<dyn CursorStore>,
) -> Connection {
    let mut conn = session
        .connect(device, store, fast_options())
        .await
        .unwrap();
    wait_synced(&mut conn).await;
    conn
}

async fn connect(session: &Session) -> Connection {
    connect_with(
        session,
        DeviceId::new_random(),
        Arc::new(MemoryCursorStore::new()),
    )
    .await
}

/// Waits for the end of the connection's current sync.
async fn wait_synced(conn: &mut Connection) -> Seq {
    loop {
        match tokio::time::timeout(WAIT, conn.next_event()).await {
            Ok(Some(ClientEvent::Synced { cursor })) => return cursor,
            Ok(Some(ClientEvent::Error(e))) => panic!("connection error: {e:?}"),
            Ok(Some(_)) => continue,
            Ok(None) => panic!("connection stopped"),
            Err(_) => panic!("no sync within {WAIT:?}"),
        }
    }
}

/// The next `n` messages, in arrival order.
async fn messages(conn: &mut Connection, n: usize) -> Vec<Message> {
    let mut out = Vec::new();
    while out.len() < n {
        match tokio::time::timeout(WAIT, conn.next_event()).await {
            Ok(Some(ClientEvent::Message(d))) => out.push(d.message),
            Ok(Some(ClientEvent::Error(e))) => panic!("connection error: {e:?}"),
            Ok(Some(_)) => continue,
            Ok(None) => panic!("connection stopped after {} of {n} messages", out.len()),
            Err(_) => panic!("only {} of {n} messages arrived", out.len()),
        }
    }
    out
}

/// Messages that arrived and were not yet read, after a round trip to the
/// server (so anything the server sent before is in the event queue).
async fn pending_messages(conn: &mut Connection) -> Vec<Message> {
    conn.presence(&[]).await.unwrap();
    let mut out = Vec::new();
    while let Some(ev) = conn.events().try_recv() {
        if let ClientEvent::Message(d) = ev {
            out.push(d.message);
        }
    }
    out
}

fn ids(messages: &[Message]) -> Vec<MessageId> {
    messages.iter().map(|m| m.id).collect()
}

#[tokio::test]
async fn one_to_one_and_group_messages_reach_every_device() {
    let ts = start(test_config()).await;
    let alice = signup(&ts, "alice").await;
    let bob = signup(&ts, "bob").await;
    let carol = signup(&ts, "carol").await;
    let direct = alice.open_direct(bob.user_id()).await.unwrap();
    let group = alice
        .create_group("trio", &[bob.user_id(), carol.user_id()])
        .await
        .unwrap()
        .channel;

    let mut a1 = connect(&alice).await;
    let mut a2 = connect(&alice).await;
    let mut b1 = connect(&bob).await;
    let mut b2 = connect(&bob).await;
    let mut c1 = connect(&carol).await;

    // One-to-one: both of Bob's devices and Alice's other device get it.
    let r = a1.send(direct.id, "hi bob").await.unwrap();
    assert!(!r.duplicate);
    for conn in [&mut b1, &mut b2, &mut a2] {
        let m = messages(conn, 1).await;
        assert_eq!(ids(&m), vec![r.message_id]);
        assert_eq!(m[0].content, "hi bob");
        assert_eq!(
            m[0].sender,
            alice.user_id(),
            "the sender is the authenticated user"
        );
        assert_eq!(m[0].channel_id, direct.id);
    }
    // Carol, not a member, gets nothing; the sending device gets only its ack.
    assert!(pending_messages(&mut c1).await.is_empty());
    assert!(pending_messages(&mut a1).await.is_empty());

    // Group: every member's every device but the sending one.
    let r = b1.send(group.id, "hi all").await.unwrap();
    for conn in [&mut a1, &mut a2, &mut b2, &mut c1] {
        let m = messages(conn, 1).await;
        assert_eq!(ids(&m), vec![r.message_id]);
        assert_eq!(m[0].sender, bob.user_id());
    }
    assert!(pending_messages(&mut b1).await.is_empty());
    // Nothing arrived twice anywhere.
    for conn in [&mut a1, &mut a2, &mut b2, &mut c1] {
        assert!(pending_messages(conn).await.is_empty());
    }
    ts.stop().await;
}

#[tokio::test]
async fn an_offline_device_gets_everything_it_missed_in_order_once() {
    let ts = start(test_config()).await;
    let alice = signup(&ts, "alice").await;
    let bob = signup(&ts, "bob").await;
    let carol = signup(&ts, "carol").await;
    let direct = alice.open_direct(bob.user_id()).await.unwrap();
    let group = alice
        .create_group("g", &[bob.user_id(), carol.user_id()])
        .await
        .unwrap()
        .channel;
    let a = connect(&alice).await;
    let c = connect(&carol).await;

    // Bob's phone is online for the first ten messages.
    let phone = DeviceId::new_random();
    let phone_store: Arc<dyn CursorStore> = Arc::new(MemoryCursorStore::new());
    let mut b1 = connect_with(&bob, phone, phone_store.clone()).await;
    let mut sent = Vec::new();
    for i in 0..10 {
        sent.push(
            a.send(direct.id, format!("live {i}"))
                .await
                .unwrap()
                .message_id,
        );
    }
    assert_eq!(ids(&messages(&mut b1, 10).await), sent);
    b1.close().await;
    drop(b1);

    // Then 40 more while Bob has no connection at all, from two senders in
    // two channels.
    for i in 0..40 {
        let r = if i % 3 == 0 {
            c.send(group.id, format!("group {i}")).await.unwrap()
        } else {
            a.send(direct.id, format!("direct {i}")).await.unwrap()
        };
        sent.push(r.message_id);
    }

    // A brand-new device gets all 50, in id order, once.
    let mut laptop = bob
        .connect(
            DeviceId::new_random(),
            Arc::new(MemoryCursorStore::new()),
            fast_options(),
        )
        .await
        .unwrap();
    let got = messages(&mut laptop, 50).await;
    let mut expected = sent.clone();
    expected.sort();
    assert_eq!(ids(&got), expected);
    wait_synced(&mut laptop).await;
    assert!(
        pending_messages(&mut laptop).await.is_empty(),
        "duplicates after sync"
    );

    // The phone comes back and gets exactly the 40 it missed.
    let mut b1 = bob
        .connect(phone, phone_store, fast_options())
        .await
        .unwrap();
    let got = messages(&mut b1, 40).await;
    let mut missed = sent[10..].to_vec();
    missed.sort();
    assert_eq!(ids(&got), missed);
    wait_synced(&mut b1).await;
    assert!(
        pending_messages(&mut b1).await.is_empty(),
        "duplicates after sync"
    );
    ts.stop().await;
}

#[tokio::test]
async fn retries_reuse_the_client_message_id_and_store_once() {
    let ts = start(test_config()).await;
    let alice = signup(&ts, "alice").await;
    let bob = signup(&ts, "bob").await;
    let direct = alice.open_direct(bob.user_id()).await.unwrap();
    let a = connect(&alice).await;
    let mut b = connect(&bob).await;
    let key = ClientMsgId::new_random();
    let first = a
        .send_with_id(direct.id, key.clone(), "once")
        .await
        .unwrap();
    let again = a
        .send_with_id(direct.id, key.clone(), "once")
        .await
        .unwrap();
    assert!(!first.duplicate);
    assert!(again.duplicate);
    assert_eq!(first.message_id, again.message_id);
    match a.send_with_id(direct.id, key, "different").await {
        Err(ClientError::Api(e)) => assert_eq!(e.code, ErrorCode::Conflict),
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert_eq!(ids(&messages(&mut b, 1).await), vec![first.message_id]);
    assert!(pending_messages(&mut b).await.is_empty());
    let history = bob.history(direct.id, &Default::default()).await.unwrap();
    assert_eq!(ids(&history.messages), vec![first.message_id]);
    ts.stop().await;
}

#[tokio::test]
async fn errors_come_back_as_stable_codes_through_the_sdk() {
    let ts = start(test_config()).await;
    let alice = signup(&ts, "alice").await;
    let bob = signup(&ts, "bob").await;
    let eve = signup(&ts, "eve").await;
    let direct = alice.open_direct(bob.user_id()).await.unwrap();
    let e = connect(&eve).await;
    // Not a member and no such channel answer alike.
    assert_eq!(
        code(e.send(direct.id, "let me in").await),
        ErrorCode::NotFound
    );
    assert_eq!(
        code(e.send(direct.id, "x".repeat(100_001)).await),
        ErrorCode::MessageTooLarge
    );
    assert_eq!(
        code(eve.history(direct.id, &Default::default()).await),
        ErrorCode::NotFound
    );
    assert_eq!(
        code(
            ChatClient::new(&ts.http)
                .unwrap()
                .signup("alice", "password123", None)
                .await
        ),
        ErrorCode::AlreadyExists
    );
    assert_eq!(
        code(
            ChatClient::new(&ts.http)
                .unwrap()
                .login("alice", "wrong-password")
                .await
        ),
        ErrorCode::Unauthorized
    );
    assert_eq!(
        code(eve.get_user(UserId::new_random()).await),
        ErrorCode::NotFound
    );
    // A group over the member limit.
    let small = ServerConfig {
        limits: chat_core::Limits {
            group_members: 3,
            ..Default::default()
        },
        ..test_config()
    };
    let ts2 = start(small).await;
    let owner = signup(&ts2, "owner").await;
    let mut members = Vec::new();
    for i in 0..3 {
        members.push(signup(&ts2, &format!("n{i}")).await.user_id());
    }
    assert_eq!(
        code(owner.create_group("big", &members).await),
        ErrorCode::LimitExceeded
    );
    let g = owner
        .create_group("ok", &members[..2])
        .await
        .unwrap()
        .channel;
    assert_eq!(
        code(owner.add_member(g.id, members[2]).await),
        ErrorCode::LimitExceeded
    );
    ts2.stop().await;
    ts.stop().await;
}

fn code<T: std::fmt::Debug>(r: Result<T, ClientError>) -> ErrorCode {
    match r {
        Err(ClientError::Api(w)) => w.code,
        other => panic!("expected an API error, got {other:?}"),
    }
}

#[tokio::test]
async fn history_pages_backward_and_forward() {
    let ts = start(test_config()).await;
    let alice = signup(&ts, "alice").await;
    let bob = signup(&ts, "bob").await;
    let direct = alice.open_direct(bob.user_id()).await.unwrap();
    let a = connect(&alice).await;
    let mut sent = Vec::new();
    for i in 0..12 {
        sent.push(a.send(direct.id, format!("m{i}")).await.unwrap().message_id);
    }
    let q = |before, after, limit| chat_client::HistoryQuery {
        before,
        after,
        limit: Some(limit),
    };
    let latest = bob.history(direct.id, &q(None, None, 5)).await.unwrap();
    assert_eq!(ids(&latest.messages), sent[7..]);
    assert!(latest.has_more);
    let older = bob
        .history(direct.id, &q(Some(sent[7]), None, 5))
        .await
        .unwrap();
    assert_eq!(ids(&older.messages), sent[2..7]);
    let oldest = bob
        .history(direct.id, &q(Some(sent[2]), None, 5))
        .await
        .unwrap();
    assert_eq!(ids(&oldest.messages), sent[..2]);
    assert!(!oldest.has_more, "the start of the channel");
    let forward = bob
        .history(direct.id, &q(None, Some(sent[2]), 3))
        .await
        .unwrap();
    assert_eq!(ids(&forward.messages), sent[3..6]);
    // Over the socket too: the same query, the same page.
    let page = a
        .history(direct.id, &q(Some(sent[5]), None, 2))
        .await
        .unwrap();
    assert_eq!(ids(&page.messages), sent[3..5]);
    assert!(page.has_more);
    ts.stop().await;
}

#[tokio::test]
async fn the_device_cursor_advances_and_is_stored_on_the_server() {
    let ts = start(test_config()).await;
    let alice = signup(&ts, "alice").await;
    let bob = signup(&ts, "bob").await;
    let direct = alice.open_direct(bob.user_id()).await.unwrap();
    let a = connect(&alice).await;
    let device = DeviceId::new_random();
    let mut b = connect_with(&bob, device, Arc::new(MemoryCursorStore::new())).await;
    for i in 0..5 {
        a.send(direct.id, format!("m{i}")).await.unwrap();
    }
    messages(&mut b, 5).await;
    // The cursor reaches the fifth position of Bob's inbox.
    let last = Seq(5);
    let deadline = tokio::time::Instant::now() + WAIT;
    while b.cursor() < last {
        assert!(
            tokio::time::Instant::now() < deadline,
            "cursor stuck at {:?}",
            b.cursor()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The server stored it (acked) for this device.
    wait_server_cursor(&ts, &bob.token(), device, last).await;
    ts.stop().await;
}

/// Waits until the server has stored at least `at_least` as `device`'s
/// cursor (read from the `welcome` of a fresh connection).
async fn wait_server_cursor(ts: &TestServer, token: &str, device: DeviceId, at_least: Seq) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let raw = raw_connect(ts, token, device).await;
        if raw.welcome.cursor >= at_least {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "server cursor not stored"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_restart_on_the_embedded_store_keeps_messages_and_cursors() {
    let dir = tempfile::tempdir().unwrap();
    let cursors = tempfile::tempdir().unwrap();
    let config = test_config();
    let open = |config: ServerConfig| {
        let store = Arc::new(chat_store::embedded::EmbeddedStore::open(dir.path()).unwrap());
        ChatServer::builder(config).storage(store)
    };
    let ts = start_with(open(config.clone())).await;
    let addr = ts.addr;
    let alice = signup(&ts, "alice").await;
    let bob = signup(&ts, "bob").await;
    let direct = alice.open_direct(bob.user_id()).await.unwrap();
    let a = connect(&alice).await;
    let device = DeviceId::new_random();
    let store: Arc<dyn CursorStore> = Arc::new(FileCursorStore::new(cursors.path()));
    let mut b = connect_with(&bob, device, store.clone()).await;
    let mut before = Vec::new();
    for i in 0..5 {
        before.push(
            a.send(direct.id, format!("before {i}"))
                .await
                .unwrap()
                .message_id,
        );
    }
    assert_eq!(ids(&messages(&mut b, 5).await), before);
    // The device's cursor is acknowledged by the server (the client acks it
    // asynchronously once the messages have settled).
    wait_server_cursor(&ts, &bob.token(), device, Seq(5)).await;

    // Stop the server: clients are told to reconnect and keep trying.
    ts.stop().await;

    // A new server process on the same address and the same data directory.
    let server = open(config).build().await.unwrap();
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(chat_server::serve(
        server.clone(),
        listener,
        shutdown.clone(),
    ));
    let ts = TestServer {
        server,
        addr,
        http: format!("http://{addr}"),
        shutdown,
        task,
        schema: None,
    };

    // Everything acknowledged before is there: users (log in again),
    // history, Bob's device cursor on the server.
    let bob_again = ChatClient::new(&ts.http)
        .unwrap()
        .login("bob", "password123")
        .await
        .unwrap();
    let history = bob_again
        .history(direct.id, &Default::default())
        .await
        .unwrap();
    assert_eq!(ids(&history.messages), before);
    let raw = raw_connect(&ts, &bob.token(), device).await;
    assert!(raw.welcome.cursor >= Seq(5), "device cursor lost");
    drop(raw);

    // Both SDK connections came back by themselves; new messages flow and
    // nothing from before is delivered again.
    let mut after = Vec::new();
    for i in 0..5 {
        after.push(
            a.send(direct.id, format!("after {i}"))
                .await
                .unwrap()
                .message_id,
        );
    }
    let got = messages(&mut b, 5).await;
    assert_eq!(ids(&got), after);
    assert!(pending_messages(&mut b).await.is_empty());
    // A new SDK connection with the same file cursor store starts after the
    // old messages.
    drop(b);
    let mut b = bob_again
        .connect(device, store, fast_options())
        .await
        .unwrap();
    wait_synced(&mut b).await;
    let stale: HashSet<_> = pending_messages(&mut b)
        .await
        .iter()
        .map(|m| m.id)
        .collect();
    assert!(
        stale.iter().all(|id| !before.contains(id)),
        "old messages delivered again"
    );
    ts.stop().await;
}

#[tokio::test]
async fn push_goes_to_offline_recipients_only() {
    let notifier = Arc::new(MemoryNotifier::default());
    let ts = start_with(ChatServer::builder(test_config()).push(notifier.clone())).await;
    let alice = signup(&ts, "alice").await;
    let bob = signup(&ts, "bob").await;
    let carol = signup(&ts, "carol").await;
    let bob_phone = DeviceId::new_random();
    bob.register_device(bob_phone, Platform::Android, Some("fcm-token-bob"))
        .await
        .unwrap();
    carol
        .register_device(DeviceId::new_random(), Platform::Web, Some("web-carol"))
        .await
        .unwrap();
    let group = alice
        .create_group("g", &[bob.user_id(), carol.user_id()])
        .await
        .unwrap()
        .channel;
    let a = connect(&alice).await;
    let _c = connect(&carol).await;

    // Bob is offline: one notification, for Bob only, with his device, and
    // no preview by default. Not for Alice (the sender) nor Carol (online).
    let r = a.send(group.id, "secret text").await.unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    while notifier.sent().is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "no push");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let sent = notifier.sent();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].recipient, bob.user_id());
    assert_eq!(sent[0].message_id, r.message_id);
    assert_eq!(sent[0].devices.len(), 1);
    assert_eq!(
        sent[0].devices[0].push_token.as_deref(),
        Some("fcm-token-bob")
    );
    assert_eq!(sent[0].preview, None);

    // Bob online: no push for him. Carol goes offline and a later message
    // pushes to her, which shows the earlier job was processed.
    let _b = connect_with(&bob, bob_phone, Arc::new(MemoryCursorStore::new())).await;
    a.send(group.id, "bob is here").await.unwrap();
    drop(_c);
    let deadline = tokio::time::Instant::now() + WAIT;
    while ts.server.connections() > 2 {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    a.send(group.id, "carol left").await.unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    while notifier.sent().len() < 2 {
        assert!(tokio::time::Instant::now() < deadline, "no push for carol");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let sent = notifier.sent();
    assert_eq!(sent.len(), 2, "{sent:?}");
    assert_eq!(sent[1].recipient, carol.user_id());
    ts.stop().await;
}

#[tokio::test(start_paused = true)]
async fn presence_follows_heartbeats_without_flapping() {
    let ts = start_memory(test_config()).await;
    let alice = signup(&ts, "alice").await;
    let bob = signup(&ts, "bob").await;
    make_friends(&alice, &bob).await;
    let mut b = connect(&bob).await;

    // Alice comes online: Bob, her friend, is told.
    let a = connect(&alice).await;
    let p = next_presence(&mut b).await;
    assert_eq!(
        (p.user, p.status),
        (alice.user_id(), PresenceStatus::Online)
    );
    let status = b.presence(&[alice.user_id()]).await.unwrap();
    assert_eq!(status[0].status, PresenceStatus::Online);

    // Alice's connection drops and comes back 10 s later: still online, no
    // change announced.
    drop(a);
    tokio::time::sleep(Duration::from_secs(10)).await;
    let a = connect(&alice).await;
    tokio::time::sleep(Duration::from_secs(40)).await;
    assert!(
        no_presence_events(&mut b).await,
        "status flapped on a short disconnect"
    );
    let status = b.presence(&[alice.user_id()]).await.unwrap();
    assert_eq!(
        status[0].status,
        PresenceStatus::Online,
        "heartbeats keep her online"
    );

    // Alice leaves for good: offline once the 30 s timeout passes, with her
    // last heartbeat as last_active_at.
    drop(a);
    tokio::time::sleep(Duration::from_secs(20)).await;
    assert!(
        no_presence_events(&mut b).await,
        "offline before the timeout"
    );
    tokio::time::sleep(Duration::from_secs(15)).await;
    let p = next_presence(&mut b).await;
    assert_eq!(
        (p.user, p.status),
        (alice.user_id(), PresenceStatus::Offline)
    );
    assert!(p.last_active_at.is_some());
    let status = b.presence(&[alice.user_id()]).await.unwrap();
    assert_eq!(status[0].status, PresenceStatus::Offline);
    assert_eq!(status[0].last_active_at, p.last_active_at);
    ts.stop().await;
}

async fn next_presence(conn: &mut Connection) -> chat_core::Presence {
    loop {
        match tokio::time::timeout(Duration::from_secs(60), conn.next_event()).await {
            Ok(Some(ClientEvent::Presence(p))) => return p,
            Ok(Some(_)) => continue,
            other => panic!("no presence event: {other:?}"),
        }
    }
}

async fn no_presence_events(conn: &mut Connection) -> bool {
    conn.presence(&[]).await.unwrap();
    let mut none = true;
    while let Some(ev) = conn.events().try_recv() {
        if matches!(ev, ClientEvent::Presence(_)) {
            none = false;
        }
    }
    none
}

#[tokio::test]
async fn two_chat_servers_deliver_across_the_bus() {
    // Two nodes sharing storage, presence and discovery, linked by a bus:
    // the shape of a multi-node deployment, in one process. `route` sends
    // each client to the node of its region.
    let hub = MemoryBusHub::new();
    let store = Arc::new(MemoryStore::default());
    let presence = Arc::new(MemoryPresence::default());
    let discovery = Arc::new(MemoryDiscovery::default());
    let node = |id: u16, region: &str| {
        ChatServer::builder(ServerConfig {
            node_id: id,
            server_id: format!("node-{id}"),
            region: Some(region.into()),
            ..test_config()
        })
        .directory(store.directory())
        .messages(store.clone())
        .presence(presence.clone())
        .discovery(discovery.clone())
        .bus(Arc::new(hub.node()))
    };
    let s1 = start_with(node(1, "eu")).await;
    let s2 = start_with(node(2, "us")).await;
    let alice = signup(&s1, "alice").await;
    let bob = signup(&s2, "bob").await;
    // Both servers answer HTTP only once `serve` has advertised them.
    let mut registered: Vec<String> = chat_core::ServiceDiscovery::servers(&*discovery)
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.id)
        .collect();
    registered.sort();
    assert_eq!(registered, vec!["node-1", "node-2"]);

    let direct = alice.open_direct(bob.user_id()).await.unwrap();
    let in_region = |region: &str| ConnectOptions {
        region: Some(region.into()),
        ..fast_options()
    };
    let mut a = alice
        .connect(
            DeviceId::new_random(),
            Arc::new(MemoryCursorStore::new()),
            in_region("eu"),
        )
        .await
        .unwrap();
    let mut b = bob
        .connect(
            DeviceId::new_random(),
            Arc::new(MemoryCursorStore::new()),
            in_region("us"),
        )
        .await
        .unwrap();
    wait_synced(&mut a).await;
    wait_synced(&mut b).await;
    assert_eq!((s1.server.connections(), s2.server.connections()), (1, 1));

    let r = a.send(direct.id, "across nodes").await.unwrap();
    assert_eq!(ids(&messages(&mut b, 1).await), vec![r.message_id]);
    let r = b.send(direct.id, "and back").await.unwrap();
    assert_eq!(ids(&messages(&mut a, 1).await), vec![r.message_id]);
    s1.stop().await;
    s2.stop().await;
}

/// A send whose commit stalls past `send_timeout` (the write already
/// started, as a stalled `fsync` would leave it): the sender gets
/// `unavailable`, the recipient meanwhile receives a later message and moves
/// its cursor past it, then the stalled commit lands. Its inbox entry takes
/// the next position, above the recipient's cursor, so it is never lost:
/// the sender's retry answers a duplicate and announces it again, and the
/// recipient (the SDK) shows it exactly once; a device that reconnects
/// afterwards finds it by sync too.
#[tokio::test]
async fn a_commit_that_lands_after_its_send_timed_out_still_reaches_the_recipient() {
    let config = ServerConfig {
        send_timeout: Duration::from_millis(300),
        ..test_config()
    };
    let memory = Arc::new(MemoryStore::default());
    let store = Arc::new(Faulty::new(memory.clone()));
    let ts = start_with(
        ChatServer::builder(config)
            .messages(store.clone())
            .directory(memory.directory()),
    )
    .await;
    let alice = signup(&ts, "alice").await;
    let bob = signup(&ts, "bob").await;
    let carol = signup(&ts, "carol").await;
    let from_alice = alice.open_direct(bob.user_id()).await.unwrap();
    let from_carol = carol.open_direct(bob.user_id()).await.unwrap();
    // Alice on a raw connection: one attempt per request, no automatic
    // retry, so the test decides when she retries.
    let mut a = raw_connect(&ts, &alice.token(), DeviceId::new_random()).await;
    let c = connect(&carol).await;
    let device = DeviceId::new_random();
    let cursors = Arc::new(MemoryCursorStore::new());
    let mut b = connect_with(&bob, device, cursors.clone()).await;

    // Alice's send stalls in the store and times out: no ack.
    store
        .stall_next
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let key = "late-key";
    let r = a.send_msg(from_alice.id, key, "late but not lost").await;
    let e = r.error.expect("no ack while the commit is stalled");
    assert_eq!(e.code, ErrorCode::Unavailable);
    assert!(e.retryable);

    // Carol's message goes through; Bob receives it and his cursor moves.
    let r = c.send(from_carol.id, "meanwhile").await.unwrap();
    assert_eq!(ids(&messages(&mut b, 1).await), vec![r.message_id]);
    let moved = tokio::time::Instant::now() + WAIT;
    while b.cursor() < Seq(1) {
        assert!(tokio::time::Instant::now() < moved, "cursor did not move");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // The stalled commit lands now, unannounced, after Bob's cursor.
    store.release();
    let landed = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(result) = store.landed.lock().await.first() {
            let committed = result.clone().expect("the stalled commit succeeds");
            assert_eq!(
                committed.position_of(bob.user_id()),
                Some(Seq(2)),
                "a late commit takes the next position, above every cursor"
            );
            break;
        }
        assert!(tokio::time::Instant::now() < landed, "never landed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // Alice retries with the same key: a duplicate, announced again.
    let (id, duplicate) = sent_id(a.send_msg(from_alice.id, key, "late but not lost").await);
    assert!(duplicate);
    let got = messages(&mut b, 1).await;
    assert_eq!(ids(&got), vec![id]);
    assert_eq!(got[0].content, "late but not lost");
    assert!(pending_messages(&mut b).await.is_empty(), "shown once");

    // A second device of Bob's, from scratch, and the first one after a
    // reconnect from its stored cursor, both have it.
    let mut b2 = bob
        .connect(
            DeviceId::new_random(),
            Arc::new(MemoryCursorStore::new()),
            fast_options(),
        )
        .await
        .unwrap();
    let all = messages(&mut b2, 2).await;
    assert_eq!(all[1].id, id, "in inbox order");
    b.close().await;
    let mut again = connect_with(&bob, device, cursors).await;
    assert!(
        pending_messages(&mut again).await.is_empty(),
        "nothing is shown twice after a reconnect"
    );
    ts.stop().await;
}
