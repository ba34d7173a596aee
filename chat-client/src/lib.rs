//! # chat-client
//!
//! The async Rust client SDK of the chat server. One dependency is enough:
//! the types its API takes and returns (ids, [`Message`], [`ErrorCode`],
//! the HTTP bodies) are re-exported here, and the whole of `chat-core` as
//! [`chat_core`].
//!
//! * [`ChatClient`]: the stateless HTTP API. [`ChatClient::signup`],
//!   [`ChatClient::login`] and [`ChatClient::login_with`] return a
//!   [`Session`], which holds the tokens and makes every authenticated call
//!   (profile, friends, channels, groups, history, devices, presence,
//!   `route`).
//! * [`Connection`]: the live WebSocket of one device, from
//!   [`Session::connect`]. A background task keeps it open: heartbeats,
//!   reconnects with exponential backoff and full jitter (asking `route`
//!   again each time), and a sync from the device cursor after every
//!   (re)connect, so each message of the user's inbox arrives as a
//!   [`ClientEvent::Message`] exactly once, with no gaps. Sends are
//!   idempotent: [`Connection::send`] retries with the same client message id
//!   across reconnects until it gets the server's receipt.
//! * [`CursorStore`]: where the device cursor is kept between runs,
//!   [`MemoryCursorStore`] or [`FileCursorStore`] (one JSON file per device,
//!   written atomically).
//!
//! ```no_run
//! use std::sync::Arc;
//!
//! use chat_client::{ChatClient, ClientEvent, ConnectOptions, DeviceId, FileCursorStore};
//!
//! # async fn run() -> Result<(), chat_client::ClientError> {
//! let client = ChatClient::new("http://127.0.0.1:8080")?;
//! let alice = client.login("alice", "correct horse battery").await?;
//! let bob = alice.friends().await?.into_iter().next().expect("a friend");
//! let channel = alice.open_direct(bob.id).await?;
//!
//! // One device id per installation, kept across runs with its cursor.
//! let device = DeviceId::new_random();
//! let store = Arc::new(FileCursorStore::new("./chat-state"));
//! let mut conn = alice.connect(device, store, ConnectOptions::default()).await?;
//!
//! let receipt = conn.send(channel.id, "hello Bob").await?;
//! println!("stored as {}", receipt.message_id);
//!
//! while let Some(event) = conn.next_event().await {
//!     match event {
//!         ClientEvent::Message(d) => println!("{}: {}", d.message.sender, d.message.content),
//!         ClientEvent::Disconnected { code, reason } => {
//!             println!("disconnected ({code:?}: {reason}), reconnecting")
//!         }
//!         _ => {}
//!     }
//! }
//! // The stream ended: the connection stopped for good. Why?
//! let why = conn.closed().await;
//! println!("stopped: {why}");
//! # Ok(()) }
//! ```
//!
//! ## Delivery guarantees
//!
//! Every entry of the user's inbox has a position, 1, 2, 3, ... with no
//! gaps, assigned by the server when the message is stored; the device
//! cursor is the position of the last entry handled. On every connection
//! the server subscribes the session to live delivery before it sends
//! `welcome`; the client then pages its inbox from the cursor. Live
//! messages and sync pages both carry positions, and the connection hands
//! messages to the application strictly in position order, each once: an
//! entry waits until the ones before it have arrived (two senders' events
//! can overtake each other), and if one is still missing after half a
//! second (a lost event) the connection syncs from its cursor. So the
//! application sees every message of the inbox once, in order, and each
//! channel's messages in id order. This device's own messages are not
//! repeated as events: [`Connection::send`]'s receipt stands for them.
//!
//! ## Edits, deletions and reactions
//!
//! [`ConnectionHandle::edit`], [`ConnectionHandle::delete`],
//! [`ConnectionHandle::react`] and [`ConnectionHandle::unreact`] change a
//! stored message. The server puts each change in the inbox of every
//! member, at the next position, so it reaches the user's other devices and
//! the other members as a [`ClientEvent::Changed`], in inbox order with the
//! messages, live or by the sync after a reconnect, and is acknowledged
//! like a message. The SDK keeps no copy of the messages: the application
//! applies each change to its own (replace the message with
//! `delivery.message` for an edit or a deletion, count a reaction in or
//! out), and every device converges. History pages carry the current state:
//! edited text with `edited_at`, tombstones, reactions counted per emoji.
//!
//! ## Acknowledgement and crashes
//!
//! The cursor saved in the [`CursorStore`] (and acked to the server) only
//! covers messages the application has handled:
//!
//! * [`AckMode::Auto`] (the default): a message is handled once the
//!   application has taken its event from the stream. A crash can lose
//!   what was taken but not processed yet.
//! * [`AckMode::Manual`]: a message is handled once the application has
//!   called [`Delivery::ack`] on it or on a later one. A crash never loses
//!   a message that was not acknowledged: the next run delivers it again,
//!   and none that was acknowledged comes back. Make what the application
//!   does with a message idempotent (a reply sent with
//!   [`Connection::send_with_id`] and a key derived from the message id),
//!   and processing is exactly-once in effect.
//!
//! The cursor is saved at most once a second, at once when acknowledged,
//! and when the connection stops. A store that loses a save (a crash
//! between saves) only causes messages to be delivered again after a
//! restart; none is ever skipped.
//!
//! ## A new device
//!
//! A device with no saved cursor receives, by default, the **whole inbox**:
//! every message of every channel the user is in, from the first. Set
//! [`ConnectOptions::start_from`] to [`StartFrom::Latest`] to start from
//! now (older messages stay readable with [`Session::history`]), or to
//! [`StartFrom::After`] to start after a position another device of the
//! user has ([`Delivery::seq`]).
//!
//! ## Reading events and sending from the same loop
//!
//! Events go through a bounded channel ([`ConnectOptions::event_capacity`])
//! with a queue in front bounded by bytes
//! ([`ConnectOptions::event_buffer_bytes`]). The connection keeps reading
//! its socket whatever the application does, so a send made from the loop
//! that reads events gets its receipt even while many events wait; past
//! the byte budget the connection takes in no more messages and catches up
//! on them by sync once the application has read half of what waits.
//! Nothing is lost either way.
//!
//! ## Credentials and a server that is down
//!
//! A session made with [`ChatClient::login_with`] keeps its
//! [`Credentials`] and logs in again by itself when its tokens are refused
//! for good (refresh token expired, session logged out); its connection
//! then reconnects instead of stopping with 4100. [`Retry`] retries a call
//! such as the first log-in while the server is down, and
//! [`ConnectOptions::retry_initial_connect`] makes [`Session::connect`]
//! return at once and connect in the background.

