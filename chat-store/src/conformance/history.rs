//! The [`HistoryStore`] contract.

use chat_core::{Appended, ChannelId, Error, HistoryStore, Message, MessageId, Page, UserId};
use uuid::Uuid;

use super::{ids_of, message, ok, Ids};

/// Checks every clause of the [`HistoryStore`] contract:
///
/// * an empty channel reads as empty, and an unknown id as `None`;
/// * `append` returns `Stored` with the message, `get` returns it exactly;
/// * `page` in every mode — latest, before, after, after + before, limit 0,
///   bounds that are and are not stored ids, empty ranges — returns the
///   right slice in ascending id order, by numeric id (not by time, not by
///   byte order of a little-endian encoding);
/// * channels are isolated, even channels whose ids are adjacent;
/// * a retry under the same `(sender, client_msg_id)` returns `Duplicate`
///   with the *original* message (original id and time, even when the retry
///   carries a new id) and writes nothing;
/// * the same key with different content is a `Conflict` and writes
///   nothing; the same client message id in another channel is another
///   key (a new message);
/// * the key is per sender: another sender may use the same client message
///   id, and the same sender may send the same content twice.
///
/// # Panics
///
/// On the first contract violation, naming it.
pub async fn history_suite(store: &dyn HistoryStore) {
    empty_channel(store).await;
    append_and_get(store).await;
    pages(store).await;
    numeric_order(store).await;
    channels_are_isolated(store).await;
    duplicate_returns_original(store).await;
    conflict_writes_nothing(store).await;
    keys_are_per_sender(store).await;
}

async fn page(store: &dyn HistoryStore, channel: ChannelId, page: Page) -> Vec<Message> {
    let paged = ok(store.page(channel, page).await, "page");
    assert!(
        paged.items.len() <= page.limit,
        "page {page:?} returned more than its limit"
    );
    let got = paged.items;
    assert!(
        got.windows(2).all(|w| w[0].id < w[1].id),
        "page {page:?} must be in ascending id order, got {:?}",
        ids_of(&got)
    );
    assert!(
        got.iter().all(|m| m.channel_id == channel),
        "page of {channel} returned another channel's message"
    );
    got
}

async fn page_ids(store: &dyn HistoryStore, channel: ChannelId, p: Page) -> Vec<MessageId> {
    ids_of(&page(store, channel, p).await)
}

async fn append_all(store: &dyn HistoryStore, messages: &[Message]) {
    for m in messages {
        match ok(store.append(m.clone()).await, "append of a new message") {
            Appended::Stored(stored) => assert_eq!(&stored, m, "Stored must carry the message"),
            other => panic!("append of a new message must be Stored, got {other:?}"),
        }
    }
}

async fn empty_channel(store: &dyn HistoryStore) {
    let channel = ChannelId::new_random();
    let ids = Ids::fresh();
    for p in [
        Page::latest(10),
        Page::before(MessageId::MAX, 10),
        Page::after(MessageId::ZERO, 10),
        Page {
            after: Some(MessageId::ZERO),
            before: Some(MessageId::MAX),
            limit: 10,
            max_bytes: usize::MAX,
        },
    ] {
        assert!(
            page(store, channel, p).await.is_empty(),
            "a channel never written to is empty ({p:?})"
        );
    }
    assert_eq!(
        ok(store.get(channel, ids.at(1)).await, "get"),
        None,
        "get in an empty channel is None"
    );
}

async fn append_and_get(store: &dyn HistoryStore) {
    let channel = ChannelId::new_random();
    let ids = Ids::fresh();
    let mut m = message(
        channel,
        UserId::new_random(),
        ids.at(7),
        "héllo, wörld ✓ \"quoted\"\n",
    );
    m.created_at = u64::MAX / 3;
    append_all(store, std::slice::from_ref(&m)).await;
    assert_eq!(
        ok(store.get(channel, m.id).await, "get"),
        Some(m.clone()),
        "get returns the stored message exactly"
    );
    assert_eq!(
        ok(store.get(channel, ids.at(8)).await, "get"),
        None,
        "get of an id never stored is None"
    );
    assert_eq!(
        ok(store.get(ChannelId::new_random(), m.id).await, "get"),
        None,
        "get looks only in the given channel"
    );
}

