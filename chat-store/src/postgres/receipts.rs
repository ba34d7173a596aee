//! [`Receipts`] for [`PostgresStore`]: message numbers, read and delivered
//! markers (migration 6).
//!
//! A commit numbers its messages and moves each sender's read marker in
//! the transaction of its batch (the `commit_messages` function of
//! migration 6 wraps the one of migration 5 and does both, set-based, for
//! the batch's new messages). A marker moves with one `INSERT .. ON
//! CONFLICT DO UPDATE .. WHERE` that keeps the larger number, so
//! concurrent moves and commits never take it back. The channel list reads
//! `channels` (head: `last_message_id`, `message_count`) and `receipts` by
//! key, never history.

use async_trait::async_trait;
use chat_core::receipts::check_receipt_keys;
use chat_core::{
    ChannelId, Error, Marker, MarkerKind, MarkerUpdate, MessageId, Receipt, Receipts, Result,
    UserId,
};

use super::{id_from_sql, id_to_sql, pg_error, PostgresStore};

/// Message numbers, markers, and the commit that writes both.
///
/// * `channels.message_count`: the number of the channel's last message.
/// * `messages.n`, `sends.n`: each committed message's number (in history,
///   or in the outbox record of a fan-out commit). Existing messages are
///   numbered 1, 2, ... per channel in id order.
/// * `receipts`: `(user, channel)` → read and delivered markers.
/// * `commit_messages` (the 8-argument one): the migration-5 function,
///   renamed `commit_messages_v5`, then, in the same transaction, numbers
///   the new messages (per channel in id order, after `message_count`)
///   and moves each sender's read marker to their last new message.
pub(super) const MIGRATION_6: &str = r#"
ALTER TABLE {schema}.channels ADD COLUMN message_count bigint NOT NULL DEFAULT 0;
ALTER TABLE {schema}.messages ADD COLUMN n bigint;
ALTER TABLE {schema}.sends ADD COLUMN n bigint;

CREATE TABLE {schema}.receipts (
    user_id      uuid   NOT NULL,
    channel_id   uuid   NOT NULL,
    read_id      bigint,
    read_n       bigint,
    delivered_id bigint,
    delivered_n  bigint,
    CONSTRAINT receipts_pkey PRIMARY KEY (user_id, channel_id)
);

UPDATE {schema}.messages m SET n = x.n
    FROM (SELECT channel_id, message_id,
                 row_number() OVER (PARTITION BY channel_id ORDER BY message_id) AS n
          FROM {schema}.messages) x
    WHERE m.channel_id = x.channel_id AND m.message_id = x.message_id;
UPDATE {schema}.sends s SET n = x.n
    FROM (SELECT channel_id, message_id,
                 row_number() OVER (PARTITION BY channel_id ORDER BY message_id) AS n
          FROM {schema}.sends) x
    WHERE s.channel_id = x.channel_id AND s.message_id = x.message_id;
UPDATE {schema}.channels ch SET message_count = greatest(
    coalesce((SELECT max(m.n) FROM {schema}.messages m WHERE m.channel_id = ch.channel_id), 0),
    coalesce((SELECT max(s.n) FROM {schema}.sends s WHERE s.channel_id = ch.channel_id), 0));

ALTER FUNCTION {schema}.commit_messages(uuid[], uuid[], text[], text[], bigint[], bigint[],
                                        boolean[], bigint[])
    RENAME TO commit_messages_v5;

CREATE FUNCTION {schema}.commit_messages(
    p_channels uuid[], p_senders uuid[], p_keys text[], p_contents text[],
    p_created bigint[], p_proposed bigint[], p_outbox boolean[], p_replies bigint[])
RETURNS TABLE (idx integer, status text, message_id bigint, created_at bigint,
               users uuid[], seqs bigint[])
LANGUAGE plpgsql AS $fn$
#variable_conflict use_column
DECLARE
    r record;
    v_new integer[] := '{}';
    v_ids bigint[] := '{}';
    v_done bigint;