mod backoff;
mod connection;
mod error;
mod http;
mod store;
mod sync;
mod tls;
mod worker;

pub use backoff::Retry;
pub use connection::{
    AckMode, ChangeReceipt, ClientEvent, ConnectOptions, Connection, ConnectionHandle, Delivery,
    Events, ReadState, SendReceipt, StartFrom,
};
pub use error::{ClientError, Result};
pub use http::{ChatClient, Credentials, Password, Session};
pub use store::{CursorStore, DeviceState, FileCursorStore, MemoryCursorStore};
pub use tls::TlsOptions;

/// The core crate: every type of the protocol and the domain, for what the
/// re-exports below leave out.
pub use chat_core;
pub use chat_core::api::{
    AuthResponse, FriendRequests, FriendStatus, GroupChange, HistoryQuery, InvitationList,
    MessagePage, PendingFriend, RouteResponse, UpdatePrivacyRequest, UpdateProfileRequest,
};
pub use chat_core::api::{ChannelList, ChannelSummary};
pub use chat_core::protocol::{close, ErrorCode, WireError};
pub use chat_core::search::{SearchCursor, SearchPage};
pub use chat_core::{
    Attachment, AttachmentId, Change, Channel, ChannelId, ChannelKind, ClientMsgId, Device,
    DeviceId, Invitation, Message, MessageId, Platform, Presence, Privacy, Profile, Seq, User,
    UserId, WhoMayAdd,
};
