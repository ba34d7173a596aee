//! Push notifications for recipients with no connected device.
//!
//! The server hands a [`PushNotifier`] one [`PushNotification`] per offline
//! recipient (and per burst of messages in one channel); the notifier
//! answers with a [`PushReport`] that says, device by device, whether the
//! platform accepted the push, failed, or reported the device's push token
//! as no longer valid. The server removes invalid tokens, so they are never
//! pushed again.

use std::fmt::Debug;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::id::{ChannelId, DeviceId, MessageId, UserId};
use crate::types::Device;

/// Most devices one [`PushNotification`] is sent to: the server picks the
/// recipient's most recently registered devices that have a push token, so
/// a user with hundreds of registrations cannot make one message fan out
/// into hundreds of platform requests.
pub const MAX_PUSH_DEVICES: usize = 32;

/// One notification for one recipient.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushNotification {
    /// Who is notified.
    pub recipient: UserId,
    /// The recipient's registered devices that have a push token, at most
    /// one per distinct token and at most [`MAX_PUSH_DEVICES`] (the most
    /// recently registered).
    pub devices: Vec<Device>,
    /// Where the message was posted. Notifiers use it as the collapse key:
    /// a newer notification for the same channel replaces an older one on
    /// the device where the platform allows it.
    pub channel_id: ChannelId,
    /// The latest message this notification stands for.
    pub message_id: MessageId,
    /// Who sent the latest message.
    pub sender: UserId,
    /// Text of the latest message, only when previews are enabled (off by
    /// default: a preview hands message content to a third party).
    pub preview: Option<String>,
    /// How many messages in this channel the notification stands for (at
    /// least 1): the messages since the previous notification for this
    /// recipient and channel, of which this is the latest. A burst is
    /// collapsed into one notification.
    pub count: u32,
}

/// What became of the push to one device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
#[non_exhaustive]
pub enum DeliveryOutcome {
    /// The platform accepted the push.
    Delivered,
    /// The platform says the device's push token is unregistered or
    /// invalid: it will never work again, and the server removes it.
    InvalidToken {
        /// The platform's reason, e.g. `UNREGISTERED`, `BadDeviceToken`.
        reason: String,
    },
    /// The push failed (after the notifier's own bounded retries).
    Failed {
        /// What went wrong.
        reason: String,
        /// Whether a later attempt might succeed (throttling, an outage).
        temporary: bool,
    },
    /// Not attempted: no provider is configured for the device's platform.
    Skipped {
        /// Why.
        reason: String,
    },
}

/// The outcome for one device of a [`PushNotification`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceOutcome {
    /// The device, from [`PushNotification::devices`].
    pub device: DeviceId,
    /// What happened.
    #[serde(flatten)]
    pub outcome: DeliveryOutcome,
}

/// What a notifier did with one notification, device by device.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushReport {
    /// One entry per device of the notification.
    pub outcomes: Vec<DeviceOutcome>,
}

impl PushReport {
    /// An empty report.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records an outcome for `device`.
    pub fn record(&mut self, device: DeviceId, outcome: DeliveryOutcome) {
        self.outcomes.push(DeviceOutcome { device, outcome });
    }

    /// The same outcome for every device of `notification`, e.g. from a
    /// notifier that sends one request for all of them.
    pub fn all(notification: &PushNotification, outcome: DeliveryOutcome) -> Self {
        Self {
            outcomes: notification
                .devices
                .iter()
                .map(|d| DeviceOutcome {
                    device: d.id,
                    outcome: outcome.clone(),
                })
                .collect(),
        }
    }

    /// Appends another report's outcomes (a router merging its providers').
    pub fn extend(&mut self, other: PushReport) {
        self.outcomes.extend(other.outcomes);
    }

    /// Devices the platform accepted a push for.
    pub fn delivered(&self) -> usize {
        self.count(|o| matches!(o, DeliveryOutcome::Delivered))
    }

    /// Devices whose push failed.
    pub fn failed(&self) -> usize {
        self.count(|o| matches!(o, DeliveryOutcome::Failed { .. }))
    }

