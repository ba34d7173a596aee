//! [`MessageSearch`] on [`MemoryStore`]: a scan of each channel's messages,
//! newest first (no index: memory only).

use async_trait::async_trait;

use super::MemoryStore;
use crate::error::Result;
use crate::id::ChannelId;
use crate::search::{matches, words, MessageSearch, SearchCursor, MAX_QUERY_WORDS};
use crate::store::Paged;
use crate::types::Message;

#[async_trait]
impl MessageSearch for MemoryStore {
    async fn search(
        &self,
        channels: &[ChannelId],
        query: &str,
        after: Option<SearchCursor>,
        limit: usize,
    ) -> Result<Paged<Message>> {
        let mut wanted = words(query);
        wanted.truncate(MAX_QUERY_WORDS);
        if wanted.is_empty() || limit == 0 {
            return Ok(Paged::empty());
        }
        let mut found: Vec<Message> = Vec::new();
        let mut channels = channels.to_vec();
        channels.sort();
        channels.dedup();
        for channel in channels {
            let stripe = self.channel_stripe(channel);
            let Some(log) = stripe.get(&channel) else {
                continue;
            };
            // Newest first; at most limit + 1 per channel are needed.
            let mut taken = 0;
            for message in log.messages.values().rev() {
                if after.is_some_and(|a| !a.precedes(message)) {
                    continue;
                }
                if matches(&message.content, &wanted) {
                    found.push(message.clone());
                    taken += 1;
                    if taken > limit {
                        break;
                    }
                }
            }
        }
        Ok(crate::search::newest_page(found, limit))
    }
}
