//! [`HistoryStore`] for [`PostgresStore`].

use async_trait::async_trait;
use chat_core::rules::check_duplicate;
use chat_core::{
    Appended, ChannelId, Error, HistoryStore, Message, MessageId, Page, Paged, Result,
};

use super::{
    id_to_sql, limit_to_sql, message_columns, message_from_row, pg_error, time_to_sql,
    within_budget, PostgresStore,
};

/// Stores a message unless either unique index (the id in its channel, or
/// the idempotency key) already holds it, and keeps the channel's last id
/// (if this database holds the channel) at least the message's, so later
/// commits propose above it. Answers how many rows it inserted, 1 or 0.
pub(super) const INSERT: &str = concat!(
    "WITH ins AS (INSERT INTO messages (",
    message_columns!(),
    ", edited_at, deleted) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
    " ON CONFLICT DO NOTHING RETURNING channel_id, message_id),",
    " last AS (UPDATE channels c SET last_message_id = greatest(c.last_message_id, ins.message_id)",
    " FROM ins WHERE c.channel_id = ins.channel_id RETURNING 1)",
    " SELECT count(*) FROM ins"
);

/// The message stored under an idempotency key.
pub(super) const BY_KEY: &str = concat!(
    "SELECT ",
    message_columns!(),
    ", edited_at, deleted FROM messages WHERE channel_id = $1 AND sender = $2 AND client_msg_id = $3"
);

/// One message by id: one lookup in `messages_pkey`.
pub(super) const GET: &str = concat!(
    "SELECT ",
    message_columns!(),
    ", edited_at, deleted FROM messages WHERE channel_id = $1 AND message_id = $2"
);

/// The oldest `$4` messages with stored ids in `[$2, $3]`: a forward range
/// scan of `messages_pkey`, with the running byte count of the page (see
/// [`within_budget`]: content past the budget `$5` is not sent).
pub(super) const FORWARD: &str = concat!(
    "SELECT channel_id, message_id, sender,",
    " CASE WHEN rn = 1 OR running <= $5 THEN content END, created_at, client_msg_id, reply_to,",
    " attachments, edited_at, deleted FROM (SELECT ",
    message_columns!(),
    ", edited_at, deleted, row_number() OVER w AS rn, sum(octet_length(content) + 256) OVER w AS running",
    " FROM messages WHERE channel_id = $1 AND message_id BETWEEN $2 AND $3",
    " WINDOW w AS (ORDER BY message_id) ORDER BY message_id LIMIT $4) page",
    " ORDER BY message_id"
);

/// The newest `$4` messages with stored ids in `[$2, $3]`, newest first: a
/// backward range scan of `messages_pkey`, budgeted like [`FORWARD`].
pub(super) const BACKWARD: &str = concat!(
    "SELECT channel_id, message_id, sender,",
    " CASE WHEN rn = 1 OR running <= $5 THEN content END, created_at, client_msg_id, reply_to,",
    " attachments, edited_at, deleted FROM (SELECT ",
    message_columns!(),
    ", edited_at, deleted, row_number() OVER w AS rn, sum(octet_length(content) + 256) OVER w AS running",
    " FROM messages WHERE channel_id = $1 AND message_id BETWEEN $2 AND $3",
    " WINDOW w AS (ORDER BY message_id DESC) ORDER BY message_id DESC LIMIT $4) page",
    " ORDER BY message_id DESC"
);

/// The inclusive id range a page's exclusive bounds leave, or `None` if no
/// id fits between them.
fn id_range(page: &Page) -> Option<(MessageId, MessageId)> {
    let lo = match page.after {
        Some(a) => a.0.checked_add(1)?,
        None => 0,
    };
    let hi = match page.before {
        Some(b) => b.0.checked_sub(1)?,
        None => u64::MAX,
    };
    (lo <= hi).then_some((MessageId(lo), MessageId(hi)))
}

#[async_trait]
impl HistoryStore for PostgresStore {
    async fn reactions(
        &self,
        channel: ChannelId,
        messages: &[MessageId],
        viewer: chat_core::UserId,
    ) -> Result<Vec<(MessageId, Vec<chat_core::Reactions>)>> {
        self.reactions_of(channel, messages, viewer).await
    }

