//! [`BlobStore`] backends: [`FsBlobStore`], files in a local directory (the
//! default), and (feature `s3`) `s3::S3BlobStore`, objects in an
//! S3-compatible bucket through the `object_store` crate.
//!
//! Both keep the trait's contract: a put streams the bytes to a place no
//! reader looks (a temporary file; an unfinished S3 upload) and makes them
//! visible in one step at the end (a `rename`; the upload's completion),
//! holding one bounded chunk in memory at a time.

#[cfg(feature = "s3")]
pub mod s3;

use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use bytes::Bytes;
use chat_core::attachment::{blob_too_large, BlobReader, BlobStore, ByteStream, StoredBlob};
use chat_core::{BlobId, Error, Result};
use futures::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Name of the backend in [`Error::Backend`].
const BACKEND: &str = "blobs";

/// Bytes read per chunk of a `get`.
const READ_CHUNK: usize = 64 << 10;

/// Blobs as files of a local directory: `<root>/<id>` (the id's hyphenated
/// UUID), each written to `<root>/tmp/<id>` first, `fsync`ed, renamed into
/// place and the directory `fsync`ed, so a blob is readable only whole and
/// durable once `put` returns. Files are created `0600` and the directories
/// `0700`, like the embedded store's data directory.
///
/// Temporary files of puts cut short by a crash are removed at
/// [`open`](Self::open); one cut short by an error or a dropped future is
/// removed at once.
#[derive(Debug, Clone)]
pub struct FsBlobStore {
    root: PathBuf,
}

impl FsBlobStore {
    /// Opens (creating if needed) the blob directory `root`.
    pub fn open(root: impl AsRef<Path>) -> Result<Self> {
        let root = root.as_ref().to_path_buf();
        private_dir(&root)?;
        let tmp = root.join("tmp");
        private_dir(&tmp)?;
        // Leftovers of puts a crash interrupted: never visible, now gone.
        let entries = std::fs::read_dir(&tmp).map_err(|e| io(&tmp, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| io(&tmp, e))?;
            let path = entry.path();
            if let Err(e) = std::fs::remove_file(&path) {
                tracing::warn!(path = %path.display(), error = %e, "cannot remove a partial upload");
            }
        }
        Ok(Self { root })
    }

    /// The directory the blobs are in.
    pub fn path(&self) -> &Path {
        &self.root
    }

    fn final_path(&self, id: BlobId) -> PathBuf {
        self.root.join(id.0.hyphenated().to_string())
    }

    fn temp_path(&self, id: BlobId) -> PathBuf {
        self.root.join("tmp").join(id.0.hyphenated().to_string())
    }
}

/// Removes a temporary file on drop unless disarmed: a put that fails or
/// whose future is dropped leaves no file behind.
struct TempFile {
    path: Option<PathBuf>,
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if let Some(path) = self.path.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}

#[async_trait]
impl BlobStore for FsBlobStore {
    async fn put(&self, mut data: ByteStream, max_bytes: u64) -> Result<StoredBlob> {
        let id = BlobId::new_random();
        let temp = self.temp_path(id);
        let mut file = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temp)
            .await
            .map_err(|e| io(&temp, e))?;
        let mut guard = TempFile {
            path: Some(temp.clone()),
        };
        let mut size = 0u64;
        while let Some(chunk) = data.next().await {
            let chunk: Bytes = chunk?;
            size = size.saturating_add(chunk.len() as u64);
            if size > max_bytes {
                return Err(blob_too_large(max_bytes));
            }
            file.write_all(&chunk).await.map_err(|e| io(&temp, e))?;
        }
        file.flush().await.map_err(|e| io(&temp, e))?;
        file.sync_all().await.map_err(|e| io(&temp, e))?;
        drop(file);
        let target = self.final_path(id);
        tokio::fs::rename(&temp, &target)
            .await
            .map_err(|e| io(&target, e))?;
        guard.path = None;
        sync_dir(self.root.clone()).await?;
        Ok(StoredBlob { id, size })
    }

    async fn get(&self, id: BlobId) -> Result<Option<BlobReader>> {
        let path = self.final_path(id);
        let file = match tokio::fs::File::open(&path).await {
            Ok(f) => f,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io(&path, e)),
        };
        let size = file.metadata().await.map_err(|e| io(&path, e))?.len();
        let stream = futures::stream::try_unfold((file, path), |(mut file, path)| async move {
            let mut buf = vec![0u8; READ_CHUNK];
            let n = file.read(&mut buf).await.map_err(|e| io(&path, e))?;
            if n == 0 {
                return Ok(None);
            }
            buf.truncate(n);
            Ok(Some((Bytes::from(buf), (file, path))))
        });
        Ok(Some(BlobReader {
            size,
            stream: Box::pin(stream),
        }))
    }

    async fn delete(&self, id: BlobId) -> Result<()> {
        let path = self.final_path(id);
        match tokio::fs::remove_file(&path).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io(&path, e)),
        }
    }
}

/// `fsync` of a directory, so a rename in it is durable.
async fn sync_dir(dir: PathBuf) -> Result<()> {
    tokio::task::spawn_blocking(move || {
        std::fs::File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io(&dir, e))
    })
    .await
    .map_err(|e| Error::temporary(BACKEND, e))?
}

/// Creates a directory (and parents) `0700` if missing.
fn private_dir(path: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(Error::backend(
            BACKEND,
            format!("{} is not a directory", path.display()),
        )),
        Err(e) if e.kind() == ErrorKind::NotFound => std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(path)
            .map_err(|e| io(path, e)),
        Err(e) => Err(io(path, e)),
    }
}

/// An I/O error on `path`: a full disk or a missing mount may pass
/// (temporary), anything else is not.
fn io(path: &Path, e: std::io::Error) -> Error {
    let text = format!("{}: {e}", path.display());
    match e.kind() {
        ErrorKind::StorageFull | ErrorKind::Interrupted | ErrorKind::TimedOut => {
            Error::temporary(BACKEND, text)
        }
        _ => Error::backend(BACKEND, text),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use chat_core::attachment::bytes_stream;

    use super::*;

    #[tokio::test]
    async fn files_are_private_and_partial_puts_leave_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let store = FsBlobStore::open(tmp.path().join("blobs")).unwrap();
        let dir_mode = std::fs::metadata(store.path())
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(dir_mode, 0o700);
        let put = store.put(bytes_stream(&b"hello"[..]), 100).await.unwrap();
        let mode = std::fs::metadata(store.final_path(put.id))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600, "blob files are the owner's only");
        // Over the limit: refused, and no file is left anywhere.
        let big = store.put(bytes_stream(vec![7u8; 200_000]), 100_000).await;
        assert!(matches!(big, Err(Error::LimitExceeded { .. })), "{big:?}");
        let temps = std::fs::read_dir(store.root.join("tmp")).unwrap().count();
        assert_eq!(temps, 0, "the partial upload was removed");
        let files: Vec<_> = std::fs::read_dir(store.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.path().is_file())
            .collect();
        assert_eq!(files.len(), 1, "only the whole blob is there");
    }

    #[tokio::test]
    async fn a_crash_leftover_is_removed_at_open() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("blobs");
        let store = FsBlobStore::open(&root).unwrap();
        let leftover = store.temp_path(BlobId::new_random());
        std::fs::write(&leftover, b"half").unwrap();
        drop(store);
        FsBlobStore::open(&root).unwrap();
        assert!(!leftover.exists());
    }
}
