//! Test harness: a real server on 127.0.0.1:0, a raw protocol client and a
//! small HTTP helper. Shared by the integration tests.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chat_core::api::{AuthResponse, CreateGroupRequest, OpenDirectRequest, SignupRequest};
use chat_core::protocol::{ClientFrame, Event, Reply, ReplyBody, Request, ServerFrame, Welcome};
use chat_core::{
    Appended, Channel, ChannelId, ClientMsgId, DeviceId, HistoryStore, Inbox, Message, MessageId,
    Page, UserId,
};
use chat_server::{ChatServer, ServerBuilder, ServerConfig};
use futures::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;

/// A configuration for tests: cheap password hashing, fixed secret.
pub fn test_config() -> ServerConfig {
    ServerConfig {
        token_secret: vec![7; 32],
        argon2_memory_kib: 256,
        argon2_iterations: 1,
        ..ServerConfig::default()
    }
}

/// A running server.
pub struct TestServer {
    pub server: ChatServer,
    pub addr: SocketAddr,
    pub http: String,
    pub shutdown: CancellationToken,
    pub task: tokio::task::JoinHandle<std::io::Result<()>>,
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
        resp.json().await.unwrap()
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

    pub async fn befriend(&self, token: &str, other: UserId) {
        let resp = self
            .client
            .put(format!("{}/v1/friends/{other}", self.base))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 204);
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
    let url = format!("{}?device={device}&token={token}", ts.ws_url());
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
        })
        .await
    }

    /// The next message event (from the buffer first).
    pub async fn next_message(&mut self) -> Message {
        loop {
            if let Some(pos) = self
                .events
                .iter()
                .position(|e| matches!(e, Event::Message { .. }))
            {
                if let Event::Message { message } = self.events.remove(pos) {
                    return message;
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

/// Wraps a history store and fails every call while `down` is set: a
/// database that stopped answering.
#[derive(Debug)]
pub struct Flaky<T> {
    pub inner: T,
    pub down: Arc<AtomicBool>,
}

impl<T> Flaky<T> {
    pub fn new(inner: T) -> Self {
        Self {
            inner,
            down: Arc::new(AtomicBool::new(false)),
        }
    }

    fn check(&self) -> chat_core::Result<()> {
        if self.down.load(Ordering::SeqCst) {
            Err(chat_core::Error::temporary("flaky", "backend is down"))
        } else {
            Ok(())
        }
    }
}

#[async_trait]
impl<T: HistoryStore> HistoryStore for Flaky<T> {
    async fn append(&self, message: Message) -> chat_core::Result<Appended> {
        self.check()?;
        self.inner.append(message).await
    }
    async fn get(&self, channel: ChannelId, id: MessageId) -> chat_core::Result<Option<Message>> {
        self.check()?;
        self.inner.get(channel, id).await
    }
    async fn page(&self, channel: ChannelId, page: Page) -> chat_core::Result<Vec<Message>> {
        self.check()?;
        self.inner.page(channel, page).await
    }
}

#[async_trait]
impl<T: Inbox> Inbox for Flaky<T> {
    async fn push(&self, recipients: &[UserId], message: &Message) -> chat_core::Result<()> {
        self.check()?;
        self.inner.push(recipients, message).await
    }
    async fn read(
        &self,
        user: UserId,
        after: MessageId,
        limit: usize,
    ) -> chat_core::Result<Vec<Message>> {
        self.check()?;
        self.inner.read(user, after, limit).await
    }
    async fn cursor(&self, user: UserId, device: DeviceId) -> chat_core::Result<MessageId> {
        self.check()?;
        self.inner.cursor(user, device).await
    }
    async fn advance_cursor(
        &self,
        user: UserId,
        device: DeviceId,
        cursor: MessageId,
    ) -> chat_core::Result<MessageId> {
        self.check()?;
        self.inner.advance_cursor(user, device, cursor).await
    }
}
