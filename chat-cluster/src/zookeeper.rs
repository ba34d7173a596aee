//! Service discovery on ZooKeeper (feature `zookeeper`), the design's own
//! choice.
//!
//! # Znodes
//!
//! Under a configurable path `P` (e.g. `/chat`):
//!
//! | znode | kind | data |
//! |---|---|---|
//! | `P/servers/{server id}` | ephemeral | the server's [`ServerInfo`] as JSON |
//! | `P/server-ids/{server id}` | ephemeral | the client instance holding the id |
//! | `P/node-ids/{node id}` | ephemeral | the client instance holding the id |
//!
//! Ephemeral znodes live as long as the client's session: the lease is the
//! session timeout (set on the client; `register`'s `ttl_ms` is not used),
//! and a server that dies disappears when its session expires. Ids are
//! claimed by creating their znode, which exactly one client can do; a
//! client finding a claim of its own (same instance) keeps it.
//!
//! `servers` answers from a local view kept by a persistent recursive watch
//! on `P/servers` (ZooKeeper 3.6 or later), read in full when the watch is
//! set and again after every reconnect; while ZooKeeper cannot be reached
//! the view stays as last known. A session that expired is replaced by a
//! new one on the next `register`, which creates the znodes again.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use chat_core::{Error, Result, ServerInfo, ServiceDiscovery};
use tokio_util::sync::CancellationToken;
use zookeeper_client as zk;

const BACKEND: &str = "zookeeper";

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn temporary(e: zk::Error) -> Error {
    Error::temporary(BACKEND, e)
}

/// How to reach ZooKeeper.
#[derive(Debug, Clone)]
pub struct ZooKeeperDiscoveryConfig {
    /// Connect string, e.g. `127.0.0.1:2181,10.0.0.2:2181`.
    pub connect: String,
    /// Root path of the registry, e.g. `/chat`: `/` then segments of
    /// `A-Z a-z 0-9 _ -`.
    pub path: String,
    /// Session timeout: how long after a server dies its entry goes. The
    /// server bounds it (by default to 2 to 20 of its ticks).
    pub session_timeout: Duration,
}

impl ZooKeeperDiscoveryConfig {
    /// Defaults for `connect` and `path`: a 15-second session.
    pub fn new(connect: impl Into<String>, path: impl Into<String>) -> Self {
        Self {
            connect: connect.into(),
            path: path.into(),
            session_timeout: Duration::from_secs(15),
        }
    }
}

fn check_path(path: &str) -> Result<()> {
    let ok = path.starts_with('/')
        && path.len() <= 256
        && path[1..]
            .split('/')
            .all(|seg| crate::check_prefix(seg).is_ok());
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "zookeeper path {path:?} must be '/' and segments of A-Z, a-z, 0-9, '_', '-'"
        )))
    }
}

struct Shared {
    config: ZooKeeperDiscoveryConfig,
    /// This client's instance name in the id znodes.
    instance: String,
    /// The current session; replaced when it expires.
    client: tokio::sync::Mutex<Option<zk::Client>>,
    view: Mutex<BTreeMap<String, ServerInfo>>,
    /// server id → node id, of what this client registered.
    held: tokio::sync::Mutex<BTreeMap<String, u16>>,
    stop: CancellationToken,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZooKeeperDiscovery")
            .field("path", &self.config.path)
            .field("instance", &self.instance)
            .finish()
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Service discovery on ZooKeeper. See the [module docs](self). Each value
/// is one client (one session) of the registry; clones share it.
#[derive(Debug, Clone)]
pub struct ZooKeeperDiscovery {
    shared: Arc<Shared>,
}

impl ZooKeeperDiscovery {
    /// Connects, reads the registry and starts watching it.
    pub async fn connect(config: ZooKeeperDiscoveryConfig) -> Result<Self> {
        check_path(&config.path)?;
        let shared = Arc::new(Shared {
            config,
            instance: uuid::Uuid::new_v4().simple().to_string(),
            client: tokio::sync::Mutex::new(None),
            view: Mutex::new(BTreeMap::new()),
            held: tokio::sync::Mutex::new(BTreeMap::new()),
            stop: CancellationToken::new(),
        });
        let client = shared.session().await?;
        let watcher = shared.watch(&client).await?;
        tokio::spawn(watch_loop(
            Arc::downgrade(&shared),
            shared.stop.clone(),
            watcher,
        ));
        Ok(Self { shared })
    }

    /// Stops this client without deregistering, as a crash would: its
    /// session is no longer kept alive and expires by itself.
    pub async fn abandon(&self) {
        self.shared.stop.cancel();
        // Detached: dropping the client does not close its session.
        self.shared.client.lock().await.take();
    }
}

impl Shared {
    fn dir(&self, name: &str) -> String {
        format!("{}/{name}", self.config.path)
    }

