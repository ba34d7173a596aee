//! The server under load: one already running (`--server`), one started in
//! this process (`--embedded-server`), or one started in a child process
//! (`--spawn-server`, the `serve` subcommand) so that its memory is its own.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use chat_client::ChatClient;
use chat_server::{ChatServer, ServerConfig};
use clap::ValueEnum;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio_util::sync::CancellationToken;

use crate::error::{BenchError, Result};
use crate::limits::{FileLimits, FD_RESERVE};
use crate::net::Endpoint;

/// The default server URL, as in the README.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:8080";

/// Which storage a server started by the tool uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StoreKind {
    /// The in-memory backends.
    Memory,
    /// The embedded durable store (fjall) in a temporary directory.
    Embedded,
    /// PostgreSQL (`--postgres-url`), in a fresh schema dropped afterwards.
    Postgres,
}

impl StoreKind {
    fn as_arg(self) -> &'static str {
        match self {
            StoreKind::Memory => "memory",
            StoreKind::Embedded => "embedded",
            StoreKind::Postgres => "postgres",
        }
    }
}

/// The PostgreSQL server of `--embedded-server postgres` /
/// `--spawn-server postgres`.
pub const DEFAULT_PG_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// A PostgreSQL schema the tool created for one run.
#[derive(Debug, Clone)]
pub struct PgSchema {
    /// Connection URL.
    pub url: String,
    /// Schema name.
    pub schema: String,
}

impl PgSchema {
    pub(crate) fn fresh(url: &str) -> Self {
        Self {
            url: url.to_owned(),
            schema: format!("chat_bench_{}", uuid::Uuid::new_v4().simple()),
        }
    }

    /// Opens the store in this schema (migrated on first use).
    pub(crate) async fn open(&self, pool: usize) -> Result<chat_store::postgres::PostgresStore> {
        use chat_store::postgres::{PostgresConfig, PostgresStore};
        let config = PostgresConfig::new(self.url.clone())
            .with_schema(self.schema.clone())
            .with_pool_size(pool);
        PostgresStore::connect(config)
            .await
            .map_err(|e| BenchError::setup(format!("cannot open PostgreSQL: {e}")))
    }

    /// Drops the schema and everything in it.
    pub(crate) async fn drop_schema(&self) {
        match tokio_postgres::connect(&self.url, tokio_postgres::NoTls).await {
            Ok((client, conn)) => {
                tokio::spawn(conn);
                let sql = format!("DROP SCHEMA IF EXISTS \"{}\" CASCADE", self.schema);
                if let Err(e) = client.batch_execute(&sql).await {
                    eprintln!("chat-bench: could not drop schema {}: {e}", self.schema);
                }
            }
            Err(e) => eprintln!("chat-bench: could not drop schema {}: {e}", self.schema),
        }
    }
}

/// Where the server under load is.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TargetArgs {
    /// Base URL of a running chat server (loopback only). Default:
    /// http://127.0.0.1:8080 unless a server is started by the tool.
    #[arg(long, conflicts_with_all = ["embedded_server", "spawn_server"])]
    pub server: Option<String>,
    /// Start a chat server in this process on 127.0.0.1:0 (cheap password
    /// hashing, no rate limit), with the in-memory backends or the embedded
    /// store in a temporary directory.
    #[arg(long, value_enum)]
    pub embedded_server: Option<StoreKind>,
    /// Like --embedded-server, but in a child process (`chat-bench serve`),
    /// so the server's memory is measured apart from the load's and each
    /// process has its own open-file limit.
    #[arg(long, value_enum, conflicts_with = "embedded_server")]
    pub spawn_server: Option<StoreKind>,
    /// PID of the server process, to read its resident memory (VmRSS).
    /// Known without it for servers the tool starts.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// PostgreSQL for `--embedded-server postgres` / `--spawn-server
    /// postgres` (each run in a fresh schema, dropped afterwards).
    #[arg(long, env = "CHAT_BENCH_PG_URL", default_value = DEFAULT_PG_URL)]
    pub postgres_url: String,
}

/// How the server under load was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "store")]
pub enum TargetKind {
    /// Started elsewhere.
    External,
    /// In this process.
    InProcess(StoreKind),
    /// In a child process.
    Child(StoreKind),
}

/// A server being loaded, and what it takes to stop it.
#[derive(Debug)]
pub struct Target {
    /// Base URL of the HTTP API.
    pub http_url: String,
    /// The WebSocket URL `route` answered.
    pub ws_url: String,
    /// The address the WebSocket URL resolves to (loopback).
    pub ws_addr: SocketAddr,
    /// The server process, when known.
    pub pid: Option<u32>,
    /// How it was found.
    pub kind: TargetKind,
    /// An HTTP client of the SDK for setup calls.
    pub client: ChatClient,
    in_process: Option<InProcess>,
    child: Option<tokio::process::Child>,
    pg: Option<PgSchema>,
}

#[derive(Debug)]
struct InProcess {
    server: ChatServer,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), chat_server::ServerError>>,
    _dir: Option<tempfile::TempDir>,
}

