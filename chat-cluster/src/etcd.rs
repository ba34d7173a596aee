//! Service discovery on etcd v3 (feature `etcd`).
//!
//! # Keys
//!
//! Under `/{prefix}/`, each attached to the registering client's lease:
//!
//! | key | value |
//! |---|---|
//! | `servers/{server id}` | the server's [`ServerInfo`] as JSON |
//! | `server-ids/{server id}` | the client instance that holds the server id |
//! | `node-ids/{node id}` | the client instance that holds the node id |
//!
//! A `register` grants a lease the first time (and again if it ran out),
//! sends a keep-alive for it on every later call (the server refreshes well
//! within the lease), and writes the three keys in one transaction that
//! succeeds only if both ids are free or already this client's: two servers
//! never hold one node id, and a server that dies without leaving frees its
//! ids, and its entry, when its lease runs out.
//!
//! `servers` answers from a local view: one read of `servers/`, then a
//! watch from the revision after it, so `route` costs no round trip. When
//! etcd cannot be reached the view stays as it was last known (`route`
//! still answers); when it is back, the view is read again in full and the
//! watch restarts.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use chat_core::{Error, Result, ServerInfo, ServiceDiscovery};
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, PutOptions, Txn, TxnOp,
    WatchOptions,
};
use tokio_util::sync::CancellationToken;

const BACKEND: &str = "etcd";

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn temporary(e: etcd_client::Error) -> Error {
    Error::temporary(BACKEND, e)
}

/// How to reach etcd.
#[derive(Debug, Clone)]
pub struct EtcdDiscoveryConfig {
    /// Client URLs, e.g. `http://127.0.0.1:2379`.
    pub endpoints: Vec<String>,
    /// Prefix of every key (`/{prefix}/...`). `A-Z a-z 0-9 _ -`.
    pub prefix: String,
    /// Deadline of one request.
    pub timeout: Duration,
}

impl EtcdDiscoveryConfig {
    /// Defaults for `endpoints` and `prefix`: requests time out after 5 s.
    pub fn new(endpoints: Vec<String>, prefix: impl Into<String>) -> Self {
        Self {
            endpoints,
            prefix: prefix.into(),
            timeout: Duration::from_secs(5),
        }
    }
}

/// What this client registered, to refresh and to remove it.
#[derive(Debug, Default)]
struct Held {
    /// The lease and its TTL in seconds.
    lease: Option<(i64, i64)>,
    /// server id → node id
    servers: BTreeMap<String, u16>,
}

struct Shared {
    client: Client,
    prefix: String,
    /// This client's instance name in the id keys.
    instance: String,
    view: Mutex<BTreeMap<String, ServerInfo>>,
    held: tokio::sync::Mutex<Held>,
    stop: CancellationToken,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdDiscovery")
            .field("prefix", &self.prefix)
            .field("instance", &self.instance)
            .finish()
    }
}

/// Service discovery on etcd. See the [module docs](self). Each value is
/// one client of the registry (clones share it).
#[derive(Debug, Clone)]
pub struct EtcdDiscovery {
    shared: Arc<Shared>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl EtcdDiscovery {
    /// Connects, reads the current registry and starts watching it.
    pub async fn connect(config: EtcdDiscoveryConfig) -> Result<Self> {
        crate::check_prefix(&config.prefix)?;
        if config.endpoints.is_empty() {
            return Err(Error::invalid("etcd: no endpoints"));
        }
        let client = Client::connect(
            &config.endpoints,
            Some(
                ConnectOptions::new()
                    .with_connect_timeout(config.timeout)
                    .with_timeout(config.timeout)
                    .with_keep_alive(Duration::from_secs(2), config.timeout),
            ),
        )
        .await
        .map_err(temporary)?;
        let shared = Arc::new(Shared {
            client,
            prefix: format!("/{}/", config.prefix),
            instance: uuid::Uuid::new_v4().simple().to_string(),
            view: Mutex::new(BTreeMap::new()),
            held: tokio::sync::Mutex::new(Held::default()),
            stop: CancellationToken::new(),
        });
        let revision = shared.reload().await?;
        tokio::spawn(watch_loop(
            Arc::downgrade(&shared),
            shared.stop.clone(),
            revision,
        ));
        Ok(Self { shared })
    }

    /// Stops this client without deregistering, as a crash would: its
    /// lease is no longer refreshed and runs out by itself.
    pub fn abandon(&self) {
        self.shared.stop.cancel();
    }
}

impl Shared {
    fn servers_prefix(&self) -> String {
        format!("{}servers/", self.prefix)
    }

