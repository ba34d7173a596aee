//! # chat-store
//!
//! Storage backends for the chat SDK, and the test suite every backend must
//! pass.
//!
//! * [`embedded`] (feature `embedded`, on by default): [`EmbeddedStore`], one
//!   struct implementing [`HistoryStore`], [`Inbox`] and [`Directory`] on a
//!   local directory, durable and with no service to run. It is the default
//!   storage of the reference server.
//! * `postgres` (feature `postgres`, off by default): `PostgresStore`, the
//!   same three traits on a PostgreSQL database shared by any number of chat
//!   servers, with versioned migrations, a bounded connection pool, and
//!   errors that say whether a retry can help. See the module docs for the
//!   schema and the indexes.
//! * [`blobs`] (always compiled): `FsBlobStore`, the bytes of uploaded
//!   files in a local directory, and (feature `s3`) `S3BlobStore` in an
//!   S3-compatible bucket through `object_store`: both
//!   [`BlobStore`](chat_core::BlobStore)s.
//! * [`sharded`] (always compiled): [`sharded::ShardedHistory`] spreads
//!   chat history over N stores of any backend by a stable hash of the
//!   channel id (one channel, one shard, its order kept), and
//!   [`sharded::ShardedMessageStore`] joins it to the inboxes kept in one
//!   coordinating store.
//! * [`conformance`] (always compiled): public async functions that take a
//!   backend as a trait object and assert every clause of the trait
//!   contracts in `chat-core`, in the style of `object_store`'s integration
//!   suite. A new backend calls [`conformance::run_all`] from its own tests;
//!   this crate runs it against the in-memory backends of
//!   [`chat_core::memory`], against [`EmbeddedStore`], and (with the
//!   `postgres` feature and a server) against `PostgresStore`.
//!
//! ```no_run
//! # #[cfg(feature = "embedded")]
//! # async fn run() -> chat_core::Result<()> {
//! use std::sync::Arc;
//! use chat_store::embedded::EmbeddedStore;
//!
//! let store = Arc::new(EmbeddedStore::open("./chat-data")?);
//! // `store` is a HistoryStore, an Inbox and a Directory at once; hand the
//! // same Arc to each slot (the server's builder has `.storage(store)`).
//! # let _ = store;
//! # Ok(()) }
//! ```
//!
//! ## The `embedded` feature and why fjall
//!
//! The embedded store is built on [fjall](https://docs.rs/fjall/2), a pure
//! Rust log-structured merge (LSM) tree. Disable the feature
//! (`default-features = false`) to depend on the conformance suite alone,
//! for instance when writing another backend.
//!
//! fjall fits the data model of the chat design:
//!
//! * **Sorted keys.** History is keyed `channel_id ++ message_id` (big
//!   endian), so one channel's messages are one contiguous key range ordered
//!   by id: a page is a bounded range scan, forward or backward, and never
//!   touches another channel. Inboxes (`user ++ message_id`), friends,
//!   memberships and devices are prefix ranges in the same way.
//! * **Write-optimised.** Chat history is append-heavy and never updated:
//!   the workload LSM trees are built for, and the one the HBase/Cassandra
//!   design of large chat services picked for the same reason.
//! * **Atomic batches across partitions**, persisted through one journal: a
//!   message and its idempotency record, or a channel and its membership
//!   index, are written together or not at all.
//! * **No external service** and no C/C++ toolchain: `cargo build` is all.
//!
//! Alternatives considered:
//!
//! * **sled**: the long-running beta is unmaintained, with known space
//!   amplification and an on-disk format that was never stabilised.
//! * **redb**: a solid pure-Rust copy-on-write B-tree with ACID
//!   transactions and a single writer. It would work; an LSM tree simply
//!   suits append-heavy, range-read history better, and fjall's partitions
//!   map one-to-one onto the tables of the data model.
//! * **RocksDB** (`rust-rocksdb`): the reference LSM engine, but a large C++
//!   build (minutes on a 2-core machine) and a C toolchain requirement for
//!   every user of the SDK.
//!
//! [`HistoryStore`]: chat_core::HistoryStore
//! [`Inbox`]: chat_core::Inbox
//! [`Directory`]: chat_core::Directory
//! [`EmbeddedStore`]: crate::embedded::EmbeddedStore

pub mod blobs;
pub mod conformance;
#[cfg(feature = "embedded")]
pub mod embedded;
#[cfg(feature = "postgres")]
pub mod postgres;
pub mod sharded;
