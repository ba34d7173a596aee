//! Test harness: a real server on 127.0.0.1:0, a raw protocol client and a
//! small HTTP helper. Shared by the integration tests.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chat_client::{
    ChatClient, ClientError, ClientEvent, ConnectOptions, Connection, MemoryCursorStore, Session,
};
use chat_core::api::{
    AuthResponse, CreateGroupRequest, OpenDirectRequest, SignupRequest, UpdatePrivacyRequest,
};
use chat_core::protocol::ErrorCode;
use chat_core::protocol::{ClientFrame, Event, Reply, ReplyBody, Request, ServerFrame, Welcome};
use chat_core::{
    Appended, Channel, ChannelId, ClientMsgId, Committed, DeviceId, HistoryStore, Inbox,
    InboxEntry, Message, MessageId, MessageStore, NewMessage, Page, Paged, Seq, UserId, WhoMayAdd,
};
use chat_server::{ChatServer, RateSpec, ServerBuilder, ServerConfig};
use futures::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;

/// A port free on 127.0.0.1 (for servers started as processes).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A configuration for tests: cheap password hashing, fixed secret.
pub fn test_config() -> ServerConfig {
    ServerConfig {
        token_secret: vec![7; 32].into(),
        argon2_memory_kib: 256,
        argon2_iterations: 1,
        // Tests on paused time sleep past any keep-alive idle timeout,
        // while reqwest's pool (on the real clock) still reuses the
        // connection the server closed. The timeout has tests of its own.
        header_timeout: Duration::from_secs(3_600),
        // Setting up a test signs many users up from one address and some
        // send megabytes at once; the tests of these limits set them.
        auth_per_address: RateSpec::OFF,
        send_bytes_per_sec: 0,
        ..ServerConfig::default()
    }
}

/// A running server.
pub struct TestServer {
    pub server: ChatServer,
    pub addr: SocketAddr,
    pub http: String,
    pub shutdown: CancellationToken,
    pub task: tokio::task::JoinHandle<Result<(), chat_server::ServerError>>,
    /// The PostgreSQL schema of this server's data, dropped with it.
    pub schema: Option<PgSchema>,
}

impl TestServer {
    pub fn ws_url(&self) -> String {
        format!("ws://{}/v1/ws", self.addr)
    }

    /// Graceful shutdown, waiting until `serve` returns.
    pub async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.unwrap().unwrap();
    }
}

/// Starts a server built by `builder` on 127.0.0.1:0.
pub async fn start_with(builder: ServerBuilder) -> TestServer {
    let server = builder.build().await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(chat_server::serve(
        server.clone(),
        listener,
        shutdown.clone(),
    ));
    TestServer {
        server,
        addr,
        http: format!("http://{addr}"),
        shutdown,
        task,
        schema: None,
    }
}

/// Starts a server with `config` on the test storage: in memory, or with
/// `CHAT_TEST_STORAGE=postgres` on PostgreSQL (`CHAT_TEST_PG_URL`, default
/// the local server), in a fresh schema dropped when the server is. CI runs
/// the end-to-end tests both ways.
pub async fn start(config: ServerConfig) -> TestServer {
    match std::env::var("CHAT_TEST_STORAGE").as_deref() {
        #[cfg(feature = "postgres")]
        Ok("postgres") => start_on_postgres(config).await,
        Ok("memory") | Err(_) => start_memory(config).await,
        Ok(other) => panic!("CHAT_TEST_STORAGE={other}: expected memory or postgres"),
    }
}

/// Starts an in-memory server with `config`, whatever `CHAT_TEST_STORAGE`
/// says (for tests on paused time, where no real I/O may wait).
pub async fn start_memory(config: ServerConfig) -> TestServer {
    start_with(ChatServer::builder(config)).await
}

