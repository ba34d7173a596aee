//! Read markers, unread counts and delivery receipts through the real
//! server and the real SDK, on the test storage (`CHAT_TEST_STORAGE`:
//! memory by default, PostgreSQL in CI's second pass): multi-device,
//! reconnect, two nodes on one bus, and the refusals.

// Test scaffolding: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;

use chat_client::{ChannelSummary, ChatClient, ClientEvent, ErrorCode, MessageId, Session};
use chat_core::memory::MemoryBusHub;
use chat_core::ChannelId;
use chat_server::ChatServer;
use common::*;

/// `session`'s summary of `channel` from the channel list.
async fn summary(session: &Session, channel: ChannelId) -> ChannelSummary {
    session
        .channel_summaries()
        .await
        .unwrap()
        .into_iter()
        .find(|(c, _)| c.id == channel)
        .map(|(_, s)| s)
        .expect("the channel is listed")
}

/// The next `read` event on `conn` from `user`, as its message.
async fn next_read(
    conn: &mut chat_client::Connection,
    channel: ChannelId,
    user: chat_client::UserId,
) -> MessageId {
    let ClientEvent::Read { message, .. } = next_event(conn, |e| {
        matches!(e, ClientEvent::Read { channel: c, user: u, .. } if *c == channel && *u == user)
    })
    .await
    else {
        unreachable!()
    };
    message
}

/// Unread counts come with the channel list and follow sends (own sends
/// are read); a read marker moves forward only, and when it moves the
/// reader's other devices and the other member get a `read` event; a
/// device that connects afterwards finds the marker in the channel list;
/// non-members and messages of other channels are refused.
#[tokio::test]
async fn read_markers_count_unread_and_reach_devices_and_members() {
    let ts = start(test_config()).await;
    let alice = signup_open(&ts, "alice").await;
    let bob = signup_open(&ts, "bob").await;
    let carol = signup_open(&ts, "carol").await;
    let direct = alice.open_direct(bob.user_id()).await.unwrap();
    let other = alice.open_direct(carol.user_id()).await.unwrap();

    let mut a1 = connect_synced(&alice).await;
    let b1 = connect_synced(&bob).await;
    let mut b2 = connect_synced(&bob).await;

    let mut sent = Vec::new();
    for text in ["one", "two", "three"] {
        sent.push(a1.send(direct.id, text).await.unwrap().message_id);
    }
    let elsewhere = a1.send(other.id, "hi carol").await.unwrap().message_id;

    let bobs = summary(&bob, direct.id).await;
    assert_eq!(bobs.unread, 3, "three messages, none read");
    assert_eq!(bobs.read, None);
    let last = bobs.last_message.expect("the last message is listed");
    assert_eq!((last.id, last.content.as_str()), (sent[2], "three"));
    assert!(!bobs.truncated);
    let alices = summary(&alice, direct.id).await;
    assert_eq!(alices.unread, 0, "a sender has read their own messages");
    assert_eq!(alices.read, Some(sent[2]));
    assert_eq!(alices.peer_read, None, "bob read nothing yet");

    // Bob reads up to the second on one device.
    let state = b1.mark_read(direct.id, sent[1]).await.unwrap();
    assert_eq!((state.message, state.unread), (sent[1], 1));
    assert_eq!(
        next_read(&mut a1, direct.id, bob.user_id()).await,
        sent[1],
        "alice gets the read receipt live"
    );
    assert_eq!(
        next_read(&mut b2, direct.id, bob.user_id()).await,
        sent[1],
        "bob's other device learns the marker moved"
    );

    // Going back, or marking the same again, changes nothing.
    for id in [sent[0], sent[1]] {
        let state = b1.mark_read(direct.id, id).await.unwrap();
        assert_eq!((state.message, state.unread), (sent[1], 1), "no-op");
    }

    // A device that connects afterwards reads the marker from the list.
    let bob_later = login_sdk(&ts, "bob").await;
    let listed = summary(&bob_later, direct.id).await;
    assert_eq!((listed.unread, listed.read), (1, Some(sent[1])));
    assert_eq!(summary(&alice, direct.id).await.peer_read, Some(sent[1]));

    // Refusals: a non-member, a message of another channel, no message.
    let c = connect_synced(&carol).await;
    assert_eq!(
        api_code(c.mark_read(direct.id, sent[0]).await),
        ErrorCode::NotFound,
        "carol is not a member"
    );
    assert_eq!(
        api_code(b1.mark_read(direct.id, elsewhere).await),
        ErrorCode::NotFound,
        "a message of another channel"
    );
    assert_eq!(
        api_code(b1.mark_read(direct.id, MessageId(42)).await),
        ErrorCode::NotFound,
        "no such message"
    );
    assert_eq!(summary(&bob, direct.id).await.read, Some(sent[1]));

    // Bob answers: his own message is read for him, unread for alice.
    let answer = b1.send(direct.id, "four").await.unwrap().message_id;
    let bobs = summary(&bob, direct.id).await;
    assert_eq!((bobs.unread, bobs.read), (0, Some(answer)));
    assert_eq!(summary(&alice, direct.id).await.unread, 1);
    ts.stop().await;
}

