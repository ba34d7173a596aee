//! The [`ServiceDiscovery`] suite: registration seen by every client of the
//! registry (each keeps its own view), refreshed load, deregistration,
//! leases that end when their holder stops refreshing, and unique server
//! and node ids.
//!
//! Views are kept by watches and leases are kept by the engine's own clock,
//! so the suite waits for them with deadlines rather than driving time.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chat_core::{Error, ServerInfo, ServiceDiscovery};

use crate::eventually;

/// How long a change may take to show in another client's view.
const PROPAGATION: Duration = Duration::from_secs(10);

/// One client of the registry under test.
pub struct TestClient {
    /// The client.
    pub discovery: Arc<dyn ServiceDiscovery>,
    /// Ends the client as a crash would: it stops refreshing anything and
    /// never deregisters (its leases run out by themselves).
    pub kill: Box<dyn FnOnce() -> futures::future::BoxFuture<'static, ()> + Send>,
}

impl std::fmt::Debug for TestClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestClient")
            .field("discovery", &self.discovery)
            .finish()
    }
}

/// Makes clients of one registry.
#[async_trait]
pub trait Registries: Send + Sync {
    /// A new client of the registry the suite runs on: the same registry
    /// on every call (one fresh prefix or path per suite run).
    async fn client(&self) -> TestClient;

    /// The shortest lease the engine grants, milliseconds (etcd rounds
    /// leases up to about two seconds).
    fn min_ttl_ms(&self) -> u64;
}

fn info(id: &str, node_id: u16, connections: u32) -> ServerInfo {
    ServerInfo {
        id: id.to_owned(),
        node_id,
        ws_url: format!("ws://{id}.test/v1/ws"),
        http_url: format!("http://{id}.test"),
        region: Some("eu".into()),
        capacity: 1_000,
        connections,
    }
}

/// Server ids and node ids unique within a run of the suite.
fn fresh(tag: &str) -> (String, u16) {
    let n: u16 = rand::random::<u16>() % 1_000;
    (format!("{tag}-{}", rand::random::<u64>()), n)
}

async fn view(d: &dyn ServiceDiscovery) -> Vec<ServerInfo> {
    d.servers().await.expect("servers")
}

async fn wait_for_entry(d: &dyn ServiceDiscovery, want: &ServerInfo) {
    eventually(
        PROPAGATION,
        "an entry to show in another client's view",
        || async { view(d).await.iter().any(|s| s == want).then_some(()) },
    )
    .await
}

async fn wait_for_absence(d: &dyn ServiceDiscovery, id: &str, within: Duration) {
    eventually(
        within,
        "an entry to leave another client's view",
        || async { (!view(d).await.iter().any(|s| s.id == id)).then_some(()) },
    )
    .await
}

/// Runs every test of the suite.
pub async fn run_all(r: &dyn Registries) {
    registration_is_seen_everywhere(r).await;
    lease_ends_with_its_holder(r).await;
    ids_are_unique(r).await;
}

/// An entry registered through one client shows, refreshed, in another's
/// view; deregistration removes it everywhere; deregistering an unknown id
/// is fine.
pub async fn registration_is_seen_everywhere(r: &dyn Registries) {
    let a = r.client().await;
    let b = r.client().await;
    let ttl = r.min_ttl_ms().max(3_000);
    let (id, node) = fresh("seen");
    let mut entry = info(&id, node, 0);
    a.discovery
        .register(entry.clone(), ttl)
        .await
        .expect("register");
    wait_for_entry(&*b.discovery, &entry).await;
    wait_for_entry(&*a.discovery, &entry).await;
    // A refresh with a new load replaces the entry.
    entry.connections = 42;
    a.discovery
        .register(entry.clone(), ttl)
        .await
        .expect("refresh");
    wait_for_entry(&*b.discovery, &entry).await;
    assert_eq!(
        view(&*b.discovery)
            .await
            .iter()
            .filter(|s| s.id == id)
            .count(),
        1,
        "one entry per server id"
    );
    // Kept alive past its first lease by the refreshes.
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(ttl / 2)).await;
        a.discovery
            .register(entry.clone(), ttl)
            .await
            .expect("refresh");
    }
    assert!(
        view(&*b.discovery).await.contains(&entry),
        "refreshed entry expired"
    );
    // Someone else's entry is not b's to remove.
    b.discovery.deregister(&id).await.expect("deregister other");
    b.discovery
        .deregister("never-registered")
        .await
        .expect("deregister unknown");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(view(&*b.discovery).await.contains(&entry));
    a.discovery.deregister(&id).await.expect("deregister");
    wait_for_absence(&*b.discovery, &id, PROPAGATION).await;
    wait_for_absence(&*a.discovery, &id, PROPAGATION).await;
}

/// A client that dies without deregistering loses its entry once its lease
/// runs out, in every other client's view.
pub async fn lease_ends_with_its_holder(r: &dyn Registries) {
    let a = r.client().await;
    let b = r.client().await;
    let ttl = r.min_ttl_ms();
    let (id, node) = fresh("lease");
    let entry = info(&id, node, 1);
    a.discovery
        .register(entry.clone(), ttl)
        .await
        .expect("register");
    wait_for_entry(&*b.discovery, &entry).await;
    let TestClient { kill, .. } = a;
    kill().await;
    wait_for_absence(&*b.discovery, &id, Duration::from_millis(ttl) + PROPAGATION).await;
}

/// A live server's id and node id belong to its client: another client
/// cannot register the same server id, nor another server with the same
/// node id, until the holder leaves; then it can.
pub async fn ids_are_unique(r: &dyn Registries) {
    let a = r.client().await;
    let b = r.client().await;
    let ttl = r.min_ttl_ms().max(3_000);
    let (id, node) = fresh("unique");
    let other_node = (node + 1) % 1_000;
    a.discovery
        .register(info(&id, node, 0), ttl)
        .await
        .expect("register");
    let same_node = b
        .discovery
        .register(info(&format!("{id}-other"), node, 0), ttl)
        .await;
    assert!(
        matches!(same_node, Err(Error::AlreadyExists { .. })),
        "a second server with a live node id: {same_node:?}"
    );
    let same_id = b.discovery.register(info(&id, other_node, 0), ttl).await;
    assert!(
        matches!(same_id, Err(Error::AlreadyExists { .. })),
        "a second client with a live server id: {same_id:?}"
    );
    // The holder itself may refresh, and the refused attempts left nothing.
    a.discovery
        .register(info(&id, node, 5), ttl)
        .await
        .expect("refresh");
    let mine = info(&id, node, 5);
    wait_for_entry(&*b.discovery, &mine).await;
    assert!(!view(&*b.discovery)
        .await
        .iter()
        .any(|s| s.id == format!("{id}-other")));
    // Once the holder leaves, the ids are free.
    a.discovery.deregister(&id).await.expect("deregister");
    let other = info(&format!("{id}-other"), node, 0);
    eventually(PROPAGATION, "the node id to be free", || async {
        b.discovery.register(other.clone(), ttl).await.ok()
    })
    .await;
    wait_for_entry(&*b.discovery, &other).await;
    b.discovery.deregister(&other.id).await.expect("deregister");
}
