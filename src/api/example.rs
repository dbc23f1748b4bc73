//! The example host (`mplink serve --example`): static pages that walk the buyer's path, and a
//! small backend under `/example/api/` playing the SaaS application's server.
//!
//! The backend knows a fixed signed-in user with three organizations (one paying through another
//! marketplace, one where the user may not change billing) and their resources, and calls the
//! `/v1` router in-process with the first configured API token, exactly as a host's backend
//! would over HTTP; the token never reaches the browser. Not for production: it exists to show
//! the flow and to be driven by the browser test (tests/browser.rs).

use axum::body::Body;
use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, Path};
use axum::http::{header, HeaderValue, Method, Request, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tower::ServiceExt;

/// Largest body the example backend accepts from the browser (a link request is ~30 bytes).
const MAX_BODY_BYTES: usize = 4 * 1024;
/// Largest `/v1` answer the backend reads back.
const MAX_V1_ANSWER_BYTES: usize = 1024 * 1024;
/// Longest registration id passed on to `/v1` (mplink's own are far shorter).
const MAX_REGISTRATION_ID_LEN: usize = 128;
/// Only the pages' own script and style may run or load; the form posts to this origin.
const CONTENT_SECURITY_POLICY: &str =
    "default-src 'self'; script-src 'self'; style-src 'self'; form-action 'self'; frame-ancestors 'none'";

/// The static pages: (file name, content type, content).
const PAGES: &[(&str, &str, &str)] = &[
    ("index.html", HTML, include_str!("example/index.html")),
    (
        "aws-landing.html",
        HTML,
        include_str!("example/aws-landing.html"),
    ),
    ("select.html", HTML, include_str!("example/select.html")),
    ("billing.html", HTML, include_str!("example/billing.html")),
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_str!("example/app.js"),
    ),
    (
        "style.css",
        "text/css; charset=utf-8",
        include_str!("example/style.css"),
    ),
];
const HTML: &str = "text/html; charset=utf-8";

/// One of the signed-in user's organizations, with the billing facts the host knows about it.
#[derive(Debug, Clone, Copy)]
pub struct HostOrganization {
    /// The host's id for it (what mplink links).
    pub org_id: &'static str,
    /// Display name.
    pub name: &'static str,
    /// How it pays today, as the host's billing page would say.
    pub billing_today: &'static str,
    /// A card (or other method) is on file with the SaaS.
    pub payment_method_on_file: bool,
    /// The other marketplace it pays through, if any.
    pub other_marketplace: Option<&'static str>,
    /// Under a contract that an AWS subscription cannot replace.
    pub under_contract: bool,
    /// Whether the signed-in user's role may change its billing.
    pub can_change_billing: bool,
    /// Its resources: the SaaS's own data, which outlives any billing link.
    pub resources: &'static [Resource],
}

/// One of an organization's resources.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Resource {
    /// What it is ("cluster").
    pub kind: &'static str,
    /// Its name.
    pub name: &'static str,
    /// Its status.
    pub status: &'static str,
}

/// The signed-in user's organizations in the example.
pub const ORGANIZATIONS: &[HostOrganization] = &[
    HostOrganization {
        org_id: "org-acme",
        name: "Acme Corp",
        billing_today: "No payment method",
        payment_method_on_file: false,
        other_marketplace: None,
        under_contract: false,
        can_change_billing: true,
        resources: &[
            Resource {
                kind: "cluster",
                name: "prod-eu",
                status: "running",
            },
            Resource {
                kind: "cluster",
                name: "staging",
                status: "running",
            },
        ],
    },
    HostOrganization {
        org_id: "org-globex",
        name: "Globex",
        billing_today: "Google Cloud Marketplace",
        payment_method_on_file: false,
        other_marketplace: Some("gcp"),
        under_contract: false,
        can_change_billing: true,
        resources: &[Resource {
            kind: "cluster",
            name: "analytics",
            status: "running",
        }],
    },
    HostOrganization {
        org_id: "org-initech",
        name: "Initech",
        billing_today: "Credit card",
        payment_method_on_file: true,
        other_marketplace: None,
        under_contract: false,
        can_change_billing: false,
        resources: &[],
    },
];

