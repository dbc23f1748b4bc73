//! `POST /marketplace/register`: where AWS Marketplace sends the buyer's browser. Resolves the
//! token with ResolveCustomer, stores a registration and redirects (303) to the host's "Select
//! an Organization to Link" page. Every failure is an HTML page telling the buyer what to do,
//! never a 500 or a stack trace; nothing here echoes what the browser sent.

use crate::api::state::ApiState;
use crate::event::normalize_identifier;
use crate::store::{NewRegistration, Registration};
use crate::time::now_ms;
use aws_sdk_marketplacemetering::operation::resolve_customer::{
    ResolveCustomerError, ResolveCustomerOutput,
};
use axum::extract::rejection::FormRejection;
use axum::extract::{Form, State};
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

/// Longest registration token accepted (AWS's are a few hundred characters).
pub const MAX_TOKEN_CHARS: usize = 4096;
/// Longest identifier accepted from ResolveCustomer.
const MAX_IDENTIFIER_CHARS: usize = 512;
/// Longest offer type kept.
const MAX_OFFER_TYPE_CHARS: usize = 64;

/// What the buyer is told to do after every failure here.
pub const TRY_AGAIN: &str =
    "Return to Manage Subscriptions in AWS Marketplace and click Set Up Your Account again.";

/// The form AWS Marketplace posts. Other fields are ignored: AWS may add some, and refusing
/// them would strand the buyer.
#[derive(Debug, Deserialize, ToSchema)]
pub struct RegisterForm {
    /// The registration token to resolve (printable ASCII; without it the buyer gets the 400
    /// page).
    #[serde(rename = "x-amzn-marketplace-token")]
    #[schema(required, min_length = 1, max_length = 4096, pattern = "^[!-~]+$")]
    pub token: Option<String>,
    /// The offer type, e.g. `free-trial`.
    #[serde(rename = "x-amzn-marketplace-offer-type")]
    pub offer_type: Option<String>,
}

/// Why a landing failed: each is one page and one `mplink_registrations_total` outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// No token, or one that cannot be a token.
    BadRequest,
    /// AWS: InvalidTokenException.
    InvalidToken,
    /// AWS: ExpiredTokenException, or a registration that expired since.
    ExpiredToken,
    /// AWS throttled (after the SDK's retries) or failed, or the database did not answer.
    Unavailable,
    /// A product this SaaS does not sell, or an answer without identifiers.
    WrongProduct,
    /// This client address landed too often (`--register-per-minute`, `--register-burst`).
    RateLimited,
    /// Every ResolveCustomer slot stayed busy (`--resolve-concurrency`).
    Busy,
}

impl Failure {
    /// The metric label.
    pub fn outcome(self) -> &'static str {
        match self {
            Failure::BadRequest => "bad_request",
            Failure::InvalidToken => "invalid_token",
            Failure::ExpiredToken => "expired_token",
            Failure::Unavailable => "unavailable",
            Failure::WrongProduct => "wrong_product",
            Failure::RateLimited => "rate_limited",
            Failure::Busy => "busy",
        }
    }

    fn status(self) -> StatusCode {
        match self {
            Failure::Unavailable | Failure::Busy => StatusCode::SERVICE_UNAVAILABLE,
            Failure::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            // A well-formed landing whose registration AWS (or this seller) will not honour:
            // refused, not malformed.
            Failure::InvalidToken | Failure::ExpiredToken | Failure::WrongProduct => {
                StatusCode::FORBIDDEN
            }
            Failure::BadRequest => StatusCode::BAD_REQUEST,
        }
    }

    fn words(self) -> (&'static str, &'static str) {
        match self {
            Failure::BadRequest => (
                "We could not read your AWS Marketplace registration",
                "This page is opened by AWS Marketplace when you set up your account, and the registration it sent was missing or damaged.",
            ),
            Failure::InvalidToken => (
                "We could not verify your AWS Marketplace registration",
                "AWS Marketplace did not recognise the registration your browser sent.",
            ),
            Failure::ExpiredToken => (
                "Your AWS Marketplace registration has expired",
                "The registration AWS Marketplace sent is only valid for a few hours, and this one has expired.",
            ),
            Failure::Unavailable => (
                "We could not complete your registration right now",
                "AWS Marketplace or our service is busy at the moment. Wait a minute before trying again.",
            ),
            Failure::WrongProduct => (
                "This subscription cannot be set up here",
                "The AWS Marketplace subscription is for a product this service does not provide.",
            ),
            Failure::RateLimited => (
                "Too many attempts from your network",
                "We received many registrations from your network in a short time. Wait a minute before trying again.",
            ),
            Failure::Busy => (
                "We could not complete your registration right now",
                "Many buyers are registering at the moment. Wait a minute before trying again.",
            ),
        }
    }

    /// The page.
    pub fn page(self) -> Response {
        let (title, what) = self.words();
        let html = format!(
            "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
             <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
             <title>{title}</title></head>\n<body><main>\n<h1>{title}</h1>\n<p>{what}</p>\n\
             <p><strong>{TRY_AGAIN}</strong></p>\n</main></body></html>\n"
        );
        let mut response = (self.status(), Html(html)).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CACHE_CONTROL,
            header::HeaderValue::from_static("no-store"),
        );
        if matches!(
            self,
            Failure::RateLimited | Failure::Busy | Failure::Unavailable
        ) {
            headers.insert(header::RETRY_AFTER, header::HeaderValue::from_static("60"));
        }
        response
    }
}

