//! Where a device keeps its sync cursor between runs.

use std::collections::HashMap;
use std::fmt::Debug;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use async_trait::async_trait;
use chat_core::{DeviceId, MessageId, UserId};
use serde::{Deserialize, Serialize};

use crate::error::{ClientError, Result};

/// A device's sync state: its cursor, and the ids above the cursor it has
/// already received.
///
/// The cursor means "every message with an id up to here has been received".
/// `seen` holds ids above the cursor that were received too (they arrived live
/// or in a sync before the server's settled watermark passed them), so a
/// later sync does not deliver them twice.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceState {
    /// Every message with an id `<=` this has been received.
    pub cursor: MessageId,
    /// Ids above `cursor` that have been received, ascending.
    #[serde(default)]
    pub seen: Vec<MessageId>,
}

/// Persists [`DeviceState`] per user and device.
///
/// The connection loads the state once when it starts and saves it whenever
/// the cursor advances (and when it stops). A store that loses a save only
/// makes the device receive some messages again after a restart; it never
/// makes it miss one.
#[async_trait]
pub trait CursorStore: Send + Sync + Debug {
    /// The stored state, or `None` if there is none yet (the connection then
    /// starts from the cursor the server keeps for the device).
    async fn load(&self, user: UserId, device: DeviceId) -> Result<Option<DeviceState>>;

    /// Replaces the stored state.
    async fn save(&self, user: UserId, device: DeviceId, state: &DeviceState) -> Result<()>;
}

/// A [`CursorStore`] in memory: the state lives as long as the store (share
/// it with an [`Arc`](std::sync::Arc) across connections).
#[derive(Debug, Default)]
pub struct MemoryCursorStore {
    states: Mutex<HashMap<(UserId, DeviceId), DeviceState>>,
}

impl MemoryCursorStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl CursorStore for MemoryCursorStore {
    async fn load(&self, user: UserId, device: DeviceId) -> Result<Option<DeviceState>> {
        let states = self
            .states
            .lock()
            .map_err(|_| ClientError::store("memory cursor store lock poisoned"))?;
        Ok(states.get(&(user, device)).cloned())
    }

    async fn save(&self, user: UserId, device: DeviceId, state: &DeviceState) -> Result<()> {
        let mut states = self
            .states
            .lock()
            .map_err(|_| ClientError::store("memory cursor store lock poisoned"))?;
        states.insert((user, device), state.clone());
        Ok(())
    }
}

/// A [`CursorStore`] in a directory: one JSON file per user and device
/// (`<user>_<device>.json`).
///
/// Saves are atomic: the state is written to a temporary file in the same
/// directory, flushed to disk, renamed over the old file, and the directory
/// is flushed, so a crash leaves either the old or the new state, never a
/// torn file. The directory is created on the first save.
#[derive(Debug, Clone)]
pub struct FileCursorStore {
    dir: PathBuf,
}

impl FileCursorStore {
    /// A store keeping its files in `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The directory holding the files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file holding the state of `user`'s `device`.
    pub fn path_for(&self, user: UserId, device: DeviceId) -> PathBuf {
        self.dir.join(format!("{user}_{device}.json"))
    }
}

fn load_file(path: &Path) -> Result<Option<DeviceState>> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(ClientError::store(e)),
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(ClientError::store)
}

fn save_file(dir: &Path, path: &Path, state: &DeviceState) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(ClientError::store)?;
    let json = serde_json::to_vec(state).map_err(ClientError::store)?;
    let file_name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("state.json");
    let tmp = dir.join(format!(".{file_name}.{}.tmp", uuid::Uuid::new_v4()));
    let write = || -> std::io::Result<()> {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)?;
        file.write_all(&json)?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&tmp, path)?;
        // Make the rename itself durable. Directories cannot be opened for
        // syncing on every platform; the rename is still atomic there.
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        ClientError::store(e)
    })
}

#[async_trait]
impl CursorStore for FileCursorStore {
    async fn load(&self, user: UserId, device: DeviceId) -> Result<Option<DeviceState>> {
        let path = self.path_for(user, device);
        tokio::task::spawn_blocking(move || load_file(&path))
            .await
            .map_err(ClientError::store)?
    }

    async fn save(&self, user: UserId, device: DeviceId, state: &DeviceState) -> Result<()> {
        let dir = self.dir.clone();
        let path = self.path_for(user, device);
        let state = state.clone();
        tokio::task::spawn_blocking(move || save_file(&dir, &path, &state))
            .await
            .map_err(ClientError::store)?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(cursor: u64, seen: &[u64]) -> DeviceState {
        DeviceState {
            cursor: MessageId(cursor),
            seen: seen.iter().copied().map(MessageId).collect(),
        }
    }

    #[tokio::test]
    async fn memory_store_round_trip() {
        let store = MemoryCursorStore::new();
        let (u, d) = (UserId::new_random(), DeviceId::new_random());
        assert_eq!(store.load(u, d).await.unwrap(), None);
        store.save(u, d, &state(5, &[7, 9])).await.unwrap();
        assert_eq!(store.load(u, d).await.unwrap(), Some(state(5, &[7, 9])));
        assert_eq!(store.load(u, DeviceId::new_random()).await.unwrap(), None);
    }

    #[tokio::test]
    async fn file_store_round_trip_and_atomic_overwrite() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("cursors");
        let store = FileCursorStore::new(&dir);
        let (u, d) = (UserId::new_random(), DeviceId::new_random());
        assert_eq!(store.load(u, d).await.unwrap(), None);

        store
            .save(u, d, &state(u64::MAX - 1, &[u64::MAX]))
            .await
            .unwrap();
        assert_eq!(
            store.load(u, d).await.unwrap(),
            Some(state(u64::MAX - 1, &[u64::MAX]))
        );

        // Overwrite: the new state replaces the old one and no temporary
        // file is left behind.
        store.save(u, d, &state(10, &[])).await.unwrap();
        assert_eq!(store.load(u, d).await.unwrap(), Some(state(10, &[])));
        let files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(files.len(), 1, "{files:?}");
        assert_eq!(store.path_for(u, d).file_name().unwrap(), &files[0]);

        // A second store on the same directory sees the saved state.
        let again = FileCursorStore::new(&dir);
        assert_eq!(again.load(u, d).await.unwrap(), Some(state(10, &[])));
    }

    #[tokio::test]
    async fn file_store_reports_corrupt_files() {
        let tmp = tempfile::tempdir().unwrap();
        let store = FileCursorStore::new(tmp.path());
        let (u, d) = (UserId::new_random(), DeviceId::new_random());
        std::fs::write(store.path_for(u, d), b"{not json").unwrap();
        assert!(matches!(store.load(u, d).await, Err(ClientError::Store(_))));
    }
}
