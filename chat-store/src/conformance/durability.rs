//! Everything acknowledged before a restart is there after it.

use chat_core::{
    Channel, ChannelId, ChannelKind, Device, DeviceId, Directory, FriendRequest, InboxEntry,
    Invitation, Limits, Message, MessageId, MessageStore, Platform, Privacy, Profile, Seq,
    TokenState, User, UserId, UserRecord, WhoMayAdd, MAX_PAGE,
};
use serde::{Deserialize, Serialize};

use super::messages::{new_message, whole_history, whole_inbox};
use super::{befriend, ok, user_record, Ids};

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
    /// Every committed message, in id order per channel, with its key's
    /// positions.
    messages: Vec<(Message, Vec<(UserId, Seq)>)>,
    /// Each user's inbox.
    inboxes: Vec<(UserId, Vec<InboxEntry>)>,
    /// Stored cursors.
    cursors: Vec<(UserId, DeviceId, Seq)>,
    /// Privacy settings, pending requests and invitations, token state.
    #[serde(default)]
    consent: Option<ConsentProbe>,
}

/// The consent and account part of a [`DurabilityProbe`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct ConsentProbe {
    privacy: (UserId, Privacy),
    requests: (UserId, Vec<FriendRequest>),
    invitations: (UserId, Vec<Invitation>),
    /// `(user, revoked session, state)`.
    token: (UserId, u64, TokenState),
}

impl DurabilityProbe {
    /// How many acknowledged messages the probe holds.
    pub fn message_count(&self) -> usize {
        self.messages.len()
    }
}

