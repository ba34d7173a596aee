//! Local stand-ins for the push platforms, on one axum server at
//! 127.0.0.1:0, following their documented wire formats:
//!
//! * Google's OAuth2 token endpoint (`POST /token`): checks the JWT-bearer
//!   grant and the RS256 assertion (signature against the test key's public
//!   half, `iss`, `scope`, `aud`, `iat`, `exp`, `kid`), answers
//!   `{"access_token","expires_in","token_type"}`.
//! * FCM HTTP v1 (`POST /v1/projects/{project}/messages:send`): checks the
//!   bearer access token, the project, and the message (token, notification,
//!   string-only data, collapse keys); answers `{"name": ...}` or an FCM
//!   error body.
//! * APNs (`POST /3/device/{token}`, HTTP/2 only, h2c here): checks the
//!   ES256 provider token (signature, `kid`, `iss`, `iat`), the `apns-*`
//!   headers and the payload; answers 200 with `apns-id` or
//!   `{"reason": ...}`.
//! * A webhook receiver (`POST /webhook`, and `POST /webhook/` to tell the
//!   two apart): checks the HMAC signature independently of the crate's own
//!   verifier.
//!
//! Every request is recorded; anything off-format is recorded as a
//! violation (tests assert there is none) and refused with an error that
//! is neither retryable nor about the token. Replies can be scripted per
//! device token (a queue, then success), and responses held back.
//!
//! Shared by chat-push's and chat-server's push tests (included with
//! `#[path]`), so both test against the same stand-ins.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, Version};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use ring::rand::SystemRandom;
use ring::signature::{
    EcdsaKeyPair, KeyPair, RsaKeyPair, UnparsedPublicKey, ECDSA_P256_SHA256_FIXED,
    ECDSA_P256_SHA256_FIXED_SIGNING, RSA_PKCS1_2048_8192_SHA256,
};
use serde_json::{json, Value};

use chat_push::apns::ApnsConfig;
use chat_push::fcm::{FcmConfig, ServiceAccount};
use chat_push::webhook::WebhookConfig;
use chat_push::RetryPolicy;

/// The test-only service account (see tests/fixtures/README.md).
pub const SERVICE_ACCOUNT: &str = include_str!("../fixtures/test-only-fcm-service-account.json");
pub const PROJECT: &str = "chat-sdk-test";
pub const CLIENT_EMAIL: &str = "push-test@chat-sdk-test.iam.gserviceaccount.com";
pub const FCM_KID: &str = "test-key-1";
pub const APNS_KEY_ID: &str = "ABC123DEFG";
pub const APNS_TEAM_ID: &str = "DEF123GHIJ";
pub const APNS_TOPIC: &str = "com.example.chat";
/// 32 bytes or more, as `WebhookNotifier` requires.
pub const WEBHOOK_SECRET: &[u8] = b"whsec_test_only_0123456789abcdef0123";
const FCM_SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";

/// Which endpoint a request hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Oauth,
    Fcm,
    Apns,
    Webhook,
}

/// A request the mock received.
#[derive(Debug, Clone)]
pub struct Seen {
    pub kind: Kind,
    pub at: Instant,
    /// The device token (FCM, APNs); empty otherwise.
    pub token: String,
    /// The request path (webhooks); empty otherwise.
    pub path: String,
    pub headers: HeaderMap,
    pub raw: Bytes,
    /// The body as JSON (`Null` for the form-encoded token request).
    pub body: Value,
    /// The status the mock answered.
    pub status: u16,
}

/// A scripted answer.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub body: String,
    pub retry_after: Option<String>,
}

