//! The delivery bus on NATS (feature `nats`).
//!
//! # Routing: one message per node that holds recipients
//!
//! Each node subscribes to its own subject, `{prefix}.bus.{node}`, and
//! records which users it holds in a JetStream key-value bucket,
//! `{prefix}-routes` (memory storage: routes are as short-lived as the
//! connections behind them), one key `r.{node}.{user}` per user it holds.
//! Every node keeps a local copy of the whole table through a watch on the
//! bucket. A publish groups its users by node from that copy and sends one
//! message per node, carrying that node's users and the envelope (encoded
//! once); the node hands it to its handler in one call. A group of 100 over
//! four nodes is four messages, not a hundred.
//!
//! A local copy can lag: a node that subscribed a user a moment ago may not
//! be in it yet. So a publish first asks the bucket's stream for its last
//! sequence number and waits until the watch has applied at least that far
//! (one small request per publish, whatever the number of users): every
//! `subscribe` that returned before the publish began is then in the copy.
//! This is what makes "delivery after `subscribe` returns" hold across
//! processes. Users of the publishing node itself are delivered in-process.
//!
//! # Liveness and gaps
//!
//! Each node also writes `n.{node}` every heartbeat. A node whose heartbeat
//! has not been seen for `dead_after` is dead: any node then deletes its
//! keys (idempotently), so its subscriptions disappear with it. When the
//! broker connection breaks, async-nats reconnects and restores the node's
//! subject subscription; the bus then rewrites all of the node's routes (the
//! bucket may have been lost with a broker restart), restarts its watch, and
//! calls [`EnvelopeHandler::resync`]. `subscribe` and `unsubscribe` while
//! the broker is away update the node's own counts and succeed; the repair
//! writes them. A node that finds its own heartbeat key deleted (others
//! thought it dead) does the same.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use async_trait::async_trait;
use chat_core::{DeliveryBus, Envelope, EnvelopeHandler, Error, Result, UserId};
use futures::{StreamExt, TryStreamExt};
use tokio::sync::{watch, Notify};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::local::LocalUsers;
use crate::wire;

const BACKEND: &str = "nats";

/// Route writes in flight at once when a node rewrites all of its routes.
const REWRITE_CONCURRENCY: usize = 64;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn temporary(e: impl std::error::Error + Send + Sync + 'static) -> Error {
    Error::temporary(BACKEND, e)
}

/// How to reach NATS and how to behave on it.
#[derive(Debug, Clone)]
pub struct NatsBusConfig {
    /// Server URL(s), comma-separated, e.g. `nats://127.0.0.1:4222`.
    pub url: String,
    /// Prefix of every subject and of the routes bucket, so deployments and
    /// test runs sharing a broker never meet. `A-Z a-z 0-9 _ -`.
    pub prefix: String,
    /// How often this node writes its heartbeat.
    pub heartbeat: Duration,
    /// A node whose heartbeat is older than this is dead and its routes are
    /// removed. Several heartbeats, so a slow broker does not kill nodes.
    pub dead_after: Duration,
    /// Deadline of one request to the broker (a route write, the sequence
    /// check before a publish).
    pub request_timeout: Duration,
}

impl NatsBusConfig {
    /// Defaults for `url` and `prefix`: heartbeat every 5 s, dead after 30 s,
    /// requests time out after 5 s.
    pub fn new(url: impl Into<String>, prefix: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            prefix: prefix.into(),
            heartbeat: Duration::from_secs(5),
            dead_after: Duration::from_secs(30),
            request_timeout: Duration::from_secs(5),
        }
    }
}

/// The local copy of the routes table.
#[derive(Debug, Default)]
struct Replica {
    /// user → nodes that hold it
    routes: HashMap<UserId, HashSet<String>>,
    /// node → when its heartbeat was last seen here
    nodes: HashMap<String, Instant>,
}

/// A key of the routes bucket.
enum Key {
    Route { node: String, user: UserId },
    Node { node: String },
}

fn parse_key(key: &str) -> Option<Key> {
    let mut parts = key.split('.');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some("r"), Some(node), Some(user), None) => Some(Key::Route {
            node: node.to_owned(),
            user: user.parse().ok()?,
        }),
        (Some("n"), Some(node), None, None) => Some(Key::Node {
            node: node.to_owned(),
        }),
        _ => None,
    }
}

fn route_key(node: &str, user: UserId) -> String {
    format!("r.{node}.{}", user.0.simple())
}

fn node_key(node: &str) -> String {
    format!("n.{node}")
}

