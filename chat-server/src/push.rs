//! The push pipeline: the bounded queue the send path offers jobs to, and
//! the worker that turns them into notifications.
//!
//! Policy (see `docs/push.md`):
//!
//! * Only recipients with no connected device are notified, never the
//!   sender (the send path leaves the sender out of every job).
//! * When the worker wakes it drains whatever else is queued and merges the
//!   jobs per (recipient, channel): a burst becomes one notification for the
//!   latest message, with a count. Providers use the channel as collapse id,
//!   so a newer notification replaces an older one on the device.
//! * Each push token gets one push per notification: devices that share a
//!   token (a reinstalled app under a new device id) are pushed once.
//! * Notifications run concurrently up to `push_concurrency`; when all slots
//!   are busy the worker waits, the queue fills, and further jobs are
//!   dropped and counted, never stalling a send.
//! * Tokens the notifier reports invalid are removed from the device (the
//!   device and its sync cursor stay), so they are never pushed again.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chat_core::{Device, Message, PushNotification, UserId};
use tokio::sync::{mpsc, Semaphore};
use tokio::time::Instant;

use crate::server::{ChatServer, Stats};

/// Most characters of a message in a preview.
const PREVIEW_CHARS: usize = 200;

/// Most recipients per presence query.
const PRESENCE_CHUNK: usize = 500;

/// A recipient set to notify about one message, handled off the send path.
#[derive(Debug)]
pub(crate) struct PushJob {
    /// Channel members other than the sender.
    pub(crate) recipients: Vec<UserId>,
    /// The stored message.
    pub(crate) message: Message,
}

/// The sending half of the push queue, with the drop accounting.
#[derive(Debug)]
pub(crate) struct PushQueue {
    tx: mpsc::Sender<PushJob>,
    drops: LogThrottle,
}

impl PushQueue {
    /// A queue of `capacity` jobs and its receiving half.
    pub(crate) fn new(capacity: usize) -> (Self, mpsc::Receiver<PushJob>) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        (
            Self {
                tx,
                drops: LogThrottle::default(),
            },
            rx,
        )
    }

    /// Queues `job` without waiting; a full queue drops it, counts it, and
    /// logs at most once every few seconds.
    pub(crate) fn offer(&self, job: PushJob, stats: &Stats) {
        if self.tx.try_send(job).is_err() {
            stats.pushes_dropped.fetch_add(1, Ordering::Relaxed);
            if let Some(suppressed) = self.drops.allow() {
                tracing::warn!(
                    dropped_since_last_report = suppressed + 1,
                    total_dropped = stats.pushes_dropped.load(Ordering::Relaxed),
                    "push queue full; notifications dropped"
                );
            }
        }
    }
}

/// Lets a repeated warning through at most once per interval, counting
/// the ones it held back.
#[derive(Debug, Default)]
struct LogThrottle {
    state: Mutex<(Option<Instant>, u64)>,
}

impl LogThrottle {
    const INTERVAL: Duration = Duration::from_secs(10);

    /// `Some(held back since the last one)` if this one may be logged.
    fn allow(&self) -> Option<u64> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        match state.0 {
            Some(last) if now.duration_since(last) < Self::INTERVAL => {
                state.1 += 1;
                None
            }
            _ => {
                let suppressed = std::mem::take(&mut state.1);
                state.0 = Some(now);
                Some(suppressed)
            }
        }
    }
}

/// The messages of one burst to one recipient in one channel.
#[derive(Debug)]
struct Burst {
    recipient: UserId,
    latest: Message,
    count: u32,
}

/// Merges jobs per (recipient, channel), keeping the latest message and
/// counting distinct messages, in order of first appearance.
fn collapse(jobs: Vec<PushJob>) -> (Vec<Burst>, u64) {
    let mut bursts: Vec<Burst> = Vec::new();
    let mut index = HashMap::new();
    let mut merged = 0u64;
    for job in jobs {
        for recipient in job.recipients {
            let key = (recipient, job.message.channel_id);
            match index.get(&key) {
                Some(&i) => {
                    let burst: &mut Burst = &mut bursts[i];
                    if burst.latest.id == job.message.id {
                        continue;
                    }
                    merged += 1;
                    burst.count = burst.count.saturating_add(1);
                    if job.message.id > burst.latest.id {
                        burst.latest = job.message.clone();
                    }
                }
                None => {
                    index.insert(key, bursts.len());
                    bursts.push(Burst {
                        recipient,
                        latest: job.message.clone(),
                        count: 1,
                    });
                }
            }
        }
    }
    (bursts, merged)
}

