//! In-memory implementations of every trait.
//!
//! They keep the same contracts as the durable backends (the conformance
//! suite in `chat-store` runs against them) and lose everything when the
//! process ends. Use them in tests, and for a server whose data may vanish.
//!
//! Locks are `std::sync::Mutex` held only for in-memory work, never across
//! an `.await`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;

use crate::bus::{DeliveryBus, Envelope, EnvelopeHandler};
use crate::changes::{count_reactions, decide, Change, Changed, Decision, NewChange, Reactions};
use crate::clock::{Clock, SystemClock};
use crate::discovery::{ServerInfo, ServiceDiscovery};
use crate::error::{Error, Result};
use crate::id::{ChannelId, ClientMsgId, DeviceId, MessageId, UserId};
use crate::presence::PresenceTracker;
use crate::push::{DeliveryOutcome, PushNotification, PushNotifier, PushReport};
use crate::rules::{check_channel_id, check_duplicate};
use crate::store::{
    entry_bytes, take_within, Appended, Committed, Fanout, FanoutStore, HistoryStore, Inbox,
    InboxEntry, MessageStore, NewMessage, Page, Paged, Seq,
};
use crate::types::{ChannelKind, Message, Presence, PresenceStatus};

mod attachments;
mod directory;
mod receipts;
mod search;

pub use attachments::{MemoryAttachments, MemoryBlobStore};
pub use directory::MemoryDirectory;

/// Locks a mutex, recovering from poisoning: the data behind these locks is
/// only ever mutated by complete, panic-free updates.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The id range a page can contain, for ordered maps.
fn page_bounds(page: &Page) -> (std::ops::Bound<MessageId>, std::ops::Bound<MessageId>) {
    use std::ops::Bound::{Excluded, Unbounded};
    (
        page.after.map_or(Unbounded, Excluded),
        page.before.map_or(Unbounded, Excluded),
    )
}

/// What a channel keeps besides its messages: the idempotency records and
/// the last id, both written with each commit.
#[derive(Debug, Default)]
struct ChannelLog {
    messages: BTreeMap<MessageId, Message>,
    /// `(sender, client_msg_id)` → the message's id and its inbox positions.
    dedup: HashMap<(UserId, ClientMsgId), Sent>,
    /// The largest id ever committed to the channel (history or outbox).
    last_id: MessageId,
    /// The last message committed (history or outbox) and its number.
    head: Option<crate::receipts::Marker>,
    /// Each committed message's number (see [`crate::receipts`]).
    numbers: HashMap<MessageId, u64>,
    /// message → its reactions, `(user, emoji)`, in the order added.
    reactions: HashMap<MessageId, Vec<(UserId, String)>>,
}

/// An idempotency record.
#[derive(Debug, Clone)]
struct Sent {
    id: MessageId,
    positions: Vec<(UserId, Seq)>,
    /// For a fan-out commit (`FanoutStore`): the message and when it was
    /// committed, until drained.
    outbox: Option<(Message, Instant)>,
}

/// Lock stripes of [`MemoryStore`]: channels and inboxes are spread over
/// them, so sends to different channels rarely wait for each other, and no
/// single map grows so large that resizing it stalls every send.
const STRIPES: usize = 16;

fn stripe_of(bytes: &[u8; 16]) -> usize {
    (bytes[15] ^ bytes[7]) as usize % STRIPES
}

#[derive(Debug, Default)]
struct Inboxes {
    /// user → entries; the entry at index `i` has position `i + 1`.
    entries: HashMap<UserId, Vec<InboxEntry>>,
}

/// Chat history, inboxes and device cursors in memory: a [`MessageStore`]
/// (and a [`FanoutStore`]) whose channels and members come from a
/// [`MemoryDirectory`].
///
/// A commit holds its channel's lock while it appends to each member's
/// inbox (taking each inbox's lock in turn), so the messages of one channel
/// enter every inbox in id order and each inbox's positions stay dense.
#[derive(Debug)]
pub struct MemoryStore {
    directory: Arc<MemoryDirectory>,
    channels: Vec<Mutex<HashMap<ChannelId, ChannelLog>>>,
    inboxes: Vec<Mutex<Inboxes>>,
    cursors: Mutex<HashMap<(UserId, DeviceId), Seq>>,
    /// Read and delivered markers; locked after a channel stripe, never
    /// before one.
    receipts: Mutex<HashMap<(UserId, ChannelId), crate::receipts::Receipt>>,
}

