//! Push through the Apple Push Notification service (feature `apns`).
//!
//! * **Authentication** is token-based: a provider token, a JWT signed with
//!   the team's APNs signing key (a `.p8` file, ES256; header `kid` the key
//!   id, claims `iss` the team id and `iat`). Apple refuses tokens older
//!   than an hour and answers 429 `TooManyProviderTokenUpdates` to renewals
//!   more often than every 20 minutes, so the token is reused and renewed
//!   every [`token_refresh`](ApnsConfig::token_refresh) (50 minutes; from
//!   20 up to, not including, 60 are accepted). A 403
//!   `ExpiredProviderToken` or `InvalidProviderToken` renews it early, and
//!   retries the device once, only if it is at least [`MIN_TOKEN_AGE`] old;
//!   a younger token is kept and the device's push is reported as a
//!   permanent failure (a key or team id that APNs refuses is a
//!   configuration error that a new token would not fix, and renewing on
//!   every such answer would run into the throttle).
//! * **Send**: one `POST {base}/3/device/{token}` per device (at most 8 in
//!   flight per notification) over HTTP/2 (ALPN over TLS; prior knowledge
//!   for a plain `http://` base, as test servers use), with the headers
//!   `authorization: bearer <token>`,
//!   `apns-topic` (the app's bundle id), `apns-push-type` (`alert`, or
//!   `background`), `apns-priority` (10, or 5 for background pushes),
//!   `apns-expiration` and `apns-collapse-id` (the channel id), and the body
//!   `{"aps": {"alert": {"title", "body"}, "sound": "default", "thread-id":
//!   <channel>}, "type", "channel_id", "message_id", "sender", "recipient",
//!   "count"}` (for a background push, `"aps": {"content-available": 1,
//!   "thread-id": <channel>}`).
//! * **Errors**, as Apple documents them: 410 (`Unregistered`,
//!   `ExpiredToken`) and 400 `BadDeviceToken` / `DeviceTokenNotForTopic`
//!   report the token invalid; 429 `TooManyRequests`, 500 and 503 are
//!   retried with backoff; anything else is a permanent failure. A token
//!   that is not hexadecimal is reported invalid without a request.
//!
//! Note that `BadDeviceToken` is also what APNs answers for a sandbox token
//! sent to production and the other way round, and `DeviceTokenNotForTopic`
//! for a wrong topic: check [`ApnsConfig::base_url`] and
//! [`ApnsConfig::topic`] before going live, or valid tokens will be removed.

use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use chat_core::{DeliveryOutcome, Device, PushNotification, PushNotifier, PushReport, Result};
use reqwest::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::time::Instant;

use super::http::{self, RetryPolicy, Step};
use super::jwt::Signer;

/// Apple's production endpoint.
pub const APNS_PRODUCTION: &str = "https://api.push.apple.com";

/// Apple's development (sandbox) endpoint, for apps built with a development
/// provisioning profile.
pub const APNS_SANDBOX: &str = "https://api.sandbox.push.apple.com";

/// The longest collapse id APNs accepts, in bytes.
const MAX_COLLAPSE_ID: usize = 64;

/// The longest device token accepted (today's tokens are 64 hex digits).
const MAX_TOKEN: usize = 200;

/// The youngest provider token that is renewed when APNs refuses it: Apple
/// allows one provider token update per 20 minutes.
pub const MIN_TOKEN_AGE: Duration = Duration::from_secs(20 * 60);

/// The oldest provider token APNs accepts.
const MAX_TOKEN_AGE: Duration = Duration::from_secs(60 * 60);

/// How to reach APNs.
#[derive(Clone)]
pub struct ApnsConfig {
    /// The APNs signing key, PEM (PKCS#8, the content of the `.p8` file).
    pub key_pem: String,
    /// The key's 10-character id (the JWT's `kid`).
    pub key_id: String,
    /// The developer team id (the JWT's `iss`).
    pub team_id: String,
    /// The app's bundle id (`apns-topic`).
    pub topic: String,
    /// [`APNS_PRODUCTION`], [`APNS_SANDBOX`], or a test server.
    pub base_url: String,
    /// Retries of temporary failures.
    pub retry: RetryPolicy,
    /// Deadline of one request, connection included.
    pub request_timeout: Duration,
    /// The notification title.
    pub title: String,
    /// How long APNs keeps trying an offline device (`apns-expiration` is
    /// now plus this; zero means one attempt only).
    pub expiration: Duration,
    /// Send silent background pushes (`content-available`, priority 5) that
    /// wake the app to sync, instead of visible alerts (priority 10).
    pub background: bool,
    /// How long one provider token is used: at least 20 minutes and under
    /// 60 (Apple refuses older tokens and throttles more frequent updates);
    /// [`ApnsNotifier::new`] refuses anything else.
    pub token_refresh: Duration,
}

