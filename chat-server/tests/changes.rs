//! Edits, deletions and reactions through the real server and the real SDK:
//! live to every other device, by sync to a device that was offline, in
//! history, and the refusals. Each test runs on the test storage
//! (`CHAT_TEST_STORAGE`: memory by default, PostgreSQL in CI's second pass).

// Test scaffolding: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;

use chat_client::{
    Change, ChannelId, ClientEvent, ConnectOptions, Connection, DeviceId, ErrorCode, HistoryQuery,
    MemoryCursorStore, Message, MessageId, Session,
};
use chat_core::Reactions;
use common::*;

/// A device with a cursor store of its own, so it can go offline and come
/// back where it left off.
struct Device {
    id: DeviceId,
    store: Arc<MemoryCursorStore>,
}

impl Device {
    fn new() -> Self {
        Self {
            id: DeviceId::new_random(),
            store: Arc::new(MemoryCursorStore::new()),
        }
    }

    /// Connects, its sync still to come (its events not read yet).
    async fn connect(&self, session: &Session) -> Connection {
        session
            .connect(self.id, self.store.clone(), ConnectOptions::default())
            .await
            .unwrap()
    }

    /// Connects and waits for the end of the first sync.
    async fn connect_synced(&self, session: &Session) -> Connection {
        let mut conn = self.connect(session).await;
        next_event(&mut conn, |e| matches!(e, ClientEvent::Synced { .. })).await;
        conn
    }
}

/// The next change event about `id` on `conn`: what changed and the message
/// after it.
async fn next_change(conn: &mut Connection, id: MessageId) -> (Change, Message) {
    let ClientEvent::Changed { change, delivery } = next_event(
        conn,
        |e| matches!(e, ClientEvent::Changed { delivery, .. } if delivery.message.id == id),
    )
    .await
    else {
        unreachable!()
    };
    (change, delivery.message)
}

/// Waits until `conn` has handled the message `id` (as a message event).
async fn seen(conn: &mut Connection, id: MessageId) {
    next_event(
        conn,
        |e| matches!(e, ClientEvent::Message(d) if d.message.id == id),
    )
    .await;
}

async fn history(session: &Session, channel: ChannelId) -> Vec<Message> {
    session
        .history(channel, &HistoryQuery::default())
        .await
        .unwrap()
        .messages
}

