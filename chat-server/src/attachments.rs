//! Attachments over HTTP: `POST /v1/attachments` (upload),
//! `GET /v1/attachments/{id}` (download) and
//! `GET /v1/attachments/{id}/thumbnail`, and the check a send makes of the
//! attachments it references.
//!
//! An upload is streamed into the [`BlobStore`](chat_core::BlobStore)
//! chunk by chunk (never held whole in memory by the server), under
//! [`ServerConfig::max_attachment_bytes`](crate::ServerConfig::max_attachment_bytes)
//! (413 `attachment_too_large`, also at once from a `Content-Length` above
//! it). Its declared `Content-Type` must be in
//! [`ServerConfig::attachment_types`](crate::ServerConfig::attachment_types)
//! (415 `unsupported_media_type`), and for the image types of
//! [`IMAGE_TYPES`] the first bytes must be that format's magic number
//! (415 otherwise, checked before anything past the first chunk is
//! stored). PNG and JPEG images are then decoded, within [`MAX_IMAGE_SIDE`]
//! pixels a side and [`MAX_DECODE_ALLOC`] bytes of memory (decompression
//! bombs are refused with 413), at most [`DECODES`] at once, for their
//! dimensions and a PNG thumbnail of at most [`THUMBNAIL_SIDE`] pixels a
//! side. A failed upload leaves no blob behind.
//!
//! Downloads are for the uploader and for the members of the channel the
//! attachment was shared in; anyone else gets the same 404 as for an id
//! that does not exist.

use std::io::Cursor;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use chat_core::attachment::{bytes_stream, validate_attachment_name, ByteStream, MAX_CONTENT_TYPE};
use chat_core::protocol::{ErrorCode, WireError};
use chat_core::{
    Attachment, AttachmentId, AttachmentRecord, BlobId, ChannelId, UserId,
    MAX_ATTACHMENTS_PER_MESSAGE,
};
use futures::StreamExt;
use serde::Deserialize;
use tokio::sync::Semaphore;

use crate::http::{ApiError, Caller, Errors, HttpResult, P, Q};
use crate::server::{err, wire, ApiResult, ChatServer};

/// The content types uploads may declare by default.
pub const DEFAULT_TYPES: &[&str] = &[
    "image/png",
    "image/jpeg",
    "image/gif",
    "image/webp",
    "application/pdf",
    "text/plain",
    "application/zip",
    "application/octet-stream",
    "audio/mpeg",
    "audio/ogg",
    "video/mp4",
];

/// The image types whose bytes are checked against their magic number.
pub const IMAGE_TYPES: &[&str] = &["image/png", "image/jpeg", "image/gif", "image/webp"];

/// Widest and tallest image decoded for a thumbnail, in pixels.
pub const MAX_IMAGE_SIDE: u32 = 8_192;

/// Most memory one image decode may allocate, in bytes.
pub const MAX_DECODE_ALLOC: u64 = 256 << 20;

/// Image decodes at once on one server (each may take
/// [`MAX_DECODE_ALLOC`] and a core).
pub const DECODES: usize = 2;

/// Longest side of a thumbnail, in pixels.
pub const THUMBNAIL_SIDE: u32 = 320;

/// Bytes of an upload gathered before its magic number is checked.
const MAGIC_BYTES: usize = 12;

static DECODE_PERMITS: Semaphore = Semaphore::const_new(DECODES);

/// The magic number of an image type, if it is one.
fn magic_matches(content_type: &str, head: &[u8]) -> Option<bool> {
    Some(match content_type {
        "image/png" => head.starts_with(b"\x89PNG\r\n\x1a\n"),
        "image/jpeg" => head.starts_with(&[0xFF, 0xD8, 0xFF]),
        "image/gif" => head.starts_with(b"GIF87a") || head.starts_with(b"GIF89a"),
        "image/webp" => head.len() >= 12 && &head[..4] == b"RIFF" && &head[8..12] == b"WEBP",
        _ => return None,
    })
}

/// The bytes of a file, in the OpenAPI description.
#[derive(utoipa::ToSchema)]
#[schema(value_type = String, format = Binary)]
#[allow(dead_code)] // a schema only
pub(crate) struct FileBytes(Vec<u8>);

