//! The delivery bus on Redis pub/sub.
//!
//! Each node subscribes its own channel, `p:bus:{node}`, on a connection of
//! its own, and adds its name to a set per user it holds, `p:r:{user}`. A
//! publish is one Lua script: it reads the sets of the envelope's users,
//! groups them by node, and `PUBLISH`es one message per node (its users and
//! the envelope, encoded once by the publisher) — atomic, one round trip,
//! and exact: a `subscribe` that returned has its set member in place, so
//! every later publish finds it. Users of the publishing node itself are
//! delivered in-process.
//!
//! Pub/sub subscriptions live on the node's connection. A `PUBLISH` that no
//! one receives means the node's connection is gone (the node died, or is
//! reconnecting): the script then removes that node from the users' sets,
//! so a dead node's subscriptions disappear with it. A node whose
//! connection broke subscribes again, adds every user it holds back, then
//! calls [`EnvelopeHandler::resync`].
//!
//! The script touches keys named from its arguments: one Redis primary, not
//! Redis Cluster.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use ::redis::Script;
use async_trait::async_trait;
use chat_core::{DeliveryBus, Envelope, EnvelopeHandler, Error, Result, UserId};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::local::LocalUsers;
use crate::wire;

const BACKEND: &str = "redis";

fn temporary(e: ::redis::RedisError) -> Error {
    Error::temporary(BACKEND, e)
}

/// How to reach Redis for the bus.
#[derive(Debug, Clone)]
pub struct RedisBusConfig {
    /// `redis://host:port/db`.
    pub url: String,
    /// Prefix of every key and channel. `A-Z a-z 0-9 _ -`.
    pub prefix: String,
    /// Deadline of one command.
    pub response_timeout: Duration,
}

impl RedisBusConfig {
    /// Defaults for `url` and `prefix`: a 2-second command deadline.
    pub fn new(url: impl Into<String>, prefix: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            prefix: prefix.into(),
            response_timeout: Duration::from_secs(2),
        }
    }
}

/// ARGV: prefix, this node, envelope JSON, users. Publishes one message per
/// other node holding any of the users; removes nodes no one listens for.
const PUBLISH: &str = r#"
local prefix, me, env = ARGV[1], ARGV[2], ARGV[3]
local per_node, order = {}, {}
for i = 4, #ARGV do
  local u = ARGV[i]
  for _, n in ipairs(redis.call('SMEMBERS', prefix .. ':r:' .. u)) do
    if n ~= me then
      if not per_node[n] then per_node[n] = {}; table.insert(order, n) end
      table.insert(per_node[n], u)
    end
  end
end
local sent = 0
for _, n in ipairs(order) do
  local users = per_node[n]
  local payload = '{"u":["' .. table.concat(users, '","') .. '"],"e":' .. env .. '}'
  if redis.call('PUBLISH', prefix .. ':bus:' .. n, payload) == 0 then
    for _, u in ipairs(users) do redis.call('SREM', prefix .. ':r:' .. u, n) end
  else
    sent = sent + 1
  end
end
return sent
"#;

struct Inner {
    config: RedisBusConfig,
    client: ::redis::Client,
    conn: ConnectionManager,
    node: String,
    publish: Script,
    handler: OnceLock<Arc<dyn EnvelopeHandler>>,
    local: LocalUsers,
    /// Whether the node's channel is subscribed now.
    listening: AtomicBool,
    stop: CancellationToken,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBus")
            .field("prefix", &self.config.prefix)
            .field("node", &self.node)
            .finish()
    }
}

/// The delivery bus on Redis pub/sub. See the [module docs](crate::redis).
#[derive(Debug, Clone)]
pub struct RedisBus {
    inner: Arc<Inner>,
}

impl RedisBus {
    /// Connects, subscribes this node's channel and starts its listener.
    pub async fn connect(config: RedisBusConfig) -> Result<Self> {
        crate::check_prefix(&config.prefix)?;
        let client = ::redis::Client::open(config.url.as_str())
            .map_err(|e| Error::invalid(format!("redis url: {e}")))?;
        let conn = ConnectionManager::new_with_config(
            client.clone(),
            ConnectionManagerConfig::new()
                .set_response_timeout(Some(config.response_timeout))
                .set_connection_timeout(Some(config.response_timeout))
                .set_number_of_retries(1),
        )
        .await
        .map_err(temporary)?;
        let inner = Arc::new(Inner {
            config,
            client,
            conn,
            node: uuid::Uuid::new_v4().simple().to_string(),
            publish: Script::new(PUBLISH),
            handler: OnceLock::new(),
            local: LocalUsers::new(),
            listening: AtomicBool::new(false),
            stop: CancellationToken::new(),
        });
        let messages = inner.listen().await?;
        tokio::spawn(inner.clone().listen_loop(messages));
        Ok(Self { inner })
    }

    /// This node's name on the bus.
    pub fn node(&self) -> &str {
        &self.inner.node
    }

    /// Stops listening (the channel subscription goes with the connection,
    /// as after a crash).
    pub fn close(&self) {
        self.inner.stop.cancel();
    }
}

