//! [`Receipts`] for [`MemoryStore`]: numbers live in each channel's log,
//! markers in one map locked after the channel's stripe.

use async_trait::async_trait;

use super::{lock, MemoryStore};
use crate::error::{Error, Result};
use crate::id::{ChannelId, MessageId, UserId};
use crate::receipts::{
    advance, check_receipt_keys, Marker, MarkerKind, MarkerUpdate, Receipt, Receipts,
};

#[async_trait]
impl Receipts for MemoryStore {
    async fn set_marker(
        &self,
        user: UserId,
        channel: ChannelId,
        kind: MarkerKind,
        message: MessageId,
    ) -> Result<MarkerUpdate> {
        // The channel's lock orders this with commits (which move the
        // sender's read marker) and gives the message's number.
        let stripe = self.channel_stripe(channel);
        let number = stripe
            .get(&channel)
            .and_then(|log| log.numbers.get(&message).copied())
            .ok_or(Error::not_found("message"))?;
        let proposed = Marker {
            id: message,
            number,
        };
        let mut receipts = lock(&self.receipts);
        let receipt = receipts.entry((user, channel)).or_default();
        let slot = match kind {
            MarkerKind::Read => &mut receipt.read,
            MarkerKind::Delivered => &mut receipt.delivered,
        };
        let update = advance(*slot, proposed);
        *slot = Some(update.marker);
        Ok(update)
    }

    async fn receipts(&self, keys: &[(UserId, ChannelId)]) -> Result<Vec<Receipt>> {
        check_receipt_keys(keys.len())?;
        let receipts = lock(&self.receipts);
        Ok(keys
            .iter()
            .map(|k| receipts.get(k).copied().unwrap_or_default())
            .collect())
    }

    async fn heads(&self, channels: &[ChannelId]) -> Result<Vec<Option<Marker>>> {
        check_receipt_keys(channels.len())?;
        Ok(channels
            .iter()
            .map(|c| self.channel_stripe(*c).get(c).and_then(|log| log.head))
            .collect())
    }
}
