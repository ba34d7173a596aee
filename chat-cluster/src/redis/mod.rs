//! Redis engines (feature `redis`): presence, shared by every chat server
//! ([`RedisPresence`]), and the delivery bus over Redis pub/sub
//! ([`RedisBus`]) for teams that run Redis and not NATS.

mod bus;
mod presence;

pub use bus::{RedisBus, RedisBusConfig};
pub use presence::{RedisPresence, RedisPresenceConfig};
