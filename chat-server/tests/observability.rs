//! Metrics and logs through the real server and SDK: `/metrics` after a
//! short chat, the close reasons a server counts, and a capture of every
//! log line a chat produces (at debug level) checked for tokens and message
//! text.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};

use chat_client::ClientEvent;
use chat_core::protocol::close;
use chat_core::{ChannelId, DeviceId};
use chat_server::ServerConfig;
use common::*;
use tracing_subscriber::fmt::MakeWriter;

/// Every log line of this test binary, as JSON lines.
fn captured() -> &'static Capture {
    static CAPTURE: OnceLock<Capture> = OnceLock::new();
    CAPTURE.get_or_init(|| {
        let capture = Capture::default();
        tracing_subscriber::fmt()
            .json()
            // The server's own filter at its most verbose.
            .with_env_filter(chat_server::log_filter("trace"))
            .with_writer(capture.clone())
            .init();
        capture
    })
}

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Capture {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Capture {
    type Writer = Capture;
    fn make_writer(&'a self) -> Capture {
        self.clone()
    }
}

/// The value of the sample `name{labels}` (labels as written, in order),
/// or 0 if the page has no such sample.
fn sample(page: &str, series: &str) -> f64 {
    page.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            (name == series).then(|| value.parse().ok())?
        })
        .unwrap_or(0.0)
}

async fn scrape(base: &str) -> String {
    let response = reqwest::get(format!("{base}/metrics")).await.unwrap();
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"].to_str().unwrap();
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    response.text().await.unwrap()
}

