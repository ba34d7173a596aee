//! [`Inbox`] for [`PostgresStore`].

use async_trait::async_trait;
use chat_core::{DeviceId, Inbox, Message, MessageId, Result, UserId};
use uuid::Uuid;

use super::{
    id_from_sql, id_to_sql, limit_to_sql, message_columns, messages_from_rows, pg_error,
    time_to_sql, PostgresStore,
};

/// Copies a message into the inbox of every user in `$1` at once. Rows are
/// inserted in user order, so concurrent pushes of one message to
/// overlapping recipients wait on each other in one order and never
/// deadlock; an inbox that already holds the id keeps what it holds.
pub(super) const PUSH: &str = concat!(
    "INSERT INTO inbox (user_id, ",
    message_columns!(),
    ") SELECT r, $2, $3, $4, $5, $6, $7 FROM unnest($1::uuid[]) AS r ORDER BY r",
    " ON CONFLICT DO NOTHING"
);

/// A user's inbox after a cursor: a forward range scan of `inbox_pkey`.
pub(super) const READ: &str = concat!(
    "SELECT ",
    message_columns!(),
    " FROM inbox WHERE user_id = $1 AND message_id > $2 ORDER BY message_id LIMIT $3"
);

/// One device's cursor.
pub(super) const CURSOR: &str = "SELECT cursor FROM cursors WHERE user_id = $1 AND device_id = $2";

/// Moves a cursor forward, atomically: the stored value becomes the larger
/// of stored and given, and is returned.
pub(super) const ADVANCE: &str = "INSERT INTO cursors AS c (user_id, device_id, cursor) \
     VALUES ($1, $2, $3) \
     ON CONFLICT (user_id, device_id) DO UPDATE SET cursor = GREATEST(c.cursor, EXCLUDED.cursor) \
     RETURNING cursor";

#[async_trait]
impl Inbox for PostgresStore {
    async fn push(&self, recipients: &[UserId], message: &Message) -> Result<()> {
        let mut users: Vec<Uuid> = recipients.iter().map(|u| u.0).collect();
        users.sort_unstable();
        users.dedup();
        if users.is_empty() {
            return Ok(());
        }
        let message = message.clone();
        self.run(move |client| {
            Box::pin(async move {
                let push = client.prepare_cached(PUSH).await.map_err(pg_error)?;
                client
                    .execute(
                        &push,
                        &[
                            &users,
                            &message.channel_id.0,
                            &id_to_sql(message.id),
                            &message.sender.0,
                            &message.content,
                            &time_to_sql(message.created_at),
                            &message.client_msg_id.as_str(),
                        ],
                    )
                    .await
                    .map_err(pg_error)?;
                Ok(())
            })
        })
        .await
    }

    async fn read(&self, user: UserId, after: MessageId, limit: usize) -> Result<Vec<Message>> {
        if limit == 0 || after == MessageId::MAX {
            return Ok(Vec::new());
        }
        self.run(move |client| {
            Box::pin(async move {
                let read = client.prepare_cached(READ).await.map_err(pg_error)?;
                let rows = client
                    .query(&read, &[&user.0, &id_to_sql(after), &limit_to_sql(limit)])
                    .await
                    .map_err(pg_error)?;
                messages_from_rows(&rows)
            })
        })
        .await
    }

    async fn cursor(&self, user: UserId, device: DeviceId) -> Result<MessageId> {
        self.run(move |client| {
            Box::pin(async move {
                let cursor = client.prepare_cached(CURSOR).await.map_err(pg_error)?;
                match client
                    .query_opt(&cursor, &[&user.0, &device.0])
                    .await
                    .map_err(pg_error)?
                {
                    Some(row) => Ok(id_from_sql(row.try_get(0).map_err(pg_error)?)),
                    None => Ok(MessageId::ZERO),
                }
            })
        })
        .await
    }

    async fn advance_cursor(
        &self,
        user: UserId,
        device: DeviceId,
        cursor: MessageId,
    ) -> Result<MessageId> {
        self.run(move |client| {
            Box::pin(async move {
                let advance = client.prepare_cached(ADVANCE).await.map_err(pg_error)?;
                let row = client
                    .query_one(&advance, &[&user.0, &device.0, &id_to_sql(cursor)])
                    .await
                    .map_err(pg_error)?;
                Ok(id_from_sql(row.try_get(0).map_err(pg_error)?))
            })
        })
        .await
    }
}
