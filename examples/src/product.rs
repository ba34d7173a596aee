//! A product's own web server with the chat server mounted inside it: the
//! product's pages and API at `/`, chat under `/chat` (HTTP API and
//! WebSocket), one process, one port. `examples/embed_in_axum.rs` runs it.
//!
//! The order that matters:
//!
//! 1. Open the store and build the [`ChatServer`] before serving.
//! 2. Mount [`ChatServer::router`]; a single server needs nothing more
//!    (without [`ChatServer::advertise`] it answers `route` with itself,
//!    at the address and prefix the client used).
//! 3. Stop with [`ChatServer::shutdown_after`] as axum's graceful
//!    shutdown, so the chat sessions close (code 4000, "reconnect") at the
//!    same time as axum stops accepting; axum would otherwise wait for
//!    them forever.

use std::path::Path;
use std::sync::Arc;

use chat_server::axum::routing::get;
use chat_server::axum::{Json, Router};
use chat_server::{
    CancellationToken, ChatServer, EmbeddedOptions, EmbeddedStore, ServerConfig, ServerError,
    TokenSecret,
};

/// Where chat is mounted in the product's URL space. Clients use
/// `http://HOST/chat` as their base URL.
pub const CHAT_PREFIX: &str = "/chat";

/// The chat server on the embedded store in `data_dir` (its data in
/// `data_dir/chat`, its token secret in `data_dir/token.secret`, made on
/// the first start and kept, so sessions survive restarts), with `config`
/// for everything else.
pub async fn chat_server(data_dir: &Path, config: ServerConfig) -> Result<ChatServer, ServerError> {
    // Opening replays the store's journal: off the async threads.
    let store =
        EmbeddedStore::open_async(data_dir.join("chat"), EmbeddedOptions::default()).await?;
    let config = ServerConfig {
        token_secret: TokenSecret::load_or_create(data_dir.join("token.secret"))?,
        ..config
    };
    ChatServer::builder(config)
        .storage(Arc::new(store))
        .build()
        .await
}

/// The product's application: its own routes, and chat under
/// [`CHAT_PREFIX`].
pub fn app(chat: &ChatServer) -> Router {
    Router::new()
        .route(
            "/",
            get(|| async { "Welcome to the product. Chat lives under /chat." }),
        )
        .route(
            "/api/status",
            get({
                let chat = chat.clone();
                move || async move {
                    Json(serde_json::json!({
                        "chat_connections": chat.connections(),
                        "messages_stored": chat.stats().messages_stored,
                    }))
                }
            }),
        )
        .nest(CHAT_PREFIX, chat.router())
}

/// Serves `app` on `listener` until `stop` is cancelled, then shuts down
/// both axum and the chat server gracefully.
pub async fn serve(
    listener: tokio::net::TcpListener,
    chat: ChatServer,
    app: Router,
    stop: CancellationToken,
) -> std::io::Result<()> {
    chat_server::axum::serve(listener, app)
        .with_graceful_shutdown(chat.shutdown_after(stop.cancelled_owned()))
        .await
}
