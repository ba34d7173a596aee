//! The live connection: one WebSocket per device, kept open by a background
//! task that reconnects, heartbeats and syncs.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use chat_core::api::{HistoryQuery, MessagePage};
use chat_core::protocol::{Event, ReplyBody, Request};
use chat_core::{
    AttachmentId, Change, ChannelId, ClientMsgId, DeviceId, Invitation, Message, MessageId,
    Presence, Seq, User, UserId,
};
use futures::Stream;
use tokio::sync::{mpsc, oneshot, watch, Notify};
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::backoff::Backoff;
use crate::error::{ClientError, Result};
use crate::http::Session;
use crate::store::CursorStore;
use crate::worker::{self, Command};

/// Who moves the device cursor past a message: see
/// [`ConnectOptions::ack`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum AckMode {
    /// A message counts as handled once the application has taken its
    /// event from [`Events`]. A crash may lose the last messages taken but
    /// not yet processed. The default.
    #[default]
    Auto,
    /// A message counts as handled once the application has called
    /// [`Delivery::ack`] on it (or on a later one: acknowledgements are
    /// cumulative). A crash never loses a message that was not
    /// acknowledged: the next run receives it again.
    Manual,
}

/// Where a device with no saved cursor starts reading the inbox: see
/// [`ConnectOptions::start_from`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum StartFrom {
    /// From the cursor the server keeps for the device: for a device never
    /// seen, the beginning, so a new device receives the whole inbox, every
    /// message of every channel the user is in, oldest first. The default.
    #[default]
    Stored,
    /// From now: messages already in the inbox are skipped; only those
    /// stored from the moment of the first connection on are received.
    /// (Read older ones with [`Session::history`] if wanted.)
    Latest,
    /// After this inbox position, as a [`Delivery::seq`] of another device
    /// of the same user names it: "from this message on".
    After(Seq),
}

/// Settings of a [`Connection`]. Build one with struct-update syntax:
///
/// ```
/// use std::time::Duration;
/// use chat_client::{AckMode, ConnectOptions, StartFrom};
///
/// let options = ConnectOptions {
///     region: Some("eu".into()),
///     reconnect_max: Duration::from_secs(10),
///     ack: AckMode::Manual,
///     start_from: StartFrom::Latest,
///     ..ConnectOptions::default()
/// };
/// # let _ = options;
/// ```
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// Region passed to `route`, to prefer servers near the client.
    pub region: Option<String>,
    /// Ceiling of the first reconnect delay; each further attempt doubles
    /// it. Default 200 ms.
    pub reconnect_min: Duration,
    /// Largest reconnect delay. Default 30 s.
    pub reconnect_max: Duration,
    /// Full jitter: draw each delay uniformly from zero to its ceiling
    /// (instead of waiting the ceiling exactly). Default `true`.
    pub jitter: bool,
    /// How long a request may wait for its reply once written, and how long
    /// the route call, the WebSocket handshake and the `welcome` frame may
    /// each take. A heartbeat not answered within it counts the connection
    /// as dead. Default 10 s.
    pub request_timeout: Duration,
    /// How long [`Connection::send`] keeps retrying (across reconnects and
    /// retryable errors) before giving up. Default 60 s.
    pub send_deadline: Duration,
    /// Heartbeat interval; `None` uses the server's
    /// (`welcome.heartbeat_interval_ms`). Default `None`.
    pub heartbeat_interval: Option<Duration>,
    /// Capacity of the event channel, in events. Default 256.
    pub event_capacity: usize,
    /// Most bytes of events (message text plus 256 bytes per event) waiting
    /// for the application to take them. The connection keeps reading its
    /// socket whatever the application does, so replies (a send's receipt)
    /// are never stuck behind unread events; past this budget it stops
    /// taking in new messages and catches up on them by sync once the
    /// application has read half of what waits. Default 8 MiB.
    pub event_buffer_bytes: usize,
    /// Who moves the device cursor: [`AckMode::Auto`] (taking the event)
    /// or [`AckMode::Manual`] ([`Delivery::ack`]). Default `Auto`.
    pub ack: AckMode,
    /// Where a device with no saved cursor (a new installation) starts.
    /// Ignored once the [`CursorStore`] has a cursor for the device.
    /// Default [`StartFrom::Stored`]: the whole inbox.
    pub start_from: StartFrom,
    /// Whether [`Connection::connect`] returns at once and the first
    /// connection is made in the background, retried with the reconnect
    /// backoff like any later one, while the server is down or
    /// unreachable (requests made meanwhile wait for it). A failure that
    /// retrying cannot fix (credentials refused, a `wss://` route in a
    /// build without TLS) stops the connection: see
    /// [`Connection::closed`]. Default `false`: `connect` fails if the
    /// first connection fails.
    pub retry_initial_connect: bool,
    /// Messages asked for per sync page. Default 200.
    pub sync_page_size: u32,
    /// Largest WebSocket message and frame accepted from the server, in
    /// bytes. Default 2 MiB. A sync page that does not fit makes the
    /// connection reconnect and sync with smaller pages.
    pub max_frame_size: usize,
    /// Whether the connection tells the server, for the messages of direct
    /// channels it hands over, that this device has received them (the
    /// other member gets [`ClientEvent::Delivered`]). Sent with the cursor's
    /// next save (about once a second), one per channel. Default `true`.
    pub delivery_receipts: bool,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        Self {
            region: None,
            reconnect_min: Duration::from_millis(200),
            reconnect_max: Duration::from_secs(30),
            jitter: true,
            request_timeout: Duration::from_secs(10),
            send_deadline: Duration::from_secs(60),
            heartbeat_interval: None,
            event_capacity: 256,
            event_buffer_bytes: 8 << 20,
            ack: AckMode::Auto,
            start_from: StartFrom::Stored,
            retry_initial_connect: false,
            sync_page_size: 200,
            max_frame_size: 2 << 20,
            delivery_receipts: true,
        }
    }
}