async fn pages(store: &dyn HistoryStore) {
    let channel = ChannelId::new_random();
    let base = Ids::fresh();
    let sender = UserId::new_random();
    // Ten messages with gaps between their ids, appended out of order, with
    // creation times running backwards: order is by id alone.
    let all: Vec<Message> = (1..=10u64)
        .map(|k| {
            let mut m = message(channel, sender, base.at(10 * k), format!("message {k}"));
            m.created_at = 2_000_000_000_000 - k;
            m
        })
        .collect();
    let order = [3usize, 7, 1, 9, 5, 2, 10, 4, 8, 6];
    let shuffled: Vec<Message> = order.iter().map(|k| all[k - 1].clone()).collect();
    append_all(store, &shuffled).await;
    let id = |i: usize| all[i].id;
    let ids = |r: std::ops::Range<usize>| all[r].iter().map(|m| m.id).collect::<Vec<_>>();
    let between = |i: usize| MessageId(all[i].id.0 + 1);
    let none: Vec<MessageId> = Vec::new();

    assert_eq!(
        page(store, channel, Page::latest(100)).await,
        all,
        "latest(100) is the whole channel, ascending, messages exact"
    );
    let cases: Vec<(&str, Page, Vec<MessageId>)> = vec![
        ("latest(3) is the newest three", Page::latest(3), ids(7..10)),
        ("latest(10) is everything", Page::latest(10), ids(0..10)),
        ("latest(1) is the newest", Page::latest(1), ids(9..10)),
        ("latest(0) is empty", Page::latest(0), none.clone()),
        (
            "before(id, 2) is the two just before id",
            Page::before(id(5), 2),
            ids(3..5),
        ),
        (
            "before(id, 100) is everything before id",
            Page::before(id(5), 100),
            ids(0..5),
        ),
        (
            "before is exclusive and may name an id never stored",
            Page::before(between(5), 2),
            ids(4..6),
        ),
        (
            "before the oldest is empty",
            Page::before(id(0), 10),
            none.clone(),
        ),
        (
            "before(ZERO) is empty",
            Page::before(MessageId::ZERO, 10),
            none.clone(),
        ),
        (
            "before(MAX, 2) is the newest two",
            Page::before(MessageId::MAX, 2),
            ids(8..10),
        ),
        (
            "before with limit 0 is empty",
            Page::before(id(5), 0),
            none.clone(),
        ),
        (
            "after(id, 2) is the two just after id (oldest first)",
            Page::after(id(2), 2),
            ids(3..5),
        ),
        (
            "after(id, 100) is everything after id",
            Page::after(id(2), 100),
            ids(3..10),
        ),
        (
            "after is exclusive and may name an id never stored",
            Page::after(between(2), 2),
            ids(3..5),
        ),
        (
            "after(ZERO, 3) is the oldest three",
            Page::after(MessageId::ZERO, 3),
            ids(0..3),
        ),
        (
            "after the newest is empty",
            Page::after(id(9), 10),
            none.clone(),
        ),
        (
            "after(MAX) is empty",
            Page::after(MessageId::MAX, 10),
            none.clone(),
        ),
        (
            "after with limit 0 is empty",
            Page::after(id(2), 0),
            none.clone(),
        ),
        (
            "after + before reads forward: the oldest `limit` in the range",
            Page {
                after: Some(id(1)),
                before: Some(id(8)),
                limit: 3,
                max_bytes: usize::MAX,
            },
            ids(2..5),
        ),
        (
            "after + before with a large limit is the whole open range",
            Page {
                after: Some(id(1)),
                before: Some(id(8)),
                limit: 100,
                max_bytes: usize::MAX,
            },
            ids(2..8),
        ),
        (
            "after + before of adjacent ids is empty",
            Page {
                after: Some(id(4)),
                before: Some(id(5)),
                limit: 10,
                max_bytes: usize::MAX,
            },
            none.clone(),
        ),
        (
            "after + before of the same id is empty",
            Page {
                after: Some(id(4)),
                before: Some(id(4)),
                limit: 10,
                max_bytes: usize::MAX,
            },
            none.clone(),
        ),
        (
            "after > before is empty",
            Page {
                after: Some(id(6)),
                before: Some(id(3)),
                limit: 10,
                max_bytes: usize::MAX,
            },
            none.clone(),
        ),
        (
            "after + before with limit 0 is empty",
            Page {
                after: Some(id(1)),
                before: Some(id(8)),
                limit: 0,
                max_bytes: usize::MAX,
            },
            none.clone(),
        ),
        (
            "after(ZERO) + before(MAX) is everything",
            Page {
                after: Some(MessageId::ZERO),
                before: Some(MessageId::MAX),
                limit: 100,
                max_bytes: usize::MAX,
            },
            ids(0..10),
        ),
    ];
    for (clause, p, expected) in cases {
        assert_eq!(
            page_ids(store, channel, p).await,
            expected,
            "{clause} ({p:?})"
        );
    }
    let more = |p: Page| async move { ok(store.page(channel, p).await, "page").has_more };
    assert!(more(Page::latest(3)).await, "latest(3) of 10 has more");
    assert!(
        !more(Page::latest(10)).await,
        "latest(10) of 10 has no more"
    );
    assert!(
        more(Page::after(id(2), 3)).await,
        "after(2, 3) of 10 has more"
    );
    assert!(
        !more(Page::after(id(2), 100)).await,
        "after to the end has no more"
    );
    assert!(
        !more(Page::before(id(3), 3)).await,
        "before to the start has no more"
    );
    let one = chat_core::entry_bytes(&all[9]);
    let p = ok(
        store
            .page(channel, Page::latest(10).with_max_bytes(2 * one))
            .await,
        "page",
    );
    assert_eq!(
        ids_of(&p.items),
        ids(8..10),
        "a byte budget keeps the newest that fit"
    );
    assert!(p.has_more, "a byte-limited page has more");
    let p = ok(
        store
            .page(channel, Page::after(id(0), 10).with_max_bytes(1))
            .await,
        "page",
    );
    assert_eq!(
        ids_of(&p.items),
        ids(1..2),
        "a page holds at least one message"
    );
    for (i, m) in all.iter().enumerate() {
        assert_eq!(
            ok(store.get(channel, m.id).await, "get"),
            Some(m.clone()),
            "get of message {i}"
        );
    }
    assert_eq!(
        ok(store.get(channel, between(3)).await, "get"),
        None,
        "get of an id between stored ids is None"
    );
}

