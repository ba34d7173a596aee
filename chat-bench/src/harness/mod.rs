//! A local cluster of real `chat-server` processes, for fault tests and
//! `chat-bench cluster up`.
//!
//! [`Cluster::start`] creates a PostgreSQL database of the run's own and
//! starts N `chat-server` processes on it (node ids 1..=N, each on its own
//! loopback port, region `r{id}`), with the NATS bus, Redis presence and
//! etcd discovery under prefixes of the run's own. Each node reaches NATS
//! through a private [`Proxy`], so a partition from the broker is a
//! [`Cluster::cut_bus`] away. In front of the nodes' HTTP API is one more
//! proxy, the load balancer a real deployment has: [`Cluster::http_url`]
//! is what clients are given, and they always connect through `route`.
//!
//! Faults: [`Cluster::kill`] (SIGKILL), [`Cluster::terminate`] (SIGTERM,
//! the graceful drain), [`Cluster::pause`] / [`Cluster::resume`]
//! (SIGSTOP / SIGCONT), [`Cluster::restart`], [`Cluster::cut_bus`] /
//! [`Cluster::heal_bus`]. [`Cluster::stop`] ends every node and drops the
//! database; dropping a cluster kills what is left.
//!
//! The binary is found through `CHAT_SERVER_BIN`, else next to the running
//! executable (`target/debug/chat-server`, built with `cargo build -p
//! chat-server --features full,etcd`).

pub mod netns;
pub mod proxy;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};

use crate::error::{BenchError, Result};
pub use netns::NetNs;
pub use proxy::Proxy;

/// Where the engines are and how the nodes behave.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// Number of chat servers.
    pub nodes: u16,
    /// The `chat-server` binary.
    pub server_bin: PathBuf,
    /// PostgreSQL server (its database in the URL is where the run's own
    /// database is created from).
    pub postgres_url: String,
    /// NATS with JetStream.
    pub nats_url: String,
    /// Redis, for presence.
    pub redis_url: String,
    /// etcd endpoints, comma-separated.
    pub etcd_endpoints: String,
    /// Heartbeat interval the servers ask of clients, seconds.
    pub heartbeat_secs: u64,
    /// A user is offline this long after their last heartbeat, seconds.
    pub presence_timeout_secs: u64,
    /// Discovery lease, seconds.
    pub discovery_ttl_secs: u64,
    /// `RUST_LOG` of the servers; their output is shown when set.
    pub server_log: Option<String>,
    /// Each server in a network namespace of its own ([`NetNs`]), so that
    /// [`Cluster::partition`] can cut it off with a firewall rule. Needs
    /// root, `ip netns` and `iptables`.
    pub netns: bool,
    /// Chat history sharded over this many databases of the run's own
    /// (`--history-shard-url`, by channel), besides the main one that
    /// keeps the directory, inboxes and cursors; 0: all in the main one.
    pub history_shards: u8,
}

impl ClusterConfig {
    /// `nodes` servers on the engines of this machine (`CHAT_TEST_PG_URL`,
    /// `CHAT_TEST_NATS_URL`, `CHAT_TEST_REDIS_URL`,
    /// `CHAT_TEST_ETCD_ENDPOINTS` override the standard ports), with a 1 s
    /// heartbeat, a 3 s presence timeout and a 3 s discovery lease, so
    /// faults show quickly.
    pub fn local(nodes: u16) -> Result<Self> {
        let env =
            |name: &str, default: &str| std::env::var(name).unwrap_or_else(|_| default.into());
        Ok(Self {
            nodes,
            server_bin: server_bin()?,
            postgres_url: env("CHAT_TEST_PG_URL", crate::target::DEFAULT_PG_URL),
            nats_url: env("CHAT_TEST_NATS_URL", "nats://127.0.0.1:4222"),
            redis_url: env("CHAT_TEST_REDIS_URL", "redis://127.0.0.1:6379"),
            etcd_endpoints: env("CHAT_TEST_ETCD_ENDPOINTS", "http://127.0.0.1:2379"),
            heartbeat_secs: 1,
            presence_timeout_secs: 3,
            discovery_ttl_secs: 3,
            server_log: std::env::var("CHAT_TEST_SERVER_LOG").ok(),
            netns: false,
            history_shards: 0,
        })
    }
}

