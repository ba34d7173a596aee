//! The connection task against a small scripted mock of the server (not the
//! real chat server, whose end-to-end tests live in `chat-server/tests`):
//! sync and live delivery in inbox-position order (overtaken and lost
//! events, the server's resync request), reconnects, send retries with the
//! same client message id, and fatal close codes.

// Test scaffolding: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chat_client::{
    AckMode, ChatClient, ClientError, ClientEvent, ConnectOptions, Connection, CursorStore,
    DeviceState, MemoryCursorStore, Session, StartFrom,
};
use chat_core::api::HistoryQuery;
use chat_core::api::{AuthResponse, RouteResponse};
use chat_core::protocol::{
    ClientFrame, ErrorCode, Event, Reply, ReplyBody, Request, ServerFrame, Welcome, WireError,
};
use chat_core::{
    ChannelId, ClientMsgId, DeviceId, InboxEntry, Message, MessageId, Presence, PresenceStatus,
    Seq, User, UserId,
};
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message as WsMessage;

const WAIT: Duration = Duration::from_secs(10);

/// What a mock connection is told to do by the test.
#[derive(Debug)]
enum Control {
    Frame(Box<ServerFrame>),
    Close(u16),
}

#[derive(Debug, Default)]
struct State {
    /// The user's inbox: position = key; message ids equal positions.
    inbox: BTreeMap<u64, Message>,
    next_id: u64,
    by_client_id: HashMap<String, u64>,
    acked: u64,
    routes: u32,
    connections: u32,
    sync_requests: u32,
    /// Store the next send but drop the connection instead of replying.
    drop_next_send: bool,
    /// Answer the next send with `unavailable` without storing it.
    fail_next_send: bool,
    /// Answer the next sync with `rate_limited`.
    rate_limit_next_sync: bool,
    /// Answer this many `route` calls with 503 `unavailable` (a server
    /// still starting).
    failing_routes: u32,
    /// The close frames the client sent.
    client_closes: Vec<u16>,
    live: Vec<mpsc::UnboundedSender<Control>>,
}

impl State {
    fn store(&mut self, channel: ChannelId, sender: UserId, cid: ClientMsgId, text: &str) -> u64 {
        self.next_id += 1;
        let id = self.next_id;
        self.by_client_id.insert(cid.as_str().to_owned(), id);
        self.inbox.insert(
            id,
            Message {
                id: MessageId(id),
                channel_id: channel,
                sender,
                content: text.to_owned(),
                created_at: id,
                client_msg_id: cid,
                reply_to: None,
                edited_at: None,
                deleted: false,
                reactions: Vec::new(),
                attachments: Vec::new(),
            },
        );
        id
    }
}

#[derive(Clone)]
struct Mock {
    http: SocketAddr,
    state: Arc<Mutex<State>>,
    user: User,
    channel: ChannelId,
}

