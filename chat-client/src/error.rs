//! The error type of every client call.

use std::error::Error as StdError;

use chat_core::protocol::{close, ErrorCode, WireError};
use tokio_tungstenite::tungstenite;

/// Result alias of the client SDK.
pub type Result<T, E = ClientError> = std::result::Result<T, E>;

/// What a client call can fail with.
///
/// Branch on the variant and, for [`ClientError::Api`], on
/// [`WireError::code`]; [`ClientError::kind`] names the variant as a stable
/// string for logs and metrics, and [`ClientError::is_retryable`] says
/// whether trying again can help.
///
/// Cheap to clone, so one failure can be handed to several waiters. The
/// message (`Display`) is the whole story, causes included, and
/// [`source`](std::error::Error::source) is always `None`: printed through
/// `anyhow` or any error reporter, nothing is repeated. The errors of the
/// libraries underneath (HTTP, WebSocket, the cursor store) are kept as
/// their messages only, so this enum names no third-party type.
///
/// ```
/// use chat_client::{ClientError, ErrorCode};
///
/// fn explain(e: &ClientError) -> String {
///     match e {
///         ClientError::Api(w) if w.code == ErrorCode::NotFound => "no such thing".into(),
///         e if e.is_retryable() => format!("try again later ({})", e.kind()),
///         e => format!("giving up: {e}"),
///     }
/// }
/// assert_eq!(explain(&ClientError::Timeout), "try again later (timeout)");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The server answered with an error (HTTP error body or error reply).
    #[error("server error: {0}")]
    Api(WireError),
    /// The HTTP request failed before an answer arrived (connection refused,
    /// reset, timed out): the message says how.
    #[error("HTTP request failed: {0}")]
    Http(String),
    /// The WebSocket failed (handshake refused, I/O error, protocol
    /// violation, frame too large): the message says how.
    #[error("WebSocket failed: {0}")]
    WebSocket(String),
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
    /// The cursor store failed: the message says how.
    #[error("cursor store failed: {0}")]
    Store(String),
    /// The client is configured wrongly and no retry can help: a malformed
    /// URL, a `https://` or `wss://` URL without TLS, a server certificate
    /// that the trusted roots refuse, a session whose credentials log in as
    /// another user.
    #[error("invalid configuration: {0}")]
    Config(String),
}

/// An error's message followed by its causes, each once: `a: b: c`.
/// (Libraries often repeat their source's text in their own; a cause
/// already contained in the text so far is skipped.)
pub(crate) fn flatten(error: &(dyn StdError + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let part = cause.to_string();
        if !part.is_empty() && !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = cause.source();
    }
    text
}

impl ClientError {
    /// A [`ClientError::Store`] from any error, for
    /// [`CursorStore`](crate::CursorStore) implementations.
    pub fn store(error: impl Into<chat_core::BoxError>) -> Self {
        let error: chat_core::BoxError = error.into();
        ClientError::Store(flatten(error.as_ref()))
    }

