//! Reports: what each scenario measured, as JSON (`--json PATH`) and as the
//! summary table printed at the end.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::limits::FileLimits;
use crate::stats::LatencySummary;
use crate::target::{Target, TargetKind};
use crate::traffic::{TrafficOutcome, Wire};

/// The machine the run was on.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Machine {
    /// Logical CPUs available to the tool.
    pub cores: usize,
    /// Total memory in KiB (`MemTotal`), if known.
    pub memory_kib: Option<u64>,
    /// The tool's open-file limits.
    pub open_files: FileLimits,
    /// Ephemeral ports per source address, if known.
    pub ephemeral_ports: Option<u64>,
}

impl Machine {
    /// This machine.
    pub fn current() -> Self {
        let memory_kib = std::fs::read_to_string("/proc/meminfo").ok().and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("MemTotal:"))?
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()
        });
        Self {
            cores: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            memory_kib,
            open_files: FileLimits::current(),
            ephemeral_ports: crate::limits::ephemeral_ports(),
        }
    }
}

/// The server a report is about.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TargetInfo {
    /// How it was found or started.
    pub kind: TargetKind,
    /// HTTP base URL.
    pub http_url: String,
    /// WebSocket URL.
    pub ws_url: String,
    /// Its process id, when known.
    pub pid: Option<u32>,
}

impl From<&Target> for TargetInfo {
    fn from(t: &Target) -> Self {
        Self {
            kind: t.kind,
            http_url: t.http_url.clone(),
            ws_url: t.ws_url.clone(),
            pid: t.pid,
        }
    }
}

/// `connections`: how many authenticated, heartbeating connections were
/// held, and what they cost the server.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ConnectionsReport {
    /// Connections asked for.
    pub requested: u64,
    /// Load processes used.
    pub processes: usize,
    /// Users signed up (connections share users, up to the per-user limit).
    pub users: u64,
    /// Seconds spent signing up.
    pub signup_secs: f64,
    /// Connections opened (welcome received).
    pub connected: u64,
    /// Connections that could not be opened.
    pub failed: u64,
    /// Connections still open at the end of the hold.
    pub held: u64,
    /// Connections the server closed or that broke during the hold.
    pub dropped: u64,
    /// Seconds from the first connect to the last.
    pub connect_secs: f64,
    /// Connections opened per second.
    pub connect_rate_per_sec: f64,
    /// Seconds the connections were held after the last one opened.
    pub hold_secs: f64,
    /// Server resident memory before connecting, KiB.
    pub server_rss_before_kib: Option<u64>,
    /// Server resident memory with every connection open, KiB.
    pub server_rss_after_kib: Option<u64>,
    /// The difference per open connection, KiB.
    pub server_kib_per_connection: Option<f64>,
    /// Whether the server shares this process (its resident memory then
    /// includes the load's).
    pub server_in_load_process: bool,
    /// Connections the server counted (servers in this process only).
    pub server_connections: Option<u64>,
    /// Source addresses used.
    pub source_ips: Vec<String>,
    /// The server process's open-file limits, when its pid is known.
    pub server_open_files: Option<FileLimits>,
    /// Limits the run is likely to hit, said up front.
    pub warnings: Vec<String>,
    /// Close codes of failed and dropped connections, by code.
    #[serde(deserialize_with = "code_keys")]
    pub close_codes: BTreeMap<u16, u64>,
    /// A few error messages.
    pub errors: Vec<String>,
    /// Connections opened per server (`host:port` of its WebSocket), with
    /// `--via-route`.
    #[serde(default)]
    pub per_server: BTreeMap<String, u64>,
    /// The processes of `--watch`.
    #[serde(default)]
    pub watched: Vec<crate::watch::Watched>,
}

impl ConnectionsReport {
    /// Correctness problems: connections that failed or dropped.
    pub fn failures(&self) -> Vec<String> {
        let mut f = Vec::new();
        if self.held < self.requested {
            f.push(format!(
                "held {} of {} connections ({} failed to open, {} dropped)",
                self.held, self.requested, self.failed, self.dropped
            ));
        }
        f
    }
}

