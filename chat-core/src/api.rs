//! Request and response bodies of the stateless HTTP API, shared by the
//! server and the client SDK. `docs/protocol.md` lists every endpoint.
//!
//! Every endpoint except sign-up, log-in, refresh and `/healthz` needs
//! `Authorization: Bearer <access token>`. Errors are `{"error": WireError}`
//! with the HTTP status of
//! [`ErrorCode::http_status`](crate::protocol::ErrorCode::http_status).

use serde::{Deserialize, Serialize};

use crate::id::{ChannelId, DeviceId, MessageId, UserId};
use crate::protocol::WireError;
use crate::types::{Channel, Invitation, Message, Platform, Presence, User, WhoMayAdd};

/// `POST /v1/signup`
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SignupRequest {
    /// Unique login name.
    pub username: String,
    /// Password (8 to 1,024 bytes).
    pub password: String,
    /// Display name; the username if absent.
    #[serde(default)]
    pub display_name: Option<String>,
}

/// `POST /v1/login`
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoginRequest {
    /// Login name.
    pub username: String,
    /// Password.
    pub password: String,
}

/// Answer to sign-up, log-in and refresh.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuthResponse {
    /// Access token: the bearer token for HTTP and the WebSocket.
    pub token: String,
    /// When the access token expires, Unix milliseconds (15 minutes after
    /// issue by default).
    pub expires_at: u64,
    /// Refresh token: trades for a new access token at `POST /v1/refresh`
    /// (and is good for nothing else).
    pub refresh_token: String,
    /// When the refresh token expires, Unix milliseconds (30 days after
    /// issue by default).
    pub refresh_expires_at: u64,
    /// The user.
    pub user: User,
}

/// `POST /v1/refresh`
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RefreshRequest {
    /// The refresh token of [`AuthResponse::refresh_token`].
    pub refresh_token: String,
}

/// `PATCH /v1/me/privacy` — fields left out stay as they are; `GET` and
/// `PATCH` answer the settings as a [`Privacy`](crate::types::Privacy).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct UpdatePrivacyRequest {
    /// Who may add the caller to groups and open direct channels with them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub who_may_add: Option<WhoMayAdd>,
    /// Hide `last_active_at` from everyone else.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hide_last_seen: Option<bool>,
}

/// `PATCH /v1/me` — fields left out stay as they are.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct UpdateProfileRequest {
    /// New display name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    /// New "about" text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub about: Option<String>,
}

/// `GET /v1/users/{id}` answers a [`User`]; `GET /v1/friends` answers this.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UserList {
    /// The users.
    pub users: Vec<User>,
}

/// Where a friendship stands after `PUT /v1/friends/{user}`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum FriendStatus {
    /// A request is pending: the other user has not answered yet.
    Requested,
    /// They are friends (the call accepted their request, or they already were).
    Friends,
}

/// Answer of `PUT /v1/friends/{user}`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FriendAnswer {
    /// Where the friendship stands now.
    pub status: FriendStatus,
}

/// One pending friend request, as its sender or recipient sees it.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PendingFriend {
    /// The other user: who asks (incoming) or who is asked (outgoing).
    pub user: User,
    /// When it was asked, Unix milliseconds.
    pub created_at: u64,
}

/// Answer of `GET /v1/friends/requests`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FriendRequests {
    /// Requests to the caller, waiting for the caller's answer.
    pub incoming: Vec<PendingFriend>,
    /// Requests the caller sent, waiting for the other side.
    pub outgoing: Vec<PendingFriend>,
}

/// Answer of `GET /v1/invitations`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InvitationList {
    /// Invitations to the caller, waiting for the caller's answer.
    pub incoming: Vec<Invitation>,
    /// Invitations the caller sent, waiting for the invitees.
    pub outgoing: Vec<Invitation>,
}

/// `POST /v1/channels/direct` — open (or get) the direct channel with a user.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OpenDirectRequest {
    /// The other user.
    pub user: UserId,
}

/// `POST /v1/groups`
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreateGroupRequest {
    /// Group name (1 to 100 characters).
    pub name: String,
    /// Initial members besides the creator, who becomes owner.
    #[serde(default)]
    pub members: Vec<UserId>,
}

/// Answer of `POST /v1/groups` and `PUT /v1/groups/{id}/members/{user}`:
/// the group as it is now (a [`Channel`]'s fields) and who was invited
/// rather than added, because their privacy settings ask for that.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupChange {
    /// The group.
    #[serde(flatten)]
    pub channel: Channel,
    /// Users invited by this call (they join once they accept).
    #[serde(default)]
    pub invited: Vec<UserId>,
    /// Users of a new group's list that were neither added nor invited (a
    /// cap of theirs or of the caller's was reached); always empty when
    /// adding one member, which answers an error instead.
    #[serde(default)]
    pub refused: Vec<UserId>,
}

