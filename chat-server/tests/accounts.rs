//! Log-in sessions through the real server and the SDK: short access
//! tokens and refresh, log-out of one session and of all (refused on HTTP
//! and on the WebSocket upgrade with 4100, live connections closed with
//! 4100), and an authenticated `route` that names only the WebSocket URL.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;

use chat_client::{ChatClient, ClientError, Session};
use chat_core::clock::ManualClock;
use chat_core::memory::MemoryDiscovery;
use chat_core::protocol::{close, ErrorCode};
use chat_core::{Clock, DeviceId};
use chat_server::ChatServer;
use common::*;

fn code<T: std::fmt::Debug>(r: Result<T, ClientError>) -> ErrorCode {
    api_code(r)
}

/// The HTTP status of `GET /v1/me` with `token`.
async fn me_status(ts: &TestServer, token: &str) -> u16 {
    reqwest::Client::new()
        .get(format!("{}/v1/me", ts.http))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// The close code a WebSocket upgrade with `token` is answered with.
async fn upgrade_refused_with(ts: &TestServer, token: &str) -> Option<u16> {
    let url = format!(
        "{}?device={}&token={token}",
        ts.ws_url(),
        DeviceId::new_random()
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    read_until_close(&mut ws).await
}

async fn login(ts: &TestServer, name: &str) -> Session {
    login_sdk(ts, name).await
}

#[tokio::test]
async fn logout_revokes_that_session_on_http_and_the_websocket() {
    let ts = start(test_config()).await;
    let first = signup_open(&ts, "alice").await;
    let second = login(&ts, "alice").await;
    let mut live = raw_connect(&ts, &first.token(), DeviceId::new_random()).await;
    let mut other = raw_connect(&ts, &second.token(), DeviceId::new_random()).await;
    let (old_access, old_refresh) = (first.token(), first.auth().refresh_token);

    first.logout().await.unwrap();
    assert_eq!(
        read_until_close(&mut live.ws).await,
        Some(close::UNAUTHORIZED),
        "the session's live connection closes with 4100"
    );
    assert_eq!(me_status(&ts, &old_access).await, 401);
    assert_eq!(
        upgrade_refused_with(&ts, &old_access).await,
        Some(close::UNAUTHORIZED)
    );
    assert_eq!(
        code(
            ChatClient::new(&ts.http)
                .unwrap()
                .resume(&old_refresh)
                .await
        ),
        ErrorCode::Unauthorized,
        "its refresh token is revoked too"
    );
    assert_eq!(code(first.me().await), ErrorCode::Unauthorized);

    // The other session is untouched.
    assert_eq!(second.me().await.unwrap().username, "alice");
    let reply = other
        .request(chat_core::protocol::Request::Heartbeat {})
        .await;
    assert!(
        reply.error.is_none(),
        "the other session's connection lives on"
    );
    ts.stop().await;
}

#[tokio::test]
async fn logout_all_revokes_every_session_and_a_new_login_works() {
    let ts = start(test_config()).await;
    let first = signup_open(&ts, "alice").await;
    let second = login(&ts, "alice").await;
    let bob = signup_open(&ts, "bob").await;
    let mut a1 = raw_connect(&ts, &first.token(), DeviceId::new_random()).await;
    let mut a2 = raw_connect(&ts, &second.token(), DeviceId::new_random()).await;
    let mut b = raw_connect(&ts, &bob.token(), DeviceId::new_random()).await;

    second.logout_all().await.unwrap();
    for ws in [&mut a1.ws, &mut a2.ws] {
        assert_eq!(read_until_close(ws).await, Some(close::UNAUTHORIZED));
    }
    for s in [&first, &second] {
        assert_eq!(me_status(&ts, &s.token()).await, 401);
        assert_eq!(code(s.me().await), ErrorCode::Unauthorized);
        assert_eq!(
            upgrade_refused_with(&ts, &s.token()).await,
            Some(close::UNAUTHORIZED)
        );
    }
    // Another user is untouched; alice logs in anew.
    let reply = b.request(chat_core::protocol::Request::Heartbeat {}).await;
    assert!(reply.error.is_none());
    let again = login(&ts, "alice").await;
    assert_eq!(again.me().await.unwrap().username, "alice");
    let fresh = raw_connect(&ts, &again.token(), DeviceId::new_random()).await;
    assert_eq!(fresh.welcome.user, again.user_id());
    ts.stop().await;
}

#[tokio::test]
async fn access_tokens_are_short_and_a_refresh_keeps_the_session() {
    let start_ms = chat_core::SystemClock.now_ms();
    let clock = Arc::new(ManualClock::new(start_ms));
    // Discovery keeps real time: the server's lease must not lapse when
    // the server's clock jumps.
    let ts = start_with(
        ChatServer::builder(test_config())
            .clock(clock.clone())
            .discovery(Arc::new(MemoryDiscovery::default())),
    )
    .await;
    let session = signup_open(&ts, "alice").await;
    let auth = session.auth();
    assert_eq!(
        auth.expires_at - start_ms,
        15 * 60 * 1000,
        "15-minute access tokens"
    );
    assert_eq!(
        auth.refresh_expires_at - start_ms,
        30 * 24 * 3600 * 1000,
        "30-day refresh tokens"
    );
    // Each kind is good for its own use only.
    assert_eq!(me_status(&ts, &auth.refresh_token).await, 401);
    let refresh_with_access = reqwest::Client::new()
        .post(format!("{}/v1/refresh", ts.http))
        .json(&serde_json::json!({ "refresh_token": auth.token }))
        .send()
        .await
        .unwrap();
    assert_eq!(refresh_with_access.status(), 401);

    // Past 15 minutes the access token is refused everywhere...
    clock.advance(15 * 60 * 1000 + 1);
    assert_eq!(me_status(&ts, &auth.token).await, 401);
    assert_eq!(
        upgrade_refused_with(&ts, &auth.token).await,
        Some(close::UNAUTHORIZED)
    );
    // ...and the SDK refreshes and goes on: HTTP calls, and a WebSocket
    // (whose route call refreshes first).
    assert_eq!(session.me().await.unwrap().username, "alice");
    assert_ne!(session.token(), auth.token, "a new access token");
    connect_synced(&session).await.close().await;
    // The first refresh token is still good (refresh does not rotate it
    // out); a client that kept it can resume.
    let resumed = ChatClient::new(&ts.http)
        .unwrap()
        .resume(&auth.refresh_token)
        .await
        .unwrap();
    assert_eq!(resumed.user_id(), session.user_id());

    // Past 30 days without a refresh: log in again.
    clock.advance(30 * 24 * 3600 * 1000);
    assert_eq!(code(resumed.me().await), ErrorCode::Unauthorized);
    ts.stop().await;
}

#[tokio::test]
async fn route_is_for_signed_in_users_and_names_only_the_websocket_url() {
    let ts = start(test_config()).await;
    let http = reqwest::Client::new();
    let anonymous = http
        .get(format!("{}/v1/route", ts.http))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
    let alice = signup_open(&ts, "alice").await;
    let answer: serde_json::Value = http
        .get(format!("{}/v1/route?region=eu", ts.http))
        .bearer_auth(alice.token())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        answer,
        serde_json::json!({ "ws_url": ts.ws_url() }),
        "no server id, capacity or connection count"
    );
    assert_eq!(alice.route(None).await.unwrap().ws_url, ts.ws_url());
    // A WebSocket opened where route points welcomes the user.
    let raw = raw_connect(&ts, &alice.token(), DeviceId::new_random()).await;
    assert_eq!(raw.welcome.user, alice.user_id());
    ts.stop().await;
}

#[tokio::test]
async fn the_sdk_refreshes_an_access_token_about_to_expire_before_using_it() {
    // The server's clock runs 14.5 minutes behind: the tokens it issues
    // expire 30 s from now in real time, within the SDK's one-minute margin.
    let behind = 14 * 60 * 1000 + 30 * 1000;
    let clock = Arc::new(ManualClock::new(chat_core::SystemClock.now_ms() - behind));
    let ts = start_with(
        ChatServer::builder(test_config())
            .clock(clock.clone())
            .discovery(Arc::new(MemoryDiscovery::default())),
    )
    .await;
    let session = signup_open(&ts, "alice").await;
    let first = session.token();
    assert_eq!(
        me_status(&ts, &first).await,
        200,
        "still good on the server"
    );
    clock.advance(1_000); // so a new token differs from the old
    session.me().await.unwrap();
    let second = session.token();
    assert_ne!(second, first, "refreshed before use, not after a refusal");
    assert_eq!(
        me_status(&ts, &first).await,
        200,
        "the old token was not revoked"
    );
    ts.stop().await;
}
