//! Versioned migrations, applied under an advisory lock.
//!
//! Each [`Migration`] is a version, a name and SQL in which `{schema}`
//! stands for the quoted schema name. A migration is never edited once
//! released: a change to the schema is a new migration with the next
//! version. Every statement here names the schema explicitly (the data
//! statements rely on the connection's `search_path` instead), so the
//! migrations are right whatever a connection's settings.

use chat_core::{Error, Result};

use super::{pg_error, pool_error, Inner, BACKEND};

/// One schema change.
#[derive(Debug, Clone, Copy)]
struct Migration {
    /// Applied in ascending order; recorded in `schema_migrations`.
    version: i32,
    /// What it does, recorded too.
    name: &'static str,
    /// The DDL, `{schema}` standing for the quoted schema name.
    sql: &'static str,
}

/// Every migration this build knows, in version order.
const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "messages, inbox, cursors, users, friends, channels, members, devices",
        sql: r#"
CREATE TABLE {schema}.messages (
    channel_id    uuid   NOT NULL,
    message_id    bigint NOT NULL, -- u64 id with the sign bit flipped: bigint order = u64 order
    sender        uuid   NOT NULL,
    content       text   NOT NULL,
    created_at    bigint NOT NULL, -- Unix ms
    client_msg_id text   NOT NULL,
    CONSTRAINT messages_pkey PRIMARY KEY (channel_id, message_id),
    CONSTRAINT messages_idempotency_key UNIQUE (sender, client_msg_id)
);

CREATE TABLE {schema}.inbox (
    user_id       uuid   NOT NULL,
    message_id    bigint NOT NULL,
    channel_id    uuid   NOT NULL,
    sender        uuid   NOT NULL,
    content       text   NOT NULL,
    created_at    bigint NOT NULL,
    client_msg_id text   NOT NULL,
    CONSTRAINT inbox_pkey PRIMARY KEY (user_id, message_id)
);

CREATE TABLE {schema}.cursors (
    user_id   uuid   NOT NULL,
    device_id uuid   NOT NULL,
    cursor    bigint NOT NULL,
    CONSTRAINT cursors_pkey PRIMARY KEY (user_id, device_id)
);

CREATE TABLE {schema}.users (
    user_id       uuid   NOT NULL,
    username      text   NOT NULL,
    display_name  text   NOT NULL,
    about         text   NOT NULL,
    created_at    bigint NOT NULL,
    password_hash text   NOT NULL,
    CONSTRAINT users_pkey PRIMARY KEY (user_id),
    CONSTRAINT users_username_key UNIQUE (username)
);

CREATE TABLE {schema}.friends (
    user_id   uuid NOT NULL,
    friend_id uuid NOT NULL,
    CONSTRAINT friends_pkey PRIMARY KEY (user_id, friend_id),
    CONSTRAINT friends_not_self CHECK (user_id <> friend_id),
    CONSTRAINT friends_user_fk FOREIGN KEY (user_id) REFERENCES {schema}.users (user_id),
    CONSTRAINT friends_friend_fk FOREIGN KEY (friend_id) REFERENCES {schema}.users (user_id)
);

CREATE TABLE {schema}.channels (
    channel_id uuid   NOT NULL,
    kind       text   NOT NULL,
    name       text   NOT NULL,
    owner      uuid,
    created_at bigint NOT NULL,
    CONSTRAINT channels_pkey PRIMARY KEY (channel_id),
    CONSTRAINT channels_kind CHECK (kind IN ('direct', 'group')),
    CONSTRAINT channels_owner_fk FOREIGN KEY (owner) REFERENCES {schema}.users (user_id)
);

CREATE TABLE {schema}.channel_members (
    channel_id uuid NOT NULL,
    user_id    uuid NOT NULL,
    CONSTRAINT channel_members_pkey PRIMARY KEY (channel_id, user_id),
    CONSTRAINT channel_members_channel_fk FOREIGN KEY (channel_id) REFERENCES {schema}.channels (channel_id),
    CONSTRAINT channel_members_user_fk FOREIGN KEY (user_id) REFERENCES {schema}.users (user_id)
);
-- channels_of(user), sorted by channel.
CREATE INDEX channel_members_by_user ON {schema}.channel_members (user_id, channel_id);

CREATE TABLE {schema}.devices (
    user_id    uuid   NOT NULL,
    device_id  uuid   NOT NULL,
    platform   text   NOT NULL,
    push_token text,
    created_at bigint NOT NULL,
    CONSTRAINT devices_pkey PRIMARY KEY (user_id, device_id),
    CONSTRAINT devices_user_fk FOREIGN KEY (user_id) REFERENCES {schema}.users (user_id)
);
"#,
    },
    Migration {
        version: 2,
        name: "idempotency key scoped to the channel",
        // The key lives with the channel's messages (a sharded history keeps
        // it on the channel's shard); the unique index leads with
        // channel_id like the primary key.
        sql: r#"
ALTER TABLE {schema}.messages DROP CONSTRAINT messages_idempotency_key;
ALTER TABLE {schema}.messages
    ADD CONSTRAINT messages_idempotency_key UNIQUE (channel_id, sender, client_msg_id);
"#,
    },
];

