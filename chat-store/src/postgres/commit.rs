//! [`MessageStore`] and [`FanoutStore`] for [`PostgresStore`]: message
//! commits batched into one statement.
//!
//! Concurrent commits are gathered into batches: a dispatcher task takes
//! every commit waiting when a batch slot is free (at most [`MAX_BATCH`],
//! and at most a quarter of the pool's connections busy with batches at
//! once), and sends the batch as **one** call of the `commit_messages`
//! function (migration 3): one round trip and one transaction, whose commit
//! (one WAL flush with `synchronous_commit = on`) acknowledges them all.
//! Inside, the function locks the batch's channels and then their members'
//! user rows, each in id order, so batches running at once never deadlock
//! and a membership change is serialized with the commits of its channel;
//! then, message by message, it decides duplicates, checks the id against
//! the channel's last, hands out each member's next inbox position, and
//! writes the inbox entries, the message (or the outbox entry) and the new
//! last id.
//!
//! A commit that waited longer than its timeout before its batch left is
//! refused without being sent; a batch is bounded by the statement timeout
//! on the server, and a batch that fails (a lost connection, a timeout)
//! fails each of its commits with a temporary error: nothing of it was
//! committed, or all of it was and the retries find it.

use std::sync::{Arc, OnceLock, Weak};
use std::time::Instant;

use async_trait::async_trait;
use chat_core::{
    Committed, Error, Fanout, FanoutStore, Health, MessageStore, NewMessage, Result, Seq, UserId,
};
use tokio::sync::{mpsc, oneshot, Semaphore};

use super::inbox::seq_from_sql;
use super::{id_from_sql, id_to_sql, pg_error, time_to_sql, Inner, PostgresStore, BACKEND};

/// Most commits sent in one batch.
pub(super) const MAX_BATCH: usize = 256;

/// Commits queued before callers wait for room (a bound on memory).
const QUEUE: usize = 8_192;

/// The function call of a batch.
pub(super) const COMMIT: &str =
    "SELECT idx, status, message_id, created_at, users, seqs FROM commit_messages($1, $2, $3, $4, $5, $6, $7, $8, $9)";

/// One commit waiting for its batch.
struct Pending {
    message: NewMessage,
    outbox: bool,
    queued: Instant,
    done: oneshot::Sender<Result<Fanout>>,
}

/// The queue in front of the dispatcher, started on first use (it needs a
/// runtime, which building the store does not).
pub(super) struct Batcher {
    tx: OnceLock<mpsc::Sender<Pending>>,
    slots: usize,
}

impl Batcher {
    /// Batches for a pool of `pool_size` connections.
    pub(super) fn new(pool_size: usize) -> Self {
        Self {
            tx: OnceLock::new(),
            slots: (pool_size / 4).max(1),
        }
    }
}

impl PostgresStore {
    /// Queues a commit for the next batch and waits for its answer.
    async fn submit(&self, message: NewMessage, outbox: bool) -> Result<Fanout> {
        let tx = self.inner.commits.tx.get_or_init(|| {
            let (tx, rx) = mpsc::channel(QUEUE);
            tokio::spawn(dispatch(
                Arc::downgrade(&self.inner),
                rx,
                self.inner.commits.slots,
            ));
            tx
        });
        let (done, answer) = oneshot::channel();
        let pending = Pending {
            message,
            outbox,
            queued: Instant::now(),
            done,
        };
        if tx.send(pending).await.is_err() {
            return Err(Error::temporary(BACKEND, "the commit dispatcher stopped"));
        }
        answer
            .await
            .unwrap_or_else(|_| Err(Error::temporary(BACKEND, "the commit was dropped")))
    }
}

/// Takes waiting commits into batches while a slot is free. Ends when the
/// store is dropped.
async fn dispatch(store: Weak<Inner>, mut rx: mpsc::Receiver<Pending>, slots: usize) {
    let slots = Arc::new(Semaphore::new(slots));
    while let Some(first) = rx.recv().await {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        // Everything that queued while the slots were busy goes together.
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        let Some(inner) = store.upgrade() else {
            for p in batch {
                let _ = p
                    .done
                    .send(Err(Error::temporary(BACKEND, "the store was dropped")));
            }
            return;
        };
        let store = PostgresStore { inner };
        tokio::spawn(async move {
            run_batch(&store, batch).await;
            drop(slot);
        });
    }
}