impl Default for MemoryStore {
    /// A store with a directory of its own ([`MemoryStore::directory`]).
    fn default() -> Self {
        Self::new(Arc::new(MemoryDirectory::default()))
    }
}

impl MemoryStore {
    /// A store whose channels and members are those of `directory`.
    pub fn new(directory: Arc<MemoryDirectory>) -> Self {
        Self {
            directory,
            channels: (0..STRIPES).map(|_| Mutex::default()).collect(),
            inboxes: (0..STRIPES).map(|_| Mutex::default()).collect(),
            cursors: Mutex::default(),
            receipts: Mutex::default(),
        }
    }

    /// The directory this store reads channel members from.
    pub fn directory(&self) -> Arc<MemoryDirectory> {
        self.directory.clone()
    }

    fn channel_stripe(&self, channel: ChannelId) -> MutexGuard<'_, HashMap<ChannelId, ChannelLog>> {
        lock(&self.channels[stripe_of(channel.as_bytes())])
    }

    fn inbox_stripe(&self, user: UserId) -> MutexGuard<'_, Inboxes> {
        lock(&self.inboxes[stripe_of(user.as_bytes())])
    }

    /// The shared commit: to history (`outbox: false`) or to the outbox.
    fn commit_to(&self, new: NewMessage, outbox: bool) -> Result<Fanout> {
        let started = Instant::now();
        let mut stripe = self.channel_stripe(new.channel_id);
        // Members as of now: membership changes serialize with this commit
        // through the directory's lock, read while the channel is held.
        let channel = self
            .directory
            .channel_now(new.channel_id)
            .ok_or(Error::not_found("channel"))?;
        if !channel.is_member(new.sender) {
            return Err(Error::forbidden("not a member of this channel"));
        }
        if channel.kind == ChannelKind::Direct
            && channel
                .members
                .iter()
                .any(|m| *m != new.sender && self.directory.blocks_now(*m, new.sender))
        {
            return Err(Error::Blocked);
        }
        let log = stripe.entry(new.channel_id).or_default();
        let key = (new.sender, new.client_msg_id.clone());
        if let Some(sent) = log.dedup.get(&key) {
            let existing = match (&sent.outbox, log.messages.get(&sent.id)) {
                (Some((m, _)), _) | (None, Some(m)) => m.clone(),
                (None, None) => {
                    return Ok(Fanout::Drained {
                        id: sent.id,
                        positions: sent.positions.clone(),
                    })
                }
            };
            let message = check_duplicate(&existing, &new.to_message(existing.id))?
                .message()
                .clone();
            return Ok(Fanout::Committed(Committed {
                message,
                duplicate: true,
                positions: sent.positions.clone(),
            }));
        }
        if started.elapsed() > new.timeout {
            return Err(Error::temporary(
                "memory",
                "the commit did not start in time",
            ));
        }
        let id = check_channel_id(new.id, log.last_id)?;
        let message = new.to_message(id);
        let mut positions = Vec::with_capacity(channel.members.len());
        for member in &channel.members {
            let mut inboxes = self.inbox_stripe(*member);
            let inbox = inboxes.entries.entry(*member).or_default();
            let seq = Seq(inbox.len() as u64 + 1);
            inbox.push(InboxEntry {
                seq,
                message: message.clone(),
                change: None,
            });
            positions.push((*member, seq));
        }
        log.last_id = id;
        let own = crate::receipts::Marker {
            id,
            number: log.head.map_or(1, |h| h.number + 1),
        };
        log.head = Some(own);
        log.numbers.insert(id, own.number);
        // The sender has read their own message: under the channel's lock,
        // so with the commit.
        let mut receipts = lock(&self.receipts);
        let receipt = receipts.entry((new.sender, new.channel_id)).or_default();
        receipt.read = Some(crate::receipts::advance(receipt.read, own).marker);
        drop(receipts);
        log.dedup.insert(
            key,
            Sent {
                id,
                positions: positions.clone(),
                outbox: outbox.then(|| (message.clone(), Instant::now())),
            },
        );
        if !outbox {
            log.messages.insert(id, message.clone());
        }
        Ok(Fanout::Committed(Committed {
            message,
            duplicate: false,
            positions,
        }))
    }
}

