//! Product features through the real server and the real SDK: replies.
//! Each test runs on the test storage (`CHAT_TEST_STORAGE`: memory by
//! default, PostgreSQL in CI's second pass).

// Test scaffolding: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

mod common;

use chat_client::{ClientEvent, ErrorCode, HistoryQuery, MessageId};
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
