//! The push pipeline: the bounded queue the send path offers jobs to, and
//! the worker that turns them into notifications.
//!
//! Policy (see `docs/push.md`):
//!
//! * Only recipients with no connected device are notified, never the
//!   sender (the send path leaves the sender out of every job).
//! * A job holds what a notification needs of the message (ids, sender,
//!   the preview already cut to [`PREVIEW_CHARS`], no text at all when
//!   previews are off), never the message itself, so a full queue holds
//!   kilobytes per job, not the up to 100,000 characters of a message.
//! * Bursts collapse per (recipient, channel): the first message pushes at
//!   once and opens a window of `push_collapse_window`; messages that
//!   arrive within it are held, and when it ends they go out as ONE
//!   follow-up notification for the latest of them, counting the messages
//!   not yet notified, and a new window opens. A window that ends with
//!   nothing held closes, so the next message pushes at once again.
//!   Providers use the channel as collapse id, so the follow-up replaces
//!   the earlier notification on the device.
//! * Each push token gets one push per notification (devices that share a
//!   token, a reinstalled app under a new device id, are pushed once), and
//!   a notification goes to at most [`MAX_PUSH_DEVICES`] devices, the most
//!   recently registered.
//! * Notifications run concurrently up to `push_concurrency`; when all slots
//!   are busy the worker waits, the queue fills, and further jobs are
//!   dropped and counted, never stalling a send.
//! * Tokens the notifier reports invalid are cleared from the device with a
//!   compare-and-clear ([`Directory::clear_push_token`]): a token registered
//!   meanwhile is kept, and a device removed meanwhile stays removed.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chat_core::{
    ChannelId, Device, DeviceId, Directory, Message, MessageId, PushNotification, UserId,
    MAX_PUSH_DEVICES,
};
use tokio::sync::{mpsc, Semaphore};
use tokio::time::Instant;

use crate::server::{ChatServer, Counters};

/// Most characters of a message in a preview.
pub(crate) const PREVIEW_CHARS: usize = 200;

/// Most recipients per presence query.
const PRESENCE_CHUNK: usize = 500;

/// Most (recipient, channel) collapse windows open at once. Beyond it, a
/// message that would open a new window is pushed without one (nothing is
/// held for it), so the worker's memory stays bounded under any load.
const MAX_OPEN_WINDOWS: usize = 100_000;

/// What the push pipeline keeps of a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PushMessage {
    pub(crate) id: MessageId,
    pub(crate) channel_id: ChannelId,
    pub(crate) sender: UserId,
    /// When it was stored, Unix milliseconds.
    pub(crate) created_at: u64,
    /// The first [`PREVIEW_CHARS`] characters, only with previews on.
    pub(crate) preview: Option<String>,
}

impl PushMessage {
    /// The parts of `message` a notification needs; the text only as a
    /// cut preview, and only if `preview`.
    pub(crate) fn new(message: &Message, preview: bool) -> Self {
        Self {
            id: message.id,
            channel_id: message.channel_id,
            sender: message.sender,
            created_at: message.created_at,
            preview: preview.then(|| message.content.chars().take(PREVIEW_CHARS).collect()),
        }
    }
}

/// A recipient set to notify about one message, handled off the send path.
#[derive(Debug)]
pub(crate) struct PushJob {
    /// Channel members other than the sender.
    pub(crate) recipients: Vec<UserId>,
    /// What a notification needs of the stored message.
    pub(crate) message: PushMessage,
}

