//! The [`Receipts`](chat_core::Receipts) contract: message numbers, read
//! and delivered markers, channel heads.

use chat_core::{
    Channel, ChannelId, Directory, Error, Marker, MarkerKind, MessageId, MessageStore, Receipt,
    UserId, MAX_RECEIPTS,
};

use super::messages::{group, new_message, users};
use super::{join_all, ok, Ids};

/// Checks every clause of the [`Receipts`](chat_core::Receipts) contract.
/// `directory` must be the directory `store` reads channel members from.
///
/// * commits number a channel's messages 1, 2, 3, ... (a duplicate takes
///   no number); the head is the last message and its number; a channel
///   without messages has none;
/// * unread after N sends is N for a member without a marker, and the
///   sender's own commit moves the sender's read marker to their message;
/// * a marker moves only forward: a lower or equal marker is a no-op that
///   answers the stored one; read and delivered markers are independent;
/// * a message that is not in the channel is `NotFound`, writing nothing;
/// * concurrent marker moves (and commits) end at the largest;
/// * reads answer one entry per key in order, and refuse more than
///   [`MAX_RECEIPTS`] keys.
///
/// # Panics
///
/// On the first contract violation, naming it.
pub async fn receipts_suite(store: &dyn MessageStore, directory: &dyn Directory) {
    numbers_and_heads(store, directory).await;
    own_sends_are_read(store, directory).await;
    markers_are_monotonic(store, directory).await;
    unknown_messages_are_refused(store, directory).await;
    concurrent_markers_keep_the_largest(store, directory).await;
    reads_are_bounded(store).await;
}

/// Commits `n` messages from `sender` with ids `ids.at(first..)`.
async fn send(
    store: &dyn MessageStore,
    channel: &Channel,
    sender: UserId,
    ids: Ids,
    first: u64,
    n: u64,
) -> Vec<MessageId> {
    let mut out = Vec::new();
    for k in first..first + n {
        let c = ok(
            store
                .commit(new_message(channel.id, sender, ids.at(k), format!("r{k}")))
                .await,
            "commit",
        );
        out.push(c.message.id);
    }
    out
}

async fn receipt(store: &dyn MessageStore, user: UserId, channel: ChannelId) -> Receipt {
    ok(store.receipts(&[(user, channel)]).await, "receipts")[0]
}

async fn head(store: &dyn MessageStore, channel: ChannelId) -> Option<Marker> {
    ok(store.heads(&[channel]).await, "heads")[0]
}

async fn numbers_and_heads(store: &dyn MessageStore, directory: &dyn Directory) {
    let [a, b] = users::<2>(directory).await;
    let channel = group(directory, &[a, b]).await;
    assert_eq!(head(store, channel.id).await, None, "no messages: no head");
    let ids = Ids::fresh();
    let sent = send(store, &channel, a, ids, 1, 3).await;
    assert_eq!(
        head(store, channel.id).await,
        Some(Marker {
            id: sent[2],
            number: 3
        }),
        "the head is the last message, numbered 3"
    );
    // A retry takes no number.
    let mut retry = new_message(channel.id, b, ids.at(10), "once");
    ok(store.commit(retry.clone()).await, "commit");
    retry.id = ids.at(11);
    let again = ok(store.commit(retry).await, "commit retry");
    assert!(again.duplicate);
    let h = head(store, channel.id).await.expect("a head");
    assert_eq!(h.number, 4, "a duplicate takes no number");
    // b's marker is at their own message 4: unread 0; a's at 3: unread 1.
    for (user, unread) in [(a, 1), (b, 0)] {
        assert_eq!(
            receipt(store, user, channel.id).await.unread(Some(h)),
            unread,
            "unread after the sends"
        );
    }
    // Each message's number, through the markers.
    let [c] = users::<1>(directory).await;
    for (i, id) in sent.iter().enumerate() {
        let up = ok(
            store.set_marker(c, channel.id, MarkerKind::Read, *id).await,
            "set_marker",
        );
        assert_eq!(up.marker.number, i as u64 + 1, "numbers are 1, 2, 3");
        assert!(up.moved);
    }
}

