//! The PostgreSQL backend: [`PostgresStore`], on `tokio-postgres` with a
//! `deadpool-postgres` connection pool (feature `postgres`, off by default).
//!
//! One [`PostgresStore`] implements [`HistoryStore`], [`Inbox`] and
//! [`Directory`] over one schema of one database, so several chat servers
//! can share the same data: every rule that needs atomicity across servers
//! (idempotent appends, unique usernames, group size limits, monotonic
//! cursors) is enforced by the database itself, never by a lock in one
//! process.
//!
//! ```no_run
//! # async fn run() -> chat_core::Result<()> {
//! use std::sync::Arc;
//! use chat_store::postgres::{PostgresConfig, PostgresStore};
//!
//! let config = PostgresConfig::new("postgres://chat@db.internal/chat").with_schema("chat");
//! let store = Arc::new(PostgresStore::connect(config).await?);
//! // A HistoryStore, an Inbox and a Directory at once, like the embedded store.
//! # let _ = store;
//! # Ok(()) }
//! ```
//!
//! # Schema
//!
//! Every table lives in one schema ([`PostgresConfig::schema`], `public` if
//! unset), so several deployments or test runs can share a database. Ids
//! are `uuid` columns; times are Unix milliseconds in `bigint` (the `u64`
//! bit-cast to `i64`: lossless, and every realistic time reads as itself).
//!
//! | table | columns | keys and indexes |
//! |---|---|---|
//! | `messages` | `channel_id uuid, message_id bigint, sender uuid, content text, created_at bigint, client_msg_id text` | `PRIMARY KEY (channel_id, message_id)`; `UNIQUE (channel_id, sender, client_msg_id)` |
//! | `inbox` | `user_id uuid, message_id bigint`, and a copy of the message's other columns | `PRIMARY KEY (user_id, message_id)` |
//! | `cursors` | `user_id uuid, device_id uuid, cursor bigint` | `PRIMARY KEY (user_id, device_id)` |
//! | `users` | `user_id uuid, username text, display_name text, about text, created_at bigint, password_hash text, who_may_add text, hide_last_seen boolean, token_epoch bigint` | `PRIMARY KEY (user_id)`; `UNIQUE (username)` |
//! | `friends` | `user_id uuid, friend_id uuid` (both directions) | `PRIMARY KEY (user_id, friend_id)`; both reference `users` |
//! | `friend_requests` | `from_user uuid, to_user uuid, created_at bigint` | `PRIMARY KEY (from_user, to_user)`; index `(to_user, from_user)` |
//! | `channels` | `channel_id uuid, kind text, name text, owner uuid, created_at bigint` | `PRIMARY KEY (channel_id)`; index `(owner)` |
//! | `invitations` | `user_id uuid` (invitee), `channel_id uuid, inviter uuid, created_at bigint` | `PRIMARY KEY (user_id, channel_id)`; index `(inviter, user_id, channel_id)` |
//! | `revoked_sessions` | `user_id uuid, session_id bigint, until bigint` | `PRIMARY KEY (user_id, session_id)` |
//! | `channel_members` | `channel_id uuid, user_id uuid` | `PRIMARY KEY (channel_id, user_id)`; index `(user_id, channel_id)` |
//! | `devices` | `user_id uuid, device_id uuid, platform text, push_token text, created_at bigint` | `PRIMARY KEY (user_id, device_id)` |
//! | `schema_migrations` | `version integer, name text, applied_at timestamptz` | `PRIMARY KEY (version)` |
//!
//! `kind` and `platform` hold the serde names (`direct`, `group`, `ios`,
//! ...), as on the wire.
//!
//! ## Message ids in a `bigint`
//!
//! Message ids (and cursors) are `u64`; PostgreSQL has no unsigned 64-bit
//! type. They are stored as `(id as i64) ^ i64::MIN`: the sign bit flipped,
//! which is the same as `id - 2^63`. The mapping is a bijection and
//! **order-preserving** (`0` ↦ `i64::MIN`, `2^63` ↦ `0`, `u64::MAX` ↦
//! `i64::MAX`), so `ORDER BY message_id`, `<`, `>`, `BETWEEN` and
//! `GREATEST` on the column all follow `u64` order, ids above 2^63
//! included. (A plain bit-cast would sort every id above 2^63 before the
//! others.) Read such a column by hand with
//! `message_id::numeric + 9223372036854775808`.
//!
//! ## Why these indexes serve the access patterns
//!
//! All reads are one B-tree range scan of a primary key, already in the
//! order they return, with no sort and no join to another table:
//!
//! * **Latest page** of a channel: `WHERE channel_id = $1 ORDER BY
//!   message_id DESC LIMIT n` is a backward scan of `messages_pkey` that
//!   starts at the channel's newest entry and stops after `n` rows.
//! * **Page before an id**: the same backward scan, started at
//!   `(channel_id, id)`. **Page after an id** is the forward scan. Both are
//!   bounded by `message_id BETWEEN lo AND hi` and read only `n` entries.
//! * **Jump to an id**: `(channel_id, message_id)` equality, one index
//!   lookup.
//! * A channel's messages are one contiguous range of `messages_pkey`, so
//!   no page ever reads another channel's entries.
//! * **Idempotency**: the unique index on `(channel_id, sender,
//!   client_msg_id)` is the idempotency record; it leads with the channel,
//!   so a channel's records stay with its messages (on its shard, when
//!   history is sharded). Two servers racing on the same retry both run
//!   `INSERT ... ON CONFLICT DO NOTHING`; the database lets exactly one in,
//!   the other waits for it to commit, then reads the original through that
//!   index and applies [`rules::check_duplicate`](chat_core::rules::check_duplicate).
//! * **Sync an inbox after a cursor**: `WHERE user_id = $1 AND message_id >
//!   $2 ORDER BY message_id LIMIT n` is a forward scan of `inbox_pkey`.
//!   Inbox rows copy the message (fan-out on write, as in the design), so a
//!   sync never joins `messages`, and an inbox may hold a message the
//!   history does not (the `Inbox` contract is independent of history).
//!   A push to `N` recipients is one `INSERT ... SELECT FROM unnest($1)
//!   ON CONFLICT DO NOTHING`, inserting in recipient order so concurrent
//!   pushes never deadlock.
//! * **Cursors**: an upsert on `cursors_pkey` that keeps
//!   `GREATEST(stored, given)`, atomic under concurrent acks.
//! * **Directory**: a username lookup (login) uses `users_username_key`;
//!   `friends(user)` and `devices(user)` are prefix ranges of their primary
//!   keys, already sorted by the second id; a channel's members are a
//!   prefix range of `channel_members_pkey`, sorted by user; `channels_of`
//!   is a prefix range of `channel_members_by_user`, sorted by channel.
//!
//! # Atomicity across servers
//!
//! * `append`: one `INSERT ... ON CONFLICT DO NOTHING` against both unique
//!   indexes; when it inserts nothing, the original is read by its key and
//!   the shared rule decides `Duplicate` or `Conflict` (no key match means
//!   the id itself collided: `Conflict`).
//! * `create_user`: `INSERT ... ON CONFLICT DO NOTHING`; the username index
//!   makes exactly one of several racing servers win.
//! * `add_member` / `remove_member`: one transaction that locks the channel
//!   row (`SELECT ... FOR UPDATE`), reads the members, applies
//!   [`rules::apply_membership`](chat_core::rules::apply_membership) and
//!   writes the change, so the member limit holds however many servers add
//!   members at once.
//! * `create_channel`: the channel row and its members in one transaction;
//!   `ON CONFLICT (channel_id) DO NOTHING` lets two servers opening the same
//!   direct channel agree on one.
//! * Friend requests, invitations, membership changes, device registrations
//!   and token revocations lock the rows of the users concerned (`FOR NO
//!   KEY UPDATE`, in id order, in one statement), then count and write in
//!   the same transaction: per-user caps hold across servers, and a request
//!   racing its acceptance, decline or cancel is serialised. Locks follow
//!   the order of `commit_messages`: a channel's row (a membership change
//!   locks it first) before any user's, so no cycle of waits forms.
//! * Reads that span tables (`channel`, `channels_of`, `contacts`,
//!   `invitations`) are one statement, so one snapshot.
//!
//! # Durability
//!
//! A method returns `Ok` only after its transaction committed; with
//! PostgreSQL's default `synchronous_commit = on` the commit record is
//! flushed to the WAL before that, so nothing acknowledged is lost in a
//! crash. A row that another session can see is committed, which is what
//! makes the no-write answers (`Duplicate`, a push already done) safe to
//! acknowledge. Running the server with `synchronous_commit = off` trades
//! that guarantee away.
//!
//! # Connections, timeouts and errors
//!
//! * A bounded pool ([`PostgresConfig::pool_size`]) of connections, each
//!   opened with `search_path` set to the schema, `statement_timeout` and
//!   `idle_in_transaction_session_timeout` in the startup packet (so a
//!   connection pooler in front must pass startup options through; the
//!   migration step checks that it did), and
//!   [`PostgresConfig::application_name`].
//! * A connection is checked with a trivial query before each use
//!   (`RecyclingMethod::Verified`), so one the server closed (a restart, a
//!   failover, `pg_terminate_backend`) is replaced before it is handed out:
//!   the store recovers by itself when the database comes back.
//! * **No call hangs**: waiting for a pooled connection and opening one are
//!   bounded by [`PostgresConfig::connect_timeout`], each statement by
//!   [`PostgresConfig::statement_timeout`] (on the server), and every call
//!   as a whole by their sum (on the client, which also covers a server that
//!   stops answering). A connection whose call ran out of time is closed,
//!   not reused.
//! * **Errors**: a refused or lost connection, a pool or call timeout, a
//!   server shutting down or starting up, a cancelled statement
//!   (`statement_timeout`), a deadlock or serialization failure, or a lack
//!   of resources is `Error::Backend { temporary: true, .. }`
//!   ([`Error::is_temporary`](chat_core::Error::is_temporary)): the chat
//!   server answers `unavailable`, retryable, and acknowledges nothing.
//!   Anything else (a bad schema, wrong credentials, corrupt data) is a
//!   permanent backend error. Unique and foreign-key violations become
//!   `AlreadyExists` and `NotFound` where they can occur at all.
//!
//! # Migrations
//!
//! The schema is versioned: `schema_migrations` lists the applied versions
//! and every build carries its migrations (see the `schema` source file). [`PostgresStore::connect`]
//! applies the pending ones in one transaction holding a transaction-scoped
//! advisory lock (`pg_advisory_xact_lock`) keyed by the schema name, so
//! several servers starting at once apply each migration exactly once; the
//! others wait, then find nothing to do. A schema at a newer version than
//! the build knows is refused. [`PostgresStore::connect_lazy`] defers this
//! to the first call, so a server can start while the database is down.
//!
//! [`HistoryStore`]: chat_core::HistoryStore
//! [`Inbox`]: chat_core::Inbox
//! [`Directory`]: chat_core::Directory

