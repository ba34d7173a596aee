//! # chat-push
//!
//! Push notification providers behind [`chat_core::PushNotifier`], for
//! recipients with no connected device.
//!
//! | provider | feature | module |
//! |---|---|---|
//! | a signed HTTP webhook | `webhook` | `webhook` |
//! | Firebase Cloud Messaging, HTTP v1 | `fcm` | `fcm` |
//! | Apple Push Notification service, token auth over HTTP/2 | `apns` | `apns` |
//!
//! (`all` turns on all three; none is on by default.) [`PlatformRouter`] is always compiled: it
//! sends each device to the notifier for its platform (Android to FCM, iOS
//! to APNs, the rest to a webhook), so one server can use all three at once.
//!
//! Every provider:
//!
//! * takes its base URL from its configuration, so tests and self-hosted
//!   gateways can stand in for the platform;
//! * retries temporary failures (429, 5xx, a lost connection) with
//!   exponential backoff and jitter, honours `Retry-After`, and stops after
//!   `RetryPolicy::max_attempts` (FCM retries a 429 only after its
//!   `Retry-After`: its quota is per minute);
//! * sends FCM and APNs requests (one per device) at most 8 at a time per
//!   notification;
//! * reports each device's outcome in a [`chat_core::PushReport`], with the
//!   tokens the platform called unregistered or invalid as
//!   [`chat_core::DeliveryOutcome::InvalidToken`], which the server then
//!   removes; only the platform's documented answers count (an FCM 404
//!   page without `UNREGISTERED` is a plain failure);
//! * sends what the [`chat_core::PushNotification`] holds and nothing more:
//!   no message text unless the server was configured to include a preview.
//!
//! One crypto library, `ring`, serves TLS (rustls), the JWTs that FCM (RS256)
//! and APNs (ES256) require, and the webhook's HMAC-SHA256.
//!
//! See `docs/push.md` for configuration and wire formats.

mod router;

pub use router::PlatformRouter;

#[cfg(any(feature = "webhook", feature = "fcm", feature = "apns"))]
mod http;
#[cfg(any(feature = "fcm", feature = "apns"))]
mod jwt;

#[cfg(any(feature = "webhook", feature = "fcm", feature = "apns"))]
pub use http::RetryPolicy;

#[cfg(feature = "apns")]
pub mod apns;
#[cfg(feature = "fcm")]
pub mod fcm;
#[cfg(feature = "webhook")]
pub mod webhook;
