//! The layers every `/v1` request passes: the bearer token, then the error count. They read
//! the API's state, which is why they live apart from what they check (`auth`) and count (`error`).

use super::error::{ApiError, ErrorCode};
use super::state::ApiState;
use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::Response;

/// Refuses requests without one of the configured tokens with 401.
pub async fn require_token(
    State(state): State<ApiState>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    match bearer(&request) {
        Some(token) if state.tokens.accepts(token) => Ok(next.run(request).await),
        _ => Err(ApiError::Unauthorized),
    }
}

/// The token of an `Authorization: Bearer <token>` header.
fn bearer(request: &Request) -> Option<&str> {
    let value = request.headers().get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// Counts every error response by code in `mplink_api_errors_total`.
pub async fn count_errors(State(state): State<ApiState>, request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    if let Some(ErrorCode(code)) = response.extensions().get::<ErrorCode>() {
        state.metrics.api_errors.with_label_values(&[code]).inc();
    }
    response
}
