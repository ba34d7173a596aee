//! The registry of this node's live WebSocket sessions, and the bus handler
//! that hands envelopes to them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use axum::extract::ws::Utf8Bytes;
use chat_core::protocol::{Event, ServerFrame};
use chat_core::{BusEvent, DeviceId, Envelope, EnvelopeHandler, Seq, UserId};
use tokio_util::sync::CancellationToken;

use crate::outbox::{Outbox, Pushed};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Serialises a server frame once, for however many sessions receive it.
pub(crate) fn encode(frame: &ServerFrame) -> Utf8Bytes {
    // Serialising these plain data types cannot fail; an empty frame would be
    // rejected by any client as malformed rather than crash the server.
    Utf8Bytes::from(serde_json::to_string(frame).unwrap_or_default())
}

/// One connection's handle as other tasks see it.
#[derive(Debug, Clone)]
pub(crate) struct SessionHandle {
    pub(crate) id: u64,
    pub(crate) device: DeviceId,
    /// The bounded outbound queue drained by the connection's writer.
    pub(crate) outbox: Arc<Outbox>,
    /// Cancelled when the session must close because it fell behind.
    pub(crate) slow: CancellationToken,
    /// The log-in session of the token the connection opened with.
    pub(crate) login: u64,
    /// Cancelled when that log-in session is revoked (close with 4100).
    pub(crate) revoked: CancellationToken,
}

impl SessionHandle {
    /// Queues a frame without waiting. A full queue means the client is not
    /// reading: the session is marked slow and will be closed, so one slow
    /// client never holds up anyone else.
    pub(crate) fn offer(&self, frame: Utf8Bytes) -> bool {
        match self.outbox.push(frame) {
            Pushed::Queued => true,
            Pushed::Full => {
                self.slow.cancel();
                false
            }
            Pushed::Closed => false,
        }
    }
}

/// Sessions on this node, by user.
#[derive(Debug, Default)]
pub(crate) struct Sessions {
    by_user: Mutex<HashMap<UserId, Vec<SessionHandle>>>,
    next_id: AtomicU64,
    total: AtomicUsize,
}

/// What registering a session found.
pub(crate) enum Registered {
    /// Registered; `first` if it is the user's first session on this node.
    Ok { first: bool },
    /// The user already has the maximum number of sessions.
    TooMany,
}

impl Sessions {
    pub(crate) fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Connections open on this node.
    pub(crate) fn total(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }

    pub(crate) fn register(&self, user: UserId, handle: SessionHandle, max: usize) -> Registered {
        let mut map = lock(&self.by_user);
        let list = map.entry(user).or_default();
        if list.len() >= max {
            return Registered::TooMany;
        }
        list.push(handle);
        self.total.fetch_add(1, Ordering::Relaxed);
        Registered::Ok {
            first: list.len() == 1,
        }
    }

    /// Removes a session; returns whether it was the user's last on this node.
    pub(crate) fn unregister(&self, user: UserId, id: u64) -> bool {
        let mut map = lock(&self.by_user);
        let Some(list) = map.get_mut(&user) else {
            return false;
        };
        let before = list.len();
        list.retain(|s| s.id != id);
        if list.len() < before {
            self.total.fetch_sub(1, Ordering::Relaxed);
        }
        if list.is_empty() {
            map.remove(&user);
            true
        } else {
            false
        }
    }

    /// Whether `user` has a session of `device` on this node.
    pub(crate) fn has_device(&self, user: UserId, device: DeviceId) -> bool {
        lock(&self.by_user)
            .get(&user)
            .is_some_and(|list| list.iter().any(|s| s.device == device))
    }

    /// Whether `user` has any session on this node (is online here).
    pub(crate) fn has_user(&self, user: UserId) -> bool {
        lock(&self.by_user).contains_key(&user)
    }

    fn handles(&self, user: UserId) -> Vec<SessionHandle> {
        lock(&self.by_user).get(&user).cloned().unwrap_or_default()
    }
}

/// The frame of a message event for one recipient: the message's JSON,
/// encoded once per envelope, spliced with the recipient's own inbox
/// position (the same bytes `serde_json` would write for
/// `ServerFrame::Event(Event::Message { seq, message })`, which a test
/// checks).
pub(crate) fn message_frame(seq: Seq, message_json: &str) -> Utf8Bytes {
    Utf8Bytes::from(format!(
        r#"{{"type":"event","event":"message","seq":{},"message":{}}}"#,
        seq.0, message_json
    ))
}

