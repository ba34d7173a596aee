//! Push end to end: the real server, the real client SDK, and the real FCM,
//! APNs and webhook providers talking HTTP to local stand-ins for the
//! platforms (chat-push's `push_mock`, which checks every request against
//! the platforms' documented formats). The collapse windows and the
//! clearing of invalid tokens are also driven through the server's own API
//! with in-memory backends and a recording notifier, on tokio's paused
//! clock where time matters.

#![cfg(all(feature = "push-webhook", feature = "push-fcm", feature = "push-apns"))]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "../../chat-push/tests/push_mock/mod.rs"]
mod push_mock;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chat_client::{
    ChatClient, ClientEvent, ConnectOptions, Connection, MemoryCursorStore, Session,
};
use chat_core::memory::{MemoryDirectory, MemoryNotifier, MemoryStore};
use chat_core::{
    Channel, ChannelId, ClientMsgId, Contact, DeliveryOutcome, Device, DeviceId, Directory,
    FriendOutcome, FriendRequest, Invitation, InviteOutcome, Limits, Platform, Privacy, Profile,
    PushNotification, PushNotifier, PushReport, TokenState, User, UserId, UserRecord,
};
use chat_push::apns::ApnsNotifier;
use chat_push::fcm::FcmNotifier;
use chat_push::webhook::WebhookNotifier;
use chat_push::PlatformRouter;
use chat_server::{ChatServer, ServerConfig};
use common::{open_to_everyone, signup_open, start_with, test_config, TestServer};
use push_mock::{Kind, MockPush, Reply, Seen};

const WAIT: Duration = Duration::from_secs(20);

/// The test configuration with a short collapse window, so that tests that
/// send several messages to one channel do not wait two seconds each.
fn push_config() -> ServerConfig {
    ServerConfig {
        push_collapse_window: Duration::from_millis(200),
        ..test_config()
    }
}

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
    let store = Arc::new(MemoryStore::default());
    let directory = store.directory();
    let ts = start_with(
        ChatServer::builder(config)
            .directory(directory.clone())
            .messages(store.clone())
            .push(router(mock)),
    )
    .await;
    (ts, directory)
}

async fn signup(ts: &TestServer, name: &str) -> Session {
    signup_open(ts, name).await
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
    let (ts, _) = server(&mock, push_config()).await;
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
        .unwrap()
        .channel;
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

    // Bob comes online: the next message pushes to Carol only (held for
    // the end of her collapse window, then sent). Bob is left out when the
    // message is taken, before Carol's is held, so once hers is here Bob's
    // turn has passed.
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
    let stats = || ts.server.stats();
    wait_until(|| stats().pushes_delivered == 5).await;
    assert_eq!(stats().pushes_sent, 3);
    assert_eq!(stats().push_failures, 0);
    ts.stop().await;
}