impl Reply {
    pub fn new(status: u16, body: impl Into<String>) -> Self {
        Self {
            status,
            body: body.into(),
            retry_after: None,
        }
    }
    pub fn retry_after(mut self, value: &str) -> Self {
        self.retry_after = Some(value.into());
        self
    }
    /// An FCM v1 error body, as FCM documents it.
    pub fn fcm(status: u16, canonical: &str, error_code: &str, message: &str) -> Self {
        Self::new(
            status,
            json!({"error": {
                "code": status,
                "message": message,
                "status": canonical,
                "details": [{
                    "@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError",
                    "errorCode": error_code,
                }],
            }})
            .to_string(),
        )
    }
    pub fn fcm_unregistered() -> Self {
        Self::fcm(
            404,
            "NOT_FOUND",
            "UNREGISTERED",
            "Requested entity was not found.",
        )
    }
    pub fn fcm_invalid_token() -> Self {
        Self::fcm(
            400,
            "INVALID_ARGUMENT",
            "INVALID_ARGUMENT",
            "The registration token is not a valid FCM registration token",
        )
    }
    pub fn fcm_unavailable() -> Self {
        Self::fcm(
            503,
            "UNAVAILABLE",
            "UNAVAILABLE",
            "The service is unavailable.",
        )
    }
    pub fn fcm_internal() -> Self {
        Self::fcm(500, "INTERNAL", "INTERNAL", "Internal error.")
    }
    pub fn fcm_quota() -> Self {
        Self::fcm(
            429,
            "RESOURCE_EXHAUSTED",
            "QUOTA_EXCEEDED",
            "Quota exceeded for the device.",
        )
    }
    pub fn fcm_unauthenticated() -> Self {
        Self::fcm(
            401,
            "UNAUTHENTICATED",
            "UNAUTHENTICATED",
            "Request had invalid authentication credentials.",
        )
    }
    /// An APNs error body, `{"reason": ...}` (410 adds a timestamp).
    pub fn apns(status: u16, reason: &str) -> Self {
        let body = if status == 410 {
            json!({"reason": reason, "timestamp": 1_700_000_000_000u64})
        } else {
            json!({ "reason": reason })
        };
        Self::new(status, body.to_string())
    }
}

#[derive(Default)]
struct Inner {
    seen: Vec<Seen>,
    violations: Vec<String>,
    /// Scripted answers per key (device token, "webhook", "oauth").
    script: HashMap<String, VecDeque<Reply>>,
    /// Access tokens issued and still accepted.
    access_tokens: HashSet<String>,
    /// Answers to send for webhook successes.
    webhook_answer: Option<Value>,
}

struct Shared {
    base: String,
    rsa_public: Vec<u8>,
    ec_public: Vec<u8>,
    inner: Mutex<Inner>,
    issued: AtomicUsize,
    /// While true, FCM, APNs and webhook answers wait.
    hold: tokio::sync::watch::Sender<bool>,
}

/// The running stand-in.
pub struct MockPush {
    pub base: String,
    /// The APNs signing key, PEM, for [`ApnsConfig`].
    pub apns_key_pem: String,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for MockPush {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn pem(label: &str, der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!(
        "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
        lines.join("\n")
    )
}

fn pem_der(pem: &str) -> Vec<u8> {
    let b64: String = pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect::<Vec<_>>()
        .concat();
    STANDARD.decode(b64).unwrap()
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A fast retry policy for tests: 3 attempts, 10 ms apart (and up).
pub fn fast_retry() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 3,
        initial_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(50),
        max_retry_after: Duration::from_secs(5),
    }
}

impl MockPush {
    pub async fn start() -> Self {
        let sa: Value = serde_json::from_str(SERVICE_ACCOUNT).unwrap();
        let rsa = RsaKeyPair::from_pkcs8(&pem_der(sa["private_key"].as_str().unwrap())).unwrap();
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let ec = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let shared = Arc::new(Shared {
            base: base.clone(),
            rsa_public: rsa.public().as_ref().to_vec(),
            ec_public: ec.public_key().as_ref().to_vec(),
            inner: Mutex::new(Inner::default()),
            issued: AtomicUsize::new(0),
            hold: tokio::sync::watch::channel(false).0,
        });
        let app = Router::new()
            .route("/token", post(oauth))
            .route("/v1/projects/{project}/messages:send", post(fcm))
            .route("/3/device/{token}", post(apns))
            .route("/webhook", post(webhook))
            .route("/webhook/", post(webhook))
            .with_state(shared.clone());
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        MockPush {
            base,
            apns_key_pem: pem("PRIVATE KEY", pkcs8.as_ref()),
            shared,
            task,
        }
    }

    pub fn service_account(&self) -> ServiceAccount {
        ServiceAccount::from_json(SERVICE_ACCOUNT).unwrap()
    }

    pub fn fcm_config(&self) -> FcmConfig {
        FcmConfig::new(self.service_account())
            .with_base_url(&self.base)
            .with_token_uri(format!("{}/token", self.base))
            .with_retry(fast_retry())
    }

    pub fn apns_config(&self) -> ApnsConfig {
        ApnsConfig::new(
            self.apns_key_pem.clone(),
            APNS_KEY_ID,
            APNS_TEAM_ID,
            APNS_TOPIC,
        )
        .with_base_url(&self.base)
        .with_retry(fast_retry())
    }

