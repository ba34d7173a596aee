//! The push providers against local stand-ins for FCM, Google's token
//! endpoint, APNs (HTTP/2) and a webhook receiver, over real HTTP (see
//! `push_mock`): the requests they send, and what they make of each
//! documented answer.

#![cfg(all(feature = "webhook", feature = "fcm", feature = "apns"))]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod push_mock;

use std::sync::Arc;
use std::time::Duration;

use chat_core::{
    ChannelId, DeliveryOutcome, Device, DeviceId, MessageId, Platform, PushNotification,
    PushNotifier, UserId,
};
use chat_push::apns::ApnsNotifier;
use chat_push::fcm::FcmNotifier;
use chat_push::webhook::{verify_webhook_signature, WebhookNotifier, WebhookPayload};
use chat_push::{PlatformRouter, RetryPolicy};
use push_mock::{Kind, MockPush, Reply};

fn device(user: UserId, platform: Platform, token: &str) -> Device {
    Device {
        id: DeviceId::new_random(),
        user,
        platform,
        push_token: Some(token.to_owned()),
        created_at: 0,
    }
}

fn notification(devices: Vec<Device>) -> PushNotification {
    let recipient = devices.first().map_or_else(UserId::new_random, |d| d.user);
    PushNotification {
        recipient,
        devices,
        channel_id: ChannelId::new_random(),
        message_id: MessageId(7_000_001),
        sender: UserId::new_random(),
        preview: None,
        count: 1,
    }
}

/// A 64-hex-digit APNs device token.
fn apns_token(n: u8) -> String {
    format!("{n:02x}").repeat(32)
}

fn is_failed(outcome: Option<&DeliveryOutcome>, want_temporary: bool) -> bool {
    matches!(outcome, Some(DeliveryOutcome::Failed { temporary, .. }) if *temporary == want_temporary)
}

fn is_invalid(outcome: Option<&DeliveryOutcome>) -> bool {
    matches!(outcome, Some(DeliveryOutcome::InvalidToken { .. }))
}

#[tokio::test]
async fn fcm_sends_one_well_formed_push_per_device_with_one_token_exchange() {
    let mock = MockPush::start().await;
    let fcm = Arc::new(FcmNotifier::new(mock.fcm_config()).unwrap());
    let user = UserId::new_random();
    let n = notification(vec![
        device(user, Platform::Android, "fcm-a"),
        device(user, Platform::Android, "fcm-b"),
        device(user, Platform::Android, "fcm-c"),
    ]);
    let report = fcm.notify(&n).await.unwrap();
    assert_eq!(report.outcomes.len(), 3);
    assert_eq!(report.delivered(), 3, "{report:?}");
    mock.assert_well_formed();

    let sent = mock.seen_kind(Kind::Fcm);
    let mut tokens: Vec<&str> = sent.iter().map(|s| s.token.as_str()).collect();
    tokens.sort();
    assert_eq!(tokens, ["fcm-a", "fcm-b", "fcm-c"], "one push per device");
    let m = &sent[0].body["message"];
    let channel = n.channel_id.to_string();
    assert_eq!(m["data"]["channel_id"], channel.as_str());
    assert_eq!(m["data"]["message_id"], "7000001");
    assert_eq!(m["data"]["sender"], n.sender.to_string().as_str());
    assert_eq!(m["data"]["recipient"], user.to_string().as_str());
    assert_eq!(m["data"]["count"], "1");
    assert_eq!(m["notification"]["title"], "New message");
    assert_eq!(m["notification"]["body"], "You have a new message");
    assert_eq!(m["android"]["collapse_key"], channel.as_str());
    assert_eq!(m["android"]["notification"]["tag"], channel.as_str());
    assert_eq!(m["apns"]["headers"]["apns-collapse-id"], channel.as_str());

    // Many more sends, several at once: the access token is reused, and a
    // single exchange served them all.
    let more: Vec<_> = (0..5).map(|_| fcm.notify(&n)).collect();
    for report in futures::future::join_all(more).await {
        assert_eq!(report.unwrap().delivered(), 3);
    }
    assert_eq!(mock.seen_kind(Kind::Fcm).len(), 18);
    assert_eq!(mock.tokens_issued(), 1, "one OAuth exchange for every send");
    assert_eq!(mock.seen_kind(Kind::Oauth).len(), 1);
    mock.assert_well_formed();
}

