//! Command-line arguments (clap derive). The library's [`crate::run`] takes
//! a parsed [`Cli`], so tests drive the tool exactly as a user would.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::error::Result;
use crate::target::{ServeArgs, TargetArgs};

/// Load tool for the chat server: drives a server through the real protocol
/// and reports throughput, latency, connection counts and memory, checking
/// that every acknowledged message is delivered exactly once.
#[derive(Debug, Clone, Parser)]
#[command(name = "chat-bench", version, about)]
pub struct Cli {
    /// Write a machine-readable JSON report to this file.
    #[arg(long, global = true)]
    pub json: Option<PathBuf>,
    /// No progress line while running.
    #[arg(long, global = true)]
    pub quiet: bool,
    /// What to run.
    #[command(subcommand)]
    pub command: Command,
}

/// The scenarios.
#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Open N authenticated, heartbeating connections and hold them; report
    /// how many held, the connect rate and the server's memory per
    /// connection.
    Connections(ConnectionsArgs),
    /// P sender/recipient pairs on direct channels: messages per second and
    /// end-to-end latency, every acknowledged message delivered once.
    OneToOne(OneToOneArgs),
    /// Fan-out to groups (100 members by default): deliveries per second and
    /// latency.
    Group(GroupArgs),
    /// Connect N clients, drop them all at once, send to them while away,
    /// reconnect all: time until every one is back and synced, nothing lost.
    ReconnectStorm(ReconnectArgs),
    /// The one-to-one workload against a bare WebSocket relay started in this
    /// process: what the WebSocket stack alone does on this machine.
    Baseline(BaselineArgs),
    /// Sign N users up one after another and sample the server's resident
    /// memory as it goes: memory that grows with every sign-up shows.
    Signups(SignupsArgs),
    /// Attackers hammer failed logins while a real user logs in from
    /// another address: the real user's login latency and the server's
    /// memory.
    LoginStorm(LoginStormArgs),
    /// Run a chat server tuned for benchmarks (cheap password hashing, no
    /// rate limit) until Ctrl-C; prints `listening http://ADDR`.
    Serve(ServeArgs),
    /// A local cluster of `chat-server` processes on PostgreSQL, NATS,
    /// Redis and etcd (docs/cluster.md).
    #[command(subcommand)]
    Cluster(ClusterCommand),
}

/// `chat-bench cluster ...`.
#[derive(Debug, Clone, Subcommand)]
pub enum ClusterCommand {
    /// Start N servers, print the URL clients use (`route` there), and run
    /// until Ctrl-C or SIGTERM; then stop every server and drop the run's
    /// database.
    Up(ClusterUpArgs),
}

/// Options of `cluster up`.
#[derive(Debug, Clone, clap::Args)]
pub struct ClusterUpArgs {
    /// Chat servers to start.
    #[arg(short = 'n', long, default_value_t = 3)]
    pub nodes: u16,
    /// The `chat-server` binary (default: CHAT_SERVER_BIN, or next to this
    /// program).
    #[arg(long)]
    pub server_bin: Option<PathBuf>,
    /// Heartbeat interval, seconds.
    #[arg(long, default_value_t = 5)]
    pub heartbeat_secs: u64,
    /// Presence timeout, seconds.
    #[arg(long, default_value_t = 30)]
    pub presence_timeout_secs: u64,
    /// Each server in a network namespace of its own (veth pair, private
    /// subnet 10.201.0.0/16, engines reached through the host's end), as
    /// the partition test runs them. Needs root, `ip netns`, `iptables`.
    #[arg(long)]
    pub netns: bool,
    /// Shard chat history over this many PostgreSQL databases of the run's
    /// own (besides the main one: directory, inboxes, cursors).
    #[arg(long, default_value_t = 0)]
    pub history_shards: u8,
}

