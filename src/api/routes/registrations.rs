//! `/v1/registrations/{id}`: the registration, which of the user's organizations can be
//! linked to it (and why not), and the link.

use super::billing::{self, BillingView};
use super::{check_org_id, check_registration_id, short_registration_id};
use crate::api::error::{ApiError, ApiJson, ErrorBody};
use crate::api::reasons::{Facts, Reason};
use crate::api::state::ApiState;
use crate::store::{link_key, still_billing, LinkRefusal, Registration, RegistrationLink};
use crate::time::now_ms;
use crate::time::rfc3339_millis;
use axum::extract::{Path, State};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Most organizations one request may ask about.
pub const MAX_ORGANIZATIONS: usize = 100;

/// A registration as the host sees it.
#[derive(Debug, Serialize, ToSchema)]
pub struct RegistrationView {
    /// Opaque id.
    pub id: String,
    /// Marketplace product code.
    pub product_code: String,
    /// The buyer's AWS account id.
    pub customer_aws_account_id: Option<String>,
    /// License ARN.
    pub license_arn: Option<String>,
    /// Legacy customer identifier, when AWS returned one.
    pub customer_identifier: Option<String>,
    /// `x-amzn-marketplace-offer-type` as AWS posted it (e.g. `free-trial`).
    pub offer_type: Option<String>,
    /// When the buyer landed (RFC 3339).
    pub created_at: String,
    /// After this no organization can be linked through it (RFC 3339).
    pub expires_at: String,
    /// Whether it has expired.
    pub expired: bool,
    /// The organization linked through it.
    pub linked_org_id: Option<String>,
    /// The host's user it belongs to: the first `user_id` that asked about or linked through it.
    pub claimed_by: Option<String>,
}

impl RegistrationView {
    fn of(r: &Registration, now: i64) -> RegistrationView {
        RegistrationView {
            id: r.id.clone(),
            product_code: r.product_code.clone(),
            customer_aws_account_id: r.customer_aws_account_id.clone(),
            license_arn: r.license_arn.clone(),
            customer_identifier: r.customer_identifier.clone(),
            offer_type: r.offer_type.clone(),
            created_at: rfc3339_millis(r.created_at_ms),
            expires_at: rfc3339_millis(r.expires_at_ms),
            expired: r.expired(now),
            linked_org_id: r.linked_org_id.clone(),
            claimed_by: r.claimed_by.clone(),
        }
    }
}

/// The signed-in user's candidate organizations, with what the host knows of their billing.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OrganizationsRequest {
    /// The signed-in user's stable id in the host (the organization id rule applies): the
    /// first user claims the registration, any other gets 403 `registration_claimed`.
    #[schema(example = "user-81")]
    pub user_id: String,
    /// At most 100.
    pub organizations: Vec<CandidateOrganization>,
}

/// One organization and the host's facts about it.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CandidateOrganization {
    /// The host's organization id (1-128 characters, no control characters).
    pub org_id: String,
    /// A payment method (a card) is on file: linking replaces it.
    #[serde(default)]
    pub payment_method_on_file: bool,
    /// The other marketplace it pays through (e.g. "gcp"), or null.
    #[serde(default)]
    pub other_marketplace: Option<String>,
    /// Under a contract that an AWS Marketplace subscription cannot replace.
    #[serde(default)]
    pub under_contract: bool,
    /// The signed-in user's role may change this organization's billing.
    pub can_change_billing: bool,
    /// The product code the organization uses, when the host sells several; null: any.
    #[serde(default)]
    pub product_code: Option<String>,
}

/// The answer for one organization.
#[derive(Debug, Serialize, ToSchema)]
pub struct OrganizationAnswer {
    /// The organization.
    pub org_id: String,
    /// Whether its Link button is enabled.
    pub linkable: bool,
    /// Why not, when not linkable.
    pub reason: Option<Reason>,
    /// The disabled Link button's tooltip.
    pub reason_text: Option<&'static str>,
    /// Linking replaces the payment method on file (tell the user before they click).
    pub replaces_payment_method: bool,
}

