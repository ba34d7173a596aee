//! The [`MessageStore::change`] contract: edits, deletions and reactions,
//! in history and as change entries in every member's inbox.

use std::time::Duration;

use chat_core::{
    Action, Change, Changed, Channel, ChannelId, Directory, Error, InboxEntry, MessageId,
    MessageStore, NewChange, Reactions, UserId,
};

use super::messages::{group, new_message, users, whole_history, whole_inbox};
use super::{join_all, ok, Ids};

/// Checks every clause of [`MessageStore::change`] and
/// [`HistoryStore::reactions`](chat_core::HistoryStore::reactions).
/// `directory` must be the directory `store` reads channel members from.
///
/// * an edit by the sender replaces the content and sets `edited_at`,
///   keeping the id, the order and everything else, in history (`get` and
///   pages) and as a change entry at the next position of every member's
///   inbox (and no one else's), with the positions reported;
/// * the same edit again, a second deletion, a reaction already there and
///   taking back one that is not are `unchanged` and write nothing;
/// * an edit by anyone else, a deletion by a member who is neither the
///   sender nor the group's owner (a direct channel has none), and any
///   change by a non-member are `Forbidden`; an unknown channel or message
///   is `NotFound`; an edit of, or a reaction to, a deleted message is a
///   `Conflict`; none writes anything;
/// * a deletion leaves a tombstone (no content, `deleted`) in history and
///   in the change entries, and drops the message's reactions;
/// * reactions are counted per emoji for the viewer (`me`), sorted by
///   emoji, only for the asked messages that have any; at most 20 distinct
///   ones per user and message (`LimitExceeded` past them);
/// * a change that cannot start within its timeout is refused with a
///   temporary error and writes nothing;
/// * a retried send of a message edited since is a `Conflict`;
/// * concurrent changes of one message: the same reaction (or edit) raced
///   is applied once and answered `unchanged` to the others, a user's
///   racing reactions still stop at the cap, and every change applied has
///   one entry in each member's inbox at dense positions, in the order
///   history applied them.
///
/// # Panics
///
/// On the first contract violation, naming it.
pub async fn changes_suite(store: &dyn MessageStore, directory: &dyn Directory) {
    edits(store, directory).await;
    deletions(store, directory).await;
    reactions(store, directory).await;
    concurrent_changes(store, directory).await;
    super::attachments::attachments_follow_changes(store, directory).await;
}

fn change(channel: ChannelId, id: MessageId, actor: UserId, action: Action) -> NewChange {
    NewChange {
        channel_id: channel,
        message_id: id,
        actor,
        action,
        at: 1_800_000_000_000,
        timeout: Duration::from_secs(30),
    }
}

fn edit(channel: ChannelId, id: MessageId, actor: UserId, content: &str) -> NewChange {
    change(
        channel,
        id,
        actor,
        Action::Edit {
            content: content.into(),
        },
    )
}

fn react(channel: ChannelId, id: MessageId, actor: UserId, emoji: &str) -> NewChange {
    change(
        channel,
        id,
        actor,
        Action::React {
            emoji: emoji.into(),
        },
    )
}

fn unreact(channel: ChannelId, id: MessageId, actor: UserId, emoji: &str) -> NewChange {
    change(
        channel,
        id,
        actor,
        Action::Unreact {
            emoji: emoji.into(),
        },
    )
}

async fn heads(store: &dyn MessageStore, users: &[UserId]) -> Vec<usize> {
    let mut out = Vec::new();
    for u in users {
        out.push(whole_inbox(store, *u).await.len());
    }
    out
}

/// Applies a change that must write, and checks its change entries.
async fn applied(
    store: &dyn MessageStore,
    channel: &Channel,
    outsider: UserId,
    c: NewChange,
) -> Changed {
    let before = heads(store, &channel.members).await;
    let done = ok(store.change(c.clone()).await, "change");
    assert!(!done.unchanged, "a change that changes something: {c:?}");
    assert_eq!(done.message.id, c.message_id, "the id stays");
    assert_eq!(
        done.positions.iter().map(|(u, _)| *u).collect::<Vec<_>>(),
        channel.members,
        "a change entry for every member, sorted by user"
    );
    for (i, member) in channel.members.iter().enumerate() {
        let inbox = whole_inbox(store, *member).await;
        assert_eq!(inbox.len(), before[i] + 1, "one change entry per member");
        let last: &InboxEntry = inbox.last().expect("an entry");
        assert_eq!(done.position_of(*member), Some(last.seq));
        assert_eq!(
            last.change.as_ref(),
            Some(&done.change),
            "the entry says what changed"
        );
        assert_eq!(last.message.id, c.message_id);
        assert_eq!(last.message.content, done.message.content);
        assert_eq!(last.message.edited_at, done.message.edited_at);
        assert_eq!(last.message.deleted, done.message.deleted);
    }
    assert!(
        whole_inbox(store, outsider)
            .await
            .iter()
            .all(|e| e.message.channel_id != channel.id),
        "no change entry outside the channel"
    );
    done
}