async fn own_sends_are_read(store: &dyn MessageStore, directory: &dyn Directory) {
    let [a, b, c] = users::<3>(directory).await;
    let channel = group(directory, &[a, b, c]).await;
    let ids = Ids::fresh();
    send(store, &channel, a, ids, 1, 5).await;
    let h = head(store, channel.id).await;
    let ra = receipt(store, a, channel.id).await;
    assert_eq!(
        ra.read.map(|m| m.number),
        Some(5),
        "the sender's read marker follows their own sends"
    );
    assert_eq!(ra.unread(h), 0);
    assert_eq!(ra.delivered, None, "sending moves no delivered marker");
    assert_eq!(
        receipt(store, b, channel.id).await,
        Receipt::default(),
        "a member who read nothing has no marker"
    );
    assert_eq!(receipt(store, b, channel.id).await.unread(h), 5, "5 unread");
    // b reads up to 2 and sends: their marker jumps to their message.
    let sent = send(store, &channel, b, ids, 6, 1).await;
    let rb = receipt(store, b, channel.id).await;
    assert_eq!(
        rb.read,
        Some(Marker {
            id: sent[0],
            number: 6
        })
    );
    assert_eq!(
        receipt(store, a, channel.id)
            .await
            .unread(head(store, channel.id).await),
        1,
        "another's message is unread for the first sender"
    );
}

async fn markers_are_monotonic(store: &dyn MessageStore, directory: &dyn Directory) {
    let [a, b] = users::<2>(directory).await;
    let channel = group(directory, &[a, b]).await;
    let ids = Ids::fresh();
    let sent = send(store, &channel, a, ids, 1, 4).await;
    let mark = |kind, id| store.set_marker(b, channel.id, kind, id);
    let up = ok(mark(MarkerKind::Read, sent[2]).await, "set_marker");
    assert!(up.moved, "a first marker moves");
    assert_eq!(up.marker.id, sent[2]);
    let same = ok(mark(MarkerKind::Read, sent[2]).await, "set_marker again");
    assert!(!same.moved, "an equal marker is a no-op");
    assert_eq!(same.marker, up.marker);
    let back = ok(mark(MarkerKind::Read, sent[0]).await, "set_marker back");
    assert!(!back.moved, "a lower marker is a no-op");
    assert_eq!(back.marker, up.marker, "and answers the stored one");
    let r = receipt(store, b, channel.id).await;
    assert_eq!(r.read, Some(up.marker), "the marker stayed");
    assert_eq!(r.delivered, None, "read and delivered are independent");
    assert_eq!(r.unread(head(store, channel.id).await), 1);
    let d = ok(mark(MarkerKind::Delivered, sent[3]).await, "delivered");
    assert!(d.moved);
    assert_eq!(d.marker.number, 4);
    let r = receipt(store, b, channel.id).await;
    assert_eq!(r.read.map(|m| m.number), Some(3), "read untouched");
    assert_eq!(r.delivered.map(|m| m.number), Some(4));
    let d = ok(mark(MarkerKind::Delivered, sent[1]).await, "delivered back");
    assert!(!d.moved);
    assert_eq!(d.marker.number, 4);
}

async fn unknown_messages_are_refused(store: &dyn MessageStore, directory: &dyn Directory) {
    let [a, b] = users::<2>(directory).await;
    let channel = group(directory, &[a, b]).await;
    let other = group(directory, &[a, b]).await;
    let ids = Ids::fresh();
    send(store, &channel, a, ids, 1, 1).await;
    let elsewhere = send(store, &other, a, ids, 2, 1).await;
    for (id, what) in [
        (ids.at(99), "an id never sent"),
        (elsewhere[0], "a message of another channel"),
    ] {
        match store.set_marker(b, channel.id, MarkerKind::Read, id).await {
            Err(Error::NotFound { .. }) => {}
            other => panic!("{what}: expected NotFound, got {other:?}"),
        }
    }
    assert_eq!(
        receipt(store, b, channel.id).await,
        Receipt::default(),
        "a refused marker writes nothing"
    );
}

