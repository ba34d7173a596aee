//! The background task that owns the WebSocket.
//!
//! One task per [`Connection`](crate::Connection). It alone reads and writes
//! the socket; handles talk to it through a bounded command channel and get
//! answers on oneshot channels, and it hands events to the application
//! through a bounded event channel, with a queue of its own in front.
//!
//! It reads the socket whatever the application does, so the replies to
//! requests (a send's receipt above all) are never stuck behind events the
//! application has not read yet. What waits for the application is bounded
//! by bytes ([`ConnectOptions::event_buffer_bytes`]): past the budget, the
//! task stops taking in messages (live ones are let go, the next sync page
//! is not asked for) and, once the application has read half of what
//! waits, syncs from its cursor to fetch them. Nothing is lost, and the
//! server never sees this client as a slow consumer because of it.
//!
//! The cursor it saves covers what the application has handled, not what
//! was handed over: with [`AckMode::Auto`](crate::AckMode::Auto) what it
//! took from the event stream, with [`AckMode::Manual`](crate::AckMode::Manual)
//! what it acknowledged.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chat_core::protocol::{
    close, ClientFrame, ErrorCode, Event, ReplyBody, Request, ServerFrame, Welcome, WireError,
    PROTOCOL_VERSION,
};
use chat_core::{ChannelId, ClientMsgId, DeviceId, MessageId, Seq};
use futures::{SinkExt, StreamExt};
use reqwest::Url;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message as WsMessage};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::backoff::Backoff;
use crate::connection::{Acker, ClientEvent, ConnectOptions, Delivery, Flow, StartFrom};
use crate::error::{ClientError, Result};
use crate::http::{code_for_status, Session};
use crate::store::{CursorStore, DeviceState};
use crate::sync::{Next, SyncState};

/// The socket type.
pub(crate) type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Most inbox entries held while waiting for an earlier one.
const PENDING_LIMIT: usize = 10_000;
/// How long entries may wait for an earlier one (overtaken on its way)
/// before the device syncs to fetch it.
const GAP_GRACE: Duration = Duration::from_millis(500);
/// How long a graceful close may take.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);
/// The cursor is saved and acked at most this often (and at the end of
/// every sync, at once when the application acknowledges, and when the
/// connection stops).
const COMMIT_INTERVAL: Duration = Duration::from_secs(1);

/// A request from a handle.
#[derive(Debug)]
pub(crate) enum Command {
    /// Write `request` and answer on `reply`.
    Request {
        request: Request,
        reply: oneshot::Sender<Result<ReplyBody>>,
        /// By when it must have been written; queued past that, it fails
        /// with [`ClientError::Timeout`].
        expires: Instant,
    },
    /// The application acknowledged up to `upto`: save the cursor covering
    /// it, then answer.
    Flush {
        upto: Seq,
        reply: oneshot::Sender<Result<()>>,
    },
}

/// A request waiting for a connection.
#[derive(Debug)]
struct Queued {
    request: Request,
    reply: oneshot::Sender<Result<ReplyBody>>,
    expires: Instant,
}

/// Who waits for a reply.
#[derive(Debug)]
enum Waiter {
    /// A handle.
    User(oneshot::Sender<Result<ReplyBody>>),
    /// A handle's send of `key` in `channel`.
    Send {
        reply: oneshot::Sender<Result<ReplyBody>>,
        channel: ChannelId,
        key: ClientMsgId,
    },
    /// A sync page after this position.
    Sync(Seq),
    /// A heartbeat.
    Heartbeat,
    /// An ack of this cursor.
    Ack(Seq),
    /// The inbox's last position, where a device starting from now begins.
    Head,
    /// A delivery receipt (fire and forget: a lost one is covered by the
    /// next, markers only move forward).
    Delivered,
}

/// A request written to the socket, waiting for its reply.
#[derive(Debug)]
struct Pending {
    waiter: Waiter,
    deadline: Instant,
}

/// Why the task stops.
#[derive(Debug)]
enum Stop {
    /// The application closed or dropped the connection.
    Cancelled,
    /// The server said not to reconnect, or credentials were refused.
    Fatal(ClientError),
}

/// How one connection ended.
#[derive(Debug)]
enum Ended {
    /// Reconnect.
    Lost,
    /// Stop the task.
    Stop(Stop),
}

/// `base + d`, saturating far in the future instead of overflowing.
pub(crate) fn later(base: Instant, d: Duration) -> Instant {
    base.checked_add(d)
        .or_else(|| base.checked_add(Duration::from_secs(86_400 * 365)))
        .unwrap_or(base)
}

/// `now + d`, saturating.
pub(crate) fn deadline_in(d: Duration) -> Instant {
    later(Instant::now(), d)
}

/// The error of calls cut off by the application closing the connection.
pub(crate) fn closed_by_application() -> ClientError {
    ClientError::Closed {
        code: Some(1000),
        reason: "connection closed by the application".into(),
    }
}

/// The reply kind's name, for error messages.
pub(crate) fn reply_kind(body: &ReplyBody) -> &'static str {
    match body {
        ReplyBody::Sent { .. } => "sent",
        ReplyBody::Synced { .. } => "synced",
        ReplyBody::Acked { .. } => "acked",
        ReplyBody::Heartbeat { .. } => "heartbeat",
        ReplyBody::History { .. } => "history",
        ReplyBody::Presence { .. } => "presence",
        ReplyBody::Head { .. } => "head",
        _ => "unknown",
    }
}

/// Whether a failed connection attempt must not be retried as it is
/// (refused credentials may still be fixed by logging in again).
fn is_fatal(e: &ClientError) -> bool {
    match e {
        ClientError::Api(w) => {
            !w.retryable && matches!(w.code, ErrorCode::Unauthorized | ErrorCode::Forbidden)
        }
        ClientError::Closed { code: Some(c), .. } => !close::should_reconnect(*c),
        ClientError::Config(_) | ClientError::Decode(_) => true,
        _ => false,
    }
}

