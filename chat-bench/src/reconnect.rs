//! `reconnect-storm`: N clients connected and synced; all dropped at once
//! (the TCP connections just go, as when a network fails); messages sent to
//! their users while they are away; all reconnect at once and sync from the
//! cursor each kept. Measures the time until every client is back and
//! synced and checks that each has every message sent to its user.

use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use chat_core::protocol::{Event, ReplyBody, ServerFrame};
use chat_core::{ChannelId, DeviceId, Seq};
use futures::{SinkExt, StreamExt};
use tokio::sync::{watch, Semaphore};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message as WsMessage;

use crate::cli::ReconnectArgs;
use crate::error::{BenchError, Result};
use crate::limits::{check_file_budget, check_ports};
use crate::net::SourceIps;
use crate::progress::Progress;
use crate::report::{ReconnectReport, TargetInfo};
use crate::setup::{open_directs, run_prefix, signup_users};
use crate::stats::{Counters, Latency};
use crate::target::Target;
use crate::wire::{self, ConnError, Ws};

/// Error messages kept for the report.
const ERROR_SAMPLES: usize = 5;
/// Connections the sending user uses.
const SENDER_CONNS: usize = 4;
/// Sends in flight per sender connection.
const WINDOW: usize = 16;
/// Longest a phase may take.
const PHASE: Duration = Duration::from_secs(120);
/// Reconnect attempts per client.
const ATTEMPTS: u32 = 20;

/// Where the clients are told to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Stage {
    Run,
    /// Take the cursor: the last inbox position received with none missing.
    Prepare,
    /// Drop the connection without a close frame.
    Drop,
    /// Reconnect and sync from the cursor.
    Reconnect,
}

#[derive(Debug, Default)]
struct ClientResult {
    user: usize,
    /// Message ids received (by sync or live).
    have: HashSet<u64>,
    /// Their inbox positions.
    positions: HashSet<u64>,
    back: Option<Duration>,
    retries: u64,
    synced_messages: u64,
    already_had: u64,
    close_codes: Vec<u16>,
    error: Option<String>,
}

/// Runs `reconnect-storm`.
pub async fn reconnect_storm(
    args: &ReconnectArgs,
    quiet: bool,
) -> Result<(ReconnectReport, TargetInfo)> {
    let n = args.n;
    if n == 0 {
        return Err(BenchError::plan("-n must be at least 1"));
    }
    let ips = args.load.source_ips()?;
    let conns = n + SENDER_CONNS as u64;
    check_ports(conns, ips.len().max(1)).map_err(BenchError::Plan)?;
    let fds = if args.target.embedded_server.is_some() {
        2
    } else {
        1
    };
    check_file_budget(conns, fds).map_err(BenchError::Plan)?;
    let counters = Arc::new(Counters::default());
    let progress = Progress::start(quiet, "reconnect-storm", counters.clone());
    progress.phase("starting the server");
    let target = Target::start(&args.target).await?;
    let info = TargetInfo::from(&target);
    let result = storm(args, &target, &ips, &counters, &progress).await;
    progress.stop();
    target.stop().await;
    Ok((result?, info))
}

