//! The HTTP side: `POST /` answers the operations in AWS JSON 1.1 (`X-Amz-Target`),
//! `POST /service/{service}/operation/{operation}` in Smithy RPC v2 CBOR (what
//! `aws-sdk-marketplaceentitlement` 1.126 sends), `/_double/…` are the controls
//! ([`super::control`]).

use super::model::{Call, CallOutcome, Operation};
use super::sigv4::{self, Policy};
use super::state::State;
use super::wire::{self, AwsError};
use super::{agreement, cbor, control, entitlement, metering};
use axum::body::Bytes;
use axum::extract::{Path, State as Extract};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use chrono::Utc;
use serde_json::Value;
use std::sync::{Arc, Mutex, MutexGuard};

/// The state the handlers share.
#[derive(Clone)]
pub(super) struct Shared(pub Arc<Mutex<State>>);

impl Shared {
    /// The state, even if a handler panicked while holding it (a test double keeps answering).
    pub fn lock(&self) -> MutexGuard<'_, State> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

pub(super) fn router(shared: Shared) -> Router {
    Router::new()
        .route("/", post(aws_json))
        .route(
            "/service/{service}/operation/{operation}",
            post(rpc_v2_cbor),
        )
        .merge(control::router())
        .with_state(shared)
}

/// The two wire protocols the SDK crates speak.
#[derive(Clone, Copy)]
enum Protocol {
    AwsJson11,
    RpcV2Cbor,
}

/// Members that are timestamps, sent as CBOR tag 1 in RPC v2 CBOR.
const TIMESTAMP_MEMBERS: [&str; 6] = [
    "ExpirationDate",
    "Timestamp",
    "acceptanceTime",
    "startTime",
    "endTime",
    "lastUpdateTime",
];

/// The shape namespace of an operation's service, for RPC v2 CBOR's absolute `__type`.
fn namespace(op: Option<Operation>) -> &'static str {
    match op {
        Some(Operation::GetEntitlements) => "com.amazonaws.marketplaceentitlementservice",
        Some(Operation::SearchAgreements | Operation::GetAgreementEntitlements) => {
            "com.amazonaws.marketplaceagreement"
        }
        _ => "com.amazonaws.marketplacemetering",
    }
}

async fn aws_json(
    Extract(shared): Extract<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let target = headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let input = serde_json::from_slice(&body)
        .map_err(|e| AwsError::serialization(format!("the body is not JSON: {e}")));
    handle(
        &shared,
        Protocol::AwsJson11,
        target,
        input,
        &method,
        &uri,
        &headers,
        &body,
    )
    .await
}

async fn rpc_v2_cbor(
    Extract(shared): Extract<Shared>,
    Path((service, operation)): Path<(String, String)>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let target = format!("{service}.{operation}");
    let input =
        if headers.get("smithy-protocol").and_then(|v| v.to_str().ok()) != Some("rpc-v2-cbor") {
            Err(AwsError::serialization(
                "RPC v2 CBOR requests carry the header smithy-protocol: rpc-v2-cbor",
            ))
        } else {
            cbor::decode(&body).map_err(|e| AwsError::serialization(e.to_string()))
        };
    handle(
        &shared,
        Protocol::RpcV2Cbor,
        target,
        input,
        &method,
        &uri,
        &headers,
        &body,
    )
    .await
}

#[allow(clippy::too_many_arguments)]
async fn handle(
    shared: &Shared,
    protocol: Protocol,
    target: String,
    input: Result<Value, AwsError>,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
) -> Response {
    let request_id = wire::new_id();
    let operation = Operation::from_target(&target);
    let result = answer(shared, method, uri, headers, body, operation, &input).await;
    let response = match (&result, protocol) {
        (Ok(output), Protocol::AwsJson11) => wire::ok_response(output, &request_id),
        (Err(e), Protocol::AwsJson11) => wire::error_response(e, &request_id),
        (Ok(output), Protocol::RpcV2Cbor) => cbor_response(
            StatusCode::OK,
            cbor::encode(output, &TIMESTAMP_MEMBERS),
            &request_id,
        ),
        (Err(e), Protocol::RpcV2Cbor) => {
            let body = serde_json::json!({
                "__type": format!("{}#{}", namespace(operation), e.code),
                "message": e.message,
            });
            let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::BAD_REQUEST);
            cbor_response(status, cbor::encode(&body, &[]), &request_id)
        }
    };
    let outcome = match result {
        Ok(output) => CallOutcome::Ok { output },
        Err(e) => CallOutcome::Error {
            code: e.code,
            status: e.status,
            message: e.message,
        },
    };
    shared.lock().record(Call {
        seq: 0,
        at: Utc::now(),
        operation,
        target,
        input: input.unwrap_or(Value::Null),
        outcome,
    });
    response
}

fn cbor_response(status: StatusCode, body: Vec<u8>, request_id: &str) -> Response {
    let mut response = (status, body).into_response();
    let headers = response.headers_mut();
    headers.insert(
        axum::http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/cbor"),
    );
    headers.insert("smithy-protocol", HeaderValue::from_static("rpc-v2-cbor"));
    if let Ok(v) = HeaderValue::from_str(request_id) {
        headers.insert("x-amzn-requestid", v);
    }
    response
}

async fn answer(
    shared: &Shared,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
    operation: Option<Operation>,
    input: &Result<Value, AwsError>,
) -> Result<Value, AwsError> {
    let caller = {
        let state = shared.lock();
        let policy = Policy {
            credentials: &state.config.credentials,
            require_known: state.config.require_known_credentials,
            skew: state.config.signature_skew,
        };
        sigv4::check(method, uri, headers, body, &policy, Utc::now())?
    };
    let Some(op) = operation else {
        return Err(AwsError::new(
            "UnknownOperationException",
            400,
            "the request names no operation of AWSMPMeteringService, AWSMPEntitlementService or AWSMPCommerceService_v20200301",
        ));
    };
    let input = input.as_ref().map_err(Clone::clone)?;
    if !input.is_object() {
        return Err(AwsError::serialization(
            "the body must be an object (a JSON or CBOR map)",
        ));
    }
    let delay = shared.lock().take_delay(op);
    if let Some(delay) = delay {
        tokio::time::sleep(delay).await;
    }
    let mut state = shared.lock();
    if let Some(failure) = state.take_failure(op) {
        return Err(AwsError::from_failure(&failure));
    }
    let now = Utc::now();
    match op {
        Operation::ResolveCustomer => metering::resolve_customer(&state, input),
        Operation::BatchMeterUsage => metering::batch_meter_usage(&mut state, input, now),
        Operation::MeterUsage => metering::meter_usage(&mut state, input, &caller, now),
        Operation::GetEntitlements => entitlement::get_entitlements(&state, input),
        Operation::SearchAgreements => agreement::search_agreements(&state, input),
        Operation::GetAgreementEntitlements => agreement::get_agreement_entitlements(&state, input),
    }
}
