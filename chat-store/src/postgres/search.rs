//! [`MessageSearch`] for [`PostgresStore`]: PostgreSQL full-text search on
//! the expression GIN index `messages_search` of migration 9,
//! `to_tsvector('simple', content)` (the `simple` configuration: words
//! lowercased, no stemming, no stop words, like [`words`]). Being an
//! expression index on `messages`, it is written by the same transaction
//! as the message, and by any later `UPDATE` of its content (an edit) or
//! `DELETE`: nothing else keeps it.

use async_trait::async_trait;
use chat_core::search::{words, MessageSearch, SearchCursor, MAX_QUERY_WORDS};
use chat_core::{ChannelId, Message, Paged, Result};

use super::{id_to_sql, limit_to_sql, message_columns, message_from_row, pg_error, PostgresStore};

/// Matches of `$2` (all words) in the channels `$1`, after `($3, $4)`,
/// newest first, `$5` rows.
const SEARCH: &str = concat!(
    "SELECT ",
    message_columns!(),
    " FROM messages WHERE channel_id = ANY($1)",
    " AND to_tsvector('simple', content) @@ plainto_tsquery('simple', $2)",
    " AND ($3::bigint IS NULL OR (message_id, channel_id) < ($3, $4::uuid))",
    " ORDER BY message_id DESC, channel_id DESC LIMIT $5"
);

#[async_trait]
impl MessageSearch for PostgresStore {
    async fn search(
        &self,
        channels: &[ChannelId],
        query: &str,
        after: Option<SearchCursor>,
        limit: usize,
    ) -> Result<Paged<Message>> {
        let mut wanted = words(query);
        wanted.truncate(MAX_QUERY_WORDS);
        if wanted.is_empty() || limit == 0 || channels.is_empty() {
            return Ok(Paged::empty());
        }
        let query = wanted.join(" ");
        let channels: Vec<uuid::Uuid> = channels.iter().map(|c| c.0).collect();
        let after_id = after.map(|a| id_to_sql(a.id));
        let after_channel = after.map(|a| a.channel.0);
        let rows = self
            .run(move |client| {
                Box::pin(async move {
                    let statement = client.prepare_cached(SEARCH).await.map_err(pg_error)?;
                    client
                        .query(
                            &statement,
                            &[
                                &channels,
                                &query,
                                &after_id,
                                &after_channel,
                                &limit_to_sql(limit.saturating_add(1)),
                            ],
                        )
                        .await
                        .map_err(pg_error)
                })
            })
            .await?;
        let mut items = rows
            .iter()
            .map(message_from_row)
            .collect::<Result<Vec<_>>>()?;
        let has_more = items.len() > limit;
        items.truncate(limit);
        Ok(Paged { items, has_more })
    }
}
