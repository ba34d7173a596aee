//! The PostgreSQL store against a real server: the conformance suite (also
//! with two stores racing as two servers would), reconnecting, concurrent
//! migrations, ids above 2^63, and failures — a closed port, a silent
//! server, terminated backends, statement and pool timeouts, a database
//! that goes away and comes back.
//!
//! The server is `postgres://postgres@127.0.0.1:5432/postgres` (trust
//! auth), or `CHAT_TEST_PG_URL`. Each test works in its own schema with a
//! random name, dropped (`DROP SCHEMA ... CASCADE`) when the test ends,
//! whether it passed or not, so runs never collide.

#![cfg(feature = "postgres")]
// Test helpers outside `#[test]` functions unwrap too.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chat_core::{
    Appended, Channel, ChannelId, ClientMsgId, Committed, Contact, Device, DeviceId, Directory,
    Error, Fanout, FanoutStore, FriendOutcome, FriendRequest, HistoryStore, Inbox, InboxEntry,
    Invitation, InviteOutcome, Limits, Message, MessageId, MessageStore, NewMessage, Page, Paged,
    Privacy, Profile, Result, Seq, TokenState, User, UserId, UserRecord,
};
use chat_store::conformance;
use chat_store::postgres::{PostgresConfig, PostgresStore};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_postgres::NoTls;
use uuid::Uuid;

const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

fn url() -> String {
    std::env::var("CHAT_TEST_PG_URL").unwrap_or_else(|_| DEFAULT_URL.to_owned())
}

/// A fresh schema with a random name, dropped with everything in it when
/// this guard is dropped (declare it before the stores, so they close
/// first).
struct TestSchema {
    name: String,
}

impl TestSchema {
    fn new() -> Self {
        Self {
            name: format!("chat_test_{}", Uuid::new_v4().simple()),
        }
    }

    /// The test configuration: this schema, a small pool (tests run in
    /// parallel against one server's 100 connections).
    fn config(&self) -> PostgresConfig {
        PostgresConfig::new(url())
            .with_schema(&self.name)
            .with_pool_size(6)
    }
}

impl Drop for TestSchema {
    fn drop(&mut self) {
        let sql = format!("DROP SCHEMA IF EXISTS \"{}\" CASCADE", self.name);
        if let Err(e) = admin_sql_on_own_runtime(sql) {
            eprintln!("could not drop test schema {}: {e}", self.name);
        }
    }
}

/// A database of its own with a random name, created on the test server
/// and dropped (`WITH (FORCE)`, closing the stores' connections) on drop:
/// the shards of a sharded store are separate databases.
struct TestDatabase {
    name: String,
}

impl TestDatabase {
    async fn create() -> Self {
        let name = format!("chat_shard_{}", Uuid::new_v4().simple());
        admin()
            .await
            .batch_execute(&format!("CREATE DATABASE \"{name}\""))
            .await
            .unwrap();
        Self { name }
    }

    /// The server URL with this database instead of the default one.
    fn url(&self) -> String {
        let base = url();
        let (server, _db) = base.rsplit_once('/').expect("a URL ending in /database");
        format!("{server}/{}", self.name)
    }

    async fn store(&self) -> PostgresStore {
        PostgresStore::connect(PostgresConfig::new(self.url()).with_pool_size(4))
            .await
            .unwrap()
    }

    /// Rows of `messages` in this database, and in how many channels.
    async fn message_rows(&self) -> (i64, i64) {
        let (client, connection) = tokio_postgres::connect(&self.url(), NoTls).await.unwrap();
        tokio::spawn(connection);
        let row = client
            .query_one(
                "SELECT count(*), count(DISTINCT channel_id) FROM messages",
                &[],
            )
            .await
            .unwrap();
        (row.get(0), row.get(1))
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let sql = format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.name);
        if let Err(e) = admin_sql_on_own_runtime(sql) {
            eprintln!("could not drop test database {}: {e}", self.name);
        }
    }
}

/// Runs `sql` as the admin on a thread and runtime of its own: the drops
/// above may run while a test's runtime is unwinding.
fn admin_sql_on_own_runtime(sql: String) -> std::result::Result<(), String> {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        rt.block_on(async move { admin().await.batch_execute(&sql).await })
            .map_err(|e| e.to_string())
    })
    .join()
    .map_err(|_| "the thread panicked".to_owned())?
}

/// A plain connection, outside any store's pool.
async fn admin() -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(&url(), NoTls).await.unwrap();
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

fn message(channel: ChannelId, sender: UserId, id: u64, content: &str) -> Message {
    Message {
        id: MessageId(id),
        channel_id: channel,
        sender,
        content: content.to_owned(),
        created_at: 1_700_000_000_000 + id % 1_000,
        client_msg_id: ClientMsgId::new_random(),
        reply_to: None,
        edited_at: None,
        deleted: false,
        reactions: Vec::new(),
        attachments: Vec::new(),
    }
}

