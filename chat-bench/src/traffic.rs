//! The message engine behind `one-to-one`, `group` and `baseline`: load
//! connections that send stamped messages (at a rate, or as fast as a window
//! of in-flight requests allows) and record every delivery, then a check
//! that every acknowledged message reached every recipient exactly once.
//!
//! Each connection is one task that owns its socket: it feeds send requests,
//! heartbeats and (at the end) sync requests, and reads replies and events.
//! A run goes through three phases:
//!
//! 1. **send** until the deadline;
//! 2. **drain**: senders wait for their last replies and hand their logs (which
//!    sequence numbers were acknowledged, with which message ids) to the
//!    coordinator, which gives every recipient the full expectation;
//! 3. **check**: each recipient waits for what it still misses; on the chat
//!    protocol it then syncs its inbox from the oldest missing id, so a
//!    message that missed the live path (a dropped connection) is told apart
//!    from one that is lost.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use chat_core::protocol::{Event, ReplyBody, ServerFrame};
use chat_core::{ChannelId, Seq};
use futures::stream::{self, StreamExt};
use futures::SinkExt;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message as WsMessage;

use crate::error::{BenchError, Result};
use crate::payload::{self, Stamp};
use crate::relay::{self, RelayFrame};
use crate::stats::{Counters, Latency, LatencyBuffer, LatencySummary};
use crate::wire::{self, ConnError, Ws};

/// Most messages one sender sends in a run (bounds memory and time).
pub const MAX_SEQ: usize = 5_000_000;
/// Attempts of one send that keeps failing with retryable errors.
const MAX_ATTEMPTS: u8 = 30;
/// Reconnect attempts of a connection that dropped during a run.
const RECONNECTS: u32 = 10;
/// Sync pages a recipient reads when checking what it missed.
const MAX_SYNC_PAGES: u32 = 2_000;
/// Page size of those syncs.
const SYNC_PAGE: u32 = 1_000;
/// Error messages kept for the report.
const ERROR_SAMPLES: usize = 5;

/// Which protocol the load speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Wire {
    /// The chat protocol (`chat_core::protocol`).
    Chat,
    /// The baseline relay's protocol ([`crate::relay`]).
    Relay,
}

/// Where a sender's messages go.
#[derive(Debug, Clone, Copy)]
pub enum SendTo {
    /// A chat channel.
    Channel(ChannelId),
    /// A relay connection id.
    Peer(u32),
}

/// What one sending connection does.
#[derive(Debug, Clone)]
pub struct SendSpec {
    /// Global sender index (in every stamp).
    pub sender: u32,
    /// Destination.
    pub to: SendTo,
    /// Messages per second, or `None` for as fast as the window allows.
    pub rate: Option<f64>,
}

/// One load connection of a traffic run.
#[derive(Debug, Clone)]
pub struct ConnSpec {
    /// Full WebSocket URL (query included).
    pub url: String,
    /// Server address.
    pub addr: SocketAddr,
    /// Source address to bind.
    pub source: Option<IpAddr>,
    /// What it sends, if it sends.
    pub send: Option<SendSpec>,
    /// The senders whose every acknowledged message it must receive.
    pub expects_from: Vec<u32>,
}

/// Knobs of a traffic run.
#[derive(Debug, Clone)]
pub struct TrafficOpts {
    /// Protocol.
    pub wire: Wire,
    /// How long senders send.
    pub duration: Duration,
    /// In-flight requests per sending connection.
    pub window: usize,
    /// Content size in bytes.
    pub size: usize,
    /// Connections opened at once during setup.
    pub connect_concurrency: usize,
    /// Longest wait for the last replies and deliveries after the deadline.
    pub drain: Duration,
    /// Timeout of each connect step.
    pub connect_timeout: Duration,
}

