//! The [`Directory`] contract.

use chat_core::directory::MAX_REVOKED_SESSIONS;
use chat_core::{
    Channel, ChannelId, ChannelKind, Device, DeviceId, Directory, Error, FriendOutcome,
    FriendRequest, InviteOutcome, Limits, Platform, Privacy, Profile, TokenState, UserId,
    WhoMayAdd,
};

use super::{befriend, fresh_username, new_user, ok, sorted, user_record};

/// The default caps, for calls whose caps a check does not exercise.
const L: Limits = Limits {
    group_members: 100,
    devices: 32,
    friends: 1_000,
    groups_joined: 500,
    groups_owned: 100,
    pending_sent: 100,
    pending_received: 1_000,
};

/// Caps with group size `n`.
fn seats(n: usize) -> Limits {
    Limits {
        group_members: n,
        ..L
    }
}

/// Checks every clause of the [`Directory`] contract:
///
/// * users: `create_user` returns the user; `user` and `user_by_name` find
///   it (with its password hash); a taken username fails with
///   `AlreadyExists` and writes nothing; `update_profile` replaces the
///   profile and fails with `NotFound` for an unknown user;
/// * privacy: the default until replaced, `NotFound` for an unknown user;
/// * tokens: the epoch starts at 0 and each `revoke_all_sessions` adds
///   one; a revoked session reads revoked, others do not; expired records
///   are dropped; past [`MAX_REVOKED_SESSIONS`] the epoch moves instead;
/// * friends: a request is pending on both sides until the other side
///   asks back (acceptance), which makes a symmetric friendship and leaves
///   no request; duplicates are no-ops keeping the first time;
///   `remove_friend` unfriends, declines and cancels; unknown users are
///   `NotFound`; friend lists sorted by id;
/// * caps: pending requests sent and received (friend requests and
///   invitations together), friends, groups owned and joined, devices:
///   `LimitExceeded` at the cap, writing nothing;
/// * invitations: only groups, `AlreadyMember`/`AlreadyInvited` no-ops,
///   listed for both sides, accepted into membership (refused at a cap,
///   keeping the invitation), declined or withdrawn idempotently, cleared
///   by `add_member`;
/// * `contacts`: friends and channel co-members only, in the asked order,
///   once each, never the user; pending requests do not count;
/// * blocks: one-way, idempotent both ways, listed sorted; unknown users
///   are `NotFound` and oneself `InvalidInput`; a blocker is no contact of
///   the user they block (the other way round still is), until unblocked;
///   a friend request (or its acceptance) from a user the recipient blocks
///   is `Blocked` and writes nothing, the blocker may still ask, and
///   unblocking lets the request through;
/// * channels: creating a direct channel again returns the stored one; a
///   group with a taken id is `AlreadyExists`; malformed channels are
///   `InvalidInput` and write nothing; members are stored sorted without
///   duplicates;
/// * membership: `add_member` beyond `group_members` is `LimitExceeded` and
///   changes nothing, adding a present member or removing an absent one is
///   a no-op, a direct channel's members cannot change (`InvalidInput`),
///   an unknown channel is `NotFound`; `channels_of` follows every change,
///   sorted by id, and pages by id after a cursor;
/// * devices: keyed by `(user, device id)`, registering again replaces
///   platform and push token, removal is idempotent;
/// * `clear_push_token` clears only a device that exists and still holds
///   exactly the given token, reports whether it did, changes nothing else,
///   and never creates a device.
///
/// # Panics
///
/// On the first contract violation, naming it.
pub async fn directory_suite(directory: &dyn Directory) {
    users(directory).await;
    privacy(directory).await;
    tokens(directory).await;
    friends(directory).await;
    friend_caps(directory).await;
    channels(directory).await;
    membership(directory).await;
    channel_pages(directory).await;
    group_caps(directory).await;
    invitations(directory).await;
    contacts(directory).await;
    blocks(directory).await;
    blocked_friend_requests(directory).await;
    devices(directory).await;
    push_tokens(directory).await;
    edges(directory).await;
}

async fn users(directory: &dyn Directory) {
    let record = user_record("alice");
    let id = record.user.id;
    let name = record.user.username.clone();
    assert_eq!(
        ok(directory.create_user(record.clone()).await, "create_user"),
        record.user,
        "create_user returns the user"
    );
    assert_eq!(
        ok(directory.user(id).await, "user"),
        Some(record.user.clone()),
        "user finds a created user"
    );
    assert_eq!(
        ok(directory.user_by_name(&name).await, "user_by_name"),
        Some(record.clone()),
        "user_by_name finds the user and its password hash"
    );
    assert_eq!(
        ok(directory.user(UserId::new_random()).await, "user"),
        None,
        "an unknown user id is None"
    );
    assert_eq!(
        ok(
            directory.user_by_name(&fresh_username("nobody")).await,
            "user_by_name"
        ),
        None,
        "an unknown username is None"
    );

    // A taken username, under a new id: refused, nothing written.
    let mut thief = user_record("thief");
    thief.user.username = name.clone();
    assert_err!(
        directory.create_user(thief.clone()).await,
        Error::AlreadyExists { .. },
        "create_user with a taken username"
    );
    assert_eq!(
        ok(directory.user(thief.user.id).await, "user"),
        None,
        "a refused create_user writes nothing"
    );
    assert_eq!(
        ok(directory.user_by_name(&name).await, "user_by_name"),
        Some(record.clone()),
        "a refused create_user leaves the name's owner alone"
    );

    let profile = Profile {
        display_name: "Alice Ünïcode".into(),
        about: "likes\nnewlines".into(),
    };
    let updated = ok(
        directory.update_profile(id, profile.clone()).await,
        "update_profile",
    );
    let mut expected = record.user.clone();
    expected.profile = profile;
    assert_eq!(
        updated, expected,
        "update_profile replaces the profile, nothing else"
    );
    assert_eq!(ok(directory.user(id).await, "user"), Some(expected.clone()));
    assert_eq!(
        ok(directory.user_by_name(&name).await, "user_by_name"),
        Some(chat_core::UserRecord {
            user: expected,
            password_hash: record.password_hash.clone(),
        }),
        "update_profile keeps the username index and password hash"
    );
    assert_err!(
        directory
            .update_profile(UserId::new_random(), Profile::default())
            .await,
        Error::NotFound { .. },
        "update_profile of an unknown user"
    );
}