    /// The live session, a new one if the last expired.
    async fn session(&self) -> Result<zk::Client> {
        let mut current = self.client.lock().await;
        if let Some(c) = current.as_ref() {
            if !matches!(
                c.state(),
                zk::SessionState::Expired | zk::SessionState::Closed | zk::SessionState::AuthFailed
            ) {
                return Ok(c.clone());
            }
            tracing::warn!("zookeeper session ended; starting a new one");
        }
        if self.stop.is_cancelled() {
            return Err(Error::temporary(BACKEND, "client stopped"));
        }
        let client = zk::Client::connector()
            .with_session_timeout(self.config.session_timeout)
            .with_connection_timeout(self.config.session_timeout.min(Duration::from_secs(5)))
            .with_detached()
            .connect(&self.config.connect)
            .await
            .map_err(temporary)?;
        let dir = zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all());
        for name in ["servers", "server-ids", "node-ids"] {
            client
                .mkdir(&self.dir(name), &dir)
                .await
                .map_err(temporary)?;
        }
        *current = Some(client.clone());
        Ok(client)
    }

    /// Sets the watch on the servers, then reads them all.
    async fn watch(&self, client: &zk::Client) -> Result<zk::PersistentWatcher> {
        let watcher = client
            .watch(&self.dir("servers"), zk::AddWatchMode::PersistentRecursive)
            .await
            .map_err(temporary)?;
        self.reload(client).await?;
        Ok(watcher)
    }

    async fn reload(&self, client: &zk::Client) -> Result<()> {
        let children = client
            .list_children(&self.dir("servers"))
            .await
            .map_err(temporary)?;
        let mut view = BTreeMap::new();
        for id in children {
            match client
                .get_data(&format!("{}/{id}", self.dir("servers")))
                .await
            {
                Ok((data, _)) => {
                    if let Some(info) = parse_entry(&data) {
                        view.insert(info.id.clone(), info);
                    }
                }
                Err(zk::Error::NoNode) => {}
                Err(e) => return Err(temporary(e)),
            }
        }
        *lock(&self.view) = view;
        Ok(())
    }

    /// Claims `path` for this instance; `Ok(true)` if newly created.
    async fn claim(&self, client: &zk::Client, path: &str, what: &'static str) -> Result<bool> {
        let ephemeral = zk::CreateMode::Ephemeral.with_acls(zk::Acls::anyone_all());
        match client
            .create(path, self.instance.as_bytes(), &ephemeral)
            .await
        {
            Ok(_) => Ok(true),
            Err(zk::Error::NodeExists) => match client.get_data(path).await {
                Ok((data, _)) if data == self.instance.as_bytes() => Ok(false),
                Ok(_) => Err(Error::AlreadyExists { what }),
                // Its holder left just now: try again later.
                Err(zk::Error::NoNode) => Err(Error::temporary(BACKEND, "claim changed hands")),
                Err(e) => Err(temporary(e)),
            },
            Err(e) => Err(temporary(e)),
        }
    }

    /// Deletes `path` if this instance holds it.
    async fn release(&self, client: &zk::Client, path: &str) -> Result<()> {
        match client.get_data(path).await {
            Ok((data, stat)) if data == self.instance.as_bytes() => {
                match client.delete(path, Some(stat.version)).await {
                    Ok(()) | Err(zk::Error::NoNode) | Err(zk::Error::BadVersion) => Ok(()),
                    Err(e) => Err(temporary(e)),
                }
            }
            Ok(_) | Err(zk::Error::NoNode) => Ok(()),
            Err(e) => Err(temporary(e)),
        }
    }
}

fn parse_entry(data: &[u8]) -> Option<ServerInfo> {
    match serde_json::from_slice(data) {
        Ok(info) => Some(info),
        Err(e) => {
            tracing::warn!(error = %e, "ignoring a malformed discovery entry");
            None
        }
    }
}

