//! The load the checker judges: users with several devices each, every
//! device a real SDK [`Connection`] made through `route`, sending to its
//! user's one-to-one and group channels with client message ids (the SDK
//! retries a send with the same id across reconnects), and recording into
//! a [`History`] everything sent, acknowledged and shown.
//!
//! [`Workload::start`] signs the users up, makes the channels (a ring of
//! one-to-one channels and groups), connects every device and starts
//! sending; [`Workload::finish`] stops sending, waits for every send in
//! flight, reads each channel's history from the server, waits until every
//! device has caught up (or the settle time has passed), and checks.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chat_client::{
    ChatClient, ClientEvent, ConnectOptions, Connection, MemoryCursorStore, Session,
};
use chat_core::api::{HistoryQuery, UpdatePrivacyRequest};
use chat_core::{ChannelId, ClientMsgId, DeviceId, WhoMayAdd};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use futures::{stream, StreamExt, TryStreamExt};

use crate::checker::{Acked, CheckReport, History, Shown, Stored};
use crate::error::{BenchError, Result};

/// Setup calls (sign-ups, channels) in flight at once.
const SETUP_CONCURRENCY: usize = 8;

/// The shape of the load.
#[derive(Debug, Clone)]
pub struct WorkloadConfig {
    /// Users.
    pub users: usize,
    /// Devices (connections) per user.
    pub devices_per_user: usize,
    /// Members per group; `users / group_size` groups.
    pub group_size: usize,
    /// Pause between one device's sends (each waits for its receipt).
    pub send_interval: Duration,
    /// The SDK's connection settings.
    pub connect: ConnectOptions,
}

impl Default for WorkloadConfig {
    fn default() -> Self {
        Self {
            users: 30,
            devices_per_user: 2,
            group_size: 5,
            send_interval: Duration::from_millis(400),
            connect: ConnectOptions {
                reconnect_min: Duration::from_millis(200),
                reconnect_max: Duration::from_secs(2),
                request_timeout: Duration::from_secs(5),
                ..ConnectOptions::default()
            },
        }
    }
}

/// One device's move from one server to another.
#[derive(Debug, Clone)]
pub struct Reconnect {
    /// The device.
    pub device: DeviceId,
    /// The server it left.
    pub from: String,
    /// The server it is on now.
    pub to: String,
    /// From the disconnect to the next welcome.
    pub took: Duration,
    /// When the disconnect was seen.
    pub at: Instant,
}

/// What the devices saw besides messages.
#[derive(Debug, Default)]
pub struct Observed {
    /// Every move, in order.
    pub reconnects: Vec<Reconnect>,
    /// The server each device is on now (absent while disconnected).
    pub on: HashMap<DeviceId, String>,
    /// Errors the application saw: failed sends and error events.
    pub errors: Vec<String>,
    /// Sends acknowledged.
    pub sends: u64,
    /// Of those, answered `duplicate: true`: a retry of a send whose
    /// first answer was lost (the SDK sent it again with the same id).
    pub duplicate_receipts: u64,
}

