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
//! | `etcd` | etcd v3 (needs `protoc` to build) | `etcd::EtcdDiscovery` | [`ServiceDiscovery`](chat_core::ServiceDiscovery) |
//!
//! Every engine passes the conformance suite of its trait
//! (`chat-conformance`) against the real service; `docs/architecture.md`
//! says what each guarantees and costs. Every key, subject and bucket lives
//! under a prefix of the caller's choosing, so deployments and test runs
//! sharing one broker never meet.

#[cfg(feature = "nats")]
pub mod nats;
#[cfg(any(feature = "nats", test))]
mod wire;
