//! The error type of every client call.

use std::error::Error as StdError;
use std::sync::Arc;

use chat_core::protocol::{close, ErrorCode, WireError};
use tokio_tungstenite::tungstenite;

/// Result alias of the client SDK.
pub type Result<T, E = ClientError> = std::result::Result<T, E>;

/// What a client call can fail with.
///
/// Cheap to clone (the wrapped library errors sit behind an [`Arc`]), so one
/// failure can be handed to several waiters. Branch on the variant and, for
/// [`ClientError::Api`], on [`WireError::code`]; use
/// [`ClientError::is_retryable`] to decide whether trying again can help.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The server answered with an error (HTTP error body or error reply).
    #[error("server error: {0}")]
    Api(WireError),
    /// The HTTP request failed before an answer arrived (connection refused,
    /// reset, timed out).
    #[error("HTTP request failed: {0}")]
    Http(#[source] Arc<reqwest::Error>),
    /// The WebSocket failed (handshake refused, I/O error, protocol
    /// violation, frame too large).
    #[error("WebSocket error: {0}")]
    WebSocket(#[source] Arc<tungstenite::Error>),
    /// The WebSocket was closed. `code` is the close code the server sent
    /// (see [`chat_core::protocol::close`]), or `None` when the connection
    /// ended without one.
    #[error("connection closed (code {code:?}): {reason}")]
    Closed {
        /// The close code, if a close frame was received (or sent).
        code: Option<u16>,
        /// The close reason or a description of what ended the connection.
        reason: String,
    },
    /// No answer within the configured time.
    #[error("request timed out")]
    Timeout,
    /// An answer could not be understood (malformed JSON, unexpected reply
    /// kind).
    #[error("could not decode the server's answer: {0}")]
    Decode(String),
    /// The cursor store failed.
    #[error("cursor store failed: {0}")]
    Store(#[source] Arc<dyn StdError + Send + Sync + 'static>),
    /// The client was configured wrongly (for example a malformed URL).
    #[error("invalid configuration: {0}")]
    Config(String),
}

impl ClientError {
    /// A [`ClientError::Store`] wrapping any error, for
    /// [`CursorStore`](crate::CursorStore) implementations.
    pub fn store(error: impl Into<chat_core::BoxError>) -> Self {
        ClientError::Store(Arc::from(error.into()))
    }

    /// The server's error code, if this is a [`ClientError::Api`].
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Api(e) => Some(e.code),
            _ => None,
        }
    }

    /// Whether the same call may succeed if tried again later unchanged.
    ///
    /// * `Api`: the server's `retryable` flag (`unavailable`, `rate_limited`).
    /// * `Http`: connection failures and timeouts.
    /// * `WebSocket`, `Timeout`: yes.
    /// * `Closed`: unless the code is `1000` (closed on purpose) or in
    ///   `4100..=4199` (fix credentials or configuration first).
    /// * `Decode`, `Store`, `Config`: no.
    pub fn is_retryable(&self) -> bool {
        match self {
            ClientError::Api(e) => e.retryable,
            ClientError::Http(e) => {
                e.is_connect() || e.is_timeout() || e.is_request() || e.is_body()
            }
            ClientError::WebSocket(_) | ClientError::Timeout => true,
            ClientError::Closed { code, .. } => match code {
                None => true,
                Some(1000) => false,
                Some(c) => close::should_reconnect(*c),
            },
            ClientError::Decode(_) | ClientError::Store(_) | ClientError::Config(_) => false,
        }
    }

    pub(crate) fn decode(what: impl std::fmt::Display) -> Self {
        ClientError::Decode(what.to_string())
    }
}

impl From<WireError> for ClientError {
    fn from(e: WireError) -> Self {
        ClientError::Api(e)
    }
}

impl From<reqwest::Error> for ClientError {
    fn from(e: reqwest::Error) -> Self {
        if e.is_timeout() {
            ClientError::Timeout
        } else {
            ClientError::Http(Arc::new(e))
        }
    }
}

impl From<tungstenite::Error> for ClientError {
    fn from(e: tungstenite::Error) -> Self {
        ClientError::WebSocket(Arc::new(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retryability() {
        assert!(ClientError::Api(WireError::new(ErrorCode::Unavailable, "x")).is_retryable());
        assert!(ClientError::Api(WireError::new(ErrorCode::RateLimited, "x")).is_retryable());
        assert!(!ClientError::Api(WireError::new(ErrorCode::Forbidden, "x")).is_retryable());
        assert!(ClientError::Timeout.is_retryable());
        let closed = |code| ClientError::Closed {
            code,
            reason: String::new(),
        };
        assert!(closed(None).is_retryable());
        assert!(closed(Some(close::SLOW_CONSUMER)).is_retryable());
        assert!(!closed(Some(close::UNAUTHORIZED)).is_retryable());
        assert!(!closed(Some(1000)).is_retryable());
        assert!(!ClientError::decode("bad").is_retryable());
        assert!(!ClientError::store(std::io::Error::other("disk")).is_retryable());
        assert_eq!(
            ClientError::Api(WireError::new(ErrorCode::NotFound, "x")).code(),
            Some(ErrorCode::NotFound)
        );
    }
}
