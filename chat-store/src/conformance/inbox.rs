//! The [`Inbox`] contract.

use chat_core::{ChannelId, DeviceId, Inbox, Message, MessageId, UserId};

use super::{ids_of, message, ok, Ids};

/// Checks every clause of the [`Inbox`] contract:
///
/// * an unknown user's inbox is empty;
/// * `push` writes the message into every listed inbox (once, even if a
///   recipient is listed twice), and into no other;
/// * `read` returns entries with `id > after`, ascending, at most `limit`
///   (0 returns nothing), messages exact, whatever channel they came from;
/// * pushing the same message again changes nothing;
/// * cursors start at [`MessageId::ZERO`], only move forward,
///   `advance_cursor` returns the stored maximum, and every `(user, device)`
///   has its own cursor.
///
/// # Panics
///
/// On the first contract violation, naming it.
pub async fn inbox_suite(inbox: &dyn Inbox) {
    fan_out_and_read(inbox).await;
    pushes_are_idempotent_and_isolated(inbox).await;
    cursors(inbox).await;
}

async fn read(inbox: &dyn Inbox, user: UserId, after: MessageId, limit: usize) -> Vec<Message> {
    let got = ok(inbox.read(user, after, limit).await, "read");
    assert!(
        got.windows(2).all(|w| w[0].id < w[1].id),
        "read must be in ascending id order, got {:?}",
        ids_of(&got)
    );
    assert!(got.len() <= limit, "read returned more than limit");
    assert!(
        got.iter().all(|m| m.id > after),
        "read returned id <= after"
    );
    got
}

async fn fan_out_and_read(inbox: &dyn Inbox) {
    let ids = Ids::fresh();
    let (u1, u2, u3) = (
        UserId::new_random(),
        UserId::new_random(),
        UserId::new_random(),
    );
    assert!(
        read(inbox, u1, MessageId::ZERO, 100).await.is_empty(),
        "an unknown user's inbox is empty"
    );
    // Messages from two channels and two senders, ids with gaps.
    let (c1, c2) = (ChannelId::new_random(), ChannelId::new_random());
    let all: Vec<Message> = (1..=6u64)
        .map(|k| {
            let channel = if k % 2 == 0 { c1 } else { c2 };
            message(
                channel,
                UserId::new_random(),
                ids.at(10 * k),
                format!("m{k} ✓"),
            )
        })
        .collect();
    for k in [2usize, 5, 0, 3, 1, 4] {
        ok(inbox.push(&[u1, u2, u3], &all[k]).await, "push");
    }
    for user in [u1, u2, u3] {
        assert_eq!(
            read(inbox, user, MessageId::ZERO, 100).await,
            all,
            "push writes to every recipient; read is ascending and exact"
        );
    }
    let id = |i: usize| all[i].id;
    let cases: Vec<(&str, MessageId, usize, Vec<Message>)> = vec![
        ("after a cursor, with a limit", id(1), 2, all[2..4].to_vec()),
        (
            "after a cursor, no limit hit",
            id(1),
            100,
            all[2..].to_vec(),
        ),
        (
            "after an id never stored",
            MessageId(id(1).0 + 1),
            1,
            all[2..3].to_vec(),
        ),
        (
            "from the start, with a limit",
            MessageId::ZERO,
            3,
            all[..3].to_vec(),
        ),
        ("after the newest", id(5), 10, Vec::new()),
        ("after MAX", MessageId::MAX, 10, Vec::new()),
        ("limit 0", MessageId::ZERO, 0, Vec::new()),
    ];
    for (clause, after, limit, expected) in cases {
        assert_eq!(
            read(inbox, u2, after, limit).await,
            expected,
            "read {clause} (after {after}, limit {limit})"
        );
    }
}