/// Query of `GET /v1/channels`: a page of the caller's channels by id.
#[cfg_attr(feature = "openapi", derive(utoipa::IntoParams), into_params(parameter_in = Query))]
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ChannelsQuery {
    /// Exclusive lower bound: the `next` of the previous page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<ChannelId>,
    /// Page size (default 50, at most [`MAX_CHANNEL_PAGE`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
}

/// Largest page of `GET /v1/channels`: a channel lists up to 100 members,
/// so a page stays under about half a megabyte.
pub const MAX_CHANNEL_PAGE: usize = 100;

/// Answer of `GET /v1/channels`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChannelList {
    /// The caller's channels, ascending by id.
    pub channels: Vec<Channel>,
    /// The cursor of the next page (pass it as `after`); absent on the last.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<ChannelId>,
    /// One summary per channel of `channels`, in the same order: the
    /// caller's unread count and read marker, the last message, and in a
    /// direct channel the other member's markers.
    #[serde(default)]
    pub summaries: Vec<ChannelSummary>,
}

/// Longest text of [`ChannelSummary::last_message`], in characters.
pub const LAST_MESSAGE_PREVIEW: usize = 200;

/// A channel as its list shows it to the caller (see `GET /v1/channels`).
/// Computed from stored markers and the channel's head, never from
/// history: see [`crate::receipts`].
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelSummary {
    /// The channel.
    pub channel: ChannelId,
    /// Messages after the caller's read marker (every message without
    /// one). The caller's own messages are read.
    pub unread: u64,
    /// The caller's read marker: the last message they have read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read: Option<MessageId>,
    /// The channel's last message, its content cut to its first
    /// [`LAST_MESSAGE_PREVIEW`] characters (`truncated` then says so;
    /// history has the whole text).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_message: Option<Message>,
    /// Whether `last_message`'s content was cut.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
    /// Direct channels: the other member's read marker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_read: Option<MessageId>,
    /// Direct channels: the last message a device of the other member has
    /// received.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_delivered: Option<MessageId>,
}

/// Query of `GET /v1/channels/{id}/messages` (see [`crate::Page`]).
#[cfg_attr(feature = "openapi", derive(utoipa::IntoParams), into_params(parameter_in = Query))]
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct HistoryQuery {
    /// Exclusive upper bound.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<MessageId>,
    /// Exclusive lower bound.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<MessageId>,
    /// Page size (default 50, at most 1,000; a page also stops at the
    /// server's byte limit, 256 KiB by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
}

/// A page of history.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MessagePage {
    /// Messages in ascending id order.
    pub messages: Vec<Message>,
    /// Whether more messages follow in the page's reading direction (the
    /// page stopped at its `limit` or at the server's byte limit).
    #[serde(default)]
    pub has_more: bool,
}

/// `PUT /v1/devices/{device_id}`
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RegisterDeviceRequest {
    /// Kind of client.
    pub platform: Platform,
    /// Push token, if the device wants push notifications.
    #[serde(default)]
    pub push_token: Option<String>,
}

/// Query of `GET /v1/route`.
#[cfg_attr(feature = "openapi", derive(utoipa::IntoParams), into_params(parameter_in = Query))]
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RouteQuery {
    /// The client's region, to prefer servers near it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
}

/// Answer of `GET /v1/route`: the chat server to open the WebSocket to.
/// Only what a client needs: server ids, capacities and loads stay
/// inside the deployment.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteResponse {
    /// The WebSocket URL to open (add `device`, `token` and `v`).
    pub ws_url: String,
}

/// Query of `GET /v1/presence?users=a,b,c`.
#[cfg_attr(feature = "openapi", derive(utoipa::IntoParams), into_params(parameter_in = Query))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PresenceQuery {
    /// Comma-separated user ids.
    pub users: String,
}

/// Answer of `GET /v1/presence`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PresenceList {
    /// One entry per asked user, in order.
    pub users: Vec<Presence>,
}

/// The body of every HTTP error.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    /// The error.
    pub error: WireError,
}

/// Query parameters of the WebSocket endpoint `GET /v1/ws`.
#[cfg_attr(feature = "openapi", derive(utoipa::IntoParams), into_params(parameter_in = Query))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConnectQuery {
    /// The device opening the connection.
    pub device: DeviceId,
    /// Bearer token (browsers cannot set headers on WebSocket requests;
    /// others may use the `Authorization` header instead).
    #[serde(default)]
    pub token: Option<String>,
    /// Protocol version the client speaks (default 1).
    #[serde(default)]
    pub v: Option<u32>,
}