async fn storm(
    args: &ReconnectArgs,
    target: &Target,
    ips: &[IpAddr],
    counters: &Arc<Counters>,
    progress: &Progress,
) -> Result<ReconnectReport> {
    let n = args.n;
    let per_user = args.conns_per_user.clamp(1, 9);
    let n_users = n.div_ceil(per_user) as usize;
    progress.phase("signing up");
    let mut users = signup_users(
        &target.client,
        &run_prefix(),
        n_users + 1,
        args.load.signup_concurrency,
        counters,
    )
    .await?;
    let Some(sender) = users.pop() else {
        return Err(BenchError::setup("no sender user"));
    };
    progress.phase("opening channels");
    let pairs: Vec<_> = users.iter().map(|u| (&sender, u)).collect();
    let channels = open_directs(&pairs, args.load.signup_concurrency).await?;

    // The sender's connections.
    let timeout = args.load.connect_timeout();
    let mut senders = Vec::new();
    for _ in 0..SENDER_CONNS.min(n_users) {
        let url = wire::chat_url(&target.ws_url, DeviceId::new_random(), &sender.token);
        let (ws, _) = wire::chat_connect(target.ws_addr, None, &url, timeout).await?;
        senders.push(ws);
    }

    progress.phase("connecting");
    let (stage_tx, stage_rx) = watch::channel(Stage::Run);
    let sem = Arc::new(Semaphore::new(args.load.connect_concurrency.max(1)));
    let sources = Arc::new(SourceIps::new(ips.to_vec()));
    let back_latency = Latency::new();
    let reconnect_at: Arc<std::sync::Mutex<Option<Instant>>> = Arc::default();
    let mut handles = Vec::with_capacity(n as usize);
    for i in 0..n {
        let user = (i / per_user) as usize;
        let spec = ClientSpec {
            user,
            url: wire::chat_url(&target.ws_url, DeviceId::new_random(), &users[user].token),
            addr: target.ws_addr,
            sources: sources.clone(),
            timeout,
            sem: sem.clone(),
        };
        handles.push(tokio::spawn(client(
            spec,
            stage_rx.clone(),
            counters.clone(),
            reconnect_at.clone(),
        )));
    }
    wait_for(
        || Counters::get(&counters.connected) + Counters::get(&counters.connect_failures) >= n,
        PHASE,
    )
    .await;
    let connected = Counters::get(&counters.connected);
    let devices_of = |u: usize| -> u64 { (n - u as u64 * per_user).min(per_user) };

    // Before the drop: one message per user, delivered live.
    progress.phase("sending before the drop");
    let items: Vec<(usize, ChannelId)> = channels.iter().copied().enumerate().collect();
    let before = send_all(&mut senders, &items, "p").await?;
    let expected_live: u64 = before.iter().map(|(u, _)| devices_of(*u)).sum();
    wait_for(
        || Counters::get(&counters.delivered) >= expected_live,
        Duration::from_secs(30),
    )
    .await;

    progress.phase("taking cursors");
    let _ = stage_tx.send(Stage::Prepare);
    wait_for(
        || Counters::get(&counters.done) + Counters::get(&counters.errors) >= connected,
        PHASE,
    )
    .await;
    Counters::sub(&counters.done, Counters::get(&counters.done));
    let failed_before = Counters::get(&counters.errors);

    progress.phase("dropping");
    let _ = stage_tx.send(Stage::Drop);
    wait_for(
        || Counters::get(&counters.open) == 0,
        Duration::from_secs(30),
    )
    .await;
    // Let the server notice the drops (an in-process server says when).
    match target.server() {
        Some(s) => {
            let own = senders.len();
            wait_for(|| s.connections() <= own, Duration::from_secs(30)).await;
        }
        None => tokio::time::sleep(Duration::from_secs(1)).await,
    }

    progress.phase("sending while away");
    let mut away_items = Vec::with_capacity(items.len() * args.away as usize);
    for _ in 0..args.away {
        away_items.extend(items.iter().copied());
    }
    let away = send_all(&mut senders, &away_items, "a").await?;

    progress.phase("reconnecting");
    let t0 = Instant::now();
    *reconnect_at.lock().unwrap_or_else(|p| p.into_inner()) = Some(t0);
    let _ = stage_tx.send(Stage::Reconnect);
    wait_for(
        || {
            Counters::get(&counters.done) + Counters::get(&counters.errors) - failed_before
                >= connected - failed_before
        },
        PHASE + PHASE,
    )
    .await;

    for mut s in senders {
        let _ = tokio::time::timeout(Duration::from_secs(2), s.close(None)).await;
    }
    let mut expected: Vec<Vec<u64>> = vec![Vec::new(); n_users];
    for (u, id) in before.iter().chain(&away) {
        expected[*u].push(*id);
    }
    let mut report = ReconnectReport {
        clients: n,
        users: n_users as u64,
        messages_before: before.len() as u64,
        messages_away: away.len() as u64,
        ..Default::default()
    };
    let mut close_codes: BTreeMap<u16, u64> = BTreeMap::new();
    let mut slowest = Duration::ZERO;
    let mut lat = back_latency.buffer();
    let join_deadline = Instant::now() + Duration::from_secs(30);
    for h in handles {
        let abort = h.abort_handle();
        let r = match tokio::time::timeout_at(join_deadline, h).await {
            Ok(Ok(r)) => r,
            _ => {
                abort.abort();
                report.failed += 1;
                continue;
            }
        };
        report.retries += r.retries;
        report.synced_messages += r.synced_messages;
        report.already_had += r.already_had;
        for c in &r.close_codes {
            *close_codes.entry(*c).or_default() += 1;
        }
        if let Some(e) = &r.error {
            if report.errors.len() < ERROR_SAMPLES && !report.errors.contains(e) {
                report.errors.push(e.clone());
            }
        }
        match r.back {
            Some(d) => {
                report.synced += 1;
                slowest = slowest.max(d);
                lat.record(d.as_micros() as u64);
            }
            None => report.failed += 1,
        }
        report.lost += expected[r.user]
            .iter()
            .filter(|id| !r.have.contains(id))
            .count() as u64;
    }
    drop(lat);
    report.all_back_secs = slowest.as_secs_f64();
    report.back_latency = back_latency.summary();
    report.close_codes = close_codes;
    Ok(report)
}