    pub fn webhook_url(&self) -> String {
        format!("{}/webhook", self.base)
    }

    pub fn webhook_config(&self) -> WebhookConfig {
        WebhookConfig::new(self.webhook_url(), WEBHOOK_SECRET).with_retry(fast_retry())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.shared.inner.lock().unwrap()
    }

    /// Answers the next requests for `key` (a device token, "webhook" or
    /// "oauth") with `replies`, in order; then success.
    pub fn script(&self, key: &str, replies: impl IntoIterator<Item = Reply>) {
        self.lock()
            .script
            .entry(key.to_owned())
            .or_default()
            .extend(replies);
    }

    /// What a webhook success answers with.
    pub fn webhook_answer(&self, answer: Value) {
        self.lock().webhook_answer = Some(answer);
    }

    /// Every request so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.lock().seen.clone()
    }

    /// Requests of one kind.
    pub fn seen_kind(&self, kind: Kind) -> Vec<Seen> {
        self.seen().into_iter().filter(|s| s.kind == kind).collect()
    }

    /// Requests for one device token.
    pub fn seen_token(&self, token: &str) -> Vec<Seen> {
        self.seen()
            .into_iter()
            .filter(|s| s.token == token)
            .collect()
    }

    /// Off-format requests; tests assert there are none.
    pub fn violations(&self) -> Vec<String> {
        self.lock().violations.clone()
    }

    /// Fails the test if any request was off-format.
    pub fn assert_well_formed(&self) {
        let v = self.violations();
        assert!(v.is_empty(), "off-format requests: {v:#?}");
    }

    /// OAuth token exchanges that succeeded.
    pub fn tokens_issued(&self) -> usize {
        self.shared.issued.load(Ordering::SeqCst)
    }

    /// Makes FCM refuse every access token issued so far (as after a key
    /// revocation or expiry).
    pub fn revoke_access_tokens(&self) {
        self.lock().access_tokens.clear();
    }

    /// Holds back (`true`) or releases (`false`) FCM, APNs and webhook
    /// answers. Requests are still recorded on arrival.
    pub fn hold(&self, hold: bool) {
        self.shared.hold.send_replace(hold);
    }

    /// Waits until `n` requests satisfy `pred`, failing after 20 s.
    pub async fn wait_for(&self, n: usize, pred: impl Fn(&Seen) -> bool) -> Vec<Seen> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let seen: Vec<Seen> = self.seen().into_iter().filter(|s| pred(s)).collect();
            if seen.len() >= n {
                return seen;
            }
            assert!(
                Instant::now() < deadline,
                "waited 20 s for {n} requests, saw {}: {:#?}",
                seen.len(),
                self.seen()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap()
    }

    fn next_reply(&self, key: &str) -> Option<Reply> {
        self.lock()
            .script
            .get_mut(key)
            .and_then(VecDeque::pop_front)
    }

    fn record(&self, kind: Kind, token: &str, headers: &HeaderMap, raw: &Bytes, status: u16) {
        self.record_at("", kind, token, headers, raw, status);
    }

    fn record_at(
        &self,
        path: &str,
        kind: Kind,
        token: &str,
        headers: &HeaderMap,
        raw: &Bytes,
        status: u16,
    ) {
        let body = serde_json::from_slice(raw).unwrap_or(Value::Null);
        self.lock().seen.push(Seen {
            kind,
            at: Instant::now(),
            token: token.to_owned(),
            path: path.to_owned(),
            headers: headers.clone(),
            raw: raw.clone(),
            body,
            status,
        });
    }

    fn violation(&self, what: String) {
        self.lock().violations.push(what);
    }

    async fn wait_released(&self) {
        let mut rx = self.hold.subscribe();
        let _ = rx.wait_for(|held| !held).await;
    }
}