impl PushJob {
    /// A job for `recipients` about `message`, with a preview if `preview`.
    pub(crate) fn new(recipients: Vec<UserId>, message: &Message, preview: bool) -> Self {
        Self {
            recipients,
            message: PushMessage::new(message, preview),
        }
    }
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
    pub(crate) fn offer(&self, job: PushJob, stats: &Counters) {
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

/// What goes out as one notification: the latest of `count` messages to
/// `recipient` in one channel not yet notified.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Burst {
    recipient: UserId,
    latest: PushMessage,
    count: u32,
}

/// Messages held in an open window.
#[derive(Debug)]
struct Held {
    latest: PushMessage,
    count: u32,
}

/// The collapse window of one (recipient, channel).
#[derive(Debug)]
struct Window {
    /// When it ends: what is held then goes out.
    ends: Instant,
    /// The message of the last notification (to drop a repeat of it).
    notified: MessageId,
    /// Messages not yet notified.
    held: Option<Held>,
}

/// What became of an offered message.
#[derive(Debug, PartialEq, Eq)]
enum Offer {
    /// Push this now (the first message of a window).
    Now(Burst),
    /// Held for the window's end; `merged` when it joined messages already
    /// held (one notification fewer).
    Held { merged: bool },
    /// A message already notified or held.
    Repeat,
}

/// The per-(recipient, channel) collapse windows of the push worker.
#[derive(Debug)]
struct Collapser {
    window: Duration,
    max_open: usize,
    open: HashMap<(UserId, ChannelId), Window>,
    /// Window ends in order. Every window is `window` long and opens at the
    /// worker's current time, so they end in the order they open.
    ends: VecDeque<(Instant, (UserId, ChannelId))>,
}

impl Collapser {
    fn new(window: Duration, max_open: usize) -> Self {
        Self {
            window,
            max_open,
            open: HashMap::new(),
            ends: VecDeque::new(),
        }
    }

    /// Offers `message` for `recipient` at `now`.
    fn offer(&mut self, recipient: UserId, message: &PushMessage, now: Instant) -> Offer {
        let key = (recipient, message.channel_id);
        if let Some(window) = self.open.get_mut(&key) {
            if window.notified == message.id {
                return Offer::Repeat;
            }
            return match &mut window.held {
                None => {
                    window.held = Some(Held {
                        latest: message.clone(),
                        count: 1,
                    });
                    Offer::Held { merged: false }
                }
                Some(held) if held.latest.id == message.id => Offer::Repeat,
                Some(held) => {
                    held.count = held.count.saturating_add(1);
                    // Sends finish out of order: keep the newest message,
                    // count every one.
                    if message.id > held.latest.id {
                        held.latest = message.clone();
                    }
                    Offer::Held { merged: true }
                }
            };
        }
        if self.open.len() < self.max_open {
            let ends = now + self.window;
            self.open.insert(
                key,
                Window {
                    ends,
                    notified: message.id,
                    held: None,
                },
            );
            self.ends.push_back((ends, key));
        }
        Offer::Now(Burst {
            recipient,
            latest: message.clone(),
            count: 1,
        })
    }

    /// When the next window ends.
    fn next_end(&self) -> Option<Instant> {
        self.ends.front().map(|(at, _)| *at)
    }

    /// Ends the windows due at `now`: each that holds messages gives one
    /// follow-up burst and opens a new window; the others close.
    fn expire(&mut self, now: Instant) -> Vec<Burst> {
        let mut due = Vec::new();
        while let Some(&(at, key)) = self.ends.front() {
            if at > now {
                break;
            }
            self.ends.pop_front();
            let Some(window) = self.open.get_mut(&key) else {
                continue;
            };
            if window.ends != at {
                continue;
            }
            match window.held.take() {
                Some(held) => {
                    window.notified = held.latest.id;
                    window.ends = now + self.window;
                    self.ends.push_back((window.ends, key));
                    due.push(Burst {
                        recipient: key.0,
                        latest: held.latest,
                        count: held.count,
                    });
                }
                None => {
                    self.open.remove(&key);
                }
            }
        }
        due
    }
}

/// A user's devices that can be pushed: one per distinct token, at most
/// [`MAX_PUSH_DEVICES`], the most recently registered first.
fn pushable(mut devices: Vec<Device>) -> Vec<Device> {
    // Stable: equal registration times keep the directory's order.
    devices.sort_by_key(|d| std::cmp::Reverse(d.created_at));
    let mut tokens = HashSet::new();
    devices
        .into_iter()
        .filter(|d| {
            d.push_token
                .as_deref()
                .is_some_and(|t| !t.is_empty() && tokens.insert(t.to_owned()))
        })
        .take(MAX_PUSH_DEVICES)
        .collect()
}

/// Waits until `at`, or forever without one.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

impl ChatServer {
    /// Spawns the push worker: takes queued jobs (up to `push_batch` at
    /// once), keeps the offline recipients, runs them through the collapse
    /// windows, and starts one task per notification due, at most
    /// `push_concurrency` at a time.
    pub(crate) fn spawn_push_worker(&self, mut rx: mpsc::Receiver<PushJob>) {
        let server = self.clone();
        let shutdown = self.inner.shutdown.clone();
        let config = &self.inner.config;
        let slots = Arc::new(Semaphore::new(config.push_concurrency.max(1)));
        let batch = config.push_batch.max(1);
        let mut windows = Collapser::new(config.push_collapse_window, MAX_OPEN_WINDOWS);
        self.inner.tasks.spawn(async move {
            loop {
                let next_end = windows.next_end();
                let due = tokio::select! {
                    _ = shutdown.cancelled() => break,
                    job = rx.recv() => {
                        let Some(first) = job else { break };
                        let mut jobs = vec![first];
                        while jobs.len() < batch {
                            match rx.try_recv() {
                                Ok(job) => jobs.push(job),
                                Err(_) => break,
                            }
                        }
                        server.take_jobs(jobs, &mut windows).await
                    }
                    () = sleep_until(next_end) => {
                        let due = windows.expire(Instant::now());
                        // Held for a while: the recipient may be back.
                        server.offline_only(due).await
                    }
                };
                for notification in server.plan_pushes(due).await {
                    let permit = tokio::select! {
                        _ = shutdown.cancelled() => return,
                        s = slots.clone().acquire_owned() => match s { Ok(s) => s, Err(_) => return },
                    };
                    let server = server.clone();
                    let shutdown = shutdown.clone();
                    server.inner.tasks.clone().spawn(async move {
                        let _permit = permit;
                        // Queued and held jobs are dropped at shutdown;
                        // in-flight ones too rather than hold it up with
                        // retries.
                        tokio::select! {
                            _ = shutdown.cancelled() => {}
                            _ = server.deliver_push(notification) => {}
                        }
                    });
                }
            }
        });
    }