async fn friends(directory: &dyn Directory) {
    let a = new_user(directory, "fa").await;
    let b = new_user(directory, "fb").await;
    let c = new_user(directory, "fc").await;
    let friends = move |u| directory.friends(u);
    let requests = move |u| directory.friend_requests(u);
    let request = |from, to, at| directory.request_friend(from, to, at, &L);
    assert!(
        ok(friends(a).await, "friends").is_empty(),
        "a new user has no friends"
    );
    assert!(ok(requests(a).await, "friend_requests").is_empty());

    // A request is pending on both sides, and is not a friendship.
    assert_eq!(
        ok(request(a, b, 1_000).await, "request_friend"),
        FriendOutcome::Requested
    );
    let pending = vec![FriendRequest {
        from: a,
        to: b,
        created_at: 1_000,
    }];
    assert_eq!(
        ok(requests(a).await, "friend_requests"),
        pending,
        "the sender sees it"
    );
    assert_eq!(
        ok(requests(b).await, "friend_requests"),
        pending,
        "the recipient sees it"
    );
    assert!(ok(requests(c).await, "friend_requests").is_empty());
    assert!(
        ok(friends(a).await, "friends").is_empty() && ok(friends(b).await, "friends").is_empty(),
        "a request is not a friendship"
    );
    assert_eq!(
        ok(request(a, b, 5_000).await, "request_friend again"),
        FriendOutcome::AlreadyRequested,
        "a duplicate request is a no-op"
    );
    assert_eq!(
        ok(requests(b).await, "friend_requests"),
        pending,
        "a duplicate keeps the first request's time"
    );

    // Asking back accepts.
    assert_eq!(
        ok(request(b, a, 6_000).await, "request_friend back"),
        FriendOutcome::Accepted,
        "asking back accepts the pending request"
    );
    assert_eq!(
        ok(friends(a).await, "friends"),
        vec![b],
        "friends are symmetric"
    );
    assert_eq!(
        ok(friends(b).await, "friends"),
        vec![a],
        "friends are symmetric"
    );
    assert!(
        ok(requests(a).await, "friend_requests").is_empty()
            && ok(requests(b).await, "friend_requests").is_empty(),
        "an accepted request is gone"
    );
    for (x, y) in [(a, b), (b, a)] {
        assert_eq!(
            ok(request(x, y, 7_000).await, "request_friend of a friend"),
            FriendOutcome::AlreadyFriends,
            "asking a friend is a no-op"
        );
    }
    assert!(ok(requests(a).await, "friend_requests").is_empty());
    befriend(directory, c, a).await;
    assert_eq!(
        ok(friends(a).await, "friends"),
        sorted(&[b, c]),
        "friends are sorted by id"
    );

    // remove_friend unfriends...
    ok(directory.remove_friend(b, a).await, "remove_friend");
    assert_eq!(
        ok(friends(a).await, "friends"),
        vec![c],
        "removal is symmetric"
    );
    assert!(
        ok(friends(b).await, "friends").is_empty(),
        "removal is symmetric"
    );
    ok(
        directory.remove_friend(a, b).await,
        "removing a missing friendship is a no-op",
    );
    // ...declines...
    ok(request(b, a, 8_000).await, "request_friend");
    ok(directory.remove_friend(a, b).await, "decline");
    assert!(
        ok(requests(a).await, "friend_requests").is_empty()
            && ok(requests(b).await, "friend_requests").is_empty(),
        "remove_friend by the recipient declines"
    );
    // ...and cancels.
    ok(request(b, a, 9_000).await, "request_friend");
    ok(directory.remove_friend(b, a).await, "cancel");
    assert!(
        ok(requests(a).await, "friend_requests").is_empty(),
        "remove_friend by the sender cancels"
    );
    assert_eq!(
        ok(
            request(b, a, 10_000).await,
            "request_friend after a decline"
        ),
        FriendOutcome::Requested,
        "after a decline a new request is a new request"
    );
    ok(directory.remove_friend(a, b).await, "decline");
    assert_eq!(ok(friends(c).await, "friends"), vec![a]);

    let ghost = UserId::new_random();
    assert_err!(
        request(a, ghost, 0).await,
        Error::NotFound { .. },
        "request_friend to an unknown user"
    );
    assert_err!(
        request(ghost, a, 0).await,
        Error::NotFound { .. },
        "request_friend from an unknown user"
    );
    assert_err!(
        request(a, a, 0).await,
        Error::InvalidInput { .. },
        "request_friend(a, a)"
    );
    assert_eq!(
        ok(friends(a).await, "friends"),
        vec![c],
        "a refused request_friend writes nothing"
    );
    assert!(ok(requests(a).await, "friend_requests").is_empty());
    assert!(ok(friends(ghost).await, "friends").is_empty());
}

/// Caps on friend requests and friends, and how requests and invitations
/// count together.
async fn friend_caps(directory: &dyn Directory) {
    let limits = Limits {
        pending_sent: 2,
        pending_received: 2,
        friends: 1,
        ..L
    };
    let a = new_user(directory, "ka").await;
    let [b, c, d] = [
        new_user(directory, "kb").await,
        new_user(directory, "kc").await,
        new_user(directory, "kd").await,
    ];
    let request = |from, to| directory.request_friend(from, to, 1_000, &limits);
    ok(request(a, b).await, "request_friend");
    ok(request(a, c).await, "request_friend");
    assert_err!(
        request(a, d).await,
        Error::LimitExceeded { .. },
        "a request past the sender's pending cap"
    );
    assert_eq!(
        ok(request(a, b).await, "duplicate at the cap"),
        FriendOutcome::AlreadyRequested,
        "a duplicate at the cap is still a no-op"
    );
    let sent: Vec<UserId> = ok(directory.friend_requests(a).await, "friend_requests")
        .into_iter()
        .map(|r| r.to)
        .collect();
    assert_eq!(sent, sorted(&[b, c]), "a refused request writes nothing");
    ok(directory.remove_friend(a, c).await, "cancel");
    ok(request(a, d).await, "a cancelled request frees its slot");

    // The recipient's cap, counting an invitation too.
    let e = new_user(directory, "ke").await;
    let g = ok(
        directory
            .create_channel(group(e, vec![e], "caps"), &L)
            .await,
        "create_channel",
    );
    assert_eq!(
        ok(directory.invite(g.id, d, e, 1_000, &limits).await, "invite"),
        InviteOutcome::Invited
    );
    assert_err!(
        request(c, d).await,
        Error::LimitExceeded { .. },
        "a request past the recipient's pending cap (a request and an invitation)"
    );
    assert_err!(
        directory
            .invite(
                g.id,
                b,
                e,
                1_000,
                &Limits {
                    pending_sent: 1,
                    ..limits
                }
            )
            .await,
        Error::LimitExceeded { .. },
        "an invitation past the inviter's pending cap"
    );

    // Friends: an acceptance needs both sides below the cap.
    assert_eq!(ok(request(b, a).await, "accept"), FriendOutcome::Accepted);
    ok(request(c, b).await, "request_friend");
    assert_err!(
        request(b, c).await,
        Error::LimitExceeded { .. },
        "an acceptance past the accepter's friends cap"
    );
    assert_eq!(
        ok(directory.friend_requests(b).await, "friend_requests")
            .iter()
            .filter(|r| r.from == c)
            .count(),
        1,
        "a refused acceptance leaves the request"
    );
    assert_err!(
        directory.request_friend(d, a, 2_000, &limits).await,
        Error::LimitExceeded { .. },
        "an acceptance past the requester's friends cap"
    );
    assert_eq!(ok(directory.friends(a).await, "friends"), vec![b]);
}

