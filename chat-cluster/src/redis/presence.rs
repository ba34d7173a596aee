//! Presence on Redis (feature `redis`): the presence servers of the design,
//! shared by every chat server.
//!
//! # Data
//!
//! Under a prefix `p`:
//!
//! | key | type | holds |
//! |---|---|---|
//! | `p:alive` | sorted set | online users, scored by their latest heartbeat |
//! | `p:d:{user}` | sorted set | the user's alive devices, scored by last heartbeat |
//! | `p:c:{user}` | sorted set | open connections `{device}:{tracker}`, scored by last heartbeat through that tracker |
//! | `p:last` | hash | user → `last_active_at`, kept after going offline |
//!
//! Each operation is one Lua script, so it is atomic on the server and one
//! round trip:
//!
//! * **heartbeat** raises the device's and the user's scores (`ZADD GT`, so
//!   a server with a slower clock never lowers them) and reports online
//!   exactly when the user was not in `p:alive`;
//! * **expire** takes a batch of users whose score is past the timeout,
//!   drops their silent devices, and removes from `p:alive` those left with
//!   none, returning them: the removal and the report are one atomic step,
//!   so however many servers sweep at once each offline change is reported
//!   by exactly one of them;
//! * a connection is keyed by device *and* tracker (one per chat server), so
//!   a late close on the server a device left does not end its connection on
//!   the server it moved to; connections count only while their heartbeat
//!   is within the timeout, so those of a dead server stop counting.
//!
//! The per-user sets expire after twice the timeout without a heartbeat.
//! Scripts touch keys named from their arguments, so this needs one Redis
//! primary (standalone or Sentinel), not Redis Cluster.

use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use ::redis::Script;
use async_trait::async_trait;
use chat_core::{DeviceId, Error, Presence, PresenceStatus, PresenceTracker, Result, UserId};
use std::time::Duration;

const BACKEND: &str = "redis";

/// Users one `expire` script handles at most; `expire` runs batches until
/// one comes back short.
const EXPIRE_BATCH: usize = 500;

fn temporary(e: ::redis::RedisError) -> Error {
    Error::temporary(BACKEND, e)
}

/// How to reach Redis and how presence behaves there.
#[derive(Debug, Clone)]
pub struct RedisPresenceConfig {
    /// `redis://host:port/db`.
    pub url: String,
    /// Prefix of every key, so deployments and test runs sharing a server
    /// never meet. `A-Z a-z 0-9 _ -`.
    pub prefix: String,
    /// A device is gone this long after its last heartbeat.
    pub timeout: Duration,
    /// Deadline of one command; a slower answer fails the call (presence
    /// fails soft, so a stuck store never holds up a chat server).
    pub response_timeout: Duration,
}

impl RedisPresenceConfig {
    /// Defaults for `url` and `prefix`: a 30-second presence timeout and a
    /// 2-second command deadline.
    pub fn new(url: impl Into<String>, prefix: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            prefix: prefix.into(),
            timeout: Duration::from_secs(30),
            response_timeout: Duration::from_secs(2),
        }
    }
}

/// Presence in Redis, shared by every chat server on it. See the
/// [module docs](crate::redis).
#[derive(Clone)]
pub struct RedisPresence {
    conn: ConnectionManager,
    prefix: String,
    timeout_ms: u64,
    /// This tracker's name in connection keys (random per value).
    tracker: String,
    scripts: std::sync::Arc<Scripts>,
}

impl std::fmt::Debug for RedisPresence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisPresence")
            .field("prefix", &self.prefix)
            .field("timeout_ms", &self.timeout_ms)
            .field("tracker", &self.tracker)
            .finish()
    }
}

struct Scripts {
    heartbeat: Script,
    expire: Script,
    status: Script,
    connected: Script,
}

/// KEYS: alive, d:user, c:user, last. ARGV: user, device, connection,
/// now, key ttl ms. Returns -1, or `last_active_at` if the user came online.
const HEARTBEAT: &str = r#"
local was = redis.call('ZSCORE', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[2], 'GT', ARGV[4], ARGV[2])
redis.call('ZADD', KEYS[3], 'GT', ARGV[4], ARGV[3])
redis.call('ZADD', KEYS[1], 'GT', ARGV[4], ARGV[1])
redis.call('PEXPIRE', KEYS[2], ARGV[5])
redis.call('PEXPIRE', KEYS[3], ARGV[5])
local last = redis.call('HGET', KEYS[4], ARGV[1])
if (not last) or tonumber(ARGV[4]) > tonumber(last) then
  redis.call('HSET', KEYS[4], ARGV[1], ARGV[4])
  last = ARGV[4]