/// Bob edits his message: Alice's device gets the new text live, the same
/// edit again changes nothing, history shows the edit in place; Alice, the
/// group's owner, deletes it and Bob's other device gets the tombstone.
/// Bob's laptop, offline meanwhile, gets the edit and then the deletion
/// when it reconnects. Refused: an edit of another user's message, a
/// deletion by a member neither sender nor owner, a deletion in a direct
/// channel by the other member, anything by a non-member, bad content.
#[tokio::test]
async fn edits_and_deletions_reach_every_device_and_converge_after_a_reconnect() {
    let ts = start(test_config()).await;
    let alice = signup_open(&ts, "alice").await;
    let bob = signup_open(&ts, "bob").await;
    let carol = signup_open(&ts, "carol").await;
    let dave = signup_open(&ts, "dave").await;
    let group = alice
        .create_group("trio", &[bob.user_id(), carol.user_id()])
        .await
        .unwrap()
        .channel;
    let direct = alice.open_direct(bob.user_id()).await.unwrap();

    let mut a = connect_synced(&alice).await;
    let mut a2 = connect_synced(&alice).await;
    let mut b1 = connect_synced(&bob).await;
    let laptop = Device::new();
    let mut b2 = laptop.connect_synced(&bob).await;
    let c = connect_synced(&carol).await;
    let d = connect_synced(&dave).await;

    let typo = b1.send(group.id, "helo").await.unwrap();
    let by_alice = a.send(group.id, "by alice").await.unwrap();
    seen(&mut b2, typo.message_id).await;
    seen(&mut b2, by_alice.message_id).await;
    // The laptop goes offline, its cursor saved past both messages.
    b2.close().await;
    drop(b2);

    let edited = b1.edit(group.id, typo.message_id, "hello").await.unwrap();
    assert!(!edited.unchanged);
    assert_eq!(edited.change, Change::Edited {});
    assert_eq!(edited.message.content, "hello");
    assert!(edited.message.edited_at.is_some(), "edited_at is recorded");
    assert!(edited.seq.is_some(), "the change entry's position");
    let (change, message) = next_change(&mut a, typo.message_id).await;
    assert_eq!(change, Change::Edited {});
    assert_eq!(message, edited.message, "alice gets the edit live");

    let again = b1.edit(group.id, typo.message_id, "hello").await.unwrap();
    assert!(again.unchanged, "the same edit again changes nothing");
    assert_eq!(again.seq, None);

    let kept = history(&alice, group.id).await;
    let ids: Vec<MessageId> = kept.iter().map(|m| m.id).collect();
    assert_eq!(
        ids,
        vec![typo.message_id, by_alice.message_id],
        "an edit keeps the id and the order"
    );
    assert_eq!(kept[0].content, "hello");
    assert_eq!(kept[0].edited_at, edited.message.edited_at);

    // Refusals.
    assert_eq!(
        api_code(a.edit(group.id, typo.message_id, "mine now").await),
        ErrorCode::Forbidden,
        "an edit of another user's message"
    );
    assert_eq!(
        api_code(c.delete(group.id, typo.message_id).await),
        ErrorCode::Forbidden,
        "a deletion by a member neither sender nor owner"
    );
    assert_eq!(
        api_code(d.edit(group.id, typo.message_id, "hi").await),
        ErrorCode::NotFound,
        "an edit by a non-member"
    );
    assert_eq!(
        api_code(d.delete(group.id, typo.message_id).await),
        ErrorCode::NotFound,
        "a deletion by a non-member"
    );
    assert_eq!(
        api_code(b1.edit(group.id, MessageId(42), "hi").await),
        ErrorCode::NotFound,
        "no such message"
    );
    assert_eq!(
        api_code(b1.edit(group.id, typo.message_id, "").await),
        ErrorCode::InvalidInput,
        "empty content"
    );
    assert_eq!(
        api_code(b1.edit(group.id, typo.message_id, "a\u{7}b").await),
        ErrorCode::InvalidInput,
        "a control character"
    );
    let in_direct = a.send(direct.id, "direct").await.unwrap();
    assert_eq!(
        api_code(b1.delete(direct.id, in_direct.message_id).await),
        ErrorCode::Forbidden,
        "a direct channel has no owner: only the sender deletes"
    );
    assert_eq!(
        history(&alice, group.id).await,
        kept,
        "refusals stored nothing"
    );

    // The group's owner deletes Bob's message.
    let deleted = a.delete(group.id, typo.message_id).await.unwrap();
    assert_eq!(
        deleted.change,
        Change::Deleted {
            by: alice.user_id()
        }
    );
    assert!(deleted.message.deleted && deleted.message.content.is_empty());
    let (change, message) = next_change(&mut b1, typo.message_id).await;
    assert_eq!(
        change,
        Change::Deleted {
            by: alice.user_id()
        }
    );
    assert_eq!(message, deleted.message, "bob's phone gets the tombstone");
    // Alice's other device: bob's edit, then her own deletion, in order.
    assert_eq!(
        next_change(&mut a2, typo.message_id).await.0,
        Change::Edited {}
    );
    let (change, message) = next_change(&mut a2, typo.message_id).await;
    assert_eq!(
        change,
        Change::Deleted {
            by: alice.user_id()
        },
        "alice's other device gets her own deletion"
    );
    assert_eq!(message, deleted.message);
    assert!(
        a.delete(group.id, typo.message_id).await.unwrap().unchanged,
        "a second deletion changes nothing"
    );
    assert_eq!(
        api_code(b1.edit(group.id, typo.message_id, "back").await),
        ErrorCode::Conflict,
        "a deleted message cannot be edited"
    );
    let kept = history(&bob, group.id).await;
    assert_eq!(
        kept[0], deleted.message,
        "history keeps the tombstone in place"
    );
    assert_eq!(kept[1].content, "by alice");

    // Bob's laptop comes back: the edit, then the deletion, in order.
    let mut b2 = laptop.connect(&bob).await;
    let (first, state) = next_change(&mut b2, typo.message_id).await;
    assert_eq!(first, Change::Edited {});
    assert_eq!(state.id, typo.message_id);
    let (second, state) = next_change(&mut b2, typo.message_id).await;
    assert_eq!(
        second,
        Change::Deleted {
            by: alice.user_id()
        }
    );
    assert_eq!(
        state, deleted.message,
        "the laptop converges on the tombstone"
    );
    ts.stop().await;
}

