//! # chat-core
//!
//! The small core of the chat SDK, with no I/O of its own: ids, domain types,
//! the wire protocol, the backend traits with their contracts, and in-memory
//! implementations of every trait.
//!
//! | trait | what it stores or does |
//! |---|---|
//! | [`MessageIdGenerator`] | unique, time-ordered message ids ([`Snowflake`], [`ChannelSequence`]) |
//! | [`HistoryStore`] | chat history, partitioned by channel, ordered by id |
//! | [`Inbox`] | the per-recipient message sync queue and device cursors |
//! | [`DeliveryBus`] | live events to the chat server holding a connection |
//! | [`PresenceTracker`] | heartbeats → online / offline |
//! | [`PushNotifier`] | notifications for recipients with no connected device |
//! | [`ServiceDiscovery`] | the registry of chat servers for `route` |
//! | [`Directory`] | users, credentials, friends, channels, members, devices |
//!
//! ```
//! use chat_core::{memory::MemoryHistory, HistoryStore, Page, Snowflake, MessageIdGenerator};
//! use chat_core::{ChannelId, ClientMsgId, Message, UserId};
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let ids = Snowflake::new(1).unwrap();
//! let history = MemoryHistory::default();
//! let channel = ChannelId::new_random();
//! let message = Message {
//!     id: ids.next_id(channel).await.unwrap(),
//!     channel_id: channel,
//!     sender: UserId::new_random(),
//!     content: "hello".into(),
//!     created_at: 0,
//!     client_msg_id: ClientMsgId::new_random(),
//! };
//! history.append(message.clone()).await.unwrap();
//! // A retry with the same client message id stores nothing new.
//! assert!(history.append(message).await.unwrap().is_duplicate());
//! assert_eq!(history.page(channel, Page::latest(10)).await.unwrap().len(), 1);
//! # });
//! ```

pub mod api;
pub mod bus;
pub mod clock;
pub mod directory;
pub mod discovery;
pub mod error;
pub mod id;
pub mod idgen;
pub mod memory;
pub mod presence;
pub mod protocol;
pub mod push;
pub mod rules;
pub mod store;
pub mod types;

pub use bus::{BusEvent, DeliveryBus, Envelope, EnvelopeHandler};
pub use clock::{Clock, SystemClock, TokioClock};
pub use directory::{Directory, UserRecord};
pub use discovery::{pick_server, ServerInfo, ServiceDiscovery};
pub use error::{BoxError, Error, Result};
pub use id::{ChannelId, ClientMsgId, DeviceId, MessageId, UserId};
pub use idgen::{ChannelSequence, MessageIdGenerator, Snowflake};
pub use presence::PresenceTracker;
pub use push::{
    DeliveryOutcome, DeviceOutcome, PushNotification, PushNotifier, PushReport, MAX_PUSH_DEVICES,
};
pub use store::{Appended, HistoryStore, Inbox, Page, MAX_PAGE};
pub use types::{
    Channel, ChannelKind, Device, Message, Platform, Presence, PresenceStatus, Profile, User,
};