/// The `chat-server` binary: `CHAT_SERVER_BIN`, or next to (or one
/// directory above) the running executable.
pub fn server_bin() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("CHAT_SERVER_BIN") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe()?;
    for dir in exe.ancestors().skip(1).take(2) {
        let candidate = dir.join("chat-server");
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    Err(BenchError::plan(
        "no chat-server binary next to this program: build it with `cargo build -p chat-server \
         --features full,etcd` or set CHAT_SERVER_BIN",
    ))
}

/// One chat server process.
#[derive(Debug)]
pub struct Node {
    /// Node id (1..=N); also its server id `node{id}` and region `r{id}`.
    pub id: u16,
    /// Its HTTP and WebSocket port.
    pub port: u16,
    /// The address it listens on: 127.0.0.1, or its end of the veth pair
    /// in its own namespace.
    pub ip: IpAddr,
    child: Option<Child>,
    /// Its way to NATS.
    bus: Proxy,
    /// In a namespace: its ways to PostgreSQL, Redis and etcd (proxies on
    /// the host's end of its veth pair).
    engines: Option<Engines>,
    /// Its namespace (dropped last: after the process and the proxies).
    netns: Option<NetNs>,
}

/// A namespaced node's proxies to the engines on the host's loopback.
#[derive(Debug)]
struct Engines {
    postgres: Proxy,
    redis: Proxy,
    etcd: Proxy,
}

impl Node {
    /// `node{id}`, as `welcome` and discovery name it.
    pub fn server_id(&self) -> String {
        format!("node{}", self.id)
    }

    /// Its own HTTP base URL (tests; clients use the cluster's).
    pub fn http_url(&self) -> String {
        format!("http://{}", self.addr())
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::new(self.ip, self.port)
    }

    /// Its network namespace, when the cluster has them.
    pub fn netns(&self) -> Option<&NetNs> {
        self.netns.as_ref()
    }

    /// The process id while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(|c| c.id())
    }

    /// Whether a process is running (or stopped) for this node.
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }
}

/// A running local cluster. See the module docs.
#[derive(Debug)]
pub struct Cluster {
    config: ClusterConfig,
    /// The run's name: database, prefixes.
    run: String,
    database: String,
    secret: String,
    nodes: Vec<Node>,
    front: Proxy,
}