/// What a traffic run measured.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TrafficOutcome {
    /// Connections opened.
    pub connections: u64,
    /// Seconds spent opening them.
    pub connect_secs: f64,
    /// Seconds senders sent (the duration).
    pub send_secs: f64,
    /// Distinct messages sent.
    pub messages_sent: u64,
    /// Messages acknowledged (stored, for the chat protocol).
    pub acked: u64,
    /// Messages refused with a non-retryable error or out of retries.
    pub failed: u64,
    /// Messages with no answer at the end (connection lost, drain timeout).
    pub unanswered: u64,
    /// Acknowledgements per second, over the time to the last one.
    pub acked_per_sec: f64,
    /// Deliveries an acknowledged message owes: one per recipient.
    pub expected_deliveries: u64,
    /// Distinct deliveries of acknowledged messages on the live path.
    pub delivered: u64,
    /// Deliveries per second, over the time to the last one.
    pub delivered_per_sec: f64,
    /// Deliveries missing from the live path but found by sync.
    pub recovered_by_sync: u64,
    /// Deliveries of acknowledged messages never received: a failure.
    pub lost: u64,
    /// Deliveries beyond the first: a failure.
    pub duplicated: u64,
    /// Deliveries of messages whose send was not acknowledged (allowed).
    pub delivered_unacked: u64,
    /// Error replies, rate-limited ones included.
    pub error_replies: u64,
    /// `rate_limited` replies (each retried with the same client message id).
    pub rate_limited: u64,
    /// Sends answered as duplicates of an earlier attempt.
    pub duplicate_acks: u64,
    /// Connections that dropped during the run.
    pub disconnects: u64,
    /// Successful reconnects.
    pub reconnects: u64,
    /// Send to delivery, per delivery.
    pub latency: LatencySummary,
    /// Send to acknowledgement, per send attempt.
    pub ack_latency: LatencySummary,
    /// A few error messages seen.
    pub error_samples: Vec<String>,
}

impl TrafficOutcome {
    /// Correctness problems found (empty when every acknowledged message was
    /// delivered exactly once).
    pub fn failures(&self) -> Vec<String> {
        let mut f = Vec::new();
        if self.lost > 0 {
            f.push(format!("{} acknowledged deliveries lost", self.lost));
        }
        if self.duplicated > 0 {
            f.push(format!("{} deliveries duplicated", self.duplicated));
        }
        if self.acked == 0 {
            f.push("no message was acknowledged".into());
        }
        if self.unanswered > 0 {
            f.push(format!("{} sends never answered", self.unanswered));
        }
        f
    }
}

