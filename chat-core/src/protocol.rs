//! The WebSocket wire protocol, version 2.
//!
//! JSON text frames. The client sends [`ClientFrame`]s, each a request with a
//! client-chosen request id; the server answers every request with exactly one
//! [`ServerFrame::Reply`] carrying the same id, holding either a result or a
//! [`WireError`]. Everything else the server sends is a
//! [`ServerFrame::Event`], never confused with a reply. The first frame on a
//! connection is [`ServerFrame::Welcome`]. `docs/protocol.md` shows every
//! frame.

use serde::{Deserialize, Serialize};

use crate::changes::Change;
use crate::error::Error;
use crate::id::{ChannelId, ClientMsgId, DeviceId, MessageId, UserId};
use crate::store::{InboxEntry, Seq};
use crate::types::{Invitation, Message, Presence, User};

/// The protocol version this crate speaks.
///
/// Version 2 moved cursors and sync from message ids to inbox positions
/// ([`Seq`]); version 1 is no longer spoken.
pub const PROTOCOL_VERSION: u32 = 2;

/// A request from the client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClientFrame {
    /// Client-chosen request id, echoed in the reply (1 to 64 bytes).
    pub id: String,
    /// What is asked.
    #[serde(flatten)]
    pub request: Request,
}

/// The requests a client can make over the WebSocket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Request {
    /// Post a message. Idempotent on `client_msg_id`: a retry returns the
    /// original id with `duplicate: true`.
    Send {
        /// Target channel (the sender must be a member).
        channel: ChannelId,
        /// The idempotency key.
        client_msg_id: ClientMsgId,
        /// Text, at most the server's limit (100,000 characters by default).
        content: String,
        /// The message of the same channel this one replies to. A message
        /// of another channel (or none) is refused with `not_found`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reply_to: Option<MessageId>,
        /// Files to attach (at most 10): ids of the sender's own uploads
        /// (`POST /v1/attachments`). An id that is unknown or another
        /// user's upload is refused with `not_found`; one already shared in
        /// another channel with `conflict`. Content may then be empty.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        attachments: Vec<crate::AttachmentId>,
    },
    /// Read the inbox after a position. Without `after`, the device's stored
    /// cursor is used.
    Sync {
        /// Exclusive lower bound: the device's cursor, the position of the
        /// last inbox entry it has handled.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        after: Option<Seq>,
        /// Page size (server clamps it).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        limit: Option<u32>,
    },
    /// Store the device's cursor: every inbox entry up to it has been
    /// handled.
    Ack {
        /// The new cursor (cursors only move forward).
        cursor: Seq,
    },
    /// Liveness signal; keeps the user online. Sent every
    /// `heartbeat_interval_ms`.
    Heartbeat {},
    /// Page a channel's history (see [`crate::Page`]).
    History {
        /// The channel.
        channel: ChannelId,
        /// Exclusive upper bound.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        before: Option<MessageId>,
        /// Exclusive lower bound.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        after: Option<MessageId>,
        /// Page size (server clamps it).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        limit: Option<u32>,
    },
    /// Ask for the presence of some users.
    Presence {
        /// Whose presence.
        users: Vec<UserId>,
    },
    /// Ask for the position of the last entry of the user's inbox, for a
    /// new device that starts "from now" instead of replaying the inbox.
    Head {},
    /// The user is typing in a channel: tells the other members connected
    /// now (never stored, never pushed). Send it again while typing, every
    /// few seconds: the indicator expires after `expires_in_ms` without one.
    Typing {
        /// The channel (the user must be a member).
        channel: ChannelId,
    },
    /// The user has read `channel` up to `message` (a message of the
    /// channel): moves their read marker forward (a marker at or below the
    /// stored one changes nothing). The user's other devices and the other
    /// members get a `read` event when it moves.
    Read {
        /// The channel (the user must be a member).
        channel: ChannelId,
        /// The last message read.
        message: MessageId,
    },
    /// A device of the user has received `message` of direct channel
    /// `channel`: moves their delivered marker forward; the other member
    /// gets a `delivered` event when it moves. The SDK sends it by itself.
    Delivered {
        /// The direct channel (the user must be a member).
        channel: ChannelId,
        /// The last message received.
        message: MessageId,
    },
    /// Replace the content of one of the user's own messages. The id and
    /// the order stay; `edited_at` is set. The same content again changes
    /// nothing (`unchanged: true`).
    Edit {
        /// The message's channel (the user must be a member).
        channel: ChannelId,
        /// The message.
        message_id: MessageId,
        /// The new text, under the same rules as a send's.
        content: String,
    },
    /// Delete a message: the user's own, or any message of a group the
    /// user owns. It stays as a tombstone (no content, `deleted: true`).
    Delete {
        /// The message's channel (the user must be a member).
        channel: ChannelId,
        /// The message.
        message_id: MessageId,
    },
    /// Add a reaction to a message (at most 20 distinct ones per user and
    /// message, each 1 to 32 bytes with no control character or space).
    React {
        /// The message's channel (the user must be a member).
        channel: ChannelId,
        /// The message.
        message_id: MessageId,
        /// The reaction, e.g. an emoji.
        emoji: String,
    },
    /// Take back one of the user's reactions to a message.
    Unreact {
        /// The message's channel (the user must be a member).
        channel: ChannelId,
        /// The message.
        message_id: MessageId,
        /// The reaction.
        emoji: String,
    },
}