/// A change that must be refused and write nothing.
async fn refused(store: &dyn MessageStore, watch: &[UserId], c: NewChange, what: &str) -> Error {
    let before = heads(store, watch).await;
    let e = match store.change(c).await {
        Err(e) => e,
        Ok(done) => panic!("{what}: must be refused, got {done:?}"),
    };
    assert_eq!(heads(store, watch).await, before, "{what}: writes nothing");
    e
}

/// An idempotent repeat: unchanged, nothing written.
async fn unchanged(store: &dyn MessageStore, watch: &[UserId], c: NewChange, what: &str) {
    let before = heads(store, watch).await;
    let done = ok(store.change(c).await, what);
    assert!(done.unchanged, "{what}: unchanged");
    assert!(done.positions.is_empty(), "{what}: no positions");
    assert_eq!(heads(store, watch).await, before, "{what}: writes nothing");
}

async fn edits(store: &dyn MessageStore, directory: &dyn Directory) {
    let [a, b, c, outsider] = users::<4>(directory).await;
    let group = group(directory, &[a, b, c]).await;
    let ids = Ids::fresh();
    let first = ok(
        store
            .commit(new_message(group.id, a, ids.at(1), "first"))
            .await,
        "commit",
    );
    let send = new_message(group.id, b, ids.at(2), "helo");
    let second = ok(store.commit(send.clone()).await, "commit");
    let third = ok(
        store
            .commit(new_message(group.id, c, ids.at(3), "third"))
            .await,
        "commit",
    );
    let id = second.message.id;
    let all = [a, b, c];

    let e = refused(
        store,
        &all,
        edit(group.id, id, a, "x"),
        "an edit by another member",
    )
    .await;
    assert!(matches!(e, Error::Forbidden { .. }), "{e:?}");
    let e = refused(
        store,
        &all,
        edit(group.id, id, outsider, "x"),
        "an edit by a non-member",
    )
    .await;
    assert!(matches!(e, Error::Forbidden { .. }), "{e:?}");
    let e = refused(
        store,
        &all,
        edit(ChannelId::new_random(), id, b, "x"),
        "unknown channel",
    )
    .await;
    assert!(matches!(e, Error::NotFound { .. }), "{e:?}");
    let e = refused(
        store,
        &all,
        edit(group.id, ids.at(9), b, "x"),
        "unknown message",
    )
    .await;
    assert!(matches!(e, Error::NotFound { .. }), "{e:?}");
    let mut late = edit(group.id, id, b, "late");
    late.timeout = Duration::ZERO;
    let e = refused(store, &all, late, "a change past its timeout").await;
    assert!(
        e.is_temporary(),
        "a late change is refused as temporary: {e:?}"
    );

    let done = applied(store, &group, outsider, edit(group.id, id, b, "hello")).await;
    assert_eq!(done.change, Change::Edited {});
    assert_eq!(done.message.content, "hello");
    assert_eq!(done.message.edited_at, Some(1_800_000_000_000));
    let mut expected = second.message.clone();
    expected.content = "hello".into();
    expected.edited_at = Some(1_800_000_000_000);
    assert_eq!(
        done.message, expected,
        "only the content and edited_at change"
    );
    assert_eq!(
        ok(store.get(group.id, id).await, "get"),
        Some(expected.clone()),
        "get shows the edit"
    );
    assert_eq!(
        whole_history(store, group.id).await,
        vec![
            first.message.clone(),
            expected.clone(),
            third.message.clone()
        ],
        "history shows the edit in the message's place"
    );
    unchanged(
        store,
        &all,
        edit(group.id, id, b, "hello"),
        "the same edit again",
    )
    .await;
    match store.commit(send).await {
        Err(Error::Conflict { .. }) => {}
        other => panic!("a retried send of an edited message is a conflict, got {other:?}"),
    }
    // A second edit: the last state wins everywhere.
    let done = applied(store, &group, outsider, edit(group.id, id, b, "hello!")).await;
    assert_eq!(done.message.content, "hello!");
    assert_eq!(
        ok(store.get(group.id, id).await, "get").map(|m| m.content),
        Some("hello!".to_owned())
    );
}

