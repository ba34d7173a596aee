//! Push through a signed HTTP webhook (feature `webhook`).
//!
//! For each notification the [`WebhookNotifier`] POSTs one JSON
//! [`WebhookPayload`] to the configured URL, with the header
//!
//! ```text
//! X-Chat-Signature: t=1700000000,v1=5f0c…(64 hex digits)
//! ```
//!
//! where `v1` is the lowercase hex HMAC-SHA256, keyed with the shared
//! secret, of the timestamp, a dot and the exact body bytes
//! (`"1700000000.{...}"`). The receiver recomputes it over the raw body
//! before parsing it, compares in constant time, and rejects timestamps
//! outside a tolerance window (five minutes is usual) so a captured request
//! cannot be replayed later: [`verify_webhook_signature`] does all of
//! that. Every retry is signed afresh; the payload's `id` stays the same, so
//! a receiver can drop duplicates.
//!
//! The receiver answers 2xx once it has taken the notification. It may
//! answer with a [`WebhookResponse`] body naming devices whose tokens it
//! found invalid (for instance a Web Push subscription that answered 410);
//! the server then removes those tokens. 408, 429 (with `Retry-After`) and
//! 5xx are retried with backoff; any other status is a permanent failure.
//!
//! ```
//! use std::time::Duration;
//! use chat_push::webhook::{sign_webhook, verify_webhook_signature};
//!
//! let secret = b"whsec_0123456789abcdef0123456789abcdef";
//! let body = br#"{"version":1}"#;
//! let header = sign_webhook(secret, 1_700_000_000, body);
//! let ok = verify_webhook_signature(secret, &header, body, 1_700_000_030, Duration::from_secs(300));
//! assert_eq!(ok, Ok(1_700_000_000));
//! assert!(verify_webhook_signature(secret, &header, b"{}", 1_700_000_030, Duration::from_secs(300)).is_err());
//! ```

use std::collections::HashSet;
use std::time::Duration;

use async_trait::async_trait;
use chat_core::{
    ChannelId, DeliveryOutcome, DeviceId, MessageId, Platform, PushNotification, PushNotifier,
    PushReport, Result, UserId,
};
use reqwest::header::CONTENT_TYPE;
use ring::hmac;
use serde::{Deserialize, Serialize};

use super::http::{self, RetryPolicy, Step};

/// The header that carries the signature.
pub const SIGNATURE_HEADER: &str = "X-Chat-Signature";

/// The shortest signing secret [`WebhookNotifier::new`] accepts, in bytes
/// (the HMAC-SHA256 output size; `openssl rand -hex 32` gives 64).
pub const MIN_SECRET_BYTES: usize = 32;

/// The header that carries the payload's [`id`](WebhookPayload::id).
pub const ID_HEADER: &str = "X-Chat-Webhook-Id";

/// The version of [`WebhookPayload`] this crate sends. A change that a
/// receiver could misread gets a new version; new optional fields do not.
pub const WEBHOOK_VERSION: u32 = 1;

/// The JSON body of a webhook push, version [`WEBHOOK_VERSION`].
///
/// ```json
/// {
///   "version": 1,
///   "type": "message",
///   "id": "0f6a2c1e-6c55-5d0c-9a57-4b1d8e7f2b10",
///   "timestamp": 1700000000,
///   "recipient": "6d1f…",
///   "devices": [{"id": "a3c9…", "platform": "web", "push_token": "https://push.example/abc"}],
///   "channel_id": "c0ffee…",
///   "message_id": "7123456789012345",
///   "sender": "41b2…",
///   "count": 1,
///   "preview": "see you at 8"
/// }
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookPayload {
    /// Payload version, [`WEBHOOK_VERSION`].
    pub version: u32,
    /// What happened: always `"message"` in version 1.
    #[serde(rename = "type")]
    pub kind: String,
    /// Identifies this notification (the same for every retry of it): a
    /// UUID derived from the recipient and the message id. Receivers use it
    /// to drop duplicates.
    pub id: String,
    /// When the notification was built, Unix seconds.
    pub timestamp: u64,
    /// The user to notify.
    pub recipient: UserId,
    /// The recipient's devices that this webhook serves, with their tokens.
    pub devices: Vec<WebhookDevice>,
    /// The channel of the message.
    pub channel_id: ChannelId,
    /// The latest message (fetch it with the chat API; it is not included).
    pub message_id: MessageId,
    /// Who sent it.
    pub sender: UserId,
    /// How many messages in the channel this notification stands for.
    pub count: u32,
    /// The message text, only when the server enables previews.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preview: Option<String>,
}