/// A group channel owned by `owner`.
fn group(owner: UserId, members: Vec<UserId>, name: &str) -> Channel {
    Channel {
        id: ChannelId::new_random(),
        kind: ChannelKind::Group,
        name: name.into(),
        owner: Some(owner),
        members,
        created_at: 1_700_000_000_000,
    }
}

async fn channels(directory: &dyn Directory) {
    let a = new_user(directory, "ca").await;
    let b = new_user(directory, "cb").await;
    let c = new_user(directory, "cc").await;

    // Direct channels: idempotent create.
    let direct = Channel::direct(a, b, 1_000);
    assert_eq!(
        ok(
            directory.create_channel(direct.clone(), &L).await,
            "create_channel"
        ),
        direct,
        "create_channel returns the channel"
    );
    assert_eq!(
        ok(directory.channel(direct.id).await, "channel"),
        Some(direct.clone())
    );
    assert_eq!(
        ok(
            directory
                .create_channel(Channel::direct(b, a, 2_000), &L)
                .await,
            "create_channel of an existing direct channel"
        ),
        direct,
        "creating an existing direct channel returns the stored one"
    );
    assert_eq!(
        ok(directory.channel(direct.id).await, "channel"),
        Some(direct.clone()),
        "creating an existing direct channel changes nothing"
    );

    // Malformed channels write nothing.
    let mut wrong_id = Channel::direct(a, c, 1_000);
    wrong_id.id = ChannelId::new_random();
    let mut three = Channel::direct(a, c, 1_000);
    three.members = sorted(&[a, b, c]);
    let with_self = Channel::direct(a, a, 1_000);
    let mut no_owner = group(a, vec![a, b], "no owner");
    no_owner.owner = None;
    let outside_owner = group(c, vec![a, b], "outside owner");
    for (clause, bad) in [
        (
            "a direct channel whose id is not ChannelId::direct",
            wrong_id,
        ),
        ("a direct channel with three members", three),
        ("a direct channel with oneself", with_self),
        ("a group without an owner", no_owner),
        ("a group whose owner is not a member", outside_owner),
    ] {
        let id = bad.id;
        assert_err!(
            directory.create_channel(bad, &L).await,
            Error::InvalidInput { .. },
            "create_channel of {clause}"
        );
        assert_eq!(
            ok(directory.channel(id).await, "channel"),
            None,
            "a refused create_channel writes nothing ({clause})"
        );
    }
    assert_eq!(
        ok(directory.channel(ChannelId::direct(a, c)).await, "channel"),
        None,
        "a refused create_channel writes nothing"
    );

    // Groups: members normalised, duplicate ids refused.
    let unsorted = group(a, vec![c, a, b, a, c], "friends");
    let created = ok(
        directory.create_channel(unsorted.clone(), &L).await,
        "create_channel of a group",
    );
    let mut normalised = unsorted.clone();
    normalised.members = sorted(&[a, b, c]);
    assert_eq!(
        created, normalised,
        "members are stored sorted and without duplicates"
    );
    assert_eq!(
        ok(directory.channel(unsorted.id).await, "channel"),
        Some(normalised.clone())
    );
    let mut again = group(b, vec![b], "impostor");
    again.id = unsorted.id;
    assert_err!(
        directory.create_channel(again, &L).await,
        Error::AlreadyExists { .. },
        "create_channel of a group with a taken id"
    );
    assert_eq!(
        ok(directory.channel(unsorted.id).await, "channel"),
        Some(normalised),
        "a refused group create changes nothing"
    );
    assert_eq!(
        ok(directory.channel(ChannelId::new_random()).await, "channel"),
        None,
        "an unknown channel is None"
    );
}