#[tokio::test]
async fn an_unregistered_token_is_removed_and_not_pushed_again() {
    let mock = MockPush::start().await;
    let (ts, directory) = server(&mock, push_config()).await;
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
    let stats = || ts.server.stats();
    wait_until(|| stats().push_tokens_removed == 2).await;

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
async fn a_burst_pushes_the_first_message_at_once_and_the_rest_as_one_follow_up() {
    let mock = MockPush::start().await;
    let window = Duration::from_millis(500);
    let config = ServerConfig {
        push_preview: true,
        push_collapse_window: window,
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

    // The first message is pushed at once.
    a.send(direct.id, "m1").await.unwrap();
    let first = mock.wait_for(1, |s| s.token == "bob-fcm").await;
    let first = &first[0].body["message"];
    assert_eq!(first["data"]["count"], "1");
    assert_eq!(first["notification"]["body"], "m1");
    // Four more within the window are held and sent as one follow-up when
    // it ends, for the latest message, counting the four. (Counts, not
    // timing: on a machine slow enough to spread the sends over several
    // windows, they add up the same.)
    let mut last = None;
    for i in 2..=5 {
        last = Some(a.send(direct.id, format!("m{i}")).await.unwrap());
    }
    let last = last.unwrap();
    let count_of = |s: &Seen| -> u32 { fcm_data(s, "count").parse().unwrap() };
    let total = || -> u32 { mock.seen_token("bob-fcm").iter().map(count_of).sum() };
    wait_until(|| total() >= 5).await;
    let pushes = mock.seen_token("bob-fcm");
    assert_eq!(total(), 5, "every message is counted once");
    let burst = &pushes.last().unwrap().body["message"];
    let count = count_of(pushes.last().unwrap());
    assert_eq!(
        burst["data"]["message_id"],
        last.message_id.to_string().as_str()
    );
    let body = if count == 1 {
        "m5".to_owned()
    } else {
        format!("m5 (+{} more)", count - 1)
    };
    assert_eq!(burst["notification"]["body"], body.as_str());
    assert_eq!(
        burst["android"]["collapse_key"],
        direct.id.to_string().as_str()
    );
    // Typically exactly two pushes: m1, then m5 counting 4.
    let follow_ups = pushes.len() as u64 - 1;
    assert_eq!(
        ts.server.stats().pushes_collapsed,
        4 - follow_ups,
        "messages merged into a follow-up"
    );
    // Nothing else follows: every message is accounted for.
    tokio::time::sleep(window * 2).await;
    assert_eq!(mock.seen_token("bob-fcm").len(), pushes.len());
    mock.assert_well_formed();
    ts.stop().await;
}

/// A user in `directory`.
async fn user(directory: &dyn Directory, name: &str) -> UserId {
    let id = UserId::new_random();
    directory
        .create_user(UserRecord {
            user: User {
                id,
                username: name.to_owned(),
                profile: Profile {
                    display_name: name.to_owned(),
                    about: String::new(),
                },
                created_at: 0,
            },
            password_hash: "$argon2id$v=19$m=256,t=1,p=1$c2FsdA$test".into(),
        })
        .await
        .unwrap();
    id
}

fn android(user: UserId, id: DeviceId, token: &str) -> Device {
    Device {
        id,
        user,
        platform: Platform::Android,
        push_token: Some(token.to_owned()),
        created_at: 0,
    }
}

/// Lets the server's tasks run (on the paused clock, 1 ms passes).
async fn settle() {
    tokio::time::sleep(Duration::from_millis(1)).await;
}

#[tokio::test(start_paused = true)]
async fn collapse_windows_follow_the_clock() {
    let store = Arc::new(MemoryStore::default());
    let directory = store.directory();
    let notifier = Arc::new(MemoryNotifier::default());
    let config = ServerConfig {
        push_preview: true,
        ..test_config()
    };
    let window = config.push_collapse_window;
    assert_eq!(window, Duration::from_secs(2), "the default window");
    let server = ChatServer::builder(config)
        .directory(directory.clone())
        .messages(store.clone())
        .push(notifier.clone())
        .build()
        .await
        .unwrap();
    let (alice, bob, carol) = (
        user(&*directory, "alice").await,
        user(&*directory, "bob").await,
        user(&*directory, "carol").await,
    );
    directory
        .register_device(
            android(bob, DeviceId::new_random(), "bob-token"),
            &Limits::default(),
        )
        .await
        .unwrap();
    let from_alice = directory
        .create_channel(Channel::direct(alice, bob, 0), &Limits::default())
        .await
        .unwrap();
    let from_carol = directory
        .create_channel(Channel::direct(carol, bob, 0), &Limits::default())
        .await
        .unwrap();
    let send = |from: UserId, channel: ChannelId, text: &str| {
        let server = server.clone();
        let text = text.to_owned();
        async move {
            server
                .send(
                    from,
                    DeviceId::new_random(),
                    channel,
                    ClientMsgId::new_random(),
                    text,
                )
                .await
                .unwrap()
                .message
                .id
        }
    };
    let summary = |n: &PushNotification| (n.channel_id, n.message_id, n.count, n.preview.clone());

    // The first message pushes at once.
    let m1 = send(alice, from_alice.id, "m1").await;
    let opened = tokio::time::Instant::now();
    settle().await;
    assert_eq!(
        notifier.sent().iter().map(summary).collect::<Vec<_>>(),
        [(from_alice.id, m1, 1, Some("m1".into()))]
    );
    // Three more within the window are held; m4 is sent before m3 is
    // taken, and the held message is replaced by each newer one.
    tokio::time::advance(Duration::from_millis(300)).await;
    let _m2 = send(alice, from_alice.id, "m2").await;
    settle().await;
    tokio::time::advance(Duration::from_millis(300)).await;
    let _m3 = send(alice, from_alice.id, "m3").await;
    let m4 = send(alice, from_alice.id, "m4").await;
    settle().await;
    assert_eq!(notifier.sent().len(), 1, "held within the window");
    // Another channel to the same recipient has its own window.
    let c1 = send(carol, from_carol.id, "c1").await;
    settle().await;
    assert_eq!(notifier.sent().len(), 2);
    assert_eq!(
        summary(&notifier.sent()[1]),
        (from_carol.id, c1, 1, Some("c1".into()))
    );

    // Until the window ends nothing more goes out; then ONE follow-up for
    // the latest message, counting the three not yet notified.
    tokio::time::sleep_until(opened + window - Duration::from_millis(10)).await;
    settle().await;
    assert_eq!(notifier.sent().len(), 2);
    tokio::time::sleep_until(opened + window).await;
    settle().await;
    let sent = notifier.sent();
    assert_eq!(sent.len(), 3);
    assert_eq!(summary(&sent[2]), (from_alice.id, m4, 3, Some("m4".into())));
    assert_eq!(sent[2].recipient, bob);
    assert_eq!(sent[2].sender, alice);

    // The follow-up opened a new window: what arrives in it is held and
    // counted afresh.
    let reopened = tokio::time::Instant::now();
    let _m5 = send(alice, from_alice.id, "m5").await;
    tokio::time::advance(Duration::from_millis(500)).await;
    let m6 = send(alice, from_alice.id, "m6").await;
    settle().await;
    assert_eq!(notifier.sent().len(), 3);
    tokio::time::sleep_until(reopened + window).await;
    settle().await;
    let sent = notifier.sent();
    assert_eq!(sent.len(), 4);
    assert_eq!(summary(&sent[3]), (from_alice.id, m6, 2, Some("m6".into())));

    // A window that ends with nothing held closes: the next message pushes
    // at once again.
    tokio::time::sleep(window * 2).await;
    let m7 = send(alice, from_alice.id, "m7").await;
    settle().await;
    let sent = notifier.sent();
    assert_eq!(sent.len(), 5);
    assert_eq!(summary(&sent[4]), (from_alice.id, m7, 1, Some("m7".into())));
    // Merged into a follow-up: m3 and m4 into m2's, m6 into m5's.
    let stats = || server.stats();
    assert_eq!(stats().pushes_collapsed, 3);
    assert_eq!(stats().pushes_sent, 5);
    server.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn previews_are_cut_and_absent_when_off() {
    for preview in [true, false] {
        let store = Arc::new(MemoryStore::default());
        let directory = store.directory();
        let notifier = Arc::new(MemoryNotifier::default());
        let config = ServerConfig {
            push_preview: preview,
            ..test_config()
        };
        let server = ChatServer::builder(config)
            .directory(directory.clone())
            .messages(store.clone())
            .push(notifier.clone())
            .build()
            .await
            .unwrap();
        let (alice, bob) = (
            user(&*directory, "alice").await,
            user(&*directory, "bob").await,
        );
        directory
            .register_device(
                android(bob, DeviceId::new_random(), "bob-token"),
                &Limits::default(),
            )
            .await
            .unwrap();
        let direct = directory
            .create_channel(Channel::direct(alice, bob, 0), &Limits::default())
            .await
            .unwrap();
        let text = "x".repeat(100_000);
        server
            .send(
                alice,
                DeviceId::new_random(),
                direct.id,
                ClientMsgId::new_random(),
                text,
            )
            .await
            .unwrap();
        settle().await;
        let sent = notifier.sent();
        assert_eq!(sent.len(), 1);
        match preview {
            true => assert_eq!(sent[0].preview.as_deref(), Some("x".repeat(200).as_str())),
            false => assert_eq!(sent[0].preview, None),
        }
        server.shutdown().await;
    }
}

#[tokio::test(start_paused = true)]
async fn at_most_32_devices_are_pushed_the_most_recent() {
    let store = Arc::new(MemoryStore::default());
    let directory = store.directory();
    let notifier = Arc::new(MemoryNotifier::default());
    let server = ChatServer::builder(test_config())
        .directory(directory.clone())
        .messages(store.clone())
        .push(notifier.clone())
        .build()
        .await
        .unwrap();
    let (alice, bob) = (
        user(&*directory, "alice").await,
        user(&*directory, "bob").await,
    );
    // More devices than a push goes to: a deployment with a higher device
    // cap, or devices registered before there was one.
    let many = Limits {
        devices: 1_000,
        ..Limits::default()
    };
    for i in 0..100u64 {
        let mut d = android(bob, DeviceId::new_random(), &format!("t{i}"));
        d.created_at = 1_000 + i;
        directory.register_device(d, &many).await.unwrap();
    }
    let direct = directory
        .create_channel(Channel::direct(alice, bob, 0), &Limits::default())
        .await
        .unwrap();
    server
        .send(
            alice,
            DeviceId::new_random(),
            direct.id,
            ClientMsgId::new_random(),
            "hi".into(),
        )
        .await
        .unwrap();
    settle().await;
    let sent = notifier.sent();
    assert_eq!(sent.len(), 1);
    let mut tokens: Vec<u64> = sent[0]
        .devices
        .iter()
        .map(|d| d.push_token.as_deref().unwrap()[1..].parse().unwrap())
        .collect();
    tokens.sort_unstable();
    assert_eq!(tokens, (68..100).collect::<Vec<_>>(), "the 32 most recent");
    server.shutdown().await;
}

/// What lands in the directory right after the server next reads a user's
/// devices, as a concurrent `PUT` or `DELETE /v1/devices/{id}` could.
#[derive(Debug)]
enum Race {
    Register(Device),
    Remove(UserId, DeviceId),
}

/// An in-memory directory with a [`Race`] to spring.
#[derive(Debug, Default)]
struct RacingDirectory {
    inner: Arc<MemoryDirectory>,
    race: Mutex<Option<Race>>,
    clears: AtomicUsize,
}

impl RacingDirectory {
    fn arm(&self, race: Race) {
        *self.race.lock().unwrap() = Some(race);
    }
}

#[async_trait]
impl Directory for RacingDirectory {
    async fn create_user(&self, record: UserRecord) -> chat_core::Result<User> {
        self.inner.create_user(record).await
    }
    async fn user(&self, id: UserId) -> chat_core::Result<Option<User>> {
        self.inner.user(id).await
    }
    async fn user_by_name(&self, username: &str) -> chat_core::Result<Option<UserRecord>> {
        self.inner.user_by_name(username).await
    }
    async fn update_profile(&self, id: UserId, profile: Profile) -> chat_core::Result<User> {
        self.inner.update_profile(id, profile).await
    }
    async fn privacy(&self, user: UserId) -> chat_core::Result<Privacy> {
        self.inner.privacy(user).await
    }
    async fn set_privacy(&self, user: UserId, privacy: Privacy) -> chat_core::Result<Privacy> {
        self.inner.set_privacy(user, privacy).await
    }
    async fn token_state(&self, user: UserId, session: u64) -> chat_core::Result<TokenState> {
        self.inner.token_state(user, session).await
    }
    async fn revoke_session(
        &self,
        user: UserId,
        session: u64,
        until: u64,
        now: u64,
    ) -> chat_core::Result<()> {
        self.inner.revoke_session(user, session, until, now).await
    }
    async fn revoke_all_sessions(&self, user: UserId) -> chat_core::Result<u64> {
        self.inner.revoke_all_sessions(user).await
    }
    async fn request_friend(
        &self,
        from: UserId,
        to: UserId,
        now: u64,
        limits: &Limits,
    ) -> chat_core::Result<FriendOutcome> {
        self.inner.request_friend(from, to, now, limits).await
    }
    async fn remove_friend(&self, a: UserId, b: UserId) -> chat_core::Result<()> {
        self.inner.remove_friend(a, b).await
    }
    async fn friends(&self, user: UserId) -> chat_core::Result<Vec<UserId>> {
        self.inner.friends(user).await
    }
    async fn friend_requests(&self, user: UserId) -> chat_core::Result<Vec<FriendRequest>> {
        self.inner.friend_requests(user).await
    }
    async fn contacts(&self, user: UserId, among: &[UserId]) -> chat_core::Result<Vec<Contact>> {
        self.inner.contacts(user, among).await
    }
    async fn block(&self, user: UserId, target: UserId) -> chat_core::Result<()> {
        self.inner.block(user, target).await
    }
    async fn unblock(&self, user: UserId, target: UserId) -> chat_core::Result<()> {
        self.inner.unblock(user, target).await
    }
    async fn blocked(&self, user: UserId) -> chat_core::Result<Vec<UserId>> {
        self.inner.blocked(user).await
    }
    async fn create_channel(
        &self,
        channel: Channel,
        limits: &Limits,
    ) -> chat_core::Result<Channel> {
        self.inner.create_channel(channel, limits).await
    }
    async fn channel(&self, id: ChannelId) -> chat_core::Result<Option<Channel>> {
        self.inner.channel(id).await
    }
    async fn add_member(
        &self,
        channel: ChannelId,
        user: UserId,
        limits: &Limits,
    ) -> chat_core::Result<Channel> {
        self.inner.add_member(channel, user, limits).await
    }
    async fn remove_member(&self, channel: ChannelId, user: UserId) -> chat_core::Result<Channel> {
        self.inner.remove_member(channel, user).await
    }
    async fn channels_of(
        &self,
        user: UserId,
        after: Option<ChannelId>,
        limit: usize,
    ) -> chat_core::Result<Vec<Channel>> {
        self.inner.channels_of(user, after, limit).await
    }
    async fn invite(
        &self,
        channel: ChannelId,
        user: UserId,
        inviter: UserId,
        now: u64,
        limits: &Limits,
    ) -> chat_core::Result<InviteOutcome> {
        self.inner.invite(channel, user, inviter, now, limits).await
    }
    async fn invitations(&self, user: UserId) -> chat_core::Result<Vec<Invitation>> {
        self.inner.invitations(user).await
    }
    async fn accept_invitation(
        &self,
        channel: ChannelId,
        user: UserId,
        limits: &Limits,
    ) -> chat_core::Result<Channel> {
        self.inner.accept_invitation(channel, user, limits).await
    }
    async fn remove_invitation(&self, channel: ChannelId, user: UserId) -> chat_core::Result<bool> {
        self.inner.remove_invitation(channel, user).await
    }
    async fn register_device(&self, device: Device, limits: &Limits) -> chat_core::Result<Device> {
        self.inner.register_device(device, limits).await
    }
    async fn devices(&self, user: UserId) -> chat_core::Result<Vec<Device>> {
        let devices = self.inner.devices(user).await?;
        let race = self.race.lock().unwrap().take();
        match race {
            Some(Race::Register(device)) => {
                self.inner
                    .register_device(device, &Limits::default())
                    .await?;
            }
            Some(Race::Remove(user, device)) => self.inner.remove_device(user, device).await?,
            None => {}
        }
        Ok(devices)
    }
    async fn remove_device(&self, user: UserId, device: DeviceId) -> chat_core::Result<()> {
        self.inner.remove_device(user, device).await
    }
    async fn clear_push_token(
        &self,
        user: UserId,
        device: DeviceId,
        token: &str,
    ) -> chat_core::Result<bool> {
        let cleared = self.inner.clear_push_token(user, device, token).await;
        self.clears.fetch_add(1, Ordering::SeqCst);
        cleared
    }
}

/// Reports tokens starting with "old" invalid, and springs the next race
/// on the directory when it does (so it lands in the server's clearing).
#[derive(Debug)]
struct InvalidatingNotifier {
    directory: Arc<RacingDirectory>,
    race: Mutex<Option<Race>>,
}

#[async_trait]
impl PushNotifier for InvalidatingNotifier {
    async fn notify(&self, n: &PushNotification) -> chat_core::Result<PushReport> {
        if let Some(race) = self.race.lock().unwrap().take() {
            self.directory.arm(race);
        }
        let mut report = PushReport::new();
        for d in &n.devices {
            let invalid = d
                .push_token
                .as_deref()
                .is_some_and(|t| t.starts_with("old"));
            report.record(
                d.id,
                if invalid {
                    DeliveryOutcome::InvalidToken {
                        reason: "UNREGISTERED".into(),
                    }
                } else {
                    DeliveryOutcome::Delivered
                },
            );
        }
        Ok(report)
    }
}

#[tokio::test]
async fn clearing_an_invalid_token_never_overwrites_a_newer_one_or_revives_a_device() {
    let directory = Arc::new(RacingDirectory::default());
    let store = Arc::new(MemoryStore::new(directory.inner.clone()));
    let notifier = Arc::new(InvalidatingNotifier {
        directory: directory.clone(),
        race: Mutex::new(None),
    });
    let config = ServerConfig {
        push_collapse_window: Duration::ZERO,
        ..test_config()
    };
    let server = ChatServer::builder(config)
        .directory(directory.clone())
        .messages(store.clone())
        .push(notifier.clone())
        .build()
        .await
        .unwrap();
    let (alice, bob) = (
        user(&*directory, "alice").await,
        user(&*directory, "bob").await,
    );
    let direct = directory
        .create_channel(Channel::direct(alice, bob, 0), &Limits::default())
        .await
        .unwrap();
    let stats = || server.stats();
    let clears = || directory.clears.load(Ordering::SeqCst);
    let devices = || {
        let directory = directory.clone();
        async move {
            let mut d = directory.devices(bob).await.unwrap();
            d.sort_by_key(|d| d.push_token.clone());
            d
        }
    };
    let send = || {
        let server = server.clone();
        async move {
            server
                .send(
                    alice,
                    DeviceId::new_random(),
                    direct.id,
                    ClientMsgId::new_random(),
                    "hi".into(),
                )
                .await
                .unwrap();
        }
    };

    // 1. The app registers a new token between the server's read of the
    // devices and its write: the new token stays.
    let (d1, d2, d3, d4, d5) = (
        DeviceId::new_random(),
        DeviceId::new_random(),
        DeviceId::new_random(),
        DeviceId::new_random(),
        DeviceId::new_random(),
    );
    directory
        .register_device(android(bob, d1, "old-1"), &Limits::default())
        .await
        .unwrap();
    *notifier.race.lock().unwrap() = Some(Race::Register(android(bob, d1, "new-1")));
    send().await;
    wait_until(|| clears() >= 1).await;
    assert_eq!(devices().await, [android(bob, d1, "new-1")]);

    // 2. The device is removed in between: it stays removed.
    directory
        .register_device(android(bob, d2, "old-2"), &Limits::default())
        .await
        .unwrap();
    *notifier.race.lock().unwrap() = Some(Race::Remove(bob, d2));
    send().await;
    wait_until(|| clears() >= 2).await;
    assert_eq!(devices().await, [android(bob, d1, "new-1")]);
    assert_eq!(stats().push_tokens_removed, 0);

    // 3. Without a race the token is cleared, from every device holding it
    // (two devices sharing a token are pushed once); the devices stay.
    directory
        .register_device(android(bob, d3, "old-3"), &Limits::default())
        .await
        .unwrap();
    directory
        .register_device(android(bob, d4, "old-4"), &Limits::default())
        .await
        .unwrap();
    directory
        .register_device(android(bob, d5, "old-4"), &Limits::default())
        .await
        .unwrap();
    send().await;
    wait_until(|| stats().push_tokens_removed >= 3).await;
    let after = devices().await;
    assert_eq!(after.len(), 4);
    for d in &after {
        if d.id == d1 {
            assert_eq!(d.push_token.as_deref(), Some("new-1"));
        } else {
            assert_eq!(d.push_token, None, "{d:?}");
        }
    }
    assert_eq!(stats().push_tokens_removed, 3);
    server.shutdown().await;
}

/// The reference binary's push configuration: FCM credentials, the APNs
/// key and the webhook secret from files, URLs and ids from flags and the
/// environment. Bob offline gets one push per device over each provider;
/// the webhook's signature verifies with the secret from the file.
#[cfg(feature = "cli")]
#[tokio::test]
async fn the_binary_configures_every_provider_from_files_and_environment() {
    let mock = MockPush::start().await;
    let dir = tempfile::tempdir().unwrap();
    let apns_key = dir.path().join("AuthKey.p8");
    std::fs::write(&apns_key, &mock.apns_key_pem).unwrap();
    let secret_file = dir.path().join("webhook.secret");
    std::fs::write(&secret_file, push_mock::WEBHOOK_SECRET).unwrap();
    let fcm_credentials = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../chat-push/tests/fixtures/test-only-fcm-service-account.json"
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_chat-server"))
        .args(["--listen", &format!("127.0.0.1:{port}"), "--memory"])
        .args(["--fcm-credentials", fcm_credentials])
        .args(["--fcm-base-url", &mock.base])
        .args(["--fcm-token-uri", &format!("{}/token", mock.base)])
        .arg("--apns-key")
        .arg(&apns_key)
        .args(["--apns-base-url", &mock.base])
        .env("CHAT_APNS_KEY_ID", push_mock::APNS_KEY_ID)
        .env("CHAT_APNS_TEAM_ID", push_mock::APNS_TEAM_ID)
        .env("CHAT_APNS_TOPIC", push_mock::APNS_TOPIC)
        .env("CHAT_WEBHOOK_URL", mock.webhook_url())
        .env("CHAT_WEBHOOK_SECRET_FILE", &secret_file)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    /// Stops the server however the test ends.
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _server = Kill(child);
    let base = format!("http://127.0.0.1:{port}");
    let client = ChatClient::new(&base).unwrap();
    let alice = {
        let mut last = None;
        for _ in 0..400 {
            match client.signup("alice", "password123", None).await {
                Ok(s) => {
                    last = Some(s);
                    break;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
        last.expect("the binary starts")
    };
    let bob = client.signup("bob", "password123", None).await.unwrap();
    bob.update_privacy(&open_to_everyone()).await.unwrap();
    let bob_ios = apns_token(0xb1);
    for (platform, token) in [
        (Platform::Android, "bob-fcm"),
        (Platform::Ios, bob_ios.as_str()),
        (Platform::Web, "bob-web"),
    ] {
        bob.register_device(DeviceId::new_random(), platform, Some(token))
            .await
            .unwrap();
    }
    let direct = alice.open_direct(bob.user_id()).await.unwrap();
    let a = connect(&alice).await;
    a.send(direct.id, "hello bob").await.unwrap();
    mock.wait_for(3, |s| s.kind != Kind::Oauth && s.status == 200)
        .await;
    mock.assert_well_formed();
    assert_eq!(mock.seen_token("bob-fcm").len(), 1);
    assert_eq!(mock.seen_token(&bob_ios).len(), 1);
    let hooks = mock.seen_kind(Kind::Webhook);
    assert_eq!(hooks.len(), 1);
    use chat_push::webhook::{verify_webhook_signature, SIGNATURE_HEADER};
    let signature = hooks[0].headers[SIGNATURE_HEADER].to_str().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    verify_webhook_signature(
        push_mock::WEBHOOK_SECRET,
        signature,
        &hooks[0].raw,
        now,
        Duration::from_secs(300),
    )
    .expect("the signature verifies with the secret from the file");
}