/// `?name=`: the attachment's file name.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct UploadQuery {
    /// The file name shown to others: 1 to 255 bytes, no control
    /// characters, no `/` or `\`.
    name: String,
}

fn unsupported(message: impl Into<String>) -> WireError {
    err(ErrorCode::UnsupportedMediaType, message)
}

fn too_large(max: u64) -> WireError {
    err(
        ErrorCode::AttachmentTooLarge,
        format!("attachments are at most {max} bytes"),
    )
}

/// The declared content type, lowercase and without parameters, if the
/// server takes it.
fn content_type(server: &ChatServer, headers: &HeaderMap) -> ApiResult<String> {
    let raw = headers
        .get(header::CONTENT_TYPE)
        .ok_or_else(|| unsupported("a Content-Type header is required"))?
        .to_str()
        .map_err(|_| unsupported("the Content-Type is not ASCII"))?;
    let essence = raw
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if essence.is_empty()
        || essence.len() > MAX_CONTENT_TYPE
        || !server
            .config()
            .attachment_types
            .iter()
            .any(|t| t == &essence)
    {
        return Err(unsupported(format!(
            "content type {essence:?} is not taken; allowed: {}",
            server.config().attachment_types.join(", ")
        )));
    }
    Ok(essence)
}

/// The request body as a [`ByteStream`] whose first bytes are checked
/// against the magic number of `content_type` (if it has one): a mismatch
/// ends the stream with an error and records the refusal in `refused`.
fn checked_body(
    body: Body,
    content_type: String,
    refused: Arc<Mutex<Option<WireError>>>,
) -> ByteStream {
    let body: ByteStream = Box::pin(body.into_data_stream().map(|chunk| {
        chunk.map_err(|e| chat_core::Error::invalid(format!("the upload was cut short: {e}")))
    }));
    if magic_matches(&content_type, &[]).is_none() {
        return body;
    }
    let state = (body, Some(Vec::<u8>::new()));
    Box::pin(futures::stream::try_unfold(
        state,
        move |(mut body, head)| {
            let content_type = content_type.clone();
            let refused = refused.clone();
            async move {
                let Some(mut head) = head else {
                    return match body.next().await {
                        Some(chunk) => Ok(Some((chunk?, (body, None)))),
                        None => Ok(None),
                    };
                };
                while head.len() < MAGIC_BYTES {
                    match body.next().await {
                        Some(chunk) => head.extend_from_slice(&chunk?),
                        None => break,
                    }
                }
                if magic_matches(&content_type, &head) != Some(true) {
                    let refusal = unsupported(format!("the bytes are not {content_type}"));
                    *refused.lock().unwrap_or_else(|p| p.into_inner()) = Some(refusal);
                    return Err(chat_core::Error::invalid("magic number mismatch"));
                }
                Ok(Some((Bytes::from(head), (body, None))))
            }
        },
    ))
}

/// What decoding an image gave: its dimensions and a PNG thumbnail.
struct Decoded {
    width: u32,
    height: u32,
    thumbnail: Vec<u8>,
}

/// Decodes a PNG or JPEG within the limits and makes its thumbnail (CPU
/// work: call it on a blocking thread).
fn decode(bytes: &[u8], content_type: &str) -> ApiResult<Decoded> {
    let format = match content_type {
        "image/png" => image::ImageFormat::Png,
        _ => image::ImageFormat::Jpeg,
    };
    let mut reader = image::ImageReader::with_format(Cursor::new(bytes), format);
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_IMAGE_SIDE);
    limits.max_image_height = Some(MAX_IMAGE_SIDE);
    limits.max_alloc = Some(MAX_DECODE_ALLOC);
    reader.limits(limits);
    let image = reader.decode().map_err(|e| match e {
        image::ImageError::Limits(_) => err(
            ErrorCode::AttachmentTooLarge,
            format!("images are at most {MAX_IMAGE_SIDE} x {MAX_IMAGE_SIDE} pixels"),
        ),
        other => unsupported(format!("the image does not decode: {other}")),
    })?;
    let thumbnail = image.thumbnail(THUMBNAIL_SIDE, THUMBNAIL_SIDE);
    let mut out = Vec::new();
    thumbnail
        .write_to(&mut Cursor::new(&mut out), image::ImageFormat::Png)
        .map_err(|e| err(ErrorCode::Internal, format!("thumbnail: {e}")))?;
    Ok(Decoded {
        width: image.width(),
        height: image.height(),
        thumbnail: out,
    })
}