impl Cluster {
    /// Creates the run's database and starts every node; returns once each
    /// answers `/healthz` and discovery lists all of them.
    pub async fn start(config: ClusterConfig) -> Result<Self> {
        if config.nodes == 0 {
            return Err(BenchError::plan("a cluster needs at least one node"));
        }
        if !config.server_bin.is_file() {
            return Err(BenchError::plan(format!(
                "no chat-server binary at {}",
                config.server_bin.display()
            )));
        }
        if config.netns {
            netns::check_available()?;
            netns::clean_stale()?;
        }
        let run = format!("h{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        let mut nodes = Vec::new();
        for id in 1..=config.nodes {
            nodes.push(Node::new(id, &config).await?);
        }
        let database = format!("chat_{run}");
        for db in std::iter::once(database.clone()).chain(shard_names(&database, &config)) {
            pg_execute(&config.postgres_url, &format!("CREATE DATABASE {db}")).await?;
        }
        let front = Proxy::start(nodes.iter().map(Node::addr).collect()).await?;
        let mut cluster = Self {
            config,
            run,
            database,
            secret: format!(
                "{}-token-secret-of-the-harness",
                uuid::Uuid::new_v4().simple()
            ),
            nodes,
            front,
        };
        // Every node starts at once (PostgreSQL migrations take an
        // advisory lock: one node applies them, the others wait).
        for id in 1..=cluster.config.nodes {
            if let Err(e) = cluster.launch(id) {
                cluster.stop().await;
                return Err(e);
            }
        }
        for id in 1..=cluster.config.nodes {
            if let Err(e) = cluster.wait_healthy(id).await {
                cluster.stop().await;
                return Err(e);
            }
        }
        if let Err(e) = cluster.wait_for_view().await {
            cluster.stop().await;
            return Err(e);
        }
        Ok(cluster)
    }

    /// The HTTP URL clients are given (the load balancer in front of every
    /// node); `route` there names a node's WebSocket.
    pub fn http_url(&self) -> String {
        format!("http://{}", self.front.addr())
    }

    /// The nodes.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// Node `id`.
    pub fn node(&self, id: u16) -> Result<&Node> {
        self.nodes
            .iter()
            .find(|n| n.id == id)
            .ok_or_else(|| BenchError::plan(format!("no node {id}")))
    }

    fn node_mut(&mut self, id: u16) -> Result<&mut Node> {
        self.nodes
            .iter_mut()
            .find(|n| n.id == id)
            .ok_or_else(|| BenchError::plan(format!("no node {id}")))
    }

    /// The run's name (database `chat_{run}`, prefixes `{run}`).
    pub fn run_name(&self) -> &str {
        &self.run
    }

    fn command(&self, node: &Node) -> Command {
        let c = &self.config;
        let mut pg = database_url(&c.postgres_url, &self.database);
        let mut redis = c.redis_url.clone();
        let mut etcd = c.etcd_endpoints.clone();
        if let Some(e) = &node.engines {
            pg = with_authority(&pg, e.postgres.addr());
            redis = with_authority(&redis, e.redis.addr());
            etcd = format!("http://{}", e.etcd.addr());
        }
        let mut cmd = match &node.netns {
            Some(ns) => {
                let mut cmd = Command::new("ip");
                cmd.args(["netns", "exec", ns.name()]).arg(&c.server_bin);
                cmd
            }
            None => Command::new(&c.server_bin),
        };
        for shard in shard_names(&self.database, c) {
            let mut url = database_url(&c.postgres_url, &shard);
            if let Some(e) = &node.engines {
                url = with_authority(&url, e.postgres.addr());
            }
            cmd.args(["--history-shard-url", &url]);
        }
        cmd.args(["--listen", &node.addr().to_string()])
            .args(["--postgres-url", &pg])
            .args(["--postgres-pool", "8"])
            .args(["--token-secret", &self.secret])
            .args(["--node-id", &node.id.to_string()])
            .args(["--server-id", &node.server_id()])
            .args(["--region", &format!("r{}", node.id)])
            .args(["--nats-url", &format!("nats://{}", node.bus.addr())])
            .args(["--nats-prefix", &self.run])
            .args(["--redis-url", &redis])
            .args(["--redis-prefix", &self.run])
            .args(["--etcd-endpoints", &etcd])
            .args(["--etcd-prefix", &self.run])
            .args(["--heartbeat-secs", &c.heartbeat_secs.to_string()])
            .args([
                "--presence-timeout-secs",
                &c.presence_timeout_secs.to_string(),
            ])
            .args(["--discovery-ttl-secs", &c.discovery_ttl_secs.to_string()])
            // The load signs up, logs in and connects from one address,
            // many devices per user, faster than one person would.
            .args(["--auth-per-address-per-minute", "0"])
            .args(["--login-per-username-per-minute", "0"])
            .args(["--max-connections-per-address", "0"])
            .args(["--max-connections-per-user", "64"])
            .args(["--rate-limit", "100000"])
            .args(["--rate-burst", "100000"])
            .args(["--send-bytes-per-sec", "0"])
            .args(["--hash-queue", "4096"])
            .args(["--web-chat", "false"])
            .env("RUST_LOG", c.server_log.as_deref().unwrap_or("error"))
            .stdin(Stdio::null())
            .stdout(if c.server_log.is_some() {
                Stdio::inherit()
            } else {
                Stdio::null()
            })
            .stderr(Stdio::inherit())
            // Its own process group: Ctrl-C at `cluster up` reaches the
            // harness, which stops the nodes in order.
            .process_group(0)
            .kill_on_drop(true);
        cmd
    }

    /// Starts node `id`'s process and waits until it answers `/healthz`.
    async fn spawn(&mut self, id: u16) -> Result<()> {
        self.launch(id)?;
        self.wait_healthy(id).await
    }

    /// Starts node `id`'s process.
    fn launch(&mut self, id: u16) -> Result<()> {
        let node = self.node(id)?;
        let child = self.command(node).spawn().map_err(|e| {
            BenchError::setup(format!(
                "cannot start {}: {e}",
                self.config.server_bin.display()
            ))
        })?;
        self.node_mut(id)?.child = Some(child);
        Ok(())
    }

    /// Waits until node `id` answers `/healthz` (60 s at most).
    async fn wait_healthy(&mut self, id: u16) -> Result<()> {
        let url = format!("{}/healthz", self.node(id)?.http_url());
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(r) = http.get(&url).send().await {
                if r.status() == 200 {
                    return Ok(());
                }
            }
            if let Some(child) = self.node_mut(id)?.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    return Err(BenchError::setup(format!(
                        "node {id} exited while starting: {status}"
                    )));
                }
            }
            if Instant::now() > deadline {
                return Err(BenchError::setup(format!(
                    "node {id} did not answer /healthz within 60 s"
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until `route` on every running node can name every running
    /// node (asked for region `r{i}`, it names node `i`).
    pub async fn wait_for_view(&self) -> Result<()> {
        let client = chat_client::ChatClient::new(&self.http_url())?;
        let prober = format!("{}-prober-{}", self.run, rand::random::<u32>());
        let session = client.signup(&prober, crate::setup::PASSWORD, None).await?;
        let running: Vec<&Node> = self.nodes.iter().filter(|n| n.is_running()).collect();
        let deadline = Instant::now() + Duration::from_secs(30);
        'again: loop {
            for via in &running {
                let c = chat_client::ChatClient::new(&via.http_url())?;
                let s = c.session(session.auth());
                for want in &running {
                    let r = s.route(Some(&format!("r{}", want.id))).await;
                    let ok = matches!(&r, Ok(r) if r.ws_url.contains(&format!("{}/", want.addr())));
                    if !ok {
                        if Instant::now() > deadline {
                            return Err(BenchError::setup(format!(
                                "route on node {} never named node {}: {r:?}",
                                via.id, want.id
                            )));
                        }
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue 'again;
                    }
                }
            }
            return Ok(());
        }
    }

    async fn signal(&mut self, id: u16, signal: &str) -> Result<()> {
        let pid = self
            .node(id)?
            .pid()
            .ok_or_else(|| BenchError::plan(format!("node {id} is not running")))?;
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &pid.to_string()])
            .status()
            .await?;
        if status.success() {
            Ok(())
        } else {
            Err(BenchError::setup(format!("kill -{signal} {pid} failed")))
        }
    }

    /// SIGKILL: the node dies at once, saying goodbye to no one.
    pub async fn kill(&mut self, id: u16) -> Result<()> {
        self.signal(id, "KILL").await?;
        if let Some(mut child) = self.node_mut(id)?.child.take() {
            child.wait().await?;
        }
        Ok(())
    }

    /// SIGTERM, and waits for the node to exit (its drain); returns how
    /// long that took and whether it exited successfully.
    pub async fn terminate(&mut self, id: u16) -> Result<(Duration, bool)> {
        let started = Instant::now();
        self.signal(id, "TERM").await?;
        let Some(mut child) = self.node_mut(id)?.child.take() else {
            return Ok((started.elapsed(), true));
        };
        match tokio::time::timeout(Duration::from_secs(60), child.wait()).await {
            Ok(status) => Ok((started.elapsed(), status?.success())),
            Err(_) => {
                let _ = child.kill().await;
                Err(BenchError::setup(format!(
                    "node {id} did not exit within 60 s of SIGTERM"
                )))
            }
        }
    }

    /// SIGSTOP: the process freezes; its sockets stay open.
    pub async fn pause(&mut self, id: u16) -> Result<()> {
        self.signal(id, "STOP").await
    }

    /// SIGCONT after [`pause`](Self::pause).
    pub async fn resume(&mut self, id: u16) -> Result<()> {
        self.signal(id, "CONT").await
    }

    /// Starts node `id` again (after a kill or terminate) on the same port
    /// and waits until it is healthy and listed by discovery.
    pub async fn restart(&mut self, id: u16) -> Result<()> {
        if let Some(mut child) = self.node_mut(id)?.child.take() {
            let _ = child.kill().await;
        }
        self.spawn(id).await?;
        self.wait_for_view().await
    }

    /// Cuts node `id` from the bus broker: its connections to NATS close
    /// and new ones are refused until [`heal_bus`](Self::heal_bus).
    pub fn cut_bus(&self, id: u16) -> Result<()> {
        self.node(id)?.bus.cut();
        Ok(())
    }

    /// Lets node `id` reach the broker again.
    pub fn heal_bus(&self, id: u16) -> Result<()> {
        self.node(id)?.bus.heal();
        Ok(())
    }

    /// Partitions node `id` from the others and the broker: an `iptables`
    /// DROP of every packet between its namespace and its ways to NATS
    /// and etcd (the only ways the nodes reach each other), both
    /// directions, silently (no reset). Its clients, PostgreSQL and Redis
    /// still reach it. Needs [`ClusterConfig::netns`].
    pub fn partition(&self, id: u16) -> Result<()> {
        let node = self.node(id)?;
        let (Some(ns), Some(e)) = (&node.netns, &node.engines) else {
            return Err(BenchError::plan(
                "a partition needs the cluster's servers in network namespaces (netns: true)",
            ));
        };
        ns.partition(&[node.bus.addr().port(), e.etcd.addr().port()])
    }

    /// Ends node `id`'s [`partition`](Self::partition).
    pub fn heal(&self, id: u16) -> Result<()> {
        match &self.node(id)?.netns {
            Some(ns) => ns.heal(),
            None => Ok(()),
        }
    }

    /// Points every node's bus proxy at another broker (a private one the
    /// test restarts); takes effect for new broker connections.
    pub fn set_broker(&self, nats_url: &str) -> Result<()> {
        let addr = socket_of(nats_url)?;
        for n in &self.nodes {
            n.bus.set_backends(vec![addr]);
        }
        Ok(())
    }

    /// SIGTERM to every node (waiting for each drain), then drops the
    /// run's database and its prefixes in Redis.
    pub async fn stop(mut self) {
        let ids: Vec<u16> = self.nodes.iter().map(|n| n.id).collect();
        // Every node drains at once.
        let mut draining = Vec::new();
        for id in ids {
            if self.node(id).map(Node::is_running).unwrap_or(false) {
                let _ = self.resume(id).await;
                if let Err(e) = self.signal(id, "TERM").await {
                    eprintln!("chat-bench cluster: {e}");
                }
                if let Ok(node) = self.node_mut(id) {
                    if let Some(child) = node.child.take() {
                        draining.push((id, child));
                    }
                }
            }
        }
        for (id, mut child) in draining {
            if tokio::time::timeout(Duration::from_secs(60), child.wait())
                .await
                .is_err()
            {
                eprintln!("chat-bench cluster: node {id} did not exit within 60 s of SIGTERM");
                let _ = child.kill().await;
            }
        }
        // The run's routes bucket on the broker (one JetStream stream per
        // prefix), which would otherwise stay on a shared NATS.
        let bus = chat_cluster::nats::NatsBusConfig::new(
            format!("nats://{}", self.front_of_bus()),
            self.run.clone(),
        );
        match chat_cluster::nats::NatsBus::connect(bus).await {
            Ok(bus) => {
                if let Err(e) = bus.remove_routes().await {
                    eprintln!(
                        "chat-bench cluster: could not remove the routes of {}: {e}",
                        self.run
                    );
                }
                bus.close().await;
            }
            Err(e) => eprintln!("chat-bench cluster: NATS for clean-up: {e}"),
        }
        for db in
            std::iter::once(self.database.clone()).chain(shard_names(&self.database, &self.config))
        {
            let sql = format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)");
            if let Err(e) = pg_execute(&self.config.postgres_url, &sql).await {
                eprintln!("chat-bench cluster: could not drop {db}: {e}");
            }
        }
    }
}