/// `one-to-one`, `group` and `baseline`: message throughput, latency and
/// delivery.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrafficReport {
    /// Protocol: the chat server or the bare relay.
    pub wire: Wire,
    /// Pairs (one-to-one) or groups.
    pub channels: u64,
    /// Members per channel.
    pub members: u64,
    /// Sending connections.
    pub senders: u64,
    /// Target rate over all senders, messages per second (`None`: as fast
    /// as possible).
    pub target_rate: Option<f64>,
    /// In-flight sends per connection.
    pub window: usize,
    /// Content bytes per message.
    pub size: usize,
    /// What was measured.
    pub outcome: TrafficOutcome,
    /// The server's own counters (servers in this process only).
    pub server_stats: Option<ServerStats>,
    /// The same workload against the bare relay, when run alongside.
    pub baseline: Option<Box<TrafficReport>>,
    /// Ratios of this run to the baseline.
    pub ratio: Option<Ratio>,
    /// The same workload on two servers with the bus on NATS between them
    /// (senders on one, recipients on the other), when run alongside.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub two_servers: Option<Box<TrafficReport>>,
    /// Ratios of the two-server run to this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub two_servers_ratio: Option<Ratio>,
}

/// The counters of a server in this process (`chat_server::Stats`).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct ServerStats {
    /// Messages stored.
    pub messages_stored: u64,
    /// Sends answered as duplicates.
    pub duplicate_sends: u64,
    /// Push notifications handed to the notifier.
    pub pushes_sent: u64,
    /// Push notifications dropped because the push queue was full.
    pub pushes_dropped: u64,
    /// Connections closed as slow consumers.
    pub slow_consumers: u64,
}

impl ServerStats {
    /// Reads a server's counters.
    pub fn of(server: &chat_server::ChatServer) -> Self {
        let s = server.stats();
        Self {
            messages_stored: s.messages_stored,
            duplicate_sends: s.duplicate_sends,
            pushes_sent: s.pushes_sent,
            pushes_dropped: s.pushes_dropped,
            slow_consumers: s.slow_consumers,
        }
    }
}

/// This run's figures divided by the baseline relay's.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Ratio {
    /// Acknowledged messages per second.
    pub acked_per_sec: f64,
    /// Deliveries per second.
    pub delivered_per_sec: f64,
    /// Median latency (higher is slower).
    pub p50_latency: f64,
    /// 99th percentile latency (higher is slower).
    pub p99_latency: f64,
}

impl Ratio {
    /// `ours / baseline` for each figure.
    pub fn of(ours: &TrafficOutcome, base: &TrafficOutcome) -> Self {
        let r = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
        Self {
            acked_per_sec: r(ours.acked_per_sec, base.acked_per_sec),
            delivered_per_sec: r(ours.delivered_per_sec, base.delivered_per_sec),
            p50_latency: r(ours.latency.p50_ms, base.latency.p50_ms),
            p99_latency: r(ours.latency.p99_ms, base.latency.p99_ms),
        }
    }
}

impl TrafficReport {
    /// Correctness problems of this run and its baseline.
    pub fn failures(&self) -> Vec<String> {
        let mut f = self.outcome.failures();
        if let Some(b) = &self.baseline {
            f.extend(b.failures().into_iter().map(|m| format!("baseline: {m}")));
        }
        if let Some(b) = &self.two_servers {
            f.extend(
                b.failures()
                    .into_iter()
                    .map(|m| format!("two servers: {m}")),
            );
        }
        f
    }
}

/// `reconnect-storm`: time until every client is back and synced, and
/// whether anything sent while they were away was lost.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ReconnectReport {
    /// Clients (devices).
    pub clients: u64,
    /// Users they belong to.
    pub users: u64,
    /// Messages sent (to users) before the drop, delivered live.
    pub messages_before: u64,
    /// Messages sent while every client was away.
    pub messages_away: u64,
    /// Seconds from the reconnect signal until every client had reconnected
    /// and finished its sync.
    pub all_back_secs: f64,
    /// Clients back and synced.
    pub synced: u64,
    /// Clients that could not come back.
    pub failed: u64,
    /// Reconnect attempts beyond the first (refusals, timeouts).
    pub retries: u64,
    /// Messages the syncs returned.
    pub synced_messages: u64,
    /// Of those, messages the client already had (normal: the cursor trails
    /// the settle window).
    pub already_had: u64,
    /// Messages a client should have and does not: a failure.
    pub lost: u64,
    /// Per client: from the reconnect signal to synced.
    pub back_latency: LatencySummary,
    /// Close codes of refused attempts, by code.
    #[serde(deserialize_with = "code_keys")]
    pub close_codes: BTreeMap<u16, u64>,
    /// A few error messages.
    pub errors: Vec<String>,
}

