//! Everything acknowledged before a restart is there after it.

use chat_core::{
    Appended, Channel, ChannelId, ChannelKind, Device, DeviceId, Directory, HistoryStore, Inbox,
    Message, MessageId, Page, Platform, Profile, User, UserId, UserRecord, MAX_PAGE,
};
use serde::{Deserialize, Serialize};

use super::{message, ok, user_record, Ids};

/// What [`durability_check_write`] had acknowledged, for
/// [`durability_check_read`] to find again.
///
/// It is serde-serialisable so the writer can be another process: a test
/// can write in a child process that then exits (or is killed) without
/// closing anything, hand the probe over as JSON, and check from the
/// parent after reopening the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DurabilityProbe {
    /// Users with their password hashes, after the profile update.
    users: Vec<(User, String)>,
    /// Each user's friends, sorted.
    friends: Vec<(UserId, Vec<UserId>)>,
    /// Channels in their final state.
    channels: Vec<Channel>,
    /// Each user's channels, sorted by id.
    memberships: Vec<(UserId, Vec<ChannelId>)>,
    /// Each user's devices, sorted by id.
    devices: Vec<(UserId, Vec<Device>)>,
    /// Every appended message, in id order per channel.
    messages: Vec<Message>,
    /// Each user's inbox.
    inboxes: Vec<(UserId, Vec<Message>)>,
    /// Stored cursors.
    cursors: Vec<(UserId, DeviceId, MessageId)>,
}

impl DurabilityProbe {
    /// How many acknowledged messages the probe holds.
    pub fn message_count(&self) -> usize {
        self.messages.len()
    }
}

/// Writes one of everything through the three traits — users, a profile
/// update, a friendship, a direct and a group channel with a membership
/// change, devices (one replaced, one removed), messages in both channels,
/// their inbox entries, advanced cursors — and returns what was
/// acknowledged.
///
/// Reopen the backend (or let the writing process die), then call
/// [`durability_check_read`] with the probe. Uses fresh ids, so it can run
/// any number of times against one store.
///
/// # Panics
///
/// If any write fails.
pub async fn durability_check_write(
    history: &dyn HistoryStore,
    inbox: &dyn Inbox,
    directory: &dyn Directory,
) -> DurabilityProbe {
    let mut records = vec![
        user_record("dalice"),
        user_record("dbob"),
        user_record("dcarol"),
    ];
    for r in &records {
        ok(directory.create_user(r.clone()).await, "create_user");
    }
    let [alice, bob, carol] = [0, 1, 2].map(|i| records[i].user.id);
    let profile = Profile {
        display_name: "Alice (durable)".into(),
        about: "survives restarts".into(),
    };
    records[0].user = ok(
        directory.update_profile(alice, profile).await,
        "update_profile",
    );
    ok(directory.add_friend(alice, bob).await, "add_friend");
    ok(directory.add_friend(alice, carol).await, "add_friend");
    ok(directory.remove_friend(alice, carol).await, "remove_friend");

    let direct = ok(
        directory
            .create_channel(Channel::direct(alice, bob, 1_000))
            .await,
        "create_channel",
    );
    let group_id = ChannelId::new_random();
    ok(
        directory
            .create_channel(Channel {
                id: group_id,
                kind: ChannelKind::Group,
                name: "durable group".into(),
                owner: Some(alice),
                members: vec![alice, bob],
                created_at: 2_000,
            })
            .await,
        "create_channel",
    );
    ok(
        directory.add_member(group_id, carol, 10).await,
        "add_member",
    );
    let group = ok(
        directory.remove_member(group_id, bob).await,
        "remove_member",
    );

    let device = |user, id, platform, token: &str| Device {
        id,
        user,
        platform,
        push_token: Some(token.to_owned()),
        created_at: 3_000,
    };
    let (phone, laptop, gone) = (
        DeviceId::new_random(),
        DeviceId::new_random(),
        DeviceId::new_random(),
    );
    let mut devices = vec![
        device(alice, phone, Platform::Ios, "first token"),
        device(alice, phone, Platform::Ios, "second token"),
        device(alice, laptop, Platform::Desktop, "laptop"),
        device(alice, gone, Platform::Web, "gone"),
        device(bob, phone, Platform::Android, "bob"),
    ];
    for d in &devices {
        ok(
            directory.register_device(d.clone()).await,
            "register_device",
        );
    }
    ok(directory.remove_device(alice, gone).await, "remove_device");
    devices.remove(3);
    devices.remove(0);

    let ids = Ids::fresh();
    let mut messages = Vec::new();
    let mut inboxes: Vec<(UserId, Vec<Message>)> =
        vec![(alice, Vec::new()), (bob, Vec::new()), (carol, Vec::new())];
    for k in 1..=12u64 {
        let (channel, sender) = if k % 3 == 0 {
            (&group, carol)
        } else {
            (&direct, if k % 2 == 0 { alice } else { bob })
        };
        let m = message(channel.id, sender, ids.at(k), format!("durable {k}"));
        match ok(history.append(m.clone()).await, "append") {
            Appended::Stored(stored) => assert_eq!(stored, m),
            other => panic!("a new message must be Stored, got {other:?}"),
        }
        ok(inbox.push(&channel.members, &m).await, "push");
        for (user, entries) in &mut inboxes {
            if channel.is_member(*user) {
                entries.push(m.clone());
            }
        }
        messages.push(m);
    }
    let cursors = vec![
        (alice, phone, ids.at(7)),
        (alice, laptop, ids.at(12)),
        (bob, phone, ids.at(3)),
    ];
    for (user, device, cursor) in &cursors {
        ok(
            inbox
                .advance_cursor(*user, *device, MessageId(cursor.0 - 1))
                .await,
            "advance_cursor",
        );
        ok(
            inbox.advance_cursor(*user, *device, *cursor).await,
            "advance_cursor",
        );
    }

    let mut sorted_channels = [direct.clone(), group.clone()];
    sorted_channels.sort_by_key(|c| c.id);
    let channels_of = |user: UserId| -> Vec<ChannelId> {
        sorted_channels
            .iter()
            .filter(|c| c.is_member(user))
            .map(|c| c.id)
            .collect()
    };
    let by_user = |user: UserId| -> Vec<Device> {
        let mut v: Vec<Device> = devices.iter().filter(|d| d.user == user).cloned().collect();
        v.sort_by_key(|d| d.id);
        v
    };
    DurabilityProbe {
        users: records
            .iter()
            .map(|r| (r.user.clone(), r.password_hash.clone()))
            .collect(),
        friends: vec![(alice, vec![bob]), (bob, vec![alice]), (carol, Vec::new())],
        memberships: vec![
            (alice, channels_of(alice)),
            (bob, channels_of(bob)),
            (carol, channels_of(carol)),
        ],
        devices: vec![
            (alice, by_user(alice)),
            (bob, by_user(bob)),
            (carol, Vec::new()),
        ],
        channels: vec![direct, group],
        messages,
        inboxes,
        cursors,
    }
}

