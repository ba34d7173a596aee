//! The read-modify-write clauses under concurrent callers.

use std::future::Future;
use std::pin::Pin;

use std::collections::BTreeMap;

use chat_core::{
    Appended, Channel, ChannelId, ChannelKind, Device, DeviceId, Directory, Error, FriendOutcome,
    HistoryStore, Inbox, Limits, MessageId, MessageStore, Page, Platform, Seq, UserId,
};

use super::messages::{group, new_message, users, whole_history, whole_inbox};
use super::{ids_of, join_all, message, new_user, ok, user_record, Ids};

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
/// * concurrent commits under one key: exactly one is new, every other is a
///   duplicate of it with the same positions, and each inbox holds it once;
/// * concurrent commits to one channel from several "nodes" proposing ids
///   out of order, each proposing again above the last id a `StaleId`
///   names: every member's inbox holds the channel's messages in id order
///   at dense positions, history holds them all in that order, and each
///   commit's reported positions are where its message is;
/// * commits racing a member's addition: the new member's inbox holds a
///   suffix of the channel's history (once a message reached them, every
///   later one did);
/// * concurrent `create_user` with one username: exactly one succeeds, the
///   rest are `AlreadyExists`;
/// * concurrent `add_member` to a group with room for fewer: exactly as
///   many succeed as there are seats, the rest are `LimitExceeded`, and
///   `channels_of` agrees with the final members;
/// * `clear_push_token` of a device's old token racing a registration of a
///   new token: the new token survives whichever lands first; racing the
///   device's removal: the device stays removed;
/// * crossed friend requests (`a → b` and `b → a` at once): one is
///   `Requested`, the other `Accepted`, and they end friends with nothing
///   pending;
/// * per-user caps under concurrent writes: requests to one user, devices
///   of one user, groups one user joins, and acceptances racing new
///   requests never pass their caps;
/// * concurrent `revoke_all_sessions`: every call moves the epoch.
///
/// # Panics
///
/// On the first contract violation, naming it.
pub async fn concurrency_suite(store: &dyn MessageStore, directory: &dyn Directory) {
    racing_appends(store).await;
    racing_cursors(store).await;
    racing_retries(store, directory).await;
    racing_commits(store, directory).await;
    commits_racing_a_new_member(store, directory).await;
    racing_usernames(directory).await;
    racing_members(directory).await;
    racing_token_clears(directory).await;
    racing_friend_requests(directory).await;
    requests_racing_blocks(directory).await;
    racing_caps(directory).await;
    racing_epochs(directory).await;
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
        ok(history.page(channel, Page::latest(100)).await, "page").items,
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
                inbox.advance_cursor(user, device, Seq(*v)).await,
                "concurrent advance_cursor",
            ),
        )
    }))
    .await;
    for (v, got) in returned {
        assert!(
            got >= Seq(v),
            "advance_cursor returns at least the value given ({v} → {got})"
        );
    }
    assert_eq!(
        ok(inbox.cursor(user, device).await, "cursor"),
        Seq(max),
        "concurrent advances leave the maximum"
    );
}

async fn racing_retries(store: &dyn MessageStore, directory: &dyn Directory) {
    let [a, b] = users::<2>(directory).await;
    let channel = group(directory, &[a, b]).await;
    let ids = Ids::fresh();
    let template = new_message(channel.id, a, ids.at(0), "retried");
    let results = join_all((1..=RACERS).map(|k| {
        let mut attempt = template.clone();
        attempt.id = ids.at(k);
        async move { ok(store.commit(attempt).await, "concurrent commit") }
    }))
    .await;
    let new: Vec<_> = results.iter().filter(|c| !c.duplicate).collect();
    assert_eq!(
        new.len(),
        1,
        "exactly one of {RACERS} concurrent commits with one key is new"
    );
    for r in &results {
        assert_eq!(
            (&r.message, &r.positions),
            (&new[0].message, &new[0].positions),
            "every concurrent duplicate answers the one commit"
        );
    }
    for user in [a, b] {
        assert_eq!(
            whole_inbox(store, user).await.len(),
            1,
            "concurrent commits of one key leave one entry per inbox"
        );
    }
}

