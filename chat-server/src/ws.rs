//! The stateful chat service: one task per WebSocket with a split reader and
//! writer and a bounded outbound queue.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message as WsMessage, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use chat_core::api::ConnectQuery;
use chat_core::protocol::{
    close, ClientFrame, ErrorCode, Reply, ReplyBody, Request, ServerFrame, Welcome, WireError,
    PROTOCOL_VERSION,
};
use chat_core::{DeviceId, Page, UserId};

use crate::auth::TokenKind;
use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};
use tokio::sync::{oneshot, OwnedSemaphorePermit};
use tokio_util::sync::CancellationToken;

use crate::metrics::{Kind, Metrics};
use crate::outbox::Outbox;
use crate::server::{clamp_limit, err, wire, ApiResult, ChatServer};
use crate::sessions::{encode, Registered, SessionHandle};
use tracing::Instrument;

/// Most frames written per flush.
const WRITE_BATCH: usize = 64;

/// Bytes of frames written per flush: once a batch reaches this, it is
/// flushed before more are taken, so the socket's write buffer never holds
/// more than this plus one frame.
const WRITE_BATCH_BYTES: usize = 64 << 10;

/// Longest accepted request id, in bytes.
const MAX_REQUEST_ID: usize = 64;

/// `GET /v1/ws?device=...&token=...&v=1`: upgrades to the chat protocol.
///
/// Refusals happen after the upgrade, as close frames with a code from
/// [`chat_core::protocol::close`], because browsers cannot read the HTTP
/// status of a failed WebSocket handshake.
pub(crate) async fn upgrade(
    State(server): State<ChatServer>,
    Query(query): Query<ConnectQuery>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    let cfg = server.config();
    let token = query
        .token
        .clone()
        .or_else(|| crate::http::bearer(&headers));
    // Checked before the upgrade (against the directory: a logged-out
    // session or an old epoch is refused), refused after it.
    let auth = match token {
        Some(t) => server.authenticate(&t, TokenKind::Access).await,
        None => Err(err(ErrorCode::Unauthorized, "missing token")),
    };
    let ws = ws
        .read_buffer_size(cfg.ws_read_buffer)
        .write_buffer_size(cfg.ws_write_buffer)
        .max_write_buffer_size(cfg.write_buffer_limit())
        .max_message_size(cfg.max_frame_bytes)
        .max_frame_size(cfg.max_frame_bytes);
    ws.on_upgrade(move |socket| async move {
        let refusal = if server.is_shutting_down() {
            Some(Close::SHUTDOWN)
        } else if query.v.unwrap_or(PROTOCOL_VERSION) != PROTOCOL_VERSION {
            Some(Close::new(
                close::UNSUPPORTED_VERSION,
                "unsupported_version",
                "unsupported protocol version",
            ))
        } else {
            match &auth {
                Err(e) if e.code == ErrorCode::Unauthorized => Some(Close::new(
                    close::UNAUTHORIZED,
                    "unauthorized",
                    "missing, invalid, expired or revoked token",
                )),
                // The directory could not tell: a node failure; try again.
                Err(_) => Some(Close::new(
                    close::INTERNAL,
                    "token_check_failed",
                    "cannot check the token now",
                )),
                Ok(_) => None,
            }
        };
        let user = auth.ok();
        let permit = server.inner.conn_limit.clone().try_acquire_owned().ok();
        match (refusal, user, permit) {
            (Some(c), _, _) => refuse(&server, socket, c).await,
            (None, _, None) => {
                let full = Close::new(
                    close::SERVER_FULL,
                    "server_full",
                    "server at its connection limit",
                );
                refuse(&server, socket, full).await
            }
            (None, Some(claims), Some(permit)) => {
                // Tracked so shutdown waits for the session to say goodbye.
                let tracker = server.inner.tasks.clone();
                let span = tracing::info_span!(
                    "session",
                    user = %claims.sub,
                    device = %query.device
                );
                tracker
                    .track_future(
                        run_session(server, socket, claims.sub, claims.sid, query.device, permit)
                            .instrument(span),
                    )
                    .await;
            }
            (None, None, Some(_)) => {
                let c = Close::new(close::UNAUTHORIZED, "unauthorized", "unauthorized");
                refuse(&server, socket, c).await
            }
        }
    })
}