impl std::fmt::Debug for ApnsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApnsConfig")
            .field("key_pem", &"<redacted>")
            .field("key_id", &self.key_id)
            .field("team_id", &self.team_id)
            .field("topic", &self.topic)
            .field("base_url", &self.base_url)
            .field("retry", &self.retry)
            .field("request_timeout", &self.request_timeout)
            .field("title", &self.title)
            .field("expiration", &self.expiration)
            .field("background", &self.background)
            .field("token_refresh", &self.token_refresh)
            .finish()
    }
}

impl ApnsConfig {
    /// Production, alerts, the default retry policy, a 10 s timeout, the
    /// title "New message", a one-day expiration and a 50-minute token.
    pub fn new(
        key_pem: impl Into<String>,
        key_id: impl Into<String>,
        team_id: impl Into<String>,
        topic: impl Into<String>,
    ) -> Self {
        Self {
            key_pem: key_pem.into(),
            key_id: key_id.into(),
            team_id: team_id.into(),
            topic: topic.into(),
            base_url: APNS_PRODUCTION.to_owned(),
            retry: RetryPolicy::default(),
            request_timeout: Duration::from_secs(10),
            title: http::DEFAULT_TITLE.to_owned(),
            expiration: Duration::from_secs(24 * 3600),
            background: false,
            token_refresh: Duration::from_secs(50 * 60),
        }
    }

    /// Uses the sandbox endpoint.
    pub fn sandbox(mut self) -> Self {
        self.base_url = APNS_SANDBOX.to_owned();
        self
    }

    /// Sends to another base URL.
    pub fn with_base_url(mut self, url: impl Into<String>) -> Self {
        self.base_url = url.into();
        self
    }

    /// Replaces the retry policy.
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }
}

/// The APNs provider. See the [module docs](self).
#[derive(Debug)]
pub struct ApnsNotifier {
    base: String,
    key_id: String,
    team_id: String,
    topic: String,
    signer: Signer,
    client: reqwest::Client,
    retry: RetryPolicy,
    title: String,
    expiration: Duration,
    background: bool,
    token_refresh: Duration,
    /// The provider token in use and when it was made. Signing does not
    /// await, so a plain mutex serves.
    token: Mutex<Option<(String, Instant)>>,
}