async fn wait_for(mut done: impl FnMut() -> bool, within: Duration) {
    let deadline = Instant::now() + within;
    while !done() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Sends one message per item over the sender connections (split evenly),
/// retrying retryable errors; returns `(user, message id)` of each ack.
async fn send_all(
    senders: &mut [Ws],
    items: &[(usize, ChannelId)],
    tag: &str,
) -> Result<Vec<(usize, u64)>> {
    let k = senders.len().max(1);
    let chunk = items.len().div_ceil(k).max(1);
    let jobs = senders
        .iter_mut()
        .zip(items.chunks(chunk))
        .enumerate()
        .map(|(c, (ws, part))| send_part(ws, part, format!("{tag}{c}")));
    let parts = futures::future::join_all(jobs).await;
    let mut out = Vec::with_capacity(items.len());
    for p in parts {
        out.extend(p?);
    }
    Ok(out)
}

async fn send_part(
    ws: &mut Ws,
    items: &[(usize, ChannelId)],
    tag: String,
) -> Result<Vec<(usize, u64)>> {
    let deadline = Instant::now() + PHASE;
    let mut out = Vec::with_capacity(items.len());
    let mut queue: std::collections::VecDeque<(usize, u32)> =
        (0..items.len()).map(|i| (i, 0)).collect();
    let mut inflight = 0usize;
    let mut attempts = vec![0u32; items.len()];
    let frame = |i: usize| {
        let (user, ch) = items[i];
        wire::send_frame(
            format!("s{i}"),
            ch,
            &format!("{tag}-{i}"),
            format!("storm {tag} {i} to user {user}"),
        )
    };
    while out.len() < items.len() {
        if Instant::now() >= deadline {
            return Err(BenchError::setup(
                "sending to the storm's users took too long",
            ));
        }
        let mut fed = false;
        while inflight < WINDOW {
            let Some((i, _)) = queue.pop_front() else {
                break;
            };
            attempts[i] += 1;
            ws.feed(frame(i))
                .await
                .map_err(|e| BenchError::setup(format!("send: {e}")))?;
            inflight += 1;
            fed = true;
        }
        if fed {
            ws.flush()
                .await
                .map_err(|e| BenchError::setup(format!("send: {e}")))?;
        }
        let m = tokio::time::timeout_at(deadline, ws.next())
            .await
            .map_err(|_| BenchError::setup("no reply to a send"))?;
        let text = match m {
            Some(Ok(WsMessage::Text(t))) => t,
            Some(Ok(WsMessage::Close(f))) => return Err(wire::closed(f).into()),
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(BenchError::setup(format!("sender connection: {e}"))),
            None => return Err(wire::closed(None).into()),
        };
        let Some(ServerFrame::Reply(reply)) = wire::decode(&text) else {
            continue;
        };
        let Some(i) = reply
            .id
            .as_deref()
            .and_then(|id| id.strip_prefix('s'))
            .and_then(|s| s.parse::<usize>().ok())
            .filter(|i| *i < items.len())
        else {
            continue;
        };
        inflight = inflight.saturating_sub(1);
        match reply.into_result() {
            Ok(ReplyBody::Sent { message_id, .. }) => out.push((items[i].0, message_id.0)),
            Err(e) if e.retryable && attempts[i] < 50 => {
                tokio::time::sleep(Duration::from_millis(20)).await;
                queue.push_back((i, attempts[i]));
            }
            Err(e) => return Err(BenchError::setup(format!("send refused: {e}"))),
            Ok(other) => return Err(BenchError::setup(format!("unexpected reply: {other:?}"))),
        }
    }
    Ok(out)
}

struct ClientSpec {
    user: usize,
    url: String,
    addr: std::net::SocketAddr,
    sources: Arc<SourceIps>,
    timeout: Duration,
    sem: Arc<Semaphore>,
}

/// One client through every stage.
async fn client(
    spec: ClientSpec,
    mut stage: watch::Receiver<Stage>,
    counters: Arc<Counters>,
    reconnect_at: Arc<std::sync::Mutex<Option<Instant>>>,
) -> ClientResult {
    let mut res = ClientResult {
        user: spec.user,
        ..Default::default()
    };
    // Connect and sync from the stored cursor.
    let first = {
        let _permit = spec.sem.acquire().await;
        connect_retrying(&spec, &mut res).await
    };
    let (mut ws, hb) = match first {
        Ok(v) => v,
        Err(e) => {
            Counters::add(&counters.connect_failures, 1);
            res.error = Some(e.to_string());
            return res;
        }
    };
    Counters::add(&counters.connected, 1);
    Counters::add(&counters.open, 1);
    if let Err(e) = sync(&mut ws, Seq::ZERO, &mut res, &counters, false).await {
        return fail(res, &counters, e);
    }
    // Live until told to take the cursor.
    let mut next_hb = Instant::now() + hb;
    while *stage.borrow() < Stage::Prepare {
        tokio::select! {
            _ = stage.changed() => {}
            m = ws.next() => {
                if let Err(e) = on_frame(m, &mut res, &counters) {
                    return fail(res, &counters, e);
                }
            }
            _ = tokio::time::sleep_until(next_hb) => {
                next_hb += hb;
                if ws.send(wire::heartbeat_frame()).await.is_err() {
                    return fail(res, &counters, ConnError::Timeout("heartbeat"));
                }
            }
        }
    }
    // The cursor: every position up to it received (by sync or live).
    let mut cursor = Seq::ZERO;
    while res.positions.contains(&(cursor.0 + 1)) {
        cursor = cursor.next();
    }
    Counters::add(&counters.done, 1);
    while *stage.borrow_and_update() < Stage::Drop {
        if stage.changed().await.is_err() {
            break;
        }
    }
    // Gone, as when the network fails: no close frame.
    drop(ws);
    Counters::sub(&counters.open, 1);
    while *stage.borrow_and_update() < Stage::Reconnect {
        if stage.changed().await.is_err() {
            break;
        }
    }
    let t0 = reconnect_at
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .unwrap_or_else(Instant::now);
    let again = {
        let _permit = spec.sem.acquire().await;
        connect_retrying(&spec, &mut res).await
    };
    let (mut ws, _) = match again {
        Ok(v) => v,
        Err(e) => return fail(res, &counters, e),
    };
    Counters::add(&counters.open, 1);
    if let Err(e) = sync(&mut ws, cursor, &mut res, &counters, true).await {
        return fail(res, &counters, e);
    }
    res.back = Some(t0.elapsed());
    Counters::add(&counters.done, 1);
    let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(None)).await;
    Counters::sub(&counters.open, 1);
    res
}