/// How load connections are made (shared by every scenario).
#[derive(Debug, Clone, clap::Args)]
pub struct LoadArgs {
    /// Loopback source addresses to bind, round-robin, e.g.
    /// 127.0.0.1,127.0.0.2: each gives its own ~28,000 ephemeral ports.
    #[arg(long)]
    pub source_ips: Option<String>,
    /// Connections being opened at once.
    #[arg(long, default_value_t = 256)]
    pub connect_concurrency: usize,
    /// Sign-ups in flight at once (each hashes a password on the server).
    #[arg(long, default_value_t = 16)]
    pub signup_concurrency: usize,
    /// Timeout of each connect step (TCP, handshake, welcome), seconds.
    #[arg(long, default_value_t = 10.0)]
    pub connect_timeout: f64,
}

impl LoadArgs {
    /// The parsed source addresses (empty: the kernel chooses).
    pub fn source_ips(&self) -> Result<Vec<IpAddr>> {
        match &self.source_ips {
            Some(list) => crate::net::parse_source_ips(list),
            None => Ok(Vec::new()),
        }
    }

    /// [`LoadArgs::connect_timeout`] as a duration.
    pub fn connect_timeout(&self) -> Duration {
        secs(self.connect_timeout)
    }
}

/// A duration from seconds (negative and NaN count as zero).
pub fn secs(s: f64) -> Duration {
    Duration::try_from_secs_f64(s.max(0.0)).unwrap_or(Duration::ZERO)
}

/// Options of `connections`.
#[derive(Debug, Clone, clap::Args)]
pub struct ConnectionsArgs {
    /// The server.
    #[command(flatten)]
    pub target: TargetArgs,
    /// Connection options.
    #[command(flatten)]
    pub load: LoadArgs,
    /// Connections to open.
    #[arg(short = 'n', long = "connections", default_value_t = 1000)]
    pub n: u64,
    /// Seconds to hold them after the last one opened.
    #[arg(long, default_value_t = 10.0)]
    pub hold: f64,
    /// Devices (connections) per user; the server allows 10 by default.
    #[arg(long, default_value_t = 10)]
    pub conns_per_user: u64,
    /// Split the connections over this many load processes (this program
    /// re-executed), for more than one process's open-file limit.
    #[arg(long, default_value_t = 1)]
    pub processes: usize,
    /// Internal: run as one of the processes of `--processes`.
    #[arg(long, hide = true)]
    pub child: bool,
    /// Ask `route` at --server (a cluster's load balancer) for each
    /// connection's server and connect there, as clients of a cluster do,
    /// instead of opening every connection on the server of one `route`.
    #[arg(long)]
    pub via_route: bool,
    /// Another process to measure (resident memory and CPU time, before
    /// connecting, with every connection open, at the end of the hold):
    /// `NAME=PID`, repeatable. A cluster node named by its `host:port`
    /// also gets its memory per connection.
    #[arg(long = "watch", value_name = "NAME=PID")]
    pub watch: Vec<String>,
}

/// Message workload options (shared by one-to-one, group and baseline).
#[derive(Debug, Clone, clap::Args)]
pub struct MessageArgs {
    /// Seconds to send.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Target rate over all senders, messages per second (default: as fast
    /// as the window allows).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Sends in flight per sending connection.
    #[arg(long, default_value_t = 8)]
    pub window: usize,
    /// Message content size, bytes.
    #[arg(long, default_value_t = 100)]
    pub size: usize,
    /// Longest wait after the duration for the last replies and deliveries,
    /// seconds.
    #[arg(long, default_value_t = 10.0)]
    pub drain: f64,
}