/// `chat-bench cluster up`: starts the cluster, prints the URL clients
/// use and each node, and runs until Ctrl-C or SIGTERM; then stops it.
pub async fn up(args: &crate::cli::ClusterUpArgs) -> Result<()> {
    let mut config = ClusterConfig::local(args.nodes)?;
    if let Some(bin) = &args.server_bin {
        config.server_bin = bin.clone();
    }
    config.heartbeat_secs = args.heartbeat_secs;
    config.presence_timeout_secs = args.presence_timeout_secs;
    config.discovery_ttl_secs = 15;
    config.netns = args.netns;
    config.history_shards = args.history_shards;
    let cluster = Cluster::start(config).await?;
    for n in cluster.nodes() {
        println!(
            "node {} ({}) pid {} at {}",
            n.id,
            n.server_id(),
            n.pid().unwrap_or(0),
            n.http_url()
        );
    }
    println!(
        "database chat_{0}, NATS/Redis/etcd prefix {0}",
        cluster.run_name()
    );
    println!("route {}/v1/route", cluster.http_url());
    println!(
        "clients: {}  (Ctrl-C stops the cluster)",
        cluster.http_url()
    );
    use std::io::Write as _;
    std::io::stdout().flush()?;
    crate::target::interrupted().await;
    println!("stopping");
    cluster.stop().await;
    println!("stopped");
    Ok(())
}