fn fail(mut res: ClientResult, counters: &Counters, e: ConnError) -> ClientResult {
    Counters::add(&counters.errors, 1);
    res.error = Some(e.to_string());
    res
}

async fn connect_retrying(
    spec: &ClientSpec,
    res: &mut ClientResult,
) -> Result<(Ws, Duration), ConnError> {
    let mut pause = Duration::from_millis(50);
    let mut attempt = 0;
    loop {
        attempt += 1;
        match wire::chat_connect(spec.addr, spec.sources.next(), &spec.url, spec.timeout).await {
            Ok((ws, w)) => {
                return Ok((ws, Duration::from_millis(w.heartbeat_interval_ms.max(100))))
            }
            Err(e) => {
                if let Some(code) = e.close_code() {
                    res.close_codes.push(code);
                }
                if !e.is_retryable() || attempt >= ATTEMPTS {
                    return Err(e);
                }
                res.retries += 1;
                // Full jitter, as the SDK does.
                tokio::time::sleep(pause.mul_f64(rand::random::<f64>())).await;
                pause = (pause * 2).min(Duration::from_secs(2));
            }
        }
    }
}

/// Handles one frame: live messages' inbox positions go into `have`.
fn on_frame(
    m: Option<std::result::Result<WsMessage, tokio_tungstenite::tungstenite::Error>>,
    res: &mut ClientResult,
    counters: &Counters,
) -> Result<(), ConnError> {
    let text = match m {
        Some(Ok(WsMessage::Text(t))) => t,
        Some(Ok(WsMessage::Close(f))) => return Err(wire::closed(f)),
        Some(Ok(_)) => return Ok(()),
        Some(Err(e)) => return Err(ConnError::Handshake(e.to_string())),
        None => return Err(wire::closed(None)),
    };
    if let Some(ServerFrame::Event(Event::Message { seq, message })) = wire::decode(&text) {
        res.positions.insert(seq.0);
        Counters::add(
            &counters.delivered,
            u64::from(res.have.insert(message.id.0)),
        );
    }
    Ok(())
}

