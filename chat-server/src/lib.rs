//! # chat-server
//!
//! The reference chat server as a library: the stateless HTTP API (sign-up,
//! log-in, profiles, friends, groups, history, devices, presence, `route`)
//! and the stateful WebSocket chat service, over backends given as trait
//! objects.
//!
//! One dependency is enough to embed it: what [`serve`] needs
//! ([`CancellationToken`]), the embedded store ([`EmbeddedStore`]) and the
//! crates underneath ([`chat_core`], [`chat_store`], [`axum`]) are
//! re-exported.
//!
//! ```no_run
//! use std::sync::Arc;
//! use chat_server::{CancellationToken, ChatServer, EmbeddedOptions, EmbeddedStore, ServerConfig, TokenSecret};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let store = Arc::new(EmbeddedStore::open_async("./chat-data", EmbeddedOptions::default()).await?);
//! let config = ServerConfig {
//!     token_secret: TokenSecret::load_or_create("./chat-data/token.secret")?,
//!     ..ServerConfig::default()
//! };
//! let server = ChatServer::builder(config).storage(store).build().await?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! let shutdown = CancellationToken::new();
//! chat_server::serve(server, listener, shutdown).await?;
//! # Ok(()) }
//! ```
//!
//! A host application that has its own axum server mounts
//! [`ChatServer::router`] instead: see there for the order of
//! [`ChatServer::advertise`], [`ChatServer::shutdown`] and axum's graceful
//! shutdown.
//!
//! ## Features
//!
//! None is on by default, so an embedder compiles only the embedded store:
//!
//! * `postgres`: PostgreSQL storage (`chat_store::postgres`).
//! * `push-webhook`, `push-fcm`, `push-apns` (or `push` for all three):
//!   push providers (`chat-push`).
//! * `nats`, `redis`, `zookeeper`, `etcd`: the cluster engines of
//!   `chat-cluster` (delivery bus, presence, discovery).
//! * `cli`: what the `chat-server` binary needs besides (argument parsing,
//!   log output). `full` is `cli` with `postgres`, `push`, `nats`, `redis`
//!   and `zookeeper`: the reference binary as released (`cargo run -p
//!   chat-server --features full`; etcd needs `protoc` to build, add it
//!   with `--features full,etcd`).
//!
//! [`serve`] runs the server's own accept loop (socket caps, timeouts,
//! `TCP_NODELAY`); a host that mounts [`ChatServer::router`] serves the
//! sockets itself and sets such limits in its own server.

mod accept;
mod account;
pub mod attachments;
mod auth;
mod changes;
mod config;
mod consent;
mod error;
mod hashing;
mod http;
mod limits;
mod metered;
mod metrics;
mod origin;
mod outbox;
mod push;
mod receipts;
mod redeliver;
mod search;
mod secret;
mod send_quota;
mod server;
mod sessions;
mod tls;
mod typing;
mod web;
mod ws;

pub use auth::{Claims, HashMemory, Passwords, TokenKind, Tokens};
pub use config::{RateSpec, ServerConfig};
pub use error::ServerError;
pub use http::openapi;
pub use secret::{TokenSecret, MIN_SECRET_BYTES};
pub use server::{ApiResult, ChatServer, SendOutcome, ServerBuilder, Stats};
pub use tls::TlsConfig;

/// The web framework of [`ChatServer::router`]: mount the router with this
/// version of axum.
pub use axum;
/// Domain types, the wire protocol and the backend traits.
pub use chat_core;
/// Storage backends.
pub use chat_store;
/// The embedded on-disk store, the default storage.
pub use chat_store::embedded::{EmbeddedOptions, EmbeddedStore};
/// What [`serve`] stops on.
pub use tokio_util::sync::CancellationToken;

use tokio::net::TcpListener;