/// In a group, a member's read marker reaches every other member; a long
/// last message is listed as a preview.
#[tokio::test]
async fn group_members_get_read_receipts_and_previews() {
    let ts = start(test_config()).await;
    let alice = signup_open(&ts, "alice").await;
    let bob = signup_open(&ts, "bob").await;
    let carol = signup_open(&ts, "carol").await;
    let group = alice
        .create_group("lunch", &[bob.user_id(), carol.user_id()])
        .await
        .unwrap()
        .channel;
    let a = connect_synced(&alice).await;
    let b = connect_synced(&bob).await;
    let mut c = connect_synced(&carol).await;
    let long = "é".repeat(300);
    let id = a.send(group.id, long.clone()).await.unwrap().message_id;
    let listed = summary(&carol, group.id).await;
    assert_eq!(listed.unread, 1);
    assert!(listed.truncated, "300 characters are cut");
    let preview = listed.last_message.unwrap();
    assert_eq!(preview.content.chars().count(), 200);
    assert!(long.starts_with(&preview.content));
    assert_eq!(listed.peer_read, None, "no peer markers in groups");

    b.mark_read(group.id, id).await.unwrap();
    assert_eq!(next_read(&mut c, group.id, bob.user_id()).await, id);
    assert_eq!(summary(&bob, group.id).await.unread, 0);
    assert_eq!(summary(&carol, group.id).await.unread, 1);
    ts.stop().await;
}

/// Two servers on one bus and one store: a marker moved on one reaches
/// the devices on the other, the reader's own included.
#[tokio::test]
async fn read_events_cross_nodes() {
    let hub = MemoryBusHub::new();
    let (first, second) = two_nodes(&hub).await;
    let alice = signup_open(&first, "alice").await;
    let bob = signup_open(&first, "bob").await;
    let direct = alice.open_direct(bob.user_id()).await.unwrap();
    let a = connect_synced(&alice).await;
    let id = a.send(direct.id, "across").await.unwrap().message_id;

    let bob_there = ChatClient::new(&second.http)
        .unwrap()
        .login("bob", "password123")
        .await
        .unwrap();
    let b_there = connect_synced(&bob_there).await;
    let mut b_here = connect_synced(&bob).await;
    let mut a = a;
    b_there.mark_read(direct.id, id).await.unwrap();
    assert_eq!(next_read(&mut a, direct.id, bob.user_id()).await, id);
    assert_eq!(next_read(&mut b_here, direct.id, bob.user_id()).await, id);
    first.stop().await;
    second.stop().await;
}