/// How long a typing indicator lasts without a refresh, in milliseconds.
pub const TYPING_EXPIRES_MS: u64 = 5_000;

impl Request {
    /// The `type` of every request this version knows. A frame whose
    /// `type` is not one of these is a `bad_frame`; a frame of a known type
    /// with a bad field is `invalid_input`.
    pub const TYPES: &'static [&'static str] = &[
        "send",
        "sync",
        "ack",
        "heartbeat",
        "history",
        "presence",
        "head",
        "typing",
        "read",
        "delivered",
        "edit",
        "delete",
        "react",
        "unreact",
    ];
}

/// A frame from the server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum ServerFrame {
    /// First frame of every connection.
    Welcome(Welcome),
    /// The answer to one request.
    Reply(Reply),
    /// Something happened (a message arrived, a friend came online).
    Event(Event),
}

/// Session parameters sent when a connection opens.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Welcome {
    /// Protocol version the server speaks.
    pub protocol: u32,
    /// Which chat server this is.
    pub server_id: String,
    /// The authenticated user.
    pub user: UserId,
    /// The device this connection belongs to.
    pub device: DeviceId,
    /// How often the client must send a heartbeat.
    pub heartbeat_interval_ms: u64,
    /// After how long without one the user counts as offline.
    pub presence_timeout_ms: u64,
    /// The device's cursor as the server has it stored.
    pub cursor: Seq,
}

/// The reply to one request: exactly one of `result` and `error` is set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reply {
    /// The request id; `None` only when the frame was too malformed to read one.
    pub id: Option<String>,
    /// The result on success.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<ReplyBody>,
    /// The error on failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<WireError>,
}

impl Reply {
    /// A successful reply.
    pub fn ok(id: impl Into<String>, body: ReplyBody) -> Self {
        Self {
            id: Some(id.into()),
            result: Some(body),
            error: None,
        }
    }

    /// A failed reply.
    pub fn err(id: Option<String>, error: WireError) -> Self {
        Self {
            id,
            result: None,
            error: Some(error),
        }
    }

    /// The reply as a `Result`.
    pub fn into_result(self) -> Result<ReplyBody, WireError> {
        match (self.result, self.error) {
            (_, Some(e)) => Err(e),
            (Some(b), None) => Ok(b),
            (None, None) => Err(WireError::new(
                ErrorCode::BadFrame,
                "reply carries neither result nor error",
            )),
        }
    }
}

