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
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The named thing does not exist.
    #[error("{what} not found")]
    NotFound {
        /// What was looked for, e.g. "user", "channel".
        what: &'static str,
    },
    /// A thing with the same unique key already exists.
    #[error("{what} already exists")]
    AlreadyExists {
        /// What collided, e.g. "username".
        what: &'static str,
    },
    /// The request contradicts stored state, e.g. a retried send whose
    /// client message id was already used for different content.
    #[error("conflict: {reason}")]
    Conflict {
        /// Why the request conflicts.
        reason: String,
    },
    /// The caller is not allowed to do this (e.g. not a member of the channel).
    #[error("forbidden: {reason}")]
    Forbidden {
        /// Why it is refused.
        reason: String,
    },
    /// The input is malformed or out of range.
    #[error("invalid input: {reason}")]
    InvalidInput {
        /// What is wrong with it.
        reason: String,
    },
    /// A configured limit would be exceeded (group size, connections, ...).
    #[error("limit exceeded: {limit}")]
    LimitExceeded {
        /// Which limit, with its value.
        limit: String,
    },
    /// A commit's proposed message id is not above the last id of its
    /// channel (another message of the channel was committed first, or the
    /// proposing node's clock is behind): nothing was written; propose an id
    /// above `last` ([`MessageIdGenerator::next_id_after`](crate::MessageIdGenerator::next_id_after))
    /// and commit again.
    #[error("message id is not above the channel's last id {last}")]
    StaleId {
        /// The channel's last id.
        last: crate::id::MessageId,
    },
    /// The backend does not support this operation.
    #[error("unsupported operation: {operation}")]
    Unsupported {
        /// The operation.
        operation: &'static str,
    },
    /// The backend failed: I/O, a lost connection, a timeout, corruption.
    #[error("{backend} backend error: {source}")]
    Backend {
        /// Which backend, e.g. "fjall", "postgres".
        backend: &'static str,
        /// Whether retrying later can help (connection lost, timeout).
        temporary: bool,
        /// The underlying error.
        #[source]
        source: BoxError,
    },
}

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
