//! # chat-client
//!
//! The async Rust client SDK of the chat server.
//!
//! * [`ChatClient`]: the stateless HTTP API. [`ChatClient::signup`] and
//!   [`ChatClient::login`] return a [`Session`], which holds the token and
//!   makes every authenticated call (profile, friends, channels, groups,
//!   history, devices, presence, `route`).
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
//! use chat_client::{ChatClient, ClientEvent, ConnectOptions, FileCursorStore};
//! use chat_core::DeviceId;
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
//!         ClientEvent::Message(m) => println!("{}: {}", m.sender, m.content),
//!         ClientEvent::Disconnected { code, reason } => {
//!             println!("disconnected ({code:?}: {reason}), reconnecting")
//!         }
//!         ClientEvent::Error(e) if !e.is_retryable() => return Err(e),
//!         _ => {}
//!     }
//! }
//! conn.close().await;
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
//! When the cursor moves it is saved to the [`CursorStore`] and acked to
//! the server, at most once a second and at the end of every sync.
//!
//! ## Reading events
//!
//! Events go through a bounded channel ([`ConnectOptions::event_capacity`]).
//! While it is full the connection stops reading its socket, which includes
//! the replies to its own requests: read events in a task of their own (use
//! [`Connection::handle`] to send from elsewhere) so that sends do not wait
//! behind unread events. A reader that falls far behind is disconnected by
//! the server as a slow consumer; the connection then reconnects and syncs,
//! and nothing is lost.
//!
//! A store that loses a save (a crash between saves) only causes messages to
//! be delivered again after a restart; none is ever skipped.

mod backoff;
mod connection;
mod error;
mod http;
mod store;
mod sync;
mod tls;
mod worker;

pub use chat_core::api::{HistoryQuery, MessagePage, UpdateProfileRequest};
pub use chat_core::Seq;
pub use connection::{
    ClientEvent, ConnectOptions, Connection, ConnectionHandle, Events, SendReceipt,
};
pub use error::{ClientError, Result};
pub use http::{ChatClient, Session};
pub use store::{CursorStore, DeviceState, FileCursorStore, MemoryCursorStore};
pub use tls::TlsOptions;
