//! `GET /v1/organizations/{org_id}/billing`: what the host's billing page shows, from one
//! keyed lookup of the organization's link ([`Store::org_link`]), never a scan.

use crate::api::error::ApiError;
use crate::api::state::ApiState;
use crate::entitlement::EntitlementView;
use crate::ledger::{LinkState, PaymentMethod, SubState, Subscription};
use crate::store::Store;
use crate::time::rfc3339_millis;
use axum::extract::{Path, State};
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

/// The billing page of one organization.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct BillingView {
    /// The organization.
    pub org_id: String,
    /// `aws_marketplace` while the organization pays through AWS Marketplace, else null.
    pub payment_method: Option<PaymentMethod>,
    /// What the payment method field shows ("AWS Marketplace Subscription"), or null.
    pub payment_method_text: Option<&'static str>,
    /// Whether the Edit button of the payment method is enabled: never while the payment method
    /// is an AWS Marketplace subscription.
    pub edit_enabled: bool,
    /// The link's state; null when the organization has no link.
    pub link_state: Option<LinkState>,
    /// True while the link waits for AWS's confirmation (the "being synced" pop-up).
    pub syncing: bool,
    /// For an unlinked organization: when the subscription ended (RFC 3339).
    pub unlinked_at: Option<String>,
    /// A notice for the page: the sync in progress, the final metering hour, or that billing
    /// returned to the SaaS with the organization's resources and data kept.
    pub notice: Option<&'static str>,
    /// The subscription carrying the link, once AWS named it.
    pub subscription: Option<BillingSubscription>,
    /// A contract's entitlements as AWS last stated them (GetEntitlements); null when nothing
    /// asked AWS about this subscription yet.
    pub entitlements: Option<BillingEntitlements>,
}

/// What AWS says the subscription may use.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct BillingEntitlements {
    /// The event time AWS's answer stands for (RFC 3339); null until AWS first answered.
    pub as_of: Option<String>,
    /// True while a newer event asked AWS again and the answer is not in yet.
    pub refreshing: bool,
    /// Each dimension once, in dimension order; empty when AWS said nothing is entitled.
    pub items: Vec<EntitlementView>,
}

impl BillingEntitlements {
    /// The view of `set` at `now_ms`.
    pub fn of(set: &crate::store::EntitlementSet, now_ms: i64) -> BillingEntitlements {
        BillingEntitlements {
            as_of: set.as_of_ms.map(rfc3339_millis),
            refreshing: set.refreshing,
            items: set.items.iter().map(|e| e.view(now_ms)).collect(),
        }
    }
}

/// The subscription behind a link.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct BillingSubscription {
    /// Marketplace product code.
    pub product_code: Option<String>,
    /// The buyer's AWS account id.
    pub customer_aws_account_id: Option<String>,
    /// License ARN.
    pub license_arn: Option<String>,
    /// Legacy customer identifier.
    pub customer_identifier: Option<String>,
    /// Agreement id.
    pub agreement_id: Option<String>,
    /// The subscription's own state.
    pub state: SubState,
    /// Time of the event that decided that state (RFC 3339).
    pub state_time: Option<String>,
}

/// The notice of a syncing link.
pub const SYNCING_NOTICE: &str = "Your AWS Marketplace subscription is being synced. This usually takes a few minutes; the payment method appears once AWS confirms it.";
/// The notice of a cancelled subscription in its final metering hour.
pub const UNLINK_PENDING_NOTICE: &str = "Your AWS Marketplace subscription was cancelled. Final usage is being reported to AWS; billing returns to us within the hour.";
/// The notice of an unlinked organization.
pub const UNLINKED_NOTICE: &str = "This organization is no longer billed through AWS Marketplace. Its resources and data were kept; billing returns to us: add a payment method to keep using paid features.";
/// The notice of a subscription AWS never started.
pub const FAILED_NOTICE: &str = "AWS Marketplace could not start the subscription. Subscribe again in AWS Marketplace or choose another payment method.";