impl ConnectOptions {
    pub(crate) fn backoff(&self) -> Backoff {
        Backoff::new(self.reconnect_min, self.reconnect_max, self.jitter)
    }
}

/// A message of the user's inbox handed to the application: the message,
/// its position, and the way to acknowledge it.
///
/// ```no_run
/// # async fn run(mut conn: chat_client::Connection) -> chat_client::Result<()> {
/// use chat_client::ClientEvent;
///
/// while let Some(event) = conn.next_event().await {
///     if let ClientEvent::Message(delivery) = event {
///         println!("{}: {}", delivery.message.sender, delivery.message.content);
///         // With `AckMode::Manual`: only now is it handled for good.
///         delivery.ack().await?;
///     }
/// }
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Delivery {
    /// The message's position in the user's inbox.
    pub seq: Seq,
    /// The message.
    pub message: Message,
    acker: Arc<Acker>,
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("seq", &self.seq)
            .field("message", &self.message)
            .finish_non_exhaustive()
    }
}

impl Delivery {
    pub(crate) fn new(seq: Seq, message: Message, acker: Arc<Acker>) -> Self {
        Self {
            seq,
            message,
            acker,
        }
    }

    /// Acknowledges this message and every one delivered before it, and
    /// waits until the device cursor covering them is saved in the
    /// [`CursorStore`] (and so survives a crash); the server's copy of the
    /// cursor follows.
    ///
    /// With [`AckMode::Manual`] this is what moves the cursor; with
    /// [`AckMode::Auto`] taking the event already did, and this only waits
    /// for the save. Acknowledgements made close together share one save.
    ///
    /// Fails if the save fails ([`ClientError::Store`]) or the connection
    /// has stopped (its reason, as [`Connection::closed`] gives it).
    pub async fn ack(&self) -> Result<()> {
        self.acker.ack(self.seq).await
    }

    /// The message, without the means to acknowledge it.
    pub fn into_message(self) -> Message {
        self.message
    }
}

/// What [`Delivery::ack`] needs of its connection. It does not keep the
/// connection alive.
#[derive(Debug)]
pub(crate) struct Acker {
    cmd: mpsc::WeakSender<Command>,
    flow: Arc<Flow>,
    final_error: Arc<Mutex<Option<ClientError>>>,
}

impl Acker {
    async fn ack(&self, seq: Seq) -> Result<()> {
        self.flow.acked.fetch_max(seq.0, Ordering::AcqRel);
        let stopped = || stopped_error(&self.final_error);
        let Some(cmd) = self.cmd.upgrade() else {
            return Err(stopped());
        };
        let (reply, rx) = oneshot::channel();
        if cmd.send(Command::Flush { upto: seq, reply }).await.is_err() {
            return Err(stopped());
        }
        rx.await.unwrap_or_else(|_| Err(stopped()))
    }
}

/// The flow of events between the background task and the application.
#[derive(Debug, Default)]
pub(crate) struct Flow {
    /// The highest inbox position the application acknowledged (manual
    /// mode) or took from the event stream (automatic mode).
    pub(crate) acked: AtomicU64,
    /// Bytes of events waiting for the application (in the task's queue
    /// and the channel).
    pub(crate) queued_bytes: AtomicUsize,
    /// Signalled whenever the application takes an event, so that the task
    /// can resume taking in messages.
    pub(crate) taken: Notify,
}

/// Something that happened on a [`Connection`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum ClientEvent {
    /// A WebSocket to `server_id` is open and welcomed; a sync has started.
    Connected {
        /// The chat server's id.
        server_id: String,
    },
    /// A sync on the current connection is complete: every message of the
    /// inbox up to `cursor` has been handed over (as a
    /// [`ClientEvent::Message`] before this event).
    Synced {
        /// The inbox position handed over up to.
        cursor: Seq,
    },
    /// A message, from sync or live; each message is delivered once, in
    /// inbox order. Acknowledge it with [`Delivery::ack`] when the
    /// connection uses [`AckMode::Manual`].
    ///
    /// Messages sent through this connection are not delivered back (the
    /// [`SendReceipt`] stands for them), except one whose receipt was cut
    /// off by a disconnect or a crash: it can come back through the sync of
    /// the next connection, as a message of [`Connection::user_id`].
    Message(Delivery),
    /// A friend's presence changed.
    Presence(Presence),
    /// Someone asks to be friends: answer with [`Session::add_friend`]
    /// (accept) or [`Session::remove_friend`] (decline).
    FriendRequest(User),
    /// A friend request the user sent was accepted.
    FriendAccepted(User),
    /// Another member is typing in `channel`: show it until
    /// `expires_in_ms` pass without another `Typing` from them (or a
    /// message from them arrives).
    Typing {
        /// The channel.
        channel: ChannelId,
        /// Who is typing.
        user: UserId,
        /// How long the indicator lasts without a refresh.
        expires_in_ms: u64,
    },
    /// The user is invited to a group: answer with
    /// [`Session::accept_invitation`] or [`Session::decline_invitation`].
    Invitation(Invitation),
    /// A read marker moved: `user` has read `channel` up to `message`.
    /// From another member, it is a read receipt; from the connected user
    /// (another of their devices), the channel's unread messages are now
    /// those after `message`.
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
    /// The WebSocket closed or failed. Unless the connection has stopped
    /// (see [`Connection::closed`]), it reconnects.
    Disconnected {
        /// The close code the server sent, if any.
        code: Option<u16>,
        /// The close reason, or what went wrong.
        reason: String,
    },
    /// Something failed in the background: a cursor store error, a failed
    /// sync, or (last event of the stream) the reason the connection stopped
    /// for good, such as [`ClientError::Closed`] with code 4100, which
    /// [`Connection::closed`] also returns.
    Error(ClientError),
    /// A message of one of the user's channels was edited, deleted or
    /// reacted to, by anyone (this user's other devices included): a
    /// change entry of the inbox, delivered live or by sync, once and in
    /// inbox order like a [`ClientEvent::Message`] (and acknowledged the
    /// same way). Apply it to the application's copy of the message:
    /// replace the copy with `delivery.message` for
    /// [`Change::Edited`] and [`Change::Deleted`] (the tombstone), count
    /// the reaction in or out for [`Change::Reacted`] and
    /// [`Change::Unreacted`]. Changes made through this connection are not
    /// delivered back: their [`ChangeReceipt`] stands for them.
    Changed {
        /// What changed.
        change: Change,
        /// The message after the change, its position and the means to
        /// acknowledge it.
        delivery: Delivery,
    },
}

