//! [`MessageSearch`] on the embedded store: an inverted index in the
//! `search` partition, one empty entry per (word, channel, message):
//! `word ++ 0x00 ++ channel_id ++ message_id` (big-endian id, so a word's
//! postings in one channel are one key range ordered by id). Words are
//! [`words`] (alphanumeric, so no `0x00` inside).
//!
//! The committer writes a message's entries **in the same atomic batch** as
//! the message ([`stage_index`]), for commits and appends alike, so a
//! message is searchable exactly when it is stored. An edit or a delete of
//! a message (a later feature) must, in its own batch, remove the old
//! content's entries ([`stage_unindex`]) and add the new content's. A
//! store written before the index existed is indexed once when opened
//! ([`build_if_missing`]).
//!
//! A search walks, for each channel asked, the postings of the query's
//! longest word (the likeliest to be rare) backward from the cursor,
//! reads each candidate and keeps those holding every word, at most
//! `limit + 1` per channel; the channels' results are merged newest first.

use std::ops::Bound;

use async_trait::async_trait;
use chat_core::search::{matches, words, MessageSearch, SearchCursor, MAX_QUERY_WORDS};
use chat_core::{ChannelId, Message, MessageId, Paged, Result};
use fjall::{Keyspace, PartitionHandle};

use super::{db, decode, keys, EmbeddedStore, Inner, DURABILITY};

/// The meta key set once every stored message is indexed.
const BUILT: &str = "search_index";

/// Messages indexed per batch while building the index of an older store.
const BUILD_BATCH: usize = 10_000;

/// The key prefix of a word's postings in one channel.
fn prefix(word: &str, channel: ChannelId) -> Vec<u8> {
    let mut key = Vec::with_capacity(word.len() + 1 + 24);
    key.extend_from_slice(word.as_bytes());
    key.push(0);
    key.extend_from_slice(channel.as_bytes());
    key
}

/// The index key of `word` in `message`.
fn posting(word: &str, channel: ChannelId, id: MessageId) -> Vec<u8> {
    let mut key = prefix(word, channel);
    key.extend_from_slice(&id.to_be_bytes());
    key
}

/// Adds the index entries of `message` to `batch`.
pub(super) fn stage_index(batch: &mut fjall::Batch, search: &PartitionHandle, message: &Message) {
    for word in words(&message.content) {
        batch.insert(
            search,
            posting(&word, message.channel_id, message.id),
            &[] as &[u8],
        );
    }
}

/// Removes the index entries of `message` (as it was stored) from `batch`:
/// for an edit (then [`stage_index`] of the new content) or a delete, in
/// the change's own batch (`group.rs`, `stage_change`).
pub(super) fn stage_unindex(batch: &mut fjall::Batch, search: &PartitionHandle, message: &Message) {
    for word in words(&message.content) {
        batch.remove(search, posting(&word, message.channel_id, message.id));
    }
}

/// Indexes every stored message of a store written before the index
/// existed, in batches, then marks the index built (a crash midway builds
/// again: entries are idempotent). Runs at open, before any write.
pub(super) fn build_if_missing(
    keyspace: &Keyspace,
    meta: &PartitionHandle,
    history: &PartitionHandle,
    search: &PartitionHandle,
) -> Result<()> {
    if meta.contains_key(BUILT).map_err(db)? {
        return Ok(());
    }
    let mut batch = keyspace.batch().durability(Some(DURABILITY));
    let mut staged = 0usize;
    for kv in history.iter() {
        let (_, value) = kv.map_err(db)?;
        let message: Message = decode(&value, "message")?;
        stage_index(&mut batch, search, &message);
        staged += 1;
        if staged == BUILD_BATCH {
            batch.commit().map_err(db)?;
            batch = keyspace.batch().durability(Some(DURABILITY));
            staged = 0;
        }
    }
    batch.insert(meta, BUILT, "1");
    batch.commit().map_err(db)
}

impl Inner {
    fn search(
        &self,
        channels: &[ChannelId],
        query: &str,
        after: Option<SearchCursor>,
        limit: usize,
    ) -> Result<Paged<Message>> {
        let mut wanted = words(query);
        wanted.truncate(MAX_QUERY_WORDS);
        let Some(pivot) = wanted.iter().max_by_key(|w| w.len()).cloned() else {
            return Ok(Paged::empty());
        };
        if limit == 0 {
            return Ok(Paged::empty());
        }
        let mut channels = channels.to_vec();
        channels.sort();
        channels.dedup();
        let mut found: Vec<Message> = Vec::new();
        for channel in channels {
            let lo = prefix(&pivot, channel);
            // (id, channel) < (after.id, after.channel): ids up to after.id
            // in channels below the cursor's, below it in the others.
            let hi = match after {
                None => Bound::Included(posting(&pivot, channel, MessageId::MAX)),
                Some(a) if channel < a.channel => Bound::Included(posting(&pivot, channel, a.id)),
                Some(a) => Bound::Excluded(posting(&pivot, channel, a.id)),
            };
            let mut taken = 0usize;
            for kv in self.search.range((Bound::Included(lo), hi)).rev() {
                let (key, _) = kv.map_err(db)?;
                let id = keys::parse_message_id(&key[key.len() - 8..], "search key")?;
                let Some(value) = self.history.get(keys::history(channel, id)).map_err(db)? else {
                    continue;
                };
                let message: Message = decode(&value, "message")?;
                if matches(&message.content, &wanted) {
                    found.push(message);
                    taken += 1;
                    if taken > limit {
                        break;
                    }
                }
            }
        }
        Ok(chat_core::search::newest_page(found, limit))
    }
}

#[async_trait]
impl MessageSearch for EmbeddedStore {
    async fn search(
        &self,
        channels: &[ChannelId],
        query: &str,
        after: Option<SearchCursor>,
        limit: usize,
    ) -> Result<Paged<Message>> {
        let channels = channels.to_vec();
        let query = query.to_owned();
        self.blocking(move |s| s.search(&channels, &query, after, limit))
            .await
    }
}
