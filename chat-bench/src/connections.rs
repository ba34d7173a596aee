//! `connections`: open N authenticated, heartbeating connections, hold them,
//! and measure the server's resident memory per connection. Past one
//! process's open-file limit, `--processes K` re-executes the tool K times
//! (each a `--child` holding its share) and adds up their reports.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chat_core::DeviceId;
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_util::sync::CancellationToken;

use crate::cli::{secs, ConnectionsArgs};
use crate::error::{BenchError, Result};
use crate::limits::{check_file_budget, check_ports, vm_rss_kib};
use crate::net::SourceIps;
use crate::progress::Progress;
use crate::report::{ConnectionsReport, Report, RunReport, TargetInfo};
use crate::setup::{run_prefix, signup_users};
use crate::stats::Counters;
use crate::target::{Target, TargetKind};
use crate::wire::{self, ConnError, Ws};

/// Error messages kept for the report.
const ERROR_SAMPLES: usize = 5;
/// Pause between the last connect and the "after" memory reading, so the
/// server has finished setting up every session.
const SETTLE: Duration = Duration::from_secs(2);

/// How one held connection ended.
#[derive(Debug)]
enum HoldEnd {
    /// Open until told to stop.
    Held,
    /// Closed by the server or broken during the hold.
    Dropped(ConnError),
    /// Never opened.
    Failed(ConnError),
}

/// Looks up the server's open-file limit and says plainly, up front, when
/// `n` connections will not fit in it.
fn server_limits(
    target: &Target,
    n: u64,
    quiet: bool,
) -> (Option<crate::limits::FileLimits>, Vec<String>) {
    let limits = target.pid.and_then(crate::limits::file_limits_of);
    let mut warnings = Vec::new();
    if let Some(budget) = limits.and_then(|l| l.connection_budget(1)) {
        if n > budget {
            let w = format!(
                "the server process may open {} files: expect it to refuse connections (close \
                 code 4004) beyond about {budget}, short of the {n} asked for; one server process \
                 cannot hold more here",
                limits.and_then(|l| l.soft).unwrap_or(0)
            );
            if !quiet {
                eprintln!("chat-bench: warning: {w}");
            }
            warnings.push(w);
        }
    }
    (limits, warnings)
}

/// Runs `connections`.
pub async fn connections(
    args: &ConnectionsArgs,
    quiet: bool,
) -> Result<(ConnectionsReport, TargetInfo)> {
    if args.n == 0 {
        return Err(BenchError::plan("-n must be at least 1"));
    }
    if args.processes > 1 && !args.child {
        return parent(args, quiet).await;
    }
    let ips = args.load.source_ips()?;
    check_ports(args.n, ips.len().max(1)).map_err(BenchError::Plan)?;
    let fds = if args.target.embedded_server.is_some() {
        2
    } else {
        1
    };
    check_file_budget(args.n, fds).map_err(BenchError::Plan)?;
    let counters = Arc::new(Counters::default());
    let progress = Progress::start(quiet, "connections", counters.clone());
    progress.phase("starting the server");
    let target = Target::start(&args.target).await?;
    let info = TargetInfo::from(&target);
    let (server_files, warnings) = server_limits(&target, args.n, quiet || args.child);
    let result = single(args, &target, &ips, &counters, &progress).await;
    progress.stop();
    target.stop().await;
    let mut report = result?;
    report.server_open_files = server_files;
    report.warnings = warnings;
    Ok((report, info))
}