mod attachments;
mod change;
mod commit;
mod directory;
mod history;
mod inbox;
#[cfg(test)]
mod plans;
mod receipts;
mod schema;
mod search;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use chat_core::{ClientMsgId, Error, Message, MessageId, Result};
use deadpool_postgres::{
    Manager, ManagerConfig, Object, Pool, PoolError, RecyclingMethod, Runtime, TimeoutType,
};
use tokio::time::{timeout_at, Instant};
use tokio_postgres::error::SqlState;
use tokio_postgres::{NoTls, Row};

/// Name of the backend in [`Error::Backend`].
const BACKEND: &str = "postgres";

/// Largest [`PostgresConfig::pool_size`] accepted: far above what one
/// PostgreSQL server serves well (its default `max_connections` is 100).
pub const MAX_POOL_SIZE: usize = 1_024;

/// How to reach the database, and the limits of the pool.
///
/// Build it with [`PostgresConfig::new`] and the `with_*` methods, or as a
/// struct literal with `..PostgresConfig::new(url)`.
#[derive(Clone)]
pub struct PostgresConfig {
    /// Connection URL, `postgres://user:password@host:port/database`, or a
    /// `key=value` connection string (anything `tokio_postgres::Config`
    /// parses). TLS is not supported: connect over a trusted network or a
    /// local socket.
    pub url: String,
    /// The schema holding every table, created if missing; `None` is
    /// `public`. 1 to 63 characters of `a-z`, `0-9` and `_`, not starting
    /// with a digit. Give each deployment (or test) its own.
    pub schema: Option<String>,
    /// Most connections the pool opens (1 to [`MAX_POOL_SIZE`]; default 16).
    /// Calls beyond it wait for a free connection, up to
    /// [`connect_timeout`](Self::connect_timeout).
    pub pool_size: usize,
    /// Bound on opening a connection and on waiting for a free one from the
    /// pool (default 5 s).
    pub connect_timeout: Duration,
    /// Server-side `statement_timeout` of every statement (default 5 s).
    /// Each call as a whole is bounded by `connect_timeout +
    /// statement_timeout`.
    pub statement_timeout: Duration,
    /// Bound on applying migrations, including the wait for another server
    /// that is applying them (default 60 s).
    pub migration_timeout: Duration,
    /// The `application_name` of every connection, as shown in
    /// `pg_stat_activity` (default `chat-store`).
    pub application_name: String,
}