/// A close the server decides on: the code, a stable reason for logs and
/// metrics, and the text the client reads.
#[derive(Debug, Clone, Copy)]
struct Close {
    code: u16,
    reason: &'static str,
    text: &'static str,
}

impl Close {
    const SHUTDOWN: Close = Close::new(close::SHUTDOWN, "shutdown", "server shutting down");

    const fn new(code: u16, reason: &'static str, text: &'static str) -> Self {
        Self { code, reason, text }
    }

    fn message(self) -> WsMessage {
        WsMessage::Close(Some(CloseFrame {
            code: self.code,
            reason: Utf8Bytes::from_static(self.text),
        }))
    }
}

/// Counts a connection's end by code and reason, and logs it once: the
/// server's own reasons at `info` or `warn`, a client's close, a broken
/// socket and shutdown at `debug` (those are normal, or logged elsewhere
/// once for all).
fn record_end(server: &ChatServer, code: Option<u16>, reason: &'static str) {
    server.inner.metrics.closed(code, reason);
    let code = code.map_or(-1, i32::from);
    match reason {
        "client_closed" | "broken" | "shutdown" => {
            tracing::debug!(code, reason, "connection closed")
        }
        "unauthorized" | "idle" | "revoked" | "unsupported_version" => {
            tracing::info!(code, reason, "server closed the connection")
        }
        _ => tracing::warn!(code, reason, "server closed the connection"),
    }
}

async fn refuse(server: &ChatServer, mut socket: WebSocket, c: Close) {
    record_end(server, Some(c.code), c.reason);
    let _ = socket.send(c.message()).await;
}

/// How a session ended, for the close frame.
enum End {
    ClientClosed,
    Shutdown,
    Slow,
    Idle,
    TooBig,
    Broken,
    /// The writer refused a frame too large for the write buffer.
    Refused,
    Revoked,
    Flood,
}

impl End {
    /// The close frame the server sends, if any, and the reason recorded.
    fn close(&self) -> (Option<Close>, &'static str) {
        match self {
            End::ClientClosed => (None, "client_closed"),
            End::Broken => (None, "broken"),
            End::Refused => (None, "frame_refused"),
            End::Shutdown => (Some(Close::SHUTDOWN), "shutdown"),
            End::Slow => (
                Some(Close::new(
                    close::SLOW_CONSUMER,
                    "slow_consumer",
                    "outbound queue full",
                )),
                "slow_consumer",
            ),
            End::Idle => (
                Some(Close::new(close::IDLE_TIMEOUT, "idle", "no heartbeat")),
                "idle",
            ),
            End::TooBig => (
                Some(Close::new(1009, "frame_too_large", "frame too large")),
                "frame_too_large",
            ),
            End::Revoked => (
                Some(Close::new(close::UNAUTHORIZED, "revoked", "token revoked")),
                "revoked",
            ),
            End::Flood => (
                Some(Close::new(
                    close::FLOOD,
                    "flood",
                    "too many frames; slow down",
                )),
                "flood",
            ),
        }
    }
}

