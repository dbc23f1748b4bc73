//! The `/v1` errors: every one is JSON `{"code", "message"}` with a stable code, counted in
//! `mplink_api_errors_total{code}` and logged without the request body. The JSON extractor
//! here turns axum's rejections (too large, not JSON, unknown field) into such errors.

use super::reasons::Reason;
use crate::store::StoreError;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde::Serialize;
use thiserror::Error;
use utoipa::ToSchema;

/// The body of every `/v1` error.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// Stable machine-readable code (see README "HTTP API").
    #[schema(example = "unauthorized")]
    pub code: String,
    /// What went wrong, for a human.
    pub message: String,
}

/// Why a `/v1` request failed.
#[derive(Debug, Error)]
pub enum ApiError {
    /// No bearer token, or not one of the configured ones.
    #[error("a valid bearer token is required (Authorization: Bearer <token>)")]
    Unauthorized,
    /// No such route.
    #[error("no route {method} {path}")]
    RouteNotFound {
        /// Method.
        method: String,
        /// Path.
        path: String,
    },
    /// The route exists, not with this method.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// No registration with this id.
    #[error("no registration {id:?}")]
    RegistrationNotFound {
        /// The id asked for.
        id: String,
    },
    /// Another of the host's users claimed the registration first.
    #[error("registration {id:?} belongs to another user")]
    RegistrationClaimed {
        /// The id asked for.
        id: String,
    },
    /// Too many long polls are waiting already (`--max-long-polls`).
    #[error("too many requests are waiting for events; retry without wait, or later")]
    TooManyLongPolls,
    /// The body is larger than the limit.
    #[error("the request body is larger than {limit} bytes")]
    BodyTooLarge {
        /// The limit, bytes.
        limit: usize,
    },
    /// The body did not arrive in time (`--http-body-timeout`).
    #[error("the request body did not arrive within the body timeout")]
    BodyTimeout,
    /// The body is not `application/json`.
    #[error("the request body must be JSON (Content-Type: application/json)")]
    NotJson,
    /// The body is not well-formed JSON.
    #[error("the request body is not valid JSON: {0}")]
    MalformedJson(String),
    /// Well-formed JSON that does not fit: a missing or unknown field, a wrong type.
    #[error("the request body does not fit: {0}")]
    InvalidBody(String),
    /// The query string does not fit.
    #[error("the query string does not fit: {0}")]
    InvalidQuery(String),
    /// One field has a value that is refused.
    #[error("{field}: {problem}")]
    InvalidField {
        /// The field (JSON path).
        field: String,
        /// What is wrong with it.
        problem: String,
    },
    /// The link is refused for this reason.
    #[error("{}", .0.text())]
    Refused(Reason),
    /// A usage report's idempotency key was already used for a different report.
    #[error("this idempotency key was already used for a different usage report")]
    KeyReused,
    /// The database did not answer.
    #[error("the database is unavailable; try again")]
    Unavailable(#[source] StoreError),
    /// Something mplink cannot recover from.
    #[error("internal error")]
    Internal(#[source] StoreError),
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        if e.is_transient() {
            ApiError::Unavailable(e)
        } else {
            ApiError::Internal(e)
        }
    }
}

impl ApiError {
    /// The stable code.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::Unauthorized => "unauthorized",
            ApiError::RouteNotFound { .. } => "route_not_found",
            ApiError::MethodNotAllowed => "method_not_allowed",
            ApiError::RegistrationNotFound { .. } => "registration_not_found",
            ApiError::RegistrationClaimed { .. } => "registration_claimed",
            ApiError::TooManyLongPolls => "too_many_long_polls",
            ApiError::BodyTooLarge { .. } => "body_too_large",
            ApiError::BodyTimeout => "body_timeout",
            ApiError::NotJson => "unsupported_media_type",
            ApiError::MalformedJson(_) => "malformed_json",
            ApiError::InvalidBody(_) => "invalid_body",
            ApiError::InvalidQuery(_) => "invalid_query",
            ApiError::InvalidField { .. } => "invalid_field",
            ApiError::Refused(reason) => reason.code(),
            ApiError::KeyReused => "idempotency_key_reused",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::Internal(_) => "internal",
        }
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::RouteNotFound { .. } | ApiError::RegistrationNotFound { .. } => {
                StatusCode::NOT_FOUND
            }
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::RegistrationClaimed { .. } => StatusCode::FORBIDDEN,
            ApiError::TooManyLongPolls => StatusCode::TOO_MANY_REQUESTS,
            ApiError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            ApiError::NotJson => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::MalformedJson(_) | ApiError::InvalidQuery(_) => StatusCode::BAD_REQUEST,
            ApiError::InvalidBody(_) | ApiError::InvalidField { .. } => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            ApiError::Refused(Reason::RegistrationExpired) => StatusCode::GONE,
            ApiError::Refused(_) | ApiError::KeyReused => StatusCode::CONFLICT,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// An invalid field.
    pub fn field(field: impl Into<String>, problem: impl Into<String>) -> ApiError {
        ApiError::InvalidField {
            field: field.into(),
            problem: problem.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        match &self {
            ApiError::Unavailable(e) | ApiError::Internal(e) => {
                tracing::error!(code = self.code(), error = %e, "API request failed")
            }
            _ => tracing::info!(
                code = self.code(),
                status = status.as_u16(),
                "API request refused"
            ),
        }
        // Counted where the state is at hand (see `count_errors`); the code travels along.
        let body = ErrorBody {
            code: self.code().to_string(),
            message: self.to_string(),
        };
        let mut response = (status, axum::Json(body)).into_response();
        let headers = response.headers_mut();
        match &self {
            ApiError::Unauthorized => {
                headers.insert(
                    axum::http::header::WWW_AUTHENTICATE,
                    axum::http::HeaderValue::from_static("Bearer realm=\"mplink\""),
                );
            }
            ApiError::TooManyLongPolls | ApiError::Unavailable(_) => {
                headers.insert(
                    axum::http::header::RETRY_AFTER,
                    axum::http::HeaderValue::from_static("1"),
                );
            }
            _ => {}
        }
        response.extensions_mut().insert(ErrorCode(self.code()));
        response
    }
}

/// The code of an error response, for the metric.
#[derive(Debug, Clone, Copy)]
pub struct ErrorCode(pub &'static str);

/// `Json<T>` whose rejections are [`ApiError`]s. `T` should deny unknown fields.
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

impl<T, S> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(value)) => Ok(ApiJson(value)),
            Err(rejection) => Err(json_rejection(rejection)),
        }
    }
}