/// Pages the inbox after position `after` until the end.
async fn sync(
    ws: &mut Ws,
    mut after: Seq,
    res: &mut ClientResult,
    counters: &Counters,
    count: bool,
) -> Result<(), ConnError> {
    let deadline = Instant::now() + PHASE;
    for page in 0..10_000u32 {
        let id = format!("y{page}");
        ws.send(wire::sync_frame(id.clone(), after, 200))
            .await
            .map_err(|e| ConnError::Handshake(e.to_string()))?;
        let (entries, has_more) = loop {
            let m = tokio::time::timeout_at(deadline, ws.next())
                .await
                .map_err(|_| ConnError::Timeout("sync reply"))?;
            let text = match m {
                Some(Ok(WsMessage::Text(t))) => t,
                Some(Ok(WsMessage::Close(f))) => return Err(wire::closed(f)),
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(ConnError::Handshake(e.to_string())),
                None => return Err(wire::closed(None)),
            };
            match wire::decode(&text) {
                Some(ServerFrame::Reply(r)) if r.id.as_deref() == Some(id.as_str()) => {
                    match r.into_result() {
                        Ok(ReplyBody::Synced { entries, has_more }) => break (entries, has_more),
                        Ok(_) => return Err(ConnError::Protocol("unexpected sync reply".into())),
                        Err(e) => return Err(ConnError::Protocol(format!("sync refused: {e}"))),
                    }
                }
                Some(ServerFrame::Event(Event::Message { seq, message })) => {
                    res.positions.insert(seq.0);
                    Counters::add(
                        &counters.delivered,
                        u64::from(res.have.insert(message.id.0)),
                    );
                }
                _ => {}
            }
        };
        for e in &entries {
            res.positions.insert(e.seq.0);
            if e.change.is_some() {
                // A change entry (an edit, a deletion, a reaction) holds
                // a position of the inbox but is no message.
                after = e.seq;
                continue;
            }
            if count {
                res.synced_messages += 1;
                if !res.have.insert(e.message.id.0) {
                    res.already_had += 1;
                }
            } else {
                res.have.insert(e.message.id.0);
            }
            after = e.seq;
        }
        if !has_more || entries.is_empty() {
            break;
        }
    }
    Ok(())
}