/// What can go wrong in the example backend.
#[derive(Debug, thiserror::Error)]
pub enum ExampleError {
    /// No such page.
    #[error("no example page {0:?}")]
    PageNotFound(String),
    /// The registration id in the address cannot be one mplink issued.
    #[error("registration id {0:?} is not a registration id (letters, digits, '_' and '-', at most 128)")]
    BadRegistrationId(String),
    /// The organization is not one of the signed-in user's.
    #[error("organization {0:?} is not one of the signed-in user's organizations")]
    UnknownOrganization(String),
    /// The browser's request body was refused.
    #[error("request body refused: {0}")]
    BadBody(String),
    /// The browser's request body is over the limit.
    #[error("request body over {MAX_BODY_BYTES} bytes")]
    BodyTooLarge,
    /// `/v1` answered something that is not JSON.
    #[error("the mplink API answered {status} to {route} with a body that is not JSON")]
    ApiAnswer {
        /// The route called.
        route: &'static str,
        /// Its status.
        status: StatusCode,
    },
}

impl ExampleError {
    /// Stable reason code.
    pub fn code(&self) -> &'static str {
        match self {
            ExampleError::PageNotFound(_) => "page_not_found",
            ExampleError::BadRegistrationId(_) => "invalid_registration_id",
            ExampleError::UnknownOrganization(_) => "unknown_organization",
            ExampleError::BadBody(_) => "invalid_body",
            ExampleError::BodyTooLarge => "body_too_large",
            ExampleError::ApiAnswer { .. } => "bad_api_answer",
        }
    }

    fn status(&self) -> StatusCode {
        match self {
            ExampleError::PageNotFound(_) | ExampleError::UnknownOrganization(_) => {
                StatusCode::NOT_FOUND
            }
            ExampleError::BadRegistrationId(_) | ExampleError::BadBody(_) => {
                StatusCode::BAD_REQUEST
            }
            ExampleError::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ExampleError::ApiAnswer { .. } => StatusCode::BAD_GATEWAY,
        }
    }
}

impl IntoResponse for ExampleError {
    fn into_response(self) -> Response {
        tracing::warn!(code = self.code(), error = %self, "example host request refused");
        let body = json!({ "code": self.code(), "message": self.to_string() });
        (self.status(), Json(body)).into_response()
    }
}

/// The example's routes: pages under `/example/`, the host backend under `/example/api/`.
/// `v1` is a finished router serving mplink's `/v1` (authentication included); `token` is one
/// of the tokens it accepts. The routes need no state, so they merge into any router.
pub fn router<S>(v1: Router, token: SecretString) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    let backend = Backend { v1, token };
    Router::new()
        .route(
            "/example",
            get(|| async { Redirect::permanent("/example/") }),
        )
        .route("/example/", get(|| page(Path("index.html".to_string()))))
        .route("/example/{file}", get(page))
        .route(
            "/example/api/registrations/{id}/organizations",
            get(organizations),
        )
        .route("/example/api/registrations/{id}/link", post(link))
        .route("/example/api/organizations/{org_id}/billing", get(billing))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(Extension(backend))
}

async fn page(Path(file): Path<String>) -> Result<Response, ExampleError> {
    let (_, content_type, content) = PAGES
        .iter()
        .find(|(name, _, _)| *name == file)
        .ok_or(ExampleError::PageNotFound(file))?;
    let mut response = (*content).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    Ok(response)
}

/// The host's server side: calls `/v1` in-process with the token.
#[derive(Clone)]
struct Backend {
    v1: Router,
    token: SecretString,
}

impl Backend {
    /// Calls `/v1` and returns its status and JSON answer as they are.
    async fn call(
        &self,
        route: &'static str,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<(StatusCode, Value), ExampleError> {
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
        let bytes = axum::body::to_bytes(response.into_body(), MAX_V1_ANSWER_BYTES)
            .await
            .map_err(|_| ExampleError::ApiAnswer { route, status })?;
        let value = serde_json::from_slice(&bytes)
            .map_err(|_| ExampleError::ApiAnswer { route, status })?;
        Ok((status, value))
    }
}

fn registration_id(id: String) -> Result<String, ExampleError> {
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

fn host_organization(org_id: &str) -> Result<&'static HostOrganization, ExampleError> {
    ORGANIZATIONS
        .iter()
        .find(|o| o.org_id == org_id)
        .ok_or_else(|| ExampleError::UnknownOrganization(org_id.to_string()))
}