impl ReconnectReport {
    /// Correctness problems.
    pub fn failures(&self) -> Vec<String> {
        let mut f = Vec::new();
        if self.lost > 0 {
            f.push(format!("{} messages lost across the reconnect", self.lost));
        }
        if self.failed > 0 || self.synced < self.clients {
            f.push(format!(
                "{} of {} clients back and synced",
                self.synced, self.clients
            ));
        }
        f
    }
}

/// What one scenario measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "scenario", rename_all = "kebab-case")]
pub enum Report {
    /// `connections`.
    Connections(ConnectionsReport),
    /// `one-to-one` (with the baseline inside when `--baseline`).
    OneToOne(TrafficReport),
    /// `group`.
    Group(TrafficReport),
    /// `reconnect-storm`.
    ReconnectStorm(ReconnectReport),
    /// `baseline`.
    Baseline(TrafficReport),
    /// `signups`.
    Signups(crate::signups::SignupsReport),
    /// `login-storm`.
    LoginStorm(crate::login_storm::LoginStormReport),
}

impl Report {
    /// Correctness problems (empty: passed).
    pub fn failures(&self) -> Vec<String> {
        match self {
            Report::Connections(r) => r.failures(),
            Report::OneToOne(r) | Report::Group(r) | Report::Baseline(r) => r.failures(),
            Report::ReconnectStorm(r) => r.failures(),
            Report::Signups(r) => r.failures(),
            Report::LoginStorm(r) => r.failures(),
        }
    }
}

/// A report with its context, as written to `--json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunReport {
    /// `chat-bench`.
    pub tool: String,
    /// The tool's version.
    pub version: String,
    /// When the run started, Unix milliseconds.
    pub started_at_ms: u64,
    /// The command line.
    pub command: Vec<String>,
    /// The machine.
    pub machine: Machine,
    /// The server under load (none for `baseline`).
    pub target: Option<TargetInfo>,
    /// Whether every correctness check passed.
    pub passed: bool,
    /// What failed.
    pub failures: Vec<String>,
    /// The scenario's figures.
    #[serde(flatten)]
    pub report: Report,
}

impl RunReport {
    /// Wraps a scenario report.
    pub fn new(report: Report, target: Option<TargetInfo>, started_at_ms: u64) -> Self {
        let failures = report.failures();
        Self {
            tool: "chat-bench".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            started_at_ms,
            command: std::env::args().collect(),
            machine: Machine::current(),
            target,
            passed: failures.is_empty(),
            failures,
            report,
        }
    }

    /// Writes the report as pretty JSON.
    pub fn write_json(&self, path: &Path) -> std::io::Result<()> {
        let text = serde_json::to_string_pretty(self).map_err(std::io::Error::other)?;
        std::fs::write(path, text + "\n")
    }

    /// The summary table.
    pub fn table(&self) -> String {
        let mut t = Table::default();
        let m = &self.machine;
        t.row(
            "machine",
            format!(
                "{} cores, {} memory, open files {}/{}",
                m.cores,
                m.memory_kib
                    .map(|k| format!("{:.1} GiB", k as f64 / 1048576.0))
                    .unwrap_or_else(|| "?".into()),
                opt(m.open_files.soft),
                opt(m.open_files.hard)
            ),
        );
        if let Some(target) = &self.target {
            t.row(
                "server",
                format!(
                    "{} ({}){}",
                    target.http_url,
                    match target.kind {
                        TargetKind::External => "external".to_string(),
                        TargetKind::InProcess(s) => format!("in-process, {s:?} store"),
                        TargetKind::Child(s) => format!("child process, {s:?} store"),
                    },
                    target.pid.map(|p| format!(", pid {p}")).unwrap_or_default()
                ),
            );
        }
        match &self.report {
            Report::Connections(r) => connections_rows(&mut t, r),
            Report::OneToOne(r) | Report::Group(r) | Report::Baseline(r) => {
                traffic_rows(&mut t, r, None);
                if let Some(b) = &r.two_servers {
                    traffic_rows(
                        &mut t,
                        b,
                        Some(
                            "two chat servers over NATS (senders on one, recipients on the other)",
                        ),
                    );
                }
                if let Some(ratio) = &r.two_servers_ratio {
                    ratio_rows(&mut t, "two servers over NATS / one server", ratio);
                }
                if let Some(b) = &r.baseline {
                    traffic_rows(&mut t, b, None);
                }
                if let Some(ratio) = &r.ratio {
                    ratio_rows(&mut t, "chat server / baseline relay", ratio);
                }
            }
            Report::ReconnectStorm(r) => reconnect_rows(&mut t, r),
            Report::Signups(r) => signups_rows(&mut t, r),
            Report::LoginStorm(r) => login_storm_rows(&mut t, r),
        }
        t.section("result");
        if self.passed {
            t.row("correctness", "PASS".to_string());
        } else {
            for f in &self.failures {
                t.row("FAIL", f.clone());
            }
        }
        t.render()
    }
}