#[tokio::test]
async fn fcm_shows_a_preview_and_a_count_only_when_given() {
    let mock = MockPush::start().await;
    let fcm = FcmNotifier::new(mock.fcm_config()).unwrap();
    let user = UserId::new_random();
    let mut n = notification(vec![device(user, Platform::Android, "fcm-p")]);
    n.preview = Some("see you at 8".into());
    n.count = 3;
    fcm.notify(&n).await.unwrap();
    let sent = mock.seen_kind(Kind::Fcm);
    let m = &sent[0].body["message"];
    assert_eq!(m["notification"]["body"], "see you at 8 (+2 more)");
    assert_eq!(m["data"]["count"], "3");
    mock.assert_well_formed();
}

#[tokio::test]
async fn fcm_retries_temporary_errors_until_the_bound() {
    let mock = MockPush::start().await;
    let fcm = FcmNotifier::new(mock.fcm_config()).unwrap();
    let user = UserId::new_random();
    let (down, flaky, internal) = (
        device(user, Platform::Android, "fcm-down"),
        device(user, Platform::Android, "fcm-flaky"),
        device(user, Platform::Android, "fcm-internal"),
    );
    // Always unavailable: the policy allows 3 attempts.
    mock.script(
        "fcm-down",
        std::iter::repeat_n(Reply::fcm_unavailable(), 10),
    );
    // Throttled once with Retry-After, then fine.
    mock.script("fcm-flaky", [Reply::fcm_quota().retry_after("1")]);
    // One 500, then fine.
    mock.script("fcm-internal", [Reply::fcm_internal()]);
    let n = notification(vec![down.clone(), flaky.clone(), internal.clone()]);
    let report = fcm.notify(&n).await.unwrap();

    assert!(is_failed(report.outcome(down.id), true), "{report:?}");
    assert_eq!(mock.seen_token("fcm-down").len(), 3, "stops at the bound");

    assert_eq!(report.outcome(flaky.id), Some(&DeliveryOutcome::Delivered));
    let tries = mock.seen_token("fcm-flaky");
    assert_eq!(tries.len(), 2);
    assert!(
        tries[1].at.duration_since(tries[0].at) >= Duration::from_millis(990),
        "Retry-After: 1 was not honoured"
    );

    assert_eq!(
        report.outcome(internal.id),
        Some(&DeliveryOutcome::Delivered)
    );
    assert_eq!(mock.seen_token("fcm-internal").len(), 2);
    mock.assert_well_formed();
}

#[tokio::test]
async fn fcm_quota_without_retry_after_is_a_temporary_failure_at_once() {
    let mock = MockPush::start().await;
    let fcm = FcmNotifier::new(mock.fcm_config()).unwrap();
    let user = UserId::new_random();
    let d = device(user, Platform::Android, "fcm-quota");
    // FCM's quota is per minute: a retry within the call would be refused
    // again, so none is made.
    mock.script("fcm-quota", std::iter::repeat_n(Reply::fcm_quota(), 5));
    let report = fcm.notify(&notification(vec![d.clone()])).await.unwrap();
    assert!(is_failed(report.outcome(d.id), true), "{report:?}");
    assert_eq!(mock.seen_token("fcm-quota").len(), 1, "not retried");
    mock.assert_well_formed();
}