async fn membership(directory: &dyn Directory) {
    let owner = new_user(directory, "mo").await;
    let b = new_user(directory, "mb").await;
    let c = new_user(directory, "mc").await;
    let d = new_user(directory, "md").await;
    let loner = new_user(directory, "ml").await;

    let g = ok(
        directory
            .create_channel(group(owner, vec![owner, b], "group"), &L)
            .await,
        "create_channel",
    );
    let direct = ok(
        directory
            .create_channel(Channel::direct(owner, b, 1_000), &L)
            .await,
        "create_channel",
    );

    let added = ok(directory.add_member(g.id, c, &seats(3)).await, "add_member");
    assert_eq!(
        added.members,
        sorted(&[owner, b, c]),
        "add_member adds, keeping members sorted"
    );
    assert_eq!(
        ok(directory.channel(g.id).await, "channel"),
        Some(added.clone())
    );
    let full = directory.add_member(g.id, d, &seats(3)).await;
    assert!(
        matches!(full, Err(Error::LimitExceeded { .. })),
        "add_member to a full group must be LimitExceeded, got {full:?}"
    );
    assert_eq!(
        ok(directory.channel(g.id).await, "channel"),
        Some(added.clone()),
        "a refused add_member changes nothing"
    );
    assert_eq!(
        ok(directory.add_member(g.id, c, &seats(3)).await, "add_member"),
        added,
        "adding a present member is a no-op, even when the group is full"
    );
    assert_eq!(
        ok(directory.add_member(g.id, d, &seats(4)).await, "add_member")
            .members
            .len(),
        4,
        "a larger limit admits the member"
    );
    let removed = ok(directory.remove_member(g.id, d).await, "remove_member");
    assert_eq!(removed, added, "remove_member removes");
    assert_eq!(
        ok(directory.remove_member(g.id, d).await, "remove_member"),
        added,
        "removing an absent member is a no-op"
    );
    assert_err!(
        directory.add_member(ChannelId::new_random(), c, &L).await,
        Error::NotFound { .. },
        "add_member to an unknown channel"
    );

    // Direct channels' members cannot change.
    assert_err!(
        directory.add_member(direct.id, c, &seats(10)).await,
        Error::InvalidInput { .. },
        "add_member to a direct channel"
    );
    assert_err!(
        directory.remove_member(direct.id, b).await,
        Error::InvalidInput { .. },
        "remove_member from a direct channel"
    );
    assert_eq!(
        ok(directory.channel(direct.id).await, "channel"),
        Some(direct.clone()),
        "a refused membership change leaves a direct channel alone"
    );

    // channels_of follows membership, sorted by id.
    let mut both = vec![added.clone(), direct.clone()];
    both.sort_by_key(|ch| ch.id);
    assert_eq!(
        ok(directory.channels_of(owner, None, 100).await, "channels_of"),
        both,
        "channels_of lists current channels, sorted by id"
    );
    assert_eq!(
        ok(directory.channels_of(c, None, 100).await, "channels_of"),
        vec![added.clone()],
        "channels_of includes groups joined by add_member"
    );
    assert!(
        ok(directory.channels_of(d, None, 100).await, "channels_of").is_empty(),
        "channels_of drops groups left by remove_member"
    );
    assert!(
        ok(directory.channels_of(loner, None, 100).await, "channels_of").is_empty(),
        "channels_of of a user in no channel is empty"
    );
    let after_leave = ok(directory.remove_member(g.id, c).await, "remove_member");
    assert_eq!(after_leave.members, sorted(&[owner, b]));
    assert!(ok(directory.channels_of(c, None, 100).await, "channels_of").is_empty());
    let mut both = vec![after_leave, direct];
    both.sort_by_key(|ch| ch.id);
    assert_eq!(
        ok(directory.channels_of(b, None, 100).await, "channels_of"),
        both,
        "channels_of returns each channel's current members"
    );
}

async fn devices(directory: &dyn Directory) {
    let a = new_user(directory, "da").await;
    let b = new_user(directory, "db").await;
    let device = |user, id, platform, token: Option<&str>| Device {
        id,
        user,
        platform,
        push_token: token.map(str::to_owned),
        created_at: 1_700_000_000_000,
    };
    let by_id = |mut v: Vec<Device>| {
        v.sort_by_key(|d| d.id);
        v
    };
    let (d1, d2) = (DeviceId::new_random(), DeviceId::new_random());

    assert!(
        ok(directory.devices(a).await, "devices").is_empty(),
        "a new user has no devices"
    );
    let first = device(a, d1, Platform::Ios, Some("apns-token"));
    assert_eq!(
        ok(
            directory.register_device(first.clone(), &L).await,
            "register_device"
        ),
        first
    );
    assert_eq!(ok(directory.devices(a).await, "devices"), vec![first]);

    let replaced = device(a, d1, Platform::Android, Some("fcm-token"));
    ok(
        directory.register_device(replaced.clone(), &L).await,
        "register_device again",
    );
    assert_eq!(
        ok(directory.devices(a).await, "devices"),
        vec![replaced.clone()],
        "registering again replaces platform and push token"
    );
    let cleared = device(a, d1, Platform::Android, None);
    ok(
        directory.register_device(cleared.clone(), &L).await,
        "register_device without token",
    );
    let second = device(a, d2, Platform::Web, None);
    ok(
        directory.register_device(second.clone(), &L).await,
        "register_device",
    );
    assert_eq!(
        by_id(ok(directory.devices(a).await, "devices")),
        by_id(vec![cleared.clone(), second.clone()]),
        "a user has every registered device once"
    );

    // The same device id under another user is another device.
    let other = device(b, d1, Platform::Desktop, Some("other"));
    ok(
        directory.register_device(other.clone(), &L).await,
        "register_device",
    );
    assert_eq!(
        ok(directory.devices(b).await, "devices"),
        vec![other.clone()],
        "devices are keyed by (user, device id)"
    );
    assert_eq!(
        by_id(ok(directory.devices(a).await, "devices")),
        by_id(vec![cleared, second.clone()]),
        "another user's device with the same id changes nothing"
    );

    ok(directory.remove_device(a, d1).await, "remove_device");
    assert_eq!(
        ok(directory.devices(a).await, "devices"),
        vec![second.clone()],
        "remove_device removes one device"
    );
    ok(
        directory.remove_device(a, d1).await,
        "removing a missing device is a no-op",
    );
    assert_eq!(ok(directory.devices(a).await, "devices"), vec![second]);
    assert_eq!(
        ok(directory.devices(b).await, "devices"),
        vec![other],
        "removing a device leaves another user's same-id device alone"
    );

    // The cap counts devices, not registrations.
    let two = Limits { devices: 2, ..L };
    let c = new_user(directory, "dc").await;
    let (e1, e2, e3) = (
        DeviceId::new_random(),
        DeviceId::new_random(),
        DeviceId::new_random(),
    );
    ok(
        directory
            .register_device(device(c, e1, Platform::Web, None), &two)
            .await,
        "register_device",
    );
    ok(
        directory
            .register_device(device(c, e2, Platform::Web, None), &two)
            .await,
        "register_device",
    );
    assert_err!(
        directory
            .register_device(device(c, e3, Platform::Web, None), &two)
            .await,
        Error::LimitExceeded { .. },
        "a device past the cap"
    );
    ok(
        directory
            .register_device(device(c, e2, Platform::Ios, Some("t")), &two)
            .await,
        "replacing a device at the cap",
    );
    assert_eq!(
        ok(directory.devices(c).await, "devices").len(),
        2,
        "a refused registration writes nothing"
    );
    ok(directory.remove_device(c, e1).await, "remove_device");
    ok(
        directory
            .register_device(device(c, e3, Platform::Web, None), &two)
            .await,
        "a removed device frees its slot",
    );
}

