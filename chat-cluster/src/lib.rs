//! # chat-cluster
//!
//! The engines that make many chat servers one system, each behind a
//! feature (none on by default, so a build compiles only the engines it
//! uses):
//!
//! | feature | engine | type | trait |
//! |---|---|---|---|
//! | `nats` | NATS with JetStream | [`nats::NatsBus`] | [`DeliveryBus`](chat_core::DeliveryBus) |
//! | `redis` | Redis | `redis::RedisPresence` | [`PresenceTracker`](chat_core::PresenceTracker) |
//! | `redis` | Redis pub/sub | `redis::RedisBus` | [`DeliveryBus`](chat_core::DeliveryBus) |
//! | `etcd` | etcd v3 (needs `protoc` to build) | `etcd::EtcdDiscovery` | [`ServiceDiscovery`](chat_core::ServiceDiscovery) |
//! | `zookeeper` | ZooKeeper 3.6 or later | `zookeeper::ZooKeeperDiscovery` | [`ServiceDiscovery`](chat_core::ServiceDiscovery) |
//!
//! Every engine passes the conformance suite of its trait
//! (`chat-conformance`) against the real service; `docs/architecture.md`
//! says what each guarantees and costs. Every key, subject and bucket lives
//! under a prefix of the caller's choosing, so deployments and test runs
//! sharing one broker never meet.

#[cfg(feature = "etcd")]
pub mod etcd;
#[cfg(any(feature = "nats", feature = "redis"))]
mod local;
#[cfg(feature = "nats")]
pub mod nats;
#[cfg(feature = "redis")]
pub mod redis;
#[cfg(any(feature = "nats", feature = "redis", test))]
mod wire;
#[cfg(feature = "zookeeper")]
pub mod zookeeper;

/// Checks a key or subject prefix: 1 to 64 characters of `A-Z a-z 0-9 _ -`,
/// valid in NATS subjects and bucket names, Redis keys, etcd keys and
/// ZooKeeper paths alike.
#[allow(dead_code)] // with no engine compiled in
pub(crate) fn check_prefix(prefix: &str) -> chat_core::Result<()> {
    let ok = !prefix.is_empty()
        && prefix.len() <= 64
        && prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(chat_core::Error::invalid(format!(
            "prefix {prefix:?} must be 1 to 64 characters of A-Z, a-z, 0-9, '_', '-'"
        )))
    }
}
