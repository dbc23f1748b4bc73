//! `mplink run`: the worker, with its webhook deliverer and HTTP surface.

use super::{CliError, RunArgs};
use crate::config::DatabaseUrl;
use crate::metrics::Metrics;
use crate::store::Store;
use std::process::ExitCode;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

pub(super) async fn run(
    store: &Store,
    url: &DatabaseUrl,
    args: RunArgs,
) -> Result<ExitCode, CliError> {
    let shutdown = CancellationToken::new();
    let on_signal = shutdown.clone();
    tokio::spawn(async move {
        crate::shutdown::shutdown_signal().await;
        on_signal.cancel();
    });
    run_until(store, url, args, None, shutdown).await
}

/// The worker until `shutdown` (or an idle queue with `--exit-when-idle`), counting in `metrics`
/// when given (`mplink serve --worker` shares the API's).
pub(super) async fn run_until(
    store: &Store,
    url: &DatabaseUrl,
    args: RunArgs,
    metrics: Option<Arc<Metrics>>,
    shutdown: CancellationToken,
) -> Result<ExitCode, CliError> {
    // A webhook URL that is not http(s), or URLs without a secret, stop the start.
    let webhooks = args.webhooks.config()?;
    let reconcile_plan = args.reconcile_schedule().map_err(CliError::Setup)?;
    let config = args.worker_config();
    // Above the long-poll wait, so a receive that the network swallowed cannot hang the loop.
    let attempt_timeout = config.wait_time + std::time::Duration::from_secs(10);
    let sdk = crate::aws::sdk_config(attempt_timeout).await;
    let listener = tokio::net::TcpListener::bind(args.http_addr)
        .await
        .map_err(|source| CliError::Listen {
            addr: args.http_addr,
            source,
        })?;
    tracing::info!(
        database = %url,
        queue_url = %config.queue_url,
        http_addr = %listener.local_addr().unwrap_or(args.http_addr),
        receive_loops = config.receive_loops,
        max_in_flight = config.max_in_flight,
        wait_time_s = config.wait_time.as_secs(),
        visibility_timeout_s = config.visibility_timeout.as_secs(),
        grace_period_s = config.grace_period.as_secs(),
        backoff_cap_s = config.backoff_cap.as_secs(),
        batch_linger_ms = config.batch_linger.as_millis() as u64,
        max_batch = config.max_batch,
        exit_when_idle = config.exit_when_idle,
        "mplink worker starting"
    );
    tracing::info!(verify = ?args.verify.config(), "trusting");
    let mut pipeline = args.verify.pipeline(store)?;
    if let Some(metrics) = metrics {
        pipeline.metrics = metrics;
    }
    // The deliverer stops with the worker, whether a signal or an idle queue stopped it.
    let deliverer_stop = shutdown.child_token();
    let deliverer = super::outbox::spawn_deliverer(
        store,
        webhooks,
        pipeline.metrics.clone(),
        deliverer_stop.clone(),
    )?;
    let meter_stop = shutdown.child_token();
    let meter = if args.meter {
        let metrics = crate::metering::runner::MeterMetrics::new(&pipeline.metrics)
            .map_err(|e| CliError::Setup(format!("metering metrics: {e}")))?;
        let client = super::metering_client().await;
        tracing::info!(zero_dimensions = ?args.metering.zero_dimensions, "usage metering on");
        Some(tokio::spawn(crate::metering::runner::run(
            store.clone(),
            client,
            args.metering.config(),
            Some(metrics),
            meter_stop.clone(),
        )))
    } else {
        None
    };
    let entitlements = if args.entitlements {
        let metrics = crate::entitlements::EntitlementMetrics::new(&pipeline.metrics)
            .map_err(|e| CliError::Setup(format!("entitlement metrics: {e}")))?;
        let client = crate::aws::entitlement_client(&sdk);
        tracing::info!("entitlement checks on");
        Some(tokio::spawn(crate::entitlements::run(
            store.clone(),
            client,
            crate::entitlements::EntitlementConfig::default(),
            Some(metrics),
            meter_stop.clone(),
        )))
    } else {
        None
    };
    let reconciler = match reconcile_plan {
        Some(plan) => {
            let metrics = crate::reconcile::schedule::ReconcileMetrics::new(&pipeline.metrics)
                .map_err(|e| CliError::Setup(format!("reconcile metrics: {e}")))?;
            tracing::info!(
                every_s = plan.every.as_secs(),
                products = plan.products.len(),
                "scheduled reconcile on"
            );
            Some(tokio::spawn(crate::reconcile::schedule::run(
                store.clone(),
                crate::aws::agreement_client(&sdk),
                plan,
                Some(metrics),
                meter_stop.clone(),
            )))
        }
        None => None,
    };
    let summary = crate::app::run(
        crate::aws::worker_sqs_client(&sdk),
        pipeline,
        config,
        listener,
        args.http.limits(),
        shutdown,
    )
    .await;
    deliverer_stop.cancel();
    meter_stop.cancel();
    if let Some(handle) = deliverer {
        let _ = handle.await;
    }
    for handle in [meter, entitlements, reconciler].into_iter().flatten() {
        let _ = handle.await;
    }
    println!(
        "received {}, applied {}, stale {}, duplicate {}, rejected {}, released {}, delete failures {}",
        summary.received,
        summary.applied,
        summary.stale,
        summary.duplicate,
        summary.rejected,
        summary.released,
        summary.delete_failures
    );
    Ok(ExitCode::SUCCESS)
}
