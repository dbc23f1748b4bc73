//! One AWS subscription and how an event changes it; the ordering rule is in the module above.
//! One job, the state machine, kept whole so its rules read in one place.

use crate::event::{
    Action, BillingAdjustment, BillingAdjustmentStatus, CancellationRequestStatus, Event, Notice,
    SubjectKey,
};
use serde::{Deserialize, Serialize};
use std::fmt;

/// The life of one AWS subscription (legacy customer or EventBridge agreement).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
    /// Only the key, pending, nothing else known: what a freshly created ledger row reads back
    /// as before any event fills it.
    pub fn blank(key: String) -> Subscription {
        Subscription {
            key,
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
        }
    }

    /// A subscription nobody has heard anything about yet.
    pub fn new(subject: &SubjectKey) -> Subscription {
        let mut sub = Subscription::blank(subject.as_key());
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
