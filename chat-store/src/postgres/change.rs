//! [`MessageStore::change`](chat_core::MessageStore::change) for
//! [`PostgresStore`]: edits, deletions and reactions, each in one
//! transaction.
//!
//! The transaction locks the channel (`FOR NO KEY UPDATE`, as a commit
//! does: changes, commits and membership changes of one channel are
//! serialized), then the members' rows in `users` by id (as a commit does,
//! after the channels: no deadlock between the two), decides the change
//! with the rule every backend shares ([`decide`]), and writes the
//! message's new state, the reaction, and one change entry per member at
//! the next position of their inbox.

use std::time::Instant;

use chat_core::changes::{decide, Decision};
use chat_core::{
    Change, Changed, ChannelId, Error, MessageId, NewChange, Reactions, Result, Seq, UserId,
};
use uuid::Uuid;

use super::{
    id_from_sql, id_to_sql, message_columns, message_from_row, pg_error, time_to_sql,
    PostgresStore, BACKEND,
};

const CHANNEL: &str = "SELECT kind, owner FROM channels WHERE channel_id = $1 FOR NO KEY UPDATE";

const MEMBERS: &str = "SELECT user_id FROM channel_members WHERE channel_id = $1 ORDER BY user_id";

const LOCK_USERS: &str =
    "SELECT 1 FROM users WHERE user_id = ANY($1) ORDER BY user_id FOR NO KEY UPDATE";

const MESSAGE: &str = concat!(
    "SELECT ",
    message_columns!(),
    ", edited_at, deleted FROM messages WHERE channel_id = $1 AND message_id = $2"
);

pub(super) const REACTED: &str =
    "SELECT emoji FROM reactions WHERE channel_id = $1 AND message_id = $2 AND user_id = $3";

const UPDATE_MESSAGE: &str = "UPDATE messages SET content = $3, edited_at = $4, deleted = $5, \
     attachments = $6 WHERE channel_id = $1 AND message_id = $2";

const ADD_REACTION: &str = "INSERT INTO reactions (channel_id, message_id, user_id, emoji) \
     VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING";

const REMOVE_REACTION: &str = "DELETE FROM reactions \
     WHERE channel_id = $1 AND message_id = $2 AND user_id = $3 AND emoji = $4";

const CLEAR_REACTIONS: &str = "DELETE FROM reactions WHERE channel_id = $1 AND message_id = $2";

/// One change entry per member (`$1`), each at the next position of the
/// member's inbox; answers `(user, seq)` by user.
const FAN_OUT: &str = "WITH bumped AS ( \
         UPDATE users u SET inbox_head = u.inbox_head + 1 WHERE u.user_id = ANY($1::uuid[]) \
         RETURNING u.user_id, u.inbox_head), \
     ins AS ( \
         INSERT INTO inbox_entries (user_id, seq, channel_id, message_id, sender, content, \
             created_at, client_msg_id, reply_to, edited_at, deleted, change, attachments) \
         SELECT b.user_id, b.inbox_head, $2::uuid, $3::bigint, $4::uuid, $5::text, $6::bigint, \
             $7::text, $8::bigint, $9::bigint, $10::boolean, $11::text, $12::text FROM bumped b \
         RETURNING user_id, seq) \
     SELECT user_id, seq FROM ins ORDER BY user_id";

/// The reactions of some messages, counted per emoji, by message then
/// emoji (bytewise).
pub(super) const REACTIONS: &str = "SELECT message_id, emoji, count(*), bool_or(user_id = $3) \
     FROM reactions WHERE channel_id = $1 AND message_id = ANY($2) \
     GROUP BY message_id, emoji ORDER BY message_id, emoji COLLATE \"C\"";