impl Cluster {
    /// The broker the nodes use now (through their proxies).
    fn front_of_bus(&self) -> String {
        self.nodes
            .first()
            .map(|n| n.bus.backend())
            .unwrap_or_else(|| self.config.nats_url.replace("nats://", ""))
    }
}

impl Node {
    /// Node `id` of a cluster of `config`: its port, its namespace and
    /// proxies if the cluster has namespaces, not yet started.
    async fn new(id: u16, config: &ClusterConfig) -> Result<Self> {
        let nats = socket_of(&config.nats_url)?;
        if !config.netns {
            return Ok(Self {
                id,
                port: free_port()?,
                ip: Ipv4Addr::LOCALHOST.into(),
                child: None,
                bus: Proxy::start(vec![nats]).await?,
                engines: None,
                netns: None,
            });
        }
        let ns = NetNs::create(id)?;
        let host = IpAddr::from(ns.host_ip());
        let etcd = config
            .etcd_endpoints
            .split(',')
            .next()
            .unwrap_or(&config.etcd_endpoints);
        let engines = Engines {
            postgres: Proxy::start_on(host, vec![socket_of(&config.postgres_url)?]).await?,
            redis: Proxy::start_on(host, vec![socket_of(&config.redis_url)?]).await?,
            etcd: Proxy::start_on(host, vec![socket_of(etcd)?]).await?,
        };
        Ok(Self {
            id,
            // A fresh namespace: every port is free there.
            port: 8080,
            ip: ns.node_ip().into(),
            child: None,
            bus: Proxy::start_on(host, vec![nats]).await?,
            engines: Some(engines),
            netns: Some(ns),
        })
    }
}