async fn run_session(
    server: ChatServer,
    socket: WebSocket,
    user: UserId,
    login: u64,
    device: DeviceId,
    _permit: OwnedSemaphorePermit,
) {
    let cfg = server.config();
    let (mut sink, mut stream) = socket.split();
    let outbox = Arc::new(Outbox::new(cfg.outbound_queue_bytes));
    let slow = CancellationToken::new();
    let handle = SessionHandle {
        id: server.inner.sessions.next_id(),
        device,
        outbox: outbox.clone(),
        slow: slow.clone(),
        login,
        revoked: CancellationToken::new(),
    };
    let session_id = handle.id;

    match server
        .inner
        .sessions
        .register(user, handle.clone(), cfg.max_connections_per_user)
    {
        Registered::TooMany => {
            let c = Close::new(
                close::TOO_MANY_CONNECTIONS,
                "too_many_connections",
                "too many connections for this user",
            );
            record_end(&server, Some(c.code), c.reason);
            let _ = sink.send(c.message()).await;
            return;
        }
        Registered::Ok { first } => {
            // Subscribe before the welcome: anything published from here on
            // reaches this session, and anything earlier is in the inbox the
            // client syncs next. Together, nothing is missed.
            if first {
                if let Err(e) = server.inner.bus.subscribe(user).await {
                    tracing::warn!(error = %e, "bus subscribe failed");
                    server.inner.sessions.unregister(user, session_id);
                    let c = Close::new(
                        close::INTERNAL,
                        "delivery_unavailable",
                        "delivery unavailable",
                    );
                    record_end(&server, Some(c.code), c.reason);
                    let _ = sink.send(c.message()).await;
                    return;
                }
            }
        }
    }

    let broken = CancellationToken::new();
    let refused = CancellationToken::new();
    let (goodbye_tx, goodbye_rx) = oneshot::channel();
    let writer = tokio::spawn(
        write_loop(
            sink,
            outbox,
            slow.clone(),
            broken.clone(),
            refused.clone(),
            goodbye_rx,
        )
        .in_current_span(),
    );

    let metrics = &server.inner.metrics;
    metrics.connects.inc();
    metrics.connections_open.inc();
    let end = read_loop(
        &server,
        cfg,
        user,
        device,
        &handle,
        &mut stream,
        &slow,
        &broken,
        &refused,
    )
    .await;
    metrics.connections_open.dec();

    if server.inner.sessions.unregister(user, session_id) {
        if let Err(e) = server.inner.bus.unsubscribe(user).await {
            tracing::warn!(error = %e, "bus unsubscribe failed");
        }
    }
    // A device that reconnected before this session noticed its end still
    // has a session here: it is not disconnected.
    if !server.inner.sessions.has_device(user, device) {
        if let Err(e) = server
            .inner
            .presence
            .disconnect(user, device, server.now())
            .await
        {
            tracing::warn!(error = %e, "presence disconnect failed");
        }
    }
    match end {
        End::Slow => {
            server
                .inner
                .stats
                .slow_consumers
                .fetch_add(1, Ordering::Relaxed);
        }
        End::Refused => {
            server
                .inner
                .stats
                .frames_refused
                .fetch_add(1, Ordering::Relaxed);
        }
        _ => {}
    }
    let (goodbye, reason) = end.close();
    record_end(&server, goodbye.map(|c| c.code), reason);
    let _ = goodbye_tx.send(goodbye.map(Close::message));
    let _ = writer.await;
}

