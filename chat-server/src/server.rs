//! The chat node: backends, the send pipeline, sync, presence and push, shared
//! by the HTTP handlers and the WebSocket sessions.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chat_core::memory::{
    LoggingNotifier, MemoryBus, MemoryDirectory, MemoryDiscovery, MemoryPresence, MemoryStore,
};
use chat_core::protocol::{ErrorCode, WireError};
use chat_core::{
    AttachmentId, AttachmentStore, BlobStore, BusEvent, Channel, ChannelId, ClientMsgId, Clock,
    Committed, DeliveryBus, DeviceId, Directory, Envelope, Health, InboxEntry, Message, MessageId,
    MessageIdGenerator, MessageSearch, MessageStore, NewMessage, Page, Presence, PresenceStatus,
    PresenceTracker, PushNotifier, Seq, ServerInfo, ServiceDiscovery, Snowflake, TokioClock,
    UserId, MAX_PAGE,
};
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::accept::ConnLimits;
use crate::auth::{Passwords, Tokens};
use crate::config::ServerConfig;
use crate::error::ServerError;
use crate::hashing::HashPool;
use crate::limits::AuthLimits;
use crate::metered::Metered;
use crate::metrics::Metrics;
use crate::push::{PushJob, PushQueue};
use crate::redeliver::Redeliveries;
use crate::send_quota::SendQuota;
use crate::sessions::{LocalDelivery, Sessions};

/// How often a send proposes a new id after its store found the proposal
/// stale (each retry is above the channel's last id then, so more than one
/// or two only happen when many sends race in one channel).
const MAX_STALE_RETRIES: usize = 16;

/// Result of an operation as the client sees it.
pub type ApiResult<T> = Result<T, WireError>;

/// Converts a backend error for the wire, logging what the client is not told.
pub(crate) fn wire(e: chat_core::Error) -> WireError {
    if let chat_core::Error::Backend { .. } = e {
        tracing::warn!(error = %e, "backend error");
    }
    WireError::from(&e)
}

/// Shorthand for a wire error.
pub(crate) fn err(code: ErrorCode, message: impl Into<String>) -> WireError {
    WireError::new(code, message)
}

/// The one answer for a channel that does not exist or that the caller is
/// not a member of.
pub(crate) fn not_a_member() -> WireError {
    err(
        ErrorCode::NotFound,
        "channel not found (or you are not a member)",
    )
}

/// Builds a [`ChatServer`] from backends given as trait objects. Any backend
/// not given is the in-memory one.
///
/// ```no_run
/// use std::sync::Arc;
/// use chat_server::chat_core::memory::{MemoryBus, MemoryPresence};
/// use chat_server::{ChatServer, EmbeddedOptions, EmbeddedStore, ServerConfig, TokenSecret};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let store = Arc::new(EmbeddedStore::open_async("./chat-data", EmbeddedOptions::default()).await?);
/// let server = ChatServer::builder(ServerConfig { token_secret: TokenSecret::random(), ..ServerConfig::default() })
///     .storage(store)                              // directory and messages, one backend
///     .bus(Arc::new(MemoryBus::default()))         // or NATS, Redis, ... between nodes
///     .presence(Arc::new(MemoryPresence::new(30_000)))
///     .build()
///     .await?;
/// # let _ = server;
/// # Ok(()) }
/// ```
#[derive(Debug, Default)]
pub struct ServerBuilder {
    config: ServerConfig,
    directory: Option<Arc<dyn Directory>>,
    messages: Option<Arc<dyn MessageStore>>,
    bus: Option<Arc<dyn DeliveryBus>>,
    presence: Option<Arc<dyn PresenceTracker>>,
    push: Option<Arc<dyn PushNotifier>>,
    discovery: Option<Arc<dyn ServiceDiscovery>>,
    ids: Option<Arc<dyn MessageIdGenerator>>,
    clock: Option<Arc<dyn Clock>>,
    blobs: Option<Arc<dyn BlobStore>>,
    attachments: Option<Arc<dyn AttachmentStore>>,
    search: Option<Arc<dyn MessageSearch>>,
}

