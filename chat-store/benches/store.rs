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

use chat_core::memory::MemoryStore;
use chat_core::{
    Action, Channel, ChannelId, ChannelKind, ClientMsgId, Directory, Message, MessageStore,
    NewChange, NewMessage, Page, Profile, Seq, Snowflake, User, UserId, UserRecord,
};
use chat_store::embedded::EmbeddedStore;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion};

const TEXT: &str = "a typical chat message of about sixty characters, give or take";

fn message(ids: &Snowflake, channel: ChannelId, sender: UserId) -> Message {
    Message {
        id: ids.generate(),
        channel_id: channel,
        sender,
        content: TEXT.into(),
        created_at: 0,
        client_msg_id: ClientMsgId::new_random(),
        reply_to: None,
        edited_at: None,
        deleted: false,
        reactions: Vec::new(),
        attachments: Vec::new(),
    }
}

fn new_message(ids: &Snowflake, channel: ChannelId, sender: UserId) -> NewMessage {
    NewMessage {
        id: ids.generate(),
        channel_id: channel,
        sender,
        content: TEXT.into(),
        created_at: 0,
        client_msg_id: ClientMsgId::new_random(),
        timeout: Duration::from_secs(30),
        reply_to: None,
        attachments: Vec::new(),
    }
}

struct Backend {
    name: &'static str,
    messages: Arc<dyn MessageStore>,
    directory: Arc<dyn Directory>,
}

fn backends(dir: &std::path::Path, rt: &tokio::runtime::Runtime) -> Vec<Backend> {
    let embedded = Arc::new(EmbeddedStore::open(dir).expect("open store"));
    let memory = Arc::new(MemoryStore::default());
    #[cfg(not(feature = "postgres"))]
    let _ = rt;
    vec![
        #[cfg(feature = "postgres")]
        postgres(rt),
        Backend {
            name: "memory",
            directory: memory.directory(),
            messages: memory,
        },
        Backend {
            name: "embedded",
            messages: embedded.clone(),
            directory: embedded,
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
        messages: store.clone(),
        directory: store,
    }
}

/// `n` new users in `directory`.
async fn users(directory: &dyn Directory, n: usize) -> Vec<UserId> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let id = UserId::new_random();
        let user = User {
            id,
            username: format!("b{}", &id.0.simple().to_string()[..24]),
            profile: Profile::default(),
            created_at: 0,
        };
        directory
            .create_user(UserRecord {
                user,
                password_hash: "h".into(),
            })
            .await
            .expect("create user");
        out.push(id);
    }
    out
}

fn store(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let ids = Snowflake::new(1).expect("node id");

    let mut g = c.benchmark_group("history");
    for be in backends(dir.path(), &rt) {
        let (direct, group, reader) = rt.block_on(async {
            let people = users(&*be.directory, 100).await;
            let direct = be
                .directory
                .create_channel(
                    Channel::direct(people[0], people[1], 0),
                    &chat_core::Limits::default(),
                )
                .await
                .expect("direct");
            let group = be
                .directory
                .create_channel(
                    Channel {
                        id: ChannelId::new_random(),
                        kind: ChannelKind::Group,
                        name: "bench".into(),
                        owner: Some(people[0]),
                        members: people.clone(),
                        created_at: 0,
                    },
                    &chat_core::Limits::default(),
                )
                .await
                .expect("group");
            (direct, group, people[1])
        });
        let sender = direct.members[0].min(direct.members[1]);
        // The send path: history and every member's inbox in one commit.
        for (label, channel) in [("1:1", &direct), ("group of 100", &group)] {
            g.bench_function(format!("commit {label}/{}", be.name), |b| {
                b.to_async(&rt).iter_batched(
                    || new_message(&ids, channel.id, sender),
                    |m| {
                        let s = be.messages.clone();
                        async move { black_box(s.commit(m).await.expect("commit")) }
                    },
                    BatchSize::SmallInput,
                )
            });
        }
        // A change: the message's new state and a change entry in every
        // member's inbox, in one write. The content alternates, so every
        // edit writes.
        for (label, channel) in [("1:1", &direct), ("group of 100", &group)] {
            let target = rt
                .block_on(be.messages.commit(new_message(&ids, channel.id, sender)))
                .expect("commit")
                .message
                .id;
            let flip = std::sync::atomic::AtomicU64::new(0);
            g.bench_function(format!("edit {label}/{}", be.name), |b| {
                b.to_async(&rt).iter_batched(
                    || {
                        let n = flip.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        NewChange {
                            channel_id: channel.id,
                            message_id: target,
                            actor: sender,
                            action: Action::Edit {
                                content: format!("edited {n}"),
                            },
                            at: n,
                            timeout: Duration::from_secs(30),
                        }
                    },
                    |c| {
                        let s = be.messages.clone();
                        async move { black_box(s.change(c).await.expect("change")) }
                    },
                    BatchSize::SmallInput,
                )
            });
        }
        let channel = ChannelId::new_random();
        g.bench_function(format!("append/{}", be.name), |b| {
            b.to_async(&rt).iter_batched(
                || message(&ids, channel, sender),
                |m| {
                    let h = be.messages.clone();
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
                be.messages.append(m).await.expect("append");
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
                    let h = be.messages.clone();
                    async move { black_box(h.page(paged, page).await.expect("page")) }
                })
            });
        }
        g.bench_function(format!("get by id/{}", be.name), |b| {
            b.to_async(&rt).iter(|| {
                let h = be.messages.clone();
                async move { black_box(h.get(paged, middle).await.expect("get")) }
            })
        });
        g.bench_function(format!("inbox read 200 after a cursor/{}", be.name), |b| {
            b.to_async(&rt).iter(|| {
                let inbox = be.messages.clone();
                async move {
                    black_box(
                        inbox
                            .read(reader, Seq::ZERO, 200, usize::MAX)
                            .await
                            .expect("read"),
                    )
                }
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
