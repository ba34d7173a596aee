//! Where a device keeps its sync cursor between runs.

use std::collections::HashMap;
use std::fmt::Debug;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use async_trait::async_trait;
use chat_core::{DeviceId, Seq, UserId};
use serde::{Deserialize, Serialize};

use crate::error::{ClientError, Result};

/// A device's sync state: its cursor, the position in the user's inbox of
/// the last entry it has handled. Every entry up to it has been delivered
/// to the application (or was this device's own message).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceState {
    /// Every inbox entry with a position `<=` this has been handled.
    pub cursor: Seq,
}

/// Persists [`DeviceState`] per user and device.
///
/// The connection loads the state once when it starts and saves it whenever
/// the cursor advances (and when it stops). A store that loses a save only
/// makes the device receive some messages again after a restart; it never
/// makes it miss one.
///
/// Implement it to keep the cursor with the application's own data (the
/// same database transaction as what the messages changed makes handling
/// exactly-once):
///
/// ```
/// use std::collections::HashMap;
/// use std::sync::Mutex;
///
/// use chat_client::{ClientError, CursorStore, DeviceId, DeviceState, UserId};
///
/// #[derive(Debug, Default)]
/// struct MyStore(Mutex<HashMap<(UserId, DeviceId), DeviceState>>);
///
/// #[async_trait::async_trait]
/// impl CursorStore for MyStore {
///     async fn load(&self, user: UserId, device: DeviceId) -> chat_client::Result<Option<DeviceState>> {
///         let map = self.0.lock().map_err(|_| ClientError::store("lock poisoned"))?;
///         Ok(map.get(&(user, device)).copied())
///     }
///
///     async fn save(&self, user: UserId, device: DeviceId, state: &DeviceState) -> chat_client::Result<()> {
///         let mut map = self.0.lock().map_err(|_| ClientError::store("lock poisoned"))?;
///         map.insert((user, device), *state);
///         Ok(())
///     }
/// }
/// ```
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
        states.insert((user, device), *state);
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

/// The file format: the state and its version (2: the cursor is an inbox
/// position). Version-less files were written for protocol 1, whose
/// cursors were message ids.
#[derive(Serialize, Deserialize)]
struct StateFile {
    v: u32,
    #[serde(flatten)]
    state: DeviceState,
}

/// The version [`FileCursorStore`] writes.
const FILE_VERSION: u32 = 2;

fn load_file(path: &Path) -> Result<Option<DeviceState>> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(ClientError::store(e)),
    };
    let value: serde_json::Value = serde_json::from_slice(&bytes).map_err(ClientError::store)?;
    if value.get("v").is_none() && value.get("cursor").is_some_and(|c| c.is_string()) {
        // Protocol 1's cursor counts message ids, not positions: start from
        // the server's copy of this device's cursor, which the server
        // converted when it upgraded.
        tracing::info!(path = %path.display(), "a cursor file from protocol 1: using the server's cursor");
        return Ok(None);
    }
    let file: StateFile = serde_json::from_value(value).map_err(ClientError::store)?;
    if file.v != FILE_VERSION {
        return Err(ClientError::store(format!(
            "{} has cursor file version {}, this build reads {FILE_VERSION}",
            path.display(),
            file.v
        )));
    }
    Ok(Some(file.state))
}

fn save_file(dir: &Path, path: &Path, state: &DeviceState) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(ClientError::store)?;
    let json = serde_json::to_vec(&StateFile {
        v: FILE_VERSION,
        state: *state,
    })
    .map_err(ClientError::store)?;
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
        let state = *state;
        tokio::task::spawn_blocking(move || save_file(&dir, &path, &state))
            .await
            .map_err(ClientError::store)?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(cursor: u64) -> DeviceState {
        DeviceState {
            cursor: Seq(cursor),
        }
    }

    #[tokio::test]
    async fn memory_store_round_trip() {
        let store = MemoryCursorStore::new();
        let (u, d) = (UserId::new_random(), DeviceId::new_random());
        assert_eq!(store.load(u, d).await.unwrap(), None);
        store.save(u, d, &state(5)).await.unwrap();
        assert_eq!(store.load(u, d).await.unwrap(), Some(state(5)));
        assert_eq!(store.load(u, DeviceId::new_random()).await.unwrap(), None);
    }

    #[tokio::test]
    async fn file_store_round_trip_and_atomic_overwrite() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("cursors");
        let store = FileCursorStore::new(&dir);
        let (u, d) = (UserId::new_random(), DeviceId::new_random());
        assert_eq!(store.load(u, d).await.unwrap(), None);

        store.save(u, d, &state(u64::MAX - 1)).await.unwrap();
        assert_eq!(store.load(u, d).await.unwrap(), Some(state(u64::MAX - 1)));

        // Overwrite: the new state replaces the old one and no temporary
        // file is left behind.
        store.save(u, d, &state(10)).await.unwrap();
        assert_eq!(store.load(u, d).await.unwrap(), Some(state(10)));
        let files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(files.len(), 1, "{files:?}");
        assert_eq!(store.path_for(u, d).file_name().unwrap(), &files[0]);

        // A second store on the same directory sees the saved state.
        let again = FileCursorStore::new(&dir);
        assert_eq!(again.load(u, d).await.unwrap(), Some(state(10)));
    }

    #[tokio::test]
    async fn a_protocol_1_file_is_left_to_the_servers_cursor() {
        let tmp = tempfile::tempdir().unwrap();
        let store = FileCursorStore::new(tmp.path());
        let (u, d) = (UserId::new_random(), DeviceId::new_random());
        std::fs::write(
            store.path_for(u, d),
            br#"{"cursor":"1234567890123","seen":["1234567890124"]}"#,
        )
        .unwrap();
        assert_eq!(store.load(u, d).await.unwrap(), None);
        store.save(u, d, &state(3)).await.unwrap();
        assert_eq!(store.load(u, d).await.unwrap(), Some(state(3)));
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