/// A running load. See the module docs.
#[derive(Debug)]
pub struct Workload {
    history: Arc<Mutex<History>>,
    observed: Arc<Mutex<Observed>>,
    sessions: Vec<Session>,
    channels: Vec<ChannelId>,
    stop_sending: CancellationToken,
    stop_reading: CancellationToken,
    senders: Vec<JoinHandle<()>>,
    readers: Vec<JoinHandle<()>>,
    started: Instant,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Workload {
    /// Signs up the users at `http_url`, makes the channels, connects every
    /// device (through `route`) and starts sending.
    pub async fn start(http_url: &str, config: &WorkloadConfig) -> Result<Self> {
        if config.users < 2 || config.group_size < 2 || config.devices_per_user == 0 {
            return Err(BenchError::plan(
                "a workload needs two users, groups of two and a device each",
            ));
        }
        let client = ChatClient::new(http_url)?;
        let prefix = crate::setup::run_prefix();
        // Setup calls a few at a time (in order of users).
        let sessions: Vec<Session> = stream::iter(0..config.users)
            .map(|i| {
                let client = &client;
                let name = format!("{prefix}-u{i}");
                async move {
                    let session = crate::setup::retrying("sign-up", || {
                        client.signup(&name, crate::setup::PASSWORD, None)
                    })
                    .await?;
                    crate::setup::retrying("privacy", || {
                        session.update_privacy(&UpdatePrivacyRequest {
                            who_may_add: Some(WhoMayAdd::Everyone),
                            hide_last_seen: None,
                        })
                    })
                    .await?;
                    Ok::<_, BenchError>(session)
                }
            })
            .buffered(SETUP_CONCURRENCY)
            .try_collect()
            .await?;
        let mut history = History::new();
        // Channels per user (index into `sessions`).
        let mut of_user: Vec<Vec<ChannelId>> = vec![Vec::new(); sessions.len()];
        let mut channels = Vec::new();
        let n = sessions.len();
        let ring = if n == 2 { 1 } else { n };
        let directs: Vec<ChannelId> = stream::iter(0..ring)
            .map(|i| {
                let sessions = &sessions;
                async move {
                    let other = sessions[(i + 1) % n].user_id();
                    let c =
                        crate::setup::retrying("open direct", || sessions[i].open_direct(other))
                            .await?;
                    Ok::<_, BenchError>(c.id)
                }
            })
            .buffered(SETUP_CONCURRENCY)
            .try_collect()
            .await?;
        for (i, c) in directs.into_iter().enumerate() {
            let j = (i + 1) % n;
            history.channel(c, vec![sessions[i].user_id(), sessions[j].user_id()]);
            of_user[i].push(c);
            of_user[j].push(c);
            channels.push(c);
        }
        for (g, chunk) in (0..n)
            .collect::<Vec<_>>()
            .chunks(config.group_size)
            .enumerate()
        {
            if chunk.len() < 2 {
                continue;
            }
            let others: Vec<_> = chunk[1..].iter().map(|i| sessions[*i].user_id()).collect();
            let owner = &sessions[chunk[0]];
            let name = format!("g{g}");
            let change =
                crate::setup::retrying("create group", || owner.create_group(&name, &others))
                    .await?;
            if change.channel.members.len() != chunk.len() {
                return Err(BenchError::setup(format!(
                    "group {g} has {} members, not {}",
                    change.channel.members.len(),
                    chunk.len()
                )));
            }
            history.channel(change.channel.id, change.channel.members.clone());
            for i in chunk {
                of_user[*i].push(change.channel.id);
            }
            channels.push(change.channel.id);
        }
        let history = Arc::new(Mutex::new(history));
        let observed = Arc::new(Mutex::new(Observed::default()));
        let stop_sending = CancellationToken::new();
        let stop_reading = CancellationToken::new();
        let mut senders = Vec::new();
        let mut readers = Vec::new();
        let mut devices = Vec::new();
        for (u, session) in sessions.iter().enumerate() {
            for _ in 0..config.devices_per_user {
                let device = DeviceId::new_random();
                lock(&history).device(device, session.user_id());
                devices.push((u, device));
            }
        }
        // Connected a few at a time; each keeps its events until its
        // reader starts below (nothing is sent before).
        let connected: Vec<(usize, DeviceId, Connection)> = stream::iter(devices)
            .map(|(u, device)| {
                let session = &sessions[u];
                let options = config.connect.clone();
                async move {
                    let conn = session
                        .connect(device, Arc::new(MemoryCursorStore::new()), options)
                        .await?;
                    Ok::<_, BenchError>((u, device, conn))
                }
            })
            .buffered(SETUP_CONCURRENCY)
            .try_collect()
            .await?;
        {
            for (u, device, conn) in connected {
                let handle = conn.handle();
                readers.push(tokio::spawn(read(
                    conn,
                    history.clone(),
                    observed.clone(),
                    stop_reading.clone(),
                )));
                let history = history.clone();
                let observed = observed.clone();
                let stop = stop_sending.clone();
                let targets = of_user[u].clone();
                let interval = config.send_interval;
                senders.push(tokio::spawn(async move {
                    let mut n = 0usize;
                    // Spread the first sends over one interval.
                    let jitter = rand::random::<u64>() % interval.as_millis().max(1) as u64;
                    tokio::time::sleep(Duration::from_millis(jitter)).await;
                    while !stop.is_cancelled() {
                        let channel = targets[n % targets.len()];
                        n += 1;
                        let key = ClientMsgId::new_random();
                        lock(&history).attempt(device, key.clone());
                        let content = format!("{device} #{n}");
                        match handle.send_with_id(channel, key.clone(), content).await {
                            Ok(receipt) => {
                                lock(&history).acked(Acked {
                                    device,
                                    channel,
                                    message: receipt.message_id,
                                    client_msg_id: key,
                                    seq: receipt.seq,
                                });
                                let mut o = lock(&observed);
                                o.sends += 1;
                                o.duplicate_receipts += u64::from(receipt.duplicate);
                            }
                            Err(e) => lock(&observed)
                                .errors
                                .push(format!("send from {device}: {e}")),
                        }
                        tokio::select! {
                            _ = stop.cancelled() => {}
                            _ = tokio::time::sleep(interval) => {}
                        }
                    }
                }));
            }
        }
        Ok(Self {
            history,
            observed,
            sessions,
            channels,
            stop_sending,
            stop_reading,
            senders,
            readers,
            started: Instant::now(),
        })
    }

    /// What the devices saw so far.
    pub fn observed(&self) -> std::sync::MutexGuard<'_, Observed> {
        lock(&self.observed)
    }

