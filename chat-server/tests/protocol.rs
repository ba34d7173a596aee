//! Protocol-level tests through the real server with a raw WebSocket client:
//! errors, limits, authorization, idempotency, failure and slow consumers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use chat_core::memory::MemoryStore;
use chat_core::protocol::{close, ErrorCode, ReplyBody, Request};
use chat_core::{DeviceId, HistoryStore, Inbox, MessageId, Page, Seq};
use chat_server::{ChatServer, ServerConfig};
use common::*;
use futures::SinkExt;
use tokio_tungstenite::tungstenite::Message as WsMessage;

#[tokio::test]
async fn malformed_frames_get_error_replies_and_the_connection_stays_usable() {
    let ts = start(test_config()).await;
    let http = Http::new(&ts.http);
    let alice = http.signup("alice").await;
    let bob = http.signup("bob").await;
    let channel = http.open_direct(&alice.token, bob.user.id).await;
    let mut a = raw_connect(&ts, &alice.token, DeviceId::new_random()).await;

    // Not JSON at all: no id to echo.
    a.send_text("this is not json").await;
    let r = a.reply_for(None).await;
    assert_eq!(r.error.unwrap().code, ErrorCode::BadFrame);

    // JSON with an id but an unknown type: the id is echoed.
    a.send_text(r#"{"id":"x1","type":"teleport"}"#).await;
    let r = a.reply_for(Some("x1".into())).await;
    assert_eq!(r.error.unwrap().code, ErrorCode::BadFrame);

    // A frame without an id, or whose id is no string: bad_frame, no id.
    a.send_text(r#"{"type":"heartbeat"}"#).await;
    let r = a.reply_for(None).await;
    assert_eq!(r.error.unwrap().code, ErrorCode::BadFrame);
    a.send_text(r#"{"id":7,"type":"heartbeat"}"#).await;
    let r = a.reply_for(None).await;
    assert_eq!(r.error.unwrap().code, ErrorCode::BadFrame);
    // No type: bad_frame, the id echoed.
    a.send_text(r#"{"id":"x0"}"#).await;
    let r = a.reply_for(Some("x0".into())).await;
    assert_eq!(r.error.unwrap().code, ErrorCode::BadFrame);

    // A known request with a bad field is invalid_input, the id echoed:
    // a send missing its content...
    a.send_text(format!(
        r#"{{"id":"x2","type":"send","channel":"{}","client_msg_id":"c"}}"#,
        channel.id
    ))
    .await;
    let r = a.reply_for(Some("x2".into())).await;
    assert_eq!(r.error.unwrap().code, ErrorCode::InvalidInput);

    // ...a client message id with a space (printable ASCII without spaces
    // only), or over 64 bytes...
    for (id, cmid) in [("x3", "has space".to_owned()), ("x4", "k".repeat(65))] {
        a.send_text(format!(
            r#"{{"id":"{id}","type":"send","channel":"{}","client_msg_id":"{cmid}","content":"hi"}}"#,
            channel.id
        ))
        .await;
        let r = a.reply_for(Some(id.into())).await;
        assert_eq!(r.error.unwrap().code, ErrorCode::InvalidInput, "{cmid:?}");
    }
    // ...a channel id that is no UUID, a cursor that is no number.
    a.send_text(r#"{"id":"x5","type":"history","channel":"general"}"#)
        .await;
    let r = a.reply_for(Some("x5".into())).await;
    assert_eq!(r.error.unwrap().code, ErrorCode::InvalidInput);
    a.send_text(r#"{"id":"x6","type":"ack","cursor":"soon"}"#)
        .await;
    let r = a.reply_for(Some("x6".into())).await;
    assert_eq!(r.error.unwrap().code, ErrorCode::InvalidInput);

    // A binary frame.
    a.ws.send(WsMessage::Binary(vec![1, 2, 3].into()))
        .await
        .unwrap();
    let r = a.reply_for(None).await;
    assert_eq!(r.error.unwrap().code, ErrorCode::BadFrame);

    // Empty content.
    let r = a.send_msg(channel.id, "empty", "").await;
    assert_eq!(r.error.unwrap().code, ErrorCode::InvalidInput);
    // A control character that would steer a terminal (ESC); tabs and line
    // breaks are text.
    let r = a.send_msg(channel.id, "esc", "red \u{1b}[31m alert").await;
    assert_eq!(r.error.unwrap().code, ErrorCode::InvalidInput);
    let (_, dup) = sent_id(a.send_msg(channel.id, "tabs", "a\tb\r\nc").await);
    assert!(!dup);

    // Still usable: a real send works.
    let (id, dup) = sent_id(a.send_msg(channel.id, "ok-1", "hello").await);
    assert!(!dup);
    assert!(id > MessageId::ZERO);
    ts.stop().await;
}

#[tokio::test]
async fn oversized_message_is_refused_and_oversized_frame_closes_with_1009() {
    let ts = start(test_config()).await;
    let http = Http::new(&ts.http);
    let alice = http.signup("alice").await;
    let bob = http.signup("bob").await;
    let channel = http.open_direct(&alice.token, bob.user.id).await;
    let mut a = raw_connect(&ts, &alice.token, DeviceId::new_random()).await;

    // Exactly at the limit (multi-byte characters: the limit is characters).
    let at_limit = "é".repeat(100_000);
    let (_, dup) = sent_id(a.send_msg(channel.id, "big-ok", &at_limit).await);
    assert!(!dup);
    let over = "é".repeat(100_001);
    let r = a.send_msg(channel.id, "big-no", &over).await;
    let e = r.error.unwrap();
    assert_eq!(e.code, ErrorCode::MessageTooLarge);
    assert!(!e.retryable);
    // Nothing of the refused message was stored.
    let history = ts
        .server
        .history(alice.user.id, channel.id, Page::latest(10))
        .await
        .unwrap()
        .0;
    assert_eq!(history.len(), 1);

    // A frame above the hard frame limit (1 MiB) ends the connection with 1009.
    a.send_text("x".repeat(2 << 20)).await;
    assert_eq!(read_until_close(&mut a.ws).await, Some(1009));
    ts.stop().await;
}

#[tokio::test]
async fn non_members_cannot_post_or_read() {
    let ts = start(test_config()).await;
    let http = Http::new(&ts.http);
    let alice = http.signup("alice").await;
    let bob = http.signup("bob").await;
    let eve = http.signup("eve").await;
    let channel = http.open_direct(&alice.token, bob.user.id).await;
    let group = http
        .create_group(&alice.token, "g", vec![bob.user.id])
        .await;
    assert_eq!(group.status(), 201);
    let group: chat_core::api::GroupChange = group.json().await.unwrap();
    let group = group.channel.id;
    let unknown = chat_core::ChannelId::new_random();
    let mut e = raw_connect(&ts, &eve.token, DeviceId::new_random()).await;
    // Over the WebSocket and over HTTP, a channel that exists without eve
    // answers exactly as one that does not exist: the direct channel's id
    // is a function of alice's and bob's, and must not tell eve whether
    // they have talked.
    let mut answers = Vec::new();
    for id in [channel.id, group, unknown] {
        let sent = e.send_msg(id, &format!("sneaky-{id}"), "hi").await;
        let read = e
            .request(Request::History {
                channel: id,
                before: None,
                after: None,
                limit: None,
            })
            .await;
        let mut http_answers = Vec::new();
        for path in [
            format!("/v1/channels/{id}"),
            format!("/v1/channels/{id}/messages"),
        ] {
            let resp = http
                .client
                .get(format!("{}{path}", ts.http))
                .bearer_auth(&eve.token)
                .send()
                .await
                .unwrap();
            http_answers.push((resp.status().as_u16(), resp.text().await.unwrap()));
        }
        for (method, path) in [
            (
                reqwest::Method::PUT,
                format!("/v1/groups/{id}/members/{}", eve.user.id),
            ),
            (
                reqwest::Method::DELETE,
                format!("/v1/groups/{id}/members/{}", bob.user.id),
            ),
            (reqwest::Method::PUT, format!("/v1/invitations/{id}")),
        ] {
            let resp = http
                .client
                .request(method, format!("{}{path}", ts.http))
                .bearer_auth(&eve.token)
                .send()
                .await
                .unwrap();
            http_answers.push((resp.status().as_u16(), resp.text().await.unwrap()));
        }
        answers.push((sent.error.unwrap(), read.error.unwrap(), http_answers));
    }
    let (sent, read, http_answers) = &answers[2];
    assert_eq!(sent.code, ErrorCode::NotFound);
    assert_eq!(read.code, ErrorCode::NotFound);
    assert!(
        http_answers.iter().all(|(status, _)| *status == 404),
        "{http_answers:?}"
    );
    assert_eq!(
        answers[0], answers[2],
        "a direct channel without eve reads as none"
    );
    assert_eq!(answers[1], answers[2], "a group without eve reads as none");
    ts.stop().await;
}

#[tokio::test]
async fn retried_send_returns_the_original_id_and_stores_once() {
    let ts = start(test_config()).await;
    let http = Http::new(&ts.http);
    let alice = http.signup("alice").await;
    let bob = http.signup("bob").await;
    let channel = http.open_direct(&alice.token, bob.user.id).await;
    let mut a = raw_connect(&ts, &alice.token, DeviceId::new_random()).await;
    let mut b = raw_connect(&ts, &bob.token, DeviceId::new_random()).await;

    let (first, dup) = sent_id(a.send_msg(channel.id, "retry-me", "hello").await);
    assert!(!dup);
    // The same send again, even from another connection of the same user.
    let mut a2 = raw_connect(&ts, &alice.token, DeviceId::new_random()).await;
    let (second, dup) = sent_id(a2.send_msg(channel.id, "retry-me", "hello").await);
    assert!(dup);
    assert_eq!(first, second);
    // Same key, different content: a conflict, not a silent drop.
    let r = a.send_msg(channel.id, "retry-me", "something else").await;
    assert_eq!(r.error.unwrap().code, ErrorCode::Conflict);

    // Bob got it live, at position 1; the retry announced it again at the
    // same position (its first attempt might have committed too late to
    // announce anything), which a client drops. History and his inbox
    // hold it once.
    let (seq, m) = b.next_entry().await;
    assert_eq!((seq, m.id), (Seq(1), first));
    let history = ts
        .server
        .history(bob.user.id, channel.id, Page::latest(10))
        .await
        .unwrap()
        .0;
    assert_eq!(history.len(), 1);
    let (inbox, _) = ts.server.sync(bob.user.id, Seq::ZERO, None).await.unwrap();
    assert_eq!(inbox.len(), 1);
    // No other live copy is on its way: only repeats at position 1.
    let r = b.request(Request::Heartbeat {}).await;
    assert!(r.error.is_none());
    for e in &b.events {
        assert!(
            matches!(e, chat_core::protocol::Event::Message { seq, message } if *seq == Seq(1) && message.id == first),
            "an unexpected live event: {e:?}"
        );
    }
    ts.stop().await;
}

#[tokio::test]
async fn no_ack_while_the_store_fails_and_a_retry_then_stores_once() {
    let memory = Arc::new(MemoryStore::default());
    let store = Arc::new(Faulty::new(memory.clone()));
    let ts = start_with(
        ChatServer::builder(test_config())
            .messages(store.clone())
            .directory(memory.directory()),
    )
    .await;
    let http = Http::new(&ts.http);
    let alice = http.signup("alice").await;
    let bob = http.signup("bob").await;
    let channel = http.open_direct(&alice.token, bob.user.id).await;
    let mut a = raw_connect(&ts, &alice.token, DeviceId::new_random()).await;

    // The store down: an error that says "retry", and no ack.
    store.down.store(true, Ordering::SeqCst);
    let r = a.send_msg(channel.id, "m1", "hello").await;
    let e = r.error.expect("no ack while the store fails");
    assert!(r.result.is_none());
    assert_eq!(e.code, ErrorCode::Unavailable);
    assert!(e.retryable);
    store.down.store(false, Ordering::SeqCst);

    // The retry stores the message once, in history and both inboxes.
    let (id, _) = sent_id(a.send_msg(channel.id, "m1", "hello").await);
    let stored = memory
        .page(channel.id, Page::latest(10))
        .await
        .unwrap()
        .items;
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].id, id);
    let bobs = memory
        .read(bob.user.id, Seq::ZERO, 10, usize::MAX)
        .await
        .unwrap()
        .items;
    assert_eq!(
        bobs.iter()
            .map(|e| (e.seq, e.message.id))
            .collect::<Vec<_>>(),
        vec![(Seq(1), id)]
    );
    ts.stop().await;
}

#[tokio::test]
async fn a_slow_consumer_is_cut_off_and_others_are_unaffected() {
    let config = ServerConfig {
        outbound_queue_bytes: 256 << 10,
        rate_limit_per_sec: 10_000,
        rate_limit_burst: 10_000,
        ..test_config()
    };
    let ts = start(config).await;
    let http = Http::new(&ts.http);
    let alice = http.signup("alice").await;
    let slow = http.signup("slow").await;
    let carol = http.signup("carol").await;
    let to_slow = http.open_direct(&alice.token, slow.user.id).await;
    let to_carol = http.open_direct(&alice.token, carol.user.id).await;
    let mut a = raw_connect(&ts, &alice.token, DeviceId::new_random()).await;
    // The slow client connects and then never reads.
    let mut s = raw_connect(&ts, &slow.token, DeviceId::new_random()).await;
    let mut c = raw_connect(&ts, &carol.token, DeviceId::new_random()).await;

    let big = "z".repeat(60_000);
    let mut sent_to_carol = Vec::new();
    for i in 0..300 {
        // Sends never wait on the slow client.
        sent_id(a.send_msg(to_slow.id, &format!("s{i}"), &big).await);
        if i % 10 == 0 {
            let (id, _) = sent_id(a.send_msg(to_carol.id, &format!("c{i}"), "hi carol").await);
            sent_to_carol.push(id);
        }
        if ts.server.stats().slow_consumers > 0 {
            break;
        }
    }
    assert_eq!(ts.server.stats().slow_consumers, 1);
    // Carol got every message, in order.
    let mut got = Vec::new();
    while got.len() < sent_to_carol.len() {
        got.push(c.next_message().await.id);
    }
    assert_eq!(got, sent_to_carol);
    // The slow client's connection ends (with 4001 if the close frame fits
    // through its full socket).
    let code = read_until_close(&mut s.ws).await;
    assert!(
        code.is_none() || code == Some(close::SLOW_CONSUMER),
        "{code:?}"
    );
    // Nothing was lost for it: everything is in its inbox.
    let (inbox, _) = ts
        .server
        .sync(slow.user.id, Seq::ZERO, Some(1000))
        .await
        .unwrap();
    assert!(!inbox.is_empty());
    ts.stop().await;
}

#[tokio::test]
async fn bad_tokens_and_connection_limits_close_with_documented_codes() {
    let config = ServerConfig {
        max_connections_per_user: 2,
        ..test_config()
    };
    let ts = start(config).await;
    let http = Http::new(&ts.http);
    let alice = http.signup("alice").await;

    let url = format!(
        "{}?device={}&token=nope",
        ts.ws_url(),
        DeviceId::new_random()
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    assert_eq!(read_until_close(&mut ws).await, Some(close::UNAUTHORIZED));

    let url = format!(
        "{}?device={}&token={}&v=99",
        ts.ws_url(),
        DeviceId::new_random(),
        alice.token
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    assert_eq!(
        read_until_close(&mut ws).await,
        Some(close::UNSUPPORTED_VERSION)
    );

    let _a1 = raw_connect(&ts, &alice.token, DeviceId::new_random()).await;
    let _a2 = raw_connect(&ts, &alice.token, DeviceId::new_random()).await;
    let url = format!(
        "{}?device={}&token={}",
        ts.ws_url(),
        DeviceId::new_random(),
        alice.token
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    assert_eq!(
        read_until_close(&mut ws).await,
        Some(close::TOO_MANY_CONNECTIONS)
    );
    ts.stop().await;
}

#[tokio::test]
async fn the_server_connection_limit_refuses_cleanly_and_recovers() {
    let config = ServerConfig {
        max_connections: 2,
        ..test_config()
    };
    let ts = start(config).await;
    let http = Http::new(&ts.http);
    let alice = http.signup("alice").await;
    let a1 = raw_connect(&ts, &alice.token, DeviceId::new_random()).await;
    let _a2 = raw_connect(&ts, &alice.token, DeviceId::new_random()).await;
    let url = format!(
        "{}?device={}&token={}",
        ts.ws_url(),
        DeviceId::new_random(),
        alice.token
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    assert_eq!(read_until_close(&mut ws).await, Some(close::SERVER_FULL));
    // A slot frees up when a connection closes; the server accepts again.
    drop(a1);
    let mut ok = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if ts.server.connections() < 2 {
            ok = true;
            break;
        }
    }
    assert!(ok);
    let _a3 = raw_connect(&ts, &alice.token, DeviceId::new_random()).await;
    ts.stop().await;
}

#[tokio::test]
async fn requests_over_the_rate_limit_are_refused_with_rate_limited() {
    let config = ServerConfig {
        rate_limit_per_sec: 1,
        rate_limit_burst: 5,
        ..test_config()
    };
    let ts = start(config).await;
    let http = Http::new(&ts.http);
    let alice = http.signup("alice").await;
    let mut a = raw_connect(&ts, &alice.token, DeviceId::new_random()).await;
    let mut limited = 0;
    for _ in 0..10 {
        let r = a.request(Request::Heartbeat {}).await;
        if let Some(e) = r.error {
            assert_eq!(e.code, ErrorCode::RateLimited);
            assert!(e.retryable);
            limited += 1;
        }
    }
    assert!(limited >= 4, "only {limited} of 10 limited");
    ts.stop().await;
}

#[tokio::test]
async fn shutdown_tells_clients_to_reconnect_and_leaves_discovery() {
    let ts = start(test_config()).await;
    let http = Http::new(&ts.http);
    let alice = http.signup("alice").await;
    // route names this server while it runs.
    let route: chat_core::api::RouteResponse = http
        .client
        .get(format!("{}/v1/route", ts.http))
        .bearer_auth(&alice.token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(route.ws_url, ts.ws_url());
    let mut a = raw_connect(&ts, &alice.token, DeviceId::new_random()).await;
    let server = ts.server.clone();
    ts.shutdown.cancel();
    assert_eq!(read_until_close(&mut a.ws).await, Some(close::SHUTDOWN));
    ts.task.await.unwrap().unwrap();
    assert!(server.route(None).await.is_err(), "still in discovery");
}

#[tokio::test]
async fn sync_pages_the_inbox_and_ack_stores_the_cursor() {
    let ts = start(test_config()).await;
    let http = Http::new(&ts.http);
    let alice = http.signup("alice").await;
    let bob = http.signup("bob").await;
    let channel = http.open_direct(&alice.token, bob.user.id).await;
    let mut a = raw_connect(&ts, &alice.token, DeviceId::new_random()).await;
    let mut ids = Vec::new();
    for i in 0..25 {
        ids.push(
            sent_id(
                a.send_msg(channel.id, &format!("m{i}"), &format!("n{i}"))
                    .await,
            )
            .0,
        );
    }
    let device = DeviceId::new_random();
    let mut b = raw_connect(&ts, &bob.token, device).await;
    assert_eq!(b.welcome.cursor, Seq::ZERO);
    let mut got = Vec::new();
    let mut after = None;
    loop {
        let r = b
            .request(Request::Sync {
                after,
                limit: Some(10),
            })
            .await;
        let Ok(ReplyBody::Synced { entries, has_more }) = r.into_result() else {
            panic!("sync failed")
        };
        got.extend(entries.iter().map(|e| (e.seq, e.message.id)));
        after = entries.last().map(|e| e.seq);
        if !has_more {
            break;
        }
    }
    let expected: Vec<(Seq, MessageId)> = (1..=25).map(Seq).zip(ids.iter().copied()).collect();
    assert_eq!(got, expected, "positions 1..=25, in send order");
    let r = b.request(Request::Ack { cursor: Seq(10) }).await;
    assert!(matches!(r.into_result(), Ok(ReplyBody::Acked { cursor }) if cursor == Seq(10)));
    // Cursors never move back.
    let r = b.request(Request::Ack { cursor: Seq(4) }).await;
    assert!(matches!(r.into_result(), Ok(ReplyBody::Acked { cursor }) if cursor == Seq(10)));
    drop(b);
    // The device's next connection is told its cursor, and a sync without
    // `after` continues from it.
    let mut b = raw_connect(&ts, &bob.token, device).await;
    assert_eq!(b.welcome.cursor, Seq(10));
    let r = b
        .request(Request::Sync {
            after: None,
            limit: Some(100),
        })
        .await;
    let Ok(ReplyBody::Synced { entries, .. }) = r.into_result() else {
        panic!()
    };
    assert_eq!(
        entries.iter().map(|e| e.message.id).collect::<Vec<_>>(),
        ids[10..].to_vec()
    );
    ts.stop().await;
}
