//! Search at scale: loads N messages (default 1,000,000) into the embedded
//! store and into PostgreSQL, then reports each index's size and the
//! latency of searches over one user's channels. The numbers are in
//! docs/benchmarks.md.
//!
//! ```sh
//! cargo run --release -p chat-store --features postgres --example search_bench -- 1000000
//! ```
//!
//! The messages: 1,000 channels of N / 1,000 messages each, 8 to 15 words
//! a message drawn from a 20,000-word vocabulary with a Zipf-like skew (so
//! a few words are in most messages and most words in few). The user
//! searches the 50 channels they are a member of. PostgreSQL is the local
//! server (`CHAT_TEST_PG_URL`, default postgres://postgres@127.0.0.1:5432/postgres),
//! in a schema of its own, dropped at the end; its messages are inserted
//! with one `INSERT ... SELECT` per 100,000 (the load is not what is
//! measured). The embedded store is loaded through `append`, 512 at once.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use chat_core::{ChannelId, ClientMsgId, HistoryStore, Message, MessageId, MessageSearch, UserId};
use chat_store::embedded::EmbeddedStore;
use chat_store::postgres::{PostgresConfig, PostgresStore};
use rand::{Rng, SeedableRng};

const CHANNELS: usize = 1_000;
const VOCABULARY: usize = 20_000;
const SEARCHED: usize = 50;
const RUNS: usize = 200;

/// Word `i` of the vocabulary: `w<i>` spelled in letters (no digits, so
/// every backend reads it as one plain word).
fn word(i: usize) -> String {
    let mut s = String::from("w");
    let mut n = i;
    loop {
        s.push(char::from(b'a' + (n % 26) as u8));
        n /= 26;
        if n == 0 {
            return s;
        }
    }
}

/// A Zipf-like draw: rank `r` with weight about `1 / (r + 1)`.
fn draw(rng: &mut rand::rngs::StdRng) -> usize {
    let u: f64 = rng.gen();
    ((VOCABULARY as f64 + 1.0).powf(u) - 1.0) as usize % VOCABULARY
}

