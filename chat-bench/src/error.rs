//! The tool's error type.

use std::io;

/// Why a scenario could not run (as opposed to running and finding a
/// correctness failure, which is in its report).
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// The run is impossible as asked (limits, addresses, arguments); the
    /// message says what to change.
    #[error("{0}")]
    Plan(String),
    /// The server or a backend refused or failed during setup.
    #[error("setup failed: {0}")]
    Setup(String),
    /// A WebSocket connection could not be opened or broke during setup.
    #[error("connection failed: {0}")]
    Connect(#[from] crate::wire::ConnError),
    /// A local I/O error (files, child processes).
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
    /// An HTTP call of the SDK failed.
    #[error("HTTP API error: {0}")]
    Client(#[from] chat_client::ClientError),
}

impl BenchError {
    /// A [`BenchError::Plan`] from anything printable.
    pub fn plan(msg: impl Into<String>) -> Self {
        Self::Plan(msg.into())
    }

    /// A [`BenchError::Setup`] from anything printable.
    pub fn setup(msg: impl Into<String>) -> Self {
        Self::Setup(msg.into())
    }
}

/// Result with a [`BenchError`].
pub type Result<T, E = BenchError> = std::result::Result<T, E>;
