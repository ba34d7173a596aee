//! Push end to end: the real server, the real client SDK, and the real FCM,
//! APNs and webhook providers talking HTTP to local stand-ins for the
//! platforms (chat-store's `push_mock`, which checks every request against
//! the platforms' documented formats).

#![cfg(all(feature = "push-webhook", feature = "push-fcm", feature = "push-apns"))]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "../../chat-store/tests/push_mock/mod.rs"]
mod push_mock;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use chat_client::{
    ChatClient, ClientEvent, ConnectOptions, Connection, MemoryCursorStore, Session,
};
use chat_core::memory::MemoryDirectory;
use chat_core::{DeviceId, Directory, Platform, PushNotifier};
use chat_server::{ChatServer, ServerConfig};
use chat_store::push::apns::ApnsNotifier;
use chat_store::push::fcm::FcmNotifier;
use chat_store::push::webhook::WebhookNotifier;
use chat_store::push::PlatformRouter;
use common::{start_with, test_config, TestServer};
use push_mock::{Kind, MockPush, Reply, Seen};

const WAIT: Duration = Duration::from_secs(20);

/// All three providers, pointed at the stand-in.
fn router(mock: &MockPush) -> Arc<dyn PushNotifier> {
    Arc::new(
        PlatformRouter::new()
            .with_android(Arc::new(FcmNotifier::new(mock.fcm_config()).unwrap()))
            .with_ios(Arc::new(ApnsNotifier::new(mock.apns_config()).unwrap()))
            .with_fallback(Arc::new(
                WebhookNotifier::new(mock.webhook_config()).unwrap(),
            )),
    )
}

/// A server on an in-memory directory the test can inspect.
async fn server(mock: &MockPush, config: ServerConfig) -> (TestServer, Arc<MemoryDirectory>) {
    let directory = Arc::new(MemoryDirectory::default());
    let ts = start_with(
        ChatServer::builder(config)
            .directory(directory.clone())
            .push(router(mock)),
    )
    .await;
    (ts, directory)
}

async fn signup(ts: &TestServer, name: &str) -> Session {
    ChatClient::new(&ts.http)
        .unwrap()
        .signup(name, "password123", None)
        .await
        .unwrap()
}

async fn connect(session: &Session) -> Connection {
    let options = ConnectOptions {
        reconnect_min: Duration::from_millis(20),
        reconnect_max: Duration::from_millis(200),
        ..ConnectOptions::default()
    };
    let mut conn = session
        .connect(
            DeviceId::new_random(),
            Arc::new(MemoryCursorStore::new()),
            options,
        )
        .await
        .unwrap();
    loop {
        match tokio::time::timeout(WAIT, conn.next_event()).await {
            Ok(Some(ClientEvent::Synced { .. })) => return conn,
            Ok(Some(_)) => continue,
            other => panic!("no sync: {other:?}"),
        }
    }
}

/// A 64-hex-digit APNs device token.
fn apns_token(n: u8) -> String {
    format!("{n:02x}").repeat(32)
}

/// Waits until `cond` holds, failing after [`WAIT`].
async fn wait_until(cond: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !cond() {
        assert!(tokio::time::Instant::now() < deadline, "condition not met");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn fcm_data<'a>(seen: &'a Seen, key: &str) -> &'a str {
    seen.body["message"]["data"][key].as_str().unwrap()
}