/// Asks `route`, opens the WebSocket and waits for `welcome`.
pub(crate) async fn open_socket(
    session: &Session,
    device: DeviceId,
    options: &ConnectOptions,
) -> Result<(Ws, Welcome)> {
    let timeout = options.request_timeout;
    let server = tokio::time::timeout(timeout, session.route(options.region.as_deref()))
        .await
        .map_err(|_| ClientError::Timeout)??;
    let mut url = Url::parse(&server.ws_url).map_err(|e| {
        ClientError::decode(format!("route gave a bad ws_url {:?}: {e}", server.ws_url))
    })?;
    url.query_pairs_mut()
        .append_pair("device", &device.to_string())
        .append_pair("token", &session.token())
        .append_pair("v", &PROTOCOL_VERSION.to_string());
    let max = options.max_frame_size.max(64 << 10);
    let config = WebSocketConfig::default()
        .read_buffer_size(16 << 10)
        .write_buffer_size(8 << 10)
        .max_message_size(Some(max))
        .max_frame_size(Some(max));
    debug!(url = %server.ws_url, "connecting");
    let connecting = tokio_tungstenite::connect_async_tls_with_config(
        url.as_str(),
        Some(config),
        true,
        Some(tokio_tungstenite::Connector::Rustls(session.client().tls())),
    );
    let (mut ws, _response) = match tokio::time::timeout(timeout, connecting).await {
        Err(_) => return Err(ClientError::Timeout),
        Ok(Err(tungstenite::Error::Http(response))) => {
            // The upgrade was refused with an HTTP answer.
            let status = response.status();
            let error = response
                .body()
                .as_deref()
                .and_then(|b| serde_json::from_slice::<chat_core::api::ErrorBody>(b).ok())
                .map(|b| b.error)
                .unwrap_or_else(|| {
                    WireError::new(
                        code_for_status(status),
                        format!("WebSocket upgrade refused: HTTP {status}"),
                    )
                });
            return Err(ClientError::Api(error));
        }
        Ok(Err(e)) => return Err(e.into()),
        Ok(Ok(pair)) => pair,
    };
    let welcome = tokio::time::timeout(timeout, async {
        loop {
            match ws.next().await {
                Some(Ok(WsMessage::Text(text))) => match serde_json::from_str::<ServerFrame>(&text)
                {
                    Ok(ServerFrame::Welcome(w)) => return Ok(w),
                    Ok(other) => warn!(?other, "frame before welcome, ignored"),
                    Err(e) => warn!(error = %e, "malformed frame before welcome, ignored"),
                },
                Some(Ok(WsMessage::Close(frame))) => {
                    let (code, reason) = close_parts(frame.as_ref());
                    return Err(ClientError::Closed { code, reason });
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(ClientError::from(e)),
                None => {
                    return Err(ClientError::Closed {
                        code: None,
                        reason: "connection ended before welcome".into(),
                    })
                }
            }
        }
    })
    .await
    .map_err(|_| ClientError::Timeout)??;
    if welcome.protocol != PROTOCOL_VERSION {
        warn!(
            server = welcome.protocol,
            client = PROTOCOL_VERSION,
            "server speaks another protocol version"
        );
    }
    Ok((ws, welcome))
}

fn close_parts(frame: Option<&CloseFrame>) -> (Option<u16>, String) {
    match frame {
        Some(f) => (Some(u16::from(f.code)), f.reason.to_string()),
        None => (None, "closed without a close code".into()),
    }
}

/// Everything a [`Worker`] is built from.
pub(crate) struct WorkerParts {
    pub(crate) session: Session,
    pub(crate) device: DeviceId,
    pub(crate) store: Arc<dyn CursorStore>,
    pub(crate) options: ConnectOptions,
    pub(crate) state: Option<DeviceState>,
    pub(crate) cmd_rx: mpsc::Receiver<Command>,
    pub(crate) events_tx: mpsc::Sender<ClientEvent>,
    pub(crate) cancel: CancellationToken,
    pub(crate) cursor_tx: watch::Sender<Seq>,
    pub(crate) done_tx: watch::Sender<bool>,
    pub(crate) final_error: Arc<Mutex<Option<ClientError>>>,
    pub(crate) flow: Arc<Flow>,
    pub(crate) acker: Arc<Acker>,
}

/// Marks the task done when dropped (at its end, or if it panicked).
#[derive(Debug)]
struct DoneGuard(watch::Sender<bool>);

impl Drop for DoneGuard {
    fn drop(&mut self) {
        self.0.send_replace(true);
    }
}

/// The background task's state.
pub(crate) struct Worker {
    session: Session,
    device: DeviceId,
    store: Arc<dyn CursorStore>,
    options: ConnectOptions,
    cmd_rx: mpsc::Receiver<Command>,
    events_tx: mpsc::Sender<ClientEvent>,
    /// `false` once the application dropped its [`crate::Events`].
    events_open: bool,
    /// Events waiting for room in the event channel.
    outq: VecDeque<ClientEvent>,
    /// Shared with the application's event stream and acknowledgements.
    flow: Arc<Flow>,
    acker: Arc<Acker>,
    cancel: CancellationToken,
    cursor_tx: watch::Sender<Seq>,
    final_error: Arc<Mutex<Option<ClientError>>>,
    /// The local state before the first welcome (`None`: none was saved).
    restored: Option<DeviceState>,
    /// `None` until the device's starting point is known.
    sync: Option<SyncState>,
    /// Requests waiting for a connection (or for the starting point).
    outbox: VecDeque<Queued>,
    /// Requests written on the current connection.
    pending: HashMap<String, Pending>,
    next_request: u64,
    backoff: Backoff,
    /// Sync page size (halved after a page too large for a frame).
    sync_limit: u32,
    /// Delays between retries of a sync page that failed retryably.
    sync_backoff: Backoff,
    /// A sync page to ask for again at a time (after a retryable error).
    sync_retry: Option<(Instant, Seq)>,
    /// A sync is under way on this connection (a page requested or due).
    syncing: bool,
    /// The next sync page, held back until the application has read
    /// enough of what waits.
    sync_paused: Option<Seq>,
    /// Live messages were let go over the event budget: sync once there
    /// is room.
    behind: bool,
    /// When to sync because entries still wait for an earlier one.
    gap_at: Option<Instant>,
    /// Positions of messages handed over and not yet handled (taken or
    /// acknowledged), in order: the cursor stops before the first.
    outstanding: VecDeque<Seq>,
    /// The cursor as last saved in the store.
    saved: Seq,
    /// The cursor the server has for this device, as far as known.
    server_cursor: Seq,
    /// Acknowledgements waiting for the saved cursor to reach them.
    flushes: Vec<(Seq, oneshot::Sender<Result<()>>)>,
    /// When the cursor was last saved and acked.
    last_commit: Option<Instant>,
    /// Delivery receipts to send: per direct channel, the last message of
    /// the other member handed over (sent with the next commit).
    receipts_due: HashMap<ChannelId, MessageId>,
    _done: DoneGuard,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("device", &self.device)
            .field("pending", &self.pending.len())
            .field("outbox", &self.outbox.len())
            .finish_non_exhaustive()
    }
}