#[async_trait]
impl HistoryStore for MemoryStore {
    async fn append(&self, message: Message) -> Result<Appended> {
        let mut stripe = self.channel_stripe(message.channel_id);
        let log = stripe.entry(message.channel_id).or_default();
        let key = (message.sender, message.client_msg_id.clone());
        if let Some(sent) = log.dedup.get(&key) {
            if let Some(existing) = log.messages.get(&sent.id) {
                return check_duplicate(existing, &message);
            }
        }
        if log.messages.contains_key(&message.id) {
            return Err(Error::conflict(format!(
                "message id {} already used in this channel",
                message.id
            )));
        }
        log.last_id = log.last_id.max(message.id);
        log.messages.insert(message.id, message.clone());
        log.dedup.entry(key).or_insert(Sent {
            id: message.id,
            positions: Vec::new(),
            outbox: None,
        });
        Ok(Appended::Stored(message))
    }

    async fn get(&self, channel: ChannelId, id: MessageId) -> Result<Option<Message>> {
        Ok(self
            .channel_stripe(channel)
            .get(&channel)
            .and_then(|c| c.messages.get(&id))
            .cloned())
    }

    async fn reactions(
        &self,
        channel: ChannelId,
        messages: &[MessageId],
        viewer: UserId,
    ) -> Result<Vec<(MessageId, Vec<Reactions>)>> {
        let stripe = self.channel_stripe(channel);
        let Some(log) = stripe.get(&channel) else {
            return Ok(Vec::new());
        };
        Ok(messages
            .iter()
            .filter_map(|id| {
                let pairs = log.reactions.get(id).filter(|v| !v.is_empty())?;
                let counted = count_reactions(pairs.iter().map(|(u, e)| (e.as_str(), *u)), viewer);
                Some((*id, counted))
            })
            .collect())
    }

    async fn page(&self, channel: ChannelId, page: Page) -> Result<Paged<Message>> {
        // An empty range (`after >= before`) is an empty page; BTreeMap::range
        // would panic on it.
        if let (Some(after), Some(before)) = (page.after, page.before) {
            if after >= before {
                return Ok(Paged::empty());
            }
        }
        let stripe = self.channel_stripe(channel);
        let Some(log) = stripe.get(&channel) else {
            return Ok(Paged::empty());
        };
        // Only the page's bounds are walked, not the whole channel.
        let range = log
            .messages
            .range(page_bounds(&page))
            .map(|(_, m)| Ok(m.clone()));
        if page.is_forward() {
            take_within(range, page.limit, page.max_bytes, entry_bytes)
        } else {
            let mut p = take_within(range.rev(), page.limit, page.max_bytes, entry_bytes)?;
            p.items.reverse();
            Ok(p)
        }
    }
}

#[async_trait]
impl Inbox for MemoryStore {
    async fn read(
        &self,
        user: UserId,
        after: Seq,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Paged<InboxEntry>> {
        let stripe = self.inbox_stripe(user);
        let entries = stripe
            .entries
            .get(&user)
            .map(Vec::as_slice)
            .unwrap_or_default();
        let from = usize::try_from(after.0)
            .unwrap_or(usize::MAX)
            .min(entries.len());
        take_within(
            entries[from..].iter().map(|e| Ok(e.clone())),
            limit,
            max_bytes,
            |e| entry_bytes(&e.message),
        )
    }

    async fn cursor(&self, user: UserId, device: DeviceId) -> Result<Seq> {
        Ok(lock(&self.cursors)
            .get(&(user, device))
            .copied()
            .unwrap_or(Seq::ZERO))
    }

    async fn advance_cursor(&self, user: UserId, device: DeviceId, cursor: Seq) -> Result<Seq> {
        let mut cursors = lock(&self.cursors);
        let stored = cursors.entry((user, device)).or_insert(Seq::ZERO);
        *stored = (*stored).max(cursor);
        Ok(*stored)
    }
}

#[async_trait]
impl MessageStore for MemoryStore {
    async fn commit(&self, message: NewMessage) -> Result<Committed> {
        match self.commit_to(message, false)? {
            Fanout::Committed(c) => Ok(c),
            // Only fan-out commits leave records without a message here.
            Fanout::Drained { .. } => Err(Error::conflict(
                "this key was committed through the outbox of a sharded deployment",
            )),
        }
    }