    /// Devices now connected to `server_id`.
    pub fn devices_on(&self, server_id: &str) -> Vec<DeviceId> {
        lock(&self.observed)
            .on
            .iter()
            .filter(|(_, s)| *s == server_id)
            .map(|(d, _)| *d)
            .collect()
    }

    /// Devices connected now.
    pub fn connected(&self) -> usize {
        lock(&self.observed).on.len()
    }

    /// Acknowledged sends so far.
    pub fn sends(&self) -> u64 {
        lock(&self.observed).sends
    }

    /// The sessions of the users.
    pub fn sessions(&self) -> &[Session] {
        &self.sessions
    }

    /// Waits until `devices` are connected (or `wait` has passed); whether
    /// they are.
    pub async fn wait_connected(&self, devices: usize, wait: Duration) -> bool {
        let deadline = Instant::now() + wait;
        while Instant::now() < deadline {
            if self.connected() >= devices {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.connected() >= devices
    }

    /// Waits until at least `more` sends have been acknowledged beyond
    /// those so far (or `wait` has passed).
    pub async fn wait_sends(&self, more: u64, wait: Duration) {
        let target = self.sends() + more;
        let deadline = Instant::now() + wait;
        while Instant::now() < deadline && self.sends() < target {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stops sending, waits for sends in flight, reads history, gives the
    /// devices up to `settle` to catch up, and checks.
    pub async fn finish(self, settle: Duration) -> Result<WorkloadReport> {
        self.stop_sending.cancel();
        for s in self.senders {
            let _ = s.await;
        }
        let sending_secs = self.started.elapsed().as_secs_f64();
        let session = self
            .sessions
            .first()
            .ok_or_else(|| BenchError::plan("no users"))?;
        // Each channel's history, read by a member.
        for channel in &self.channels {
            let reader = self
                .sessions
                .iter()
                .find(|s| {
                    lock(&self.history)
                        .members_of(*channel)
                        .contains(&s.user_id())
                })
                .unwrap_or(session);
            let mut stored = Vec::new();
            let mut after = None;
            loop {
                let query = HistoryQuery {
                    after,
                    before: None,
                    limit: Some(1000),
                };
                let page =
                    crate::setup::retrying("history", || reader.history(*channel, &query)).await?;
                stored.extend(page.messages.iter().map(|m| Stored {
                    message: m.id,
                    client_msg_id: m.client_msg_id.clone(),
                }));
                after = page.messages.last().map(|m| m.id);
                if !page.has_more || after.is_none() {
                    break;
                }
            }
            lock(&self.history).stored(*channel, stored);
        }
        let deadline = Instant::now() + settle;
        let report = loop {
            let report = lock(&self.history).check();
            if report.passed() || Instant::now() > deadline {
                break report;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        };
        self.stop_reading.cancel();
        for r in self.readers {
            let _ = r.await;
        }
        let observed = std::mem::take(&mut *lock(&self.observed));
        let reconnect = observed.reconnects.iter().map(|r| r.took).collect();
        Ok(WorkloadReport {
            check: report,
            sends: observed.sends,
            duplicate_receipts: observed.duplicate_receipts,
            sending_secs,
            errors: observed.errors,
            reconnects: observed.reconnects,
            reconnect,
        })
    }
}

/// One device's event loop: records every message shown and the cursor
/// after it, and every move between servers.
async fn read(
    mut conn: Connection,
    history: Arc<Mutex<History>>,
    observed: Arc<Mutex<Observed>>,
    stop: CancellationToken,
) {
    let device = conn.device_id();
    let mut left: Option<(String, Instant)> = None;
    let mut server: Option<String> = None;
    loop {
        let event = tokio::select! {
            _ = stop.cancelled() => break,
            e = conn.next_event() => e,
        };
        let Some(event) = event else { break };
        match event {
            ClientEvent::Message(d) => {
                let mut h = lock(&history);
                h.shown(
                    device,
                    Shown {
                        channel: d.message.channel_id,
                        message: d.message.id,
                        client_msg_id: d.message.client_msg_id.clone(),
                        seq: d.seq,
                    },
                );
                h.cursor(device, conn.cursor());
            }
            ClientEvent::Connected { server_id } => {
                let mut o = lock(&observed);
                if let Some((from, at)) = left.take() {
                    o.reconnects.push(Reconnect {
                        device,
                        from,
                        to: server_id.clone(),
                        took: at.elapsed(),
                        at,
                    });
                }
                o.on.insert(device, server_id.clone());
                server = Some(server_id);
            }
            ClientEvent::Disconnected { .. } => {
                if let Some(s) = server.take() {
                    left = Some((s, Instant::now()));
                }
                lock(&observed).on.remove(&device);
            }
            ClientEvent::Error(e) => lock(&observed)
                .errors
                .push(format!("event on {device}: {e}")),
            _ => {}
        }
        lock(&history).cursor(device, conn.cursor());
    }
    lock(&history).cursor(device, conn.cursor());
    lock(&observed).on.remove(&device);
    conn.close().await;
}

/// What a workload run found.
#[derive(Debug)]
pub struct WorkloadReport {
    /// The checker's verdict.
    pub check: CheckReport,
    /// Sends acknowledged.
    pub sends: u64,
    /// Of those, retries the server recognised (`duplicate: true`).
    pub duplicate_receipts: u64,
    /// Seconds of sending.
    pub sending_secs: f64,
    /// Errors the application saw.
    pub errors: Vec<String>,
    /// Every move of a device between servers.
    pub reconnects: Vec<Reconnect>,
    /// Their durations.
    pub reconnect: Vec<Duration>,
}

impl WorkloadReport {
    /// Moves away from `server_id`, per server moved to.
    pub fn spread_from(&self, server_id: &str) -> HashMap<String, usize> {
        let mut spread = HashMap::new();
        for r in self.reconnects.iter().filter(|r| r.from == server_id) {
            *spread.entry(r.to.clone()).or_default() += 1;
        }
        spread
    }

    /// The p99 of the moves away from `server_id`.
    pub fn reconnect_p99_from(&self, server_id: &str) -> Option<Duration> {
        let took: Vec<Duration> = self
            .reconnects
            .iter()
            .filter(|r| r.from == server_id)
            .map(|r| r.took)
            .collect();
        quantile(&took, 0.99)
    }
}

impl std::fmt::Display for WorkloadReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "load: {} sends acknowledged ({} of them retries answered as duplicates) in {:.1} s, {} moves between servers (p50 {:?}, p99 {:?}, max {:?}), {} errors seen by the application",
            self.sends,
            self.duplicate_receipts,
            self.sending_secs,
            self.reconnects.len(),
            quantile(&self.reconnect, 0.5),
            quantile(&self.reconnect, 0.99),
            quantile(&self.reconnect, 1.0),
            self.errors.len()
        )?;
        for e in self.errors.iter().take(5) {
            writeln!(f, "  error: {e}")?;
        }
        write!(f, "{}", self.check)
    }
}

/// The `q` quantile (nearest rank) of `values`; `None` when empty.
pub fn quantile(values: &[Duration], q: f64) -> Option<Duration> {
    let mut v = values.to_vec();
    v.sort();
    let last = v.len().checked_sub(1)?;
    let rank = ((q.clamp(0.0, 1.0) * v.len() as f64).ceil() as usize).saturating_sub(1);
    v.get(rank.min(last)).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_nearest_rank() {
        let v: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(quantile(&v, 0.99), Some(Duration::from_millis(99)));
        assert_eq!(quantile(&v, 0.5), Some(Duration::from_millis(50)));
        assert_eq!(quantile(&v, 1.0), Some(Duration::from_millis(100)));
        assert_eq!(quantile(&[], 0.5), None);
    }
}
