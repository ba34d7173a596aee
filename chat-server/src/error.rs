//! The error of the server's own calls: building, serving, advertising, and
//! the token secret.

/// What starting or running a [`ChatServer`](crate::ChatServer) can fail
/// with.
///
/// [`ServerError::code`] names the variant as a stable string;
/// [`ServerError::is_retryable`] says whether trying again unchanged can
/// help (never for [`ServerError::Config`]). The message (`Display`) holds
/// every cause once and [`source`](std::error::Error::source) is `None`,
/// so nothing is repeated when the error is printed through `anyhow`.
/// (Errors of requests, as clients see them, are
/// [`WireError`](chat_core::protocol::WireError)s.)
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// The configuration cannot work: [`ServerConfig::validate`] refused
    /// it, or a token secret file is too short. Fix it; retrying cannot
    /// help.
    ///
    /// [`ServerConfig::validate`]: crate::ServerConfig::validate
    #[error("invalid server configuration: {0}")]
    Config(String),
    /// A backend failed: attaching to the delivery bus, registering in
    /// discovery. Retryable when the backend's error is temporary.
    #[error("{0}")]
    Backend(chat_core::Error),
    /// A file or socket operation failed.
    #[error("{context}: {error}")]
    Io {
        /// What was being done, e.g. "cannot read the token secret /etc/chat/secret".
        context: String,
        /// The operating system's error.
        error: std::io::Error,
    },
}

impl ServerError {
    /// An I/O error with what was being done.
    pub(crate) fn io(context: impl Into<String>, error: std::io::Error) -> Self {
        ServerError::Io {
            context: context.into(),
            error,
        }
    }

    /// The variant as a stable name: `config`, `backend` or `io`.
    pub fn code(&self) -> &'static str {
        match self {
            ServerError::Config(_) => "config",
            ServerError::Backend(_) => "backend",
            ServerError::Io { .. } => "io",
        }
    }

    /// Whether the same call may succeed if tried again later unchanged: a
    /// temporary backend failure, or an I/O error other than a missing
    /// file, a refused permission or bad data.
    pub fn is_retryable(&self) -> bool {
        use std::io::ErrorKind;
        match self {
            ServerError::Config(_) => false,
            ServerError::Backend(e) => e.is_temporary(),
            ServerError::Io { error, .. } => !matches!(
                error.kind(),
                ErrorKind::NotFound
                    | ErrorKind::PermissionDenied
                    | ErrorKind::InvalidInput
                    | ErrorKind::InvalidData
                    | ErrorKind::AlreadyExists
                    | ErrorKind::Unsupported
                    | ErrorKind::AddrNotAvailable
            ),
        }
    }
}

impl From<chat_core::Error> for ServerError {
    fn from(e: chat_core::Error) -> Self {
        match e {
            chat_core::Error::InvalidInput { reason } => ServerError::Config(reason),
            other => ServerError::Backend(other),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use super::*;

    #[test]
    fn codes_retryability_and_messages() {
        let config = ServerError::Config("token_secret must be at least 32 bytes".into());
        assert_eq!(config.code(), "config");
        assert!(!config.is_retryable());
        let down = ServerError::from(chat_core::Error::temporary(
            "nats",
            std::io::Error::other("connection refused"),
        ));
        assert_eq!(down.code(), "backend");
        assert!(down.is_retryable());
        assert_eq!(down.to_string(), "nats backend error: connection refused");
        assert!(down.source().is_none(), "the message is the whole story");
        let io = ServerError::io(
            "cannot bind 127.0.0.1:80",
            std::io::Error::from(std::io::ErrorKind::PermissionDenied),
        );
        assert!(!io.is_retryable());
        assert!(io.source().is_none());
        assert!(
            io.to_string().starts_with("cannot bind 127.0.0.1:80: "),
            "{io}"
        );
    }
}