/// Starts a server with `config` on PostgreSQL in a fresh schema.
#[cfg(feature = "postgres")]
pub async fn start_on_postgres(config: ServerConfig) -> TestServer {
    let schema = PgSchema::new();
    let store = schema.store(&pg_url()).await;
    let mut ts = start_with(ChatServer::builder(config).storage(Arc::new(store))).await;
    ts.schema = Some(schema);
    ts
}

/// The PostgreSQL server of the tests.
pub fn pg_url() -> String {
    std::env::var("CHAT_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// A schema with a random name, dropped (with everything in it) on drop.
pub struct PgSchema {
    pub name: String,
}

impl PgSchema {
    pub fn new() -> Self {
        Self {
            name: format!("chat_srv_{}", uuid::Uuid::new_v4().simple()),
        }
    }

    /// A store on `url` in this schema, migrated.
    #[cfg(feature = "postgres")]
    pub async fn store(&self, url: &str) -> chat_store::postgres::PostgresStore {
        use chat_store::postgres::{PostgresConfig, PostgresStore};
        let config = PostgresConfig::new(url)
            .with_schema(&self.name)
            .with_pool_size(4);
        PostgresStore::connect(config).await.unwrap()
    }
}

impl Drop for PgSchema {
    fn drop(&mut self) {
        // On a thread of its own: this may run inside a test's runtime.
        let sql = format!("DROP SCHEMA IF EXISTS \"{}\" CASCADE", self.name);
        let url = pg_url();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await?;
                tokio::spawn(conn);
                client.batch_execute(&sql).await
            })
        })
        .join();
    }
}

/// The privacy update that lets anyone add a user to groups and open direct
/// channels with them.
pub fn open_to_everyone() -> UpdatePrivacyRequest {
    UpdatePrivacyRequest {
        who_may_add: Some(WhoMayAdd::Everyone),
        hide_last_seen: None,
    }
}

/// Signs `name` up through the SDK and lets anyone add them (`who_may_add:
/// everyone`): the delivery tests are about messages, not consent, which
/// `tests/consent.rs` tests with the default settings.
pub async fn signup_open(ts: &TestServer, name: &str) -> Session {
    let session = ChatClient::new(&ts.http)
        .unwrap()
        .signup(name, "password123", None)
        .await
        .unwrap();
    session.update_privacy(&open_to_everyone()).await.unwrap();
    session
}

/// Signs `name` up through the SDK with the default privacy settings.
pub async fn signup_sdk(ts: &TestServer, name: &str) -> Session {
    ChatClient::new(&ts.http)
        .unwrap()
        .signup(name, "password123", None)
        .await
        .unwrap()
}

/// Logs `name` in through the SDK: a new session.
pub async fn login_sdk(ts: &TestServer, name: &str) -> Session {
    ChatClient::new(&ts.http)
        .unwrap()
        .login(name, "password123")
        .await
        .unwrap()
}

/// A live SDK connection of a new device, synced.
pub async fn connect_synced(session: &Session) -> Connection {
    connect_synced_with(session, ConnectOptions::default()).await
}

/// A live SDK connection of a new device with `options`, synced.
pub async fn connect_synced_with(session: &Session, options: ConnectOptions) -> Connection {
    let mut conn = connect_new(session, options).await;
    next_event(&mut conn, |e| matches!(e, ClientEvent::Synced { .. })).await;
    conn
}

/// A live SDK connection of a new device (a cursor store of its own) with
/// `options`, as `connect` returns it.
pub async fn connect_new(session: &Session, options: ConnectOptions) -> Connection {
    session
        .connect(
            DeviceId::new_random(),
            Arc::new(MemoryCursorStore::new()),
            options,
        )
        .await
        .unwrap()
}