/// A user's devices that can be pushed, one per distinct token.
fn pushable(devices: Vec<Device>) -> Vec<Device> {
    let mut tokens = HashSet::new();
    devices
        .into_iter()
        .filter(|d| {
            d.push_token
                .as_deref()
                .is_some_and(|t| !t.is_empty() && tokens.insert(t.to_owned()))
        })
        .collect()
}

impl ChatServer {
    /// Spawns the push worker: waits for a job and a free delivery slot,
    /// drains the queue, collapses bursts, and starts one task per
    /// notification, at most `push_concurrency` at a time.
    pub(crate) fn spawn_push_worker(&self, mut rx: mpsc::Receiver<PushJob>) {
        let server = self.clone();
        let shutdown = self.inner.shutdown.clone();
        let config = &self.inner.config;
        let slots = Arc::new(Semaphore::new(config.push_concurrency.max(1)));
        let batch = config.push_batch.max(1);
        self.inner.tasks.spawn(async move {
            loop {
                let first = tokio::select! {
                    _ = shutdown.cancelled() => break,
                    job = rx.recv() => match job { Some(j) => j, None => break },
                };
                // Wait for a slot before draining, so that whatever queues
                // while the providers are busy joins this batch.
                let slot = tokio::select! {
                    _ = shutdown.cancelled() => break,
                    slot = slots.clone().acquire_owned() => match slot { Ok(s) => s, Err(_) => break },
                };
                let mut jobs = vec![first];
                while jobs.len() < batch {
                    match rx.try_recv() {
                        Ok(job) => jobs.push(job),
                        Err(_) => break,
                    }
                }
                let notifications = server.plan_pushes(jobs).await;
                let mut slot = Some(slot);
                for notification in notifications {
                    let permit = match slot.take() {
                        Some(s) => s,
                        None => tokio::select! {
                            _ = shutdown.cancelled() => return,
                            s = slots.clone().acquire_owned() => match s { Ok(s) => s, Err(_) => return },
                        },
                    };
                    let server = server.clone();
                    let shutdown = shutdown.clone();
                    server.inner.tasks.clone().spawn(async move {
                        let _permit = permit;
                        // Queued jobs are dropped at shutdown; in-flight
                        // ones too rather than hold it up with retries.
                        tokio::select! {
                            _ = shutdown.cancelled() => {}
                            _ = server.deliver_push(notification) => {}
                        }
                    });
                }
            }
        });
    }

