//! [`AttachmentStore`] on the embedded store: one JSON record per
//! attachment in the `attachments` partition, created and bound under the
//! record's lock stripe, each write one durable batch.

use async_trait::async_trait;
use chat_core::{AttachmentId, AttachmentRecord, AttachmentStore, ChannelId, Error, Result};

use super::locks::{Kind, StripeKey};
use super::{commit, db, decode, encode, EmbeddedStore, Inner};

impl Inner {
    fn load_attachment(&self, id: AttachmentId) -> Result<Option<AttachmentRecord>> {
        self.attachments
            .get(id.as_bytes())
            .map_err(db)?
            .map(|v| decode(&v, "attachment"))
            .transpose()
    }

    fn create_attachment(&self, record: AttachmentRecord) -> Result<()> {
        let id = record.attachment.id;
        let _guards = self
            .stripes
            .lock(&[StripeKey::new(Kind::Attachment, id.as_bytes())]);
        if self.attachments.contains_key(id.as_bytes()).map_err(db)? {
            return Err(Error::AlreadyExists { what: "attachment" });
        }
        let mut batch = self.batch();
        batch.insert(&self.attachments, id.as_bytes().to_vec(), encode(&record)?);
        commit(batch)
    }

    fn bind_attachment(&self, id: AttachmentId, channel: ChannelId) -> Result<AttachmentRecord> {
        let _guards = self
            .stripes
            .lock(&[StripeKey::new(Kind::Attachment, id.as_bytes())]);
        let mut record = self
            .load_attachment(id)?
            .ok_or(Error::not_found("attachment"))?;
        match record.channel {
            Some(c) if c == channel => return Ok(record),
            Some(_) => {
                return Err(Error::conflict(
                    "the attachment was already shared in another channel",
                ))
            }
            None => record.channel = Some(channel),
        }
        let mut batch = self.batch();
        batch.insert(&self.attachments, id.as_bytes().to_vec(), encode(&record)?);
        commit(batch)?;
        Ok(record)
    }
}

#[async_trait]
impl AttachmentStore for EmbeddedStore {
    async fn create_attachment(&self, record: AttachmentRecord) -> Result<()> {
        self.blocking(move |s| s.create_attachment(record)).await
    }

    async fn attachment(&self, id: AttachmentId) -> Result<Option<AttachmentRecord>> {
        self.blocking(move |s| s.load_attachment(id)).await
    }

    async fn bind_attachment(
        &self,
        id: AttachmentId,
        channel: ChannelId,
    ) -> Result<AttachmentRecord> {
        self.blocking(move |s| s.bind_attachment(id, channel)).await
    }
}