/// One process's share: sign up, connect, hold, count.
async fn single(
    args: &ConnectionsArgs,
    target: &Target,
    ips: &[IpAddr],
    counters: &Arc<Counters>,
    progress: &Progress,
) -> Result<ConnectionsReport> {
    let mut control = args.child.then(ChildControl::new);
    let per_user = args.conns_per_user.max(1);
    let n_users = args.n.div_ceil(per_user);
    progress.phase("signing up");
    let signup_started = Instant::now();
    let users = signup_users(
        &target.client,
        &run_prefix(),
        n_users as usize,
        args.load.signup_concurrency,
        counters,
    )
    .await?;
    let signup_secs = signup_started.elapsed().as_secs_f64();
    if let Some(c) = &mut control {
        c.say("signed_up")?;
        c.wait_go().await?;
    }
    let rss_before = target.pid.and_then(|p| vm_rss_kib(p).ok());
    let mut watch = crate::watch::Watch::start(if args.child { &[] } else { &args.watch })?;

    progress.phase("connecting");
    let per_server: Arc<Mutex<BTreeMap<String, u64>>> = Arc::default();
    let stop = CancellationToken::new();
    let sem = Arc::new(Semaphore::new(args.load.connect_concurrency.max(1)));
    let sources = SourceIps::new(ips.to_vec());
    let timeout = args.load.connect_timeout();
    let started = Instant::now();
    let mut handles = Vec::with_capacity(args.n as usize);
    for i in 0..args.n {
        let permit = sem
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| BenchError::setup("connect limiter closed"))?;
        let user = &users[(i / per_user) as usize];
        let source = sources.next();
        let stop = stop.clone();
        let counters = counters.clone();
        let fixed = (!args.via_route).then(|| {
            (
                wire::chat_url(&target.ws_url, DeviceId::new_random(), &user.token),
                target.ws_addr,
            )
        });
        let session = user.session.clone();
        let per_server = per_server.clone();
        handles.push(tokio::spawn(async move {
            let r = match fixed {
                Some((url, addr)) => connect(addr, source, &url, timeout).await,
                None => match routed(&session, timeout).await {
                    Ok((url, addr)) => {
                        let r = connect(addr, source, &url, timeout).await;
                        if r.is_ok() {
                            let mut m = per_server.lock().unwrap_or_else(|e| e.into_inner());
                            *m.entry(addr.to_string()).or_default() += 1;
                        }
                        r
                    }
                    Err(e) => Err(e),
                },
            };
            // Counted before the permit goes back: all permits back means
            // every attempt is counted.
            match &r {
                Ok(_) => {
                    Counters::add(&counters.connected, 1);
                    Counters::add(&counters.open, 1);
                }
                Err(_) => Counters::add(&counters.connect_failures, 1),
            }
            drop(permit);
            match r {
                Ok((ws, hb)) => hold(ws, hb, stop, &counters).await,
                Err(e) => HoldEnd::Failed(e),
            }
        }));
    }
    // Every permit back means every connect attempt has finished.
    let all = args.load.connect_concurrency.max(1) as u32;
    let _ =
        tokio::time::timeout(timeout * 4 + Duration::from_secs(30), sem.acquire_many(all)).await;
    let connect_secs = started.elapsed().as_secs_f64();
    let connected = Counters::get(&counters.connected);
    if let Some(c) = &mut control {
        c.say(&format!("ready {connected}"))?;
    }

    progress.phase("holding");
    let hold_started = Instant::now();
    let mut rss_after = None;
    if target.pid.is_some() {
        tokio::time::sleep(SETTLE).await;
        rss_after = target.pid.and_then(|p| vm_rss_kib(p).ok());
    }
    watch.connected();
    match &mut control {
        // The parent says when to stop (it measures while every child holds).
        Some(c) => {
            c.wait_stop(secs(args.hold) + Duration::from_secs(3600))
                .await
        }
        None => {
            let rest = secs(args.hold).saturating_sub(hold_started.elapsed());
            tokio::time::sleep(rest).await;
        }
    }
    let hold_secs = hold_started.elapsed().as_secs_f64();
    let held = Counters::get(&counters.open);
    let server_connections = target.server().map(|s| s.connections() as u64);

    progress.phase("closing");
    stop.cancel();
    let mut report = ConnectionsReport {
        requested: args.n,
        processes: 1,
        users: n_users,
        signup_secs,
        connected,
        held,
        connect_secs,
        connect_rate_per_sec: connected as f64 / connect_secs.max(1e-3),
        hold_secs,
        server_rss_before_kib: rss_before,
        server_rss_after_kib: rss_after,
        server_in_load_process: matches!(target.kind, TargetKind::InProcess(_)),
        server_connections,
        source_ips: ips.iter().map(ToString::to_string).collect(),
        per_server: std::mem::take(&mut *per_server.lock().unwrap_or_else(|e| e.into_inner())),
        watched: watch.finish(),
        ..Default::default()
    };
    if let (Some(b), Some(a)) = (rss_before, rss_after) {
        report.server_kib_per_connection =
            Some(a.saturating_sub(b) as f64 / connected.max(1) as f64);
    }
    let join_deadline = Instant::now() + Duration::from_secs(60);
    for h in handles {
        let abort = h.abort_handle();
        let end = match tokio::time::timeout_at(join_deadline, h).await {
            Ok(Ok(end)) => end,
            _ => {
                abort.abort();
                continue;
            }
        };
        let e = match end {
            HoldEnd::Held => continue,
            HoldEnd::Dropped(e) => {
                report.dropped += 1;
                e
            }
            HoldEnd::Failed(e) => {
                report.failed += 1;
                e
            }
        };
        if let Some(code) = e.close_code() {
            *report.close_codes.entry(code).or_default() += 1;
        }
        let msg = e.to_string();
        if report.errors.len() < ERROR_SAMPLES && !report.errors.contains(&msg) {
            report.errors.push(msg);
        }
    }
    if report
        .close_codes
        .contains_key(&chat_core::protocol::close::SERVER_FULL)
    {
        report.errors.push(
            "the server refused connections at its connection limit (4004): its \
             --max-connections or open-file limit is below -n"
                .into(),
        );
    }
    Ok(report)
}