/// Sends one batch and answers each of its commits.
async fn run_batch(store: &PostgresStore, batch: Vec<Pending>) {
    let (live, late): (Vec<Pending>, Vec<Pending>) = batch
        .into_iter()
        .partition(|p| p.queued.elapsed() < p.message.timeout);
    for p in late {
        let _ = p.done.send(Err(Error::temporary(
            BACKEND,
            "the commit waited past its timeout and was not sent",
        )));
    }
    if live.is_empty() {
        return;
    }
    let channels: Vec<uuid::Uuid> = live.iter().map(|p| p.message.channel_id.0).collect();
    let senders: Vec<uuid::Uuid> = live.iter().map(|p| p.message.sender.0).collect();
    let keys: Vec<String> = live
        .iter()
        .map(|p| p.message.client_msg_id.as_str().to_owned())
        .collect();
    let contents: Vec<String> = live.iter().map(|p| p.message.content.clone()).collect();
    let created: Vec<i64> = live
        .iter()
        .map(|p| time_to_sql(p.message.created_at))
        .collect();
    let proposed: Vec<i64> = live.iter().map(|p| id_to_sql(p.message.id)).collect();
    let outbox: Vec<bool> = live.iter().map(|p| p.outbox).collect();
    let replies: Vec<Option<i64>> = live
        .iter()
        .map(|p| p.message.reply_to.map(id_to_sql))
        .collect();
    let attachments: Vec<Option<String>> = live
        .iter()
        .map(|p| super::attachments_to_sql(&p.message.attachments))
        .collect();
    let rows = store
        .run(move |client| {
            Box::pin(async move {
                let statement = client.prepare_cached(COMMIT).await.map_err(pg_error)?;
                client
                    .query(
                        &statement,
                        &[
                            &channels,
                            &senders,
                            &keys,
                            &contents,
                            &created,
                            &proposed,
                            &outbox,
                            &replies,
                            &attachments,
                        ],
                    )
                    .await
                    .map_err(pg_error)
            })
        })
        .await;
    let rows = match rows {
        Ok(rows) => rows,
        Err(e) => {
            // Nothing of the batch is known to be committed: each retries.
            let temporary = e.is_temporary();
            let why = e.to_string();
            for p in live {
                let _ = p.done.send(Err(if temporary {
                    Error::temporary(BACKEND, why.clone())
                } else {
                    Error::backend(BACKEND, why.clone())
                }));
            }
            return;
        }
    };
    let mut answers: Vec<Option<Result<Fanout>>> = live.iter().map(|_| None).collect();
    for row in &rows {
        let decoded = decode_row(row, &live);
        match decoded {
            Ok((i, answer)) if i < answers.len() => answers[i] = Some(answer),
            Ok((i, _)) => tracing::error!(idx = i, "commit_messages answered an unknown index"),
            Err(e) => {
                tracing::error!(error = %e, "commit_messages answered a row that does not decode")
            }
        }
    }
    for (p, answer) in live.into_iter().zip(answers) {
        let _ = p.done.send(answer.unwrap_or_else(|| {
            Err(Error::backend(
                BACKEND,
                "commit_messages gave no answer for a message",
            ))
        }));
    }
}

