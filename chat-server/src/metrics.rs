//! Prometheus metrics of one node (`GET /metrics`, text exposition format).
//!
//! Each [`ChatServer`](crate::ChatServer) has its own registry, so several
//! servers in one process (tests, an embedder running two) never mix their
//! numbers. The push counters stay in the server's counters (the ones
//! [`Stats`](crate::Stats) snapshots), the one place the push
//! worker counts them; a collector reads them at scrape time.

use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use chat_core::protocol::ErrorCode;

use crate::server::Counters;

/// Buckets for latencies, in seconds: 100 µs to about 6.5 s.
fn latency() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 2.0, 17))
}

/// A histogram family of latencies, in seconds.
pub(crate) type Latencies<L> = Family<L, Histogram, fn() -> Histogram>;

/// How a connection ended: the close code the server sent (`none` when it
/// sent none: the client closed, or the socket broke) and a stable reason.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct CloseLabels {
    pub(crate) code: String,
    pub(crate) reason: &'static str,
}

/// One label: an outcome, a request type, a presence status.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct Kind {
    pub(crate) kind: &'static str,
}

/// A backend call: the backend that answered it and the operation.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct CallLabels {
    pub(crate) backend: Arc<str>,
    pub(crate) operation: &'static str,
}

/// The metrics of one node.
#[derive(Debug)]
pub(crate) struct Metrics {
    registry: Registry,
    /// WebSocket sessions open now.
    pub(crate) connections_open: Gauge,
    /// WebSocket sessions started (welcome sent).
    pub(crate) connects: Counter,
    /// WebSocket connections ended, by close code and reason.
    pub(crate) closes: Family<CloseLabels, Counter>,
    /// Sends by outcome: `stored`, `duplicate`, or the error code.
    pub(crate) sends: Family<Kind, Counter>,
    /// Time from a WebSocket request's arrival to its reply, by type (for a
    /// send, its ack time).
    pub(crate) requests: Latencies<Kind>,
    /// Message frames handed to this node's sessions by live delivery.
    pub(crate) deliveries: Counter,
    /// Sync requests answered.
    pub(crate) syncs: Counter,
    /// Inbox entries returned by syncs.
    pub(crate) sync_entries: Counter,
    /// Sync pages that had more after them.
    pub(crate) sync_partial_pages: Counter,
    /// Presence changes announced, by new status.
    pub(crate) presence_changes: Family<Kind, Counter>,
    /// Storage call latency by operation and backend.
    pub(crate) storage: Latencies<CallLabels>,
    /// Delivery bus publish latency, by backend.
    pub(crate) bus_publish: Latencies<CallLabels>,
}

impl Metrics {
    pub(crate) fn new(stats: Arc<Counters>) -> Self {
        let mut registry = Registry::with_prefix("chat");
        let m = Self {
            connections_open: Gauge::default(),
            connects: Counter::default(),
            closes: Family::default(),
            sends: Family::default(),
            requests: Family::new_with_constructor(latency as fn() -> Histogram),
            deliveries: Counter::default(),
            syncs: Counter::default(),
            sync_entries: Counter::default(),
            sync_partial_pages: Counter::default(),
            presence_changes: Family::default(),
            storage: Family::new_with_constructor(latency as fn() -> Histogram),
            bus_publish: Family::new_with_constructor(latency as fn() -> Histogram),
            registry: Registry::default(),
        };
        let r = &mut registry;
        r.register(
            "connections_open",
            "WebSocket sessions open now",
            m.connections_open.clone(),
        );
        r.register("connects", "WebSocket sessions started", m.connects.clone());
        r.register(
            "connection_closes",
            "WebSocket connections ended, by the close code the server sent (none: the client \
             closed or the socket broke) and reason",
            m.closes.clone(),
        );
        r.register(
            "sends",
            "Sends by outcome: stored, duplicate, or the error code",
            m.sends.clone(),
        );
        r.register(
            "ws_request_duration_seconds",
            "Time from a WebSocket request's arrival to its reply, by request type (a send's \
             is its ack time)",
            m.requests.clone(),
        );
        r.register(
            "deliveries",
            "Message frames handed to this node's sessions by live delivery",
            m.deliveries.clone(),
        );
        r.register("sync_requests", "Sync requests answered", m.syncs.clone());
        r.register(
            "sync_entries",
            "Inbox entries returned by syncs",
            m.sync_entries.clone(),
        );
        r.register(
            "sync_partial_pages",
            "Sync pages with more entries after them (has_more)",
            m.sync_partial_pages.clone(),
        );
        r.register(
            "presence_changes",
            "Presence changes announced, by new status",
            m.presence_changes.clone(),
        );
        r.register(
            "storage_duration_seconds",
            "Storage call latency by backend and operation",
            m.storage.clone(),
        );
        r.register(
            "bus_publish_duration_seconds",
            "Delivery bus publish latency, by backend",
            m.bus_publish.clone(),
        );
        r.register_collector(Box::new(StatsCollector(stats)));
        Self { registry, ..m }
    }