/// Asks `route` for the server of one connection: its URL (with a fresh
/// token) and address.
pub(crate) async fn routed(
    session: &chat_client::Session,
    timeout: Duration,
) -> Result<(String, SocketAddr), ConnError> {
    let mut attempt = 0;
    let route = loop {
        attempt += 1;
        match tokio::time::timeout(timeout, session.route(None)).await {
            Ok(Ok(r)) => break r,
            Ok(Err(e)) if attempt >= 3 => {
                return Err(ConnError::Protocol(format!("route: {e}")));
            }
            Err(_) if attempt >= 3 => return Err(ConnError::Timeout("route")),
            _ => tokio::time::sleep(Duration::from_millis(200 * attempt)).await,
        }
    };
    let ws = crate::net::Endpoint::parse(&route.ws_url)
        .map_err(|e| ConnError::Protocol(format!("route answered {}: {e}", route.ws_url)))?;
    let addr = ws
        .loopback_addr()
        .await
        .map_err(|e| ConnError::Protocol(e.to_string()))?;
    let url = wire::chat_url(&route.ws_url, DeviceId::new_random(), &session.token());
    Ok((url, addr))
}

/// Opens one connection; retries TCP errors and timeouts (not refusals,
/// which the report shows as close codes).
async fn connect(
    addr: SocketAddr,
    source: Option<IpAddr>,
    url: &str,
    timeout: Duration,
) -> Result<(Ws, Duration), ConnError> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        match wire::chat_connect(addr, source, url, timeout).await {
            Ok((ws, w)) => {
                return Ok((ws, Duration::from_millis(w.heartbeat_interval_ms.max(100))));
            }
            Err(e) if e.close_code().is_none() && e.is_retryable() && attempt < 3 => {
                tokio::time::sleep(Duration::from_millis(200 * attempt)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Holds a connection: a heartbeat every `hb` (first one at a random point
/// of the interval, so they spread), reading and dropping whatever comes.
async fn hold(mut ws: Ws, hb: Duration, stop: CancellationToken, counters: &Counters) -> HoldEnd {
    let mut next = Instant::now() + hb.mul_f64(rand::random::<f64>());
    let end = loop {
        tokio::select! {
            biased;
            _ = stop.cancelled() => {
                let _ = tokio::time::timeout(Duration::from_secs(5), ws.close(None)).await;
                Counters::sub(&counters.open, 1);
                return HoldEnd::Held;
            }
            m = ws.next() => match m {
                Some(Ok(WsMessage::Close(f))) => break wire::closed(f),
                Some(Ok(_)) => {}
                Some(Err(e)) => break ConnError::Handshake(e.to_string()),
                None => break wire::closed(None),
            },
            _ = tokio::time::sleep_until(next) => {
                next += hb;
                if let Err(e) = ws.send(wire::heartbeat_frame()).await {
                    break ConnError::Handshake(format!("heartbeat failed: {e}"));
                }
            }
        }
    };
    Counters::sub(&counters.open, 1);
    Counters::add(&counters.dropped, 1);
    HoldEnd::Dropped(end)
}

/// A child's line protocol with its parent: it says `signed_up`, waits for
/// `go`, says `ready N`, and holds until stdin closes.
struct ChildControl {
    stdin: tokio::io::Lines<BufReader<tokio::io::Stdin>>,
}

impl ChildControl {
    fn new() -> Self {
        Self {
            stdin: BufReader::new(tokio::io::stdin()).lines(),
        }
    }

    fn say(&self, line: &str) -> Result<()> {
        use std::io::Write as _;
        let mut out = std::io::stdout().lock();
        writeln!(out, "{line}")?;
        out.flush()?;
        Ok(())
    }

    async fn wait_go(&mut self) -> Result<()> {
        match tokio::time::timeout(Duration::from_secs(3600), self.stdin.next_line()).await {
            Ok(Ok(Some(l))) if l.trim() == "go" => Ok(()),
            _ => Err(BenchError::setup("the parent process did not say go")),
        }
    }

    async fn wait_stop(&mut self, cap: Duration) {
        let _ = tokio::time::timeout(cap, async {
            while let Ok(Some(_)) = self.stdin.next_line().await {}
        })
        .await;
    }
}

/// One child process of `--processes`.
struct Child {
    proc: tokio::process::Child,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    json: std::path::PathBuf,
}

impl Child {
    async fn expect(&mut self, prefix: &str, within: Duration) -> Result<String> {
        match tokio::time::timeout(within, self.lines.next_line()).await {
            Ok(Ok(Some(l))) if l.starts_with(prefix) => Ok(l),
            Ok(Ok(Some(l))) => Err(BenchError::setup(format!(
                "a load process said {l:?}, expected {prefix:?}"
            ))),
            Ok(_) => Err(BenchError::setup(
                "a load process exited early (its error is above)",
            )),
            Err(_) => Err(BenchError::setup(format!(
                "a load process did not say {prefix:?} within {} s",
                within.as_secs()
            ))),
        }
    }
}

/// `--processes K`: starts (or finds) the server, runs K children with a share
/// each, measures the server while all of them hold, and adds up.
async fn parent(args: &ConnectionsArgs, quiet: bool) -> Result<(ConnectionsReport, TargetInfo)> {
    let k = args.processes as u64;
    let ips = args.load.source_ips()?;
    check_ports(args.n, ips.len().max(1)).map_err(BenchError::Plan)?;
    let share = args.n.div_ceil(k);
    check_file_budget(share, 1).map_err(|m| {
        BenchError::Plan(format!(
            "with --processes {k}, each process holds {share}: {m}"
        ))
    })?;
    if args.target.embedded_server.is_some() {
        // The server's end of every connection is in this process.
        check_file_budget(args.n, 1).map_err(|m| {
            BenchError::Plan(format!(
                "the in-process server would hold every connection: {m} (use --spawn-server or \
                 --server for more)"
            ))
        })?;
    }
    let counters = Arc::new(Counters::default());
    let progress = Progress::start(quiet, "connections", counters.clone());
    progress.phase("starting the server");
    let target = Target::start(&args.target).await?;
    let info = TargetInfo::from(&target);
    let (server_files, warnings) = server_limits(&target, args.n, quiet);
    let dir = tempfile::Builder::new()
        .prefix("chat-bench-children-")
        .tempdir()?;
    let result = run_children(args, &target, &ips, dir.path(), &counters, &progress).await;
    progress.stop();
    target.stop().await;
    let mut report = result?;
    report.server_open_files = server_files;
    report.warnings = warnings;
    Ok((report, info))
}

async fn run_children(
    args: &ConnectionsArgs,
    target: &Target,
    ips: &[IpAddr],
    dir: &std::path::Path,
    counters: &Counters,
    progress: &Progress,
) -> Result<ConnectionsReport> {
    let k = args.processes as u64;
    let exe = std::env::current_exe()?;
    let mut children = Vec::new();
    let mut assigned = 0;
    for i in 0..k {
        let n_i = (args.n - assigned).div_ceil(k - i);
        assigned += n_i;
        if n_i == 0 {
            continue;
        }
        let json = dir.join(format!("child-{i}.json"));
        let mut cmd = tokio::process::Command::new(&exe);
        cmd.arg("connections")
            .args(["--server", &target.http_url])
            .args(["-n", &n_i.to_string()])
            .args(["--hold", &args.hold.to_string()])
            .args(["--conns-per-user", &args.conns_per_user.to_string()])
            .args([
                "--connect-concurrency",
                &args.load.connect_concurrency.to_string(),
            ])
            .args([
                "--signup-concurrency",
                &args.load.signup_concurrency.to_string(),
            ])
            .args(["--connect-timeout", &args.load.connect_timeout.to_string()])
            .arg("--json")
            .arg(&json)
            .args(["--child", "--quiet"]);
        if let Some(list) = &args.load.source_ips {
            cmd.args(["--source-ips", list]);
        }
        if args.via_route {
            cmd.arg("--via-route");
        }
        let mut proc = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()?;
        let stdout = proc
            .stdout
            .take()
            .ok_or_else(|| BenchError::setup("no stdout from a load process"))?;
        children.push(Child {
            proc,
            lines: BufReader::new(stdout).lines(),
            json,
        });
    }
    progress.phase("children signing up");
    for c in &mut children {
        c.expect("signed_up", Duration::from_secs(3600)).await?;
    }
    let rss_before = target.pid.and_then(|p| vm_rss_kib(p).ok());
    let mut watch = crate::watch::Watch::start(&args.watch)?;
    progress.phase("children connecting");
    let started = Instant::now();
    for c in &mut children {
        if let Some(stdin) = c.proc.stdin.as_mut() {
            stdin.write_all(b"go\n").await?;
            stdin.flush().await?;
        }
    }
    for c in &mut children {
        c.expect("ready", Duration::from_secs(3600)).await?;
        Counters::add(&counters.done, 1);
    }
    let connect_secs = started.elapsed().as_secs_f64();
    progress.phase("holding");
    let hold_started = Instant::now();
    let mut rss_after = None;
    if target.pid.is_some() {
        tokio::time::sleep(SETTLE).await;
        rss_after = target.pid.and_then(|p| vm_rss_kib(p).ok());
    }
    watch.connected();
    tokio::time::sleep(secs(args.hold).saturating_sub(hold_started.elapsed())).await;
    let watched = watch.finish();
    let server_connections = target.server().map(|s| s.connections() as u64);
    progress.phase("collecting");
    let mut total = ConnectionsReport {
        requested: args.n,
        processes: children.len(),
        connect_secs,
        server_rss_before_kib: rss_before,
        server_rss_after_kib: rss_after,
        // The load is in the children: this process only serves.
        server_in_load_process: false,
        server_connections,
        source_ips: ips.iter().map(ToString::to_string).collect(),
        watched,
        ..Default::default()
    };
    let mut close_codes: BTreeMap<u16, u64> = BTreeMap::new();
    for mut c in children {
        drop(c.proc.stdin.take());
        let status = tokio::time::timeout(Duration::from_secs(120), c.proc.wait()).await;
        if !matches!(status, Ok(Ok(_))) {
            let _ = c.proc.kill().await;
        }
        let text = std::fs::read_to_string(&c.json).map_err(|e| {
            BenchError::setup(format!(
                "no report from a load process ({}): {e}",
                c.json.display()
            ))
        })?;
        let child: RunReport = serde_json::from_str(&text)
            .map_err(|e| BenchError::setup(format!("bad report from a load process: {e}")))?;
        let Report::Connections(r) = child.report else {
            return Err(BenchError::setup(
                "a load process reported another scenario",
            ));
        };
        total.users += r.users;
        total.signup_secs = total.signup_secs.max(r.signup_secs);
        total.connected += r.connected;
        total.failed += r.failed;
        total.held += r.held;
        total.dropped += r.dropped;
        total.hold_secs = total.hold_secs.max(r.hold_secs);
        for (server, n) in r.per_server {
            *total.per_server.entry(server).or_default() += n;
        }
        for (code, n) in r.close_codes {
            *close_codes.entry(code).or_default() += n;
        }
        for e in r.errors {
            if total.errors.len() < ERROR_SAMPLES && !total.errors.contains(&e) {
                total.errors.push(e);
            }
        }
    }
    total.close_codes = close_codes;
    total.connect_rate_per_sec = total.connected as f64 / connect_secs.max(1e-3);
    if let (Some(b), Some(a)) = (rss_before, rss_after) {
        total.server_kib_per_connection =
            Some(a.saturating_sub(b) as f64 / total.connected.max(1) as f64);
    }
    Ok(total)
}