impl ChatServer {
    /// Stores an upload of `user` (see the [module docs](self)).
    async fn store_upload(
        &self,
        user: UserId,
        name: String,
        headers: &HeaderMap,
        body: Body,
    ) -> ApiResult<Attachment> {
        validate_attachment_name(&name).map_err(wire)?;
        let content_type = content_type(self, headers)?;
        let max = self.config().max_attachment_bytes;
        let declared = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > max) {
            return Err(too_large(max));
        }
        let refused = Arc::new(Mutex::new(None));
        let blobs = &self.inner.blobs;
        let stream = checked_body(body, content_type.clone(), refused.clone());
        let stored = match blobs.put(stream, max).await {
            Ok(stored) => stored,
            Err(e) => {
                if let Some(refusal) = refused.lock().unwrap_or_else(|p| p.into_inner()).take() {
                    return Err(refusal);
                }
                return Err(match e {
                    chat_core::Error::LimitExceeded { .. } => too_large(max),
                    other => wire(other),
                });
            }
        };
        let outcome = self.describe(user, name, content_type, stored).await;
        if outcome.is_err() {
            // Nothing refers to the blob: remove it (a failure here leaves
            // an unreferenced file, logged).
            if let Err(e) = blobs.delete(stored.id).await {
                tracing::warn!(error = %e, blob = %stored.id, "cannot remove a refused upload");
            }
        }
        outcome
    }

    /// Dimensions and thumbnail of an image, then the record.
    async fn describe(
        &self,
        user: UserId,
        name: String,
        content_type: String,
        stored: chat_core::StoredBlob,
    ) -> ApiResult<Attachment> {
        let blobs = &self.inner.blobs;
        let mut attachment = Attachment {
            id: AttachmentId::new_random(),
            name,
            size: stored.size,
            content_type,
            width: None,
            height: None,
        };
        let mut thumbnail: Option<BlobId> = None;
        if matches!(attachment.content_type.as_str(), "image/png" | "image/jpeg") {
            let _permit = DECODE_PERMITS
                .acquire()
                .await
                .map_err(|_| err(ErrorCode::Unavailable, "shutting down"))?;
            let bytes = blobs
                .get(stored.id)
                .await
                .map_err(wire)?
                .ok_or_else(|| err(ErrorCode::Internal, "the upload vanished"))?
                .read_all(stored.size)
                .await
                .map_err(wire)?;
            let content_type = attachment.content_type.clone();
            let decoded = tokio::task::spawn_blocking(move || decode(&bytes, &content_type))
                .await
                .map_err(|_| err(ErrorCode::Internal, "decoding the image failed"))??;
            attachment.width = Some(decoded.width);
            attachment.height = Some(decoded.height);
            let max = self.config().max_attachment_bytes;
            let thumb = blobs
                .put(bytes_stream(decoded.thumbnail), max.max(1 << 20))
                .await
                .map_err(wire)?;
            thumbnail = Some(thumb.id);
        }
        let record = AttachmentRecord {
            attachment: attachment.clone(),
            uploader: user,
            blob: stored.id,
            thumbnail,
            channel: None,
            created_at: self.now(),
        };
        if let Err(e) = self.inner.attachments.create_attachment(record).await {
            if let Some(t) = thumbnail {
                let _ = blobs.delete(t).await;
            }
            return Err(wire(e));
        }
        Ok(attachment)
    }

    /// The record of `id` if `user` may download it; `not_found` alike for
    /// an unknown id and one the user may not read.
    async fn readable(&self, user: UserId, id: AttachmentId) -> ApiResult<AttachmentRecord> {
        let record = self
            .inner
            .attachments
            .attachment(id)
            .await
            .map_err(wire)?
            .ok_or_else(not_found)?;
        if record.uploader == user {
            return Ok(record);
        }
        match record.channel {
            Some(channel) if self.member_channel(user, channel).await.is_ok() => Ok(record),
            _ => Err(not_found()),
        }
    }

    /// Checks the attachments a send references and binds them to the
    /// channel: at most [`MAX_ATTACHMENTS_PER_MESSAGE`], no repeats, each
    /// the sender's own upload (`not_found` otherwise, the same answer as
    /// an unknown id), none shared in another channel before (`conflict`).
    /// The sender must be a member of the channel. Only sends with
    /// attachments pay for this.
    pub(crate) async fn bind_attachments(
        &self,
        sender: UserId,
        channel: ChannelId,
        ids: &[AttachmentId],
    ) -> ApiResult<Vec<Attachment>> {
        if ids.len() > MAX_ATTACHMENTS_PER_MESSAGE {
            return Err(err(
                ErrorCode::InvalidInput,
                format!("a message carries at most {MAX_ATTACHMENTS_PER_MESSAGE} attachments"),
            ));
        }
        let mut seen = std::collections::HashSet::new();
        if !ids.iter().all(|id| seen.insert(*id)) {
            return Err(err(
                ErrorCode::InvalidInput,
                "an attachment is referenced twice",
            ));
        }
        self.member_channel(sender, channel).await?;
        let store = &self.inner.attachments;
        let mut records = Vec::with_capacity(ids.len());
        for id in ids {
            match store.attachment(*id).await.map_err(wire)? {
                Some(r) if r.uploader == sender => records.push(r),
                _ => return Err(not_found()),
            }
        }
        let mut out = Vec::with_capacity(records.len());
        for record in records {
            let bound = store
                .bind_attachment(record.attachment.id, channel)
                .await
                .map_err(wire)?;
            out.push(bound.attachment);
        }
        Ok(out)
    }
}