end
if was then return -1 end
return tonumber(last)
"#;

/// KEYS: alive, last. ARGV: prefix, deadline, batch. Returns
/// `[user, last_active_at or "", ...]` for users who went offline.
const EXPIRE: &str = r#"
local users = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[2], 'LIMIT', 0, tonumber(ARGV[3]))
local out = {}
for _, u in ipairs(users) do
  local devices = ARGV[1] .. ':d:' .. u
  redis.call('ZREMRANGEBYSCORE', devices, '-inf', ARGV[2])
  local top = redis.call('ZREVRANGE', devices, 0, 0, 'WITHSCORES')
  if #top == 0 then
    redis.call('ZREM', KEYS[1], u)
    table.insert(out, u)
    table.insert(out, redis.call('HGET', KEYS[2], u) or '')
  else
    redis.call('ZADD', KEYS[1], top[2], u)
  end
end
return out
"#;

/// KEYS: alive, last. ARGV: users. Returns `[online 0/1, last or "", ...]`.
const STATUS: &str = r#"
local out = {}
for _, u in ipairs(ARGV) do
  if redis.call('ZSCORE', KEYS[1], u) then table.insert(out, 1) else table.insert(out, 0) end
  table.insert(out, redis.call('HGET', KEYS[2], u) or '')
end
return out
"#;

/// ARGV: prefix, deadline, users. Returns the users with a fresh connection.
const CONNECTED: &str = r#"
local out = {}
for i = 3, #ARGV do
  local u = ARGV[i]
  if redis.call('ZCOUNT', ARGV[1] .. ':c:' .. u, '(' .. ARGV[2], '+inf') > 0 then
    table.insert(out, u)
  end
end
return out
"#;

impl RedisPresence {
    /// Connects (failing if Redis cannot be reached now). Later outages are
    /// survived: the connection is re-established in the background and
    /// calls fail with a temporary error meanwhile.
    pub async fn connect(config: RedisPresenceConfig) -> Result<Self> {
        crate::check_prefix(&config.prefix)?;
        let client = ::redis::Client::open(config.url.as_str())
            .map_err(|e| Error::invalid(format!("redis url: {e}")))?;
        let conn = ConnectionManager::new_with_config(
            client,
            ConnectionManagerConfig::new()
                .set_response_timeout(Some(config.response_timeout))
                .set_connection_timeout(Some(config.response_timeout))
                .set_number_of_retries(1),
        )
        .await
        .map_err(temporary)?;
        Ok(Self {
            conn,
            prefix: config.prefix,
            timeout_ms: config.timeout.as_millis() as u64,
            tracker: uuid::Uuid::new_v4().simple().to_string(),
            scripts: std::sync::Arc::new(Scripts {
                heartbeat: Script::new(HEARTBEAT),
                expire: Script::new(EXPIRE),
                status: Script::new(STATUS),
                connected: Script::new(CONNECTED),
            }),
        })
    }

    /// Another tracker on the same store and connection, as another chat
    /// server would be (tests run several servers in one process).
    pub fn handle(&self) -> Self {
        Self {
            tracker: uuid::Uuid::new_v4().simple().to_string(),
            ..self.clone()
        }
    }

    fn key(&self, name: &str) -> String {
        format!("{}:{name}", self.prefix)
    }

    fn user_key(&self, kind: &str, user: UserId) -> String {
        format!("{}:{kind}:{}", self.prefix, user.0.simple())
    }

    fn connection(&self, device: DeviceId) -> String {
        format!("{}:{}", device.0.simple(), self.tracker)
    }

    /// Removes every key under the prefix (tests clean up with it).
    pub async fn clear(&self) -> Result<()> {
        let mut conn = self.conn.clone();
        let keys: Vec<String> = ::redis::cmd("KEYS")
            .arg(format!("{}:*", self.prefix))
            .query_async(&mut conn)
            .await
            .map_err(temporary)?;
        for chunk in keys.chunks(500) {
            let _: () = ::redis::cmd("DEL")
                .arg(chunk)
                .query_async(&mut conn)
                .await
                .map_err(temporary)?;
        }
        Ok(())
    }
}

