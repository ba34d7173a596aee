//! Push notifications for recipients with no connected device.

use std::fmt::Debug;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::id::{ChannelId, MessageId, UserId};
use crate::types::Device;

/// One notification for one recipient.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushNotification {
    /// Who is notified.
    pub recipient: UserId,
    /// The recipient's registered devices that have a push token.
    pub devices: Vec<Device>,
    /// Where the message was posted.
    pub channel_id: ChannelId,
    /// The message.
    pub message_id: MessageId,
    /// Who sent it.
    pub sender: UserId,
    /// Message text, only when previews are enabled (off by default: a
    /// preview hands message content to a third party).
    pub preview: Option<String>,
}

/// Sends push notifications (FCM, APNs, a webhook, a log line).
///
/// # Contract
///
/// * The server calls `notify` once per recipient that has no connected
///   device, never for the sender, off the send path: a slow or failing
///   notifier delays no message and loses none (the message is in the inbox).
/// * Notification is best effort: an `Err` is logged and counted; the
///   notifier does its own bounded retries.
#[async_trait]
pub trait PushNotifier: Send + Sync + Debug + 'static {
    /// Notifies one offline recipient.
    async fn notify(&self, notification: &PushNotification) -> Result<()>;
}