    /// Devices whose token the platform reported unregistered or invalid.
    pub fn invalid_tokens(&self) -> impl Iterator<Item = DeviceId> + '_ {
        self.outcomes
            .iter()
            .filter(|o| matches!(o.outcome, DeliveryOutcome::InvalidToken { .. }))
            .map(|o| o.device)
    }

    /// The outcome for `device`, if the report has one.
    pub fn outcome(&self, device: DeviceId) -> Option<&DeliveryOutcome> {
        self.outcomes
            .iter()
            .find(|o| o.device == device)
            .map(|o| &o.outcome)
    }

    fn count(&self, f: impl Fn(&DeliveryOutcome) -> bool) -> usize {
        self.outcomes.iter().filter(|o| f(&o.outcome)).count()
    }
}

/// Sends push notifications (FCM, APNs, a webhook, a log line).
///
/// # Contract
///
/// * The server calls `notify` off the send path, only for recipients with
///   no connected device, never for the sender, and with each push token at
///   most once per notification, to at most [`MAX_PUSH_DEVICES`] devices.
///   A burst of messages to one recipient in one channel may arrive as one
///   notification with [`count`](PushNotification::count) above 1. A slow
///   or failing notifier
///   delays no message and loses none (the message is in the inbox).
/// * Notifications may be in flight concurrently (the server bounds how
///   many), so implementations must be safe to call from several tasks.
/// * The notifier does its own bounded retries of temporary failures
///   (throttling, 5xx) and then reports the final outcome; it never retries
///   forever.
/// * `Ok(report)` has one [`DeviceOutcome`] per device of the notification.
///   A device reported [`DeliveryOutcome::InvalidToken`] loses its push token
///   on the server and is not pushed again until it registers a new one, so
///   report it only when the platform says the token is unregistered or
///   invalid, never for a transient failure.
/// * `Err` means nothing could be attempted for any device (e.g. the
///   credentials were refused); it is logged and counted. Such an error is
///   temporary ([`Error::is_temporary`](crate::Error::is_temporary)) when a
///   later notification may succeed.
#[async_trait]
pub trait PushNotifier: Send + Sync + Debug + 'static {
    /// Notifies one offline recipient on the devices of `notification`.
    async fn notify(&self, notification: &PushNotification) -> Result<PushReport>;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::MemoryNotifier;
    use crate::types::Platform;

    fn device(user: UserId, token: &str) -> Device {
        Device {
            id: DeviceId::new_random(),
            user,
            platform: Platform::Android,
            push_token: Some(token.into()),
            created_at: 0,
        }
    }

    #[tokio::test]
    async fn memory_notifier_reports_one_outcome_per_device() {
        let user = UserId::new_random();
        let (good, gone) = (device(user, "good"), device(user, "gone"));
        let n = PushNotification {
            recipient: user,
            devices: vec![good.clone(), gone.clone()],
            channel_id: ChannelId::new_random(),
            message_id: MessageId(7),
            sender: UserId::new_random(),
            preview: None,
            count: 1,
        };
        let notifier = MemoryNotifier::default();
        notifier.invalidate_token("gone");
        let report = notifier.notify(&n).await.unwrap();
        assert_eq!(report.outcomes.len(), 2);
        assert_eq!(report.delivered(), 1);
        assert_eq!(report.failed(), 0);
        assert_eq!(report.outcome(good.id), Some(&DeliveryOutcome::Delivered));
        assert_eq!(report.invalid_tokens().collect::<Vec<_>>(), vec![gone.id]);
        assert_eq!(notifier.sent(), vec![n]);
    }

    #[test]
    fn outcomes_serialize_with_a_tag() {
        let o = DeviceOutcome {
            device: DeviceId::new_random(),
            outcome: DeliveryOutcome::Failed {
                reason: "503".into(),
                temporary: true,
            },
        };
        let json = serde_json::to_value(&o).unwrap();
        assert_eq!(json["outcome"], "failed");
        assert_eq!(json["temporary"], true);
        let back: DeviceOutcome = serde_json::from_value(json).unwrap();
        assert_eq!(back, o);
    }
}