impl Inner {
    fn channel(&self) -> String {
        format!("{}:bus:{}", self.config.prefix, self.node)
    }

    fn route_key(&self, user: UserId) -> String {
        format!("{}:r:{user}", self.config.prefix)
    }

    async fn listen(&self) -> Result<::redis::aio::PubSubStream> {
        let mut pubsub = self.client.get_async_pubsub().await.map_err(temporary)?;
        pubsub.subscribe(self.channel()).await.map_err(temporary)?;
        self.listening.store(true, Ordering::SeqCst);
        Ok(pubsub.into_on_message())
    }

    async fn add_route(&self, user: UserId) -> Result<()> {
        let mut conn = self.conn.clone();
        let _: i64 = ::redis::cmd("SADD")
            .arg(self.route_key(user))
            .arg(&self.node)
            .query_async(&mut conn)
            .await
            .map_err(temporary)?;
        Ok(())
    }

    async fn remove_route(&self, user: UserId) -> Result<()> {
        let mut conn = self.conn.clone();
        let _: i64 = ::redis::cmd("SREM")
            .arg(self.route_key(user))
            .arg(&self.node)
            .query_async(&mut conn)
            .await
            .map_err(temporary)?;
        Ok(())
    }

    fn deliver_local(&self, users: &[UserId], envelope: &Envelope) {
        let here = self.local.here(users);
        if let (false, Some(handler)) = (here.is_empty(), self.handler.get()) {
            handler.deliver(&here, envelope);
        }
    }

    async fn listen_loop(self: Arc<Self>, mut messages: ::redis::aio::PubSubStream) {
        loop {
            loop {
                let next = tokio::select! {
                    _ = self.stop.cancelled() => return,
                    _ = self.local.repair_wanted() => {
                        // A route write failed: write them all again.
                        if self.local.is_dirty() {
                            self.restore().await;
                        }
                        continue;
                    }
                    m = messages.next() => m,
                };
                let Some(msg) = next else { break };
                match wire::decode(msg.get_payload_bytes()) {
                    Ok((users, envelope)) => self.deliver_local(&users, &envelope),
                    Err(e) => tracing::warn!(error = %e, "dropping a malformed bus delivery"),
                }
            }
            self.listening.store(false, Ordering::SeqCst);
            self.local.mark_dirty();
            tracing::warn!(node = %self.node, "Redis bus connection lost; live delivery paused");
            // Subscribe again, until it works.
            loop {
                tokio::select! {
                    _ = self.stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                }
                match self.listen().await {
                    Ok(m) => {
                        messages = m;
                        break;
                    }
                    Err(e) => tracing::debug!(error = %e, "Redis still unreachable"),
                }
            }
            self.restore().await;
        }
    }

    /// Adds every user held here back to the routes, then tells the node
    /// that live delivery may have had a gap.
    async fn restore(&self) {
        self.local.clear_dirty();
        for user in self.local.all() {
            let _order = self.local.route_lock(user).lock().await;
            if !self.local.holds(user) {
                continue;
            }
            if let Err(e) = self.add_route(user).await {
                tracing::warn!(error = %e, "cannot restore the bus routes yet");
                self.local.mark_dirty();
                tokio::time::sleep(Duration::from_millis(500)).await;
                self.local.wake_repair();
                return;
            }
        }
        tracing::info!(node = %self.node, "bus routes restored; asking sessions to resync");
        if let Some(handler) = self.handler.get() {
            handler.resync();
        }
    }
}

#[async_trait]
impl DeliveryBus for RedisBus {
    async fn attach(&self, handler: Arc<dyn EnvelopeHandler>) -> Result<()> {
        self.inner
            .handler
            .set(handler)
            .map_err(|_| Error::invalid("a handler is already attached to this bus"))
    }

    async fn subscribe(&self, user: UserId) -> Result<()> {
        let inner = &self.inner;
        let reachable = inner.listening.load(Ordering::SeqCst);
        inner
            .local
            .subscribe(user, reachable, || inner.add_route(user))
            .await;
        Ok(())
    }

    async fn unsubscribe(&self, user: UserId) -> Result<()> {
        let inner = &self.inner;
        let reachable = inner.listening.load(Ordering::SeqCst);
        inner
            .local
            .unsubscribe(user, reachable, || inner.remove_route(user))
            .await;
        Ok(())
    }

    async fn publish(&self, users: &[UserId], envelope: Envelope) -> Result<()> {
        let inner = &self.inner;
        if users.is_empty() {
            return Ok(());
        }
        inner.deliver_local(users, &envelope);
        let envelope_json = wire::encode_envelope(&envelope)?;
        let mut call = inner.publish.prepare_invoke();
        call.arg(&inner.config.prefix)
            .arg(&inner.node)
            .arg(envelope_json);
        for u in users {
            call.arg(u.to_string());
        }
        let mut conn = inner.conn.clone();
        let _sent: i64 = call.invoke_async(&mut conn).await.map_err(temporary)?;
        Ok(())
    }
}