/// The next event `wanted` accepts, skipping others; fails the test after
/// 20 s.
pub async fn next_event(
    conn: &mut Connection,
    wanted: impl Fn(&ClientEvent) -> bool,
) -> ClientEvent {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        match tokio::time::timeout_at(deadline, conn.next_event()).await {
            Ok(Some(e)) if wanted(&e) => return e,
            Ok(Some(ClientEvent::Error(e))) => panic!("connection error: {e:?}"),
            Ok(Some(_)) => continue,
            other => panic!("no such event: {other:?}"),
        }
    }
}

/// The code of an SDK call that must fail with an API error.
pub fn api_code<T: std::fmt::Debug>(r: Result<T, ClientError>) -> ErrorCode {
    match r {
        Err(ClientError::Api(w)) => w.code,
        other => panic!("expected an API error, got {other:?}"),
    }
}

/// Makes two users friends the only way there is: a request and its
/// acceptance.
pub async fn make_friends(a: &Session, b: &Session) {
    a.add_friend(b.user_id()).await.unwrap();
    b.add_friend(a.user_id()).await.unwrap();
}

/// Plain HTTP calls for test setup.
pub struct Http {
    pub base: String,
    pub client: reqwest::Client,
}

impl Http {
    pub fn new(base: &str) -> Self {
        Self {
            base: base.to_owned(),
            client: reqwest::Client::new(),
        }
    }

    /// Signs a user up, open to everyone (as [`signup_open`]).
    pub async fn signup(&self, username: &str) -> AuthResponse {
        let resp = self
            .client
            .post(format!("{}/v1/signup", self.base))
            .json(&SignupRequest {
                username: username.into(),
                password: "password123".into(),
                display_name: None,
            })
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 201, "{}", resp.text().await.unwrap());
        let auth: AuthResponse = resp.json().await.unwrap();
        let resp = self
            .client
            .patch(format!("{}/v1/me/privacy", self.base))
            .bearer_auth(&auth.token)
            .json(&open_to_everyone())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
        auth
    }

    pub async fn open_direct(&self, token: &str, other: UserId) -> Channel {
        let resp = self
            .client
            .post(format!("{}/v1/channels/direct", self.base))
            .bearer_auth(token)
            .json(&OpenDirectRequest { user: other })
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        resp.json().await.unwrap()
    }

    pub async fn create_group(
        &self,
        token: &str,
        name: &str,
        members: Vec<UserId>,
    ) -> reqwest::Response {
        self.client
            .post(format!("{}/v1/groups", self.base))
            .bearer_auth(token)
            .json(&CreateGroupRequest {
                name: name.into(),
                members,
            })
            .send()
            .await
            .unwrap()
    }

    /// `PUT /v1/friends/{other}`: a request, or the acceptance of theirs.
    pub async fn befriend(&self, token: &str, other: UserId) {
        let resp = self
            .client
            .put(format!("{}/v1/friends/{other}", self.base))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
    }
}

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A raw protocol client: sends frames, reads frames, nothing automatic.
pub struct Raw {
    pub ws: Ws,
    pub welcome: Welcome,
    next: u64,
    /// Events read while waiting for a reply.
    pub events: Vec<Event>,
}

pub async fn raw_connect(ts: &TestServer, token: &str, device: DeviceId) -> Raw {
    raw_connect_to(&ts.ws_url(), token, device).await
}

/// A raw client on the WebSocket endpoint `ws_url`.
pub async fn raw_connect_to(ws_url: &str, token: &str, device: DeviceId) -> Raw {
    let url = format!("{ws_url}?device={device}&token={token}");
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let welcome = match next_frame(&mut ws).await {
        ServerFrame::Welcome(w) => w,
        other => panic!("expected welcome, got {other:?}"),
    };
    Raw {
        ws,
        welcome,
        next: 0,
        events: Vec::new(),
    }
}

/// The next server frame, failing the test after 10 s.
pub async fn next_frame(ws: &mut Ws) -> ServerFrame {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("timed out waiting for a frame")
            .expect("connection ended")
            .expect("websocket error");
        match msg {
            WsMessage::Text(t) => return serde_json::from_str(&t).unwrap(),
            WsMessage::Ping(_) | WsMessage::Pong(_) => continue,
            other => panic!("unexpected message {other:?}"),
        }
    }
}