BEGIN
    FOR r IN SELECT * FROM {schema}.commit_messages_v5(p_channels, p_senders, p_keys, p_contents,
                                                      p_created, p_proposed, p_outbox, p_replies) LOOP
        IF r.status = 'new' THEN
            v_new := v_new || (r.idx + 1);
            v_ids := v_ids || r.message_id;
        END IF;
        idx := r.idx;
        status := r.status;
        message_id := r.message_id;
        created_at := r.created_at;
        users := r.users;
        seqs := r.seqs;
        RETURN NEXT;
    END LOOP;
    IF cardinality(v_new) > 0 THEN
        WITH nw AS (
            SELECT p_channels[t.i] AS ch, p_senders[t.i] AS sender, p_outbox[t.i] AS outbox,
                   t.id, row_number() OVER (PARTITION BY p_channels[t.i] ORDER BY t.id) AS k
            FROM unnest(v_new, v_ids) AS t(i, id)
        ), bumped AS (
            UPDATE {schema}.channels c SET message_count = c.message_count + x.cnt
            FROM (SELECT nw.ch, count(*) AS cnt FROM nw GROUP BY nw.ch) x
            WHERE c.channel_id = x.ch
            RETURNING c.channel_id, c.message_count - x.cnt AS base
        ), numbered AS (
            SELECT nw.ch, nw.sender, nw.outbox, nw.id, b.base + nw.k AS n
            FROM nw JOIN bumped b ON b.channel_id = nw.ch
        ), in_history AS (
            UPDATE {schema}.messages m SET n = nb.n FROM numbered nb
            WHERE NOT nb.outbox AND m.channel_id = nb.ch AND m.message_id = nb.id
            RETURNING 1
        ), in_outbox AS (
            UPDATE {schema}.sends s SET n = nb.n FROM numbered nb
            WHERE nb.outbox AND s.channel_id = nb.ch AND s.message_id = nb.id
            RETURNING 1
        ), own_reads AS (
            INSERT INTO {schema}.receipts AS rc (user_id, channel_id, read_id, read_n)
            SELECT DISTINCT ON (nb.sender, nb.ch) nb.sender, nb.ch, nb.id, nb.n
            FROM numbered nb ORDER BY nb.sender, nb.ch, nb.n DESC
            ON CONFLICT (user_id, channel_id) DO UPDATE
                SET read_id = EXCLUDED.read_id, read_n = EXCLUDED.read_n
                WHERE rc.read_n IS NULL OR rc.read_n < EXCLUDED.read_n
            RETURNING 1
        )
        SELECT (SELECT count(*) FROM in_history) + (SELECT count(*) FROM in_outbox)
               + (SELECT count(*) FROM own_reads)
        INTO v_done;
    END IF;
END
$fn$;
"#;

/// The number of message `$3` of channel `$2` (history or outbox), and the
/// read marker of `$1` moved to it if that is forward: `(number, id,
/// number)` of the moved marker, or nulls.
const SET_READ: &str = "WITH num AS (\
       (SELECT n FROM messages WHERE channel_id = $2 AND message_id = $3 AND n IS NOT NULL) \
       UNION ALL \
       (SELECT n FROM sends WHERE channel_id = $2 AND message_id = $3 AND n IS NOT NULL) \
       LIMIT 1), \
     up AS (INSERT INTO receipts AS rc (user_id, channel_id, read_id, read_n) \
       SELECT $1, $2, $3, num.n FROM num \
       ON CONFLICT (user_id, channel_id) DO UPDATE \
         SET read_id = EXCLUDED.read_id, read_n = EXCLUDED.read_n \
         WHERE rc.read_n IS NULL OR rc.read_n < EXCLUDED.read_n \
       RETURNING rc.read_id, rc.read_n) \
     SELECT (SELECT n FROM num), (SELECT read_id FROM up), (SELECT read_n FROM up)";

/// [`SET_READ`] for the delivered marker.
const SET_DELIVERED: &str = "WITH num AS (\
       (SELECT n FROM messages WHERE channel_id = $2 AND message_id = $3 AND n IS NOT NULL) \
       UNION ALL \
       (SELECT n FROM sends WHERE channel_id = $2 AND message_id = $3 AND n IS NOT NULL) \
       LIMIT 1), \
     up AS (INSERT INTO receipts AS rc (user_id, channel_id, delivered_id, delivered_n) \
       SELECT $1, $2, $3, num.n FROM num \
       ON CONFLICT (user_id, channel_id) DO UPDATE \
         SET delivered_id = EXCLUDED.delivered_id, delivered_n = EXCLUDED.delivered_n \
         WHERE rc.delivered_n IS NULL OR rc.delivered_n < EXCLUDED.delivered_n \
       RETURNING rc.delivered_id, rc.delivered_n) \
     SELECT (SELECT n FROM num), (SELECT delivered_id FROM up), (SELECT delivered_n FROM up)";