    async fn change(&self, change: NewChange) -> Result<Changed> {
        let started = Instant::now();
        // The channel's lock serializes changes with its commits, and the
        // directory read under it with membership changes.
        let mut stripe = self.channel_stripe(change.channel_id);
        let channel = self
            .directory
            .channel_now(change.channel_id)
            .ok_or(Error::not_found("channel"))?;
        if !channel.is_member(change.actor) {
            return Err(Error::forbidden("not a member of this channel"));
        }
        let log = stripe.entry(change.channel_id).or_default();
        let current = log
            .messages
            .get(&change.message_id)
            .ok_or(Error::not_found("message"))?;
        let reacted: Vec<String> = log
            .reactions
            .get(&change.message_id)
            .map(|v| {
                v.iter()
                    .filter(|(u, _)| *u == change.actor)
                    .map(|(_, e)| e.clone())
                    .collect()
            })
            .unwrap_or_default();
        let owner = match channel.kind {
            ChannelKind::Group => channel.owner,
            _ => None,
        };
        let (message, what) = match decide(current, owner, &change, &reacted)? {
            Decision::Unchanged(what) => {
                return Ok(Changed {
                    message: current.clone(),
                    change: what,
                    unchanged: true,
                    positions: Vec::new(),
                })
            }
            Decision::Apply { message, change } => (message, change),
        };
        if started.elapsed() >= change.timeout {
            return Err(Error::temporary(
                "memory",
                "the change did not start in time",
            ));
        }
        let id = change.message_id;
        match &what {
            Change::Reacted { user, emoji } => log
                .reactions
                .entry(id)
                .or_default()
                .push((*user, emoji.clone())),
            Change::Unreacted { user, emoji } => {
                if let Some(v) = log.reactions.get_mut(&id) {
                    v.retain(|(u, e)| !(u == user && e == emoji));
                }
            }
            Change::Deleted { .. } => {
                log.reactions.remove(&id);
            }
            _ => {}
        }
        log.messages.insert(id, message.clone());
        let mut positions = Vec::with_capacity(channel.members.len());
        for member in &channel.members {
            let mut inboxes = self.inbox_stripe(*member);
            let inbox = inboxes.entries.entry(*member).or_default();
            let seq = Seq(inbox.len() as u64 + 1);
            inbox.push(InboxEntry {
                seq,
                message: message.clone(),
                change: Some(what.clone()),
            });
            positions.push((*member, seq));
        }
        Ok(Changed {
            message,
            change: what,
            unchanged: false,
            positions,
        })
    }
}

#[async_trait]
impl FanoutStore for MemoryStore {
    async fn commit_fanout(&self, message: NewMessage) -> Result<Fanout> {
        self.commit_to(message, true)
    }

    async fn outbox(&self, min_age: Duration, limit: usize) -> Result<Vec<Message>> {
        let mut due = Vec::new();
        for stripe in &self.channels {
            for log in lock(stripe).values() {
                due.extend(
                    log.dedup
                        .values()
                        .filter_map(|s| s.outbox.clone())
                        .filter(|(_, at)| at.elapsed() >= min_age),
                );
            }
        }
        due.sort_by_key(|(m, at)| (*at, m.id));
        Ok(due.into_iter().take(limit).map(|(m, _)| m).collect())
    }

    async fn outbox_done(&self, channel: ChannelId, id: MessageId) -> Result<()> {
        let mut stripe = self.channel_stripe(channel);
        if let Some(log) = stripe.get_mut(&channel) {
            for sent in log.dedup.values_mut().filter(|s| s.id == id) {
                sent.outbox = None;
                // Drained: the record stays for idempotency, answering from
                // positions; the message now lives in its history shard.
            }
        }
        Ok(())
    }
}

#[derive(Debug, Default)]
struct HubState {
    /// user → node → subscription count
    routes: HashMap<UserId, HashMap<u64, usize>>,
    handlers: HashMap<u64, Arc<dyn EnvelopeHandler>>,
    next_node: u64,
}

/// The in-process meeting point of several [`MemoryBus`] nodes, so a test can
/// run two chat servers in one process and see messages cross between them.
#[derive(Debug, Clone, Default)]
pub struct MemoryBusHub {
    state: Arc<Mutex<HubState>>,
}

impl MemoryBusHub {
    /// A new, empty hub.
    pub fn new() -> Self {
        Self::default()
    }

