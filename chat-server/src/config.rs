//! Server configuration: limits, timings and identity.

use std::time::Duration;

use crate::error::ServerError;
use crate::secret::TokenSecret;

/// The longest [`ServerConfig::push_collapse_window`]: holding a
/// notification back longer defeats its purpose.
const MAX_PUSH_COLLAPSE_WINDOW: Duration = Duration::from_secs(600);

/// Everything tunable about a chat server. [`ServerConfig::default`] gives the
/// design's defaults but no token secret, which every server must be given
/// ([`TokenSecret::load_or_create`] makes and keeps one); the binary maps
/// flags and environment onto it. `Debug` does not show the secret.
///
/// ```
/// use std::time::Duration;
/// use chat_server::{ServerConfig, TokenSecret};
///
/// let secret = "a secret of thirty-two bytes or more";
/// let config = ServerConfig {
///     token_secret: TokenSecret::from(secret),
///     max_message_chars: 10_000,
///     heartbeat_interval: Duration::from_secs(10),
///     presence_timeout: Duration::from_secs(60),
///     ..ServerConfig::default()
/// };
/// assert!(config.validate().is_ok());
/// assert!(!format!("{config:?}").contains(secret));
/// // Without a secret, no server.
/// assert_eq!(ServerConfig::default().validate().unwrap_err().code(), "config");
/// ```
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// This server's id in discovery (unique per server).
    pub server_id: String,
    /// Snowflake node id (0 to 1,023), unique per server.
    pub node_id: u16,
    /// The WebSocket URL clients should use to reach this server, e.g.
    /// `ws://chat1.example.com/v1/ws`. `None`: derived from the listen address.
    pub public_ws_url: Option<String>,
    /// The HTTP base URL of this server. `None`: derived from the listen address.
    pub public_http_url: Option<String>,
    /// Region label for `route`.
    pub region: Option<String>,
    /// Secret for signing tokens (at least 32 bytes). All servers of a
    /// deployment share it. Empty by default: give one.
    pub token_secret: TokenSecret,
    /// How long an access token is valid: a stolen one is good for this
    /// long at most, and a client refreshes it this often.
    pub token_ttl: Duration,
    /// How long a refresh token is valid (each refresh issues a new one, so
    /// a client active within this period stays logged in).
    pub refresh_token_ttl: Duration,
    /// Argon2id memory cost in KiB (OWASP: 19,456).
    pub argon2_memory_kib: u32,
    /// Argon2id iterations (OWASP: 2).
    pub argon2_iterations: u32,
    /// How often clients send heartbeats.
    pub heartbeat_interval: Duration,
    /// A user is offline after this long without a heartbeat from any device.
    pub presence_timeout: Duration,
    /// How often presence expiry runs.
    pub presence_sweep_interval: Duration,
    /// Longest message, in characters.
    pub max_message_chars: usize,
    /// Largest WebSocket message (frame) accepted, in bytes; above it the
    /// connection is closed with code 1009.
    pub max_frame_bytes: usize,
    /// Caps the directory enforces: members per group, and per user
    /// devices, friends, groups joined and owned, pending requests sent and
    /// received.
    pub limits: chat_core::Limits,
    /// Requests per second per connection (sustained).
    pub rate_limit_per_sec: u32,
    /// Burst allowance above the sustained rate.
    pub rate_limit_burst: u32,
    /// Most simultaneous connections of one user.
    pub max_connections_per_user: usize,
    /// Most simultaneous WebSocket connections on this server (keep it under
    /// the process's open-file limit).
    pub max_connections: usize,
    /// Bytes of frames queued for one connection before it counts as a slow
    /// consumer and is disconnected (a frame always fits an empty queue,
    /// however large).
    pub outbound_queue_bytes: usize,
    /// WebSocket read buffer per connection, bytes. Allocated (and
    /// zeroed) for every connection for its whole life, so it is most of an
    /// idle connection's memory: 4 KiB holds a burst of ordinary chat
    /// frames, and larger frames are read in several chunks.
    /// (tungstenite's default is 128 KiB.)
    pub ws_read_buffer: usize,
    /// WebSocket write buffer per connection, bytes.
    pub ws_write_buffer: usize,
    /// Deadline of a send's commit: past it the send answers `unavailable`
    /// and the store refuses to start the commit.
    pub send_timeout: Duration,
    /// Page size of a sync when the client gives none.
    pub sync_page: usize,
    /// Most bytes of messages in one sync or history page (counted as
    /// content bytes plus 256 per entry; a page always holds at least one
    /// entry). Keeps every reply well below the frame limits.
    pub page_bytes: usize,
    /// Lease of this server's discovery entry.
    pub discovery_ttl: Duration,
    /// How long shutdown waits for connections to drain.
    pub drain_timeout: Duration,
    /// Queued push jobs (one per message) before new ones are dropped (and
    /// counted in `Stats::pushes_dropped`).
    pub push_queue: usize,
    /// Notifications handed to the notifier at the same time, so that one
    /// slow platform call does not hold up the rest.
    pub push_concurrency: usize,
    /// Most queued jobs the push worker takes from the queue at once.
    pub push_batch: usize,
    /// How long further messages to a recipient in a channel are held after
    /// a push about that channel: the first message pushes at once, the
    /// ones within this window go out together as one follow-up
    /// notification (for the latest, with their count) when it ends. Zero
    /// holds nothing back, merging only what is queued together. At most
    /// ten minutes.
    pub push_collapse_window: Duration,
    /// Include message text in push notifications (off: a preview hands the
    /// content to a third party).
    pub push_preview: bool,

    // The network edge (see docs/protocol.md, "Connection limits").
    /// Most sockets open at once, HTTP and WebSocket together; more are
    /// closed as soon as they are accepted. The binary derives it from the
    /// open-file limit less what the store needs.
    pub max_open_connections: usize,
    /// Most sockets open at once from one address (an IPv4 address or an
    /// IPv6 /64); 0 for no such cap.
    pub max_connections_per_address: usize,
    /// How long a client has to send a complete request head, counted from
    /// accept and again after every answered request (so it is also the
    /// keep-alive idle timeout).
    pub header_timeout: Duration,
    /// How long a request may take once its head has arrived, body and
    /// handler included; then it is answered `unavailable` and its
    /// connection closed.
    pub request_timeout: Duration,
    /// A socket whose peer takes no bytes for this long while the server
    /// has bytes for it is closed (before and after a WebSocket upgrade).
    pub write_stall_timeout: Duration,
    /// Browser origins allowed to open a WebSocket (`Origin` header), as
    /// `scheme://host[:port]`, or `*` for any. A request without `Origin`
    /// (a native client) and a same-origin request are always allowed.
    pub allowed_origins: Vec<String>,
    /// Bytes of message content one user may send per second on this node,
    /// over all their connections (0: no limit).
    pub send_bytes_per_sec: u64,
    /// Burst allowance of [`ServerConfig::send_bytes_per_sec`]: the most
    /// bytes sent at once after a quiet spell.
    pub send_bytes_burst: u64,
    /// Threads that hash and verify passwords (each holds one Argon2 memory
    /// block of `argon2_memory_kib` for its whole life).
    pub hash_workers: usize,
    /// Password hashes waiting for a worker before sign-ups and logins are
    /// answered `unavailable`.
    pub hash_queue: usize,
    /// Sign-ups and logins from one address: sustained per minute, and the
    /// burst (0 per minute: no limit).
    pub auth_per_address: RateSpec,
    /// Logins to one username: sustained per minute, and the burst (0 per
    /// minute: no limit).
    pub login_per_username: RateSpec,
    /// Whether [`ChatServer::router`](crate::ChatServer::router) answers
    /// `GET /metrics`. Turn it off to serve metrics only on a listener of
    /// their own ([`ChatServer::metrics_router`](crate::ChatServer::metrics_router)).
    pub metrics_route: bool,
    /// Whether the router serves the web chat at `/` (off by default for
    /// embedders; the binary turns it on).
    pub web_chat: bool,
    /// Terminate TLS with this certificate and key: [`crate::serve`] then
    /// speaks only `https` and `wss`.
    pub tls: Option<crate::TlsConfig>,
    /// Largest upload (`POST /v1/attachments`), in bytes; above it the
    /// upload is refused with `attachment_too_large` (413). Default: 25 MiB.
    pub max_attachment_bytes: u64,
    /// Content types an upload may declare (lowercase, no parameters).
    /// `image/png`, `image/jpeg`, `image/gif` and `image/webp` are also
    /// checked against the bytes' magic number. Default:
    /// [`crate::attachments::DEFAULT_TYPES`].
    pub attachment_types: Vec<String>,
}

