//! Consent, through the real server and the SDK: friend requests the other
//! side accepts, who may add whom (groups and direct channels), group
//! invitations, presence only for friends and co-members, hidden last-seen,
//! per-user caps, paged channel lists, and the text rules for names.
//!
//! Users here keep the default privacy settings unless a test changes them
//! (the delivery tests elsewhere open theirs to everyone).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use chat_client::{ChatClient, ClientError, ClientEvent, Connection, Session};
use chat_core::api::{FriendStatus, UpdatePrivacyRequest, UpdateProfileRequest};
use chat_core::protocol::{ErrorCode, Request};
use chat_core::{
    ChannelId, DeviceId, Limits, Platform, Presence, PresenceStatus, Privacy, UserId, WhoMayAdd,
};
use chat_server::ServerConfig;
use common::*;

async fn signup(ts: &TestServer, name: &str) -> Session {
    signup_sdk(ts, name).await
}

async fn set_who(session: &Session, who: WhoMayAdd) {
    let update = UpdatePrivacyRequest {
        who_may_add: Some(who),
        hide_last_seen: None,
    };
    session.update_privacy(&update).await.unwrap();
}

async fn connect(session: &Session) -> Connection {
    connect_synced(session).await
}

/// Events that arrived by now (after a round trip, so anything the server
/// sent before is in).
async fn pending_events(conn: &mut Connection) -> Vec<ClientEvent> {
    conn.presence(&[]).await.unwrap();
    let mut out = Vec::new();
    while let Some(e) = conn.events().try_recv() {
        out.push(e);
    }
    out
}

fn code<T: std::fmt::Debug>(r: Result<T, ClientError>) -> ErrorCode {
    api_code(r)
}

fn ids(users: &[chat_core::api::PendingFriend]) -> Vec<UserId> {
    users.iter().map(|p| p.user.id).collect()
}

#[tokio::test]
async fn friendship_is_a_request_the_other_side_accepts() {
    let ts = start(test_config()).await;
    let alice = signup(&ts, "alice").await;
    let bob = signup(&ts, "bob").await;
    let carol = signup(&ts, "carol").await;
    let mut a = connect(&alice).await;
    let mut b = connect(&bob).await;

    // A request: pending on both sides, not a friendship, and bob is told.
    assert_eq!(
        alice.add_friend(bob.user_id()).await.unwrap(),
        FriendStatus::Requested
    );
    match next_event(&mut b, |e| matches!(e, ClientEvent::FriendRequest(_))).await {
        ClientEvent::FriendRequest(from) => assert_eq!(from.id, alice.user_id()),
        other => panic!("{other:?}"),
    }
    assert!(alice.friends().await.unwrap().is_empty());
    assert!(bob.friends().await.unwrap().is_empty());
    assert_eq!(
        ids(&alice.friend_requests().await.unwrap().outgoing),
        vec![bob.user_id()]
    );
    assert_eq!(
        ids(&bob.friend_requests().await.unwrap().incoming),
        vec![alice.user_id()]
    );
    // Asking again changes nothing and tells bob nothing new.
    assert_eq!(
        alice.add_friend(bob.user_id()).await.unwrap(),
        FriendStatus::Requested
    );
    assert!(!pending_events(&mut b)
        .await
        .iter()
        .any(|e| matches!(e, ClientEvent::FriendRequest(_))));

    // Bob accepts by asking back; alice is told.
    assert_eq!(
        bob.add_friend(alice.user_id()).await.unwrap(),
        FriendStatus::Friends
    );
    match next_event(&mut a, |e| matches!(e, ClientEvent::FriendAccepted(_))).await {
        ClientEvent::FriendAccepted(friend) => assert_eq!(friend.id, bob.user_id()),
        other => panic!("{other:?}"),
    }
    let friend_ids = |list: Vec<chat_core::User>| list.iter().map(|u| u.id).collect::<Vec<_>>();
    assert_eq!(
        friend_ids(alice.friends().await.unwrap()),
        vec![bob.user_id()]
    );
    assert_eq!(
        friend_ids(bob.friends().await.unwrap()),
        vec![alice.user_id()]
    );
    let none = alice.friend_requests().await.unwrap();
    assert!(none.incoming.is_empty() && none.outgoing.is_empty());

    // DELETE declines, cancels and unfriends.
    carol.add_friend(bob.user_id()).await.unwrap();
    bob.remove_friend(carol.user_id()).await.unwrap();
    assert!(
        carol.friend_requests().await.unwrap().outgoing.is_empty(),
        "declined"
    );
    carol.add_friend(alice.user_id()).await.unwrap();
    carol.remove_friend(alice.user_id()).await.unwrap();
    assert!(
        alice.friend_requests().await.unwrap().incoming.is_empty(),
        "cancelled"
    );
    alice.remove_friend(bob.user_id()).await.unwrap();
    assert!(
        bob.friends().await.unwrap().is_empty(),
        "unfriended, both ways"
    );

    assert_eq!(
        code(alice.add_friend(alice.user_id()).await),
        ErrorCode::InvalidInput
    );
    assert_eq!(
        code(alice.add_friend(UserId::new_random()).await),
        ErrorCode::NotFound
    );
    a.close().await;
    b.close().await;
    ts.stop().await;
}

