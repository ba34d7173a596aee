//! What the HTTP providers share: the retry policy and loop, `Retry-After`,
//! bounded response bodies, and the notification's text.

use std::future::Future;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chat_core::{DeliveryOutcome, Device, PushNotification, PushReport};
use reqwest::header::{HeaderMap, RETRY_AFTER};
use ring::rand::SecureRandom;

/// How a provider retries temporary failures (HTTP 429, 5xx, a lost
/// connection or a timeout).
///
/// Attempt `n + 1` waits for the `Retry-After` the platform sent, or else
/// for `initial_backoff * 2^(n-1)` capped at `max_backoff`, less up to half
/// of it at random (jitter, so that many servers do not retry in step): with
/// the defaults, 0.25–0.5 s before the second attempt, 0.5–1 s before the
/// third and 1–2 s before the fourth.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included (at least 1; 1 means no retry).
    pub max_attempts: u32,
    /// Wait before the first retry; doubled for each further retry.
    pub initial_backoff: Duration,
    /// Longest wait between two attempts.
    pub max_backoff: Duration,
    /// Longest `Retry-After` honoured. A platform that asks for a longer
    /// wait ends the attempts; the push is reported as a temporary failure
    /// rather than holding a delivery slot for minutes.
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    /// Four attempts, 0.25–0.5 s, then 0.5–1 s, then 1–2 s apart (500 ms
    /// doubling, with jitter of up to half), and `Retry-After` up to 60 s.
    fn default() -> Self {
        Self {
            max_attempts: 4,
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
            max_retry_after: Duration::from_secs(60),
        }
    }
}

impl RetryPolicy {
    /// A policy that never retries.
    pub fn none() -> Self {
        Self {
            max_attempts: 1,
            ..Self::default()
        }
    }

    /// The wait before retry number `retry` (1 for the first retry).
    fn backoff(&self, retry: u32) -> Duration {
        let factor = 1u32 << retry.saturating_sub(1).min(20);
        let full = self
            .initial_backoff
            .saturating_mul(factor)
            .min(self.max_backoff);
        // Equal jitter: between half of the backoff and all of it.
        let half = full / 2;
        half + half.mul_f64(random_fraction())
    }
}

/// A uniformly distributed number in [0, 1).
fn random_fraction() -> f64 {
    let mut bytes = [0u8; 4];
    match ring::rand::SystemRandom::new().fill(&mut bytes) {
        Ok(()) => f64::from(u32::from_le_bytes(bytes)) / (f64::from(u32::MAX) + 1.0),
        Err(_) => 0.5,
    }
}

/// What one attempt came to.
#[derive(Debug)]
pub(crate) enum Step<T = DeliveryOutcome> {
    /// A final answer: delivered, invalid token, or a permanent failure.
    Done(T),
    /// A temporary failure worth another attempt.
    Retry {
        /// What went wrong, for the report if no attempt is left.
        reason: String,
        /// The platform's `Retry-After`, if it sent one.
        retry_after: Option<Duration>,
    },
    /// The platform refused our credentials (FCM 401, APNs 403
    /// `ExpiredProviderToken`): worth one more attempt with fresh ones.
    #[cfg_attr(not(any(feature = "fcm", feature = "apns")), allow(dead_code))]
    AuthRejected {
        /// What the platform said.
        reason: String,
    },
}

/// Runs `attempt` until it gives a final answer, retrying temporary
/// failures under `policy` and a credentials refusal once. `attempt` gets
/// `true` when it must renew its credentials first. When the attempts run
/// out, the error is the [`DeliveryOutcome::Failed`] to report.
pub(crate) async fn with_retries<T, F, Fut>(
    policy: &RetryPolicy,
    mut attempt: F,
) -> Result<T, DeliveryOutcome>
where
    F: FnMut(bool) -> Fut,
    Fut: Future<Output = Step<T>>,
{
    let max_attempts = policy.max_attempts.max(1);
    let mut attempts = 0u32;
    let mut refresh = false;
    let mut refreshed = false;
    loop {
        attempts += 1;
        match attempt(std::mem::take(&mut refresh)).await {
            Step::Done(answer) => return Ok(answer),
            Step::AuthRejected { reason } => {
                if refreshed {
                    return Err(DeliveryOutcome::Failed {
                        reason: format!("credentials refused after renewal: {reason}"),
                        temporary: false,
                    });
                }
                // A renewal does not count against the retry budget: it
                // answers an expiry, not a platform failure.
                refreshed = true;
                refresh = true;
                attempts -= 1;
            }
            Step::Retry {
                reason,
                retry_after,
            } => {
                if attempts >= max_attempts {
                    return Err(DeliveryOutcome::Failed {
                        reason: format!("{reason} (gave up after {attempts} attempts)"),
                        temporary: true,
                    });
                }
                let wait = match retry_after {
                    Some(wait) if wait > policy.max_retry_after => {
                        return Err(DeliveryOutcome::Failed {
                            reason: format!(
                                "{reason} (platform asked to wait {}s)",
                                wait.as_secs()
                            ),
                            temporary: true,
                        })
                    }
                    Some(wait) => wait,
                    None => policy.backoff(attempts),
                };
                tracing::debug!(%reason, ?wait, attempt = attempts, "push attempt failed; retrying");
                tokio::time::sleep(wait).await;
            }
        }
    }
}