/// SHA-256 (hex) of a token: what is stored in its place.
pub fn token_sha256(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// A fresh registration id: `reg_` and 128 random bits in hex.
pub fn new_registration_id() -> String {
    format!("reg_{}", hex::encode(rand::random::<[u8; 16]>()))
}

/// Maps ResolveCustomer's error to the buyer's page.
fn failure_of(e: &aws_sdk_marketplacemetering::error::SdkError<ResolveCustomerError>) -> Failure {
    match e.as_service_error() {
        Some(ResolveCustomerError::InvalidTokenException(_)) => Failure::InvalidToken,
        Some(ResolveCustomerError::ExpiredTokenException(_)) => Failure::ExpiredToken,
        _ => Failure::Unavailable,
    }
}

/// The registration ResolveCustomer's answer describes, checked: a product code and at least one
/// identifier, none absurdly long.
fn registration_of(
    out: &ResolveCustomerOutput,
    token: &str,
    offer_type: Option<String>,
    state: &ApiState,
) -> Result<NewRegistration, Failure> {
    let field = |v: Option<&str>| -> Result<Option<String>, Failure> {
        match v.and_then(normalize_identifier) {
            Some(v) if v.chars().count() > MAX_IDENTIFIER_CHARS => Err(Failure::WrongProduct),
            other => Ok(other.map(str::to_owned)),
        }
    };
    let product_code = field(out.product_code())?.ok_or(Failure::WrongProduct)?;
    let account = field(out.customer_aws_account_id())?;
    let license = field(out.license_arn())?;
    let customer = field(out.customer_identifier())?;
    if account.is_none() && license.is_none() && customer.is_none() {
        return Err(Failure::WrongProduct);
    }
    if !state.product_codes.is_empty() && !state.product_codes.contains(&product_code) {
        return Err(Failure::WrongProduct);
    }
    let now = now_ms();
    Ok(NewRegistration {
        id: new_registration_id(),
        token_sha256: token_sha256(token),
        product_code,
        customer_aws_account_id: account,
        license_arn: license,
        customer_identifier: customer,
        offer_type,
        created_at_ms: now,
        expires_at_ms: now + state.registration_ttl.as_millis() as i64,
    })
}

/// The posted offer type, when it looks like one (letters, digits, `-` and `_`).
fn offer_type(raw: Option<&str>) -> Option<String> {
    let value = raw.and_then(normalize_identifier)?;
    let plausible = value.chars().count() <= MAX_OFFER_TYPE_CHARS
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !plausible {
        tracing::warn!(
            bytes = value.len(),
            "ignoring an x-amzn-marketplace-offer-type that is not a plausible offer type"
        );
    }
    plausible.then(|| value.to_string())
}

/// The buyer's landing from AWS Marketplace.
#[utoipa::path(
    post,
    path = "/marketplace/register",
    tag = "marketplace",
    request_body(content = RegisterForm, content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 303, description = "Registered: on to the host's Select an Organization to Link page with `registration=<id>`",
            headers(("Location" = String, description = "The select-organization URL with the registration id"))),
        (status = 400, description = "HTML page: no token, or one that cannot be a token", content_type = "text/html", body = String),
        (status = 403, description = "HTML page: AWS called the token invalid or expired, or it is for a product not sold here", content_type = "text/html", body = String),
        (status = 429, description = "HTML page: this client address landed too often (`--register-per-minute`, `--register-burst`); `Retry-After` says when to come back", content_type = "text/html", body = String,
            headers(("Retry-After" = String, description = "Seconds"))),
        (status = 503, description = "HTML page: AWS Marketplace throttled or failed after a retry, every ResolveCustomer slot stayed busy, or the database is unavailable", content_type = "text/html", body = String,
            headers(("Retry-After" = String, description = "Seconds"))),
    )
)]
pub async fn register(
    State(state): State<ApiState>,
    form: Result<Form<RegisterForm>, FormRejection>,
) -> Response {
    match try_register(&state, form).await {
        Ok((registration, repeated)) => {
            let outcome = if repeated { "repeated" } else { "registered" };
            state
                .metrics
                .registrations
                .with_label_values(&[outcome])
                .inc();
            tracing::info!(
                registration = %super::short_registration_id(&registration.id),
                outcome,
                "buyer registered"
            );
            let location = state
                .select_organization_url
                .with_registration(&registration.id);
            let mut response = StatusCode::SEE_OTHER.into_response();
            match header::HeaderValue::from_str(&location) {
                Ok(value) => {
                    let headers = response.headers_mut();
                    headers.insert(header::LOCATION, value);
                    // The registration id is a capability: no cache keeps it.
                    headers.insert(
                        header::CACHE_CONTROL,
                        header::HeaderValue::from_static("no-store"),
                    );
                    response
                }
                Err(_) => Failure::Unavailable.page(),
            }
        }
        Err(failure) => {
            state
                .metrics
                .registrations
                .with_label_values(&[failure.outcome()])
                .inc();
            failure.page()
        }
    }
}

