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

mod account;
mod auth;
mod config;
mod consent;
mod http;
mod outbox;
mod push;
mod server;
mod sessions;
mod ws;

pub use auth::{Claims, Passwords, TokenKind, Tokens};
pub use config::ServerConfig;
pub use server::{ApiResult, ChatServer, SendOutcome, ServerBuilder, Stats};

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

impl ChatServer {
    /// The HTTP API and the WebSocket endpoint (`/v1/ws`) as an axum router
    /// to mount in a host application.
    pub fn router(&self) -> axum::Router {
        http::routes(self.clone())
    }
}

/// Serves `server` on `listener` until `shutdown` is cancelled, then shuts
/// down gracefully: stops accepting, closes every session with code 4000
/// (reconnect elsewhere), leaves discovery and waits for sessions to drain.
///
/// The caller binds the listener (tests bind `127.0.0.1:0`). The server
/// advertises itself in discovery with URLs from its configuration, or from
/// the listener's address.
pub async fn serve(
    server: ChatServer,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let addr = listener.local_addr()?;
    let cfg = server.config();
    let http_url = cfg
        .public_http_url
        .clone()
        .unwrap_or_else(|| format!("http://{addr}"));
    let ws_url = cfg
        .public_ws_url
        .clone()
        .unwrap_or_else(|| format!("ws://{addr}/v1/ws"));
    server
        .advertise(ws_url, http_url)
        .await
        .map_err(std::io::Error::other)?;
    tracing::info!(%addr, server_id = %cfg.server_id, "chat server listening");
    let app = server.router();
    let stop = shutdown.clone();
    let srv = server.clone();
    // axum's graceful shutdown waits for HTTP connections; WebSocket sessions
    // are tracked by the server itself, so start its shutdown at the same time.
    // The node may also stop by itself (see `ChatServer::advertise`).
    let stopped = server.shutdown_token();
    let graceful = async move {
        tokio::select! {
            _ = stop.cancelled() => {}
            _ = stopped.cancelled() => {}
        }
        srv.shutdown().await;
    };
    axum::serve(listener, app)
        .with_graceful_shutdown(graceful)
        .await?;
    server.shutdown().await;
    match server.fatal_error() {
        Some(reason) => Err(std::io::Error::other(reason)),
        None => Ok(()),
    }
}