fn opt(v: Option<u64>) -> String {
    v.map(|v| v.to_string())
        .unwrap_or_else(|| "unlimited".into())
}

fn login_storm_rows(t: &mut Table, r: &crate::login_storm::LoginStormReport) {
    t.section("login storm");
    t.row(
        "attack",
        format!("{} clients for {:.1} s", r.attackers, r.secs),
    );
    let answered: Vec<String> = r
        .attack_statuses
        .iter()
        .map(|(s, n)| format!("{s}: {n}"))
        .collect();
    t.row("attack answers", answered.join(", "));
    t.row("real login idle", format!("{:.1} ms", r.real_login_idle_ms));
    let l = &r.real_logins;
    t.row(
        "real login",
        format!(
            "{} ok, p50 {:.1} / p90 {:.1} / max {:.1} ms",
            l.count, l.p50_ms, l.p90_ms, l.max_ms
        ),
    );
    if !r.real_failures.is_empty() {
        t.row("real login failed", format!("{:?}", r.real_failures));
    }
    let mib = |k: Option<u64>| {
        k.map(|k| format!("{:.1} MiB", k as f64 / 1024.0))
            .unwrap_or_else(|| "?".into())
    };
    t.row(
        "server RSS",
        format!(
            "{} before, {} at the end, {} 5 s later",
            mib(r.server_rss_before_kib),
            mib(r.server_rss_end_kib),
            mib(r.server_rss_after_kib)
        ),
    );
}

fn signups_rows(t: &mut Table, r: &crate::signups::SignupsReport) {
    t.section("signups");
    t.row(
        "signed up",
        format!(
            "{} of {} ({} failed), {} at once",
            r.signed_up, r.requested, r.failed, r.concurrency
        ),
    );
    t.row("rate", format!("{:.0} /s ({:.1} s)", r.per_sec, r.secs));
    if let (Some(b), Some(a)) = (r.server_rss_before_kib, r.server_rss_after_kib) {
        t.row(
            "server RSS",
            format!(
                "{:.1} MiB -> {:.1} MiB (+{:.1} MiB)",
                b as f64 / 1024.0,
                a as f64 / 1024.0,
                a.saturating_sub(b) as f64 / 1024.0
            ),
        );
    }
    if let Some(g) = r.late_growth_bytes_per_signup {
        t.row(
            "late growth",
            format!("{:.0} bytes per sign-up (second half)", g),
        );
    }
    let curve: Vec<String> = r
        .samples
        .iter()
        .map(|(n, kib)| format!("{n}:{:.0}", *kib as f64 / 1024.0))
        .collect();
    if !curve.is_empty() {
        t.row("RSS MiB by sign-ups", curve.join(" "));
    }
    for e in &r.errors {
        t.row("error", e.clone());
    }
}

