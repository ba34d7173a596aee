//! [`AttachmentStore`] for [`PostgresStore`]: the `attachments` table of
//! migration 8. A bind is one conditional `UPDATE` (`channel_id IS NULL`),
//! so of concurrent binds exactly one sets the channel.

use async_trait::async_trait;
use chat_core::{
    Attachment, AttachmentId, AttachmentRecord, AttachmentStore, BlobId, ChannelId, Error, Result,
    UserId,
};
use tokio_postgres::Row;

use super::{corrupt, pg_error, time_from_sql, time_to_sql, PostgresStore};

/// The columns of a record, in the order [`record_from_row`] reads them.
macro_rules! attachment_columns {
    () => {
        "attachment_id, uploader, name, size, content_type, width, height, blob_id, thumbnail_id, channel_id, created_at"
    };
}

const CREATE: &str = concat!(
    "INSERT INTO attachments (",
    attachment_columns!(),
    ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) ON CONFLICT DO NOTHING"
);

const GET: &str = concat!(
    "SELECT ",
    attachment_columns!(),
    " FROM attachments WHERE attachment_id = $1"
);

const BIND: &str = concat!(
    "UPDATE attachments SET channel_id = $2 WHERE attachment_id = $1 AND channel_id IS NULL RETURNING ",
    attachment_columns!()
);

fn dimension_to_sql(d: Option<u32>) -> Option<i32> {
    d.map(|d| i32::try_from(d).unwrap_or(i32::MAX))
}

fn record_from_row(row: &Row) -> Result<AttachmentRecord> {
    let size: i64 = row.try_get(3).map_err(pg_error)?;
    let dimension = |i: usize| -> Result<Option<u32>> {
        let d: Option<i32> = row.try_get(i).map_err(pg_error)?;
        d.map(|d| u32::try_from(d).map_err(|_| corrupt("attachment", "negative dimension")))
            .transpose()
    };
    Ok(AttachmentRecord {
        attachment: Attachment {
            id: AttachmentId(row.try_get(0).map_err(pg_error)?),
            name: row.try_get(2).map_err(pg_error)?,
            size: u64::try_from(size).map_err(|_| corrupt("attachment", "negative size"))?,
            content_type: row.try_get(4).map_err(pg_error)?,
            width: dimension(5)?,
            height: dimension(6)?,
        },
        uploader: UserId(row.try_get(1).map_err(pg_error)?),
        blob: BlobId(row.try_get(7).map_err(pg_error)?),
        thumbnail: row
            .try_get::<_, Option<uuid::Uuid>>(8)
            .map_err(pg_error)?
            .map(BlobId),
        channel: row
            .try_get::<_, Option<uuid::Uuid>>(9)
            .map_err(pg_error)?
            .map(ChannelId),
        created_at: time_from_sql(row.try_get(10).map_err(pg_error)?),
    })
}

#[async_trait]
impl AttachmentStore for PostgresStore {
    async fn create_attachment(&self, record: AttachmentRecord) -> Result<()> {
        let inserted = self
            .run(move |client| {
                Box::pin(async move {
                    let a = &record.attachment;
                    let size = i64::try_from(a.size).unwrap_or(i64::MAX);
                    let statement = client.prepare_cached(CREATE).await.map_err(pg_error)?;
                    client
                        .execute(
                            &statement,
                            &[
                                &a.id.0,
                                &record.uploader.0,
                                &a.name,
                                &size,
                                &a.content_type,
                                &dimension_to_sql(a.width),
                                &dimension_to_sql(a.height),
                                &record.blob.0,
                                &record.thumbnail.map(|b| b.0),
                                &record.channel.map(|c| c.0),
                                &time_to_sql(record.created_at),
                            ],
                        )
                        .await
                        .map_err(pg_error)
                })
            })
            .await?;
        if inserted == 0 {
            return Err(Error::AlreadyExists { what: "attachment" });
        }
        Ok(())
    }

    async fn attachment(&self, id: AttachmentId) -> Result<Option<AttachmentRecord>> {
        self.run(move |client| {
            Box::pin(async move {
                let statement = client.prepare_cached(GET).await.map_err(pg_error)?;
                let row = client
                    .query_opt(&statement, &[&id.0])
                    .await
                    .map_err(pg_error)?;
                row.as_ref().map(record_from_row).transpose()
            })
        })
        .await
    }

    async fn bind_attachment(
        &self,
        id: AttachmentId,
        channel: ChannelId,
    ) -> Result<AttachmentRecord> {
        let bound = self
            .run(move |client| {
                Box::pin(async move {
                    let statement = client.prepare_cached(BIND).await.map_err(pg_error)?;
                    let row = client
                        .query_opt(&statement, &[&id.0, &channel.0])
                        .await
                        .map_err(pg_error)?;
                    row.as_ref().map(record_from_row).transpose()
                })
            })
            .await?;
        if let Some(record) = bound {
            return Ok(record);
        }
        // Not bound now: unknown, or bound before (a binding never changes).
        match self.attachment(id).await? {
            None => Err(Error::not_found("attachment")),
            Some(record) if record.channel == Some(channel) => Ok(record),
            Some(_) => Err(Error::conflict(
                "the attachment was already shared in another channel",
            )),
        }
    }
}
