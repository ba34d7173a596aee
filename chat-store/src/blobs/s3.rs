//! [`S3BlobStore`]: blobs as objects of an S3-compatible bucket (AWS S3,
//! MinIO, Ceph, moto...), through the `object_store` crate.
//!
//! A blob is the object `<prefix>/<id>`. A put of at most
//! [`PART_SIZE`] bytes is one `PUT` of the whole object; a larger one a
//! multipart upload of `PART_SIZE` parts, completed at the end of the
//! stream (aborted if the stream fails or is too large). S3 makes an object
//! visible only once its `PUT` or its upload's completion succeeds, so a
//! partial upload is never readable. An upload whose future is dropped
//! midway is never completed, so never visible either; its parts stay in
//! the bucket until a lifecycle rule removes incomplete uploads (configure
//! one: `AbortIncompleteMultipartUpload`).

use std::sync::Arc;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use chat_core::attachment::{blob_too_large, BlobReader, BlobStore, ByteStream, StoredBlob};
use chat_core::{BlobId, Error, Result};
use futures::StreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};

/// Name of the backend in [`Error::Backend`].
const BACKEND: &str = "s3";

/// The part size of multipart uploads, and the most a put holds in memory:
/// 5 MiB, S3's smallest part.
pub const PART_SIZE: usize = 5 << 20;

/// Where the bucket is and how to sign in.
#[derive(Clone)]
pub struct S3Config {
    /// The bucket.
    pub bucket: String,
    /// The region (`us-east-1` for most S3-compatible servers).
    pub region: String,
    /// The endpoint URL for a server other than AWS (`http://127.0.0.1:9000`);
    /// `None` for AWS. Requests go path-style (`<endpoint>/<bucket>/<key>`).
    pub endpoint: Option<String>,
    /// Access key id.
    pub access_key_id: String,
    /// Secret access key.
    pub secret_access_key: String,
    /// Key prefix of every blob (no leading or trailing `/`); may be empty.
    pub prefix: String,
}

impl std::fmt::Debug for S3Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Config")
            .field("bucket", &self.bucket)
            .field("region", &self.region)
            .field("endpoint", &self.endpoint)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// Blobs in an S3-compatible bucket (see the module docs).
#[derive(Debug, Clone)]
pub struct S3BlobStore {
    store: Arc<dyn ObjectStore>,
    prefix: String,
}

impl S3BlobStore {
    /// A store on the bucket of `config` (no request is made yet).
    pub fn new(config: &S3Config) -> Result<Self> {
        let mut builder = AmazonS3Builder::new()
            .with_bucket_name(&config.bucket)
            .with_region(&config.region)
            .with_access_key_id(&config.access_key_id)
            .with_secret_access_key(&config.secret_access_key)
            .with_virtual_hosted_style_request(false);
        if let Some(endpoint) = &config.endpoint {
            builder = builder
                .with_endpoint(endpoint)
                .with_allow_http(endpoint.starts_with("http://"));
        }
        let store = builder.build().map_err(|e| Error::backend(BACKEND, e))?;
        Ok(Self {
            store: Arc::new(store),
            prefix: config.prefix.trim_matches('/').to_owned(),
        })
    }

    fn path(&self, id: BlobId) -> Path {
        let name = id.0.hyphenated().to_string();
        if self.prefix.is_empty() {
            Path::from(name)
        } else {
            Path::from(format!("{}/{name}", self.prefix))
        }
    }
}

/// An `object_store` error: network trouble may pass, the rest not.
fn s3_error(e: object_store::Error) -> Error {
    match e {
        object_store::Error::Generic { .. } => Error::temporary(BACKEND, e),
        other => Error::backend(BACKEND, other),
    }
}

#[async_trait]
impl BlobStore for S3BlobStore {
    async fn put(&self, mut data: ByteStream, max_bytes: u64) -> Result<StoredBlob> {
        let id = BlobId::new_random();
        let path = self.path(id);
        let mut size = 0u64;
        let mut first = BytesMut::new();
        // Up to one part: one PUT.
        let mut rest: Option<Bytes> = None;
        while let Some(chunk) = data.next().await {
            let chunk = chunk?;
            size = size.saturating_add(chunk.len() as u64);
            if size > max_bytes {
                return Err(blob_too_large(max_bytes));
            }
            if first.len() + chunk.len() > PART_SIZE {
                rest = Some(chunk);
                break;
            }
            first.extend_from_slice(&chunk);
        }
        let Some(rest) = rest else {
            self.store
                .put(&path, PutPayload::from(first.freeze()))
                .await
                .map_err(s3_error)?;
            return Ok(StoredBlob { id, size });
        };
        // More: a multipart upload, completed only at the end.
        let upload = self.store.put_multipart(&path).await.map_err(s3_error)?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_SIZE);
        writer.write(&first);
        drop(first);
        writer.write(&rest);
        let outcome: Result<()> = async {
            while let Some(chunk) = data.next().await {
                let chunk = chunk?;
                size = size.saturating_add(chunk.len() as u64);
                if size > max_bytes {
                    return Err(blob_too_large(max_bytes));
                }
                // At most two parts in flight: memory stays bounded.
                writer.wait_for_capacity(2).await.map_err(s3_error)?;
                writer.write(&chunk);
            }
            Ok(())
        }
        .await;
        match outcome {
            Ok(()) => {
                writer.finish().await.map_err(s3_error)?;
                Ok(StoredBlob { id, size })
            }
            Err(e) => {
                if let Err(abort) = writer.abort().await {
                    tracing::warn!(error = %abort, "cannot abort a multipart upload");
                }
                Err(e)
            }
        }
    }

    async fn get(&self, id: BlobId) -> Result<Option<BlobReader>> {
        match self.store.get(&self.path(id)).await {
            Ok(result) => {
                let size = result.meta.size;
                let stream = result.into_stream().map(|r| r.map_err(s3_error));
                Ok(Some(BlobReader {
                    size,
                    stream: Box::pin(stream),
                }))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(s3_error(e)),
        }
    }

    async fn delete(&self, id: BlobId) -> Result<()> {
        match self.store.delete(&self.path(id)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(s3_error(e)),
        }
    }
}
