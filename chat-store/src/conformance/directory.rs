//! The [`Directory`] contract.

use chat_core::{
    Channel, ChannelId, ChannelKind, Device, DeviceId, Directory, Error, Platform, Profile, UserId,
};

use super::{fresh_username, new_user, ok, sorted, user_record};

/// Checks every clause of the [`Directory`] contract:
///
/// * users: `create_user` returns the user; `user` and `user_by_name` find
///   it (with its password hash); a taken username fails with
///   `AlreadyExists` and writes nothing; `update_profile` replaces the
///   profile and fails with `NotFound` for an unknown user;
/// * friends: symmetric, sorted by id, adding twice and removing a missing
///   friendship are no-ops, unknown users are `NotFound`;
/// * channels: creating a direct channel again returns the stored one; a
///   group with a taken id is `AlreadyExists`; malformed channels are
///   `InvalidInput` and write nothing; members are stored sorted without
///   duplicates;
/// * membership: `add_member` beyond `max_members` is `LimitExceeded` and
///   changes nothing, adding a present member or removing an absent one is
///   a no-op, a direct channel's members cannot change (`InvalidInput`),
///   an unknown channel is `NotFound`; `channels_of` follows every change,
///   sorted by id;
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
    friends(directory).await;
    channels(directory).await;
    membership(directory).await;
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
    assert!(
        ok(friends(a).await, "friends").is_empty(),
        "a new user has no friends"
    );
    ok(directory.add_friend(a, b).await, "add_friend");
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
    ok(directory.add_friend(a, b).await, "add_friend again");
    ok(directory.add_friend(b, a).await, "add_friend reversed");
    assert_eq!(
        ok(friends(a).await, "friends"),
        vec![b],
        "adding an existing friendship is a no-op"
    );
    assert_eq!(ok(friends(b).await, "friends"), vec![a]);
    ok(directory.add_friend(c, a).await, "add_friend");
    assert_eq!(
        ok(friends(a).await, "friends"),
        sorted(&[b, c]),
        "friends are sorted by id"
    );

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
    ok(
        directory.remove_friend(b, c).await,
        "removing a never-existing friendship is a no-op",
    );
    assert_eq!(ok(friends(c).await, "friends"), vec![a]);

    let ghost = UserId::new_random();
    assert_err!(
        directory.add_friend(a, ghost).await,
        Error::NotFound { .. },
        "add_friend with an unknown user"
    );
    assert_err!(
        directory.add_friend(ghost, a).await,
        Error::NotFound { .. },
        "add_friend with an unknown user"
    );
    assert_eq!(
        ok(friends(a).await, "friends"),
        vec![c],
        "a refused add_friend writes nothing"
    );
    assert!(ok(friends(ghost).await, "friends").is_empty());
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
            directory.create_channel(direct.clone()).await,
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
            directory.create_channel(Channel::direct(b, a, 2_000)).await,
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
            directory.create_channel(bad).await,
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
        directory.create_channel(unsorted.clone()).await,
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
        directory.create_channel(again).await,
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
            .create_channel(group(owner, vec![owner, b], "group"))
            .await,
        "create_channel",
    );
    let direct = ok(
        directory
            .create_channel(Channel::direct(owner, b, 1_000))
            .await,
        "create_channel",
    );

    let added = ok(directory.add_member(g.id, c, 3).await, "add_member");
    assert_eq!(
        added.members,
        sorted(&[owner, b, c]),
        "add_member adds, keeping members sorted"
    );
    assert_eq!(
        ok(directory.channel(g.id).await, "channel"),
        Some(added.clone())
    );
    let full = directory.add_member(g.id, d, 3).await;
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
        ok(directory.add_member(g.id, c, 3).await, "add_member"),
        added,
        "adding a present member is a no-op, even when the group is full"
    );
    assert_eq!(
        ok(directory.add_member(g.id, d, 4).await, "add_member")
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
        directory.add_member(ChannelId::new_random(), c, 10).await,
        Error::NotFound { .. },
        "add_member to an unknown channel"
    );

    // Direct channels' members cannot change.
    assert_err!(
        directory.add_member(direct.id, c, 10).await,
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
        ok(directory.channels_of(owner).await, "channels_of"),
        both,
        "channels_of lists current channels, sorted by id"
    );
    assert_eq!(
        ok(directory.channels_of(c).await, "channels_of"),
        vec![added.clone()],
        "channels_of includes groups joined by add_member"
    );
    assert!(
        ok(directory.channels_of(d).await, "channels_of").is_empty(),
        "channels_of drops groups left by remove_member"
    );
    assert!(
        ok(directory.channels_of(loner).await, "channels_of").is_empty(),
        "channels_of of a user in no channel is empty"
    );
    let after_leave = ok(directory.remove_member(g.id, c).await, "remove_member");
    assert_eq!(after_leave.members, sorted(&[owner, b]));
    assert!(ok(directory.channels_of(c).await, "channels_of").is_empty());
    let mut both = vec![after_leave, direct];
    both.sort_by_key(|ch| ch.id);
    assert_eq!(
        ok(directory.channels_of(b).await, "channels_of"),
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
            directory.register_device(first.clone()).await,
            "register_device"
        ),
        first
    );
    assert_eq!(ok(directory.devices(a).await, "devices"), vec![first]);

    let replaced = device(a, d1, Platform::Android, Some("fcm-token"));
    ok(
        directory.register_device(replaced.clone()).await,
        "register_device again",
    );
    assert_eq!(
        ok(directory.devices(a).await, "devices"),
        vec![replaced.clone()],
        "registering again replaces platform and push token"
    );
    let cleared = device(a, d1, Platform::Android, None);
    ok(
        directory.register_device(cleared.clone()).await,
        "register_device without token",
    );
    let second = device(a, d2, Platform::Web, None);
    ok(
        directory.register_device(second.clone()).await,
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
        directory.register_device(other.clone()).await,
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
        directory.register_device(with_token.clone()).await,
        "register_device",
    );
    let same_id_other_user = device(b, d1, Some("tok-1"));
    ok(
        directory.register_device(same_id_other_user.clone()).await,
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
            directory.add_friend(a, a).await,
            Err(Error::InvalidInput { .. })
        ),
        "add_friend(a, a) is InvalidInput"
    );
    assert!(
        matches!(
            directory.add_friend(a, ghost).await,
            Err(Error::NotFound { .. })
        ),
        "add_friend with an unknown user is NotFound"
    );
    assert!(
        matches!(
            directory
                .create_channel(group(a, vec![a, ghost], "ghosts"))
                .await,
            Err(Error::NotFound { .. })
        ),
        "a channel with an unknown member is NotFound"
    );
    let g = ok(
        directory.create_channel(group(a, vec![a], "edges")).await,
        "create_channel",
    );
    assert!(
        matches!(
            directory.add_member(g.id, ghost, 100).await,
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
                .register_device(Device {
                    id: DeviceId::new_random(),
                    user: ghost,
                    platform: Platform::Web,
                    push_token: None,
                    created_at: 0,
                })
                .await,
            Err(Error::NotFound { .. })
        ),
        "register_device for an unknown user is NotFound"
    );
    let mut ids: Vec<DeviceId> = (0..5).map(|_| DeviceId::new_random()).collect();
    for id in &ids {
        ok(
            directory
                .register_device(Device {
                    id: *id,
                    user: a,
                    platform: Platform::Android,
                    push_token: Some("t".into()),
                    created_at: 0,
                })
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