/// A device in a [`WebhookPayload`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookDevice {
    /// The device id.
    pub id: DeviceId,
    /// Its platform.
    pub platform: Platform,
    /// The push token it registered.
    pub push_token: String,
}

/// What a receiver may answer with a 2xx status (an empty or non-JSON body
/// means every device was served).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookResponse {
    /// Devices whose push tokens are no longer valid; the server removes
    /// their tokens.
    #[serde(default)]
    pub invalid_devices: Vec<DeviceId>,
}

/// Where and how to send webhook pushes.
#[derive(Clone)]
pub struct WebhookConfig {
    /// The receiver's URL (http or https), used exactly as given (a
    /// trailing slash is kept).
    pub url: String,
    /// The shared signing secret, at least [`MIN_SECRET_BYTES`] long.
    pub secret: Vec<u8>,
    /// Retries of temporary failures.
    pub retry: RetryPolicy,
    /// Deadline of one request, connection included.
    pub request_timeout: Duration,
}

impl std::fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookConfig")
            .field("url", &self.url)
            .field("secret", &"<redacted>")
            .field("retry", &self.retry)
            .field("request_timeout", &self.request_timeout)
            .finish()
    }
}

impl WebhookConfig {
    /// A configuration with the default retry policy and a 10 s timeout.
    pub fn new(url: impl Into<String>, secret: impl Into<Vec<u8>>) -> Self {
        Self {
            url: url.into(),
            secret: secret.into(),
            retry: RetryPolicy::default(),
            request_timeout: Duration::from_secs(10),
        }
    }

    /// Replaces the retry policy.
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }
}

/// The webhook provider. See the [module docs](self).
#[derive(Debug)]
pub struct WebhookNotifier {
    url: String,
    key: hmac::Key,
    retry: RetryPolicy,
    client: reqwest::Client,
}

impl WebhookNotifier {
    /// A notifier for `config`; fails on an unusable URL or a secret
    /// shorter than [`MIN_SECRET_BYTES`].
    pub fn new(config: WebhookConfig) -> Result<Self> {
        if config.secret.len() < MIN_SECRET_BYTES {
            return Err(chat_core::Error::invalid(format!(
                "the webhook secret must be at least {MIN_SECRET_BYTES} bytes (it is {}); \
                 make one with `openssl rand -hex 32`",
                config.secret.len()
            )));
        }
        let url = http::endpoint_url(&config.url, "webhook URL")?;
        Ok(Self {
            client: http::client(config.request_timeout, &url, false)?,
            key: hmac::Key::new(hmac::HMAC_SHA256, &config.secret),
            retry: config.retry,
            url,
        })
    }

    /// One POST. Done with the devices the receiver reported invalid, or
    /// with a permanent failure.
    async fn attempt(&self, body: &[u8], id: &str) -> Step<Answer> {
        let header = sign_with(&self.key, http::unix_now(), body);
        let request = self
            .client
            .post(&self.url)
            .header(CONTENT_TYPE, "application/json")
            .header(SIGNATURE_HEADER, header)
            .header(ID_HEADER, id)
            .body(body.to_vec());
        let http::Reply {
            status,
            retry_after,
            body,
            ..
        } = match http::exchange(request, http::SuccessBody::Optional).await {
            Ok(reply) => reply,
            Err(step) => return step,
        };
        if status.is_success() {
            let answer: WebhookResponse = serde_json::from_slice(&body).unwrap_or_default();
            return Step::Done(Ok(answer.invalid_devices.into_iter().collect()));
        }
        let reason = format!("webhook answered {status}: {}", http::excerpt(&body));
        if http::is_retryable(status) {
            Step::Retry {
                reason,
                retry_after,
            }
        } else {
            Step::Done(Err(DeliveryOutcome::Failed {
                reason,
                temporary: false,
            }))
        }
    }
}