/// The billing view of `org_id`, given its link's state and subscription (None: no link).
pub fn billing_view(org_id: &str, link: Option<(LinkState, Option<&Subscription>)>) -> BillingView {
    let state = link.map(|(state, _)| state);
    let sub = link.and_then(|(_, sub)| sub);
    let payment_method = state.and_then(LinkState::payment_method);
    let notice = state.and_then(|s| match s {
        LinkState::Syncing => Some(SYNCING_NOTICE),
        LinkState::Linked => None,
        LinkState::UnlinkPending => Some(UNLINK_PENDING_NOTICE),
        LinkState::Unlinked => Some(UNLINKED_NOTICE),
        LinkState::Failed => Some(FAILED_NOTICE),
    });
    let state_time = sub
        .and_then(|s| s.state_stamp.as_ref())
        .map(|stamp| rfc3339_millis(stamp.time_ms));
    BillingView {
        org_id: org_id.to_string(),
        payment_method,
        payment_method_text: payment_method.map(PaymentMethod::display_text),
        edit_enabled: payment_method.is_none(),
        link_state: state,
        syncing: state == Some(LinkState::Syncing),
        unlinked_at: (state == Some(LinkState::Unlinked))
            .then(|| state_time.clone())
            .flatten(),
        notice,
        subscription: sub.map(|s| BillingSubscription {
            product_code: s.product_code.clone(),
            customer_aws_account_id: s.customer_aws_account_id.clone(),
            license_arn: s.license_arn.clone(),
            customer_identifier: s.customer_identifier.clone(),
            agreement_id: s.agreement_id.clone(),
            state: s.state,
            state_time,
        }),
        entitlements: None,
    }
}

/// Reads the billing view of `org_id`: its link by primary key and the rows that link reaches.
pub async fn load(store: &Store, org_id: &str) -> Result<BillingView, ApiError> {
    Ok(match store.org_link(org_id).await? {
        None => billing_view(org_id, None),
        Some((link, rows)) => {
            let view = rows.resolve(&link);
            let mut billing = billing_view(org_id, Some((view.state, view.subscription)));
            if let Some(sub) = view.subscription {
                billing.entitlements = store
                    .entitlements(&sub.key)
                    .await?
                    .map(|set| BillingEntitlements::of(&set, crate::time::now_ms()));
            }
            billing
        }
    })
}

/// The billing page of an organization.
#[utoipa::path(
    get,
    path = "/v1/organizations/{org_id}/billing",
    operation_id = "get_billing",
    tag = "billing",
    params(("org_id" = String, Path, description = "The host's organization id")),
    responses(
        (status = 200, description = "What the billing page shows (an organization without a link has no payment method and Edit enabled)", body = BillingView),
        (status = 401, description = "Missing or wrong bearer token", body = crate::api::error::ErrorBody),
        (status = 422, description = "Invalid organization id", body = crate::api::error::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn get(
    State(state): State<ApiState>,
    Path(org_id): Path<String>,
) -> Result<Json<BillingView>, ApiError> {
    super::check_org_id("org_id", &org_id)?;
    Ok(Json(load(&state.store, &org_id).await?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::Stamp;

    fn sub(state: SubState, time_ms: i64) -> Subscription {
        let mut s = Subscription::new(&crate::event::SubjectKey::Agreement {
            agreement_id: "a-1".into(),
        });
        s.state = state;
        s.state_stamp = Some(Stamp {
            time_ms,
            rank: 4,
            fact_key: "f".into(),
        });
        s
    }

    #[test]
    fn edit_is_disabled_exactly_while_aws_pays() {
        let active = sub(SubState::Active, 1_000);
        for (state, pays) in [
            (LinkState::Syncing, false),
            (LinkState::Linked, true),
            (LinkState::UnlinkPending, true),
            (LinkState::Unlinked, false),
            (LinkState::Failed, false),
        ] {
            let v = billing_view("org-1", Some((state, Some(&active))));
            assert_eq!(v.payment_method.is_some(), pays, "{state:?}");
            assert_eq!(v.edit_enabled, !pays, "{state:?}");
            assert_eq!(
                v.payment_method_text,
                pays.then_some("AWS Marketplace Subscription")
            );
            assert_eq!(v.syncing, state == LinkState::Syncing);
        }
        let none = billing_view("org-2", None);
        assert!(none.edit_enabled && none.link_state.is_none() && none.notice.is_none());
    }

    #[test]
    fn an_unlinked_organization_is_told_when_and_that_its_data_stayed() {
        let cancelled = sub(SubState::Cancelled, 1_795_687_200_000);
        let v = billing_view("org-1", Some((LinkState::Unlinked, Some(&cancelled))));
        assert_eq!(v.unlinked_at.as_deref(), Some("2026-11-26T10:00:00.000Z"));
        assert!(v
            .notice
            .is_some_and(|n| n.contains("resources and data were kept")));
        let linked = billing_view("org-1", Some((LinkState::Linked, Some(&cancelled))));
        assert_eq!(linked.unlinked_at, None);
    }
}