impl PostgresConfig {
    /// A configuration with the defaults: schema `public`, 16 connections,
    /// 5 s timeouts, 60 s for migrations, application name `chat-store`.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            schema: None,
            pool_size: 16,
            connect_timeout: Duration::from_secs(5),
            statement_timeout: Duration::from_secs(5),
            migration_timeout: Duration::from_secs(60),
            application_name: "chat-store".into(),
        }
    }

    /// Sets [`schema`](Self::schema).
    pub fn with_schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = Some(schema.into());
        self
    }

    /// Sets [`pool_size`](Self::pool_size).
    pub fn with_pool_size(mut self, pool_size: usize) -> Self {
        self.pool_size = pool_size;
        self
    }

    /// Sets [`connect_timeout`](Self::connect_timeout).
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Sets [`statement_timeout`](Self::statement_timeout).
    pub fn with_statement_timeout(mut self, timeout: Duration) -> Self {
        self.statement_timeout = timeout;
        self
    }

    /// Sets [`migration_timeout`](Self::migration_timeout).
    pub fn with_migration_timeout(mut self, timeout: Duration) -> Self {
        self.migration_timeout = timeout;
        self
    }

    /// Sets [`application_name`](Self::application_name).
    pub fn with_application_name(mut self, name: impl Into<String>) -> Self {
        self.application_name = name.into();
        self
    }

    /// The schema name, `public` if unset.
    fn schema_name(&self) -> &str {
        self.schema.as_deref().unwrap_or("public")
    }
}