/// One answer row: the index of its commit, and the outcome.
fn decode_row(row: &tokio_postgres::Row, live: &[Pending]) -> Result<(usize, Result<Fanout>)> {
    let idx: i32 = row.try_get(0).map_err(pg_error)?;
    let i = usize::try_from(idx).map_err(|_| super::corrupt("commit answer", "negative index"))?;
    let Some(p) = live.get(i) else {
        return Ok((i, Err(Error::backend(BACKEND, "unknown index"))));
    };
    let status: String = row.try_get(1).map_err(pg_error)?;
    let positions = || -> Result<Vec<(UserId, Seq)>> {
        let users: Option<Vec<uuid::Uuid>> = row.try_get(4).map_err(pg_error)?;
        let seqs: Option<Vec<i64>> = row.try_get(5).map_err(pg_error)?;
        Ok(users
            .unwrap_or_default()
            .into_iter()
            .zip(seqs.unwrap_or_default())
            .map(|(u, s)| (UserId(u), seq_from_sql(s)))
            .collect())
    };
    let id =
        || -> Result<chat_core::MessageId> { Ok(id_from_sql(row.try_get(2).map_err(pg_error)?)) };
    let answer = match status.as_str() {
        "new" | "duplicate" => {
            let mut message = p.message.to_message(id()?);
            let created: i64 = row.try_get(3).map_err(pg_error)?;
            message.created_at = super::time_from_sql(created);
            Ok(Fanout::Committed(Committed {
                message,
                duplicate: status == "duplicate",
                positions: positions()?,
            }))
        }
        "drained" => Ok(Fanout::Drained {
            id: id()?,
            positions: positions()?,
        }),
        "conflict" => Err(Error::conflict(format!(
            "client message id {} was already used for a different message",
            p.message.client_msg_id
        ))),
        "no_channel" => Err(Error::not_found("channel")),
        "forbidden" => Err(Error::forbidden("not a member of this channel")),
        "blocked" => Err(Error::Blocked),
        "stale" => Err(Error::StaleId { last: id()? }),
        other => Err(Error::backend(
            BACKEND,
            format!("commit_messages answered an unknown status {other:?}"),
        )),
    };
    Ok((i, answer))
}

#[async_trait]
impl MessageStore for PostgresStore {
    async fn commit(&self, message: NewMessage) -> Result<Committed> {
        match self.submit(message, false).await? {
            Fanout::Committed(c) => Ok(c),
            Fanout::Drained { .. } => Err(Error::backend(
                BACKEND,
                "a history commit answered as a drained outbox entry",
            )),
        }
    }

    async fn change(&self, change: chat_core::NewChange) -> Result<chat_core::Changed> {
        self.change_message(change).await
    }

    fn health(&self) -> Health {
        Health::Ok
    }
}

/// Undrained outbox entries old enough, oldest first.
const OUTBOX: &str = concat!(
    "SELECT channel_id, message_id, sender, content, created_at, client_msg_id, reply_to, attachments FROM sends",
    " WHERE NOT drained AND committed_at <= now() - make_interval(secs => $1) ORDER BY committed_at LIMIT $2"
);

/// Marks an outbox entry drained and drops its content.
const OUTBOX_DONE: &str =
    "UPDATE sends SET drained = true, content = NULL WHERE channel_id = $1 AND message_id = $2 AND NOT drained";

#[async_trait]
impl FanoutStore for PostgresStore {
    async fn commit_fanout(&self, message: NewMessage) -> Result<Fanout> {
        self.submit(message, true).await
    }

    async fn outbox(
        &self,
        min_age: std::time::Duration,
        limit: usize,
    ) -> Result<Vec<chat_core::Message>> {
        self.run(move |client| {
            Box::pin(async move {
                let statement = client.prepare_cached(OUTBOX).await.map_err(pg_error)?;
                let rows = client
                    .query(
                        &statement,
                        &[&min_age.as_secs_f64(), &super::limit_to_sql(limit)],
                    )
                    .await
                    .map_err(pg_error)?;
                rows.iter().map(super::message_from_row).collect()
            })
        })
        .await
    }

    async fn outbox_done(
        &self,
        channel: chat_core::ChannelId,
        id: chat_core::MessageId,
    ) -> Result<()> {
        self.run(move |client| {
            Box::pin(async move {
                let statement = client.prepare_cached(OUTBOX_DONE).await.map_err(pg_error)?;
                client
                    .execute(&statement, &[&channel.0, &id_to_sql(id)])
                    .await
                    .map_err(pg_error)?;
                Ok(())
            })
        })
        .await
    }
}