async fn push_tokens(directory: &dyn Directory) {
    let a = new_user(directory, "pa").await;
    let b = new_user(directory, "pb").await;
    let (d1, d2) = (DeviceId::new_random(), DeviceId::new_random());
    let device = |user, id, token: Option<&str>| Device {
        id,
        user,
        platform: Platform::Android,
        push_token: token.map(str::to_owned),
        created_at: 1_700_000_000_000,
    };
    let with_token = device(a, d1, Some("tok-1"));
    ok(
        directory.register_device(with_token.clone(), &L).await,
        "register_device",
    );
    let same_id_other_user = device(b, d1, Some("tok-1"));
    ok(
        directory
            .register_device(same_id_other_user.clone(), &L)
            .await,
        "register_device",
    );

    assert!(
        !ok(
            directory.clear_push_token(a, d1, "tok-2").await,
            "clear_push_token"
        ),
        "clear_push_token with another token clears nothing"
    );
    assert!(
        !ok(
            directory.clear_push_token(a, d1, "tok").await,
            "clear_push_token"
        ),
        "clear_push_token compares the whole token, not a prefix"
    );
    assert_eq!(
        ok(directory.devices(a).await, "devices"),
        vec![with_token.clone()],
        "a refused clear_push_token changes nothing"
    );
    assert!(
        ok(
            directory.clear_push_token(a, d1, "tok-1").await,
            "clear_push_token"
        ),
        "clear_push_token clears the token the device holds"
    );
    assert_eq!(
        ok(directory.devices(a).await, "devices"),
        vec![device(a, d1, None)],
        "clear_push_token removes the token and keeps the device as it was"
    );
    assert!(
        !ok(
            directory.clear_push_token(a, d1, "tok-1").await,
            "clear_push_token again"
        ),
        "clearing a token twice clears it once"
    );
    assert_eq!(
        ok(directory.devices(b).await, "devices"),
        vec![same_id_other_user],
        "clear_push_token leaves another user's device with the same id alone"
    );

    // A device that does not exist (never registered, or removed) is not
    // created by a clear.
    assert!(
        !ok(
            directory.clear_push_token(a, d2, "tok-1").await,
            "clear_push_token of an unknown device"
        ),
        "clear_push_token of an unknown device clears nothing"
    );
    ok(directory.remove_device(a, d1).await, "remove_device");
    assert!(
        !ok(
            directory.clear_push_token(a, d1, "tok-1").await,
            "clear_push_token of a removed device"
        ),
        "clear_push_token of a removed device clears nothing"
    );
    assert!(
        ok(directory.devices(a).await, "devices").is_empty(),
        "clear_push_token never re-creates a device"
    );
    assert!(
        !ok(
            directory
                .clear_push_token(UserId::new_random(), d1, "tok-1")
                .await,
            "clear_push_token of an unknown user"
        ),
        "clear_push_token of an unknown user clears nothing"
    );
}

/// The refusals every backend shares: invalid usernames, unknown users,
/// befriending oneself, removing a group's owner; devices listed by id.
async fn edges(directory: &dyn Directory) {
    for bad in [
        "",
        ".",
        "..",
        "-",
        "_",
        ".hidden",
        "-flag",
        "trailing.",
        "Upper",
        "has space",
        &"x".repeat(33),
        &"y".repeat(70_000),
    ] {
        let mut record = user_record("edge");
        record.user.username = bad.to_owned();
        let err = directory.create_user(record.clone()).await.err();
        assert!(
            matches!(err, Some(Error::InvalidInput { .. })),
            "create_user with username {:?} must be InvalidInput, got {err:?}",
            &bad[..bad.len().min(20)]
        );
        assert_eq!(
            ok(directory.user(record.user.id).await, "user"),
            None,
            "a refused user is not stored"
        );
    }
    let a = new_user(directory, "ea").await;
    let ghost = UserId::new_random();
    assert!(
        matches!(
            directory.request_friend(a, a, 0, &L).await,
            Err(Error::InvalidInput { .. })
        ),
        "request_friend(a, a) is InvalidInput"
    );
    assert!(
        matches!(
            directory.request_friend(a, ghost, 0, &L).await,
            Err(Error::NotFound { .. })
        ),
        "request_friend with an unknown user is NotFound"
    );
    assert!(
        matches!(
            directory
                .create_channel(group(a, vec![a, ghost], "ghosts"), &L)
                .await,
            Err(Error::NotFound { .. })
        ),
        "a channel with an unknown member is NotFound"
    );
    let g = ok(
        directory
            .create_channel(group(a, vec![a], "edges"), &L)
            .await,
        "create_channel",
    );
    assert!(
        matches!(
            directory.add_member(g.id, ghost, &L).await,
            Err(Error::NotFound { .. })
        ),
        "add_member of an unknown user is NotFound"
    );
    assert!(
        matches!(
            directory.remove_member(g.id, a).await,
            Err(Error::InvalidInput { .. })
        ),
        "the owner cannot be removed"
    );
    assert!(
        ok(directory.channel(g.id).await, "channel")
            .is_some_and(|c| c.is_member(a) && c.owner == Some(a)),
        "the refused removal changed nothing"
    );
    assert!(
        matches!(
            directory
                .register_device(
                    Device {
                        id: DeviceId::new_random(),
                        user: ghost,
                        platform: Platform::Web,
                        push_token: None,
                        created_at: 0,
                    },
                    &L
                )
                .await,
            Err(Error::NotFound { .. })
        ),
        "register_device for an unknown user is NotFound"
    );
    let mut ids: Vec<DeviceId> = (0..5).map(|_| DeviceId::new_random()).collect();
    for id in &ids {
        ok(
            directory
                .register_device(
                    Device {
                        id: *id,
                        user: a,
                        platform: Platform::Android,
                        push_token: Some("t".into()),
                        created_at: 0,
                    },
                    &L,
                )
                .await,
            "register_device",
        );
    }
    ids.sort();
    let listed: Vec<DeviceId> = ok(directory.devices(a).await, "devices")
        .into_iter()
        .map(|d| d.id)
        .collect();
    assert_eq!(listed, ids, "devices are listed sorted by device id");
}

