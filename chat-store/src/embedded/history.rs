//! [`HistoryStore`] and [`Inbox`] for [`EmbeddedStore`].

use std::ops::RangeInclusive;

use async_trait::async_trait;
use chat_core::rules::{check_duplicate, select_page};
use chat_core::{
    Appended, ChannelId, DeviceId, Error, HistoryStore, Inbox, Message, MessageId, Page, Result,
    UserId,
};
use fjall::{KvPair, PartitionHandle};

use super::locks::{Kind, StripeKey};
use super::{commit, db, decode, encode, keys, EmbeddedStore, Inner};

/// The inclusive id range a page's exclusive bounds leave, or `None` if no
/// id fits between them.
fn id_range(page: &Page) -> Option<RangeInclusive<u64>> {
    let lo = match page.after {
        Some(a) => a.0.checked_add(1)?,
        None => 0,
    };
    let hi = match page.before {
        Some(b) => b.0.checked_sub(1)?,
        None => u64::MAX,
    };
    (lo <= hi).then_some(lo..=hi)
}

/// Decodes up to `limit` messages from a key range iterator.
fn take_messages(
    iter: impl Iterator<Item = fjall::Result<KvPair>>,
    limit: usize,
) -> Result<Vec<Message>> {
    iter.take(limit)
        .map(|kv| {
            let (_, value) = kv.map_err(db)?;
            decode(&value, "message")
        })
        .collect()
}

impl Inner {
    fn load_message(
        &self,
        partition: &PartitionHandle,
        key: &[u8],
        what: &'static str,
    ) -> Result<Option<Message>> {
        match partition.get(key).map_err(db)? {
            Some(v) => decode(&v, what).map(Some),
            None => Ok(None),
        }
    }

    fn append(&self, message: Message) -> Result<Appended> {
        let idem_key =
            keys::idempotency(message.channel_id, message.sender, &message.client_msg_id);
        let history_key = keys::history(message.channel_id, message.id);
        let _guards = self.stripes.lock(&[
            StripeKey::new(Kind::Idempotency, &idem_key),
            StripeKey::new(Kind::HistoryEntry, &history_key),
        ]);

        if let Some(record) = self.idempotency.get(&idem_key).map_err(db)? {
            let (channel, id) = keys::parse_idempotency_value(&record)?;
            let existing = self
                .load_message(&self.history, &keys::history(channel, id), "message")?
                .ok_or_else(|| keys::corrupt("idempotency record", "its message is missing"))?;
            return check_duplicate(&existing, &message);
        }
        if self.history.contains_key(history_key).map_err(db)? {
            return Err(Error::conflict(format!(
                "message id {} already used in this channel",
                message.id
            )));
        }

        let mut batch = self.batch();
        batch.insert(&self.history, history_key, encode(&message)?);
        batch.insert(
            &self.idempotency,
            idem_key,
            keys::idempotency_value(message.channel_id, message.id),
        );
        commit(batch)?;
        Ok(Appended::Stored(message))
    }

    fn page(&self, channel: ChannelId, page: Page) -> Result<Vec<Message>> {
        if page.limit == 0 {
            return Ok(Vec::new());
        }
        let Some(ids) = id_range(&page) else {
            return Ok(Vec::new());
        };
        let range = keys::history(channel, MessageId(*ids.start()))
            ..=keys::history(channel, MessageId(*ids.end()));
        // Read only the `limit` keys the page can contain, in the direction
        // the page reads; then let the shared rule make the final choice.
        let candidates = if page.after.is_some() {
            take_messages(self.history.range(range), page.limit)?
        } else {
            let mut newest = take_messages(self.history.range(range).rev(), page.limit)?;
            newest.reverse();
            newest
        };
        Ok(select_page(candidates.iter(), page))
    }