#[tokio::test]
async fn offline_recipients_get_one_push_per_device_and_online_ones_none() {
    let mock = MockPush::start().await;
    let (ts, _) = server(&mock, test_config()).await;
    let alice = signup(&ts, "alice").await;
    let bob = signup(&ts, "bob").await;
    let carol = signup(&ts, "carol").await;
    let bob_ios = apns_token(0xb0);
    bob.register_device(DeviceId::new_random(), Platform::Android, Some("bob-fcm"))
        .await
        .unwrap();
    // The same app reinstalled under a new device id, same token: pushed once.
    bob.register_device(DeviceId::new_random(), Platform::Android, Some("bob-fcm"))
        .await
        .unwrap();
    bob.register_device(DeviceId::new_random(), Platform::Ios, Some(&bob_ios))
        .await
        .unwrap();
    bob.register_device(DeviceId::new_random(), Platform::Web, Some("bob-web"))
        .await
        .unwrap();
    bob.register_device(DeviceId::new_random(), Platform::Desktop, None)
        .await
        .unwrap();
    carol
        .register_device(DeviceId::new_random(), Platform::Android, Some("carol-fcm"))
        .await
        .unwrap();
    alice
        .register_device(DeviceId::new_random(), Platform::Android, Some("alice-fcm"))
        .await
        .unwrap();
    let group = alice
        .create_group("g", &[bob.user_id(), carol.user_id()])
        .await
        .unwrap();
    let a = connect(&alice).await;

    // Bob and Carol are offline: each of their devices is pushed once, over
    // its platform; Alice, the sender, is not.
    let sent = a.send(group.id, "secret text").await.unwrap();
    mock.wait_for(4, |s| s.kind != Kind::Oauth && s.status == 200)
        .await;
    assert_eq!(mock.seen_token("bob-fcm").len(), 1);
    assert_eq!(mock.seen_token(&bob_ios).len(), 1);
    assert_eq!(mock.seen_token("carol-fcm").len(), 1);
    let hooks = mock.seen_kind(Kind::Webhook);
    assert_eq!(hooks.len(), 1);
    assert_eq!(
        hooks[0].body["recipient"],
        bob.user_id().to_string().as_str()
    );
    assert_eq!(hooks[0].body["devices"][0]["push_token"], "bob-web");
    let to_bob = &mock.seen_token("bob-fcm")[0];
    assert_eq!(fcm_data(to_bob, "recipient"), bob.user_id().to_string());
    assert_eq!(fcm_data(to_bob, "sender"), alice.user_id().to_string());
    assert_eq!(fcm_data(to_bob, "message_id"), sent.message_id.to_string());
    assert_eq!(fcm_data(to_bob, "channel_id"), group.id.to_string());
    // No preview by default: the text never leaves the server.
    assert!(!String::from_utf8_lossy(&to_bob.raw).contains("secret"));
    let apns = &mock.seen_token(&bob_ios)[0];
    assert_eq!(
        apns.headers["apns-collapse-id"],
        group.id.to_string().as_str()
    );
    assert!(!String::from_utf8_lossy(&hooks[0].raw).contains("secret"));

    // Bob comes online: the next message pushes to Carol only. Her push is
    // made in the same pass that skips Bob, so once it is here Bob's turn
    // has passed.
    let _b = connect(&bob).await;
    a.send(group.id, "bob is here").await.unwrap();
    mock.wait_for(2, |s| s.token == "carol-fcm").await;
    assert_eq!(mock.seen_token("bob-fcm").len(), 1, "no push while online");
    assert_eq!(mock.seen_token(&bob_ios).len(), 1);
    assert_eq!(mock.seen_kind(Kind::Webhook).len(), 1);
    assert!(mock.seen_token("alice-fcm").is_empty(), "never the sender");
    assert_eq!(mock.seen_kind(Kind::Fcm).len(), 3);
    assert_eq!(mock.seen_kind(Kind::Oauth).len(), 1);
    mock.assert_well_formed();
    // Counted once the platform's answers are in.
    let stats = ts.server.stats();
    wait_until(|| stats.pushes_delivered.load(Ordering::Relaxed) == 5).await;
    assert_eq!(stats.pushes_sent.load(Ordering::Relaxed), 3);
    assert_eq!(stats.push_failures.load(Ordering::Relaxed), 0);
    ts.stop().await;
}

