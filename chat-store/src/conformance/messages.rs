//! The [`MessageStore`] contract: the atomic commit, inbox positions and
//! reads, cursors.

use std::time::Duration;

use chat_core::{
    entry_bytes, Channel, ChannelId, ChannelKind, ClientMsgId, DeviceId, Directory, Error,
    InboxEntry, Message, MessageId, MessageStore, NewMessage, Page, Seq, UserId, MAX_PAGE,
};

use super::{ids_of, new_user, ok, Ids};

/// Checks every clause of the [`MessageStore`] contract that one caller at
/// a time can check (see [`concurrency_suite`](super::concurrency_suite)
/// for the rest). `directory` must be the directory `store` reads channel
/// members from.
///
/// * a commit stores the message in history and in the inbox of every
///   member (the sender included) and of no one else, each at the next
///   position of that inbox, and reports those positions;
/// * positions are dense per user, across all of the user's channels;
/// * a proposed id above the channel's last is kept; one at or below it is
///   refused with `StaleId` carrying the last id, writing nothing;
/// * members are those at the time of the commit: one added later gets
///   only later messages, one removed gets no more;
/// * an unknown channel is `NotFound` and a non-member sender `Forbidden`,
///   writing nothing (the next commit takes the very next positions);
/// * a retry under the same key returns the original message and its
///   original positions with `duplicate`, writing nothing, whatever id it
///   proposes; other content under the key is a `Conflict`; the key is per
///   channel and per sender;
/// * a commit that cannot start within its timeout is refused with a
///   temporary error and writes nothing;
/// * `read` after a position, with entry and byte limits (always one entry
///   at least), `has_more`, and nothing past the end; `head` is the last
///   position;
/// * cursors start at zero, only move forward, and are per device;
/// * a sender blocked by the other member of a direct channel is refused
///   with `Blocked`, writing nothing; the blocker still sends, groups are
///   not affected, and unblocking lets the sender through again;
/// * a message's attachments are kept like `reply_to`;
/// * a reply's `reply_to` is kept in history (committed or appended) and in
///   every member's inbox entry, and a plain message has none.
///
/// # Panics
///
/// On the first contract violation, naming it.
pub async fn message_store_suite(store: &dyn MessageStore, directory: &dyn Directory) {
    commit_fans_out(store, directory).await;
    ids_increase_per_channel(store, directory).await;
    members_as_of_commit(store, directory).await;
    refusals_write_nothing(store, directory).await;
    duplicates_and_conflicts(store, directory).await;
    late_commits_are_refused(store, directory).await;
    reads_with_limits(store, directory).await;
    cursors(store).await;
    replies_are_kept(store, directory).await;
    blocked_senders_are_refused(store, directory).await;
    super::attachments::attachments_are_kept(store, directory).await;
}

/// A commit request with a fresh key and a generous timeout.
pub(super) fn new_message(
    channel: ChannelId,
    sender: UserId,
    id: MessageId,
    content: impl Into<String>,
) -> NewMessage {
    NewMessage {
        id,
        channel_id: channel,
        sender,
        content: content.into(),
        created_at: 1_700_000_000_000 + id.0 % 1_000,
        client_msg_id: ClientMsgId::new_random(),
        timeout: Duration::from_secs(30),
        reply_to: None,
        attachments: Vec::new(),
    }
}

/// A group of `members` owned by the first, with room for 100.
pub(super) async fn group(directory: &dyn Directory, members: &[UserId]) -> Channel {
    ok(
        directory
            .create_channel(
                Channel {
                    id: ChannelId::new_random(),
                    kind: ChannelKind::Group,
                    name: "conformance group".into(),
                    owner: Some(members[0]),
                    members: members.to_vec(),
                    created_at: 1_000,
                },
                &chat_core::Limits::default(),
            )
            .await,
        "create_channel",
    )
}

/// Fresh users.
pub(super) async fn users<const N: usize>(directory: &dyn Directory) -> [UserId; N] {
    let mut out = [UserId::new_random(); N];
    for (i, slot) in out.iter_mut().enumerate() {
        *slot = new_user(directory, &format!("m{i}")).await;
    }
    out
}

/// Every entry of `user`'s inbox, checked for density: positions 1, 2, ...
pub(super) async fn whole_inbox(store: &dyn MessageStore, user: UserId) -> Vec<InboxEntry> {
    let mut all = Vec::new();
    let mut after = Seq::ZERO;
    loop {
        let page = ok(store.read(user, after, MAX_PAGE, usize::MAX).await, "read");
        for (i, e) in page.items.iter().enumerate() {
            assert_eq!(
                e.seq,
                Seq(after.0 + 1 + i as u64),
                "inbox positions are dense and ascending ({user})"
            );
        }
        let Some(last) = page.items.last() else {
            assert!(!page.has_more, "an empty read has nothing more");
            return all;
        };
        after = last.seq;
        let more = page.has_more;
        all.extend(page.items);
        if !more {
            return all;
        }
    }
}