    /// Turns queued jobs into notifications: collapses bursts, keeps
    /// recipients with no connected device, loads their pushable devices.
    async fn plan_pushes(&self, jobs: Vec<PushJob>) -> Vec<PushNotification> {
        let inner = &self.inner;
        let (bursts, merged) = collapse(jobs);
        inner
            .stats
            .pushes_collapsed
            .fetch_add(merged, Ordering::Relaxed);
        let mut recipients: Vec<UserId> = bursts.iter().map(|b| b.recipient).collect();
        recipients.sort_unstable();
        recipients.dedup();
        let mut connected = HashSet::new();
        for chunk in recipients.chunks(PRESENCE_CHUNK) {
            match inner.presence.connected(chunk).await {
                Ok(c) => connected.extend(c),
                Err(e) => {
                    // Without presence we cannot tell who is offline; a push
                    // to an online user is worse than a missing one.
                    tracing::warn!(error = %e, "presence unavailable; skipping push");
                    return Vec::new();
                }
            }
        }
        let mut devices: HashMap<UserId, Vec<Device>> = HashMap::new();
        let mut out = Vec::new();
        for burst in bursts {
            if connected.contains(&burst.recipient) {
                continue;
            }
            let targets = match devices.entry(burst.recipient) {
                Entry::Occupied(known) => known.get().clone(),
                Entry::Vacant(slot) => {
                    let found = match inner.directory.devices(burst.recipient).await {
                        Ok(d) => pushable(d),
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot load devices for push");
                            Vec::new()
                        }
                    };
                    slot.insert(found).clone()
                }
            };
            if targets.is_empty() {
                continue;
            }
            let message = burst.latest;
            out.push(PushNotification {
                recipient: burst.recipient,
                devices: targets,
                channel_id: message.channel_id,
                message_id: message.id,
                sender: message.sender,
                preview: inner
                    .config
                    .push_preview
                    .then(|| message.content.chars().take(PREVIEW_CHARS).collect()),
                count: burst.count,
            });
        }
        out
    }

    /// Hands one notification to the notifier, counts the outcome, and
    /// removes the tokens reported invalid.
    async fn deliver_push(&self, notification: PushNotification) {
        let inner = &self.inner;
        let stats = &inner.stats;
        stats.pushes_sent.fetch_add(1, Ordering::Relaxed);
        let report = match inner.push.notify(&notification).await {
            Ok(report) => report,
            Err(e) => {
                stats.push_failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, recipient = %notification.recipient, "push notification failed");
                return;
            }
        };
        stats
            .pushes_delivered
            .fetch_add(report.delivered() as u64, Ordering::Relaxed);
        let failed = report.failed();
        if failed > 0 {
            stats
                .push_failures
                .fetch_add(failed as u64, Ordering::Relaxed);
            tracing::warn!(
                recipient = %notification.recipient,
                failed,
                outcomes = ?report.outcomes,
                "push failed on some devices"
            );
        }
        for device_id in report.invalid_tokens() {
            let token = notification
                .devices
                .iter()
                .find(|d| d.id == device_id)
                .and_then(|d| d.push_token.as_deref());
            if let Some(token) = token {
                self.remove_push_token(notification.recipient, token).await;
            }
        }
    }

    /// Clears `token` from every device of `user` that still has it. The
    /// device stays registered (its sync cursor lives on), without a token,
    /// until the app registers a new one. A device that re-registered with
    /// another token meanwhile keeps it.
    async fn remove_push_token(&self, user: UserId, token: &str) {
        let directory = &self.inner.directory;
        let devices = match directory.devices(user).await {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(error = %e, "cannot load devices to remove an invalid push token");
                return;
            }
        };
        for device in devices
            .into_iter()
            .filter(|d| d.push_token.as_deref() == Some(token))
        {
            let id = device.id;
            match directory
                .register_device(Device {
                    push_token: None,
                    ..device
                })
                .await
            {
                Ok(_) => {
                    self.inner
                        .stats
                        .push_tokens_removed
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::info!(%user, device = %id, "push token reported invalid; removed");
                }
                Err(e) => tracing::warn!(error = %e, "cannot remove an invalid push token"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chat_core::{ChannelId, ClientMsgId, DeviceId, MessageId, Platform};

    fn message(channel: ChannelId, id: u64) -> Message {
        Message {
            id: MessageId(id),
            channel_id: channel,
            sender: UserId::new_random(),
            content: format!("m{id}"),
            created_at: 0,
            client_msg_id: ClientMsgId::new_random(),
        }
    }

    #[test]
    fn bursts_collapse_per_recipient_and_channel() {
        let (a, b) = (UserId::new_random(), UserId::new_random());
        let (c1, c2) = (ChannelId::new_random(), ChannelId::new_random());
        let job = |recipients: Vec<UserId>, m: Message| PushJob {
            recipients,
            message: m,
        };
        let (bursts, merged) = collapse(vec![
            job(vec![a, b], message(c1, 1)),
            job(vec![a], message(c2, 2)),
            job(vec![a, b], message(c1, 3)),
            job(vec![a], message(c1, 3)), // the same message again
        ]);
        assert_eq!(merged, 2);
        let summary: Vec<_> = bursts
            .iter()
            .map(|b| (b.recipient, b.latest.channel_id, b.latest.id.0, b.count))
            .collect();
        assert_eq!(summary, vec![(a, c1, 3, 2), (b, c1, 3, 2), (a, c2, 2, 1)]);
    }

    #[test]
    fn devices_sharing_a_token_are_pushed_once() {
        let user = UserId::new_random();
        let d = |token: Option<&str>| Device {
            id: DeviceId::new_random(),
            user,
            platform: Platform::Android,
            push_token: token.map(str::to_owned),
            created_at: 0,
        };
        let kept = pushable(vec![
            d(Some("t1")),
            d(None),
            d(Some("t1")),
            d(Some("t2")),
            d(Some("")),
        ]);
        let tokens: Vec<_> = kept.iter().map(|d| d.push_token.as_deref()).collect();
        assert_eq!(tokens, vec![Some("t1"), Some("t2")]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_queue_logs_at_most_once_per_interval() {
        let throttle = LogThrottle::default();
        assert_eq!(throttle.allow(), Some(0));
        assert_eq!(throttle.allow(), None);
        assert_eq!(throttle.allow(), None);
        tokio::time::advance(LogThrottle::INTERVAL).await;
        assert_eq!(throttle.allow(), Some(2));
    }
}