fn not_found() -> WireError {
    err(
        ErrorCode::NotFound,
        "attachment not found (or not yours to use)",
    )
}

/// A blob as a download response.
async fn serve_blob(
    server: &ChatServer,
    blob: BlobId,
    content_type: &str,
    name: &str,
) -> HttpResult<Response> {
    let reader = server
        .inner
        .blobs
        .get(blob)
        .await
        .map_err(wire)?
        .ok_or_else(|| {
            tracing::warn!(%blob, "an attachment's blob is missing");
            not_found()
        })?;
    let mut response = Body::from_stream(reader.stream).into_response();
    let headers = response.headers_mut();
    let value = |v: &str| {
        HeaderValue::from_str(v)
            .unwrap_or_else(|_| HeaderValue::from_static("application/octet-stream"))
    };
    headers.insert(header::CONTENT_TYPE, value(content_type));
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(reader.size));
    headers.insert(
        header::CONTENT_DISPOSITION,
        value(&format!(
            "attachment; filename*=UTF-8''{}",
            percent_encode(name)
        )),
    );
    // Never rendered as anything but what it says it is, nor cached by
    // shared caches: it is for members only.
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, max-age=3600"),
    );
    Ok(response)
}

/// RFC 5987 `attr-char`s kept, every other byte `%XX`.
fn percent_encode(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `POST /v1/attachments?name=NAME`: uploads a file (the body, with its
/// `Content-Type`), answering its reference for a send's `attachments`.
#[utoipa::path(
    post,
    path = "/v1/attachments",
    tag = "attachments",
    params(UploadQuery),
    request_body(
        content = FileBytes,
        content_type = "application/octet-stream",
        description = "The file's bytes, with its own Content-Type (one the server allows: image/png, image/jpeg, image/gif, image/webp, application/pdf, text/plain, ... by default)"
    ),
    responses(
        (status = 201, description = "Stored; reference it in a send's `attachments`", body = Attachment),
        Errors
    ),
    security(("bearer" = []))
)]
pub(crate) async fn upload(
    State(server): State<ChatServer>,
    Caller(me): Caller,
    Q(q): Q<UploadQuery>,
    headers: HeaderMap,
    body: Body,
) -> HttpResult<(StatusCode, Json<Attachment>)> {
    let attachment = server.store_upload(me, q.name, &headers, body).await?;
    Ok((StatusCode::CREATED, Json(attachment)))
}