async fn deletions(store: &dyn MessageStore, directory: &dyn Directory) {
    let [owner, b, c, outsider] = users::<4>(directory).await;
    let group = group(directory, &[owner, b, c]).await;
    let ids = Ids::fresh();
    let mut reply = new_message(group.id, b, ids.at(2), "to delete");
    let first = ok(
        store
            .commit(new_message(group.id, c, ids.at(1), "c's"))
            .await,
        "commit",
    );
    reply.reply_to = Some(first.message.id);
    let by_b = ok(store.commit(reply).await, "commit").message;
    let all = [owner, b, c];
    ok(
        store.change(react(group.id, by_b.id, c, "👍")).await,
        "react",
    );

    let e = refused(
        store,
        &all,
        change(group.id, by_b.id, c, Action::Delete),
        "a deletion by a member neither sender nor owner",
    )
    .await;
    assert!(matches!(e, Error::Forbidden { .. }), "{e:?}");
    let e = refused(
        store,
        &all,
        change(group.id, by_b.id, outsider, Action::Delete),
        "a deletion by a non-member",
    )
    .await;
    assert!(matches!(e, Error::Forbidden { .. }), "{e:?}");

    let done = applied(
        store,
        &group,
        outsider,
        change(group.id, by_b.id, owner, Action::Delete),
    )
    .await;
    assert_eq!(
        done.change,
        Change::Deleted { by: owner },
        "the owner deletes"
    );
    let tombstone = chat_core::changes::tombstone(&by_b);
    assert_eq!(
        done.message, tombstone,
        "a tombstone keeps everything but the content"
    );
    assert!(tombstone.content.is_empty() && tombstone.deleted);
    assert_eq!(tombstone.reply_to, Some(first.message.id));
    assert_eq!(
        whole_history(store, group.id).await,
        vec![first.message.clone(), tombstone.clone()],
        "history shows the tombstone in the message's place"
    );
    assert_eq!(
        ok(store.reactions(group.id, &[by_b.id], c).await, "reactions"),
        vec![],
        "a deletion drops the reactions"
    );
    unchanged(
        store,
        &all,
        change(group.id, by_b.id, b, Action::Delete),
        "a second deletion",
    )
    .await;
    let e = refused(
        store,
        &all,
        edit(group.id, by_b.id, b, "back"),
        "an edit of a deleted message",
    )
    .await;
    assert!(matches!(e, Error::Conflict { .. }), "{e:?}");
    let e = refused(
        store,
        &all,
        react(group.id, by_b.id, c, "🎉"),
        "a reaction to a deleted message",
    )
    .await;
    assert!(matches!(e, Error::Conflict { .. }), "{e:?}");
    // The sender deletes their own message.
    let done = applied(
        store,
        &group,
        outsider,
        change(group.id, first.message.id, c, Action::Delete),
    )
    .await;
    assert_eq!(done.change, Change::Deleted { by: c });

    // A direct channel has no owner: only the sender deletes.
    let direct = ok(
        directory
            .create_channel(Channel::direct(b, c, 0), &chat_core::Limits::default())
            .await,
        "create_channel",
    );
    let m = ok(
        store
            .commit(new_message(direct.id, b, ids.at(10), "direct"))
            .await,
        "commit",
    )
    .message;
    let e = refused(
        store,
        &[b, c],
        change(direct.id, m.id, c, Action::Delete),
        "a deletion by the other member of a direct channel",
    )
    .await;
    assert!(matches!(e, Error::Forbidden { .. }), "{e:?}");
    applied(
        store,
        &direct,
        outsider,
        change(direct.id, m.id, b, Action::Delete),
    )
    .await;
}

fn counted(emoji: &str, count: u32, me: bool) -> Reactions {
    Reactions {
        emoji: emoji.into(),
        count,
        me,
    }
}