macro_rules! setter {
    ($(#[$doc:meta])* $name:ident: $ty:ty) => {
        $(#[$doc])*
        pub fn $name(mut self, backend: Arc<$ty>) -> Self {
            self.$name = Some(backend);
            self
        }
    };
}

impl ServerBuilder {
    /// A builder with `config`.
    pub fn new(config: ServerConfig) -> Self {
        Self {
            config,
            ..Self::default()
        }
    }

    setter!(
        /// Users, friends, channels, devices. Give it together with
        /// [`messages`](Self::messages): the message store reads channel
        /// members from the same data.
        directory: dyn Directory
    );
    setter!(
        /// Chat history, inboxes, device cursors and the commit that fills
        /// them. Give it together with [`directory`](Self::directory).
        messages: dyn MessageStore
    );
    setter!(
        /// Live delivery between nodes.
        bus: dyn DeliveryBus
    );
    setter!(
        /// Presence tracking.
        presence: dyn PresenceTracker
    );
    setter!(
        /// Push notifications (default: a log line).
        push: dyn PushNotifier
    );
    setter!(
        /// Service discovery.
        discovery: dyn ServiceDiscovery
    );
    setter!(
        /// Message ids (default: [`Snowflake`] with the configured node id).
        ids: dyn MessageIdGenerator
    );
    setter!(
        /// Wall-clock time (default: [`TokioClock`], which follows tokio's
        /// paused time in tests).
        clock: dyn Clock
    );
    setter!(
        /// The bytes of uploaded files (default: in memory; the binary
        /// keeps them in files beside its data, or in an S3 bucket).
        blobs: dyn BlobStore
    );
    setter!(
        /// The records of uploaded files (default: in memory;
        /// [`storage`](Self::storage) sets it to the storage backend).
        attachments: dyn AttachmentStore
    );
    setter!(
        /// Full-text search of the message store's history (`GET
        /// /v1/search`). [`storage`](Self::storage) sets it to the storage
        /// backend, and the in-memory default has it; without one, search
        /// answers `not_found`.
        search: dyn MessageSearch
    );

    /// Sets the message store and the directory from one backend that is
    /// both (the embedded store, PostgreSQL).
    pub fn storage<S: MessageStore + Directory + AttachmentStore + MessageSearch>(
        self,
        store: Arc<S>,
    ) -> Self {
        self.messages(store.clone())
            .attachments(store.clone())
            .search(store.clone())
            .directory(store)
    }

    /// Starts the node: attaches to the bus and spawns the presence sweeper
    /// and push worker. Must run inside a tokio runtime.
    ///
    /// Fails with [`ServerError::Config`] for a configuration that cannot
    /// work (no token secret, above all), or [`ServerError::Backend`] if
    /// the bus refuses to attach.
    pub async fn build(self) -> Result<ChatServer, ServerError> {
        let config = self.config;
        config.validate()?;
        let clock = self.clock.unwrap_or_else(|| Arc::new(TokioClock::new()));
        let ids: Arc<dyn MessageIdGenerator> = match self.ids {
            Some(ids) => ids,
            None => Arc::new(Snowflake::with_clock(config.node_id, clock.clone())?),
        };
        let presence = self.presence.unwrap_or_else(|| {
            Arc::new(MemoryPresence::new(
                config.presence_timeout.as_millis() as u64
            ))
        });
        let discovery = self
            .discovery
            .unwrap_or_else(|| Arc::new(MemoryDiscovery::new(clock.clone())));
        let stats = Arc::new(Counters::default());
        let metrics = Arc::new(Metrics::new(stats.clone()));
        let sessions = Arc::new(Sessions::default());
        let bus: Arc<dyn DeliveryBus> = Arc::new(Metered::new(
            self.bus.unwrap_or_else(|| Arc::new(MemoryBus::default())),
            metrics.clone(),
        ));
        bus.attach(Arc::new(LocalDelivery {
            sessions: sessions.clone(),
            metrics: metrics.clone(),
        }))
        .await?;
        let mut search = self.search;
        let (directory, messages): (Arc<dyn Directory>, Arc<dyn MessageStore>) =
            match (self.directory, self.messages) {
                (Some(d), Some(m)) => (d, m),
                (None, None) => {
                    let directory = Arc::new(MemoryDirectory::default());
                    let store = Arc::new(MemoryStore::new(directory.clone()));
                    search.get_or_insert_with(|| store.clone());
                    (directory, store)
                }
                _ => {
                    return Err(ServerError::Config(
                        "give the directory and the message store together: the message \
                         store reads channel members from the directory's data"
                            .into(),
                    ))
                }
            };
        let directory: Arc<dyn Directory> = Arc::new(Metered::new(directory, metrics.clone()));
        let messages: Arc<dyn MessageStore> = Arc::new(Metered::new(messages, metrics.clone()));
        let (push_queue, push_rx) = PushQueue::new(config.push_queue);
        let passwords = Passwords::new(config.argon2_memory_kib, config.argon2_iterations)?;
        let inner = Arc::new(Inner {
            hashing: HashPool::start(passwords, config.hash_workers, config.hash_queue)?,
            auth_limits: AuthLimits::new(config.auth_per_address, config.login_per_username),
            send_quota: SendQuota::new(&config),
            typing: crate::typing::TypingLimit::new(),
            conn_limits: ConnLimits::new(
                config.max_open_connections,
                config.max_connections_per_address,
            ),
            tokens: Tokens::new(config.token_secret.as_bytes())?,
            conn_limit: Arc::new(Semaphore::new(config.max_connections)),
            directory,
            messages,
            blobs: self
                .blobs
                .unwrap_or_else(|| Arc::new(chat_core::memory::MemoryBlobStore::default())),
            search,
            attachments: self
                .attachments
                .unwrap_or_else(|| Arc::new(chat_core::memory::MemoryAttachments::default())),
            push: self.push.unwrap_or_else(|| Arc::new(LoggingNotifier)),
            bus,
            presence,
            discovery,
            ids,
            clock,
            sessions,
            push_queue,
            redeliveries: Arc::new(Redeliveries::default()),
            stats,
            metrics,
            shutdown: CancellationToken::new(),
            tasks: TaskTracker::new(),
            advertised: Mutex::new(None),
            fatal: Mutex::new(None),
            config,
        });
        let server = ChatServer { inner };
        server.spawn_background(push_rx);
        Ok(server)
    }
}

/// Declares the server's counters once: [`Stats`], the snapshot the API
/// returns, and `Counters`, the atomics the server counts in.
macro_rules! counters {
    ($($(#[$doc:meta])* $name:ident,)*) => {
        /// Counters worth watching in production, as of one moment
        /// ([`ChatServer::stats`]). Each counts since the server started.
        ///
        /// ```no_run
        /// # fn run(server: chat_server::ChatServer) {
        /// let stats = server.stats();
        /// println!("{} messages stored, {} slow consumers", stats.messages_stored, stats.slow_consumers);
        /// # }
        /// ```
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
        #[non_exhaustive]
        pub struct Stats {
            $($(#[$doc])* pub $name: u64,)*
        }

        /// The live counters behind [`Stats`].
        #[derive(Debug, Default)]
        pub(crate) struct Counters {
            $(pub(crate) $name: AtomicU64,)*
        }

        impl Counters {
            /// Their values now.
            pub(crate) fn snapshot(&self) -> Stats {
                Stats {
                    $($name: self.$name.load(Ordering::Relaxed),)*
                }
            }
        }
    };
}

counters! {
    /// Messages stored (not counting duplicates).
    messages_stored,
    /// Sends answered with the original id of an earlier identical send.
    duplicate_sends,
    /// Push notifications handed to the notifier (one per offline
    /// recipient and burst of messages in a channel).
    pushes_sent,
    /// Push jobs dropped because the push queue was full.
    pushes_dropped,
    /// Failed pushes: notifications the notifier could not attempt at all,
    /// plus devices whose push failed after the notifier's retries.
    push_failures,
    /// Devices the platforms accepted a push for.
    pushes_delivered,
    /// Messages merged into another notification of the same burst.
    pushes_collapsed,
    /// Push tokens removed because the platform reported them invalid.
    push_tokens_removed,
    /// Connections closed because their outbound queue filled.
    slow_consumers,
    /// Frames the writer could not write (larger than the connection's
    /// write buffer allows); each closes its connection.
    frames_refused,
    /// Sends refused because the store was unavailable or slow (answered
    /// `unavailable`, retryable).
    sends_unavailable,
    /// Heartbeats the presence tracker could not record (it was
    /// unreachable); the connection carries on regardless.
    presence_failures,
    /// Sockets closed at accept because a connection cap was reached.
    connections_refused,
    /// Failed accepts other than of one connection (out of file
    /// descriptors), each followed by a pause.
    accept_errors,
    /// Requests answered `rate_limited`: sends over a user's byte rate,
    /// sign-ups and logins over an address's or username's rate.
    rate_limited,
}

#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) config: ServerConfig,
    pub(crate) directory: Arc<dyn Directory>,
    pub(crate) messages: Arc<dyn MessageStore>,
    /// The bytes of uploads (`attachments.rs`).
    pub(crate) blobs: Arc<dyn BlobStore>,
    /// The records of uploads.
    pub(crate) attachments: Arc<dyn AttachmentStore>,
    /// Full-text search, if the storage has it (`search.rs`).
    pub(crate) search: Option<Arc<dyn MessageSearch>>,
    pub(crate) bus: Arc<dyn DeliveryBus>,
    pub(crate) presence: Arc<dyn PresenceTracker>,
    pub(crate) push: Arc<dyn PushNotifier>,
    pub(crate) discovery: Arc<dyn ServiceDiscovery>,
    pub(crate) ids: Arc<dyn MessageIdGenerator>,
    pub(crate) clock: Arc<dyn Clock>,
    /// Password hashing, on a bounded pool of threads.
    pub(crate) hashing: HashPool,
    /// Sign-up and login attempts per address and per username.
    pub(crate) auth_limits: AuthLimits,
    /// Send bytes per user.
    pub(crate) send_quota: SendQuota,
    /// Typing indicators published per user and channel (`typing.rs`).
    pub(crate) typing: crate::typing::TypingLimit,
    /// Every open socket, in total and per address (see `accept.rs`).
    pub(crate) conn_limits: Arc<ConnLimits>,
    pub(crate) tokens: Tokens,
    pub(crate) sessions: Arc<Sessions>,
    /// Caps WebSocket connections (each holds a file descriptor).
    pub(crate) conn_limit: Arc<Semaphore>,
    /// Jobs for the push worker, off the send path.
    push_queue: PushQueue,
    /// Message publishes that failed, to publish again.
    redeliveries: Arc<Redeliveries>,
    pub(crate) stats: Arc<Counters>,
    pub(crate) metrics: Arc<Metrics>,
    /// Cancelled when the server shuts down; every session watches it.
    pub(crate) shutdown: CancellationToken,
    /// Every session and background task, so shutdown can wait for them.
    pub(crate) tasks: TaskTracker,
    /// This server's entry in discovery, once it advertises itself.
    advertised: Mutex<Option<ServerInfo>>,
    /// Set when the node stops by itself, with the reason.
    fatal: Mutex<Option<String>>,
}

/// Longest a send's answer waits for its live publish: a bus whose broker
/// is gone can take seconds to notice (the NATS bus waits up to its request
/// timeout), and a client counts a request unanswered that long as a dead
/// connection. A publish that takes longer is made again later
/// (`redeliver.rs`); its recipients may then see the event twice, with the
/// same position.
const PUBLISH_WAIT: Duration = Duration::from_secs(2);

/// A running chat node. Cheap to clone; all clones are the same node.
#[derive(Debug, Clone)]
pub struct ChatServer {
    pub(crate) inner: Arc<Inner>,
}

/// What a completed send returns to the sender.
#[derive(Debug, Clone)]
pub struct SendOutcome {
    /// The stored message (the original one for a duplicate).
    pub message: Message,
    /// Whether this send repeated an earlier one.
    pub duplicate: bool,
    /// The message's position in the sender's own inbox (absent only for a
    /// duplicate whose positions the store no longer knows).
    pub seq: Option<Seq>,
}

impl ChatServer {
    /// A builder with the given configuration.
    pub fn builder(config: ServerConfig) -> ServerBuilder {
        ServerBuilder::new(config)
    }

    /// The configuration in force.
    pub fn config(&self) -> &ServerConfig {
        &self.inner.config
    }

    /// The runtime counters, now.
    pub fn stats(&self) -> Stats {
        self.inner.stats.snapshot()
    }

    /// WebSocket connections open on this server.
    pub fn connections(&self) -> usize {
        self.inner.sessions.total()
    }

    /// Sockets open on this server (HTTP and WebSocket) when it is served
    /// by [`crate::serve`].
    pub fn open_sockets(&self) -> usize {
        self.inner.conn_limits.open()
    }

    /// The most password hashes that ever ran at once (each takes a
    /// thread and a working memory): at most `hash_workers`, however many
    /// sign-ups and logins arrive together.
    pub fn hashing_peak(&self) -> u64 {
        self.inner.hashing.stats.peak.load(Ordering::Relaxed)
    }

    /// Password hashes computed: one per sign-up and per login, whether
    /// or not the username exists.
    pub fn hashes_computed(&self) -> u64 {
        self.inner.hashing.stats.completed.load(Ordering::Relaxed)
    }

    /// Sign-ups and logins turned away because the hashing queue was full.
    pub fn hashes_rejected(&self) -> u64 {
        self.inner.hashing.stats.rejected.load(Ordering::Relaxed)
    }

    /// Current wall-clock time as the server sees it.
    pub(crate) fn now(&self) -> u64 {
        self.inner.clock.now_ms()
    }

    /// Runs `fut` under the send deadline; an expired deadline is a
    /// retryable `unavailable` error. (The store itself refuses to start a
    /// commit past the same deadline, so giving up here never leaves a
    /// write to land later unannounced.)
    async fn within_deadline<T>(
        &self,
        fut: impl Future<Output = chat_core::Result<T>>,
    ) -> ApiResult<T> {
        match tokio::time::timeout(self.inner.config.send_timeout, fut).await {
            Ok(r) => r.map_err(wire),
            Err(_) => Err(err(
                ErrorCode::Unavailable,
                "storage did not answer in time, retry later",
            )),
        }
    }

    /// The channel, if `user` is a member; `not_found` otherwise, the same
    /// answer whether the channel does not exist or the user is not in it
    /// (so nobody learns which channels exist, and who talks to whom).
    pub(crate) async fn member_channel(&self, user: UserId, id: ChannelId) -> ApiResult<Channel> {
        match self.inner.directory.channel(id).await.map_err(wire)? {
            Some(channel) if channel.is_member(user) => Ok(channel),
            _ => Err(not_a_member()),
        }
    }

    /// Posts a message: assigns a proposed id and commits it, in one atomic
    /// write, to the channel's history and the inbox of every member (the
    /// sender's too, for the sender's other devices); only then returns (the
    /// ack). Live delivery and push follow. A retry with the same client
    /// message id returns the original message and announces it again (its
    /// first attempt may have committed after giving up, announcing
    /// nothing; devices that have it already drop the repeat by position).
    pub async fn send(
        &self,
        sender: UserId,
        device: DeviceId,
        channel_id: ChannelId,
        client_msg_id: ClientMsgId,
        content: String,
    ) -> ApiResult<SendOutcome> {
        self.send_reply(sender, device, channel_id, client_msg_id, content, None)
            .await
    }

    /// [`send`](Self::send) of a message that may reply to (quote)
    /// `reply_to`, a message of the same channel: one that is not is
    /// refused with `not_found`, storing nothing.
    pub async fn send_reply(
        &self,
        sender: UserId,
        device: DeviceId,
        channel_id: ChannelId,
        client_msg_id: ClientMsgId,
        content: String,
        reply_to: Option<MessageId>,
    ) -> ApiResult<SendOutcome> {
        self.send_with_attachments(
            sender,
            device,
            channel_id,
            client_msg_id,
            content,
            reply_to,
            Vec::new(),
        )
        .await
    }

    /// [`send_reply`](Self::send_reply) of a message that may carry
    /// attachments: ids of the sender's own uploads, bound to the channel
    /// before the commit (see `attachments.rs`); with attachments, the
    /// content may be empty.
    #[allow(clippy::too_many_arguments)]
    pub async fn send_with_attachments(
        &self,
        sender: UserId,
        device: DeviceId,
        channel_id: ChannelId,
        client_msg_id: ClientMsgId,
        content: String,
        reply_to: Option<MessageId>,
        attachments: Vec<AttachmentId>,
    ) -> ApiResult<SendOutcome> {
        let outcome = self
            .send_counted(
                sender,
                device,
                channel_id,
                client_msg_id,
                content,
                reply_to,
                attachments,
            )
            .await;
        let label = match &outcome {
            Ok(o) if o.duplicate => "duplicate",
            Ok(_) => "stored",
            Err(e) => crate::metrics::code_label(e.code),
        };
        Metrics::count(&self.inner.metrics.sends, label);
        outcome
    }

    /// [`send`](Self::send) before its outcome is counted.
    #[allow(clippy::too_many_arguments)]
    async fn send_counted(
        &self,
        sender: UserId,
        device: DeviceId,
        channel_id: ChannelId,
        client_msg_id: ClientMsgId,
        content: String,
        reply_to: Option<MessageId>,
        attachments: Vec<AttachmentId>,
    ) -> ApiResult<SendOutcome> {
        self.charge_send(sender, &content)?;
        let max = self.inner.config.max_message_chars;
        if content.is_empty() && attachments.is_empty() {
            return Err(err(ErrorCode::InvalidInput, "message content is empty"));
        }
        // Byte length bounds character count from above: count only when needed.
        if content.len() > max && content.chars().count() > max {
            return Err(err(
                ErrorCode::MessageTooLarge,
                format!("message content is over {max} characters"),
            ));
        }
        // Control characters other than tabs and line breaks would steer
        // the terminals and logs that show the message.
        chat_core::text::validate_message_text(&content).map_err(wire)?;
        if let Some(target) = reply_to {
            self.check_reply_target(sender, channel_id, target).await?;
        }
        let attachments = if attachments.is_empty() {
            Vec::new()
        } else {
            self.bind_attachments(sender, channel_id, &attachments)
                .await?
        };
        let inner = &self.inner;
        let committed = self
            .within_deadline(async {
                let mut message = NewMessage {
                    id: inner.ids.next_id(channel_id).await?,
                    channel_id,
                    sender,
                    content,
                    created_at: inner.clock.now_ms(),
                    client_msg_id,
                    timeout: inner.config.send_timeout,
                    reply_to,
                    attachments,
                };
                // Another message of the channel was committed with a
                // larger id first (a concurrent send here, or a node whose
                // clock runs ahead): propose again above it.
                let mut attempts = 0;
                loop {
                    match inner.messages.commit(message.clone()).await {
                        Err(chat_core::Error::StaleId { last }) if attempts < MAX_STALE_RETRIES => {
                            attempts += 1;
                            message.id = inner.ids.next_id_after(channel_id, last).await?;
                        }
                        other => return other,
                    }
                }
            })
            .await
            .map_err(|e| match e.code {
                // Not a member and no such channel answer alike.
                ErrorCode::Forbidden | ErrorCode::NotFound => not_a_member(),
                ErrorCode::Unavailable => {
                    inner
                        .stats
                        .sends_unavailable
                        .fetch_add(1, Ordering::Relaxed);
                    e
                }
                _ => e,
            })?;
        let Committed {
            message,
            duplicate,
            positions,
        } = committed;
        let seq = positions
            .binary_search_by_key(&sender, |(u, _)| *u)
            .ok()
            .map(|i| positions[i].1);
        let recipients: Vec<UserId> = positions.iter().map(|(u, _)| *u).collect();
        if duplicate {
            inner.stats.duplicate_sends.fetch_add(1, Ordering::Relaxed);
        } else {
            inner.stats.messages_stored.fetch_add(1, Ordering::Relaxed);
        }
        if !positions.is_empty() {
            let envelope = |positions| Envelope {
                event: BusEvent::Message {
                    message: message.clone(),
                    positions,
                },
                skip_device: Some(device),
            };
            // The answer waits for the publish (so that delivery follows
            // the ack closely), but not for a bus that has lost its broker
            // without noticing yet: past PUBLISH_WAIT the publish counts as
            // failed and is made again later.
            let published = tokio::time::timeout(
                PUBLISH_WAIT,
                inner.bus.publish(&recipients, envelope(positions.clone())),
            )
            .await
            .unwrap_or_else(|_| {
                Err(chat_core::Error::temporary(
                    "bus",
                    format!("no answer from the bus within {PUBLISH_WAIT:?}"),
                ))
            });
            if let Err(e) = published {
                // The message is durable in every inbox, but devices on
                // other nodes have no reason to sync: publish it again
                // once the bus takes it (redeliver.rs).
                tracing::warn!(error = %e, "live delivery failed; published again later");
                inner
                    .redeliveries
                    .push(recipients.clone(), envelope(positions));
            }
        }
        if duplicate {
            return Ok(SendOutcome {
                message,
                duplicate,
                seq,
            });
        }
        // Recipients connected to this node are online: no push, and no work
        // for the push worker. Others are checked against presence there.
        let offline: Vec<UserId> = recipients
            .into_iter()
            .filter(|m| *m != sender && !inner.sessions.has_user(*m))
            .collect();
        if !offline.is_empty() {
            let job = PushJob::new(offline, &message, inner.config.push_preview);
            inner.push_queue.offer(job, &inner.stats);
        }
        Ok(SendOutcome {
            message,
            duplicate: false,
            seq,
        })
    }

    /// A reply must quote a message of its own channel. Only replies pay
    /// for this check (membership first, so a non-member learns nothing
    /// about the channel's messages); plain sends go straight to the commit.
    async fn check_reply_target(
        &self,
        sender: UserId,
        channel: ChannelId,
        target: MessageId,
    ) -> ApiResult<()> {
        self.member_channel(sender, channel).await?;
        match self
            .inner
            .messages
            .get(channel, target)
            .await
            .map_err(wire)?
        {
            Some(_) => Ok(()),
            None => Err(err(
                ErrorCode::NotFound,
                "reply_to: no such message in this channel",
            )),
        }
    }

    /// Charges a send to the user's byte rate (`send_quota.rs`).
    fn charge_send(&self, sender: UserId, content: &str) -> ApiResult<()> {
        let charged = self.inner.send_quota.charge(sender, content);
        if charged.is_err() {
            self.inner
                .stats
                .rate_limited
                .fetch_add(1, Ordering::Relaxed);
        }
        charged
    }

    /// A page of `user`'s inbox after position `after`, within the page's
    /// entry and byte limits: `(entries, has_more)`.
    pub async fn sync(
        &self,
        user: UserId,
        after: Seq,
        limit: Option<u32>,
    ) -> ApiResult<(Vec<InboxEntry>, bool)> {
        let cfg = &self.inner.config;
        let limit = clamp_limit(limit, cfg.sync_page);
        let page = self
            .inner
            .messages
            .read(user, after, limit, cfg.page_bytes)
            .await
            .map_err(wire)?;
        let metrics = &self.inner.metrics;
        metrics.syncs.inc();
        metrics.sync_entries.inc_by(page.items.len() as u64);
        if page.has_more {
            metrics.sync_partial_pages.inc();
        }
        Ok((page.items, page.has_more))
    }

    /// A page of a channel's history, for members only, within the page's
    /// entry limit and the server's byte limit: `(messages, has_more)`.
    pub async fn history(
        &self,
        user: UserId,
        channel: ChannelId,
        page: Page,
    ) -> ApiResult<(Vec<Message>, bool)> {
        self.member_channel(user, channel).await?;
        let page = page.with_max_bytes(page.max_bytes.min(self.inner.config.page_bytes));
        let mut page = self
            .inner
            .messages
            .page(channel, page)
            .await
            .map_err(wire)?;
        crate::changes::add_reactions(&self.inner, user, channel, &mut page.items).await?;
        Ok((page.items, page.has_more))
    }

    /// Whether the node's storage takes writes: when it does not, the node
    /// is unhealthy (`/healthz` answers 503) and stays out of discovery.
    pub fn health(&self) -> Health {
        self.inner.messages.health()
    }

    /// Records a heartbeat; tells friends if the user just came online.
    ///
    /// Fails soft: a presence tracker that cannot be reached is logged and
    /// counted (`Stats::presence_failures`), and the connection carries on;
    /// presence catches up with the next heartbeat after it is back.
    pub async fn heartbeat(&self, user: UserId, device: DeviceId) -> ApiResult<()> {
        match self
            .inner
            .presence
            .heartbeat(user, device, self.now())
            .await
        {
            Ok(Some(presence)) => self.announce(presence).await,
            Ok(None) => {}
            Err(e) => {
                self.inner
                    .stats
                    .presence_failures
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "presence heartbeat failed");
            }
        }
        Ok(())
    }

    /// Publishes a presence change to the user's friends.
    async fn announce(&self, presence: Presence) {
        Metrics::count(
            &self.inner.metrics.presence_changes,
            match presence.status {
                PresenceStatus::Online => "online",
                _ => "offline",
            },
        );
        let directory = &self.inner.directory;
        let friends = match directory.friends(presence.user).await {
            // Users the changed user blocks get nothing.
            Ok(f) => match directory.blocked(presence.user).await {
                Ok(blocked) => f
                    .into_iter()
                    .filter(|u| blocked.binary_search(u).is_err())
                    .collect::<Vec<_>>(),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot load blocks for a presence change");
                    return;
                }
            },
            Err(e) => {
                tracing::warn!(error = %e, "cannot load friends for a presence change");
                return;
            }
        };
        if friends.is_empty() {
            return;
        }
        let presence = self.shown_to_friends(presence).await;
        let envelope = Envelope {
            event: BusEvent::Presence { presence },
            skip_device: None,
        };
        if let Err(e) = self.inner.bus.publish(&friends, envelope).await {
            tracing::warn!(error = %e, "presence fan-out failed");
        }
    }

    fn spawn_background(&self, push_rx: mpsc::Receiver<PushJob>) {
        let inner = &self.inner;
        // Presence expiry.
        let server = self.clone();
        let shutdown = inner.shutdown.clone();
        inner.tasks.spawn(async move {
            let mut tick = tokio::time::interval(server.inner.config.presence_sweep_interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tick.tick() => {}
                }
                match server.inner.presence.expire(server.now()).await {
                    Ok(changes) => {
                        for presence in changes {
                            server.announce(presence).await;
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "presence expiry failed"),
                }
            }
        });
        // Failed live deliveries, published again.
        let redeliveries = inner.redeliveries.clone();
        let bus = inner.bus.clone();
        let shutdown = inner.shutdown.clone();
        inner
            .tasks
            .spawn(async move { redeliveries.run(bus.as_ref(), shutdown).await });
        // Push worker: off the send path, bounded queue and concurrency.
        self.spawn_push_worker(push_rx);
    }

    /// Registers this server in discovery with its public URLs and keeps the
    /// lease (and the connection count in it) fresh until shutdown. `serve`
    /// calls this; a host that mounts [`ChatServer::router`] itself calls it
    /// with its own URLs when several servers share discovery (a server
    /// that is alone needs not: see [`ChatServer::router`]).
    ///
    /// The server's id and node id must be free in discovery. A live holder
    /// may be this server's own predecessor that died without leaving, so
    /// the claim is retried until such a lease would have run out; a holder
    /// still there after that is another server, and this fails with
    /// [`ServerError::Config`]. Should another server take the
    /// ids later (this server's lease ran out while discovery was away), the
    /// node stops: two servers with one node id would make the same message
    /// ids. A discovery outage alone never stops it: the lease is refreshed
    /// again once discovery is back.
    ///
    /// ```no_run
    /// # async fn run(server: chat_server::ChatServer) -> Result<(), chat_server::ServerError> {
    /// // Once the host application listens at these addresses:
    /// server
    ///     .advertise("wss://chat1.example.com/chat/v1/ws".into(), "https://chat1.example.com/chat".into())
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub async fn advertise(&self, ws_url: String, http_url: String) -> Result<(), ServerError> {
        let cfg = &self.inner.config;
        let info = ServerInfo {
            id: cfg.server_id.clone(),
            node_id: cfg.node_id,
            ws_url,
            http_url,
            region: cfg.region.clone(),
            capacity: cfg.max_connections as u32,
            connections: 0,
        };
        let ttl = cfg.discovery_ttl.as_millis() as u64;
        let give_up = tokio::time::Instant::now() + cfg.discovery_ttl + cfg.discovery_ttl / 2;
        loop {
            match self.inner.discovery.register(info.clone(), ttl).await {
                Ok(()) => break,
                Err(chat_core::Error::AlreadyExists { what })
                    if tokio::time::Instant::now() < give_up =>
                {
                    tracing::warn!(
                        what,
                        node_id = info.node_id,
                        server_id = %info.id,
                        "held by another live server in discovery; waiting for its lease to end"
                    );
                    tokio::time::sleep(cfg.discovery_ttl / 10).await;
                }
                Err(chat_core::Error::AlreadyExists { what }) => {
                    return Err(ServerError::Config(format!(
                        "this server's {what} is held by another live server in discovery \
                         (server id {}, node id {}): give every server its own --node-id \
                         and --server-id",
                        info.id, info.node_id
                    )))
                }
                Err(e) => return Err(e.into()),
            }
        }
        *self
            .inner
            .advertised
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(info.clone());
        let server = self.clone();
        let shutdown = self.inner.shutdown.clone();
        self.inner.tasks.spawn(async move {
            let mut tick = tokio::time::interval(server.inner.config.discovery_ttl / 3);
            tick.tick().await;
            let mut listed = true;
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tick.tick() => {}
                }
                // A node whose storage refuses writes is a failed node: out
                // of discovery (new clients go elsewhere) until it recovers.
                match server.health() {
                    Health::Ok => {
                        if !listed {
                            tracing::info!("storage healthy again: back in discovery");
                        }
                        listed = true;
                        let mut entry = info.clone();
                        entry.connections = server.connections() as u32;
                        match server.inner.discovery.register(entry, ttl).await {
                            Ok(()) => {}
                            Err(chat_core::Error::AlreadyExists { what }) => {
                                let reason = format!(
                                    "another server took this server's {what} in discovery \
                                     (server id {}, node id {}); stopping",
                                    info.id, info.node_id
                                );
                                tracing::error!("{reason}");
                                *server.inner.fatal.lock().unwrap_or_else(|p| p.into_inner()) =
                                    Some(reason);
                                shutdown.cancel();
                                break;
                            }
                            Err(e) => tracing::warn!(error = %e, "discovery refresh failed"),
                        }
                    }
                    unhealthy => {
                        if listed {
                            tracing::error!(health = ?unhealthy, "storage unavailable: leaving discovery");
                            if let Err(e) = server.inner.discovery.deregister(&info.id).await {
                                tracing::warn!(error = %e, "discovery deregistration failed");
                            }
                        }
                        listed = false;
                    }
                }
            }
        });
        Ok(())
    }

    /// Why the node stopped by itself, if it did (its ids were taken in
    /// discovery by another server).
    pub fn fatal_error(&self) -> Option<String> {
        self.inner
            .fatal
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Whether this server is in discovery: [`ChatServer::advertise`] was
    /// called and shutdown has not begun.
    pub fn is_advertised(&self) -> bool {
        self.inner
            .advertised
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }

    /// Waits for `signal`, then shuts the server down: the future to give
    /// axum's graceful shutdown when the router is mounted in a host
    /// application. axum waits for every connection to end, and WebSocket
    /// sessions only end when the chat server closes them, so both must
    /// start together.
    ///
    /// ```no_run
    /// # async fn run(server: chat_server::ChatServer, app: axum::Router, listener: tokio::net::TcpListener) -> std::io::Result<()> {
    /// let stop = chat_server::CancellationToken::new();
    /// axum::serve(listener, app)
    ///     .with_graceful_shutdown(server.shutdown_after(stop.clone().cancelled_owned()))
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn shutdown_after(
        &self,
        signal: impl Future<Output = ()> + Send + 'static,
    ) -> impl Future<Output = ()> + Send + 'static {
        let server = self.clone();
        async move {
            signal.await;
            server.shutdown().await;
        }
    }

    /// Publishes `envelope` to `recipients` live, waiting at most
    /// [`PUBLISH_WAIT`]; a publish that fails or takes longer is made again
    /// later, as a send's is.
    pub(crate) async fn publish_or_redeliver(&self, recipients: Vec<UserId>, envelope: Envelope) {
        let inner = &self.inner;
        let published = tokio::time::timeout(
            PUBLISH_WAIT,
            inner.bus.publish(&recipients, envelope.clone()),
        )
        .await
        .unwrap_or_else(|_| {
            Err(chat_core::Error::temporary(
                "bus",
                format!("no answer from the bus within {PUBLISH_WAIT:?}"),
            ))
        });
        if let Err(e) = published {
            tracing::warn!(error = %e, "live delivery failed; published again later");
            inner.redeliveries.push(recipients, envelope);
        }
    }

    /// Stops the node: sessions are told to reconnect elsewhere (close code
    /// 4000), the discovery entry is removed, and background tasks end. Waits
    /// up to `drain_timeout` for sessions to finish. Calling it again (or
    /// concurrently) waits the same way and does nothing more.
    pub async fn shutdown(&self) {
        let inner = &self.inner;
        let advertised = inner
            .advertised
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(info) = advertised {
            if let Err(e) = inner.discovery.deregister(&info.id).await {
                tracing::warn!(error = %e, "discovery deregistration failed");
            }
        }
        inner.shutdown.cancel();
        inner.tasks.close();
        if tokio::time::timeout(inner.config.drain_timeout, inner.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!("drain timeout: some sessions did not close in time");
        }
    }

    /// Whether shutdown has begun.
    pub fn is_shutting_down(&self) -> bool {
        self.inner.shutdown.is_cancelled()
    }

    /// A token cancelled when shutdown begins.
    pub(crate) fn shutdown_token(&self) -> CancellationToken {
        self.inner.shutdown.clone()
    }

    /// Current `route` answer: the best registered server for `region`.
    pub async fn route(&self, region: Option<&str>) -> ApiResult<ServerInfo> {
        let servers = self.inner.discovery.servers().await.map_err(wire)?;
        chat_core::pick_server(&servers, region)
            .cloned()
            .ok_or_else(|| err(ErrorCode::Unavailable, "no chat server is available"))
    }

    /// How long to wait before giving up on sessions at shutdown.
    pub fn drain_timeout(&self) -> Duration {
        self.inner.config.drain_timeout
    }
}

/// Clamps a client-given page size to `1..=MAX_PAGE`, `default` if absent.
pub(crate) fn clamp_limit(limit: Option<u32>, default: usize) -> usize {
    limit
        .map(|l| l as usize)
        .unwrap_or(default)
        .clamp(1, MAX_PAGE)
}