fn content(rng: &mut rand::rngs::StdRng) -> String {
    let n = rng.gen_range(8..=15);
    (0..n)
        .map(|_| word(draw(rng)))
        .collect::<Vec<_>>()
        .join(" ")
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// Latency of `RUNS` searches of `query` (first page of 20).
async fn measure(search: &dyn MessageSearch, channels: &[ChannelId], query: &str) -> String {
    let first = search.search(channels, query, None, 20).await.unwrap();
    let mut times = Vec::with_capacity(RUNS);
    for _ in 0..RUNS {
        let t = Instant::now();
        let page = search.search(channels, query, None, 20).await.unwrap();
        times.push(t.elapsed());
        assert_eq!(page.items.len(), first.items.len());
    }
    times.sort();
    format!(
        "{query:>14}: {:>2} results, p50 {:>8.2?} p99 {:>8.2?}",
        first.items.len(),
        percentile(&times, 0.5),
        percentile(&times, 0.99)
    )
}

fn dir_size(path: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(path) else {
        return 0;
    };
    entries
        .filter_map(|e| e.ok())
        .map(|e| {
            let p = e.path();
            if p.is_dir() {
                dir_size(&p)
            } else {
                e.metadata().map(|m| m.len()).unwrap_or(0)
            }
        })
        .sum()
}

fn queries() -> Vec<String> {
    vec![
        word(0),                             // in most messages
        word(30),                            // common
        word(2_000),                         // uncommon
        word(15_000),                        // rare
        format!("{} {}", word(0), word(30)), // two common words
        format!("{} {}", word(5), word(9_000)),
    ]
}

#[tokio::main]
async fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse().expect("a message count"))
        .unwrap_or(1_000_000);
    let channels: Vec<ChannelId> = (0..CHANNELS).map(|_| ChannelId::new_random()).collect();
    let searched = &channels[..SEARCHED];
    let sender = UserId::new_random();
    println!("{n} messages, {CHANNELS} channels, searching {SEARCHED} of them");

    // --- PostgreSQL.
    let url = std::env::var("CHAT_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let schema = format!("search_bench_{}", std::process::id());
    let store = PostgresStore::connect(PostgresConfig::new(&url).with_schema(schema.clone()))
        .await
        .unwrap();
    let (admin, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    // Contents made here, inserted by the database in 100,000-row batches.
    let t = Instant::now();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut next_id: i64 = 1;
    let batch = 100_000usize;
    let mut left = n;
    while left > 0 {
        let take = left.min(batch);
        let mut chans = Vec::with_capacity(take);
        let mut ids = Vec::with_capacity(take);
        let mut texts = Vec::with_capacity(take);
        for _ in 0..take {
            chans.push(channels[(next_id as usize) % CHANNELS].0);
            ids.push(next_id);
            texts.push(content(&mut rng));
            next_id += 1;
        }
        admin
            .execute(
                &format!(
                    "INSERT INTO \"{schema}\".messages (channel_id, message_id, sender, content, created_at, client_msg_id) \
                     SELECT c, i, $4, t, 0, 'k' || i FROM unnest($1::uuid[], $2::bigint[], $3::text[]) AS u(c, i, t)"
                ),
                &[&chans, &ids, &texts, &sender.0],
            )
            .await
            .unwrap();
        left -= take;
    }
    admin
        .batch_execute(&format!("ANALYZE \"{schema}\".messages"))
        .await
        .unwrap();
    println!("postgres: loaded in {:.1?}", t.elapsed());
    let row = admin
        .query_one(
            &format!(
                "SELECT pg_relation_size('\"{schema}\".messages_search'), pg_relation_size('\"{schema}\".messages'), pg_total_relation_size('\"{schema}\".messages')"
            ),
            &[],
        )
        .await
        .unwrap();
    let (index, table, total): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
    println!(
        "postgres: GIN index {:.1} MiB, table {:.1} MiB, table with every index {:.1} MiB",
        index as f64 / 1048576.0,
        table as f64 / 1048576.0,
        total as f64 / 1048576.0
    );
    for q in queries() {
        println!("postgres: {}", measure(&store, searched, &q).await);
    }
    admin
        .batch_execute(&format!("DROP SCHEMA \"{schema}\" CASCADE"))
        .await
        .unwrap();

    // --- The embedded store.
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
    let t = Instant::now();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut tasks = tokio::task::JoinSet::new();
    let mut logical = 0usize;
    for k in 0..n {
        let text = content(&mut rng);
        // Each entry's key: the word, 0x00, the channel and the id.
        logical += chat_core::search::words(&text)
            .iter()
            .map(|w| w.len() + 25)
            .sum::<usize>();
        let message = Message {
            id: MessageId(k as u64 + 1),
            channel_id: channels[(k + 1) % CHANNELS],
            sender,
            content: text,
            created_at: 0,
            client_msg_id: ClientMsgId::new(format!("k{k}")).unwrap(),
            reply_to: None,
            edited_at: None,
            deleted: false,
            reactions: Vec::new(),
            attachments: Vec::new(),
        };
        let store = store.clone();
        tasks.spawn(async move { store.append(message).await.unwrap() });
        if tasks.len() >= 512 {
            tasks.join_next().await;
        }
    }
    while tasks.join_next().await.is_some() {}
    println!(
        "embedded: loaded in {:.1?}; index entries' keys {:.1} MiB before compression",
        t.elapsed(),
        logical as f64 / 1048576.0
    );
    for q in queries() {
        println!("embedded: {}", measure(&*store, searched, &q).await);
    }
    drop(store);
    // Sizes after a reopen, the journal replayed into segments.
    let store = EmbeddedStore::open(dir.path()).unwrap();
    drop(store);
    let parts = dir.path().join("partitions");
    println!(
        "embedded: search partition {:.1} MiB, history partition {:.1} MiB, whole store {:.1} MiB",
        dir_size(&parts.join("search")) as f64 / 1048576.0,
        dir_size(&parts.join("history")) as f64 / 1048576.0,
        dir_size(dir.path()) as f64 / 1048576.0
    );
}
