//! Rate limits and the Origin check through the real server: sign-ups and
//! logins per address and per username (429 `rate_limited` with
//! Retry-After), the per-user send byte rate shared by a user's
//! connections, pings and binary frames against the connection's rate
//! (a flood closed with 4005), and the WebSocket `Origin` check.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::IpAddr;
use std::time::Duration;

use chat_core::api::ErrorBody;
use chat_core::protocol::{close, ErrorCode};
use chat_core::DeviceId;
use chat_server::{RateSpec, ServerConfig};
use common::*;
use futures::SinkExt;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message as WsMessage;

fn client_from(ip: [u8; 4]) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(IpAddr::from(ip))
        .build()
        .unwrap()
}

async fn login(
    client: &reqwest::Client,
    ts: &TestServer,
    user: &str,
    pw: &str,
) -> reqwest::Response {
    client
        .post(format!("{}/v1/login", ts.http))
        .json(&serde_json::json!({"username": user, "password": pw}))
        .send()
        .await
        .unwrap()
}

async fn signup(client: &reqwest::Client, ts: &TestServer, user: &str) -> reqwest::Response {
    client
        .post(format!("{}/v1/signup", ts.http))
        .json(&serde_json::json!({"username": user, "password": "password123"}))
        .send()
        .await
        .unwrap()
}

/// Alice and Bob signed up, and their direct channel.
async fn alice_and_bob(
    ts: &TestServer,
) -> (
    chat_core::api::AuthResponse,
    chat_core::api::AuthResponse,
    chat_core::Channel,
) {
    let http = Http::new(&ts.http);
    let alice = http.signup("alice").await;
    let bob = http.signup("bob").await;
    let direct = http.open_direct(&alice.token, bob.user.id).await;
    (alice, bob, direct)
}

/// A 429 with code `rate_limited`, retryable, and a Retry-After of whole
/// seconds.
async fn assert_throttled(resp: reqwest::Response) -> u64 {
    assert_eq!(resp.status(), 429);
    let retry_after: u64 = resp
        .headers()
        .get("retry-after")
        .expect("a Retry-After header")
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry_after >= 1);
    let body: ErrorBody = resp.json().await.unwrap();
    assert_eq!(body.error.code, ErrorCode::RateLimited);
    assert!(body.error.retryable);
    retry_after
}

#[tokio::test]
async fn logins_are_limited_per_username_and_per_address() {
    let ts = start(ServerConfig {
        login_per_username: RateSpec {
            per_minute: 6,
            burst: 3,
        },
        auth_per_address: RateSpec {
            per_minute: 60,
            burst: 8,
        },
        ..test_config()
    })
    .await;
    let here = client_from([127, 0, 0, 1]);
    assert_eq!(signup(&here, &ts, "alice").await.status(), 201);

    // Three wrong guesses at alice's password, then the username is
    // throttled, even with the right password and from another address.
    for _ in 0..3 {
        assert_eq!(
            login(&here, &ts, "alice", "wrong-password").await.status(),
            401
        );
    }
    let wait = assert_throttled(login(&here, &ts, "alice", "password123").await).await;
    assert!(wait <= 10, "one login per 10 s: Retry-After {wait}");
    let elsewhere = client_from([127, 0, 0, 2]);
    assert_throttled(login(&elsewhere, &ts, "alice", "password123").await).await;

    // The address has used 5 of its 8; three more, then it is throttled
    // for any username, sign-ups included, while another address is not.
    for name in ["bob", "carol", "dave"] {
        assert_eq!(login(&here, &ts, name, "whatever-pw").await.status(), 401);
    }
    assert_throttled(login(&here, &ts, "erin", "whatever-pw").await).await;
    assert_throttled(signup(&here, &ts, "frank").await).await;
    assert_eq!(signup(&elsewhere, &ts, "frank").await.status(), 201);
    assert!(ts.server.stats().rate_limited >= 4);
    ts.stop().await;
}

