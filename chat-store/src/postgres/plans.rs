//! The query plans of the hot statements, on a real server (see
//! `tests/postgres.rs` for the server and `CHAT_TEST_PG_URL`): each access
//! pattern is one range scan of the index the module docs name, with no
//! sort and no sequential scan.

use std::time::Duration;

use chat_core::{ChannelId, ClientMsgId, HistoryStore, Inbox, Message, MessageId, UserId};
use tokio_postgres::types::ToSql;
use tokio_postgres::NoTls;

use super::{change, history, id_to_sql, inbox, limit_to_sql, PostgresConfig, PostgresStore};

fn url() -> String {
    std::env::var("CHAT_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

async fn admin() -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(&url(), NoTls).await.unwrap();
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

/// The plan of `sql` with `params`, as text, in `schema`.
async fn explain(
    client: &tokio_postgres::Client,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> String {
    client
        .query(&format!("EXPLAIN {sql}"), params)
        .await
        .unwrap()
        .iter()
        .map(|r| r.get::<_, String>(0))
        .collect::<Vec<_>>()
        .join("\n")
}

fn assert_range_scan(plan: &str, index: &str, what: &str) {
    assert!(
        plan.contains("Index Scan") && plan.contains(index),
        "{what} must scan {index}:\n{plan}"
    );
    assert!(
        !plan.contains("Sort") && !plan.contains("Seq Scan"),
        "{what} must not sort or scan the table:\n{plan}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_statements_are_index_range_scans() {
    let schema = format!("chat_test_{}", uuid::Uuid::new_v4().simple());
    let store = PostgresStore::connect(
        PostgresConfig::new(url())
            .with_schema(&schema)
            .with_pool_size(4)
            .with_statement_timeout(Duration::from_secs(30)),
    )
    .await
    .unwrap();

    // 40 channels of 250 messages, each pushed to 4 of 40 users.
    let channels: Vec<ChannelId> = (0..40).map(|_| ChannelId::new_random()).collect();
    let users: Vec<UserId> = (0..40).map(|_| UserId::new_random()).collect();
    let admin = admin().await;
    admin
        .batch_execute(&format!(
            "INSERT INTO \"{schema}\".messages \
             SELECT c, (n::bigint # (-9223372036854775807 - 1)), gen_random_uuid(), 'm', 0, md5(random()::text) \
             FROM unnest('{{{}}}'::uuid[]) AS c, generate_series(1, 250) AS n; \
             INSERT INTO \"{schema}\".inbox_entries \
             SELECT u, n, gen_random_uuid(), (n::bigint # (-9223372036854775807 - 1)), gen_random_uuid(), 'm', 0, md5(random()::text) \
             FROM unnest('{{{}}}'::uuid[]) AS u, generate_series(1, 1000) AS n; \
             ANALYZE \"{schema}\".messages; ANALYZE \"{schema}\".inbox_entries;",
            channels.iter().map(|c| c.0.to_string()).collect::<Vec<_>>().join(","),
            users.iter().map(|u| u.0.to_string()).collect::<Vec<_>>().join(","),
        ))
        .await
        .unwrap();
    admin
        .batch_execute(&format!("SET search_path = \"{schema}\""))
        .await
        .unwrap();

    let c = channels[7].0;
    let (lo, hi) = (id_to_sql(MessageId(0)), id_to_sql(MessageId::MAX));
    let limit = limit_to_sql(50);
    let budget = limit_to_sql(256 << 10);
    let plan = explain(&admin, history::BACKWARD, &[&c, &lo, &hi, &limit, &budget]).await;
    assert_range_scan(&plan, "messages_pkey", "latest page");
    assert!(
        plan.contains("Backward"),
        "latest page reads backward:\n{plan}"
    );
    let before = id_to_sql(MessageId(199));
    let plan = explain(
        &admin,
        history::BACKWARD,
        &[&c, &lo, &before, &limit, &budget],
    )
    .await;
    assert_range_scan(&plan, "messages_pkey", "page before an id");
    let after = id_to_sql(MessageId(101));
    let plan = explain(
        &admin,
        history::FORWARD,
        &[&c, &after, &hi, &limit, &budget],
    )
    .await;
    assert_range_scan(&plan, "messages_pkey", "page after an id");
    let id = id_to_sql(MessageId(120));
    let plan = explain(&admin, history::GET, &[&c, &id]).await;
    assert_range_scan(&plan, "messages_pkey", "jump to an id");
    let plan = explain(&admin, history::BY_KEY, &[&c, &c, &"key"]).await;
    assert_range_scan(&plan, "messages_idempotency_key", "idempotency lookup");
    let cursor = 500i64;
    let plan = explain(
        &admin,
        inbox::READ,
        &[&users[3].0, &cursor, &limit, &budget],
    )
    .await;
    assert_range_scan(&plan, "inbox_entries_pkey", "inbox sync after a cursor");

    // Reactions: 5 users on each of the 250 messages of every channel.
    admin
        .batch_execute(&format!(
            "INSERT INTO \"{schema}\".reactions \
             SELECT m.channel_id, m.message_id, gen_random_uuid(), (ARRAY['a','b','c','d'])[1 + u % 4] \
             FROM \"{schema}\".messages m, generate_series(1, 5) AS u; \
             ANALYZE \"{schema}\".reactions;"
        ))
        .await
        .unwrap();
    // A history page's reactions: the page's ids in the primary key (a
    // bitmap or plain index scan, never the table), then a sort of just
    // those rows for the per-emoji groups.
    let page_ids: Vec<i64> = (150..200u64).map(|k| id_to_sql(MessageId(k))).collect();
    let viewer = users[0].0;
    let plan = explain(&admin, change::REACTIONS, &[&c, &page_ids, &viewer]).await;
    assert!(
        plan.contains("reactions_pkey") && !plan.contains("Seq Scan"),
        "a page's reactions are read through reactions_pkey:\n{plan}"
    );
    let one = id_to_sql(MessageId(160));
    let plan = explain(&admin, change::REACTED, &[&c, &one, &viewer]).await;
    assert!(
        plan.contains("Index Only Scan using reactions_pkey")
            && !plan.contains("Sort")
            && !plan.contains("Seq Scan"),
        "one user's reactions to a message are one range of reactions_pkey:\n{plan}"
    );

    // And the store reads the generated rows as the statements promise.
    let page = store
        .page(ChannelId(c), chat_core::Page::latest(3))
        .await
        .unwrap();
    let ids: Vec<u64> = page.items.iter().map(|m| m.id.0).collect();
    assert_eq!(ids, vec![248, 249, 250]);
    let synced = store
        .read(users[3], chat_core::Seq(998), 10, usize::MAX)
        .await
        .unwrap();
    assert_eq!(synced.items.len(), 2);
    assert_eq!(synced.items[0].seq, chat_core::Seq(999));
    let m = Message {
        id: MessageId(251),
        channel_id: ChannelId(c),
        sender: UserId::new_random(),
        content: "one more".into(),
        created_at: 0,
        client_msg_id: ClientMsgId::new_random(),
        reply_to: None,
        edited_at: None,
        deleted: false,
        reactions: Vec::new(),
        attachments: Vec::new(),
    };
    assert!(!store.append(m).await.unwrap().is_duplicate());

    drop(store);
    admin
        .batch_execute(&format!("DROP SCHEMA \"{schema}\" CASCADE"))
        .await
        .unwrap();
}