impl fmt::Debug for PostgresConfig {
    /// Like a derived `Debug`, with the URL's password hidden.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresConfig")
            .field("url", &redact_url(&self.url))
            .field("schema", &self.schema)
            .field("pool_size", &self.pool_size)
            .field("connect_timeout", &self.connect_timeout)
            .field("statement_timeout", &self.statement_timeout)
            .field("migration_timeout", &self.migration_timeout)
            .field("application_name", &self.application_name)
            .finish()
    }
}

/// The URL with the password of a `scheme://user:password@host` form
/// replaced by `***` (and a `password=` key of a connection string).
fn redact_url(url: &str) -> String {
    if let Some((scheme, rest)) = url.split_once("://") {
        if let Some((userinfo, host)) = rest.rsplit_once('@') {
            if let Some((user, _)) = userinfo.split_once(':') {
                return format!("{scheme}://{user}:***@{host}");
            }
        }
        return url.to_owned();
    }
    url.split_whitespace()
        .map(|kv| {
            if kv.starts_with("password=") {
                "password=***"
            } else {
                kv
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The PostgreSQL store: chat history, inboxes and cursors, and the
/// directory, in one schema of one database, shared by any number of chat
/// servers.
///
/// Cloning is cheap (an [`Arc`]); clones share the pool. See the
/// [module docs](self) for the schema, atomicity, timeouts and errors.
#[derive(Clone)]
pub struct PostgresStore {
    inner: Arc<Inner>,
}

/// The pool and what every call needs.
struct Inner {
    pool: Pool,
    schema: String,
    /// Bound on one call: pool wait (or connect) plus statement time.
    call_timeout: Duration,
    /// Bound on applying migrations, connection included.
    migration_timeout: Duration,
    /// Server-side `statement_timeout` of the migration statements.
    migration_statement_ms: u64,
    /// Whether the migrations are applied, and the one attempt under way.
    migration: MigrationState,
    /// Message commits waiting to go to the database in a batch.
    commits: commit::Batcher,
}

/// The migration step of one store: at most one attempt runs at a time, in
/// its own task, and every call waiting for it is woken when it ends.
#[derive(Debug, Default)]
struct MigrationState {
    /// Set for good once an attempt succeeded.
    done: AtomicBool,
    /// An attempt is under way.
    running: AtomicBool,
    /// Woken when an attempt ends.
    finished: tokio::sync::Notify,
    /// How the last attempt failed: whether temporary, and why.
    last_error: Mutex<Option<(bool, String)>>,
}

impl fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let status = self.inner.pool.status();
        f.debug_struct("PostgresStore")
            .field("schema", &self.inner.schema)
            .field("pool_max_size", &status.max_size)
            .field("pool_size", &status.size)
            .field("pool_available", &status.available)
            .field(
                "migrated",
                &self.inner.migration.done.load(Ordering::Acquire),
            )
            .finish_non_exhaustive()
    }
}

/// A boxed future borrowing a connection, as the closures given to
/// [`PostgresStore::run`] return.
type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

impl PostgresStore {
    /// Connects, and applies any pending migrations before returning.
    ///
    /// Must be called from inside a tokio runtime.
    ///
    /// # Errors
    ///
    /// * [`Error::InvalidInput`] for a malformed configuration (URL, schema
    ///   name, pool size, a zero timeout).
    /// * A temporary [`Error::Backend`] if the database cannot be reached
    ///   within the timeouts (retry later).
    /// * A permanent [`Error::Backend`] if the database refuses the
    ///   connection (credentials, unknown database), the schema is newer
    ///   than this build, or a migration fails.
    pub async fn connect(config: PostgresConfig) -> Result<Self> {
        let store = Self::connect_lazy(config)?;
        store.migrate().await?;
        Ok(store)
    }

    /// Builds the store without touching the database: connections are
    /// opened on demand, and pending migrations are applied by the first
    /// call (every call waits for them). A server can so start while the
    /// database is down and answer `unavailable` until it is back.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] for a malformed configuration.
    pub fn connect_lazy(config: PostgresConfig) -> Result<Self> {
        let schema = config.schema_name().to_owned();
        validate_schema_name(&schema)?;
        if config.pool_size == 0 || config.pool_size > MAX_POOL_SIZE {
            return Err(Error::invalid(format!(
                "pool_size must be 1 to {MAX_POOL_SIZE}, not {}",
                config.pool_size
            )));
        }
        let statement_ms = positive_millis(config.statement_timeout, "statement_timeout")?;
        positive_millis(config.connect_timeout, "connect_timeout")?;
        let migration_statement_ms =
            positive_millis(config.migration_timeout, "migration_timeout")?;

        let mut pg = tokio_postgres::Config::from_str(&config.url)
            .map_err(|e| Error::invalid(format!("invalid PostgreSQL URL: {e}")))?;
        // Session settings travel in the startup packet: no extra round trip
        // per connection. The schema name is validated above, so it needs
        // no quoting or escaping here.
        let mut options = format!(
            "-c search_path={schema} -c statement_timeout={statement_ms} \
             -c idle_in_transaction_session_timeout={}",
            statement_ms.saturating_mul(2)
        );
        if let Some(own) = pg.get_options() {
            options = format!("{own} {options}");
        }
        pg.options(options)
            .application_name(config.application_name.clone())
            .connect_timeout(config.connect_timeout);

        let manager = Manager::from_config(
            pg,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Verified,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(config.pool_size)
            .wait_timeout(Some(config.connect_timeout))
            .create_timeout(Some(config.connect_timeout))
            .recycle_timeout(Some(config.connect_timeout))
            .runtime(Runtime::Tokio1)
            .build()
            .map_err(|e| Error::backend(BACKEND, format!("cannot build the pool: {e}")))?;
        Ok(Self {
            inner: Arc::new(Inner {
                pool,
                schema,
                call_timeout: config.connect_timeout + config.statement_timeout,
                migration_timeout: config.migration_timeout + config.connect_timeout,
                migration_statement_ms,
                migration: MigrationState::default(),
                commits: commit::Batcher::new(config.pool_size),
            }),
        })
    }

    /// The schema this store reads and writes.
    pub fn schema(&self) -> &str {
        &self.inner.schema
    }

    /// Applies pending migrations now, if this store has not yet done so
    /// (a no-op after [`connect`](Self::connect)).
    ///
    /// # Errors
    ///
    /// As for [`connect`](Self::connect).
    pub async fn migrate(&self) -> Result<()> {
        // A little past the attempt's own bound, so its error (not a
        // generic timeout) is what the caller sees.
        let grace = Duration::from_millis(100);
        self.ensure_migrated(Instant::now() + self.inner.migration_timeout + grace)
            .await
    }

    /// Waits (until `deadline`) for the migrations to be applied, starting
    /// an attempt if none is under way. The attempt runs in its own task,
    /// bounded by the migration timeout: a caller that gives up does not
    /// abort it half-way, and however many calls wait (say while the
    /// database is down), one attempt runs at a time.
    async fn ensure_migrated(&self, deadline: Instant) -> Result<()> {
        let state = &self.inner.migration;
        if state.done.load(Ordering::Acquire) {
            return Ok(());
        }
        // Registered before the check below, so an attempt that ends in
        // between still wakes this call.
        let finished = state.finished.notified();
        if !state.running.swap(true, Ordering::AcqRel) {
            let inner = self.inner.clone();
            tokio::spawn(async move {
                let bound = inner.migration_timeout;
                let result = match tokio::time::timeout(bound, schema::migrate(&inner)).await {
                    Ok(result) => result,
                    Err(_) => Err(Error::temporary(
                        BACKEND,
                        format!("migrations did not finish within {bound:?}"),
                    )),
                };
                let state = &inner.migration;
                match result {
                    Ok(()) => state.done.store(true, Ordering::Release),
                    Err(e) => {
                        let why = match &e {
                            Error::Backend { source, .. } => source.to_string(),
                            other => other.to_string(),
                        };
                        tracing::warn!(schema = %inner.schema, error = %why, "migrations failed");
                        *lock(&state.last_error) = Some((e.is_temporary(), why));
                    }
                }
                state.running.store(false, Ordering::Release);
                state.finished.notify_waiters();
            });
        }
        if timeout_at(deadline, finished).await.is_err() {
            return Err(Error::temporary(
                BACKEND,
                "timed out waiting for the schema migrations",
            ));
        }
        if state.done.load(Ordering::Acquire) {
            return Ok(());
        }
        let (temporary, why) = lock(&state.last_error)
            .clone()
            .unwrap_or((true, "migrations failed".to_owned()));
        let why = format!("cannot apply the schema migrations: {why}");
        Err(if temporary {
            Error::temporary(BACKEND, why)
        } else {
            Error::backend(BACKEND, why)
        })
    }

    /// Runs `op` on a pooled connection, within the call's time bound.
    ///
    /// Migrations are applied first if needed. If the bound passes while
    /// `op` runs, the connection is closed rather than returned to the pool
    /// (it may still be busy with the abandoned statement).
    async fn run<T, F>(&self, op: F) -> Result<T>
    where
        T: Send,
        F: for<'c> FnOnce(&'c mut Object) -> BoxFuture<'c, Result<T>> + Send,
    {
        let deadline = Instant::now() + self.inner.call_timeout;
        self.ensure_migrated(deadline).await?;
        let mut client = match timeout_at(deadline, self.inner.pool.get()).await {
            Ok(Ok(client)) => client,
            Ok(Err(e)) => return Err(pool_error(e)),
            Err(_) => return Err(self.timed_out()),
        };
        match timeout_at(deadline, op(&mut client)).await {
            Ok(result) => result,
            Err(_) => {
                drop(Object::take(client));
                Err(self.timed_out())
            }
        }
    }

    fn timed_out(&self) -> Error {
        Error::temporary(
            BACKEND,
            format!(
                "no answer from the database within {:?}",
                self.inner.call_timeout
            ),
        )
    }
}

/// Locks a mutex, recovering from poisoning: the data behind it is only
/// ever replaced whole.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Checks a schema name: 1 to 63 of `a-z 0-9 _`, not starting with a digit,
/// so it needs no quoting anywhere (SQL or startup options).
fn validate_schema_name(name: &str) -> Result<()> {
    let ok = (1..=63).contains(&name.len())
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "schema name {name:?} must be 1 to 63 characters of a-z, 0-9 and '_', not starting with a digit"
        )))
    }
}

