//! The metering loop the worker runs: close what is due, send what is due, publish the
//! figures, every tick until shutdown.

use super::close::{close_due, CloseSummary};
use super::send::{send_due, SendSummary};
use super::{MeterConfig, Refusal, HOUR_MS};
use crate::backoff::Backoff;
use crate::metrics::Metrics;
use crate::store::{Store, StoreError};
use crate::store::{
    METER_DUPLICATE, METER_EXPIRED, METER_FAILED, METER_NOT_SUBSCRIBED, METER_STOPPED,
    METER_SUCCESS, METER_UNSENT,
};
use crate::time::now_ms;
use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts};
use tokio_util::sync::CancellationToken;

/// Every status a meter record can have.
const METER_STATUSES: [&str; 7] = [
    METER_UNSENT,
    METER_SUCCESS,
    METER_NOT_SUBSCRIBED,
    METER_DUPLICATE,
    METER_EXPIRED,
    METER_STOPPED,
    METER_FAILED,
];

/// The metering figures on `/metrics`.
#[derive(Clone)]
pub struct MeterMetrics {
    /// Meter records by status (from the database: the same on every replica).
    pub records: IntGaugeVec,
    /// Seconds since the end of the oldest hour with an unsent record (0 when none).
    pub oldest_unsent_age_seconds: IntGauge,
    /// Seconds left of the one-hour window of the oldest unsent final usage (3600 when none).
    pub final_window_seconds_left: IntGauge,
    /// Usage reports refused, by reason (from the database).
    pub usage_refused: IntGaugeVec,
    /// Records AWS answered for, by status (this process).
    pub answers: IntCounterVec,
    /// Records found past AWS's window, never sent (this process).
    pub expired: IntCounter,
}

impl MeterMetrics {
    /// Creates the metering metrics and registers them with `metrics`.
    pub fn new(metrics: &Metrics) -> prometheus::Result<MeterMetrics> {
        let m = MeterMetrics {
            records: IntGaugeVec::new(
                Opts::new("mplink_meter_records", "Meter records by status"),
                &["status"],
            )?,
            oldest_unsent_age_seconds: IntGauge::new(
                "mplink_meter_oldest_unsent_age_seconds",
                "Seconds since the end of the oldest hour holding an unsent meter record (0 when none)",
            )?,
            final_window_seconds_left: IntGauge::new(
                "mplink_meter_final_window_seconds_left",
                "Seconds left of the one-hour final-usage window of the oldest unsent final record (3600 when none)",
            )?,
            usage_refused: IntGaugeVec::new(
                Opts::new("mplink_usage_refused", "Usage reports refused, by reason"),
                &["reason"],
            )?,
            answers: IntCounterVec::new(
                Opts::new(
                    "mplink_meter_answers_total",
                    "Meter records AWS answered for, by status",
                ),
                &["status"],
            )?,
            expired: IntCounter::new(
                "mplink_meter_expired_total",
                "Meter records found past AWS's window and never sent",
            )?,
        };
        for c in [
            Box::new(m.records.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(m.oldest_unsent_age_seconds.clone()),
            Box::new(m.final_window_seconds_left.clone()),
            Box::new(m.usage_refused.clone()),
            Box::new(m.answers.clone()),
            Box::new(m.expired.clone()),
        ] {
            metrics.register(c)?;
        }
        Ok(m)
    }

    /// Publishes the database's figures.
    pub async fn refresh(&self, store: &Store, now: i64) -> Result<(), StoreError> {
        let stats = store.meter_stats().await?;
        // Every status and reason is set, to zero when absent, so none keeps a stale value.
        for status in METER_STATUSES {
            let n = stats.by_status.get(status).copied().unwrap_or(0);
            self.records.with_label_values(&[status]).set(n);
        }
        for reason in Refusal::ALL {
            let n = stats.refused.get(reason.as_str()).copied().unwrap_or(0);
            self.usage_refused
                .with_label_values(&[reason.as_str()])
                .set(n);
        }
        // Refusals of SQL-written rows (`invalid_<field>`, `key_reused`): a bounded set, since
        // mplink writes the reasons itself.
        for (reason, n) in &stats.refused {
            if Refusal::parse(reason).is_none() {
                self.usage_refused.with_label_values(&[reason]).set(*n);
            }
        }
        self.oldest_unsent_age_seconds.set(
            stats
                .oldest_unsent_hour
                .map_or(0, |h| ((now - (h + HOUR_MS)) / 1000).max(0)),
        );
        self.final_window_seconds_left.set(
            stats
                .oldest_unsent_final
                .map_or(3600, |c| (c + HOUR_MS - now) / 1000),
        );
        Ok(())
    }

    fn count(&self, sent: &SendSummary) {
        for (status, n) in &sent.answered {
            self.answers.with_label_values(&[status]).inc_by(*n as u64);
        }
        self.expired.inc_by(sent.expired.len() as u64);
    }
}

/// One pass: close what is due at `now`, then send what is due.
pub async fn tick(
    store: &Store,
    client: &aws_sdk_marketplacemetering::Client,
    config: &MeterConfig,
    now: i64,
) -> Result<(CloseSummary, SendSummary), StoreError> {
    let closed = close_due(store, config, now).await?;
    let sent = send_due(store, client, config, now).await?;
    Ok((closed, sent))
}

/// Runs [`tick`] every `config.tick` until `shutdown`; database errors back off and retry.
pub async fn run(
    store: Store,
    client: aws_sdk_marketplacemetering::Client,
    config: MeterConfig,
    metrics: Option<MeterMetrics>,
    shutdown: CancellationToken,
) {
    let mut backoff = Backoff::new(config.backoff_base, config.backoff_cap);
    while !shutdown.is_cancelled() {
        let now = now_ms();
        let delay = match tick(&store, &client, &config, now).await {
            Ok((_, sent)) => {
                backoff.reset();
                if let Some(m) = &metrics {
                    m.count(&sent);
                    if let Err(e) = m.refresh(&store, now).await {
                        tracing::warn!(error = %e, "metering: cannot read the figures");
                    }
                }
                config.tick
            }
            Err(e) => {
                let delay = backoff.next_delay();
                tracing::warn!(error = %e, retry_in = ?delay, "metering pass failed");
                delay
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}