/// The history shards' databases: `{database}_s{i}`.
fn shard_names(database: &str, config: &ClusterConfig) -> Vec<String> {
    (1..=config.history_shards)
        .map(|i| format!("{database}_s{i}"))
        .collect()
}

/// `url` with its `host:port` replaced by `addr` (user, path and query
/// kept).
fn with_authority(url: &str, addr: SocketAddr) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some((s, r)) => (format!("{s}://"), r),
        None => (String::new(), url),
    };
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let user = match authority.rfind('@') {
        Some(i) => &authority[..=i],
        None => "",
    };
    format!("{scheme}{user}{addr}{tail}")
}

/// Runs one statement on the PostgreSQL server at `url`.
async fn pg_execute(url: &str, sql: &str) -> Result<()> {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .map_err(|e| BenchError::setup(format!("cannot reach PostgreSQL at {url}: {e}")))?;
    tokio::spawn(conn);
    client
        .batch_execute(sql)
        .await
        .map_err(|e| BenchError::setup(format!("PostgreSQL: {sql}: {e}")))
}

/// `url` with its database replaced by `database`.
fn database_url(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let authority_end = base.find("://").map(|i| i + 3).unwrap_or(0);
    let base = match base[authority_end..].find('/') {
        Some(i) => &base[..authority_end + i],
        None => base,
    };
    match query {
        Some(q) => format!("{base}/{database}?{q}"),
        None => format!("{base}/{database}"),
    }
}

/// The loopback socket address of `scheme://host:port`.
fn socket_of(url: &str) -> Result<SocketAddr> {
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    let hostport = rest.split('/').next().unwrap_or(rest);
    let hostport = hostport.rsplit('@').next().unwrap_or(hostport);
    let hostport = hostport.replace("localhost", "127.0.0.1");
    hostport
        .parse()
        .map_err(|_| BenchError::plan(format!("{url}: give the engine as 127.0.0.1:PORT")))
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_urls_swap_the_database_only() {
        assert_eq!(
            database_url("postgres://postgres@127.0.0.1:5432/postgres", "x"),
            "postgres://postgres@127.0.0.1:5432/x"
        );
        assert_eq!(
            database_url("postgres://u@h:1/db?sslmode=disable", "x"),
            "postgres://u@h:1/x?sslmode=disable"
        );
        assert_eq!(database_url("postgres://u@h:1", "x"), "postgres://u@h:1/x");
    }

    #[test]
    fn engine_addresses_are_read_from_urls() {
        assert_eq!(
            socket_of("nats://127.0.0.1:4222").ok(),
            Some(SocketAddr::from(([127, 0, 0, 1], 4222)))
        );
        assert_eq!(
            socket_of("nats://user:pw@localhost:4222").ok(),
            Some(SocketAddr::from(([127, 0, 0, 1], 4222)))
        );
        assert!(socket_of("nats://example.com:4222").is_err());
    }

    #[test]
    fn authorities_are_swapped_keeping_the_rest() {
        let a = SocketAddr::from(([10, 201, 0, 1], 9));
        assert_eq!(
            with_authority("postgres://postgres@127.0.0.1:5432/db?x=1", a),
            "postgres://postgres@10.201.0.1:9/db?x=1"
        );
        assert_eq!(
            with_authority("redis://127.0.0.1:6379", a),
            "redis://10.201.0.1:9"
        );
    }
}
