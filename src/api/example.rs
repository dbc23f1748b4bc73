//! The example host (`mplink serve --example`): static pages that walk the buyer's path, and a
//! small backend under `/example/api/` playing the SaaS application's server.
//!
//! The backend knows a fixed signed-in user with three organizations (one paying through another
//! marketplace, one where the user may not change billing) and their resources, and calls the
//! `/v1` router in-process with the first configured API token, exactly as a host's backend
//! would over HTTP; the token never reaches the browser. Not for production: it exists to show
//! the flow and to be driven by the browser test (tests/browser/).

mod backend;
mod host;

pub use host::{HostOrganization, Resource, ORGANIZATIONS, SIGNED_IN_USER};

use super::error::ErrorCode;
use axum::extract::{DefaultBodyLimit, Path};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use backend::{billing, link, organizations, Backend};
use secrecy::SecretString;
use serde_json::json;

/// Largest body the example backend accepts from the browser (a link request is ~30 bytes).
const MAX_BODY_BYTES: usize = 4 * 1024;
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
    /// `/v1` answered something that is not JSON, or not of the shape it documents.
    #[error(
        "the mplink API answered {status} to {route} with a body that is not what it documents"
    )]
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
        let mut response = (self.status(), Json(body)).into_response();
        // Counted in mplink_api_errors_total like /v1's errors (api::middleware::count_errors).
        response.extensions_mut().insert(ErrorCode(self.code()));
        response
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

#[cfg(test)]
mod tests {
    use super::backend::registration_id;
    use super::host::host_organization;
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
