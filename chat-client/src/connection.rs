//! The live connection: one WebSocket per device, kept open by a background
//! task that reconnects, heartbeats and syncs.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use chat_core::api::{HistoryQuery, MessagePage};
use chat_core::protocol::{Event, ReplyBody, Request};
use chat_core::{
    ChannelId, ClientMsgId, DeviceId, Invitation, Message, MessageId, Presence, Seq, User, UserId,
};
use futures::Stream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::backoff::Backoff;
use crate::error::{ClientError, Result};
use crate::http::Session;
use crate::store::CursorStore;
use crate::worker::{self, Command};

/// Settings of a [`Connection`]. Build one with struct-update syntax:
///
/// ```
/// use std::time::Duration;
/// use chat_client::ConnectOptions;
///
/// let options = ConnectOptions {
///     region: Some("eu".into()),
///     reconnect_max: Duration::from_secs(10),
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
    /// Capacity of the event channel. When the application does not read
    /// events, the connection stops reading the socket once it is full.
    /// Default 256.
    pub event_capacity: usize,
    /// Messages asked for per sync page. Default 200.
    pub sync_page_size: u32,
    /// Largest WebSocket message and frame accepted from the server, in
    /// bytes. Default 2 MiB. A sync page that does not fit makes the
    /// connection reconnect and sync with smaller pages.
    pub max_frame_size: usize,
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
            sync_page_size: 200,
            max_frame_size: 2 << 20,
        }
    }
}

impl ConnectOptions {
    pub(crate) fn backoff(&self) -> Backoff {
        Backoff::new(self.reconnect_min, self.reconnect_max, self.jitter)
    }
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
    /// A sync on the current connection is complete: every message up to
    /// this point has been delivered (as [`ClientEvent::Message`] before this
    /// event). `cursor` is the device cursor after it.
    Synced {
        /// The device cursor: the inbox position of the last entry handled.
        cursor: Seq,
    },
    /// A message, from sync or live; each message is delivered once.
    ///
    /// Messages sent through this connection are not delivered back (the
    /// [`SendReceipt`] stands for them), except one whose receipt was cut
    /// off by a disconnect: it can also come back through the sync of the
    /// next connection.
    Message(Message),
    /// A friend's presence changed.
    Presence(Presence),
    /// Someone asks to be friends: answer with [`Session::add_friend`]
    /// (accept) or [`Session::remove_friend`] (decline).
    FriendRequest(User),
    /// A friend request the user sent was accepted.
    FriendAccepted(User),
    /// The user is invited to a group: answer with
    /// [`Session::accept_invitation`] or [`Session::decline_invitation`].
    Invitation(Invitation),
    /// The WebSocket closed or failed. Unless an [`ClientEvent::Error`]
    /// with a non-retryable error follows, the connection reconnects.
    Disconnected {
        /// The close code the server sent, if any.
        code: Option<u16>,
        /// The close reason, or what went wrong.
        reason: String,
    },
    /// Something failed in the background: a cursor store error, a failed
    /// sync, or (last event of the stream) the reason the connection stopped
    /// for good, such as [`ClientError::Closed`] with code 4100.
    Error(ClientError),
}

impl ClientEvent {
    /// The event for a server notice (a friend request, its acceptance, an
    /// invitation); the event back if it is none of these.
    pub(crate) fn from_notice(event: Event) -> std::result::Result<Self, Event> {
        match event {
            Event::FriendRequest { from } => Ok(ClientEvent::FriendRequest(from)),
            Event::FriendAccepted { friend } => Ok(ClientEvent::FriendAccepted(friend)),
            Event::Invitation { invitation } => Ok(ClientEvent::Invitation(invitation)),
            other => Err(other),
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

/// The stream of [`ClientEvent`]s of a connection.
///
/// Read it with [`Events::recv`] or as a [`Stream`]. It ends when the
/// connection has stopped.
#[derive(Debug)]
pub struct Events {
    rx: mpsc::Receiver<ClientEvent>,
}

impl Events {
    /// The next event, or `None` once the connection has stopped.
    pub async fn recv(&mut self) -> Option<ClientEvent> {
        self.rx.recv().await
    }

    /// The next event if one is waiting.
    pub fn try_recv(&mut self) -> Option<ClientEvent> {
        self.rx.try_recv().ok()
    }
}

impl Stream for Events {
    type Item = ClientEvent;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<ClientEvent>> {
        self.rx.poll_recv(cx)
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
    /// Fails if the first connection cannot be made (bad token, no server);
    /// after that, failures are reconnected and reported as events.
    pub async fn connect(
        session: &Session,
        device: DeviceId,
        store: Arc<dyn CursorStore>,
        options: ConnectOptions,
    ) -> Result<Connection> {
        let user = session.user_id();
        let state = store.load(user, device).await?;
        let first = worker::open_socket(session, device, &options).await?;

        let (cmd_tx, cmd_rx) = mpsc::channel(64);
        let (events_tx, events_rx) = mpsc::channel(options.event_capacity.max(1));
        let initial_cursor = state.as_ref().map(|s| s.cursor).unwrap_or(first.1.cursor);
        let (cursor_tx, cursor_rx) = watch::channel(initial_cursor);
        let (done_tx, done_rx) = watch::channel(false);
        let cancel = CancellationToken::new();
        let final_error = Arc::new(Mutex::new(None));

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
        });
        tokio::spawn(task.run(first));

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
            events: Events { rx: events_rx },
            _stop: cancel.drop_guard(),
        })
    }

    /// The events: messages, presence changes, connection changes.
    pub fn events(&mut self) -> &mut Events {
        &mut self.events
    }

    /// The next event; `None` once the connection has stopped. Same as
    /// `self.events().recv()`.
    pub async fn next_event(&mut self) -> Option<ClientEvent> {
        self.events.recv().await
    }

    /// A cloneable handle for requests from other tasks.
    pub fn handle(&self) -> ConnectionHandle {
        self.handle.clone()
    }
}

/// A connection is used through its handle's methods (`send`, `history`,
/// `presence`, `cursor`, `close`, ...), so the two cannot drift apart.
impl std::ops::Deref for Connection {
    type Target = ConnectionHandle;

    fn deref(&self) -> &ConnectionHandle {
        &self.handle
    }
}

impl ConnectionHandle {
    /// Sends a message with a fresh [`ClientMsgId`] and waits until it is
    /// stored; see [`ConnectionHandle::send_with_id`].
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
    pub async fn send_with_id(
        &self,
        channel: ChannelId,
        client_msg_id: ClientMsgId,
        content: impl Into<String>,
    ) -> Result<SendReceipt> {
        let content = content.into();
        let options = &self.shared.options;
        let deadline = worker::deadline_in(options.send_deadline);
        let mut backoff = options.backoff();
        loop {
            let request = Request::Send {
                channel,
                client_msg_id: client_msg_id.clone(),
                content: content.clone(),
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

    /// The device cursor: every entry of the user's inbox up to this
    /// position has been delivered (or was this device's own message).
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
    /// to end; see [`Connection::close`].
    pub async fn close(&self) {
        self.shared.cancel.cancel();
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
        self.shared
            .final_error
            .lock()
            .ok()
            .and_then(|e| e.clone())
            .unwrap_or_else(worker::closed_by_application)
    }
}

fn unexpected(expected: &str, got: &ReplyBody) -> ClientError {
    ClientError::decode(format!(
        "expected a {expected:?} reply, got {:?}",
        worker::reply_kind(got)
    ))
}