/// A timeout in whole milliseconds, at least 1 (0 would mean "none" to
/// PostgreSQL).
fn positive_millis(d: Duration, what: &str) -> Result<u64> {
    let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    if ms == 0 {
        return Err(Error::invalid(format!("{what} must be at least 1 ms")));
    }
    Ok(ms)
}

// ---------------------------------------------------------------------------
// Value mappings.

/// A message id as stored: the sign bit flipped, so `bigint` order is `u64`
/// order (see the module docs).
pub(crate) fn id_to_sql(id: MessageId) -> i64 {
    (id.0 as i64) ^ i64::MIN
}

/// The inverse of [`id_to_sql`].
pub(crate) fn id_from_sql(stored: i64) -> MessageId {
    MessageId((stored ^ i64::MIN) as u64)
}

/// A time (Unix milliseconds) as stored: the bits of the `u64`, so every
/// time before the year 292,278,994 reads as itself.
fn time_to_sql(ms: u64) -> i64 {
    ms as i64
}

/// The inverse of [`time_to_sql`].
fn time_from_sql(stored: i64) -> u64 {
    stored as u64
}

/// A limit as a `LIMIT` parameter.
fn limit_to_sql(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

/// The columns of a message, in the order [`message_from_row`] reads them.
macro_rules! message_columns {
    () => {
        "channel_id, message_id, sender, content, created_at, client_msg_id, reply_to, attachments"
    };
}
use message_columns;

/// Decodes the [`message_columns!`] of a row.
fn message_from_row(row: &Row) -> Result<Message> {
    let client_msg_id: String = row.try_get(5).map_err(pg_error)?;
    Ok(Message {
        channel_id: chat_core::ChannelId(row.try_get(0).map_err(pg_error)?),
        id: id_from_sql(row.try_get(1).map_err(pg_error)?),
        sender: chat_core::UserId(row.try_get(2).map_err(pg_error)?),
        content: row.try_get(3).map_err(pg_error)?,
        created_at: time_from_sql(row.try_get(4).map_err(pg_error)?),
        client_msg_id: ClientMsgId::new(client_msg_id)
            .map_err(|e| corrupt("message", format!("client_msg_id: {e}")))?,
        reply_to: row
            .try_get::<_, Option<i64>>(6)
            .map_err(pg_error)?
            .map(id_from_sql),
        // Queries of messages that may have changed also select these.
        edited_at: match column(row, "edited_at") {
            Some(i) => row
                .try_get::<_, Option<i64>>(i)
                .map_err(pg_error)?
                .map(time_from_sql),
            None => None,
        },
        deleted: match column(row, "deleted") {
            Some(i) => row.try_get(i).map_err(pg_error)?,
            None => false,
        },
        reactions: Vec::new(),
        attachments: attachments_from_sql(row.try_get(7).map_err(pg_error)?)?,
    })
}

/// The index of the column named `name`, if the row has one.
fn column(row: &Row, name: &str) -> Option<usize> {
    row.columns().iter().position(|c| c.name() == name)
}

/// A message's attachments as stored: their JSON array, `NULL` for none.
fn attachments_to_sql(attachments: &[chat_core::Attachment]) -> Option<String> {
    if attachments.is_empty() {
        None
    } else {
        // Plain data: serializing it cannot fail.
        serde_json::to_string(attachments).ok()
    }
}

/// The attachments of a stored JSON array (`NULL`: none).
fn attachments_from_sql(text: Option<String>) -> Result<Vec<chat_core::Attachment>> {
    match text {
        None => Ok(Vec::new()),
        Some(t) => {
            serde_json::from_str(&t).map_err(|e| corrupt("message", format!("attachments: {e}")))
        }
    }
}

/// The page a budgeted query (one with the message columns first and its
/// content `NULL` past the byte budget, asked for `limit + 1` rows) holds:
/// the rows up to `limit` whose content came back, and whether any row was
/// left out (past the limit or the budget).
fn within_budget<T>(
    rows: &[Row],
    limit: usize,
    decode: impl Fn(&Row) -> Result<T>,
) -> Result<chat_core::Paged<T>> {
    let mut items = Vec::with_capacity(rows.len().min(limit));
    for row in rows {
        let content: Option<&str> = row.try_get(3).map_err(pg_error)?;
        if items.len() == limit || content.is_none() {
            return Ok(chat_core::Paged {
                items,
                has_more: true,
            });
        }
        items.push(decode(row)?);
    }
    Ok(chat_core::Paged {
        items,
        has_more: false,
    })
}

/// Stored data that does not decode.
fn corrupt(what: &str, detail: impl fmt::Display) -> Error {
    Error::backend(BACKEND, format!("corrupt {what} row: {detail}"))
}

/// A serde unit enum (`ChannelKind`, `Platform`) as its wire name.
fn enum_to_text<T: serde::Serialize>(value: &T) -> Result<String> {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(s)) => Ok(s),
        Ok(other) => Err(Error::backend(
            BACKEND,
            format!("expected a unit variant, got {other}"),
        )),
        Err(e) => Err(Error::backend(BACKEND, e)),
    }
}