    fn server_key(&self, id: &str) -> String {
        format!("{}servers/{id}", self.prefix)
    }

    fn server_id_key(&self, id: &str) -> String {
        format!("{}server-ids/{id}", self.prefix)
    }

    fn node_id_key(&self, node: u16) -> String {
        format!("{}node-ids/{node}", self.prefix)
    }

    /// Reads every entry into the view; returns the revision read at.
    async fn reload(&self) -> Result<i64> {
        let mut client = self.client.clone();
        let answer = client
            .get(self.servers_prefix(), Some(GetOptions::new().with_prefix()))
            .await
            .map_err(temporary)?;
        let mut view = BTreeMap::new();
        for kv in answer.kvs() {
            if let Some(info) = parse_entry(kv.value()) {
                view.insert(info.id.clone(), info);
            }
        }
        *lock(&self.view) = view;
        Ok(answer.header().map_or(0, |h| h.revision()))
    }

    /// The lease to write under, granted if there is none; a keep-alive
    /// for it otherwise (granting a new one if it ran out meanwhile).
    async fn lease(&self, held: &mut Held, ttl_ms: u64) -> Result<i64> {
        let ttl = (ttl_ms.div_ceil(1_000)).max(2) as i64;
        let mut client = self.client.clone();
        if let Some((id, granted_ttl)) = held.lease {
            if granted_ttl == ttl {
                // A lease that ran out while etcd was out of reach is
                // answered "lease not found" (an error, not a TTL of 0):
                // either way, a new lease is granted below (and if etcd is
                // still out of reach, that fails too).
                match keep_alive(&mut client, id).await {
                    Ok(true) => return Ok(id),
                    Ok(false) => {
                        tracing::warn!(lease = id, "etcd lease ran out; registering again")
                    }
                    Err(e) => tracing::warn!(
                        lease = id,
                        error = %e,
                        "etcd lease keep-alive failed; registering again under a new lease"
                    ),
                }
            }
        }
        let granted = client.lease_grant(ttl, None).await.map_err(temporary)?;
        held.lease = Some((granted.id(), ttl));
        Ok(granted.id())
    }

    /// How an id key stands: free, this client's, or another's.
    async fn claim_compare(&self, key: &str, what: &'static str) -> Result<Compare> {
        let mut client = self.client.clone();
        let answer = client.get(key, None).await.map_err(temporary)?;
        match answer.kvs().first() {
            None => Ok(Compare::create_revision(key, CompareOp::Equal, 0)),
            Some(kv) if kv.value() == self.instance.as_bytes() => Ok(Compare::value(
                key,
                CompareOp::Equal,
                self.instance.as_bytes(),
            )),
            Some(_) => Err(Error::AlreadyExists { what }),
        }
    }
}

/// One keep-alive of lease `id`: whether it is still alive.
async fn keep_alive(client: &mut Client, id: i64) -> Result<bool> {
    let (mut keeper, mut stream) = client.lease_keep_alive(id).await.map_err(temporary)?;
    keeper.keep_alive().await.map_err(temporary)?;
    Ok(stream
        .message()
        .await
        .map_err(temporary)?
        .is_some_and(|r| r.ttl() > 0))
}

fn parse_entry(value: &[u8]) -> Option<ServerInfo> {
    match serde_json::from_slice(value) {
        Ok(info) => Some(info),
        Err(e) => {
            tracing::warn!(error = %e, "ignoring a malformed discovery entry");
            None
        }
    }
}

/// Keeps the view current until `stop`; after any failure, reads it again
/// in full and watches from there.
async fn watch_loop(shared: std::sync::Weak<Shared>, stop: CancellationToken, mut revision: i64) {
    loop {
        let Some(s) = shared.upgrade() else { return };
        let mut client = s.client.clone();
        let prefix = s.servers_prefix();
        drop(s);
        let watch = client
            .watch(
                prefix,
                Some(
                    WatchOptions::new()
                        .with_prefix()
                        .with_start_revision(revision + 1),
                ),
            )
            .await;
        let failure = match watch {
            Ok(mut stream) => loop {
                let next = tokio::select! {
                    _ = stop.cancelled() => return,
                    m = stream.message() => m,
                };
                match next {
                    Ok(Some(resp)) => {
                        if resp.canceled() {
                            break format!("watch canceled: {}", resp.cancel_reason());
                        }
                        let Some(s) = shared.upgrade() else { return };
                        let mut view = lock(&s.view);
                        for event in resp.events() {
                            let Some(kv) = event.kv() else { continue };
                            revision = revision.max(kv.mod_revision());
                            let key = String::from_utf8_lossy(kv.key());
                            let id = key.rsplit('/').next().unwrap_or_default().to_owned();
                            match event.event_type() {
                                EventType::Put => {
                                    if let Some(info) = parse_entry(kv.value()) {
                                        view.insert(info.id.clone(), info);
                                    }
                                }
                                EventType::Delete => {
                                    view.remove(&id);
                                }
                            }
                        }
                    }
                    Ok(None) => break "watch ended".to_owned(),
                    Err(e) => break e.to_string(),
                }
            },
            Err(e) => e.to_string(),
        };
        tracing::warn!(error = %failure, "etcd watch lost; the route view is the last one known");
        // Read the registry again once etcd answers, then watch from there.
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
            let Some(s) = shared.upgrade() else { return };
            match s.reload().await {
                Ok(r) => {
                    revision = r;
                    break;
                }
                Err(e) => tracing::debug!(error = %e, "etcd still unreachable"),
            }
        }
    }
}

