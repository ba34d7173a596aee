//! The error type shared by every backend trait.

use std::error::Error as StdError;

/// A boxed error from a backend's own client library.
pub type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// Result alias for backend operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What a backend operation can fail with.
///
/// Callers branch on the variant; [`Error::is_temporary`] says whether the
/// same call may succeed if tried again later (a database that is restarting)
/// or never will (a duplicate username).
///
/// The message (`Display`) is the whole story: a backend failure's message
/// includes its cause's, and [`source`](std::error::Error::source) is
/// `None`, so a chain printed through `anyhow` or a log line shows each
/// cause once. The cause itself stays in [`Error::Backend::source`] for
/// callers that inspect it.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// The named thing does not exist.
    NotFound {
        /// What was looked for, e.g. "user", "channel".
        what: &'static str,
    },
    /// A thing with the same unique key already exists.
    AlreadyExists {
        /// What collided, e.g. "username".
        what: &'static str,
    },
    /// The request contradicts stored state, e.g. a retried send whose
    /// client message id was already used for different content.
    Conflict {
        /// Why the request conflicts.
        reason: String,
    },
    /// The caller is not allowed to do this (e.g. not a member of the channel).
    Forbidden {
        /// Why it is refused.
        reason: String,
    },
    /// The input is malformed or out of range.
    InvalidInput {
        /// What is wrong with it.
        reason: String,
    },
    /// A configured limit would be exceeded (group size, connections, ...).
    LimitExceeded {
        /// Which limit, with its value.
        limit: String,
    },
    /// A commit's proposed message id is not above the last id of its
    /// channel (another message of the channel was committed first, or the
    /// proposing node's clock is behind): nothing was written; propose an id
    /// above `last` ([`MessageIdGenerator::next_id_after`](crate::MessageIdGenerator::next_id_after))
    /// and commit again.
    StaleId {
        /// The channel's last id.
        last: crate::id::MessageId,
    },
    /// The other member of a direct channel has blocked the caller: their
    /// direct messages and a new direct channel with that user are refused.
    Blocked,
    /// The backend does not support this operation.
    Unsupported {
        /// The operation.
        operation: &'static str,
    },
    /// The backend failed: I/O, a lost connection, a timeout, corruption.
    Backend {
        /// Which backend, e.g. "fjall", "postgres".
        backend: &'static str,
        /// Whether retrying later can help (connection lost, timeout).
        temporary: bool,
        /// The underlying error.
        source: BoxError,
    },
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::NotFound { what } => write!(f, "{what} not found"),
            Error::AlreadyExists { what } => write!(f, "{what} already exists"),
            Error::Conflict { reason } => write!(f, "conflict: {reason}"),
            Error::Forbidden { reason } => write!(f, "forbidden: {reason}"),
            Error::InvalidInput { reason } => write!(f, "invalid input: {reason}"),
            Error::LimitExceeded { limit } => write!(f, "limit exceeded: {limit}"),
            Error::StaleId { last } => {
                write!(f, "message id is not above the channel's last id {last}")
            }
            Error::Blocked => write!(f, "blocked: this user does not take your direct messages"),
            Error::Unsupported { operation } => write!(f, "unsupported operation: {operation}"),
            Error::Backend {
                backend, source, ..
            } => {
                write!(f, "{backend} backend error: {source}")?;
                // The cause's own causes, each once.
                let mut text = source.to_string();
                let mut cause = source.source();
                while let Some(c) = cause {
                    let part = c.to_string();
                    if !part.is_empty() && !text.contains(&part) {
                        write!(f, ": {part}")?;
                        text.push_str(&part);
                    }
                    cause = c.source();
                }
                Ok(())
            }
        }
    }
}

/// No [`source`](StdError::source): the message already holds every cause.
impl StdError for Error {}

impl Error {
    /// Shorthand for [`Error::NotFound`].
    pub fn not_found(what: &'static str) -> Self {
        Error::NotFound { what }
    }

    /// Shorthand for [`Error::Forbidden`].
    pub fn forbidden(reason: impl Into<String>) -> Self {
        Error::Forbidden {
            reason: reason.into(),
        }
    }

    /// Shorthand for [`Error::InvalidInput`].
    pub fn invalid(reason: impl Into<String>) -> Self {
        Error::InvalidInput {
            reason: reason.into(),
        }
    }

    /// Shorthand for [`Error::Conflict`].
    pub fn conflict(reason: impl Into<String>) -> Self {
        Error::Conflict {
            reason: reason.into(),
        }
    }

    /// A permanent backend failure (corruption, a bug, a bad schema).
    pub fn backend(backend: &'static str, source: impl Into<BoxError>) -> Self {
        Error::Backend {
            backend,
            temporary: false,
            source: source.into(),
        }
    }

    /// A backend failure that may pass (connection refused, timeout).
    pub fn temporary(backend: &'static str, source: impl Into<BoxError>) -> Self {
        Error::Backend {
            backend,
            temporary: true,
            source: source.into(),
        }
    }

    /// Whether the same call may succeed if retried later.
    pub fn is_temporary(&self) -> bool {
        matches!(
            self,
            Error::Backend {
                temporary: true,
                ..
            }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_backend_error_says_everything_once_and_has_no_source() {
        let io = std::io::Error::other("disk full");
        let e = Error::temporary("fjall", io);
        assert_eq!(e.to_string(), "fjall backend error: disk full");
        assert!(e.source().is_none());
        assert!(e.is_temporary());
        assert_eq!(Error::not_found("user").to_string(), "user not found");
    }
}
