//! [`Inbox`] for [`PostgresStore`]: entries by position, device cursors.

use async_trait::async_trait;
use chat_core::{DeviceId, Inbox, InboxEntry, Paged, Result, Seq, UserId};

use super::{limit_to_sql, message_from_row, pg_error, within_budget, PostgresStore};

/// A user's inbox after a position: a forward range scan of
/// `inbox_entries_pkey`, with the running byte count of the page (content
/// past the budget `$4` is not sent; see [`within_budget`]). The message
/// columns come first, as [`message_from_row`] reads them; the position
/// last.
pub(super) const READ: &str = "SELECT channel_id, message_id, sender, \
     CASE WHEN rn = 1 OR running <= $4 THEN content END, created_at, client_msg_id, reply_to, attachments, seq, \
     edited_at, deleted, change \
     FROM (SELECT seq, channel_id, message_id, sender, content, created_at, client_msg_id, reply_to, \
                  attachments, edited_at, deleted, change, \
                  row_number() OVER w AS rn, sum(octet_length(content) + 256) OVER w AS running \
           FROM inbox_entries WHERE user_id = $1 AND seq > $2 \
           WINDOW w AS (ORDER BY seq) ORDER BY seq LIMIT $3) page \
     ORDER BY seq";

/// One device's cursor (a plain position).
pub(super) const CURSOR: &str = "SELECT cursor FROM cursors WHERE user_id = $1 AND device_id = $2";

/// Moves a cursor forward, atomically: the stored value becomes the larger
/// of stored and given, and is returned.
pub(super) const ADVANCE: &str = "INSERT INTO cursors AS c (user_id, device_id, cursor) \
     VALUES ($1, $2, $3) \
     ON CONFLICT (user_id, device_id) DO UPDATE SET cursor = GREATEST(c.cursor, EXCLUDED.cursor) \
     RETURNING cursor";

/// A position as stored (positions stay far below 2^63).
fn seq_to_sql(seq: Seq) -> i64 {
    i64::try_from(seq.0).unwrap_or(i64::MAX)
}

/// The inverse of [`seq_to_sql`].
pub(super) fn seq_from_sql(stored: i64) -> Seq {
    Seq(u64::try_from(stored).unwrap_or(0))
}

#[async_trait]
impl Inbox for PostgresStore {
    async fn read(
        &self,
        user: UserId,
        after: Seq,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Paged<InboxEntry>> {
        if limit == 0 || after.0 >= i64::MAX as u64 {
            return Ok(Paged::empty());
        }
        self.run(move |client| {
            Box::pin(async move {
                let read = client.prepare_cached(READ).await.map_err(pg_error)?;
                let rows = client
                    .query(
                        &read,
                        &[
                            &user.0,
                            &seq_to_sql(after),
                            &limit_to_sql(limit.saturating_add(1)),
                            &limit_to_sql(max_bytes),
                        ],
                    )
                    .await
                    .map_err(pg_error)?;
                within_budget(&rows, limit, |row| {
                    Ok(InboxEntry {
                        seq: seq_from_sql(row.try_get(8).map_err(pg_error)?),
                        message: message_from_row(row)?,
                        change: match row.try_get::<_, Option<&str>>("change").map_err(pg_error)? {
                            Some(json) => Some(serde_json::from_str(json).map_err(|e| {
                                super::corrupt("inbox entry", format!("change: {e}"))
                            })?),
                            None => None,
                        },
                    })
                })
            })
        })
        .await
    }

    async fn cursor(&self, user: UserId, device: DeviceId) -> Result<Seq> {
        self.run(move |client| {
            Box::pin(async move {
                let cursor = client.prepare_cached(CURSOR).await.map_err(pg_error)?;
                match client
                    .query_opt(&cursor, &[&user.0, &device.0])
                    .await
                    .map_err(pg_error)?
                {
                    Some(row) => Ok(seq_from_sql(row.try_get(0).map_err(pg_error)?)),
                    None => Ok(Seq::ZERO),
                }
            })
        })
        .await
    }

    async fn advance_cursor(&self, user: UserId, device: DeviceId, cursor: Seq) -> Result<Seq> {
        self.run(move |client| {
            Box::pin(async move {
                let advance = client.prepare_cached(ADVANCE).await.map_err(pg_error)?;
                let row = client
                    .query_one(&advance, &[&user.0, &device.0, &seq_to_sql(cursor)])
                    .await
                    .map_err(pg_error)?;
                Ok(seq_from_sql(row.try_get(0).map_err(pg_error)?))
            })
        })
        .await
    }
}