#[async_trait]
impl ServiceDiscovery for EtcdDiscovery {
    async fn register(&self, info: ServerInfo, ttl_ms: u64) -> Result<()> {
        let s = &self.shared;
        let value = serde_json::to_vec(&info).map_err(|e| Error::backend(BACKEND, e))?;
        let mut held = s.held.lock().await;
        let lease = s.lease(&mut held, ttl_ms).await?;
        // A transaction on the ids as read: if another client claims one in
        // between, it fails and the claim is read again.
        for _ in 0..5 {
            let server_key = s.server_id_key(&info.id);
            let node_key = s.node_id_key(info.node_id);
            let compares = vec![
                s.claim_compare(&server_key, "server id").await?,
                s.claim_compare(&node_key, "node id").await?,
            ];
            let put = |key: String, value: Vec<u8>| {
                TxnOp::put(key, value, Some(PutOptions::new().with_lease(lease)))
            };
            let mut ops = vec![
                put(server_key, s.instance.clone().into_bytes()),
                put(node_key, s.instance.clone().into_bytes()),
                put(s.server_key(&info.id), value.clone()),
            ];
            // A new node id for this server frees the old one.
            if let Some(old) = held.servers.get(&info.id).filter(|n| **n != info.node_id) {
                ops.push(TxnOp::delete(s.node_id_key(*old), None));
            }
            let mut client = s.client.clone();
            let done = client
                .txn(Txn::new().when(compares).and_then(ops))
                .await
                .map_err(temporary)?;
            if done.succeeded() {
                held.servers.insert(info.id.clone(), info.node_id);
                lock(&s.view).insert(info.id.clone(), info);
                return Ok(());
            }
        }
        Err(Error::temporary(
            BACKEND,
            "the server's ids kept changing hands; try again",
        ))
    }

    async fn deregister(&self, id: &str) -> Result<()> {
        let s = &self.shared;
        let mut held = s.held.lock().await;
        let Some(node) = held.servers.get(id).copied() else {
            return Ok(());
        };
        let server_key = s.server_id_key(id);
        let mine = Compare::value(server_key.as_str(), CompareOp::Equal, s.instance.as_bytes());
        let mut client = s.client.clone();
        client
            .txn(Txn::new().when(vec![mine]).and_then(vec![
                TxnOp::delete(s.server_key(id), None),
                TxnOp::delete(server_key, None),
                TxnOp::delete(s.node_id_key(node), None),
            ]))
            .await
            .map_err(temporary)?;
        held.servers.remove(id);
        lock(&s.view).remove(id);
        Ok(())
    }

    async fn servers(&self) -> Result<Vec<ServerInfo>> {
        Ok(lock(&self.shared.view).values().cloned().collect())
    }
}
