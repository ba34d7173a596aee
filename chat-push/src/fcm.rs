//! Push through Firebase Cloud Messaging, HTTP v1 API (feature `fcm`).
//!
//! * **Credentials**: a Google service-account key file (JSON, from the
//!   Firebase console: Project settings, Service accounts), read with
//!   [`ServiceAccount::from_file`] or [`ServiceAccount::from_json`].
//! * **Authentication**: the notifier signs a JWT with the account's RSA key
//!   (RS256; `iss` the account's e-mail, `scope`
//!   `https://www.googleapis.com/auth/firebase.messaging`, `aud` the token
//!   URI, one hour of validity) and exchanges it at the token URI
//!   (`grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer`) for an OAuth2
//!   access token. The token is cached and shared by every send until five
//!   minutes before it expires; one exchange runs at a time, however many
//!   sends wait for it, so the exchange has its own short retry policy (at
//!   most 2 attempts, 10 s each, `Retry-After` waits of at most 5 s; see
//!   [`token_retry_policy`]). A 401 from FCM renews it once.
//! * **Send**: one `POST {base}/v1/projects/{project_id}/messages:send` per
//!   device token, the devices of one notification concurrently (at most 8
//!   requests in flight per notification), with a
//!   `notification` (title and body), string-valued `data` (`type`,
//!   `channel_id`, `message_id`, `sender`, `recipient`, `count`) and the
//!   channel as collapse key (`android.collapse_key`,
//!   `android.notification.tag`, `apns.headers.apns-collapse-id`).
//! * **Errors**, as FCM documents them: `UNREGISTERED` (HTTP 404),
//!   `SENDER_ID_MISMATCH` (403), and `INVALID_ARGUMENT` (400) about the
//!   token report the token invalid. Only those: any other 404 (say an HTML
//!   page from a wrong base URL) is a permanent failure that keeps the
//!   token. `UNAVAILABLE` (503), `INTERNAL` (500) and other 5xx are retried
//!   with backoff, honouring `Retry-After`. `QUOTA_EXCEEDED` (429) is
//!   retried only after the `Retry-After` FCM sends with it; without one it
//!   is reported as a temporary failure at once, since the quota is per
//!   minute and a retry within seconds would only count against it again.
//!   `THIRD_PARTY_AUTH_ERROR` (401: FCM's APNs or Web Push credentials were
//!   refused) is a permanent failure, not an expired access token; any
//!   other 401 renews the access token once. Anything else is a permanent
//!   failure.

use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;
use chat_core::{DeliveryOutcome, Device, PushNotification, PushNotifier, PushReport, Result};
use reqwest::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::time::Instant;

use super::http::{self, RetryPolicy, Step};
use super::jwt::Signer;

/// Google's production FCM endpoint.
pub const FCM_BASE_URL: &str = "https://fcm.googleapis.com";

/// Google's OAuth2 token endpoint, the usual `token_uri`.
pub const GOOGLE_TOKEN_URI: &str = "https://oauth2.googleapis.com/token";

/// The OAuth2 scope for sending FCM messages.
pub const FCM_SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";

/// How long a signed assertion is valid (Google's maximum).
const ASSERTION_LIFETIME: u64 = 3600;

/// Renew an access token this long before it expires.
const REFRESH_MARGIN: Duration = Duration::from_secs(300);

/// Deadline of one token request (at most the configured request timeout).
const TOKEN_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest `Retry-After` honoured by a token exchange.
const TOKEN_MAX_RETRY_AFTER: Duration = Duration::from_secs(5);

/// Longest backoff between two token exchange attempts.
const TOKEN_MAX_BACKOFF: Duration = Duration::from_secs(2);

/// The retry policy of the OAuth token exchange, derived from the sends'
/// `policy` but short: every send waits for the exchange (it holds the
/// token lock), so it must end within seconds, not minutes. At most 2
/// attempts, backoff at most 2 s, `Retry-After` at most 5 s (a longer one
/// ends the exchange as a temporary failure).
pub fn token_retry_policy(policy: &RetryPolicy) -> RetryPolicy {
    RetryPolicy {
        max_attempts: policy.max_attempts.clamp(1, 2),
        initial_backoff: policy.initial_backoff.min(TOKEN_MAX_BACKOFF),
        max_backoff: policy.max_backoff.min(TOKEN_MAX_BACKOFF),
        max_retry_after: policy.max_retry_after.min(TOKEN_MAX_RETRY_AFTER),
    }
}