/// The inverse of [`enum_to_text`].
fn enum_from_text<T: serde::de::DeserializeOwned>(text: String, what: &str) -> Result<T> {
    serde_json::from_value(serde_json::Value::String(text)).map_err(|e| corrupt(what, e))
}

// ---------------------------------------------------------------------------
// Errors.

/// A `tokio_postgres` error with the server's message in its `Display`
/// (the library's own says only "db error").
#[derive(Debug)]
struct PgError(tokio_postgres::Error);

impl fmt::Display for PgError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.as_db_error() {
            Some(db) => {
                write!(
                    f,
                    "{} {}: {}",
                    db.severity(),
                    db.code().code(),
                    db.message()
                )?;
                if let Some(detail) = db.detail() {
                    write!(f, " ({detail})")?;
                }
                Ok(())
            }
            None => match std::error::Error::source(&self.0) {
                Some(source) => write!(f, "{}: {source}", self.0),
                None => write!(f, "{}", self.0),
            },
        }
    }
}

impl std::error::Error for PgError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

/// Whether a server error is worth retrying later: connection problems, a
/// server shutting down or starting up, a cancelled statement (timeout),
/// lock and transaction conflicts, exhausted resources.
fn is_temporary_state(code: &SqlState) -> bool {
    let code = code.code();
    code.starts_with("08") // connection exception
        || code.starts_with("53") // insufficient resources (too many connections, disk full)
        || code.starts_with("40") // serialization failure, deadlock
        || matches!(
            code,
            "57P01" // admin_shutdown (also pg_terminate_backend)
                | "57P02" // crash_shutdown
                | "57P03" // cannot_connect_now (starting up, recovering)
                | "57P05" // idle_session_timeout
                | "57014" // query_canceled (statement_timeout)
                | "55P03" // lock_not_available
                | "25P03" // idle_in_transaction_session_timeout
                | "58000" // system_error
                | "58030" // io_error
        )
}