/// Per-message record of a sender.
#[derive(Debug, Clone, Copy, Default)]
struct SeqEntry {
    sent_us: u64,
    msg_id: u64,
    state: SeqState,
    attempts: u8,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum SeqState {
    #[default]
    Pending,
    Acked,
    Failed,
}

type SendLog = Arc<Vec<SeqEntry>>;
type Expected = HashMap<u32, SendLog>;

struct Ctx {
    wire: Wire,
    deadline: Instant,
    drain_until: Instant,
    window: usize,
    size: usize,
    connect_timeout: Duration,
    counters: Arc<Counters>,
    latency: Latency,
    ack_latency: Latency,
    logs: mpsc::UnboundedSender<(u32, SendLog)>,
}

#[derive(Debug, Default)]
struct ConnResult {
    counts: HashMap<u32, Vec<u8>>,
    recovered: HashSet<(u32, u32)>,
    disconnects: u64,
    reconnects: u64,
    last_ack_us: u64,
    last_delivery_us: u64,
    error_replies: u64,
    rate_limited: u64,
    duplicate_acks: u64,
    errors: Vec<String>,
}

impl ConnResult {
    fn error(&mut self, e: impl std::fmt::Display) {
        if self.errors.len() < ERROR_SAMPLES {
            self.errors.push(e.to_string());
        }
    }
}

/// An opened connection and its heartbeat interval, or why it failed.
type Opened = Result<(Ws, Option<Duration>), ConnError>;

/// Opens one connection of `wire`, retrying retryable failures a few times.
/// Returns the socket and the heartbeat interval the server asked for.
async fn connect(wire: Wire, spec: &ConnSpec, timeout: Duration) -> Opened {
    let mut pause = Duration::from_millis(50);
    let mut attempt = 0;
    loop {
        attempt += 1;
        let r = match wire {
            Wire::Chat => wire::chat_connect(spec.addr, spec.source, &spec.url, timeout)
                .await
                .map(|(ws, w)| {
                    (
                        ws,
                        Some(Duration::from_millis(w.heartbeat_interval_ms.max(100))),
                    )
                }),
            Wire::Relay => relay_connect(spec, timeout).await.map(|ws| (ws, None)),
        };
        match r {
            Ok(v) => return Ok(v),
            Err(e) if e.is_retryable() && attempt < 5 => {
                tokio::time::sleep(pause).await;
                pause *= 2;
            }
            Err(e) => return Err(e),
        }
    }
}

async fn relay_connect(spec: &ConnSpec, timeout: Duration) -> Result<Ws, ConnError> {
    let mut ws = wire::open_ws(spec.addr, spec.source, &spec.url, timeout).await?;
    let first = tokio::time::timeout(timeout, ws.next())
        .await
        .map_err(|_| ConnError::Timeout("relay welcome"))?;
    match first {
        Some(Ok(WsMessage::Text(t))) if relay::parse(&t) == Some(RelayFrame::Welcome) => Ok(ws),
        Some(Ok(WsMessage::Close(f))) => Err(wire::closed(f)),
        other => Err(ConnError::Protocol(format!(
            "unexpected first relay frame: {other:?}"
        ))),
    }
}

/// Runs the traffic described by `specs` and checks delivery.
pub async fn run(
    specs: Vec<ConnSpec>,
    opts: &TrafficOpts,
    counters: Arc<Counters>,
) -> Result<TrafficOutcome> {
    payload::now_us();
    let connect_started = Instant::now();
    let wire_kind = opts.wire;
    let timeout = opts.connect_timeout;
    let mut opened: Vec<(usize, Opened)> = stream::iter(specs.iter().enumerate())
        .map(|(i, spec)| {
            let counters = counters.clone();
            async move {
                let r = connect(wire_kind, spec, timeout).await;
                match &r {
                    Ok(_) => {
                        Counters::add(&counters.connected, 1);
                        Counters::add(&counters.open, 1);
                    }
                    Err(_) => Counters::add(&counters.connect_failures, 1),
                }
                (i, r)
            }
        })
        .buffer_unordered(opts.connect_concurrency.max(1))
        .collect()
        .await;
    opened.sort_by_key(|(i, _)| *i);
    let connect_secs = connect_started.elapsed().as_secs_f64();
    let failures = opened.iter().filter(|(_, r)| r.is_err()).count();
    if let Some((_, Err(e))) = opened.iter().find(|(_, r)| r.is_err()) {
        return Err(BenchError::setup(format!(
            "{failures} of {} connections could not be opened; first error: {e}",
            specs.len()
        )));
    }

    let start = Instant::now();
    let deadline = start + opts.duration;
    let drain_until = deadline + opts.drain;
    let (logs_tx, mut logs_rx) = mpsc::unbounded_channel();
    let (expected_tx, expected_rx) = watch::channel::<Option<Arc<Expected>>>(None);
    let ctx = Arc::new(Ctx {
        wire: opts.wire,
        deadline,
        drain_until,
        window: opts.window.max(1),
        size: opts.size,
        connect_timeout: opts.connect_timeout,
        counters: counters.clone(),
        latency: Latency::new(),
        ack_latency: Latency::new(),
        logs: logs_tx,
    });
    let senders = specs.iter().filter(|s| s.send.is_some()).count();
    let mut tasks = Vec::with_capacity(specs.len());
    for (spec, (_, conn)) in specs.into_iter().zip(opened) {
        let Ok((ws, hb)) = conn else { continue };
        tasks.push(tokio::spawn(conn_task(
            ctx.clone(),
            spec,
            ws,
            hb,
            expected_rx.clone(),
        )));
    }

    // Drain: collect every sender's log, then tell recipients what to expect.
    let mut logs: Expected = HashMap::with_capacity(senders);
    while logs.len() < senders {
        match tokio::time::timeout_at(drain_until + Duration::from_secs(2), logs_rx.recv()).await {
            Ok(Some((sender, log))) => {
                logs.insert(sender, log);
            }
            _ => break,
        }
    }
    let logs = Arc::new(logs);
    let _ = expected_tx.send(Some(logs.clone()));

    let mut results = Vec::with_capacity(tasks.len());
    let join_deadline = drain_until + Duration::from_secs(60);
    for t in tasks {
        let abort = t.abort_handle();
        match tokio::time::timeout_at(join_deadline, t).await {
            Ok(Ok(r)) => results.push(r),
            Ok(Err(_)) => results.push(None),
            Err(_) => {
                abort.abort();
                results.push(None);
            }
        }
    }

    let mut out = TrafficOutcome {
        connections: results.len() as u64,
        connect_secs,
        send_secs: opts.duration.as_secs_f64(),
        latency: ctx.latency.summary(),
        ack_latency: ctx.ack_latency.summary(),
        ..Default::default()
    };
    let start_us = payload::instant_us(start.into_std());
    let mut last_ack_us = start_us;
    let mut last_delivery_us = start_us;
    for log in logs.values() {
        out.messages_sent += log.len() as u64;
        for e in log.iter() {
            match e.state {
                SeqState::Acked => out.acked += 1,
                SeqState::Failed => out.failed += 1,
                SeqState::Pending => out.unanswered += 1,
            }
        }
    }
    for (spec_expects, r) in expects_of(&results) {
        let Some(r) = r else {
            out.error_samples
                .push("a connection task did not finish".into());
            continue;
        };
        last_ack_us = last_ack_us.max(r.last_ack_us);
        last_delivery_us = last_delivery_us.max(r.last_delivery_us);
        out.error_replies += r.error_replies;
        out.rate_limited += r.rate_limited;
        out.duplicate_acks += r.duplicate_acks;
        out.disconnects += r.disconnects;
        out.reconnects += r.reconnects;
        for e in &r.errors {
            if out.error_samples.len() < ERROR_SAMPLES && !out.error_samples.contains(e) {
                out.error_samples.push(e.clone());
            }
        }
        for sender in spec_expects {
            let Some(log) = logs.get(sender) else {
                continue;
            };
            let counts = r.counts.get(sender);
            for (seq, e) in log.iter().enumerate() {
                let c = counts.and_then(|c| c.get(seq)).copied().unwrap_or(0) as u64;
                if e.state == SeqState::Acked {
                    out.expected_deliveries += 1;
                    if c == 0 {
                        if r.recovered.contains(&(*sender, seq as u32)) {
                            out.recovered_by_sync += 1;
                        } else {
                            out.lost += 1;
                        }
                    } else {
                        out.delivered += 1;
                    }
                } else if c > 0 {
                    out.delivered_unacked += 1;
                }
                out.duplicated += c.saturating_sub(1);
            }
        }
    }
    let secs = |until: u64| (until.saturating_sub(start_us) as f64 / 1e6).max(1e-3);
    out.acked_per_sec = out.acked as f64 / secs(last_ack_us);
    out.delivered_per_sec = out.delivered as f64 / secs(last_delivery_us);
    Ok(out)
}

fn expects_of(
    results: &[Option<(Vec<u32>, ConnResult)>],
) -> impl Iterator<Item = (&[u32], Option<&ConnResult>)> {
    results.iter().map(|r| match r {
        Some((e, r)) => (e.as_slice(), Some(r)),
        None => (&[][..], None),
    })
}

/// The sending half of a connection.
struct Sender {
    spec: SendSpec,
    log: Vec<SeqEntry>,
    /// `(seq, sent at)` in request order (replies come back in that order).
    inflight: VecDeque<(u32, Instant)>,
    retry: VecDeque<(Instant, u32)>,
    interval: Option<Duration>,
    next_due: Instant,
}

impl Sender {
    fn new(spec: SendSpec, start: Instant) -> Self {
        let interval = spec
            .rate
            .filter(|r| *r > 0.0)
            .map(|r| Duration::from_secs_f64(1.0 / r));
        // Spread the first sends over one interval so senders do not beat
        // in step.
        let phase = interval
            .map(|iv| iv.mul_f64(rand::random::<f64>()))
            .unwrap_or_default();
        Self {
            spec,
            log: Vec::new(),
            inflight: VecDeque::new(),
            retry: VecDeque::new(),
            interval,
            next_due: start + phase,
        }
    }