/// Two friends chat over a direct channel; the other one is offline for a
/// message (a push), then connects and syncs.
async fn short_chat(ts: &TestServer, text: &str) -> (chat_client::Session, chat_client::Session) {
    let alice = signup_sdk(
        ts,
        &format!("al{}", &uuid::Uuid::new_v4().simple().to_string()[..8]),
    )
    .await;
    let bob = signup_sdk(
        ts,
        &format!("bo{}", &uuid::Uuid::new_v4().simple().to_string()[..8]),
    )
    .await;
    make_friends(&alice, &bob).await;
    let channel = alice.open_direct(bob.user_id()).await.unwrap();
    // Bob's phone, for the push while he is offline.
    bob.register_device(
        DeviceId::new_random(),
        chat_core::Platform::Android,
        Some("push-token-1"),
    )
    .await
    .unwrap();
    let a = connect_synced(&alice).await;
    // Bob offline: stored in his inbox, pushed.
    a.send(channel.id, format!("{text} (offline)"))
        .await
        .unwrap();
    let mut b = connect_synced(&bob).await;
    a.send(channel.id, text).await.unwrap();
    let got = next_event(
        &mut b,
        |e| matches!(e, ClientEvent::Message(d) if d.message.content == text),
    )
    .await;
    assert!(matches!(got, ClientEvent::Message(_)));
    // A send to a channel that does not exist counts as not_found.
    let missing = a.send(ChannelId::new_random(), "nowhere").await;
    assert_eq!(api_code(missing), chat_core::protocol::ErrorCode::NotFound);
    a.close().await;
    b.close().await;
    (alice, bob)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_after_a_short_chat() {
    captured();
    let ts = start(test_config()).await;
    let before = scrape(&ts.http).await;
    assert_eq!(sample(&before, "chat_sends_total{kind=\"stored\"}"), 0.0);
    short_chat(&ts, "metrics please").await;
    // Closes are counted when the sessions end, after close() returns.
    let mut page = scrape(&ts.http).await;
    for _ in 0..50 {
        if sample(&page, "chat_connections_open") == 0.0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        page = scrape(&ts.http).await;
    }
    assert_eq!(
        sample(&page, "chat_sends_total{kind=\"stored\"}"),
        2.0,
        "{page}"
    );
    assert_eq!(
        sample(&page, "chat_sends_total{kind=\"not_found\"}"),
        1.0,
        "{page}"
    );
    assert_eq!(sample(&page, "chat_connects_total"), 2.0, "{page}");
    assert_eq!(sample(&page, "chat_connections_open"), 0.0, "{page}");
    assert_eq!(
        sample(
            &page,
            "chat_connection_closes_total{code=\"none\",reason=\"client_closed\"}"
        ),
        2.0,
        "{page}"
    );
    assert_eq!(
        sample(
            &page,
            "chat_ws_request_duration_seconds_count{kind=\"send\"}"
        ),
        3.0,
        "{page}"
    );
    assert!(
        sample(
            &page,
            "chat_ws_request_duration_seconds_count{kind=\"sync\"}"
        ) >= 2.0
    );
    assert!(sample(&page, "chat_sync_requests_total") >= 2.0, "{page}");
    assert!(sample(&page, "chat_sync_entries_total") >= 1.0, "{page}");
    // The live message to Bob's connection.
    assert!(sample(&page, "chat_deliveries_total") >= 1.0, "{page}");
    assert!(
        sample(&page, "chat_presence_changes_total{kind=\"online\"}") >= 1.0,
        "{page}"
    );
    // One offline recipient: one push handed to the (logging) notifier.
    for _ in 0..50 {
        if sample(&page, "chat_push_sent_total") >= 1.0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        page = scrape(&ts.http).await;
    }
    assert_eq!(sample(&page, "chat_push_sent_total"), 1.0, "{page}");
    assert_eq!(sample(&page, "chat_push_dropped_total"), 0.0, "{page}");
    let backend = if std::env::var("CHAT_TEST_STORAGE").as_deref() == Ok("postgres") {
        "PostgresStore"
    } else {
        "MemoryStore"
    };
    assert!(
        sample(
            &page,
            &format!(
                "chat_storage_duration_seconds_count{{backend=\"{backend}\",operation=\"commit\"}}"
            )
        ) >= 3.0,
        "{page}"
    );
    assert!(
        sample(
            &page,
            "chat_bus_publish_duration_seconds_count{backend=\"MemoryBus\",operation=\"publish\"}"
        ) >= 2.0,
        "{page}"
    );
    ts.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_can_leave_the_api_listener() {
    captured();
    let ts = start(ServerConfig {
        metrics_route: false,
        ..test_config()
    })
    .await;
    let api = reqwest::get(format!("{}/metrics", ts.http)).await.unwrap();
    assert_eq!(api.status(), 404);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = ts.server.metrics_router();
    let metrics = tokio::spawn(async move { axum::serve(listener, app).await });
    let page = scrape(&format!("http://{addr}")).await;
    assert!(
        page.contains("# TYPE chat_connections_open gauge"),
        "{page}"
    );
    metrics.abort();
    ts.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_close_of_the_servers_own_is_counted_and_logged_once() {
    let logs = captured();
    let ts = start(test_config()).await;
    let http = Http::new(&ts.http);
    let user = http
        .signup(&format!(
            "cl{}",
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        ))
        .await;
    // Refused before the session: a bad token.
    let url = format!(
        "{}?device={}&token=not-a-token",
        ts.ws_url(),
        DeviceId::new_random()
    );
    let (mut refused, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    assert_eq!(
        read_until_close(&mut refused).await,
        Some(close::UNAUTHORIZED)
    );
    // Closed for a reason of the server's own: a frame above the limit.
    let mut raw = raw_connect(&ts, &user.token, DeviceId::new_random()).await;
    raw.send_text("x".repeat(ts.server.config().max_frame_bytes + 1))
        .await;
    assert_eq!(read_until_close(&mut raw.ws).await, Some(1009));
    let page = scrape(&ts.http).await;
    assert_eq!(
        sample(
            &page,
            "chat_connection_closes_total{code=\"4100\",reason=\"unauthorized\"}"
        ),
        1.0,
        "{page}"
    );
    assert_eq!(
        sample(
            &page,
            "chat_connection_closes_total{code=\"1009\",reason=\"frame_too_large\"}"
        ),
        1.0,
        "{page}"
    );
    let user_id = user.user.id.to_string();
    let lines: Vec<String> = logs
        .text()
        .lines()
        .filter(|l| l.contains("frame_too_large") && l.contains(&user_id))
        .map(str::to_owned)
        .collect();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].contains("\"level\":\"WARN\""), "{}", lines[0]);
    ts.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_name_user_device_and_request_but_never_tokens_or_text() {
    let logs = captured();
    let ts = start(test_config()).await;
    let text = format!("private words {}", uuid::Uuid::new_v4().simple());
    let (alice, bob) = short_chat(&ts, &text).await;
    // HTTP calls too: one with a request id of the caller's.
    let response = reqwest::Client::new()
        .get(format!("{}/v1/me", ts.http))
        .bearer_auth(alice.token())
        .header("x-request-id", "trace-me-42")
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["x-request-id"], "trace-me-42");
    let secrets = [
        alice.token(),
        alice.auth().refresh_token,
        bob.token(),
        bob.auth().refresh_token,
    ];
    ts.stop().await;
    let all = logs.text();
    assert!(!all.is_empty());
    for secret in &secrets {
        let leaks: Vec<&str> = all
            .lines()
            .filter(|l| l.contains(secret.as_str()))
            .collect();
        assert!(leaks.is_empty(), "a token is in the logs: {leaks:?}");
    }
    let leaks: Vec<&str> = all.lines().filter(|l| l.contains(&text)).collect();
    assert!(leaks.is_empty(), "message text is in the logs: {leaks:?}");
    // Lines of a WebSocket request carry the user, the device and the
    // request id; those of an HTTP request its route, request id and user.
    let alice_id = alice.user_id().to_string();
    let ws_lines: Vec<serde_json::Value> = all
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| {
            let spans = v["spans"].as_array();
            spans.is_some_and(|s| {
                s.iter()
                    .any(|s| s["name"] == "session" && s["user"] == alice_id.as_str())
                    && s.iter().any(|s| s["name"] == "request")
            })
        })
        .collect();
    assert!(
        !ws_lines.is_empty(),
        "no line of alice's WebSocket requests"
    );
    for line in &ws_lines {
        let spans = line["spans"].as_array().unwrap();
        let session = spans.iter().find(|s| s["name"] == "session").unwrap();
        assert!(session["device"].is_string(), "{line}");
        let request = spans.iter().find(|s| s["name"] == "request").unwrap();
        assert!(request["request_id"].is_string(), "{line}");
    }
    let http_line = all
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| {
            v["span"]["request_id"] == "trace-me-42" && v["fields"]["message"] == "request done"
        })
        .expect("the HTTP request's closing line");
    assert_eq!(http_line["span"]["user"], alice_id.as_str(), "{http_line}");
    assert_eq!(http_line["span"]["route"], "/v1/me", "{http_line}");
}