#[tokio::test]
async fn an_unregistered_token_is_removed_and_not_pushed_again() {
    let mock = MockPush::start().await;
    let (ts, directory) = server(&mock, test_config()).await;
    let alice = signup(&ts, "alice").await;
    let bob = signup(&ts, "bob").await;
    let (gone_phone, old_iphone) = (DeviceId::new_random(), DeviceId::new_random());
    let old_ios = apns_token(0x41);
    bob.register_device(gone_phone, Platform::Android, Some("bob-gone"))
        .await
        .unwrap();
    bob.register_device(old_iphone, Platform::Ios, Some(&old_ios))
        .await
        .unwrap();
    bob.register_device(DeviceId::new_random(), Platform::Android, Some("bob-ok"))
        .await
        .unwrap();
    mock.script("bob-gone", [Reply::fcm_unregistered()]);
    mock.script(&old_ios, [Reply::apns(410, "Unregistered")]);
    let direct = alice.open_direct(bob.user_id()).await.unwrap();
    let a = connect(&alice).await;

    a.send(direct.id, "one").await.unwrap();
    mock.wait_for(3, |s| s.kind == Kind::Fcm || s.kind == Kind::Apns)
        .await;
    // The server clears both tokens; the devices stay registered.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let devices = directory.devices(bob.user_id()).await.unwrap();
        assert_eq!(devices.len(), 3, "devices are kept");
        let token_of = |id| {
            devices
                .iter()
                .find(|d| d.id == id)
                .unwrap()
                .push_token
                .clone()
        };
        if token_of(gone_phone).is_none() && token_of(old_iphone).is_none() {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "tokens not removed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let stats = ts.server.stats();
    wait_until(|| stats.push_tokens_removed.load(Ordering::Relaxed) == 2).await;

    // The next message goes to the remaining device only.
    a.send(direct.id, "two").await.unwrap();
    mock.wait_for(2, |s| s.token == "bob-ok").await;
    assert_eq!(mock.seen_token("bob-gone").len(), 1, "pushed again");
    assert_eq!(mock.seen_token(&old_ios).len(), 1, "pushed again");

    // Registering a fresh token brings push back for that device.
    bob.register_device(gone_phone, Platform::Android, Some("bob-new"))
        .await
        .unwrap();
    a.send(direct.id, "three").await.unwrap();
    mock.wait_for(1, |s| s.token == "bob-new").await;
    mock.assert_well_formed();
    ts.stop().await;
}

#[tokio::test]
async fn a_burst_collapses_into_one_notification_with_a_count() {
    let mock = MockPush::start().await;
    let config = ServerConfig {
        push_concurrency: 1,
        push_preview: true,
        ..test_config()
    };
    let (ts, _) = server(&mock, config).await;
    let alice = signup(&ts, "alice").await;
    let bob = signup(&ts, "bob").await;
    bob.register_device(DeviceId::new_random(), Platform::Android, Some("bob-fcm"))
        .await
        .unwrap();
    let direct = alice.open_direct(bob.user_id()).await.unwrap();
    let a = connect(&alice).await;

    // The platform is slow to answer the first push; meanwhile four more
    // messages arrive. They wait for the one delivery slot and go out as one
    // notification for the latest message, with a count of 4.
    mock.hold(true);
    a.send(direct.id, "m1").await.unwrap();
    mock.wait_for(1, |s| s.token == "bob-fcm").await;
    let mut last = None;
    for i in 2..=5 {
        last = Some(a.send(direct.id, format!("m{i}")).await.unwrap());
    }
    mock.hold(false);
    let pushes = mock.wait_for(2, |s| s.token == "bob-fcm").await;
    let first = &pushes[0].body["message"];
    assert_eq!(first["data"]["count"], "1");
    assert_eq!(first["notification"]["body"], "m1");
    let burst = &pushes[1].body["message"];
    assert_eq!(burst["data"]["count"], "4");
    assert_eq!(
        burst["data"]["message_id"],
        last.unwrap().message_id.to_string().as_str()
    );
    assert_eq!(burst["notification"]["body"], "m5 (+3 more)");
    assert_eq!(
        burst["android"]["collapse_key"],
        direct.id.to_string().as_str()
    );
    // All five messages are accounted for by these two pushes, so no other
    // can follow.
    assert_eq!(
        ts.server.stats().pushes_collapsed.load(Ordering::Relaxed),
        3
    );
    assert_eq!(mock.seen_token("bob-fcm").len(), 2);
    mock.assert_well_formed();
    ts.stop().await;
}