#[tokio::test]
async fn fcm_reports_unregistered_and_invalid_tokens_without_retrying() {
    let mock = MockPush::start().await;
    let fcm = FcmNotifier::new(mock.fcm_config()).unwrap();
    let user = UserId::new_random();
    let (gone, bad, ok) = (
        device(user, Platform::Android, "fcm-gone"),
        device(user, Platform::Android, "fcm-bad"),
        device(user, Platform::Android, "fcm-ok"),
    );
    mock.script("fcm-gone", [Reply::fcm_unregistered()]);
    mock.script("fcm-bad", [Reply::fcm_invalid_token()]);
    let report = fcm
        .notify(&notification(vec![gone.clone(), bad.clone(), ok.clone()]))
        .await
        .unwrap();
    assert_eq!(
        report.outcome(gone.id),
        Some(&DeliveryOutcome::InvalidToken {
            reason: "UNREGISTERED".into()
        })
    );
    assert!(is_invalid(report.outcome(bad.id)), "{report:?}");
    assert_eq!(report.outcome(ok.id), Some(&DeliveryOutcome::Delivered));
    let mut invalid: Vec<_> = report.invalid_tokens().collect();
    invalid.sort();
    let mut want = vec![gone.id, bad.id];
    want.sort();
    assert_eq!(invalid, want);
    assert_eq!(mock.seen_token("fcm-gone").len(), 1);
    assert_eq!(mock.seen_token("fcm-bad").len(), 1);

    // An INVALID_ARGUMENT about something else is a permanent failure of
    // this push, not a reason to drop the token.
    mock.script(
        "fcm-ok",
        [Reply::fcm(
            400,
            "INVALID_ARGUMENT",
            "INVALID_ARGUMENT",
            "Invalid value at 'message.data'",
        )],
    );
    let report = fcm.notify(&notification(vec![ok.clone()])).await.unwrap();
    assert!(is_failed(report.outcome(ok.id), false), "{report:?}");
    mock.assert_well_formed();
}

#[tokio::test]
async fn fcm_a_plain_404_is_a_permanent_failure_not_an_invalid_token() {
    let mock = MockPush::start().await;
    let fcm = FcmNotifier::new(mock.fcm_config()).unwrap();
    let user = UserId::new_random();
    let d = device(user, Platform::Android, "fcm-404");
    // What a wrong base URL or a proxy gives: a 404 page, no FCM error.
    mock.script(
        "fcm-404",
        [Reply::new(404, "<html><body>404 Not Found</body></html>")],
    );
    let report = fcm.notify(&notification(vec![d.clone()])).await.unwrap();
    assert!(is_failed(report.outcome(d.id), false), "{report:?}");
    assert_eq!(report.invalid_tokens().count(), 0, "the token is kept");
    assert_eq!(mock.seen_token("fcm-404").len(), 1, "not retried");
    // A 404 that says NOT_FOUND without UNREGISTERED: the same.
    mock.script(
        "fcm-404",
        [Reply::new(
            404,
            r#"{"error":{"code":404,"message":"Requested entity was not found.","status":"NOT_FOUND"}}"#,
        )],
    );
    let report = fcm.notify(&notification(vec![d.clone()])).await.unwrap();
    assert!(is_failed(report.outcome(d.id), false), "{report:?}");
    // Only UNREGISTERED reports the token invalid.
    mock.script("fcm-404", [Reply::fcm_unregistered()]);
    let report = fcm.notify(&notification(vec![d.clone()])).await.unwrap();
    assert!(is_invalid(report.outcome(d.id)), "{report:?}");
    mock.assert_well_formed();
}

#[tokio::test]
async fn fcm_renews_a_rejected_access_token_once() {
    let mock = MockPush::start().await;
    let fcm = FcmNotifier::new(mock.fcm_config()).unwrap();
    let user = UserId::new_random();
    let d = device(user, Platform::Android, "fcm-renew");
    let n = notification(vec![d.clone()]);
    assert_eq!(fcm.notify(&n).await.unwrap().delivered(), 1);
    assert_eq!(mock.tokens_issued(), 1);

    // The token is refused (401): one new exchange, then the push goes.
    mock.revoke_access_tokens();
    assert_eq!(fcm.notify(&n).await.unwrap().delivered(), 1);
    assert_eq!(mock.tokens_issued(), 2);
    let tries = mock.seen_token("fcm-renew");
    assert_eq!(
        tries.iter().map(|s| s.status).collect::<Vec<_>>(),
        [200, 401, 200]
    );

    // Refused again even with a fresh token: renewed once only, then a
    // permanent failure.
    mock.script(
        "fcm-renew",
        std::iter::repeat_n(Reply::fcm_unauthenticated(), 5),
    );
    let report = fcm.notify(&n).await.unwrap();
    assert!(is_failed(report.outcome(d.id), false), "{report:?}");
    assert_eq!(mock.seen_token("fcm-renew").len(), 5);
    assert_eq!(mock.tokens_issued(), 3);
    mock.assert_well_formed();
}

