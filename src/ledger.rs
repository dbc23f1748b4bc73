//! The state machine: a pure function of (current subscription, event) → decision, and of
//! (link request, subscriptions) → link view. No I/O lives here.
//!
//! Ordering rule: every state-changing event carries a [`Stamp`] = (event time, rank, fact key),
//! compared in that order. The subscription's state is the target state of the greatest stamp
//! seen so far (last writer wins by event time, never by arrival). Ties on time are broken by
//! rank (success < fail < unsubscribe-pending < unsubscribe-success: the later step in a
//! subscription's life wins) and then by the fact key's byte order, so any arrival order of the
//! same events gives the same final state.

use crate::event::{
    license_id, Action, BillingAdjustment, BillingAdjustmentStatus, CancellationRequestStatus,
    Event, Notice, SubjectKey,
};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::fmt;

/// The life of one AWS subscription (legacy customer or EventBridge agreement).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SubState {
    /// Known, but AWS has not confirmed it.
    Pending,
    /// Confirmed by AWS: billing goes through AWS Marketplace.
    Active,
    /// AWS refused it.
    Failed,
    /// Cancelled on AWS; final metering window open.
    Cancelling,
    /// Cancellation complete.
    Cancelled,
}

impl SubState {
    /// Stable name stored in the database and printed by `status`.
    pub fn as_str(self) -> &'static str {
        match self {
            SubState::Pending => "pending",
            SubState::Active => "active",
            SubState::Failed => "failed",
            SubState::Cancelling => "cancelling",
            SubState::Cancelled => "cancelled",
        }
    }

    /// Parses [`SubState::as_str`]'s output.
    pub fn parse(s: &str) -> Option<SubState> {
        Some(match s {
            "pending" => SubState::Pending,
            "active" => SubState::Active,
            "failed" => SubState::Failed,
            "cancelling" => SubState::Cancelling,
            "cancelled" => SubState::Cancelled,
            _ => return None,
        })
    }
}

impl fmt::Display for SubState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What an event does to its subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// Moves the subscription to a state (subject to ordering).
    Transition(SubState),
    /// The agreement was renewed or replaced: a successor takes over, nothing ends.
    HandOver,
    /// Adds identifiers only (entitlement and license updates, amendments).
    Inform,
    /// An informational agreement event: kept as a detail, recorded as `noted`.
    Note,
}

/// The effect of each action.
pub fn effect(action: &Action) -> Effect {
    match action {
        Action::SubscribeSuccess | Action::AgreementCreated { .. } => {
            Effect::Transition(SubState::Active)
        }
        Action::SubscribeFail => Effect::Transition(SubState::Failed),
        Action::UnsubscribePending => Effect::Transition(SubState::Cancelling),
        Action::AgreementEnded { status, .. } if status.hands_over() => Effect::HandOver,
        Action::AgreementEnded { .. } => Effect::Transition(SubState::Cancelling),
        Action::UnsubscribeSuccess | Action::LicenseDeprovisioned => {
            Effect::Transition(SubState::Cancelled)
        }
        Action::EntitlementUpdated | Action::AgreementAmended { .. } | Action::LicenseUpdated => {
            Effect::Inform
        }
        Action::AgreementNotice { .. } => Effect::Note,
    }
}

/// Tie-break rank of a target state at equal event times: the later life step wins.
pub fn rank(target: SubState) -> i64 {
    match target {
        SubState::Pending => 0,
        SubState::Active => 1,
        SubState::Failed => 2,
        SubState::Cancelling => 3,
        SubState::Cancelled => 4,
    }
}

/// Total order of state-changing facts: event time, then rank, then fact key.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Stamp {
    /// Event time, epoch ms.
    pub time_ms: i64,
    /// [`rank`] of the target state.
    pub rank: i64,
    /// The event's fact key (equal for copies of one fact).
    pub fact_key: String,
}

impl Stamp {
    /// The stamp of an event whose effect has this rank.
    pub fn of(event: &Event, rank: i64) -> Stamp {
        Stamp {
            time_ms: event.time_ms,
            rank,
            fact_key: event.fact_key.clone(),
        }
    }
}

/// One subscription as the ledger keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    /// Canonical subject key (see [`SubjectKey::as_key`]).
    pub key: String,
    /// Marketplace product code, once known.
    pub product_code: Option<String>,
    /// Legacy customer identifier, once known.
    pub customer_identifier: Option<String>,
    /// Buyer's AWS account id, once known.
    pub customer_aws_account_id: Option<String>,
    /// Agreement id (EventBridge subscriptions).
    pub agreement_id: Option<String>,
    /// License ARN as AWS sent it, once known.
    pub license_arn: Option<String>,
    /// The agreement this one renews or replaces.
    pub previous_agreement_id: Option<String>,
    /// Current state.
    pub state: SubState,
    /// Stamp of the event that set `state` (None while pending with no such event).
    pub state_stamp: Option<Stamp>,
    /// Smallest stamp of any confirmation seen: tells whether a failure came after activity.
    pub first_active: Option<Stamp>,
    /// Stamp of the newest Ended RENEWED/REPLACED event, if any.
    pub handed_over: Option<Stamp>,
    /// Greatest event time seen, epoch ms.
    pub last_event_time_ms: Option<i64>,
    /// What AWS said about the agreement besides its state, newest value of each.
    pub details: SubscriptionDetails,
}

/// A value with the stamp of the event that said it: a newer stamp replaces it, an older never.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dated<T> {
    /// The value.
    pub value: T,
    /// Who said it, when.
    pub stamp: Stamp,
}

/// The advisory AWS last raised or cleared on an agreement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Advisory {
    /// Purchase Agreement Advisory Issued.
    Issued,
    /// Purchase Agreement Advisory Resolved.
    Resolved,
}