    fn push(&self, recipients: &[UserId], message: &Message) -> Result<()> {
        let mut users = recipients.to_vec();
        users.sort_unstable();
        users.dedup();
        let stripe_keys: Vec<StripeKey> = users
            .iter()
            .map(|u| StripeKey::new(Kind::Inbox, u.as_bytes()))
            .collect();
        let _guards = self.stripes.lock(&stripe_keys);

        let mut value = None;
        let mut batch = self.batch();
        for user in users {
            let key = keys::inbox(user, message.id);
            // Already there (visible, hence durable): the first copy stays.
            if self.inbox.contains_key(key).map_err(db)? {
                continue;
            }
            let value = match &value {
                Some(v) => v,
                None => value.insert(encode(message)?),
            };
            batch.insert(&self.inbox, key, value.as_slice());
        }
        commit(batch)
    }

    fn read(&self, user: UserId, after: MessageId, limit: usize) -> Result<Vec<Message>> {
        let Some(lo) = after.0.checked_add(1) else {
            return Ok(Vec::new());
        };
        let range = keys::inbox(user, MessageId(lo))..=keys::inbox(user, MessageId::MAX);
        take_messages(self.inbox.range(range), limit)
    }

    fn cursor(&self, user: UserId, device: DeviceId) -> Result<MessageId> {
        match self
            .cursors
            .get(keys::pair(user.as_bytes(), device.as_bytes()))
            .map_err(db)?
        {
            Some(v) => keys::parse_message_id(&v, "cursor"),
            None => Ok(MessageId::ZERO),
        }
    }

    fn advance_cursor(
        &self,
        user: UserId,
        device: DeviceId,
        cursor: MessageId,
    ) -> Result<MessageId> {
        let key = keys::pair(user.as_bytes(), device.as_bytes());
        let _guards = self.stripes.lock(&[StripeKey::new(Kind::Cursor, &key)]);
        let stored = self.cursor(user, device)?;
        if cursor <= stored {
            return Ok(stored);
        }
        let mut batch = self.batch();
        batch.insert(&self.cursors, key, cursor.to_be_bytes());
        commit(batch)?;
        Ok(cursor)
    }
}

#[async_trait]
impl HistoryStore for EmbeddedStore {
    async fn append(&self, message: Message) -> Result<Appended> {
        self.blocking(move |s| s.append(message)).await
    }

    async fn get(&self, channel: ChannelId, id: MessageId) -> Result<Option<Message>> {
        self.blocking(move |s| s.load_message(&s.history, &keys::history(channel, id), "message"))
            .await
    }

    async fn page(&self, channel: ChannelId, page: Page) -> Result<Vec<Message>> {
        self.blocking(move |s| s.page(channel, page)).await
    }
}

#[async_trait]
impl Inbox for EmbeddedStore {
    async fn push(&self, recipients: &[UserId], message: &Message) -> Result<()> {
        if recipients.is_empty() {
            return Ok(());
        }
        let recipients = recipients.to_vec();
        let message = message.clone();
        self.blocking(move |s| s.push(&recipients, &message)).await
    }

    async fn read(&self, user: UserId, after: MessageId, limit: usize) -> Result<Vec<Message>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        self.blocking(move |s| s.read(user, after, limit)).await
    }

    async fn cursor(&self, user: UserId, device: DeviceId) -> Result<MessageId> {
        self.blocking(move |s| s.cursor(user, device)).await
    }

    async fn advance_cursor(
        &self,
        user: UserId,
        device: DeviceId,
        cursor: MessageId,
    ) -> Result<MessageId> {
        self.blocking(move |s| s.advance_cursor(user, device, cursor))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_range_handles_edges() {
        let p = |after: Option<u64>, before: Option<u64>| Page {
            after: after.map(MessageId),
            before: before.map(MessageId),
            limit: 1,
        };
        assert_eq!(id_range(&p(None, None)), Some(0..=u64::MAX));
        assert_eq!(id_range(&p(Some(5), Some(7))), Some(6..=6));
        assert_eq!(id_range(&p(Some(5), Some(6))), None);
        assert_eq!(id_range(&p(Some(7), Some(5))), None);
        assert_eq!(id_range(&p(None, Some(0))), None);
        assert_eq!(id_range(&p(Some(u64::MAX), None)), None);
    }
}
