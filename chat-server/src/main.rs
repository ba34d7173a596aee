//! The reference chat server binary: parses flags and environment, opens the
//! backends, and calls [`chat_server::serve`]. All behaviour lives in the
//! library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chat_server::{ChatServer, RateSpec, ServerConfig, ServerError, TokenSecret};
use clap::Parser;
use tokio_util::sync::CancellationToken;

/// Chat server: WebSocket chat plus the HTTP API, on the embedded store by default.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Address to listen on.
    #[arg(long, env = "CHAT_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Directory of the embedded store (history, inboxes, cursors, directory).
    #[arg(long, env = "CHAT_DATA_DIR", default_value = "./chat-data")]
    data_dir: PathBuf,
    /// Keep everything in memory instead (lost on exit).
    #[arg(long, env = "CHAT_MEMORY")]
    memory: bool,
    /// Keep history, inboxes, cursors and the directory in PostgreSQL
    /// instead of the embedded store (e.g. postgres://chat@db/chat). Every
    /// server of a deployment points at the same database.
    #[cfg(feature = "postgres")]
    #[arg(
        long,
        env = "CHAT_POSTGRES_URL",
        hide_env_values = true,
        conflicts_with = "memory"
    )]
    postgres_url: Option<String>,
    /// PostgreSQL schema to use (default: public).
    #[cfg(feature = "postgres")]
    #[arg(long, env = "CHAT_POSTGRES_SCHEMA")]
    postgres_schema: Option<String>,
    /// Most PostgreSQL connections this server opens (per database).
    #[cfg(feature = "postgres")]
    #[arg(long, env = "CHAT_POSTGRES_POOL", default_value_t = 16)]
    postgres_pool: usize,
    /// Spread chat history over these PostgreSQL databases (repeat the flag,
    /// or a comma-separated list in the environment), by a stable hash of
    /// the channel id; the directory, inboxes and cursors stay in
    /// --postgres-url. Every server must list the same databases in the same
    /// order; see docs/storage.md before changing the list.
    #[cfg(feature = "postgres")]
    #[arg(
        long = "history-shard-url",
        env = "CHAT_HISTORY_SHARD_URLS",
        value_delimiter = ',',
        hide_env_values = true,
        requires = "postgres_url"
    )]
    history_shard_urls: Vec<String>,
    /// A file holding the token signing secret (32+ bytes; surrounding
    /// whitespace is ignored), shared by every server of a deployment: the
    /// way to give the secret. Default: a random secret kept in
    /// DATA_DIR/token.secret (or, with --memory, one for this run only).
    #[arg(
        long,
        env = "CHAT_TOKEN_SECRET_FILE",
        value_name = "FILE",
        conflicts_with = "token_secret"
    )]
    token_secret_file: Option<PathBuf>,
    /// Where uploaded files are kept, as files (default: DATA_DIR/blobs;
    /// with --memory, in memory). A deployment of several servers shares
    /// one: a shared volume, or an S3 bucket (--s3-bucket).
    #[arg(long, env = "CHAT_BLOB_DIR")]
    blob_dir: Option<PathBuf>,
    /// Largest upload, in MiB.
    #[arg(long, env = "CHAT_MAX_ATTACHMENT_MB", default_value_t = 25)]
    max_attachment_mb: u64,
    /// Keep uploaded files in this S3 bucket instead (AWS S3 or any
    /// S3-compatible server: see --s3-endpoint).
    #[cfg(feature = "s3")]
    #[arg(long, env = "CHAT_S3_BUCKET", conflicts_with = "blob_dir")]
    s3_bucket: Option<String>,
    /// The S3-compatible server's URL (e.g. http://minio:9000); default AWS.
    #[cfg(feature = "s3")]
    #[arg(long, env = "CHAT_S3_ENDPOINT", requires = "s3_bucket")]
    s3_endpoint: Option<String>,
    /// The bucket's region.
    #[cfg(feature = "s3")]
    #[arg(long, env = "CHAT_S3_REGION", default_value = "us-east-1")]
    s3_region: String,
    /// Key prefix of the blobs in the bucket.
    #[cfg(feature = "s3")]
    #[arg(long, env = "CHAT_S3_PREFIX", default_value = "attachments")]
    s3_prefix: String,
    /// Access key id for the bucket.
    #[cfg(feature = "s3")]
    #[arg(
        long,
        env = "AWS_ACCESS_KEY_ID",
        hide_env_values = true,
        default_value = ""
    )]
    s3_access_key_id: String,
    /// Secret access key for the bucket.
    #[cfg(feature = "s3")]
    #[arg(
        long,
        env = "AWS_SECRET_ACCESS_KEY",
        hide_env_values = true,
        default_value = ""
    )]
    s3_secret_access_key: String,
    /// The token signing secret itself (32+ bytes). Avoid it: on the command
    /// line it is visible to every local user (`ps`, /proc/PID/cmdline), and
    /// in the environment to whoever can read the process's environment;
    /// use --token-secret-file.
    #[arg(long, env = "CHAT_TOKEN_SECRET", hide_env_values = true)]
    token_secret: Option<String>,
    /// Minutes an access token is valid (clients refresh it).
    #[arg(long, env = "CHAT_ACCESS_TOKEN_MINUTES", default_value_t = 15)]
    access_token_minutes: u64,
    /// Days a refresh token is valid (each refresh issues a new one).
    #[arg(long, env = "CHAT_REFRESH_TOKEN_DAYS", default_value_t = 30)]
    refresh_token_days: u64,
    /// This server's id in discovery.
    #[arg(long, env = "CHAT_SERVER_ID")]
    server_id: Option<String>,
    /// Snowflake node id, unique per server (0-1023).
    #[arg(long, env = "CHAT_NODE_ID", default_value_t = 1)]
    node_id: u16,
    /// WebSocket URL clients use to reach this server (default: from --listen).
    #[arg(long, env = "CHAT_PUBLIC_WS_URL")]
    public_ws_url: Option<String>,
    /// HTTP base URL of this server (default: from --listen).
    #[arg(long, env = "CHAT_PUBLIC_HTTP_URL")]
    public_http_url: Option<String>,
    /// Region label used by `route`.
    #[arg(long, env = "CHAT_REGION")]
    region: Option<String>,
    /// Seconds between client heartbeats.
    #[arg(long, env = "CHAT_HEARTBEAT_SECS", default_value_t = 5)]
    heartbeat_secs: u64,
    /// Seconds without a heartbeat before a user is offline.
    #[arg(long, env = "CHAT_PRESENCE_TIMEOUT_SECS", default_value_t = 30)]
    presence_timeout_secs: u64,
    /// Longest message in characters.
    #[arg(long, env = "CHAT_MAX_MESSAGE_CHARS", default_value_t = 100_000)]
    max_message_chars: usize,
    /// Largest WebSocket frame in bytes.
    #[arg(long, env = "CHAT_MAX_FRAME_BYTES", default_value_t = 1 << 20)]
    max_frame_bytes: usize,
    /// Most members of a group.
    #[arg(long, env = "CHAT_MAX_GROUP_MEMBERS", default_value_t = 100)]
    max_group_members: usize,
    /// Most registered devices per user.
    #[arg(long, env = "CHAT_MAX_DEVICES", default_value_t = 32)]
    max_devices: usize,
    /// Most friends per user.
    #[arg(long, env = "CHAT_MAX_FRIENDS", default_value_t = 1_000)]
    max_friends: usize,
    /// Most groups a user is a member of (owned ones included).
    #[arg(long, env = "CHAT_MAX_GROUPS_JOINED", default_value_t = 500)]
    max_groups_joined: usize,
    /// Most groups a user owns.
    #[arg(long, env = "CHAT_MAX_GROUPS_OWNED", default_value_t = 100)]
    max_groups_owned: usize,
    /// Most pending friend requests and group invitations a user has sent.
    #[arg(long, env = "CHAT_MAX_PENDING_SENT", default_value_t = 100)]
    max_pending_sent: usize,
    /// Most pending friend requests and group invitations a user has received.
    #[arg(long, env = "CHAT_MAX_PENDING_RECEIVED", default_value_t = 1_000)]
    max_pending_received: usize,
    /// Requests per second per connection.
    #[arg(long, env = "CHAT_RATE_LIMIT", default_value_t = 50)]
    rate_limit: u32,
    /// Request burst per connection.
    #[arg(long, env = "CHAT_RATE_BURST", default_value_t = 100)]
    rate_burst: u32,
    /// Most connections per user.
    #[arg(long, env = "CHAT_MAX_CONNECTIONS_PER_USER", default_value_t = 10)]
    max_connections_per_user: usize,
    /// Most WebSocket connections (default: nine tenths of
    /// --max-open-connections).
    #[arg(long, env = "CHAT_MAX_CONNECTIONS")]
    max_connections: Option<usize>,
    /// Bytes of frames queued per connection before it is cut off as a slow
    /// consumer.
    #[arg(long, env = "CHAT_OUTBOUND_QUEUE_BYTES", default_value_t = 1 << 20)]
    outbound_queue_bytes: usize,
    /// Most bytes of messages in one sync or history page.
    #[arg(long, env = "CHAT_PAGE_BYTES", default_value_t = 256 << 10)]
    page_bytes: usize,
    /// Embedded store: refuse writes (answering `unavailable`, and
    /// reporting unhealthy) while the disk has less free space than this
    /// many MiB; writes resume once space is freed. 0 turns it off.
    #[arg(long, env = "CHAT_DISK_RESERVE_MB", default_value_t = 256)]
    disk_reserve_mb: u64,
    /// Embedded store: a write (its fsync included) that has not completed
    /// after this many milliseconds marks the disk stalled: writes answer
    /// `unavailable` at once and the node reports unhealthy until it
    /// completes.
    #[arg(long, env = "CHAT_DISK_STALL_MS", default_value_t = 3_000)]
    disk_stall_ms: u64,
    /// Most sockets open at once, HTTP and WebSocket (default: the
    /// open-file limit less the store's files and a reserve).
    #[arg(long, env = "CHAT_MAX_OPEN_CONNECTIONS")]
    max_open_connections: Option<usize>,
    /// Most sockets open at once from one address (IPv4 address or IPv6
    /// /64); 0 for no cap.
    #[arg(long, env = "CHAT_MAX_CONNECTIONS_PER_ADDRESS", default_value_t = 256)]
    max_connections_per_address: usize,
    /// Seconds a client has to send a whole request head, from accept and
    /// between requests (also the keep-alive idle timeout).
    #[arg(long, env = "CHAT_HEADER_TIMEOUT_SECS", default_value_t = 10)]
    header_timeout_secs: u64,
    /// Seconds a request may take once its head has arrived (body and
    /// handler).
    #[arg(long, env = "CHAT_REQUEST_TIMEOUT_SECS", default_value_t = 30)]
    request_timeout_secs: u64,
    /// Seconds a peer may take no bytes while the server has some for it.
    #[arg(long, env = "CHAT_WRITE_STALL_TIMEOUT_SECS", default_value_t = 30)]
    write_stall_timeout_secs: u64,
    /// Segment files the embedded store keeps open (default: an eighth of
    /// the open-file limit, 32 to 900).
    #[arg(long, env = "CHAT_STORE_OPEN_FILES")]
    store_open_files: Option<usize>,
    /// A browser origin allowed to open a WebSocket, as
    /// scheme://host[:port], or * for any (repeat the flag, or a
    /// comma-separated list in the environment). Clients without an Origin
    /// header and same-origin pages are always allowed.
    #[arg(
        long = "allowed-origin",
        env = "CHAT_ALLOWED_ORIGINS",
        value_delimiter = ','
    )]
    allowed_origins: Vec<String>,
    /// Bytes of message content one user may send per second on this
    /// server (0: no limit).
    #[arg(long, env = "CHAT_SEND_BYTES_PER_SEC", default_value_t = 256 * 1024)]
    send_bytes_per_sec: u64,
    /// Bytes one user may send at once after a quiet spell.
    #[arg(long, env = "CHAT_SEND_BYTES_BURST", default_value_t = 2 * 1024 * 1024)]
    send_bytes_burst: u64,
    /// Password-hashing threads (default: one per core).
    #[arg(long, env = "CHAT_HASH_WORKERS")]
    hash_workers: Option<usize>,
    /// Sign-ups and logins waiting for a hashing thread before more are
    /// answered `unavailable`.
    #[arg(long, env = "CHAT_HASH_QUEUE", default_value_t = 64)]
    hash_queue: usize,
    /// Sign-ups and logins per minute from one address (0: no limit).
    #[arg(long, env = "CHAT_AUTH_PER_ADDRESS_PER_MINUTE", default_value_t = 60)]
    auth_per_address_per_minute: u32,
    /// Burst of sign-ups and logins from one address.
    #[arg(long, env = "CHAT_AUTH_PER_ADDRESS_BURST", default_value_t = 30)]
    auth_per_address_burst: u32,
    /// Logins per minute to one username (0: no limit).
    #[arg(long, env = "CHAT_LOGIN_PER_USERNAME_PER_MINUTE", default_value_t = 6)]
    login_per_username_per_minute: u32,
    /// Burst of logins to one username.
    #[arg(long, env = "CHAT_LOGIN_PER_USERNAME_BURST", default_value_t = 10)]
    login_per_username_burst: u32,
    /// Put message text in push notifications (off by default: a preview
    /// hands message content to Google, Apple or the webhook's owner).
    #[arg(long, env = "CHAT_PUSH_PREVIEW")]
    push_preview: bool,
    /// Push jobs queued before new ones are dropped (and counted).
    #[arg(long, env = "CHAT_PUSH_QUEUE", default_value_t = 10_000)]
    push_queue: usize,
    /// Push notifications in flight at once.
    #[arg(long, env = "CHAT_PUSH_CONCURRENCY", default_value_t = 16)]
    push_concurrency: usize,
    /// Milliseconds further messages to a recipient in a channel are held
    /// after a push, then sent as one notification (0: hold nothing back;
    /// at most 600000).
    #[arg(long, env = "CHAT_PUSH_COLLAPSE_WINDOW_MS", default_value_t = 2_000)]
    push_collapse_window_ms: u64,
    /// Seconds of this server's lease in discovery (refreshed every third).
    #[arg(long, env = "CHAT_DISCOVERY_TTL_SECS", default_value_t = 15)]
    discovery_ttl_secs: u64,
    #[command(flatten)]
    cluster: ClusterArgs,
    /// Log format: `text` for people, `json` (one object a line, with the
    /// spans' user, device and request id) for log pipelines.
    #[arg(long, env = "CHAT_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Serve `GET /metrics` (Prometheus) on this address only, instead of
    /// on --listen beside the API.
    #[arg(long, env = "CHAT_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
    /// Serve the web chat at `/` (`--web-chat false` turns it off).
    #[arg(long, env = "CHAT_WEB_CHAT", default_value_t = true, action = clap::ArgAction::Set)]
    web_chat: bool,
    /// Terminate TLS with this PEM certificate chain (server certificate
    /// first): the server then speaks only https and wss.
    #[arg(long, env = "CHAT_TLS_CERT", value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, env = "CHAT_TLS_KEY", value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    #[command(flatten)]
    push: PushArgs,
}

