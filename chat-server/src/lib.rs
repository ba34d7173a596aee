//! # chat-server
//!
//! The reference chat server as a library: the stateless HTTP API (sign-up,
//! log-in, profiles, friends, groups, history, devices, presence, `route`)
//! and the stateful WebSocket chat service, over backends given as trait
//! objects.
//!
//! ```no_run
//! use std::sync::Arc;
//! use chat_server::{ChatServer, ServerConfig};
//! use tokio_util::sync::CancellationToken;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let store = Arc::new(chat_store::embedded::EmbeddedStore::open("./data")?);
//! let config = ServerConfig { token_secret: vec![42; 32], ..ServerConfig::default() };
//! let server = ChatServer::builder(config).storage(store).build().await?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! let shutdown = CancellationToken::new();
//! chat_server::serve(server, listener, shutdown).await?;
//! # Ok(()) }
//! ```
//!
//! A host application that has its own axum server mounts
//! [`ChatServer::router`] instead and calls [`ChatServer::advertise`] with
//! its public URLs.

mod accept;
mod account;
mod auth;
mod config;
mod consent;
mod hashing;
mod http;
mod limits;
mod metered;
mod metrics;
mod origin;
mod outbox;
mod push;
mod send_quota;
mod server;
mod sessions;
mod tls;
mod web;
mod ws;

pub use auth::{Claims, HashMemory, Passwords, TokenKind, Tokens};
pub use config::{RateSpec, ServerConfig};
pub use http::openapi;
pub use server::{ApiResult, ChatServer, SendOutcome, ServerBuilder, Stats};
pub use tls::TlsConfig;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

impl ChatServer {
    /// The HTTP API and the WebSocket endpoint (`/v1/ws`) as an axum router
    /// to mount in a host application.
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
/// `chat_server=debug`) with [`LOG_CAPS`] on top, whatever the directives
/// say: tokens and message text never reach the logs. Invalid directives
/// are ignored.
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
) -> std::io::Result<()> {
    let addr = listener.local_addr()?;
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
    server
        .advertise(ws_url, http_url)
        .await
        .map_err(std::io::Error::other)?;
    tracing::info!(%addr, server_id = %cfg.server_id, "chat server listening");
    accept::run(server.clone(), listener, shutdown).await?;
    match server.fatal_error() {
        Some(reason) => Err(std::io::Error::other(reason)),
        None => Ok(()),
    }
}
