//! Attachments: files uploaded over HTTP, kept in a [`BlobStore`], described
//! by an [`AttachmentRecord`] in an [`AttachmentStore`], and referenced by
//! messages ([`Message::attachments`](crate::Message::attachments)).
//!
//! The bytes and their description live apart: the bytes in a blob store
//! (a directory of files, or an S3-compatible bucket) that only takes whole
//! files, the description next to the rest of the data (the directory's
//! backend), where the send path checks it. An upload is
//!
//! 1. the bytes streamed into [`BlobStore::put`] (atomic: a partial upload
//!    is never visible), under a size limit;
//! 2. for PNG and JPEG, a thumbnail (another blob) and the dimensions;
//! 3. [`AttachmentStore::create_attachment`], under a new [`AttachmentId`],
//!    owned by the uploader and bound to no channel yet.
//!
//! A send that references the attachment binds it to the channel
//! ([`AttachmentStore::bind_attachment`], once and for good); from then on
//! the channel's members may download it. Nobody else ever may, but the
//! uploader.

use std::fmt::Debug;
use std::pin::Pin;

use async_trait::async_trait;
use bytes::Bytes;
use futures::Stream;
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::id::{AttachmentId, BlobId, ChannelId, UserId};

/// Most attachments one message references.
pub const MAX_ATTACHMENTS_PER_MESSAGE: usize = 10;

/// Longest attachment name, in bytes.
pub const MAX_ATTACHMENT_NAME: usize = 255;

/// Longest content type, in bytes.
pub const MAX_CONTENT_TYPE: usize = 127;

/// What a message says about one attached file: everything a client needs
/// to show it before downloading it.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Attachment {
    /// The id the server assigned at upload.
    pub id: AttachmentId,
    /// The file name given at upload (1 to 255 bytes, no control
    /// characters, no `/` or `\`).
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// The content type given at upload (one the server allows; for images,
    /// checked against the bytes).
    pub content_type: String,
    /// Width in pixels, for PNG and JPEG images.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub width: Option<u32>,
    /// Height in pixels, for PNG and JPEG images.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub height: Option<u32>,
}

/// An attachment as the server keeps it: the reference messages carry,
/// who uploaded it, where its bytes are, and the channel it was shared in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachmentRecord {
    /// The reference (id, name, size, type, dimensions).
    pub attachment: Attachment,
    /// Who uploaded it: the only user who may reference it in a message.
    pub uploader: UserId,
    /// Its bytes.
    pub blob: BlobId,
    /// The bytes of its thumbnail (a PNG), for PNG and JPEG images.
    #[serde(default)]
    pub thumbnail: Option<BlobId>,
    /// The channel it was shared in, once a message referenced it.
    #[serde(default)]
    pub channel: Option<ChannelId>,
    /// Upload time, Unix milliseconds.
    pub created_at: u64,
}

impl AttachmentRecord {
    /// Whether `user` may download it: its uploader, or a member of the
    /// channel it was shared in (`is_member` answers for that channel).
    pub fn readable_by(&self, user: UserId, is_member: impl FnOnce(ChannelId) -> bool) -> bool {
        self.uploader == user || self.channel.is_some_and(is_member)
    }
}

/// Checks an attachment's name: 1 to [`MAX_ATTACHMENT_NAME`] bytes, no
/// control characters, no path separators, not `.` or `..`.
pub fn validate_attachment_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= MAX_ATTACHMENT_NAME
        && name != "."
        && name != ".."
        && !name
            .chars()
            .any(|c| c.is_control() || c == '/' || c == '\\');
    if ok {
        Ok(())
    } else {
        Err(crate::Error::invalid(
            "attachment name must be 1 to 255 bytes without control characters, '/' or '\\'",
        ))
    }
}

/// The descriptions of uploaded files, and which channel each was shared in.
///
/// # Contract
///
/// * **Create**: [`create_attachment`](Self::create_attachment) stores a
///   record under its id, durably for durable backends (`Ok` survives a
///   crash); an id already stored is
///   [`AlreadyExists`](crate::Error::AlreadyExists) and changes nothing.
///   Ids are assigned by the server (random), never by a client.
/// * **Read**: [`attachment`](Self::attachment) returns the record as
///   created, with the channel once bound; `None` for an unknown id.
/// * **Bind once**: [`bind_attachment`](Self::bind_attachment) sets the
///   record's channel if it has none, and returns the record. Binding it
///   again to the same channel is a no-op returning the same record
///   (idempotent: a retried send binds again); to another channel it is
///   [`Conflict`](crate::Error::Conflict) and changes nothing; an unknown
///   id is [`NotFound`](crate::Error::NotFound). Concurrent binds of one
///   record to different channels: exactly one wins, the others see the
///   conflict. A binding is never undone.
/// * **Who may bind** is the caller's check (the server binds only the
///   sender's own uploads, to a channel the sender is a member of).
/// * **Expiry**: none. Records are kept (unbound ones too); their bytes
///   are in a [`BlobStore`].
#[async_trait]
pub trait AttachmentStore: Send + Sync + Debug + 'static {
    /// Stores a new record.
    async fn create_attachment(&self, record: AttachmentRecord) -> Result<()>;

    /// The record of `id`, if any.
    async fn attachment(&self, id: AttachmentId) -> Result<Option<AttachmentRecord>>;

    /// Binds `id` to `channel` (once): the record as stored after the call.
    async fn bind_attachment(
        &self,
        id: AttachmentId,
        channel: ChannelId,
    ) -> Result<AttachmentRecord>;
}