#[derive(Debug)]
struct Inner {
    config: NatsBusConfig,
    client: async_nats::Client,
    js: jetstream::Context,
    /// This node's name on the bus (random per process).
    node: String,
    bucket: String,
    /// The bucket handle; replaced when the bucket is created again.
    kv: Mutex<Option<kv::Store>>,
    handler: OnceLock<Arc<dyn EnvelopeHandler>>,
    /// Users held here, with their subscription counts.
    local: LocalUsers,
    replica: Mutex<Replica>,
    /// Highest stream sequence the watch has applied.
    applied: watch::Sender<u64>,
    /// Barrier tickets handed out: a publish takes the next one.
    tickets: AtomicU64,
    /// Wakes the barrier task.
    barrier_wanted: Notify,
    /// The barrier task's last answer: the highest ticket it covers, and
    /// the stream's last sequence (or why it could not be read).
    barrier_seq: watch::Sender<(u64, std::result::Result<u64, String>)>,
    /// Tells the watch task to start over.
    rewatch: Notify,
    shutdown: CancellationToken,
    tasks: TaskTracker,
}

/// The delivery bus on NATS with JetStream. See the [module docs](self).
#[derive(Debug, Clone)]
pub struct NatsBus {
    inner: Arc<Inner>,
}

impl NatsBus {
    /// Connects, creates the routes bucket if needed, subscribes this
    /// node's subject and starts the watch and heartbeat tasks. Returns once
    /// the local copy of the routes is current. Fails if the broker cannot
    /// be reached or has no JetStream.
    pub async fn connect(config: NatsBusConfig) -> Result<Self> {
        crate::check_prefix(&config.prefix)?;
        let node = uuid::Uuid::new_v4().simple().to_string();
        // The callback needs the bus, which needs the client: a cell filled
        // right after.
        let cell: Arc<OnceLock<std::sync::Weak<Inner>>> = Arc::new(OnceLock::new());
        let events = cell.clone();
        let client = async_nats::ConnectOptions::new()
            .name(format!("chat-bus-{node}"))
            .connection_timeout(config.request_timeout)
            .max_reconnects(None)
            .event_callback(move |event| {
                let events = events.clone();
                async move {
                    if let Some(inner) = events.get().and_then(|w| w.upgrade()) {
                        inner.on_event(event);
                    }
                }
            })
            .connect(config.url.as_str())
            .await
            .map_err(|e| Error::temporary(BACKEND, e))?;
        let mut js = jetstream::new(client.clone());
        js.set_timeout(config.request_timeout);
        let (applied, _) = watch::channel(0);
        let (barrier_seq, _) = watch::channel((0, Ok(0)));
        let inner = Arc::new(Inner {
            bucket: format!("{}-routes", config.prefix),
            config,
            client,
            js,
            node,
            kv: Mutex::new(None),
            handler: OnceLock::new(),
            local: LocalUsers::new(),
            replica: Mutex::new(Replica::default()),
            applied,
            tickets: AtomicU64::new(0),
            barrier_wanted: Notify::new(),
            barrier_seq,
            rewatch: Notify::new(),
            shutdown: CancellationToken::new(),
            tasks: TaskTracker::new(),
        });
        let _ = cell.set(Arc::downgrade(&inner));
        inner.store().await?;
        inner.heartbeat().await?;
        let deliveries = inner
            .client
            .subscribe(inner.subject(&inner.node))
            .await
            .map_err(temporary)?;
        inner.client.flush().await.map_err(temporary)?;
        let watcher = inner.start_watch().await?;
        inner.tasks.spawn(inner.clone().deliver_loop(deliveries));
        inner.tasks.spawn(inner.clone().watch_loop(watcher));
        inner.tasks.spawn(inner.clone().maintain_loop());
        inner.tasks.spawn(inner.clone().barrier_loop());
        inner.barrier().await?;
        Ok(Self { inner })
    }

    /// This node's name on the bus.
    pub fn node(&self) -> &str {
        &self.inner.node
    }

    /// Deletes the routes bucket of this bus's prefix: for tests and
    /// benchmarks that are done with a prefix. Every node on it stops
    /// routing until it restores its routes.
    pub async fn remove_routes(&self) -> Result<()> {
        self.inner
            .js
            .delete_stream(format!("KV_{}", self.inner.bucket))
            .await
            .map_err(temporary)?;
        Ok(())
    }