/// The answers, in request order.
#[derive(Debug, Serialize, ToSchema)]
pub struct OrganizationsResponse {
    /// The registration asked about.
    pub registration_id: String,
    /// One answer per organization.
    pub organizations: Vec<OrganizationAnswer>,
}

/// The organization to link.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LinkBody {
    /// The signed-in user's stable id in the host (see `OrganizationsRequest.user_id`).
    #[schema(example = "user-81")]
    pub user_id: String,
    /// The host's organization id.
    pub org_id: String,
}

/// Registration `id`, claimed for `user_id` if nobody has it yet; another user's is refused.
async fn claim(state: &ApiState, id: &str, user_id: &str) -> Result<Registration, ApiError> {
    check_org_id("user_id", user_id)?;
    if !check_registration_id(id) {
        return Err(ApiError::RegistrationNotFound { id: id.to_string() });
    }
    let registration = state
        .store
        .claim_registration(id, user_id, now_ms())
        .await?
        .ok_or_else(|| ApiError::RegistrationNotFound { id: id.to_string() })?;
    if registration.claimed_by.as_deref() != Some(user_id) {
        tracing::warn!(
            registration = %short_registration_id(id),
            "a second user asked for a claimed registration"
        );
        return Err(ApiError::RegistrationClaimed { id: id.to_string() });
    }
    Ok(registration)
}

async fn load(state: &ApiState, id: &str) -> Result<Registration, ApiError> {
    let not_found = || ApiError::RegistrationNotFound { id: id.to_string() };
    if !check_registration_id(id) {
        return Err(not_found());
    }
    state.store.registration(id).await?.ok_or_else(not_found)
}