    /// A bus for one more node on this hub.
    pub fn node(&self) -> MemoryBus {
        let mut st = lock(&self.state);
        st.next_node += 1;
        MemoryBus {
            hub: self.clone(),
            node: st.next_node,
            attached: OnceLock::new(),
        }
    }
}

/// A delivery bus in memory: one node on a [`MemoryBusHub`]
/// ([`MemoryBus::default`] makes a single-node bus with its own hub).
#[derive(Debug)]
pub struct MemoryBus {
    hub: MemoryBusHub,
    node: u64,
    attached: OnceLock<()>,
}

impl Default for MemoryBus {
    fn default() -> Self {
        MemoryBusHub::new().node()
    }
}

impl MemoryBus {
    /// Ends this node as a crash would: its subscriptions and handler leave
    /// the hub, and envelopes for its users go nowhere.
    pub fn crash(&self) {
        let mut st = lock(&self.hub.state);
        st.handlers.remove(&self.node);
        st.routes.retain(|_, nodes| {
            nodes.remove(&self.node);
            !nodes.is_empty()
        });
    }

    /// Acts out a lost and restored broker connection: the subscriptions
    /// stay, and the handler is told that live delivery may have had a gap.
    pub fn simulate_gap(&self) {
        let handler = lock(&self.hub.state).handlers.get(&self.node).cloned();
        if let Some(handler) = handler {
            handler.resync();
        }
    }
}

#[async_trait]
impl DeliveryBus for MemoryBus {
    async fn attach(&self, handler: Arc<dyn EnvelopeHandler>) -> Result<()> {
        if self.attached.set(()).is_err() {
            return Err(Error::invalid("a handler is already attached to this bus"));
        }
        lock(&self.hub.state).handlers.insert(self.node, handler);
        Ok(())
    }

    async fn subscribe(&self, user: UserId) -> Result<()> {
        let mut st = lock(&self.hub.state);
        *st.routes
            .entry(user)
            .or_default()
            .entry(self.node)
            .or_insert(0) += 1;
        Ok(())
    }

    async fn unsubscribe(&self, user: UserId) -> Result<()> {
        let mut st = lock(&self.hub.state);
        if let Some(nodes) = st.routes.get_mut(&user) {
            if let Some(count) = nodes.get_mut(&self.node) {
                *count -= 1;
                if *count == 0 {
                    nodes.remove(&self.node);
                }
            }
            if nodes.is_empty() {
                st.routes.remove(&user);
            }
        }
        Ok(())
    }

    async fn publish(&self, users: &[UserId], envelope: Envelope) -> Result<()> {
        // Group targets by node under the lock, deliver outside it: handlers
        // only enqueue, but must never run while the hub is locked.
        let mut targets: HashMap<u64, (Arc<dyn EnvelopeHandler>, Vec<UserId>)> = HashMap::new();
        {
            let st = lock(&self.hub.state);
            for user in users {
                for node in st.routes.get(user).into_iter().flat_map(|n| n.keys()) {
                    if let Some(handler) = st.handlers.get(node) {
                        targets
                            .entry(*node)
                            .or_insert_with(|| (handler.clone(), Vec::new()))
                            .1
                            .push(*user);
                    }
                }
            }
        }
        for (handler, users) in targets.into_values() {
            handler.deliver(&users, &envelope);
        }
        Ok(())
    }
}

#[derive(Debug, Default)]
struct PresenceState {
    /// Alive devices: user → device → last heartbeat.
    alive: HashMap<UserId, HashMap<DeviceId, u64>>,
    /// Open connections: user → (device, tracker) → last heartbeat through
    /// that tracker.
    connected: HashMap<UserId, HashMap<(DeviceId, u64), u64>>,
    /// Last heartbeat of any device, kept after the user goes offline.
    last_active: HashMap<UserId, u64>,
    /// Trackers made on this state so far.
    trackers: u64,
}

/// Presence in memory, for one process. [`MemoryPresence::handle`] gives
/// further trackers on the same state, as several chat servers on one shared
/// store (Redis, in `chat-cluster`) would have.
#[derive(Debug)]
pub struct MemoryPresence {
    timeout_ms: u64,
    /// This tracker's number on the shared state.
    tracker: u64,
    state: Arc<Mutex<PresenceState>>,
}

impl MemoryPresence {
    /// A tracker that considers a device gone `timeout_ms` after its last
    /// heartbeat.
    pub fn new(timeout_ms: u64) -> Self {
        Self {
            timeout_ms,
            tracker: 0,
            state: Arc::new(Mutex::new(PresenceState::default())),
        }
    }

