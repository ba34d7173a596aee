//! The read-modify-write clauses under concurrent callers.

use std::future::Future;
use std::pin::Pin;

use chat_core::{
    Appended, Channel, ChannelId, ChannelKind, Device, DeviceId, Directory, Error, HistoryStore,
    Inbox, MessageId, Page, Platform, UserId,
};

use super::{join_all, message, new_user, ok, user_record, Ids};

/// How many calls race in each check.
const RACERS: u64 = 32;

/// Checks the contract clauses that only concurrency can break, with 32
/// calls in flight at once:
///
/// * concurrent appends under one `(sender, client_msg_id)`, each with its
///   own id: exactly one is `Stored`, every other is `Duplicate` carrying
///   that stored message, and the channel holds one message;
/// * concurrent `advance_cursor` calls: the stored cursor ends at the
///   maximum, and each call returns at least its own value;
/// * concurrent pushes of one message: each inbox holds it once;
/// * concurrent `create_user` with one username: exactly one succeeds, the
///   rest are `AlreadyExists`;
/// * concurrent `add_member` to a group with room for fewer: exactly as
///   many succeed as there are seats, the rest are `LimitExceeded`, and
///   `channels_of` agrees with the final members;
/// * `clear_push_token` of a device's old token racing a registration of a
///   new token: the new token survives whichever lands first; racing the
///   device's removal: the device stays removed.
///
/// # Panics
///
/// On the first contract violation, naming it.
pub async fn concurrency_suite(
    history: &dyn HistoryStore,
    inbox: &dyn Inbox,
    directory: &dyn Directory,
) {
    racing_appends(history).await;
    racing_cursors(inbox).await;
    racing_pushes(inbox).await;
    racing_usernames(directory).await;
    racing_members(directory).await;
    racing_token_clears(directory).await;
}

async fn racing_appends(history: &dyn HistoryStore) {
    let channel = ChannelId::new_random();
    let ids = Ids::fresh();
    let template = message(channel, UserId::new_random(), ids.at(0), "raced");
    let results = join_all((1..=RACERS).map(|k| {
        let mut attempt = template.clone();
        attempt.id = ids.at(k);
        async move { ok(history.append(attempt).await, "concurrent append") }
    }))
    .await;
    let stored: Vec<_> = results
        .iter()
        .filter_map(|r| match r {
            Appended::Stored(m) => Some(m.clone()),
            Appended::Duplicate(_) => None,
        })
        .collect();
    assert_eq!(
        stored.len(),
        1,
        "exactly one of {RACERS} concurrent appends with one key is Stored"
    );
    let winner = &stored[0];
    for r in &results {
        assert_eq!(
            r.message(),
            winner,
            "every concurrent duplicate carries the one stored message"
        );
    }
    assert_eq!(
        ok(history.page(channel, Page::latest(100)).await, "page"),
        vec![winner.clone()],
        "concurrent appends with one key store one message"
    );
}

async fn racing_cursors(inbox: &dyn Inbox) {
    let (user, device) = (UserId::new_random(), DeviceId::new_random());
    // Interleave high and low values.
    let values: Vec<u64> = (1..=RACERS)
        .map(|k| {
            if k % 2 == 0 {
                k * 100
            } else {
                RACERS * 100 - k
            }
        })
        .collect();
    let max = values.iter().copied().max().unwrap_or_default();
    let returned = join_all(values.iter().map(|v| async move {
        (
            *v,
            ok(
                inbox.advance_cursor(user, device, MessageId(*v)).await,
                "concurrent advance_cursor",
            ),
        )
    }))
    .await;
    for (v, got) in returned {
        assert!(
            got >= MessageId(v),
            "advance_cursor returns at least the value given ({v} → {got})"
        );
    }
    assert_eq!(
        ok(inbox.cursor(user, device).await, "cursor"),
        MessageId(max),
        "concurrent advances leave the maximum"
    );
}

async fn racing_pushes(inbox: &dyn Inbox) {
    let ids = Ids::fresh();
    let recipients = [UserId::new_random(), UserId::new_random()];
    let m = message(ChannelId::new_random(), recipients[0], ids.at(1), "fan-out");
    join_all((0..RACERS).map(|_| {
        let m = &m;
        let recipients = &recipients;
        async move { ok(inbox.push(recipients, m).await, "concurrent push") }
    }))
    .await;
    for user in recipients {
        assert_eq!(
            ok(inbox.read(user, MessageId::ZERO, 100).await, "read"),
            vec![m.clone()],
            "concurrent pushes of one message leave it in each inbox once"
        );
    }
}