fn json_rejection(rejection: JsonRejection) -> ApiError {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        return ApiError::BodyTooLarge {
            limit: super::BODY_LIMIT,
        };
    }
    if crate::server::is_body_timeout(&rejection) {
        return ApiError::BodyTimeout;
    }
    match rejection {
        JsonRejection::MissingJsonContentType(_) => ApiError::NotJson,
        JsonRejection::JsonSyntaxError(e) => ApiError::MalformedJson(serde_cause(&e.body_text())),
        JsonRejection::JsonDataError(e) => ApiError::InvalidBody(serde_cause(&e.body_text())),
        other => ApiError::MalformedJson(other.body_text()),
    }
}

/// axum's rejection text prefixes the serde error with its own words; keep serde's.
fn serde_cause(text: &str) -> String {
    text.split_once(": ")
        .map_or(text, |(_, cause)| cause)
        .to_string()
}

/// `Query<T>` whose rejections are [`ApiError`]s.
#[derive(Debug)]
pub struct ApiQuery<T>(pub T);

impl<T, S> FromRequestParts<S> for ApiQuery<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(value)) => Ok(ApiQuery(value)),
            Err(QueryRejection::FailedToDeserializeQueryString(e)) => {
                Err(ApiError::InvalidQuery(serde_cause(&e.body_text())))
            }
            Err(other) => Err(ApiError::InvalidQuery(other.body_text())),
        }
    }
}