/// Reads until the connection closes; returns the close code if a close
/// frame came.
pub async fn read_until_close(ws: &mut Ws) -> Option<u16> {
    loop {
        match tokio::time::timeout(Duration::from_secs(20), ws.next()).await {
            Err(_) => panic!("connection did not close"),
            Ok(None) | Ok(Some(Err(_))) => return None,
            Ok(Some(Ok(WsMessage::Close(frame)))) => return frame.map(|f| u16::from(f.code)),
            Ok(Some(Ok(_))) => continue,
        }
    }
}

impl Raw {
    pub async fn send_text(&mut self, text: impl Into<String>) {
        self.ws
            .send(WsMessage::Text(text.into().into()))
            .await
            .unwrap();
    }

    /// Sends a request and returns its reply, keeping events seen meanwhile.
    pub async fn request(&mut self, request: Request) -> Reply {
        self.next += 1;
        let id = format!("r{}", self.next);
        let frame = ClientFrame {
            id: id.clone(),
            request,
        };
        self.send_text(serde_json::to_string(&frame).unwrap()).await;
        self.reply_for(Some(id)).await
    }

    pub async fn reply_for(&mut self, id: Option<String>) -> Reply {
        loop {
            match next_frame(&mut self.ws).await {
                ServerFrame::Reply(r) if r.id == id => return r,
                ServerFrame::Reply(r) => panic!("reply for another request: {r:?}"),
                ServerFrame::Event(e) => self.events.push(e),
                other => panic!("unexpected frame {other:?}"),
            }
        }
    }

    pub async fn send_msg(&mut self, channel: ChannelId, cid: &str, content: &str) -> Reply {
        self.request(Request::Send {
            channel,
            client_msg_id: ClientMsgId::new(cid).unwrap(),
            content: content.into(),
            reply_to: None,
            attachments: Vec::new(),
        })
        .await
    }

    /// The next message event (from the buffer first).
    pub async fn next_message(&mut self) -> Message {
        self.next_entry().await.1
    }

    /// The next message event with its inbox position (from the buffer
    /// first).
    pub async fn next_entry(&mut self) -> (Seq, Message) {
        loop {
            if let Some(pos) = self
                .events
                .iter()
                .position(|e| matches!(e, Event::Message { .. }))
            {
                if let Event::Message { seq, message } = self.events.remove(pos) {
                    return (seq, message);
                }
            }
            match next_frame(&mut self.ws).await {
                ServerFrame::Event(e) => self.events.push(e),
                other => panic!("unexpected frame {other:?}"),
            }
        }
    }
}

pub fn sent_id(reply: Reply) -> (MessageId, bool) {
    match reply.into_result() {
        Ok(ReplyBody::Sent {
            message_id,
            duplicate,
            ..
        }) => (message_id, duplicate),
        other => panic!("expected sent, got {other:?}"),
    }
}

/// The position in the sender's inbox a send reply names.
pub fn sent_seq(reply: &Reply) -> Option<Seq> {
    match reply.clone().into_result() {
        Ok(ReplyBody::Sent { seq, .. }) => seq,
        other => panic!("expected sent, got {other:?}"),
    }
}

/// Wraps a message store with faults a test switches on:
///
/// * `down`: every call fails with a temporary error (a database that
///   stopped answering);
/// * `stall_next`: the next commit waits for [`Faulty::release`] before it
///   starts, in a task of its own, so a caller that gives up (the send
///   timing out) drops only its wait, not the write: the commit lands
///   late, as one stalled in `fsync` would.
#[derive(Debug)]
pub struct Faulty<T> {
    pub inner: Arc<T>,
    pub down: Arc<AtomicBool>,
    pub stall_next: Arc<AtomicBool>,
    gate: Arc<tokio::sync::Semaphore>,
    /// The stalled commits' outcomes, once they land.
    pub landed: Arc<tokio::sync::Mutex<Vec<Result<Committed, String>>>>,
}