/// The configuration of servers the tool starts: password hashing cheap
/// enough to sign up thousands of users, no request rate limit, many
/// connections per user, and a connection cap from the open-file limit.
pub fn bench_server_config() -> ServerConfig {
    let max_connections = FileLimits::current()
        .soft
        .map(|s| s.saturating_sub(FD_RESERVE).max(1) as usize)
        .unwrap_or(100_000);
    let defaults = ServerConfig::default();
    // Experiments: CHAT_BENCH_WS_READ_BUFFER / CHAT_BENCH_WS_WRITE_BUFFER
    // (bytes) override the server's WebSocket buffers.
    let env_bytes = |name: &str, default: usize| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    ServerConfig {
        ws_read_buffer: env_bytes("CHAT_BENCH_WS_READ_BUFFER", defaults.ws_read_buffer),
        ws_write_buffer: env_bytes("CHAT_BENCH_WS_WRITE_BUFFER", defaults.ws_write_buffer),
        token_secret: chat_server::TokenSecret::random(),
        argon2_memory_kib: 1024,
        argon2_iterations: 1,
        rate_limit_per_sec: 10_000_000,
        rate_limit_burst: 10_000_000,
        // Load connections open with the token of sign-up, however long
        // the run.
        token_ttl: Duration::from_secs(24 * 3600),
        max_connections_per_user: 10_000,
        max_connections,
        // The load comes from a few loopback addresses and signs up,
        // connects and sends far beyond what one client may.
        max_open_connections: max_connections.saturating_add(1_024),
        max_connections_per_address: 0,
        auth_per_address: chat_server::RateSpec::OFF,
        login_per_username: chat_server::RateSpec::OFF,
        send_bytes_per_sec: 0,
        hash_queue: 4_096,
        ..defaults
    }
}

/// Starts a chat server with [`bench_server_config`] on `listener`; returns it
/// with its shutdown token, serving task and store directory.
async fn start_server(
    kind: StoreKind,
    listener: tokio::net::TcpListener,
    data_dir: Option<PathBuf>,
    pg: Option<&PgSchema>,
) -> Result<InProcess> {
    let mut builder = ChatServer::builder(bench_server_config());
    let mut dir = None;
    if kind == StoreKind::Postgres {
        let pg = pg.ok_or_else(|| BenchError::plan("the postgres store needs a URL and schema"))?;
        builder = builder.storage(Arc::new(pg.open(16).await?));
    }
    if kind == StoreKind::Embedded {
        let path = match data_dir {
            Some(p) => p,
            None => {
                let tmp = tempfile::Builder::new().prefix("chat-bench-").tempdir()?;
                let p = tmp.path().to_owned();
                dir = Some(tmp);
                p
            }
        };
        let store = chat_store::embedded::EmbeddedStore::open(&path)
            .map_err(|e| BenchError::setup(format!("cannot open the embedded store: {e}")))?;
        builder = builder.storage(Arc::new(store));
    }
    let server = builder
        .build()
        .await
        .map_err(|e| BenchError::setup(format!("cannot start the server: {e}")))?;
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(chat_server::serve(
        server.clone(),
        listener,
        shutdown.clone(),
    ));
    Ok(InProcess {
        server,
        shutdown,
        task,
        _dir: dir,
    })
}

impl Target {
    /// Finds or starts the server `args` names and asks it (`route`) for its
    /// WebSocket URL. Every address must be loopback.
    pub async fn start(args: &TargetArgs) -> Result<Target> {
        let wanted = args.embedded_server.or(args.spawn_server);
        let pg = (wanted == Some(StoreKind::Postgres)).then(|| PgSchema::fresh(&args.postgres_url));
        let (http_url, kind, in_process, child, pid) = if let Some(store) = args.embedded_server {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            let addr = listener.local_addr()?;
            let srv = start_server(store, listener, None, pg.as_ref()).await?;
            (
                format!("http://{addr}"),
                TargetKind::InProcess(store),
                Some(srv),
                None,
                Some(std::process::id()),
            )
        } else if let Some(store) = args.spawn_server {
            let (child, url) = spawn_child(store, pg.as_ref()).await?;
            let pid = child.id();
            (url, TargetKind::Child(store), None, Some(child), pid)
        } else {
            let url = args.server.clone().unwrap_or_else(|| DEFAULT_SERVER.into());
            (url, TargetKind::External, None, None, None)
        };
        let http = Endpoint::parse(&http_url)?;
        http.loopback_addr().await?;
        let client = ChatClient::new(&http_url)?;
        // `route` answers signed-in users only: a probe user of this run asks.
        let probe = format!("{}-probe", crate::setup::run_prefix());
        let route = async {
            let session = client.signup(&probe, crate::setup::PASSWORD, None).await?;
            session.route(None).await
        }
        .await
        .map_err(|e| {
            BenchError::setup(format!(
                "no chat server answers at {http_url} (sign-up and GET /v1/route: {e}); start \
                 one, or use --embedded-server memory"
            ))
        })?;
        let ws = Endpoint::parse(&route.ws_url)?;
        if ws.scheme != "ws" {
            return Err(BenchError::plan(format!(
                "route answered {}: only plain ws:// on loopback is supported",
                route.ws_url
            )));
        }
        let ws_addr = ws.loopback_addr().await?;
        Ok(Target {
            http_url,
            ws_url: route.ws_url,
            ws_addr,
            pid: args.server_pid.or(pid),
            kind,
            client,
            in_process,
            child,
            pg,
        })
    }

