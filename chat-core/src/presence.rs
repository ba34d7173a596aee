//! Presence: who is online, from heartbeats.

use std::fmt::Debug;

use async_trait::async_trait;

use crate::error::Result;
use crate::id::{DeviceId, UserId};
use crate::types::Presence;

/// Tracks heartbeats per device and derives each user's status.
///
/// Time is passed in (`now_ms`, Unix milliseconds) rather than read, so the
/// caller's clock rules and tests can drive it.
///
/// # Contract
///
/// * A device is **alive** from a heartbeat until `timeout` (the tracker's
///   configured presence timeout, 30 s by default) passes without another.
///   A user is **online** while any device is alive.
/// * [`heartbeat`](Self::heartbeat) returns `Some(presence)` exactly when it
///   turns the user from offline to online, `None` otherwise.
/// * [`disconnect`](Self::disconnect) marks the device as no longer connected
///   but does **not** end its liveness: a reconnect within the timeout does
///   not flap the status.
/// * [`expire`](Self::expire) ends the liveness of devices whose last
///   heartbeat is older than `now_ms - timeout` and returns each user who
///   thereby went offline, once, with `last_active_at` = the time of their
///   last heartbeat. Status changes happen only in `heartbeat` and `expire`.
/// * `last_active_at` is kept after a user goes offline.
/// * **Several trackers, one store**: a tracker per chat server on one shared
///   store behaves as one tracker. A user is online while any device is
///   alive on any server; each offline change is returned by exactly one
///   `expire` call, however many servers sweep at once; a device that
///   reconnects to another server within the timeout does not flap; and a
///   `disconnect` only ends the connection this tracker recorded (a late
///   close on the old server leaves the device connected on the new one).
/// * A connection counts for [`connected`](Self::connected) only while its
///   device's heartbeats through that tracker are within the timeout, so the
///   connections of a server that died without closing them stop counting.
#[async_trait]
pub trait PresenceTracker: Send + Sync + Debug + 'static {
    /// Records a heartbeat (or a new connection) from a device.
    async fn heartbeat(
        &self,
        user: UserId,
        device: DeviceId,
        now_ms: u64,
    ) -> Result<Option<Presence>>;

    /// Records that a device's connection closed.
    async fn disconnect(&self, user: UserId, device: DeviceId, now_ms: u64) -> Result<()>;

    /// Expires silent devices; returns users who went offline.
    async fn expire(&self, now_ms: u64) -> Result<Vec<Presence>>;

    /// Presence of each user, in the given order.
    async fn status(&self, users: &[UserId]) -> Result<Vec<Presence>>;

    /// Which of `users` have at least one device connected at `now_ms` (used
    /// to decide who gets a push notification).
    async fn connected(&self, users: &[UserId], now_ms: u64) -> Result<Vec<UserId>>;
}