/// A receiver's final answer: the devices it reported invalid, or the
/// failure for all of them.
type Answer = std::result::Result<HashSet<DeviceId>, DeliveryOutcome>;

#[async_trait]
impl PushNotifier for WebhookNotifier {
    async fn notify(&self, n: &PushNotification) -> Result<PushReport> {
        let payload = WebhookPayload {
            version: WEBHOOK_VERSION,
            kind: "message".into(),
            id: notification_id(n),
            timestamp: http::unix_now(),
            recipient: n.recipient,
            devices: n
                .devices
                .iter()
                .filter_map(|d| {
                    Some(WebhookDevice {
                        id: d.id,
                        platform: d.platform,
                        push_token: d.push_token.clone()?,
                    })
                })
                .collect(),
            channel_id: n.channel_id,
            message_id: n.message_id,
            sender: n.sender,
            count: n.count,
            preview: n.preview.clone(),
        };
        let body =
            serde_json::to_vec(&payload).map_err(|e| chat_core::Error::backend("webhook", e))?;
        let answer = http::with_retries(&self.retry, |_| self.attempt(&body, &payload.id))
            .await
            .and_then(|answer| answer);
        let report = match answer {
            Ok(invalid) => {
                let mut report = PushReport::new();
                for d in &n.devices {
                    report.record(
                        d.id,
                        if invalid.contains(&d.id) {
                            DeliveryOutcome::InvalidToken {
                                reason: "the webhook receiver reported the token invalid".into(),
                            }
                        } else {
                            DeliveryOutcome::Delivered
                        },
                    );
                }
                report
            }
            Err(failed) => PushReport::all(n, failed),
        };
        Ok(report)
    }
}

/// The stable id of a notification: a UUID (version 5) of the recipient
/// and the message id.
fn notification_id(n: &PushNotification) -> String {
    const NAMESPACE: uuid::Uuid = uuid::Uuid::from_u128(0x5f1c_8f7e_2d4b_4c1a_9e3f_a1b2_c3d4_e5f6);
    let name = format!("{}/{}", n.recipient, n.message_id);
    uuid::Uuid::new_v5(&NAMESPACE, name.as_bytes()).to_string()
}

/// The [`SIGNATURE_HEADER`] value for `body` sent at `timestamp` (Unix
/// seconds): `t=<timestamp>,v1=<hex HMAC-SHA256 of "<timestamp>.<body>">`.
pub fn sign_webhook(secret: &[u8], timestamp: u64, body: &[u8]) -> String {
    sign_with(&hmac::Key::new(hmac::HMAC_SHA256, secret), timestamp, body)
}

fn sign_with(key: &hmac::Key, timestamp: u64, body: &[u8]) -> String {
    let tag = hmac::sign(key, &signed_bytes(timestamp, body));
    format!("t={timestamp},v1={}", hex(tag.as_ref()))
}