/// The whole history of a channel, ascending.
pub(super) async fn whole_history(store: &dyn MessageStore, channel: ChannelId) -> Vec<Message> {
    let mut all: Vec<Message> = Vec::new();
    loop {
        let after = all.last().map_or(MessageId::ZERO, |m| m.id);
        let page = ok(
            store.page(channel, Page::after(after, MAX_PAGE)).await,
            "page",
        );
        let more = page.has_more;
        all.extend(page.items);
        if !more {
            return all;
        }
    }
}

async fn commit(store: &dyn MessageStore, m: NewMessage) -> chat_core::Committed {
    let c = ok(store.commit(m.clone()).await, "commit");
    assert!(!c.duplicate, "a new key is not a duplicate");
    assert_eq!(c.message.channel_id, m.channel_id);
    assert_eq!(c.message.sender, m.sender);
    assert_eq!(c.message.content, m.content);
    assert_eq!(c.message.client_msg_id, m.client_msg_id);
    assert_eq!(c.message.created_at, m.created_at);
    assert!(
        c.positions.windows(2).all(|w| w[0].0 < w[1].0),
        "positions are sorted by user"
    );
    c
}

async fn commit_fans_out(store: &dyn MessageStore, directory: &dyn Directory) {
    let [a, b, c, outsider] = users::<4>(directory).await;
    let direct = ok(
        directory
            .create_channel(Channel::direct(a, b, 0), &chat_core::Limits::default())
            .await,
        "create_channel",
    );
    let group = group(directory, &[a, b, c]).await;
    let ids = Ids::fresh();

    let first = commit(store, new_message(direct.id, a, ids.at(10), "to bob")).await;
    assert_eq!(first.message.id, ids.at(10), "a fresh channel keeps the id");
    let mut expect = vec![(a, Seq(1)), (b, Seq(1))];
    expect.sort();
    assert_eq!(first.positions, expect, "sender and recipient, position 1");
    assert_eq!(first.position_of(c), None);

    let second = commit(store, new_message(group.id, b, ids.at(11), "to all")).await;
    let mut expect = vec![(a, Seq(2)), (b, Seq(2)), (c, Seq(1))];
    expect.sort();
    assert_eq!(
        second.positions, expect,
        "each member takes the next position of their own inbox"
    );

    assert_eq!(
        ok(store.get(direct.id, first.message.id).await, "get"),
        Some(first.message.clone()),
        "a committed message is in history"
    );
    assert_eq!(
        whole_history(store, group.id).await,
        vec![second.message.clone()]
    );
    let inbox_a = whole_inbox(store, a).await;
    assert_eq!(
        inbox_a
            .iter()
            .map(|e| e.message.clone())
            .collect::<Vec<_>>(),
        vec![first.message.clone(), second.message.clone()],
        "the sender's own inbox holds its messages, for its other devices"
    );
    let inbox_c = whole_inbox(store, c).await;
    assert_eq!(inbox_c.len(), 1, "a member of the group only");
    assert_eq!(inbox_c[0].message, second.message);
    assert!(
        whole_inbox(store, outsider).await.is_empty(),
        "no one else's inbox is touched"
    );
}

async fn ids_increase_per_channel(store: &dyn MessageStore, directory: &dyn Directory) {
    let [a, b] = users::<2>(directory).await;
    let channel = group(directory, &[a, b]).await;
    let ids = Ids::fresh();
    let high = commit(store, new_message(channel.id, a, ids.at(1_000), "high")).await;
    assert_eq!(
        high.message.id,
        ids.at(1_000),
        "a fresh channel takes the id"
    );
    // A node with a slow clock proposes a smaller id, or the same one: refused.
    for low in [ids.at(5), ids.at(1_000)] {
        match store.commit(new_message(channel.id, b, low, "low")).await {
            Err(Error::StaleId { last }) => assert_eq!(
                last,
                ids.at(1_000),
                "a stale id is refused with the channel's last id"
            ),
            other => panic!("an id at or below the channel's last must be StaleId, got {other:?}"),
        }
    }
    assert_eq!(
        whole_inbox(store, b).await.len(),
        1,
        "a stale commit writes nothing"
    );
    let next = commit(store, new_message(channel.id, b, ids.at(1_001), "next")).await;
    let later = commit(store, new_message(channel.id, a, ids.at(5_000), "later")).await;
    let history = whole_history(store, channel.id).await;
    assert_eq!(
        ids_of(&history),
        vec![high.message.id, next.message.id, later.message.id],
        "history in commit order, which is id order"
    );
    // Another channel is unaffected by this one's ids.
    let other = group(directory, &[a]).await;
    let first = commit(store, new_message(other.id, a, ids.at(3), "other")).await;
    assert_eq!(first.message.id, ids.at(3), "the last id is per channel");
    for user in [a, b] {
        let in_channel: Vec<MessageId> = whole_inbox(store, user)
            .await
            .into_iter()
            .filter(|e| e.message.channel_id == channel.id)
            .map(|e| e.message.id)
            .collect();
        assert_eq!(
            in_channel,
            ids_of(&history),
            "every inbox holds the channel's messages in id order"
        );
    }
}

