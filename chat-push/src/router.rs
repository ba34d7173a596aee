//! Sends each device to the notifier for its platform.

use std::sync::Arc;

use async_trait::async_trait;
use chat_core::{
    DeliveryOutcome, Device, Platform, PushNotification, PushNotifier, PushReport, Result,
};

/// A notifier that splits a notification by device platform: Android
/// devices go to the Android notifier (FCM), iOS devices to the iOS notifier
/// (APNs), and every other device, or any device whose platform has no
/// notifier of its own, to the fallback (a webhook). Devices with nowhere to
/// go are reported [`DeliveryOutcome::Skipped`].
///
/// The providers are called concurrently. A provider that returns `Err` has
/// all its devices reported [`DeliveryOutcome::Failed`], so the router itself
/// always answers `Ok` with one outcome per device.
///
/// ```
/// use std::sync::Arc;
/// use chat_core::memory::MemoryNotifier;
/// use chat_push::PlatformRouter;
///
/// let fcm = Arc::new(MemoryNotifier::default());
/// let webhook = Arc::new(MemoryNotifier::default());
/// let router = PlatformRouter::new().with_android(fcm).with_fallback(webhook);
/// assert!(!router.is_empty());
/// ```
#[derive(Debug, Default, Clone)]
pub struct PlatformRouter {
    android: Option<Arc<dyn PushNotifier>>,
    ios: Option<Arc<dyn PushNotifier>>,
    fallback: Option<Arc<dyn PushNotifier>>,
}

/// Which notifier a device goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Android,
    Ios,
    Fallback,
    Nowhere,
}

impl PlatformRouter {
    /// A router with no notifiers (every device is skipped).
    pub fn new() -> Self {
        Self::default()
    }

    /// The notifier for Android devices (FCM).
    pub fn with_android(mut self, notifier: Arc<dyn PushNotifier>) -> Self {
        self.android = Some(notifier);
        self
    }

    /// The notifier for iOS devices (APNs).
    pub fn with_ios(mut self, notifier: Arc<dyn PushNotifier>) -> Self {
        self.ios = Some(notifier);
        self
    }

    /// The notifier for web, desktop and other devices, and for Android or
    /// iOS devices when that platform has no notifier of its own (a webhook).
    pub fn with_fallback(mut self, notifier: Arc<dyn PushNotifier>) -> Self {
        self.fallback = Some(notifier);
        self
    }

    /// Whether no notifier is configured at all.
    pub fn is_empty(&self) -> bool {
        self.android.is_none() && self.ios.is_none() && self.fallback.is_none()
    }

    fn route(&self, device: &Device) -> Route {
        let own = match device.platform {
            Platform::Android if self.android.is_some() => Some(Route::Android),
            Platform::Ios if self.ios.is_some() => Some(Route::Ios),
            _ => None,
        };
        match own {
            Some(route) => route,
            None if self.fallback.is_some() => Route::Fallback,
            None => Route::Nowhere,
        }
    }

    /// Runs `notifier` on the devices of `n` routed to `route`.
    async fn part(
        &self,
        n: &PushNotification,
        route: Route,
        notifier: Option<&Arc<dyn PushNotifier>>,
    ) -> PushReport {
        let devices: Vec<Device> = n
            .devices
            .iter()
            .filter(|d| self.route(d) == route)
            .cloned()
            .collect();
        let Some(notifier) = notifier else {
            return PushReport::new();
        };
        if devices.is_empty() {
            return PushReport::new();
        }
        let part = PushNotification {
            devices,
            ..n.clone()
        };
        match notifier.notify(&part).await {
            Ok(report) => report,
            Err(e) => PushReport::all(
                &part,
                DeliveryOutcome::Failed {
                    reason: e.to_string(),
                    temporary: e.is_temporary(),
                },
            ),
        }
    }
}

#[async_trait]
impl PushNotifier for PlatformRouter {
    async fn notify(&self, n: &PushNotification) -> Result<PushReport> {
        let (android, ios, fallback) = tokio::join!(
            self.part(n, Route::Android, self.android.as_ref()),
            self.part(n, Route::Ios, self.ios.as_ref()),
            self.part(n, Route::Fallback, self.fallback.as_ref()),
        );
        let mut report = android;
        report.extend(ios);
        report.extend(fallback);
        for d in n.devices.iter().filter(|d| self.route(d) == Route::Nowhere) {
            report.record(
                d.id,
                DeliveryOutcome::Skipped {
                    reason: format!("no push provider for platform {:?}", d.platform),
                },
            );
        }
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chat_core::memory::MemoryNotifier;
    use chat_core::{ChannelId, DeviceId, MessageId, UserId};

    fn notification(platforms: &[Platform]) -> PushNotification {
        let user = UserId::new_random();
        PushNotification {
            recipient: user,
            devices: platforms
                .iter()
                .enumerate()
                .map(|(i, p)| Device {
                    id: DeviceId::new_random(),
                    user,
                    platform: *p,
                    push_token: Some(format!("token-{i}")),
                    created_at: 0,
                })
                .collect(),
            channel_id: ChannelId::new_random(),
            message_id: MessageId(1),
            sender: UserId::new_random(),
            preview: None,
            count: 1,
        }
    }

    #[tokio::test]
    async fn devices_go_to_their_platform_or_the_fallback() {
        let (fcm, apns, hook) = (
            Arc::new(MemoryNotifier::default()),
            Arc::new(MemoryNotifier::default()),
            Arc::new(MemoryNotifier::default()),
        );
        let router = PlatformRouter::new()
            .with_android(fcm.clone())
            .with_ios(apns.clone())
            .with_fallback(hook.clone());
        let n = notification(&[Platform::Android, Platform::Ios, Platform::Web]);
        let report = router.notify(&n).await.unwrap();
        assert_eq!(report.delivered(), 3);
        assert_eq!(fcm.sent()[0].devices, vec![n.devices[0].clone()]);
        assert_eq!(apns.sent()[0].devices, vec![n.devices[1].clone()]);
        assert_eq!(hook.sent()[0].devices, vec![n.devices[2].clone()]);

        // Without an iOS notifier the fallback takes iOS devices; without a
        // fallback, web devices are skipped.
        let hook = Arc::new(MemoryNotifier::default());
        let router = PlatformRouter::new().with_fallback(hook.clone());
        let report = router.notify(&n).await.unwrap();
        assert_eq!(report.delivered(), 3);
        assert_eq!(hook.sent()[0].devices.len(), 3);
        let router = PlatformRouter::new().with_android(fcm);
        let report = router.notify(&n).await.unwrap();
        assert_eq!(report.outcomes.len(), 3);
        assert_eq!(report.delivered(), 1);
        assert!(matches!(
            report.outcome(n.devices[2].id),
            Some(DeliveryOutcome::Skipped { .. })
        ));
    }
}