fn respond(reply: Reply, extra: &[(&'static str, String)]) -> Response {
    let mut response = (
        StatusCode::from_u16(reply.status).unwrap(),
        [("content-type", "application/json")],
        reply.body,
    )
        .into_response();
    if let Some(ra) = reply.retry_after {
        response
            .headers_mut()
            .insert("retry-after", ra.parse().unwrap());
    }
    for (name, value) in extra {
        response.headers_mut().insert(*name, value.parse().unwrap());
    }
    response
}

/// Decodes and checks a compact JWS: `(header, claims)` if the signature
/// verifies with `key`.
fn verify_jwt(
    token: &str,
    alg: &str,
    key: UnparsedPublicKey<&[u8]>,
) -> Result<(Value, Value), String> {
    let parts: Vec<&str> = token.split('.').collect();
    let [h, c, s] = parts.as_slice() else {
        return Err(format!("not a compact JWS: {token:?}"));
    };
    let decode = |p: &str| URL_SAFE_NO_PAD.decode(p).map_err(|e| e.to_string());
    let header: Value = serde_json::from_slice(&decode(h)?).map_err(|e| e.to_string())?;
    let claims: Value = serde_json::from_slice(&decode(c)?).map_err(|e| e.to_string())?;
    if header["alg"] != alg {
        return Err(format!("alg is {}, want {alg}", header["alg"]));
    }
    key.verify(format!("{h}.{c}").as_bytes(), &decode(s)?)
        .map_err(|_| "JWT signature does not verify".to_owned())?;
    Ok((header, claims))
}

fn check(cond: bool, what: &str, errors: &mut Vec<String>) {
    if !cond {
        errors.push(what.to_owned());
    }
}

async fn oauth(State(s): State<Arc<Shared>>, headers: HeaderMap, raw: Bytes) -> Response {
    let mut errors = Vec::new();
    let form: HashMap<String, String> = url_decode_form(&raw);
    check(
        headers
            .get("content-type")
            .is_some_and(|v| v == "application/x-www-form-urlencoded"),
        "token request is not form-encoded",
        &mut errors,
    );
    check(
        form.get("grant_type").map(String::as_str)
            == Some("urn:ietf:params:oauth:grant-type:jwt-bearer"),
        "grant_type is not jwt-bearer",
        &mut errors,
    );
    let assertion = form.get("assertion").cloned().unwrap_or_default();
    match verify_jwt(
        &assertion,
        "RS256",
        UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, &s.rsa_public),
    ) {
        Ok((header, claims)) => {
            let t = now();
            check(header["kid"] == FCM_KID, "assertion kid", &mut errors);
            check(header["typ"] == "JWT", "assertion typ", &mut errors);
            check(claims["iss"] == CLIENT_EMAIL, "assertion iss", &mut errors);
            check(claims["scope"] == FCM_SCOPE, "assertion scope", &mut errors);
            check(
                claims["aud"] == format!("{}/token", s.base),
                "assertion aud is not the token URI",
                &mut errors,
            );
            let (iat, exp) = (
                claims["iat"].as_u64().unwrap_or(0),
                claims["exp"].as_u64().unwrap_or(0),
            );
            check(
                iat <= t + 60 && iat + 60 >= t,
                "assertion iat is not now",
                &mut errors,
            );
            check(
                exp > t && exp - iat <= 3600,
                "assertion exp is not within an hour",
                &mut errors,
            );
        }
        Err(e) => errors.push(format!("assertion: {e}")),
    }
    if !errors.is_empty() {
        for e in &errors {
            s.violation(format!("oauth: {e}"));
        }
        s.record(Kind::Oauth, "", &headers, &raw, 400);
        return respond(
            Reply::new(
                400,
                json!({"error": "invalid_grant", "error_description": errors.join("; ")})
                    .to_string(),
            ),
            &[],
        );
    }
    if let Some(reply) = s.next_reply("oauth") {
        s.record(Kind::Oauth, "", &headers, &raw, reply.status);
        return respond(reply, &[]);
    }
    let n = s.issued.fetch_add(1, Ordering::SeqCst) + 1;
    let token = format!("ya29.mock-access-{n}");
    s.lock().access_tokens.insert(token.clone());
    s.record(Kind::Oauth, "", &headers, &raw, 200);
    respond(
        Reply::new(
            200,
            json!({"access_token": token, "expires_in": 3599, "token_type": "Bearer"}).to_string(),
        ),
        &[],
    )
}

/// `application/x-www-form-urlencoded` into a map (enough for the token
/// request: JWTs are URL-safe, the grant type has ':' escaped).
fn url_decode_form(raw: &[u8]) -> HashMap<String, String> {
    let text = String::from_utf8_lossy(raw);
    text.split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (percent_decode(k), percent_decode(v)))
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                out.push(u8::from_str_radix(hex, 16).unwrap_or(b'?'));
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

async fn fcm(
    State(s): State<Arc<Shared>>,
    Path(project): Path<String>,
    headers: HeaderMap,
    raw: Bytes,
) -> Response {
    let body: Value = serde_json::from_slice(&raw).unwrap_or(Value::Null);
    let token = body["message"]["token"].as_str().unwrap_or("").to_owned();
    // Authentication first, as Google does.
    let bearer = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if !s.lock().access_tokens.contains(bearer) {
        s.record(Kind::Fcm, &token, &headers, &raw, 401);
        s.wait_released().await;
        return respond(Reply::fcm_unauthenticated(), &[]);
    }
    let mut errors = Vec::new();
    check(project == PROJECT, "project id in the path", &mut errors);
    check(
        headers
            .get("content-type")
            .is_some_and(|v| v == "application/json"),
        "content-type is not application/json",
        &mut errors,
    );
    let m = &body["message"];
    check(!token.is_empty(), "message.token missing", &mut errors);
    check(
        m["notification"]["title"].is_string() && m["notification"]["body"].is_string(),
        "message.notification needs a title and a body",
        &mut errors,
    );
    match m["data"].as_object() {
        Some(data) => {
            check(
                data.values().all(Value::is_string),
                "message.data values must all be strings",
                &mut errors,
            );
            for key in ["channel_id", "message_id", "sender", "recipient", "count"] {
                check(
                    data.contains_key(key),
                    &format!("data.{key} missing"),
                    &mut errors,
                );
            }
        }
        None => errors.push("message.data missing".into()),
    }
    let channel = &m["data"]["channel_id"];
    check(
        &m["android"]["collapse_key"] == channel,
        "android.collapse_key is not the channel",
        &mut errors,
    );
    check(
        &m["apns"]["headers"]["apns-collapse-id"] == channel,
        "apns-collapse-id is not the channel",
        &mut errors,
    );
    check(
        m["android"]["ttl"]
            .as_str()
            .is_some_and(|t| t.ends_with('s') && t.trim_end_matches('s').parse::<u64>().is_ok()),
        "android.ttl is not a duration like \"86400s\"",
        &mut errors,
    );
    check(
        m["android"]["priority"] == "HIGH" || m["android"]["priority"] == "NORMAL",
        "android.priority",
        &mut errors,
    );
    if !errors.is_empty() {
        for e in &errors {
            s.violation(format!("fcm: {e}"));
        }
        s.record(Kind::Fcm, &token, &headers, &raw, 400);
        return respond(
            Reply::fcm(
                400,
                "INVALID_ARGUMENT",
                "INVALID_ARGUMENT",
                "mock: off-format",
            ),
            &[],
        );
    }
    let reply = s.next_reply(&token);
    let status = reply.as_ref().map_or(200, |r| r.status);
    s.record(Kind::Fcm, &token, &headers, &raw, status);
    s.wait_released().await;
    match reply {
        Some(reply) => respond(reply, &[]),
        None => respond(
            Reply::new(
                200,
                json!({"name": format!("projects/{PROJECT}/messages/0:{}", now())}).to_string(),
            ),
            &[],
        ),
    }
}

async fn apns(
    State(s): State<Arc<Shared>>,
    Path(token): Path<String>,
    version: Version,
    headers: HeaderMap,
    raw: Bytes,
) -> Response {
    let mut errors = Vec::new();
    check(
        version == Version::HTTP_2,
        "APNs requires HTTP/2",
        &mut errors,
    );
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    let auth = header("authorization");
    let jwt = auth.strip_prefix("bearer ").unwrap_or("");
    match verify_jwt(
        jwt,
        "ES256",
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, &s.ec_public),
    ) {
        Ok((h, claims)) => {
            let t = now();
            let iat = claims["iat"].as_u64().unwrap_or(0);
            if h["kid"] != APNS_KEY_ID || claims["iss"] != APNS_TEAM_ID || iat > t + 60 {
                s.record(Kind::Apns, &token, &headers, &raw, 403);
                return respond(Reply::apns(403, "InvalidProviderToken"), &[]);
            }
            if iat + 3600 < t {
                s.record(Kind::Apns, &token, &headers, &raw, 403);
                return respond(Reply::apns(403, "ExpiredProviderToken"), &[]);
            }
        }
        Err(e) => {
            s.violation(format!("apns: provider token: {e}"));
            s.record(Kind::Apns, &token, &headers, &raw, 403);
            return respond(Reply::apns(403, "InvalidProviderToken"), &[]);
        }
    }
    check(
        header("apns-topic") == APNS_TOPIC,
        "apns-topic",
        &mut errors,
    );
    let push_type = header("apns-push-type");
    let priority = header("apns-priority");
    check(
        (push_type == "alert" && priority == "10")
            || (push_type == "background" && priority == "5"),
        "apns-push-type / apns-priority",
        &mut errors,
    );
    check(
        header("apns-expiration").parse::<u64>().is_ok(),
        "apns-expiration is not a number",
        &mut errors,
    );
    let collapse = header("apns-collapse-id");
    check(
        !collapse.is_empty() && collapse.len() <= 64,
        "apns-collapse-id missing or over 64 bytes",
        &mut errors,
    );
    check(
        token.len() == 64 && token.bytes().all(|b| b.is_ascii_hexdigit()),
        "device token is not 64 hex digits",
        &mut errors,
    );
    let body: Value = serde_json::from_slice(&raw).unwrap_or(Value::Null);
    check(raw.len() <= 4096, "payload over 4 KB", &mut errors);
    let aps = &body["aps"];
    if push_type == "alert" {
        check(
            aps["alert"]["title"].is_string() && aps["alert"]["body"].is_string(),
            "aps.alert needs a title and a body",
            &mut errors,
        );
    } else {
        check(
            aps["content-available"] == 1,
            "aps.content-available",
            &mut errors,
        );
    }
    check(
        aps["thread-id"] == body["channel_id"] && body["channel_id"] == collapse.as_str(),
        "thread-id and collapse id are not the channel",
        &mut errors,
    );
    if !errors.is_empty() {
        for e in &errors {
            s.violation(format!("apns: {e}"));
        }
        s.record(Kind::Apns, &token, &headers, &raw, 400);
        return respond(Reply::apns(400, "MockViolation"), &[]);
    }
    let reply = s.next_reply(&token);
    let status = reply.as_ref().map_or(200, |r| r.status);
    s.record(Kind::Apns, &token, &headers, &raw, status);
    s.wait_released().await;
    let apns_id = uuid::Uuid::new_v4().to_string().to_uppercase();
    match reply {
        Some(reply) => respond(reply, &[("apns-id", apns_id)]),
        None => respond(Reply::new(200, ""), &[("apns-id", apns_id)]),
    }
}

