//! The [`PresenceTracker`] suite: online once and offline after the
//! timeout, devices, `last_active_at`, disconnects that do not flap, and
//! the multi-server clauses: several trackers on one store, a reconnect to
//! another server, and concurrent sweeps that report each offline change
//! exactly once.
//!
//! Time is passed in, so the suite drives it: no sleeping.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use chat_core::{DeviceId, PresenceStatus, PresenceTracker, UserId};

/// The presence timeout the suite runs with, milliseconds.
pub const TIMEOUT: u64 = 30_000;

/// A base time well after the epoch, so clock arithmetic never wraps.
const T0: u64 = 1_700_000_000_000;

/// Makes trackers for the suite.
#[async_trait]
pub trait PresenceStores: Send + Sync {
    /// `n` trackers (one per simulated chat server) on one fresh, empty
    /// store, with a presence timeout of `timeout_ms`.
    async fn trackers(&self, timeout_ms: u64, n: usize) -> Vec<Arc<dyn PresenceTracker>>;
}

async fn one(stores: &dyn PresenceStores) -> Arc<dyn PresenceTracker> {
    stores
        .trackers(TIMEOUT, 1)
        .await
        .pop()
        .expect("one tracker")
}

async fn status_of(p: &dyn PresenceTracker, u: UserId) -> (PresenceStatus, Option<u64>) {
    let s = p.status(&[u]).await.expect("status");
    assert_eq!(s.len(), 1);
    assert_eq!(s[0].user, u);
    (s[0].status, s[0].last_active_at)
}

/// Runs every test of the suite.
pub async fn run_all(stores: &dyn PresenceStores) {
    online_once_offline_after_timeout(stores).await;
    online_while_any_device_is_alive(stores).await;
    disconnect_keeps_liveness(stores).await;
    status_in_order_and_unknown_users(stores).await;
    reconnect_to_another_server_does_not_flap(stores).await;
    late_close_on_old_server_keeps_new_connection(stores).await;
    dead_servers_connections_stop_counting(stores).await;
    concurrent_sweeps_report_offline_once(stores).await;
}

/// The first heartbeat reports online, later ones nothing; `expire` reports
/// offline once, with `last_active_at` the last heartbeat, which is kept;
/// a heartbeat after that reports online again.
pub async fn online_once_offline_after_timeout(stores: &dyn PresenceStores) {
    let p = one(stores).await;
    let (u, d) = (UserId::new_random(), DeviceId::new_random());
    let on = p.heartbeat(u, d, T0).await.expect("heartbeat");
    let on = on.expect("the first heartbeat turns the user online");
    assert_eq!(on.user, u);
    assert_eq!(on.status, PresenceStatus::Online);
    assert_eq!(on.last_active_at, Some(T0));
    assert!(p.heartbeat(u, d, T0 + 5_000).await.expect("hb").is_none());
    assert_eq!(
        status_of(&*p, u).await,
        (PresenceStatus::Online, Some(T0 + 5_000))
    );
    // Alive until exactly TIMEOUT after the last heartbeat.
    assert!(p
        .expire(T0 + 5_000 + TIMEOUT - 1)
        .await
        .expect("expire")
        .is_empty());
    let gone = p.expire(T0 + 5_000 + TIMEOUT).await.expect("expire");
    assert_eq!(gone.len(), 1);
    assert_eq!(gone[0].user, u);
    assert_eq!(gone[0].status, PresenceStatus::Offline);
    assert_eq!(gone[0].last_active_at, Some(T0 + 5_000));
    assert!(p.expire(T0 + 100_000).await.expect("expire").is_empty());
    assert_eq!(
        status_of(&*p, u).await,
        (PresenceStatus::Offline, Some(T0 + 5_000)),
        "last_active_at is kept after going offline"
    );
    let again = p.heartbeat(u, d, T0 + 200_000).await.expect("hb");
    assert_eq!(again.map(|p| p.status), Some(PresenceStatus::Online));
}

/// A user stays online while any device is alive.
pub async fn online_while_any_device_is_alive(stores: &dyn PresenceStores) {
    let p = one(stores).await;
    let u = UserId::new_random();
    let (d1, d2) = (DeviceId::new_random(), DeviceId::new_random());
    assert!(p.heartbeat(u, d1, T0).await.expect("hb").is_some());
    assert!(p.heartbeat(u, d2, T0 + 20_000).await.expect("hb").is_none());
    // d1 is silent past the timeout, d2 is not.
    assert!(p.expire(T0 + TIMEOUT + 1).await.expect("expire").is_empty());
    assert_eq!(status_of(&*p, u).await.0, PresenceStatus::Online);
    let gone = p.expire(T0 + 20_000 + TIMEOUT).await.expect("expire");
    assert_eq!(gone.iter().map(|p| p.user).collect::<Vec<_>>(), vec![u]);
    assert_eq!(gone[0].last_active_at, Some(T0 + 20_000));
}

/// `disconnect` ends the connection (for `connected`) but not the
/// liveness: no offline change until the timeout.
pub async fn disconnect_keeps_liveness(stores: &dyn PresenceStores) {
    let p = one(stores).await;
    let (u, d) = (UserId::new_random(), DeviceId::new_random());
    p.heartbeat(u, d, T0).await.expect("hb");
    assert_eq!(p.connected(&[u], T0 + 1).await.expect("connected"), vec![u]);
    p.disconnect(u, d, T0 + 1_000).await.expect("disconnect");
    assert!(p
        .connected(&[u], T0 + 1_000)
        .await
        .expect("connected")
        .is_empty());
    assert!(p.expire(T0 + 10_000).await.expect("expire").is_empty());
    assert_eq!(status_of(&*p, u).await.0, PresenceStatus::Online);
    // A disconnect of a device never seen is not an error.
    p.disconnect(UserId::new_random(), DeviceId::new_random(), T0)
        .await
        .expect("disconnect unknown");
    assert_eq!(p.expire(T0 + TIMEOUT).await.expect("expire").len(), 1);
}

