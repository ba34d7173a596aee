//! # chat-cluster
//!
//! Cluster engines for the chat SDK, each behind a feature (none on by
//! default).