async fn racing_commits(store: &dyn MessageStore, directory: &dyn Directory) {
    const NODES: u64 = 4;
    const EACH: u64 = 12;
    let [a, b, c] = users::<3>(directory).await;
    let channel = group(directory, &[a, b, c]).await;
    let side = group(directory, &[b, c]).await;
    let ids = Ids::fresh();
    // Node n proposes ids whose order has nothing to do with the order of
    // the commits; a stale proposal is made again above the channel's last
    // id, keeping the node's own low bits (as a generator keeps its node
    // bits), so ids stay unique.
    let results = join_all((0..NODES).map(|node| async move {
        let mut out = Vec::new();
        for k in 0..EACH {
            let mut proposed = ids.at(((EACH - k) * NODES * 7 + node) << 8);
            let sender = [a, b, c][(k % 3) as usize];
            let target = if node == 0 && k % 2 == 0 {
                side.id
            } else {
                channel.id
            };
            let sender = if target == side.id { b } else { sender };
            let mut m = new_message(target, sender, proposed, format!("n{node} k{k}"));
            let committed = loop {
                match store.commit(m.clone()).await {
                    Err(Error::StaleId { last }) => {
                        assert!(
                            last >= proposed,
                            "StaleId names a last id at or above the proposal"
                        );
                        proposed = MessageId((((last.0 >> 8) + 1) << 8) | node);
                        m.id = proposed;
                    }
                    other => break ok(other, "concurrent commit"),
                }
            };
            out.push(committed);
        }
        out
    }))
    .await;
    let committed: Vec<_> = results.into_iter().flatten().collect();
    for ch in [channel.id, side.id] {
        let history = whole_history(store, ch).await;
        let expected = committed
            .iter()
            .filter(|r| r.message.channel_id == ch)
            .count();
        assert_eq!(history.len(), expected, "every commit is in history once");
        assert!(
            history.windows(2).all(|w| w[0].id < w[1].id),
            "history ids strictly increase"
        );
        for user in [a, b, c] {
            let inbox = whole_inbox(store, user).await;
            let here: Vec<MessageId> = inbox
                .iter()
                .filter(|e| e.message.channel_id == ch)
                .map(|e| e.message.id)
                .collect();
            let members = if ch == side.id {
                vec![b, c]
            } else {
                vec![a, b, c]
            };
            if members.contains(&user) {
                assert_eq!(
                    here,
                    ids_of(&history),
                    "each inbox holds the channel's messages in id order"
                );
            }
        }
    }
    let mut at: BTreeMap<(UserId, Seq), MessageId> = BTreeMap::new();
    for user in [a, b, c] {
        for e in whole_inbox(store, user).await {
            at.insert((user, e.seq), e.message.id);
        }
    }
    for r in &committed {
        for (user, seq) in &r.positions {
            assert_eq!(
                at.get(&(*user, *seq)),
                Some(&r.message.id),
                "a commit's reported position holds its message"
            );
        }
    }
}