async fn racing_usernames(directory: &dyn Directory) {
    let name = user_record("race").user.username;
    let results = join_all((0..RACERS).map(|_| {
        let mut record = user_record("race");
        record.user.username = name.clone();
        async move { directory.create_user(record).await }
    }))
    .await;
    let mut winners = Vec::new();
    for r in results {
        match r {
            Ok(user) => winners.push(user),
            Err(Error::AlreadyExists { .. }) => {}
            Err(e) => panic!("concurrent create_user failed unexpectedly: {e}"),
        }
    }
    assert_eq!(
        winners.len(),
        1,
        "exactly one of {RACERS} concurrent create_user with one username succeeds"
    );
    let stored = ok(directory.user_by_name(&name).await, "user_by_name");
    assert_eq!(
        stored.map(|r| r.user),
        Some(winners[0].clone()),
        "the username belongs to the one winner"
    );
}

async fn racing_members(directory: &dyn Directory) {
    const SEATS: usize = 5;
    let owner = new_user(directory, "rown").await;
    let candidates = join_all((0..RACERS).map(|_| new_user(directory, "rmem"))).await;
    let group = ok(
        directory
            .create_channel(Channel {
                id: ChannelId::new_random(),
                kind: ChannelKind::Group,
                name: "race".into(),
                owner: Some(owner),
                members: vec![owner],
                created_at: 1_700_000_000_000,
            })
            .await,
        "create_channel",
    );
    let results = join_all(candidates.iter().map(|u| {
        let id = group.id;
        async move { (*u, directory.add_member(id, *u, SEATS).await) }
    }))
    .await;
    let mut admitted = Vec::new();
    for (user, r) in results {
        match r {
            Ok(channel) => {
                assert!(
                    channel.members.len() <= SEATS,
                    "a group never exceeds its limit"
                );
                admitted.push(user);
            }
            Err(Error::LimitExceeded { .. }) => {}
            Err(e) => panic!("concurrent add_member failed unexpectedly: {e}"),
        }
    }
    assert_eq!(
        admitted.len(),
        SEATS - 1,
        "concurrent add_member admits exactly as many as there are free seats"
    );
    let stored = ok(directory.channel(group.id).await, "channel");
    let mut expected = admitted.clone();
    expected.push(owner);
    expected.sort();
    assert_eq!(
        stored.map(|c| c.members),
        Some(expected),
        "the group's members are the owner and the admitted"
    );
    for user in candidates {
        let member_of = ok(directory.channels_of(user).await, "channels_of");
        let listed = member_of.iter().any(|c| c.id == group.id);
        assert_eq!(
            listed,
            admitted.contains(&user),
            "channels_of agrees with the group's members"
        );
    }
}

async fn racing_token_clears(directory: &dyn Directory) {
    let user = new_user(directory, "rtok").await;
    let device = |id, token: String| Device {
        id,
        user,
        platform: Platform::Android,
        push_token: Some(token),
        created_at: 1_700_000_000_000,
    };
    let ids: Vec<DeviceId> = (0..RACERS).map(|_| DeviceId::new_random()).collect();
    for (k, id) in ids.iter().enumerate() {
        ok(
            directory
                .register_device(device(*id, format!("old-{k}")))
                .await,
            "register_device",
        );
    }
    // Even devices get a new token while their old one is cleared; odd
    // devices are removed while their old token is cleared.
    let results = join_all(ids.iter().enumerate().flat_map(|(k, id)| {
        let id = *id;
        let old = format!("old-{k}");
        let fresh = device(id, format!("new-{k}"));
        let clear = async move {
            ok(
                directory.clear_push_token(user, id, &old).await,
                "concurrent clear_push_token",
            );
        };
        let write = async move {
            if k % 2 == 0 {
                ok(
                    directory.register_device(fresh).await,
                    "concurrent register_device",
                );
            } else {
                ok(
                    directory.remove_device(user, id).await,
                    "concurrent remove_device",
                );
            }
        };
        [
            Box::pin(clear) as Pin<Box<dyn Future<Output = ()> + Send + '_>>,
            Box::pin(write),
        ]
    }))
    .await;
    assert_eq!(results.len(), ids.len() * 2);
    let devices = ok(directory.devices(user).await, "devices");
    for (k, id) in ids.iter().enumerate() {
        let found = devices.iter().find(|d| d.id == *id);
        if k % 2 == 0 {
            assert_eq!(
                found.and_then(|d| d.push_token.as_deref()),
                Some(format!("new-{k}").as_str()),
                "a clear_push_token of the old token never erases a new one registered concurrently"
            );
        } else {
            assert!(
                found.is_none(),
                "a clear_push_token racing remove_device never re-creates the device"
            );
        }
    }
}