/// Keeps the view current until `stop`; reads it again in full after a
/// reconnect, and watches from a new session when the old one expired.
async fn watch_loop(
    shared: std::sync::Weak<Shared>,
    stop: CancellationToken,
    mut watcher: zk::PersistentWatcher,
) {
    loop {
        let event = tokio::select! {
            _ = stop.cancelled() => return,
            e = watcher.changed() => e,
        };
        let Some(s) = shared.upgrade() else { return };
        match event.event_type {
            zk::EventType::Session => match event.session_state {
                zk::SessionState::SyncConnected | zk::SessionState::ConnectedReadOnly => {
                    // Changes may have been missed while away.
                    if let Ok(client) = s.session().await {
                        if let Err(e) = s.reload(&client).await {
                            tracing::warn!(error = %e, "cannot read the registry again");
                        }
                    }
                }
                zk::SessionState::Disconnected => {
                    tracing::warn!("zookeeper unreachable; the route view is the last one known");
                }
                _ => {
                    // The session is over: a new one, and a new watch.
                    tracing::warn!(state = ?event.session_state, "zookeeper session over");
                    loop {
                        let renewed = async {
                            let client = s.session().await?;
                            s.watch(&client).await
                        }
                        .await;
                        match renewed {
                            Ok(w) => {
                                watcher = w;
                                break;
                            }
                            Err(e) => {
                                tracing::debug!(error = %e, "zookeeper still unreachable");
                                tokio::select! {
                                    _ = stop.cancelled() => return,
                                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                                }
                            }
                        }
                    }
                }
            },
            zk::EventType::NodeDeleted => {
                let id = event.path.rsplit('/').next().unwrap_or_default();
                lock(&s.view).remove(id);
            }
            zk::EventType::NodeCreated | zk::EventType::NodeDataChanged => {
                let client = lock_client(&s).await;
                if let Some(client) = client {
                    match client.get_data(&event.path).await {
                        Ok((data, _)) => {
                            if let Some(info) = parse_entry(&data) {
                                lock(&s.view).insert(info.id.clone(), info);
                            }
                        }
                        Err(zk::Error::NoNode) => {}
                        Err(e) => tracing::warn!(error = %e, "cannot read a discovery entry"),
                    }
                }
            }
            zk::EventType::NodeChildrenChanged => {}
        }
    }
}

async fn lock_client(s: &Shared) -> Option<zk::Client> {
    s.client.lock().await.clone()
}

#[async_trait]
impl ServiceDiscovery for ZooKeeperDiscovery {
    async fn register(&self, info: ServerInfo, _ttl_ms: u64) -> Result<()> {
        let s = &self.shared;
        let value = serde_json::to_vec(&info).map_err(|e| Error::backend(BACKEND, e))?;
        let client = s.session().await?;
        let mut held = s.held.lock().await;
        let node_path = format!("{}/{}", s.dir("node-ids"), info.node_id);
        let server_id_path = format!("{}/{}", s.dir("server-ids"), info.id);
        let new_node = s.claim(&client, &node_path, "node id").await?;
        if let Err(e) = s.claim(&client, &server_id_path, "server id").await {
            if new_node {
                s.release(&client, &node_path).await?;
            }
            return Err(e);
        }
        // A new node id for this server frees the old one.
        if let Some(old) = held.get(&info.id).filter(|n| **n != info.node_id) {
            s.release(&client, &format!("{}/{old}", s.dir("node-ids")))
                .await?;
        }
        let entry = format!("{}/{}", s.dir("servers"), info.id);
        let ephemeral = zk::CreateMode::Ephemeral.with_acls(zk::Acls::anyone_all());
        match client.create(&entry, &value, &ephemeral).await {
            Ok(_) => {}
            Err(zk::Error::NodeExists) => {
                client
                    .set_data(&entry, &value, None)
                    .await
                    .map_err(temporary)?;
            }
            Err(e) => return Err(temporary(e)),
        }
        held.insert(info.id.clone(), info.node_id);
        lock(&s.view).insert(info.id.clone(), info);
        Ok(())
    }

    async fn deregister(&self, id: &str) -> Result<()> {
        let s = &self.shared;
        let mut held = s.held.lock().await;
        let Some(node) = held.get(id).copied() else {
            return Ok(());
        };
        let client = s.session().await?;
        let server_id_path = format!("{}/{id}", s.dir("server-ids"));
        match client.get_data(&server_id_path).await {
            Ok((data, _)) if data == s.instance.as_bytes() => {
                match client
                    .delete(&format!("{}/{id}", s.dir("servers")), None)
                    .await
                {
                    Ok(()) | Err(zk::Error::NoNode) => {}
                    Err(e) => return Err(temporary(e)),
                }
                s.release(&client, &server_id_path).await?;
                s.release(&client, &format!("{}/{node}", s.dir("node-ids")))
                    .await?;
            }
            Ok(_) | Err(zk::Error::NoNode) => {}
            Err(e) => return Err(temporary(e)),
        }
        held.remove(id);
        lock(&s.view).remove(id);
        Ok(())
    }

    async fn servers(&self) -> Result<Vec<ServerInfo>> {
        Ok(lock(&self.shared.view).values().cloned().collect())
    }
}
