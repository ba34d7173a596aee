//! # chat-core
//!
//! The small core of the chat SDK, with no I/O of its own: ids, domain types,
//! the wire protocol, the backend traits with their contracts, and in-memory
//! implementations of every trait.
//!
//! | trait | what it stores or does |
//! |---|---|
//! | [`MessageIdGenerator`] | unique, time-ordered message ids ([`Snowflake`], [`ChannelSequence`]) |
//! | [`MessageStore`] | the send path: one atomic commit of a message to history and every member's inbox; edits, deletions and reactions the same way ([`changes`]) |
//! | [`HistoryStore`] | chat history, partitioned by channel, ordered by id |
//! | [`Inbox`] | the per-recipient message sync queue, ordered by positions ([`Seq`]), and device cursors |
//! | [`FanoutStore`] | the coordinating half of a sharded history (a transactional outbox) |
//! | [`DeliveryBus`] | live events to the chat server holding a connection |
//! | [`PresenceTracker`] | heartbeats → online / offline |
//! | [`PushNotifier`] | notifications for recipients with no connected device |
//! | [`ServiceDiscovery`] | the registry of chat servers for `route` |
//! | [`Directory`] | users, credentials and privacy settings, friends and friend requests, channels, members and invitations, devices |
//! | [`BlobStore`] | the bytes of uploaded files: atomic puts, streamed gets |
//! | [`AttachmentStore`] | the records of uploaded files, each bound once to the channel it is shared in |
//! | [`MessageSearch`] | full-text search of the messages of some channels, newest first |
//!
//! ```
//! use std::time::Duration;
//! use chat_core::memory::{MemoryDirectory, MemoryStore};
//! use chat_core::{Channel, Directory, Inbox, Limits, MessageStore, NewMessage, Seq, Snowflake};
//! use chat_core::{ClientMsgId, MessageIdGenerator, User, UserId, UserRecord};
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! # async fn user(d: &MemoryDirectory, name: &str) -> UserId {
//! #     let user = User { id: UserId::new_random(), username: name.into(),
//! #         profile: Default::default(), created_at: 0 };
//! #     d.create_user(UserRecord { user, password_hash: String::new() }).await.unwrap().id
//! # }
//! let store = MemoryStore::default();
//! let directory = store.directory();
//! let (alice, bob) = (user(&directory, "alice").await, user(&directory, "bob").await);
//! let channel = directory
//!     .create_channel(Channel::direct(alice, bob, 0), &Limits::default())
//!     .await
//!     .unwrap();
//!
//! let ids = Snowflake::new(1).unwrap();
//! let send = NewMessage {
//!     id: ids.next_id(channel.id).await.unwrap(),
//!     channel_id: channel.id,
//!     sender: alice,
//!     content: "hello".into(),
//!     created_at: 0,
//!     client_msg_id: ClientMsgId::new_random(),
//!     timeout: Duration::from_secs(5),
//!     reply_to: None,
//!     attachments: Vec::new(),
//! };
//! // History and both inboxes, in one atomic commit.
//! let committed = store.commit(send.clone()).await.unwrap();
//! assert_eq!(committed.position_of(bob), Some(Seq(1)));
//! // A retry with the same client message id stores nothing new.
//! assert!(store.commit(send).await.unwrap().duplicate);
//! let page = store.read(bob, Seq::ZERO, 100, usize::MAX).await.unwrap();
//! assert_eq!(page.items.len(), 1);
//! # });
//! ```

pub mod api;
pub mod attachment;
pub mod bus;
pub mod changes;
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
pub mod receipts;
pub mod rules;
pub mod search;
pub mod store;
pub mod text;
pub mod types;

pub use attachment::{
    Attachment, AttachmentRecord, AttachmentStore, BlobReader, BlobStore, ByteStream, StoredBlob,
    MAX_ATTACHMENTS_PER_MESSAGE,
};
pub use bus::{BusEvent, DeliveryBus, Envelope, EnvelopeHandler};
pub use changes::{Action, Change, Changed, NewChange, Reactions};
pub use clock::{Clock, SystemClock, TokioClock};
pub use directory::{
    Contact, Directory, FriendOutcome, InviteOutcome, Limits, TokenState, UserRecord,
};
pub use discovery::{pick_server, pick_server_with, ServerInfo, ServiceDiscovery};
pub use error::{BoxError, Error, Result};
pub use id::{AttachmentId, BlobId, ChannelId, ClientMsgId, DeviceId, MessageId, UserId};
pub use idgen::{ChannelSequence, MessageIdGenerator, Snowflake};
pub use presence::PresenceTracker;
pub use push::{
    DeliveryOutcome, DeviceOutcome, PushNotification, PushNotifier, PushReport, MAX_PUSH_DEVICES,
};
pub use receipts::{Marker, MarkerKind, MarkerUpdate, Receipt, Receipts, MAX_RECEIPTS};
pub use search::{MessageSearch, SearchCursor};
pub use store::{
    entry_bytes, take_within, Appended, Committed, Fanout, FanoutStore, Health, HistoryStore,
    Inbox, InboxEntry, MessageStore, NewMessage, Page, Paged, Seq, ENTRY_OVERHEAD, MAX_PAGE,
};
pub use types::{
    Channel, ChannelKind, Device, FriendRequest, Invitation, Message, Platform, Presence,
    PresenceStatus, Privacy, Profile, User, WhoMayAdd,
};