impl<T> Faulty<T> {
    pub fn new(inner: Arc<T>) -> Self {
        Self {
            inner,
            down: Arc::new(AtomicBool::new(false)),
            stall_next: Arc::new(AtomicBool::new(false)),
            gate: Arc::new(tokio::sync::Semaphore::new(0)),
            landed: Arc::default(),
        }
    }

    /// Lets one stalled commit go ahead.
    pub fn release(&self) {
        self.gate.add_permits(1);
    }

    fn check(&self) -> chat_core::Result<()> {
        if self.down.load(Ordering::SeqCst) {
            Err(chat_core::Error::temporary("faulty", "backend is down"))
        } else {
            Ok(())
        }
    }
}

#[async_trait]
impl<T: MessageStore> HistoryStore for Faulty<T> {
    async fn append(&self, message: Message) -> chat_core::Result<Appended> {
        self.check()?;
        self.inner.append(message).await
    }
    async fn get(&self, channel: ChannelId, id: MessageId) -> chat_core::Result<Option<Message>> {
        self.check()?;
        self.inner.get(channel, id).await
    }
    async fn page(&self, channel: ChannelId, page: Page) -> chat_core::Result<Paged<Message>> {
        self.check()?;
        self.inner.page(channel, page).await
    }
}

#[async_trait]
impl<T: MessageStore> Inbox for Faulty<T> {
    async fn read(
        &self,
        user: UserId,
        after: Seq,
        limit: usize,
        max_bytes: usize,
    ) -> chat_core::Result<Paged<InboxEntry>> {
        self.check()?;
        self.inner.read(user, after, limit, max_bytes).await
    }
    async fn cursor(&self, user: UserId, device: DeviceId) -> chat_core::Result<Seq> {
        self.check()?;
        self.inner.cursor(user, device).await
    }
    async fn advance_cursor(
        &self,
        user: UserId,
        device: DeviceId,
        cursor: Seq,
    ) -> chat_core::Result<Seq> {
        self.check()?;
        self.inner.advance_cursor(user, device, cursor).await
    }
}

#[async_trait]
impl<T: MessageStore> chat_core::Receipts for Faulty<T> {
    async fn set_marker(
        &self,
        user: UserId,
        channel: ChannelId,
        kind: chat_core::MarkerKind,
        message: MessageId,
    ) -> chat_core::Result<chat_core::MarkerUpdate> {
        self.check()?;
        self.inner.set_marker(user, channel, kind, message).await
    }
    async fn receipts(
        &self,
        keys: &[(UserId, ChannelId)],
    ) -> chat_core::Result<Vec<chat_core::Receipt>> {
        self.check()?;
        self.inner.receipts(keys).await
    }
    async fn heads(
        &self,
        channels: &[ChannelId],
    ) -> chat_core::Result<Vec<Option<chat_core::Marker>>> {
        self.check()?;
        self.inner.heads(channels).await
    }
}

#[async_trait]
impl<T: MessageStore> MessageStore for Faulty<T> {
    async fn commit(&self, message: NewMessage) -> chat_core::Result<Committed> {
        self.check()?;
        if !self.stall_next.swap(false, Ordering::SeqCst) {
            return self.inner.commit(message).await;
        }
        let (inner, gate, landed) = (self.inner.clone(), self.gate.clone(), self.landed.clone());
        let write = tokio::spawn(async move {
            let _permit = gate.acquire().await;
            let result = inner.commit(message).await;
            landed
                .lock()
                .await
                .push(result.as_ref().cloned().map_err(|e| e.to_string()));
            result
        });
        write
            .await
            .unwrap_or_else(|e| Err(chat_core::Error::backend("faulty", e.to_string())))
    }
}