/// A registration.
#[utoipa::path(
    get,
    path = "/v1/registrations/{id}",
    operation_id = "get_registration",
    tag = "registrations",
    params(("id" = String, Path, description = "The registration id the buyer's browser carried (`registration` query parameter)")),
    responses(
        (status = 200, description = "The registration", body = RegistrationView),
        (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
        (status = 404, description = "`registration_not_found`", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn get(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<RegistrationView>, ApiError> {
    let registration = load(&state, &id).await?;
    Ok(Json(RegistrationView::of(&registration, now_ms())))
}

/// Which organizations can be linked to the registration, each with the reason when not.
#[utoipa::path(
    post,
    path = "/v1/registrations/{id}/organizations",
    operation_id = "check_organizations",
    tag = "registrations",
    params(("id" = String, Path, description = "The registration id")),
    request_body = OrganizationsRequest,
    responses(
        (status = 200, description = "One answer per organization, in request order", body = OrganizationsResponse),
        (status = 400, description = "Malformed JSON", body = ErrorBody),
        (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
        (status = 403, description = "`registration_claimed`: another `user_id` claimed this registration first", body = ErrorBody),
        (status = 404, description = "`registration_not_found`", body = ErrorBody),
        (status = 413, description = "Body over 64 KiB", body = ErrorBody),
        (status = 415, description = "Not `application/json`", body = ErrorBody),
        (status = 422, description = "Unknown or missing field, invalid value", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn organizations(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    ApiJson(request): ApiJson<OrganizationsRequest>,
) -> Result<Json<OrganizationsResponse>, ApiError> {
    if request.organizations.len() > MAX_ORGANIZATIONS {
        return Err(ApiError::field(
            "organizations",
            format!(
                "{} organizations; at most {MAX_ORGANIZATIONS} per request",
                request.organizations.len()
            ),
        ));
    }
    // An organization listed twice is answered twice, alike: refusing it would be a rule no
    // schema can state (JSON Schema's uniqueItems compares whole entries).
    for (i, org) in request.organizations.iter().enumerate() {
        check_org_id(&format!("organizations[{i}].org_id"), &org.org_id)?;
    }
    let registration = claim(&state, &id, &request.user_id).await?;
    let now = now_ms();
    let key = registration.link_key();
    let holder = match &key {
        Some(key) => state.store.link_key_holder(key).await?,
        None => None,
    };
    let product_sold =
        state.product_codes.is_empty() || state.product_codes.contains(&registration.product_code);
    let mut answers = Vec::with_capacity(request.organizations.len());
    for org in &request.organizations {
        let mine = |o: &Option<String>| o.as_deref() == Some(org.org_id.as_str());
        let linked_here = mine(&registration.linked_org_id) || mine(&holder);
        // mplink's own knowledge: a link of this organization to another subscription that
        // still bills it.
        let linked_elsewhere = match state.store.org_link(&org.org_id).await? {
            Some((link, rows)) => {
                link_key(&link) != key && still_billing(rows.resolve(&link).state)
            }
            None => false,
        };
        let other = |o: &Option<String>| o.as_deref().is_some_and(|v| v != org.org_id);
        let facts = Facts {
            registration_expired: registration.expired(now) && !linked_here,
            product_mismatch: !product_sold
                || org
                    .product_code
                    .as_deref()
                    .is_some_and(|p| p.trim() != registration.product_code),
            org_linked_elsewhere: linked_elsewhere,
            other_marketplace: org
                .other_marketplace
                .as_deref()
                .is_some_and(|m| !m.trim().is_empty()),
            under_contract: org.under_contract,
            can_change_billing: org.can_change_billing,
            subscription_linked_elsewhere: other(&registration.linked_org_id) || other(&holder),
        };
        let reason = facts.reason();
        answers.push(OrganizationAnswer {
            org_id: org.org_id.clone(),
            linkable: reason.is_none(),
            reason,
            reason_text: reason.map(Reason::text),
            replaces_payment_method: reason.is_none() && org.payment_method_on_file,
        });
    }
    Ok(Json(OrganizationsResponse {
        registration_id: registration.id,
        organizations: answers,
    }))
}

/// Links an organization to the registration's subscription.
#[utoipa::path(
    post,
    path = "/v1/registrations/{id}/link",
    operation_id = "link_organization",
    tag = "registrations",
    params(("id" = String, Path, description = "The registration id")),
    request_body = LinkBody,
    responses(
        (status = 200, description = "Linked (`link_state` `syncing` until AWS confirms, `linked` at once if it already did); the same organization again answers the same", body = BillingView),
        (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
        (status = 403, description = "`registration_claimed`: another `user_id` claimed this registration first", body = ErrorBody),
        (status = 404, description = "`registration_not_found`", body = ErrorBody),
        (status = 409, description = "`registration_linked` (another organization has this subscription) or `already_linked` (this organization is billed through another subscription)", body = ErrorBody),
        (status = 410, description = "`registration_expired`", body = ErrorBody),
        (status = 413, description = "Body over 64 KiB", body = ErrorBody),
        (status = 422, description = "Unknown or missing field, invalid organization id", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn link(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<LinkBody>,
) -> Result<Json<BillingView>, ApiError> {
    check_org_id("org_id", &body.org_id)?;
    claim(&state, &id, &body.user_id).await?;
    match state
        .store
        .link_registration(&id, &body.org_id, now_ms())
        .await?
    {
        RegistrationLink::Linked(outcome) => {
            tracing::info!(
                registration = %short_registration_id(&id),
                org_id = %body.org_id,
                link_state = ?outcome.row.link_state,
                "organization linked through a registration"
            );
            Ok(Json(billing::load(&state.store, &body.org_id).await?))
        }
        RegistrationLink::Refused(refusal) => Err(match refusal {
            LinkRefusal::NotFound => ApiError::RegistrationNotFound { id },
            LinkRefusal::Expired => ApiError::Refused(Reason::RegistrationExpired),
            LinkRefusal::RegistrationLinked { .. } | LinkRefusal::SubscriptionLinked { .. } => {
                ApiError::Refused(Reason::RegistrationLinked)
            }
            LinkRefusal::OrgLinked { .. } => ApiError::Refused(Reason::AlreadyLinked),
        }),
    }
}