/// The markers of each `(user, channel)` pair, in the order given.
const RECEIPTS: &str = "SELECT r.read_id, r.read_n, r.delivered_id, r.delivered_n \
     FROM unnest($1::uuid[], $2::uuid[]) WITH ORDINALITY AS k(u, c, i) \
     LEFT JOIN receipts r ON r.user_id = k.u AND r.channel_id = k.c ORDER BY k.i";

/// The head of each channel, in the order given.
const HEADS: &str = "SELECT ch.last_message_id, ch.message_count \
     FROM unnest($1::uuid[]) WITH ORDINALITY AS k(c, i) \
     LEFT JOIN channels ch ON ch.channel_id = k.c ORDER BY k.i";

fn marker(id: Option<i64>, number: Option<i64>) -> Option<Marker> {
    match (id, number) {
        (Some(id), Some(n)) if n > 0 => Some(Marker {
            id: id_from_sql(id),
            number: n as u64,
        }),
        _ => None,
    }
}

#[async_trait]
impl Receipts for PostgresStore {
    async fn set_marker(
        &self,
        user: UserId,
        channel: ChannelId,
        kind: MarkerKind,
        message: MessageId,
    ) -> Result<MarkerUpdate> {
        let (set, column) = match kind {
            MarkerKind::Read => (SET_READ, "read"),
            MarkerKind::Delivered => (SET_DELIVERED, "delivered"),
        };
        self.run(move |client| {
            Box::pin(async move {
                let statement = client.prepare_cached(set).await.map_err(pg_error)?;
                let row = client
                    .query_one(&statement, &[&user.0, &channel.0, &id_to_sql(message)])
                    .await
                    .map_err(pg_error)?;
                let number: Option<i64> = row.try_get(0).map_err(pg_error)?;
                let Some(number) = number else {
                    return Err(Error::not_found("message"));
                };
                if let Some(m) = marker(
                    row.try_get(1).map_err(pg_error)?,
                    row.try_get(2).map_err(pg_error)?,
                ) {
                    return Ok(MarkerUpdate {
                        marker: m,
                        moved: true,
                    });
                }
                // Not moved: a marker at or past it is stored.
                let stored = client
                    .query_opt(
                        &format!(
                            "SELECT {column}_id, {column}_n FROM receipts \
                             WHERE user_id = $1 AND channel_id = $2"
                        ),
                        &[&user.0, &channel.0],
                    )
                    .await
                    .map_err(pg_error)?;
                let stored = match stored {
                    Some(row) => marker(
                        row.try_get(0).map_err(pg_error)?,
                        row.try_get(1).map_err(pg_error)?,
                    ),
                    None => None,
                };
                Ok(MarkerUpdate {
                    marker: stored.unwrap_or(Marker {
                        id: message,
                        number: number as u64,
                    }),
                    moved: false,
                })
            })
        })
        .await
    }

    async fn receipts(&self, keys: &[(UserId, ChannelId)]) -> Result<Vec<Receipt>> {
        check_receipt_keys(keys.len())?;
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let users: Vec<uuid::Uuid> = keys.iter().map(|(u, _)| u.0).collect();
        let channels: Vec<uuid::Uuid> = keys.iter().map(|(_, c)| c.0).collect();
        self.run(move |client| {
            Box::pin(async move {
                let statement = client.prepare_cached(RECEIPTS).await.map_err(pg_error)?;
                let rows = client
                    .query(&statement, &[&users, &channels])
                    .await
                    .map_err(pg_error)?;
                rows.iter()
                    .map(|row| {
                        Ok(Receipt {
                            read: marker(
                                row.try_get(0).map_err(pg_error)?,
                                row.try_get(1).map_err(pg_error)?,
                            ),
                            delivered: marker(
                                row.try_get(2).map_err(pg_error)?,
                                row.try_get(3).map_err(pg_error)?,
                            ),
                        })
                    })
                    .collect()
            })
        })
        .await
    }

    async fn heads(&self, channels: &[ChannelId]) -> Result<Vec<Option<Marker>>> {
        check_receipt_keys(channels.len())?;
        if channels.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<uuid::Uuid> = channels.iter().map(|c| c.0).collect();
        self.run(move |client| {
            Box::pin(async move {
                let statement = client.prepare_cached(HEADS).await.map_err(pg_error)?;
                let rows = client.query(&statement, &[&ids]).await.map_err(pg_error)?;
                rows.iter()
                    .map(|row| {
                        Ok(marker(
                            row.try_get(0).map_err(pg_error)?,
                            row.try_get(1).map_err(pg_error)?,
                        ))
                    })
                    .collect()
            })
        })
        .await
    }
}
