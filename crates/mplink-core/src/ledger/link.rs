//! An organization's registration and the subscription it resolves to.

use super::subscription::*;
use crate::event::license_id;
use serde::Serialize;
use std::collections::HashSet;
use std::fmt;

/// An organization's request to pay through a marketplace subscription (the registration).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkRequest {
    /// The SaaS organization.
    pub org_id: String,
    /// Product code from ResolveCustomer.
    pub product_code: String,
    /// Customer identifier from ResolveCustomer (legacy listings).
    pub customer_identifier: Option<String>,
    /// Customer AWS account id from ResolveCustomer.
    pub customer_aws_account_id: Option<String>,
    /// License ARN from ResolveCustomer (new listings).
    pub license_arn: Option<String>,
    /// When the link was requested, epoch ms.
    pub requested_at_ms: i64,
}

impl LinkRequest {
    /// True when `sub` is the subscription this registration names.
    ///
    /// A license ARN is the most specific key (concurrent agreements share account and product),
    /// so when the registration has one, only it is used.
    pub fn matches(&self, sub: &Subscription) -> bool {
        if let Some(lic) = &self.license_arn {
            return sub
                .license_arn
                .as_deref()
                .is_some_and(|s| license_id(s) == license_id(lic));
        }
        let same_product = sub.product_code.as_deref() == Some(self.product_code.as_str());
        if let Some(cust) = &self.customer_identifier {
            return same_product && sub.customer_identifier.as_deref() == Some(cust.as_str());
        }
        match &self.customer_aws_account_id {
            Some(acct) => {
                same_product && sub.customer_aws_account_id.as_deref() == Some(acct.as_str())
            }
            None => false,
        }
    }
}

/// The link's billing state as the organization sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum LinkState {
    /// Linked, waiting for AWS to confirm; payment method empty.
    Syncing,
    /// Paying through AWS Marketplace; payment method not editable.
    Linked,
    /// The subscription failed before it was ever active.
    Failed,
    /// Cancelled on AWS, final metering window open; still paying through AWS.
    UnlinkPending,
    /// Billing link removed; the organization keeps everything else and has no payment method.
    Unlinked,
}

impl LinkState {
    /// Stable name printed by `status`.
    pub fn as_str(self) -> &'static str {
        match self {
            LinkState::Syncing => "syncing",
            LinkState::Linked => "linked",
            LinkState::Failed => "failed",
            LinkState::UnlinkPending => "unlink_pending",
            LinkState::Unlinked => "unlinked",
        }
    }

    /// The organization's payment method in this state.
    pub fn payment_method(self) -> Option<PaymentMethod> {
        match self {
            LinkState::Linked | LinkState::UnlinkPending => Some(PaymentMethod::AwsMarketplace),
            _ => None,
        }
    }
}

impl fmt::Display for LinkState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An organization's payment method, as far as mplink owns it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum PaymentMethod {
    /// "AWS Marketplace Subscription", not editable by the customer.
    AwsMarketplace,
}

impl PaymentMethod {
    /// Stable name printed by `status`.
    pub fn as_str(self) -> &'static str {
        match self {
            PaymentMethod::AwsMarketplace => "aws_marketplace",
        }
    }

    /// What the billing page and the `status` table show for it.
    pub fn display_text(self) -> &'static str {
        match self {
            PaymentMethod::AwsMarketplace => "AWS Marketplace Subscription",
        }
    }
}

/// The link state a subscription in this state gives its organization.
pub fn link_state_of(sub: &Subscription) -> LinkState {
    // A renewal or replacement does not unlink, even before its successor is known, as long
    // as nothing newer happened to the agreement.
    if sub.is_handed_over() {
        return LinkState::Linked;
    }
    match sub.state {
        SubState::Pending => LinkState::Syncing,
        SubState::Active => LinkState::Linked,
        SubState::Failed if sub.was_active_before_state() => LinkState::Unlinked,
        SubState::Failed => LinkState::Failed,
        SubState::Cancelling => LinkState::UnlinkPending,
        SubState::Cancelled => LinkState::Unlinked,
    }
}