/// Cluster engines (see docs/architecture.md). Several servers with these on
/// the same engines and one PostgreSQL are one system: give each its own
/// --node-id and all the same --token-secret.
#[derive(Debug, clap::Args)]
struct ClusterArgs {
    /// Carry live events between servers over NATS with JetStream
    /// (comma-separated URLs, e.g. nats://10.0.0.2:4222). Default: this
    /// server alone.
    #[cfg(feature = "nats")]
    #[arg(long, env = "CHAT_NATS_URL", hide_env_values = true)]
    nats_url: Option<String>,
    /// Prefix of the bus's NATS subjects and routes bucket (A-Z a-z 0-9 _ -).
    #[cfg(feature = "nats")]
    #[arg(long, env = "CHAT_NATS_PREFIX", default_value = "chat")]
    nats_prefix: String,
    /// Keep presence in Redis, shared by every server
    /// (e.g. redis://10.0.0.3:6379/0). Default: in this server's memory.
    #[cfg(feature = "redis")]
    #[arg(long, env = "CHAT_REDIS_URL", hide_env_values = true)]
    redis_url: Option<String>,
    /// Prefix of the presence (and bus) keys in Redis (A-Z a-z 0-9 _ -).
    #[cfg(feature = "redis")]
    #[arg(long, env = "CHAT_REDIS_PREFIX", default_value = "chat")]
    redis_prefix: String,
    /// Carry live events between servers over Redis pub/sub too (at
    /// --redis-url), for deployments without NATS.
    #[cfg(feature = "redis")]
    #[arg(long, env = "CHAT_REDIS_BUS", requires = "redis_url")]
    redis_bus: bool,
    /// Register in, and route from, etcd (comma-separated client URLs,
    /// e.g. http://10.0.0.4:2379). Default: this server alone.
    #[cfg(feature = "etcd")]
    #[arg(long, env = "CHAT_ETCD_ENDPOINTS", value_delimiter = ',')]
    etcd_endpoints: Vec<String>,
    /// Prefix of the discovery keys in etcd (A-Z a-z 0-9 _ -).
    #[cfg(feature = "etcd")]
    #[arg(long, env = "CHAT_ETCD_PREFIX", default_value = "chat")]
    etcd_prefix: String,
    /// Register in, and route from, ZooKeeper (connect string, e.g.
    /// 10.0.0.4:2181,10.0.0.5:2181). The lease is the ZooKeeper session:
    /// --discovery-ttl-secs sets its timeout.
    #[cfg(feature = "zookeeper")]
    #[arg(long, env = "CHAT_ZOOKEEPER")]
    zookeeper: Option<String>,
    /// Root path of the registry in ZooKeeper.
    #[cfg(feature = "zookeeper")]
    #[arg(long, env = "CHAT_ZOOKEEPER_PATH", default_value = "/chat")]
    zookeeper_path: String,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Push providers (see docs/push.md). Android devices go to FCM, iOS devices
/// to APNs, and every other device, or any device whose platform has no
/// provider configured, to the webhook. With none configured, pushes are
/// only logged.
#[derive(Debug, clap::Args)]
struct PushArgs {
    /// FCM: the Google service-account key file (JSON) of the Firebase project.
    #[cfg(feature = "push-fcm")]
    #[arg(long, env = "CHAT_FCM_CREDENTIALS", value_name = "FILE")]
    fcm_credentials: Option<PathBuf>,
    /// FCM: API base URL (default https://fcm.googleapis.com).
    #[cfg(feature = "push-fcm")]
    #[arg(long, env = "CHAT_FCM_BASE_URL", requires = "fcm_credentials")]
    fcm_base_url: Option<String>,
    /// FCM: OAuth2 token URL (default: the credentials' token_uri).
    #[cfg(feature = "push-fcm")]
    #[arg(long, env = "CHAT_FCM_TOKEN_URI", requires = "fcm_credentials")]
    fcm_token_uri: Option<String>,
    /// APNs: the token-signing key file (.p8) from the Apple developer account.
    #[cfg(feature = "push-apns")]
    #[arg(
        long,
        env = "CHAT_APNS_KEY",
        value_name = "FILE",
        requires_all = ["apns_key_id", "apns_team_id", "apns_topic"]
    )]
    apns_key: Option<PathBuf>,
    /// APNs: the key's 10-character id.
    #[cfg(feature = "push-apns")]
    #[arg(long, env = "CHAT_APNS_KEY_ID", requires = "apns_key")]
    apns_key_id: Option<String>,
    /// APNs: the developer team id.
    #[cfg(feature = "push-apns")]
    #[arg(long, env = "CHAT_APNS_TEAM_ID", requires = "apns_key")]
    apns_team_id: Option<String>,
    /// APNs: the app's bundle id (apns-topic).
    #[cfg(feature = "push-apns")]
    #[arg(long, env = "CHAT_APNS_TOPIC", requires = "apns_key")]
    apns_topic: Option<String>,
    /// APNs: use the sandbox (development builds of the app).
    #[cfg(feature = "push-apns")]
    #[arg(long, env = "CHAT_APNS_SANDBOX", requires = "apns_key")]
    apns_sandbox: bool,
    /// APNs: base URL, overriding production and sandbox.
    #[cfg(feature = "push-apns")]
    #[arg(
        long,
        env = "CHAT_APNS_BASE_URL",
        requires = "apns_key",
        conflicts_with = "apns_sandbox"
    )]
    apns_base_url: Option<String>,
    /// Webhook: the URL that receives signed JSON POSTs.
    #[cfg(feature = "push-webhook")]
    #[arg(long, env = "CHAT_WEBHOOK_URL")]
    webhook_url: Option<String>,
    /// Webhook: the HMAC signing secret, at least 32 bytes. On the command
    /// line it is visible to every local user (`ps`): prefer
    /// --webhook-secret-file or the environment.
    #[cfg(feature = "push-webhook")]
    #[arg(
        long,
        env = "CHAT_WEBHOOK_SECRET",
        hide_env_values = true,
        requires = "webhook_url",
        conflicts_with = "webhook_secret_file"
    )]
    webhook_secret: Option<String>,
    /// Webhook: a file holding the signing secret, at least 32 bytes
    /// (surrounding whitespace is ignored).
    #[cfg(feature = "push-webhook")]
    #[arg(
        long,
        env = "CHAT_WEBHOOK_SECRET_FILE",
        value_name = "FILE",
        requires = "webhook_url"
    )]
    webhook_secret_file: Option<PathBuf>,
}