/// The fields of a Google service-account key file that FCM needs.
#[derive(Clone, Deserialize)]
pub struct ServiceAccount {
    /// The Firebase / Google Cloud project id.
    pub project_id: String,
    /// The account's e-mail: the JWT's issuer.
    pub client_email: String,
    /// The account's RSA private key, PEM (PKCS#8).
    pub private_key: String,
    /// The key's id, sent as the JWT's `kid`.
    #[serde(default)]
    pub private_key_id: Option<String>,
    /// Where access tokens are obtained.
    #[serde(default = "default_token_uri")]
    pub token_uri: String,
}

fn default_token_uri() -> String {
    GOOGLE_TOKEN_URI.to_owned()
}

impl std::fmt::Debug for ServiceAccount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceAccount")
            .field("project_id", &self.project_id)
            .field("client_email", &self.client_email)
            .field("private_key", &"<redacted>")
            .field("private_key_id", &self.private_key_id)
            .field("token_uri", &self.token_uri)
            .finish()
    }
}

impl ServiceAccount {
    /// Parses the JSON of a service-account key file.
    pub fn from_json(json: &str) -> Result<Self> {
        #[derive(Deserialize)]
        struct Kind {
            #[serde(rename = "type")]
            kind: Option<String>,
        }
        let kind: Kind = serde_json::from_str(json)
            .map_err(|e| chat_core::Error::invalid(format!("FCM credentials are not JSON: {e}")))?;
        if let Some(kind) = kind.kind.filter(|k| k != "service_account") {
            return Err(chat_core::Error::invalid(format!(
                "FCM credentials must be a service account key, not {kind:?}"
            )));
        }
        serde_json::from_str(json)
            .map_err(|e| chat_core::Error::invalid(format!("FCM credentials are incomplete: {e}")))
    }

    /// Reads and parses a service-account key file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let json = std::fs::read_to_string(path).map_err(|e| {
            chat_core::Error::invalid(format!("cannot read {}: {e}", path.display()))
        })?;
        Self::from_json(&json)
    }
}

/// How to reach FCM.
#[derive(Debug, Clone)]
pub struct FcmConfig {
    /// The credentials.
    pub service_account: ServiceAccount,
    /// The FCM API base, [`FCM_BASE_URL`] unless testing or proxying.
    pub base_url: String,
    /// Replaces the service account's `token_uri` (also as the JWT's `aud`).
    pub token_uri: Option<String>,
    /// Retries of temporary failures of sends. Token exchanges use a
    /// shorter policy derived from it ([`token_retry_policy`]).
    pub retry: RetryPolicy,
    /// Deadline of one request, connection included.
    pub request_timeout: Duration,
    /// The notification title.
    pub title: String,
    /// How long FCM keeps trying an offline device (`android.ttl`, and the
    /// APNs expiration of messages FCM relays to iOS).
    pub ttl: Duration,
}

impl FcmConfig {
    /// Production endpoints, the default retry policy, a 10 s timeout, the
    /// title "New message" and a one-day time to live.
    pub fn new(service_account: ServiceAccount) -> Self {
        Self {
            service_account,
            base_url: FCM_BASE_URL.to_owned(),
            token_uri: None,
            retry: RetryPolicy::default(),
            request_timeout: Duration::from_secs(10),
            title: http::DEFAULT_TITLE.to_owned(),
            ttl: Duration::from_secs(24 * 3600),
        }
    }

    /// Sends to another FCM base URL.
    pub fn with_base_url(mut self, url: impl Into<String>) -> Self {
        self.base_url = url.into();
        self
    }

    /// Obtains tokens from another token URI.
    pub fn with_token_uri(mut self, url: impl Into<String>) -> Self {
        self.token_uri = Some(url.into());
        self
    }

    /// Replaces the retry policy.
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }
}

/// A cached OAuth2 access token.
#[derive(Debug)]
struct AccessToken {
    value: String,
    /// When to get a new one: shortly before it expires.
    renew_at: Instant,
}

/// The FCM provider. See the [module docs](self).
#[derive(Debug)]
pub struct FcmNotifier {
    send_url: String,
    token_uri: String,
    client_email: String,
    key_id: Option<String>,
    signer: Signer,
    client: reqwest::Client,
    retry: RetryPolicy,
    /// [`token_retry_policy`] of `retry`.
    token_retry: RetryPolicy,
    /// Deadline of one token request.
    token_timeout: Duration,
    title: String,
    ttl: Duration,
    /// The cached token; the lock is held across an exchange so that only
    /// one runs at a time (waiters then take its result).
    token: tokio::sync::Mutex<TokenState>,
}