fn signed_bytes(timestamp: u64, body: &[u8]) -> Vec<u8> {
    let mut message = timestamp.to_string().into_bytes();
    message.push(b'.');
    message.extend_from_slice(body);
    message
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    s
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Why a webhook signature was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SignatureError {
    /// The header is not `t=<unix seconds>,v1=<hex>[,v1=<hex>...]`.
    #[error("malformed signature header")]
    Malformed,
    /// The timestamp is further from now than the tolerance: a replay, or a
    /// clock far off.
    #[error("signature timestamp {timestamp} is outside the tolerance window")]
    OutsideTolerance {
        /// The header's timestamp, Unix seconds.
        timestamp: u64,
    },
    /// No signature in the header matches the body and the secret.
    #[error("signature does not match")]
    Mismatch,
}

/// Checks a [`SIGNATURE_HEADER`] value against the raw request body, for
/// receivers: the timestamp must be within `tolerance` of `now` (Unix
/// seconds; five minutes is usual) and one of the `v1` signatures must be
/// the HMAC-SHA256 of `"<t>.<body>"` keyed with `secret` (compared in
/// constant time). Returns the timestamp.
///
/// To rotate a secret, call it with the new secret and then the old one
/// until every sender has the new one.
pub fn verify_webhook_signature(
    secret: &[u8],
    header: &str,
    body: &[u8],
    now: u64,
    tolerance: Duration,
) -> Result<u64, SignatureError> {
    let mut timestamp = None;
    let mut signatures = Vec::new();
    for part in header.split(',') {
        let (key, value) = part
            .trim()
            .split_once('=')
            .ok_or(SignatureError::Malformed)?;
        match key {
            "t" => {
                let t = value
                    .parse::<u64>()
                    .map_err(|_| SignatureError::Malformed)?;
                if timestamp.replace(t).is_some() {
                    return Err(SignatureError::Malformed);
                }
            }
            "v1" => signatures.push(unhex(value).ok_or(SignatureError::Malformed)?),
            // Other schemes may be added later; ignore them.
            _ => {}
        }
    }
    let timestamp = timestamp.ok_or(SignatureError::Malformed)?;
    if signatures.is_empty() {
        return Err(SignatureError::Malformed);
    }
    if now.abs_diff(timestamp) > tolerance.as_secs() {
        return Err(SignatureError::OutsideTolerance { timestamp });
    }
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    let message = signed_bytes(timestamp, body);
    if signatures
        .iter()
        .any(|sig| hmac::verify(&key, &message, sig).is_ok())
    {
        Ok(timestamp)
    } else {
        Err(SignatureError::Mismatch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOL: Duration = Duration::from_secs(300);

    #[test]
    fn signatures_verify_and_tampering_is_caught() {
        let body = br#"{"version":1,"count":1}"#;
        let header = sign_webhook(b"secret", 1_000, body);
        assert!(header.starts_with("t=1000,v1="));
        assert_eq!(header.len(), "t=1000,v1=".len() + 64);
        assert_eq!(
            verify_webhook_signature(b"secret", &header, body, 1_000, TOL),
            Ok(1_000)
        );
        assert_eq!(
            verify_webhook_signature(
                b"secret",
                &header,
                br#"{"version":1,"count":2}"#,
                1_000,
                TOL
            ),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify_webhook_signature(b"other", &header, body, 1_000, TOL),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify_webhook_signature(b"secret", &header, body, 1_301, TOL),
            Err(SignatureError::OutsideTolerance { timestamp: 1_000 })
        );
        // A re-signed replay with a moved timestamp no longer matches.
        let moved = header.replacen("t=1000", "t=1200", 1);
        assert_eq!(
            verify_webhook_signature(b"secret", &moved, body, 1_200, TOL),
            Err(SignatureError::Mismatch)
        );
        // Several v1 entries (a sender mid-rotation): any may match.
        let v1 = header.split_once(",v1=").unwrap().1;
        let rotated = format!("t=1000,v1={},v1={v1}", "00".repeat(32));
        assert_eq!(
            verify_webhook_signature(b"secret", &rotated, body, 1_000, TOL),
            Ok(1_000)
        );
    }

    #[test]
    fn malformed_headers_are_rejected() {
        for header in [
            "",
            "t=1",
            "v1=00",
            "t=x,v1=00",
            "t=1,v1=0",
            "t=1,v1=zz",
            "t=1,t=1,v1=00",
            "garbage",
        ] {
            assert_eq!(
                verify_webhook_signature(b"s", header, b"", 1, TOL),
                Err(SignatureError::Malformed),
                "{header:?}"
            );
        }
    }
}