/// Maps a `tokio_postgres` error into the shared error type.
fn pg_error(e: tokio_postgres::Error) -> Error {
    if let Some(db) = e.as_db_error() {
        let code = db.code();
        if *code == SqlState::UNIQUE_VIOLATION {
            return Error::AlreadyExists {
                what: constraint_subject(db.constraint()),
            };
        }
        if *code == SqlState::FOREIGN_KEY_VIOLATION {
            return Error::NotFound {
                what: constraint_subject(db.constraint()),
            };
        }
        return if is_temporary_state(code) {
            Error::temporary(BACKEND, PgError(e))
        } else {
            Error::backend(BACKEND, PgError(e))
        };
    }
    // No server error: the connection or the client library.
    let transport = e.is_closed()
        || has_io_source(&e)
        // A connect timeout carries no source; only its message tells.
        || e.to_string().starts_with("timeout");
    if transport {
        Error::temporary(BACKEND, PgError(e))
    } else {
        Error::backend(BACKEND, PgError(e))
    }
}

/// Whether an I/O error is somewhere in `e`'s source chain.
fn has_io_source(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = e.source();
    while let Some(s) = source {
        if s.is::<std::io::Error>() {
            return true;
        }
        source = s.source();
    }
    false
}

/// What a unique or foreign-key constraint is about, by its name (see the
/// schema's constraint names).
fn constraint_subject(constraint: Option<&str>) -> &'static str {
    match constraint.unwrap_or("") {
        "users_username_key" => "username",
        "users_pkey" => "user",
        "channels_pkey" => "channel",
        "messages_pkey" | "messages_idempotency_key" | "inbox_pkey" => "message",
        "devices_pkey" => "device",
        c if c.ends_with("channel_fk") => "channel",
        c if c.ends_with("_fk") => "user",
        _ => "row",
    }
}