async fn try_register(
    state: &ApiState,
    form: Result<Form<RegisterForm>, FormRejection>,
) -> Result<(Registration, bool), Failure> {
    let Form(form) = form.map_err(|e| {
        tracing::info!(status = e.status().as_u16(), "unreadable registration form");
        Failure::BadRequest
    })?;
    let token = form
        .token
        .as_deref()
        .map(str::trim)
        .filter(|t| !t.is_empty() && t.len() <= MAX_TOKEN_CHARS)
        .filter(|t| t.chars().all(|c| c.is_ascii_graphic()))
        .ok_or_else(|| {
            tracing::info!("registration without a plausible x-amzn-marketplace-token");
            Failure::BadRequest
        })?;
    let unavailable = |e: crate::store::StoreError| {
        tracing::error!(error = %e, "registration: database failed");
        Failure::Unavailable
    };
    // The same token again (a reload, a double click) is the same registration, and AWS is not
    // asked twice (it may answer a resubmitted token with ExpiredTokenException).
    if let Some(known) = state
        .store
        .registration_by_token(&token_sha256(token))
        .await
        .map_err(unavailable)?
    {
        if known.expired(now_ms()) && known.linked_org_id.is_none() {
            return Err(Failure::ExpiredToken);
        }
        return Ok((known, true));
    }
    // A token AWS refused a moment ago gets the same answer without asking again.
    if let Some(failure) = state.guards.refused(token) {
        tracing::info!(
            outcome = failure.outcome(),
            "a token AWS refused recently, answered from memory"
        );
        return Err(failure);
    }
    let Some(_slot) = state.guards.resolve_slot().await else {
        tracing::warn!("every ResolveCustomer slot stayed busy; the buyer is asked to retry");
        return Err(Failure::Busy);
    };
    let resolved = state
        .metering
        .resolve_customer()
        .registration_token(token)
        .send()
        .await
        .map_err(|e| {
            let failure = failure_of(&e);
            if matches!(failure, Failure::InvalidToken | Failure::ExpiredToken) {
                state.guards.remember_refusal(token, failure);
            }
            // AWS's code and message only: the SDK error's Debug form is a kilobyte of request
            // metadata per failure, which an attacker could make us write at will.
            tracing::warn!(
                error = %crate::aws::error_summary(&e),
                outcome = failure.outcome(),
                "ResolveCustomer failed"
            );
            failure
        })?;
    let new = registration_of(
        &resolved,
        token,
        offer_type(form.offer_type.as_deref()),
        state,
    )
    .inspect_err(|_| {
        tracing::warn!(
            product_code = resolved.product_code().unwrap_or(""),
            "ResolveCustomer named a product not sold here or no customer"
        )
    })?;
    let stored = state
        .store
        .create_registration(&new)
        .await
        .map_err(unavailable)?;
    let repeated = stored.id != new.id;
    Ok((stored, repeated))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registration_ids_carry_128_random_bits() {
        let a = new_registration_id();
        let b = new_registration_id();
        assert_ne!(a, b);
        assert_eq!(a.len(), 4 + 32);
        assert!(crate::api::routes::check_registration_id(&a));
    }

    #[test]
    fn offer_types_are_kept_only_when_plausible() {
        assert_eq!(
            offer_type(Some(" free-trial ")).as_deref(),
            Some("free-trial")
        );
        assert_eq!(offer_type(Some("<script>")), None);
        assert_eq!(offer_type(Some(&"a".repeat(65))), None);
        assert_eq!(offer_type(None), None);
    }

    #[test]
    fn every_page_says_what_to_do_and_nothing_else_of_the_request() {
        for f in [
            Failure::BadRequest,
            Failure::InvalidToken,
            Failure::ExpiredToken,
            Failure::Unavailable,
            Failure::WrongProduct,
            Failure::RateLimited,
            Failure::Busy,
        ] {
            assert_ne!(f.status(), StatusCode::INTERNAL_SERVER_ERROR);
            let (title, what) = f.words();
            assert!(!title.is_empty() && !what.is_empty());
        }
        assert_eq!(
            Failure::Unavailable.status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(Failure::ExpiredToken.status(), StatusCode::FORBIDDEN);
        assert_eq!(Failure::BadRequest.status(), StatusCode::BAD_REQUEST);
    }
}