async fn concurrent_markers_keep_the_largest(store: &dyn MessageStore, directory: &dyn Directory) {
    let [a, b] = users::<2>(directory).await;
    let channel = group(directory, &[a, b]).await;
    let ids = Ids::fresh();
    let sent = send(store, &channel, a, ids, 1, 20).await;
    // Every message marked at once, twice, in a shuffled order, with
    // commits from b racing them.
    let mut order: Vec<MessageId> = sent.iter().rev().chain(sent.iter()).copied().collect();
    order.rotate_left(7);
    let marks = join_all(
        order
            .iter()
            .map(|id| store.set_marker(a, channel.id, MarkerKind::Delivered, *id)),
    );
    // b's commits one after the other (ids rise in commit order), racing
    // the marks.
    let sends = async {
        for k in 0..5 {
            ok(
                store
                    .commit(new_message(
                        channel.id,
                        b,
                        ids.at(100 + k),
                        format!("race {k}"),
                    ))
                    .await,
                "racing commit",
            );
        }
    };
    let (marks, ()) = futures_join(marks, sends).await;
    let moved = marks
        .into_iter()
        .map(|r| ok(r, "concurrent set_marker"))
        .filter(|u| u.moved)
        .count();
    assert!(moved >= 1, "at least one move");
    let r = receipt(store, a, channel.id).await;
    assert_eq!(
        r.delivered,
        Some(Marker {
            id: sent[19],
            number: 20
        }),
        "concurrent moves end at the largest"
    );
    assert_eq!(
        r.read.map(|m| m.number),
        Some(20),
        "a's own read marker is untouched by b's sends"
    );
    let rb = receipt(store, b, channel.id).await;
    assert_eq!(
        rb.read.map(|m| m.number),
        Some(25),
        "b's marker is at b's last message, whatever the order of the commits"
    );
    assert_eq!(head(store, channel.id).await.map(|h| h.number), Some(25));
}

async fn reads_are_bounded(store: &dyn MessageStore) {
    let (u, c) = (UserId::new_random(), ChannelId::new_random());
    let keys = vec![(u, c); 3];
    let got = ok(store.receipts(&keys).await, "receipts of unknown keys");
    assert_eq!(got, vec![Receipt::default(); 3], "one entry per key");
    assert_eq!(
        ok(store.heads(&[c, c]).await, "heads of unknown channels"),
        vec![None, None]
    );
    assert!(ok(store.receipts(&[]).await, "no keys").is_empty());
    let too_many = vec![(u, c); MAX_RECEIPTS + 1];
    match store.receipts(&too_many).await {
        Err(Error::InvalidInput { .. }) => {}
        other => panic!("more than MAX_RECEIPTS keys: expected InvalidInput, got {other:?}"),
    }
    match store.heads(&vec![c; MAX_RECEIPTS + 1]).await {
        Err(Error::InvalidInput { .. }) => {}
        other => panic!("more than MAX_RECEIPTS channels: expected InvalidInput, got {other:?}"),
    }
}

/// Polls two futures together from this task.
async fn futures_join<A: std::future::Future, B: std::future::Future>(
    a: A,
    b: B,
) -> (A::Output, B::Output) {
    let mut a = Box::pin(a);
    let mut b = Box::pin(b);
    let (mut ra, mut rb) = (None, None);
    std::future::poll_fn(move |cx| {
        if ra.is_none() {
            if let std::task::Poll::Ready(v) = a.as_mut().poll(cx) {
                ra = Some(v);
            }
        }
        if rb.is_none() {
            if let std::task::Poll::Ready(v) = b.as_mut().poll(cx) {
                rb = Some(v);
            }
        }
        if ra.is_some() && rb.is_some() {
            std::task::Poll::Ready((ra.take().expect("a"), rb.take().expect("b")))
        } else {
            std::task::Poll::Pending
        }
    })
    .await
}