/// The access token, or why the last exchange failed.
#[derive(Debug, Default)]
struct TokenState {
    token: Option<AccessToken>,
    /// The last failed exchange: when, why, and whether temporary. Sends in
    /// the next [`FAILURE_HOLD_OFF`] fail at once with the same error rather
    /// than each run its own round of retries against an endpoint that is
    /// down or refusing the key.
    failed: Option<(Instant, String, bool)>,
}

/// How long a failed token exchange is remembered, at most (see
/// [`TokenState::failed`]); the retry policy's `max_backoff` if shorter.
const FAILURE_HOLD_OFF: Duration = Duration::from_secs(10);

impl FcmNotifier {
    /// A notifier for `config`; fails on an unusable key or URL.
    pub fn new(config: FcmConfig) -> Result<Self> {
        let sa = config.service_account;
        let signer = Signer::rs256_from_pem(&sa.private_key)
            .map_err(|e| chat_core::Error::invalid(format!("FCM private_key: {e}")))?;
        let base = http::base_url(&config.base_url, "FCM base URL")?;
        let token_uri = http::base_url(
            config.token_uri.as_deref().unwrap_or(&sa.token_uri),
            "FCM token URI",
        )?;
        if sa.project_id.is_empty()
            || !sa
                .project_id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == ':' || c == '.')
        {
            return Err(chat_core::Error::invalid(format!(
                "FCM project_id {:?} is not a project id",
                sa.project_id
            )));
        }
        Ok(Self {
            send_url: format!("{base}/v1/projects/{}/messages:send", sa.project_id),
            client: http::client(config.request_timeout, &base, false)?,
            token_uri,
            client_email: sa.client_email,
            key_id: sa.private_key_id,
            signer,
            token_retry: token_retry_policy(&config.retry),
            token_timeout: config.request_timeout.min(TOKEN_REQUEST_TIMEOUT),
            retry: config.retry,
            title: config.title,
            ttl: config.ttl,
            token: tokio::sync::Mutex::new(TokenState::default()),
        })
    }

    /// A valid access token: the cached one, or a new one from the token
    /// URI. Only one exchange runs at a time.
    async fn access_token(&self) -> Result<String> {
        let mut state = self.token.lock().await;
        let now = Instant::now();
        if let Some(token) = state.token.as_ref().filter(|t| now < t.renew_at) {
            return Ok(token.value.clone());
        }
        let hold_off = FAILURE_HOLD_OFF.min(self.retry.max_backoff);
        if let Some((at, reason, temporary)) = &state.failed {
            if now.duration_since(*at) < hold_off {
                return Err(token_error(reason.clone(), *temporary));
            }
        }
        match self.exchange().await {
            Ok(fresh) => {
                let value = fresh.value.clone();
                *state = TokenState {
                    token: Some(fresh),
                    failed: None,
                };
                Ok(value)
            }
            Err((reason, temporary)) => {
                state.failed = Some((Instant::now(), reason.clone(), temporary));
                Err(token_error(reason, temporary))
            }
        }
    }

    /// Forgets `rejected` if it is still the cached token (FCM answered 401
    /// to it), so the next send gets a new one. Compared by value so that
    /// concurrent 401s for the same token cause one renewal.
    async fn forget_token(&self, rejected: &str) {
        let mut state = self.token.lock().await;
        if state.token.as_ref().is_some_and(|t| t.value == rejected) {
            state.token = None;
        }
    }

    /// Signs an assertion and exchanges it for an access token, with the
    /// short retries of [`token_retry_policy`]; fails with the reason and
    /// whether it is temporary.
    async fn exchange(&self) -> std::result::Result<AccessToken, (String, bool)> {
        let outcome = http::with_retries(&self.token_retry, |_| self.exchange_once()).await;
        match outcome.and_then(|r| r) {
            Ok(token) => Ok(token),
            Err(DeliveryOutcome::Failed { reason, temporary }) => Err((reason, temporary)),
            Err(other) => Err((format!("{other:?}"), false)),
        }
    }

    async fn exchange_once(&self) -> Step<std::result::Result<AccessToken, DeliveryOutcome>> {
        #[derive(Serialize)]
        struct Claims<'a> {
            iss: &'a str,
            scope: &'a str,
            aud: &'a str,
            iat: u64,
            exp: u64,
        }
        #[derive(Deserialize)]
        struct TokenResponse {
            access_token: String,
            #[serde(default)]
            expires_in: Option<u64>,
        }
        let fail = |reason: String| {
            Step::Done(Err(DeliveryOutcome::Failed {
                reason,
                temporary: false,
            }))
        };
        let iat = http::unix_now();
        let claims = Claims {
            iss: &self.client_email,
            scope: FCM_SCOPE,
            aud: &self.token_uri,
            iat,
            exp: iat + ASSERTION_LIFETIME,
        };
        let assertion = match self.signer.jwt(self.key_id.as_deref(), &claims) {
            Ok(a) => a,
            Err(e) => return fail(e),
        };
        let started = Instant::now();
        let request = self
            .client
            .post(&self.token_uri)
            .timeout(self.token_timeout)
            .form(&[
                ("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"),
                ("assertion", assertion.as_str()),
            ]);
        let http::Reply {
            status,
            retry_after,
            body,
            ..
        } = match http::exchange(request, http::SuccessBody::Needed).await {
            Ok(reply) => reply,
            Err(step) => return step,
        };
        if status.is_success() {
            return match serde_json::from_slice::<TokenResponse>(&body) {
                Ok(t) if !t.access_token.is_empty() => {
                    // Bounded, so that no answer can overflow the deadline.
                    let lifetime = Duration::from_secs(t.expires_in.unwrap_or(3600).min(86_400));
                    let margin = REFRESH_MARGIN.min(lifetime / 2);
                    tracing::debug!(?lifetime, "FCM access token obtained");
                    Step::Done(Ok(AccessToken {
                        value: t.access_token,
                        renew_at: started + lifetime - margin,
                    }))
                }
                _ => fail(format!(
                    "token endpoint answered {status} without an access token: {}",
                    http::excerpt(&body)
                )),
            };
        }
        let reason = format!("token endpoint answered {status}: {}", http::excerpt(&body));
        if http::is_retryable(status) {
            Step::Retry {
                reason,
                retry_after,
            }
        } else {
            // invalid_grant and the like: the key or the clock is wrong.
            fail(reason)
        }
    }

    /// The `messages:send` body for one device.
    fn message(&self, n: &PushNotification, token: &str) -> serde_json::Value {
        let channel = n.channel_id.to_string();
        json!({
            "message": {
                "token": token,
                "notification": {
                    "title": self.title,
                    "body": http::body_text(n),
                },
                "data": {
                    "type": "message",
                    "channel_id": channel,
                    "message_id": n.message_id.to_string(),
                    "sender": n.sender.to_string(),
                    "recipient": n.recipient.to_string(),
                    "count": n.count.to_string(),
                },
                "android": {
                    "collapse_key": channel,
                    "priority": "HIGH",
                    "ttl": format!("{}s", self.ttl.as_secs()),
                    "notification": { "tag": channel },
                },
                "apns": {
                    "headers": {
                        "apns-collapse-id": channel,
                        "apns-expiration": http::unix_now().saturating_add(self.ttl.as_secs()).to_string(),
                    },
                    "payload": { "aps": { "thread-id": channel } },
                },
            }
        })
    }

    /// Sends to one device, with retries.
    async fn send(&self, n: &PushNotification, device: &Device) -> DeliveryOutcome {
        let Some(token) = device.push_token.as_deref() else {
            return DeliveryOutcome::Skipped {
                reason: "device has no push token".into(),
            };
        };
        let body = self.message(n, token);
        http::with_retries(&self.retry, |_| self.send_once(&body))
            .await
            .unwrap_or_else(|failed| failed)
    }

    async fn send_once(&self, body: &serde_json::Value) -> Step {
        let access = match self.access_token().await {
            Ok(a) => a,
            Err(e) if e.is_temporary() => {
                return Step::Retry {
                    reason: e.to_string(),
                    retry_after: None,
                }
            }
            Err(e) => {
                return Step::Done(DeliveryOutcome::Failed {
                    reason: e.to_string(),
                    temporary: false,
                })
            }
        };
        let request = self
            .client
            .post(&self.send_url)
            .bearer_auth(&access)
            .json(body);
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
            return Step::Done(DeliveryOutcome::Delivered);
        }
        let error = FcmError::parse(&body);
        let reason = format!("FCM answered {status}: {}", error.describe(&body));
        match classify(status, &error) {
            Class::InvalidToken => Step::Done(DeliveryOutcome::InvalidToken {
                reason: error.code().unwrap_or("INVALID_ARGUMENT").to_owned(),
            }),
            // FCM's quota is per minute: without a Retry-After, a retry
            // within this call (seconds) would only be refused again.
            Class::Retry
                if retry_after.is_none()
                    && (status == StatusCode::TOO_MANY_REQUESTS
                        || error.code() == Some("QUOTA_EXCEEDED")) =>
            {
                Step::Done(DeliveryOutcome::Failed {
                    reason: format!("{reason} (no Retry-After; not retried)"),
                    temporary: true,
                })
            }
            Class::Retry => Step::Retry {
                reason,
                retry_after,
            },
            Class::Auth => {
                self.forget_token(&access).await;
                Step::AuthRejected { reason }
            }
            Class::Permanent => Step::Done(DeliveryOutcome::Failed {
                reason,
                temporary: false,
            }),
        }
    }
}