/// Maps a pool error: timeouts and a closed pool are temporary, a failed
/// connect is classified like any connection error.
fn pool_error(e: PoolError) -> Error {
    match e {
        PoolError::Backend(e) => pg_error(e),
        PoolError::Timeout(kind) => Error::temporary(
            BACKEND,
            match kind {
                TimeoutType::Wait => "timed out waiting for a free connection in the pool",
                TimeoutType::Create => "timed out opening a connection",
                TimeoutType::Recycle => "timed out checking a pooled connection",
            },
        ),
        PoolError::Closed => Error::temporary(BACKEND, "the connection pool is closed"),
        PoolError::NoRuntimeSpecified => Error::backend(BACKEND, e.to_string()),
        PoolError::PostCreateHook(e) => Error::temporary(BACKEND, e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_mapping_preserves_u64_order_and_round_trips() {
        let ids = [
            0u64,
            1,
            2,
            1 << 32,
            (1 << 62) + 5,
            (1 << 63) - 1,
            1 << 63,
            (1 << 63) + 1,
            u64::MAX - 1,
            u64::MAX,
        ];
        let stored: Vec<i64> = ids.iter().map(|i| id_to_sql(MessageId(*i))).collect();
        assert!(stored.windows(2).all(|w| w[0] < w[1]), "{stored:?}");
        assert_eq!(stored[0], i64::MIN);
        assert_eq!(stored[6], 0);
        assert_eq!(stored[9], i64::MAX);
        for (id, s) in ids.iter().zip(&stored) {
            assert_eq!(id_from_sql(*s), MessageId(*id));
        }
    }

    #[test]
    fn times_round_trip() {
        for t in [0u64, 1_700_000_000_000, u64::MAX / 3, u64::MAX] {
            assert_eq!(time_from_sql(time_to_sql(t)), t);
        }
        assert_eq!(time_to_sql(1_700_000_000_000), 1_700_000_000_000);
    }

    #[test]
    fn schema_names_are_checked() {
        for ok in [
            "public",
            "chat",
            "chat_test_0123abcd",
            "_x",
            &"a".repeat(63),
        ] {
            assert!(validate_schema_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "Chat", "1chat", "chat-x", "a b", "x\"", &"a".repeat(64)] {
            assert!(validate_schema_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn urls_are_redacted() {
        assert_eq!(
            redact_url("postgres://chat:s3cret@db:5432/chat"),
            "postgres://chat:***@db:5432/chat"
        );
        assert_eq!(
            redact_url("postgres://postgres@127.0.0.1/postgres"),
            "postgres://postgres@127.0.0.1/postgres"
        );
        assert_eq!(
            redact_url("host=db user=chat password=s3cret"),
            "host=db user=chat password=***"
        );
        let config = PostgresConfig::new("postgres://u:pw@h/d");
        assert!(!format!("{config:?}").contains("pw"));
    }

    #[test]
    fn config_is_validated() {
        let base = || PostgresConfig::new("postgres://postgres@127.0.0.1:1/postgres");
        for bad in [
            base().with_pool_size(0),
            base().with_pool_size(MAX_POOL_SIZE + 1),
            base().with_schema("Bad Name"),
            base().with_statement_timeout(Duration::ZERO),
            base().with_connect_timeout(Duration::from_micros(10)),
            PostgresConfig::new("postgres://[not a url"),
        ] {
            match PostgresStore::connect_lazy(bad.clone()) {
                Err(Error::InvalidInput { .. }) => {}
                other => panic!("{bad:?} must be InvalidInput, got {other:?}"),
            }
        }
    }

    #[test]
    fn constraint_names_map_to_subjects() {
        assert_eq!(constraint_subject(Some("users_username_key")), "username");
        assert_eq!(constraint_subject(Some("friends_friend_fk")), "user");
        assert_eq!(
            constraint_subject(Some("channel_members_channel_fk")),
            "channel"
        );
        assert_eq!(constraint_subject(None), "row");
    }
}
