//! In-memory [`BlobStore`] and [`AttachmentStore`].

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures::StreamExt;

use super::lock;
use crate::attachment::{
    blob_too_large, bytes_stream, AttachmentRecord, AttachmentStore, BlobReader, BlobStore,
    ByteStream, StoredBlob,
};
use crate::error::{Error, Result};
use crate::id::{AttachmentId, BlobId, ChannelId};

/// Blobs in a map. A put collects the stream first (up to its limit) and
/// inserts the whole blob at the end, so a failed put leaves nothing.
#[derive(Debug, Default)]
pub struct MemoryBlobStore {
    blobs: Mutex<HashMap<BlobId, Bytes>>,
}

impl MemoryBlobStore {
    /// How many blobs are stored (for tests).
    pub fn len(&self) -> usize {
        lock(&self.blobs).len()
    }

    /// Whether no blob is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[async_trait]
impl BlobStore for MemoryBlobStore {
    async fn put(&self, mut data: ByteStream, max_bytes: u64) -> Result<StoredBlob> {
        let mut buf = BytesMut::new();
        while let Some(chunk) = data.next().await {
            let chunk = chunk?;
            if (buf.len() as u64).saturating_add(chunk.len() as u64) > max_bytes {
                return Err(blob_too_large(max_bytes));
            }
            buf.extend_from_slice(&chunk);
        }
        let id = BlobId::new_random();
        let size = buf.len() as u64;
        lock(&self.blobs).insert(id, buf.freeze());
        Ok(StoredBlob { id, size })
    }

    async fn get(&self, id: BlobId) -> Result<Option<BlobReader>> {
        Ok(lock(&self.blobs).get(&id).cloned().map(|b| BlobReader {
            size: b.len() as u64,
            stream: bytes_stream(b),
        }))
    }

    async fn delete(&self, id: BlobId) -> Result<()> {
        lock(&self.blobs).remove(&id);
        Ok(())
    }
}

/// Attachment records in a map.
#[derive(Debug, Default)]
pub struct MemoryAttachments {
    records: Mutex<HashMap<AttachmentId, AttachmentRecord>>,
}

#[async_trait]
impl AttachmentStore for MemoryAttachments {
    async fn create_attachment(&self, record: AttachmentRecord) -> Result<()> {
        let mut records = lock(&self.records);
        if records.contains_key(&record.attachment.id) {
            return Err(Error::AlreadyExists { what: "attachment" });
        }
        records.insert(record.attachment.id, record);
        Ok(())
    }

    async fn attachment(&self, id: AttachmentId) -> Result<Option<AttachmentRecord>> {
        Ok(lock(&self.records).get(&id).cloned())
    }

    async fn bind_attachment(
        &self,
        id: AttachmentId,
        channel: ChannelId,
    ) -> Result<AttachmentRecord> {
        let mut records = lock(&self.records);
        let record = records.get_mut(&id).ok_or(Error::not_found("attachment"))?;
        match record.channel {
            None => record.channel = Some(channel),
            Some(c) if c == channel => {}
            Some(_) => {
                return Err(Error::conflict(
                    "the attachment was already shared in another channel",
                ))
            }
        }
        Ok(record.clone())
    }
}