/// Writes one of everything through the two traits — users, a profile
/// update, a friendship, a direct and a group channel with a membership
/// change, devices (one replaced, one removed), messages committed in both
/// channels, advanced cursors — and returns what was acknowledged.
///
/// Reopen the backend (or let the writing process die), then call
/// [`durability_check_read`] with the probe. Uses fresh ids, so it can run
/// any number of times against one store.
///
/// # Panics
///
/// If any write fails.
pub async fn durability_check_write(
    store: &dyn MessageStore,
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
    let limits = Limits::default();
    befriend(directory, alice, bob).await;
    befriend(directory, alice, carol).await;
    ok(directory.remove_friend(alice, carol).await, "remove_friend");
    ok(
        directory.request_friend(carol, bob, 2_500, &limits).await,
        "request_friend",
    );
    let privacy = Privacy {
        who_may_add: WhoMayAdd::Nobody,
        hide_last_seen: true,
    };
    ok(directory.set_privacy(carol, privacy).await, "set_privacy");
    ok(
        directory.revoke_all_sessions(bob).await,
        "revoke_all_sessions",
    );
    ok(
        directory.revoke_session(bob, 77, u64::MAX, 0).await,
        "revoke_session",
    );

    let direct = ok(
        directory
            .create_channel(Channel::direct(alice, bob, 1_000), &limits)
            .await,
        "create_channel",
    );
    let group_id = ChannelId::new_random();
    ok(
        directory
            .create_channel(
                Channel {
                    id: group_id,
                    kind: ChannelKind::Group,
                    name: "durable group".into(),
                    owner: Some(alice),
                    members: vec![alice, bob],
                    created_at: 2_000,
                },
                &limits,
            )
            .await,
        "create_channel",
    );
    ok(
        directory.add_member(group_id, carol, &limits).await,
        "add_member",
    );
    let group = ok(
        directory.remove_member(group_id, bob).await,
        "remove_member",
    );
    ok(
        directory.invite(group_id, bob, alice, 2_600, &limits).await,
        "invite",
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
            directory.register_device(d.clone(), &limits).await,
            "register_device",
        );
    }
    ok(directory.remove_device(alice, gone).await, "remove_device");
    devices.remove(3);
    devices.remove(0);

    let ids = Ids::fresh();
    let mut messages = Vec::new();
    let mut inboxes: Vec<(UserId, Vec<InboxEntry>)> =
        vec![(alice, Vec::new()), (bob, Vec::new()), (carol, Vec::new())];
    for k in 1..=12u64 {
        let (channel, sender) = if k % 3 == 0 {
            (&group, carol)
        } else {
            (&direct, if k % 2 == 0 { alice } else { bob })
        };
        let m = new_message(channel.id, sender, ids.at(k), format!("durable {k}"));
        let c = ok(store.commit(m).await, "commit");
        assert!(!c.duplicate, "a new key commits");
        for (user, entries) in &mut inboxes {
            if let Some(seq) = c.position_of(*user) {
                entries.push(InboxEntry {
                    seq,
                    message: c.message.clone(),
                    change: None,
                });
            }
        }
        messages.push((c.message, c.positions));
    }
    let cursors = vec![
        (alice, phone, Seq(7)),
        (alice, laptop, Seq(9)),
        (bob, phone, Seq(3)),
    ];
    for (user, device, cursor) in &cursors {
        ok(
            store
                .advance_cursor(*user, *device, Seq(cursor.0 - 1))
                .await,
            "advance_cursor",
        );
        ok(
            store.advance_cursor(*user, *device, *cursor).await,
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
        consent: Some(ConsentProbe {
            privacy: (carol, privacy),
            requests: (
                bob,
                vec![FriendRequest {
                    from: carol,
                    to: bob,
                    created_at: 2_500,
                }],
            ),
            invitations: (
                bob,
                vec![Invitation {
                    channel: group_id,
                    group_name: "durable group".into(),
                    inviter: alice,
                    invitee: bob,
                    created_at: 2_600,
                }],
            ),
            token: (
                bob,
                77,
                TokenState {
                    epoch: 1,
                    revoked: true,
                },
            ),
        }),
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
    store: &dyn MessageStore,
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
    if let Some(c) = &probe.consent {
        assert_eq!(
            ok(directory.privacy(c.privacy.0).await, "privacy"),
            c.privacy.1,
            "acknowledged privacy settings survive"
        );
        assert_eq!(
            ok(
                directory.friend_requests(c.requests.0).await,
                "friend_requests"
            ),
            c.requests.1,
            "an acknowledged friend request survives"
        );
        assert_eq!(
            ok(directory.invitations(c.invitations.0).await, "invitations"),
            c.invitations.1,
            "an acknowledged invitation survives"
        );
        let (user, session, state) = c.token;
        assert_eq!(
            ok(directory.token_state(user, session).await, "token_state"),
            state,
            "an acknowledged epoch and revocation survive"
        );
    }
    for (user, expected) in &probe.memberships {
        let got: Vec<ChannelId> = ok(
            directory.channels_of(*user, None, MAX_PAGE).await,
            "channels_of",
        )
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

    for (m, positions) in &probe.messages {
        assert_eq!(
            ok(store.get(m.channel_id, m.id).await, "get"),
            Some(m.clone()),
            "an acknowledged message survives"
        );
        let mut retry = new_message(
            m.channel_id,
            m.sender,
            MessageId(m.id.0 + 1_000_000),
            &*m.content,
        );
        retry.client_msg_id = m.client_msg_id.clone();
        let again = ok(store.commit(retry).await, "commit retry");
        assert!(
            again.duplicate,
            "a retry of an acknowledged message is a duplicate after a restart"
        );
        assert_eq!(
            (&again.message, &again.positions),
            (m, positions),
            "an acknowledged message's idempotency record and positions survive"
        );
    }
    for channel in &probe.channels {
        let expected: Vec<Message> = probe
            .messages
            .iter()
            .filter(|(m, _)| m.channel_id == channel.id)
            .map(|(m, _)| m.clone())
            .collect();
        assert_eq!(
            whole_history(store, channel.id).await,
            expected,
            "a channel's history survives, in order, with nothing extra"
        );
    }
    for (user, expected) in &probe.inboxes {
        assert_eq!(
            &whole_inbox(store, *user).await,
            expected,
            "acknowledged inbox entries survive at their positions"
        );
    }
    for (user, device, cursor) in &probe.cursors {
        assert_eq!(
            ok(store.cursor(*user, *device).await, "cursor"),
            *cursor,
            "an acknowledged cursor survives"
        );
    }
}
