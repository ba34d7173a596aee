//! The directory: users, credentials, friends, channels and their members,
//! devices. Generic relational data in the design.

use std::fmt::Debug;

use async_trait::async_trait;

use crate::error::Result;
use crate::id::{ChannelId, DeviceId, UserId};
use crate::types::{Channel, Device, Profile, User};

/// A user with the stored password hash, as the login path needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRecord {
    /// The user.
    pub user: User,
    /// PHC-format password hash (Argon2id in the reference server).
    pub password_hash: String,
}

/// Users, friends, channels and devices.
///
/// # Contract
///
/// * **Uniqueness**: usernames are unique;
///   [`create_user`](Self::create_user) with a taken name fails with
///   [`Error::AlreadyExists`](crate::Error::AlreadyExists) and writes nothing.
///   A username that fails [`validate_username`](crate::types::validate_username)
///   is refused with `InvalidInput` ([`rules::validate_new_user`](crate::rules::validate_new_user)).
/// * **Unknown users** named in `add_friend`, in a new channel's members, in
///   `add_member` or in `register_device` are refused with `NotFound`.
/// * **Friends** are symmetric: `add_friend(a, b)` makes each the other's
///   friend. Adding an existing friendship or removing a missing one is a
///   no-op, not an error. `add_friend(a, a)` is `InvalidInput`.
/// * **Channels**: `create_channel` of a direct channel whose id already
///   exists returns the stored channel (idempotent, so two servers opening
///   the same conversation agree); of a group with an existing id fails with
///   `AlreadyExists`. Members are kept sorted and without duplicates.
/// * **Membership changes are atomic** per channel:
///   [`add_member`](Self::add_member) fails with
///   [`Error::LimitExceeded`](crate::Error::LimitExceeded) when the channel
///   already has `max_members`, and adding a present member is a no-op.
///   Direct channels' members cannot change, and a group's owner cannot be
///   removed (both `InvalidInput`).
/// * **Devices** are keyed by `(user, device id)`; registering again replaces
///   platform and push token. [`devices`](Self::devices) lists them sorted
///   by device id.
/// * **Clearing a push token is a compare-and-clear**:
///   [`clear_push_token`](Self::clear_push_token) removes the device's push
///   token only if the device exists and still holds exactly the given
///   token, atomically with respect to `register_device` and
///   `remove_device` of the same device: it never overwrites a token
///   registered meanwhile and never re-creates a removed device. It returns
///   whether it cleared the token; the device, its platform and its
///   registration time are otherwise unchanged.
/// * **Expiry**: none.
#[async_trait]
pub trait Directory: Send + Sync + Debug + 'static {
    /// Creates a user with a unique username.
    async fn create_user(&self, record: UserRecord) -> Result<User>;

    /// A user by id.
    async fn user(&self, id: UserId) -> Result<Option<User>>;

    /// A user and password hash by username (for login).
    async fn user_by_name(&self, username: &str) -> Result<Option<UserRecord>>;

    /// Replaces a user's profile.
    async fn update_profile(&self, id: UserId, profile: Profile) -> Result<User>;

    /// Makes `a` and `b` friends.
    async fn add_friend(&self, a: UserId, b: UserId) -> Result<()>;

    /// Ends the friendship of `a` and `b`.
    async fn remove_friend(&self, a: UserId, b: UserId) -> Result<()>;

    /// A user's friends, sorted by id.
    async fn friends(&self, user: UserId) -> Result<Vec<UserId>>;

    /// Creates a channel (see the contract for direct channels).
    async fn create_channel(&self, channel: Channel) -> Result<Channel>;

    /// A channel by id.
    async fn channel(&self, id: ChannelId) -> Result<Option<Channel>>;

    /// Adds a member unless the channel is full.
    async fn add_member(
        &self,
        channel: ChannelId,
        user: UserId,
        max_members: usize,
    ) -> Result<Channel>;

    /// Removes a member (no-op if absent).
    async fn remove_member(&self, channel: ChannelId, user: UserId) -> Result<Channel>;

    /// The channels `user` is a member of, sorted by id.
    async fn channels_of(&self, user: UserId) -> Result<Vec<Channel>>;

    /// Registers or updates a device.
    async fn register_device(&self, device: Device) -> Result<Device>;

    /// A user's devices, sorted by device id.
    async fn devices(&self, user: UserId) -> Result<Vec<Device>>;

    /// Removes a device (no-op if absent).
    async fn remove_device(&self, user: UserId, device: DeviceId) -> Result<()>;

    /// Clears the push token of `user`'s `device` if the device exists and
    /// its token is exactly `token` (see the contract); `Ok(true)` if it
    /// did. Used when a push platform reports `token` invalid.
    async fn clear_push_token(&self, user: UserId, device: DeviceId, token: &str) -> Result<bool>;
}
