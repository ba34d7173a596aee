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

use chat_core::{DeliveryBus, Envelope, UserId};
use tokio_util::sync::CancellationToken;

/// Envelopes kept at most; past it the oldest is dropped (its recipients
/// still get the message at their next sync).
const CAPACITY: usize = 10_000;

/// Pause between attempts while the bus keeps failing.
const RETRY_EVERY: Duration = Duration::from_millis(500);

/// The failed publishes of one node. See the module docs.
#[derive(Debug, Default)]
pub(crate) struct Redeliveries {
    queue: Mutex<VecDeque<(Vec<UserId>, Envelope)>>,
}

impl Redeliveries {
    /// Keeps a publish of `envelope` to `users` that failed.
    pub(crate) fn push(&self, users: Vec<UserId>, envelope: Envelope) {
        let mut queue = self.lock();
        if queue.len() >= CAPACITY {
            queue.pop_front();
            tracing::warn!(
                capacity = CAPACITY,
                "too many live deliveries waiting for the bus; the oldest is left to sync"
            );
        }
        queue.push_back((users, envelope));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<(Vec<UserId>, Envelope)>> {
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
                let Some((users, envelope)) = self.lock().pop_front() else {
                    break;
                };
                if bus.publish(&users, envelope.clone()).await.is_err() {
                    self.lock().push_front((users, envelope));
                    break;
                }
            }
        }
    }
}