/// Two servers sharing storage (the test storage) and `hub`.
async fn two_nodes(hub: &MemoryBusHub) -> (TestServer, TestServer) {
    let config = |node: u16| {
        let mut c = test_config();
        c.node_id = node;
        c.server_id = format!("node-{node}");
        c
    };
    match std::env::var("CHAT_TEST_STORAGE").as_deref() {
        #[cfg(feature = "postgres")]
        Ok("postgres") => {
            let schema = PgSchema::new();
            let one = Arc::new(schema.store(&pg_url()).await);
            let two = Arc::new(schema.store(&pg_url()).await);
            let mut first = start_with(
                ChatServer::builder(config(1))
                    .storage(one)
                    .bus(Arc::new(hub.node())),
            )
            .await;
            first.schema = Some(schema);
            let second = start_with(
                ChatServer::builder(config(2))
                    .storage(two)
                    .bus(Arc::new(hub.node())),
            )
            .await;
            (first, second)
        }
        _ => {
            let store = Arc::new(chat_core::memory::MemoryStore::default());
            let node = |n| {
                ChatServer::builder(config(n))
                    .directory(store.directory())
                    .messages(store.clone())
                    .bus(Arc::new(hub.node()))
            };
            (start_with(node(1)).await, start_with(node(2)).await)
        }
    }
}

/// The next `delivered` event on `conn` from `user`, as its message.
async fn next_delivered(
    conn: &mut chat_client::Connection,
    channel: ChannelId,
    user: chat_client::UserId,
) -> MessageId {
    let ClientEvent::Delivered { message, .. } = next_event(conn, |e| {
        matches!(e, ClientEvent::Delivered { channel: c, user: u, .. } if *c == channel && *u == user)
    })
    .await
    else {
        unreachable!()
    };
    message
}

/// Delivery receipts in a direct channel: the recipient's SDK says it has
/// a message (live, or by sync when it connects later, on another node),
/// and every device of the sender gets `delivered`; the marker is in the
/// channel list after a reconnect. Groups and non-members are refused.
#[tokio::test]
async fn delivery_receipts_reach_the_senders_devices_across_nodes() {
    let hub = MemoryBusHub::new();
    let (first, second) = two_nodes(&hub).await;
    let alice = signup_open(&first, "alice").await;
    let bob = signup_open(&first, "bob").await;
    let carol = signup_open(&first, "carol").await;
    let direct = alice.open_direct(bob.user_id()).await.unwrap();
    let mut a1 = connect_synced(&alice).await;
    let mut a2 = connect_synced(&alice).await;

    // Bob is offline: nothing is delivered yet.
    let first_id = a1
        .send(direct.id, "are you there?")
        .await
        .unwrap()
        .message_id;
    assert_eq!(summary(&alice, direct.id).await.peer_delivered, None);

    // Bob connects on the other node: his device syncs the message and
    // says so; both of alice's devices hear it.
    let bob_there = ChatClient::new(&second.http)
        .unwrap()
        .login("bob", "password123")
        .await
        .unwrap();
    let b = connect_synced(&bob_there).await;
    assert_eq!(
        next_delivered(&mut a1, direct.id, bob.user_id()).await,
        first_id
    );
    assert_eq!(
        next_delivered(&mut a2, direct.id, bob.user_id()).await,
        first_id
    );

    // Live: a second message, delivered as it arrives.
    let second_id = a1.send(direct.id, "lunch?").await.unwrap().message_id;
    assert_eq!(
        next_delivered(&mut a2, direct.id, bob.user_id()).await,
        second_id
    );

    // A device of alice's that connects later reads it from the list.
    let alice_later = login_sdk(&first, "alice").await;
    let listed = summary(&alice_later, direct.id).await;
    assert_eq!(listed.peer_delivered, Some(second_id));
    assert_eq!(listed.peer_read, None, "delivered is not read");

    // Marking an older message changes nothing.
    assert_eq!(
        b.mark_delivered(direct.id, first_id).await.unwrap(),
        second_id
    );

    // Refusals: a group, a non-member.
    let group = alice
        .create_group("g", &[bob.user_id()])
        .await
        .unwrap()
        .channel;
    let in_group = a1.send(group.id, "hi all").await.unwrap().message_id;
    assert_eq!(
        api_code(b.mark_delivered(group.id, in_group).await),
        ErrorCode::InvalidInput,
        "delivery receipts are for direct channels"
    );
    let c = connect_synced(&carol).await;
    assert_eq!(
        api_code(c.mark_delivered(direct.id, first_id).await),
        ErrorCode::NotFound,
        "carol is not a member"
    );
    first.stop().await;
    second.stop().await;
}