fn counted(emoji: &str, count: u32, me: bool) -> Reactions {
    Reactions {
        emoji: emoji.into(),
        count,
        me,
    }
}

/// Alice and Carol react to Bob's message: Bob's device gets each reaction
/// live, history counts them per emoji for each reader, a repeated reaction
/// or a removal of one that is not there changes nothing, and Bob's laptop,
/// offline meanwhile, gets them when it reconnects. Refused: a bad emoji, a
/// 21st reaction, a non-member.
#[tokio::test]
async fn reactions_are_counted_in_history_and_reach_every_device() {
    let ts = start(test_config()).await;
    let alice = signup_open(&ts, "alice").await;
    let bob = signup_open(&ts, "bob").await;
    let carol = signup_open(&ts, "carol").await;
    let dave = signup_open(&ts, "dave").await;
    let group = alice
        .create_group("trio", &[bob.user_id(), carol.user_id()])
        .await
        .unwrap()
        .channel;
    let a = connect_synced(&alice).await;
    let mut b1 = connect_synced(&bob).await;
    let laptop = Device::new();
    let mut b2 = laptop.connect_synced(&bob).await;
    let c = connect_synced(&carol).await;
    let d = connect_synced(&dave).await;

    let m = b1.send(group.id, "lunch?").await.unwrap();
    seen(&mut b2, m.message_id).await;
    b2.close().await;
    drop(b2);

    let id = m.message_id;
    let thumbs = a.react(group.id, id, "👍").await.unwrap();
    assert_eq!(
        thumbs.change,
        Change::Reacted {
            user: alice.user_id(),
            emoji: "👍".into()
        }
    );
    c.react(group.id, id, "👍").await.unwrap();
    c.react(group.id, id, "🎉").await.unwrap();
    for (who, emoji) in [
        (alice.user_id(), "👍"),
        (carol.user_id(), "👍"),
        (carol.user_id(), "🎉"),
    ] {
        let (change, message) = next_change(&mut b1, id).await;
        assert_eq!(
            change,
            Change::Reacted {
                user: who,
                emoji: emoji.into()
            },
            "bob's phone gets each reaction live, in order"
        );
        assert_eq!(message.content, "lunch?");
    }
    assert!(
        c.react(group.id, id, "🎉").await.unwrap().unchanged,
        "a reaction already there"
    );
    assert!(
        a.unreact(group.id, id, "🎉").await.unwrap().unchanged,
        "taking back a reaction not there"
    );
    let reactions = |h: Vec<Message>| h[0].reactions.clone();
    assert_eq!(
        reactions(history(&bob, group.id).await),
        vec![counted("🎉", 1, false), counted("👍", 2, false)],
        "counted per emoji, sorted"
    );
    assert_eq!(
        reactions(history(&carol, group.id).await),
        vec![counted("🎉", 1, true), counted("👍", 2, true)],
        "`me` is the reader's"
    );
    c.unreact(group.id, id, "👍").await.unwrap();
    let (change, _) = next_change(&mut b1, id).await;
    assert_eq!(
        change,
        Change::Unreacted {
            user: carol.user_id(),
            emoji: "👍".into()
        }
    );
    assert_eq!(
        reactions(history(&alice, group.id).await),
        vec![counted("🎉", 1, false), counted("👍", 1, true)]
    );

    // Refusals.
    for bad in ["", "a b", "x\u{7}", &"x".repeat(33)] {
        assert_eq!(
            api_code(a.react(group.id, id, bad).await),
            ErrorCode::InvalidInput,
            "emoji {bad:?}"
        );
    }
    assert_eq!(
        api_code(d.react(group.id, id, "👍").await),
        ErrorCode::NotFound,
        "a non-member"
    );
    for k in 1..20 {
        a.react(group.id, id, format!(":{k}:")).await.unwrap();
    }
    assert_eq!(
        api_code(a.react(group.id, id, ":over:").await),
        ErrorCode::LimitExceeded,
        "a 21st reaction of one user on one message"
    );

    // Bob's laptop comes back: every reaction change, in order.
    let mut b2 = laptop.connect(&bob).await;
    let mut changes = Vec::new();
    while changes.len() < 4 + 19 {
        changes.push(next_change(&mut b2, id).await.0);
    }
    assert_eq!(
        changes[..4],
        [
            Change::Reacted {
                user: alice.user_id(),
                emoji: "👍".into()
            },
            Change::Reacted {
                user: carol.user_id(),
                emoji: "👍".into()
            },
            Change::Reacted {
                user: carol.user_id(),
                emoji: "🎉".into()
            },
            Change::Unreacted {
                user: carol.user_id(),
                emoji: "👍".into()
            },
        ]
    );
    let counts = reactions(history(&bob, group.id).await);
    assert_eq!(counts.iter().map(|r| r.count).sum::<u32>(), 1 + 1 + 19);
    ts.stop().await;
}