async fn members_as_of_commit(store: &dyn MessageStore, directory: &dyn Directory) {
    let [owner, stays, joins, leaves] = users::<4>(directory).await;
    let channel = group(directory, &[owner, stays, leaves]).await;
    let ids = Ids::fresh();
    let before = commit(store, new_message(channel.id, owner, ids.at(1), "before")).await;
    ok(
        directory
            .add_member(channel.id, joins, &chat_core::Limits::default())
            .await,
        "add_member",
    );
    ok(
        directory.remove_member(channel.id, leaves).await,
        "remove_member",
    );
    let after = commit(store, new_message(channel.id, stays, ids.at(2), "after")).await;
    assert_eq!(
        after.position_of(joins),
        Some(Seq(1)),
        "a new member gets it"
    );
    assert_eq!(after.position_of(leaves), None, "a removed member does not");
    let joined: Vec<Message> = whole_inbox(store, joins)
        .await
        .into_iter()
        .map(|e| e.message)
        .collect();
    assert_eq!(
        joined,
        vec![after.message.clone()],
        "a member added later gets only later messages"
    );
    let left: Vec<Message> = whole_inbox(store, leaves)
        .await
        .into_iter()
        .map(|e| e.message)
        .collect();
    assert_eq!(left, vec![before.message], "a removed member gets no more");
    assert_err!(
        store
            .commit(new_message(channel.id, leaves, ids.at(3), "gone"))
            .await,
        Error::Forbidden { .. },
        "a removed member can no longer post"
    );
}

async fn refusals_write_nothing(store: &dyn MessageStore, directory: &dyn Directory) {
    let [a, b, outsider] = users::<3>(directory).await;
    let channel = group(directory, &[a, b]).await;
    let ids = Ids::fresh();
    commit(store, new_message(channel.id, a, ids.at(1), "one")).await;
    assert_err!(
        store
            .commit(new_message(
                ChannelId::new_random(),
                a,
                ids.at(2),
                "nowhere"
            ))
            .await,
        Error::NotFound { .. },
        "a commit to an unknown channel"
    );
    assert_err!(
        store
            .commit(new_message(channel.id, outsider, ids.at(3), "intruder"))
            .await,
        Error::Forbidden { .. },
        "a commit by a non-member"
    );
    assert!(
        whole_inbox(store, outsider).await.is_empty(),
        "a refused commit writes nothing"
    );
    let next = commit(store, new_message(channel.id, b, ids.at(4), "two")).await;
    let mut expect = vec![(a, Seq(2)), (b, Seq(2))];
    expect.sort();
    assert_eq!(
        next.positions, expect,
        "refused commits took no position and no id"
    );
    assert_eq!(whole_history(store, channel.id).await.len(), 2);
}