/// A link request resolved against the ledger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkView<'a> {
    /// The subscription currently carrying the link (None while no event names it).
    pub subscription: Option<&'a Subscription>,
    /// The link's state.
    pub state: LinkState,
}

/// The subscriptions `link` reaches among `subs`: those it names and, along
/// `previous_agreement_id`, every renewal or replacement that follows them.
pub fn reach<'a>(link: &LinkRequest, subs: &'a [Subscription]) -> Vec<&'a Subscription> {
    let mut reached: Vec<&Subscription> = subs.iter().filter(|s| link.matches(s)).collect();
    // Each step adds at least one new subscription, so the number of subscriptions bounds the
    // walk and a cycle of agreements cannot loop.
    let mut frontier = reached.clone();
    for _ in 0..subs.len() {
        let next: Vec<&Subscription> = subs
            .iter()
            .filter(|s| {
                s.previous_agreement_id.as_deref().is_some_and(|prev| {
                    frontier
                        .iter()
                        .any(|f| f.agreement_id.as_deref() == Some(prev))
                }) && !reached.iter().any(|r| r.key == s.key)
            })
            .collect();
        if next.is_empty() {
            break;
        }
        reached.extend(next.iter().copied());
        frontier = next;
    }
    reached
}

/// Resolves `link` against `subs` (any superset of the subscriptions it could reach), with no
/// subscription claimed by another registration; see [`resolve_link_among`].
pub fn resolve_link<'a>(link: &LinkRequest, subs: &'a [Subscription]) -> LinkView<'a> {
    resolve_link_among(link, subs, &HashSet::new())
}

/// Resolves `link` against `subs`, where `claimed_licenses` holds the license ids (`l-…`) that
/// other registrations name by license.
///
/// The registration names a subscription; renewals and replacements chain agreements through
/// `previous_agreement_id`, and the link follows the chain to its newest agreement. A link by
/// account id alone can match several agreements (concurrent agreements for one product): it
/// takes, deterministically, the one that (1) no license-keyed registration claims, (2) is live
/// (active, cancelling or handed over) rather than pending, failed or cancelled, (3) was
/// confirmed last, then (4) changed last, then (5) has the greatest key. It has a subscription
/// whenever it names one ([`LinkRequest::matches`]): the store's status view relies on that to
/// find the links with none by a keyed anti-join.
pub fn resolve_link_among<'a>(
    link: &LinkRequest,
    subs: &'a [Subscription],
    claimed_licenses: &HashSet<&str>,
) -> LinkView<'a> {
    let reached = reach(link, subs);
    let superseded = |s: &Subscription| {
        s.agreement_id.as_deref().is_some_and(|id| {
            reached
                .iter()
                .any(|r| r.previous_agreement_id.as_deref() == Some(id))
        })
    };
    let unclaimed = |s: &Subscription| {
        link.license_arn.is_some()
            || !s
                .license_arn
                .as_deref()
                .is_some_and(|l| claimed_licenses.contains(license_id(l)))
    };
    let rank = |s: &'a Subscription| {
        (
            unclaimed(s),
            s.is_live(),
            s.first_active.as_ref(),
            s.state_stamp.as_ref(),
            &s.key,
        )
    };
    let best = |candidates: &mut dyn Iterator<Item = &'a Subscription>| {
        candidates.max_by(|a, b| rank(a).cmp(&rank(b)))
    };
    // A cycle of agreements (each naming another as its predecessor; only hostile or broken
    // input does that) supersedes everything it reaches: the link still rests on one of them,
    // so a link resolves to nothing exactly when it names no subscription at all.
    let current = best(&mut reached.iter().copied().filter(|s| !superseded(s)))
        .or_else(|| best(&mut reached.iter().copied()));
    LinkView {
        subscription: current,
        state: current.map_or(LinkState::Syncing, link_state_of),
    }
}
