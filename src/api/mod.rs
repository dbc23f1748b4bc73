//! The HTTP API the host application (the SaaS's own web app) builds the buyer's pages on, and
//! the landing AWS Marketplace sends the buyer to. `mplink serve` runs it ([`serve`]); the
//! worker's health endpoints stay apart in [`crate::http`].
//!
//! [`auth`] checks the host's bearer tokens, [`error`] shapes every `/v1` error as JSON,
//! [`reasons`] is the one home of why an organization cannot be linked, [`routes`] holds the
//! handlers and the OpenAPI description generated from them.

pub mod auth;
pub mod error;
pub mod example;
pub mod guard;
mod middleware;
pub mod reasons;
pub mod routes;
pub mod state;

pub use auth::ApiTokens;
pub use state::{ApiState, SelectUrl, DEFAULT_REGISTRATION_TTL};

use axum::extract::DefaultBodyLimit;
use axum::extract::OriginalUri;
use axum::http::{header, HeaderValue, Method};
use axum::middleware::from_fn_with_state;
use axum::routing::{get, post};
use axum::Router;
use error::ApiError;
use tokio::net::TcpListener;
use tower_http::set_header::SetResponseHeaderLayer;

/// Largest `/v1` request body, bytes: larger ones get 413 `body_too_large`.
pub const BODY_LIMIT: usize = 64 * 1024;
/// Largest registration form AWS Marketplace may post, bytes.
pub const FORM_BODY_LIMIT: usize = 16 * 1024;

/// What the router serves besides the API itself.
#[derive(Debug, Clone, Default)]
pub struct ApiOptions {
    /// Serve the example host pages under `/example/` (`mplink serve --example`); their backend
    /// calls `/v1` with this token (the first configured).
    pub example: Option<secrecy::SecretString>,
    /// The listener's timeouts and connection caps.
    pub connections: crate::server::ConnectionLimits,
}

/// The whole router: `/marketplace/register`, `/v1/*` behind the bearer tokens, `/openapi.json`
/// and `/healthz`.
pub fn router(state: ApiState, options: &ApiOptions) -> Router {
    use routes::{billing, events, history, openapi, org_usage, register, registrations, usage};
    let v1 = Router::new()
        .route("/registrations/{id}", get(registrations::get))
        .route(
            "/registrations/{id}/organizations",
            post(registrations::organizations),
        )
        .route("/registrations/{id}/link", post(registrations::link))
        .route("/organizations/{org_id}/billing", get(billing::get))
        .route("/organizations/{org_id}/usage", get(org_usage::get))
        .route("/organizations/{org_id}/history", get(history::get))
        .route("/events", get(events::get))
        .route("/usage", post(usage::report))
        .fallback(route_not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(from_fn_with_state(state.clone(), middleware::require_token))
        .layer(DefaultBodyLimit::max(BODY_LIMIT));
    let app = Router::new()
        .route(
            "/marketplace/register",
            post(register::register)
                .layer::<_, std::convert::Infallible>(DefaultBodyLimit::max(FORM_BODY_LIMIT))
                .layer::<_, std::convert::Infallible>(guard::register_rate_limit(
                    &state.guards.config,
                    state.metrics.clone(),
                    state.shutdown.clone(),
                )),
        )
        .route("/openapi.json", get(openapi::get))
        .route("/healthz", get(|| async { "ok\n" }))
        .nest("/v1", v1.clone())
        .fallback(route_not_found);
    let app = match &options.example {
        Some(token) => {
            let v1 = Router::new().nest("/v1", v1).with_state(state.clone());
            app.merge(example::router(v1, token.clone()))
        }
        None => app,
    };
    app.layer(from_fn_with_state(state.clone(), middleware::count_errors))
        // Registration ids travel in URLs: no page of this server hands one on in a Referer.
        .layer(SetResponseHeaderLayer::if_not_present(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ))
        .with_state(state)
}

/// Named by the whole path (a nested router sees only its tail).
async fn route_not_found(method: Method, OriginalUri(uri): OriginalUri) -> ApiError {
    ApiError::RouteNotFound {
        method: method.to_string(),
        path: uri.path().chars().take(200).collect(),
    }
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

/// Serves the API on `listener` until `state.shutdown` is cancelled (long polls answer then).
pub async fn serve(
    listener: TcpListener,
    state: ApiState,
    options: ApiOptions,
) -> std::io::Result<()> {
    let shutdown = state.shutdown.clone();
    let metrics = state.metrics.clone();
    let router = router(state, &options);
    crate::server::serve(
        listener,
        router,
        options.connections,
        metrics,
        "api",
        shutdown,
    )
    .await
}