/// A `/v1` error answer passed on to the browser as it is (its `code` and `message`).
fn passed_on(status: StatusCode, answer: Value) -> Response {
    (status, Json(answer)).into_response()
}

/// The registration and the user's organizations, each with mplink's verdict on linking it.
async fn organizations(
    Extension(backend): Extension<Backend>,
    Path(id): Path<String>,
) -> Result<Response, ExampleError> {
    let id = registration_id(id)?;
    let (status, registration) = backend
        .call(
            "GET /v1/registrations/{id}",
            Method::GET,
            &format!("/v1/registrations/{id}"),
            None,
        )
        .await?;
    if !status.is_success() {
        return Ok(passed_on(status, registration));
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
    let (status, verdicts) = backend
        .call(
            "POST /v1/registrations/{id}/organizations",
            Method::POST,
            &format!("/v1/registrations/{id}/organizations"),
            Some(json!({ "organizations": facts })),
        )
        .await?;
    if !status.is_success() {
        return Ok(passed_on(status, verdicts));
    }
    let verdicts = verdicts["organizations"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let organizations: Vec<Value> = ORGANIZATIONS
        .iter()
        .map(|o| {
            let verdict = verdicts
                .iter()
                .find(|v| v["org_id"] == o.org_id)
                .cloned()
                .unwrap_or(Value::Null);
            json!({
                "org_id": o.org_id,
                "name": o.name,
                "billing_today": o.billing_today,
                // An organization mplink gave no verdict on is not offered.
                "linkable": verdict["linkable"].as_bool().unwrap_or(false),
                "reason": verdict["reason"],
                "reason_text": verdict["reason_text"],
            })
        })
        .collect();
    Ok(
        Json(json!({ "registration": registration, "organizations": organizations }))
            .into_response(),
    )
}

/// The browser's link request.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LinkBody {
    org_id: String,
}

/// Links one of the user's organizations to the registration.
async fn link(
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
    let (status, answer) = backend
        .call(
            "POST /v1/registrations/{id}/link",
            Method::POST,
            &format!("/v1/registrations/{id}/link"),
            Some(json!({ "org_id": org.org_id })),
        )
        .await?;
    Ok(passed_on(status, answer))
}

/// The billing page's view: mplink's billing view plus the host's name and resources.
async fn billing(
    Extension(backend): Extension<Backend>,
    Path(org_id): Path<String>,
) -> Result<Response, ExampleError> {
    let org = host_organization(&org_id)?;
    let (status, billing) = backend
        .call(
            "GET /v1/organizations/{org_id}/billing",
            Method::GET,
            &format!("/v1/organizations/{}/billing", org.org_id),
            None,
        )
        .await?;
    if !status.is_success() {
        return Ok(passed_on(status, billing));
    }
    Ok(Json(json!({
        "org_id": org.org_id,
        "name": org.name,
        "resources": org.resources,
        "billing": billing,
    }))
    .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_page_the_pages_refer_to_is_served() {
        for (name, _, content) in PAGES {
            for needle in ["href=\"", "src=\""] {
                for part in content.split(needle).skip(1) {
                    let target = part.split('"').next().unwrap_or_default();
                    let file = target.split('?').next().unwrap_or_default();
                    assert!(
                        PAGES.iter().any(|(n, _, _)| *n == file),
                        "{name} refers to {target}, which is not served"
                    );
                }
            }
        }
    }

    #[test]
    fn registration_ids_are_checked_before_they_reach_a_path() {
        assert!(registration_id("reg_0123abcdEF-_".into()).is_ok());
        for bad in ["", "../v1/x", "a/b", "a?b", "a%2F", &"a".repeat(129)] {
            let err = registration_id(bad.into()).expect_err(bad);
            assert_eq!(err.code(), "invalid_registration_id");
        }
    }

    #[test]
    fn the_example_has_a_linkable_organization_and_two_that_are_not() {
        let linkable = ORGANIZATIONS
            .iter()
            .filter(|o| o.other_marketplace.is_none() && o.can_change_billing)
            .count();
        assert_eq!(linkable, 1);
        assert!(ORGANIZATIONS.iter().any(|o| o.other_marketplace.is_some()));
        assert!(host_organization("org-nope").is_err());
    }
}
