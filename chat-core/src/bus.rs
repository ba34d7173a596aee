//! The live delivery bus: carries events to whichever chat server holds a
//! recipient's connection.

use std::fmt::Debug;
use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::id::{DeviceId, UserId};
use crate::store::Seq;
use crate::types::{Message, Presence};

/// An event on its way to users' connected devices, on whichever node holds
/// them.
///
/// Envelopes cross process boundaries on a broker-backed bus, so they are
/// plain serde data; a bus encodes them with any serde format and must hand
/// the receiving node's handler an envelope equal to the one published.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    /// What to deliver.
    pub event: BusEvent,
    /// A device *not* to deliver to: the device that sent the message, which
    /// learns of it from its reply instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skip_device: Option<DeviceId>,
}

/// What an [`Envelope`] carries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum BusEvent {
    /// A stored message, and where it sits in each recipient's inbox (a
    /// node tells each of its users their own position, so their devices
    /// can move their cursors past it).
    Message {
        /// The message.
        message: Message,
        /// `(recipient, inbox position)` for every recipient, sorted by
        /// recipient.
        positions: Vec<(UserId, Seq)>,
    },
    /// A user came online or went offline.
    Presence {
        /// The new presence.
        presence: Presence,
    },
    /// A client event delivered to each recipient as it is: a friend
    /// request, its acceptance, a group invitation.
    Notice {
        /// The event.
        event: crate::protocol::Event,
    },
    /// The recipients' tokens of one log-in session (of every session, for
    /// `None`) were revoked: their live connections must close.
    Revoked {
        /// The log-in session, or `None` for all of them.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        session: Option<u64>,
    },
    /// A stored change to a message (an edit, a deletion, a reaction), and
    /// where its change entry sits in each recipient's inbox: delivered as
    /// [`Event::Changed`](crate::protocol::Event::Changed) like a message.
    Changed {
        /// The message after the change.
        message: Message,
        /// What changed.
        change: crate::changes::Change,
        /// `(recipient, inbox position)` for every recipient, sorted by
        /// recipient.
        positions: Vec<(UserId, Seq)>,
    },
}

/// Receives envelopes for users subscribed on this node.
///
/// Called from the bus's own task; it must not block (queue and return).
pub trait EnvelopeHandler: Send + Sync + Debug + 'static {
    /// Delivers `envelope` to the connections on this node of each of
    /// `users`. One call per envelope per node, so the node can encode the
    /// event once however many of its users receive it.
    fn deliver(&self, users: &[UserId], envelope: &Envelope);

    /// Live delivery to this node may have had a gap: the bus lost its
    /// broker (or could not keep a subscription there) and is whole again,
    /// every subscription restored. Envelopes published meanwhile may be
    /// lost; the node tells its connections to sync from their cursors
    /// (everything is in the inboxes).
    fn resync(&self);
}

/// Routes live events between chat servers.
///
/// A chat server [`attach`](Self::attach)es its handler once, then
/// [`subscribe`](Self::subscribe)s each user when that user's first connection
/// opens on it and [`unsubscribe`](Self::unsubscribe)s when the last closes.
/// The single-node bus delivers in-process; a multi-node bus (NATS, Redis) is
/// another implementation of this trait and nothing else changes.
///
/// # Contract
///
/// * **Delivery**: after `subscribe(u)` returns, every envelope published to
///   `u` is passed to this node's handler until `unsubscribe(u)`, at most once
///   per subscribed node. The bus is *not* durable: an envelope for a user
///   subscribed nowhere is dropped, which is fine because the message is
///   already in the user's inbox and is fetched by sync.
/// * **Ordering**: envelopes from one publisher to one user arrive in publish
///   order.
/// * **Subscriptions are counted**: `subscribe` twice needs `unsubscribe`
///   twice, so several connections of one user on a node are simple to track.
/// * **Expiry**: subscriptions of a node that dies disappear with it (a bus
///   on a broker ties them to the node's broker connection, or to a lease
///   the node keeps alive). Envelopes for them go nowhere; a publish never
///   fails because a subscribed node died.
/// * **Gaps**: a bus that loses its broker keeps this node's subscriptions
///   and restores every one of them when the broker is back, then calls
///   [`EnvelopeHandler::resync`]. `subscribe` and `unsubscribe` meanwhile
///   update the node's own record and succeed; `publish` fails with a
///   temporary error (nothing is lost: the message is in every inbox).
#[async_trait]
pub trait DeliveryBus: Send + Sync + Debug + 'static {
    /// Sets the handler that receives this node's envelopes. Called once.
    async fn attach(&self, handler: Arc<dyn EnvelopeHandler>) -> Result<()>;

    /// Starts receiving envelopes for `user` on this node.
    async fn subscribe(&self, user: UserId) -> Result<()>;

    /// Stops receiving envelopes for `user` on this node (one subscription).
    async fn unsubscribe(&self, user: UserId) -> Result<()>;

    /// Sends `envelope` to every node where each of `users` is subscribed.
    async fn publish(&self, users: &[UserId], envelope: Envelope) -> Result<()>;
}