async fn privacy(directory: &dyn Directory) {
    let a = new_user(directory, "pra").await;
    assert_eq!(
        ok(directory.privacy(a).await, "privacy"),
        Privacy::default(),
        "a new user has the default privacy settings"
    );
    assert_eq!(Privacy::default().who_may_add, WhoMayAdd::Friends);
    let closed = Privacy {
        who_may_add: WhoMayAdd::Nobody,
        hide_last_seen: true,
    };
    assert_eq!(
        ok(directory.set_privacy(a, closed).await, "set_privacy"),
        closed
    );
    assert_eq!(
        ok(directory.privacy(a).await, "privacy"),
        closed,
        "set_privacy replaces"
    );
    let open = Privacy {
        who_may_add: WhoMayAdd::Everyone,
        hide_last_seen: false,
    };
    ok(directory.set_privacy(a, open).await, "set_privacy");
    assert_eq!(ok(directory.privacy(a).await, "privacy"), open);
    let user = ok(directory.user(a).await, "user");
    assert!(user.is_some(), "privacy settings leave the user alone");
    let ghost = UserId::new_random();
    assert_err!(
        directory.privacy(ghost).await,
        Error::NotFound { .. },
        "privacy of an unknown user"
    );
    assert_err!(
        directory.set_privacy(ghost, open).await,
        Error::NotFound { .. },
        "set_privacy of an unknown user"
    );
}

async fn tokens(directory: &dyn Directory) {
    let a = new_user(directory, "ta").await;
    let b = new_user(directory, "tb").await;
    let state = |u, s| directory.token_state(u, s);
    let fresh = TokenState {
        epoch: 0,
        revoked: false,
    };
    assert_eq!(
        ok(state(a, 1).await, "token_state"),
        fresh,
        "epoch 0, nothing revoked"
    );
    ok(
        directory.revoke_session(a, 1, 10_000, 1_000).await,
        "revoke_session",
    );
    assert_eq!(
        ok(state(a, 1).await, "token_state"),
        TokenState {
            epoch: 0,
            revoked: true
        },
        "a revoked session reads revoked"
    );
    assert_eq!(
        ok(state(a, 2).await, "token_state"),
        fresh,
        "other sessions are not"
    );
    assert_eq!(
        ok(state(b, 1).await, "token_state"),
        fresh,
        "nor another user's"
    );
    ok(
        directory.revoke_session(a, 1, 10_000, 1_000).await,
        "revoking twice is a no-op",
    );
    // Expired records are dropped by a later revocation.
    ok(
        directory.revoke_session(a, 2, 20_000, 10_000).await,
        "revoke_session",
    );
    assert!(
        !ok(state(a, 1).await, "token_state").revoked,
        "a record whose time has passed is dropped"
    );
    assert!(ok(state(a, 2).await, "token_state").revoked);

    assert_eq!(
        ok(
            directory.revoke_all_sessions(a).await,
            "revoke_all_sessions"
        ),
        1
    );
    assert_eq!(
        ok(state(a, 2).await, "token_state"),
        TokenState {
            epoch: 1,
            revoked: false
        },
        "revoke_all moves the epoch and forgets the records it covers"
    );
    assert_eq!(
        ok(
            directory.revoke_all_sessions(a).await,
            "revoke_all_sessions"
        ),
        2
    );
    assert_eq!(
        ok(state(b, 1).await, "token_state"),
        fresh,
        "another user's epoch stays"
    );

    // Past the record cap, a revocation revokes everything instead.
    for session in 0..MAX_REVOKED_SESSIONS as u64 {
        ok(
            directory.revoke_session(b, session, 1_000_000, 0).await,
            "revoke_session",
        );
    }
    assert_eq!(ok(state(b, 0).await, "token_state").epoch, 0);
    ok(
        directory.revoke_session(b, u64::MAX, 1_000_000, 0).await,
        "revoke_session past the cap",
    );
    let after = ok(state(b, u64::MAX).await, "token_state");
    assert_eq!(after.epoch, 1, "a revocation past the cap moves the epoch");

    let ghost = UserId::new_random();
    assert_err!(
        state(ghost, 1).await,
        Error::NotFound { .. },
        "token_state of an unknown user"
    );
    assert_err!(
        directory.revoke_all_sessions(ghost).await,
        Error::NotFound { .. },
        "revoke_all_sessions of an unknown user"
    );
    assert_err!(
        directory.revoke_session(ghost, 1, 2, 1).await,
        Error::NotFound { .. },
        "revoke_session of an unknown user"
    );
}

async fn channel_pages(directory: &dyn Directory) {
    let owner = new_user(directory, "pgo").await;
    let mut ids = Vec::new();
    for k in 0..7 {
        let g = ok(
            directory
                .create_channel(group(owner, vec![owner], &format!("page {k}")), &L)
                .await,
            "create_channel",
        );
        ids.push(g.id);
    }
    ids.sort();
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = ok(directory.channels_of(owner, after, 3).await, "channels_of");
        assert!(page.len() <= 3, "a page holds at most `limit` channels");
        let Some(last) = page.last() else { break };
        after = Some(last.id);
        seen.extend(page.iter().map(|c| c.id));
    }
    assert_eq!(seen, ids, "pages cover every channel once, in id order");
    assert!(
        ok(
            directory.channels_of(owner, Some(ids[6]), 3).await,
            "channels_of"
        )
        .is_empty(),
        "after the last channel there is nothing"
    );
    assert_eq!(
        ok(
            directory.channels_of(owner, Some(ids[1]), 2).await,
            "channels_of"
        )
        .iter()
        .map(|c| c.id)
        .collect::<Vec<_>>(),
        ids[2..4].to_vec(),
        "a page starts after its cursor"
    );
}