/// The `Retry-After` header as a duration: delta-seconds or an HTTP date.
pub(crate) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = parse_http_date(value)?;
    Some(
        at.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

/// Parses an IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`), the only form a
/// sender may generate (RFC 9110, section 5.6.7).
fn parse_http_date(s: &str) -> Option<SystemTime> {
    let mut parts = s.split_ascii_whitespace();
    let _weekday = parts.next()?;
    let day: u64 = parts.next()?.parse().ok()?;
    let month = match parts.next()? {
        "Jan" => 1,
        "Feb" => 2,
        "Mar" => 3,
        "Apr" => 4,
        "May" => 5,
        "Jun" => 6,
        "Jul" => 7,
        "Aug" => 8,
        "Sep" => 9,
        "Oct" => 10,
        "Nov" => 11,
        "Dec" => 12,
        _ => return None,
    };
    let year: u64 = parts.next()?.parse().ok()?;
    let mut hms = parts.next()?.split(':').map(|p| p.parse::<u64>().ok());
    let (h, m, sec) = (hms.next()??, hms.next()??, hms.next()??);
    if parts.next()? != "GMT"
        || !(1..=31).contains(&day)
        || !(1970..=9999).contains(&year)
        || h > 23
        || m > 59
    {
        return None;
    }
    // Days since the epoch of a proleptic Gregorian date (Howard Hinnant's
    // days_from_civil, for years from 1970).
    let (y, mo) = if month <= 2 {
        (year - 1, month + 9)
    } else {
        (year, month - 3)
    };
    let era = y / 400;
    let yoe = y - era * 400;
    let doy = (153 * mo + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = (era * 146_097 + doe).checked_sub(719_468)?;
    let secs = days * 86_400 + h * 3_600 + m * 60 + sec.min(60);
    UNIX_EPOCH.checked_add(Duration::from_secs(secs))
}

/// Whether an HTTP status is worth retrying: 429, 408 and 5xx.
pub(crate) fn is_retryable(status: reqwest::StatusCode) -> bool {
    status == reqwest::StatusCode::TOO_MANY_REQUESTS
        || status == reqwest::StatusCode::REQUEST_TIMEOUT
        || status.is_server_error()
}

/// What an endpoint answered: its status, its `Retry-After`, its headers
/// and at most [`MAX_BODY`] bytes of its body.
#[derive(Debug)]
pub(crate) struct Reply {
    pub(crate) status: reqwest::StatusCode,
    pub(crate) retry_after: Option<Duration>,
    /// Read by APNs (its `apns-id`).
    #[cfg_attr(not(feature = "apns"), allow(dead_code))]
    pub(crate) headers: HeaderMap,
    pub(crate) body: Vec<u8>,
}

/// What a success whose body cannot be read means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SuccessBody {
    /// The body is the answer (a token): unreadable, it is a retry.
    #[cfg_attr(not(feature = "fcm"), allow(dead_code))]
    Needed,
    /// The endpoint took the request; only its optional answer is lost:
    /// an empty body.
    Optional,
}

/// Sends `request` and reads the answer, the one way every provider does.
/// A transport failure, or a body that cannot be read (after a success,
/// as `on_success` says), is a [`Step::Retry`].
pub(crate) async fn exchange<T>(
    request: reqwest::RequestBuilder,
    on_success: SuccessBody,
) -> Result<Reply, Step<T>> {
    let response = request.send().await.map_err(|e| transport_error(&e))?;
    let status = response.status();
    let retry_after = retry_after(response.headers());
    let headers = response.headers().clone();
    let body = match read_body(response).await {
        Ok(b) => b,
        Err(e) if status.is_success() && on_success == SuccessBody::Optional => {
            tracing::debug!(error = %e, %status, "answer body unreadable after a success");
            Vec::new()
        }
        Err(e) => return Err(transport_error(&e)),
    };
    Ok(Reply {
        status,
        retry_after,
        headers,
        body,
    })
}

/// A request that failed before an answer came: a retry with the reason.
fn transport_error<T>(e: &reqwest::Error) -> Step<T> {
    Step::Retry {
        reason: format!("request failed: {}", error_chain(e)),
        retry_after: None,
    }
}

/// An error and its sources on one line.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}

/// Largest response body read from a platform: their answers are small,
/// and a misbehaving endpoint must not make us buffer without bound.
const MAX_BODY: usize = 64 * 1024;

/// Reads at most [`MAX_BODY`] bytes of a response body.
async fn read_body(mut response: reqwest::Response) -> Result<Vec<u8>, reqwest::Error> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        let room = MAX_BODY.saturating_sub(body.len());
        body.extend_from_slice(chunk.get(..room.min(chunk.len())).unwrap_or_default());
        if body.len() >= MAX_BODY {
            break;
        }
    }
    Ok(body)
}