/// `GET /v1/attachments/{id}`: the file, for its uploader and the members
/// of the channel it was shared in.
#[utoipa::path(
    get,
    path = "/v1/attachments/{id}",
    tag = "attachments",
    params(("id" = AttachmentId, Path, description = "An attachment id")),
    responses(
        (status = 200, description = "The file's bytes, with its content type", content_type = "application/octet-stream", body = FileBytes),
        Errors
    ),
    security(("bearer" = []))
)]
pub(crate) async fn download(
    State(server): State<ChatServer>,
    Caller(me): Caller,
    P(id): P<AttachmentId>,
) -> Result<Response, ApiError> {
    let record = server.readable(me, id).await?;
    let a = &record.attachment;
    serve_blob(&server, record.blob, &a.content_type, &a.name).await
}

/// `GET /v1/attachments/{id}/thumbnail`: the PNG thumbnail of a PNG or
/// JPEG attachment, for the same users as the file.
#[utoipa::path(
    get,
    path = "/v1/attachments/{id}/thumbnail",
    tag = "attachments",
    params(("id" = AttachmentId, Path, description = "An attachment id")),
    responses(
        (status = 200, description = "The thumbnail, a PNG", content_type = "image/png", body = FileBytes),
        Errors
    ),
    security(("bearer" = []))
)]
pub(crate) async fn thumbnail(
    State(server): State<ChatServer>,
    Caller(me): Caller,
    P(id): P<AttachmentId>,
) -> Result<Response, ApiError> {
    let record = server.readable(me, id).await?;
    let blob = record
        .thumbnail
        .ok_or_else(|| ApiError(err(ErrorCode::NotFound, "this attachment has no thumbnail")))?;
    let name = format!("{}.thumbnail.png", record.attachment.name);
    serve_blob(&server, blob, "image/png", &name).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn magic_numbers() {
        assert_eq!(
            magic_matches("image/png", b"\x89PNG\r\n\x1a\nrest"),
            Some(true)
        );
        assert_eq!(magic_matches("image/png", b"GIF89a"), Some(false));
        assert_eq!(
            magic_matches("image/jpeg", &[0xFF, 0xD8, 0xFF, 0xE0]),
            Some(true)
        );
        assert_eq!(magic_matches("image/gif", b"GIF87a..."), Some(true));
        assert_eq!(
            magic_matches("image/webp", b"RIFF\0\0\0\0WEBPVP8 "),
            Some(true)
        );
        assert_eq!(magic_matches("image/webp", b"RIFF"), Some(false));
        assert_eq!(magic_matches("text/plain", b"anything"), None);
    }

    #[test]
    fn file_names_are_percent_encoded() {
        assert_eq!(percent_encode("a b\"ü.png"), "a%20b%22%C3%BC.png");
    }

    #[test]
    fn a_decompression_bomb_is_refused_by_its_header() {
        // A PNG header claiming 100,000 x 100,000 pixels.
        let mut png = Vec::new();
        png.extend_from_slice(b"\x89PNG\r\n\x1a\n");
        let mut ihdr = Vec::new();
        ihdr.extend_from_slice(&100_000u32.to_be_bytes());
        ihdr.extend_from_slice(&100_000u32.to_be_bytes());
        ihdr.extend_from_slice(&[8, 6, 0, 0, 0]);
        png.extend_from_slice(&(ihdr.len() as u32).to_be_bytes());
        png.extend_from_slice(b"IHDR");
        png.extend_from_slice(&ihdr);
        let mut crc_input = b"IHDR".to_vec();
        crc_input.extend_from_slice(&ihdr);
        png.extend_from_slice(&crc32(&crc_input).to_be_bytes());
        let e = decode(&png, "image/png").err().map(|e| e.code);
        assert_eq!(e, Some(ErrorCode::AttachmentTooLarge));
    }

    /// CRC-32 (IEEE), as PNG chunks carry it.
    fn crc32(bytes: &[u8]) -> u32 {
        let mut crc = !0u32;
        for b in bytes {
            crc ^= u32::from(*b);
            for _ in 0..8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ 0xEDB8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }
}