/// What [`ConnectionHandle::edit`], [`ConnectionHandle::delete`],
/// [`ConnectionHandle::react`] and [`ConnectionHandle::unreact`] resolve
/// to: the change is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ChangeReceipt {
    /// The message after the change (without reactions).
    pub message: Message,
    /// What changed.
    pub change: Change,
    /// `true` if the message already was in the asked state: nothing was
    /// written (the same edit again, a second delete, a reaction already
    /// there or already gone).
    pub unchanged: bool,
    /// The change entry's position in the user's inbox (absent when
    /// unchanged).
    pub seq: Option<Seq>,
}

impl ClientEvent {
    /// The event for a server notice (a friend request, its acceptance, an
    /// invitation); the event back if it is none of these.
    pub(crate) fn from_notice(event: Event) -> std::result::Result<Self, Box<Event>> {
        match event {
            Event::FriendRequest { from } => Ok(ClientEvent::FriendRequest(from)),
            Event::FriendAccepted { friend } => Ok(ClientEvent::FriendAccepted(friend)),
            Event::Invitation { invitation } => Ok(ClientEvent::Invitation(invitation)),
            Event::Typing {
                channel,
                user,
                expires_in_ms,
            } => Ok(ClientEvent::Typing {
                channel,
                user,
                expires_in_ms,
            }),
            Event::Read {
                channel,
                user,
                message,
            } => Ok(ClientEvent::Read {
                channel,
                user,
                message,
            }),
            Event::Delivered {
                channel,
                user,
                message,
            } => Ok(ClientEvent::Delivered {
                channel,
                user,
                message,
            }),
            other => Err(Box::new(other)),
        }
    }

    /// What the event counts for against
    /// [`ConnectOptions::event_buffer_bytes`].
    pub(crate) fn queued_size(&self) -> usize {
        const OVERHEAD: usize = 256;
        match self {
            ClientEvent::Message(d) | ClientEvent::Changed { delivery: d, .. } => {
                OVERHEAD.saturating_add(d.message.content.len())
            }
            _ => OVERHEAD,
        }
    }
}

/// What [`Connection::send`] resolves to: the message is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SendReceipt {
    /// The server-assigned id.
    pub message_id: MessageId,
    /// Server time of acceptance, Unix milliseconds.
    pub created_at: u64,
    /// `true` if a previous attempt had already stored the message.
    pub duplicate: bool,
    /// The idempotency key the message was sent with.
    pub client_msg_id: ClientMsgId,
    /// The message's position in the user's inbox (absent only for a
    /// duplicate whose positions the server no longer knows).
    pub seq: Option<Seq>,
}

/// What [`ConnectionHandle::mark_read`] resolves to: the user's read
/// marker in a channel as stored now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReadState {
    /// The channel.
    pub channel: ChannelId,
    /// The last message read (the one marked, or a later one marked
    /// before).
    pub message: MessageId,
    /// Messages of the channel after it.
    pub unread: u64,
}

/// The stream of [`ClientEvent`]s of a connection.
///
/// Read it with [`Events::recv`] or as a [`Stream`]. It ends when the
/// connection has stopped; [`Connection::closed`] then says why.
#[derive(Debug)]
pub struct Events {
    rx: mpsc::Receiver<ClientEvent>,
    flow: Arc<Flow>,
    auto_ack: bool,
}

impl Events {
    /// The next event, or `None` once the connection has stopped.
    pub async fn recv(&mut self) -> Option<ClientEvent> {
        let event = self.rx.recv().await;
        self.took(event)
    }

    /// The next event if one is waiting.
    pub fn try_recv(&mut self) -> Option<ClientEvent> {
        let event = self.rx.try_recv().ok();
        self.took(event)
    }