/// A short printable excerpt of a body, for error reasons.
pub(crate) fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let mut s: String = text.chars().take(200).collect();
    if text.chars().count() > 200 {
        s.push('…');
    }
    s
}

/// Seconds since the Unix epoch.
pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The default notification title.
#[cfg_attr(not(any(feature = "fcm", feature = "apns")), allow(dead_code))]
pub(crate) const DEFAULT_TITLE: &str = "New message";

/// The notification's body text: the preview if the server sent one,
/// otherwise a count that reveals nothing of the content.
#[cfg_attr(not(any(feature = "fcm", feature = "apns")), allow(dead_code))]
pub(crate) fn body_text(n: &PushNotification) -> String {
    match (&n.preview, n.count) {
        (Some(preview), 0 | 1) => preview.clone(),
        (Some(preview), count) => format!("{preview} (+{} more)", count - 1),
        (None, 0 | 1) => "You have a new message".to_owned(),
        (None, count) => format!("{count} new messages"),
    }
}

/// A reqwest client with the provider's timeout, TLS through rustls, and
/// HTTP/2 with prior knowledge (h2c) for plain `http://` bases when `h2`.
pub(crate) fn client(
    timeout: Duration,
    base_url: &str,
    h2: bool,
) -> chat_core::Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder()
        .use_rustls_tls()
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(10)))
        .pool_idle_timeout(Duration::from_secs(90))
        .user_agent(concat!("chat-sdk-push/", env!("CARGO_PKG_VERSION")));
    if h2 && base_url.starts_with("http://") {
        builder = builder.http2_prior_knowledge();
    }
    builder
        .build()
        .map_err(|e| chat_core::Error::invalid(format!("cannot build an HTTP client: {e}")))
}