    fn idle(&self) -> bool {
        self.inflight.is_empty() && self.retry.is_empty()
    }

    /// Feeds due retries and new sends into `ws`; returns how many.
    async fn pump(&mut self, ws: &mut Ws, ctx: &Ctx) -> Result<usize, ConnError> {
        let now = Instant::now();
        let mut n = 0;
        while self.inflight.len() < ctx.window {
            match self.retry.front() {
                Some(&(due, seq)) if due <= now => {
                    self.retry.pop_front();
                    self.transmit(ws, seq, ctx).await?;
                    n += 1;
                }
                _ => break,
            }
        }
        if now >= ctx.deadline {
            return Ok(n);
        }
        while self.inflight.len() < ctx.window && self.log.len() < MAX_SEQ {
            let sent_us = match self.interval {
                Some(iv) => {
                    if self.next_due > now || self.next_due >= ctx.deadline {
                        break;
                    }
                    let due = self.next_due;
                    self.next_due += iv;
                    // Stamped with the scheduled time, so a send held back by
                    // a full window counts its wait (no coordinated omission).
                    payload::instant_us(due.into_std())
                }
                None => payload::now_us(),
            };
            let seq = self.log.len() as u32;
            self.log.push(SeqEntry {
                sent_us,
                ..Default::default()
            });
            self.transmit(ws, seq, ctx).await?;
            n += 1;
        }
        Ok(n)
    }