/// The error for a failed token exchange.
fn token_error(reason: String, temporary: bool) -> chat_core::Error {
    let reason = format!("FCM access token: {reason}");
    if temporary {
        chat_core::Error::temporary("fcm", reason)
    } else {
        chat_core::Error::backend("fcm", reason)
    }
}

/// An FCM v1 error body: `{"error": {"code", "message", "status", "details"}}`.
#[derive(Debug, Default, Deserialize)]
struct FcmError {
    #[serde(default)]
    message: String,
    #[serde(default)]
    status: String,
    #[serde(default)]
    details: Vec<FcmErrorDetail>,
}

#[derive(Debug, Default, Deserialize)]
struct FcmErrorDetail {
    /// `FcmError` details carry FCM's own code, e.g. `UNREGISTERED`.
    #[serde(default, rename = "errorCode")]
    error_code: Option<String>,
    /// `BadRequest` details name the offending fields.
    #[serde(default, rename = "fieldViolations")]
    field_violations: Vec<FieldViolation>,
}

#[derive(Debug, Default, Deserialize)]
struct FieldViolation {
    #[serde(default)]
    field: String,
}

impl FcmError {
    fn parse(body: &[u8]) -> Self {
        #[derive(Deserialize)]
        struct Envelope {
            error: FcmError,
        }
        serde_json::from_slice::<Envelope>(body)
            .map(|e| e.error)
            .unwrap_or_default()
    }