/// File descriptors kept for everything but sockets and the store:
/// standard streams, the runtime's epoll and wakers, the token secret,
/// logs, DNS look-ups. Outgoing connections (PostgreSQL pools, push
/// providers) are added to it.
const FD_RESERVE: usize = 64;

/// Fewest sockets a budget may leave: below it the server could not serve.
const MIN_SOCKETS: usize = 16;

/// How the open-file limit is shared out.
#[derive(Debug)]
struct FdBudget {
    limit: usize,
    /// The embedded store's descriptor table (segment files).
    store_table: usize,
    /// Everything the store may hold (table and the rest).
    store: usize,
    reserve: usize,
    /// Sockets, HTTP and WebSocket.
    sockets: usize,
    /// Of them, WebSocket sessions.
    websockets: usize,
}

/// The soft open-file limit.
fn open_file_limit() -> usize {
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    limit
        .current
        .map(|n| usize::try_from(n).unwrap_or(usize::MAX))
        .unwrap_or(usize::MAX)
}

/// Shares the open-file limit between the store, outgoing connections and
/// sockets; explicit flags win, and a budget that leaves too few sockets
/// is an error at start rather than a failure under load.
fn fd_budget(args: &Args, limit: usize) -> Result<FdBudget, String> {
    let embedded = !args.memory && !uses_postgres(args);
    let store_table = args.store_open_files.unwrap_or((limit / 8).clamp(32, 900));
    let store = if embedded {
        chat_store::embedded::EmbeddedOptions::default()
            .with_max_open_files(store_table)
            .file_budget()
    } else {
        0
    };
    let reserve = FD_RESERVE + outgoing_connections(args);
    let free = limit.saturating_sub(store + reserve);
    let sockets = args.max_open_connections.unwrap_or(free);
    if sockets < MIN_SOCKETS || (args.max_open_connections.is_none() && free < MIN_SOCKETS) {
        return Err(format!(
            "the open-file limit ({limit}) leaves {free} descriptors for sockets after the \
             store ({store}) and the reserve ({reserve}); raise it (ulimit -n) or lower \
             --store-open-files"
        ));
    }
    if sockets > free {
        tracing::warn!(
            sockets,
            free,
            "--max-open-connections is above what the open-file limit leaves for sockets"
        );
    }
    let websockets = args.max_connections.unwrap_or(sockets - sockets / 10);
    Ok(FdBudget {
        limit,
        store_table,
        store,
        reserve,
        sockets,
        websockets,
    })
}