#[tokio::test]
async fn fcm_third_party_auth_error_is_permanent_without_a_token_exchange() {
    let mock = MockPush::start().await;
    let fcm = FcmNotifier::new(mock.fcm_config()).unwrap();
    let user = UserId::new_random();
    let d = device(user, Platform::Android, "fcm-3p");
    mock.script(
        "fcm-3p",
        std::iter::repeat_n(
            Reply::fcm(
                401,
                "UNAUTHENTICATED",
                "THIRD_PARTY_AUTH_ERROR",
                "Auth error from APNS or Web Push Service",
            ),
            3,
        ),
    );
    let report = fcm.notify(&notification(vec![d.clone()])).await.unwrap();
    assert!(is_failed(report.outcome(d.id), false), "{report:?}");
    assert_eq!(mock.seen_token("fcm-3p").len(), 1, "not retried");
    assert_eq!(mock.tokens_issued(), 1, "the access token was not renewed");
    assert_eq!(mock.seen_kind(Kind::Oauth).len(), 1);
    mock.assert_well_formed();
}

#[tokio::test]
async fn fcm_token_endpoint_outage_fails_the_notification_after_bounded_retries() {
    let mock = MockPush::start().await;
    // A failed exchange is remembered for the policy's maximum backoff.
    let retry = RetryPolicy {
        max_backoff: Duration::from_millis(500),
        ..push_mock::fast_retry()
    };
    let fcm = FcmNotifier::new(mock.fcm_config().with_retry(retry)).unwrap();
    mock.script(
        "oauth",
        std::iter::repeat_n(Reply::new(503, r#"{"error":"backend_error"}"#), 2),
    );
    let user = UserId::new_random();
    let n = notification(vec![device(user, Platform::Android, "fcm-x")]);
    let err = fcm.notify(&n).await.unwrap_err();
    assert!(err.is_temporary(), "{err}");
    // The exchange holds the token lock that every send waits for, so it
    // makes 2 attempts, not the sends' 3.
    assert_eq!(mock.seen_kind(Kind::Oauth).len(), 2);
    assert!(mock.seen_kind(Kind::Fcm).is_empty());
    // Right after, sends fail at once instead of each retrying the
    // exchange; once the hold-off has passed and the endpoint is back, the
    // next notification goes through.
    assert!(fcm.notify(&n).await.is_err());
    assert_eq!(mock.seen_kind(Kind::Oauth).len(), 2);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(fcm.notify(&n).await.unwrap().delivered(), 1);
    mock.assert_well_formed();
}

#[tokio::test]
async fn fcm_token_exchange_does_not_wait_out_a_long_retry_after() {
    let mock = MockPush::start().await;
    // The sends would honour a Retry-After of up to 60 s; the exchange,
    // which every send waits for, only up to 5 s.
    let retry = RetryPolicy {
        max_retry_after: Duration::from_secs(60),
        ..push_mock::fast_retry()
    };
    let fcm = FcmNotifier::new(mock.fcm_config().with_retry(retry)).unwrap();
    mock.script(
        "oauth",
        [Reply::new(503, r#"{"error":"backend_error"}"#).retry_after("30")],
    );
    let user = UserId::new_random();
    let n = notification(vec![device(user, Platform::Android, "fcm-y")]);
    let err = fcm.notify(&n).await.unwrap_err();
    assert!(err.is_temporary(), "{err}");
    assert_eq!(mock.seen_kind(Kind::Oauth).len(), 1, "no 30 s wait");
    mock.assert_well_formed();
}

/// Sends `n` while the platform holds its answers: exactly 8 requests are
/// in flight however long one waits, then all complete.
async fn assert_at_most_8_in_flight(
    mock: &MockPush,
    notifier: &dyn PushNotifier,
    n: &PushNotification,
    kind: Kind,
) {
    mock.hold(true);
    let total = n.devices.len();
    let send = notifier.notify(n);
    let check = async {
        mock.wait_for(8, |s| s.kind == kind).await;
        // Nothing more may arrive while the 8 are unanswered; waiting
        // longer only makes a violation likelier to show.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(
            mock.seen_kind(kind).len(),
            8,
            "at most 8 requests in flight"
        );
        mock.hold(false);
    };
    let (report, ()) = tokio::join!(send, check);
    let report = report.unwrap();
    assert_eq!(report.outcomes.len(), total);
    assert_eq!(report.delivered(), total, "{report:?}");
    assert_eq!(mock.seen_kind(kind).len(), total);
    mock.assert_well_formed();
}

#[tokio::test]
async fn fcm_sends_to_many_devices_at_most_8_at_a_time() {
    let mock = MockPush::start().await;
    let fcm = FcmNotifier::new(mock.fcm_config()).unwrap();
    let user = UserId::new_random();
    let n = notification(
        (0..20)
            .map(|i| device(user, Platform::Android, &format!("fcm-many-{i}")))
            .collect(),
    );
    assert_at_most_8_in_flight(&mock, &fcm, &n, Kind::Fcm).await;
    // The report follows the notification's device order.
    let report = fcm.notify(&n).await.unwrap();
    let order: Vec<_> = report.outcomes.iter().map(|o| o.device).collect();
    let want: Vec<_> = n.devices.iter().map(|d| d.id).collect();
    assert_eq!(order, want);
}

#[tokio::test]
async fn apns_sends_to_many_devices_at_most_8_at_a_time() {
    let mock = MockPush::start().await;
    let apns = ApnsNotifier::new(mock.apns_config()).unwrap();
    let user = UserId::new_random();
    let n = notification(
        (0..20)
            .map(|i| device(user, Platform::Ios, &apns_token(0x40 + i)))
            .collect(),
    );
    assert_at_most_8_in_flight(&mock, &apns, &n, Kind::Apns).await;
}

#[tokio::test]
async fn apns_sends_one_well_formed_push_per_device_over_http2() {
    let mock = MockPush::start().await;
    let apns = ApnsNotifier::new(mock.apns_config()).unwrap();
    let user = UserId::new_random();
    let (t1, t2) = (apns_token(1), apns_token(2));
    let n = notification(vec![
        device(user, Platform::Ios, &t1),
        device(user, Platform::Ios, &t2),
    ]);
    let report = apns.notify(&n).await.unwrap();
    assert_eq!(report.delivered(), 2, "{report:?}");
    mock.assert_well_formed();
    let sent = mock.seen_kind(Kind::Apns);
    assert_eq!(sent.len(), 2);
    let mut tokens: Vec<&str> = sent.iter().map(|s| s.token.as_str()).collect();
    tokens.sort();
    assert_eq!(tokens, [t1.as_str(), t2.as_str()]);
    let channel = n.channel_id.to_string();
    for s in &sent {
        let h = |name: &str| s.headers.get(name).unwrap().to_str().unwrap().to_owned();
        assert_eq!(h("apns-topic"), "com.example.chat");
        assert_eq!(h("apns-push-type"), "alert");
        assert_eq!(h("apns-priority"), "10");
        assert_eq!(h("apns-collapse-id"), channel);
        assert!(h("apns-expiration").parse::<u64>().unwrap() > 1_700_000_000);
        assert_eq!(s.body["aps"]["thread-id"], channel.as_str());
        assert_eq!(s.body["aps"]["alert"]["body"], "You have a new message");
        assert_eq!(s.body["message_id"], "7000001");
        assert_eq!(s.body["count"], 1);
    }
    // One provider token, reused.
    apns.notify(&n).await.unwrap();
    let auth: std::collections::HashSet<_> = mock
        .seen_kind(Kind::Apns)
        .iter()
        .map(|s| s.headers["authorization"].clone())
        .collect();
    assert_eq!(auth.len(), 1);
}

#[tokio::test]
async fn apns_retries_temporary_errors_and_reports_invalid_tokens() {
    let mock = MockPush::start().await;
    let apns = ApnsNotifier::new(mock.apns_config()).unwrap();
    let user = UserId::new_random();
    let tokens: Vec<String> = (1..=5).map(apns_token).collect();
    let devices: Vec<Device> = tokens
        .iter()
        .map(|t| device(user, Platform::Ios, t))
        .collect();
    mock.script(&tokens[0], [Reply::apns(410, "Unregistered")]);
    mock.script(&tokens[1], [Reply::apns(400, "BadDeviceToken")]);
    mock.script(
        &tokens[2],
        [
            Reply::apns(429, "TooManyRequests").retry_after("1"),
            Reply::apns(503, "ServiceUnavailable"),
        ],
    );
    mock.script(
        &tokens[3],
        std::iter::repeat_n(Reply::apns(500, "InternalServerError"), 10),
    );
    mock.script(&tokens[4], [Reply::apns(400, "DeviceTokenNotForTopic")]);
    let not_hex = device(user, Platform::Ios, "not-a-hex-token/../../x");
    let mut all = devices.clone();
    all.push(not_hex.clone());
    let report = apns.notify(&notification(all)).await.unwrap();

    assert_eq!(
        report.outcome(devices[0].id),
        Some(&DeliveryOutcome::InvalidToken {
            reason: "Unregistered".into()
        })
    );
    assert_eq!(
        report.outcome(devices[1].id),
        Some(&DeliveryOutcome::InvalidToken {
            reason: "BadDeviceToken".into()
        })
    );
    assert!(is_invalid(report.outcome(devices[4].id)));
    assert_eq!(mock.seen_token(&tokens[0]).len(), 1);
    assert_eq!(mock.seen_token(&tokens[1]).len(), 1);

    // 429 (Retry-After honoured), 503, then delivered on the third attempt.
    assert_eq!(
        report.outcome(devices[2].id),
        Some(&DeliveryOutcome::Delivered)
    );
    let tries = mock.seen_token(&tokens[2]);
    assert_eq!(
        tries.iter().map(|s| s.status).collect::<Vec<_>>(),
        [429, 503, 200]
    );
    assert!(tries[1].at.duration_since(tries[0].at) >= Duration::from_millis(990));

    // Always 500: stops at the bound of 3 attempts.
    assert!(is_failed(report.outcome(devices[3].id), true), "{report:?}");
    assert_eq!(mock.seen_token(&tokens[3]).len(), 3);

    // A token that cannot be an APNs token is never sent anywhere.
    assert!(is_invalid(report.outcome(not_hex.id)));
    assert_eq!(mock.seen_kind(Kind::Apns).len(), 1 + 1 + 3 + 3 + 1);
    mock.assert_well_formed();
}

#[tokio::test]
async fn apns_does_not_renew_a_refused_provider_token_within_20_minutes() {
    let mock = MockPush::start().await;
    let apns = ApnsNotifier::new(mock.apns_config()).unwrap();
    let user = UserId::new_random();
    let token = apns_token(9);
    let d = device(user, Platform::Ios, &token);
    // Apple allows one provider token update per 20 minutes (429
    // TooManyProviderTokenUpdates): a token refused when it is younger is
    // kept, and the push fails for good instead of signing a new one. (The
    // renewal of an older token is a unit test of the apns module, which
    // can move time.)
    for reason in ["ExpiredProviderToken", "InvalidProviderToken"] {
        mock.script(&token, [Reply::apns(403, reason)]);
        let report = apns.notify(&notification(vec![d.clone()])).await.unwrap();
        assert!(is_failed(report.outcome(d.id), false), "{report:?}");
    }
    assert_eq!(
        mock.seen_token(&token).len(),
        2,
        "no retry with a new token"
    );
    let report = apns.notify(&notification(vec![d.clone()])).await.unwrap();
    assert_eq!(report.outcome(d.id), Some(&DeliveryOutcome::Delivered));
    let auth: std::collections::HashSet<_> = mock
        .seen_token(&token)
        .iter()
        .map(|s| s.headers["authorization"].clone())
        .collect();
    assert_eq!(auth.len(), 1, "one provider token throughout");
    mock.assert_well_formed();
}

#[tokio::test]
async fn webhook_posts_a_signed_payload_that_verifies() {
    let mock = MockPush::start().await;
    let hook = WebhookNotifier::new(mock.webhook_config()).unwrap();
    let user = UserId::new_random();
    let (web, desk) = (
        device(user, Platform::Web, "https://push.example/sub/1"),
        device(user, Platform::Desktop, "desktop-1"),
    );
    let mut n = notification(vec![web.clone(), desk.clone()]);
    n.preview = Some("hello".into());
    n.count = 2;
    let report = hook.notify(&n).await.unwrap();
    assert_eq!(report.delivered(), 2);
    mock.assert_well_formed();

    let sent = mock.seen_kind(Kind::Webhook);
    assert_eq!(sent.len(), 1, "one POST for the notification");
    let payload: WebhookPayload = serde_json::from_slice(&sent[0].raw).unwrap();
    assert_eq!(payload.version, 1);
    assert_eq!(payload.kind, "message");
    assert_eq!(payload.recipient, user);
    assert_eq!(payload.channel_id, n.channel_id);
    assert_eq!(payload.message_id, n.message_id);
    assert_eq!(payload.sender, n.sender);
    assert_eq!(payload.count, 2);
    assert_eq!(payload.preview.as_deref(), Some("hello"));
    assert_eq!(payload.devices.len(), 2);
    assert_eq!(payload.devices[0].id, web.id);
    assert_eq!(payload.devices[0].push_token, "https://push.example/sub/1");

    // What a receiver does: verify over the raw body, reject a tampered one.
    let header = sent[0].headers["x-chat-signature"].to_str().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let tolerance = Duration::from_secs(300);
    let secret = push_mock::WEBHOOK_SECRET;
    assert!(verify_webhook_signature(secret, header, &sent[0].raw, now, tolerance).is_ok());
    let tampered = String::from_utf8(sent[0].raw.to_vec())
        .unwrap()
        .replace("hello", "HELLO");
    assert!(verify_webhook_signature(secret, header, tampered.as_bytes(), now, tolerance).is_err());
    assert!(verify_webhook_signature(b"wrong", header, &sent[0].raw, now, tolerance).is_err());
    assert!(
        verify_webhook_signature(secret, header, &sent[0].raw, now + 3600, tolerance).is_err(),
        "an old request replayed later is refused"
    );

    // Without a preview the payload has none.
    n.preview = None;
    hook.notify(&n).await.unwrap();
    let sent = mock.seen_kind(Kind::Webhook);
    assert!(sent[1].body.get("preview").is_none());
    // The same notification keeps its id (receivers drop duplicates).
    assert_eq!(sent[0].body["id"], sent[1].body["id"]);
}

#[tokio::test]
async fn webhook_retries_then_reports_what_the_receiver_found_invalid() {
    let mock = MockPush::start().await;
    let hook = WebhookNotifier::new(mock.webhook_config()).unwrap();
    let user = UserId::new_random();
    let (a, b) = (
        device(user, Platform::Web, "sub-a"),
        device(user, Platform::Web, "sub-b"),
    );
    mock.script("webhook", [Reply::new(503, "busy").retry_after("1")]);
    mock.webhook_answer(serde_json::json!({ "invalid_devices": [b.id] }));
    let report = hook
        .notify(&notification(vec![a.clone(), b.clone()]))
        .await
        .unwrap();
    assert_eq!(report.outcome(a.id), Some(&DeliveryOutcome::Delivered));
    assert!(is_invalid(report.outcome(b.id)), "{report:?}");
    let sent = mock.seen_kind(Kind::Webhook);
    assert_eq!(sent.len(), 2);
    assert!(sent[1].at.duration_since(sent[0].at) >= Duration::from_millis(990));
    // Each attempt is signed afresh; the id stays.
    assert_eq!(sent[0].body["id"], sent[1].body["id"]);

    // A 4xx other than 408/429 is not retried.
    mock.script("webhook", [Reply::new(422, "no")]);
    let report = hook.notify(&notification(vec![a.clone()])).await.unwrap();
    assert!(is_failed(report.outcome(a.id), false), "{report:?}");
    assert_eq!(mock.seen_kind(Kind::Webhook).len(), 3);

    // Always 500: three attempts.
    mock.script("webhook", std::iter::repeat_n(Reply::new(500, "down"), 5));
    let report = hook.notify(&notification(vec![a.clone()])).await.unwrap();
    assert!(is_failed(report.outcome(a.id), true), "{report:?}");
    assert_eq!(mock.seen_kind(Kind::Webhook).len(), 6);
    mock.assert_well_formed();
}

#[tokio::test]
async fn webhook_url_is_used_as_given() {
    let mock = MockPush::start().await;
    let user = UserId::new_random();
    let n = notification(vec![device(user, Platform::Web, "sub-slash")]);
    let mut config = mock.webhook_config();
    config.url = format!("{}/webhook/", mock.base);
    let hook = WebhookNotifier::new(config).unwrap();
    assert_eq!(hook.notify(&n).await.unwrap().delivered(), 1);
    let hook = WebhookNotifier::new(mock.webhook_config()).unwrap();
    assert_eq!(hook.notify(&n).await.unwrap().delivered(), 1);
    let paths: Vec<_> = mock
        .seen_kind(Kind::Webhook)
        .into_iter()
        .map(|s| s.path)
        .collect();
    assert_eq!(
        paths,
        ["/webhook/", "/webhook"],
        "the trailing slash is kept"
    );
    mock.assert_well_formed();
}

#[tokio::test]
async fn router_sends_each_platform_to_its_provider() {
    let mock = MockPush::start().await;
    let router = PlatformRouter::new()
        .with_android(Arc::new(FcmNotifier::new(mock.fcm_config()).unwrap()))
        .with_ios(Arc::new(ApnsNotifier::new(mock.apns_config()).unwrap()))
        .with_fallback(Arc::new(
            WebhookNotifier::new(mock.webhook_config()).unwrap(),
        ));
    let user = UserId::new_random();
    let ios_token = apns_token(3);
    let n = notification(vec![
        device(user, Platform::Android, "fcm-r"),
        device(user, Platform::Ios, &ios_token),
        device(user, Platform::Web, "web-r"),
        device(user, Platform::Other, "other-r"),
    ]);
    mock.script("fcm-r", [Reply::fcm_unregistered()]);
    let report = router.notify(&n).await.unwrap();
    assert_eq!(report.outcomes.len(), 4);
    assert_eq!(report.delivered(), 3, "{report:?}");
    assert_eq!(
        report.invalid_tokens().collect::<Vec<_>>(),
        [n.devices[0].id]
    );
    assert_eq!(mock.seen_token("fcm-r").len(), 1);
    assert_eq!(mock.seen_token(&ios_token).len(), 1);
    let hooks = mock.seen_kind(Kind::Webhook);
    assert_eq!(hooks.len(), 1);
    assert_eq!(hooks[0].body["devices"].as_array().unwrap().len(), 2);
    mock.assert_well_formed();
}

#[test]
fn misconfiguration_is_refused_up_front() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mock = rt.block_on(MockPush::start());
    assert!(FcmNotifier::new(mock.fcm_config().with_base_url("not a url")).is_err());
    let mut apns = mock.apns_config();
    apns.key_pem = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----".into();
    assert!(ApnsNotifier::new(apns).is_err());
    let mut apns = mock.apns_config();
    apns.topic = String::new();
    assert!(ApnsNotifier::new(apns).is_err());
    let mut hook = mock.webhook_config();
    hook.secret.clear();
    assert!(WebhookNotifier::new(hook).is_err());
    // The secret must be at least 32 bytes.
    let mut hook = mock.webhook_config();
    hook.secret = vec![b'k'; 31];
    assert!(WebhookNotifier::new(hook.clone()).is_err());
    hook.secret.push(b'k');
    assert!(WebhookNotifier::new(hook).is_ok());
    // APNs provider tokens live 20 to 60 minutes.
    for minutes in [10, 60, 90] {
        let mut apns = mock.apns_config();
        apns.token_refresh = Duration::from_secs(minutes * 60);
        assert!(ApnsNotifier::new(apns).is_err(), "{minutes} minutes");
    }
    let mut hook = mock.webhook_config();
    hook.url = "ftp://example.invalid/hook".into();
    assert!(WebhookNotifier::new(hook).is_err());
    // Debug output never shows secrets.
    let dbg = format!("{:?} {:?}", mock.webhook_config(), mock.apns_config());
    assert!(!dbg.contains("whsec_test_only") && !dbg.contains("BEGIN"));
}
