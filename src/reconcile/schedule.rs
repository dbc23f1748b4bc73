//! Reconciliation on a schedule inside the worker (`mplink run --reconcile-every`): each
//! product's pass at most once per period, one replica at a time through a lease, its figures on
//! `/metrics`.

use super::{reconcile, DriftReport, ReconcileConfig};
use crate::metrics::Metrics;
use crate::store::{Store, StoreError};
use crate::time::now_ms;
use prometheus::{IntCounterVec, IntGauge, Opts};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The shortest period between two passes over a product, in seconds.
pub const MIN_EVERY_S: u64 = 60;

/// A product to reconcile: its id (what the Agreement API filters on) and, optionally, its code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Product {
    /// `prod-…`.
    pub id: String,
    /// The product code recorded on subscriptions only AWS's answer taught the ledger.
    pub code: Option<String>,
}

impl std::str::FromStr for Product {
    type Err = String;

    /// `prod-…` or `prod-…=<product code>`.
    fn from_str(text: &str) -> Result<Product, String> {
        let (id, code) = match text.split_once('=') {
            Some((id, code)) => (id.trim(), Some(code.trim())),
            None => (text.trim(), None),
        };
        let fine = |s: &str| {
            !s.is_empty()
                && s.len() <= 255
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        };
        if !fine(id) || code.is_some_and(|c| !fine(c)) {
            return Err(format!(
                "{text:?} is not PRODUCT_ID or PRODUCT_ID=PRODUCT_CODE (letters, digits, - and _)"
            ));
        }
        Ok(Product {
            id: id.to_string(),
            code: code.map(str::to_string),
        })
    }
}

/// How the scheduled passes run.
#[derive(Debug, Clone)]
pub struct Schedule {
    /// The products.
    pub products: Vec<Product>,
    /// Time between the starts of two passes over one product (across replicas).
    pub every: Duration,
    /// How long a replica holds a product's pass before another may take it over.
    pub lease: Duration,
    /// How often the loop looks whether a pass is due.
    pub tick: Duration,
    /// This replica's name in the leases.
    pub owner: String,
    /// Calls one pass makes at most.
    pub max_calls: usize,
}

impl Schedule {
    /// A schedule of `products` every `every`, with the other defaults.
    pub fn new(products: Vec<Product>, every: Duration) -> Schedule {
        Schedule {
            products,
            every,
            lease: Duration::from_secs(15 * 60),
            tick: Duration::from_secs(30),
            owner: format!("{}-reconcile", crate::store::lease_owner()),
            max_calls: ReconcileConfig::new("").max_calls,
        }
    }
}

/// `mplink_reconcile_runs_total{outcome}`, `mplink_reconcile_drift_total{kind}` and
/// `mplink_reconcile_last_success_timestamp_seconds`.
#[derive(Clone)]
pub struct ReconcileMetrics {
    runs: IntCounterVec,
    drift: IntCounterVec,
    last_success: IntGauge,
}

impl ReconcileMetrics {
    /// Creates the metrics and registers them with `metrics`.
    pub fn new(metrics: &Metrics) -> prometheus::Result<ReconcileMetrics> {
        let m = ReconcileMetrics {
            runs: IntCounterVec::new(
                Opts::new(
                    "mplink_reconcile_runs_total",
                    "Reconcile passes by outcome: complete, or stopped (an error or the call bound)",
                ),
                &["outcome"],
            )?,
            drift: IntCounterVec::new(
                Opts::new(
                    "mplink_reconcile_drift_total",
                    "Agreements the ledger disagreed with, by kind (missing, differed) and outcome",
                ),
                &["kind", "outcome"],
            )?,
            last_success: IntGauge::new(
                "mplink_reconcile_last_success_timestamp_seconds",
                "When this replica last completed a reconcile pass (Unix seconds; 0: never)",
            )?,
        };
        metrics.register(Box::new(m.runs.clone()))?;
        metrics.register(Box::new(m.drift.clone()))?;
        metrics.register(Box::new(m.last_success.clone()))?;
        Ok(m)
    }

    fn count(&self, report: &DriftReport) {
        let outcome = if report.complete {
            "complete"
        } else {
            "stopped"
        };
        self.runs.with_label_values(&[outcome]).inc();
        for d in &report.drift {
            self.drift.with_label_values(&[d.kind, d.outcome]).inc();
        }
        if report.complete {
            self.last_success.set(now_ms() / 1000);
        }
    }
}

/// One look at the schedule: every product whose pass is due and free is run by this replica.
/// Returns the reports of the passes it ran.
pub async fn scheduled_pass(
    store: &Store,
    client: &aws_sdk_marketplaceagreement::Client,
    schedule: &Schedule,
    metrics: Option<&ReconcileMetrics>,
) -> Result<Vec<DriftReport>, StoreError> {
    let mut reports = Vec::new();
    for product in &schedule.products {
        let taken = store
            .claim_reconcile(
                &product.id,
                &schedule.owner,
                schedule.every.as_millis() as i64,
                schedule.lease.as_millis() as i64,
                now_ms(),
            )
            .await?;
        if !taken {
            continue;
        }
        let config = ReconcileConfig {
            product_code: product.code.clone(),
            max_calls: schedule.max_calls,
            ..ReconcileConfig::new(&product.id)
        };
        let report = reconcile(store, client, &config).await;
        tracing::info!(
            product_id = %product.id,
            agreements = report.agreements,
            drift = report.drift.len(),
            facts = report.facts_recorded,
            calls = report.calls,
            complete = report.complete,
            "reconcile pass"
        );
        if let Some(m) = metrics {
            m.count(&report);
        }
        let json = serde_json::to_string(&report).unwrap_or_default();
        store
            .finish_reconcile(
                &product.id,
                &schedule.owner,
                report.complete,
                &json,
                now_ms(),
            )
            .await?;
        reports.push(report);
    }
    Ok(reports)
}

/// Runs [`scheduled_pass`] every `schedule.tick` until `shutdown`.
pub async fn run(
    store: Store,
    client: aws_sdk_marketplaceagreement::Client,
    schedule: Schedule,
    metrics: Option<ReconcileMetrics>,
    shutdown: CancellationToken,
) {
    while !shutdown.is_cancelled() {
        if let Err(e) = scheduled_pass(&store, &client, &schedule, metrics.as_ref()).await {
            tracing::warn!(error = %e, "scheduled reconcile failed");
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(schedule.tick) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_product_is_an_id_and_maybe_its_code() {
        assert_eq!(
            "prod-abc".parse::<Product>(),
            Ok(Product {
                id: "prod-abc".into(),
                code: None
            })
        );
        assert_eq!(
            "prod-abc=code_1"
                .parse::<Product>()
                .unwrap()
                .code
                .as_deref(),
            Some("code_1")
        );
        for bad in ["", "=code", "prod abc", "prod-abc=", "prod-abc=a;b"] {
            assert!(bad.parse::<Product>().is_err(), "{bad:?}");
        }
    }
}