    /// Another tracker on the same state.
    pub fn handle(&self) -> Self {
        let mut st = lock(&self.state);
        st.trackers += 1;
        Self {
            timeout_ms: self.timeout_ms,
            tracker: st.trackers,
            state: self.state.clone(),
        }
    }
}

impl Default for MemoryPresence {
    /// A 30-second timeout, the design's default.
    fn default() -> Self {
        Self::new(30_000)
    }
}

#[async_trait]
impl PresenceTracker for MemoryPresence {
    async fn heartbeat(
        &self,
        user: UserId,
        device: DeviceId,
        now_ms: u64,
    ) -> Result<Option<Presence>> {
        let mut st = lock(&self.state);
        let devices = st.alive.entry(user).or_default();
        let was_online = !devices.is_empty();
        let last = devices.entry(device).or_insert(now_ms);
        *last = (*last).max(now_ms);
        let seen = st
            .connected
            .entry(user)
            .or_default()
            .entry((device, self.tracker))
            .or_insert(now_ms);
        *seen = (*seen).max(now_ms);
        let last = st.last_active.entry(user).or_insert(now_ms);
        *last = (*last).max(now_ms);
        Ok((!was_online).then_some(Presence {
            user,
            status: PresenceStatus::Online,
            last_active_at: Some(*last),
        }))
    }

    async fn disconnect(&self, user: UserId, device: DeviceId, _now_ms: u64) -> Result<()> {
        let mut st = lock(&self.state);
        if let Some(map) = st.connected.get_mut(&user) {
            map.remove(&(device, self.tracker));
            if map.is_empty() {
                st.connected.remove(&user);
            }
        }
        Ok(())
    }

    async fn expire(&self, now_ms: u64) -> Result<Vec<Presence>> {
        let mut st = lock(&self.state);
        let deadline = now_ms.saturating_sub(self.timeout_ms);
        let mut went_offline = Vec::new();
        st.alive.retain(|user, devices| {
            devices.retain(|_, last| *last > deadline);
            if devices.is_empty() {
                went_offline.push(*user);
                false
            } else {
                true
            }
        });
        // Connections whose heartbeats stopped (their server died) no
        // longer count; forget them.
        st.connected.retain(|_, map| {
            map.retain(|_, last| *last > deadline);
            !map.is_empty()
        });
        Ok(went_offline
            .into_iter()
            .map(|user| Presence {
                user,
                status: PresenceStatus::Offline,
                last_active_at: st.last_active.get(&user).copied(),
            })
            .collect())
    }

    async fn status(&self, users: &[UserId]) -> Result<Vec<Presence>> {
        let st = lock(&self.state);
        Ok(users
            .iter()
            .map(|u| Presence {
                user: *u,
                status: if st.alive.contains_key(u) {
                    PresenceStatus::Online
                } else {
                    PresenceStatus::Offline
                },
                last_active_at: st.last_active.get(u).copied(),
            })
            .collect())
    }