/// Checks that everything [`durability_check_write`] acknowledged is
/// stored: users (by id and by name, with hash and updated profile),
/// friends, channels and their members, `channels_of`, devices, every
/// message (by `get`, by `page`, and its idempotency record: a retry is a
/// `Duplicate` of the original), inboxes and cursors.
///
/// # Panics
///
/// On anything missing or different.
pub async fn durability_check_read(
    history: &dyn HistoryStore,
    inbox: &dyn Inbox,
    directory: &dyn Directory,
    probe: &DurabilityProbe,
) {
    for (user, hash) in &probe.users {
        assert_eq!(
            ok(directory.user(user.id).await, "user"),
            Some(user.clone()),
            "an acknowledged user (and profile update) survives"
        );
        assert_eq!(
            ok(directory.user_by_name(&user.username).await, "user_by_name"),
            Some(UserRecord {
                user: user.clone(),
                password_hash: hash.clone(),
            }),
            "the username index and password hash survive"
        );
    }
    for (user, friends) in &probe.friends {
        assert_eq!(
            &ok(directory.friends(*user).await, "friends"),
            friends,
            "acknowledged friendship changes survive"
        );
    }
    for channel in &probe.channels {
        assert_eq!(
            ok(directory.channel(channel.id).await, "channel"),
            Some(channel.clone()),
            "an acknowledged channel and its membership changes survive"
        );
    }
    for (user, expected) in &probe.memberships {
        let got: Vec<ChannelId> = ok(directory.channels_of(*user).await, "channels_of")
            .into_iter()
            .map(|c| c.id)
            .collect();
        assert_eq!(&got, expected, "the membership index survives");
    }
    for (user, expected) in &probe.devices {
        let mut got = ok(directory.devices(*user).await, "devices");
        got.sort_by_key(|d| d.id);
        assert_eq!(
            &got, expected,
            "acknowledged device registrations and removals survive"
        );
    }

    for m in &probe.messages {
        assert_eq!(
            ok(history.get(m.channel_id, m.id).await, "get"),
            Some(m.clone()),
            "an acknowledged message survives"
        );
        let mut retry = m.clone();
        retry.id = MessageId(m.id.0 + 1_000_000);
        match ok(history.append(retry).await, "append retry") {
            Appended::Duplicate(original) => assert_eq!(
                &original, m,
                "an acknowledged message's idempotency record survives"
            ),
            other => panic!(
                "a retry of an acknowledged message must be Duplicate after a restart, got {other:?}"
            ),
        }
    }
    for channel in &probe.channels {
        let expected: Vec<Message> = probe
            .messages
            .iter()
            .filter(|m| m.channel_id == channel.id)
            .cloned()
            .collect();
        assert_eq!(
            ok(
                history.page(channel.id, Page::latest(MAX_PAGE)).await,
                "page"
            ),
            expected,
            "a channel's history survives, in order, with nothing extra"
        );
    }
    for (user, expected) in &probe.inboxes {
        assert_eq!(
            &ok(inbox.read(*user, MessageId::ZERO, MAX_PAGE).await, "read"),
            expected,
            "acknowledged inbox entries survive"
        );
    }
    for (user, device, cursor) in &probe.cursors {
        assert_eq!(
            ok(inbox.cursor(*user, *device).await, "cursor"),
            *cursor,
            "an acknowledged cursor survives"
        );
    }
}