async fn pushes_are_idempotent_and_isolated(inbox: &dyn Inbox) {
    let ids = Ids::fresh();
    let channel = ChannelId::new_random();
    let (u1, u2, outsider) = (
        UserId::new_random(),
        UserId::new_random(),
        UserId::new_random(),
    );
    let m1 = message(channel, u1, ids.at(1), "one");
    let m2 = message(channel, u1, ids.at(2), "two");
    ok(inbox.push(&[u1, u2], &m1).await, "push");
    ok(inbox.push(&[u1, u2], &m1).await, "push again");
    ok(inbox.push(&[u2], &m1).await, "push again to a subset");
    for user in [u1, u2] {
        assert_eq!(
            read(inbox, user, MessageId::ZERO, 100).await,
            vec![m1.clone()],
            "pushing the same message again changes nothing"
        );
    }
    ok(
        inbox.push(&[u1, u1], &m2).await,
        "push to a repeated recipient",
    );
    assert_eq!(
        read(inbox, u1, MessageId::ZERO, 100).await,
        vec![m1.clone(), m2.clone()],
        "a recipient listed twice gets the message once"
    );
    assert_eq!(
        read(inbox, u2, MessageId::ZERO, 100).await,
        vec![m1.clone()],
        "a push reaches only the listed inboxes"
    );
    assert!(
        read(inbox, outsider, MessageId::ZERO, 100).await.is_empty(),
        "a user never pushed to has an empty inbox"
    );
    ok(
        inbox
            .push(&[], &message(channel, u1, ids.at(3), "nobody"))
            .await,
        "push to no recipients",
    );
    assert_eq!(
        read(inbox, u1, MessageId::ZERO, 100).await.len(),
        2,
        "a push to no recipients writes nothing"
    );
}

async fn cursors(inbox: &dyn Inbox) {
    let (user, other_user) = (UserId::new_random(), UserId::new_random());
    let (d1, d2) = (DeviceId::new_random(), DeviceId::new_random());
    let cursor = move |u, d| inbox.cursor(u, d);
    assert_eq!(
        ok(cursor(user, d1).await, "cursor"),
        MessageId::ZERO,
        "a device never seen has cursor ZERO"
    );
    let steps: [(u64, u64, &str); 6] = [
        (10, 10, "advance moves a cursor forward"),
        (
            5,
            10,
            "advance never moves a cursor backward; returns the stored max",
        ),
        (10, 10, "advance to the stored value keeps it"),
        (0, 10, "advance to ZERO keeps the stored value"),
        (20, 20, "advance moves forward again"),
        (19, 20, "advance just below keeps the stored value"),
    ];
    for (to, expected, clause) in steps {
        assert_eq!(
            ok(
                inbox.advance_cursor(user, d1, MessageId(to)).await,
                "advance_cursor"
            ),
            MessageId(expected),
            "{clause} (advance to {to})"
        );
        assert_eq!(
            ok(cursor(user, d1).await, "cursor"),
            MessageId(expected),
            "cursor reads back the stored value: {clause}"
        );
    }
    assert_eq!(
        ok(cursor(user, d2).await, "cursor"),
        MessageId::ZERO,
        "each device has its own cursor"
    );
    assert_eq!(
        ok(
            inbox.advance_cursor(user, d2, MessageId(3)).await,
            "advance_cursor"
        ),
        MessageId(3)
    );
    assert_eq!(
        ok(cursor(user, d1).await, "cursor"),
        MessageId(20),
        "advancing one device leaves the others alone"
    );
    assert_eq!(
        ok(cursor(other_user, d1).await, "cursor"),
        MessageId::ZERO,
        "cursors are per (user, device), not per device id"
    );
    let (fresh_user, fresh_device) = (UserId::new_random(), DeviceId::new_random());
    assert_eq!(
        ok(
            inbox
                .advance_cursor(fresh_user, fresh_device, MessageId::ZERO)
                .await,
            "advance_cursor"
        ),
        MessageId::ZERO,
        "advancing a new device to ZERO returns ZERO"
    );
    assert_eq!(
        ok(
            inbox
                .advance_cursor(fresh_user, fresh_device, MessageId::MAX)
                .await,
            "advance_cursor"
        ),
        MessageId::MAX,
        "a cursor can reach MAX"
    );
    assert_eq!(
        ok(cursor(fresh_user, fresh_device).await, "cursor"),
        MessageId::MAX
    );
}