/// `status` answers in the order asked, unknown users offline and never
/// seen; `connected` keeps only connected users.
pub async fn status_in_order_and_unknown_users(stores: &dyn PresenceStores) {
    let p = one(stores).await;
    let users: Vec<UserId> = (0..5).map(|_| UserId::new_random()).collect();
    p.heartbeat(users[1], DeviceId::new_random(), T0)
        .await
        .expect("hb");
    p.heartbeat(users[3], DeviceId::new_random(), T0 + 7)
        .await
        .expect("hb");
    let st = p.status(&users).await.expect("status");
    assert_eq!(st.iter().map(|s| s.user).collect::<Vec<_>>(), users);
    let online: Vec<bool> = st
        .iter()
        .map(|s| s.status == PresenceStatus::Online)
        .collect();
    assert_eq!(online, vec![false, true, false, true, false]);
    assert_eq!(st[0].last_active_at, None);
    assert_eq!(st[3].last_active_at, Some(T0 + 7));
    let mut connected = p.connected(&users, T0 + 10).await.expect("connected");
    connected.sort();
    let mut expect = vec![users[1], users[3]];
    expect.sort();
    assert_eq!(connected, expect);
    assert!(p.status(&[]).await.expect("status").is_empty());
}

/// A device that moves to another server within the timeout does not flap:
/// no offline change, no second online change.
pub async fn reconnect_to_another_server_does_not_flap(stores: &dyn PresenceStores) {
    let ts = stores.trackers(TIMEOUT, 2).await;
    let (s1, s2) = (&ts[0], &ts[1]);
    let (u, d) = (UserId::new_random(), DeviceId::new_random());
    assert!(s1.heartbeat(u, d, T0).await.expect("hb").is_some());
    s1.disconnect(u, d, T0 + 10_000).await.expect("disconnect");
    assert!(
        s2.heartbeat(u, d, T0 + 20_000).await.expect("hb").is_none(),
        "still online: no second online change"
    );
    // Past the first heartbeat's timeout, not the second's.
    assert!(s1
        .expire(T0 + TIMEOUT + 5_000)
        .await
        .expect("expire")
        .is_empty());
    assert!(s2
        .expire(T0 + TIMEOUT + 5_000)
        .await
        .expect("expire")
        .is_empty());
    assert_eq!(status_of(&**s1, u).await.0, PresenceStatus::Online);
    assert_eq!(status_of(&**s2, u).await.0, PresenceStatus::Online);
}

/// The old server notices the closed connection only after the device
/// reconnected elsewhere: the device stays connected.
pub async fn late_close_on_old_server_keeps_new_connection(stores: &dyn PresenceStores) {
    let ts = stores.trackers(TIMEOUT, 2).await;
    let (old, new) = (&ts[0], &ts[1]);
    let (u, d) = (UserId::new_random(), DeviceId::new_random());
    old.heartbeat(u, d, T0).await.expect("hb");
    new.heartbeat(u, d, T0 + 1_000).await.expect("hb");
    old.disconnect(u, d, T0 + 2_000).await.expect("disconnect");
    for t in [&old, &new] {
        assert_eq!(
            t.connected(&[u], T0 + 2_000).await.expect("connected"),
            vec![u],
            "connected on the new server"
        );
    }
}

/// A server that dies never calls `disconnect`: its connections stop
/// counting once their heartbeats are older than the timeout.
pub async fn dead_servers_connections_stop_counting(stores: &dyn PresenceStores) {
    let ts = stores.trackers(TIMEOUT, 2).await;
    let (dead, alive) = (&ts[0], &ts[1]);
    let (u, d) = (UserId::new_random(), DeviceId::new_random());
    dead.heartbeat(u, d, T0).await.expect("hb");
    assert_eq!(alive.connected(&[u], T0 + 1_000).await.expect("c"), vec![u]);
    assert!(alive
        .connected(&[u], T0 + TIMEOUT)
        .await
        .expect("connected")
        .is_empty());
}

/// Many users going offline while two servers sweep at the same time: each
/// offline change is reported once in all, each with its own
/// `last_active_at`.
pub async fn concurrent_sweeps_report_offline_once(stores: &dyn PresenceStores) {
    let ts = stores.trackers(TIMEOUT, 2).await;
    let users: Vec<UserId> = (0..300).map(|_| UserId::new_random()).collect();
    for (i, u) in users.iter().enumerate() {
        let t = &ts[i % 2];
        let at = T0 + i as u64;
        assert!(t
            .heartbeat(*u, DeviceId::new_random(), at)
            .await
            .expect("hb")
            .is_some());
    }
    let mut reported: HashMap<UserId, Vec<Option<u64>>> = HashMap::new();
    // Several rounds of two concurrent sweeps each, the clock moving past
    // the users' deadlines a few at a time.
    for step in 0..=10u64 {
        let now = T0 + TIMEOUT + step * 30;
        let (a, b) = tokio::join!(ts[0].expire(now), ts[1].expire(now));
        for p in a.expect("expire").into_iter().chain(b.expect("expire")) {
            assert_eq!(p.status, PresenceStatus::Offline);
            reported.entry(p.user).or_default().push(p.last_active_at);
        }
    }
    assert_eq!(reported.len(), users.len(), "every user went offline");
    for (i, u) in users.iter().enumerate() {
        assert_eq!(
            reported[u],
            vec![Some(T0 + i as u64)],
            "user {i} reported {} times",
            reported[u].len()
        );
    }
}