    /// The server's error code, if this is a [`ClientError::Api`].
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Api(e) => Some(e.code),
            _ => None,
        }
    }

    /// The variant as a stable, machine-readable name: `api`, `http`,
    /// `websocket`, `closed`, `timeout`, `decode`, `store` or `config`.
    /// (For `api`, [`ClientError::code`] is the server's code.)
    pub fn kind(&self) -> &'static str {
        match self {
            ClientError::Api(_) => "api",
            ClientError::Http(_) => "http",
            ClientError::WebSocket(_) => "websocket",
            ClientError::Closed { .. } => "closed",
            ClientError::Timeout => "timeout",
            ClientError::Decode(_) => "decode",
            ClientError::Store(_) => "store",
            ClientError::Config(_) => "config",
        }
    }

    /// Whether the same call may succeed if tried again later unchanged.
    ///
    /// * `Api`: the server's `retryable` flag (`unavailable`, `rate_limited`).
    /// * `Http`, `WebSocket`, `Timeout`: yes (the network or the server may
    ///   come back).
    /// * `Closed`: unless the code is `1000` (closed on purpose) or in
    ///   `4100..=4199` (fix credentials or configuration first).
    /// * `Decode`, `Store`, `Config`: no.
    pub fn is_retryable(&self) -> bool {
        match self {
            ClientError::Api(e) => e.retryable,
            ClientError::Http(_) | ClientError::WebSocket(_) | ClientError::Timeout => true,
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

    /// Whether the server refused the credentials (HTTP 401, `unauthorized`
    /// reply, or close code 4100): logging in again may help, retrying as
    /// it is cannot.
    pub(crate) fn is_unauthorized(&self) -> bool {
        match self {
            ClientError::Api(e) => e.code == ErrorCode::Unauthorized,
            ClientError::Closed { code, .. } => *code == Some(close::UNAUTHORIZED),
            _ => false,
        }
    }
}

impl From<WireError> for ClientError {
    fn from(e: WireError) -> Self {
        ClientError::Api(e)
    }
}

/// The message hyper's HTTP connector gives for an `https://` URL when no
/// TLS backend is compiled in (a `reqwest::Client` of the application's
/// own, given to [`ChatClient::with_http_client`](crate::ChatClient::with_http_client)).
const NO_TLS: &str = "scheme is not http";

/// Whether `error`'s chain holds a server certificate that TLS refused
/// (unknown issuer, expired, another name): retrying cannot help until the
/// trusted roots ([`TlsOptions`](crate::TlsOptions)) or the server's
/// certificate change.
fn certificate_refused(error: &(dyn StdError + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(e) = next {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            if matches!(
                tls,
                rustls::Error::InvalidCertificate(_)
                    | rustls::Error::NoCertificatesPresented
                    | rustls::Error::UnsupportedNameType
            ) {
                return true;
            }
        }
        // An I/O error's own cause is not among its sources: look inside.
        if let Some(inner) = e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            let inner: &(dyn StdError + 'static) = inner;
            if certificate_refused(inner) {
                return true;
            }
        }
        next = e.source();
    }
    false
}

/// The configuration error of a refused certificate.
fn refused(text: String) -> ClientError {
    ClientError::Config(format!(
        "the server's TLS certificate was refused: {text} (trust its root with TlsOptions)"
    ))
}

impl From<reqwest::Error> for ClientError {
    fn from(e: reqwest::Error) -> Self {
        let text = flatten(&e);
        if e.is_timeout() {
            ClientError::Timeout
        } else if e.is_builder() {
            // A request that could not even be built: a bad URL or header.
            ClientError::Config(text)
        } else if certificate_refused(&e) {
            refused(text)
        } else if text.contains(NO_TLS) {
            ClientError::Config(format!(
                "{text} (an https:// URL needs TLS, which this build of reqwest does not include)"
            ))
        } else {
            ClientError::Http(text)
        }
    }
}

impl From<tungstenite::Error> for ClientError {
    fn from(e: tungstenite::Error) -> Self {
        match &e {
            // Connecting failed: the network, not the URL.
            tungstenite::Error::Url(tungstenite::error::UrlError::UnableToConnect(_)) => {
                ClientError::WebSocket(flatten(&e))
            }
            tungstenite::Error::Url(url) => {
                let hint = match url {
                    tungstenite::error::UrlError::TlsFeatureNotEnabled => {
                        " (a wss:// URL needs TLS, which this build of tokio-tungstenite does not include)"
                    }
                    _ => "",
                };
                ClientError::Config(format!("WebSocket URL: {}{hint}", flatten(&e)))
            }
            _ if certificate_refused(&e) => refused(flatten(&e)),
            _ => ClientError::WebSocket(flatten(&e)),
        }
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
        assert!(closed(Some(close::UNAUTHORIZED)).is_unauthorized());
        assert!(!closed(Some(1000)).is_retryable());
        assert!(!ClientError::decode("bad").is_retryable());
        assert!(!ClientError::store(std::io::Error::other("disk")).is_retryable());
        assert!(!ClientError::Config("bad url".into()).is_retryable());
        assert_eq!(
            ClientError::Api(WireError::new(ErrorCode::NotFound, "x")).code(),
            Some(ErrorCode::NotFound)
        );
        assert_eq!(ClientError::Config("x".into()).kind(), "config");
    }

    /// An error with a cause, as libraries build them.
    #[derive(Debug)]
    struct Outer(std::io::Error);
    impl std::fmt::Display for Outer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("error sending request")
        }
    }
    impl StdError for Outer {
        fn source(&self) -> Option<&(dyn StdError + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn messages_hold_each_cause_once_and_no_source() {
        let e = ClientError::store(Outer(std::io::Error::other("disk full")));
        assert_eq!(
            e.to_string(),
            "cursor store failed: error sending request: disk full"
        );
        assert!(e.source().is_none(), "the message is the whole story");
        // A cause whose text the outer message already holds is not repeated.
        let e = ClientError::store(Outer(std::io::Error::other("error sending request")));
        assert_eq!(e.to_string(), "cursor store failed: error sending request");
    }

    #[test]
    fn a_refused_certificate_is_a_configuration_error_wherever_it_hides() {
        let bad = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        // As tokio-rustls reports it: an I/O error around the rustls one.
        let io = std::io::Error::new(std::io::ErrorKind::InvalidData, bad);
        let e = ClientError::from(tungstenite::Error::Io(io));
        assert_eq!(e.kind(), "config", "{e}");
        assert!(!e.is_retryable());
        assert!(e.to_string().contains("certificate"), "{e}");
        let other =
            std::io::Error::new(std::io::ErrorKind::InvalidData, rustls::Error::DecryptError);
        assert!(ClientError::from(tungstenite::Error::Io(other)).is_retryable());
    }

    #[test]
    fn a_wss_url_without_tls_is_a_configuration_error() {
        let e = ClientError::from(tungstenite::Error::Url(
            tungstenite::error::UrlError::TlsFeatureNotEnabled,
        ));
        assert_eq!(e.kind(), "config", "{e}");
        assert!(!e.is_retryable());
        let e = ClientError::from(tungstenite::Error::ConnectionClosed);
        assert!(e.is_retryable(), "{e}");
    }
}