async fn group_caps(directory: &dyn Directory) {
    let caps = Limits {
        groups_owned: 2,
        groups_joined: 3,
        ..L
    };
    let a = new_user(directory, "gca").await;
    let b = new_user(directory, "gcb").await;
    ok(
        directory
            .create_channel(group(a, vec![a], "one"), &caps)
            .await,
        "create_channel",
    );
    ok(
        directory
            .create_channel(group(a, vec![a, b], "two"), &caps)
            .await,
        "create_channel",
    );
    let third = group(a, vec![a], "three");
    assert_err!(
        directory.create_channel(third.clone(), &caps).await,
        Error::LimitExceeded { .. },
        "a group past its owner's owned cap"
    );
    assert_eq!(
        ok(directory.channel(third.id).await, "channel"),
        None,
        "nothing written"
    );
    // Direct channels count toward no cap.
    ok(
        directory
            .create_channel(Channel::direct(a, b, 0), &caps)
            .await,
        "a direct channel at the group caps",
    );

    // b: in one group (a's "two"); joins two more, then is full.
    let c = new_user(directory, "gcc").await;
    let g1 = ok(
        directory
            .create_channel(group(c, vec![c, b], "c1"), &caps)
            .await,
        "create_channel",
    );
    let g2 = ok(
        directory
            .create_channel(group(c, vec![c], "c2"), &caps)
            .await,
        "create_channel",
    );
    ok(directory.add_member(g2.id, b, &caps).await, "add_member");
    let d = new_user(directory, "gcd").await;
    let g3 = ok(
        directory
            .create_channel(group(d, vec![d], "d1"), &caps)
            .await,
        "create_channel",
    );
    assert_err!(
        directory.add_member(g3.id, b, &caps).await,
        Error::LimitExceeded { .. },
        "add_member past the member's joined cap"
    );
    assert_err!(
        directory
            .create_channel(group(d, vec![d, b], "d2"), &caps)
            .await,
        Error::LimitExceeded { .. },
        "a new group with a member at the joined cap"
    );
    assert_eq!(
        ok(directory.invite(g3.id, b, d, 0, &caps).await, "invite"),
        InviteOutcome::Invited,
        "an invitation is not a membership"
    );
    assert_err!(
        directory.accept_invitation(g3.id, b, &caps).await,
        Error::LimitExceeded { .. },
        "accepting past the joined cap"
    );
    ok(directory.remove_member(g1.id, b).await, "leave");
    ok(
        directory.accept_invitation(g3.id, b, &caps).await,
        "accept after leaving a group",
    );
    assert!(
        ok(directory.channel(g3.id).await, "channel").is_some_and(|g| g.is_member(b)),
        "a freed slot admits the member"
    );
}

async fn invitations(directory: &dyn Directory) {
    let owner = new_user(directory, "io").await;
    let [b, c] = [
        new_user(directory, "ib").await,
        new_user(directory, "ic").await,
    ];
    let g = ok(
        directory
            .create_channel(group(owner, vec![owner], "invites"), &L)
            .await,
        "create_channel",
    );
    assert_eq!(
        ok(directory.invite(g.id, b, owner, 5_000, &L).await, "invite"),
        InviteOutcome::Invited
    );
    let expected = chat_core::Invitation {
        channel: g.id,
        group_name: "invites".into(),
        inviter: owner,
        invitee: b,
        created_at: 5_000,
    };
    assert_eq!(
        ok(directory.invitations(b).await, "invitations"),
        vec![expected.clone()],
        "the invitee sees the invitation"
    );
    assert_eq!(
        ok(directory.invitations(owner).await, "invitations"),
        vec![expected.clone()],
        "the inviter sees it too"
    );
    assert!(ok(directory.invitations(c).await, "invitations").is_empty());
    assert_eq!(
        ok(directory.channel(g.id).await, "channel").map(|g| g.members),
        Some(vec![owner]),
        "an invitation is not a membership"
    );
    assert_eq!(
        ok(
            directory.invite(g.id, b, owner, 6_000, &L).await,
            "invite again"
        ),
        InviteOutcome::AlreadyInvited
    );
    assert_eq!(
        ok(directory.invitations(b).await, "invitations"),
        vec![expected],
        "a duplicate invitation keeps the first"
    );
    assert_eq!(
        ok(
            directory.invite(g.id, owner, owner, 0, &L).await,
            "invite a member"
        ),
        InviteOutcome::AlreadyMember
    );

    // Accepting joins and consumes the invitation.
    let joined = ok(
        directory.accept_invitation(g.id, b, &L).await,
        "accept_invitation",
    );
    assert_eq!(
        joined.members,
        sorted(&[owner, b]),
        "accepting joins the group"
    );
    assert!(ok(directory.invitations(b).await, "invitations").is_empty());
    assert!(ok(directory.invitations(owner).await, "invitations").is_empty());
    assert_err!(
        directory.accept_invitation(g.id, b, &L).await,
        Error::NotFound { .. },
        "accepting without an invitation (twice)"
    );
    assert_err!(
        directory.accept_invitation(g.id, c, &L).await,
        Error::NotFound { .. },
        "accepting without an invitation"
    );
    assert!(
        ok(directory.channel(g.id).await, "channel").is_some_and(|g| !g.is_member(c)),
        "a refused acceptance writes nothing"
    );

    // Declining and withdrawing are one idempotent call.
    ok(directory.invite(g.id, c, owner, 7_000, &L).await, "invite");
    assert!(ok(
        directory.remove_invitation(g.id, c).await,
        "remove_invitation"
    ));
    assert!(!ok(
        directory.remove_invitation(g.id, c).await,
        "remove_invitation again"
    ));
    assert!(ok(directory.invitations(c).await, "invitations").is_empty());

    // A full group refuses the acceptance and keeps the invitation.
    ok(directory.invite(g.id, c, owner, 8_000, &L).await, "invite");
    assert_err!(
        directory.accept_invitation(g.id, c, &seats(2)).await,
        Error::LimitExceeded { .. },
        "accepting into a full group"
    );
    assert_eq!(
        ok(directory.invitations(c).await, "invitations").len(),
        1,
        "a refused acceptance keeps the invitation"
    );
    // add_member clears the invitation it makes moot.
    ok(directory.add_member(g.id, c, &L).await, "add_member");
    assert!(
        ok(directory.invitations(c).await, "invitations").is_empty(),
        "add_member removes the member's invitation"
    );

    // Only groups, only known users and channels.
    let direct = ok(
        directory
            .create_channel(Channel::direct(owner, b, 0), &L)
            .await,
        "create_channel",
    );
    assert_err!(
        directory.invite(direct.id, c, owner, 0, &L).await,
        Error::InvalidInput { .. },
        "an invitation to a direct channel"
    );
    assert_err!(
        directory
            .invite(ChannelId::new_random(), c, owner, 0, &L)
            .await,
        Error::NotFound { .. },
        "an invitation to an unknown channel"
    );
    assert_err!(
        directory
            .invite(g.id, UserId::new_random(), owner, 0, &L)
            .await,
        Error::NotFound { .. },
        "an invitation of an unknown user"
    );

    // Listings are sorted by (invitee, channel).
    let h = ok(
        directory
            .create_channel(group(owner, vec![owner], "second"), &L)
            .await,
        "create_channel",
    );
    let d = new_user(directory, "id").await;
    let e = new_user(directory, "ie").await;
    for (ch, u) in [(h.id, e), (h.id, d), (g.id, e), (g.id, d)] {
        ok(directory.invite(ch, u, owner, 9_000, &L).await, "invite");
    }
    let listed: Vec<(UserId, ChannelId)> = ok(directory.invitations(owner).await, "invitations")
        .iter()
        .map(|i| (i.invitee, i.channel))
        .collect();
    let mut expected = vec![(d, g.id), (d, h.id), (e, g.id), (e, h.id)];
    expected.sort();
    assert_eq!(
        listed, expected,
        "invitations are sorted by (invitee, channel)"
    );
}