fn connections_rows(t: &mut Table, r: &ConnectionsReport) {
    t.section("connections");
    t.row(
        "requested",
        format!("{} ({} process(es))", r.requested, r.processes),
    );
    t.row(
        "users",
        format!("{} (signed up in {:.1} s)", r.users, r.signup_secs),
    );
    t.row(
        "connected",
        format!("{} ({} failed)", r.connected, r.failed),
    );
    t.row(
        "held",
        format!(
            "{} for {:.1} s ({} dropped)",
            r.held, r.hold_secs, r.dropped
        ),
    );
    t.row(
        "connect rate",
        format!("{:.0} /s ({:.2} s)", r.connect_rate_per_sec, r.connect_secs),
    );
    if let Some(n) = r.server_connections {
        t.row("server counts", format!("{n} connections"));
    }
    match (r.server_rss_before_kib, r.server_rss_after_kib) {
        (Some(b), Some(a)) => {
            t.row(
                "server RSS",
                format!(
                    "{:.1} MiB -> {:.1} MiB",
                    b as f64 / 1024.0,
                    a as f64 / 1024.0
                ),
            );
            t.row(
                "per connection",
                format!(
                    "{:.2} KiB{}",
                    r.server_kib_per_connection.unwrap_or(0.0),
                    if r.server_in_load_process {
                        " (server shares this process: includes the load's memory)"
                    } else {
                        ""
                    }
                ),
            );
        }
        _ => t.row(
            "server RSS",
            "not measured (give --server-pid, or use --spawn-server)".to_string(),
        ),
    }
    if !r.source_ips.is_empty() {
        t.row("source addresses", r.source_ips.join(","));
    }
    if !r.per_server.is_empty() {
        let max = r.per_server.values().max().copied().unwrap_or(0);
        let min = r.per_server.values().min().copied().unwrap_or(0);
        t.row(
            "per server",
            format!(
                "{} (max/min {:.3})",
                r.per_server
                    .iter()
                    .map(|(s, n)| format!("{s} {n}"))
                    .collect::<Vec<_>>()
                    .join(", "),
                max as f64 / min.max(1) as f64
            ),
        );
    }
    for w in &r.watched {
        let mib = |k: Option<u64>| {
            k.map(|k| format!("{:.1}", k as f64 / 1024.0))
                .unwrap_or_else(|| "?".into())
        };
        let per_conn = match (w.rss_before_kib, w.rss_after_kib, r.per_server.get(&w.name)) {
            (Some(b), Some(a), Some(n)) if *n > 0 => format!(
                ", {:.2} KiB per connection",
                a.saturating_sub(b) as f64 / *n as f64
            ),
            _ => String::new(),
        };
        let cpu = |c: Option<f64>| c.map(|c| format!("{c:.1}")).unwrap_or_else(|| "?".into());
        t.row(
            &format!("watched {} (pid {})", w.name, w.pid),
            format!(
                "RSS {} -> {} -> {} MiB{per_conn}; CPU {} s connecting, {} s holding {:.0} s ({:.0} % of a core)",
                mib(w.rss_before_kib),
                mib(w.rss_after_kib),
                mib(w.rss_end_kib),
                cpu(w.cpu_connect_secs),
                cpu(w.cpu_hold_secs),
                w.hold_secs,
                w.cpu_hold_secs.unwrap_or(0.0) / w.hold_secs.max(1e-3) * 100.0
            ),
        );
    }
    if let Some(l) = &r.server_open_files {
        t.row(
            "server open files",
            format!("{}/{} (soft/hard)", opt(l.soft), opt(l.hard)),
        );
    }
    for w in &r.warnings {
        t.row("warning", w.clone());
    }
    for (code, n) in &r.close_codes {
        t.row("close code", format!("{code}: {n}"));
    }
    for e in &r.errors {
        t.row("error", e.clone());
    }
}

fn ratio_rows(t: &mut Table, title: &str, ratio: &Ratio) {
    t.section(title);
    t.row("acked/s ratio", format!("{:.2}", ratio.acked_per_sec));
    t.row(
        "delivered/s ratio",
        format!("{:.2}", ratio.delivered_per_sec),
    );
    t.row("p50 latency ratio", format!("{:.2}", ratio.p50_latency));
    t.row("p99 latency ratio", format!("{:.2}", ratio.p99_latency));
}