/// The subscription's details, each decided by event time on its own (an event that does not
/// mention a detail leaves it alone), so they commute like the state does.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SubscriptionDetails {
    /// Offer id: a replacement offer re-sends `subscribe-success` with a new one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offer_id: Option<Dated<String>>,
    /// Free trial (SNS `isFreeTrialTermPresent`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub free_trial: Option<Dated<bool>>,
    /// Agreement start, epoch ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agreement_start_ms: Option<Dated<i64>>,
    /// Agreement end, epoch ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agreement_end_ms: Option<Dated<i64>>,
    /// When the buyer accepted the agreement, epoch ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acceptance_ms: Option<Dated<i64>>,
    /// Auto-renewal on or off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auto_renewal: Option<Dated<bool>>,
    /// The proposer's AWS account.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proposer_account_id: Option<Dated<String>>,
    /// Resale authorization of a channel-partner sale.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resale_authorization_id: Option<Dated<String>>,
    /// The product's id (`prod-…`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub product_id: Option<Dated<String>>,
    /// The newest Purchase Agreement Ending notice.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ending_notice: Option<Stamp>,
    /// How many days before the end that notice was sent for (its `daysBeforeEndTime`). It
    /// changes only with `ending_notice`, so the two always describe the same event.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ending_notice_days: Option<u32>,
    /// The newest Renewal Upcoming notice.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub renewal_upcoming: Option<Stamp>,
    /// The newest Renewal Terms Finalized notice.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub renewal_terms_finalized: Option<Stamp>,
    /// The newest advisory event.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub advisory: Option<Dated<Advisory>>,
    /// The newest cancellation-request status.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cancellation_request: Option<Dated<CancellationRequestStatus>>,
    /// The newest billing-adjustment status.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub billing_adjustment: Option<Dated<BillingAdjustmentStatus>>,
    /// The adjustment that event described (amount, currency, reason, invoice). It changes only
    /// with `billing_adjustment`, so the two always describe the same event.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub billing_adjustment_request: Option<BillingAdjustment>,
}

impl SubscriptionDetails {
    /// Takes what `event` says where it is newer than what is known; true when anything changed.
    fn merge(&mut self, event: &Event) -> bool {
        let d = &event.details;
        let stamp = Stamp::of(event, 0);
        let mut changed = false;
        changed |= newer(&mut self.offer_id, event.ids.offer_id.clone(), &stamp);
        changed |= newer(&mut self.free_trial, d.free_trial, &stamp);
        changed |= newer(&mut self.agreement_start_ms, d.agreement_start_ms, &stamp);
        changed |= newer(&mut self.agreement_end_ms, d.agreement_end_ms, &stamp);
        changed |= newer(&mut self.acceptance_ms, d.acceptance_ms, &stamp);
        changed |= newer(&mut self.auto_renewal, d.auto_renewal, &stamp);
        changed |= newer(
            &mut self.proposer_account_id,
            d.proposer_account_id.clone(),
            &stamp,
        );
        changed |= newer(
            &mut self.resale_authorization_id,
            d.resale_authorization_id.clone(),
            &stamp,
        );
        changed |= newer(&mut self.product_id, d.product_id.clone(), &stamp);
        if let Action::AgreementNotice { notice, .. } = event.action {
            changed |= match notice {
                Notice::Ending => {
                    let newest = newer_stamp(&mut self.ending_notice, &stamp);
                    if newest {
                        self.ending_notice_days = d.days_before_end;
                    }
                    newest
                }
                Notice::RenewalUpcoming => newer_stamp(&mut self.renewal_upcoming, &stamp),
                Notice::RenewalTermsFinalized => {
                    newer_stamp(&mut self.renewal_terms_finalized, &stamp)
                }
                Notice::AdvisoryIssued => newer(&mut self.advisory, Some(Advisory::Issued), &stamp),
                Notice::AdvisoryResolved => {
                    newer(&mut self.advisory, Some(Advisory::Resolved), &stamp)
                }
                // At equal times a request's later step wins, as the state's tie rule does.
                Notice::CancellationRequest(status) => {
                    let rank = i64::from(status != CancellationRequestStatus::PendingApproval);
                    newer(
                        &mut self.cancellation_request,
                        Some(status),
                        &Stamp::of(event, rank),
                    )
                }
                Notice::BillingAdjustment(status) => {
                    let newest = newer(&mut self.billing_adjustment, Some(status), &stamp);
                    if newest {
                        self.billing_adjustment_request = d.billing_adjustment.clone();
                    }
                    newest
                }
            };
        }
        changed
    }
}

fn newer<T: PartialEq>(slot: &mut Option<Dated<T>>, value: Option<T>, stamp: &Stamp) -> bool {
    let Some(value) = value else { return false };
    match slot {
        Some(existing) if existing.stamp >= *stamp => false,
        _ => {
            *slot = Some(Dated {
                value,
                stamp: stamp.clone(),
            });
            true
        }
    }
}

fn newer_stamp(slot: &mut Option<Stamp>, stamp: &Stamp) -> bool {
    match slot {
        Some(existing) if *existing >= *stamp => false,
        _ => {
            *slot = Some(stamp.clone());
            true
        }
    }
}

impl Subscription {
    /// A subscription nobody has heard anything about yet.
    pub fn new(subject: &SubjectKey) -> Subscription {
        let mut sub = Subscription {
            key: subject.as_key(),
            product_code: None,
            customer_identifier: None,
            customer_aws_account_id: None,
            agreement_id: None,
            license_arn: None,
            previous_agreement_id: None,
            state: SubState::Pending,
            state_stamp: None,
            first_active: None,
            handed_over: None,
            last_event_time_ms: None,
            details: SubscriptionDetails::default(),
        };
        match subject {
            SubjectKey::Customer {
                product_code,
                customer_identifier,
            } => {
                sub.product_code = Some(product_code.clone());
                sub.customer_identifier = Some(customer_identifier.clone());
            }
            SubjectKey::Agreement { agreement_id } => {
                sub.agreement_id = Some(agreement_id.clone());
            }
        }
        sub
    }

