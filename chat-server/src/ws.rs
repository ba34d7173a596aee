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

use crate::outbox::Outbox;
use crate::server::{clamp_limit, err, wire, ApiResult, ChatServer};
use crate::sessions::{encode, Registered, SessionHandle};

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
            Some((close::SHUTDOWN, "server shutting down"))
        } else if query.v.unwrap_or(PROTOCOL_VERSION) != PROTOCOL_VERSION {
            Some((close::UNSUPPORTED_VERSION, "unsupported protocol version"))
        } else {
            match &auth {
                Err(e) if e.code == ErrorCode::Unauthorized => Some((
                    close::UNAUTHORIZED,
                    "missing, invalid, expired or revoked token",
                )),
                // The directory could not tell: a node failure; try again.
                Err(_) => Some((close::INTERNAL, "cannot check the token now")),
                Ok(_) => None,
            }
        };
        let user = auth.ok();
        let permit = server.inner.conn_limit.clone().try_acquire_owned().ok();
        match (refusal, user, permit) {
            (Some((code, reason)), _, _) => refuse(socket, code, reason).await,
            (None, _, None) => {
                refuse(socket, close::SERVER_FULL, "server at its connection limit").await
            }
            (None, Some(claims), Some(permit)) => {
                // Tracked so shutdown waits for the session to say goodbye.
                let tracker = server.inner.tasks.clone();
                tracker
                    .track_future(run_session(
                        server,
                        socket,
                        claims.sub,
                        claims.sid,
                        query.device,
                        permit,
                    ))
                    .await;
            }
            (None, None, Some(_)) => refuse(socket, close::UNAUTHORIZED, "unauthorized").await,
        }
    })
}

async fn refuse(mut socket: WebSocket, code: u16, reason: &'static str) {
    let _ = socket
        .send(WsMessage::Close(Some(CloseFrame {
            code,
            reason: Utf8Bytes::from_static(reason),
        })))
        .await;
}

fn close_msg(code: u16, reason: &'static str) -> WsMessage {
    WsMessage::Close(Some(CloseFrame {
        code,
        reason: Utf8Bytes::from_static(reason),
    }))
}

/// How a session ended, for the close frame.
enum End {
    ClientClosed,
    Shutdown,
    Slow,
    Idle,
    TooBig,
    Broken,
    Revoked,
    Flood,
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
            let _ = sink
                .send(close_msg(
                    close::TOO_MANY_CONNECTIONS,
                    "too many connections for this user",
                ))
                .await;
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
                    let _ = sink
                        .send(close_msg(close::INTERNAL, "delivery unavailable"))
                        .await;
                    return;
                }
            }
        }
    }

    let broken = CancellationToken::new();
    let (goodbye_tx, goodbye_rx) = oneshot::channel();
    let writer = tokio::spawn(write_loop(
        server.clone(),
        sink,
        outbox,
        slow.clone(),
        broken.clone(),
        goodbye_rx,
    ));

    let end = read_loop(
        &server,
        cfg,
        user,
        device,
        &handle,
        &mut stream,
        &slow,
        &broken,
    )
    .await;

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
    let goodbye = match end {
        End::ClientClosed | End::Broken => None,
        End::Shutdown => Some(close_msg(close::SHUTDOWN, "server shutting down")),
        End::Slow => {
            server
                .inner
                .stats
                .slow_consumers
                .fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%user, %device, code = close::SLOW_CONSUMER, "closing a slow consumer: its outbound queue is full");
            Some(close_msg(close::SLOW_CONSUMER, "outbound queue full"))
        }
        End::Idle => Some(close_msg(close::IDLE_TIMEOUT, "no heartbeat")),
        End::TooBig => Some(close_msg(1009, "frame too large")),
        End::Revoked => Some(close_msg(close::UNAUTHORIZED, "token revoked")),
        End::Flood => Some(close_msg(close::FLOOD, "too many frames; slow down")),
    };
    let _ = goodbye_tx.send(goodbye);
    let _ = writer.await;
}

/// Drains the outbound queue into the socket. Replies and events are queued
/// in order, so a client sees an event published before its reply first.
async fn write_loop(
    server: ChatServer,
    mut sink: SplitSink<WebSocket, WsMessage>,
    outbox: Arc<Outbox>,
    slow: CancellationToken,
    broken: CancellationToken,
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
    let stats = &server.inner.stats;
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
                            // it is counted and logged, never silent.
                            stats.frames_refused.fetch_add(1, Ordering::Relaxed);
                            tracing::error!(error = %e, "a frame too large for the write buffer was refused; closing the connection");
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
    let frame = match parse_frame(text) {
        Ok(f) => f,
        Err((id, e)) => return Reply::err(id, e),
    };
    match handle_request(server, user, device, frame.request).await {
        Ok(body) => Reply::ok(frame.id, body),
        Err(e) => Reply::err(Some(frame.id), e),
    }
}

/// Reads a request frame. `bad_frame` when the frame itself is unusable
/// (not JSON, no usable request id, no or an unknown `type`); a frame of a
/// known type whose fields do not parse (a bad `client_msg_id`, a channel
/// id that is no UUID, a missing field) is `invalid_input`, answered with
/// the frame's request id.
fn parse_frame(text: &str) -> Result<ClientFrame, (Option<String>, WireError)> {
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
    match value.get("type").and_then(|v| v.as_str()) {
        Some(t) if Request::TYPES.contains(&t) => {}
        _ => {
            return Err((
                Some(id),
                err(ErrorCode::BadFrame, "missing or unknown request type"),
            ))
        }
    }
    serde_json::from_value(value).map_err(|e| {
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
        } => {
            let out = server
                .send(user, device, channel, client_msg_id, content)
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
        _ => Err(WireError::new(ErrorCode::BadFrame, "unknown request")),
    }
}