/// Successful results, one kind per request type.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum ReplyBody {
    /// The message is stored in history and every recipient's inbox.
    Sent {
        /// The server-assigned id.
        message_id: MessageId,
        /// Server time of acceptance.
        created_at: u64,
        /// `true` if this was a retry of an already stored send.
        duplicate: bool,
        /// The message's position in the sender's own inbox, so the
        /// sending device can count it as handled. Absent only for a
        /// duplicate whose positions the store no longer knows.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        seq: Option<Seq>,
    },
    /// A page of the inbox.
    Synced {
        /// Entries with a position above the requested one, ascending and
        /// without gaps.
        entries: Vec<InboxEntry>,
        /// Whether more entries follow this page.
        has_more: bool,
    },
    /// The device cursor now stored.
    Acked {
        /// The stored cursor.
        cursor: Seq,
    },
    /// Heartbeat answer.
    Heartbeat {
        /// Server time, Unix milliseconds.
        server_time: u64,
    },
    /// A page of a channel's history, ascending.
    History {
        /// The messages.
        messages: Vec<Message>,
        /// Whether more messages follow in the page's reading direction.
        #[serde(default)]
        has_more: bool,
    },
    /// Presence of the asked users, in the asked order.
    Presence {
        /// One entry per asked user.
        users: Vec<Presence>,
    },
    /// The position of the last entry of the user's inbox
    /// ([`Seq::ZERO`] for an empty inbox).
    Head {
        /// The last position.
        seq: Seq,
    },
    /// The typing indicator is taken.
    Typing {
        /// How long it lasts without a refresh.
        expires_in_ms: u64,
    },
    /// The user's read marker in a channel, as stored now.
    Read {
        /// The channel.
        channel: ChannelId,
        /// The last message read (the one asked, or a later one already
        /// marked).
        message: MessageId,
        /// Messages of the channel after it.
        unread: u64,
    },
    /// The user's delivered marker in a direct channel, as stored now.
    Delivered {
        /// The channel.
        channel: ChannelId,
        /// The last message received (the one given, or a later one).
        message: MessageId,
    },
    /// An edit, deletion or reaction is stored in history and in every
    /// member's inbox (or there was nothing to change).
    Changed {
        /// The message after the change (without reactions); boxed, as
        /// the largest field of any reply.
        message: Box<Message>,
        /// What changed.
        change: Change,
        /// `true` if the message already was in the asked state: nothing
        /// was written or announced.
        #[serde(default)]
        unchanged: bool,
        /// The change entry's position in the user's own inbox, so the
        /// device can count it as handled; absent when unchanged.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        seq: Option<Seq>,
    },
}

/// Something the server tells the client without being asked.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Event {
    /// A message in one of the user's channels (also the user's own messages
    /// sent from another device).
    Message {
        /// The message's position in this user's inbox.
        seq: Seq,
        /// The message.
        message: Message,
    },
    /// A friend's presence changed.
    Presence {
        /// The new presence.
        presence: Presence,
    },
    /// Live delivery to this connection may have missed events (the server
    /// lost its connection to the delivery bus and regained it): sync from
    /// the cursor.
    Resync {},
    /// Someone asks to be the user's friend; answer with
    /// `PUT /v1/friends/{from}` (accept) or `DELETE` (decline).
    FriendRequest {
        /// Who asks.
        from: User,
    },
    /// A friend request the user sent was accepted: they are friends now.
    FriendAccepted {
        /// The new friend.
        friend: User,
    },
    /// The user is invited to a group; answer with
    /// `PUT /v1/invitations/{channel}` (join) or `DELETE` (decline).
    Invitation {
        /// The invitation.
        invitation: Invitation,
    },
    /// Another member is typing in a channel: show it until
    /// `expires_in_ms` pass without another such event from them.
    Typing {
        /// The channel.
        channel: ChannelId,
        /// Who is typing.
        user: UserId,
        /// How long the indicator lasts without a refresh.
        expires_in_ms: u64,
    },
    /// A member's read marker moved: `user` has read `channel` up to
    /// `message`. The user's own other devices get it too (their unread
    /// count for the channel is then the messages after `message`).
    Read {
        /// The channel.
        channel: ChannelId,
        /// Who read.
        user: UserId,
        /// The last message they have read.
        message: MessageId,
    },
    /// In a direct channel, a device of the other member (`user`) has
    /// received every message up to `message`.
    Delivered {
        /// The direct channel.
        channel: ChannelId,
        /// The recipient.
        user: UserId,
        /// The last message received.
        message: MessageId,
    },
    /// A message of one of the user's channels was edited, deleted or
    /// reacted to: a change entry of the user's inbox, delivered live like
    /// a message (and by sync to a device that was offline).
    Changed {
        /// The change entry's position in this user's inbox.
        seq: Seq,
        /// The message after the change (without reactions).
        message: Message,
        /// What changed.
        change: Change,
    },
}

/// Stable error codes. Clients branch on these, never on the message text.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorCode {
    /// The frame is not valid JSON or not a known request.
    BadFrame,
    /// A field is missing, malformed or out of range.
    InvalidInput,
    /// Missing, invalid or expired credentials.
    Unauthorized,
    /// Authenticated, but not allowed (e.g. not a member of the channel).
    Forbidden,
    /// The other user has blocked the caller: no direct channel with them,
    /// no direct messages to them.
    Blocked,
    /// The user, channel or message does not exist.
    NotFound,
    /// Already exists (e.g. username taken).
    AlreadyExists,
    /// The request contradicts stored state (a client message id reused for
    /// different content).
    Conflict,
    /// The message content is over the length limit.
    MessageTooLarge,
    /// Too many requests; slow down and retry.
    RateLimited,
    /// A size limit would be exceeded (group members, connections).
    LimitExceeded,
    /// A backend is down or slow; retrying later can succeed.
    Unavailable,
    /// An unexpected server-side failure.
    Internal,
    /// An upload is larger than the server takes (HTTP 413).
    AttachmentTooLarge,
    /// An upload's content type is not allowed, or its bytes are not what
    /// the type says (HTTP 415).
    UnsupportedMediaType,
}