async fn webhook(
    State(s): State<Arc<Shared>>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    raw: Bytes,
) -> Response {
    let path = uri.path().to_owned();
    let mut errors = Vec::new();
    let signature = headers
        .get("x-chat-signature")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    // Independent of the crate's verifier: recompute the HMAC here.
    let mut t = None;
    let mut v1 = Vec::new();
    for part in signature.split(',') {
        match part.split_once('=') {
            Some(("t", value)) => t = value.parse::<u64>().ok(),
            Some(("v1", value)) => v1.push(value.to_owned()),
            _ => {}
        }
    }
    match t {
        Some(t) if now().abs_diff(t) <= 300 => {
            let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, WEBHOOK_SECRET);
            let mut message = format!("{t}.").into_bytes();
            message.extend_from_slice(&raw);
            let expected: String = ring::hmac::sign(&key, &message)
                .as_ref()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            check(
                v1.contains(&expected),
                "signature does not match",
                &mut errors,
            );
        }
        _ => errors.push(format!("bad signature timestamp in {signature:?}")),
    }
    let body: Value = serde_json::from_slice(&raw).unwrap_or(Value::Null);
    check(body["version"] == 1, "version", &mut errors);
    check(body["type"] == "message", "type", &mut errors);
    check(
        headers
            .get("x-chat-webhook-id")
            .and_then(|v| v.to_str().ok())
            == body["id"].as_str(),
        "X-Chat-Webhook-Id is not the payload id",
        &mut errors,
    );
    if !errors.is_empty() {
        for e in &errors {
            s.violation(format!("webhook: {e}"));
        }
        s.record_at(&path, Kind::Webhook, "", &headers, &raw, 401);
        return respond(Reply::new(401, "{}"), &[]);
    }
    let reply = s.next_reply("webhook");
    let status = reply.as_ref().map_or(200, |r| r.status);
    s.record_at(&path, Kind::Webhook, "", &headers, &raw, status);
    s.wait_released().await;
    match reply {
        Some(reply) => respond(reply, &[]),
        None => {
            let answer = s.lock().webhook_answer.clone().unwrap_or(json!({}));
            respond(Reply::new(200, answer.to_string()), &[])
        }
    }
}
