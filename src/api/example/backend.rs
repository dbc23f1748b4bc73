//! The example host's server side: checks what the browser sends, then calls `/v1` in-process
//! with the token, as a host's backend would over HTTP, and adds the host's own data.

use super::host::{host_organization, ORGANIZATIONS, SIGNED_IN_USER};
use super::ExampleError;
use crate::api::error::ErrorCode;
use axum::body::Body;
use axum::extract::rejection::JsonRejection;
use axum::extract::Path;
use axum::http::{header, Method, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json, Router};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::{json, Value};
use tower::ServiceExt;

/// Largest `/v1` answer the backend reads back.
const MAX_V1_ANSWER_BYTES: usize = 1024 * 1024;
/// Longest registration id passed on to `/v1` (mplink's own are far shorter).
const MAX_REGISTRATION_ID_LEN: usize = 128;

/// The host's server side: calls `/v1` in-process with the token.
#[derive(Clone)]
pub(super) struct Backend {
    pub(super) v1: Router,
    pub(super) token: SecretString,
}

/// What `/v1` answered.
struct V1Answer {
    status: StatusCode,
    body: Value,
    /// The error code /v1 counted, carried on so the passed-on error is counted too.
    code: Option<ErrorCode>,
}

impl V1Answer {
    /// The answer passed on to the browser as it is (an error keeps its `code` and `message`).
    fn passed_on(self) -> Response {
        let mut response = (self.status, Json(self.body)).into_response();
        if let Some(code) = self.code {
            response.extensions_mut().insert(code);
        }
        response
    }
}

impl Backend {
    /// Calls `/v1` and returns its answer as it is.
    async fn call(
        &self,
        route: &'static str,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<V1Answer, ExampleError> {
        let bearer = format!("Bearer {}", self.token.expose_secret());
        let builder = Request::builder()
            .method(method)
            .uri(path)
            .header(header::AUTHORIZATION, bearer)
            .header(header::ACCEPT, "application/json");
        let request = match body {
            Some(body) => builder
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(body.to_string())),
            None => builder.body(Body::empty()),
        };
        // The path is built from checked parts, so building cannot fail; answer 400 if it does.
        let request = request.map_err(|e| ExampleError::BadBody(e.to_string()))?;
        let response = match self.v1.clone().oneshot(request).await {
            Ok(response) => response,
            Err(never) => match never {},
        };
        let status = response.status();
        let code = response.extensions().get::<ErrorCode>().copied();
        let bytes = axum::body::to_bytes(response.into_body(), MAX_V1_ANSWER_BYTES)
            .await
            .map_err(|_| ExampleError::ApiAnswer { route, status })?;
        let value = serde_json::from_slice(&bytes)
            .map_err(|_| ExampleError::ApiAnswer { route, status })?;
        Ok(V1Answer {
            status,
            body: value,
            code,
        })
    }
}

/// The registration id from the address, if it can be one mplink issued (it goes into a path).
pub(super) fn registration_id(id: String) -> Result<String, ExampleError> {
    let valid = !id.is_empty()
        && id.len() <= MAX_REGISTRATION_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if valid {
        Ok(id)
    } else {
        Err(ExampleError::BadRegistrationId(id))
    }
}

/// The registration and the user's organizations, each with mplink's verdict on linking it.
pub(super) async fn organizations(
    Extension(backend): Extension<Backend>,
    Path(id): Path<String>,
) -> Result<Response, ExampleError> {
    let id = registration_id(id)?;
    let registration = backend
        .call(
            "GET /v1/registrations/{id}",
            Method::GET,
            &format!("/v1/registrations/{id}"),
            None,
        )
        .await?;
    if !registration.status.is_success() {
        return Ok(registration.passed_on());
    }
    let facts: Vec<Value> = ORGANIZATIONS
        .iter()
        .map(|o| {
            json!({
                "org_id": o.org_id,
                "payment_method_on_file": o.payment_method_on_file,
                "other_marketplace": o.other_marketplace,
                "under_contract": o.under_contract,
                "can_change_billing": o.can_change_billing,
            })
        })
        .collect();
    let verdicts = backend
        .call(
            "POST /v1/registrations/{id}/organizations",
            Method::POST,
            &format!("/v1/registrations/{id}/organizations"),
            Some(json!({ "user_id": SIGNED_IN_USER, "organizations": facts })),
        )
        .await?;
    if !verdicts.status.is_success() {
        return Ok(verdicts.passed_on());
    }
    const ROUTE: &str = "POST /v1/registrations/{id}/organizations";
    let status = verdicts.status;
    let unexpected = || ExampleError::ApiAnswer {
        route: ROUTE,
        status,
    };
    let verdicts = verdicts.body["organizations"]
        .as_array()
        .ok_or_else(unexpected)?;
    let mut organizations = Vec::with_capacity(ORGANIZATIONS.len());
    for o in ORGANIZATIONS {
        // Every organization asked about gets a verdict; one without is /v1 misbehaving.
        let verdict = verdicts
            .iter()
            .find(|v| v["org_id"] == o.org_id)
            .ok_or_else(unexpected)?;
        let linkable = verdict["linkable"].as_bool().ok_or_else(unexpected)?;
        organizations.push(json!({
            "org_id": o.org_id,
            "name": o.name,
            "billing_today": o.billing_today,
            "linkable": linkable,
            "reason": verdict["reason"],
            "reason_text": verdict["reason_text"],
        }));
    }
    Ok(
        Json(json!({ "registration": registration.body, "organizations": organizations }))
            .into_response(),
    )
}

/// The browser's link request.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct LinkBody {
    org_id: String,
}

/// Links one of the user's organizations to the registration.
pub(super) async fn link(
    Extension(backend): Extension<Backend>,
    Path(id): Path<String>,
    body: Result<Json<LinkBody>, JsonRejection>,
) -> Result<Response, ExampleError> {
    let id = registration_id(id)?;
    let Json(body) = body.map_err(|e| match e.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ExampleError::BodyTooLarge,
        _ => ExampleError::BadBody(e.body_text()),
    })?;
    let org = host_organization(&body.org_id)?;
    let answer = backend
        .call(
            "POST /v1/registrations/{id}/link",
            Method::POST,
            &format!("/v1/registrations/{id}/link"),
            Some(json!({ "user_id": SIGNED_IN_USER, "org_id": org.org_id })),
        )
        .await?;
    Ok(answer.passed_on())
}

/// The billing page's view: mplink's billing view and this month's usage, plus the host's name
/// and resources.
pub(super) async fn billing(
    Extension(backend): Extension<Backend>,
    Path(org_id): Path<String>,
) -> Result<Response, ExampleError> {
    let org = host_organization(&org_id)?;
    let billing = backend
        .call(
            "GET /v1/organizations/{org_id}/billing",
            Method::GET,
            &format!("/v1/organizations/{}/billing", org.org_id),
            None,
        )
        .await?;
    if !billing.status.is_success() {
        return Ok(billing.passed_on());
    }
    // This month's metered usage, hour by hour, as the host's billing page would show it.
    let usage = backend
        .call(
            "GET /v1/organizations/{org_id}/usage",
            Method::GET,
            &format!("/v1/organizations/{}/usage", org.org_id),
            None,
        )
        .await?;
    if !usage.status.is_success() {
        return Ok(usage.passed_on());
    }
    Ok(Json(json!({
        "org_id": org.org_id,
        "name": org.name,
        "resources": org.resources,
        "billing": billing.body,
        "usage": usage.body["hours"],
    }))
    .into_response())
}