fn assert_temporary<T: std::fmt::Debug>(result: Result<T>, what: &str) -> Error {
    match result {
        Err(e) if e.is_temporary() => e,
        other => panic!("{what}: expected a temporary error, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------
// Conformance.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_store_passes_the_conformance_suite_repeatedly() {
    let schema = TestSchema::new();
    let store = PostgresStore::connect(schema.config()).await.unwrap();
    conformance::run_all(&store, &store).await;
    // Again on the same data: every check uses fresh ids.
    conformance::run_all(&store, &store).await;
    assert_eq!(store.schema(), schema.name);
    assert!(format!("{store:?}").contains("PostgresStore"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_search_passes_its_suite() {
    let schema = TestSchema::new();
    let store = PostgresStore::connect(schema.config()).await.unwrap();
    conformance::search_suite(&store, &store, &store).await;
    conformance::search_suite(&store, &store, &store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_attachments_pass_their_suite() {
    let schema = TestSchema::new();
    let store = PostgresStore::connect(schema.config()).await.unwrap();
    conformance::attachment_store_suite(&store).await;
    conformance::attachment_store_suite(&store).await;
}

/// Chat history sharded over two PostgreSQL databases, with the first one
/// also the coordinator (inboxes, directory, the outbox), passes the whole
/// suite; every channel's history lives on exactly one of them, and both
/// hold some.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_sharded_over_two_databases_passes_the_conformance_suite() {
    use chat_store::sharded::{shard_index, ShardedHistory, ShardedMessageStore};
    let dbs = [TestDatabase::create().await, TestDatabase::create().await];
    let stores = [dbs[0].store().await, dbs[1].store().await];
    let history = || {
        ShardedHistory::new(
            stores
                .iter()
                .map(|s| Arc::new(s.clone()) as Arc<dyn HistoryStore>)
                .collect(),
        )
        .unwrap()
    };
    let sharded = ShardedMessageStore::new(Arc::new(stores[0].clone()), history());
    // Every suite but changes_suite: a sharded history does not take
    // changes yet (MessageStore::change answers Unsupported).
    conformance::history_suite(&sharded).await;
    conformance::message_store_suite(&sharded, &stores[0]).await;
    conformance::directory_suite(&stores[0]).await;
    conformance::concurrency_suite(&sharded, &stores[0]).await;
    let probe = conformance::durability_check_write(&sharded, &stores[0]).await;
    conformance::durability_check_read(&sharded, &stores[0], &probe).await;
    conformance::concurrency_suite(&sharded, &stores[0]).await;

    // Where the messages went: one channel, one database.
    let history = history();
    let channels: Vec<ChannelId> = (0..40).map(|_| ChannelId::new_random()).collect();
    for (k, c) in channels.iter().enumerate() {
        for i in 0..3u64 {
            let m = message(*c, UserId::new_random(), 1_000 + 10 * k as u64 + i, "x");
            history.append(m).await.unwrap();
        }
    }
    for c in &channels {
        let home = shard_index(c.as_bytes(), 2);
        assert_eq!(
            stores[home]
                .page(*c, Page::latest(10))
                .await
                .unwrap()
                .items
                .len(),
            3
        );
        assert!(stores[1 - home]
            .page(*c, Page::latest(10))
            .await
            .unwrap()
            .items
            .is_empty());
        assert_eq!(
            history
                .page(*c, Page::latest(10))
                .await
                .unwrap()
                .items
                .len(),
            3
        );
    }
    let (rows0, channels0) = dbs[0].message_rows().await;
    let (rows1, channels1) = dbs[1].message_rows().await;
    assert!(channels0 > 0 && channels1 > 0, "both shards hold channels");
    assert!(rows0 + rows1 >= 120);

    // A send cut after the coordinator's commit (the process died before
    // the history write): the inboxes have it, history does not, until a
    // drain puts it on its home shard; a retry then answers the original.
    let [a, b] = [new_user(&stores[0]).await, new_user(&stores[0]).await];
    let channel = stores[0]
        .create_channel(Channel::direct(a, b, 0), &chat_core::Limits::default())
        .await
        .unwrap();
    let send = new_message(channel.id, a, 1 << 45, "cut short");
    let Fanout::Committed(cut) = stores[0].commit_fanout(send.clone()).await.unwrap() else {
        panic!("a new key commits");
    };
    let home = shard_index(channel.id.as_bytes(), 2);
    assert!(stores[home]
        .get(channel.id, cut.message.id)
        .await
        .unwrap()
        .is_none());
    assert_eq!(
        stores[0]
            .read(b, Seq::ZERO, 10, usize::MAX)
            .await
            .unwrap()
            .items
            .len(),
        1,
        "every inbox has it before history does"
    );
    let drained = sharded.drain(Duration::ZERO).await.unwrap();
    assert!(drained >= 1, "the drain finishes it");
    assert_eq!(
        stores[home].get(channel.id, cut.message.id).await.unwrap(),
        Some(cut.message.clone()),
        "on its home shard"
    );
    let retry = sharded.commit(send).await.unwrap();
    assert!(retry.duplicate);
    assert_eq!(
        (retry.message, retry.positions),
        (cut.message, cut.positions)
    );
    drop(stores);
}

/// A fresh user in `directory`.
async fn new_user(directory: &dyn Directory) -> UserId {
    let id = UserId::new_random();
    directory
        .create_user(UserRecord {
            user: User {
                id,
                username: format!("pg_{}", &id.0.simple().to_string()[..20]),
                profile: Profile::default(),
                created_at: 0,
            },
            password_hash: "hash".into(),
        })
        .await
        .unwrap()
        .id
}

/// A commit request with a fresh key.
fn new_message(channel: ChannelId, sender: UserId, id: u64, content: &str) -> NewMessage {
    NewMessage {
        id: MessageId(id),
        channel_id: channel,
        sender,
        content: content.to_owned(),
        created_at: 1_700_000_000_000,
        client_msg_id: ClientMsgId::new_random(),
        timeout: Duration::from_secs(30),
        reply_to: None,
        attachments: Vec::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_concurrency_suite_passes_across_two_servers() {
    let schema = TestSchema::new();
    let servers = TwoServers::new(
        PostgresStore::connect(schema.config()).await.unwrap(),
        PostgresStore::connect(schema.config()).await.unwrap(),
    );
    conformance::concurrency_suite(&servers, &servers).await;
    conformance::history_suite(&servers).await;
    conformance::message_store_suite(&servers, &servers).await;
    conformance::receipts_suite(&servers, &servers).await;
    conformance::changes_suite(&servers, &servers).await;
    conformance::directory_suite(&servers).await;
    assert!(servers.calls.load(Ordering::Relaxed) > 100);
}

/// Many tasks, half on each of two stores (two pools: two servers), append
/// one client message id at once: exactly one is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_racing_on_one_retry_store_one_message() {
    let schema = TestSchema::new();
    let a = PostgresStore::connect(schema.config()).await.unwrap();
    let b = PostgresStore::connect(schema.config()).await.unwrap();
    for round in 0..5u64 {
        let channel = ChannelId::new_random();
        let template = message(channel, UserId::new_random(), 0, &format!("round {round}"));
        let mut tasks = JoinSet::new();
        for k in 1..=24u64 {
            let store = if k % 2 == 0 { a.clone() } else { b.clone() };
            let mut m = template.clone();
            m.id = MessageId(k << 40);
            tasks.spawn(async move { store.append(m).await.unwrap() });
        }
        let results = tasks.join_all().await;
        let stored: Vec<&Message> = results
            .iter()
            .filter(|r| !r.is_duplicate())
            .map(Appended::message)
            .collect();
        assert_eq!(stored.len(), 1, "exactly one Stored in round {round}");
        assert!(results.iter().all(|r| r.message() == stored[0]));
        assert_eq!(
            a.page(channel, Page::latest(100)).await.unwrap().items,
            vec![stored[0].clone()]
        );
    }
}

// ---------------------------------------------------------------------------
// Reconnecting and migrations.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn everything_acknowledged_survives_reconnecting() {
    let schema = TestSchema::new();
    let mut probes = Vec::new();
    for _ in 0..3 {
        let store = PostgresStore::connect(schema.config()).await.unwrap();
        for probe in &probes {
            conformance::durability_check_read(&store, &store, probe).await;
        }
        probes.push(conformance::durability_check_write(&store, &store).await);
        drop(store);
    }
    let store = PostgresStore::connect(schema.config()).await.unwrap();
    for probe in &probes {
        conformance::durability_check_read(&store, &store, probe).await;
    }
    // A clone shares the pool and sees the same data.
    let clone = store.clone();
    drop(store);
    conformance::durability_check_read(&clone, &clone, &probes[0]).await;
}

/// The versions recorded in a schema, with how often each is recorded.
async fn recorded_versions(schema: &str) -> Vec<(i32, i64)> {
    admin()
        .await
        .query(
            &format!(
                "SELECT version, count(*) FROM \"{schema}\".schema_migrations \
                 GROUP BY version ORDER BY version"
            ),
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_are_idempotent_and_safe_when_servers_start_at_once() {
    let schema = TestSchema::new();
    // Four servers start at once against a schema that does not exist yet.
    let mut starting = JoinSet::new();
    for _ in 0..4 {
        let config = schema.config().with_pool_size(2);
        starting.spawn(PostgresStore::connect(config));
    }
    let stores: Vec<PostgresStore> = starting
        .join_all()
        .await
        .into_iter()
        .map(|r| r.expect("every server starts"))
        .collect();
    let versions = recorded_versions(&schema.name).await;
    assert!(!versions.is_empty());
    assert!(
        versions.iter().all(|(_, n)| *n == 1),
        "each migration is applied once: {versions:?}"
    );
    let tables: i64 = admin()
        .await
        .query_one(
            "SELECT count(*) FROM pg_tables WHERE schemaname = $1",
            &[&schema.name],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        tables, 17,
        "nine data tables, three of migration 4, blocks (migration 5), receipts (migration 6), \
         reactions (migration 7), attachments (migration 8) and schema_migrations"
    );

    // Connecting again, and migrating again, change nothing.
    let again = PostgresStore::connect(schema.config()).await.unwrap();
    again.migrate().await.unwrap();
    assert_eq!(recorded_versions(&schema.name).await, versions);

    // They are one database: what one server writes, another reads.
    let probe = conformance::durability_check_write(&stores[0], &stores[1]).await;
    conformance::durability_check_read(&stores[3], &again, &probe).await;
}

#[tokio::test]
async fn a_schema_newer_than_the_build_is_refused() {
    let schema = TestSchema::new();
    PostgresStore::connect(schema.config()).await.unwrap();
    admin()
        .await
        .execute(
            &format!(
                "INSERT INTO \"{}\".schema_migrations (version, name) VALUES (9999, 'future')",
                schema.name
            ),
            &[],
        )
        .await
        .unwrap();
    let err = PostgresStore::connect(schema.config()).await.unwrap_err();
    assert!(
        matches!(err, Error::Backend { .. }) && !err.is_temporary(),
        "{err:?}"
    );
    assert!(err.to_string().contains("newer"), "{err}");
    // A lazy store refuses every call the same way.
    let lazy = PostgresStore::connect_lazy(schema.config()).unwrap();
    let err = lazy.user(UserId::new_random()).await.unwrap_err();
    assert!(err.to_string().contains("newer"), "{err}");
}

#[tokio::test]
async fn a_connection_string_and_the_public_default_are_accepted() {
    // Only checks that the configuration builds; `public` is not touched.
    let config = PostgresConfig::new("host=127.0.0.1 port=5432 user=postgres dbname=postgres");
    let store = PostgresStore::connect_lazy(config).unwrap();
    assert_eq!(store.schema(), "public");
}

// ---------------------------------------------------------------------------
// Message ids above 2^63.

#[tokio::test]
async fn message_ids_above_2_63_keep_u64_order() {
    let schema = TestSchema::new();
    let store = PostgresStore::connect(schema.config()).await.unwrap();
    let channel = ChannelId::new_random();
    let sender = UserId::new_random();
    let half = 1u64 << 63;
    let ids = [
        1u64,
        1 << 32,
        half - 1,
        half,
        half + 1,
        half + (1 << 40),
        u64::MAX - 1,
        u64::MAX,
    ];
    // Appended in an order that is neither ascending nor descending.
    for &i in [half, 1, u64::MAX, half - 1, 1 << 32, u64::MAX - 1, half + 1]
        .iter()
        .chain([half + (1 << 40)].iter())
    {
        let m = message(channel, sender, i, &format!("id {i}"));
        assert!(!store.append(m.clone()).await.unwrap().is_duplicate());
    }
    let page_ids = |p: Paged<Message>| p.items.iter().map(|m| m.id.0).collect::<Vec<_>>();
    assert_eq!(
        page_ids(store.page(channel, Page::latest(100)).await.unwrap()),
        ids.to_vec(),
        "history is in u64 order across 2^63"
    );
    assert_eq!(
        page_ids(store.page(channel, Page::latest(3)).await.unwrap()),
        ids[5..].to_vec()
    );
    assert_eq!(
        page_ids(
            store
                .page(channel, Page::before(MessageId(half + 1), 3))
                .await
                .unwrap()
        ),
        ids[1..4].to_vec(),
        "before() crosses 2^63 downwards"
    );
    assert_eq!(
        page_ids(
            store
                .page(channel, Page::after(MessageId(half - 1), 2))
                .await
                .unwrap()
        ),
        ids[3..5].to_vec(),
        "after() crosses 2^63 upwards"
    );
    assert_eq!(
        page_ids(
            store
                .page(channel, Page::after(MessageId(u64::MAX - 1), 10))
                .await
                .unwrap()
        ),
        vec![u64::MAX]
    );
    assert_eq!(
        page_ids(
            store
                .page(channel, Page::before(MessageId::MAX, 1))
                .await
                .unwrap()
        ),
        vec![u64::MAX - 1]
    );
    for &i in &ids {
        let got = store.get(channel, MessageId(i)).await.unwrap().unwrap();
        assert_eq!(got.id, MessageId(i));
        assert_eq!(got.content, format!("id {i}"));
    }
    // Commits keep proposed ids across 2^63 (each above the channel's
    // last), and the inbox orders them by position, which is id order here.
    let (sender, reader) = (new_user(&store).await, new_user(&store).await);
    let direct = store
        .create_channel(
            Channel::direct(sender, reader, 0),
            &chat_core::Limits::default(),
        )
        .await
        .unwrap();
    for &i in &ids {
        let c = store
            .commit(new_message(direct.id, sender, i, &format!("id {i}")))
            .await
            .unwrap();
        assert_eq!(
            c.message.id,
            MessageId(i),
            "a proposed id above the last is kept"
        );
    }
    let entries = store.read(reader, Seq(3), 100, usize::MAX).await.unwrap();
    let got: Vec<(u64, u64)> = entries
        .items
        .iter()
        .map(|e| (e.seq.0, e.message.id.0))
        .collect();
    let expected: Vec<(u64, u64)> = (4..=8).zip(ids[3..].iter().copied()).collect();
    assert_eq!(got, expected, "an inbox syncs by position across 2^63");
    let err = store
        .commit(new_message(direct.id, sender, 5, "below the last"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::StaleId { last } if last == MessageId(u64::MAX)),
        "a proposal below the channel's last id (u64::MAX) is stale: {err:?}"
    );

    let device = DeviceId::new_random();
    for (to, expected) in [(5u64, 5u64), (3, 5), (1 << 40, 1 << 40), (7, 1 << 40)] {
        assert_eq!(
            store.advance_cursor(reader, device, Seq(to)).await.unwrap(),
            Seq(expected),
            "cursors only move forward (advance to {to})"
        );
    }

    // The column itself sorts as u64: the documented mapping.
    let rows = admin()
        .await
        .query(
            &format!(
                "SELECT message_id FROM \"{}\".messages WHERE channel_id = $1 ORDER BY message_id",
                schema.name
            ),
            &[&channel.0],
        )
        .await
        .unwrap();
    let stored: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
    let decoded: Vec<u64> = stored.iter().map(|s| (s ^ i64::MIN) as u64).collect();
    assert_eq!(decoded, ids.to_vec(), "ORDER BY message_id is u64 order");
    assert_eq!(stored[0], i64::MIN + 1, "1 is stored as i64::MIN + 1");
    assert_eq!(stored[3], 0, "2^63 is stored as 0");
    assert_eq!(stored[7], i64::MAX, "u64::MAX is stored as i64::MAX");
}

// ---------------------------------------------------------------------------
// Failures.

/// A port nothing listens on.
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

#[tokio::test]
async fn a_closed_port_fails_fast_with_a_temporary_error() {
    let config = PostgresConfig::new(format!(
        "postgres://postgres@127.0.0.1:{}/postgres",
        closed_port()
    ))
    .with_schema("chat_test_never_created");
    // Default 5 s timeouts: a refused connection must not wait for them.
    let started = Instant::now();
    assert_temporary(PostgresStore::connect(config.clone()).await, "connect");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );

    let store = PostgresStore::connect_lazy(config).unwrap();
    let started = Instant::now();
    let m = message(ChannelId::new_random(), UserId::new_random(), 1, "lost");
    let err = assert_temporary(store.append(m.clone()).await, "append");
    assert!(matches!(
        err,
        Error::Backend {
            backend: "postgres",
            ..
        }
    ));
    assert_temporary(
        store
            .commit(new_message(m.channel_id, m.sender, 1, "lost"))
            .await,
        "commit",
    );
    assert_temporary(
        store.read(m.sender, Seq::ZERO, 10, usize::MAX).await,
        "read",
    );
    assert_temporary(store.user_by_name("alice").await, "user_by_name");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "four calls took {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_silent_server_times_out_with_a_temporary_error() {
    // Accepts TCP connections (the kernel completes the handshake) and
    // never says a word.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let config = PostgresConfig::new(format!("postgres://postgres@127.0.0.1:{port}/postgres"))
        .with_schema("chat_test_never_created")
        .with_connect_timeout(Duration::from_millis(500))
        .with_statement_timeout(Duration::from_millis(500))
        .with_migration_timeout(Duration::from_millis(500));
    let started = Instant::now();
    assert_temporary(PostgresStore::connect(config.clone()).await, "connect");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );

    let store = PostgresStore::connect_lazy(config).unwrap();
    let started = Instant::now();
    assert_temporary(
        store
            .cursor(UserId::new_random(), DeviceId::new_random())
            .await,
        "cursor",
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    drop(silent);
}

/// While the database never answers, many waiting calls share one
/// migration attempt (one connection) instead of each starting its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_waiting_for_an_unreachable_database_share_one_migration_attempt() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = Arc::new(AtomicUsize::new(0));
    let silent = tokio::spawn({
        let accepted = accepted.clone();
        async move {
            let mut open = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                accepted.fetch_add(1, Ordering::SeqCst);
                open.push(socket); // kept open, never answered
            }
        }
    });
    let config = PostgresConfig::new(format!("postgres://postgres@127.0.0.1:{port}/postgres"))
        .with_schema("chat_test_never_created")
        .with_connect_timeout(Duration::from_millis(300))
        .with_statement_timeout(Duration::from_millis(300))
        .with_migration_timeout(Duration::from_millis(300));
    let store = PostgresStore::connect_lazy(config).unwrap();
    let started = Instant::now();
    let mut calls = JoinSet::new();
    for _ in 0..32 {
        let store = store.clone();
        calls.spawn(async move { store.friends(UserId::new_random()).await });
    }
    for result in calls.join_all().await {
        assert_temporary(result, "a call while the database is silent");
    }
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    let attempts = accepted.load(Ordering::SeqCst);
    assert!(
        (1..=2).contains(&attempts),
        "32 waiting calls opened {attempts} connections"
    );
    silent.abort();
}

/// Terminates every backend whose application_name is `app`, from an
/// outside connection, and waits until they are gone.
async fn terminate_backends(app: &str) -> i64 {
    let admin = admin().await;
    let killed: i64 = admin
        .query_one(
            "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE application_name = $1 AND pid <> pg_backend_pid()) AS t",
            &[&app],
        )
        .await
        .unwrap()
        .get(0);
    for _ in 0..100 {
        let left: i64 = admin
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
                &[&app],
            )
            .await
            .unwrap()
            .get(0);
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    killed
}

/// Opens a transaction on an outside connection that inserts a row under
/// `m`'s idempotency key (with another id) and keeps it uncommitted, so an
/// append of `m` waits for it. Returns the connection; `ROLLBACK` it.
async fn block_key(schema: &str, m: &Message) -> tokio_postgres::Client {
    let blocker = admin().await;
    blocker.batch_execute("BEGIN").await.unwrap();
    blocker
        .execute(
            &format!(
                "INSERT INTO \"{schema}\".messages \
                 (channel_id, message_id, sender, content, created_at, client_msg_id) \
                 VALUES ($1, $2, $3, 'blocker', 0, $4)"
            ),
            &[
                &m.channel_id.0,
                &-42i64,
                &m.sender.0,
                &m.client_msg_id.as_str(),
            ],
        )
        .await
        .unwrap();
    blocker
}

/// Waits until a backend of `app` waits on a lock.
async fn wait_for_lock_wait(app: &str) {
    let admin = admin().await;
    for _ in 0..250 {
        let waiting: i64 = admin
            .query_one(
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE application_name = $1 AND wait_event_type = 'Lock'",
                &[&app],
            )
            .await
            .unwrap()
            .get(0);
        if waiting > 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("no backend of {app} ever waited on a lock");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminated_backends_are_replaced_and_a_retried_append_stores_once() {
    let schema = TestSchema::new();
    let app = format!("chat-test-{}", &Uuid::new_v4().simple().to_string()[..12]);
    let store = PostgresStore::connect(schema.config().with_application_name(&app))
        .await
        .unwrap();
    // Fill the pool with several live connections.
    let mut warm = JoinSet::new();
    for _ in 0..6 {
        let store = store.clone();
        warm.spawn(async move { store.user(UserId::new_random()).await.unwrap() });
    }
    warm.join_all().await;

    // 1. Idle connections killed: the next calls get fresh ones.
    assert!(terminate_backends(&app).await >= 1);
    let channel = ChannelId::new_random();
    let first = message(channel, UserId::new_random(), 1 << 50, "after the kill");
    assert!(
        !store.append(first.clone()).await.unwrap().is_duplicate(),
        "the first call after the kill succeeds"
    );
    for _ in 0..10 {
        store.page(channel, Page::latest(10)).await.unwrap();
    }

    // 2. A connection killed in the middle of an append.
    let m = message(channel, UserId::new_random(), (1 << 50) + 1, "in flight");
    let blocker = block_key(&schema.name, &m).await;
    let in_flight = {
        let store = store.clone();
        let m = m.clone();
        tokio::spawn(async move { store.append(m).await })
    };
    wait_for_lock_wait(&app).await;
    let started = Instant::now();
    assert!(terminate_backends(&app).await >= 1);
    let err = assert_temporary(in_flight.await.unwrap(), "an append whose connection died");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    eprintln!("append on a terminated connection: {err}");
    blocker.batch_execute("ROLLBACK").await.unwrap();

    // The client retries with the same client message id (and the same or
    // a new message id): exactly one message is stored.
    assert_eq!(
        store.append(m.clone()).await.unwrap(),
        Appended::Stored(m.clone()),
        "the retry stores the message"
    );
    let mut again = m.clone();
    again.id = MessageId(m.id.0 + 1);
    assert_eq!(
        store.append(again).await.unwrap(),
        Appended::Duplicate(m.clone()),
        "a further retry is a duplicate of the stored one"
    );
    assert_eq!(
        store.page(channel, Page::latest(10)).await.unwrap().items,
        vec![first, m],
        "one message per client message id"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_statement_and_a_full_pool_time_out_as_temporary_errors() {
    let schema = TestSchema::new();
    let app = format!("chat-test-{}", &Uuid::new_v4().simple().to_string()[..12]);
    let store = PostgresStore::connect(
        schema
            .config()
            .with_application_name(&app)
            .with_pool_size(1)
            .with_connect_timeout(Duration::from_millis(300))
            .with_statement_timeout(Duration::from_millis(700)),
    )
    .await
    .unwrap();
    let m = message(ChannelId::new_random(), UserId::new_random(), 7, "blocked");
    let blocker = block_key(&schema.name, &m).await;

    // The only connection waits on the lock until statement_timeout.
    let started = Instant::now();
    let blocked = {
        let store = store.clone();
        let m = m.clone();
        tokio::spawn(async move { store.append(m).await })
    };
    wait_for_lock_wait(&app).await;
    // Meanwhile another call finds no free connection.
    let waited = Instant::now();
    let err = assert_temporary(
        store.user(UserId::new_random()).await,
        "a call waiting for the pool",
    );
    assert!(
        waited.elapsed() < Duration::from_secs(2),
        "{:?}",
        waited.elapsed()
    );
    eprintln!("full pool: {err}");
    let err = assert_temporary(blocked.await.unwrap(), "a statement past statement_timeout");
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(600) && elapsed < Duration::from_secs(3),
        "{elapsed:?}"
    );
    eprintln!("statement timeout after {elapsed:?}: {err}");

    // Nothing was stored; once the blocker is gone the same append works,
    // on the same (single) connection.
    blocker.batch_execute("ROLLBACK").await.unwrap();
    assert_eq!(store.append(m.clone()).await.unwrap(), Appended::Stored(m));
}

/// A TCP proxy in front of the database that can be switched off (the port
/// closes, every connection is cut) and on again, or frozen (connections
/// stay open but nothing gets through).
struct Proxy {
    addr: SocketAddr,
    upstream: SocketAddr,
    frozen: Arc<AtomicBool>,
    tasks: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl Proxy {
    async fn start(upstream: SocketAddr) -> Self {
        let proxy = Self {
            addr: "127.0.0.1:0".parse().unwrap(),
            upstream,
            frozen: Arc::new(AtomicBool::new(false)),
            tasks: Arc::default(),
        };
        let listener = TcpListener::bind(proxy.addr).await.unwrap();
        proxy.listen(listener)
    }

    fn listen(mut self, listener: TcpListener) -> Self {
        self.addr = listener.local_addr().unwrap();
        let (upstream, frozen, tasks) = (self.upstream, self.frozen.clone(), self.tasks.clone());
        let accept = tokio::spawn({
            let tasks = tasks.clone();
            async move {
                while let Ok((client, _)) = listener.accept().await {
                    let Ok(server) = TcpStream::connect(upstream).await else {
                        continue;
                    };
                    let (client_read, client_write) = client.into_split();
                    let (server_read, server_write) = server.into_split();
                    for (from, to) in [
                        (
                            Box::new(client_read) as Box<dyn tokio::io::AsyncRead + Send + Unpin>,
                            Box::new(server_write) as Box<dyn tokio::io::AsyncWrite + Send + Unpin>,
                        ),
                        (Box::new(server_read), Box::new(client_write)),
                    ] {
                        let pump = tokio::spawn(pump(from, to, frozen.clone()));
                        tasks.lock().unwrap().push(pump.abort_handle());
                    }
                }
            }
        });
        tasks.lock().unwrap().push(accept.abort_handle());
        self
    }

    /// The database is gone: the port is closed, connections are cut.
    async fn down(&self) {
        let tasks: Vec<_> = self.tasks.lock().unwrap().drain(..).collect();
        for task in tasks {
            task.abort();
        }
        // Aborted tasks drop their sockets (and the listener) soon, not at
        // once: wait until the port refuses connections.
        for _ in 0..200 {
            if TcpStream::connect(self.addr).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("the proxy port {} stays open", self.addr);
    }

    /// The database is back, on the same address.
    async fn up(self) -> Self {
        self.frozen.store(false, Ordering::SeqCst);
        let mut tries = 0;
        let listener = loop {
            match TcpListener::bind(self.addr).await {
                Ok(l) => break l,
                Err(e) if tries < 50 => {
                    tries += 1;
                    eprintln!("rebinding {}: {e}", self.addr);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("cannot rebind {}: {e}", self.addr),
            }
        };
        self.listen(listener)
    }

    fn freeze(&self, frozen: bool) {
        self.frozen.store(frozen, Ordering::SeqCst);
    }

    /// A connection string through the proxy, with the test URL's user,
    /// password and database.
    fn url(&self) -> String {
        let base: tokio_postgres::Config = url().parse().unwrap();
        let mut s = format!("host={} port={}", self.addr.ip(), self.addr.port());
        if let Some(user) = base.get_user() {
            s += &format!(" user={user}");
        }
        if let Some(password) = base.get_password() {
            s += &format!(" password={}", String::from_utf8_lossy(password));
        }
        if let Some(db) = base.get_dbname() {
            s += &format!(" dbname={db}");
        }
        s
    }
}

/// Copies bytes one way; while frozen, holds what it read.
async fn pump(
    mut from: Box<dyn tokio::io::AsyncRead + Send + Unpin>,
    mut to: Box<dyn tokio::io::AsyncWrite + Send + Unpin>,
    frozen: Arc<AtomicBool>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        while frozen.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// The database's address, from the test URL.
fn upstream() -> SocketAddr {
    let base: tokio_postgres::Config = url().parse().unwrap();
    let host = match base.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        _ => "127.0.0.1".to_owned(),
    };
    let port = base.get_ports().first().copied().unwrap_or(5432);
    let host = if host == "localhost" {
        "127.0.0.1".to_owned()
    } else {
        host
    };
    format!("{host}:{port}").parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_recovers_by_itself_when_the_database_comes_back() {
    let schema = TestSchema::new();
    let proxy = Proxy::start(upstream()).await;
    let config = schema
        .config()
        .with_pool_size(3)
        .with_connect_timeout(Duration::from_millis(500))
        .with_statement_timeout(Duration::from_millis(500));
    let config = PostgresConfig {
        url: proxy.url(),
        ..config
    };
    // Started while the database is down: the lazy store starts anyway.
    proxy.down().await;
    let store = PostgresStore::connect_lazy(config).unwrap();
    let channel = ChannelId::new_random();
    let sender = UserId::new_random();
    let m1 = message(channel, sender, 1, "one");
    assert_temporary(store.append(m1.clone()).await, "append while down");

    // Up: the first call migrates and works.
    let proxy = proxy.up().await;
    assert!(!store.append(m1.clone()).await.unwrap().is_duplicate());

    // Frozen: the server stops answering on open connections. No hang:
    // every call ends within connect_timeout + statement_timeout.
    proxy.freeze(true);
    let started = Instant::now();
    let m2 = message(channel, sender, 2, "two");
    assert_temporary(store.append(m2.clone()).await, "append while frozen");
    let elapsed = started.elapsed();
    assert!(elapsed < Duration::from_millis(1_500), "{elapsed:?}");
    eprintln!("frozen database: temporary error after {elapsed:?}");

    // Down: connections cut, port closed. Errors come fast.
    proxy.down().await;
    let started = Instant::now();
    for _ in 0..5 {
        assert_temporary(
            store.page(channel, Page::latest(10)).await,
            "page while down",
        );
    }
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );

    // Back: the store recovers by itself, no restart, no reconnect call.
    let proxy = proxy.up().await;
    let started = Instant::now();
    let mut attempts = 0;
    let outcome = loop {
        attempts += 1;
        match store.append(m2.clone()).await {
            Ok(a) => break a,
            Err(e) if e.is_temporary() && attempts < 3 => continue,
            Err(e) => panic!("no recovery after {attempts} attempts: {e}"),
        }
    };
    eprintln!(
        "recovered after {attempts} attempt(s), {:?}",
        started.elapsed()
    );
    assert_eq!(attempts, 1, "the first call after recovery succeeds");
    // The append attempted while frozen may or may not have reached the
    // database; either way the retry leaves exactly one m2.
    assert_eq!(outcome.message(), &m2);
    assert_eq!(
        store.page(channel, Page::latest(10)).await.unwrap().items,
        vec![m1, m2]
    );
    proxy.down().await;
}

// ---------------------------------------------------------------------------

// ---------------------------------------------------------------------------
// Two stores behind one face, alternating call by call: the conformance
// suite then runs as if two servers served it.

#[derive(Debug)]
struct TwoServers {
    stores: [PostgresStore; 2],
    calls: AtomicUsize,
}

impl TwoServers {
    fn new(a: PostgresStore, b: PostgresStore) -> Self {
        Self {
            stores: [a, b],
            calls: AtomicUsize::new(0),
        }
    }

    fn pick(&self) -> &PostgresStore {
        &self.stores[self.calls.fetch_add(1, Ordering::Relaxed) % 2]
    }
}

#[async_trait]
impl HistoryStore for TwoServers {
    async fn append(&self, message: Message) -> Result<Appended> {
        self.pick().append(message).await
    }
    async fn get(&self, channel: ChannelId, id: MessageId) -> Result<Option<Message>> {
        self.pick().get(channel, id).await
    }
    async fn page(&self, channel: ChannelId, page: Page) -> Result<Paged<Message>> {
        self.pick().page(channel, page).await
    }
    async fn reactions(
        &self,
        channel: ChannelId,
        messages: &[MessageId],
        viewer: UserId,
    ) -> Result<Vec<(MessageId, Vec<chat_core::Reactions>)>> {
        self.pick().reactions(channel, messages, viewer).await
    }
}

#[async_trait]
impl Inbox for TwoServers {
    async fn read(
        &self,
        user: UserId,
        after: Seq,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Paged<InboxEntry>> {
        self.pick().read(user, after, limit, max_bytes).await
    }
    async fn cursor(&self, user: UserId, device: DeviceId) -> Result<Seq> {
        self.pick().cursor(user, device).await
    }
    async fn advance_cursor(&self, user: UserId, device: DeviceId, cursor: Seq) -> Result<Seq> {
        self.pick().advance_cursor(user, device, cursor).await
    }
}

#[async_trait]
impl chat_core::Receipts for TwoServers {
    async fn set_marker(
        &self,
        user: UserId,
        channel: ChannelId,
        kind: chat_core::MarkerKind,
        message: MessageId,
    ) -> Result<chat_core::MarkerUpdate> {
        self.pick().set_marker(user, channel, kind, message).await
    }
    async fn receipts(&self, keys: &[(UserId, ChannelId)]) -> Result<Vec<chat_core::Receipt>> {
        self.pick().receipts(keys).await
    }
    async fn heads(&self, channels: &[ChannelId]) -> Result<Vec<Option<chat_core::Marker>>> {
        self.pick().heads(channels).await
    }
}

#[async_trait]
impl MessageStore for TwoServers {
    async fn commit(&self, message: NewMessage) -> Result<Committed> {
        self.pick().commit(message).await
    }
    async fn change(&self, change: chat_core::NewChange) -> Result<chat_core::Changed> {
        self.pick().change(change).await
    }
}

#[async_trait]
impl Directory for TwoServers {
    async fn create_user(&self, record: UserRecord) -> Result<User> {
        self.pick().create_user(record).await
    }
    async fn user(&self, id: UserId) -> Result<Option<User>> {
        self.pick().user(id).await
    }
    async fn user_by_name(&self, username: &str) -> Result<Option<UserRecord>> {
        self.pick().user_by_name(username).await
    }
    async fn update_profile(&self, id: UserId, profile: Profile) -> Result<User> {
        self.pick().update_profile(id, profile).await
    }
    async fn privacy(&self, user: UserId) -> Result<Privacy> {
        self.pick().privacy(user).await
    }
    async fn set_privacy(&self, user: UserId, privacy: Privacy) -> Result<Privacy> {
        self.pick().set_privacy(user, privacy).await
    }
    async fn token_state(&self, user: UserId, session: u64) -> Result<TokenState> {
        self.pick().token_state(user, session).await
    }
    async fn revoke_session(&self, user: UserId, session: u64, until: u64, now: u64) -> Result<()> {
        self.pick().revoke_session(user, session, until, now).await
    }
    async fn revoke_all_sessions(&self, user: UserId) -> Result<u64> {
        self.pick().revoke_all_sessions(user).await
    }
    async fn request_friend(
        &self,
        from: UserId,
        to: UserId,
        now: u64,
        limits: &Limits,
    ) -> Result<FriendOutcome> {
        self.pick().request_friend(from, to, now, limits).await
    }
    async fn remove_friend(&self, a: UserId, b: UserId) -> Result<()> {
        self.pick().remove_friend(a, b).await
    }
    async fn friends(&self, user: UserId) -> Result<Vec<UserId>> {
        self.pick().friends(user).await
    }
    async fn friend_requests(&self, user: UserId) -> Result<Vec<FriendRequest>> {
        self.pick().friend_requests(user).await
    }
    async fn contacts(&self, user: UserId, among: &[UserId]) -> Result<Vec<Contact>> {
        self.pick().contacts(user, among).await
    }
    async fn block(&self, user: UserId, target: UserId) -> Result<()> {
        self.pick().block(user, target).await
    }
    async fn unblock(&self, user: UserId, target: UserId) -> Result<()> {
        self.pick().unblock(user, target).await
    }
    async fn blocked(&self, user: UserId) -> Result<Vec<UserId>> {
        self.pick().blocked(user).await
    }
    async fn create_channel(&self, channel: Channel, limits: &Limits) -> Result<Channel> {
        self.pick().create_channel(channel, limits).await
    }
    async fn channel(&self, id: ChannelId) -> Result<Option<Channel>> {
        self.pick().channel(id).await
    }
    async fn add_member(
        &self,
        channel: ChannelId,
        user: UserId,
        limits: &Limits,
    ) -> Result<Channel> {
        self.pick().add_member(channel, user, limits).await
    }
    async fn remove_member(&self, channel: ChannelId, user: UserId) -> Result<Channel> {
        self.pick().remove_member(channel, user).await
    }
    async fn channels_of(
        &self,
        user: UserId,
        after: Option<ChannelId>,
        limit: usize,
    ) -> Result<Vec<Channel>> {
        self.pick().channels_of(user, after, limit).await
    }
    async fn invite(
        &self,
        channel: ChannelId,
        user: UserId,
        inviter: UserId,
        now: u64,
        limits: &Limits,
    ) -> Result<InviteOutcome> {
        self.pick()
            .invite(channel, user, inviter, now, limits)
            .await
    }
    async fn invitations(&self, user: UserId) -> Result<Vec<Invitation>> {
        self.pick().invitations(user).await
    }
    async fn accept_invitation(
        &self,
        channel: ChannelId,
        user: UserId,
        limits: &Limits,
    ) -> Result<Channel> {
        self.pick().accept_invitation(channel, user, limits).await
    }
    async fn remove_invitation(&self, channel: ChannelId, user: UserId) -> Result<bool> {
        self.pick().remove_invitation(channel, user).await
    }
    async fn register_device(&self, device: Device, limits: &Limits) -> Result<Device> {
        self.pick().register_device(device, limits).await
    }
    async fn devices(&self, user: UserId) -> Result<Vec<Device>> {
        self.pick().devices(user).await
    }
    async fn remove_device(&self, user: UserId, device: DeviceId) -> Result<()> {
        self.pick().remove_device(user, device).await
    }
    async fn clear_push_token(&self, user: UserId, device: DeviceId, token: &str) -> Result<bool> {
        self.pick().clear_push_token(user, device, token).await
    }
}