impl Mock {
    async fn start() -> Mock {
        let state = Arc::new(Mutex::new(State::default()));
        let ws_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let ws_addr = ws_listener.local_addr().unwrap();
        let http_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let http = http_listener.local_addr().unwrap();
        let user = User {
            id: UserId::new_random(),
            username: "alice".into(),
            profile: Default::default(),
            created_at: 0,
        };
        let mock = Mock {
            http,
            state: state.clone(),
            user,
            channel: ChannelId::new_random(),
        };

        // HTTP: only `route`, one request per TCP connection.
        let st = state.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut sock, _)) = http_listener.accept().await else {
                    return;
                };
                let st = st.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 1024];
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match sock.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let head = String::from_utf8_lossy(&buf).to_string();
                    let failing = head.starts_with("GET /v1/route") && {
                        let mut st = st.lock().unwrap();
                        let failing = st.failing_routes > 0;
                        st.failing_routes = st.failing_routes.saturating_sub(1);
                        failing
                    };
                    let (status, body) = if failing {
                        (
                            "503 Service Unavailable",
                            r#"{"error":{"code":"unavailable","message":"starting","retryable":true}}"#
                                .to_owned(),
                        )
                    } else if head.starts_with("GET /v1/route") {
                        st.lock().unwrap().routes += 1;
                        let body = RouteResponse {
                            ws_url: format!("ws://{ws_addr}/v1/ws"),
                        };
                        ("200 OK", serde_json::to_string(&body).unwrap())
                    } else {
                        (
                            "404 Not Found",
                            r#"{"error":{"code":"not_found","message":"no route","retryable":false}}"#
                                .to_owned(),
                        )
                    };
                    let resp = format!(
                        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = sock.write_all(resp.as_bytes()).await;
                    let _ = sock.shutdown().await;
                });
            }
        });

        // WebSocket.
        let m = mock.clone();
        tokio::spawn(async move {
            loop {
                let Ok((sock, _)) = ws_listener.accept().await else {
                    return;
                };
                let m = m.clone();
                tokio::spawn(async move { m.serve_ws(sock).await });
            }
        });
        mock
    }

    async fn serve_ws(self, sock: tokio::net::TcpStream) {
        let Ok(mut ws) = tokio_tungstenite::accept_async(sock).await else {
            return;
        };
        let (tx, mut rx) = mpsc::unbounded_channel();
        let welcome = {
            let mut st = self.state.lock().unwrap();
            st.connections += 1;
            // Subscribed before welcome, as the real server does.
            st.live.push(tx);
            ServerFrame::Welcome(Welcome {
                protocol: chat_core::protocol::PROTOCOL_VERSION,
                server_id: format!("mock-{}", st.connections),
                user: self.user.id,
                device: DeviceId::new_random(),
                heartbeat_interval_ms: 5000,
                presence_timeout_ms: 30000,
                cursor: Seq(st.acked),
            })
        };
        if ws.send(text(&welcome)).await.is_err() {
            return;
        }
        loop {
            tokio::select! {
                ctl = rx.recv() => match ctl {
                    Some(Control::Frame(f)) => {
                        if ws.send(text(&f)).await.is_err() {
                            return;
                        }
                    }
                    Some(Control::Close(code)) => {
                        let _ = ws
                            .close(Some(CloseFrame {
                                code: CloseCode::from(code),
                                reason: "test".into(),
                            }))
                            .await;
                        while let Some(Ok(_)) = ws.next().await {}
                        return;
                    }
                    None => return,
                },
                msg = ws.next() => {
                    let msg = match msg {
                        Some(Ok(m)) => m,
                        _ => return,
                    };
                    let WsMessage::Text(t) = msg else {
                        if let WsMessage::Close(Some(f)) = msg {
                            self.state.lock().unwrap().client_closes.push(f.code.into());
                        }
                        continue;
                    };
                    let frame: ClientFrame = serde_json::from_str(&t).unwrap();
                    let Some(reply) = self.answer(frame) else {
                        // Simulate a crash before the reply.
                        return;
                    };
                    if ws.send(text(&ServerFrame::Reply(reply))).await.is_err() {
                        return;
                    }
                }
            }
        }
    }

    /// The reply to one request; `None` drops the connection instead.
    fn answer(&self, frame: ClientFrame) -> Option<Reply> {
        let mut st = self.state.lock().unwrap();
        let id = frame.id;
        let body = match frame.request {
            Request::Send {
                channel,
                client_msg_id,
                content,
                ..
            } => {
                if st.fail_next_send {
                    st.fail_next_send = false;
                    return Some(Reply::err(
                        Some(id),
                        WireError::new(ErrorCode::Unavailable, "try later"),
                    ));
                }
                let existing = st.by_client_id.get(client_msg_id.as_str()).copied();
                let (message_id, duplicate) = match existing {
                    Some(mid) => (mid, true),
                    None => (
                        st.store(channel, self.user.id, client_msg_id, &content),
                        false,
                    ),
                };
                if st.drop_next_send {
                    st.drop_next_send = false;
                    return None;
                }
                ReplyBody::Sent {
                    message_id: MessageId(message_id),
                    created_at: message_id,
                    duplicate,
                    seq: Some(Seq(message_id)),
                }
            }
            Request::Sync { after, limit } => {
                st.sync_requests += 1;
                if st.rate_limit_next_sync {
                    st.rate_limit_next_sync = false;
                    return Some(Reply::err(
                        Some(id),
                        WireError::new(ErrorCode::RateLimited, "slow down"),
                    ));
                }
                let after = after.map(|a| a.0).unwrap_or(st.acked);
                let limit = limit.unwrap_or(100) as usize;
                let all: Vec<InboxEntry> = st
                    .inbox
                    .range(after + 1..)
                    .map(|(seq, m)| InboxEntry {
                        seq: Seq(*seq),
                        message: m.clone(),
                        change: None,
                    })
                    .collect();
                let has_more = all.len() > limit;
                ReplyBody::Synced {
                    entries: all.into_iter().take(limit).collect(),
                    has_more,
                }
            }
            Request::Ack { cursor } => {
                st.acked = st.acked.max(cursor.0);
                ReplyBody::Acked {
                    cursor: Seq(st.acked),
                }
            }
            Request::Heartbeat {} => ReplyBody::Heartbeat { server_time: 0 },
            Request::Head {} => ReplyBody::Head {
                seq: Seq(st.inbox.keys().next_back().copied().unwrap_or(0)),
            },
            Request::History { channel, .. } => ReplyBody::History {
                messages: st
                    .inbox
                    .values()
                    .filter(|m| m.channel_id == channel)
                    .cloned()
                    .collect(),
                has_more: false,
            },
            Request::Presence { users } => ReplyBody::Presence {
                users: users
                    .into_iter()
                    .map(|user| Presence {
                        user,
                        status: PresenceStatus::Online,
                        last_active_at: Some(1),
                    })
                    .collect(),
            },
            other => panic!("unexpected request {other:?}"),
        };
        Some(Reply::ok(id, body))
    }

    /// Stores a message from someone else and sends it live.
    fn deliver(&self, content: &str) -> u64 {
        let id = self.store_quietly(content);
        self.send_live(id);
        id
    }

    /// Sends stored message `seq` live (again, or late).
    fn send_live(&self, seq: u64) {
        let mut st = self.state.lock().unwrap();
        let message = st.inbox[&seq].clone();
        st.live.retain(|tx| {
            tx.send(Control::Frame(Box::new(ServerFrame::Event(
                Event::Message {
                    seq: Seq(seq),
                    message: message.clone(),
                },
            ))))
            .is_ok()
        });
    }

    /// Sends a server frame to every connection.
    fn broadcast(&self, frame: ServerFrame) {
        let mut st = self.state.lock().unwrap();
        st.live
            .retain(|tx| tx.send(Control::Frame(Box::new(frame.clone()))).is_ok());
    }

    /// Stores a message without live delivery (it happened while offline).
    fn store_quietly(&self, content: &str) -> u64 {
        let mut st = self.state.lock().unwrap();
        st.store(
            self.channel,
            UserId::new_random(),
            ClientMsgId::new_random(),
            content,
        )
    }

    fn close_all(&self, code: u16) {
        let mut st = self.state.lock().unwrap();
        for tx in st.live.drain(..) {
            let _ = tx.send(Control::Close(code));
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        f(&mut self.state.lock().unwrap())
    }

    /// A new device's connection with a cursor store of its own.
    async fn connect_new(&self, options: ConnectOptions) -> Connection {
        self.session()
            .connect(
                DeviceId::new_random(),
                Arc::new(MemoryCursorStore::new()),
                options,
            )
            .await
            .unwrap()
    }

    fn session(&self) -> Session {
        ChatClient::new(&format!("http://{}", self.http))
            .unwrap()
            .session(AuthResponse {
                token: "token".into(),
                expires_at: u64::MAX,
                refresh_token: "refresh".into(),
                refresh_expires_at: u64::MAX,
                user: self.user.clone(),
            })
    }
}

