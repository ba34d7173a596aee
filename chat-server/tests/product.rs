//! Product features through the real server and the real SDK: replies,
//! blocking, typing indicators.
//! Each test runs on the test storage (`CHAT_TEST_STORAGE`: memory by
//! default, PostgreSQL in CI's second pass).

// Test scaffolding: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

mod common;

use chat_client::{ClientEvent, ErrorCode, HistoryQuery, MessageId};
use chat_core::PresenceStatus;
use common::*;

/// A reply quotes a message of its own channel: the other member gets it
/// live with `reply_to`, the replier's second device too, a device that
/// connects afterwards finds it by sync, and history carries it. A
/// `reply_to` of another channel, or of no message, is `not_found` and
/// stores nothing; so is any reply from a non-member.
#[tokio::test]
async fn replies_quote_a_message_of_the_same_channel() {
    let ts = start(test_config()).await;
    let alice = signup_open(&ts, "alice").await;
    let bob = signup_open(&ts, "bob").await;
    let carol = signup_open(&ts, "carol").await;
    let direct = alice.open_direct(bob.user_id()).await.unwrap();
    let other = alice.open_direct(carol.user_id()).await.unwrap();

    let mut a = connect_synced(&alice).await;
    let b1 = connect_synced(&bob).await;
    let mut b2 = connect_synced(&bob).await;

    let question = a.send(direct.id, "lunch?").await.unwrap();
    let elsewhere = a.send(other.id, "hi carol").await.unwrap();
    let answer = b1
        .send_reply(direct.id, question.message_id, "yes, at noon")
        .await
        .unwrap();

    for (who, conn) in [("alice", &mut a), ("bob's other device", &mut b2)] {
        let ClientEvent::Message(d) = next_event(
            conn,
            |e| matches!(e, ClientEvent::Message(d) if d.message.id == answer.message_id),
        )
        .await
        else {
            unreachable!()
        };
        assert_eq!(
            d.message.reply_to,
            Some(question.message_id),
            "{who} gets the reply live with reply_to"
        );
    }

    // A device of Bob's that connects now replays the inbox: the reply
    // comes with its reply_to, the question without one.
    let mut b3 = connect_new(&bob, Default::default()).await;
    let mut seen = Vec::new();
    while seen.len() < 2 {
        if let ClientEvent::Message(d) =
            next_event(&mut b3, |e| matches!(e, ClientEvent::Message(_))).await
        {
            seen.push((d.message.id, d.message.reply_to));
        }
    }
    assert_eq!(
        seen,
        vec![
            (question.message_id, None),
            (answer.message_id, Some(question.message_id))
        ]
    );

    let page = alice
        .history(direct.id, &HistoryQuery::default())
        .await
        .unwrap();
    let kept: Vec<_> = page.messages.iter().map(|m| (m.id, m.reply_to)).collect();
    assert_eq!(
        kept,
        vec![
            (question.message_id, None),
            (answer.message_id, Some(question.message_id))
        ],
        "history carries reply_to"
    );

    // Refusals, each storing nothing.
    assert_eq!(
        api_code(
            b1.send_reply(direct.id, elsewhere.message_id, "wrong channel")
                .await
        ),
        ErrorCode::NotFound,
        "a message of another channel"
    );
    assert_eq!(
        api_code(b1.send_reply(direct.id, MessageId(42), "nothing").await),
        ErrorCode::NotFound,
        "no such message"
    );
    let c = connect_synced(&carol).await;
    assert_eq!(
        api_code(
            c.send_reply(direct.id, question.message_id, "not mine")
                .await
        ),
        ErrorCode::NotFound,
        "a non-member, even with a real message id"
    );
    let page = alice
        .history(direct.id, &HistoryQuery::default())
        .await
        .unwrap();
    assert_eq!(page.messages.len(), 2, "refused replies stored nothing");
    ts.stop().await;
}