#[tokio::test]
async fn who_may_add_decides_between_adding_and_inviting() {
    let ts = start(test_config()).await;
    let alice = signup(&ts, "alice").await;
    let friend = signup(&ts, "friend").await;
    let stranger = signup(&ts, "stranger").await;
    let open = signup(&ts, "open").await;
    let closed = signup(&ts, "closed").await;
    make_friends(&alice, &friend).await;
    make_friends(&alice, &closed).await;
    set_who(&open, WhoMayAdd::Everyone).await;
    set_who(&closed, WhoMayAdd::Nobody).await;
    let mut s = connect(&stranger).await;

    let group = alice
        .create_group(
            "hike",
            &[
                friend.user_id(),
                stranger.user_id(),
                open.user_id(),
                closed.user_id(),
            ],
        )
        .await
        .unwrap();
    let members: BTreeSet<UserId> = group.channel.members.iter().copied().collect();
    let expected: BTreeSet<UserId> = [alice.user_id(), friend.user_id(), open.user_id()].into();
    assert_eq!(
        members, expected,
        "friends (default) and everyone's are added"
    );
    let invited: BTreeSet<UserId> = group.invited.iter().copied().collect();
    assert_eq!(
        invited,
        [stranger.user_id(), closed.user_id()].into(),
        "a stranger, and a friend who lets nobody add them, are invited"
    );
    assert!(group.refused.is_empty());
    let g = group.channel.id;

    // The stranger is told live, sees the invitation, and is no member yet.
    match next_event(&mut s, |e| matches!(e, ClientEvent::Invitation(_))).await {
        ClientEvent::Invitation(inv) => {
            assert_eq!((inv.channel, inv.inviter), (g, alice.user_id()));
            assert_eq!(inv.group_name, "hike");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(stranger.invitations().await.unwrap().incoming.len(), 1);
    assert_eq!(alice.invitations().await.unwrap().outgoing.len(), 2);
    assert_eq!(code(stranger.channel(g).await), ErrorCode::NotFound);
    assert_eq!(
        code(s.send(g, "not yet").await),
        ErrorCode::NotFound,
        "an invitee cannot post before accepting"
    );

    // Accepting joins; declining drops the invitation.
    let joined = stranger.accept_invitation(g).await.unwrap();
    assert!(joined.is_member(stranger.user_id()));
    s.send(g, "hello all").await.unwrap();
    closed.decline_invitation(g).await.unwrap();
    closed.decline_invitation(g).await.unwrap();
    assert!(alice.invitations().await.unwrap().outgoing.is_empty());
    assert_eq!(code(closed.accept_invitation(g).await), ErrorCode::NotFound);
    assert!(!alice.channel(g).await.unwrap().is_member(closed.user_id()));

    // One member at a time: invited (202) or added, and the owner can
    // withdraw an invitation.
    let late = signup(&ts, "late").await;
    let change = alice.add_member(g, late.user_id()).await.unwrap();
    assert_eq!(change.invited, vec![late.user_id()]);
    assert!(!change.channel.is_member(late.user_id()));
    alice.remove_member(g, late.user_id()).await.unwrap();
    assert!(
        late.invitations().await.unwrap().incoming.is_empty(),
        "withdrawn"
    );
    set_who(&late, WhoMayAdd::Everyone).await;
    let change = alice.add_member(g, late.user_id()).await.unwrap();
    assert!(change.invited.is_empty() && change.channel.is_member(late.user_id()));
    // Only the owner adds; the answer to a member is forbidden.
    assert_eq!(
        code(friend.add_member(g, UserId::new_random()).await),
        ErrorCode::Forbidden
    );
    s.close().await;
    ts.stop().await;
}

#[tokio::test]
async fn a_stranger_cannot_open_a_direct_channel_without_consent() {
    let ts = start(test_config()).await;
    let alice = signup(&ts, "alice").await;
    let bob = signup(&ts, "bob").await;
    let erin = signup(&ts, "erin").await;
    let dave = signup(&ts, "dave").await;

    // Default: friends only.
    assert_eq!(
        code(bob.open_direct(alice.user_id()).await),
        ErrorCode::Forbidden
    );
    make_friends(&alice, &bob).await;
    let direct = bob.open_direct(alice.user_id()).await.unwrap();
    assert_eq!(direct.id, ChannelId::direct(alice.user_id(), bob.user_id()));

    // Nobody: not even a friend opens one; she can, and then it is open
    // for both.
    make_friends(&alice, &erin).await;
    set_who(&erin, WhoMayAdd::Nobody).await;
    assert_eq!(
        code(alice.open_direct(erin.user_id()).await),
        ErrorCode::Forbidden
    );
    let opened = erin.open_direct(alice.user_id()).await.unwrap();
    assert_eq!(alice.open_direct(erin.user_id()).await.unwrap(), opened);

    // Everyone: any stranger.
    set_who(&dave, WhoMayAdd::Everyone).await;
    bob.open_direct(dave.user_id()).await.unwrap();
    assert_eq!(
        code(bob.open_direct(UserId::new_random()).await),
        ErrorCode::NotFound
    );
    ts.stop().await;
}

/// Presence as `viewer` sees it over HTTP and over the WebSocket (which
/// must agree).
async fn seen(viewer: &Session, conn: &Connection, user: UserId) -> Presence {
    let http = viewer.presence(&[user]).await.unwrap();
    let ws = conn.presence(&[user]).await.unwrap();
    assert_eq!(http, ws, "HTTP and WebSocket answer alike");
    http[0]
}

#[tokio::test]
async fn presence_is_shown_to_friends_and_co_members_only() {
    // A short presence timeout, so going offline takes seconds.
    let ts = start(ServerConfig {
        heartbeat_interval: Duration::from_millis(500),
        presence_timeout: Duration::from_secs(2),
        presence_sweep_interval: Duration::from_millis(200),
        ..test_config()
    })
    .await;
    let alice = signup(&ts, "alice").await;
    let friend = signup(&ts, "friend").await;
    let member = signup(&ts, "member").await;
    let stranger = signup(&ts, "stranger").await;
    make_friends(&alice, &friend).await;
    set_who(&member, WhoMayAdd::Everyone).await;
    alice
        .create_group("club", &[member.user_id()])
        .await
        .unwrap();

    let mut f = connect(&friend).await;
    let m = connect(&member).await;
    let mut s = connect(&stranger).await;
    let a = connect(&alice).await;
    match next_event(&mut f, |e| matches!(e, ClientEvent::Presence(_))).await {
        ClientEvent::Presence(p) => assert_eq!(
            (p.user, p.status),
            (alice.user_id(), PresenceStatus::Online),
            "a friend is told"
        ),
        other => panic!("{other:?}"),
    }
    for (viewer, conn) in [(&friend, &f), (&member, &m)] {
        let p = seen(viewer, conn, alice.user_id()).await;
        assert_eq!(p.status, PresenceStatus::Online);
        assert!(p.last_active_at.is_some(), "contacts see the last activity");
    }
    // A stranger sees what a never-seen user looks like, and is told nothing,
    // even with a friend request pending.
    stranger.add_friend(alice.user_id()).await.unwrap();
    let hidden = Presence {
        user: alice.user_id(),
        status: PresenceStatus::Offline,
        last_active_at: None,
    };
    assert_eq!(seen(&stranger, &s, alice.user_id()).await, hidden);
    let never_seen = UserId::new_random();
    assert_eq!(
        seen(&stranger, &s, never_seen).await,
        Presence {
            user: never_seen,
            ..hidden
        }
    );
    assert!(!pending_events(&mut s)
        .await
        .iter()
        .any(|e| matches!(e, ClientEvent::Presence(_))));

    // Hiding last-seen: status still, last activity never, not even in the
    // events; alice herself sees her own.
    let update = UpdatePrivacyRequest {
        who_may_add: None,
        hide_last_seen: Some(true),
    };
    assert_eq!(
        alice.update_privacy(&update).await.unwrap(),
        Privacy {
            who_may_add: WhoMayAdd::Friends,
            hide_last_seen: true
        }
    );
    for (viewer, conn) in [(&friend, &f), (&member, &m)] {
        let p = seen(viewer, conn, alice.user_id()).await;
        assert_eq!((p.status, p.last_active_at), (PresenceStatus::Online, None));
    }
    assert!(seen(&alice, &a, alice.user_id())
        .await
        .last_active_at
        .is_some());
    a.close().await;
    drop(a);
    // Offline after the presence timeout: the friend's event carries no
    // last activity.
    let offline = |e: &ClientEvent| matches!(e, ClientEvent::Presence(p) if p.status == PresenceStatus::Offline);
    match next_event(&mut f, offline).await {
        ClientEvent::Presence(p) => assert_eq!(p.last_active_at, None, "hidden in events too"),
        other => panic!("{other:?}"),
    }
    ts.stop().await;
}

#[tokio::test]
async fn per_user_caps_answer_limit_exceeded() {
    let config = ServerConfig {
        limits: Limits {
            group_members: 100,
            devices: 2,
            friends: 1,
            groups_joined: 2,
            groups_owned: 1,
            pending_sent: 1,
            pending_received: 1,
        },
        ..test_config()
    };
    let ts = start(config).await;
    let alice = signup(&ts, "alice").await;
    let bob = signup(&ts, "bob").await;
    let carol = signup(&ts, "carol").await;
    let dave = signup(&ts, "dave").await;
    let limit = ErrorCode::LimitExceeded;

    // Devices: a third is refused; re-registering one is not.
    let (d1, d2) = (DeviceId::new_random(), DeviceId::new_random());
    alice
        .register_device(d1, Platform::Web, None)
        .await
        .unwrap();
    alice
        .register_device(d2, Platform::Web, None)
        .await
        .unwrap();
    assert_eq!(
        code(
            alice
                .register_device(DeviceId::new_random(), Platform::Web, None)
                .await
        ),
        limit
    );
    alice
        .register_device(d1, Platform::Ios, Some("t"))
        .await
        .unwrap();

    // Pending requests sent, then received.
    alice.add_friend(bob.user_id()).await.unwrap();
    assert_eq!(code(alice.add_friend(carol.user_id()).await), limit);
    assert_eq!(
        code(dave.add_friend(bob.user_id()).await),
        limit,
        "bob's inbox is full"
    );
    // Friends.
    bob.add_friend(alice.user_id()).await.unwrap();
    carol.add_friend(dave.user_id()).await.unwrap();
    dave.add_friend(carol.user_id()).await.unwrap();
    carol.remove_friend(dave.user_id()).await.unwrap();
    carol.add_friend(alice.user_id()).await.unwrap();
    assert_eq!(
        code(alice.add_friend(carol.user_id()).await),
        limit,
        "alice has a friend"
    );

    // Groups owned and joined.
    for s in [&alice, &bob, &carol, &dave] {
        set_who(s, WhoMayAdd::Everyone).await;
    }
    let g = alice.create_group("one", &[]).await.unwrap().channel.id;
    assert_eq!(code(alice.create_group("two", &[]).await), limit);
    bob.create_group("b", &[]).await.unwrap();
    alice.add_member(g, bob.user_id()).await.unwrap();
    let c = carol.create_group("c", &[]).await.unwrap().channel.id;
    assert_eq!(
        code(carol.add_member(c, bob.user_id()).await),
        limit,
        "bob is in two groups"
    );
    // In a new group's list, a member at a cap is reported, not fatal.
    let d = dave
        .create_group("d", &[bob.user_id(), carol.user_id()])
        .await
        .unwrap();
    assert_eq!(d.refused, vec![bob.user_id()]);
    assert!(d.channel.is_member(carol.user_id()));
    ts.stop().await;
}

#[tokio::test]
async fn channels_are_listed_in_bounded_pages() {
    let ts = start(test_config()).await;
    let alice = signup(&ts, "alice").await;
    let mut expected = Vec::new();
    for i in 0..5 {
        expected.push(
            alice
                .create_group(&format!("g{i}"), &[])
                .await
                .unwrap()
                .channel
                .id,
        );
    }
    for name in ["p1", "p2"] {
        let peer = signup_open(&ts, name).await;
        expected.push(alice.open_direct(peer.user_id()).await.unwrap().id);
    }
    expected.sort();
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let (page, next) = alice.channels_page(after, 2).await.unwrap();
        assert!(page.len() <= 2);
        seen.extend(page.iter().map(|c| c.id));
        match next {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    assert_eq!(seen, expected, "every channel once, by id");
    let all: Vec<ChannelId> = alice
        .channels()
        .await
        .unwrap()
        .iter()
        .map(|c| c.id)
        .collect();
    assert_eq!(all, expected);
    // The server bounds the page whatever is asked.
    let (page, _) = alice.channels_page(None, 0).await.unwrap();
    assert_eq!(page.len(), 1, "a limit of 0 is 1");
    let big = reqwest::Client::new()
        .get(format!("{}/v1/channels?limit=100000", ts.http))
        .bearer_auth(alice.token())
        .send()
        .await
        .unwrap();
    assert_eq!(big.status(), 200);
    ts.stop().await;
}

#[tokio::test]
async fn path_like_usernames_and_control_characters_in_names_are_refused() {
    let ts = start(test_config()).await;
    let client = ChatClient::new(&ts.http).unwrap();
    for name in [".", "..", "-", "_", ".hidden", "-rf", "trailing."] {
        assert_eq!(
            code(client.signup(name, "password123", None).await),
            ErrorCode::InvalidInput,
            "username {name:?}"
        );
    }
    client.signup("a.b-c_d", "password123", None).await.unwrap();
    for bad in [
        "evil\u{202E}gnp.exe",
        "bell\u{7}",
        "esc\u{1b}[2J",
        "c1\u{9b}",
    ] {
        assert_eq!(
            code(client.signup("named", "password123", Some(bad)).await),
            ErrorCode::InvalidInput,
            "display name {bad:?}"
        );
    }
    let alice = signup(&ts, "alice").await;
    let patch = |display_name: Option<&str>, about: Option<&str>| UpdateProfileRequest {
        display_name: display_name.map(str::to_owned),
        about: about.map(str::to_owned),
    };
    assert_eq!(
        code(alice.update_profile(&patch(Some("a\u{2067}b"), None)).await),
        ErrorCode::InvalidInput
    );
    assert_eq!(
        code(alice.update_profile(&patch(None, Some("x\u{0}y"))).await),
        ErrorCode::InvalidInput
    );
    let ok = alice
        .update_profile(&patch(Some("Alice Ünïcode"), Some("two\nlines\tand a tab")))
        .await
        .unwrap();
    assert_eq!(ok.profile.about, "two\nlines\tand a tab");
    assert_eq!(
        code(alice.create_group("bad\u{202D}name", &[]).await),
        ErrorCode::InvalidInput
    );
    assert_eq!(
        code(alice.create_group("  ", &[]).await),
        ErrorCode::InvalidInput
    );
    ts.stop().await;
}

#[tokio::test]
async fn a_ws_presence_request_for_many_strangers_reveals_nothing() {
    // The same rule on the raw protocol, with more users at once than a
    // client would ask for.
    let ts = start(test_config()).await;
    let http = Http::new(&ts.http);
    let alice = http.signup("alice").await;
    let others: Vec<_> = {
        let mut v = Vec::new();
        for i in 0..5 {
            v.push(http.signup(&format!("u{i}")).await);
        }
        v
    };
    let _online: Vec<_> = {
        let mut v = Vec::new();
        for o in &others {
            v.push(raw_connect(&ts, &o.token, DeviceId::new_random()).await);
        }
        v
    };
    let mut a = raw_connect(&ts, &alice.token, DeviceId::new_random()).await;
    let users: Vec<UserId> = others.iter().map(|o| o.user.id).collect();
    let reply = a
        .request(Request::Presence {
            users: users.clone(),
        })
        .await;
    match reply.into_result() {
        Ok(chat_core::protocol::ReplyBody::Presence { users: got }) => {
            assert_eq!(got.len(), users.len());
            for p in got {
                assert_eq!(
                    (p.status, p.last_active_at),
                    (PresenceStatus::Offline, None)
                );
            }
        }
        other => panic!("{other:?}"),
    }
    ts.stop().await;
}
