//! Two chat servers in this process on one store, with the delivery bus on
//! NATS between them: the target of `one-to-one --two-servers-nats`, where
//! every sender is on one server and every recipient on the other, so each
//! message crosses the broker.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use chat_client::ChatClient;
use chat_cluster::nats::{NatsBus, NatsBusConfig};
use chat_core::memory::{MemoryDirectory, MemoryStore};
use chat_server::{ChatServer, ServerBuilder, ServerConfig};
use tokio_util::sync::CancellationToken;

use crate::error::{BenchError, Result};
use crate::target::{bench_server_config, PgSchema, StoreKind};

/// One of the two servers.
#[derive(Debug)]
pub struct Node {
    /// The server, for its counters.
    pub server: ChatServer,
    /// Its WebSocket URL.
    pub ws_url: String,
    /// The address that URL names.
    pub ws_addr: SocketAddr,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), chat_server::ServerError>>,
    bus: NatsBus,
}

/// Two servers sharing one store, with a NATS bus between them.
#[derive(Debug)]
pub struct TwoServers {
    /// Where the senders connect.
    pub a: Node,
    /// Where the recipients connect.
    pub b: Node,
    /// An HTTP client of server `a` for setup calls (the directory is
    /// shared, so accounts made there exist on `b` too).
    pub client: ChatClient,
    pg: Option<PgSchema>,
    _dir: Option<tempfile::TempDir>,
}

/// Sets one shared store of `kind` on every builder.
fn share_storage(
    kind: StoreKind,
    builders: Vec<ServerBuilder>,
    pg: Option<&PgSchema>,
    store: Option<Arc<chat_store::postgres::PostgresStore>>,
    embedded: Option<Arc<chat_store::embedded::EmbeddedStore>>,
) -> Result<Vec<ServerBuilder>> {
    Ok(match kind {
        StoreKind::Memory => {
            // The store reads channel members from the directory: one of each.
            let directory = Arc::new(MemoryDirectory::default());
            let messages = Arc::new(MemoryStore::new(directory.clone()));
            builders
                .into_iter()
                .map(|b| b.messages(messages.clone()).directory(directory.clone()))
                .collect()
        }
        StoreKind::Postgres => {
            let store = store.ok_or_else(|| {
                BenchError::plan(format!(
                    "no PostgreSQL store (schema {:?})",
                    pg.map(|p| &p.schema)
                ))
            })?;
            builders
                .into_iter()
                .map(|b| b.storage(store.clone()))
                .collect()
        }
        StoreKind::Embedded => {
            let store = embedded.ok_or_else(|| BenchError::plan("no embedded store"))?;
            builders
                .into_iter()
                .map(|b| b.storage(store.clone()))
                .collect()
        }
    })
}

impl TwoServers {
    /// Starts both servers on 127.0.0.1:0 with `kind` storage and a NATS
    /// bus at `nats_url` under a fresh prefix.
    pub async fn start(kind: StoreKind, nats_url: &str, postgres_url: &str) -> Result<Self> {
        let prefix = format!("bench-{}", uuid::Uuid::new_v4().simple());
        let pg = (kind == StoreKind::Postgres).then(|| PgSchema::fresh(postgres_url));
        let store = match &pg {
            Some(pg) => Some(Arc::new(pg.open(32).await?)),
            None => None,
        };
        let (embedded, dir) = if kind == StoreKind::Embedded {
            let tmp = tempfile::Builder::new().prefix("chat-bench-").tempdir()?;
            let store = chat_store::embedded::EmbeddedStore::open(tmp.path())
                .map_err(|e| BenchError::setup(format!("cannot open the embedded store: {e}")))?;
            (Some(Arc::new(store)), Some(tmp))
        } else {
            (None, None)
        };
        let config = |node_id: u16| ServerConfig {
            node_id,
            server_id: format!("bench-node{node_id}"),
            ..bench_server_config()
        };
        // One token secret for both: a token from one is good on the other.
        let secret = config(1).token_secret;
        let builders = [1u16, 2]
            .into_iter()
            .map(|n| {
                ChatServer::builder(ServerConfig {
                    token_secret: secret.clone(),
                    ..config(n)
                })
            })
            .collect();
        let mut builders = share_storage(kind, builders, pg.as_ref(), store, embedded)?.into_iter();
        let mut nodes = Vec::new();
        for builder in builders.by_ref() {
            let bus = NatsBus::connect(NatsBusConfig::new(nats_url, &prefix))
                .await
                .map_err(|e| BenchError::setup(format!("cannot reach NATS at {nats_url}: {e}")))?;
            let server = builder
                .bus(Arc::new(bus.clone()))
                .build()
                .await
                .map_err(|e| BenchError::setup(format!("cannot start a server: {e}")))?;
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            let ws_addr = listener.local_addr()?;
            let shutdown = CancellationToken::new();
            let task = tokio::spawn(chat_server::serve(
                server.clone(),
                listener,
                shutdown.clone(),
            ));
            nodes.push(Node {
                server,
                ws_url: format!("ws://{ws_addr}/v1/ws"),
                ws_addr,
                shutdown,
                task,
                bus,
            });
        }
        let (Some(b), Some(a)) = (nodes.pop(), nodes.pop()) else {
            return Err(BenchError::setup("the two servers did not start"));
        };
        let client = ChatClient::new(&format!("http://{}", a.ws_addr))?;
        Ok(Self {
            a,
            b,
            client,
            pg,
            _dir: dir,
        })
    }

    /// Stops both servers, closes their buses and drops a PostgreSQL
    /// schema made for the run.
    pub async fn stop(mut self) {
        for node in [self.a, self.b] {
            node.shutdown.cancel();
            let _ = tokio::time::timeout(Duration::from_secs(20), node.task).await;
            // The run's prefix is done with: no routes left on the broker.
            let _ = node.bus.remove_routes().await;
            node.bus.close().await;
        }
        if let Some(pg) = self.pg.take() {
            pg.drop_schema().await;
        }
    }
}