    /// True when the agreement's newest fact is a renewal or replacement: a successor takes
    /// over. A later fact (a cancellation of the same agreement whose successor never came)
    /// ends the hand-over.
    pub fn is_handed_over(&self) -> bool {
        match (&self.handed_over, &self.state_stamp) {
            (Some(handed), Some(state)) => handed > state,
            (Some(_), None) => true,
            (None, _) => false,
        }
    }

    /// True when the subscription bills through AWS Marketplace now (active, in its final
    /// metering window, or handed over to a successor).
    pub fn is_live(&self) -> bool {
        self.is_handed_over() || matches!(self.state, SubState::Active | SubState::Cancelling)
    }

    /// True when a confirmation precedes the current state (in stamp order).
    pub fn was_active_before_state(&self) -> bool {
        match (&self.first_active, &self.state_stamp) {
            (Some(first), Some(state)) => first < state,
            _ => false,
        }
    }
}

/// How the event log records an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// It changed (or first established) what the ledger knows.
    Applied,
    /// Older than what is already applied; kept for audit, no effect.
    Stale,
    /// The same delivery or the same fact again; no effect.
    Duplicate,
    /// Could not be decoded or was refused; no effect.
    Rejected,
    /// An informational event (ending, renewal, cancellation request, …): kept as a detail of
    /// its subscription, no state change.
    Noted,
    /// A detail-type mplink does not know, from an accepted source, acknowledged by choice
    /// (`--unrecognised-detail-types acknowledge`); no effect.
    Unrecognised,
}

impl Outcome {
    /// Stable name stored in the event log.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Applied => "applied",
            Outcome::Stale => "stale",
            Outcome::Duplicate => "duplicate",
            Outcome::Rejected => "rejected",
            Outcome::Noted => "noted",
            Outcome::Unrecognised => "unrecognised",
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What applying one event decides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The subscription after the event.
    pub next: Subscription,
    /// How to record the event.
    pub outcome: Outcome,
}

/// Applies `event` to `current` (the subscription its subject names).
///
/// Identifiers only ever fill gaps (a known value is never overwritten), and the history facts
/// (`first_active`, `handed_over`) keep their minimum, so they commute like the state does.
pub fn apply(current: &Subscription, event: &Event) -> Decision {
    let mut next = current.clone();
    let mut learned = merge_identifiers(&mut next, event);
    learned |= next.details.merge(event);
    next.last_event_time_ms = Some(
        next.last_event_time_ms
            .map_or(event.time_ms, |t| t.max(event.time_ms)),
    );

    let outcome = match effect(&event.action) {
        Effect::Transition(target) => {
            let stamp = Stamp::of(event, rank(target));
            if target == SubState::Active {
                learned |= keep_min(&mut next.first_active, &stamp);
            }
            match next.state_stamp.as_ref().map(|cur| stamp.cmp(cur)) {
                None | Some(std::cmp::Ordering::Greater) => {
                    next.state = target;
                    next.state_stamp = Some(stamp);
                    Outcome::Applied
                }
                Some(std::cmp::Ordering::Equal) => Outcome::Duplicate,
                // An older event can still teach history (an earlier confirmation) or identifiers.
                Some(std::cmp::Ordering::Less) if learned => Outcome::Applied,
                Some(std::cmp::Ordering::Less) => Outcome::Stale,
            }
        }
        Effect::HandOver => {
            let stamp = Stamp::of(event, rank(SubState::Active));
            if keep_max(&mut next.handed_over, &stamp) || learned {
                Outcome::Applied
            } else {
                Outcome::Duplicate
            }
        }
        Effect::Inform => Outcome::Applied,
        Effect::Note => Outcome::Noted,
    };
    Decision { next, outcome }
}

fn keep_max(slot: &mut Option<Stamp>, stamp: &Stamp) -> bool {
    match slot {
        Some(existing) if *existing >= *stamp => false,
        _ => {
            *slot = Some(stamp.clone());
            true
        }
    }
}

fn keep_min(slot: &mut Option<Stamp>, stamp: &Stamp) -> bool {
    match slot {
        Some(existing) if *existing <= *stamp => false,
        _ => {
            *slot = Some(stamp.clone());
            true
        }
    }
}