async fn numeric_order(store: &dyn HistoryStore) {
    let channel = ChannelId::new_random();
    let base = Ids::fresh();
    let sender = UserId::new_random();
    // Offsets that sort differently as little-endian bytes or as strings.
    let offsets = [
        0x1_0000u64,
        0xFF,
        0x100,
        0x1,
        0xFFFF,
        0x2,
        0x10,
        0x9,
        1 << 32,
        0xFF_FFFF,
    ];
    let messages: Vec<Message> = offsets
        .iter()
        .map(|o| message(channel, sender, base.at(*o), format!("offset {o:#x}")))
        .collect();
    append_all(store, &messages).await;
    let mut expected = ids_of(&messages);
    expected.sort();
    assert_eq!(
        page_ids(store, channel, Page::latest(100)).await,
        expected,
        "messages are ordered by numeric id"
    );
    assert_eq!(
        page_ids(store, channel, Page::after(base.at(0xFF), 3)).await,
        expected[5..8].to_vec(),
        "after() follows numeric order across byte boundaries"
    );
    assert_eq!(
        page_ids(store, channel, Page::before(base.at(0x1_0000), 2)).await,
        expected[5..7].to_vec(),
        "before() follows numeric order across byte boundaries"
    );
}

async fn channels_are_isolated(store: &dyn HistoryStore) {
    // Adjacent channel ids: neighbours in any ordered key space.
    let x = Uuid::new_v4().as_u128() & !0xF;
    let a = ChannelId(Uuid::from_u128(x + 1));
    let b = ChannelId(Uuid::from_u128(x + 2));
    let before_a = ChannelId(Uuid::from_u128(x));
    let base = Ids::fresh();
    let sender = UserId::new_random();
    let in_a: Vec<Message> = [1u64, 3, 5, 7]
        .iter()
        .map(|k| message(a, sender, base.at(*k), format!("a{k}")))
        .collect();
    let in_b: Vec<Message> = [2u64, 4, 6, 8]
        .iter()
        .map(|k| message(b, sender, base.at(*k), format!("b{k}")))
        .collect();
    append_all(store, &in_a[..2]).await;
    let a_before_b = page(store, a, Page::latest(100)).await;
    append_all(store, &in_b).await;
    append_all(store, &in_a[2..]).await;

    assert_eq!(
        a_before_b,
        in_a[..2].to_vec(),
        "a channel holds only its own messages"
    );
    assert_eq!(
        page(store, a, Page::latest(100)).await,
        in_a,
        "appending to another channel leaves this one untouched"
    );
    assert_eq!(
        page(store, b, Page::latest(100)).await,
        in_b,
        "a channel holds only its own messages"
    );
    assert_eq!(
        page_ids(store, a, Page::after(base.at(2), 2)).await,
        vec![base.at(3), base.at(5)],
        "after() skips other channels' ids"
    );
    assert_eq!(
        page_ids(store, b, Page::before(base.at(7), 2)).await,
        vec![base.at(4), base.at(6)],
        "before() skips other channels' ids"
    );
    assert_eq!(
        page_ids(store, a, Page::latest(1)).await,
        vec![base.at(7)],
        "latest() of a channel is its own newest"
    );
    assert!(
        page(store, before_a, Page::latest(100)).await.is_empty(),
        "a neighbouring channel never written to stays empty"
    );
    assert_eq!(
        ok(store.get(a, base.at(2)).await, "get"),
        None,
        "get does not find another channel's message"
    );
}