fn parse_user(s: &str) -> Result<UserId> {
    s.parse()
        .map_err(|e| Error::backend(BACKEND, format!("bad user id {s:?} in presence: {e}")))
}

fn parse_ms(s: &str) -> Option<u64> {
    s.parse::<u64>().ok()
}

#[async_trait]
impl PresenceTracker for RedisPresence {
    async fn heartbeat(
        &self,
        user: UserId,
        device: DeviceId,
        now_ms: u64,
    ) -> Result<Option<Presence>> {
        let mut conn = self.conn.clone();
        let came_online: i64 = self
            .scripts
            .heartbeat
            .key(self.key("alive"))
            .key(self.user_key("d", user))
            .key(self.user_key("c", user))
            .key(self.key("last"))
            .arg(user.0.simple().to_string())
            .arg(device.0.simple().to_string())
            .arg(self.connection(device))
            .arg(now_ms)
            .arg(self.timeout_ms.saturating_mul(2).max(1))
            .invoke_async(&mut conn)
            .await
            .map_err(temporary)?;
        Ok((came_online >= 0).then_some(Presence {
            user,
            status: PresenceStatus::Online,
            last_active_at: Some(came_online as u64),
        }))
    }

    async fn disconnect(&self, user: UserId, device: DeviceId, _now_ms: u64) -> Result<()> {
        let mut conn = self.conn.clone();
        let _: i64 = ::redis::cmd("ZREM")
            .arg(self.user_key("c", user))
            .arg(self.connection(device))
            .query_async(&mut conn)
            .await
            .map_err(temporary)?;
        Ok(())
    }

    async fn expire(&self, now_ms: u64) -> Result<Vec<Presence>> {
        let deadline = now_ms.saturating_sub(self.timeout_ms);
        let mut gone = Vec::new();
        loop {
            let mut conn = self.conn.clone();
            let batch: Vec<String> = self
                .scripts
                .expire
                .key(self.key("alive"))
                .key(self.key("last"))
                .arg(&self.prefix)
                .arg(deadline)
                .arg(EXPIRE_BATCH)
                .invoke_async(&mut conn)
                .await
                .map_err(temporary)?;
            for pair in batch.chunks(2) {
                let [user, last] = pair else { break };
                gone.push(Presence {
                    user: parse_user(user)?,
                    status: PresenceStatus::Offline,
                    last_active_at: parse_ms(last),
                });
            }
            // Fewer than a full batch left the set: done.
            if batch.len() < EXPIRE_BATCH * 2 {
                return Ok(gone);
            }
        }
    }

    async fn status(&self, users: &[UserId]) -> Result<Vec<Presence>> {
        if users.is_empty() {
            return Ok(Vec::new());
        }
        let mut conn = self.conn.clone();
        let mut call = self.scripts.status.key(self.key("alive"));
        call.key(self.key("last"));
        for u in users {
            call.arg(u.0.simple().to_string());
        }
        let answer: Vec<::redis::Value> = call.invoke_async(&mut conn).await.map_err(temporary)?;
        if answer.len() != users.len() * 2 {
            return Err(Error::backend(
                BACKEND,
                "presence status: answer of the wrong length",
            ));
        }
        Ok(users
            .iter()
            .zip(answer.chunks(2))
            .map(|(user, pair)| {
                let online = matches!(pair.first(), Some(::redis::Value::Int(1)));
                let last = match pair.get(1) {
                    Some(::redis::Value::BulkString(b)) => {
                        std::str::from_utf8(b).ok().and_then(parse_ms)
                    }
                    _ => None,
                };
                Presence {
                    user: *user,
                    status: if online {
                        PresenceStatus::Online
                    } else {
                        PresenceStatus::Offline
                    },
                    last_active_at: last,
                }
            })
            .collect())
    }

    async fn connected(&self, users: &[UserId], now_ms: u64) -> Result<Vec<UserId>> {
        if users.is_empty() {
            return Ok(Vec::new());
        }
        let mut conn = self.conn.clone();
        let mut call = self.scripts.connected.arg(&self.prefix);
        call.arg(now_ms.saturating_sub(self.timeout_ms));
        for u in users {
            call.arg(u.0.simple().to_string());
        }
        let answer: Vec<String> = call.invoke_async(&mut conn).await.map_err(temporary)?;
        answer.iter().map(|s| parse_user(s)).collect()
    }
}