fn merge_identifiers(sub: &mut Subscription, event: &Event) -> bool {
    let ids = &event.ids;
    let mut learned = false;
    for (slot, value) in [
        (&mut sub.product_code, &ids.product_code),
        (&mut sub.customer_identifier, &ids.customer_identifier),
        (
            &mut sub.customer_aws_account_id,
            &ids.customer_aws_account_id,
        ),
        (&mut sub.agreement_id, &ids.agreement_id),
        (&mut sub.license_arn, &ids.license_arn),
        (&mut sub.previous_agreement_id, &ids.previous_agreement_id),
    ] {
        if slot.is_none() && value.is_some() {
            *slot = value.clone();
            learned = true;
        }
    }
    learned
}

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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, utoipa::ToSchema)]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, utoipa::ToSchema)]
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
/// confirmed last, then (4) changed last, then (5) has the greatest key.
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
    let current = reached
        .iter()
        .copied()
        .filter(|s| !superseded(s))
        .max_by(|a, b| {
            let rank = |s: &'a Subscription| {
                (
                    unclaimed(s),
                    s.is_live(),
                    s.first_active.as_ref(),
                    s.state_stamp.as_ref(),
                    &s.key,
                )
            };
            rank(a).cmp(&rank(b))
        });
    LinkView {
        subscription: current,
        state: current.map_or(LinkState::Syncing, link_state_of),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Delivery, Details, EndStatus, Identifiers, Intent, Party};
    use proptest::prelude::*;

    fn legacy(action: Action, time_ms: i64, id: &str) -> Event {
        Event {
            sqs_message_id: format!("sqs-{id}"),
            event_id: id.to_string(),
            fact_key: format!("sns:{id}"),
            time_ms,
            delivery: Delivery::SnsEnvelope,
            action,
            subject: SubjectKey::Customer {
                product_code: "prod".into(),
                customer_identifier: "cust".into(),
            },
            ids: Identifiers {
                product_code: Some("prod".into()),
                customer_identifier: Some("cust".into()),
                ..Identifiers::default()
            },
            details: Details::default(),
            topic_arn: None,
            source: None,
        }
    }

    fn fold(events: &[Event]) -> Subscription {
        let mut sub = Subscription::new(&events[0].subject);
        for e in events {
            sub = apply(&sub, e).next;
        }
        sub
    }

    fn link() -> LinkRequest {
        LinkRequest {
            org_id: "org".into(),
            product_code: "prod".into(),
            customer_identifier: Some("cust".into()),
            customer_aws_account_id: None,
            license_arn: None,
            requested_at_ms: 0,
        }
    }

    #[test]
    fn the_seed_story_in_order() {
        let mut sub = Subscription::new(&legacy(Action::SubscribeSuccess, 0, "x").subject);
        assert_eq!(link_state_of(&sub), LinkState::Syncing);
        for (action, t, state, link_state) in [
            (
                Action::SubscribeSuccess,
                10,
                SubState::Active,
                LinkState::Linked,
            ),
            (
                Action::UnsubscribePending,
                20,
                SubState::Cancelling,
                LinkState::UnlinkPending,
            ),
            (
                Action::UnsubscribeSuccess,
                30,
                SubState::Cancelled,
                LinkState::Unlinked,
            ),
            (
                Action::SubscribeSuccess,
                40,
                SubState::Active,
                LinkState::Linked,
            ),
        ] {
            let d = apply(&sub, &legacy(action, t, &format!("m{t}")));
            assert_eq!(d.outcome, Outcome::Applied);
            sub = d.next;
            assert_eq!(sub.state, state);
            assert_eq!(link_state_of(&sub), link_state);
        }
    }

    #[test]
    fn an_older_event_never_undoes_a_newer_one() {
        let newer = legacy(Action::UnsubscribeSuccess, 30, "b");
        let older = legacy(Action::UnsubscribePending, 20, "a");
        let sub = fold(std::slice::from_ref(&newer));
        let d = apply(&sub, &older);
        assert_eq!(d.outcome, Outcome::Stale);
        assert_eq!(d.next.state, SubState::Cancelled);
    }

    #[test]
    fn the_same_event_twice_is_a_duplicate() {
        let e = legacy(Action::SubscribeSuccess, 10, "a");
        let sub = fold(std::slice::from_ref(&e));
        let d = apply(&sub, &e);
        assert_eq!(d.outcome, Outcome::Duplicate);
        assert_eq!(d.next, sub);
    }

    #[test]
    fn ties_go_to_the_later_life_step() {
        let a = legacy(Action::SubscribeSuccess, 10, "a");
        let b = legacy(Action::UnsubscribeSuccess, 10, "b");
        assert_eq!(fold(&[a.clone(), b.clone()]).state, SubState::Cancelled);
        assert_eq!(fold(&[b, a]).state, SubState::Cancelled);
    }

    #[test]
    fn failure_before_any_confirmation_fails_the_link_and_after_it_unlinks() {
        let fail = legacy(Action::SubscribeFail, 20, "f");
        assert_eq!(
            link_state_of(&fold(std::slice::from_ref(&fail))),
            LinkState::Failed
        );
        let ok = legacy(Action::SubscribeSuccess, 10, "s");
        // The late-arriving earlier confirmation still counts as history.
        let sub = fold(&[fail.clone(), ok.clone()]);
        assert_eq!(sub.state, SubState::Failed);
        assert_eq!(link_state_of(&sub), LinkState::Unlinked);
        assert_eq!(fold(&[ok, fail]), sub);
    }

    fn agreement(action: Action, agmt: &str, time_ms: i64, id: &str) -> Event {
        Event {
            sqs_message_id: format!("sqs-{id}"),
            event_id: id.into(),
            fact_key: format!("eb:{}:{agmt}:{time_ms}", action.name()),
            time_ms,
            delivery: Delivery::EventBridge,
            action,
            subject: SubjectKey::Agreement {
                agreement_id: agmt.into(),
            },
            ids: Identifiers {
                agreement_id: Some(agmt.into()),
                customer_aws_account_id: Some("111122223333".into()),
                ..Identifiers::default()
            },
            details: Details::default(),
            topic_arn: None,
            source: Some(crate::event::EVENTBRIDGE_SOURCE.into()),
        }
    }

    #[test]
    fn a_renewal_hands_the_link_over_without_unlinking() {
        let lic = "arn:aws:license-manager::1:license:l-abc";
        let mut created = agreement(
            Action::AgreementCreated {
                party: Party::Proposer,
                intent: Intent::New,
            },
            "agmt-1",
            10,
            "e1",
        );
        created.ids.product_code = Some("prod".into());
        created.ids.license_arn = Some(lic.into());
        let old = fold(&[created]);
        let link = LinkRequest {
            license_arn: Some("l-abc".into()),
            customer_identifier: None,
            ..link()
        };
        assert_eq!(
            resolve_link(&link, std::slice::from_ref(&old)).state,
            LinkState::Linked
        );

        let ended = agreement(
            Action::AgreementEnded {
                party: Party::Proposer,
                status: EndStatus::Renewed,
            },
            "agmt-1",
            20,
            "e2",
        );
        let old = apply(&old, &ended).next;
        assert_eq!(old.state, SubState::Active);
        let view = resolve_link(&link, std::slice::from_ref(&old));
        assert_eq!(view.state, LinkState::Linked);

        let mut renewal = agreement(
            Action::AgreementCreated {
                party: Party::Proposer,
                intent: Intent::Renew,
            },
            "agmt-2",
            21,
            "e3",
        );
        renewal.ids.previous_agreement_id = Some("agmt-1".into());
        let new = fold(&[renewal]);
        let subs = vec![old, new];
        let view = resolve_link(&link, &subs);
        assert_eq!(view.state, LinkState::Linked);
        assert_eq!(view.subscription.unwrap().key, "agmt:agmt-2");
    }

    fn ended(status: EndStatus, agmt: &str, time_ms: i64, id: &str) -> Event {
        agreement(
            Action::AgreementEnded {
                party: Party::Proposer,
                status,
            },
            agmt,
            time_ms,
            id,
        )
    }

    fn created(intent: Intent, agmt: &str, time_ms: i64, id: &str) -> Event {
        agreement(
            Action::AgreementCreated {
                party: Party::Proposer,
                intent,
            },
            agmt,
            time_ms,
            id,
        )
    }

    fn account_link() -> LinkRequest {
        LinkRequest {
            customer_identifier: None,
            customer_aws_account_id: Some("111122223333".into()),
            ..link()
        }
    }

    /// An agreement of the test account for `prod`, with a license, after `events`.
    fn held(agmt: &str, license: &str, events: &[Event]) -> Subscription {
        let mut sub = fold(events);
        sub.product_code = Some("prod".into());
        sub.license_arn = Some(format!("arn:aws:license-manager::1:license:{license}"));
        assert_eq!(sub.agreement_id.as_deref(), Some(agmt));
        sub
    }

    #[test]
    fn a_hand_over_ends_when_a_later_fact_of_the_same_agreement_arrives() {
        let history = [
            created(Intent::New, "agmt-1", 10, "e1"),
            ended(EndStatus::Renewed, "agmt-1", 20, "e2"),
            ended(EndStatus::Cancelled, "agmt-1", 30, "e3"),
        ];
        let sub = held("agmt-1", "l-1", &history);
        assert!(!sub.is_handed_over());
        let view = resolve_link(&account_link(), std::slice::from_ref(&sub));
        assert_eq!(view.state, LinkState::UnlinkPending);
        // In any arrival order.
        let reversed: Vec<Event> = history.iter().rev().cloned().collect();
        assert_eq!(held("agmt-1", "l-1", &reversed), sub);
        // The renewal alone, or after an older cancellation, still hands over.
        let renewed_last = held(
            "agmt-1",
            "l-1",
            &[
                history[0].clone(),
                ended(EndStatus::Cancelled, "agmt-1", 15, "e4"),
                history[1].clone(),
            ],
        );
        assert!(renewed_last.is_handed_over());
        assert_eq!(link_state_of(&renewed_last), LinkState::Linked);
    }

    #[test]
    fn a_link_by_account_takes_the_live_unclaimed_agreement_whatever_the_order() {
        let cancelled = held(
            "agmt-old",
            "l-old",
            &[
                created(Intent::New, "agmt-old", 10, "o1"),
                ended(EndStatus::Cancelled, "agmt-old", 50, "o2"),
            ],
        );
        let active = held(
            "agmt-live",
            "l-live",
            &[created(Intent::New, "agmt-live", 20, "l1")],
        );
        let newer_active = held(
            "agmt-new",
            "l-new",
            &[created(Intent::New, "agmt-new", 30, "n1")],
        );
        let link = account_link();
        for subs in [
            vec![cancelled.clone(), active.clone()],
            vec![active.clone(), cancelled.clone()],
        ] {
            let view = resolve_link(&link, &subs);
            assert_eq!(view.subscription.unwrap().key, "agmt:agmt-live");
            assert_eq!(view.state, LinkState::Linked);
        }
        // Two live agreements: the one confirmed last, unless a license-keyed link claims it.
        let subs = vec![newer_active.clone(), active.clone(), cancelled.clone()];
        assert_eq!(
            resolve_link(&link, &subs).subscription.unwrap().key,
            "agmt:agmt-new"
        );
        let claimed: HashSet<&str> = ["l-new"].into_iter().collect();
        assert_eq!(
            resolve_link_among(&link, &subs, &claimed)
                .subscription
                .unwrap()
                .key,
            "agmt:agmt-live"
        );
        // A license-keyed link is never turned away by a claim: the claim is its own.
        let by_license = LinkRequest {
            license_arn: Some("l-new".into()),
            ..account_link()
        };
        assert_eq!(
            resolve_link_among(&by_license, &subs, &claimed)
                .subscription
                .unwrap()
                .key,
            "agmt:agmt-new"
        );
    }

    #[test]
    fn registration_without_events_is_syncing_and_matches_by_specific_key() {
        assert_eq!(resolve_link(&link(), &[]).state, LinkState::Syncing);
        let mut other = Subscription::new(&SubjectKey::Customer {
            product_code: "prod".into(),
            customer_identifier: "someone-else".into(),
        });
        other.state = SubState::Active;
        assert_eq!(resolve_link(&link(), &[other]).state, LinkState::Syncing);
    }

    // ---- property test against a simple model -------------------------------------------

    /// The model: sort every event by (time, rank, fact key) and walk the transitions.
    fn model(events: &[Event]) -> (SubState, LinkState) {
        let mut sorted: Vec<(Stamp, Effect)> = events
            .iter()
            .filter_map(|e| match effect(&e.action) {
                Effect::Transition(t) => Some((Stamp::of(e, rank(t)), Effect::Transition(t))),
                _ => None,
            })
            .collect();
        sorted.sort_by(|a, b| a.0.cmp(&b.0));
        sorted.dedup_by(|a, b| a.0 == b.0);
        let mut state = SubState::Pending;
        let mut ever_active = false;
        let mut failed_after_active = false;
        let last = sorted.last().map(|(stamp, _)| stamp.clone());
        for (_, eff) in sorted {
            if let Effect::Transition(t) = eff {
                failed_after_active = t == SubState::Failed && ever_active;
                ever_active |= t == SubState::Active;
                state = t;
            }
        }
        // A hand-over holds while it is the agreement's newest fact.
        let newest_hand_over = events
            .iter()
            .filter(|e| effect(&e.action) == Effect::HandOver)
            .map(|e| Stamp::of(e, rank(SubState::Active)))
            .max();
        let handed_over = match (newest_hand_over, last) {
            (Some(h), Some(l)) => h > l,
            (Some(_), None) => true,
            (None, _) => false,
        };
        let link = match state {
            // A renewal or replacement never unlinks.
            _ if handed_over => LinkState::Linked,
            SubState::Pending => LinkState::Syncing,
            SubState::Active => LinkState::Linked,
            SubState::Failed if failed_after_active => LinkState::Unlinked,
            SubState::Failed => LinkState::Failed,
            SubState::Cancelling => LinkState::UnlinkPending,
            SubState::Cancelled => LinkState::Unlinked,
        };
        (state, link)
    }

    fn arb_history() -> impl Strategy<Value = Vec<Event>> {
        let action = prop_oneof![
            Just(Action::SubscribeSuccess),
            Just(Action::SubscribeFail),
            Just(Action::UnsubscribePending),
            Just(Action::UnsubscribeSuccess),
            Just(Action::EntitlementUpdated),
        ];
        // Few distinct times so that ties are common.
        prop::collection::vec((action, 0i64..6), 1..12).prop_map(|raw| {
            raw.into_iter()
                .enumerate()
                .map(|(i, (a, t))| legacy(a, t, &format!("m{i}")))
                .collect()
        })
    }

    /// Agreement histories: each fact may arrive as both its Proposer and Manufacturer copy
    /// (same fact key, different event ids), plus license events.
    fn arb_agreement_history() -> impl Strategy<Value = Vec<Event>> {
        let status = prop_oneof![
            Just(EndStatus::Cancelled),
            Just(EndStatus::Expired),
            Just(EndStatus::Terminated),
            Just(EndStatus::Renewed),
            Just(EndStatus::Replaced),
        ];
        let kind = prop_oneof![
            Just(0u8),
            Just(1u8),
            status.prop_map(|s| 2 + s as u8),
            Just(10u8),
            Just(11u8),
        ];
        prop::collection::vec((kind, 0i64..6, any::<bool>()), 1..10).prop_map(|raw| {
            let statuses = [
                EndStatus::Cancelled,
                EndStatus::Expired,
                EndStatus::Terminated,
                EndStatus::Renewed,
                EndStatus::Replaced,
            ];
            let mut events = Vec::new();
            for (i, (k, t, both_copies)) in raw.into_iter().enumerate() {
                let with_party = |party: Party| match k {
                    0 => Action::AgreementCreated {
                        party,
                        intent: Intent::New,
                    },
                    1 => Action::AgreementAmended { party },
                    10 => Action::LicenseUpdated,
                    11 => Action::LicenseDeprovisioned,
                    s => Action::AgreementEnded {
                        party,
                        status: statuses[(s - 2) as usize],
                    },
                };
                let first = with_party(Party::Proposer);
                let mut e = agreement(first, "agmt-p", t * 1000, &format!("ev{i}p"));
                // The fact key ignores the party, as the decoder's does.
                e.fact_key = format!("eb:{}:agmt-p:{}:{i}", first.name(), t * 1000);
                let copy_needed = both_copies && !matches!(k, 10 | 11);
                events.push(e.clone());
                if copy_needed {
                    let mut m = e;
                    m.event_id = format!("ev{i}m");
                    m.action = with_party(Party::Manufacturer);
                    events.push(m);
                }
            }
            events
        })
    }

    /// A deterministic shuffle driven by proptest's seed.
    fn shuffled(mut events: Vec<Event>, seed: u64) -> Vec<Event> {
        let mut rng = seed;
        for i in (1..events.len()).rev() {
            rng = rng
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            events.swap(i, (rng >> 33) as usize % (i + 1));
        }
        events
    }

    /// Chains `agmt-0 → agmt-1 → …` (each created with intent RENEW naming its predecessor),
    /// with random lifecycle events on each, plus a concurrent unrelated agreement of the same
    /// account. The model: the link follows the chain to the newest agreement whose Created
    /// (RENEW) event was delivered; that agreement's own events decide the link state.
    fn arb_chain() -> impl Strategy<Value = (Vec<Vec<Event>>, Vec<Event>)> {
        let step = (0u8..4, 0i64..6);
        let agreement_events = prop::collection::vec(step, 0..5);
        (
            prop::collection::vec((any::<bool>(), agreement_events), 1..4),
            prop::collection::vec((0u8..4, 0i64..6), 0..4),
        )
            .prop_map(|(chain, concurrent)| {
                let build = |agmt: &str, n: usize, k: u8, t: i64, j: usize| -> Event {
                    let id = format!("{agmt}-{j}");
                    let time = (n as i64) * 100 + t * 10;
                    match k {
                        0 => ended(EndStatus::Cancelled, agmt, time, &id),
                        1 => ended(EndStatus::Renewed, agmt, time, &id),
                        2 => agreement(Action::LicenseDeprovisioned, agmt, time, &id),
                        _ => agreement(
                            Action::AgreementAmended {
                                party: Party::Proposer,
                            },
                            agmt,
                            time,
                            &id,
                        ),
                    }
                };
                let mut links = Vec::new();
                for (n, (delivered_created, rest)) in chain.into_iter().enumerate() {
                    let agmt = format!("agmt-{n}");
                    let mut events = Vec::new();
                    // The first agreement is always created; a successor may not be yet.
                    if n == 0 || delivered_created {
                        let intent = if n == 0 { Intent::New } else { Intent::Renew };
                        let mut c = created(intent, &agmt, n as i64 * 100, &format!("{agmt}-c"));
                        if n > 0 {
                            c.ids.previous_agreement_id = Some(format!("agmt-{}", n - 1));
                        }
                        events.push(c);
                    }
                    for (j, (k, t)) in rest.into_iter().enumerate() {
                        events.push(build(&agmt, n, k, t, j));
                    }
                    links.push(events);
                }
                let other = std::iter::once(created(Intent::New, "agmt-x", 5, "agmt-x-c"))
                    .chain(
                        concurrent
                            .into_iter()
                            .enumerate()
                            .map(|(j, (k, t))| build("agmt-x", 0, k, t, j)),
                    )
                    .collect();
                (links, other)
            })
    }

    fn subs_of(events: &[Event]) -> Vec<Subscription> {
        let mut by_key: std::collections::BTreeMap<String, Subscription> = Default::default();
        for e in events {
            let key = e.subject.as_key();
            let current = by_key
                .remove(&key)
                .unwrap_or_else(|| Subscription::new(&e.subject));
            by_key.insert(key, apply(&current, e).next);
        }
        by_key.into_values().collect()
    }

    /// Agreement events that carry details: creations with an offer and an end time, and the
    /// informational notices, at few distinct times so that ties happen.
    fn arb_detail_history() -> impl Strategy<Value = Vec<Event>> {
        let notice = prop_oneof![
            Just(Notice::Ending),
            Just(Notice::RenewalUpcoming),
            Just(Notice::AdvisoryIssued),
            Just(Notice::AdvisoryResolved),
            Just(Notice::CancellationRequest(
                CancellationRequestStatus::PendingApproval
            )),
            Just(Notice::CancellationRequest(
                CancellationRequestStatus::Approved
            )),
            Just(Notice::CancellationRequest(
                CancellationRequestStatus::Rejected
            )),
            Just(Notice::BillingAdjustment(
                BillingAdjustmentStatus::Completed
            )),
        ];
        let one = (prop::option::of(notice), 0i64..4, 0u8..3, 0i64..3);
        prop::collection::vec(one, 1..10).prop_map(|raw| {
            raw.into_iter()
                .enumerate()
                .map(|(i, (notice, t, offer, end))| {
                    let action = match notice {
                        Some(notice) => Action::AgreementNotice {
                            party: Party::Proposer,
                            notice,
                        },
                        None => Action::AgreementCreated {
                            party: Party::Proposer,
                            intent: Intent::New,
                        },
                    };
                    let mut e = agreement(action, "agmt-d", t * 1000, &format!("d{i}"));
                    e.fact_key = format!("eb:{}:agmt-d:{}:{i}", action.name(), t * 1000);
                    e.ids.offer_id = (offer > 0).then(|| format!("offer-{offer}"));
                    e.details.agreement_end_ms = (end > 0).then_some(end * 1_000_000);
                    e
                })
                .collect()
        })
    }

    /// What an organization linked to the subscription is told as `delivered` arrives, the
    /// way the store decides it: a delivery seen before is dropped by the event log; each other
    /// event's view before and after gives the `link.*` type, if any. Returns (outcome, type)
    /// per delivery and the final link state.
    fn told(
        delivered: &[Event],
        view: impl Fn(&Subscription) -> LinkState,
    ) -> (Vec<(Outcome, Option<crate::outbox::EventType>)>, LinkState) {
        let mut sub = Subscription::new(&delivered[0].subject);
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for e in delivered {
            if !seen.insert(e.event_id.clone()) {
                out.push((Outcome::Duplicate, None));
                continue;
            }
            let decision = apply(&sub, e);
            let change = crate::outbox::change_type(Some(view(&sub)), view(&decision.next));
            out.push((decision.outcome, change));
            sub = decision.next;
        }
        (out, view(&sub))
    }

    /// The link's types end in the model's final state (or there are none and the model stays
    /// where the link started), and duplicates and stale events tell nothing.
    fn check_told(
        told: &[(Outcome, Option<crate::outbox::EventType>)],
        model_state: LinkState,
    ) -> Result<(), TestCaseError> {
        let types: Vec<crate::outbox::EventType> = told.iter().filter_map(|(_, t)| *t).collect();
        prop_assert_eq!(
            types.last().copied(),
            (model_state != LinkState::Syncing || !types.is_empty())
                .then(|| crate::outbox::EventType::entering(model_state)),
            "types {:?}",
            types
        );
        for (outcome, t) in told {
            if matches!(outcome, Outcome::Duplicate | Outcome::Stale) {
                prop_assert_eq!(*t, None, "a {} event told something", outcome);
            }
        }
        // No two consecutive rows repeat a type: each is a change.
        prop_assert!(types.windows(2).all(|w| w[0] != w[1]), "types {:?}", types);
        Ok(())
    }

    #[test]
    fn check_told_catches_a_wrong_final_type_and_a_told_duplicate() {
        use crate::outbox::EventType;
        let ok = [(Outcome::Applied, Some(EventType::Linked))];
        assert!(check_told(&ok, LinkState::Linked).is_ok());
        assert!(check_told(&ok, LinkState::Unlinked).is_err());
        let dup = [
            (Outcome::Applied, Some(EventType::Linked)),
            (Outcome::Duplicate, Some(EventType::Linked)),
        ];
        assert!(check_told(&dup, LinkState::Linked).is_err());
        assert!(check_told(&[(Outcome::Applied, None)], LinkState::Syncing).is_ok());
    }

    proptest! {
        #[test]
        fn details_in_any_order_are_the_newest_of_each(
            history in arb_detail_history(),
            seed in any::<u64>(),
        ) {
            let sub = fold(&shuffled(history.clone(), seed));
            prop_assert_eq!(&sub.details, &fold(&history).details);
            // The offer id is the one of the greatest (time, fact key) that names one.
            let newest_offer = history
                .iter()
                .filter(|e| e.ids.offer_id.is_some())
                .max_by(|a, b| (a.time_ms, &a.fact_key).cmp(&(b.time_ms, &b.fact_key)))
                .and_then(|e| e.ids.offer_id.clone());
            prop_assert_eq!(sub.details.offer_id.map(|d| d.value), newest_offer);
            // Notices never move the state.
            let created = history.iter().any(|e| matches!(e.action, Action::AgreementCreated { .. }));
            prop_assert_eq!(sub.state == SubState::Active, created);
        }

        #[test]
        fn agreement_events_in_any_order_with_both_copies_match_the_model(
            history in arb_agreement_history(),
            seed in any::<u64>(),
        ) {
            let delivered = shuffled(history.clone(), seed);
            let sub = fold(&delivered);
            let (state, link_state) = model(&history);
            prop_assert_eq!(sub.state, state);
            prop_assert_eq!(link_state_of(&sub), link_state);
            prop_assert_eq!(&sub, &fold(&history));
        }

        #[test]
        fn a_license_keyed_link_follows_a_renewal_chain_in_any_order(
            (chain, concurrent) in arb_chain(),
            seed in any::<u64>(),
        ) {
            // The chain is keyed by the license of its first agreement.
            let mut all: Vec<Event> = chain.iter().flatten().cloned().collect();
            for e in all.iter_mut().filter(|e| e.subject.as_key() == "agmt:agmt-0") {
                e.ids.license_arn = Some("arn:aws:license-manager::1:license:l-chain".into());
                e.ids.product_code = Some("prod".into());
            }
            all.extend(concurrent.iter().cloned());
            let delivered = shuffled(all.clone(), seed);
            let subs = subs_of(&delivered);
            prop_assert_eq!(&subs, &subs_of(&all));
            let link = LinkRequest {
                license_arn: Some("l-chain".into()),
                customer_identifier: None,
                ..link()
            };
            let view = resolve_link(&link, &subs);
            // Model: the chain reaches as far as consecutive Created (RENEW) events name each
            // predecessor; its newest agreement's own events decide the state.
            let newest = chain
                .iter()
                .skip(1)
                .take_while(|events| events.iter().any(|e| matches!(e.action, Action::AgreementCreated { .. })))
                .count();
            let agmt = format!("agmt:agmt-{newest}");
            let own: Vec<Event> = all.iter().filter(|e| e.subject.as_key() == agmt).cloned().collect();
            prop_assert_eq!(view.subscription.map(|s| s.key.clone()), Some(agmt));
            prop_assert_eq!(view.state, model(&own).1);
            // A registration by account alone sees the chain and the concurrent agreement;
            // which it takes does not depend on arrival order.
            let mut with_product = all.clone();
            for e in with_product.iter_mut() {
                e.ids.product_code = Some("prod".into());
            }
            let by_account = account_link();
            let pick = |events: &[Event]| {
                let subs = subs_of(events);
                let view = resolve_link(&by_account, &subs);
                (view.subscription.map(|s| s.key.clone()), view.state)
            };
            prop_assert_eq!(pick(&shuffled(with_product.clone(), seed)), pick(&with_product));
        }

        #[test]
        fn the_types_an_organization_sees_end_in_the_model_state(
            history in arb_history(),
            dup_picks in prop::collection::vec(any::<prop::sample::Index>(), 0..6),
            seed in any::<u64>(),
        ) {
            let mut delivered = history.clone();
            for pick in dup_picks {
                delivered.push(pick.get(&history).clone());
            }
            let delivered = shuffled(delivered, seed);
            let link = link();
            let (told, last) = told(&delivered, |sub| {
                resolve_link(&link, std::slice::from_ref(sub)).state
            });
            let (_, model_link) = model(&history);
            prop_assert_eq!(last, model_link);
            check_told(&told, model_link)?;
        }

        #[test]
        fn the_types_of_agreement_events_with_both_copies_end_in_the_model_state(
            history in arb_agreement_history(),
            seed in any::<u64>(),
        ) {
            let delivered = shuffled(history.clone(), seed);
            let (told, _) = told(&delivered, link_state_of);
            check_told(&told, model(&history).1)?;
        }

        #[test]
        fn any_order_with_duplicates_matches_the_model(
            history in arb_history(),
            dup_picks in prop::collection::vec(any::<prop::sample::Index>(), 0..6),
            seed in any::<u64>(),
        ) {
            let mut delivered = history.clone();
            for pick in dup_picks {
                delivered.push(pick.get(&history).clone());
            }
            let delivered = shuffled(delivered, seed);
            let sub = fold(&delivered);
            let (state, link_state) = model(&history);
            prop_assert_eq!(sub.state, state);
            prop_assert_eq!(link_state_of(&sub), link_state);
            // Order independence of everything the ledger stores.
            prop_assert_eq!(&sub, &fold(&history));
        }
    }
}
