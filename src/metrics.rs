//! Prometheus metrics of the worker, served as text on `/metrics`.

use crate::ledger::Outcome;
use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts,
    Registry, TextEncoder,
};

/// Every metric mplink exports, registered in its own registry.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// Messages received from SQS.
    pub received: IntCounter,
    /// Messages decided, by outcome (applied, stale, duplicate, rejected).
    pub outcomes: IntCounterVec,
    /// Rejected messages, by reason.
    pub rejected: IntCounterVec,
    /// DeleteMessageBatch entries that failed for good (the message will come back as a duplicate).
    pub delete_failures: IntCounter,
    /// ChangeMessageVisibility entries that failed.
    pub visibility_failures: IntCounter,
    /// Failed ReceiveMessage calls.
    pub receive_errors: IntCounter,
    /// Transient database errors while applying (the message was retried).
    pub database_errors: IntCounter,
    /// Time from receipt to committed decision.
    pub apply_seconds: Histogram,
    /// Now minus the event's own time, at decision.
    pub event_age_seconds: Histogram,
    /// Messages being worked on.
    pub in_flight: IntGauge,
    /// Acknowledged events of unknown detail-types, by detail-type (bounded, see
    /// [`Metrics::unrecognised`]).
    pub unrecognised_detail_types: IntCounterVec,
    unrecognised_labels: Arc<Mutex<HashSet<String>>>,
    /// Outbox rows not delivered yet (pending and parked).
    pub outbox_pending: IntGauge,
    /// Age of the oldest outbox row not delivered yet, in seconds (0 when none).
    pub outbox_oldest_age_seconds: IntGauge,
    /// Webhook delivery attempts, by outcome (delivered, retry, parked, lease_lost).
    pub webhook_deliveries: IntCounterVec,
    /// Time from an outbox row's commit to its delivery.
    pub webhook_latency_seconds: Histogram,
    /// Error answers of the HTTP API, by stable code.
    pub api_errors: IntCounterVec,
    /// Buyers' landings on `/marketplace/register`, by outcome.
    pub registrations: IntCounterVec,
    /// Connections an HTTP listener closed before or instead of serving them, by listener
    /// (`api`, `health`) and reason (`max_connections`, `max_connections_per_client`,
    /// `header_timeout`, `accept_failed`).
    pub http_connections_refused: IntCounterVec,
    /// `mplink_worker_stage_seconds`, one series per [`Stage`] in [`Stage::ALL`]'s order, resolved
    /// once: the worker observes them per message, and a label lookup each time would cost a
    /// hash and a lock on the hot path.
    worker_stages: [Histogram; Stage::ALL.len()],
}

/// The stages of a message's way through the worker, in order: where its time goes when the
/// worker is slower than the queue allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// A receive loop waiting for its share of in-flight slots before it may ask for more.
    SlotWait,
    /// One ReceiveMessage call that returned messages.
    Receive,
    /// A received batch waiting for the combiner to start its transaction.
    Combine,
    /// Decode, verify and the committed transaction of one batch.
    Commit,
    /// A committed message waiting for its DeleteMessageBatch call to start (the linger and
    /// the wait for a delete slot).
    AckWait,
    /// One DeleteMessageBatch call, with its retries.
    Delete,
}

impl Stage {
    /// Every stage, in the order a message passes them.
    pub const ALL: [Stage; 6] = [
        Stage::SlotWait,
        Stage::Receive,
        Stage::Combine,
        Stage::Commit,
        Stage::AckWait,
        Stage::Delete,
    ];

    /// The `stage` label.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::SlotWait => "slot_wait",
            Stage::Receive => "receive",
            Stage::Combine => "combine",
            Stage::Commit => "commit",
            Stage::AckWait => "ack_wait",
            Stage::Delete => "delete",
        }
    }
}

/// The outcomes `mplink_webhook_deliveries_total` counts.
pub const WEBHOOK_OUTCOMES: [&str; 4] = ["delivered", "retry", "parked", "lease_lost"];
/// Buckets of `mplink_apply_seconds`: fine between 5 and 50 ms, where a healthy commit lands.
pub const APPLY_BUCKETS: [f64; 16] = [
    0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.04, 0.05, 0.075, 0.1, 0.25, 1.0, 2.5,
    10.0,
];
/// Buckets of `mplink_event_age_seconds`: the 5-50 ms of a light-load delivery, then the
/// seconds to a day of a backlog or a redrive.
pub const EVENT_AGE_BUCKETS: [f64; 20] = [
    0.005, 0.01, 0.02, 0.03, 0.04, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0,
    3600.0, 21600.0, 86400.0, 604800.0,
];