async fn duplicate_returns_original(store: &dyn HistoryStore) {
    let channel = ChannelId::new_random();
    let ids = Ids::fresh();
    let original = message(channel, UserId::new_random(), ids.at(1), "once");
    append_all(store, std::slice::from_ref(&original)).await;

    match ok(store.append(original.clone()).await, "identical retry") {
        Appended::Duplicate(m) => assert_eq!(m, original, "Duplicate carries the original"),
        other => panic!("an identical retry must be Duplicate, got {other:?}"),
    }

    let mut retry = original.clone();
    retry.id = ids.at(2);
    retry.created_at = original.created_at + 5_000;
    match ok(store.append(retry.clone()).await, "retry with a new id") {
        Appended::Duplicate(m) => assert_eq!(
            m, original,
            "a retry with a new id returns the ORIGINAL message (its id and time)"
        ),
        other => panic!("a retry with a new id must be Duplicate, got {other:?}"),
    }
    assert_eq!(
        ok(store.get(channel, retry.id).await, "get"),
        None,
        "a duplicate writes nothing under the retry's id"
    );
    assert_eq!(
        page(store, channel, Page::latest(100)).await,
        vec![original.clone()],
        "a duplicate writes nothing"
    );
    assert!(
        ok(store.append(retry).await, "second retry").is_duplicate(),
        "retries stay duplicates"
    );
}

async fn conflict_writes_nothing(store: &dyn HistoryStore) {
    let channel = ChannelId::new_random();
    let other_channel = ChannelId::new_random();
    let ids = Ids::fresh();
    let original = message(channel, UserId::new_random(), ids.at(1), "first");
    append_all(store, std::slice::from_ref(&original)).await;

    let mut changed = original.clone();
    changed.id = ids.at(2);
    changed.content = "second".into();
    assert_err!(
        store.append(changed.clone()).await,
        Error::Conflict { .. },
        "same (sender, client_msg_id) with different content"
    );
    assert_eq!(
        ok(store.get(channel, changed.id).await, "get"),
        None,
        "a conflict writes nothing"
    );

    assert_eq!(
        page(store, channel, Page::latest(100)).await,
        vec![original.clone()],
        "a conflict leaves the original alone"
    );

    // The key is scoped to the channel: the same client message id in
    // another channel is another message, and leaves the first alone.
    let mut elsewhere = original.clone();
    elsewhere.id = ids.at(3);
    elsewhere.channel_id = other_channel;
    elsewhere.content = "elsewhere".into();
    match ok(
        store.append(elsewhere.clone()).await,
        "same (sender, client_msg_id) in another channel",
    ) {
        Appended::Stored(m) => assert_eq!(m, elsewhere),
        other => panic!("another channel's key is a new message, got {other:?}"),
    }
    assert_eq!(
        page(store, other_channel, Page::latest(100)).await,
        vec![elsewhere.clone()],
        "the other channel holds its own message"
    );
    match ok(
        store.append(elsewhere.clone()).await,
        "retry in the other channel",
    ) {
        Appended::Duplicate(m) => assert_eq!(m, elsewhere),
        other => panic!("a retry in the other channel is a Duplicate, got {other:?}"),
    }
    match ok(
        store.append(original.clone()).await,
        "retry after conflicts",
    ) {
        Appended::Duplicate(m) => assert_eq!(m, original),
        other => panic!("the original key still answers Duplicate, got {other:?}"),
    }
}

async fn keys_are_per_sender(store: &dyn HistoryStore) {
    let channel = ChannelId::new_random();
    let ids = Ids::fresh();
    let first = message(channel, UserId::new_random(), ids.at(1), "same words");
    let mut second = first.clone();
    second.sender = UserId::new_random();
    second.id = ids.at(2);
    // Same sender, same content, new client message id: a new message.
    let mut third = first.clone();
    third.client_msg_id = chat_core::ClientMsgId::new_random();
    third.id = ids.at(3);
    append_all(store, &[first.clone(), second.clone(), third.clone()]).await;
    assert_eq!(
        page(store, channel, Page::latest(100)).await,
        vec![first, second, third],
        "the idempotency key is (channel, sender, client_msg_id), not content"
    );
}