    /// The text exposition of every metric.
    pub(crate) fn render(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail; an encoder error would be a bug
        // in a metric, and a partial page is still worth serving.
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(error = %e, "metrics encoding failed");
        }
        out
    }

    /// Counts a connection's end.
    pub(crate) fn closed(&self, code: Option<u16>, reason: &'static str) {
        let code = code.map_or_else(|| "none".to_owned(), |c| c.to_string());
        self.closes
            .get_or_create(&CloseLabels { code, reason })
            .inc();
    }

    /// Records a latency in one of the families.
    pub(crate) fn observe<L>(family: &Latencies<L>, labels: &L, took: Duration)
    where
        L: Clone + std::hash::Hash + Eq + EncodeLabelSet + fmt::Debug + Send + Sync + 'static,
    {
        family.get_or_create(labels).observe(took.as_secs_f64());
    }

    /// Counts one in a family of one label.
    pub(crate) fn count(family: &Family<Kind, Counter>, kind: &'static str) {
        family.get_or_create(&Kind { kind }).inc();
    }
}

/// An error code as a label value (its wire name).
pub(crate) fn code_label(code: ErrorCode) -> &'static str {
    match code {
        ErrorCode::BadFrame => "bad_frame",
        ErrorCode::InvalidInput => "invalid_input",
        ErrorCode::Unauthorized => "unauthorized",
        ErrorCode::Forbidden => "forbidden",
        ErrorCode::Blocked => "blocked",
        ErrorCode::NotFound => "not_found",
        ErrorCode::AlreadyExists => "already_exists",
        ErrorCode::Conflict => "conflict",
        ErrorCode::MessageTooLarge => "message_too_large",
        ErrorCode::RateLimited => "rate_limited",
        ErrorCode::LimitExceeded => "limit_exceeded",
        ErrorCode::Unavailable => "unavailable",
        ErrorCode::Internal => "internal",
        ErrorCode::AttachmentTooLarge => "attachment_too_large",
        ErrorCode::UnsupportedMediaType => "unsupported_media_type",
        _ => "other",
    }
}

/// The counters behind [`Stats`](crate::Stats), read at scrape time.
#[derive(Debug)]
struct StatsCollector(Arc<Counters>);

impl Collector for StatsCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let s = &self.0;
        let counters = [
            (
                "push_sent",
                "Push notifications handed to the notifier",
                &s.pushes_sent,
            ),
            (
                "push_failed",
                "Pushes that failed (not attempted, or failed for a device after retries)",
                &s.push_failures,
            ),
            (
                "push_dropped",
                "Push jobs dropped because the push queue was full",
                &s.pushes_dropped,
            ),
            (
                "push_delivered",
                "Devices a push platform accepted a push for",
                &s.pushes_delivered,
            ),
            (
                "push_collapsed",
                "Messages merged into another notification of the same burst",
                &s.pushes_collapsed,
            ),
            (
                "slow_consumers",
                "Connections closed because their outbound queue filled",
                &s.slow_consumers,
            ),
            (
                "frames_refused",
                "Frames too large for a connection's write buffer",
                &s.frames_refused,
            ),
            (
                "sends_unavailable",
                "Sends answered unavailable because storage failed or was slow",
                &s.sends_unavailable,
            ),
            (
                "presence_failures",
                "Heartbeats the presence tracker could not record",
                &s.presence_failures,
            ),
            (
                "connections_refused",
                "Sockets closed at accept because a connection cap was reached",
                &s.connections_refused,
            ),
            (
                "accept_errors",
                "Failed accepts other than of one connection (out of file descriptors)",
                &s.accept_errors,
            ),
            (
                "rate_limited",
                "Requests answered rate_limited (send bytes, sign-ups and logins)",
                &s.rate_limited,
            ),
        ];
        for (name, help, value) in counters {
            let counter = ConstCounter::new(value.load(Ordering::Relaxed));
            let metric = encoder.encode_descriptor(name, help, None, counter.metric_type())?;
            counter.encode(metric)?;
        }
        Ok(())
    }
}