    /// FCM's specific error code if given, else the canonical status.
    fn code(&self) -> Option<&str> {
        self.details
            .iter()
            .find_map(|d| d.error_code.as_deref())
            .or((!self.status.is_empty()).then_some(self.status.as_str()))
    }

    /// Whether an `INVALID_ARGUMENT` is about the registration token.
    fn about_token(&self) -> bool {
        self.details
            .iter()
            .flat_map(|d| &d.field_violations)
            .any(|v| v.field == "message.token")
            || self
                .message
                .to_ascii_lowercase()
                .contains("registration token")
    }

    fn describe(&self, body: &[u8]) -> String {
        match self.code() {
            Some(code) => format!("{code}: {}", self.message),
            None => http::excerpt(body),
        }
    }
}

enum Class {
    InvalidToken,
    Retry,
    Auth,
    Permanent,
}

fn classify(status: StatusCode, error: &FcmError) -> Class {
    match error.code() {
        Some("UNREGISTERED" | "SENDER_ID_MISMATCH") => return Class::InvalidToken,
        Some("INVALID_ARGUMENT") if error.about_token() => return Class::InvalidToken,
        Some("QUOTA_EXCEEDED" | "UNAVAILABLE" | "INTERNAL") => return Class::Retry,
        // The APNs certificate or Web Push key in the Firebase project was
        // refused: no new access token changes that.
        Some("THIRD_PARTY_AUTH_ERROR") => return Class::Permanent,
        _ => {}
    }
    // A 404 without UNREGISTERED (an HTML page from a wrong base URL, a
    // wrong project) says nothing about the token: it falls through to a
    // permanent failure, and the token is kept.
    if status == StatusCode::UNAUTHORIZED {
        Class::Auth
    } else if http::is_retryable(status) {
        Class::Retry
    } else {
        Class::Permanent
    }
}