/// A token-bucket rate: `per_minute` sustained, `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateSpec {
    /// Sustained rate, events per minute; 0 turns the limit off.
    pub per_minute: u32,
    /// Events allowed at once after a quiet spell.
    pub burst: u32,
}

impl RateSpec {
    /// No limit.
    pub const OFF: RateSpec = RateSpec {
        per_minute: 0,
        burst: 0,
    };
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            server_id: format!("chat-{}", uuid::Uuid::new_v4().simple()),
            node_id: 1,
            public_ws_url: None,
            public_http_url: None,
            region: None,
            token_secret: TokenSecret::default(),
            token_ttl: Duration::from_secs(15 * 60),
            refresh_token_ttl: Duration::from_secs(30 * 24 * 3600),
            argon2_memory_kib: 19_456,
            argon2_iterations: 2,
            heartbeat_interval: Duration::from_secs(5),
            presence_timeout: Duration::from_secs(30),
            presence_sweep_interval: Duration::from_secs(1),
            max_message_chars: 100_000,
            max_frame_bytes: 1 << 20,
            limits: chat_core::Limits::default(),
            rate_limit_per_sec: 50,
            rate_limit_burst: 100,
            max_connections_per_user: 10,
            max_connections: 10_000,
            outbound_queue_bytes: 1 << 20,
            ws_read_buffer: 4 * 1024,
            ws_write_buffer: 8 * 1024,
            send_timeout: Duration::from_secs(5),
            sync_page: 200,
            page_bytes: 256 << 10,
            discovery_ttl: Duration::from_secs(15),
            drain_timeout: Duration::from_secs(10),
            push_queue: 10_000,
            push_concurrency: 16,
            push_batch: 1_000,
            push_collapse_window: Duration::from_secs(2),
            push_preview: false,
            max_open_connections: 11_000,
            max_connections_per_address: 256,
            header_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            write_stall_timeout: Duration::from_secs(30),
            allowed_origins: Vec::new(),
            send_bytes_per_sec: 256 * 1024,
            send_bytes_burst: 2 * 1024 * 1024,
            hash_workers: std::thread::available_parallelism()
                .map(usize::from)
                .unwrap_or(2),
            hash_queue: 64,
            auth_per_address: RateSpec {
                per_minute: 60,
                burst: 30,
            },
            login_per_username: RateSpec {
                per_minute: 6,
                burst: 10,
            },
            metrics_route: true,
            web_chat: false,
            tls: None,
            max_attachment_bytes: 25 << 20,
            attachment_types: crate::attachments::DEFAULT_TYPES
                .iter()
                .map(|t| (*t).to_owned())
                .collect(),
        }
    }
}