#[tokio::test]
async fn a_user_s_send_bytes_are_limited_across_their_connections() {
    let ts = start(ServerConfig {
        send_bytes_per_sec: 1_000,
        send_bytes_burst: 4_000,
        ..test_config()
    })
    .await;
    let (alice, bob, direct) = alice_and_bob(&ts).await;
    let mut phone = raw_connect(&ts, &alice.token, DeviceId::new_random()).await;
    let mut laptop = raw_connect(&ts, &alice.token, DeviceId::new_random()).await;
    let mut b = raw_connect(&ts, &bob.token, DeviceId::new_random()).await;
    let text = "x".repeat(1_500); // 1,756 bytes with the per-message overhead

    sent_id(phone.send_msg(direct.id, "p1", &text).await);
    sent_id(laptop.send_msg(direct.id, "l1", &text).await);
    // 3,512 of 4,000 used: the third, from either device, is refused.
    for (conn, cid) in [(&mut phone, "p2"), (&mut laptop, "l2")] {
        let e = conn.send_msg(direct.id, cid, &text).await.error.unwrap();
        assert_eq!(e.code, ErrorCode::RateLimited, "{e:?}");
        assert!(e.retryable);
    }
    // Bob's own budget is untouched.
    sent_id(b.send_msg(direct.id, "b1", &text).await);
    // Nothing refused was stored: bob's history has the three sent.
    let (history, _) = ts
        .server
        .history(bob.user.id, direct.id, chat_core::Page::latest(10))
        .await
        .unwrap();
    assert_eq!(history.len(), 3);
    ts.stop().await;
}

#[tokio::test]
async fn pings_and_binary_frames_count_and_a_flood_is_closed_with_4005() {
    let ts = start(ServerConfig {
        rate_limit_per_sec: 1,
        rate_limit_burst: 5,
        ..test_config()
    })
    .await;
    let http = Http::new(&ts.http);
    let alice = http.signup("alice").await;
    let mut a = raw_connect(&ts, &alice.token, DeviceId::new_random()).await;
    // Binary frames take tokens: five are answered (bad_frame), then the
    // bucket is empty and even a valid request is refused.
    for _ in 0..5 {
        a.ws.send(WsMessage::Binary(vec![1, 2, 3].into()))
            .await
            .unwrap();
        let reply = a.reply_for(None).await;
        assert_eq!(reply.error.unwrap().code, ErrorCode::BadFrame);
    }
    let reply = a.request(chat_core::protocol::Request::Heartbeat {}).await;
    assert_eq!(reply.error.unwrap().code, ErrorCode::RateLimited);
    // A flood of pings: closed with 4005, not answered pong for pong.
    for _ in 0..200 {
        if a.ws.send(WsMessage::Ping(vec![0; 8].into())).await.is_err() {
            break;
        }
    }
    assert_eq!(read_until_close(&mut a.ws).await, Some(close::FLOOD));
    assert!(close::should_reconnect(close::FLOOD));
    ts.stop().await;
}

/// Opens `/v1/ws` with an `Origin` header; the HTTP status of the answer.
async fn upgrade_with_origin(ts: &TestServer, token: &str, origin: Option<&str>) -> u16 {
    let url = format!(
        "{}?device={}&token={token}",
        ts.ws_url(),
        DeviceId::new_random()
    );
    let mut request = url.into_client_request().unwrap();
    if let Some(origin) = origin {
        request
            .headers_mut()
            .insert("origin", origin.parse().unwrap());
    }
    match tokio_tungstenite::connect_async(request).await {
        Ok((_, response)) => response.status().as_u16(),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            let body: ErrorBody =
                serde_json::from_slice(response.body().as_deref().unwrap()).unwrap();
            assert_eq!(body.error.code, ErrorCode::Forbidden);
            response.status().as_u16()
        }
        Err(e) => panic!("{e}"),
    }
}

#[tokio::test]
async fn websocket_origins_other_than_our_own_need_listing() {
    let ts = start(ServerConfig {
        allowed_origins: vec!["https://app.example".into()],
        ..test_config()
    })
    .await;
    let http = Http::new(&ts.http);
    let alice = http.signup("alice").await;
    let token = &alice.token;
    // Native clients send no Origin.
    assert_eq!(upgrade_with_origin(&ts, token, None).await, 101);
    // A page served by this server.
    let own = format!("http://{}", ts.addr);
    assert_eq!(upgrade_with_origin(&ts, token, Some(&own)).await, 101);
    assert_eq!(
        upgrade_with_origin(&ts, token, Some("https://app.example")).await,
        101
    );
    assert_eq!(
        upgrade_with_origin(&ts, token, Some("https://evil.example")).await,
        403
    );
    assert_eq!(upgrade_with_origin(&ts, token, Some("null")).await, 403);
    ts.stop().await;

    // A bad entry is refused at start.
    let bad = ServerConfig {
        allowed_origins: vec!["app.example".into()],
        ..test_config()
    };
    assert!(chat_server::ChatServer::builder(bad).build().await.is_err());
}

