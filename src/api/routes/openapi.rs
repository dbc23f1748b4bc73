//! `GET /openapi.json`: the API's OpenAPI 3.1 description, generated from the handlers'
//! annotations. `docs/openapi.json` is the same text, checked by `tests/api.rs` (regenerate with
//! `MPLINK_WRITE_OPENAPI=1 cargo test --test api openapi`).

use axum::http::header;
use axum::response::IntoResponse;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

/// The description.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "mplink HTTP API",
        description = "The buyer's path from the AWS Marketplace landing to the billing page: registrations, organizations to link (with the reason a Link button is disabled), the link, the billing view, and the link-change feed. `/v1` routes need `Authorization: Bearer <token>`; every `/v1` error is JSON `{\"code\", \"message\"}`."
    ),
    paths(
        super::register::register,
        super::registrations::get,
        super::registrations::organizations,
        super::registrations::link,
        super::billing::get,
        super::events::get,
        super::usage::report,
    ),
    components(schemas(crate::api::reasons::Reason)),
    modifiers(&BearerAuth),
    tags(
        (name = "marketplace", description = "Where AWS Marketplace sends the buyer's browser"),
        (name = "registrations", description = "The host application's Select an Organization to Link page"),
        (name = "billing", description = "The host application's billing page"),
        (name = "metering", description = "Usage the host reports, metered to AWS Marketplace hourly"),
        (name = "events", description = "Link-change events (the outbox), as `mplink events` prints them"),
    )
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The description as served and checked in: pretty JSON with a final newline.
pub fn openapi_json() -> String {
    let mut text = ApiDoc::openapi()
        .to_pretty_json()
        .unwrap_or_else(|e| serde_json::json!({ "error": e.to_string() }).to_string());
    text.push('\n');
    text
}

/// Serves the description.
pub async fn get() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], openapi_json())
}