/// A stream of bytes in chunks, into or out of a [`BlobStore`].
pub type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes>> + Send>>;

/// What [`BlobStore::put`] stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredBlob {
    /// The id the store assigned.
    pub id: BlobId,
    /// How many bytes it holds.
    pub size: u64,
}

/// A blob being read: its size, then its bytes.
pub struct BlobReader {
    /// How many bytes the stream yields.
    pub size: u64,
    /// The bytes, in chunks.
    pub stream: ByteStream,
}

impl Debug for BlobReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobReader")
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

impl BlobReader {
    /// Reads the whole blob into memory, refusing one above `max_bytes`
    /// with [`LimitExceeded`](crate::Error::LimitExceeded).
    pub async fn read_all(self, max_bytes: u64) -> Result<Vec<u8>> {
        use futures::StreamExt;
        if self.size > max_bytes {
            return Err(crate::Error::LimitExceeded {
                limit: format!("blob of {} bytes, over {max_bytes}", self.size),
            });
        }
        let mut out = Vec::with_capacity(usize::try_from(self.size).unwrap_or(0));
        let mut stream = self.stream;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk?;
            if (out.len() + chunk.len()) as u64 > max_bytes {
                return Err(crate::Error::LimitExceeded {
                    limit: format!("blob over {max_bytes} bytes"),
                });
            }
            out.extend_from_slice(&chunk);
        }
        Ok(out)
    }
}

/// Whole files, by id: the bytes of attachments and their thumbnails.
///
/// # Contract
///
/// * **Put is atomic**: [`put`](Self::put) reads `data` to its end and
///   stores it under a new id it assigns (random, never reused); the blob
///   becomes readable only once all of it is stored, durably for durable
///   backends (a crash after `Ok` loses nothing). A put that fails — the
///   stream yields an error, it holds more than `max_bytes`
///   ([`LimitExceeded`](crate::Error::LimitExceeded)), the backend fails,
///   or the future is dropped midway — leaves nothing readable, and no id
///   to read it by.
/// * **Bounded memory**: a backend that keeps blobs outside memory holds at
///   most a bounded chunk of the stream in memory during a put (its write
///   or part size), never the whole file.
/// * **Get streams**: [`get`](Self::get) returns the size and a stream of
///   the bytes exactly as put, or `None` for an id never stored or deleted.
/// * **Delete is idempotent**: [`delete`](Self::delete) removes a blob;
///   deleting an unknown or deleted id is `Ok`. A stream already opened by
///   `get` may still read the deleted bytes (file systems and S3 alike).
/// * **Expiry**: none; a blob lives until deleted.
#[async_trait]
pub trait BlobStore: Send + Sync + Debug + 'static {
    /// Stores `data` (at most `max_bytes`) under a new id.
    async fn put(&self, data: ByteStream, max_bytes: u64) -> Result<StoredBlob>;

    /// The blob `id`, if stored.
    async fn get(&self, id: BlobId) -> Result<Option<BlobReader>>;

    /// Removes the blob `id` (idempotent).
    async fn delete(&self, id: BlobId) -> Result<()>;
}

/// The error a put returns for a stream over `max_bytes`.
pub fn blob_too_large(max_bytes: u64) -> crate::Error {
    crate::Error::LimitExceeded {
        limit: format!("attachment size {max_bytes} bytes"),
    }
}

/// A [`ByteStream`] of one buffer, in chunks of at most 64 KiB.
pub fn bytes_stream(data: impl Into<Bytes>) -> ByteStream {
    let data: Bytes = data.into();
    let chunks: Vec<Result<Bytes>> = if data.is_empty() {
        Vec::new()
    } else {
        (0..data.len())
            .step_by(64 << 10)
            .map(|at| Ok(data.slice(at..(at + (64 << 10)).min(data.len()))))
            .collect()
    };
    Box::pin(futures::stream::iter(chunks))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        for good in ["a.png", "Report 2026 (final).pdf", "ünïcode.txt"] {
            assert!(validate_attachment_name(good).is_ok(), "{good}");
        }
        let long = "x".repeat(256);
        for bad in ["", ".", "..", "a/b", "a\\b", "a\nb", long.as_str()] {
            assert!(validate_attachment_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_reference_travels_without_absent_dimensions() {
        let a = Attachment {
            id: AttachmentId::new_random(),
            name: "notes.txt".into(),
            size: 3,
            content_type: "text/plain".into(),
            width: None,
            height: None,
        };
        let v = serde_json::to_value(&a).unwrap();
        assert!(v.get("width").is_none());
        assert_eq!(serde_json::from_value::<Attachment>(v).unwrap(), a);
    }
}