    /// Stops the background tasks and closes the connection. The node's
    /// routes stay until others see its heartbeat stop (as after a crash);
    /// a graceful server shutdown unsubscribes its users first.
    pub async fn close(&self) {
        self.inner.shutdown.cancel();
        self.inner.tasks.close();
        self.inner.tasks.wait().await;
        let _ = self.inner.client.drain().await;
    }
}

impl Inner {
    fn subject(&self, node: &str) -> String {
        format!("{}.bus.{node}", self.config.prefix)
    }

    fn connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    fn on_event(&self, event: async_nats::Event) {
        match event {
            async_nats::Event::Disconnected => {
                tracing::warn!(node = %self.node, "NATS connection lost; live delivery paused");
                self.local.mark_dirty();
            }
            async_nats::Event::Connected => {
                tracing::info!(node = %self.node, "NATS connected");
                self.local.wake_repair();
            }
            other => tracing::debug!(event = %other, "NATS event"),
        }
    }

    /// The routes bucket, created if missing (a broker restart loses it:
    /// its storage is memory).
    async fn store(&self) -> Result<kv::Store> {
        if let Some(kv) = lock(&self.kv).clone() {
            return Ok(kv);
        }
        // The bucket's stream, configured as a key-value bucket with one
        // value per key. Created directly rather than through
        // `create_key_value`, which first asks for account details in a
        // form older servers (2.9) do not answer.
        use jetstream::stream;
        let created = self
            .js
            .get_or_create_stream(stream::Config {
                name: format!("KV_{}", self.bucket),
                description: Some("chat delivery bus: which node holds which user".into()),
                subjects: vec![format!("$KV.{}.>", self.bucket)],
                max_messages_per_subject: 1,
                discard: stream::DiscardPolicy::New,
                allow_rollup: true,
                deny_delete: true,
                allow_direct: true,
                storage: stream::StorageType::Memory,
                num_replicas: 1,
                ..Default::default()
            })
            .await;
        let opened = match created {
            Ok(_) => self
                .js
                .get_key_value(self.bucket.clone())
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        let kv = opened.map_err(|e| {
            Error::temporary(
                BACKEND,
                format!("cannot open the routes bucket (is JetStream enabled?): {e}"),
            )
        })?;
        *lock(&self.kv) = Some(kv.clone());
        Ok(kv)
    }

    async fn heartbeat(&self) -> Result<()> {
        let kv = self.store().await?;
        let now = chat_core::clock::system_now_ms().to_string();
        kv.put(node_key(&self.node), now.into())
            .await
            .map_err(temporary)?;
        Ok(())
    }

    async fn put_route(&self, user: UserId) -> Result<()> {
        let kv = self.store().await?;
        kv.put(route_key(&self.node, user), bytes::Bytes::new())
            .await
            .map_err(temporary)?;
        Ok(())
    }

    async fn delete_route(&self, node: &str, user: UserId) -> Result<()> {
        let kv = self.store().await?;
        kv.delete(route_key(node, user)).await.map_err(temporary)?;
        Ok(())
    }

    /// Waits until the local copy holds every route written before this
    /// call began.
    ///
    /// The stream's last sequence is read by one task for every publish
    /// waiting at the time (one request per round trip, however many
    /// publishes run at once). A publish takes a ticket first; the task
    /// notes the highest ticket handed out *before* it sends each request,
    /// so a publish only trusts an answer to a request sent after it began.
    async fn barrier(&self) -> Result<()> {
        let ticket = self.tickets.fetch_add(1, Ordering::SeqCst) + 1;
        self.barrier_wanted.notify_one();
        let mut answers = self.barrier_seq.subscribe();
        let timeout = self.config.request_timeout;
        let behind = || {
            Error::temporary(
                BACKEND,
                "the routes watch is behind the broker; retry later",
            )
        };
        let answer =
            tokio::time::timeout(timeout, answers.wait_for(|(covered, _)| *covered >= ticket))
                .await
                .map_err(|_| behind())?
                .map_err(temporary)?
                .1
                .clone();
        let target = answer.map_err(|e| Error::temporary(BACKEND, e))?;
        let mut applied = self.applied.subscribe();
        tokio::time::timeout(timeout, applied.wait_for(|seq| *seq >= target))
            .await
            .map_err(|_| behind())?
            .map_err(temporary)?;
        Ok(())
    }

    /// Reads the routes stream's last sequence whenever publishes wait for
    /// it (see [`Inner::barrier`]).
    async fn barrier_loop(self: Arc<Self>) {
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = self.barrier_wanted.notified() => {}
            }
            let covered = self.tickets.load(Ordering::SeqCst);
            let seq = match self.js.get_stream(format!("KV_{}", self.bucket)).await {
                Ok(stream) => Ok(stream.cached_info().state.last_sequence),
                Err(e) => Err(format!("cannot read the routes stream: {e}")),
            };
            self.barrier_seq
                .send_modify(|answer| *answer = (covered, seq));
        }
    }

    async fn start_watch(&self) -> Result<kv::Watch> {
        let kv = self.store().await?;
        // Start over: the watch replays the current table.
        *lock(&self.replica) = Replica::default();
        self.applied.send_replace(0);
        kv.watch_with_history(">").await.map_err(temporary)
    }

    fn apply(&self, entry: kv::Entry) {
        let removed = matches!(
            entry.operation,
            kv::Operation::Delete | kv::Operation::Purge
        );
        {
            let mut replica = lock(&self.replica);
            match parse_key(&entry.key) {
                Some(Key::Route { node, user }) => {
                    if removed {
                        if let Some(nodes) = replica.routes.get_mut(&user) {
                            nodes.remove(&node);
                            if nodes.is_empty() {
                                replica.routes.remove(&user);
                            }
                        }
                    } else {
                        replica.routes.entry(user).or_default().insert(node);
                    }
                }
                Some(Key::Node { node }) => {
                    if removed {
                        replica.nodes.remove(&node);
                        if node == self.node {
                            // Others thought this node dead and removed its
                            // routes: write them again.
                            tracing::warn!(node = %self.node, "this node was declared dead; restoring its routes");
                            self.local.mark_dirty();
                            self.local.wake_repair();
                        }
                    } else {
                        replica.nodes.insert(node, Instant::now());
                    }
                }
                None => tracing::debug!(key = %entry.key, "unknown key in the routes bucket"),
            }
        }
        self.applied
            .send_modify(|seq| *seq = (*seq).max(entry.revision));
    }

    async fn deliver_loop(self: Arc<Self>, mut deliveries: async_nats::Subscriber) {
        loop {
            let message = tokio::select! {
                _ = self.shutdown.cancelled() => return,
                m = deliveries.next() => m,
            };
            let Some(message) = message else {
                // Only when the client is closed.
                return;
            };
            match wire::decode(&message.payload) {
                Ok((users, envelope)) => self.deliver_local(&users, &envelope),
                Err(e) => tracing::warn!(error = %e, "dropping a malformed bus delivery"),
            }
        }
    }

    /// Hands `envelope` to the handler for those of `users` held here (a
    /// sender's copy of the table may be a little stale).
    fn deliver_local(&self, users: &[UserId], envelope: &Envelope) {
        let here = self.local.here(users);
        if here.is_empty() {
            return;
        }
        if let Some(handler) = self.handler.get() {
            handler.deliver(&here, envelope);
        }
    }

    async fn watch_loop(self: Arc<Self>, mut watcher: kv::Watch) {
        loop {
            let next = tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = self.rewatch.notified() => None,
                e = watcher.next() => Some(e),
            };
            match next {
                Some(Some(Ok(entry))) => {
                    self.apply(entry);
                    continue;
                }
                Some(Some(Err(e))) => tracing::warn!(error = %e, "routes watch failed"),
                Some(None) => tracing::warn!("routes watch ended"),
                None => {}
            }
            // Start a new watch, until one starts.
            loop {
                if self.shutdown.is_cancelled() {
                    return;
                }
                // The bucket may be gone with a broker restart.
                *lock(&self.kv) = None;
                match self.start_watch().await {
                    Ok(w) => {
                        watcher = w;
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot watch the routes bucket");
                        self.local.mark_dirty();
                        tokio::select! {
                            _ = self.shutdown.cancelled() => return,
                            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                        }
                    }
                }
            }
        }
    }

    async fn maintain_loop(self: Arc<Self>) {
        let mut tick = tokio::time::interval(self.config.heartbeat);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = tick.tick() => {}
                _ = self.local.repair_wanted() => {}
            }
            if self.local.is_dirty() {
                if let Err(e) = self.repair().await {
                    tracing::warn!(error = %e, "cannot restore the bus routes yet");
                    tokio::select! {
                        _ = self.shutdown.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                    }
                    self.local.wake_repair();
                    continue;
                }
            }
            if let Err(e) = self.heartbeat().await {
                tracing::warn!(error = %e, "bus heartbeat failed");
                self.local.mark_dirty();
                continue;
            }
            self.collect_dead().await;
        }
    }

    /// After a gap: writes the heartbeat and every route again, restarts the
    /// watch, and tells the node that live delivery may have missed events.
    async fn repair(&self) -> Result<()> {
        self.local.clear_dirty();
        // The bucket may have been lost with the broker: open it afresh.
        *lock(&self.kv) = None;
        let result = async {
            self.heartbeat().await?;
            futures::stream::iter(self.local.all())
                .map(|u| async move {
                    let _order = self.local.route_lock(u).lock().await;
                    if self.local.holds(u) {
                        self.put_route(u).await
                    } else {
                        Ok(())
                    }
                })
                .buffer_unordered(REWRITE_CONCURRENCY)
                .try_collect::<Vec<()>>()
                .await?;
            self.rewatch.notify_one();
            Ok::<(), Error>(())
        }
        .await;
        if let Err(e) = result {
            self.local.mark_dirty();
            return Err(e);
        }
        tracing::info!(node = %self.node, "bus routes restored; asking sessions to resync");
        if let Some(handler) = self.handler.get() {
            handler.resync();
        }
        Ok(())
    }

    /// Removes the routes of nodes whose heartbeat stopped.
    async fn collect_dead(&self) {
        let dead: Vec<(String, Vec<UserId>)> = {
            let replica = lock(&self.replica);
            let now = Instant::now();
            let dead: HashSet<&String> = replica
                .nodes
                .iter()
                .filter(|(node, seen)| {
                    **node != self.node && now.duration_since(**seen) > self.config.dead_after
                })
                .map(|(node, _)| node)
                .collect();
            dead.iter()
                .map(|node| {
                    let users = replica
                        .routes
                        .iter()
                        .filter(|(_, nodes)| nodes.contains(*node))
                        .map(|(u, _)| *u)
                        .collect();
                    ((*node).clone(), users)
                })
                .collect()
        };
        for (node, users) in dead {
            tracing::info!(%node, users = users.len(), "removing the routes of a dead bus node");
            let deleted = futures::stream::iter(users)
                .map(|u| {
                    let node = node.clone();
                    async move { self.delete_route(&node, u).await }
                })
                .buffer_unordered(REWRITE_CONCURRENCY)
                .try_collect::<Vec<()>>()
                .await;
            let node_gone = match self.store().await {
                Ok(kv) => kv.delete(node_key(&node)).await.map_err(temporary),
                Err(e) => Err(e),
            };
            if let Err(e) = deleted.and(node_gone) {
                tracing::warn!(error = %e, %node, "cannot remove a dead node's routes yet");
            }
        }
    }
}

