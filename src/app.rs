//! The running service: the SQS worker and the HTTP surface, wired together and stopped by one
//! shutdown token. `mplink run` and the integration tests both start it through [`run`].

use crate::consumer::{Health, RunSummary, Worker, WorkerConfig};
use crate::http::{self, AppState};
use crate::process::Pipeline;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Runs the worker and serves HTTP on `listener` (under `limits`) until `shutdown` (or, with
/// `exit_when_idle`, an empty queue) stops the worker; returns the run's totals.
pub async fn run(
    sqs: aws_sdk_sqs::Client,
    pipeline: Pipeline,
    config: WorkerConfig,
    listener: TcpListener,
    limits: crate::server::ConnectionLimits,
    shutdown: CancellationToken,
) -> RunSummary {
    let health = Arc::new(Health::new());
    let state = AppState {
        store: pipeline.store.clone(),
        metrics: pipeline.metrics.clone(),
        health: health.clone(),
        // Long polls answer at least once per wait time; allow two of them and some slack.
        queue_freshness: config.wait_time * 2 + Duration::from_secs(10),
    };
    let http_stop = CancellationToken::new();
    let server = tokio::spawn(http::serve(listener, state, limits, http_stop.clone()));
    let summary = Worker::new(sqs, pipeline, config, health)
        .run(shutdown)
        .await;
    http_stop.cancel();
    match server.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::error!(error = %e, "HTTP server failed"),
        Err(e) => tracing::error!(error = %e, "HTTP server task failed"),
    }
    summary
}