async fn duplicates_and_conflicts(store: &dyn MessageStore, directory: &dyn Directory) {
    let [a, b] = users::<2>(directory).await;
    let channel = group(directory, &[a, b]).await;
    let other = group(directory, &[a, b]).await;
    let ids = Ids::fresh();
    let m = new_message(channel.id, a, ids.at(10), "once");
    let original = commit(store, m.clone()).await;
    let mut retry = m.clone();
    retry.id = ids.at(99);
    retry.created_at += 5_000;
    let again = ok(store.commit(retry).await, "commit retry");
    assert!(again.duplicate, "a retry is a duplicate");
    assert_eq!(
        again.message, original.message,
        "a duplicate answers the original message, original id and time"
    );
    assert_eq!(
        again.positions, original.positions,
        "a duplicate answers the original positions"
    );
    let mut conflicting = m.clone();
    conflicting.content = "something else".into();
    assert_err!(
        store.commit(conflicting).await,
        Error::Conflict { .. },
        "the same key with other content"
    );
    // Another channel, or another sender: another key.
    let mut elsewhere = m.clone();
    elsewhere.channel_id = other.id;
    let elsewhere = commit(store, elsewhere).await;
    assert_ne!(elsewhere.message.channel_id, original.message.channel_id);
    let mut from_b = m.clone();
    from_b.sender = b;
    from_b.id = ids.at(11);
    commit(store, from_b).await;
    // The same sender may send the same text twice under two keys.
    commit(store, new_message(channel.id, a, ids.at(12), "once")).await;
    assert_eq!(
        whole_history(store, channel.id).await.len(),
        3,
        "duplicates and conflicts wrote nothing"
    );
    assert_eq!(
        whole_inbox(store, b).await.len(),
        4,
        "one inbox entry per committed message"
    );
}

async fn late_commits_are_refused(store: &dyn MessageStore, directory: &dyn Directory) {
    let [a, b] = users::<2>(directory).await;
    let channel = group(directory, &[a, b]).await;
    let ids = Ids::fresh();
    let mut late = new_message(channel.id, a, ids.at(1), "too late");
    late.timeout = Duration::ZERO;
    match store.commit(late.clone()).await {
        Err(e) if e.is_temporary() => {}
        other => panic!("a commit past its timeout must be refused as temporary, got {other:?}"),
    }
    assert!(
        whole_inbox(store, b).await.is_empty(),
        "a refused late commit writes nothing"
    );
    late.timeout = Duration::from_secs(30);
    let c = commit(store, late).await;
    assert_eq!(
        c.position_of(b),
        Some(Seq(1)),
        "the retry commits, at the first position"
    );
}

async fn reads_with_limits(store: &dyn MessageStore, directory: &dyn Directory) {
    let [a, b] = users::<2>(directory).await;
    let channel = group(directory, &[a, b]).await;
    let ids = Ids::fresh();
    // Sizes chosen around a budget of 3 entries of 1,000 content bytes.
    let mut committed = Vec::new();
    for k in 1..=8u64 {
        let size = if k == 5 { 50_000 } else { 1_000 };
        let content: String = "é".repeat(size / 2);
        committed.push(commit(store, new_message(channel.id, a, ids.at(k), content)).await);
    }
    let seqs = |v: &[InboxEntry]| v.iter().map(|e| e.seq.0).collect::<Vec<_>>();
    let page = ok(store.read(b, Seq::ZERO, 3, usize::MAX).await, "read");
    assert_eq!(seqs(&page.items), vec![1, 2, 3], "at most `limit`");
    assert!(page.has_more);
    assert_eq!(
        page.items[0].message, committed[0].message,
        "entries carry the message exactly"
    );
    let one = entry_bytes(&committed[0].message);
    let page = ok(store.read(b, Seq(1), 100, 3 * one).await, "read");
    assert_eq!(
        seqs(&page.items),
        vec![2, 3, 4],
        "stops before the entry that would pass max_bytes"
    );
    assert!(page.has_more, "more after a byte-limited page");
    let page = ok(store.read(b, Seq(4), 100, 3 * one).await, "read");
    assert_eq!(
        seqs(&page.items),
        vec![5],
        "the first entry is returned even when larger than the budget"
    );
    assert!(page.has_more);
    let page = ok(store.read(b, Seq(5), 100, usize::MAX).await, "read");
    assert_eq!(seqs(&page.items), vec![6, 7, 8]);
    assert!(!page.has_more, "nothing more at the end");
    let page = ok(store.read(b, Seq(8), 100, usize::MAX).await, "read");
    assert!(page.items.is_empty() && !page.has_more, "after the last");
    assert_eq!(ok(store.head(b).await, "head"), Seq(8), "head is the last");
    assert_eq!(
        ok(store.head(UserId::new_random()).await, "head"),
        Seq::ZERO,
        "an empty inbox's head is zero"
    );
    let page = ok(store.read(b, Seq(1_000), 100, usize::MAX).await, "read");
    assert!(page.items.is_empty() && !page.has_more, "past the end");
    let page = ok(store.read(b, Seq::ZERO, 0, usize::MAX).await, "read");
    assert!(page.items.is_empty(), "limit 0 returns nothing");
    // History pages follow the same byte rule.
    let p = ok(
        store
            .page(channel.id, Page::latest(100).with_max_bytes(3 * one))
            .await,
        "page",
    );
    assert_eq!(
        ids_of(&p.items),
        ids_of(
            &committed[5..]
                .iter()
                .map(|c| c.message.clone())
                .collect::<Vec<_>>()
        ),
        "a backward history page keeps the newest that fit"
    );
    assert!(p.has_more);
}

