//! `GET /openapi.json`: the API's OpenAPI 3.1 description, generated from the handlers'
//! annotations. `docs/openapi.json` is the same text, checked by `tests/app/api.rs` (regenerate with
//! `MPLINK_WRITE_OPENAPI=1 cargo test --test app api::openapi`), and Schemathesis checks the
//! server against it in CI (`scripts/schemathesis.sh`).

use axum::http::header;
use axum::response::IntoResponse;
use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::schema::{Object, ObjectBuilder, Schema, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder};
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
        super::org_usage::get,
        super::history::get,
    ),
    components(schemas(crate::api::reasons::Reason)),
    modifiers(&BearerAuth, &Constraints, &CommonAnswers),
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

/// The limits the handlers enforce, as schema constraints a generated client can know: the id
/// rule's pattern and lengths are generated from [`crate::org`], so they cannot drift.
struct Constraints;

impl Modify for Constraints {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use crate::metering::MAX_ID_CHARS;
        use crate::org::MAX_CHARS;
        let pattern = crate::org::pattern();
        let constrain = |object: &mut Object, max: usize| {
            object.min_length = Some(1);
            object.max_length = Some(max);
            object.pattern = Some(pattern.clone());
        };
        if let Some(components) = openapi.components.as_mut() {
            for (schema, property, max) in [
                ("CandidateOrganization", "org_id", MAX_CHARS),
                ("LinkBody", "org_id", MAX_CHARS),
                ("LinkBody", "user_id", MAX_CHARS),
                ("OrganizationsRequest", "user_id", MAX_CHARS),
                ("UsageBody", "org_id", MAX_CHARS),
                ("UsageBody", "idempotency_key", MAX_ID_CHARS),
                ("UsageBody", "dimension", MAX_ID_CHARS),
            ] {
                if let Some(RefOr::T(Schema::Object(object))) = components.schemas.get_mut(schema) {
                    if let Some(RefOr::T(Schema::Object(field))) =
                        object.properties.get_mut(property)
                    {
                        constrain(field, max);
                    }
                }
            }
            if let Some(RefOr::T(Schema::Object(usage))) = components.schemas.get_mut("UsageBody") {
                if let Some(RefOr::T(Schema::Object(tags))) = usage.properties.get_mut("tags") {
                    constrain_tags(tags);
                }
            }
            if let Some(RefOr::T(Schema::Object(request))) =
                components.schemas.get_mut("OrganizationsRequest")
            {
                if let Some(RefOr::T(Schema::Array(list))) =
                    request.properties.get_mut("organizations")
                {
                    list.max_items = Some(super::registrations::MAX_ORGANIZATIONS);
                }
            }
        }
        for (path, item) in openapi.paths.paths.iter_mut() {
            for operation in [item.get.as_mut(), item.post.as_mut()]
                .into_iter()
                .flatten()
            {
                for parameter in operation.parameters.iter_mut().flatten() {
                    let RefOr::T(parameter) = parameter else {
                        continue;
                    };
                    let Some(RefOr::T(Schema::Object(object))) = parameter.schema.as_mut() else {
                        continue;
                    };
                    match (path.as_str(), parameter.name.as_str()) {
                        (_, "org_id") => constrain(object, MAX_CHARS),
                        (p, "id") if p.starts_with("/v1/registrations/") => {
                            object.pattern = Some(super::REGISTRATION_ID_PATTERN.to_string());
                        }
                        _ => {}
                    }
                }
            }
        }
    }
}

/// AWS's rules for allocation tags ([`crate::tags`]) on a tag map.
fn constrain_tags(tags: &mut Object) {
    use crate::tags::{MAX_KEY_CHARS, MAX_TAGS, MAX_VALUE_CHARS, PATTERN};
    let text = |max: usize| {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .min_length(Some(1))
            .max_length(Some(max))
            .pattern(Some(PATTERN))
            .build()
    };
    tags.max_properties = Some(MAX_TAGS);
    tags.property_names = Some(Box::new(Schema::Object(text(MAX_KEY_CHARS))));
    tags.additional_properties = Some(Box::new(
        utoipa::openapi::schema::AdditionalProperties::RefOr(RefOr::T(Schema::Object(text(
            MAX_VALUE_CHARS,
        )))),
    ));
}

/// What every `/v1` route may answer besides its own statuses: 401 (with `WWW-Authenticate`),
/// 503 `unavailable`, and for a route with a body 400, 408, 413, 415 and 422.
struct CommonAnswers;

impl Modify for CommonAnswers {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let error = |description: &str| {
            ResponseBuilder::new().description(description).content(
                "application/json",
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name("ErrorBody")))
                    .build(),
            )
        };
        let string = || ObjectBuilder::new().schema_type(Type::String).build();
        for (path, item) in openapi.paths.paths.iter_mut() {
            if !path.starts_with("/v1/") {
                continue;
            }
            for operation in [item.get.as_mut(), item.post.as_mut()]
                .into_iter()
                .flatten()
            {
                let mut answers = vec![
                    (
                        "401",
                        error("`unauthorized`: no bearer token, or not a configured one")
                            .header(
                                "WWW-Authenticate",
                                HeaderBuilder::new().schema(Some(string())).build(),
                            )
                            .build(),
                    ),
                    (
                        "503",
                        error("`unavailable`: the database did not answer; retry")
                            .header(
                                "Retry-After",
                                HeaderBuilder::new().schema(Some(string())).build(),
                            )
                            .build(),
                    ),
                ];
                if operation.request_body.is_some() {
                    answers.extend([
                        ("400", error("`malformed_json`: the body is not JSON").build()),
                        (
                            "408",
                            error("`body_timeout`: the body did not arrive within the body timeout")
                                .build(),
                        ),
                        ("413", error("`body_too_large`: the body is over 64 KiB").build()),
                        (
                            "415",
                            error("`unsupported_media_type`: not `Content-Type: application/json`")
                                .build(),
                        ),
                        (
                            "422",
                            error("`invalid_body` (a missing, unknown or mistyped field) or `invalid_field` (a refused value, named)")
                                .build(),
                        ),
                    ]);
                }
                for (status, answer) in answers {
                    operation
                        .responses
                        .responses
                        .entry(status.to_string())
                        .or_insert(RefOr::T(answer));
                }
            }
        }
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