/// Options of `one-to-one`.
#[derive(Debug, Clone, clap::Args)]
pub struct OneToOneArgs {
    /// The server.
    #[command(flatten)]
    pub target: TargetArgs,
    /// Connection options.
    #[command(flatten)]
    pub load: LoadArgs,
    /// Workload.
    #[command(flatten)]
    pub messages: MessageArgs,
    /// Sender/recipient pairs.
    #[arg(long, default_value_t = 50)]
    pub pairs: u64,
    /// Also run the same workload against the bare relay and print the ratio.
    #[arg(long)]
    pub baseline: bool,
    /// Ask `route` at --server (a cluster's load balancer) for each
    /// connection's server, as clients of a cluster do: senders and
    /// recipients land on the servers `route` names.
    #[arg(long)]
    pub via_route: bool,
    /// Also run the same workload on two chat servers in this process on
    /// one store of the --embedded-server kind, every sender on one and
    /// every recipient on the other, with the delivery bus on NATS at this
    /// URL (JetStream on); print both runs side by side.
    #[arg(long, value_name = "NATS_URL", requires = "embedded_server")]
    pub two_servers_nats: Option<String>,
}

/// Options of `group`.
#[derive(Debug, Clone, clap::Args)]
pub struct GroupArgs {
    /// The server.
    #[command(flatten)]
    pub target: TargetArgs,
    /// Connection options.
    #[command(flatten)]
    pub load: LoadArgs,
    /// Workload.
    #[command(flatten)]
    pub messages: MessageArgs,
    /// Groups.
    #[arg(long, default_value_t = 5)]
    pub groups: u64,
    /// Members per group (the server's default limit is 100).
    #[arg(long, default_value_t = 100)]
    pub members: u64,
    /// Sending members per group.
    #[arg(long, default_value_t = 1)]
    pub senders: u64,
}

/// Options of `reconnect-storm`.
#[derive(Debug, Clone, clap::Args)]
pub struct ReconnectArgs {
    /// The server.
    #[command(flatten)]
    pub target: TargetArgs,
    /// Connection options.
    #[command(flatten)]
    pub load: LoadArgs,
    /// Clients.
    #[arg(short = 'n', long = "clients", default_value_t = 1000)]
    pub n: u64,
    /// Devices (clients) per user.
    #[arg(long, default_value_t = 5)]
    pub conns_per_user: u64,
    /// Messages sent to each user while its clients are away.
    #[arg(long, default_value_t = 2)]
    pub away: u64,
}

/// Options of `baseline`.
#[derive(Debug, Clone, clap::Args)]
pub struct BaselineArgs {
    /// Connection options.
    #[command(flatten)]
    pub load: LoadArgs,
    /// Workload.
    #[command(flatten)]
    pub messages: MessageArgs,
    /// Sender/recipient pairs.
    #[arg(long, default_value_t = 50)]
    pub pairs: u64,
}

/// Options of `signups`.
#[derive(Debug, Clone, clap::Args)]
pub struct SignupsArgs {
    /// The server (its pid is needed for memory: known for servers the tool
    /// starts, `--server-pid` for others).
    #[command(flatten)]
    pub target: TargetArgs,
    /// Users to sign up.
    #[arg(short = 'n', long = "users", default_value_t = 20_000)]
    pub n: u64,
    /// Sign-ups in flight at once.
    #[arg(long, default_value_t = 1)]
    pub concurrency: usize,
    /// Sample the server's memory every this many sign-ups.
    #[arg(long, default_value_t = 1_000)]
    pub sample_every: u64,
}

/// Options of `login-storm`.
#[derive(Debug, Clone, clap::Args)]
pub struct LoginStormArgs {
    /// The server (an external one shows what users get: servers the tool
    /// starts hash cheaply and have no sign-up or login limits).
    #[command(flatten)]
    pub target: TargetArgs,
    /// Connection options: the first `--source-ips` address is the
    /// attackers', the second the real user's.
    #[command(flatten)]
    pub load: LoadArgs,
    /// Attacking clients, each with one failed login in flight.
    #[arg(long, default_value_t = 32)]
    pub attackers: usize,
    /// Seconds of attack.
    #[arg(long, default_value_t = 12.0)]
    pub duration: f64,
    /// Seconds between the real user's logins (the server allows one
    /// username 10 at once, then 6 a minute).
    #[arg(long, default_value_t = 1.5)]
    pub real_interval: f64,
}