fn text(frame: &ServerFrame) -> WsMessage {
    WsMessage::text(serde_json::to_string(frame).unwrap())
}

fn options() -> ConnectOptions {
    ConnectOptions {
        reconnect_min: Duration::from_millis(10),
        reconnect_max: Duration::from_millis(100),
        heartbeat_interval: Some(Duration::from_millis(50)),
        request_timeout: Duration::from_secs(5),
        send_deadline: Duration::from_secs(10),
        sync_page_size: 2,
        ..ConnectOptions::default()
    }
}

async fn next(conn: &mut Connection) -> ClientEvent {
    tokio::time::timeout(WAIT, conn.next_event())
        .await
        .expect("an event in time")
        .expect("the stream is open")
}

/// Reads events until `Synced`; returns the message ids delivered.
async fn until_synced(conn: &mut Connection) -> Vec<u64> {
    let mut ids = Vec::new();
    loop {
        match next(conn).await {
            ClientEvent::Message(d) => ids.push(d.message.id.0),
            ClientEvent::Synced { .. } => return ids,
            _ => {}
        }
    }
}

async fn next_message(conn: &mut Connection) -> u64 {
    loop {
        if let ClientEvent::Message(d) = next(conn).await {
            return d.message.id.0;
        }
    }
}

async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let start = tokio::time::Instant::now();
    while !f() {
        assert!(start.elapsed() < WAIT, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn sync_then_live_moves_the_cursor() {
    let mock = Mock::start().await;
    for i in 0..5 {
        mock.store_quietly(&format!("old {i}"));
    }
    let store = Arc::new(MemoryCursorStore::new());
    let device = DeviceId::new_random();
    let mut conn = mock
        .session()
        .connect(device, store.clone(), options())
        .await
        .unwrap();
    assert!(matches!(
        next(&mut conn).await,
        ClientEvent::Connected { .. }
    ));
    assert_eq!(until_synced(&mut conn).await, [1, 2, 3, 4, 5]);
    // Saved once the application has taken the messages.
    eventually("cursor 5", || conn.cursor() == Seq(5)).await;

    let id = mock.deliver("live");
    assert_eq!(next_message(&mut conn).await, id);
    // The live message moves the cursor; it is saved and acked.
    eventually("cursor 6", || conn.cursor() == Seq(6)).await;
    eventually("ack 6", || mock.with(|s| s.acked) == 6).await;
    let user = mock.user.id;
    let saved = store.load(user, device).await.unwrap().unwrap();
    assert_eq!(saved.cursor, Seq(6));

    // Requests over the socket.
    let history = conn
        .history(
            mock.channel,
            &HistoryQuery {
                limit: Some(10),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(history.messages.len(), 6);
    assert!(!history.has_more);
    let presence = conn.presence(&[user]).await.unwrap();
    assert_eq!(presence[0].status, PresenceStatus::Online);

    conn.close().await;
    assert!(conn.is_closed());
    eventually("close frame", || {
        mock.with(|s| s.client_closes.contains(&1000))
    })
    .await;
    let err = conn.send(mock.channel, "late").await.unwrap_err();
    assert!(
        matches!(
            err,
            ClientError::Closed {
                code: Some(1000),
                ..
            }
        ),
        "{err:?}"
    );
    assert!(!err.is_retryable());
}

#[tokio::test]
async fn reconnects_after_a_retryable_close_and_syncs_without_duplicates() {
    let mock = Mock::start().await;
    let mut conn = mock.connect_new(options()).await;
    assert!(until_synced(&mut conn).await.is_empty());
    let a = mock.deliver("a");
    assert_eq!(next_message(&mut conn).await, a);

    mock.close_all(4001);
    let mut saw_disconnect = false;
    loop {
        match next(&mut conn).await {
            ClientEvent::Disconnected { code, .. } => {
                assert_eq!(code, Some(4001));
                saw_disconnect = true;
            }
            ClientEvent::Connected { server_id } => {
                assert!(saw_disconnect);
                assert_eq!(server_id, "mock-2");
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    // The new connection syncs `a` again from the inbox; it is not
    // delivered twice.
    assert!(until_synced(&mut conn).await.is_empty());
    assert_eq!(mock.with(|s| s.routes), 2, "route asked again");
    let b = mock.deliver("b");
    assert_eq!(next_message(&mut conn).await, b);
}

#[tokio::test]
async fn messages_stored_while_offline_arrive_after_reconnect() {
    let mock = Mock::start().await;
    let mut conn = mock.connect_new(options()).await;
    until_synced(&mut conn).await;
    // Fail the first sync page of the next connection retryably: the page
    // is asked for again on the same connection.
    mock.with(|s| s.rate_limit_next_sync = true);
    mock.close_all(4000);
    let missed: Vec<u64> = (0..5)
        .map(|i| mock.store_quietly(&format!("m{i}")))
        .collect();
    assert_eq!(until_synced(&mut conn).await, missed);
    assert_eq!(mock.with(|s| s.connections), 2);
}

#[tokio::test]
async fn a_restored_cursor_skips_what_the_device_already_has() {
    let mock = Mock::start().await;
    for i in 0..6 {
        mock.store_quietly(&format!("m{i}"));
    }
    let store = Arc::new(MemoryCursorStore::new());
    let device = DeviceId::new_random();
    store
        .save(mock.user.id, device, &DeviceState { cursor: Seq(3) })
        .await
        .unwrap();
    let mut conn = mock
        .session()
        .connect(device, store, options())
        .await
        .unwrap();
    assert_eq!(until_synced(&mut conn).await, [4, 5, 6]);
    // The server learns the local cursor.
    eventually("ack", || mock.with(|s| s.acked) >= 6).await;
}

#[tokio::test]
async fn a_send_cut_off_by_a_disconnect_is_retried_with_the_same_id() {
    let mock = Mock::start().await;
    let mut conn = mock.connect_new(options()).await;
    until_synced(&mut conn).await;
    mock.with(|s| s.drop_next_send = true);
    let cid = ClientMsgId::new("my-key-1").unwrap();
    let receipt = conn
        .send_with_id(mock.channel, cid.clone(), "hello")
        .await
        .unwrap();
    assert!(receipt.duplicate, "the retry found the stored message");
    assert_eq!(receipt.client_msg_id, cid);
    assert_eq!(mock.with(|s| s.inbox.len()), 1, "stored once");
    assert_eq!(receipt.message_id, MessageId(1));
    assert!(mock.with(|s| s.connections) >= 2);

    // A retryable error reply is retried too.
    mock.with(|s| s.fail_next_send = true);
    let receipt = conn.send(mock.channel, "again").await.unwrap();
    assert!(!receipt.duplicate);
    assert_eq!(receipt.message_id, MessageId(2));
}

#[tokio::test]
async fn own_sends_are_not_delivered_back_as_events() {
    let mock = Mock::start().await;
    let mut conn = mock.connect_new(options()).await;
    until_synced(&mut conn).await;
    let mine = conn.send(mock.channel, "mine").await.unwrap();
    assert_eq!(mine.seq, Some(Seq(1)));
    // The receipt stands for position 1: the cursor moves past it.
    eventually("cursor past my own message", || conn.cursor() == Seq(1)).await;
    // Reconnect: the sync does not bring it back; a later message comes.
    mock.close_all(4000);
    let other = mock.store_quietly("theirs");
    assert_eq!(until_synced(&mut conn).await, [other]);
    assert!(mine.message_id.0 < other);
    // A reply lost with its connection: the sync finds the message first,
    // and knows it as this device's own by its client message id.
    mock.with(|s| s.drop_next_send = true);
    let key = ClientMsgId::new("lost-reply").unwrap();
    let receipt = conn
        .send_with_id(mock.channel, key, "mine again")
        .await
        .unwrap();
    assert!(receipt.duplicate);
    let last = mock.deliver("after");
    assert_eq!(
        next_message(&mut conn).await,
        last,
        "not my own message first"
    );
}

/// Live events that overtake one another are handed over in inbox order;
/// an event that never comes (lost) is fetched by a sync after a short
/// wait; the server's resync request makes the client sync at once.
#[tokio::test]
async fn overtaken_lost_and_resynced_events_arrive_in_order() {
    let mock = Mock::start().await;
    let mut conn = mock.connect_new(options()).await;
    until_synced(&mut conn).await;
    // 2 overtakes 1.
    let one = mock.store_quietly("one");
    let two = mock.deliver("two");
    mock.send_live(one);
    assert_eq!(next_message(&mut conn).await, one);
    assert_eq!(next_message(&mut conn).await, two);
    // 3 is lost; 4 arrives and waits; a sync brings 3, then 4 follows.
    let syncs = mock.with(|s| s.sync_requests);
    let three = mock.store_quietly("three");
    let four = mock.deliver("four");
    assert_eq!(next_message(&mut conn).await, three);
    assert_eq!(next_message(&mut conn).await, four);
    assert!(mock.with(|s| s.sync_requests) > syncs, "a gap sync ran");
    // Stored without an event, then the server asks for a sync.
    let five = mock.store_quietly("five");
    mock.broadcast(ServerFrame::Event(Event::Resync {}));
    assert_eq!(next_message(&mut conn).await, five);
    eventually("cursor at five", || conn.cursor() == Seq(five)).await;
}

#[tokio::test]
async fn a_fatal_close_code_stops_the_connection() {
    let mock = Mock::start().await;
    let mut conn = mock.connect_new(options()).await;
    until_synced(&mut conn).await;
    mock.close_all(4100);
    let mut events = Vec::new();
    while let Some(ev) = tokio::time::timeout(WAIT, conn.next_event()).await.unwrap() {
        events.push(ev);
    }
    assert!(
        matches!(
            events[0],
            ClientEvent::Disconnected {
                code: Some(4100),
                ..
            }
        ),
        "{events:?}"
    );
    assert!(
        matches!(
            events.last(),
            Some(ClientEvent::Error(ClientError::Closed {
                code: Some(4100),
                ..
            }))
        ),
        "{events:?}"
    );
    let err = conn.send(mock.channel, "x").await.unwrap_err();
    assert!(
        matches!(
            err,
            ClientError::Closed {
                code: Some(4100),
                ..
            }
        ),
        "{err:?}"
    );
    // The reason, from the end of the stream on.
    assert_eq!(conn.closed().await, err);
    assert!(!err.is_retryable());
    assert_eq!(mock.with(|s| s.connections), 1, "no reconnect");
}

/// Closing (or dropping) the connection is a reason too: code 1000.
#[tokio::test]
async fn closed_says_why_the_connection_stopped() {
    let mock = Mock::start().await;
    let mut conn = mock.connect_new(options()).await;
    until_synced(&mut conn).await;
    let handle = conn.handle();
    let waiting = tokio::spawn(async move { handle.closed().await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!waiting.is_finished(), "resolves only once stopped");
    conn.close().await;
    let why = tokio::time::timeout(WAIT, waiting).await.unwrap().unwrap();
    assert!(
        matches!(
            why,
            ClientError::Closed {
                code: Some(1000),
                ..
            }
        ),
        "{why:?}"
    );
    // The stream ends after what was queued.
    while tokio::time::timeout(WAIT, conn.next_event())
        .await
        .unwrap()
        .is_some()
    {}
    assert_eq!(conn.closed().await, why);
}

/// The echo-bot pattern: a send from the loop that reads events, while
/// hundreds of events wait. The connection keeps reading its socket, so
/// the receipts come; over its small event budget it lets live messages go
/// and fetches them by sync once the reader has caught up: every message
/// arrives once, in order.
#[tokio::test]
async fn sends_from_the_event_loop_are_not_stuck_behind_unread_events() {
    let mock = Mock::start().await;
    let mut conn = mock
        .connect_new(ConnectOptions {
            event_capacity: 4,
            event_buffer_bytes: 16 << 10,
            sync_page_size: 50,
            ..options()
        })
        .await;
    until_synced(&mut conn).await;
    let syncs = mock.with(|s| s.sync_requests);
    let sent: Vec<u64> = (0..400).map(|i| mock.deliver(&format!("m{i}"))).collect();
    // Nothing is read: a send still gets its receipt.
    let receipt = tokio::time::timeout(WAIT, conn.send(mock.channel, "not stuck"))
        .await
        .expect("a receipt while 400 events wait")
        .unwrap();
    assert!(!receipt.duplicate);
    // Echo each one from the event loop.
    let mut got = Vec::new();
    while got.len() < sent.len() {
        if let ClientEvent::Message(d) = next(&mut conn).await {
            got.push(d.message.id.0);
            let reply = format!("echo {}", d.message.content);
            tokio::time::timeout(WAIT, conn.send(mock.channel, reply))
                .await
                .expect("an echo's receipt")
                .unwrap();
        }
    }
    assert_eq!(got, sent, "every message once, in order");
    assert!(
        mock.with(|s| s.sync_requests) > syncs,
        "messages over the budget came by sync"
    );
    // The echoes are this device's own: none comes back as an event.
    let last = mock.deliver("last");
    assert_eq!(next_message(&mut conn).await, last);
}

/// Manual acknowledgement: the saved cursor (and the server's) covers
/// only what was acknowledged; a new connection on the same store
/// delivers the rest again. Acknowledging a message acknowledges the ones
/// before it.
#[tokio::test]
async fn manual_acks_move_the_cursor_and_the_rest_comes_again() {
    let mock = Mock::start().await;
    let ids: Vec<u64> = (0..5)
        .map(|i| mock.store_quietly(&format!("m{i}")))
        .collect();
    let store = Arc::new(MemoryCursorStore::new());
    let device = DeviceId::new_random();
    let manual = ConnectOptions {
        ack: AckMode::Manual,
        ..options()
    };
    let mut conn = mock
        .session()
        .connect(device, store.clone(), manual.clone())
        .await
        .unwrap();
    let mut deliveries = Vec::new();
    while deliveries.len() < 5 {
        if let ClientEvent::Message(d) = next(&mut conn).await {
            deliveries.push(d);
        }
    }
    assert_eq!(
        deliveries
            .iter()
            .map(|d| d.message.id.0)
            .collect::<Vec<_>>(),
        ids
    );
    // Taking the events moved nothing.
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    assert_eq!(conn.cursor(), Seq::ZERO);
    let user = mock.user.id;
    assert_eq!(store.load(user, device).await.unwrap(), None);
    // Acknowledging the third covers the first three, saved on return.
    deliveries[2].ack().await.unwrap();
    assert_eq!(
        store.load(user, device).await.unwrap(),
        Some(DeviceState { cursor: Seq(3) })
    );
    assert_eq!(conn.cursor(), Seq(3));
    eventually("the server's cursor", || mock.with(|s| s.acked) == 3).await;
    // An earlier acknowledgement changes nothing.
    deliveries[0].ack().await.unwrap();
    assert_eq!(conn.cursor(), Seq(3));
    drop(conn);
    // A restart: 4 and 5 come again, 1 to 3 do not.
    let mut conn = mock
        .session()
        .connect(device, store.clone(), manual)
        .await
        .unwrap();
    assert_eq!(until_synced(&mut conn).await, ids[3..]);
    // A delivery of a stopped connection cannot be acknowledged.
    let err = deliveries[4].ack().await.unwrap_err();
    assert!(
        matches!(
            err,
            ClientError::Closed {
                code: Some(1000),
                ..
            }
        ),
        "{err:?}"
    );
}

/// Automatic mode: a message counts once the application has taken it,
/// not when it is queued for it.
#[tokio::test]
async fn automatic_acks_count_what_the_application_took() {
    let mock = Mock::start().await;
    for i in 0..4 {
        mock.store_quietly(&format!("m{i}"));
    }
    let store = Arc::new(MemoryCursorStore::new());
    let device = DeviceId::new_random();
    let mut conn = mock
        .session()
        .connect(device, store.clone(), options())
        .await
        .unwrap();
    // Take two messages; leave two queued.
    let mut taken = 0;
    while taken < 2 {
        if let ClientEvent::Message(_) = next(&mut conn).await {
            taken += 1;
        }
    }
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(conn.cursor(), Seq(2), "queued is not handled");
    conn.close().await;
    assert_eq!(
        store.load(mock.user.id, device).await.unwrap(),
        Some(DeviceState { cursor: Seq(2) }),
        "saved on the way out"
    );
}

/// A new device starts from now, or after a given position, instead of
/// replaying the inbox; the starting point is saved at once, so a restart
/// does not skip what arrived meanwhile.
#[tokio::test]
async fn a_new_device_can_start_from_now_or_from_a_message() {
    let mock = Mock::start().await;
    let old: Vec<u64> = (0..5)
        .map(|i| mock.store_quietly(&format!("old {i}")))
        .collect();
    let store = Arc::new(MemoryCursorStore::new());
    let device = DeviceId::new_random();
    let latest = ConnectOptions {
        start_from: StartFrom::Latest,
        ..options()
    };
    let mut conn = mock
        .session()
        .connect(device, store.clone(), latest.clone())
        .await
        .unwrap();
    assert!(until_synced(&mut conn).await.is_empty(), "nothing old");
    let user = mock.user.id;
    assert_eq!(
        store.load(user, device).await.unwrap(),
        Some(DeviceState { cursor: Seq(5) })
    );
    let live = mock.deliver("new");
    assert_eq!(next_message(&mut conn).await, live);
    conn.close().await;
    // Stored while this device was away: the saved cursor wins over
    // `Latest`.
    let meanwhile = mock.store_quietly("meanwhile");
    let mut conn = mock
        .session()
        .connect(device, store.clone(), latest)
        .await
        .unwrap();
    assert_eq!(until_synced(&mut conn).await, [meanwhile]);
    drop(conn);
    // Another new device, from the third message on.
    let mut conn = mock
        .connect_new(ConnectOptions {
            start_from: StartFrom::After(Seq(old[2])),
            ..options()
        })
        .await;
    assert_eq!(
        until_synced(&mut conn).await,
        [old[3], old[4], live, meanwhile]
    );
}

/// With `retry_initial_connect`, `connect` returns at once while the
/// server is not ready, and connects in the background; a send made
/// meanwhile waits for it. Without it, `connect` fails, retryably.
#[tokio::test]
async fn the_first_connection_can_be_retried_in_the_background() {
    let mock = Mock::start().await;
    mock.with(|s| s.failing_routes = 1);
    let err = mock
        .session()
        .connect(
            DeviceId::new_random(),
            Arc::new(MemoryCursorStore::new()),
            options(),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::Unavailable));
    assert!(err.is_retryable());

    mock.with(|s| s.failing_routes = 3);
    let mut conn = tokio::time::timeout(
        Duration::from_millis(500),
        mock.session().connect(
            DeviceId::new_random(),
            Arc::new(MemoryCursorStore::new()),
            ConnectOptions {
                retry_initial_connect: true,
                ..options()
            },
        ),
    )
    .await
    .expect("returns at once")
    .unwrap();
    let receipt = conn
        .send(mock.channel, "queued until connected")
        .await
        .unwrap();
    assert!(!receipt.duplicate);
    assert!(matches!(
        next(&mut conn).await,
        ClientEvent::Connected { .. }
    ));
    assert_eq!(mock.with(|s| s.failing_routes), 0, "three refusals first");
}

#[tokio::test]
async fn connect_fails_when_no_server_answers() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let session = ChatClient::new(&format!("http://{addr}"))
        .unwrap()
        .session(AuthResponse {
            token: "t".into(),
            expires_at: u64::MAX,
            refresh_token: "r".into(),
            refresh_expires_at: u64::MAX,
            user: User {
                id: UserId::new_random(),
                username: "x".into(),
                profile: Default::default(),
                created_at: 0,
            },
        });
    let err = session
        .connect(
            DeviceId::new_random(),
            Arc::new(MemoryCursorStore::new()),
            options(),
        )
        .await
        .unwrap_err();
    assert!(err.is_retryable(), "{err:?}");
}

#[tokio::test]
async fn a_slow_reader_loses_nothing_and_dropping_closes_the_socket() {
    let mock = Mock::start().await;
    let mut conn = mock
        .connect_new(ConnectOptions {
            event_capacity: 1,
            ..options()
        })
        .await;
    until_synced(&mut conn).await;
    let sent: Vec<u64> = (0..50).map(|i| mock.deliver(&format!("m{i}"))).collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut got = Vec::new();
    while got.len() < sent.len() {
        got.push(next_message(&mut conn).await);
    }
    assert_eq!(got, sent);
    drop(conn);
    eventually("close frame", || {
        mock.with(|s| s.client_closes.contains(&1000))
    })
    .await;
}
