//! [`HistoryStore`], [`Inbox`] and [`MessageStore`] for [`EmbeddedStore`].

use std::ops::RangeInclusive;

use async_trait::async_trait;
use chat_core::changes::count_reactions;
use chat_core::{
    entry_bytes, take_within, Appended, ChannelId, Committed, DeviceId, Health, HistoryStore,
    Inbox, InboxEntry, Message, MessageId, MessageStore, NewMessage, Page, Paged, Result, Seq,
    UserId,
};
use chat_core::{Changed, NewChange, Reactions};
use fjall::{KvPair, PartitionHandle};

use super::{db, decode, keys, EmbeddedStore, Inner};

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

/// Decodes messages from a key range, lazily (a page stops reading where its
/// limits do).
fn messages(
    iter: impl Iterator<Item = fjall::Result<KvPair>>,
) -> impl Iterator<Item = Result<(fjall::UserKey, Message)>> {
    iter.map(|kv| {
        let (key, value) = kv.map_err(db)?;
        Ok((key, decode(&value, "message")?))
    })
}

impl Inner {
    fn load_message(&self, partition: &PartitionHandle, key: &[u8]) -> Result<Option<Message>> {
        match partition.get(key).map_err(db)? {
            Some(v) => decode(&v, "message").map(Some),
            None => Ok(None),
        }
    }

    fn page(&self, channel: ChannelId, page: Page) -> Result<Paged<Message>> {
        let Some(ids) = id_range(&page) else {
            return Ok(Paged::empty());
        };
        let range = keys::history(channel, MessageId(*ids.start()))
            ..=keys::history(channel, MessageId(*ids.end()));
        let size = |m: &Message| entry_bytes(m);
        let only_message = |r: Result<(fjall::UserKey, Message)>| r.map(|(_, m)| m);
        if page.is_forward() {
            take_within(
                messages(self.history.range(range)).map(only_message),
                page.limit,
                page.max_bytes,
                size,
            )
        } else {
            let mut p = take_within(
                messages(self.history.range(range).rev()).map(only_message),
                page.limit,
                page.max_bytes,
                size,
            )?;
            p.items.reverse();
            Ok(p)
        }
    }

    fn read(
        &self,
        user: UserId,
        after: Seq,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Paged<InboxEntry>> {
        let Some(lo) = after.0.checked_add(1) else {
            return Ok(Paged::empty());
        };
        let range = keys::inbox(user, Seq(lo))..=keys::inbox(user, Seq(u64::MAX));
        // Entries refer to history records; both read at one instant (a
        // commit writes them in one batch).
        let (inbox, history) = self.snapshots(&self.inbox, &self.history);
        let entries = inbox.range(range).map(|kv| {
            let (key, value) = kv.map_err(db)?;
            let (_, seq) = keys::parse_id_key(&key, "inbox key")?;
            // A change entry has the change after the location.
            let (location, change) = if value.len() > 24 {
                (&value[..24], Some(decode(&value[24..], "change entry")?))
            } else {
                (&value[..], None)
            };
            let message = match history.get(location).map_err(db)? {
                Some(v) => decode(&v, "message")?,
                None => return Err(keys::corrupt("inbox entry", "its message is missing")),
            };
            Ok(InboxEntry {
                seq: Seq(seq.0),
                message,
                change,
            })
        });
        take_within(entries, limit, max_bytes, |e| entry_bytes(&e.message))
    }

    fn cursor(&self, user: UserId, device: DeviceId) -> Result<Seq> {
        match self
            .cursors
            .get(keys::pair(user.as_bytes(), device.as_bytes()))
            .map_err(db)?
        {
            Some(v) => keys::parse_message_id(&v, "cursor").map(|id| Seq(id.0)),
            None => Ok(Seq::ZERO),
        }
    }
}

#[async_trait]
impl HistoryStore for EmbeddedStore {
    async fn append(&self, message: Message) -> Result<Appended> {
        self.inner()?.group.append(message).await
    }

    async fn get(&self, channel: ChannelId, id: MessageId) -> Result<Option<Message>> {
        self.blocking(move |s| s.load_message(&s.history, &keys::history(channel, id)))
            .await
    }

    async fn reactions(
        &self,
        channel: ChannelId,
        messages: &[MessageId],
        viewer: UserId,
    ) -> Result<Vec<(MessageId, Vec<Reactions>)>> {
        let messages = messages.to_vec();
        self.blocking(move |s| {
            let mut out = Vec::new();
            for id in messages {
                let mut pairs = Vec::new();
                for kv in s.reactions.prefix(keys::reactions_of(channel, id, None)) {
                    let (key, _) = kv.map_err(db)?;
                    pairs.push(keys::parse_reaction(&key)?);
                }
                if !pairs.is_empty() {
                    let counted =
                        count_reactions(pairs.iter().map(|(u, e)| (e.as_str(), *u)), viewer);
                    out.push((id, counted));
                }
            }
            Ok(out)
        })
        .await
    }

    async fn page(&self, channel: ChannelId, page: Page) -> Result<Paged<Message>> {
        if page.limit == 0 {
            return Ok(Paged::empty());
        }
        self.blocking(move |s| s.page(channel, page)).await
    }
}

#[async_trait]
impl Inbox for EmbeddedStore {
    async fn read(
        &self,
        user: UserId,
        after: Seq,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Paged<InboxEntry>> {
        if limit == 0 {
            return Ok(Paged::empty());
        }
        self.blocking(move |s| s.read(user, after, limit, max_bytes))
            .await
    }

    async fn cursor(&self, user: UserId, device: DeviceId) -> Result<Seq> {
        self.blocking(move |s| s.cursor(user, device)).await
    }

    async fn advance_cursor(&self, user: UserId, device: DeviceId, cursor: Seq) -> Result<Seq> {
        self.inner()?
            .group
            .advance_cursor(keys::pair(user.as_bytes(), device.as_bytes()), cursor)
            .await
    }
}

#[async_trait]
impl MessageStore for EmbeddedStore {
    async fn commit(&self, message: NewMessage) -> Result<Committed> {
        self.inner()?.group.commit_message(message).await
    }

    async fn change(&self, change: NewChange) -> Result<Changed> {
        self.inner()?.group.change(change).await
    }

    fn health(&self) -> Health {
        self.health_now()
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
            max_bytes: usize::MAX,
        };
        assert_eq!(id_range(&p(None, None)), Some(0..=u64::MAX));
        assert_eq!(id_range(&p(Some(5), Some(7))), Some(6..=6));
        assert_eq!(id_range(&p(Some(5), Some(6))), None);
        assert_eq!(id_range(&p(Some(7), Some(5))), None);
        assert_eq!(id_range(&p(None, Some(0))), None);
        assert_eq!(id_range(&p(Some(u64::MAX), None)), None);
    }
}