impl ApnsNotifier {
    /// A notifier for `config`; fails on an unusable key, URL or topic, or
    /// a `token_refresh` outside 20 to 60 minutes.
    pub fn new(config: ApnsConfig) -> Result<Self> {
        if !(MIN_TOKEN_AGE..MAX_TOKEN_AGE).contains(&config.token_refresh) {
            return Err(chat_core::Error::invalid(format!(
                "APNs token_refresh is {} s; Apple needs 20 minutes (1200 s) or more \
                 and under 60 minutes (3600 s)",
                config.token_refresh.as_secs()
            )));
        }
        let signer = Signer::es256_from_pem(&config.key_pem)
            .map_err(|e| chat_core::Error::invalid(format!("APNs key: {e}")))?;
        let base = http::base_url(&config.base_url, "APNs base URL")?;
        for (name, value) in [
            ("key id", &config.key_id),
            ("team id", &config.team_id),
            ("topic", &config.topic),
        ] {
            if value.is_empty() || !value.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(chat_core::Error::invalid(format!(
                    "APNs {name} {value:?} must be non-empty printable ASCII"
                )));
            }
        }
        Ok(Self {
            client: http::client(config.request_timeout, &base, true)?,
            base,
            key_id: config.key_id,
            team_id: config.team_id,
            topic: config.topic,
            signer,
            retry: config.retry,
            title: config.title,
            expiration: config.expiration,
            background: config.background,
            token_refresh: config.token_refresh,
            token: Mutex::new(None),
        })
    }

    /// The provider token: the current one, or a new one once it is
    /// `token_refresh` old.
    fn provider_token(&self) -> std::result::Result<String, String> {
        let mut cached = self.token.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((token, made)) = cached.as_ref() {
            if made.elapsed() < self.token_refresh {
                return Ok(token.clone());
            }
        }
        #[derive(Serialize)]
        struct Claims<'a> {
            iss: &'a str,
            iat: u64,
        }
        let token = self.signer.jwt(
            Some(&self.key_id),
            &Claims {
                iss: &self.team_id,
                iat: http::unix_now(),
            },
        )?;
        *cached = Some((token.clone(), Instant::now()));
        Ok(token)
    }

    /// What to do after APNs refused `rejected` with a 403
    /// `ExpiredProviderToken` or `InvalidProviderToken`: `true` to retry
    /// with a newer token, `false` to give up on this device. A token at
    /// least [`MIN_TOKEN_AGE`] old is forgotten so that the next attempt
    /// signs a new one; a younger one is kept (Apple throttles updates). If
    /// `rejected` is no longer the current token, another request renewed
    /// it already: retry with that one.
    fn token_rejected(&self, rejected: &str) -> bool {
        let mut cached = self.token.lock().unwrap_or_else(|p| p.into_inner());
        match cached.as_ref() {
            Some((token, made)) if token == rejected => {
                if made.elapsed() >= MIN_TOKEN_AGE {
                    *cached = None;
                    true
                } else {
                    false
                }
            }
            _ => true,
        }
    }

    /// The JSON payload.
    fn payload(&self, n: &PushNotification) -> serde_json::Value {
        let channel = n.channel_id.to_string();
        let aps = if self.background {
            json!({ "content-available": 1, "thread-id": channel })
        } else {
            json!({
                "alert": { "title": self.title, "body": http::body_text(n) },
                "sound": "default",
                "thread-id": channel,
            })
        };
        json!({
            "aps": aps,
            "type": "message",
            "channel_id": channel,
            "message_id": n.message_id.to_string(),
            "sender": n.sender.to_string(),
            "recipient": n.recipient.to_string(),
            "count": n.count,
        })
    }

    /// Sends to one device, with retries.
    async fn send(&self, n: &PushNotification, device: &Device, body: &[u8]) -> DeliveryOutcome {
        let Some(token) = device.push_token.as_deref() else {
            return DeliveryOutcome::Skipped {
                reason: "device has no push token".into(),
            };
        };
        if token.is_empty()
            || token.len() > MAX_TOKEN
            || !token.bytes().all(|b| b.is_ascii_hexdigit())
        {
            return DeliveryOutcome::InvalidToken {
                reason: "BadDeviceToken (not a hexadecimal APNs token)".into(),
            };
        }
        let url = format!("{}/3/device/{token}", self.base);
        let collapse_id = collapse_id(&n.channel_id.to_string());
        http::with_retries(&self.retry, |_| self.send_once(&url, &collapse_id, body))
            .await
            .unwrap_or_else(|failed| failed)
    }

    async fn send_once(&self, url: &str, collapse_id: &str, body: &[u8]) -> Step {
        let provider_token = match self.provider_token() {
            Ok(t) => t,
            Err(e) => {
                return Step::Done(DeliveryOutcome::Failed {
                    reason: e,
                    temporary: false,
                })
            }
        };
        let expiration = if self.expiration.is_zero() {
            0
        } else {
            http::unix_now().saturating_add(self.expiration.as_secs())
        };
        let (push_type, priority) = if self.background {
            ("background", "5")
        } else {
            ("alert", "10")
        };
        let request = self
            .client
            .post(url)
            .header("authorization", format!("bearer {provider_token}"))
            .header("apns-topic", &self.topic)
            .header("apns-push-type", push_type)
            .header("apns-priority", priority)
            .header("apns-expiration", expiration.to_string())
            .header("apns-collapse-id", collapse_id)
            .header("content-type", "application/json")
            .body(body.to_vec());
        let http::Reply {
            status,
            retry_after,
            headers,
            body,
        } = match http::exchange(request, http::SuccessBody::Optional).await {
            Ok(reply) => reply,
            Err(step) => return step,
        };
        let apns_id = headers
            .get("apns-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        if status == StatusCode::OK {
            tracing::debug!(apns_id = apns_id.as_deref().unwrap_or(""), "APNs accepted");
            return Step::Done(DeliveryOutcome::Delivered);
        }
        #[derive(Deserialize, Default)]
        struct ApnsError {
            #[serde(default)]
            reason: String,
        }
        let reason = serde_json::from_slice::<ApnsError>(&body)
            .unwrap_or_default()
            .reason;
        let described = format!(
            "APNs answered {status}: {}",
            if reason.is_empty() {
                http::excerpt(&body)
            } else {
                reason.clone()
            }
        );
        match (status.as_u16(), reason.as_str()) {
            (410, _) | (400, "BadDeviceToken" | "DeviceTokenNotForTopic") => {
                Step::Done(DeliveryOutcome::InvalidToken {
                    reason: if reason.is_empty() {
                        "Unregistered".into()
                    } else {
                        reason
                    },
                })
            }
            (403, "ExpiredProviderToken" | "InvalidProviderToken") => {
                if self.token_rejected(&provider_token) {
                    Step::AuthRejected { reason: described }
                } else {
                    Step::Done(DeliveryOutcome::Failed {
                        reason: format!(
                            "{described} (the provider token is under 20 minutes old, so it is \
                             not renewed: Apple allows one update per 20 minutes; check the key \
                             id, the team id and the key)"
                        ),
                        temporary: false,
                    })
                }
            }
            _ if http::is_retryable(status) => Step::Retry {
                reason: described,
                retry_after,
            },
            _ => Step::Done(DeliveryOutcome::Failed {
                reason: described,
                temporary: false,
            }),
        }
    }
}