/// Alice blocks Bob: Bob can neither open a direct channel with her nor
/// send in theirs (`blocked`, nothing stored), from any of his devices,
/// and sees her offline; their group works as before, and Alice still
/// writes to him. Unblocking restores everything.
#[tokio::test]
async fn blocking_refuses_direct_messages_and_hides_presence() {
    let ts = start(test_config()).await;
    let alice = signup_open(&ts, "alice").await;
    let bob = signup_open(&ts, "bob").await;
    let carol = signup_open(&ts, "carol").await;
    make_friends(&alice, &bob).await;
    let direct = alice.open_direct(bob.user_id()).await.unwrap();
    let group = alice
        .create_group("trio", &[bob.user_id(), carol.user_id()])
        .await
        .unwrap()
        .channel;
    let mut a = connect_synced(&alice).await;
    let mut b1 = connect_synced(&bob).await;
    let shown = |p: Vec<chat_client::Presence>| (p[0].status, p[0].last_active_at.is_some());
    assert_eq!(
        shown(b1.presence(&[alice.user_id()]).await.unwrap()),
        (PresenceStatus::Online, true),
        "a friend sees Alice online before the block"
    );

    alice.block(bob.user_id()).await.unwrap();
    alice.block(bob.user_id()).await.unwrap();
    let listed: Vec<_> = alice
        .blocked()
        .await
        .unwrap()
        .iter()
        .map(|u| u.id)
        .collect();
    assert_eq!(listed, vec![bob.user_id()]);
    assert!(bob.blocked().await.unwrap().is_empty(), "one-way");

    assert_eq!(
        api_code(b1.send(direct.id, "hello?").await),
        ErrorCode::Blocked
    );
    assert_eq!(
        api_code(bob.open_direct(alice.user_id()).await),
        ErrorCode::Blocked,
        "not even the channel that exists"
    );
    // Bob's other device, connected after the block: the same.
    let b2 = connect_synced(&bob).await;
    assert_eq!(
        api_code(b2.send(direct.id, "from my phone").await),
        ErrorCode::Blocked
    );
    assert_eq!(
        shown(b2.presence(&[alice.user_id()]).await.unwrap()),
        (PresenceStatus::Offline, false),
        "Bob sees Alice as a stranger"
    );
    assert_eq!(
        shown(a.presence(&[bob.user_id()]).await.unwrap()),
        (PresenceStatus::Online, true),
        "Alice still sees Bob"
    );

    // Groups are not affected; Alice still writes to Bob.
    let in_group = b1.send(group.id, "group hello").await.unwrap();
    let ClientEvent::Message(d) =
        next_event(&mut a, |e| matches!(e, ClientEvent::Message(_))).await
    else {
        unreachable!()
    };
    assert_eq!(d.message.id, in_group.message_id);
    let from_alice = a.send(direct.id, "I can still write").await.unwrap();
    let ClientEvent::Message(d) = next_event(
        &mut b1,
        |e| matches!(e, ClientEvent::Message(d) if d.message.channel_id == direct.id),
    )
    .await
    else {
        unreachable!()
    };
    assert_eq!(d.message.id, from_alice.message_id);
    let page = alice
        .history(direct.id, &HistoryQuery::default())
        .await
        .unwrap();
    assert_eq!(page.messages.len(), 1, "refused messages stored nothing");

    // A stranger Alice blocks cannot ask her to be friends either.
    alice.block(carol.user_id()).await.unwrap();
    assert_eq!(
        api_code(carol.add_friend(alice.user_id()).await),
        ErrorCode::Blocked
    );
    assert!(
        alice.friend_requests().await.unwrap().incoming.is_empty(),
        "no request reaches the blocker"
    );
    alice.unblock(carol.user_id()).await.unwrap();

    alice.unblock(bob.user_id()).await.unwrap();
    assert!(alice.blocked().await.unwrap().is_empty());
    let back = b2.send(direct.id, "thanks").await.unwrap();
    let ClientEvent::Message(d) = next_event(
        &mut a,
        |e| matches!(e, ClientEvent::Message(d) if d.message.id == back.message_id),
    )
    .await
    else {
        unreachable!()
    };
    assert_eq!(d.message.content, "thanks");
    assert_eq!(
        bob.open_direct(alice.user_id()).await.unwrap().id,
        direct.id
    );
    assert_eq!(
        shown(b2.presence(&[alice.user_id()]).await.unwrap()),
        (PresenceStatus::Online, true),
        "unblocking restores presence"
    );
    ts.stop().await;
}

/// Typing reaches the other members' devices connected now, once per
/// refresh interval, never the typer's own devices; it is not stored (a
/// device that connects later gets none), and non-members are refused.
#[tokio::test]
async fn typing_reaches_connected_members_only_and_is_not_stored() {
    let ts = start(test_config()).await;
    let alice = signup_open(&ts, "alice").await;
    let bob = signup_open(&ts, "bob").await;
    let carol = signup_open(&ts, "carol").await;
    let group = alice
        .create_group("pair", &[bob.user_id()])
        .await
        .unwrap()
        .channel;
    let a1 = connect_synced(&alice).await;
    let mut a2 = connect_synced(&alice).await;
    let mut b1 = connect_synced(&bob).await;
    let mut b2 = connect_synced(&bob).await;

    a1.typing(group.id).await.unwrap();
    // A refresh right away is answered but publishes nothing more.
    a1.typing(group.id).await.unwrap();
    let sent = a1.send(group.id, "done typing").await.unwrap();

    let typing_or_message =
        |e: &ClientEvent| matches!(e, ClientEvent::Typing { .. } | ClientEvent::Message(_));
    for conn in [&mut b1, &mut b2] {
        match next_event(conn, typing_or_message).await {
            ClientEvent::Typing {
                channel,
                user,
                expires_in_ms,
            } => {
                assert_eq!((channel, user), (group.id, alice.user_id()));
                assert_eq!(expires_in_ms, 5_000);
            }
            other => panic!("expected typing first, got {other:?}"),
        }
        match next_event(conn, typing_or_message).await {
            ClientEvent::Message(d) => assert_eq!(
                d.message.id, sent.message_id,
                "one indicator per interval, then the message"
            ),
            other => panic!("expected the message, got {other:?}"),
        }
    }
    match next_event(&mut a2, typing_or_message).await {
        ClientEvent::Message(d) => assert_eq!(
            d.message.id, sent.message_id,
            "the typer's own devices get no indicator"
        ),
        other => panic!("expected the message, got {other:?}"),
    }
    // A device connecting now replays the inbox: the message, no indicator.
    let mut b3 = connect_new(&bob, Default::default()).await;
    match next_event(&mut b3, typing_or_message).await {
        ClientEvent::Message(d) => assert_eq!(d.message.id, sent.message_id),
        other => panic!("typing is not stored, got {other:?}"),
    }

    let c = connect_synced(&carol).await;
    assert_eq!(
        api_code(c.typing(group.id).await),
        ErrorCode::NotFound,
        "non-members are refused"
    );
    ts.stop().await;
}