impl Worker {
    pub(crate) fn new(parts: WorkerParts) -> Self {
        let backoff = parts.options.backoff();
        let sync_limit = parts.options.sync_page_size.max(1);
        let sync_backoff = Backoff::new(
            Duration::from_millis(50),
            Duration::from_secs(2),
            parts.options.jitter,
        );
        let saved = parts.state.map(|s| s.cursor).unwrap_or_default();
        Self {
            session: parts.session,
            device: parts.device,
            store: parts.store,
            options: parts.options,
            cmd_rx: parts.cmd_rx,
            events_tx: parts.events_tx,
            events_open: true,
            outq: VecDeque::new(),
            flow: parts.flow,
            acker: parts.acker,
            cancel: parts.cancel,
            cursor_tx: parts.cursor_tx,
            final_error: parts.final_error,
            restored: parts.state,
            sync: None,
            outbox: VecDeque::new(),
            pending: HashMap::new(),
            next_request: 0,
            backoff,
            sync_limit,
            sync_backoff,
            sync_retry: None,
            syncing: false,
            sync_paused: None,
            behind: false,
            gap_at: None,
            outstanding: VecDeque::new(),
            saved,
            server_cursor: Seq::ZERO,
            flushes: Vec::new(),
            receipts_due: HashMap::new(),
            last_commit: None,
            _done: DoneGuard(parts.done_tx),
        }
    }

    /// Runs until the application closes the connection or the server
    /// refuses it for good. Without a `first` connection, makes one (at
    /// once, then with backoff).
    pub(crate) async fn run(mut self, first: Option<(Ws, Welcome)>) {
        let mut immediate = first.is_none();
        let mut link = first;
        let stop = loop {
            let (ws, welcome) = match link.take() {
                Some(l) => l,
                None => match self.reconnect(std::mem::take(&mut immediate)).await {
                    Ok(l) => l,
                    Err(stop) => break stop,
                },
            };
            match self.run_connection(ws, welcome).await {
                Ended::Lost => {}
                Ended::Stop(stop) => break stop,
            }
        };
        self.shutdown(stop).await;
    }

    // ----- events -----

    fn emit(&mut self, event: ClientEvent) {
        if !self.events_open {
            return;
        }
        self.flow
            .queued_bytes
            .fetch_add(event.queued_size(), Ordering::AcqRel);
        self.outq.push_back(event);
    }

    /// Whether what waits for the application is over its budget (or the
    /// application is gone): take in no more messages.
    fn over_budget(&self) -> bool {
        !self.events_open
            || self.flow.queued_bytes.load(Ordering::Acquire) > self.options.event_buffer_bytes
    }

    /// Whether the application has read enough to take in messages again.
    fn has_room(&self) -> bool {
        self.events_open
            && self.flow.queued_bytes.load(Ordering::Acquire) <= self.options.event_buffer_bytes / 2
    }

    /// Hands one queued event to the channel (`permit` from `reserve`).
    fn deliver(
        &mut self,
        permit: std::result::Result<mpsc::OwnedPermit<ClientEvent>, mpsc::error::SendError<()>>,
    ) {
        match permit {
            Ok(permit) => {
                if let Some(event) = self.outq.pop_front() {
                    permit.send(event);
                }
            }
            Err(_) => {
                // The application dropped its event stream.
                self.events_open = false;
                let bytes: usize = self.outq.iter().map(ClientEvent::queued_size).sum();
                self.flow.queued_bytes.fetch_sub(bytes, Ordering::AcqRel);
                self.outq.clear();
            }
        }
    }

    // ----- requests -----

    fn queue(
        &mut self,
        request: Request,
        reply: oneshot::Sender<Result<ReplyBody>>,
        expires: Instant,
    ) {
        self.outbox.push_back(Queued {
            request,
            reply,
            expires,
        });
    }

    /// Fails queued requests that expired or whose caller gave up.
    fn expire_outbox(&mut self) {
        let now = Instant::now();
        let mut keep = VecDeque::with_capacity(self.outbox.len());
        for q in self.outbox.drain(..) {
            if q.reply.is_closed() {
                continue;
            }
            if q.expires <= now {
                let _ = q.reply.send(Err(ClientError::Timeout));
                continue;
            }
            keep.push_back(q);
        }
        self.outbox = keep;
    }

