//! `/_double/…`: the Rust API's controls as JSON over HTTP, for the demo and other processes.
//! Unsigned on purpose (test-only); the AWS operations at `POST /` are never reachable here.

use super::model::{Entitlement, Failure, Operation, ResolvedCustomer};
use super::server::Shared;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use std::time::Duration;

pub(super) fn router() -> Router<Shared> {
    Router::new()
        .route("/_double/customers", post(add_customer))
        .route("/_double/tokens/{token}/expire", post(expire_token))
        .route("/_double/subscriptions", post(set_subscribed))
        .route("/_double/products", post(add_product))
        .route("/_double/faults", post(arm_fault))
        .route("/_double/unprocessed", post(unprocess))
        .route("/_double/entitlements", post(add_entitlement))
        .route("/_double/calls", get(calls))
        .route("/_double/metered-records", get(metered_records))
}

#[derive(Deserialize)]
struct NewCustomer {
    token: String,
    #[serde(flatten)]
    customer: ResolvedCustomer,
}

async fn add_customer(State(s): State<Shared>, Json(body): Json<NewCustomer>) -> StatusCode {
    s.lock().add_customer(&body.token, body.customer);
    StatusCode::NO_CONTENT
}

async fn expire_token(State(s): State<Shared>, Path(token): Path<String>) -> Response {
    if s.lock().expire_token(&token) {
        StatusCode::NO_CONTENT.into_response()
    } else {
        (
            StatusCode::NOT_FOUND,
            Json(json!({"error": "unknown token"})),
        )
            .into_response()
    }
}

#[derive(Deserialize)]
struct Subscription {
    /// An account id, license ARN or legacy customer identifier.
    customer: String,
    subscribed: bool,
}

async fn set_subscribed(State(s): State<Shared>, Json(body): Json<Subscription>) -> Response {
    let changed = s.lock().set_subscribed(&body.customer, body.subscribed);
    let status = if changed == 0 {
        StatusCode::NOT_FOUND
    } else {
        StatusCode::OK
    };
    (status, Json(json!({ "changed": changed }))).into_response()
}

#[derive(Deserialize)]
struct Product {
    product_code: String,
}

async fn add_product(State(s): State<Shared>, Json(body): Json<Product>) -> StatusCode {
    s.lock().products.insert(body.product_code);
    StatusCode::NO_CONTENT
}

#[derive(Deserialize)]
struct Fault {
    operation: Operation,
    #[serde(default)]
    failure: Option<Failure>,
    #[serde(default)]
    delay_ms: Option<u64>,
    times: u32,
}

async fn arm_fault(State(s): State<Shared>, Json(body): Json<Fault>) -> Response {
    if body.failure.is_none() && body.delay_ms.is_none() {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "give a failure, a delay_ms, or both"})),
        )
            .into_response();
    }
    let mut state = s.lock();
    if let Some(failure) = body.failure {
        state.fail_next(body.operation, failure, body.times);
    }
    if let Some(ms) = body.delay_ms {
        state.delay_next(body.operation, Duration::from_millis(ms), body.times);
    }
    StatusCode::NO_CONTENT.into_response()
}

#[derive(Deserialize)]
struct Unprocessed {
    records: usize,
}

async fn unprocess(State(s): State<Shared>, Json(body): Json<Unprocessed>) -> StatusCode {
    s.lock().unprocess_next += body.records;
    StatusCode::NO_CONTENT
}

async fn add_entitlement(State(s): State<Shared>, Json(body): Json<Entitlement>) -> StatusCode {
    let mut state = s.lock();
    state.products.insert(body.product_code.clone());
    state.entitlements.push(body);
    StatusCode::NO_CONTENT
}

async fn calls(State(s): State<Shared>) -> Response {
    Json(s.lock().calls.clone()).into_response()
}

async fn metered_records(State(s): State<Shared>) -> Response {
    Json(s.lock().metered.clone()).into_response()
}