    /// Accounts for an event the application took.
    fn took(&self, event: Option<ClientEvent>) -> Option<ClientEvent> {
        let e = event.as_ref()?;
        self.flow
            .queued_bytes
            .fetch_sub(e.queued_size(), Ordering::AcqRel);
        if let (true, ClientEvent::Message(d) | ClientEvent::Changed { delivery: d, .. }) =
            (self.auto_ack, e)
        {
            self.flow.acked.fetch_max(d.seq.0, Ordering::AcqRel);
        }
        self.flow.taken.notify_one();
        event
    }
}

impl Stream for Events {
    type Item = ClientEvent;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<ClientEvent>> {
        match self.rx.poll_recv(cx) {
            Poll::Ready(event) => Poll::Ready(self.took(event)),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// State shared by the handles and the background task.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) cmd_tx: mpsc::Sender<Command>,
    pub(crate) cancel: CancellationToken,
    pub(crate) cursor: watch::Receiver<Seq>,
    pub(crate) done: watch::Receiver<bool>,
    /// Why the task stopped, once it has.
    pub(crate) final_error: Arc<Mutex<Option<ClientError>>>,
    pub(crate) options: ConnectOptions,
    pub(crate) user: UserId,
    pub(crate) device: DeviceId,
}

/// The reason the task stopped, or the application's close if none is
/// recorded.
fn stopped_error(final_error: &Mutex<Option<ClientError>>) -> ClientError {
    final_error
        .lock()
        .ok()
        .and_then(|e| e.clone())
        .unwrap_or_else(worker::closed_by_application)
}

/// A cloneable handle on a [`Connection`] for making requests from other
/// tasks. It does not keep the connection alive: once the [`Connection`] is
/// dropped or closed, its calls fail with [`ClientError::Closed`].
#[derive(Debug, Clone)]
pub struct ConnectionHandle {
    shared: Arc<Shared>,
}

/// A live connection of one device: a WebSocket kept open by a background
/// task, with heartbeats, reconnects (exponential backoff, full jitter, a new
/// `route` each time) and sync from the device cursor, so every message of
/// the user's inbox is delivered as an event exactly once.
///
/// Sending from the loop that reads events is fine: the connection keeps
/// reading its socket while events wait, so a send's receipt is never stuck
/// behind them.
///
/// ```no_run
/// # async fn run(session: chat_client::Session) -> chat_client::Result<()> {
/// use std::sync::Arc;
/// use chat_client::{ClientEvent, ConnectOptions, DeviceId, FileCursorStore};
///
/// let store = Arc::new(FileCursorStore::new("./chat-state"));
/// let mut conn = session
///     .connect(DeviceId::new_random(), store, ConnectOptions::default())
///     .await?;
/// while let Some(event) = conn.next_event().await {
///     if let ClientEvent::Message(d) = event {
///         if d.message.sender != conn.user_id() {
///             conn.send(d.message.channel_id, format!("you said: {}", d.message.content))
///                 .await?;
///         }
///     }
/// }
/// println!("stopped: {}", conn.closed().await);
/// # Ok(()) }
/// ```
///
/// Dropping it stops the task (closing the socket with code 1000).
#[derive(Debug)]
pub struct Connection {
    handle: ConnectionHandle,
    events: Events,
    _stop: DropGuard,
}

impl Connection {
    /// Connects `device` of the session's user: loads the device state from
    /// `store`, asks `route` for a chat server, opens the WebSocket and waits
    /// for `welcome`; then a background task takes over.
    ///
    /// Fails if the first connection cannot be made (bad token, no server),
    /// unless [`ConnectOptions::retry_initial_connect`] is set; after that,
    /// failures are reconnected and reported as events.
    pub async fn connect(
        session: &Session,
        device: DeviceId,
        store: Arc<dyn CursorStore>,
        options: ConnectOptions,
    ) -> Result<Connection> {
        let user = session.user_id();
        let state = store.load(user, device).await?;
        let first = if options.retry_initial_connect {
            None
        } else {
            Some(worker::open_socket(session, device, &options).await?)
        };

        let (cmd_tx, cmd_rx) = mpsc::channel(64);
        let (events_tx, events_rx) = mpsc::channel(options.event_capacity.max(1));
        let initial_cursor = match (&state, &first) {
            (Some(s), _) => s.cursor,
            (None, Some((_, welcome))) => welcome.cursor,
            (None, None) => Seq::ZERO,
        };
        let (cursor_tx, cursor_rx) = watch::channel(initial_cursor);
        let (done_tx, done_rx) = watch::channel(false);
        let cancel = CancellationToken::new();
        let final_error = Arc::new(Mutex::new(None));
        let flow = Arc::new(Flow::default());
        let acker = Arc::new(Acker {
            cmd: cmd_tx.downgrade(),
            flow: flow.clone(),
            final_error: final_error.clone(),
        });

        let task = worker::Worker::new(worker::WorkerParts {
            session: session.clone(),
            device,
            store,
            options: options.clone(),
            state,
            cmd_rx,
            events_tx,
            cancel: cancel.clone(),
            cursor_tx,
            done_tx,
            final_error: final_error.clone(),
            flow: flow.clone(),
            acker,
        });
        tokio::spawn(task.run(first));

        let auto_ack = options.ack == AckMode::Auto;
        let shared = Arc::new(Shared {
            cmd_tx,
            cancel: cancel.clone(),
            cursor: cursor_rx,
            done: done_rx,
            final_error,
            options,
            user,
            device,
        });
        Ok(Connection {
            handle: ConnectionHandle { shared },
            events: Events {
                rx: events_rx,
                flow,
                auto_ack,
            },
            _stop: cancel.drop_guard(),
        })
    }

    /// The events: messages, presence changes, connection changes.
    pub fn events(&mut self) -> &mut Events {
        &mut self.events
    }

    /// The next event; `None` once the connection has stopped (then
    /// [`Connection::closed`] says why). Same as `self.events().recv()`.
    pub async fn next_event(&mut self) -> Option<ClientEvent> {
        self.events.recv().await
    }

    /// A cloneable handle for requests from other tasks.
    pub fn handle(&self) -> ConnectionHandle {
        self.handle.clone()
    }

    /// Sends a message and waits until it is stored: see
    /// [`ConnectionHandle::send`].
    pub async fn send(
        &self,
        channel: ChannelId,
        content: impl Into<String>,
    ) -> Result<SendReceipt> {
        self.handle.send(channel, content).await
    }

    /// Sends a message with an idempotency key of your choice: see
    /// [`ConnectionHandle::send_with_id`].
    pub async fn send_with_id(
        &self,
        channel: ChannelId,
        client_msg_id: ClientMsgId,
        content: impl Into<String>,
    ) -> Result<SendReceipt> {
        self.handle
            .send_with_id(channel, client_msg_id, content)
            .await
    }

    /// Sends a reply to a message of the same channel: see
    /// [`ConnectionHandle::send_reply`].
    pub async fn send_reply(
        &self,
        channel: ChannelId,
        reply_to: MessageId,
        content: impl Into<String>,
    ) -> Result<SendReceipt> {
        self.handle.send_reply(channel, reply_to, content).await
    }

    /// Sends a message carrying uploaded files: see
    /// [`ConnectionHandle::send_with_attachments`].
    pub async fn send_with_attachments(
        &self,
        channel: ChannelId,
        content: impl Into<String>,
        attachments: Vec<AttachmentId>,
    ) -> Result<SendReceipt> {
        self.handle
            .send_with_attachments(channel, content, attachments)
            .await
    }

    /// A page of a channel's history: see [`ConnectionHandle::history`].
    pub async fn history(&self, channel: ChannelId, query: &HistoryQuery) -> Result<MessagePage> {
        self.handle.history(channel, query).await
    }

    /// Says the user is typing in `channel`: see [`ConnectionHandle::typing`].
    pub async fn typing(&self, channel: ChannelId) -> Result<()> {
        self.handle.typing(channel).await
    }

    /// Marks `channel` read up to `message`: see
    /// [`ConnectionHandle::mark_read`].
    pub async fn mark_read(&self, channel: ChannelId, message: MessageId) -> Result<ReadState> {
        self.handle.mark_read(channel, message).await
    }

    /// Says a message of a direct channel was received: see
    /// [`ConnectionHandle::mark_delivered`].
    pub async fn mark_delivered(
        &self,
        channel: ChannelId,
        message: MessageId,
    ) -> Result<MessageId> {
        self.handle.mark_delivered(channel, message).await
    }

    /// Edits one of the user's messages: see [`ConnectionHandle::edit`].
    pub async fn edit(
        &self,
        channel: ChannelId,
        message_id: MessageId,
        content: impl Into<String>,
    ) -> Result<ChangeReceipt> {
        self.handle.edit(channel, message_id, content).await
    }

    /// Deletes a message: see [`ConnectionHandle::delete`].
    pub async fn delete(&self, channel: ChannelId, message_id: MessageId) -> Result<ChangeReceipt> {
        self.handle.delete(channel, message_id).await
    }

    /// Reacts to a message: see [`ConnectionHandle::react`].
    pub async fn react(
        &self,
        channel: ChannelId,
        message_id: MessageId,
        emoji: impl Into<String>,
    ) -> Result<ChangeReceipt> {
        self.handle.react(channel, message_id, emoji).await
    }

    /// Takes a reaction back: see [`ConnectionHandle::unreact`].
    pub async fn unreact(
        &self,
        channel: ChannelId,
        message_id: MessageId,
        emoji: impl Into<String>,
    ) -> Result<ChangeReceipt> {
        self.handle.unreact(channel, message_id, emoji).await
    }

    /// The presence of `users`: see [`ConnectionHandle::presence`].
    pub async fn presence(&self, users: &[UserId]) -> Result<Vec<Presence>> {
        self.handle.presence(users).await
    }

    /// The device cursor as saved: see [`ConnectionHandle::cursor`].
    pub fn cursor(&self) -> Seq {
        self.handle.cursor()
    }

    /// The connected user.
    pub fn user_id(&self) -> UserId {
        self.handle.user_id()
    }

    /// The connected device.
    pub fn device_id(&self) -> DeviceId {
        self.handle.device_id()
    }

    /// Whether the connection has stopped: see
    /// [`ConnectionHandle::is_closed`].
    pub fn is_closed(&self) -> bool {
        self.handle.is_closed()
    }

    /// Closes the connection gracefully: see [`ConnectionHandle::close`].
    pub async fn close(&self) {
        self.handle.close().await
    }

    /// Waits until the connection has stopped and says why: see
    /// [`ConnectionHandle::closed`].
    pub async fn closed(&self) -> ClientError {
        self.handle.closed().await
    }
}

impl ConnectionHandle {
    /// Sends a message with a fresh [`ClientMsgId`] and waits until it is
    /// stored; see [`ConnectionHandle::send_with_id`].
    ///
    /// ```no_run
    /// # async fn run(conn: chat_client::ConnectionHandle, channel: chat_client::ChannelId) -> chat_client::Result<()> {
    /// let receipt = conn.send(channel, "hello").await?;
    /// println!("stored as {} at position {:?}", receipt.message_id, receipt.seq);
    /// # Ok(()) }
    /// ```
    pub async fn send(
        &self,
        channel: ChannelId,
        content: impl Into<String>,
    ) -> Result<SendReceipt> {
        self.send_with_id(channel, ClientMsgId::new_random(), content)
            .await
    }

    /// Sends a message with the idempotency key `client_msg_id` and waits
    /// until the server has stored it.
    ///
    /// If the connection drops, or the server answers a retryable error
    /// (`unavailable`, `rate_limited`), the same request (same
    /// `client_msg_id`) is sent again after backoff (waiting for a reconnect
    /// if needed) until [`ConnectOptions::send_deadline`]; a retry of a
    /// message the server already stored resolves with `duplicate: true`.
    /// Non-retryable errors resolve at once with [`ClientError::Api`].
    ///
    /// A key derived from what the message answers makes a reply
    /// idempotent across crashes too: sending it again after a restart
    /// stores nothing new.
    ///
    /// ```no_run
    /// # async fn run(conn: chat_client::ConnectionHandle, d: chat_client::Delivery) -> chat_client::Result<()> {
    /// use chat_client::ClientMsgId;
    ///
    /// let key = ClientMsgId::new(format!("reply-to-{}", d.message.id)).expect("a valid key");
    /// conn.send_with_id(d.message.channel_id, key, "got it").await?;
    /// # Ok(()) }
    /// ```
    pub async fn send_with_id(
        &self,
        channel: ChannelId,
        client_msg_id: ClientMsgId,
        content: impl Into<String>,
    ) -> Result<SendReceipt> {
        self.send_message(channel, client_msg_id, content.into(), None, Vec::new())
            .await
    }

    /// Sends a message that replies to (quotes) `reply_to`, a message of
    /// the same channel, with a fresh [`ClientMsgId`], retried like
    /// [`send_with_id`](Self::send_with_id). The message carries
    /// [`Message::reply_to`](chat_core::Message::reply_to) in history and
    /// events. A `reply_to` that is no message of `channel` is refused
    /// with [`ClientError::Api`] and code `not_found`.
    ///
    /// ```no_run
    /// # async fn run(conn: chat_client::ConnectionHandle, d: chat_client::Delivery) -> chat_client::Result<()> {
    /// conn.send_reply(d.message.channel_id, d.message.id, "agreed").await?;
    /// # Ok(()) }
    /// ```
    pub async fn send_reply(
        &self,
        channel: ChannelId,
        reply_to: MessageId,
        content: impl Into<String>,
    ) -> Result<SendReceipt> {
        self.send_message(
            channel,
            ClientMsgId::new_random(),
            content.into(),
            Some(reply_to),
            Vec::new(),
        )
        .await
    }

    /// Sends a message carrying files uploaded first with
    /// [`Session::upload`](crate::Session::upload) (at most 10, your own
    /// uploads), with a fresh [`ClientMsgId`], retried like
    /// [`send_with_id`](Self::send_with_id). `content` may be empty. The
    /// server binds each file to the channel: its members may then
    /// download it ([`Session::download`](crate::Session::download)), and
    /// the message carries the references in
    /// [`Message::attachments`](chat_core::Message::attachments). An id
    /// that is unknown or another user's upload is refused with code
    /// `not_found`; one already shared in another channel with `conflict`.
    ///
    /// ```no_run
    /// # async fn run(session: chat_client::Session, conn: chat_client::ConnectionHandle, channel: chat_client::ChannelId) -> chat_client::Result<()> {
    /// # let bytes: Vec<u8> = Vec::new();
    /// let photo = session.upload("photo.png", "image/png", bytes).await?;
    /// conn.send_with_attachments(channel, "the view", vec![photo.id]).await?;
    /// # Ok(()) }
    /// ```
    pub async fn send_with_attachments(
        &self,
        channel: ChannelId,
        content: impl Into<String>,
        attachments: Vec<AttachmentId>,
    ) -> Result<SendReceipt> {
        self.send_message(
            channel,
            ClientMsgId::new_random(),
            content.into(),
            None,
            attachments,
        )
        .await
    }

    /// The send request, retried (see [`send_with_id`](Self::send_with_id)).
    async fn send_message(
        &self,
        channel: ChannelId,
        client_msg_id: ClientMsgId,
        content: String,
        reply_to: Option<MessageId>,
        attachments: Vec<AttachmentId>,
    ) -> Result<SendReceipt> {
        let options = &self.shared.options;
        let deadline = worker::deadline_in(options.send_deadline);
        let mut backoff = options.backoff();
        loop {
            let request = Request::Send {
                channel,
                client_msg_id: client_msg_id.clone(),
                content: content.clone(),
                reply_to,
                attachments: attachments.clone(),
            };
            let error = match self.request(request, deadline).await {
                Ok(ReplyBody::Sent {
                    message_id,
                    created_at,
                    duplicate,
                    seq,
                }) => {
                    return Ok(SendReceipt {
                        message_id,
                        created_at,
                        duplicate,
                        client_msg_id,
                        seq,
                    })
                }
                Ok(other) => return Err(unexpected("sent", &other)),
                Err(e) => e,
            };
            // While the task runs, a closed connection is reconnected, so
            // any close (even 1000 from the server) is worth a retry.
            let retry = error.is_retryable() || matches!(error, ClientError::Closed { .. });
            if !retry || self.is_closed() {
                return Err(error);
            }
            let delay = backoff.next_delay();
            if worker::deadline_in(delay) >= deadline {
                return Err(error);
            }
            tracing::debug!(%error, ?delay, client_msg_id = %client_msg_id, "retrying send");
            tokio::time::sleep(delay).await;
        }
    }

    /// A page of a channel's history over this connection (members
    /// only): the same query and answer as [`Session::history`] over HTTP.
    /// Pages stop at the query's `limit` or the server's byte limit;
    /// `has_more` says whether to ask on (from the last id).
    ///
    /// ```no_run
    /// # async fn run(conn: chat_client::ConnectionHandle, channel: chat_client::ChannelId) -> chat_client::Result<()> {
    /// use chat_client::HistoryQuery;
    ///
    /// let page = conn.history(channel, &HistoryQuery { limit: Some(20), ..Default::default() }).await?;
    /// for m in &page.messages {
    ///     println!("{}: {}", m.sender, m.content);
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn history(&self, channel: ChannelId, query: &HistoryQuery) -> Result<MessagePage> {
        let request = Request::History {
            channel,
            before: query.before,
            after: query.after,
            limit: query.limit,
        };
        match self.request(request, self.request_deadline()).await? {
            ReplyBody::History { messages, has_more } => Ok(MessagePage { messages, has_more }),
            other => Err(unexpected("history", &other)),
        }
    }

    /// The presence of `users`, over this connection.
    pub async fn presence(&self, users: &[UserId]) -> Result<Vec<Presence>> {
        let request = Request::Presence {
            users: users.to_vec(),
        };
        match self.request(request, self.request_deadline()).await? {
            ReplyBody::Presence { users } => Ok(users),
            other => Err(unexpected("presence", &other)),
        }
    }

    /// Says the user is typing in `channel` (a member's): the other
    /// members connected now get [`ClientEvent::Typing`]. Nothing is
    /// stored or pushed. Call it again every few seconds while the user
    /// types (the server publishes at most one every 2 s per channel; the
    /// indicator expires after 5 s without one).
    ///
    /// ```no_run
    /// # async fn run(conn: chat_client::ConnectionHandle, channel: chat_client::ChannelId) -> chat_client::Result<()> {
    /// conn.typing(channel).await?;
    /// # Ok(()) }
    /// ```
    pub async fn typing(&self, channel: ChannelId) -> Result<()> {
        match self
            .request(Request::Typing { channel }, self.request_deadline())
            .await?
        {
            ReplyBody::Typing { .. } => Ok(()),
            other => Err(unexpected("typing", &other)),
        }
    }

    /// Marks `channel` (a member's) read up to `message`, a message of the
    /// channel: the read marker only moves forward, so marking an older
    /// message changes nothing and answers the marker stored. When it
    /// moves, the user's other devices and the other members get
    /// [`ClientEvent::Read`]. Answers the marker and the unread count.
    ///
    /// ```no_run
    /// # async fn run(conn: chat_client::ConnectionHandle, channel: chat_client::ChannelId, last: chat_client::MessageId) -> chat_client::Result<()> {
    /// let state = conn.mark_read(channel, last).await?;
    /// println!("read up to {}, {} unread", state.message, state.unread);
    /// # Ok(()) }
    /// ```
    pub async fn mark_read(&self, channel: ChannelId, message: MessageId) -> Result<ReadState> {
        match self
            .request(Request::Read { channel, message }, self.request_deadline())
            .await?
        {
            ReplyBody::Read {
                channel,
                message,
                unread,
            } => Ok(ReadState {
                channel,
                message,
                unread,
            }),
            other => Err(unexpected("read", &other)),
        }
    }

    /// Says a device of the user has received `message` of direct channel
    /// `channel` (the delivered marker only moves forward); the other
    /// member gets [`ClientEvent::Delivered`]. The connection does this by
    /// itself for the direct messages it hands over (see
    /// [`ConnectOptions::delivery_receipts`]). Answers the marker stored.
    pub async fn mark_delivered(
        &self,
        channel: ChannelId,
        message: MessageId,
    ) -> Result<MessageId> {
        match self
            .request(
                Request::Delivered { channel, message },
                self.request_deadline(),
            )
            .await?
        {
            ReplyBody::Delivered { message, .. } => Ok(message),
            other => Err(unexpected("delivered", &other)),
        }
    }

    /// Replaces the content of one of the user's own messages (`channel`
    /// must be a member's): the id and the order stay, `edited_at` is set,
    /// and every member's devices get [`ClientEvent::Changed`] (live, or by
    /// sync when they reconnect). The same content again changes nothing
    /// ([`ChangeReceipt::unchanged`]). Refused with `forbidden` for a
    /// message of another user, `not_found` for a channel the user is not
    /// in or a message not in it, `conflict` for a deleted message, and
    /// like a send for empty or too long content.
    ///
    /// ```no_run
    /// # async fn run(conn: chat_client::ConnectionHandle, channel: chat_client::ChannelId, id: chat_client::MessageId) -> chat_client::Result<()> {
    /// let receipt = conn.edit(channel, id, "hello, fixed").await?;
    /// assert!(receipt.message.edited_at.is_some());
    /// # Ok(()) }
    /// ```
    pub async fn edit(
        &self,
        channel: ChannelId,
        message_id: MessageId,
        content: impl Into<String>,
    ) -> Result<ChangeReceipt> {
        self.change(Request::Edit {
            channel,
            message_id,
            content: content.into(),
        })
        .await
    }

    /// Deletes a message: the user's own, or any message of a group the
    /// user owns (`forbidden` otherwise). It stays as a tombstone (no
    /// content, [`Message::deleted`]); every member's devices get
    /// [`ClientEvent::Changed`]. Deleting again changes nothing.
    pub async fn delete(&self, channel: ChannelId, message_id: MessageId) -> Result<ChangeReceipt> {
        self.change(Request::Delete {
            channel,
            message_id,
        })
        .await
    }

    /// Adds the reaction `emoji` (1 to 32 bytes, no control character or
    /// space) to a message of a channel the user is in; at most 20
    /// distinct reactions per user and message (`limit_exceeded`). History
    /// pages count them per emoji ([`Message::reactions`]); every member's
    /// devices get [`ClientEvent::Changed`]. A reaction the user already
    /// has changes nothing.
    pub async fn react(
        &self,
        channel: ChannelId,
        message_id: MessageId,
        emoji: impl Into<String>,
    ) -> Result<ChangeReceipt> {
        self.change(Request::React {
            channel,
            message_id,
            emoji: emoji.into(),
        })
        .await
    }

    /// Takes back the user's reaction `emoji`; one the user does not have
    /// changes nothing.
    pub async fn unreact(
        &self,
        channel: ChannelId,
        message_id: MessageId,
        emoji: impl Into<String>,
    ) -> Result<ChangeReceipt> {
        self.change(Request::Unreact {
            channel,
            message_id,
            emoji: emoji.into(),
        })
        .await
    }

    async fn change(&self, request: Request) -> Result<ChangeReceipt> {
        match self.request(request, self.request_deadline()).await? {
            ReplyBody::Changed {
                message,
                change,
                unchanged,
                seq,
            } => Ok(ChangeReceipt {
                message: *message,
                change,
                unchanged,
                seq,
            }),
            other => Err(unexpected("change", &other)),
        }
    }

    /// The device cursor as last saved in the [`CursorStore`]: every entry
    /// of the user's inbox up to this position was handled (taken or
    /// acknowledged, per [`ConnectOptions::ack`]) or was this device's own
    /// message. It is saved at most once a second, at once on
    /// [`Delivery::ack`], and when the connection stops.
    pub fn cursor(&self) -> Seq {
        *self.shared.cursor.borrow()
    }

    /// The connected user.
    pub fn user_id(&self) -> UserId {
        self.shared.user
    }

    /// The connected device.
    pub fn device_id(&self) -> DeviceId {
        self.shared.device
    }

    /// Whether the background task has stopped (or been told to, or is
    /// stopping after a close code that forbids reconnecting).
    pub fn is_closed(&self) -> bool {
        self.shared.cancel.is_cancelled()
            || *self.shared.done.borrow()
            || self.shared.final_error.lock().map_or(true, |e| e.is_some())
    }

    /// Closes the connection gracefully and waits for the background task
    /// to end (the cursor is saved on the way out).
    pub async fn close(&self) {
        self.shared.cancel.cancel();
        self.wait_done().await;
    }

    /// Waits until the connection has stopped for good and returns why:
    /// [`ClientError::Closed`] with code 1000 after [`Connection::close`]
    /// (or dropping the [`Connection`]), or the error that ended it, such
    /// as [`ClientError::Closed`] with code 4100 when the session was
    /// logged out and no [`Credentials`](crate::Credentials) could log in
    /// again. Once the event stream has ended, this returns at once.
    ///
    /// ```no_run
    /// # async fn run(mut conn: chat_client::Connection) {
    /// while let Some(event) = conn.next_event().await {
    ///     // ...
    /// #   let _ = event;
    /// }
    /// let why = conn.closed().await;
    /// eprintln!("connection stopped: {why} (retrying can help: {})", why.is_retryable());
    /// # }
    /// ```
    pub async fn closed(&self) -> ClientError {
        self.wait_done().await;
        self.stopped_error()
    }

    async fn wait_done(&self) {
        let mut done = self.shared.done.clone();
        // An error means the task is gone, which is what we wait for.
        let _ = done.wait_for(|d| *d).await;
    }

    /// When a request still waiting in the queue (not yet written) expires.
    fn request_deadline(&self) -> Instant {
        worker::deadline_in(self.shared.options.request_timeout)
    }

    /// Hands a request to the task and waits for its reply. `expires`: by
    /// when it must have been written to a socket.
    async fn request(&self, request: Request, expires: Instant) -> Result<ReplyBody> {
        let (reply, rx) = oneshot::channel();
        let command = Command::Request {
            request,
            reply,
            expires,
        };
        if self.shared.cmd_tx.send(command).await.is_err() {
            return Err(self.stopped_error());
        }
        // The task answers every request, by `expires` plus the reply
        // timeout at the latest; the margin only guards against a bug.
        let latest = worker::later(
            expires,
            self.shared
                .options
                .request_timeout
                .saturating_add(Duration::from_secs(1)),
        );
        match tokio::time::timeout_at(latest, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(self.stopped_error()),
            Err(_) => Err(ClientError::Timeout),
        }
    }

    fn stopped_error(&self) -> ClientError {
        stopped_error(&self.shared.final_error)
    }
}

fn unexpected(expected: &str, got: &ReplyBody) -> ClientError {
    ClientError::decode(format!(
        "expected a {expected:?} reply, got {:?}",
        worker::reply_kind(got)
    ))
}