/// Drains the outbound queue into the socket. Replies and events are queued
/// in order, so a client sees an event published before its reply first.
async fn write_loop(
    mut sink: SplitSink<WebSocket, WsMessage>,
    outbox: Arc<Outbox>,
    slow: CancellationToken,
    broken: CancellationToken,
    refused: CancellationToken,
    mut goodbye: oneshot::Receiver<Option<WsMessage>>,
) {
    /// Closes the queue however the writer ends: later frames are refused.
    struct CloseOnDrop(Arc<Outbox>);
    impl Drop for CloseOnDrop {
        fn drop(&mut self) {
            self.0.close();
        }
    }
    let outbox = CloseOnDrop(outbox);
    let outbox = &outbox.0;
    loop {
        tokio::select! {
            biased;
            bye = &mut goodbye => {
                // Flush what is queued (replies the reader produced last),
                // then the close frame; a client that does not read gets no
                // more than a short wait.
                let _ = tokio::time::timeout(Duration::from_secs(2), async {
                    if !slow.is_cancelled() {
                        while let Some(frame) = outbox.try_pop() {
                            sink.feed(WsMessage::Text(frame)).await?;
                        }
                    }
                    if let Ok(Some(m)) = bye {
                        sink.feed(m).await?;
                    }
                    sink.flush().await
                })
                .await;
                return;
            }
            frame = outbox.pop(), if !slow.is_cancelled() => {
                // Frames queued meanwhile go out with this one, in one
                // flush (a bounded batch, so the first is never held long
                // and the write buffer stays bounded).
                let write = async {
                    let mut bytes = frame.len();
                    sink.feed(WsMessage::Text(frame)).await?;
                    for _ in 1..WRITE_BATCH {
                        if bytes >= WRITE_BATCH_BYTES {
                            break;
                        }
                        let Some(more) = outbox.try_pop() else { break };
                        bytes += more.len();
                        sink.feed(WsMessage::Text(more)).await?;
                    }
                    sink.flush().await
                };
                tokio::select! {
                    r = write => if let Err(e) = r {
                        if is_capacity_error(&e) {
                            // A frame the write buffer could not hold: the
                            // limits are meant to make this impossible, so
                            // the session ends as `frame_refused`, counted
                            // and logged, never silent.
                            refused.cancel();
                        }
                        broken.cancel();
                        return;
                    },
                    // Blocked on a client that does not read, and its queue
                    // filled meanwhile: stop writing; the reader ends the session.
                    _ = slow.cancelled() => {}
                }
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn read_loop(
    server: &ChatServer,
    cfg: &crate::ServerConfig,
    user: UserId,
    device: DeviceId,
    handle: &SessionHandle,
    stream: &mut SplitStream<WebSocket>,
    slow: &CancellationToken,
    broken: &CancellationToken,
    refused: &CancellationToken,
) -> End {
    // Connecting counts as a heartbeat.
    if let Err(e) = server.heartbeat(user, device).await {
        tracing::warn!(code = ?e.code, "presence heartbeat failed on connect");
    }
    let cursor = match server.inner.messages.cursor(user, device).await {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "cannot load device cursor");
            return End::Broken;
        }
    };
    let welcome = ServerFrame::Welcome(Welcome {
        protocol: PROTOCOL_VERSION,
        server_id: cfg.server_id.clone(),
        user,
        device,
        heartbeat_interval_ms: cfg.heartbeat_interval.as_millis() as u64,
        presence_timeout_ms: cfg.presence_timeout.as_millis() as u64,
        cursor,
    });
    handle.offer(encode(&welcome));

    let shutdown = server.shutdown_token();
    let mut limiter = FrameLimit::new(cfg);
    let idle = cfg.presence_timeout;
    let mut deadline = tokio::time::Instant::now() + idle;
    loop {
        let incoming = tokio::select! {
            biased;
            _ = shutdown.cancelled() => return End::Shutdown,
            _ = slow.cancelled() => return End::Slow,
            _ = refused.cancelled() => return End::Refused,
            _ = broken.cancelled() => return End::Broken,
            _ = handle.revoked.cancelled() => return End::Revoked,
            _ = tokio::time::sleep_until(deadline) => return End::Idle,
            incoming = stream.next() => incoming,
        };
        let msg = match incoming {
            None => return End::ClientClosed,
            Some(Ok(m)) => m,
            Some(Err(e)) => {
                return if is_capacity_error(&e) {
                    End::TooBig
                } else {
                    End::Broken
                };
            }
        };
        deadline = tokio::time::Instant::now() + idle;
        let allowed = match limiter.admit() {
            Some(allowed) => allowed,
            None => return End::Flood,
        };
        let reply = match msg {
            WsMessage::Text(text) => {
                if allowed {
                    // Boxed: the request's state (the whole send pipeline)
                    // lives on the heap only while it runs, not in every
                    // idle session's future.
                    Box::pin(handle_text(server, user, device, &text)).await
                } else {
                    Reply::err(
                        request_id(&text),
                        err(ErrorCode::RateLimited, "too many requests; slow down"),
                    )
                }
            }
            WsMessage::Close(_) => return End::ClientClosed,
            WsMessage::Ping(_) | WsMessage::Pong(_) => continue,
            WsMessage::Binary(_) if !allowed => continue,
            WsMessage::Binary(_) => Reply::err(
                None,
                err(
                    ErrorCode::BadFrame,
                    "binary frames are not supported; send JSON text",
                ),
            ),
        };
        handle.offer(encode(&ServerFrame::Reply(reply)));
    }
}

/// The per-connection frame rate: every frame a client sends (text,
/// binary, ping, pong) takes a token. A text request without one is
/// answered `rate_limited` and other frames are dropped, but a client that
/// sends twice `rate_burst` frames (at least 32) in a row without a token
/// is flooding (pings even make the server write pongs) and is closed with
/// [`close::FLOOD`].
struct FrameLimit {
    bucket: crate::limits::Bucket,
    refused_in_a_row: u32,
    max_refused: u32,
}

impl FrameLimit {
    fn new(cfg: &crate::ServerConfig) -> Self {
        Self {
            bucket: crate::limits::Bucket::new(
                f64::from(cfg.rate_limit_per_sec),
                f64::from(cfg.rate_limit_burst),
            ),
            refused_in_a_row: 0,
            max_refused: cfg.rate_limit_burst.saturating_mul(2).max(32),
        }
    }

    /// `Some(true)`: go ahead; `Some(false)`: refuse this frame; `None`:
    /// close the connection.
    fn admit(&mut self) -> Option<bool> {
        if self.bucket.take(1.0).is_ok() {
            self.refused_in_a_row = 0;
            return Some(true);
        }
        self.refused_in_a_row += 1;
        (self.refused_in_a_row < self.max_refused).then_some(false)
    }
}

fn is_capacity_error(e: &impl std::fmt::Display) -> bool {
    // axum wraps tungstenite's error; "Space limit exceeded" / capacity
    // errors are the size limits.
    let text = format!("{e}").to_ascii_lowercase();
    text.contains("capacity") || text.contains("too long") || text.contains("space limit")
}

/// Best-effort request id of a frame that did not parse.
fn request_id(text: &str) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct IdOnly {
        id: Option<serde_json::Value>,
    }
    serde_json::from_str::<IdOnly>(text)
        .ok()
        .and_then(|f| f.id)
        .and_then(|v| v.as_str().map(str::to_owned))
        .filter(|id| id.len() <= MAX_REQUEST_ID)
}

async fn handle_text(server: &ChatServer, user: UserId, device: DeviceId, text: &str) -> Reply {
    let start = tokio::time::Instant::now();
    let (frame, kind) = match parse_frame(text) {
        Ok(f) => f,
        Err((id, e)) => {
            tracing::debug!(request_id = id.as_deref(), code = ?e.code, "request refused");
            return Reply::err(id, e);
        }
    };
    // The session's span carries the user and device; this one the
    // request's id, so every line a request logs names all three.
    let span = tracing::info_span!("request", request_id = %frame.id, kind);
    let reply = async {
        match handle_request(server, user, device, frame.request).await {
            Ok(body) => Reply::ok(frame.id, body),
            Err(e) => {
                tracing::debug!(code = ?e.code, "request failed");
                Reply::err(Some(frame.id), e)
            }
        }
    }
    .instrument(span)
    .await;
    Metrics::observe(
        &server.inner.metrics.requests,
        &Kind { kind },
        start.elapsed(),
    );
    reply
}

/// Reads a request frame. `bad_frame` when the frame itself is unusable
/// (not JSON, no usable request id, no or an unknown `type`); a frame of a
/// known type whose fields do not parse (a bad `client_msg_id`, a channel
/// id that is no UUID, a missing field) is `invalid_input`, answered with
/// the frame's request id.
fn parse_frame(text: &str) -> Result<(ClientFrame, &'static str), (Option<String>, WireError)> {
    let value: serde_json::Value = serde_json::from_str(text).map_err(|e| {
        (
            None,
            err(ErrorCode::BadFrame, format!("malformed request: {e}")),
        )
    })?;
    let id = match value.get("id").and_then(|v| v.as_str()) {
        Some(id) if !id.is_empty() && id.len() <= MAX_REQUEST_ID => id.to_owned(),
        _ => {
            return Err((
                None,
                err(ErrorCode::BadFrame, "request id must be 1 to 64 bytes"),
            ))
        }
    };
    let requested = value.get("type").and_then(|v| v.as_str());
    let Some(kind) = Request::TYPES
        .iter()
        .copied()
        .find(|t| Some(*t) == requested)
    else {
        return Err((
            Some(id),
            err(ErrorCode::BadFrame, "missing or unknown request type"),
        ));
    };
    serde_json::from_value(value)
        .map(|frame| (frame, kind))
        .map_err(|e| {
            (
                Some(id),
                err(ErrorCode::InvalidInput, format!("invalid request: {e}")),
            )
        })
}

async fn handle_request(
    server: &ChatServer,
    user: UserId,
    device: DeviceId,
    request: Request,
) -> ApiResult<ReplyBody> {
    match request {
        Request::Send {
            channel,
            client_msg_id,
            content,
            reply_to,
            attachments,
        } => {
            let out = server
                .send_with_attachments(
                    user,
                    device,
                    channel,
                    client_msg_id,
                    content,
                    reply_to,
                    attachments,
                )
                .await?;
            Ok(ReplyBody::Sent {
                message_id: out.message.id,
                created_at: out.message.created_at,
                duplicate: out.duplicate,
                seq: out.seq,
            })
        }
        Request::Sync { after, limit } => {
            let after = match after {
                Some(a) => a,
                None => server
                    .inner
                    .messages
                    .cursor(user, device)
                    .await
                    .map_err(wire)?,
            };
            let (entries, has_more) = server.sync(user, after, limit).await?;
            Ok(ReplyBody::Synced { entries, has_more })
        }
        Request::Ack { cursor } => {
            let cursor = server
                .inner
                .messages
                .advance_cursor(user, device, cursor)
                .await
                .map_err(wire)?;
            Ok(ReplyBody::Acked { cursor })
        }
        Request::Heartbeat {} => {
            server.heartbeat(user, device).await?;
            Ok(ReplyBody::Heartbeat {
                server_time: server.now(),
            })
        }
        Request::History {
            channel,
            before,
            after,
            limit,
        } => {
            let page = Page {
                before,
                after,
                limit: clamp_limit(limit, 50),
                max_bytes: usize::MAX,
            };
            let (messages, has_more) = server.history(user, channel, page).await?;
            Ok(ReplyBody::History { messages, has_more })
        }
        Request::Presence { users } => Ok(ReplyBody::Presence {
            users: server.presence_of(user, &users).await?,
        }),
        Request::Typing { channel } => Ok(ReplyBody::Typing {
            expires_in_ms: server.typing(user, channel).await?,
        }),
        Request::Head {} => Ok(ReplyBody::Head {
            seq: server.inner.messages.head(user).await.map_err(wire)?,
        }),
        Request::Read { channel, message } => {
            let (message, unread) = server.mark_read(user, device, channel, message).await?;
            Ok(ReplyBody::Read {
                channel,
                message,
                unread,
            })
        }
        Request::Delivered { channel, message } => Ok(ReplyBody::Delivered {
            channel,
            message: server.mark_delivered(user, channel, message).await?,
        }),
        Request::Edit {
            channel,
            message_id,
            content,
        } => {
            let action = chat_core::Action::Edit { content };
            server
                .change(user, device, channel, message_id, action)
                .await
        }
        Request::Delete {
            channel,
            message_id,
        } => {
            let action = chat_core::Action::Delete;
            server
                .change(user, device, channel, message_id, action)
                .await
        }
        Request::React {
            channel,
            message_id,
            emoji,
        } => {
            let action = chat_core::Action::React { emoji };
            server
                .change(user, device, channel, message_id, action)
                .await
        }
        Request::Unreact {
            channel,
            message_id,
            emoji,
        } => {
            let action = chat_core::Action::Unreact { emoji };
            server
                .change(user, device, channel, message_id, action)
                .await
        }
        _ => Err(WireError::new(ErrorCode::BadFrame, "unknown request")),
    }
}