    /// The server object, when it runs in this process (for its counters).
    pub fn server(&self) -> Option<&ChatServer> {
        self.in_process.as_ref().map(|s| &s.server)
    }

    /// Open files one load connection costs in this process: 2 when the
    /// server's end is here too.
    pub fn fds_per_connection(&self) -> u64 {
        if self.in_process.is_some() {
            2
        } else {
            1
        }
    }

    /// Stops a server the tool started (nothing for an external one).
    pub async fn stop(mut self) {
        if let Some(srv) = self.in_process.take() {
            srv.shutdown.cancel();
            let _ = tokio::time::timeout(Duration::from_secs(20), srv.task).await;
        }
        if let Some(mut child) = self.child.take() {
            // Closing its stdin asks `serve` to shut down.
            drop(child.stdin.take());
            if tokio::time::timeout(Duration::from_secs(20), child.wait())
                .await
                .is_err()
            {
                let _ = child.kill().await;
            }
        }
        if let Some(pg) = self.pg.take() {
            pg.drop_schema().await;
        }
    }
}

async fn spawn_child(
    store: StoreKind,
    pg: Option<&PgSchema>,
) -> Result<(tokio::process::Child, String)> {
    let exe = std::env::current_exe()?;
    let mut command = tokio::process::Command::new(exe);
    command.args(["serve", "--stdin-eof", "--store", store.as_arg()]);
    if let Some(pg) = pg {
        command.args(["--postgres-url", &pg.url, "--postgres-schema", &pg.schema]);
    }
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| BenchError::setup("no stdout from the server process"))?;
    let mut lines = BufReader::new(stdout).lines();
    let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
        .await
        .map_err(|_| BenchError::setup("the server process did not start within 60 s"))??
        .ok_or_else(|| BenchError::setup("the server process exited before listening"))?;
    let url = line
        .strip_prefix("listening ")
        .ok_or_else(|| BenchError::setup(format!("unexpected line from the server: {line}")))?
        .trim()
        .to_owned();
    Ok((child, url))
}

/// Options of `chat-bench serve`.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// Storage backend.
    #[arg(long, value_enum, default_value = "memory")]
    pub store: StoreKind,
    /// Address to listen on (loopback only).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
    /// Directory of the embedded store (default: a temporary directory).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Also stop when stdin closes (how a parent `chat-bench` stops it).
    #[arg(long, hide = true)]
    pub stdin_eof: bool,
    /// PostgreSQL URL for `--store postgres`.
    #[arg(long, env = "CHAT_BENCH_PG_URL", default_value = DEFAULT_PG_URL)]
    pub postgres_url: String,
    /// Schema for `--store postgres` (default: a fresh one, left in place).
    #[arg(long)]
    pub postgres_schema: Option<String>,
}

/// Runs a chat server configured for benchmarks ([`bench_server_config`])
/// until Ctrl-C or SIGTERM (or stdin closes, with `--stdin-eof`). Prints `listening http://ADDR` on
/// stdout once it accepts connections.
pub async fn serve(args: &ServeArgs) -> Result<()> {
    if !args.listen.ip().is_loopback() {
        return Err(BenchError::plan(format!(
            "--listen {}: only loopback addresses are allowed",
            args.listen
        )));
    }
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    let addr = listener.local_addr()?;
    let pg = PgSchema {
        url: args.postgres_url.clone(),
        schema: args
            .postgres_schema
            .clone()
            .unwrap_or_else(|| PgSchema::fresh(&args.postgres_url).schema),
    };
    let srv = start_server(args.store, listener, args.data_dir.clone(), Some(&pg)).await?;
    println!("listening http://{addr}");
    use std::io::Write as _;
    std::io::stdout().flush()?;
    let watch_stdin = args.stdin_eof;
    let stdin_closed = async move {
        if !watch_stdin {
            return std::future::pending().await;
        }
        let mut stdin = tokio::io::stdin();
        let mut buf = [0u8; 64];
        loop {
            match tokio::io::AsyncReadExt::read(&mut stdin, &mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => continue,
            }
        }
    };
    tokio::select! {
        _ = stdin_closed => {}
        _ = interrupted() => {}
    }
    srv.shutdown.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(20), srv.task).await;
    Ok(())
}

/// Resolves at Ctrl-C (SIGINT) or SIGTERM: how a tool that runs until
/// stopped (`serve`, `cluster up`) is stopped.
pub(crate) async fn interrupted() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}
