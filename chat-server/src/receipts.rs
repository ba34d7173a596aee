//! Read markers, delivery receipts and the channel list's unread counts.
//!
//! * `read`: a member moves their read marker in a channel forward (see
//!   [`chat_core::receipts`]). When it moves, the user's other connected
//!   devices and the other members (channels of at most
//!   [`READ_EVENT_MEMBERS`] members) get a `read` event through the
//!   delivery bus, so it reaches them on any node. Devices that were not
//!   connected get the markers from the channel list.
//! * `delivered`: in a direct channel, a device of a member says it has
//!   received the channel's messages up to one; the member's delivered
//!   marker moves forward, and the other member's devices get a
//!   `delivered` event. One monotonic marker per member and channel, not
//!   one receipt per message: it converges and costs one row.
//! * The channel list ([`ChatServer::channel_summaries`]) reads each
//!   channel's head and the markers by key, and the last message by id:
//!   no history scan.
//!
//! The actor is always the authenticated user, and only members of a
//! channel may move markers in it (`not_found` otherwise, as for every
//! channel request).

use chat_core::api::{ChannelSummary, LAST_MESSAGE_PREVIEW};
use chat_core::protocol::{ErrorCode, Event};
use chat_core::{
    BusEvent, Channel, ChannelId, ChannelKind, DeviceId, Envelope, MarkerKind, MessageId, UserId,
};

use crate::server::{err, wire, ApiResult, ChatServer};

/// Channels with more members than this publish no `read` events to the
/// other members (the marker still moves, and the user's own devices are
/// told).
pub(crate) const READ_EVENT_MEMBERS: usize = 100;

/// The error for a marker on a message the channel does not hold.
fn no_such_message() -> chat_core::protocol::WireError {
    err(ErrorCode::NotFound, "no such message in this channel")
}

impl ChatServer {
    /// `user` (on `device`) has read `channel` up to `message`: moves the
    /// read marker forward and tells the user's other devices and the
    /// other members when it moved. Answers the marker stored now and the
    /// messages after it.
    pub async fn mark_read(
        &self,
        user: UserId,
        device: DeviceId,
        channel: ChannelId,
        message: MessageId,
    ) -> ApiResult<(MessageId, u64)> {
        let members = self.member_channel(user, channel).await?.members;
        let store = &self.inner.messages;
        let update = store
            .set_marker(user, channel, MarkerKind::Read, message)
            .await
            .map_err(|e| match e {
                chat_core::Error::NotFound { .. } => no_such_message(),
                e => wire(e),
            })?;
        let head = store
            .heads(&[channel])
            .await
            .map_err(wire)?
            .first()
            .copied()
            .flatten();
        let unread = head
            .map_or(0, |h| h.number)
            .saturating_sub(update.marker.number);
        if update.moved {
            let event = Event::Read {
                channel,
                user,
                message: update.marker.id,
            };
            // The user's other devices (not the one that asked: its reply
            // says it all).
            let own = Envelope {
                event: BusEvent::Notice {
                    event: event.clone(),
                },
                skip_device: Some(device),
            };
            if let Err(e) = self.inner.bus.publish(&[user], own).await {
                tracing::warn!(error = %e, "read marker not published to the user's devices");
            }
            if members.len() <= READ_EVENT_MEMBERS {
                let others: Vec<UserId> = members.into_iter().filter(|m| *m != user).collect();
                if !others.is_empty() {
                    self.notify(&others, event).await;
                }
            }
        }
        Ok((update.marker.id, unread))
    }

    /// A device of `user` has received `message` of direct channel
    /// `channel`: moves the delivered marker forward and tells the other
    /// member when it moved. Answers the marker stored now. Groups are
    /// refused (`invalid_input`).
    pub async fn mark_delivered(
        &self,
        user: UserId,
        channel: ChannelId,
        message: MessageId,
    ) -> ApiResult<MessageId> {
        let found = self.member_channel(user, channel).await?;
        if found.kind != ChannelKind::Direct {
            return Err(err(
                ErrorCode::InvalidInput,
                "delivery receipts are for direct channels only",
            ));
        }
        let update = self
            .inner
            .messages
            .set_marker(user, channel, MarkerKind::Delivered, message)
            .await
            .map_err(|e| match e {
                chat_core::Error::NotFound { .. } => no_such_message(),
                e => wire(e),
            })?;
        if update.moved {
            let others: Vec<UserId> = found.members.into_iter().filter(|m| *m != user).collect();
            if !others.is_empty() {
                let event = Event::Delivered {
                    channel,
                    user,
                    message: update.marker.id,
                };
                self.notify(&others, event).await;
            }
        }
        Ok(update.marker.id)
    }

    /// The summaries of `channels` (all `user`'s) for the channel list:
    /// unread count and read marker, last message (its text cut to a
    /// preview), and in direct channels the other member's markers. Reads
    /// heads and markers by key, and each last message by id.
    pub async fn channel_summaries(
        &self,
        user: UserId,
        channels: &[Channel],
    ) -> ApiResult<Vec<ChannelSummary>> {
        let store = &self.inner.messages;
        let ids: Vec<ChannelId> = channels.iter().map(|c| c.id).collect();
        let heads = store.heads(&ids).await.map_err(wire)?;
        let peers: Vec<Option<UserId>> = channels
            .iter()
            .map(|c| match c.kind {
                ChannelKind::Direct => c.members.iter().copied().find(|m| *m != user),
                _ => None,
            })
            .collect();
        let mut keys: Vec<(UserId, ChannelId)> = ids.iter().map(|c| (user, *c)).collect();
        keys.extend(
            peers
                .iter()
                .zip(&ids)
                .filter_map(|(p, c)| p.map(|p| (p, *c))),
        );
        let receipts = store.receipts(&keys).await.map_err(wire)?;
        let lasts = futures::future::join_all(heads.iter().zip(&ids).map(|(h, c)| async move {
            match h {
                Some(h) => store.get(*c, h.id).await,
                None => Ok(None),
            }
        }))
        .await
        .into_iter()
        .collect::<chat_core::Result<Vec<_>>>()
        .map_err(wire)?;
        let mut peer_receipts = receipts[ids.len()..].iter();
        let mut out = Vec::with_capacity(ids.len());
        for (i, channel) in ids.iter().enumerate() {
            let own = receipts[i];
            let peer = match peers[i] {
                Some(_) => peer_receipts.next().copied().unwrap_or_default(),
                None => chat_core::Receipt::default(),
            };
            let (last_message, truncated) = match &lasts[i] {
                Some(m) => {
                    let mut m = m.clone();
                    let cut = m
                        .content
                        .char_indices()
                        .nth(LAST_MESSAGE_PREVIEW)
                        .map(|(at, _)| at);
                    if let Some(at) = cut {
                        m.content.truncate(at);
                    }
                    (Some(m), cut.is_some())
                }
                None => (None, false),
            };
            out.push(ChannelSummary {
                channel: *channel,
                unread: own.unread(heads[i]),
                read: own.read.map(|m| m.id),
                last_message,
                truncated,
                peer_read: peer.read.map(|m| m.id),
                peer_delivered: peer.delivered.map(|m| m.id),
            });
        }
        Ok(out)
    }
}
