//! The HTTP surface: liveness, readiness and Prometheus metrics.

use crate::consumer::Health;
use crate::metrics::Metrics;
use crate::server::ConnectionLimits;
use crate::store::Store;
use crate::time::now_ms;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use std::sync::Arc;

/// Where the worker's health and metrics listen unless told otherwise (`--http-addr`).
pub const DEFAULT_ADDR: &str = "127.0.0.1:9090";
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// What the handlers read.
#[derive(Clone)]
pub struct AppState {
    /// The database, pinged by `/readyz`.
    pub store: Store,
    /// Served by `/metrics`.
    pub metrics: Arc<Metrics>,
    /// The worker's view of the queue and database.
    pub health: Arc<Health>,
    /// How recently the queue must have answered for `/readyz` to say ready.
    pub queue_freshness: Duration,
}

/// The router: `GET /healthz`, `GET /readyz`, `GET /metrics`.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

/// Serves the router on `listener` under `limits` until `shutdown` is cancelled.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    limits: ConnectionLimits,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let metrics = state.metrics.clone();
    crate::server::serve(listener, router(state), limits, metrics, "health", shutdown).await
}

async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let database = matches!(
        tokio::time::timeout(Duration::from_secs(2), state.store.ping()).await,
        Ok(Ok(()))
    );
    let last = state.health.last_receive_ok_ms();
    let queue = last > 0 && now_ms() - last <= state.queue_freshness.as_millis() as i64;
    let body = format!(
        "database: {}\nqueue: {}\n",
        if database { "ok" } else { "unreachable" },
        if queue { "ok" } else { "no recent answer" }
    );
    let status = if database && queue {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, body)
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
}