/// Distinct detail-type labels `mplink_unrecognised_events_total` takes before counting the
/// rest as `other`: a sender can invent names, a metric must not grow without bound.
pub const MAX_UNRECOGNISED_LABELS: usize = 20;
/// The label that stands for every detail-type past [`MAX_UNRECOGNISED_LABELS`].
pub const OTHER_LABEL: &str = "other";
/// Longest detail-type kept in a label.
const MAX_LABEL_CHARS: usize = 64;

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let received = IntCounter::new(
            "mplink_messages_received_total",
            "Messages received from SQS",
        )
        .expect("valid metric");
        let outcomes = IntCounterVec::new(
            Opts::new("mplink_messages_total", "Messages decided, by outcome"),
            &["outcome"],
        )
        .expect("valid metric");
        let rejected = IntCounterVec::new(
            Opts::new(
                "mplink_messages_rejected_total",
                "Rejected messages, by reason",
            ),
            &["reason"],
        )
        .expect("valid metric");
        let delete_failures = IntCounter::new(
            "mplink_delete_failures_total",
            "SQS deletes that failed after retries (the message will be redelivered and deduplicated)",
        )
        .expect("valid metric");
        let visibility_failures = IntCounter::new(
            "mplink_visibility_failures_total",
            "SQS visibility changes that failed",
        )
        .expect("valid metric");
        let receive_errors =
            IntCounter::new("mplink_receive_errors_total", "Failed ReceiveMessage calls")
                .expect("valid metric");
        let database_errors = IntCounter::new(
            "mplink_database_errors_total",
            "Transient database errors while applying (retried)",
        )
        .expect("valid metric");
        let apply_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "mplink_apply_seconds",
                "Time from receipt to committed decision",
            )
            .buckets(APPLY_BUCKETS.to_vec()),
        )
        .expect("valid metric");
        let event_age_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "mplink_event_age_seconds",
                "Now minus the event's own time at decision",
            )
            .buckets(EVENT_AGE_BUCKETS.to_vec()),
        )
        .expect("valid metric");
        let in_flight =
            IntGauge::new("mplink_in_flight", "Messages being worked on").expect("valid metric");
        let unrecognised_detail_types = IntCounterVec::new(
            Opts::new(
                "mplink_unrecognised_events_total",
                "Acknowledged EventBridge events of a detail-type mplink does not know, by detail-type",
            ),
            &["detail_type"],
        )
        .expect("valid metric");
        let outbox_pending = IntGauge::new(
            "mplink_outbox_pending",
            "Outbox rows not delivered yet (pending and parked as failed)",
        )
        .expect("valid metric");
        let outbox_oldest_age_seconds = IntGauge::new(
            "mplink_outbox_oldest_undelivered_age_seconds",
            "Age of the oldest outbox row not delivered yet (0 when none)",
        )
        .expect("valid metric");
        let webhook_deliveries = IntCounterVec::new(
            Opts::new(
                "mplink_webhook_deliveries_total",
                "Webhook delivery attempts of outbox rows, by outcome",
            ),
            &["outcome"],
        )
        .expect("valid metric");
        let webhook_latency_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "mplink_webhook_latency_seconds",
                "Time from an outbox row's commit to its delivery",
            )
            .buckets(vec![
                0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 15.0, 60.0, 300.0, 3600.0,
            ]),
        )
        .expect("valid metric");
        for o in WEBHOOK_OUTCOMES {
            webhook_deliveries.with_label_values(&[o]);
        }
        let api_errors = IntCounterVec::new(
            Opts::new(
                "mplink_api_errors_total",
                "Error answers of the HTTP API, by stable code",
            ),
            &["code"],
        )
        .expect("valid metric");
        let registrations = IntCounterVec::new(
            Opts::new(
                "mplink_registrations_total",
                "Buyers' landings from AWS Marketplace, by outcome",
            ),
            &["outcome"],
        )
        .expect("valid metric");
        let http_connections_refused = IntCounterVec::new(
            Opts::new(
                "mplink_http_connections_refused_total",
                "Connections an HTTP listener closed before or instead of serving them, by listener and reason",
            ),
            &["listener", "reason"],
        )
        .expect("valid metric");
        let worker_stage_seconds = HistogramVec::new(
            HistogramOpts::new(
                "mplink_worker_stage_seconds",
                "Time spent in each stage of the worker (slot_wait, receive, combine, commit, ack_wait, delete)",
            )
            .buckets(APPLY_BUCKETS.to_vec()),
            &["stage"],
        )
        .expect("valid metric");
        let worker_stages =
            Stage::ALL.map(|s| worker_stage_seconds.with_label_values(&[s.as_str()]));
        for c in [
            Box::new(worker_stage_seconds.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(outbox_pending.clone()),
            Box::new(outbox_oldest_age_seconds.clone()),
            Box::new(webhook_deliveries.clone()),
            Box::new(webhook_latency_seconds.clone()),
            Box::new(api_errors.clone()),
            Box::new(registrations.clone()),
            Box::new(http_connections_refused.clone()),
            Box::new(received.clone()),
            Box::new(outcomes.clone()),
            Box::new(rejected.clone()),
            Box::new(delete_failures.clone()),
            Box::new(visibility_failures.clone()),
            Box::new(receive_errors.clone()),
            Box::new(database_errors.clone()),
            Box::new(apply_seconds.clone()),
            Box::new(event_age_seconds.clone()),
            Box::new(in_flight.clone()),
            Box::new(unrecognised_detail_types.clone()),
        ] {
            registry.register(c).expect("metric names are unique");
        }
        // Expose every outcome from the start so dashboards see zeros, not gaps.
        for o in [
            Outcome::Applied,
            Outcome::Stale,
            Outcome::Duplicate,
            Outcome::Rejected,
            Outcome::Noted,
            Outcome::Unrecognised,
        ] {
            outcomes.with_label_values(&[o.as_str()]);
        }
        Metrics {
            registry,
            received,
            outcomes,
            rejected,
            delete_failures,
            visibility_failures,
            receive_errors,
            database_errors,
            apply_seconds,
            event_age_seconds,
            in_flight,
            unrecognised_detail_types,
            unrecognised_labels: Arc::new(Mutex::new(HashSet::new())),
            outbox_pending,
            outbox_oldest_age_seconds,
            webhook_deliveries,
            webhook_latency_seconds,
            api_errors,
            registrations,
            http_connections_refused,
            worker_stages,
        }
    }

    /// Records `seconds` spent in `stage` by one call (receive, delete), one batch (combine,
    /// commit) or one message (ack_wait).
    pub fn stage(&self, stage: Stage, seconds: f64) {
        self.worker_stages[stage as usize].observe(seconds);
    }

    /// Per stage: how many observations and their mean in milliseconds, as one log field
    /// (`slot_wait=120x0.8ms receive=…`).
    pub fn stage_breakdown(&self) -> String {
        Stage::ALL
            .iter()
            .zip(&self.worker_stages)
            .map(|(s, h)| {
                let n = h.get_sample_count();
                let mean_ms = if n == 0 {
                    0.0
                } else {
                    h.get_sample_sum() * 1000.0 / n as f64
                };
                format!("{}={}x{:.1}ms", s.as_str(), n, mean_ms)
            })
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Counts one acknowledged event of an unknown detail-type under its (truncated) name, or
    /// under `other` once [`MAX_UNRECOGNISED_LABELS`] names have been seen.
    pub fn unrecognised(&self, detail_type: &str) {
        let name: String = detail_type
            .chars()
            .filter(|c| !c.is_control())
            .take(MAX_LABEL_CHARS)
            .collect();
        let label = {
            let mut seen = self
                .unrecognised_labels
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if seen.contains(&name) || seen.len() < MAX_UNRECOGNISED_LABELS {
                seen.insert(name.clone());
                name
            } else {
                OTHER_LABEL.to_string()
            }
        };
        self.unrecognised_detail_types
            .with_label_values(&[&label])
            .inc();
    }

    /// Counts one decided message.
    pub fn outcome(&self, outcome: Outcome) {
        self.outcomes.with_label_values(&[outcome.as_str()]).inc();
    }

    /// The value of one outcome counter (for summaries and tests).
    pub fn outcome_count(&self, outcome: Outcome) -> u64 {
        self.outcomes.with_label_values(&[outcome.as_str()]).get()
    }

    /// Registers a metric another module owns (the metering loop's), served with these.
    pub fn register(
        &self,
        collector: Box<dyn prometheus::core::Collector>,
    ) -> prometheus::Result<()> {
        self.registry.register(collector)
    }

    /// Everything in the Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        // Encoding into a Vec cannot fail for well-formed metrics.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `stage` indexes the resolved series by discriminant: each stage's time must land in its
    /// own labelled series, whatever the order of the enum.
    #[test]
    fn each_stage_is_observed_under_its_own_label() {
        let m = Metrics::new();
        for (i, s) in Stage::ALL.iter().enumerate() {
            for _ in 0..=i {
                m.stage(*s, 0.002);
            }
        }
        let text = m.render();
        for (i, s) in Stage::ALL.iter().enumerate() {
            let line = format!(
                "mplink_worker_stage_seconds_count{{stage=\"{}\"}} {}",
                s.as_str(),
                i + 1
            );
            assert!(text.contains(&line), "missing {line}");
        }
        assert!(m
            .stage_breakdown()
            .starts_with("slot_wait=1x2.0ms receive=2x2.0ms"));
    }
}
