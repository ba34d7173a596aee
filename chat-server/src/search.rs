//! `GET /v1/search`: full-text search of the messages of the caller's
//! channels. The server decides who sees what: it hands the store exactly
//! the channels the caller is a member of now, and the store searches
//! those only ([`MessageSearch`](chat_core::MessageSearch)).

use axum::extract::State;
use axum::Json;
use chat_core::protocol::ErrorCode;
use chat_core::search::{
    words, SearchCursor, SearchPage, SearchQuery, MAX_QUERY, MAX_QUERY_WORDS, MAX_SEARCH_PAGE,
};
use chat_core::{ChannelId, UserId};

use crate::http::{Caller, Errors, HttpResult, Q};
use crate::server::{err, wire, ApiResult, ChatServer};

/// Channels read per directory call while collecting the caller's.
const CHANNEL_BATCH: usize = 500;

impl ChatServer {
    /// A page of the messages of `user`'s channels that hold every word of
    /// the query, newest first.
    pub async fn search(&self, user: UserId, query: &SearchQuery) -> ApiResult<SearchPage> {
        let q = query.q.trim();
        if q.is_empty() || q.len() > MAX_QUERY {
            return Err(err(
                ErrorCode::InvalidInput,
                format!("q must be 1 to {MAX_QUERY} bytes"),
            ));
        }
        let found = words(q);
        if found.is_empty() {
            return Err(err(ErrorCode::InvalidInput, "q holds no word"));
        }
        if found.len() > MAX_QUERY_WORDS {
            return Err(err(
                ErrorCode::InvalidInput,
                format!("q holds more than {MAX_QUERY_WORDS} words"),
            ));
        }
        let after = match (query.after_id, query.after_channel) {
            (Some(id), Some(channel)) => Some(SearchCursor { id, channel }),
            (None, None) => None,
            _ => {
                return Err(err(
                    ErrorCode::InvalidInput,
                    "after_id and after_channel go together",
                ))
            }
        };
        let limit = match query.limit {
            None => 20,
            Some(n) if (1..=MAX_SEARCH_PAGE as u32).contains(&n) => n as usize,
            Some(_) => {
                return Err(err(
                    ErrorCode::InvalidInput,
                    format!("limit must be 1 to {MAX_SEARCH_PAGE}"),
                ))
            }
        };
        let Some(search) = self.inner.search.clone() else {
            return Err(err(
                ErrorCode::NotFound,
                "search is not available on this server",
            ));
        };
        let channels = self.channel_ids(user).await?;
        let page = search
            .search(&channels, q, after, limit)
            .await
            .map_err(wire)?;
        let next = if page.has_more {
            page.items.last().map(SearchCursor::after)
        } else {
            None
        };
        Ok(SearchPage {
            messages: page.items,
            next,
        })
    }

    /// Every channel `user` is a member of.
    async fn channel_ids(&self, user: UserId) -> ApiResult<Vec<ChannelId>> {
        let mut out = Vec::new();
        let mut after = None;
        loop {
            let batch = self
                .inner
                .directory
                .channels_of(user, after, CHANNEL_BATCH)
                .await
                .map_err(wire)?;
            let full = batch.len() == CHANNEL_BATCH;
            after = batch.last().map(|c| c.id);
            out.extend(batch.into_iter().map(|c| c.id));
            if !full {
                return Ok(out);
            }
        }
    }
}

/// `GET /v1/search?q=&limit=&after_id=&after_channel=`: the caller's
/// messages holding every word of `q`, newest first; `next` continues.
#[utoipa::path(
    get,
    path = "/v1/search",
    tag = "search",
    params(SearchQuery),
    responses(
        (status = 200, description = "Matching messages of the caller's channels, newest first", body = SearchPage),
        Errors
    ),
    security(("bearer" = []))
)]
pub(crate) async fn search(
    State(server): State<ChatServer>,
    Caller(me): Caller,
    Q(query): Q<SearchQuery>,
) -> HttpResult<Json<SearchPage>> {
    Ok(Json(server.search(me, &query).await?))
}