/// The newest version this build knows.
pub(super) fn latest_version() -> i32 {
    MIGRATIONS.last().map_or(0, |m| m.version)
}

/// Applies every pending migration, in one transaction that holds a
/// transaction-scoped advisory lock keyed by the schema name: servers
/// starting at once apply each migration exactly once, the others wait and
/// then find nothing to do. Then checks that pooled connections resolve
/// unqualified names in the schema (their `search_path`).
pub(super) async fn migrate(inner: &Inner) -> Result<()> {
    let schema = inner.schema.as_str();
    let quoted = quote_ident(schema);
    let mut client = inner.pool.get().await.map_err(pool_error)?;
    let tx = client.transaction().await.map_err(pg_error)?;
    // Waiting for another server's migration, and migrations themselves,
    // may take longer than an ordinary statement: they get
    // `migration_timeout`, which also bounds the whole step client-side.
    tx.batch_execute(&format!(
        "SET LOCAL statement_timeout = {}",
        inner.migration_statement_ms
    ))
    .await
    .map_err(pg_error)?;
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
        &[&format!("chat_store.migrations.{schema}")],
    )
    .await
    .map_err(pg_error)?;

    // Create the schema only if missing: CREATE SCHEMA needs a privilege
    // on the database that a deployment with a provisioned schema may not
    // grant, even with IF NOT EXISTS.
    let exists = tx
        .query_opt("SELECT 1 FROM pg_namespace WHERE nspname = $1", &[&schema])
        .await
        .map_err(pg_error)?
        .is_some();
    if !exists {
        tx.batch_execute(&format!("CREATE SCHEMA {quoted}"))
            .await
            .map_err(pg_error)?;
    }
    tx.batch_execute(&format!(
        "CREATE TABLE IF NOT EXISTS {quoted}.schema_migrations (
             version    integer     NOT NULL PRIMARY KEY,
             name       text        NOT NULL,
             applied_at timestamptz NOT NULL DEFAULT now()
         )"
    ))
    .await
    .map_err(pg_error)?;

    let applied: Vec<i32> = tx
        .query(
            &format!("SELECT version FROM {quoted}.schema_migrations ORDER BY version"),
            &[],
        )
        .await
        .map_err(pg_error)?
        .iter()
        .map(|row| row.try_get(0))
        .collect::<Result<_, _>>()
        .map_err(pg_error)?;
    let latest = latest_version();
    if let Some(newest) = applied.iter().copied().find(|v| *v > latest) {
        return Err(Error::backend(
            BACKEND,
            format!(
                "schema {schema} is at version {newest}, newer than this build's {latest}: \
                 upgrade this server"
            ),
        ));
    }
    for m in MIGRATIONS.iter().filter(|m| !applied.contains(&m.version)) {
        tracing::info!(
            schema,
            version = m.version,
            name = m.name,
            "applying migration"
        );
        tx.batch_execute(&m.sql.replace("{schema}", &quoted))
            .await
            .map_err(pg_error)?;
        tx.execute(
            &format!("INSERT INTO {quoted}.schema_migrations (version, name) VALUES ($1, $2)"),
            &[&m.version, &m.name],
        )
        .await
        .map_err(pg_error)?;
    }

    // The data statements name no schema: they rely on the search_path the
    // connection was opened with. A pooler that drops startup options
    // would silently point them elsewhere; refuse instead.
    let current: Option<String> = tx
        .query_one("SELECT current_schema()", &[])
        .await
        .map_err(pg_error)?
        .try_get(0)
        .map_err(pg_error)?;
    if current.as_deref() != Some(schema) {
        return Err(Error::backend(
            BACKEND,
            format!(
                "connections resolve names in schema {current:?}, not {schema:?}: the \
                 search_path startup option was not applied (a connection pooler in front?)"
            ),
        ));
    }
    tx.commit().await.map_err(pg_error)
}

/// A quoted SQL identifier.
fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_in_strictly_ascending_order() {
        assert!(MIGRATIONS.windows(2).all(|w| w[0].version < w[1].version));
        assert!(MIGRATIONS.iter().all(|m| m.version > 0));
        assert_eq!(latest_version(), MIGRATIONS.len() as i32);
    }

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(quote_ident("chat"), "\"chat\"");
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
    }
}