    async fn connected(&self, users: &[UserId], now_ms: u64) -> Result<Vec<UserId>> {
        let st = lock(&self.state);
        let deadline = now_ms.saturating_sub(self.timeout_ms);
        Ok(users
            .iter()
            .filter(|u| {
                st.connected
                    .get(u)
                    .is_some_and(|map| map.values().any(|last| *last > deadline))
            })
            .copied()
            .collect())
    }
}

/// A notifier that writes one log line per notification: the default when no
/// push provider is configured. It reports every device as skipped.
#[derive(Debug, Default, Clone, Copy)]
pub struct LoggingNotifier;

#[async_trait]
impl PushNotifier for LoggingNotifier {
    async fn notify(&self, n: &PushNotification) -> Result<PushReport> {
        tracing::info!(
            recipient = %n.recipient,
            devices = n.devices.len(),
            channel = %n.channel_id,
            message = %n.message_id,
            count = n.count,
            "push notification (logging notifier)"
        );
        Ok(PushReport::all(
            n,
            DeliveryOutcome::Skipped {
                reason: "no push provider configured".into(),
            },
        ))
    }
}

/// A notifier that records what it was asked to send, for tests. Every
/// device is reported delivered, except those whose token was marked with
/// [`MemoryNotifier::invalidate_token`].
#[derive(Debug, Default)]
pub struct MemoryNotifier {
    sent: Mutex<Vec<PushNotification>>,
    invalid: Mutex<HashSet<String>>,
}

impl MemoryNotifier {
    /// Everything notified so far.
    pub fn sent(&self) -> Vec<PushNotification> {
        lock(&self.sent).clone()
    }

    /// From now on, reports devices with this push token as
    /// [`DeliveryOutcome::InvalidToken`], as a platform does for an
    /// uninstalled app.
    pub fn invalidate_token(&self, token: impl Into<String>) {
        lock(&self.invalid).insert(token.into());
    }
}

#[async_trait]
impl PushNotifier for MemoryNotifier {
    async fn notify(&self, n: &PushNotification) -> Result<PushReport> {
        lock(&self.sent).push(n.clone());
        let invalid = lock(&self.invalid);
        let mut report = PushReport::new();
        for d in &n.devices {
            let outcome = match &d.push_token {
                Some(t) if invalid.contains(t) => DeliveryOutcome::InvalidToken {
                    reason: "invalidated by the test".into(),
                },
                _ => DeliveryOutcome::Delivered,
            };
            report.record(d.id, outcome);
        }
        Ok(report)
    }
}

/// One registered server: its entry, when its lease ends, and the client
/// that holds it.
#[derive(Debug)]
struct Registration {
    info: ServerInfo,
    expires: u64,
    client: u64,
}

#[derive(Debug, Default)]
struct RegistryState {
    servers: BTreeMap<String, Registration>,
    clients: u64,
}

/// Service discovery in memory, with leases read from a clock. Each value is
/// one client of the registry; [`MemoryDiscovery::handle`] gives another
/// client of the same registry, as another chat server would be.
#[derive(Debug)]
pub struct MemoryDiscovery {
    clock: Arc<dyn Clock>,
    client: u64,
    state: Arc<Mutex<RegistryState>>,
}

impl MemoryDiscovery {
    /// A registry whose leases follow `clock`.
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        Self {
            clock,
            client: 0,
            state: Arc::new(Mutex::new(RegistryState::default())),
        }
    }

    /// Another client of the same registry.
    pub fn handle(&self) -> Self {
        let mut st = lock(&self.state);
        st.clients += 1;
        Self {
            clock: self.clock.clone(),
            client: st.clients,
            state: self.state.clone(),
        }
    }
}

impl Default for MemoryDiscovery {
    fn default() -> Self {
        Self::new(Arc::new(SystemClock))
    }
}

#[async_trait]
impl ServiceDiscovery for MemoryDiscovery {
    async fn register(&self, info: ServerInfo, ttl_ms: u64) -> Result<()> {
        let now = self.clock.now_ms();
        let mut st = lock(&self.state);
        st.servers.retain(|_, r| r.expires > now);
        for (id, r) in &st.servers {
            if r.client == self.client {
                continue;
            }
            if *id == info.id {
                return Err(Error::AlreadyExists { what: "server id" });
            }
            if r.info.node_id == info.node_id {
                return Err(Error::AlreadyExists { what: "node id" });
            }
        }
        let expires = now.saturating_add(ttl_ms);
        let client = self.client;
        st.servers.insert(
            info.id.clone(),
            Registration {
                info,
                expires,
                client,
            },
        );
        Ok(())
    }