    async fn transmit(&mut self, ws: &mut Ws, seq: u32, ctx: &Ctx) -> Result<(), ConnError> {
        let entry = &mut self.log[seq as usize];
        entry.attempts = entry.attempts.saturating_add(1);
        let content = payload::encode(
            Stamp {
                sender: self.spec.sender,
                seq,
                sent_us: entry.sent_us,
            },
            ctx.size,
        );
        let req = format!("s{seq}");
        let frame = match self.spec.to {
            SendTo::Channel(ch) => wire::send_frame(req, ch, &format!("c{seq}"), content),
            SendTo::Peer(to) => relay::send_frame(to, &req, &content),
        };
        self.inflight.push_back((seq, Instant::now()));
        Counters::add(&ctx.counters.sent, 1);
        ws.feed(frame)
            .await
            .map_err(|e| ConnError::Handshake(format!("send failed: {e}")))
    }

    /// When the sender next needs the task to wake up.
    fn next_wake(&self, ctx: &Ctx, now: Instant) -> Instant {
        let mut wake = ctx.drain_until;
        if self.inflight.len() < ctx.window {
            if let Some(&(due, _)) = self.retry.front() {
                wake = wake.min(due);
            }
            if now < ctx.deadline {
                wake = wake.min(ctx.deadline);
                if self.interval.is_some() {
                    wake = wake.min(self.next_due);
                }
            }
        }
        wake
    }

    /// Handles the answer to send `seq`.
    fn answered(
        &mut self,
        seq: u32,
        outcome: std::result::Result<(u64, bool), (bool, bool, String)>,
        ctx: &Ctx,
        res: &mut ConnResult,
        ack_lat: &mut LatencyBuffer,
    ) {
        let pos = self.inflight.iter().position(|(s, _)| *s == seq);
        let Some(pos) = pos else { return };
        let Some((_, sent_at)) = self.inflight.remove(pos) else {
            return;
        };
        ack_lat.record(sent_at.elapsed().as_micros() as u64);
        let Some(entry) = self.log.get_mut(seq as usize) else {
            return;
        };
        match outcome {
            Ok((msg_id, duplicate)) => {
                if entry.state != SeqState::Acked {
                    Counters::add(&ctx.counters.acked, 1);
                }
                entry.state = SeqState::Acked;
                entry.msg_id = msg_id;
                res.last_ack_us = payload::now_us();
                if duplicate {
                    res.duplicate_acks += 1;
                }
            }
            Err((retryable, rate_limited, msg)) => {
                res.error_replies += 1;
                Counters::add(&ctx.counters.errors, 1);
                if rate_limited {
                    res.rate_limited += 1;
                    Counters::add(&ctx.counters.rate_limited, 1);
                }
                if retryable && entry.attempts < MAX_ATTEMPTS {
                    let pause = Duration::from_millis(10 * u64::from(entry.attempts))
                        .min(Duration::from_secs(1));
                    self.retry.push_back((Instant::now() + pause, seq));
                } else {
                    entry.state = SeqState::Failed;
                    res.error(msg);
                }
            }
        }
    }
}

/// The receiving half: delivery counts per sender and sequence number.
struct Receiver {
    counts: HashMap<u32, Vec<u8>>,
    /// Set once the expectation is known: acknowledged messages not yet seen.
    missing: Option<HashSet<(u32, u32)>>,
    /// The inbox positions received (chat protocol): a missing message is
    /// past the first gap.
    inbox: Contiguous,
}

/// Inbox positions received: every one up to `through`, and some above.
#[derive(Debug, Default)]
struct Contiguous {
    through: u64,
    above: std::collections::BTreeSet<u64>,
}

impl Contiguous {
    fn insert(&mut self, seq: u64) {
        if seq == self.through + 1 {
            self.through = seq;
            while self.above.remove(&(self.through + 1)) {
                self.through += 1;
            }
        } else if seq > self.through {
            self.above.insert(seq);
        }
    }
}

impl Receiver {
    fn delivered(
        &mut self,
        seq: Option<u64>,
        content: &str,
        ctx: &Ctx,
        res: &mut ConnResult,
        lat: &mut LatencyBuffer,
    ) {
        if let Some(seq) = seq {
            self.inbox.insert(seq);
        }
        let Some(stamp) = payload::decode(content) else {
            return;
        };
        let Some(counts) = self.counts.get_mut(&stamp.sender) else {
            return;
        };
        let seq = stamp.seq as usize;
        if seq >= MAX_SEQ {
            return;
        }
        if counts.len() <= seq {
            counts.resize(seq + 1, 0);
        }
        counts[seq] = counts[seq].saturating_add(1);
        let now = payload::now_us();
        if counts[seq] == 1 {
            lat.record(now.saturating_sub(stamp.sent_us));
            Counters::add(&ctx.counters.delivered, 1);
            res.last_delivery_us = now;
            if let Some(m) = &mut self.missing {
                m.remove(&(stamp.sender, stamp.seq));
            }
        }
    }