impl ErrorCode {
    /// Whether the same request may succeed if retried later unchanged.
    pub fn is_retryable(self) -> bool {
        matches!(self, ErrorCode::RateLimited | ErrorCode::Unavailable)
    }

    /// The HTTP status the HTTP API uses for this code.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::BadFrame | ErrorCode::InvalidInput => 400,
            ErrorCode::Unauthorized => 401,
            ErrorCode::Forbidden | ErrorCode::Blocked => 403,
            ErrorCode::NotFound => 404,
            ErrorCode::AlreadyExists | ErrorCode::Conflict => 409,
            ErrorCode::MessageTooLarge => 413,
            ErrorCode::LimitExceeded => 422,
            ErrorCode::RateLimited => 429,
            ErrorCode::Unavailable => 503,
            ErrorCode::Internal => 500,
            ErrorCode::AttachmentTooLarge => 413,
            ErrorCode::UnsupportedMediaType => 415,
        }
    }
}

/// An error as it travels to the client.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{code:?}: {message}")]
pub struct WireError {
    /// Stable code.
    pub code: ErrorCode,
    /// Human-readable detail (not stable).
    pub message: String,
    /// Whether retrying the same request later can help.
    pub retryable: bool,
}

impl WireError {
    /// An error with the code's default retryability.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            retryable: code.is_retryable(),
        }
    }
}

impl From<&Error> for WireError {
    fn from(e: &Error) -> Self {
        let code = match e {
            Error::NotFound { .. } => ErrorCode::NotFound,
            Error::AlreadyExists { .. } => ErrorCode::AlreadyExists,
            Error::Conflict { .. } => ErrorCode::Conflict,
            Error::Forbidden { .. } => ErrorCode::Forbidden,
            Error::Blocked => ErrorCode::Blocked,
            Error::InvalidInput { .. } => ErrorCode::InvalidInput,
            Error::LimitExceeded { .. } => ErrorCode::LimitExceeded,
            Error::Unsupported { .. } | Error::StaleId { .. } => ErrorCode::Internal,
            Error::Backend {
                temporary: true, ..
            } => ErrorCode::Unavailable,
            Error::Backend { .. } => ErrorCode::Internal,
        };
        // Backend details stay in the server's logs, not on the wire.
        let message = match e {
            Error::Backend {
                temporary: true, ..
            } => "a backend is unavailable, retry later".into(),
            Error::Backend { .. } => "internal server error".into(),
            other => other.to_string(),
        };
        WireError {
            code,
            message,
            // A temporary backend failure is retryable; so is anything whose
            // code says so.
            retryable: e.is_temporary() || code.is_retryable(),
        }
    }
}

impl From<Error> for WireError {
    fn from(e: Error) -> Self {
        WireError::from(&e)
    }
}

/// WebSocket close codes used by the server.
///
/// `4000..=4099`: the client should reconnect (after asking `route` again).
/// `4100..=4199`: the client must not reconnect as it is (fix credentials or
/// configuration first). Standard codes: `1009` for a frame above the hard
/// frame-size limit, `1000`/`1001` for normal closure.
pub mod close {
    /// The server is shutting down; reconnect (to another server via `route`).
    pub const SHUTDOWN: u16 = 4000;
    /// The client did not read fast enough and its outbound queue filled up.
    pub const SLOW_CONSUMER: u16 = 4001;
    /// No frame (not even a heartbeat) within the idle timeout.
    pub const IDLE_TIMEOUT: u16 = 4002;
    /// The server failed internally; reconnect.
    pub const INTERNAL: u16 = 4003;
    /// The server is at its connection limit; reconnect after backoff.
    pub const SERVER_FULL: u16 = 4004;
    /// The client kept sending frames (requests, pings, binary frames)
    /// after its rate limit ran out; reconnect after backoff, slower.
    pub const FLOOD: u16 = 4005;
    /// The token is missing, invalid or expired: log in again.
    pub const UNAUTHORIZED: u16 = 4100;
    /// The user has the maximum number of connections open.
    pub const TOO_MANY_CONNECTIONS: u16 = 4101;
    /// The client asked for a protocol version the server does not speak.
    pub const UNSUPPORTED_VERSION: u16 = 4102;

