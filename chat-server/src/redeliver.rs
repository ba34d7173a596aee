//! Live deliveries whose publish failed, published again until the bus
//! takes them.
//!
//! A send stores the message in every recipient's inbox, answers, and
//! publishes it on the bus for live delivery. When the publish fails (this
//! node has lost its broker, or the bus refused for a moment), the
//! recipients' devices on *other* nodes would only see the message at
//! their next sync. Nothing would make them sync: their own nodes kept the
//! broker, so no resync comes, and a device whose last message this was
//! gets no later one to show it a gap. It would miss the message until it
//! reconnected, however long that is. (Found by the cluster checker,
//! `chat-bench/tests/faults.rs`: a NATS restart under load left acked
//! messages unshown, because the nodes reconnect to the broker at
//! different moments.)
//!
//! So the node keeps the envelopes of failed message publishes, oldest
//! first and bounded, and publishes them again every half second until
//! the bus takes them. A late or second copy is harmless: a device hands
//! messages to its application by inbox position, once, in order (the
//! SDK's sync state); a raw protocol client sees an event it may already
//! have, with the same `seq`.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use chat_core::{BusEvent, DeliveryBus, Envelope, UserId};
use tokio_util::sync::CancellationToken;

/// Envelopes kept at most; past it the oldest is dropped (its recipients
/// still get the message at their next sync).
/// The most the queue holds, in bytes of message content and recipient
/// lists (a client controls both: bounded by bytes, not by count). Past
/// it the oldest envelope is dropped: its recipients get the message at
/// their next sync.
const BUDGET_BYTES: usize = 16 << 20;

const RETRY_EVERY: Duration = Duration::from_millis(500);

/// One waiting publish: its recipients, the envelope and its size.
type Waiting = (Vec<UserId>, Envelope, usize);

#[derive(Debug, Default)]
pub(crate) struct Redeliveries {
    queue: Mutex<Queue>,
}

#[derive(Debug, Default)]
struct Queue {
    waiting: VecDeque<Waiting>,
    bytes: usize,
}

impl Queue {
    fn push_back(&mut self, entry: Waiting) {
        self.bytes += entry.2;
        self.waiting.push_back(entry);
    }

    fn push_front(&mut self, entry: Waiting) {
        self.bytes += entry.2;
        self.waiting.push_front(entry);
    }

    fn pop_front(&mut self) -> Option<Waiting> {
        let entry = self.waiting.pop_front()?;
        self.bytes -= entry.2;
        Some(entry)
    }
}

/// What an envelope weighs in the queue: what a client put in it (the
/// text, the recipients and their positions) plus a fixed allowance.
fn weight(users: &[UserId], envelope: &Envelope) -> usize {
    let carried = match &envelope.event {
        BusEvent::Message { message, positions }
        | BusEvent::Changed {
            message, positions, ..
        } => message.content.len() + std::mem::size_of_val(positions.as_slice()),
        _ => 0,
    };
    256 + carried + std::mem::size_of_val(users)
}

impl Redeliveries {
    /// Keeps a publish of `envelope` to `users` that failed.
    pub(crate) fn push(&self, users: Vec<UserId>, envelope: Envelope) {
        let size = weight(&users, &envelope);
        let mut queue = self.lock();
        let mut dropped = 0usize;
        while queue.bytes + size > BUDGET_BYTES && queue.pop_front().is_some() {
            dropped += 1;
        }
        if dropped > 0 {
            tracing::warn!(
                budget_bytes = BUDGET_BYTES,
                dropped,
                "too many live deliveries waiting for the bus; the oldest are left to sync"
            );
        }
        queue.push_back((users, envelope, size));
    }

    /// Bytes waiting (for tests).
    #[cfg(test)]
    fn bytes(&self) -> usize {
        self.lock().bytes
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Publishes waiting envelopes, oldest first, until shutdown; after a
    /// failure, waits [`RETRY_EVERY`] and starts again from the same one.
    pub(crate) async fn run(&self, bus: &dyn DeliveryBus, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(RETRY_EVERY) => {}
            }
            loop {
                let Some((users, envelope, size)) = self.lock().pop_front() else {
                    break;
                };
                if bus.publish(&users, envelope.clone()).await.is_err() {
                    self.lock().push_front((users, envelope, size));
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chat_core::{ChannelId, ClientMsgId, Message, MessageId, Seq};

    fn envelope(content: String) -> Envelope {
        Envelope {
            event: BusEvent::Message {
                message: Message {
                    id: MessageId(1),
                    channel_id: ChannelId::new_random(),
                    sender: UserId::new_random(),
                    content,
                    created_at: 0,
                    client_msg_id: ClientMsgId::new_random(),
                    reply_to: None,
                    edited_at: None,
                    deleted: false,
                    reactions: Vec::new(),
                    attachments: Vec::new(),
                },
                positions: vec![(UserId::new_random(), Seq(1))],
            },
            skip_device: None,
        }
    }

    #[test]
    fn the_queue_is_bounded_by_bytes_and_drops_the_oldest() {
        let queue = Redeliveries::default();
        let big = 1 << 20; // a client's 1 MiB of text per envelope, at most
        for _ in 0..(BUDGET_BYTES / big) * 3 {
            queue.push(vec![UserId::new_random()], envelope("x".repeat(big)));
            assert!(queue.bytes() <= BUDGET_BYTES);
        }
        let kept = queue.lock().waiting.len();
        assert!(kept > 0 && kept < BUDGET_BYTES / big, "kept {kept}");
        // Small envelopes are many before the budget is reached.
        let small = Redeliveries::default();
        for _ in 0..10_000 {
            small.push(vec![UserId::new_random()], envelope("hi".into()));
        }
        assert_eq!(small.lock().waiting.len(), 10_000);
        // The newest is kept: pushing one more big envelope evicts from the front.
        let last = envelope("y".repeat(big));
        queue.push(vec![], last.clone());
        assert_eq!(queue.lock().waiting.back().map(|w| &w.1), Some(&last));
    }
}