/// Checks that a configured URL is absolute http(s), and returns it
/// unchanged (a trailing slash, a query, all kept): for an endpoint that is
/// used as given, like the webhook's.
pub(crate) fn endpoint_url(url: &str, what: &str) -> chat_core::Result<String> {
    let parsed = reqwest::Url::parse(url)
        .map_err(|e| chat_core::Error::invalid(format!("{what} {url:?} is not a URL: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
        return Err(chat_core::Error::invalid(format!(
            "{what} {url:?} must be an http:// or https:// URL"
        )));
    }
    Ok(url.to_owned())
}

/// Checks that a configured base URL is absolute http(s) and drops a
/// trailing slash, for a base that paths are appended to (FCM, APNs).
#[cfg_attr(not(any(feature = "fcm", feature = "apns")), allow(dead_code))]
pub(crate) fn base_url(url: &str, what: &str) -> chat_core::Result<String> {
    Ok(endpoint_url(url, what)?.trim_end_matches('/').to_owned())
}

/// Most requests one notification has in flight at once (FCM and APNs send
/// one request per device).
#[cfg_attr(not(any(feature = "fcm", feature = "apns")), allow(dead_code))]
pub(crate) const MAX_CONCURRENT_SENDS: usize = 8;

/// Runs `send` for each device, at most [`MAX_CONCURRENT_SENDS`] at a
/// time, and collects the outcomes into a report in device order.
#[cfg_attr(not(any(feature = "fcm", feature = "apns")), allow(dead_code))]
pub(crate) async fn send_each<'a, F, Fut>(devices: &'a [Device], send: F) -> PushReport
where
    F: Fn(&'a Device) -> Fut,
    Fut: Future<Output = DeliveryOutcome> + 'a,
{
    use futures::StreamExt;
    // The futures are made up front (not started: they run as `buffered`
    // polls them), so that no closure is held across the await.
    let sends: Vec<Fut> = devices.iter().map(send).collect();
    let outcomes: Vec<DeliveryOutcome> = futures::stream::iter(sends)
        .buffered(MAX_CONCURRENT_SENDS)
        .collect()
        .await;
    let mut report = PushReport::new();
    for (device, outcome) in devices.iter().zip(outcomes) {
        report.record(device.id, outcome);
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    #[test]
    fn retry_after_takes_seconds_and_dates() {
        let mut h = HeaderMap::new();
        assert_eq!(retry_after(&h), None);
        h.insert(RETRY_AFTER, HeaderValue::from_static("3"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(3)));
        h.insert(
            RETRY_AFTER,
            HeaderValue::from_static("Sun, 06 Nov 1994 08:49:37 GMT"),
        );
        assert_eq!(retry_after(&h), Some(Duration::ZERO));
        h.insert(RETRY_AFTER, HeaderValue::from_static("soon"));
        assert_eq!(retry_after(&h), None);
        // Out-of-range dates are ignored, not overflowed.
        h.insert(
            RETRY_AFTER,
            HeaderValue::from_static("Sun, 06 Nov 18446744073709551615 08:49:37 GMT"),
        );
        assert_eq!(retry_after(&h), None);
        assert_eq!(
            parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT"),
            UNIX_EPOCH.checked_add(Duration::from_secs(784_111_777))
        );
        assert_eq!(
            parse_http_date("Thu, 29 Feb 2024 00:00:00 GMT"),
            UNIX_EPOCH.checked_add(Duration::from_secs(1_709_164_800))
        );
    }

    #[test]
    fn backoff_doubles_with_jitter_up_to_the_cap() {
        let p = RetryPolicy {
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(350),
            ..RetryPolicy::default()
        };
        for _ in 0..50 {
            let b1 = p.backoff(1);
            assert!(b1 >= Duration::from_millis(50) && b1 <= Duration::from_millis(100));
            let b2 = p.backoff(2);
            assert!(b2 >= Duration::from_millis(100) && b2 <= Duration::from_millis(200));
            let b9 = p.backoff(9);
            assert!(b9 >= Duration::from_millis(175) && b9 <= Duration::from_millis(350));
            assert!(p.backoff(u32::MAX) <= Duration::from_millis(350));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn retries_stop_at_the_bound_and_auth_is_renewed_once() {
        let policy = RetryPolicy {
            max_attempts: 3,
            ..RetryPolicy::default()
        };
        let mut calls = 0;
        let outcome = with_retries::<(), _, _>(&policy, |_| {
            calls += 1;
            async {
                Step::Retry {
                    reason: "503".into(),
                    retry_after: None,
                }
            }
        })
        .await;
        assert_eq!(calls, 3);
        assert!(matches!(
            outcome,
            Err(DeliveryOutcome::Failed {
                temporary: true,
                ..
            })
        ));

        let mut renewals = Vec::new();
        let outcome = with_retries::<(), _, _>(&policy, |renew| {
            renewals.push(renew);
            async {
                Step::AuthRejected {
                    reason: "401".into(),
                }
            }
        })
        .await;
        assert_eq!(renewals, vec![false, true]);
        assert!(matches!(
            outcome,
            Err(DeliveryOutcome::Failed {
                temporary: false,
                ..
            })
        ));

        // A Retry-After above the policy's bound ends the attempts at once.
        let mut calls = 0;
        let outcome = with_retries::<(), _, _>(&policy, |_| {
            calls += 1;
            async {
                Step::Retry {
                    reason: "429".into(),
                    retry_after: Some(Duration::from_secs(3600)),
                }
            }
        })
        .await;
        assert_eq!(calls, 1);
        assert!(matches!(outcome, Err(DeliveryOutcome::Failed { .. })));
        // A success after a retry.
        let mut calls = 0;
        let outcome = with_retries(&policy, |_| {
            calls += 1;
            let first = calls == 1;
            async move {
                if first {
                    Step::Retry {
                        reason: "500".into(),
                        retry_after: Some(Duration::from_secs(1)),
                    }
                } else {
                    Step::Done(7)
                }
            }
        })
        .await;
        assert_eq!((calls, outcome), (2, Ok(7)));
    }

    #[test]
    fn body_text_reveals_no_content_without_a_preview() {
        use chat_core::{ChannelId, MessageId, UserId};
        let mut n = PushNotification {
            recipient: UserId::new_random(),
            devices: vec![],
            channel_id: ChannelId::new_random(),
            message_id: MessageId(1),
            sender: UserId::new_random(),
            preview: None,
            count: 1,
        };
        assert_eq!(body_text(&n), "You have a new message");
        n.count = 3;
        assert_eq!(body_text(&n), "3 new messages");
        n.preview = Some("hi".into());
        assert_eq!(body_text(&n), "hi (+2 more)");
    }
}