/// Delivers bus envelopes to this node's sessions.
#[derive(Debug)]
pub(crate) struct LocalDelivery {
    pub(crate) sessions: Arc<Sessions>,
    pub(crate) metrics: Arc<crate::metrics::Metrics>,
}

impl LocalDelivery {
    /// The sessions of `user` that get an envelope.
    fn targets(&self, user: UserId, envelope: &Envelope) -> Vec<SessionHandle> {
        let mut handles = self.sessions.handles(user);
        handles.retain(|h| Some(h.device) != envelope.skip_device);
        handles
    }
}

impl LocalDelivery {
    /// Queues `event` for every session of `users` on this node that the
    /// envelope targets, encoded once however many receive it.
    fn broadcast(&self, users: &[UserId], envelope: &Envelope, event: Event) {
        let mut text: Option<Utf8Bytes> = None;
        for user in users {
            for h in self.targets(*user, envelope) {
                let text = text.get_or_insert_with(|| encode(&ServerFrame::Event(event.clone())));
                h.offer(text.clone());
            }
        }
    }
}

impl EnvelopeHandler for LocalDelivery {
    /// Every session on this node is told to sync: live delivery may have
    /// missed events while the bus was away.
    fn resync(&self) {
        let text = encode(&ServerFrame::Event(Event::Resync {}));
        let handles: Vec<SessionHandle> = lock(&self.sessions.by_user)
            .values()
            .flatten()
            .cloned()
            .collect();
        tracing::info!(
            sessions = handles.len(),
            "live delivery had a gap; telling every session to sync"
        );
        for h in handles {
            h.offer(text.clone());
        }
    }

    fn deliver(&self, users: &[UserId], envelope: &Envelope) {
        match &envelope.event {
            BusEvent::Message { message, positions } => {
                // The message is encoded once per envelope on this node;
                // each recipient's frame only adds their position.
                let mut json: Option<String> = None;
                for user in users {
                    let Ok(i) = positions.binary_search_by_key(user, |(u, _)| *u) else {
                        continue;
                    };
                    let handles = self.targets(*user, envelope);
                    if handles.is_empty() {
                        continue;
                    }
                    let json = json
                        .get_or_insert_with(|| serde_json::to_string(message).unwrap_or_default());
                    let frame = message_frame(positions[i].1, json);
                    self.metrics.deliveries.inc_by(handles.len() as u64);
                    for h in handles {
                        h.offer(frame.clone());
                    }
                }
            }
            BusEvent::Presence { presence } => self.broadcast(
                users,
                envelope,
                Event::Presence {
                    presence: *presence,
                },
            ),
            BusEvent::Notice { event } => self.broadcast(users, envelope, event.clone()),
            BusEvent::Revoked { session } => {
                for user in users {
                    for h in self.sessions.handles(*user) {
                        if session.is_none_or(|s| s == h.login) {
                            h.revoked.cancel();
                        }
                    }
                }
            }
            BusEvent::Changed {
                message,
                change,
                positions,
            } => {
                // Each recipient's frame carries their own position.
                for user in users {
                    let Ok(i) = positions.binary_search_by_key(user, |(u, _)| *u) else {
                        continue;
                    };
                    let handles = self.targets(*user, envelope);
                    if handles.is_empty() {
                        continue;
                    }
                    let frame = encode(&ServerFrame::Event(Event::Changed {
                        seq: positions[i].1,
                        message: message.clone(),
                        change: change.clone(),
                    }));
                    self.metrics.deliveries.inc_by(handles.len() as u64);
                    for h in handles {
                        h.offer(frame.clone());
                    }
                }
            }
            other => tracing::debug!(?other, "bus event this node does not deliver"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chat_core::{ChannelId, ClientMsgId, Message, MessageId};

    #[test]
    fn a_spliced_message_frame_is_the_serde_frame() {
        let message = Message {
            id: MessageId(u64::MAX),
            channel_id: ChannelId::new_random(),
            sender: UserId::new_random(),
            content: "quotes \" and \\ and\nlines ✓".into(),
            created_at: 1_764_300_000_000,
            client_msg_id: ClientMsgId::new_random(),
            reply_to: None,
            edited_at: None,
            deleted: false,
            reactions: Vec::new(),
            attachments: Vec::new(),
        };
        let seq = Seq(42);
        let spliced = message_frame(seq, &serde_json::to_string(&message).unwrap());
        let serde =
            serde_json::to_string(&ServerFrame::Event(Event::Message { seq, message })).unwrap();
        assert_eq!(spliced.as_str(), serde);
    }
}