impl ChatServer {
    /// The HTTP API and the WebSocket endpoint (`/v1/ws`) as an axum router
    /// to mount in a host application, at the root or under a prefix
    /// (`Router::nest("/chat", server.router())`; clients then use
    /// `http://host/chat` as their base URL).
    ///
    /// It works by itself: a server that is not in discovery (no
    /// [`ChatServer::advertise`]) answers `route` with itself, at
    /// [`ServerConfig::public_ws_url`] if set, or else at the address the
    /// client reached it at (its `Host`, the prefix the router is mounted
    /// under, and `wss` when `X-Forwarded-Proto` or `Forwarded` says the
    /// client came over HTTPS). Several servers sharing discovery each call
    /// `advertise` with their public URLs once they listen.
    ///
    /// The order, for a host application:
    ///
    /// 1. Build the server ([`ChatServer::builder`]).
    /// 2. Mount `server.router()` in the host's router and start serving it.
    /// 3. Only with several servers: [`ChatServer::advertise`].
    /// 4. To stop: [`ChatServer::shutdown`] at the same time as axum's
    ///    graceful shutdown, which [`ChatServer::shutdown_after`] does
    ///    (axum waits for open connections, and WebSocket sessions end
    ///    only when the chat server closes them, with code 4000 so that
    ///    clients reconnect elsewhere).
    ///
    /// ```no_run
    /// # async fn run(server: chat_server::ChatServer) -> std::io::Result<()> {
    /// use chat_server::axum::{routing::get, Router};
    /// use chat_server::CancellationToken;
    ///
    /// let app = Router::new()
    ///     .route("/", get(|| async { "my product" }))
    ///     .nest("/chat", server.router());
    /// let listener = tokio::net::TcpListener::bind("0.0.0.0:8080").await?;
    /// let stop = CancellationToken::new();
    /// chat_server::axum::serve(listener, app)
    ///     .with_graceful_shutdown(server.shutdown_after(stop.clone().cancelled_owned()))
    ///     .await?;
    /// # Ok(()) }
    /// ```
    ///
    /// `examples/embed_in_axum.rs` is a complete product server.
    pub fn router(&self) -> axum::Router {
        http::routes(self.clone())
    }

    /// `GET /metrics` alone, for a listener of its own (see
    /// [`ServerConfig::metrics_route`]).
    pub fn metrics_router(&self) -> axum::Router {
        axum::Router::new()
            .route("/metrics", axum::routing::get(http::metrics))
            .with_state(self.clone())
    }

    /// The web chat alone (`/`, `/web/app.js`, `/web/style.css`), for a
    /// host that mounts [`router`](Self::router) with
    /// [`ServerConfig::web_chat`] off and wants the page elsewhere.
    pub fn web_chat_router() -> axum::Router {
        web::routes()
    }

    /// The node's metrics in the Prometheus text exposition format.
    pub fn metrics_text(&self) -> String {
        self.inner.metrics.render()
    }
}

/// Targets whose verbose lines would carry what must never be logged, and
/// the most verbose level each is allowed: `tokio_postgres` logs every
/// query's parameters (message text, password hashes) at `debug`, and
/// `tungstenite` whole frames and handshakes (message text, a WebSocket
/// URL's token) at `trace`.
const LOG_CAPS: &[&str] = &["tokio_postgres::query=info", "tungstenite=debug"];

/// The log filter of `directives` (`RUST_LOG` syntax, e.g. `info` or
/// `chat_server=debug`) with caps on top, whatever the directives say
/// (`tokio_postgres::query` at `info`, `tungstenite` at `debug`): tokens
/// and message text never reach the logs. Invalid directives are ignored.
pub fn log_filter(directives: &str) -> tracing_subscriber::EnvFilter {
    let mut filter = tracing_subscriber::EnvFilter::builder()
        .with_default_directive(tracing::level_filters::LevelFilter::INFO.into())
        .parse_lossy(directives);
    for cap in LOG_CAPS {
        if let Ok(directive) = cap.parse() {
            filter = filter.add_directive(directive);
        }
    }
    filter
}

/// Serves `server` on `listener` until `shutdown` is cancelled, then shuts
/// down gracefully: stops accepting, closes every session with code 4000
/// (reconnect elsewhere), leaves discovery and waits for sessions to drain.
///
/// Every accepted socket gets `TCP_NODELAY`, counts against
/// [`ServerConfig::max_open_connections`] and
/// [`ServerConfig::max_connections_per_address`], and is closed when it
/// idles past the header, request or write-stall timeouts; a failed accept
/// (out of file descriptors) pauses the loop and never ends it.
///
/// The caller binds the listener (tests bind `127.0.0.1:0`). The server
/// advertises itself in discovery with URLs from its configuration, or from
/// the listener's address. With [`ServerConfig::tls`] it speaks only TLS
/// (`https`, `wss`).
pub async fn serve(
    server: ChatServer,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), ServerError> {
    let addr = listener
        .local_addr()
        .map_err(|e| ServerError::io("cannot read the listener's address", e))?;
    let cfg = server.config();
    let (http, ws) = if cfg.tls.is_some() {
        ("https", "wss")
    } else {
        ("http", "ws")
    };
    let http_url = cfg
        .public_http_url
        .clone()
        .unwrap_or_else(|| format!("{http}://{addr}"));
    let ws_url = cfg
        .public_ws_url
        .clone()
        .unwrap_or_else(|| format!("{ws}://{addr}/v1/ws"));
    server.advertise(ws_url, http_url).await?;
    tracing::info!(%addr, server_id = %cfg.server_id, "chat server listening");
    accept::run(server.clone(), listener, shutdown)
        .await
        .map_err(|e| ServerError::io(format!("serving on {addr} failed"), e))?;
    match server.fatal_error() {
        // Another server took this one's ids: a configuration to fix.
        Some(reason) => Err(ServerError::Config(reason)),
        None => Ok(()),
    }
}