impl PostgresStore {
    /// See [`MessageStore::change`](chat_core::MessageStore::change).
    pub(super) async fn change_message(&self, change: NewChange) -> Result<Changed> {
        let started = Instant::now();
        self.run(move |client| {
            Box::pin(async move {
                let tx = client.transaction().await.map_err(pg_error)?;
                let channel_id = change.channel_id.0;
                let id = id_to_sql(change.message_id);
                let statement = tx.prepare_cached(CHANNEL).await.map_err(pg_error)?;
                let Some(row) = tx
                    .query_opt(&statement, &[&channel_id])
                    .await
                    .map_err(pg_error)?
                else {
                    return Err(Error::not_found("channel"));
                };
                let kind: String = row.try_get(0).map_err(pg_error)?;
                let owner: Option<Uuid> = row.try_get(1).map_err(pg_error)?;
                let owner = owner.filter(|_| kind == "group").map(UserId);
                let statement = tx.prepare_cached(MEMBERS).await.map_err(pg_error)?;
                let members: Vec<Uuid> = tx
                    .query(&statement, &[&channel_id])
                    .await
                    .map_err(pg_error)?
                    .iter()
                    .map(|r| r.try_get(0))
                    .collect::<std::result::Result<_, _>>()
                    .map_err(pg_error)?;
                if !members.contains(&change.actor.0) {
                    return Err(Error::forbidden("not a member of this channel"));
                }
                let statement = tx.prepare_cached(MESSAGE).await.map_err(pg_error)?;
                let Some(row) = tx
                    .query_opt(&statement, &[&channel_id, &id])
                    .await
                    .map_err(pg_error)?
                else {
                    return Err(Error::not_found("message"));
                };
                let current = message_from_row(&row)?;
                let statement = tx.prepare_cached(REACTED).await.map_err(pg_error)?;
                let reacted: Vec<String> = tx
                    .query(&statement, &[&channel_id, &id, &change.actor.0])
                    .await
                    .map_err(pg_error)?
                    .iter()
                    .map(|r| r.try_get(0))
                    .collect::<std::result::Result<_, _>>()
                    .map_err(pg_error)?;
                let (message, what) = match decide(&current, owner, &change, &reacted)? {
                    Decision::Unchanged(what) => {
                        return Ok(Changed {
                            message: current,
                            change: what,
                            unchanged: true,
                            positions: Vec::new(),
                        })
                    }
                    Decision::Apply { message, change } => (message, change),
                };
                if started.elapsed() >= change.timeout {
                    return Err(Error::temporary(
                        BACKEND,
                        "the change did not start in time",
                    ));
                }
                let statement = tx.prepare_cached(LOCK_USERS).await.map_err(pg_error)?;
                tx.query(&statement, &[&members]).await.map_err(pg_error)?;
                let actor = change.actor.0;
                match &what {
                    Change::Reacted { emoji, .. } | Change::Unreacted { emoji, .. } => {
                        let sql = if matches!(what, Change::Reacted { .. }) {
                            ADD_REACTION
                        } else {
                            REMOVE_REACTION
                        };
                        let statement = tx.prepare_cached(sql).await.map_err(pg_error)?;
                        tx.execute(&statement, &[&channel_id, &id, &actor, emoji])
                            .await
                            .map_err(pg_error)?;
                    }
                    _ => {
                        if matches!(what, Change::Deleted { .. }) {
                            let statement =
                                tx.prepare_cached(CLEAR_REACTIONS).await.map_err(pg_error)?;
                            tx.execute(&statement, &[&channel_id, &id])
                                .await
                                .map_err(pg_error)?;
                        }
                        let statement =
                            tx.prepare_cached(UPDATE_MESSAGE).await.map_err(pg_error)?;
                        tx.execute(
                            &statement,
                            &[
                                &channel_id,
                                &id,
                                &message.content,
                                &message.edited_at.map(time_to_sql),
                                &message.deleted,
                                &super::attachments_to_sql(&message.attachments),
                            ],
                        )
                        .await
                        .map_err(pg_error)?;
                    }
                }
                let json = serde_json::to_string(&what).map_err(|e| Error::backend(BACKEND, e))?;
                let statement = tx.prepare_cached(FAN_OUT).await.map_err(pg_error)?;
                let rows = tx
                    .query(
                        &statement,
                        &[
                            &members,
                            &channel_id,
                            &id,
                            &message.sender.0,
                            &message.content,
                            &time_to_sql(message.created_at),
                            &message.client_msg_id.as_str(),
                            &message.reply_to.map(id_to_sql),
                            &message.edited_at.map(time_to_sql),
                            &message.deleted,
                            &json,
                            &super::attachments_to_sql(&message.attachments),
                        ],
                    )
                    .await
                    .map_err(pg_error)?;
                let mut positions = Vec::with_capacity(rows.len());
                for row in &rows {
                    let seq: i64 = row.try_get(1).map_err(pg_error)?;
                    positions.push((
                        UserId(row.try_get(0).map_err(pg_error)?),
                        Seq(u64::try_from(seq).unwrap_or(0)),
                    ));
                }
                tx.commit().await.map_err(pg_error)?;
                Ok(Changed {
                    message,
                    change: what,
                    unchanged: false,
                    positions,
                })
            })
        })
        .await
    }

    /// See [`HistoryStore::reactions`](chat_core::HistoryStore::reactions).
    pub(super) async fn reactions_of(
        &self,
        channel: ChannelId,
        messages: &[MessageId],
        viewer: UserId,
    ) -> Result<Vec<(MessageId, Vec<Reactions>)>> {
        if messages.is_empty() {
            return Ok(Vec::new());
        }
        let asked = messages.to_vec();
        let ids: Vec<i64> = asked.iter().map(|m| id_to_sql(*m)).collect();
        let rows = self
            .run(move |client| {
                Box::pin(async move {
                    let statement = client.prepare_cached(REACTIONS).await.map_err(pg_error)?;
                    client
                        .query(&statement, &[&channel.0, &ids, &viewer.0])
                        .await
                        .map_err(pg_error)
                })
            })
            .await?;
        let mut found: std::collections::HashMap<MessageId, Vec<Reactions>> = Default::default();
        for row in &rows {
            let id = id_from_sql(row.try_get(0).map_err(pg_error)?);
            let count: i64 = row.try_get(2).map_err(pg_error)?;
            found.entry(id).or_default().push(Reactions {
                emoji: row.try_get(1).map_err(pg_error)?,
                count: u32::try_from(count).unwrap_or(u32::MAX),
                me: row.try_get(3).map_err(pg_error)?,
            });
        }
        Ok(asked
            .into_iter()
            .filter_map(|id| found.get(&id).map(|r| (id, r.clone())))
            .collect())
    }
}