    async fn deregister(&self, id: &str) -> Result<()> {
        let mut st = lock(&self.state);
        if st.servers.get(id).is_some_and(|r| r.client == self.client) {
            st.servers.remove(id);
        }
        Ok(())
    }

    async fn servers(&self) -> Result<Vec<ServerInfo>> {
        let now = self.clock.now_ms();
        let mut st = lock(&self.state);
        st.servers.retain(|_, r| r.expires > now);
        Ok(st.servers.values().map(|r| r.info.clone()).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn presence_goes_online_once_and_offline_after_timeout() {
        let p = MemoryPresence::new(30_000);
        let u = UserId::new_random();
        let d1 = DeviceId::new_random();
        let d2 = DeviceId::new_random();
        assert!(p.heartbeat(u, d1, 1_000).await.unwrap().is_some());
        assert!(p.heartbeat(u, d2, 2_000).await.unwrap().is_none());
        assert!(p.heartbeat(u, d1, 5_000).await.unwrap().is_none());
        p.disconnect(u, d1, 6_000).await.unwrap();
        assert_eq!(p.connected(&[u], 6_000).await.unwrap(), vec![u]);
        p.disconnect(u, d2, 6_000).await.unwrap();
        assert!(p.connected(&[u], 6_000).await.unwrap().is_empty());
        // d1 last beat at 5 s: still online at 34 s, offline at 35 s.
        assert!(p.expire(34_000).await.unwrap().is_empty());
        let gone = p.expire(35_000).await.unwrap();
        assert_eq!(gone.len(), 1);
        assert_eq!(gone[0].status, PresenceStatus::Offline);
        assert_eq!(gone[0].last_active_at, Some(5_000));
        assert!(p.expire(40_000).await.unwrap().is_empty());
        let st = p.status(&[u]).await.unwrap();
        assert_eq!(st[0].status, PresenceStatus::Offline);
    }

    #[tokio::test]
    async fn bus_routes_between_nodes() {
        #[derive(Debug, Default)]
        struct Rec(Mutex<Vec<UserId>>);
        impl EnvelopeHandler for Rec {
            fn deliver(&self, users: &[UserId], _e: &Envelope) {
                lock(&self.0).extend_from_slice(users);
            }
            fn resync(&self) {}
        }
        let hub = MemoryBusHub::new();
        let (a, b) = (hub.node(), hub.node());
        let (ra, rb) = (Arc::new(Rec::default()), Arc::new(Rec::default()));
        a.attach(ra.clone()).await.unwrap();
        b.attach(rb.clone()).await.unwrap();
        assert!(a.attach(ra.clone()).await.is_err());
        let u = UserId::new_random();
        b.subscribe(u).await.unwrap();
        b.subscribe(u).await.unwrap();
        let env = Envelope {
            event: crate::bus::BusEvent::Presence {
                presence: Presence {
                    user: u,
                    status: PresenceStatus::Online,
                    last_active_at: None,
                },
            },
            skip_device: None,
        };
        a.publish(&[u], env.clone()).await.unwrap();
        assert_eq!(lock(&rb.0).len(), 1);
        assert!(lock(&ra.0).is_empty());
        b.unsubscribe(u).await.unwrap();
        a.publish(&[u], env.clone()).await.unwrap();
        assert_eq!(lock(&rb.0).len(), 2, "still one subscription left");
        b.unsubscribe(u).await.unwrap();
        a.publish(&[u], env).await.unwrap();
        assert_eq!(lock(&rb.0).len(), 2);
    }

    #[tokio::test]
    async fn discovery_leases_expire() {
        let clock = Arc::new(crate::clock::ManualClock::new(1_000));
        let d = MemoryDiscovery::new(clock.clone());
        let info = ServerInfo {
            id: "s1".into(),
            node_id: 1,
            ws_url: "ws://x".into(),
            http_url: "http://x".into(),
            region: None,
            capacity: 10,
            connections: 0,
        };
        d.register(info, 5_000).await.unwrap();
        assert_eq!(d.servers().await.unwrap().len(), 1);
        clock.advance(5_000);
        assert!(d.servers().await.unwrap().is_empty());
    }
}
