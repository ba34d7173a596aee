//! Query strings, through the extractor the server uses (axum's `Query`,
//! serde_urlencoded underneath), for every query type of the API.
#![no_main]

use axum::extract::Query;
use axum::http::Uri;
use chat_core::api::{ConnectQuery, HistoryQuery, PresenceQuery, RouteQuery};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(query) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(uri) = format!("/v1/x?{query}").parse::<Uri>() else {
        return;
    };
    let _ = Query::<ConnectQuery>::try_from_uri(&uri);
    let _ = Query::<HistoryQuery>::try_from_uri(&uri);
    let _ = Query::<RouteQuery>::try_from_uri(&uri);
    if let Ok(Query(q)) = Query::<PresenceQuery>::try_from_uri(&uri) {
        // The server splits this list itself.
        let _ = q
            .users
            .split(',')
            .map(|s| s.trim().parse::<chat_core::UserId>())
            .count();
    }
});