fn traffic_rows(t: &mut Table, r: &TrafficReport, title: Option<&str>) {
    let o = &r.outcome;
    t.section(title.unwrap_or(match r.wire {
        Wire::Chat => "chat server",
        Wire::Relay => "baseline relay (bare WebSocket relay, same workload)",
    }));
    t.row(
        "workload",
        format!(
            "{} channel(s) x {} members, {} sender(s), {}, window {}, {} B",
            r.channels,
            r.members,
            r.senders,
            r.target_rate
                .map(|x| format!("{x:.0} msg/s target"))
                .unwrap_or_else(|| "max rate".into()),
            r.window,
            r.size
        ),
    );
    t.row(
        "connections",
        format!("{} (opened in {:.2} s)", o.connections, o.connect_secs),
    );
    t.row(
        "sent / acked",
        format!(
            "{} / {} ({} failed, {} unanswered) in {:.1} s",
            o.messages_sent, o.acked, o.failed, o.unanswered, o.send_secs
        ),
    );
    t.row("acked/s", format!("{:.0}", o.acked_per_sec));
    t.row(
        "delivered",
        format!(
            "{} of {} ({} by sync, {} lost, {} duplicated)",
            o.delivered, o.expected_deliveries, o.recovered_by_sync, o.lost, o.duplicated
        ),
    );
    t.row("delivered/s", format!("{:.0}", o.delivered_per_sec));
    t.row("latency", latency(&o.latency));
    t.row("ack latency", latency(&o.ack_latency));
    if o.error_replies > 0 {
        t.row(
            "error replies",
            format!(
                "{} ({} rate-limited, retried)",
                o.error_replies, o.rate_limited
            ),
        );
    }
    if o.disconnects > 0 {
        t.row(
            "disconnects",
            format!("{} ({} reconnected)", o.disconnects, o.reconnects),
        );
    }
    if let Some(s) = &r.server_stats {
        t.row(
            "server counters",
            format!(
                "{} stored, {} duplicate sends, {} slow consumers, {} pushes sent, {} dropped \
                 (push queue full)",
                s.messages_stored,
                s.duplicate_sends,
                s.slow_consumers,
                s.pushes_sent,
                s.pushes_dropped
            ),
        );
    }
    for e in &o.error_samples {
        t.row("error", e.clone());
    }
}

/// One line of latency percentiles.
pub fn latency(l: &LatencySummary) -> String {
    if l.count == 0 {
        return "no samples".into();
    }
    format!(
        "p50 {:.2} ms  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}  ({} samples)",
        l.p50_ms, l.p90_ms, l.p99_ms, l.p999_ms, l.max_ms, l.count
    )
}

fn reconnect_rows(t: &mut Table, r: &ReconnectReport) {
    t.section("reconnect storm");
    t.row("clients", format!("{} ({} users)", r.clients, r.users));
    t.row(
        "messages",
        format!(
            "{} before the drop, {} while away",
            r.messages_before, r.messages_away
        ),
    );
    t.row(
        "all back and synced",
        format!(
            "{:.2} s ({} of {} clients)",
            r.all_back_secs, r.synced, r.clients
        ),
    );
    t.row("per client", latency(&r.back_latency));
    t.row("retries", r.retries.to_string());
    t.row(
        "synced messages",
        format!("{} ({} already had)", r.synced_messages, r.already_had),
    );
    t.row("lost", r.lost.to_string());
    for (code, n) in &r.close_codes {
        t.row("close code", format!("{code}: {n}"));
    }
    for e in &r.errors {
        t.row("error", e.clone());
    }
}

/// A two-column table with section headings.
#[derive(Debug, Default)]
struct Table {
    rows: Vec<(String, String)>,
}

impl Table {
    fn row(&mut self, k: &str, v: String) {
        self.rows.push((k.to_owned(), v));
    }

    fn section(&mut self, title: &str) {
        self.rows.push((String::new(), title.to_owned()));
    }

    fn render(&self) -> String {
        let w = self.rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        let mut out = String::new();
        for (k, v) in &self.rows {
            if k.is_empty() {
                let _ = writeln!(
                    out,
                    "── {v} {}",
                    "─".repeat(60usize.saturating_sub(v.len()))
                );
            } else {
                let _ = writeln!(out, "  {k:<w$}  {v}");
            }
        }
        out
    }
}

/// Reads a map keyed by close code. JSON keys are strings, and inside the
/// report's flattened, tagged enum serde no longer turns them back into
/// numbers by itself.
fn code_keys<'de, D>(d: D) -> Result<BTreeMap<u16, u64>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    BTreeMap::<String, u64>::deserialize(d)?
        .into_iter()
        .map(|(k, v)| {
            k.parse::<u16>()
                .map(|k| (k, v))
                .map_err(|_| serde::de::Error::custom(format!("close code {k:?} is not a number")))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_codes_survive_the_json_round_trip_of_a_load_process_report() {
        let mut report = ConnectionsReport::default();
        report.close_codes.insert(4004, 3);
        report.close_codes.insert(1006, 1);
        let run = RunReport::new(Report::Connections(report), None, 0);
        let text = serde_json::to_string(&run).unwrap();
        let back: RunReport = serde_json::from_str(&text).unwrap();
        let Report::Connections(c) = back.report else {
            panic!("not a connections report")
        };
        assert_eq!(c.close_codes, BTreeMap::from([(1006, 1), (4004, 3)]));
    }
}