/// Two nodes sharing storage, linked by a delivery bus: an edit, a deletion
/// and a reaction made through one node reach a device connected to the
/// other live.
#[tokio::test]
async fn changes_cross_the_bus_to_devices_on_another_node() {
    use chat_core::memory::{MemoryBusHub, MemoryDiscovery, MemoryPresence, MemoryStore};
    use chat_server::{ChatServer, ServerConfig};

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
    let alice = signup_open(&s1, "alice").await;
    let bob = signup_open(&s2, "bob").await;
    let direct = alice.open_direct(bob.user_id()).await.unwrap();
    let in_region = |region: &str| ConnectOptions {
        region: Some(region.into()),
        ..ConnectOptions::default()
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
    next_event(&mut a, |e| matches!(e, ClientEvent::Synced { .. })).await;
    next_event(&mut b, |e| matches!(e, ClientEvent::Synced { .. })).await;
    assert_eq!((s1.server.connections(), s2.server.connections()), (1, 1));

    let m = a.send(direct.id, "across nodes").await.unwrap();
    seen(&mut b, m.message_id).await;
    let edited = a
        .edit(direct.id, m.message_id, "across nodes, edited")
        .await
        .unwrap();
    let (change, message) = next_change(&mut b, m.message_id).await;
    assert_eq!(change, Change::Edited {});
    assert_eq!(message, edited.message);
    b.react(direct.id, m.message_id, "👍").await.unwrap();
    let (change, _) = next_change(&mut a, m.message_id).await;
    assert_eq!(
        change,
        Change::Reacted {
            user: bob.user_id(),
            emoji: "👍".into()
        }
    );
    let deleted = a.delete(direct.id, m.message_id).await.unwrap();
    let (change, message) = next_change(&mut b, m.message_id).await;
    assert_eq!(
        change,
        Change::Deleted {
            by: alice.user_id()
        }
    );
    assert_eq!(message, deleted.message);
    s1.stop().await;
    s2.stop().await;
}