fn uses_postgres(args: &Args) -> bool {
    #[cfg(feature = "postgres")]
    return args.postgres_url.is_some();
    #[cfg(not(feature = "postgres"))]
    {
        let _ = args;
        false
    }
}

/// Connections the server itself opens: PostgreSQL pools and push calls.
fn outgoing_connections(args: &Args) -> usize {
    #[allow(unused_mut)]
    let mut n = args.push_concurrency;
    #[cfg(feature = "postgres")]
    if args.postgres_url.is_some() {
        n += args.postgres_pool * (1 + args.history_shard_urls.len());
    }
    n
}

fn token_secret(args: &Args) -> Result<TokenSecret, ServerError> {
    if let Some(path) = &args.token_secret_file {
        return TokenSecret::from_file(path);
    }
    if let Some(s) = &args.token_secret {
        return Ok(TokenSecret::from(s.as_str()));
    }
    if args.memory {
        return Ok(TokenSecret::random());
    }
    TokenSecret::load_or_create(args.data_dir.join("token.secret"))
}

async fn shutdown_signal(token: CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(t) => t,
                Err(_) => {
                    let _ = ctrl_c.await;
                    token.cancel();
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutting down");
    token.cancel();
}

/// Plugs the configured storage into the builder: memory, PostgreSQL, or
/// the embedded store (the default).
fn storage(
    builder: chat_server::ServerBuilder,
    args: &Args,
    store_table: usize,
) -> Result<chat_server::ServerBuilder, Box<dyn std::error::Error>> {
    if args.memory {
        tracing::warn!("--memory: nothing is kept after exit");
        return Ok(builder);
    }
    #[cfg(feature = "postgres")]
    if let Some(url) = &args.postgres_url {
        use chat_store::postgres::{PostgresConfig, PostgresStore};
        // Lazy: the server starts while a database is down and answers
        // `unavailable` until it is back; migrations run on first use.
        let open = |url: &str| {
            let mut config = PostgresConfig::new(url).with_pool_size(args.postgres_pool);
            if let Some(schema) = &args.postgres_schema {
                config = config.with_schema(schema.clone());
            }
            PostgresStore::connect_lazy(config)
        };
        let main = Arc::new(open(url)?);
        if args.history_shard_urls.is_empty() {
            tracing::info!("PostgreSQL storage");
            return Ok(builder.storage(main));
        }
        let mut shards: Vec<Arc<dyn chat_core::HistoryStore>> = Vec::new();
        for url in &args.history_shard_urls {
            shards.push(Arc::new(open(url)?));
        }
        tracing::info!(
            shards = shards.len(),
            "PostgreSQL storage, chat history sharded"
        );
        let history = chat_store::sharded::ShardedHistory::new(shards)?;
        let messages = Arc::new(chat_store::sharded::ShardedMessageStore::new(
            main.clone(),
            history,
        ));
        // Finishes sends cut between the inbox commit and the history
        // write (a crash, a shard down), now and every few seconds.
        messages.clone().spawn_drainer(
            Duration::from_secs(5),
            tokio_util::sync::CancellationToken::new(),
        );
        return Ok(builder
            .messages(messages)
            .attachments(main.clone())
            .directory(main));
    }
    let options = chat_store::embedded::EmbeddedOptions::default()
        .with_free_space_reserve(args.disk_reserve_mb.saturating_mul(1 << 20))
        .with_stall_after(Duration::from_millis(args.disk_stall_ms))
        .with_max_open_files(store_table);
    let store = chat_store::embedded::EmbeddedStore::open_with(&args.data_dir, options)?;
    tracing::info!(data_dir = %args.data_dir.display(), "embedded store open");
    Ok(builder.storage(Arc::new(store)))
}

/// Plugs the configured blob store into the builder: an S3 bucket, a
/// directory, or (with --memory) memory.
fn blobs(
    builder: chat_server::ServerBuilder,
    args: &Args,
) -> Result<chat_server::ServerBuilder, Box<dyn std::error::Error>> {
    #[cfg(feature = "s3")]
    if let Some(bucket) = &args.s3_bucket {
        use chat_store::blobs::s3::{S3BlobStore, S3Config};
        let store = S3BlobStore::new(&S3Config {
            bucket: bucket.clone(),
            region: args.s3_region.clone(),
            endpoint: args.s3_endpoint.clone(),
            access_key_id: args.s3_access_key_id.clone(),
            secret_access_key: args.s3_secret_access_key.clone(),
            prefix: args.s3_prefix.clone(),
        })?;
        tracing::info!(bucket, "uploads in S3");
        return Ok(builder.blobs(Arc::new(store)));
    }
    let dir = match (&args.blob_dir, args.memory) {
        (Some(dir), _) => dir.clone(),
        (None, true) => return Ok(builder),
        (None, false) => args.data_dir.join("blobs"),
    };
    let store = chat_store::blobs::FsBlobStore::open(&dir)?;
    tracing::info!(blob_dir = %dir.display(), "uploads in files");
    Ok(builder.blobs(Arc::new(store)))
}

/// The push notifier from the flags: the providers configured, behind a
/// router by platform; `None` when none is (the server then logs pushes).
#[allow(unused_variables, unused_mut)] // with no push feature compiled in
fn push(
    args: &PushArgs,
) -> Result<Option<Arc<dyn chat_core::PushNotifier>>, Box<dyn std::error::Error>> {
    let mut router = chat_push::PlatformRouter::new();
    #[cfg(feature = "push-fcm")]
    if let Some(path) = &args.fcm_credentials {
        use chat_push::fcm::{FcmConfig, FcmNotifier, ServiceAccount};
        let mut config = FcmConfig::new(ServiceAccount::from_file(path)?);
        if let Some(url) = &args.fcm_base_url {
            config = config.with_base_url(url);
        }
        if let Some(url) = &args.fcm_token_uri {
            config = config.with_token_uri(url);
        }
        tracing::info!(project = %config.service_account.project_id, "FCM push enabled");
        router = router.with_android(Arc::new(FcmNotifier::new(config)?));
    }
    #[cfg(feature = "push-apns")]
    if let (Some(key), Some(key_id), Some(team_id), Some(topic)) = (
        &args.apns_key,
        &args.apns_key_id,
        &args.apns_team_id,
        &args.apns_topic,
    ) {
        use chat_push::apns::{ApnsConfig, ApnsNotifier};
        let pem = std::fs::read_to_string(key)
            .map_err(|e| format!("cannot read the APNs key {}: {e}", key.display()))?;
        let mut config = ApnsConfig::new(pem, key_id, team_id, topic);
        if args.apns_sandbox {
            config = config.sandbox();
        }
        if let Some(url) = &args.apns_base_url {
            config = config.with_base_url(url);
        }
        tracing::info!(topic = %topic, base = %config.base_url, "APNs push enabled");
        router = router.with_ios(Arc::new(ApnsNotifier::new(config)?));
    }
    #[cfg(feature = "push-webhook")]
    if let Some(url) = &args.webhook_url {
        use chat_push::webhook::{WebhookConfig, WebhookNotifier};
        let secret = match (&args.webhook_secret, &args.webhook_secret_file) {
            (Some(secret), _) => secret.clone(),
            (None, Some(path)) => std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read the webhook secret {}: {e}", path.display()))?
                .trim()
                .to_owned(),
            (None, None) => {
                return Err("--webhook-url needs --webhook-secret or --webhook-secret-file".into())
            }
        };
        tracing::info!(url = %url, "webhook push enabled");
        router = router.with_fallback(Arc::new(WebhookNotifier::new(WebhookConfig::new(
            url.clone(),
            secret.into_bytes(),
        ))?));
    }
    if router.is_empty() {
        tracing::info!("no push provider configured; push notifications are logged only");
        return Ok(None);
    }
    Ok(Some(Arc::new(router)))
}

/// Plugs the configured cluster engines into the builder; whatever is not
/// configured stays the single-server default.
#[allow(unused_variables, unused_mut)] // with no engine compiled in
async fn cluster(
    mut builder: chat_server::ServerBuilder,
    args: &ClusterArgs,
    presence_timeout: Duration,
    discovery_ttl: Duration,
) -> Result<chat_server::ServerBuilder, Box<dyn std::error::Error>> {
    #[cfg(all(feature = "etcd", feature = "zookeeper"))]
    if !args.etcd_endpoints.is_empty() && args.zookeeper.is_some() {
        return Err("choose one discovery: --etcd-endpoints or --zookeeper".into());
    }
    #[cfg(feature = "nats")]
    if let Some(url) = &args.nats_url {
        use chat_cluster::nats::{NatsBus, NatsBusConfig};
        let bus = NatsBus::connect(NatsBusConfig::new(url.clone(), &args.nats_prefix))
            .await
            .map_err(|e| format!("cannot start the NATS bus: {e}"))?;
        tracing::info!(node = bus.node(), prefix = %args.nats_prefix, "delivery bus on NATS");
        builder = builder.bus(Arc::new(bus));
    }
    #[cfg(all(feature = "nats", feature = "redis"))]
    if args.redis_bus && args.nats_url.is_some() {
        return Err("choose one bus: --nats-url or --redis-bus".into());
    }
    #[cfg(feature = "redis")]
    if let (true, Some(url)) = (args.redis_bus, &args.redis_url) {
        use chat_cluster::redis::{RedisBus, RedisBusConfig};
        let bus = RedisBus::connect(RedisBusConfig::new(url.clone(), &args.redis_prefix))
            .await
            .map_err(|e| format!("cannot start the Redis bus: {e}"))?;
        tracing::info!(node = bus.node(), prefix = %args.redis_prefix, "delivery bus on Redis");
        builder = builder.bus(Arc::new(bus));
    }
    #[cfg(feature = "redis")]
    if let Some(url) = &args.redis_url {
        use chat_cluster::redis::{RedisPresence, RedisPresenceConfig};
        let mut config = RedisPresenceConfig::new(url.clone(), &args.redis_prefix);
        config.timeout = presence_timeout;
        let presence = RedisPresence::connect(config)
            .await
            .map_err(|e| format!("cannot reach Redis for presence: {e}"))?;
        tracing::info!(prefix = %args.redis_prefix, "presence in Redis");
        builder = builder.presence(Arc::new(presence));
    }
    #[cfg(feature = "etcd")]
    if !args.etcd_endpoints.is_empty() {
        use chat_cluster::etcd::{EtcdDiscovery, EtcdDiscoveryConfig};
        let discovery = EtcdDiscovery::connect(EtcdDiscoveryConfig::new(
            args.etcd_endpoints.clone(),
            &args.etcd_prefix,
        ))
        .await
        .map_err(|e| format!("cannot reach etcd for discovery: {e}"))?;
        tracing::info!(prefix = %args.etcd_prefix, "service discovery on etcd");
        builder = builder.discovery(Arc::new(discovery));
    }
    #[cfg(feature = "zookeeper")]
    if let Some(connect) = &args.zookeeper {
        use chat_cluster::zookeeper::{ZooKeeperDiscovery, ZooKeeperDiscoveryConfig};
        let mut config = ZooKeeperDiscoveryConfig::new(connect.clone(), &args.zookeeper_path);
        config.session_timeout = discovery_ttl;
        let discovery = ZooKeeperDiscovery::connect(config)
            .await
            .map_err(|e| format!("cannot reach ZooKeeper for discovery: {e}"))?;
        tracing::info!(path = %args.zookeeper_path, "service discovery on ZooKeeper");
        builder = builder.discovery(Arc::new(discovery));
    }
    Ok(builder)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    let args = Args::parse();
    let filter =
        chat_server::log_filter(&std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()));
    match args.log_format {
        LogFormat::Text => tracing_subscriber::fmt().with_env_filter(filter).init(),
        LogFormat::Json => tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .init(),
    }
    let defaults = ServerConfig::default();
    let budget = fd_budget(&args, open_file_limit())?;
    tracing::info!(
        limit = budget.limit,
        store = budget.store,
        reserve = budget.reserve,
        sockets = budget.sockets,
        websockets = budget.websockets,
        "file descriptor budget"
    );
    let config = ServerConfig {
        server_id: args.server_id.clone().unwrap_or(defaults.server_id.clone()),
        node_id: args.node_id,
        public_ws_url: args.public_ws_url.clone(),
        public_http_url: args.public_http_url.clone(),
        region: args.region.clone(),
        token_secret: token_secret(&args)?,
        heartbeat_interval: Duration::from_secs(args.heartbeat_secs),
        presence_timeout: Duration::from_secs(args.presence_timeout_secs),
        max_message_chars: args.max_message_chars,
        max_frame_bytes: args.max_frame_bytes,
        token_ttl: Duration::from_secs(args.access_token_minutes.saturating_mul(60)),
        refresh_token_ttl: Duration::from_secs(args.refresh_token_days.saturating_mul(24 * 3600)),
        limits: chat_core::Limits {
            group_members: args.max_group_members,
            devices: args.max_devices,
            friends: args.max_friends,
            groups_joined: args.max_groups_joined,
            groups_owned: args.max_groups_owned,
            pending_sent: args.max_pending_sent,
            pending_received: args.max_pending_received,
        },
        rate_limit_per_sec: args.rate_limit,
        rate_limit_burst: args.rate_burst,
        max_connections_per_user: args.max_connections_per_user,
        max_connections: budget.websockets,
        max_open_connections: budget.sockets,
        max_connections_per_address: args.max_connections_per_address,
        header_timeout: Duration::from_secs(args.header_timeout_secs),
        request_timeout: Duration::from_secs(args.request_timeout_secs),
        write_stall_timeout: Duration::from_secs(args.write_stall_timeout_secs),
        allowed_origins: args.allowed_origins.clone(),
        send_bytes_per_sec: args.send_bytes_per_sec,
        send_bytes_burst: args.send_bytes_burst,
        hash_workers: args.hash_workers.unwrap_or(defaults.hash_workers),
        hash_queue: args.hash_queue,
        auth_per_address: RateSpec {
            per_minute: args.auth_per_address_per_minute,
            burst: args.auth_per_address_burst,
        },
        login_per_username: RateSpec {
            per_minute: args.login_per_username_per_minute,
            burst: args.login_per_username_burst,
        },
        outbound_queue_bytes: args.outbound_queue_bytes,
        page_bytes: args.page_bytes,
        push_preview: args.push_preview,
        push_queue: args.push_queue,
        push_concurrency: args.push_concurrency,
        push_collapse_window: Duration::from_millis(args.push_collapse_window_ms),
        discovery_ttl: Duration::from_secs(args.discovery_ttl_secs),
        metrics_route: args.metrics_listen.is_none(),
        web_chat: args.web_chat,
        tls: match (&args.tls_cert, &args.tls_key) {
            (Some(cert), Some(key)) => Some(chat_server::TlsConfig::from_pem_files(cert, key)?),
            _ => None,
        },
        max_attachment_bytes: args.max_attachment_mb.saturating_mul(1 << 20),
        ..defaults
    };
    let (presence_timeout, discovery_ttl) = (config.presence_timeout, config.discovery_ttl);
    let mut builder = storage(ChatServer::builder(config), &args, budget.store_table)?;
    builder = blobs(builder, &args)?;
    builder = cluster(builder, &args.cluster, presence_timeout, discovery_ttl).await?;
    if let Some(notifier) = push(&args.push)? {
        builder = builder.push(notifier);
    }
    let server = builder.build().await?;
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    let shutdown = CancellationToken::new();
    tokio::spawn(shutdown_signal(shutdown.clone()));
    if let Some(addr) = args.metrics_listen {
        let metrics = tokio::net::TcpListener::bind(addr).await?;
        tracing::info!(%addr, "metrics listening");
        let app = server.metrics_router();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let served = axum::serve(metrics, app)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await;
            if let Err(e) = served {
                tracing::error!(error = %e, "metrics listener failed");
            }
        });
    }
    chat_server::serve(server, listener, shutdown).await?;
    Ok(())
}