    /// Writes a request and records who waits for its reply.
    async fn write_request(&mut self, ws: &mut Ws, request: Request, waiter: Waiter) -> Result<()> {
        self.next_request += 1;
        let id = format!("r{}", self.next_request);
        let frame = ClientFrame {
            id: id.clone(),
            request,
        };
        let text = serde_json::to_string(&frame).map_err(ClientError::decode)?;
        self.pending.insert(
            id,
            Pending {
                waiter,
                deadline: deadline_in(self.options.request_timeout),
            },
        );
        match tokio::time::timeout(self.options.request_timeout, ws.send(WsMessage::text(text)))
            .await
        {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.into()),
            Err(_) => Err(ClientError::Timeout),
        }
    }

    // ----- the cursor -----

    /// The cursor the application's handling allows: everything before the
    /// first message handed over and not yet handled.
    fn committable(&mut self) -> Seq {
        let acked = Seq(self.flow.acked.load(Ordering::Acquire));
        while self.outstanding.front().is_some_and(|s| *s <= acked) {
            self.outstanding.pop_front();
        }
        let released = self.sync.as_ref().map_or(self.saved, SyncState::cursor);
        match self.outstanding.front() {
            Some(first) => Seq(first.0.saturating_sub(1)).min(released),
            None => released,
        }
    }

    /// Whether the cursor may be saved and acked now.
    fn commit_due(&self) -> bool {
        self.last_commit
            .is_none_or(|t| t.elapsed() >= COMMIT_INTERVAL)
    }

    /// Whether a commit should run now: acknowledgements wait for one, or
    /// the cursor moved and the interval has passed.
    fn commit_wanted(&mut self) -> bool {
        !self.flushes.is_empty()
            || (self.commit_due()
                && (self.committable() > self.saved || !self.receipts_due.is_empty()))
    }

    /// Saves the cursor the application's handling allows, acks it to the
    /// server if connected, and answers the acknowledgements it covers.
    async fn commit(&mut self, ws: Option<&mut Ws>) -> Result<()> {
        let cursor = self.committable();
        self.last_commit = Some(Instant::now());
        let mut failed = None;
        if cursor > self.saved {
            let state = DeviceState { cursor };
            match self
                .store
                .save(self.session.user_id(), self.device, &state)
                .await
            {
                Ok(()) => {
                    self.saved = cursor;
                    self.cursor_tx.send_replace(cursor);
                }
                Err(e) => {
                    warn!(error = %e, "saving the cursor failed");
                    self.emit(ClientEvent::Error(e.clone()));
                    failed = Some(e);
                }
            }
        }
        let released = self.sync.as_ref().map_or(self.saved, SyncState::cursor);
        let saved = self.saved;
        for (upto, reply) in std::mem::take(&mut self.flushes) {
            if upto.min(released) <= saved {
                let _ = reply.send(Ok(()));
            } else if let Some(e) = &failed {
                let _ = reply.send(Err(e.clone()));
            } else {
                // Not covered yet (an earlier message is not handled).
                self.flushes.push((upto, reply));
            }
        }
        let Some(ws) = ws else {
            return Ok(());
        };
        for (channel, message) in std::mem::take(&mut self.receipts_due) {
            self.write_request(
                ws,
                Request::Delivered { channel, message },
                Waiter::Delivered,
            )
            .await?;
        }
        if saved > self.server_cursor {
            self.server_cursor = saved;
            self.write_request(ws, Request::Ack { cursor: saved }, Waiter::Ack(saved))
                .await
        } else {
            Ok(())
        }
    }

    // ----- the connection -----

    /// Waits for `fut` while serving commands (requests are queued for the
    /// next connection; acknowledgements are saved) and delivering events.
    async fn wait_offline<F: Future>(&mut self, fut: F) -> std::result::Result<F::Output, Stop> {
        tokio::pin!(fut);
        let mut tick = tokio::time::interval(self.tick_period());
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                _ = self.cancel.cancelled() => return Err(Stop::Cancelled),
                out = &mut fut => return Ok(out),
                permit = self.events_tx.clone().reserve_owned(), if !self.outq.is_empty() => {
                    self.deliver(permit);
                }
                cmd = self.cmd_rx.recv() => match cmd {
                    Some(Command::Request { request, reply, expires }) => {
                        self.queue(request, reply, expires)
                    }
                    Some(Command::Flush { upto, reply }) => {
                        self.flushes.push((upto, reply));
                        // Offline: saved now, acked to the server on connect.
                        let _ = self.commit(None).await;
                    }
                    None => return Err(Stop::Cancelled),
                },
                _ = tick.tick() => {
                    self.expire_outbox();
                    if self.commit_wanted() {
                        let _ = self.commit(None).await;
                    }
                }
            }
        }
    }

    fn tick_period(&self) -> Duration {
        (self.options.request_timeout / 4)
            .clamp(Duration::from_millis(5), Duration::from_millis(500))
    }

    /// Asks `route` and connects, until it works: backing off before each
    /// attempt but an `immediate` first. Refused credentials are given one
    /// new log-in, if the session has [`Credentials`](crate::Credentials).
    async fn reconnect(&mut self, immediate: bool) -> std::result::Result<(Ws, Welcome), Stop> {
        let mut wait = !immediate;
        let mut logged_in_again = false;
        loop {
            if std::mem::replace(&mut wait, true) {
                let delay = self.backoff.next_delay();
                debug!(?delay, "reconnecting after backoff");
                self.wait_offline(tokio::time::sleep(delay)).await?;
            }
            let session = self.session.clone();
            let options = self.options.clone();
            let device = self.device;
            let attempt = async move { open_socket(&session, device, &options).await };
            let error = match self.wait_offline(attempt).await? {
                Ok(link) => return Ok(link),
                Err(e) => e,
            };
            if error.is_unauthorized() && self.session.has_credentials() && !logged_in_again {
                // Tokens refused (revoked, expired): log in again once.
                logged_in_again = true;
                let session = self.session.clone();
                match self
                    .wait_offline(async move { session.log_in_again().await })
                    .await?
                {
                    Ok(()) => {
                        info!("logged in again with the session's credentials");
                        wait = false;
                    }
                    Err(e) if e.is_retryable() => warn!(error = %e, "logging in again failed"),
                    Err(e) => return Err(Stop::Fatal(e)),
                }
                continue;
            }
            if is_fatal(&error) {
                return Err(Stop::Fatal(error));
            }
            warn!(%error, "connecting failed");
        }
    }

    /// Serves one connection until it ends.
    async fn run_connection(&mut self, mut ws: Ws, welcome: Welcome) -> Ended {
        match self.serve(&mut ws, welcome).await {
            Ok(ended) => ended,
            Err((error, code, reason)) => {
                // A session closed for its credentials (logged out) logs in
                // again on the reconnect when it has credentials.
                let relogin = error.is_unauthorized() && self.session.has_credentials();
                let fatal = !relogin
                    && (code.is_some_and(|c| !close::should_reconnect(c))
                        || matches!(error, ClientError::Config(_)));
                if fatal {
                    // Before failing the cut-off requests, so their callers
                    // see that the connection is gone for good.
                    self.set_final_error(error.clone());
                }
                // The connection failed: everything written on it is lost.
                self.connection_lost(error.clone(), code, reason);
                if fatal {
                    Ended::Stop(Stop::Fatal(error))
                } else {
                    Ended::Lost
                }
            }
        }
    }

    /// Records why the task stops (handles then count it as closed).
    fn set_final_error(&self, error: ClientError) {
        if let Ok(mut slot) = self.final_error.lock() {
            slot.get_or_insert(error);
        }
    }

    fn connection_lost(&mut self, error: ClientError, code: Option<u16>, reason: String) {
        info!(?code, %reason, "connection lost");
        self.sync_retry = None;
        self.syncing = false;
        self.sync_paused = None;
        self.behind = false;
        self.gap_at = None;
        for (_, p) in self.pending.drain() {
            match p.waiter {
                Waiter::User(tx) | Waiter::Send { reply: tx, .. } => {
                    let _ = tx.send(Err(error.clone()));
                }
                _ => {}
            }
        }
        self.emit(ClientEvent::Disconnected { code, reason });
    }

    /// The starting point of a device seen for the first time by this
    /// task: its saved cursor, else where [`StartFrom`] says (`None`: ask
    /// the server for the inbox's last position first).
    fn starting_point(&mut self, welcome: &Welcome) -> Option<(Seq, bool)> {
        if let Some(state) = self.restored.take() {
            return Some((state.cursor, false));
        }
        match self.options.start_from {
            StartFrom::After(seq) => Some((seq, true)),
            StartFrom::Latest => None,
            _ => Some((welcome.cursor, false)),
        }
    }

    /// Starts the device at `cursor`; a starting point not loaded from the
    /// store (`fresh`) is saved at once, so a restart does not pick another.
    async fn begin(&mut self, ws: &mut Ws, cursor: Seq, fresh: bool) -> Result<()> {
        self.sync = Some(SyncState::new(
            self.session.user_id(),
            cursor,
            PENDING_LIMIT,
            self.options
                .send_deadline
                .saturating_add(Duration::from_secs(60)),
        ));
        self.cursor_tx.send_replace(cursor);
        if fresh {
            let state = DeviceState { cursor };
            match self
                .store
                .save(self.session.user_id(), self.device, &state)
                .await
            {
                Ok(()) => self.saved = cursor,
                Err(e) => {
                    warn!(error = %e, "saving the starting cursor failed");
                    self.emit(ClientEvent::Error(e));
                }
            }
            self.commit(Some(ws)).await?;
        }
        self.sync_and_flush(ws).await
    }

    /// The loop of one connection. `Err` carries the error for cut-off
    /// requests and the close code and reason.
    async fn serve(
        &mut self,
        ws: &mut Ws,
        welcome: Welcome,
    ) -> std::result::Result<Ended, (ClientError, Option<u16>, String)> {
        let lost = |e: ClientError| {
            let reason = e.to_string();
            (e, None, reason)
        };
        info!(server = %welcome.server_id, "connected");
        self.server_cursor = welcome.cursor;
        self.emit(ClientEvent::Connected {
            server_id: welcome.server_id.clone(),
        });
        if self.sync.is_some() {
            // A reconnect: carry on from where this task is.
            self.begin_again(ws).await.map_err(lost)?;
        } else {
            match self.starting_point(&welcome) {
                Some((cursor, fresh)) => self.begin(ws, cursor, fresh).await.map_err(lost)?,
                None => {
                    debug!("starting from the inbox's last position");
                    self.write_request(ws, Request::Head {}, Waiter::Head)
                        .await
                        .map_err(lost)?;
                }
            }
        }

        let hb_period = self
            .options
            .heartbeat_interval
            .unwrap_or(Duration::from_millis(welcome.heartbeat_interval_ms))
            .clamp(Duration::from_millis(10), Duration::from_secs(3600));
        let mut heartbeat = tokio::time::interval_at(deadline_in(hb_period), hb_period);
        heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut tick = tokio::time::interval(self.tick_period());
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);

        loop {
            // Far enough to never fire when no retry is due.
            let retry_at = self
                .sync_retry
                .map(|(at, _)| at)
                .unwrap_or_else(|| deadline_in(Duration::from_secs(3600)));
            let gap_at = self
                .gap_at
                .unwrap_or_else(|| deadline_in(Duration::from_secs(3600)));
            let waiting_for_room = self.behind || self.sync_paused.is_some();
            let flow = self.flow.clone();
            // Unbiased: replies, commands and timers get their turns.
            tokio::select! {
                _ = self.cancel.cancelled() => {
                    Self::close_gracefully(ws).await;
                    self.connection_lost(closed_by_application(), Some(1000), "closed by the application".into());
                    return Ok(Ended::Stop(Stop::Cancelled));
                }
                permit = self.events_tx.clone().reserve_owned(), if !self.outq.is_empty() => {
                    self.deliver(permit);
                }
                _ = flow.taken.notified(), if waiting_for_room => {
                    self.resume(ws).await.map_err(lost)?;
                }
                _ = heartbeat.tick() => {
                    self.write_request(ws, Request::Heartbeat {}, Waiter::Heartbeat)
                        .await
                        .map_err(lost)?;
                }
                _ = tokio::time::sleep_until(retry_at), if self.sync_retry.is_some() => {
                    if let Some((_, after)) = self.sync_retry.take() {
                        self.request_page(ws, after).await.map_err(lost)?;
                    }
                }
                _ = tokio::time::sleep_until(gap_at), if self.gap_at.is_some() => {
                    // Entries still wait for an earlier one: fetch it.
                    self.gap_at = None;
                    if !self.syncing {
                        debug!("a gap in live delivery; syncing");
                        self.start_sync(ws).await.map_err(lost)?;
                    }
                }
                _ = tick.tick() => {
                    self.expire_outbox();
                    self.expire_pending().map_err(lost)?;
                    if waiting_for_room {
                        self.resume(ws).await.map_err(lost)?;
                    }
                    if self.commit_wanted() {
                        self.commit(Some(ws)).await.map_err(lost)?;
                    }
                }
                cmd = self.cmd_rx.recv() => match cmd {
                    Some(Command::Request { request, reply, expires }) => {
                        if reply.is_closed() {
                            continue;
                        }
                        if expires <= Instant::now() {
                            let _ = reply.send(Err(ClientError::Timeout));
                            continue;
                        }
                        if self.sync.is_none() {
                            // Until the starting point is known, a send's
                            // message could not be told from another's.
                            self.queue(request, reply, expires);
                            continue;
                        }
                        self.write_user_request(ws, request, reply)
                            .await
                            .map_err(lost)?;
                    }
                    Some(Command::Flush { upto, reply }) => {
                        self.flushes.push((upto, reply));
                        self.commit(Some(ws)).await.map_err(lost)?;
                    }
                    None => {
                        Self::close_gracefully(ws).await;
                        self.connection_lost(closed_by_application(), Some(1000), "closed by the application".into());
                        return Ok(Ended::Stop(Stop::Cancelled));
                    }
                },
                frame = ws.next() => match frame {
                    Some(Ok(WsMessage::Text(text))) => self.on_text(ws, &text).await?,
                    Some(Ok(WsMessage::Binary(_))) => warn!("binary frame from the server, ignored"),
                    Some(Ok(WsMessage::Close(frame))) => {
                        let (code, reason) = close_parts(frame.as_ref());
                        // Let the automatic close reply go out.
                        let _ = tokio::time::timeout(CLOSE_TIMEOUT, ws.flush()).await;
                        return Err((ClientError::Closed { code, reason: reason.clone() }, code, reason));
                    }
                    Some(Ok(_)) => {} // ping, pong: answered by the library
                    Some(Err(e)) => {
                        if matches!(e, tungstenite::Error::Capacity(_))
                            && self.pending.values().any(|p| matches!(p.waiter, Waiter::Sync(_)))
                        {
                            self.sync_limit = (self.sync_limit / 2).max(1);
                            warn!(limit = self.sync_limit, "sync page too large; smaller pages next time");
                        }
                        return Err(lost(e.into()));
                    }
                    None => {
                        return Err(lost(ClientError::Closed {
                            code: None,
                            reason: "connection ended without a close frame".into(),
                        }));
                    }
                },
            }
        }
    }

    /// On a reconnect: acks the saved cursor if the server is behind it,
    /// then syncs from where this task is and writes the queued requests.
    async fn begin_again(&mut self, ws: &mut Ws) -> Result<()> {
        if self.saved > self.server_cursor {
            self.commit(Some(ws)).await?;
        }
        self.sync_and_flush(ws).await
    }

    /// Syncs from the cursor and writes the requests queued while
    /// disconnected (or while the starting point was unknown).
    async fn sync_and_flush(&mut self, ws: &mut Ws) -> Result<()> {
        self.start_sync(ws).await?;
        while let Some(q) = self.outbox.pop_front() {
            if q.reply.is_closed() {
                continue;
            }
            if q.expires <= Instant::now() {
                let _ = q.reply.send(Err(ClientError::Timeout));
                continue;
            }
            self.write_user_request(ws, q.request, q.reply).await?;
        }
        Ok(())
    }

    async fn close_gracefully(ws: &mut Ws) {
        let frame = CloseFrame {
            code: CloseCode::Normal,
            reason: "".into(),
        };
        let closing = async {
            if ws.close(Some(frame)).await.is_ok() {
                // Read until the server's close reply ends the stream.
                while let Some(Ok(_)) = ws.next().await {}
            }
        };
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, closing).await;
    }

    /// Fails requests whose reply is overdue. An overdue sync page,
    /// heartbeat or starting point means the connection is dead.
    fn expire_pending(&mut self) -> Result<()> {
        let now = Instant::now();
        let overdue: Vec<String> = self
            .pending
            .iter()
            .filter(|(_, p)| p.deadline <= now)
            .map(|(id, _)| id.clone())
            .collect();
        let mut dead = false;
        for id in overdue {
            let Some(p) = self.pending.remove(&id) else {
                continue;
            };
            match p.waiter {
                Waiter::User(tx) | Waiter::Send { reply: tx, .. } => {
                    let _ = tx.send(Err(ClientError::Timeout));
                }
                Waiter::Sync(_) | Waiter::Heartbeat | Waiter::Head => dead = true,
                Waiter::Ack(_) | Waiter::Delivered => {}
            }
        }
        if dead {
            return Err(ClientError::Timeout);
        }
        Ok(())
    }

    async fn start_sync(&mut self, ws: &mut Ws) -> Result<()> {
        let Some(sync) = &mut self.sync else {
            return Ok(());
        };
        let after = sync.start_sync();
        self.syncing = true;
        self.behind = false;
        self.sync_paused = None;
        self.gap_at = None;
        self.request_page(ws, after).await
    }

    async fn request_page(&mut self, ws: &mut Ws, after: Seq) -> Result<()> {
        let request = Request::Sync {
            after: Some(after),
            limit: Some(self.sync_limit),
        };
        self.write_request(ws, request, Waiter::Sync(after)).await
    }

    /// Once the application has read enough: asks for the sync page held
    /// back, or syncs for the live messages let go.
    async fn resume(&mut self, ws: &mut Ws) -> Result<()> {
        if !self.has_room() {
            return Ok(());
        }
        if let Some(after) = self.sync_paused.take() {
            debug!(%after, "room for events again: next sync page");
            return self.request_page(ws, after).await;
        }
        if self.behind && !self.syncing {
            debug!("room for events again: syncing what was let go");
            return self.start_sync(ws).await;
        }
        Ok(())
    }

    /// Writes a handle's request; a send is remembered so that the
    /// message, coming back by sync, is known as this device's own.
    async fn write_user_request(
        &mut self,
        ws: &mut Ws,
        request: Request,
        reply: oneshot::Sender<Result<ReplyBody>>,
    ) -> Result<()> {
        let waiter = match &request {
            Request::Send {
                channel,
                client_msg_id,
                ..
            } => {
                if let Some(sync) = &mut self.sync {
                    sync.sending(*channel, client_msg_id.clone());
                }
                Waiter::Send {
                    reply,
                    channel: *channel,
                    key: client_msg_id.clone(),
                }
            }
            _ => Waiter::User(reply),
        };
        self.write_request(ws, request, waiter).await
    }

    /// Hands released messages to the application, and notes whether
    /// entries still wait for an earlier one.
    fn released(&mut self, entries: Vec<chat_core::InboxEntry>) {
        let me = self.session.user_id();
        for e in entries {
            // A message of the other member of a direct channel: this
            // device has it, say so (coalesced per channel).
            let m = &e.message;
            if self.options.delivery_receipts
                && m.sender != me
                && m.channel_id == ChannelId::direct(me, m.sender)
            {
                let due = self.receipts_due.entry(m.channel_id).or_insert(m.id);
                *due = (*due).max(m.id);
            }
            // Not handled until the application has it, even if it is gone.
            self.outstanding.push_back(e.seq);
            let delivery = Delivery::new(e.seq, e.message, self.acker.clone());
            match e.change {
                None => self.emit(ClientEvent::Message(delivery)),
                Some(change) => self.emit(ClientEvent::Changed { change, delivery }),
            }
        }
        let Some(sync) = &self.sync else {
            return;
        };
        if !sync.has_gap() {
            self.gap_at = None;
        } else if self.gap_at.is_none() && !self.syncing {
            self.gap_at = Some(deadline_in(GAP_GRACE));
        }
    }

    /// Handles one text frame. Malformed frames are logged and skipped.
    async fn on_text(
        &mut self,
        ws: &mut Ws,
        text: &str,
    ) -> std::result::Result<(), (ClientError, Option<u16>, String)> {
        let lost = |e: ClientError| {
            let reason = e.to_string();
            (e, None, reason)
        };
        let frame = match serde_json::from_str::<ServerFrame>(text) {
            Ok(f) => f,
            Err(e) => {
                warn!(error = %e, "malformed or unknown frame from the server, ignored");
                return Ok(());
            }
        };
        match frame {
            ServerFrame::Welcome(_) => warn!("second welcome on one connection, ignored"),
            ServerFrame::Event(Event::Message { seq, message }) => {
                if self.over_budget() {
                    // The application is behind: fetch it by sync later.
                    self.behind = true;
                } else if let Some(sync) = &mut self.sync {
                    let out = sync.on_live(seq, message);
                    self.released(out);
                }
            }
            ServerFrame::Event(Event::Changed {
                seq,
                message,
                change,
            }) => {
                if self.over_budget() {
                    self.behind = true;
                } else if let Some(sync) = &mut self.sync {
                    let out = sync.on_live_entry(seq, message, Some(change));
                    self.released(out);
                }
            }
            ServerFrame::Event(Event::Presence { presence }) => {
                self.emit(ClientEvent::Presence(presence));
            }
            ServerFrame::Event(Event::Resync {}) => {
                // The server's live delivery may have missed events.
                if !self.syncing {
                    debug!("the server asks for a sync");
                    self.start_sync(ws).await.map_err(lost)?;
                }
            }
            ServerFrame::Event(other) => match ClientEvent::from_notice(other) {
                Ok(event) => self.emit(event),
                Err(other) => debug!(?other, "unknown event, ignored"),
            },
            ServerFrame::Reply(reply) => {
                let Some(id) = reply.id.clone() else {
                    warn!(error = ?reply.error, "error reply without a request id");
                    return Ok(());
                };
                let Some(pending) = self.pending.remove(&id) else {
                    debug!(%id, "reply to an unknown or expired request, ignored");
                    return Ok(());
                };
                let result = reply.into_result();
                match pending.waiter {
                    Waiter::User(tx) => {
                        if let (Ok(ReplyBody::Changed { seq: Some(seq), .. }), Some(sync)) =
                            (&result, &mut self.sync)
                        {
                            // This device's own change: the reply stands
                            // for its entry, handled silently.
                            let out = sync.changed(*seq);
                            self.released(out);
                        }
                        let _ = tx.send(result.map_err(ClientError::Api));
                    }
                    Waiter::Send {
                        reply,
                        channel,
                        key,
                    } => {
                        if let (Ok(ReplyBody::Sent { seq, .. }), Some(sync)) =
                            (&result, &mut self.sync)
                        {
                            // The receipt stands for the message on this
                            // device: its position is handled silently.
                            let out = sync.sent(channel, &key, *seq);
                            self.released(out);
                        }
                        let _ = reply.send(result.map_err(ClientError::Api));
                    }
                    Waiter::Sync(after) => {
                        self.on_sync_reply(ws, after, result).await.map_err(lost)?
                    }
                    Waiter::Heartbeat => match result {
                        Ok(ReplyBody::Heartbeat { .. }) => {}
                        Ok(other) => warn!(kind = reply_kind(&other), "unexpected heartbeat reply"),
                        Err(e) => warn!(error = %e, "heartbeat failed"),
                    },
                    Waiter::Ack(cursor) => match result {
                        Ok(_) => debug!(%cursor, "cursor acked"),
                        Err(e) => warn!(error = %e, %cursor, "ack failed"),
                    },
                    Waiter::Delivered => {
                        if let Err(e) = result {
                            debug!(error = %e, "delivery receipt refused");
                        }
                    }
                    Waiter::Head => match result {
                        Ok(ReplyBody::Head { seq }) => {
                            debug!(%seq, "starting from the inbox's last position");
                            self.begin(ws, seq, true).await.map_err(lost)?;
                        }
                        Ok(other) => {
                            return Err(lost(ClientError::decode(format!(
                                "expected a head reply, got {}",
                                reply_kind(&other)
                            ))))
                        }
                        // Retryable: reconnect and ask again. Otherwise (a
                        // server that does not know `head`) retrying
                        // cannot help.
                        Err(wire) if wire.retryable => return Err(lost(ClientError::Api(wire))),
                        Err(wire) => {
                            return Err(lost(ClientError::Config(format!(
                                "the server cannot start a device from the latest message: {wire}"
                            ))))
                        }
                    },
                }
            }
            other => debug!(?other, "unknown frame, ignored"),
        }
        Ok(())
    }

    async fn on_sync_reply(
        &mut self,
        ws: &mut Ws,
        after: Seq,
        result: std::result::Result<ReplyBody, WireError>,
    ) -> Result<()> {
        let (entries, has_more) = match result {
            Ok(ReplyBody::Synced { entries, has_more }) => (entries, has_more),
            Ok(other) => {
                let e = ClientError::decode(format!(
                    "expected a synced reply, got {}",
                    reply_kind(&other)
                ));
                self.emit(ClientEvent::Error(e.clone()));
                return Err(e);
            }
            Err(wire) if wire.retryable => {
                // Rate limited or a backend hiccup: ask for the same page
                // again shortly, on the same connection.
                let delay = self.sync_backoff.next_delay();
                debug!(error = %wire, ?delay, "sync page failed, retrying");
                self.sync_retry = Some((deadline_in(delay), after));
                return Ok(());
            }
            Err(wire) => {
                // Reconnect (with backoff) and sync again.
                let e = ClientError::Api(wire);
                self.emit(ClientEvent::Error(e.clone()));
                return Err(e);
            }
        };
        self.sync_backoff.reset();
        let Some(sync) = &mut self.sync else {
            return Ok(());
        };
        let outcome = match sync.on_page(after, entries, has_more) {
            Ok(o) => o,
            Err(_) => {
                let e = ClientError::decode("sync page with has_more but no progress");
                self.emit(ClientEvent::Error(e.clone()));
                return Err(e);
            }
        };
        let done = outcome.next == Next::Done;
        self.released(outcome.emit);
        match outcome.next {
            Next::Page(after) if self.over_budget() => {
                debug!(%after, "the application is behind: next sync page later");
                self.sync_paused = Some(after);
            }
            Next::Page(after) => self.request_page(ws, after).await?,
            Next::Done => {
                self.syncing = false;
                let cursor = self.sync.as_ref().map(|s| s.cursor()).unwrap_or_default();
                debug!(%cursor, "synced");
                self.backoff.reset();
                self.sync_limit = self.options.sync_page_size.max(1);
                self.emit(ClientEvent::Synced { cursor });
                if self.behind {
                    // Live messages let go during the sync.
                    self.resume(ws).await?;
                }
            }
        }
        // Progress is saved at most once per interval; the end of a sync
        // saves what the application has handled by then.
        if done || self.commit_wanted() {
            self.commit(Some(ws)).await?;
        }
        Ok(())
    }

    /// Fails everything still waiting, saves the cursor, and reports why
    /// the task stopped.
    async fn shutdown(mut self, stop: Stop) {
        let error = match &stop {
            Stop::Cancelled => closed_by_application(),
            Stop::Fatal(e) => e.clone(),
        };
        self.set_final_error(error.clone());
        self.cmd_rx.close();
        while let Ok(command) = self.cmd_rx.try_recv() {
            match command {
                Command::Request { reply, .. } => {
                    let _ = reply.send(Err(error.clone()));
                }
                Command::Flush { upto, reply } => self.flushes.push((upto, reply)),
            }
        }
        for q in self.outbox.drain(..) {
            let _ = q.reply.send(Err(error.clone()));
        }
        for (_, p) in self.pending.drain() {
            if let Waiter::User(tx) | Waiter::Send { reply: tx, .. } = p.waiter {
                let _ = tx.send(Err(error.clone()));
            }
        }
        if self.sync.is_some() {
            let _ = self.commit(None).await;
        }
        for (_, reply) in self.flushes.drain(..) {
            let _ = reply.send(Err(error.clone()));
        }
        if let Stop::Fatal(e) = stop {
            warn!(error = %e, "connection stopped for good");
            self.emit(ClientEvent::Error(e));
            // Hand over what is queued unless the application goes away.
            while self.events_open && !self.outq.is_empty() {
                tokio::select! {
                    _ = self.cancel.cancelled() => break,
                    permit = self.events_tx.clone().reserve_owned() => self.deliver(permit),
                }
            }
        }
        info!("connection task stopped");
    }
}