    /// Of `users`, those connected now; `None` if presence cannot be read.
    async fn connected(&self, users: impl Iterator<Item = UserId>) -> Option<HashSet<UserId>> {
        let mut users: Vec<UserId> = users.collect();
        users.sort_unstable();
        users.dedup();
        let mut connected = HashSet::new();
        for chunk in users.chunks(PRESENCE_CHUNK) {
            match self.inner.presence.connected(chunk, self.now()).await {
                Ok(c) => connected.extend(c),
                Err(e) => {
                    // Without presence we cannot tell who is offline; a push
                    // to an online user is worse than a missing one.
                    tracing::warn!(error = %e, "presence unavailable; skipping push");
                    return None;
                }
            }
        }
        Some(connected)
    }

    /// Offers the offline recipients of `jobs` to the collapse windows;
    /// returns the bursts to push at once.
    async fn take_jobs(&self, jobs: Vec<PushJob>, windows: &mut Collapser) -> Vec<Burst> {
        let Some(connected) = self
            .connected(jobs.iter().flat_map(|j| j.recipients.iter().copied()))
            .await
        else {
            return Vec::new();
        };
        let now = Instant::now();
        let mut due = Vec::new();
        let mut merged = 0u64;
        for job in &jobs {
            for recipient in job.recipients.iter().filter(|r| !connected.contains(r)) {
                match windows.offer(*recipient, &job.message, now) {
                    Offer::Now(burst) => due.push(burst),
                    Offer::Held { merged: true } => merged += 1,
                    Offer::Held { merged: false } | Offer::Repeat => {}
                }
            }
        }
        self.inner
            .stats
            .pushes_collapsed
            .fetch_add(merged, Ordering::Relaxed);
        due
    }

    /// The bursts whose recipient is still offline.
    async fn offline_only(&self, bursts: Vec<Burst>) -> Vec<Burst> {
        if bursts.is_empty() {
            return bursts;
        }
        match self.connected(bursts.iter().map(|b| b.recipient)).await {
            Some(connected) => bursts
                .into_iter()
                .filter(|b| !connected.contains(&b.recipient))
                .collect(),
            None => Vec::new(),
        }
    }