async fn commits_racing_a_new_member(store: &dyn MessageStore, directory: &dyn Directory) {
    let [owner, joiner] = users::<2>(directory).await;
    let channel = group(directory, &[owner]).await;
    let ids = Ids::fresh();
    let sends = async {
        for k in 1..=RACERS {
            ok(
                store
                    .commit(new_message(channel.id, owner, ids.at(k), format!("m{k}")))
                    .await,
                "commit",
            );
        }
    };
    let join = async {
        tokio::task::yield_now().await;
        ok(
            directory
                .add_member(channel.id, joiner, &chat_core::Limits::default())
                .await,
            "add_member",
        )
    };
    join_all([
        Box::pin(async {
            sends.await;
        }) as std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>,
        Box::pin(async {
            join.await;
        }),
    ])
    .await;
    let history = ids_of(&whole_history(store, channel.id).await);
    let got: Vec<MessageId> = whole_inbox(store, joiner)
        .await
        .into_iter()
        .map(|e| e.message.id)
        .collect();
    assert!(
        history.ends_with(&got),
        "a member added while messages are committed gets a suffix of history: {got:?} of {history:?}"
    );
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
            .create_channel(
                Channel {
                    id: ChannelId::new_random(),
                    kind: ChannelKind::Group,
                    name: "race".into(),
                    owner: Some(owner),
                    members: vec![owner],
                    created_at: 1_700_000_000_000,
                },
                &Limits::default(),
            )
            .await,
        "create_channel",
    );
    let seats = Limits {
        group_members: SEATS,
        ..Limits::default()
    };
    let results = join_all(candidates.iter().map(|u| {
        let id = group.id;
        let seats = &seats;
        async move { (*u, directory.add_member(id, *u, seats).await) }
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
        let member_of = ok(directory.channels_of(user, None, 100).await, "channels_of");
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
                .register_device(device(*id, format!("old-{k}")), &Limits::default())
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
                    directory.register_device(fresh, &Limits::default()).await,
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

async fn racing_friend_requests(directory: &dyn Directory) {
    let limits = Limits::default();
    let users = join_all((0..RACERS * 2).map(|_| new_user(directory, "rfr"))).await;
    let pairs: Vec<(UserId, UserId)> = users.chunks(2).map(|p| (p[0], p[1])).collect();
    let results = join_all(pairs.iter().flat_map(|(a, b)| {
        let limits = &limits;
        [(*a, *b), (*b, *a)].map(|(from, to)| async move {
            (
                from,
                ok(
                    directory.request_friend(from, to, 1_000, limits).await,
                    "concurrent request_friend",
                ),
            )
        })
    }))
    .await;
    for (pair, outcomes) in pairs.iter().zip(results.chunks(2)) {
        let mut got: Vec<FriendOutcome> = outcomes.iter().map(|(_, o)| *o).collect();
        got.sort_by_key(|o| *o == FriendOutcome::Accepted);
        assert_eq!(
            got,
            vec![FriendOutcome::Requested, FriendOutcome::Accepted],
            "of crossed requests, one is Requested and the other Accepted"
        );
        let (a, b) = *pair;
        assert_eq!(
            ok(directory.friends(a).await, "friends"),
            vec![b],
            "crossed requests end as friends"
        );
        assert_eq!(ok(directory.friends(b).await, "friends"), vec![a]);
        assert!(
            ok(directory.friend_requests(a).await, "friend_requests").is_empty(),
            "crossed requests leave nothing pending"
        );
    }
}

async fn racing_caps(directory: &dyn Directory) {
    const CAP: usize = 5;
    let limits = Limits {
        pending_received: CAP,
        devices: CAP,
        groups_joined: CAP,
        friends: CAP - 2,
        ..Limits::default()
    };
    let target = new_user(directory, "rcap").await;
    let askers = join_all((0..RACERS).map(|_| new_user(directory, "rask"))).await;
    let results = join_all(askers.iter().map(|a| {
        let limits = &limits;
        async move { directory.request_friend(*a, target, 1_000, limits).await }
    }))
    .await;
    let accepted = count_within_cap(results, "request_friend");
    assert_eq!(
        accepted, CAP,
        "concurrent requests to one user stop at the received cap"
    );
    assert_eq!(
        ok(directory.friend_requests(target).await, "friend_requests").len(),
        CAP,
        "exactly the admitted requests are stored"
    );

    // The target accepts every pending request at once, with room for
    // fewer friends: the friends cap holds, and the refused stay pending.
    let pending: Vec<UserId> = ok(directory.friend_requests(target).await, "friend_requests")
        .into_iter()
        .map(|r| r.from)
        .collect();
    let results = join_all(pending.iter().map(|from| {
        let limits = &limits;
        async move {
            directory
                .request_friend(target, *from, 2_000, limits)
                .await
                .map(drop)
        }
    }))
    .await;
    assert_eq!(count_within_cap(results, "accept"), CAP - 2);
    assert_eq!(
        ok(directory.friends(target).await, "friends").len(),
        CAP - 2,
        "concurrent acceptances stop at the friends cap"
    );
    assert_eq!(
        ok(directory.friend_requests(target).await, "friend_requests").len(),
        2,
        "refused acceptances leave their requests pending"
    );

    let devices = join_all((0..RACERS).map(|_| {
        let limits = &limits;
        async move {
            directory
                .register_device(
                    Device {
                        id: DeviceId::new_random(),
                        user: target,
                        platform: Platform::Web,
                        push_token: None,
                        created_at: 0,
                    },
                    limits,
                )
                .await
                .map(drop)
        }
    }))
    .await;
    assert_eq!(count_within_cap(devices, "register_device"), CAP);
    assert_eq!(
        ok(directory.devices(target).await, "devices").len(),
        CAP,
        "concurrent registrations stop at the device cap"
    );

    let owners = join_all((0..RACERS).map(|_| new_user(directory, "rgo"))).await;
    let groups = join_all(owners.iter().map(|o| async move {
        ok(
            directory
                .create_channel(
                    Channel {
                        id: ChannelId::new_random(),
                        kind: ChannelKind::Group,
                        name: "cap race".into(),
                        owner: Some(*o),
                        members: vec![*o],
                        created_at: 0,
                    },
                    &Limits::default(),
                )
                .await,
            "create_channel",
        )
        .id
    }))
    .await;
    let joins = join_all(groups.iter().map(|g| {
        let limits = &limits;
        async move { directory.add_member(*g, target, limits).await.map(drop) }
    }))
    .await;
    assert_eq!(count_within_cap(joins, "add_member"), CAP);
    assert_eq!(
        ok(
            directory.channels_of(target, None, 100).await,
            "channels_of"
        )
        .len(),
        CAP,
        "concurrent joins stop at the joined cap"
    );
}

/// How many of `results` succeeded, failing on any error but `LimitExceeded`.
fn count_within_cap(results: Vec<chat_core::Result<impl Sized>>, what: &str) -> usize {
    let mut n = 0;
    for r in results {
        match r {
            Ok(_) => n += 1,
            Err(Error::LimitExceeded { .. }) => {}
            Err(e) => panic!("concurrent {what} failed unexpectedly: {e}"),
        }
    }
    n
}

async fn racing_epochs(directory: &dyn Directory) {
    let user = new_user(directory, "rep").await;
    let epochs = join_all((0..RACERS).map(|_| async move {
        ok(
            directory.revoke_all_sessions(user).await,
            "concurrent revoke_all_sessions",
        )
    }))
    .await;
    let mut sorted = epochs.clone();
    sorted.sort_unstable();
    assert_eq!(
        sorted,
        (1..=RACERS).collect::<Vec<_>>(),
        "every concurrent revoke_all_sessions moves the epoch once"
    );
    assert_eq!(
        ok(directory.token_state(user, 0).await, "token_state").epoch,
        RACERS
    );
}

/// A friend request racing a block of its asker: answered `Blocked` with
/// nothing stored, or `Requested` with the request stored (it came first);
/// never `Blocked` with a request written, and never a request after the
/// block returned.
async fn requests_racing_blocks(directory: &dyn Directory) {
    type Racer<'a> =
        Pin<Box<dyn Future<Output = Option<chat_core::Result<chat_core::FriendOutcome>>> + 'a>>;
    let limits = chat_core::Limits::default();
    for round in 0..RACERS {
        let x = new_user(directory, "racer").await;
        let y = new_user(directory, "blocker").await;
        let mut results = join_all([
            Box::pin(async {
                ok(directory.block(y, x).await, "racing block");
                None
            }) as Racer<'_>,
            Box::pin(async { Some(directory.request_friend(x, y, 1_000, &limits).await) }),
        ])
        .await;
        let outcome = results.pop().flatten().expect("the request's answer");
        let stored = !ok(directory.friend_requests(y).await, "friend_requests").is_empty();
        match outcome {
            Err(chat_core::Error::Blocked) => assert!(
                !stored,
                "round {round}: a request answered Blocked wrote nothing"
            ),
            Ok(chat_core::FriendOutcome::Requested) => {
                assert!(
                    stored,
                    "round {round}: a request answered Requested is stored"
                )
            }
            other => panic!("round {round}: unexpected answer {other:?}"),
        }
        assert!(
            matches!(
                directory.request_friend(x, y, 2_000, &limits).await,
                Err(chat_core::Error::Blocked)
            ),
            "round {round}: after the block, requests are refused"
        );
    }
}