/// A collapse id of at most [`MAX_COLLAPSE_ID`] bytes, cut at a character
/// boundary.
fn collapse_id(id: &str) -> String {
    let mut end = id.len().min(MAX_COLLAPSE_ID);
    while !id.is_char_boundary(end) {
        end -= 1;
    }
    id.get(..end).unwrap_or_default().to_owned()
}

#[async_trait]
impl PushNotifier for ApnsNotifier {
    async fn notify(&self, n: &PushNotification) -> Result<PushReport> {
        if n.devices.is_empty() {
            return Ok(PushReport::new());
        }
        self.provider_token()
            .map_err(|e| chat_core::Error::backend("apns", e))?;
        let body = serde_json::to_vec(&self.payload(n))
            .map_err(|e| chat_core::Error::backend("apns", e))?;
        Ok(http::send_each(&n.devices, |d| self.send(n, d, &body)).await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh P-256 key as PKCS#8 PEM, like an APNs `.p8` file.
    fn test_pem() -> String {
        use base64::Engine;
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = ring::signature::EcdsaKeyPair::generate_pkcs8(
            &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &rng,
        )
        .unwrap();
        format!(
            "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
            base64::engine::general_purpose::STANDARD.encode(pkcs8.as_ref())
        )
    }

    fn config(token_refresh: Duration) -> ApnsConfig {
        ApnsConfig {
            token_refresh,
            ..ApnsConfig::new(test_pem(), "KEY1234567", "TEAM123456", "com.example.app")
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_provider_token_is_renewed_only_after_20_minutes() {
        let apns = ApnsNotifier::new(config(Duration::from_secs(50 * 60))).unwrap();
        let first = apns.provider_token().unwrap();
        // Refused at once: kept, and the device is given up on.
        assert!(!apns.token_rejected(&first));
        assert_eq!(apns.provider_token().unwrap(), first);
        tokio::time::advance(MIN_TOKEN_AGE - Duration::from_secs(1)).await;
        assert!(!apns.token_rejected(&first));
        assert_eq!(apns.provider_token().unwrap(), first);
        // Twenty minutes on, a refusal renews it.
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(apns.token_rejected(&first));
        let second = apns.provider_token().unwrap();
        assert_ne!(second, first);
        // A late refusal of the old token retries with the new one and
        // leaves it alone.
        assert!(apns.token_rejected(&first));
        assert_eq!(apns.provider_token().unwrap(), second);
        assert!(!apns.token_rejected(&second));
    }

    #[test]
    fn token_refresh_must_be_within_apples_range() {
        for bad in [0, 60, 19 * 60 + 59, 60 * 60, 2 * 3600] {
            let err = ApnsNotifier::new(config(Duration::from_secs(bad))).unwrap_err();
            assert!(err.to_string().contains("token_refresh"), "{bad}: {err}");
        }
        for good in [20 * 60, 50 * 60, 59 * 60 + 59] {
            assert!(ApnsNotifier::new(config(Duration::from_secs(good))).is_ok());
        }
    }

    #[test]
    fn collapse_ids_fit_apns_limit() {
        assert_eq!(collapse_id("abc"), "abc");
        assert_eq!(collapse_id(&"x".repeat(100)).len(), 64);
        let long = "é".repeat(40); // 80 bytes, 2 per character
        let cut = collapse_id(&long);
        assert_eq!(cut.len(), 64);
        assert!(cut.chars().all(|c| c == 'é'));
    }
}