#[tokio::test(start_paused = true)]
async fn the_send_byte_rate_refills_with_time() {
    let ts = start_memory(ServerConfig {
        send_bytes_per_sec: 1_000,
        send_bytes_burst: 2_000,
        ..test_config()
    })
    .await;
    let (alice, _bob, direct) = alice_and_bob(&ts).await;
    let send = |cid: &'static str| {
        let ts = &ts;
        let (user, channel) = (alice.user.id, direct.id);
        async move {
            ts.server
                .send(
                    user,
                    DeviceId::new_random(),
                    channel,
                    chat_core::ClientMsgId::new(cid).unwrap(),
                    "y".repeat(1_744), // 2,000 with the overhead
                )
                .await
        }
    };
    send("a").await.unwrap();
    assert_eq!(send("b").await.unwrap_err().code, ErrorCode::RateLimited);
    tokio::time::advance(Duration::from_secs(2)).await;
    send("b").await.unwrap();
    ts.stop().await;
}

#[tokio::test]
async fn a_login_burst_runs_at_most_hash_workers_hashes_at_once() {
    let ts = start(ServerConfig {
        hash_workers: 2,
        hash_queue: 4,
        argon2_memory_kib: 16_384,
        login_per_username: RateSpec::OFF,
        ..test_config()
    })
    .await;
    let client = reqwest::Client::new();
    let attempts = (0..32).map(|i| {
        login(
            &client,
            &ts,
            if i % 2 == 0 { "alice" } else { "nobody" },
            "wrong-password",
        )
    });
    let statuses: Vec<u16> = futures::future::join_all(attempts)
        .await
        .into_iter()
        .map(|r| r.status().as_u16())
        .collect();
    assert!(
        statuses.iter().all(|&s| s == 401 || s == 503),
        "{statuses:?}"
    );
    let refused = statuses.iter().filter(|&&s| s == 503).count() as u64;
    assert!(refused > 0);
    assert_eq!(ts.server.hashes_rejected(), refused);
    assert!(ts.server.hashing_peak() >= 1 && ts.server.hashing_peak() <= 2);
    ts.stop().await;
}

/// Polls `f` until it holds, for up to 10 s.
async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..1_000 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("never: {what}");
}

#[tokio::test]
async fn every_open_socket_counts_against_the_per_address_cap_websockets_included() {
    use tokio::io::AsyncReadExt;
    let ts = start(ServerConfig {
        max_connections_per_address: 3,
        ..test_config()
    })
    .await;
    let alice = Http::new(&ts.http).signup("alice").await; // its connection closes
    eventually("the sign-up's socket closed", || {
        ts.server.open_sockets() == 0
    })
    .await;
    let a = raw_connect(&ts, &alice.token, DeviceId::new_random()).await;
    let idle1 = tokio::net::TcpStream::connect(ts.addr).await.unwrap();
    let idle2 = tokio::net::TcpStream::connect(ts.addr).await.unwrap();
    eventually("three sockets open", || ts.server.open_sockets() == 3).await;
    // The fourth from this address is closed unread.
    let mut fourth = tokio::net::TcpStream::connect(ts.addr).await.unwrap();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(10), fourth.read(&mut buf))
        .await
        .expect("closed at once")
        .unwrap_or(0);
    assert_eq!(n, 0);
    assert_eq!(ts.server.stats().connections_refused, 1);
    // The WebSocket's share is given back when the session ends.
    drop(a);
    drop((idle1, idle2));
    eventually("every socket released", || ts.server.open_sockets() == 0).await;
    ts.stop().await;
}

#[tokio::test]
async fn a_login_for_an_unknown_username_does_the_same_hashing_work() {
    let ts = start(test_config()).await;
    let client = reqwest::Client::new();
    assert_eq!(signup(&client, &ts, "alice").await.status(), 201);
    let before = ts.server.hashes_computed();
    assert_eq!(
        login(&client, &ts, "alice", "wrong-password")
            .await
            .status(),
        401
    );
    assert_eq!(
        ts.server.hashes_computed(),
        before + 1,
        "a wrong password is hashed"
    );
    let resp = login(&client, &ts, "nobody-by-this-name", "wrong-password").await;
    assert_eq!(resp.status(), 401);
    let body: ErrorBody = resp.json().await.unwrap();
    assert_eq!(body.error.code, ErrorCode::Unauthorized);
    assert_eq!(
        ts.server.hashes_computed(),
        before + 2,
        "so is a login for a user that does not exist, against the decoy"
    );
    ts.stop().await;
}
