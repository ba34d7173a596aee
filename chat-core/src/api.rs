//! Request and response bodies of the stateless HTTP API, shared by the
//! server and the client SDK. `docs/protocol.md` lists every endpoint.
//!
//! Every endpoint except sign-up, log-in, `/healthz` and `route` needs
//! `Authorization: Bearer <token>`. Errors are `{"error": WireError}` with the
//! HTTP status of [`ErrorCode::http_status`](crate::protocol::ErrorCode::http_status).

use serde::{Deserialize, Serialize};

use crate::discovery::ServerInfo;
use crate::id::{DeviceId, MessageId, UserId};
use crate::protocol::WireError;
use crate::types::{Channel, Message, Platform, Presence, User};

/// `POST /v1/signup`
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
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoginRequest {
    /// Login name.
    pub username: String,
    /// Password.
    pub password: String,
}

/// Answer to sign-up and log-in.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuthResponse {
    /// Bearer token for HTTP and the WebSocket.
    pub token: String,
    /// When the token expires, Unix milliseconds.
    pub expires_at: u64,
    /// The user.
    pub user: User,
}

/// `PATCH /v1/me` — fields left out stay as they are.
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
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UserList {
    /// The users.
    pub users: Vec<User>,
}

/// `POST /v1/channels/direct` — open (or get) the direct channel with a user.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OpenDirectRequest {
    /// The other user.
    pub user: UserId,
}

/// `POST /v1/groups`
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreateGroupRequest {
    /// Group name (1 to 100 characters).
    pub name: String,
    /// Initial members besides the creator, who becomes owner.
    #[serde(default)]
    pub members: Vec<UserId>,
}

/// `GET /v1/channels`
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChannelList {
    /// The caller's channels.
    pub channels: Vec<Channel>,
}

/// Query of `GET /v1/channels/{id}/messages` (see [`crate::Page`]).
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
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RegisterDeviceRequest {
    /// Kind of client.
    pub platform: Platform,
    /// Push token, if the device wants push notifications.
    #[serde(default)]
    pub push_token: Option<String>,
}

/// Query of `GET /v1/route`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RouteQuery {
    /// The client's region, to prefer servers near it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
}

/// Answer of `GET /v1/route`: the chat server to open the WebSocket to.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RouteResponse {
    /// The chosen server.
    pub server: ServerInfo,
}

/// Query of `GET /v1/presence?users=a,b,c`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PresenceQuery {
    /// Comma-separated user ids.
    pub users: String,
}

/// Answer of `GET /v1/presence`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PresenceList {
    /// One entry per asked user, in order.
    pub users: Vec<Presence>,
}

/// The body of every HTTP error.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    /// The error.
    pub error: WireError,
}

/// Query parameters of the WebSocket endpoint `GET /v1/ws`.
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