#[async_trait]
impl PushNotifier for FcmNotifier {
    async fn notify(&self, n: &PushNotification) -> Result<PushReport> {
        if n.devices.is_empty() {
            return Ok(PushReport::new());
        }
        // One token for all devices; without one nothing can be sent.
        self.access_token().await?;
        Ok(http::send_each(&n.devices, |d| self.send(n, d)).await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(json: &str) -> FcmError {
        FcmError::parse(json.as_bytes())
    }

    #[test]
    fn errors_are_classified_as_fcm_documents_them() {
        let unregistered = error(
            r#"{"error":{"code":404,"message":"Requested entity was not found.","status":"NOT_FOUND",
               "details":[{"@type":"type.googleapis.com/google.firebase.fcm.v1.FcmError","errorCode":"UNREGISTERED"}]}}"#,
        );
        assert!(matches!(
            classify(StatusCode::NOT_FOUND, &unregistered),
            Class::InvalidToken
        ));
        assert_eq!(unregistered.code(), Some("UNREGISTERED"));
        let bad_token = error(
            r#"{"error":{"code":400,"message":"The registration token is not a valid FCM registration token","status":"INVALID_ARGUMENT",
               "details":[{"@type":"type.googleapis.com/google.firebase.fcm.v1.FcmError","errorCode":"INVALID_ARGUMENT"}]}}"#,
        );
        assert!(matches!(
            classify(StatusCode::BAD_REQUEST, &bad_token),
            Class::InvalidToken
        ));
        let bad_payload = error(
            r#"{"error":{"code":400,"message":"Invalid value at 'message.android.ttl'","status":"INVALID_ARGUMENT",
               "details":[{"@type":"type.googleapis.com/google.rpc.BadRequest","fieldViolations":[{"field":"message.android.ttl"}]}]}}"#,
        );
        assert!(matches!(
            classify(StatusCode::BAD_REQUEST, &bad_payload),
            Class::Permanent
        ));
        let quota = error(
            r#"{"error":{"code":429,"status":"RESOURCE_EXHAUSTED","details":[{"errorCode":"QUOTA_EXCEEDED"}]}}"#,
        );
        assert!(matches!(
            classify(StatusCode::TOO_MANY_REQUESTS, &quota),
            Class::Retry
        ));
        assert!(matches!(
            classify(StatusCode::SERVICE_UNAVAILABLE, &error("<html>")),
            Class::Retry
        ));
        assert!(matches!(
            classify(StatusCode::UNAUTHORIZED, &error("{}")),
            Class::Auth
        ));
        assert!(matches!(
            classify(StatusCode::FORBIDDEN, &error("{}")),
            Class::Permanent
        ));
        // Only UNREGISTERED makes a 404 an invalid token.
        assert!(matches!(
            classify(StatusCode::NOT_FOUND, &error("<html>Not Found</html>")),
            Class::Permanent
        ));
        let not_found =
            error(r#"{"error":{"code":404,"message":"Not found","status":"NOT_FOUND"}}"#);
        assert!(matches!(
            classify(StatusCode::NOT_FOUND, &not_found),
            Class::Permanent
        ));
        let third_party = error(
            r#"{"error":{"code":401,"status":"UNAUTHENTICATED","details":[{"errorCode":"THIRD_PARTY_AUTH_ERROR"}]}}"#,
        );
        assert!(matches!(
            classify(StatusCode::UNAUTHORIZED, &third_party),
            Class::Permanent
        ));
    }

    #[test]
    fn the_token_exchange_retries_briefly() {
        let p = token_retry_policy(&RetryPolicy::default());
        assert_eq!(p.max_attempts, 2);
        assert!(p.max_backoff <= Duration::from_secs(2));
        assert!(p.max_retry_after <= Duration::from_secs(5));
        assert_eq!(token_retry_policy(&RetryPolicy::none()).max_attempts, 1);
    }

    #[test]
    fn service_accounts_parse_and_redact() {
        let sa = ServiceAccount::from_json(
            r#"{"type":"service_account","project_id":"p","client_email":"a@p.iam.gserviceaccount.com",
               "private_key":"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"}"#,
        )
        .unwrap();
        assert_eq!(sa.token_uri, GOOGLE_TOKEN_URI);
        assert!(!format!("{sa:?}").contains("AAAA"));
        assert!(ServiceAccount::from_json(r#"{"type":"authorized_user"}"#).is_err());
        assert!(ServiceAccount::from_json("not json").is_err());
        // A key that does not parse is refused when the notifier is built.
        assert!(FcmNotifier::new(FcmConfig::new(sa)).is_err());
    }
}