    async fn append(&self, message: Message) -> Result<Appended> {
        self.run(move |client| {
            Box::pin(async move {
                let insert = client.prepare_cached(INSERT).await.map_err(pg_error)?;
                let inserted: i64 = client
                    .query_one(
                        &insert,
                        &[
                            &message.channel_id.0,
                            &id_to_sql(message.id),
                            &message.sender.0,
                            &message.content,
                            &time_to_sql(message.created_at),
                            &message.client_msg_id.as_str(),
                            &message.reply_to.map(id_to_sql),
                            &super::attachments_to_sql(&message.attachments),
                            &message.edited_at.map(time_to_sql),
                            &message.deleted,
                        ],
                    )
                    .await
                    .map_err(pg_error)?
                    .try_get(0)
                    .map_err(pg_error)?;
                if inserted == 1 {
                    return Ok(Appended::Stored(message));
                }
                // Nothing inserted: a conflicting row is committed (the
                // insert waited for any concurrent writer of it), and this
                // statement's fresh snapshot sees it.
                let by_key = client.prepare_cached(BY_KEY).await.map_err(pg_error)?;
                match client
                    .query_opt(
                        &by_key,
                        &[
                            &message.channel_id.0,
                            &message.sender.0,
                            &message.client_msg_id.as_str(),
                        ],
                    )
                    .await
                    .map_err(pg_error)?
                {
                    Some(row) => check_duplicate(&message_from_row(&row)?, &message),
                    None => Err(Error::conflict(format!(
                        "message id {} already used in this channel",
                        message.id
                    ))),
                }
            })
        })
        .await
    }

    async fn get(&self, channel: ChannelId, id: MessageId) -> Result<Option<Message>> {
        self.run(move |client| {
            Box::pin(async move {
                let get = client.prepare_cached(GET).await.map_err(pg_error)?;
                client
                    .query_opt(&get, &[&channel.0, &id_to_sql(id)])
                    .await
                    .map_err(pg_error)?
                    .map(|row| message_from_row(&row))
                    .transpose()
            })
        })
        .await
    }

    async fn page(&self, channel: ChannelId, page: Page) -> Result<Paged<Message>> {
        if page.limit == 0 {
            return Ok(Paged::empty());
        }
        let Some((lo, hi)) = id_range(&page) else {
            return Ok(Paged::empty());
        };
        self.run(move |client| {
            Box::pin(async move {
                // One row past the limit tells whether there is more.
                let forward = page.is_forward();
                let sql = if forward { FORWARD } else { BACKWARD };
                let statement = client.prepare_cached(sql).await.map_err(pg_error)?;
                let rows = client
                    .query(
                        &statement,
                        &[
                            &channel.0,
                            &id_to_sql(lo),
                            &id_to_sql(hi),
                            &limit_to_sql(page.limit.saturating_add(1)),
                            &limit_to_sql(page.max_bytes),
                        ],
                    )
                    .await
                    .map_err(pg_error)?;
                let mut paged = within_budget(&rows, page.limit, message_from_row)?;
                if !forward {
                    paged.items.reverse();
                }
                Ok(paged)
            })
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_range_handles_edges() {
        let p = |after: Option<u64>, before: Option<u64>| Page {
            after: after.map(MessageId),
            before: before.map(MessageId),
            limit: 1,
            max_bytes: usize::MAX,
        };
        let r = |lo: u64, hi: u64| Some((MessageId(lo), MessageId(hi)));
        assert_eq!(id_range(&p(None, None)), r(0, u64::MAX));
        assert_eq!(id_range(&p(Some(5), Some(7))), r(6, 6));
        assert_eq!(id_range(&p(Some(5), Some(6))), None);
        assert_eq!(id_range(&p(Some(7), Some(5))), None);
        assert_eq!(id_range(&p(None, Some(0))), None);
        assert_eq!(id_range(&p(Some(u64::MAX), None)), None);
    }
}
