//! Search through the real server and the real SDK: each user finds the
//! messages of their own channels only, newest first, paged; leaving a
//! group takes its messages out of one's results; bad queries are refused.
//! Runs on the test storage (`CHAT_TEST_STORAGE`: memory by default,
//! PostgreSQL in CI's second pass).

#![allow(clippy::unwrap_used)]

mod common;

use chat_client::{ErrorCode, MessageId, Session};
use common::*;

/// Every result of `query` for `session`, page by page (`limit` a page).
async fn all_results(session: &Session, query: &str, limit: u32) -> Vec<MessageId> {
    let mut out = Vec::new();
    let mut after = None;
    loop {
        let page = session.search(query, after, Some(limit)).await.unwrap();
        assert!(page.messages.len() <= limit as usize);
        out.extend(page.messages.iter().map(|m| m.id));
        match page.next {
            Some(next) => after = Some(next),
            None => return out,
        }
    }
}

#[tokio::test]
async fn users_find_the_messages_of_their_own_channels_newest_first() {
    let ts = start(test_config()).await;
    let alice = signup_open(&ts, "alice").await;
    let bob = signup_open(&ts, "bob").await;
    let carol = signup_open(&ts, "carol").await;
    let ab = alice.open_direct(bob.user_id()).await.unwrap();
    let ac = alice.open_direct(carol.user_id()).await.unwrap();
    let group = bob
        .create_group("plans", &[carol.user_id()])
        .await
        .unwrap()
        .channel;
    let a = connect_synced(&alice).await;
    let b = connect_synced(&bob).await;
    let c = connect_synced(&carol).await;

    let m1 = a.send(ab.id, "Lunch at noon?").await.unwrap().message_id;
    let m2 = b
        .send(ab.id, "lunch: yes, at NOON")
        .await
        .unwrap()
        .message_id;
    let m3 = a
        .send(ac.id, "lunch with you tomorrow")
        .await
        .unwrap()
        .message_id;
    let m4 = b.send(group.id, "the lunch plan").await.unwrap().message_id;
    let m5 = c
        .send(group.id, "no lunch for me")
        .await
        .unwrap()
        .message_id;
    b.send(ab.id, "dinner then").await.unwrap();

    // Each finds what their channels hold, newest first.
    let page = bob.search("LUNCH", None, None).await.unwrap();
    let ids: Vec<_> = page.messages.iter().map(|m| m.id).collect();
    assert_eq!(
        ids,
        vec![m5, m4, m2, m1],
        "bob: his direct channel and the group"
    );
    assert_eq!(page.next, None);
    assert_eq!(page.messages[3].content, "Lunch at noon?");
    assert_eq!(
        all_results(&carol, "lunch", 10).await,
        vec![m5, m4, m3],
        "carol: her direct channel and the group, never alice and bob's"
    );
    assert_eq!(all_results(&alice, "lunch", 10).await, vec![m3, m2, m1]);
    assert_eq!(
        all_results(&alice, "noon lunch", 10).await,
        vec![m2, m1],
        "every word"
    );
    assert_eq!(all_results(&alice, "lun", 10).await, vec![], "whole words");

    // Paged one at a time: the same results, each once.
    assert_eq!(all_results(&bob, "lunch", 1).await, vec![m5, m4, m2, m1]);
    assert_eq!(all_results(&bob, "lunch", 3).await, vec![m5, m4, m2, m1]);

    // Carol leaves the group: its messages leave her results.
    bob.remove_member(group.id, carol.user_id()).await.unwrap();
    assert_eq!(all_results(&carol, "lunch", 10).await, vec![m3]);

    // Refused queries.
    for bad in ["", "   ", "?! ...", "a b c d e f g h i"] {
        assert_eq!(
            api_code(bob.search(bad, None, None).await),
            ErrorCode::InvalidInput,
            "{bad:?}"
        );
    }
    assert_eq!(
        api_code(bob.search(&"x".repeat(300), None, None).await),
        ErrorCode::InvalidInput
    );
    for limit in [0, 101] {
        assert_eq!(
            api_code(bob.search("lunch", None, Some(limit)).await),
            ErrorCode::InvalidInput
        );
    }
}