impl ServerConfig {
    /// The largest frame the server can write: a page of `page_bytes`,
    /// plus one message of the longest length (a page always holds one
    /// entry, however large) at the worst JSON escaping (six bytes a
    /// character), plus its envelope.
    pub fn largest_frame(&self) -> usize {
        self.page_bytes
            .saturating_add(self.max_message_chars.saturating_mul(6))
            .saturating_add(16 << 10)
    }

    /// The bound on a connection's WebSocket write buffer: above the
    /// largest frame plus a flushed batch, so no frame the server writes is
    /// ever refused for its size.
    pub(crate) fn write_buffer_limit(&self) -> usize {
        self.largest_frame()
            .saturating_mul(2)
            .max(self.max_frame_bytes.saturating_mul(2))
    }

    /// Checks that the settings are usable together:
    /// [`ServerError::Config`] says what is wrong.
    pub fn validate(&self) -> Result<(), ServerError> {
        self.check().map_err(ServerError::Config)
    }

    fn check(&self) -> Result<(), String> {
        if self.token_secret.len() < crate::secret::MIN_SECRET_BYTES {
            return Err(
                "token_secret must be at least 32 bytes (TokenSecret::load_or_create makes \
                 and keeps one)"
                    .into(),
            );
        }
        if self.token_ttl.is_zero() || self.token_ttl > self.refresh_token_ttl {
            return Err("token_ttl must be positive and at most refresh_token_ttl".into());
        }
        let l = &self.limits;
        if [
            l.group_members,
            l.devices,
            l.friends,
            l.groups_joined,
            l.groups_owned,
            l.pending_sent,
            l.pending_received,
        ]
        .contains(&0)
        {
            return Err("every limit must be positive".into());
        }
        if self.send_timeout.is_zero() {
            return Err("send_timeout must be positive".into());
        }
        if self.heartbeat_interval >= self.presence_timeout {
            return Err("heartbeat_interval must be shorter than presence_timeout".into());
        }
        if self.node_id > chat_core::Snowflake::MAX_NODE {
            return Err(format!(
                "node_id must be at most {}",
                chat_core::Snowflake::MAX_NODE
            ));
        }
        if self.push_concurrency == 0 || self.push_batch == 0 {
            return Err("push_concurrency and push_batch must be positive".into());
        }
        if self.push_collapse_window > MAX_PUSH_COLLAPSE_WINDOW {
            return Err("push_collapse_window must be at most ten minutes".into());
        }
        if self.max_open_connections == 0 || self.hash_workers == 0 || self.hash_queue == 0 {
            return Err(
                "max_open_connections, hash_workers and hash_queue must be positive".into(),
            );
        }
        if self.header_timeout.is_zero()
            || self.request_timeout.is_zero()
            || self.write_stall_timeout.is_zero()
        {
            return Err("header, request and write stall timeouts must be positive".into());
        }
        if self.send_bytes_per_sec != 0 && self.send_bytes_burst == 0 {
            return Err("send_bytes_burst must be positive when send_bytes_per_sec is".into());
        }
        for origin in &self.allowed_origins {
            crate::origin::parse_allowed(origin)?;
        }
        if self.discovery_ttl < std::time::Duration::from_secs(2) {
            return Err("discovery_ttl must be at least 2 seconds".into());
        }
        if self.outbound_queue_bytes == 0
            || self.max_connections == 0
            || self.sync_page == 0
            || self.page_bytes == 0
        {
            return Err(
                "outbound_queue_bytes, max_connections, sync_page and page_bytes must be positive"
                    .into(),
            );
        }
        Ok(())
    }
}