async fn reactions(store: &dyn MessageStore, directory: &dyn Directory) {
    let [a, b, c, outsider] = users::<4>(directory).await;
    let group = group(directory, &[a, b, c]).await;
    let ids = Ids::fresh();
    let m = ok(
        store
            .commit(new_message(group.id, a, ids.at(1), "react to me"))
            .await,
        "commit",
    )
    .message;
    let plain = ok(
        store
            .commit(new_message(group.id, a, ids.at(2), "no reactions"))
            .await,
        "commit",
    )
    .message;
    let all = [a, b, c];

    let done = applied(store, &group, outsider, react(group.id, m.id, b, "👍")).await;
    assert_eq!(
        done.change,
        Change::Reacted {
            user: b,
            emoji: "👍".into()
        }
    );
    assert_eq!(
        done.message.content, m.content,
        "a reaction leaves the message as it is"
    );
    applied(store, &group, outsider, react(group.id, m.id, c, "👍")).await;
    applied(store, &group, outsider, react(group.id, m.id, c, "🎉")).await;
    unchanged(
        store,
        &all,
        react(group.id, m.id, c, "🎉"),
        "a reaction already there",
    )
    .await;
    unchanged(
        store,
        &all,
        unreact(group.id, m.id, a, "👍"),
        "taking back a reaction not there",
    )
    .await;
    let e = refused(
        store,
        &all,
        react(group.id, m.id, outsider, "👍"),
        "a reaction by a non-member",
    )
    .await;
    assert!(matches!(e, Error::Forbidden { .. }), "{e:?}");

    let asked = [plain.id, m.id, ids.at(99)];
    assert_eq!(
        ok(store.reactions(group.id, &asked, c).await, "reactions"),
        vec![(m.id, vec![counted("🎉", 1, true), counted("👍", 2, true)])],
        "counted per emoji, sorted, for the viewer; messages without any left out"
    );
    assert_eq!(
        ok(store.reactions(group.id, &asked, a).await, "reactions"),
        vec![(m.id, vec![counted("🎉", 1, false), counted("👍", 2, false)])],
        "`me` is the viewer's"
    );
    assert_eq!(
        ok(
            store.reactions(ChannelId::new_random(), &asked, a).await,
            "reactions"
        ),
        vec![],
        "another channel's messages have none"
    );
    let done = applied(store, &group, outsider, unreact(group.id, m.id, c, "👍")).await;
    assert_eq!(
        done.change,
        Change::Unreacted {
            user: c,
            emoji: "👍".into()
        }
    );
    assert_eq!(
        ok(store.reactions(group.id, &[m.id], c).await, "reactions"),
        vec![(m.id, vec![counted("🎉", 1, true), counted("👍", 1, false)])],
    );

    // The cap: 20 distinct reactions per user and message.
    for k in 1..chat_core::changes::MAX_REACTIONS_PER_USER {
        ok(
            store
                .change(react(group.id, m.id, b, &format!(":{k}:")))
                .await,
            "react",
        );
    }
    let e = refused(
        store,
        &all,
        react(group.id, m.id, b, ":over:"),
        "a 21st reaction",
    )
    .await;
    assert!(matches!(e, Error::LimitExceeded { .. }), "{e:?}");
    let others = ok(store.change(react(group.id, m.id, c, ":1:")).await, "react");
    assert!(!others.unchanged, "the cap is per user");
    assert_eq!(
        whole_inbox(store, a).await.last().map(|e| e.seq),
        others.position_of(a),
        "each reaction is one change entry"
    );
}

async fn concurrent_changes(store: &dyn MessageStore, directory: &dyn Directory) {
    const RACERS: usize = 8;
    let [a, b] = users::<2>(directory).await;
    let group = group(directory, &[a, b]).await;
    let ids = Ids::fresh();
    let m = ok(
        store
            .commit(new_message(group.id, a, ids.at(1), "race"))
            .await,
        "commit",
    )
    .message;
    let before = heads(store, &[a, b]).await;

    // The same reaction, and the same edit, raced: one of each applies.
    let same = join_all((0..RACERS).map(|_| store.change(react(group.id, m.id, b, "👍")))).await;
    let edits = join_all((0..RACERS).map(|_| store.change(edit(group.id, m.id, a, "raced")))).await;
    for (what, results) in [("the same reaction", same), ("the same edit", edits)] {
        let applied = results
            .into_iter()
            .map(|r| ok(r, what))
            .filter(|c| !c.unchanged)
            .count();
        assert_eq!(applied, 1, "{what} raced {RACERS} times is applied once");
    }
    // Distinct reactions of one user raced past the cap: exactly up to it.
    let many = MAX + 5;
    let results =
        join_all((0..many).map(|k| store.change(react(group.id, m.id, b, &format!(":{k}:")))))
            .await;
    let mut applied = 0;
    for r in results {
        match r {
            Ok(c) if !c.unchanged => applied += 1,
            Err(Error::LimitExceeded { .. }) => {}
            other => panic!("a racing reaction: {other:?}"),
        }
    }
    assert_eq!(
        applied,
        MAX - 1,
        "the cap holds under a race (one 👍 already there)"
    );
    let counted: u32 = ok(store.reactions(group.id, &[m.id], a).await, "reactions")
        .into_iter()
        .flat_map(|(_, r)| r)
        .map(|r| r.count)
        .sum();
    assert_eq!(counted as usize, MAX);
    for (i, user) in [a, b].into_iter().enumerate() {
        let inbox = whole_inbox(store, user).await;
        assert_eq!(
            inbox.len(),
            before[i] + 2 + (MAX - 1),
            "one change entry per applied change"
        );
        assert!(inbox[before[i]..].iter().all(|e| e.change.is_some()));
    }
}

const MAX: usize = chat_core::changes::MAX_REACTIONS_PER_USER;
