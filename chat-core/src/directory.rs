//! The directory: users, credentials and privacy settings, friends and
//! friend requests, channels, their members and invitations, devices.
//! Generic relational data in the design.

use std::fmt::Debug;

use async_trait::async_trait;

use crate::error::Result;
use crate::id::{ChannelId, DeviceId, UserId};
use crate::types::{Channel, Device, FriendRequest, Invitation, Privacy, Profile, User};

/// A user with the stored password hash, as the login path needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRecord {
    /// The user.
    pub user: User,
    /// PHC-format password hash (Argon2id in the reference server).
    pub password_hash: String,
}

/// The caps a directory enforces, atomically with the writes they bound
/// (see the [`Directory`] contract). [`Limits::default`] gives the
/// reference server's defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most members of a group.
    pub group_members: usize,
    /// Most registered devices of one user.
    pub devices: usize,
    /// Most friends of one user.
    pub friends: usize,
    /// Most groups one user is a member of (owned ones included).
    pub groups_joined: usize,
    /// Most groups one user owns.
    pub groups_owned: usize,
    /// Most pending requests one user has sent: friend requests plus group
    /// invitations.
    pub pending_sent: usize,
    /// Most pending requests one user has received: friend requests plus
    /// group invitations.
    pub pending_received: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            group_members: 100,
            devices: crate::push::MAX_PUSH_DEVICES,
            friends: 1_000,
            groups_joined: 500,
            groups_owned: 100,
            pending_sent: 100,
            pending_received: 1_000,
        }
    }
}

/// Most revoked sessions kept per user; see [`Directory::revoke_session`].
pub const MAX_REVOKED_SESSIONS: usize = 1_000;

/// What [`Directory::request_friend`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FriendOutcome {
    /// A new request from `from` to `to` is stored.
    Requested,
    /// The same request was already pending; nothing changed.
    AlreadyRequested,
    /// `to` had asked `from`: that request is accepted and they are friends.
    Accepted,
    /// They were friends already; nothing changed.
    AlreadyFriends,
}

/// What [`Directory::invite`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InviteOutcome {
    /// A new invitation is stored.
    Invited,
    /// The user was already invited to this group; nothing changed.
    AlreadyInvited,
    /// The user is already a member; nothing changed.
    AlreadyMember,
}

/// A user related to another (a friend, or a co-member of a channel), with
/// the privacy settings that decide what the other sees of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Contact {
    /// The user.
    pub user: UserId,
    /// The user's privacy settings.
    pub privacy: Privacy,
}

