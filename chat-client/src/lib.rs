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
//! The device cursor means "every message with an id up to here has been
//! delivered". On every connection the server subscribes the session to live
//! delivery before it sends `welcome`; the client then pages its inbox from
//! the cursor while buffering live messages, emits the synced messages, then
//! the buffered ones it has not emitted yet. The cursor moves only up to the
//! server's settled watermark (`stable - 1`): after a complete sync, on
//! heartbeats while the connection stays up, and during a long sync up to
//! the end of each page received (so a sync cut short keeps its progress).
//! Ids emitted above the cursor are remembered (and stored with it) so
//! nothing is emitted twice. When the cursor moves it is saved to the
//! [`CursorStore`] and acked to the server (during a long sync, at most once
//! a second).
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
mod worker;

pub use chat_core::api::{HistoryQuery, UpdateProfileRequest};
pub use connection::{
    ClientEvent, ConnectOptions, Connection, ConnectionHandle, Events, SendReceipt,
};
pub use error::{ClientError, Result};
pub use http::{ChatClient, Session};
pub use store::{CursorStore, DeviceState, FileCursorStore, MemoryCursorStore};