    fn expect(&mut self, expected: &Expected) {
        let mut missing = HashSet::new();
        for (sender, counts) in &self.counts {
            let Some(log) = expected.get(sender) else {
                continue;
            };
            for (seq, e) in log.iter().enumerate() {
                if e.state == SeqState::Acked && counts.get(seq).copied().unwrap_or(0) == 0 {
                    missing.insert((*sender, seq as u32));
                }
            }
        }
        self.missing = Some(missing);
    }

    fn complete(&self) -> bool {
        self.missing.as_ref().is_some_and(HashSet::is_empty)
    }
}

/// A frame read from a connection, reduced to what the engine needs.
enum Incoming {
    /// Answer to send `seq`: `Ok((message id, duplicate))` or
    /// `Err((retryable, rate_limited, message))`.
    SendReply(u32, std::result::Result<(u64, bool), (bool, bool, String)>),
    /// A delivered message's inbox position (on the chat protocol) and
    /// content.
    Delivery(Option<u64>, String),
    /// A sync page: `(messages (id, content), has_more)` or an error.
    SyncReply(
        String,
        std::result::Result<(Vec<(u64, String)>, bool), String>,
    ),
    Closed(ConnError),
    Other,
}

fn classify(
    wire_kind: Wire,
    msg: Option<std::result::Result<WsMessage, tokio_tungstenite::tungstenite::Error>>,
) -> Incoming {
    let text = match msg {
        Some(Ok(WsMessage::Text(t))) => t,
        Some(Ok(WsMessage::Close(f))) => return Incoming::Closed(wire::closed(f)),
        Some(Ok(_)) => return Incoming::Other,
        Some(Err(e)) => return Incoming::Closed(ConnError::Handshake(e.to_string())),
        None => return Incoming::Closed(wire::closed(None)),
    };
    let seq_of = |id: &str| id.strip_prefix('s').and_then(|s| s.parse::<u32>().ok());
    match wire_kind {
        Wire::Relay => match relay::parse(&text) {
            Some(RelayFrame::Deliver(p)) => Incoming::Delivery(None, p.to_owned()),
            Some(RelayFrame::Ack(id)) => match seq_of(id) {
                Some(seq) => Incoming::SendReply(seq, Ok((0, false))),
                None => Incoming::Other,
            },
            Some(RelayFrame::Error(id)) => match seq_of(id) {
                Some(seq) => {
                    Incoming::SendReply(seq, Err((false, false, "relay: unknown peer".into())))
                }
                None => Incoming::Other,
            },
            _ => Incoming::Other,
        },
        Wire::Chat => match wire::decode(&text) {
            Some(ServerFrame::Event(Event::Message { seq, message })) => {
                Incoming::Delivery(Some(seq.0), message.content)
            }
            Some(ServerFrame::Reply(reply)) => {
                let Some(id) = reply.id.clone() else {
                    return Incoming::Other;
                };
                if let Some(seq) = seq_of(&id) {
                    let r = match reply.into_result() {
                        Ok(ReplyBody::Sent {
                            message_id,
                            duplicate,
                            ..
                        }) => Ok((message_id.0, duplicate)),
                        Ok(other) => Err((
                            false,
                            false,
                            format!("unexpected reply to a send: {other:?}"),
                        )),
                        Err(e) => Err((
                            e.retryable,
                            e.code == chat_core::protocol::ErrorCode::RateLimited,
                            format!("{:?}: {}", e.code, e.message),
                        )),
                    };
                    Incoming::SendReply(seq, r)
                } else if id.starts_with('y') {
                    let r = match reply.into_result() {
                        Ok(ReplyBody::Synced { entries, has_more }) => Ok((
                            entries
                                .into_iter()
                                .map(|e| (e.seq.0, e.message.content))
                                .collect(),
                            has_more,
                        )),
                        Ok(_) => Err("unexpected reply to a sync".into()),
                        Err(e) => Err(format!("{:?}: {}", e.code, e.message)),
                    };
                    Incoming::SyncReply(id, r)
                } else {
                    Incoming::Other
                }
            }
            _ => Incoming::Other,
        },
    }
}

async fn next_frame(
    ws: &mut Option<Ws>,
) -> Option<std::result::Result<WsMessage, tokio_tungstenite::tungstenite::Error>> {
    match ws.as_mut() {
        Some(ws) => ws.next().await,
        None => std::future::pending().await,
    }
}

async fn conn_task(
    ctx: Arc<Ctx>,
    spec: ConnSpec,
    ws: Ws,
    hb: Option<Duration>,
    mut expected_rx: watch::Receiver<Option<Arc<Expected>>>,
) -> Option<(Vec<u32>, ConnResult)> {
    let mut res = ConnResult::default();
    let mut ws = Some(ws);
    let mut sender = spec.send.clone().map(|s| Sender::new(s, Instant::now()));
    let mut log_sent = sender.is_none();
    let mut receiver = Receiver {
        counts: spec.expects_from.iter().map(|s| (*s, Vec::new())).collect(),
        missing: None,
        inbox: Contiguous::default(),
    };
    let mut lat = ctx.latency.buffer();
    let mut ack_lat = ctx.ack_latency.buffer();
    let far = ctx.drain_until + Duration::from_secs(3600);
    let mut hb_next = match hb {
        Some(iv) => Instant::now() + iv.mul_f64(rand::random::<f64>()),
        None => far,
    };
    let mut have_expected = false;
    loop {
        let now = Instant::now();
        if let Some(s) = &sender {
            if !log_sent
                && ((now >= ctx.deadline && s.idle()) || now >= ctx.drain_until || ws.is_none())
            {
                let _ = ctx.logs.send((s.spec.sender, Arc::new(s.log.clone())));
                log_sent = true;
            }
        }
        if !have_expected {
            if let Some(e) = expected_rx.borrow_and_update().clone() {
                receiver.expect(&e);
                have_expected = true;
            }
        }
        if (have_expected && receiver.complete()) || now >= ctx.drain_until {
            break;
        }
        if ws.is_none() {
            // Dropped: reconnect (the chat protocol lets a client resume on a
            // new connection; the check phase syncs what the gap missed).
            match reconnect(&ctx, &spec).await {
                Some((new_ws, _)) => {
                    res.reconnects += 1;
                    Counters::add(&ctx.counters.open, 1);
                    ws = Some(new_ws);
                    if let Some(s) = &mut sender {
                        let now = Instant::now();
                        while let Some((seq, _)) = s.inflight.pop_front() {
                            s.retry.push_back((now, seq));
                        }
                    }
                }
                None => {
                    res.error("could not reconnect");
                    break;
                }
            }
        }
        let Some(sock) = ws.as_mut() else { break };
        let mut fed = 0;
        if let Some(s) = &mut sender {
            if log_sent {
                // Nothing more to send once the log is handed over.
            } else {
                match s.pump(sock, &ctx).await {
                    Ok(n) => fed += n,
                    Err(e) => {
                        lost_connection(&ctx, &mut ws, &mut res, e);
                        continue;
                    }
                }
            }
        }
        let Some(sock) = ws.as_mut() else { continue };
        if now >= hb_next {
            if let Some(iv) = hb {
                hb_next = now + iv;
            }
            if sock.feed(wire::heartbeat_frame()).await.is_err() {
                lost_connection(
                    &ctx,
                    &mut ws,
                    &mut res,
                    ConnError::Timeout("heartbeat write"),
                );
                continue;
            }
            fed += 1;
        }
        if fed > 0 {
            if let Err(e) = sock.flush().await {
                lost_connection(&ctx, &mut ws, &mut res, ConnError::Handshake(e.to_string()));
                continue;
            }
        }
        let mut wake = hb_next.min(ctx.drain_until);
        if let Some(s) = &sender {
            if !log_sent {
                wake = wake.min(s.next_wake(&ctx, now));
            }
        }
        tokio::select! {
            biased;
            m = next_frame(&mut ws) => {
                match classify(ctx.wire, m) {
                    Incoming::SendReply(seq, r) => {
                        if let Some(s) = &mut sender {
                            s.answered(seq, r, &ctx, &mut res, &mut ack_lat);
                        }
                    }
                    Incoming::Delivery(seq, content) => receiver.delivered(seq, &content, &ctx, &mut res, &mut lat),
                    Incoming::Closed(e) => lost_connection(&ctx, &mut ws, &mut res, e),
                    Incoming::SyncReply(..) | Incoming::Other => {}
                }
            }
            _ = tokio::time::sleep_until(wake) => {}
            _ = expected_rx.changed(), if !have_expected => {}
        }
    }
    if let Some(s) = &sender {
        if !log_sent {
            let _ = ctx.logs.send((s.spec.sender, Arc::new(s.log.clone())));
        }
    }
    // Check phase: what the live path missed, the inbox must still have.
    if !have_expected {
        let wait = tokio::time::timeout_at(ctx.drain_until + Duration::from_secs(3), async {
            while expected_rx.changed().await.is_ok() {
                if expected_rx.borrow().is_some() {
                    break;
                }
            }
        });
        let _ = wait.await;
        if let Some(e) = expected_rx.borrow_and_update().clone() {
            receiver.expect(&e);
        }
    }
    let expected = expected_rx.borrow().clone();
    if ctx.wire == Wire::Chat && !receiver.complete() {
        if let (Some(sock), Some(expected)) = (ws.as_mut(), expected) {
            sync_missing(sock, &ctx, &expected, &mut receiver, &mut res, &mut lat).await;
        }
    }
    lat.flush();
    ack_lat.flush();
    if let Some(mut sock) = ws.take() {
        Counters::sub(&ctx.counters.open, 1);
        let _ = tokio::time::timeout(Duration::from_secs(2), sock.close(None)).await;
    }
    res.counts = receiver.counts;
    Some((spec.expects_from, res))
}

fn lost_connection(ctx: &Ctx, ws: &mut Option<Ws>, res: &mut ConnResult, e: ConnError) {
    if ws.take().is_some() {
        res.disconnects += 1;
        Counters::add(&ctx.counters.dropped, 1);
        Counters::sub(&ctx.counters.open, 1);
        res.error(format!("connection lost: {e}"));
    }
}

async fn reconnect(ctx: &Ctx, spec: &ConnSpec) -> Option<(Ws, Option<Duration>)> {
    let mut pause = Duration::from_millis(100);
    for _ in 0..RECONNECTS {
        if Instant::now() >= ctx.drain_until {
            return None;
        }
        if let Ok(v) = connect(ctx.wire, spec, ctx.connect_timeout).await {
            return Some(v);
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(2));
    }
    None
}

/// Syncs the inbox from the first position not received live and marks
/// what it finds as recovered.
async fn sync_missing(
    ws: &mut Ws,
    ctx: &Ctx,
    expected: &Expected,
    receiver: &mut Receiver,
    res: &mut ConnResult,
    lat: &mut LatencyBuffer,
) {
    let Some(missing) = receiver.missing.clone() else {
        return;
    };
    let _ = expected;
    let mut after = Seq(receiver.inbox.through);
    let mut missing = missing;
    let deadline = Instant::now() + Duration::from_secs(30);
    for page in 0..MAX_SYNC_PAGES {
        if missing.is_empty() || Instant::now() >= deadline {
            break;
        }
        let id = format!("y{page}");
        if ws
            .send(wire::sync_frame(id.clone(), after, SYNC_PAGE))
            .await
            .is_err()
        {
            break;
        }
        let reply = loop {
            let m = match tokio::time::timeout_at(deadline, ws.next()).await {
                Ok(m) => m,
                Err(_) => return,
            };
            match classify(ctx.wire, m) {
                Incoming::SyncReply(rid, r) if rid == id => break r,
                Incoming::Delivery(seq, content) => {
                    receiver.delivered(seq, &content, ctx, res, lat)
                }
                Incoming::Closed(_) => return,
                _ => {}
            }
        };
        let Ok((messages, has_more)) = reply else {
            res.error("sync failed while checking delivery");
            return;
        };
        for (seq, content) in &messages {
            if let Some(st) = payload::decode(content) {
                if missing.remove(&(st.sender, st.seq)) {
                    res.recovered.insert((st.sender, st.seq));
                }
            }
            after = Seq(*seq);
        }
        if !has_more || messages.is_empty() {
            break;
        }
    }
}
