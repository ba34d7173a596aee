//! Message content that carries what the recipient needs to check delivery
//! and measure latency: `"<sender>:<seq>:<sent_us>:"` then padding. Sender and
//! recipient run in the same process, so one monotonic clock serves both.

use std::sync::OnceLock;
use std::time::Instant;

static EPOCH: OnceLock<Instant> = OnceLock::new();

/// Microseconds since the first call in this process (a monotonic clock).
pub fn now_us() -> u64 {
    EPOCH.get_or_init(Instant::now).elapsed().as_micros() as u64
}

/// [`now_us`] time of an instant (0 for instants before the epoch).
pub fn instant_us(at: Instant) -> u64 {
    at.saturating_duration_since(*EPOCH.get_or_init(Instant::now))
        .as_micros() as u64
}

/// What a recipient reads back from a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// Global index of the sending load connection.
    pub sender: u32,
    /// The sender's sequence number of the message (0, 1, 2, ...).
    pub seq: u32,
    /// When it was (scheduled to be) sent, [`now_us`] time.
    pub sent_us: u64,
}

/// The content of message `stamp`, padded with `x` to at least `size` bytes.
pub fn encode(stamp: Stamp, size: usize) -> String {
    let mut s = format!("{}:{}:{}:", stamp.sender, stamp.seq, stamp.sent_us);
    if s.len() < size {
        s.extend(std::iter::repeat_n('x', size - s.len()));
    }
    s
}

/// Reads a stamp back; `None` for content the tool did not make.
pub fn decode(content: &str) -> Option<Stamp> {
    let mut it = content.splitn(4, ':');
    let sender = it.next()?.parse().ok()?;
    let seq = it.next()?.parse().ok()?;
    let sent_us = it.next()?.parse().ok()?;
    it.next()?;
    Some(Stamp {
        sender,
        seq,
        sent_us,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let st = Stamp {
            sender: 7,
            seq: 42,
            sent_us: 123_456,
        };
        let c = encode(st, 100);
        assert_eq!(c.len(), 100);
        assert_eq!(decode(&c), Some(st));
        assert_eq!(decode(&encode(st, 0)), Some(st));
        assert_eq!(decode("hello"), None);
        assert!(now_us() <= now_us());
    }
}