async fn contacts(directory: &dyn Directory) {
    let me = new_user(directory, "cme").await;
    let [friend, co, direct_peer, stranger, asked] = [
        new_user(directory, "cfr").await,
        new_user(directory, "cco").await,
        new_user(directory, "cdp").await,
        new_user(directory, "cst").await,
        new_user(directory, "cas").await,
    ];
    befriend(directory, me, friend).await;
    ok(
        directory
            .create_channel(group(co, vec![co, me], "co"), &L)
            .await,
        "create_channel",
    );
    ok(
        directory
            .create_channel(Channel::direct(me, direct_peer, 0), &L)
            .await,
        "create_channel",
    );
    ok(
        directory.request_friend(me, asked, 0, &L).await,
        "request_friend",
    );
    let hidden = Privacy {
        who_may_add: WhoMayAdd::Everyone,
        hide_last_seen: true,
    };
    ok(directory.set_privacy(co, hidden).await, "set_privacy");
    let ghost = UserId::new_random();
    let among = [stranger, co, friend, me, ghost, asked, direct_peer, friend];
    let users = |v: Vec<chat_core::Contact>| v.into_iter().map(|c| c.user).collect::<Vec<_>>();
    let found = ok(directory.contacts(me, &among).await, "contacts");
    assert_eq!(
        users(found.clone()),
        vec![co, friend, direct_peer],
        "friends and co-members, in the asked order, once each, never oneself"
    );
    assert_eq!(
        found[0].privacy, hidden,
        "each contact comes with its privacy settings"
    );
    assert_eq!(found[1].privacy, Privacy::default());
    assert_eq!(
        users(ok(directory.contacts(co, &[me, friend]).await, "contacts")),
        vec![me],
        "sharing a channel is symmetric; a friend's friend is nobody"
    );
    assert!(
        ok(
            directory.contacts(stranger, &[me, friend, co]).await,
            "contacts"
        )
        .is_empty(),
        "a stranger has no contacts"
    );
    assert!(ok(directory.contacts(me, &[]).await, "contacts").is_empty());
}

async fn blocks(directory: &dyn Directory) {
    let me = new_user(directory, "bme").await;
    let [friend, co, other] = [
        new_user(directory, "bfr").await,
        new_user(directory, "bco").await,
        new_user(directory, "bot").await,
    ];
    befriend(directory, me, friend).await;
    ok(
        directory
            .create_channel(group(co, vec![co, me], "blocks"), &L)
            .await,
        "create_channel",
    );
    assert_eq!(ok(directory.blocked(me).await, "blocked"), vec![]);
    ok(directory.block(me, friend).await, "block");
    ok(directory.block(me, co).await, "block");
    ok(directory.block(me, co).await, "block again is a no-op");
    assert_eq!(
        ok(directory.blocked(me).await, "blocked"),
        sorted(&[friend, co]),
        "blocks are listed, sorted, once"
    );
    assert_eq!(
        ok(directory.blocked(friend).await, "blocked"),
        vec![],
        "a block is one-way"
    );
    let seen_by = |viewer: UserId| async move {
        ok(directory.contacts(viewer, &[me]).await, "contacts")
            .iter()
            .map(|c| c.user)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        seen_by(friend).await,
        vec![],
        "a blocker is no friend's contact"
    );
    assert_eq!(seen_by(co).await, vec![], "nor a co-member's");
    let mine = ok(directory.contacts(me, &[friend, co]).await, "contacts");
    assert_eq!(
        mine.iter().map(|c| c.user).collect::<Vec<_>>(),
        vec![friend, co],
        "the blocker still sees the users they block"
    );
    assert_eq!(
        ok(directory.friends(me).await, "friends"),
        vec![friend],
        "a block leaves friendship alone"
    );
    ok(directory.unblock(me, co).await, "unblock");
    ok(directory.unblock(me, co).await, "unblock again is a no-op");
    ok(
        directory.unblock(me, other).await,
        "unblock of a user never blocked",
    );
    assert_eq!(
        seen_by(co).await,
        vec![me],
        "unblocking restores the contact"
    );
    assert_eq!(ok(directory.blocked(me).await, "blocked"), vec![friend]);
    assert!(
        matches!(
            directory.block(me, UserId::new_random()).await,
            Err(Error::NotFound { .. })
        ),
        "blocking an unknown user is NotFound"
    );
    assert!(
        matches!(
            directory.block(me, me).await,
            Err(Error::InvalidInput { .. })
        ),
        "blocking oneself is InvalidInput"
    );
}

async fn blocked_friend_requests(directory: &dyn Directory) {
    let x = new_user(directory, "asker").await;
    let y = new_user(directory, "blocker").await;
    ok(directory.block(y, x).await, "block");
    assert!(
        matches!(
            directory.request_friend(x, y, 1_000, &L).await,
            Err(Error::Blocked)
        ),
        "a request to a user who blocks the asker is Blocked"
    );
    assert!(
        ok(directory.friend_requests(y).await, "friend_requests").is_empty(),
        "a refused request writes nothing"
    );
    assert_eq!(
        ok(
            directory.request_friend(y, x, 2_000, &L).await,
            "the blocker asks"
        ),
        FriendOutcome::Requested,
        "a block is one-way: the blocker may still ask"
    );
    assert!(
        matches!(
            directory.request_friend(x, y, 3_000, &L).await,
            Err(Error::Blocked)
        ),
        "accepting the blocker's request is Blocked too"
    );
    assert_eq!(
        ok(directory.friend_requests(x).await, "friend_requests").len(),
        1,
        "the blocker's request stays pending"
    );
    assert!(ok(directory.friends(x).await, "friends").is_empty());
    ok(directory.unblock(y, x).await, "unblock");
    assert_eq!(
        ok(
            directory.request_friend(x, y, 4_000, &L).await,
            "request after unblock"
        ),
        FriendOutcome::Accepted,
        "unblocking lets the request through"
    );
}