/// Whether the tokens of one session of a user are still good.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TokenState {
    /// The user's token epoch: tokens issued under an older one are revoked.
    pub epoch: u64,
    /// Whether this session was revoked (logged out).
    pub revoked: bool,
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
/// * **Unknown users** named in a friend request, in a new channel's members,
///   in `add_member`, `invite` or `register_device`, and the user of
///   `privacy`, `set_privacy` and the token calls, are refused with
///   `NotFound`. Users are never deleted.
/// * **Privacy**: every user has [`Privacy`] settings,
///   [`Privacy::default`] until [`set_privacy`](Self::set_privacy) replaces
///   them. They are stored only; the server enforces them.
/// * **Friendship is consent on both sides.**
///   [`request_friend(from, to)`](Self::request_friend) is atomic with
///   respect to every other friend call of the same two users:
///   - when they are friends already: `AlreadyFriends`, nothing changes;
///   - when `to` has a pending request to `from`: that request is
///     accepted — it is removed and the two become friends (symmetric) in
///     one write — `Accepted`;
///   - when `from` already has a pending request to `to`: `AlreadyRequested`,
///     nothing changes (a duplicate is a no-op, keeping the first
///     request's time);
///   - otherwise a request `from → to` is stored: `Requested`.
///
///   Before any of these, a request from a user `to` blocks
///   ([`block(to, from)`](Self::block)) is refused with
///   [`Error::Blocked`](crate::Error::Blocked), writing nothing (an
///   acceptance too). The check is atomic with the request: a request that
///   starts after `block` returned is refused, and one answered `Blocked`
///   wrote nothing.
///
///   So two users asking each other at the same time end as friends, with
///   no request left in either direction: exactly one call answers
///   `Requested` and the other `Accepted`. Caps (`LimitExceeded`, nothing
///   written): a new request needs `from` below [`Limits::pending_sent`]
///   and `to` below [`Limits::pending_received`]; an acceptance needs both
///   below [`Limits::friends`]. `request_friend(a, a)` is `InvalidInput`.
///   [`remove_friend(a, b)`](Self::remove_friend) removes the friendship
///   and any pending request between them in either direction (unfriend,
///   decline and cancel are this one call); removing nothing is a no-op.
/// * **Channels**: `create_channel` of a direct channel whose id already
///   exists returns the stored channel (idempotent, so two servers opening
///   the same conversation agree); of a group with an existing id fails with
///   `AlreadyExists`. Members are kept sorted and without duplicates. A new
///   group needs its owner below [`Limits::groups_owned`] and every member
///   below [`Limits::groups_joined`] (`LimitExceeded`, nothing written);
///   direct channels count toward neither.
/// * **Membership changes are atomic** per channel and per user:
///   [`add_member`](Self::add_member) fails with
///   [`Error::LimitExceeded`](crate::Error::LimitExceeded) when the channel
///   already has [`Limits::group_members`] or the user is in
///   [`Limits::groups_joined`] groups, and adding a present member is a
///   no-op. Adding a member removes that user's pending invitation to the
///   group in the same write. Direct channels' members cannot change, and a
///   group's owner cannot be removed (both `InvalidInput`).
/// * **Invitations** are keyed by `(group, invitee)`:
///   [`invite`](Self::invite) of a member is `AlreadyMember` and of an
///   invitee already invited `AlreadyInvited` (the first invitation is
///   kept), neither writing; a new invitation needs the inviter below
///   [`Limits::pending_sent`] and the invitee below
///   [`Limits::pending_received`] (`LimitExceeded`). Only groups take
///   invitations (`InvalidInput` for a direct channel).
///   [`accept_invitation`](Self::accept_invitation) removes the invitation
///   and adds the member in one write, under the same caps as `add_member`;
///   refused, it leaves the invitation in place; without an invitation it
///   is `NotFound`. [`remove_invitation`](Self::remove_invitation) (decline
///   or withdraw) is idempotent.
/// * **Pending requests count** friend requests and invitations together,
///   per sender and per recipient, and the caps above are checked
///   atomically with the write they bound: concurrent callers never take a
///   user past a cap.
/// * **Listings**: `friends` sorted by id; `friend_requests` (sent and
///   received) sorted by `(from, to)`; `invitations` (sent and received)
///   sorted by `(invitee, channel)`; `channels_of` pages a user's channels
///   by id after a cursor; `devices` sorted by device id.
///   [`contacts(user, among)`](Self::contacts) is the users of `among`
///   who are `user`'s friends or share a channel with `user`, in the order
///   of `among`, each once, never `user`, each with their privacy settings
///   (one snapshot).
/// * **Devices** are keyed by `(user, device id)`; registering again replaces
///   platform and push token. A new device needs the user below
///   [`Limits::devices`] (`LimitExceeded`); replacing one is always allowed.
/// * **Clearing a push token is a compare-and-clear**:
///   [`clear_push_token`](Self::clear_push_token) removes the device's push
///   token only if the device exists and still holds exactly the given
///   token, atomically with respect to `register_device` and
///   `remove_device` of the same device: it never overwrites a token
///   registered meanwhile and never re-creates a removed device. It returns
///   whether it cleared the token; the device, its platform and its
///   registration time are otherwise unchanged.
/// * **Tokens**: every user has a token epoch, starting at 0.
///   [`revoke_all_sessions`](Self::revoke_all_sessions) increments it
///   (atomically: concurrent calls each count) and forgets revoked
///   sessions, which the new epoch covers.
///   [`revoke_session`](Self::revoke_session) records one session as
///   revoked until a time, after which its record may be dropped (every
///   token of it has expired by then); a user holds at most
///   [`MAX_REVOKED_SESSIONS`] records, and a revocation beyond that revokes
///   every session instead (epoch + 1), never fewer than asked.
///   [`token_state`](Self::token_state) reads the epoch and whether a
///   session is revoked, in one snapshot.
/// * **Blocking**: [`block(user, target)`](Self::block) records that
///   `user` blocks `target` (`NotFound` for an unknown target,
///   `InvalidInput` for oneself; idempotent); [`unblock`](Self::unblock)
///   removes the record (idempotent). A block is one-way and changes
///   nothing else (friendship, channels, requests stay). While it holds,
///   [`contacts(target, ..)`](Self::contacts) leaves `user` out (so
///   `target` sees no presence of `user`), and the message store refuses
///   `target`'s friend requests to `user` (see above) and `target`'s
///   commits to the direct channel of the two with
///   [`Error::Blocked`](crate::Error::Blocked) (see
///   [`MessageStore::commit`](crate::MessageStore::commit)), in order with
///   the block: a commit that starts after `block` returned is refused.
///   Groups are not affected.
/// * **Expiry**: only the records of revoked sessions expire.
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

    /// A user's privacy settings.
    async fn privacy(&self, user: UserId) -> Result<Privacy>;

    /// Replaces a user's privacy settings.
    async fn set_privacy(&self, user: UserId, privacy: Privacy) -> Result<Privacy>;

    /// The token epoch of `user` and whether `session` is revoked.
    async fn token_state(&self, user: UserId, session: u64) -> Result<TokenState>;

    /// Revokes `session` of `user` until `until` (Unix ms); drops records
    /// that expired by `now`.
    async fn revoke_session(&self, user: UserId, session: u64, until: u64, now: u64) -> Result<()>;

    /// Revokes every token of `user`; returns the new epoch.
    async fn revoke_all_sessions(&self, user: UserId) -> Result<u64>;

    /// Asks `to` to be `from`'s friend, or accepts `to`'s pending request
    /// (see the contract).
    async fn request_friend(
        &self,
        from: UserId,
        to: UserId,
        now: u64,
        limits: &Limits,
    ) -> Result<FriendOutcome>;

    /// Ends the friendship of `a` and `b` and drops any pending request
    /// between them.
    async fn remove_friend(&self, a: UserId, b: UserId) -> Result<()>;

    /// A user's friends, sorted by id.
    async fn friends(&self, user: UserId) -> Result<Vec<UserId>>;

    /// Pending friend requests sent or received by `user`, sorted by
    /// `(from, to)`.
    async fn friend_requests(&self, user: UserId) -> Result<Vec<FriendRequest>>;

    /// The users of `among` who are `user`'s friends or share a channel
    /// with `user`, in the order given, each once, with their privacy
    /// settings; never one who has blocked `user`.
    async fn contacts(&self, user: UserId, among: &[UserId]) -> Result<Vec<Contact>>;

    /// `user` blocks `target` (see the contract); blocking again is a no-op.
    async fn block(&self, user: UserId, target: UserId) -> Result<()>;

    /// `user` unblocks `target`; unblocking a user not blocked is a no-op.
    async fn unblock(&self, user: UserId, target: UserId) -> Result<()>;

    /// The users `user` has blocked, sorted by id.
    async fn blocked(&self, user: UserId) -> Result<Vec<UserId>>;

    /// Creates a channel (see the contract for direct channels and caps).
    async fn create_channel(&self, channel: Channel, limits: &Limits) -> Result<Channel>;

    /// A channel by id.
    async fn channel(&self, id: ChannelId) -> Result<Option<Channel>>;

    /// Adds a member unless the group or the user is at a cap.
    async fn add_member(
        &self,
        channel: ChannelId,
        user: UserId,
        limits: &Limits,
    ) -> Result<Channel>;

    /// Removes a member (no-op if absent).
    async fn remove_member(&self, channel: ChannelId, user: UserId) -> Result<Channel>;

    /// Up to `limit` of the channels `user` is a member of with an id above
    /// `after`, sorted by id.
    async fn channels_of(
        &self,
        user: UserId,
        after: Option<ChannelId>,
        limit: usize,
    ) -> Result<Vec<Channel>>;

    /// Invites `user` to group `channel` on behalf of `inviter`.
    async fn invite(
        &self,
        channel: ChannelId,
        user: UserId,
        inviter: UserId,
        now: u64,
        limits: &Limits,
    ) -> Result<InviteOutcome>;

    /// Pending invitations sent or received by `user`, sorted by
    /// `(invitee, channel)`.
    async fn invitations(&self, user: UserId) -> Result<Vec<Invitation>>;

    /// Accepts `user`'s invitation to `channel`: joins the group.
    async fn accept_invitation(
        &self,
        channel: ChannelId,
        user: UserId,
        limits: &Limits,
    ) -> Result<Channel>;

    /// Drops `user`'s invitation to `channel`; `true` if there was one.
    async fn remove_invitation(&self, channel: ChannelId, user: UserId) -> Result<bool>;

    /// Registers or updates a device.
    async fn register_device(&self, device: Device, limits: &Limits) -> Result<Device>;

    /// A user's devices, sorted by device id.
    async fn devices(&self, user: UserId) -> Result<Vec<Device>>;

    /// Removes a device (no-op if absent).
    async fn remove_device(&self, user: UserId, device: DeviceId) -> Result<()>;

    /// Clears the push token of `user`'s `device` if the device exists and
    /// its token is exactly `token` (see the contract); `Ok(true)` if it
    /// did. Used when a push platform reports `token` invalid.
    async fn clear_push_token(&self, user: UserId, device: DeviceId, token: &str) -> Result<bool>;
}
