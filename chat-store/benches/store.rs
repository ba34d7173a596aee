//! History append and page latency: memory, the embedded (fjall) store, and
//! with `--features postgres` PostgreSQL.
//!
//! `cargo bench -p chat-store --bench store`
//! `cargo bench -p chat-store --features postgres --bench store`
//! (PostgreSQL at `CHAT_TEST_PG_URL`, default
//! `postgres://postgres@127.0.0.1:5432/postgres`, in a schema `chat_bench`
//! that is dropped and recreated)

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use chat_core::memory::{MemoryHistory, MemoryInbox};
use chat_core::{
    ChannelId, ClientMsgId, HistoryStore, Inbox, Message, MessageId, Page, Snowflake, UserId,
};
use chat_store::embedded::EmbeddedStore;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion};

fn message(ids: &Snowflake, channel: ChannelId, sender: UserId) -> Message {
    Message {
        id: ids.generate(),
        channel_id: channel,
        sender,
        content: "a typical chat message of about sixty characters, give or take".into(),
        created_at: 0,
        client_msg_id: ClientMsgId::new_random(),
    }
}

struct Backend {
    name: &'static str,
    history: Arc<dyn HistoryStore>,
    inbox: Arc<dyn Inbox>,
}

fn backends(dir: &std::path::Path, rt: &tokio::runtime::Runtime) -> Vec<Backend> {
    let embedded = Arc::new(EmbeddedStore::open(dir).expect("open store"));
    #[cfg(not(feature = "postgres"))]
    let _ = rt;
    vec![
        #[cfg(feature = "postgres")]
        postgres(rt),
        Backend {
            name: "memory",
            history: Arc::new(MemoryHistory::default()),
            inbox: Arc::new(MemoryInbox::default()),
        },
        Backend {
            name: "embedded",
            history: embedded.clone(),
            inbox: embedded,
        },
    ]
}

#[cfg(feature = "postgres")]
fn postgres(rt: &tokio::runtime::Runtime) -> Backend {
    use chat_store::postgres::{PostgresConfig, PostgresStore};
    let url = std::env::var("CHAT_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let store = rt.block_on(async {
        let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .expect("connect to PostgreSQL");
        tokio::spawn(conn);
        client
            .batch_execute("DROP SCHEMA IF EXISTS chat_bench CASCADE")
            .await
            .expect("drop bench schema");
        PostgresStore::connect(PostgresConfig::new(url).with_schema("chat_bench"))
            .await
            .expect("connect store")
    });
    let store = Arc::new(store);
    Backend {
        name: "postgres",
        history: store.clone(),
        inbox: store,
    }
}

fn store(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let ids = Snowflake::new(1).expect("node id");
    let sender = UserId::new_random();
    let members: Vec<UserId> = (0..2).map(|_| UserId::new_random()).collect();
    let group: Vec<UserId> = (0..100).map(|_| UserId::new_random()).collect();

    let mut g = c.benchmark_group("history");
    for be in backends(dir.path(), &rt) {
        let channel = ChannelId::new_random();
        g.bench_function(format!("append/{}", be.name), |b| {
            b.to_async(&rt).iter_batched(
                || message(&ids, channel, sender),
                |m| {
                    let h = be.history.clone();
                    async move { black_box(h.append(m).await.expect("append")) }
                },
                BatchSize::SmallInput,
            )
        });
        // A channel with 10,000 messages, then read pages of 50.
        let paged = ChannelId::new_random();
        let mut stored = Vec::new();
        rt.block_on(async {
            for _ in 0..10_000 {
                let m = message(&ids, paged, sender);
                stored.push(m.id);
                be.history.append(m).await.expect("append");
            }
        });
        let middle = stored[5_000];
        for (label, page) in [
            ("latest 50", Page::latest(50)),
            ("50 before the middle", Page::before(middle, 50)),
            ("50 after the middle", Page::after(middle, 50)),
        ] {
            g.bench_function(format!("page {label}/{}", be.name), |b| {
                b.to_async(&rt).iter(|| {
                    let h = be.history.clone();
                    async move { black_box(h.page(paged, page).await.expect("page")) }
                })
            });
        }
        g.bench_function(format!("get by id/{}", be.name), |b| {
            b.to_async(&rt).iter(|| {
                let h = be.history.clone();
                async move { black_box(h.get(paged, middle).await.expect("get")) }
            })
        });
        // Fan-out on write: one message into 2 and into 100 inboxes.
        for (label, recipients) in [("2 inboxes", &members), ("100 inboxes", &group)] {
            g.bench_function(format!("inbox push to {label}/{}", be.name), |b| {
                b.to_async(&rt).iter_batched(
                    || message(&ids, channel, sender),
                    |m| {
                        let inbox = be.inbox.clone();
                        let r = recipients.clone();
                        async move { inbox.push(&r, &m).await.expect("push") }
                    },
                    BatchSize::SmallInput,
                )
            });
        }
        g.bench_function(format!("inbox read 200 after a cursor/{}", be.name), |b| {
            b.to_async(&rt).iter(|| {
                let inbox = be.inbox.clone();
                let user = group[0];
                async move { black_box(inbox.read(user, MessageId::ZERO, 200).await.expect("read")) }
            })
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(30)
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1));
    targets = store
}
criterion_main!(benches);