#[async_trait]
impl DeliveryBus for NatsBus {
    async fn attach(&self, handler: Arc<dyn EnvelopeHandler>) -> Result<()> {
        self.inner
            .handler
            .set(handler)
            .map_err(|_| Error::invalid("a handler is already attached to this bus"))
    }

    async fn subscribe(&self, user: UserId) -> Result<()> {
        let inner = &self.inner;
        inner
            .local
            .subscribe(user, inner.connected(), || inner.put_route(user))
            .await;
        Ok(())
    }

    async fn unsubscribe(&self, user: UserId) -> Result<()> {
        let inner = &self.inner;
        inner
            .local
            .unsubscribe(user, inner.connected(), || {
                inner.delete_route(&inner.node, user)
            })
            .await;
        Ok(())
    }

    async fn publish(&self, users: &[UserId], envelope: Envelope) -> Result<()> {
        let inner = &self.inner;
        if users.is_empty() {
            return Ok(());
        }
        inner.deliver_local(users, &envelope);
        if !inner.connected() {
            // Fail fast: the message is in every inbox already.
            return Err(Error::temporary(BACKEND, "not connected to NATS"));
        }
        inner.barrier().await?;
        let mut targets: HashMap<String, Vec<UserId>> = HashMap::new();
        {
            let replica = lock(&inner.replica);
            for user in users {
                for node in replica.routes.get(user).into_iter().flatten() {
                    if *node != inner.node {
                        targets.entry(node.clone()).or_default().push(*user);
                    }
                }
            }
        }
        if targets.is_empty() {
            return Ok(());
        }
        let envelope_json = wire::encode_envelope(&envelope)?;
        for (node, users) in targets {
            let payload = wire::delivery(&users, &envelope_json)?;
            inner
                .client
                .publish(inner.subject(&node), payload.into())
                .await
                .map_err(temporary)?;
        }
        Ok(())
    }
}