    /// Turns bursts into notifications: loads each recipient's pushable
    /// devices and leaves out recipients without any.
    async fn plan_pushes(&self, bursts: Vec<Burst>) -> Vec<PushNotification> {
        let inner = &self.inner;
        let mut devices: HashMap<UserId, Vec<Device>> = HashMap::new();
        let mut out = Vec::new();
        for burst in bursts {
            let targets = match devices.get(&burst.recipient) {
                Some(known) => known.clone(),
                None => {
                    let found = match inner.directory.devices(burst.recipient).await {
                        Ok(d) => pushable(d),
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot load devices for push");
                            Vec::new()
                        }
                    };
                    devices.insert(burst.recipient, found.clone());
                    found
                }
            };
            if targets.is_empty() {
                continue;
            }
            let message = burst.latest;
            tracing::debug!(
                recipient = %burst.recipient,
                channel = %message.channel_id,
                count = burst.count,
                since_sent_ms = self.now().saturating_sub(message.created_at),
                "push notification due"
            );
            out.push(PushNotification {
                recipient: burst.recipient,
                devices: targets,
                channel_id: message.channel_id,
                message_id: message.id,
                sender: message.sender,
                preview: message.preview,
                count: burst.count,
            });
        }
        out
    }

    /// Hands one notification to the notifier, counts the outcome, and
    /// clears the tokens reported invalid.
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
                self.clear_invalid_token(notification.recipient, device_id, token)
                    .await;
            }
        }
    }

    /// Clears `token`, reported invalid for `device`, from that device and
    /// from any other device of `user` that holds it (devices sharing a
    /// token are pushed once), each with a compare-and-clear: a device
    /// that registered another token meanwhile keeps it, and a device
    /// removed meanwhile is not re-created. The devices stay registered
    /// (their sync cursors live on), without a token, until the app
    /// registers a new one.
    async fn clear_invalid_token(&self, user: UserId, device: DeviceId, token: &str) {
        let directory: &dyn Directory = &*self.inner.directory;
        let mut targets = vec![device];
        match directory.devices(user).await {
            Ok(devices) => targets.extend(
                devices
                    .iter()
                    .filter(|d| d.id != device && d.push_token.as_deref() == Some(token))
                    .map(|d| d.id),
            ),
            // The reported device is still cleared; others sharing the
            // token are found when they are pushed and reported in turn.
            Err(e) => {
                tracing::warn!(error = %e, "cannot load devices sharing an invalid push token")
            }
        }
        for id in targets {
            match directory.clear_push_token(user, id, token).await {
                Ok(true) => {
                    self.inner
                        .stats
                        .push_tokens_removed
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::info!(%user, device = %id, "push token reported invalid; removed");
                }
                Ok(false) => {
                    tracing::debug!(%user, device = %id, "invalid push token already replaced or removed");
                }
                Err(e) => tracing::warn!(error = %e, "cannot remove an invalid push token"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chat_core::{ClientMsgId, Platform};

    fn message(channel: ChannelId, id: u64, content: &str) -> Message {
        Message {
            id: MessageId(id),
            channel_id: channel,
            sender: UserId::from_bytes([7; 16]),
            content: content.to_owned(),
            created_at: 0,
            client_msg_id: ClientMsgId::new_random(),
            reply_to: None,
            edited_at: None,
            deleted: false,
            reactions: Vec::new(),
            attachments: Vec::new(),
        }
    }

    fn pm(channel: ChannelId, id: u64) -> PushMessage {
        PushMessage::new(&message(channel, id, &format!("m{id}")), true)
    }

    #[test]
    fn jobs_keep_a_cut_preview_or_no_text_at_all() {
        let long = "é".repeat(100_000);
        let m = message(ChannelId::new_random(), 1, &long);
        let with = PushJob::new(vec![UserId::new_random()], &m, true);
        let preview = with.message.preview.unwrap();
        assert_eq!(preview.chars().count(), PREVIEW_CHARS);
        assert_eq!(preview.len(), PREVIEW_CHARS * 2);
        let without = PushJob::new(vec![UserId::new_random()], &m, false);
        assert_eq!(without.message.preview, None);
        assert_eq!(without.message.id, m.id);
        assert_eq!(without.message.channel_id, m.channel_id);
        assert_eq!(without.message.sender, m.sender);
        assert_eq!(without.message.created_at, m.created_at);
    }

    #[test]
    fn the_first_message_pushes_at_once_and_the_rest_of_the_window_once() {
        let window = Duration::from_secs(2);
        let mut c = Collapser::new(window, 100);
        let (a, b) = (UserId::new_random(), UserId::new_random());
        let (c1, c2) = (ChannelId::new_random(), ChannelId::new_random());
        let t0 = Instant::now();
        let now = |ms| t0 + Duration::from_millis(ms);

        let first = c.offer(a, &pm(c1, 1), now(0));
        assert_eq!(
            first,
            Offer::Now(Burst {
                recipient: a,
                latest: pm(c1, 1),
                count: 1
            })
        );
        // Other recipients and channels have windows of their own.
        assert!(matches!(c.offer(b, &pm(c1, 1), now(0)), Offer::Now(_)));
        assert!(matches!(c.offer(a, &pm(c2, 2), now(0)), Offer::Now(_)));
        // The same message again is not counted.
        assert_eq!(c.offer(a, &pm(c1, 1), now(1)), Offer::Repeat);
        // Held: m3, then m5, then m4 (sends finish out of order).
        assert_eq!(
            c.offer(a, &pm(c1, 3), now(100)),
            Offer::Held { merged: false }
        );
        assert_eq!(
            c.offer(a, &pm(c1, 5), now(200)),
            Offer::Held { merged: true }
        );
        assert_eq!(
            c.offer(a, &pm(c1, 4), now(300)),
            Offer::Held { merged: true }
        );
        assert_eq!(c.offer(a, &pm(c1, 5), now(300)), Offer::Repeat);
        assert_eq!(c.next_end(), Some(now(2_000)));
        assert!(c.expire(now(1_999)).is_empty());

        // At the end: one follow-up for the latest, counting the three held
        // (not the one already notified); the idle windows close.
        let due = c.expire(now(2_000));
        assert_eq!(
            due,
            vec![Burst {
                recipient: a,
                latest: pm(c1, 5),
                count: 3
            }]
        );
        assert_eq!(
            c.open.len(),
            1,
            "only the window that sent a follow-up stays"
        );
        // The follow-up opened a new window: m5 repeated is dropped, m6 and
        // m7 are held for its end, counted from zero.
        assert_eq!(c.offer(a, &pm(c1, 5), now(2_100)), Offer::Repeat);
        assert_eq!(
            c.offer(a, &pm(c1, 6), now(2_100)),
            Offer::Held { merged: false }
        );
        assert_eq!(
            c.offer(a, &pm(c1, 7), now(2_200)),
            Offer::Held { merged: true }
        );
        assert_eq!(c.next_end(), Some(now(4_000)));
        let due = c.expire(now(4_000));
        assert_eq!(due.len(), 1);
        assert_eq!((due[0].latest.id, due[0].count), (MessageId(7), 2));
        // A window with nothing held closes; the next message pushes at once.
        assert!(c.expire(now(6_000)).is_empty());
        assert!(c.open.is_empty() && c.ends.is_empty());
        assert!(matches!(c.offer(a, &pm(c1, 8), now(6_001)), Offer::Now(_)));
    }

    #[test]
    fn windows_are_bounded() {
        let mut c = Collapser::new(Duration::from_secs(2), 2);
        let now = Instant::now();
        let channel = ChannelId::new_random();
        let users: Vec<UserId> = (0..3).map(|_| UserId::new_random()).collect();
        for u in &users {
            assert!(matches!(c.offer(*u, &pm(channel, 1), now), Offer::Now(_)));
        }
        assert_eq!(c.open.len(), 2);
        // Without a window the third user's messages each push at once.
        assert!(matches!(
            c.offer(users[2], &pm(channel, 2), now),
            Offer::Now(_)
        ));
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

    #[test]
    fn at_most_the_most_recent_devices_are_pushed() {
        let user = UserId::new_random();
        let devices: Vec<Device> = (0..100u64)
            .map(|i| Device {
                id: DeviceId::new_random(),
                user,
                platform: Platform::Android,
                // Every third device has no token.
                push_token: (i % 3 != 0).then(|| format!("t{i}")),
                created_at: 1_000 + i,
            })
            .collect();
        let kept = pushable(devices.clone());
        assert_eq!(kept.len(), MAX_PUSH_DEVICES);
        let mut newest: Vec<Device> = devices
            .into_iter()
            .filter(|d| d.push_token.is_some())
            .collect();
        newest.sort_by_key(|d| std::cmp::Reverse(d.created_at));
        newest.truncate(MAX_PUSH_DEVICES);
        assert_eq!(kept, newest);
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