    /// Whether a close code asks the client to reconnect.
    pub fn should_reconnect(code: u16) -> bool {
        !(4100..=4199).contains(&code)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_frames_round_trip() {
        let json = r#"{"id":"r1","type":"send","channel":"6d1c3f0e-9a51-4b7e-8d2f-0c6a1e3b5a77","client_msg_id":"c-1","content":"hi"}"#;
        let frame: ClientFrame = serde_json::from_str(json).unwrap();
        assert_eq!(frame.id, "r1");
        assert!(matches!(frame.request, Request::Send { ref content, .. } if content == "hi"));
        let back: ClientFrame =
            serde_json::from_str(&serde_json::to_string(&frame).unwrap()).unwrap();
        assert_eq!(back, frame);
        let hb: ClientFrame = serde_json::from_str(r#"{"id":"h","type":"heartbeat"}"#).unwrap();
        assert_eq!(hb.request, Request::Heartbeat {});
    }

    #[test]
    fn replies_and_events_are_distinct() {
        let reply = ServerFrame::Reply(Reply::ok("r1", ReplyBody::Acked { cursor: Seq(5) }));
        let json = serde_json::to_value(&reply).unwrap();
        assert_eq!(json["type"], "reply");
        assert_eq!(json["result"]["kind"], "acked");
        assert_eq!(json["result"]["cursor"], 5);
        let err = ServerFrame::Reply(Reply::err(None, WireError::new(ErrorCode::BadFrame, "bad")));
        let json = serde_json::to_value(&err).unwrap();
        assert_eq!(json["error"]["code"], "bad_frame");
        assert_eq!(json["error"]["retryable"], false);
        assert!(json["id"].is_null());
    }

    #[test]
    fn backend_errors_map_to_retryable_codes() {
        let e = Error::temporary("test", "down");
        let w = WireError::from(&e);
        assert_eq!(w.code, ErrorCode::Unavailable);
        assert!(w.retryable);
        let w = WireError::from(&Error::conflict("x"));
        assert_eq!(w.code, ErrorCode::Conflict);
        assert!(!w.retryable);
    }

    #[test]
    fn request_types_lists_every_request() {
        let c = ChannelId::new_random();
        let requests = [
            Request::Send {
                channel: c,
                client_msg_id: ClientMsgId::new_random(),
                content: "x".into(),
                reply_to: None,
                attachments: Vec::new(),
            },
            Request::Sync {
                after: None,
                limit: None,
            },
            Request::Ack { cursor: Seq(1) },
            Request::Heartbeat {},
            Request::History {
                channel: c,
                before: None,
                after: None,
                limit: None,
            },
            Request::Presence { users: vec![] },
            Request::Head {},
            Request::Typing { channel: c },
            Request::Read {
                channel: c,
                message: MessageId(1),
            },
            Request::Delivered {
                channel: c,
                message: MessageId(1),
            },
            Request::Edit {
                channel: c,
                message_id: MessageId(1),
                content: "x".into(),
            },
            Request::Delete {
                channel: c,
                message_id: MessageId(1),
            },
            Request::React {
                channel: c,
                message_id: MessageId(1),
                emoji: "x".into(),
            },
            Request::Unreact {
                channel: c,
                message_id: MessageId(1),
                emoji: "x".into(),
            },
        ];
        // Exhaustive on purpose: a new request type fails to compile here
        // until it is added to this list and to `Request::TYPES`.
        fn type_of(r: &Request) -> &'static str {
            match r {
                Request::Send { .. } => "send",
                Request::Sync { .. } => "sync",
                Request::Ack { .. } => "ack",
                Request::Heartbeat {} => "heartbeat",
                Request::History { .. } => "history",
                Request::Presence { .. } => "presence",
                Request::Head {} => "head",
                Request::Typing { .. } => "typing",
                Request::Read { .. } => "read",
                Request::Delivered { .. } => "delivered",
                Request::Edit { .. } => "edit",
                Request::Delete { .. } => "delete",
                Request::React { .. } => "react",
                Request::Unreact { .. } => "unreact",
            }
        }
        assert_eq!(requests.len(), Request::TYPES.len());
        for r in requests {
            let json = serde_json::to_value(&r).unwrap();
            let t = json["type"].as_str().unwrap();
            assert_eq!(t, type_of(&r));
            assert!(
                Request::TYPES.contains(&t),
                "{t} is missing from Request::TYPES"
            );
        }
    }

    #[test]
    fn close_code_ranges() {
        assert!(close::should_reconnect(close::SLOW_CONSUMER));
        assert!(close::should_reconnect(close::SHUTDOWN));
        assert!(!close::should_reconnect(close::UNAUTHORIZED));
    }
}