async fn cursors(store: &dyn MessageStore) {
    let (user, d1, d2) = (
        UserId::new_random(),
        DeviceId::new_random(),
        DeviceId::new_random(),
    );
    assert_eq!(ok(store.cursor(user, d1).await, "cursor"), Seq::ZERO);
    assert_eq!(
        ok(store.advance_cursor(user, d1, Seq(10)).await, "advance"),
        Seq(10)
    );
    assert_eq!(
        ok(store.advance_cursor(user, d1, Seq(4)).await, "advance"),
        Seq(10),
        "a cursor never moves back; the stored value is returned"
    );
    assert_eq!(ok(store.cursor(user, d1).await, "cursor"), Seq(10));
    assert_eq!(
        ok(store.cursor(user, d2).await, "cursor"),
        Seq::ZERO,
        "each device has its own cursor"
    );
    assert_eq!(
        ok(store.cursor(UserId::new_random(), d1).await, "cursor"),
        Seq::ZERO,
        "each user has their own"
    );
}

/// `reply_to` goes wherever the message goes: `get`, pages of history,
/// every member's inbox entry, and through [`HistoryStore::append`](chat_core::HistoryStore::append).
async fn replies_are_kept(store: &dyn MessageStore, directory: &dyn Directory) {
    let [a, b, c] = users::<3>(directory).await;
    let group = group(directory, &[a, b, c]).await;
    let ids = Ids::fresh();
    let question = commit(store, new_message(group.id, a, ids.at(1), "lunch?")).await;
    assert_eq!(
        question.message.reply_to, None,
        "a plain message has no reply_to"
    );
    let mut answer = new_message(group.id, b, ids.at(2), "yes");
    answer.reply_to = Some(question.message.id);
    let answer = commit(store, answer).await;
    assert_eq!(answer.message.reply_to, Some(question.message.id));
    assert_eq!(
        ok(store.get(group.id, answer.message.id).await, "get").and_then(|m| m.reply_to),
        Some(question.message.id),
        "get carries reply_to"
    );
    assert_eq!(
        whole_history(store, group.id).await,
        vec![question.message.clone(), answer.message.clone()],
        "history pages carry reply_to (and only on the reply)"
    );
    for member in [a, b, c] {
        let inbox = whole_inbox(store, member).await;
        assert_eq!(
            inbox.last().map(|e| e.message.reply_to),
            Some(Some(question.message.id)),
            "every member's inbox entry carries reply_to"
        );
    }
    let mut appended = super::message(group.id, c, ids.at(3), "me too");
    appended.reply_to = Some(question.message.id);
    ok(store.append(appended.clone()).await, "append a reply");
    assert_eq!(
        ok(store.get(group.id, appended.id).await, "get"),
        Some(appended),
        "an appended reply keeps reply_to"
    );
}

/// A block refuses the blocked user's commits to the direct channel of the
/// two, and nothing else.
async fn blocked_senders_are_refused(store: &dyn MessageStore, directory: &dyn Directory) {
    let [a, b, c] = users::<3>(directory).await;
    let direct = ok(
        directory
            .create_channel(Channel::direct(a, b, 0), &chat_core::Limits::default())
            .await,
        "create_channel",
    );
    let group = group(directory, &[a, b, c]).await;
    let ids = Ids::fresh();
    commit(store, new_message(direct.id, b, ids.at(1), "hello")).await;
    ok(directory.block(a, b).await, "block");
    match store
        .commit(new_message(direct.id, b, ids.at(2), "blocked"))
        .await
    {
        Err(Error::Blocked) => {}
        other => panic!("a blocked sender's direct message: expected Blocked, got {other:?}"),
    }
    assert_eq!(
        whole_history(store, direct.id).await.len(),
        1,
        "a refused commit writes nothing"
    );
    assert_eq!(whole_inbox(store, a).await.len(), 1, "nor an inbox entry");
    commit(
        store,
        new_message(direct.id, a, ids.at(3), "the blocker still sends"),
    )
    .await;
    commit(
        store,
        new_message(group.id, b, ids.at(4), "groups are not affected"),
    )
    .await;
    ok(directory.unblock(a, b).await, "unblock");
    commit(store, new_message(direct.id, b, ids.at(5), "unblocked")).await;
    assert_eq!(whole_history(store, direct.id).await.len(), 3);
}
