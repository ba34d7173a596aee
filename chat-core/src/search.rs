//! Full-text search of message content: [`MessageSearch`], the words of a
//! text ([`words`]), and the HTTP types of `GET /v1/search`.
//!
//! A query matches a message whose content holds **every word** of the
//! query, whole words, ignoring case. Words are the runs of letters and
//! digits (Unicode), lowercased; a query of no word matches nothing.
//! Results come newest first: by message id descending, then channel id
//! descending (ids are unique per channel; with a global generator such as
//! [`Snowflake`](crate::Snowflake) the id alone orders them), and a page
//! continues after the last result of the previous one ([`SearchCursor`]).
//!
//! **Who may see what** is the caller's business: a search names the
//! channels to look in, and the server passes exactly the channels the
//! user is a member of (at the time of the search), so nobody finds a
//! message of a channel they are not in.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::id::{ChannelId, MessageId};
use crate::store::Paged;
use crate::types::Message;

/// Longest word indexed or searched, in bytes: longer runs are not words
/// (a key, a hash, a URL's innards).
pub const MAX_WORD: usize = 64;

/// Most distinct words of one message that are indexed (the first ones).
pub const MAX_WORDS_PER_MESSAGE: usize = 2_000;

/// Most words of one query.
pub const MAX_QUERY_WORDS: usize = 8;

/// Longest query, in bytes.
pub const MAX_QUERY: usize = 256;

/// Largest page of search results.
pub const MAX_SEARCH_PAGE: usize = 100;

/// The distinct words of `text`, in order of first appearance: runs of
/// alphanumeric characters, lowercased, at most [`MAX_WORD`] bytes (longer
/// runs are skipped), at most [`MAX_WORDS_PER_MESSAGE`] of them.
pub fn words(text: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for run in text.split(|c: char| !c.is_alphanumeric()) {
        if run.is_empty() {
            continue;
        }
        let word = run.to_lowercase();
        if word.len() > MAX_WORD {
            continue;
        }
        if seen.insert(word.clone()) {
            out.push(word);
            if out.len() == MAX_WORDS_PER_MESSAGE {
                break;
            }
        }
    }
    out
}

/// Whether `content` holds every word of `query_words`.
pub fn matches(content: &str, query_words: &[String]) -> bool {
    if query_words.is_empty() {
        return false;
    }
    let have: std::collections::HashSet<String> = words(content).into_iter().collect();
    query_words.iter().all(|w| have.contains(w))
}

/// The page of a search from the matches each channel gave (up to
/// `limit + 1` of each, any order): the newest `limit` by `(id, channel)`,
/// and whether more matched. The rule every backend that merges per-channel
/// results shares.
pub fn newest_page(
    mut found: Vec<crate::types::Message>,
    limit: usize,
) -> crate::store::Paged<crate::types::Message> {
    found.sort_by_key(|m| std::cmp::Reverse((m.id, m.channel_id)));
    let has_more = found.len() > limit;
    found.truncate(limit);
    crate::store::Paged {
        items: found,
        has_more,
    }
}

/// Where a page of results continues: strictly after (older than) this
/// result.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SearchCursor {
    /// The last result's id.
    pub id: MessageId,
    /// The last result's channel.
    pub channel: ChannelId,
}

impl SearchCursor {
    /// The cursor after `message`.
    pub fn after(message: &Message) -> Self {
        Self {
            id: message.id,
            channel: message.channel_id,
        }
    }

    /// Whether `message` comes after the cursor (is older).
    pub fn precedes(&self, message: &Message) -> bool {
        (message.id, message.channel_id) < (self.id, self.channel)
    }
}

/// Full-text search of the messages of some channels.
///
/// # Contract
///
/// * **Matching**: [`search`](Self::search) returns the messages of
///   `channels` (and of no other channel) whose content holds every word
///   of `query` ([`words`]; whole words, any case). A query of no word
///   returns nothing. A backend may match more loosely on text that is not
///   plain words (PostgreSQL's parser reads e-mail addresses and URLs as
///   one token), never on plain words.
/// * **Order and paging**: newest first, by `(id, channel)` descending; at
///   most `limit` results (0 returns nothing), all strictly after `after`
///   if given; `has_more` says whether more results follow. Paging with
///   the last result as the next `after` visits every match once.
/// * **Freshness**: a message is found from the moment its commit (or
///   append) returns: the index is written in the same atomic write.
///   An edit or delete must update the index in its own write (see each
///   backend's docs).
/// * **Expiry**: none; the index lives as long as the messages.
#[async_trait]
pub trait MessageSearch: Send + Sync + std::fmt::Debug + 'static {
    /// The newest messages of `channels` matching `query`, after `after`.
    async fn search(
        &self,
        channels: &[ChannelId],
        query: &str,
        after: Option<SearchCursor>,
        limit: usize,
    ) -> Result<Paged<Message>>;
}

/// `GET /v1/search`: the query string.
#[cfg_attr(feature = "openapi", derive(utoipa::IntoParams))]
#[cfg_attr(feature = "openapi", into_params(parameter_in = Query))]
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SearchQuery {
    /// The words to find (all of them), 1 to 256 bytes, at most 8 words.
    pub q: String,
    /// Continue after this message (the `next` of the previous page)...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after_id: Option<MessageId>,
    /// ... of this channel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after_channel: Option<ChannelId>,
    /// Page size, 1 to 100 (default 20).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
}

/// `GET /v1/search`: a page of results, newest first.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SearchPage {
    /// Matching messages of the caller's channels, newest first.
    pub messages: Vec<Message>,
    /// Where the next page starts, if there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<SearchCursor>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_are_lowercase_alphanumeric_runs() {
        assert_eq!(
            words("Lunch at NOON? noon, Café-au-lait x2"),
            vec!["lunch", "at", "noon", "café", "au", "lait", "x2"]
        );
        assert!(words("  ... !!").is_empty());
        let long = "a".repeat(MAX_WORD + 1);
        assert_eq!(words(&format!("{long} b")), vec!["b"]);
        assert!(matches("The Quick fox", &words("quick THE")));
        assert!(!matches("The Quick fox", &words("quick dog")));
        assert!(!matches("quickly", &words("quick")), "whole words only");
        assert!(!matches("anything", &[]));
    }
}
