//! Wire formats: turns one SQS message into a typed [`Event`] or a typed [`DecodeError`].
//!
//! This module knows how AWS Marketplace messages look on the wire (SNS envelope, raw SNS
//! delivery, EventBridge) and nothing about state. It does no I/O.

mod decode;
mod error;

pub use decode::{decode, handled_detail_types};
pub use error::DecodeError;

use serde::Serialize;
use std::fmt;

/// Largest SQS body the decoder accepts. Marketplace messages are a few hundred bytes (an SNS
/// envelope about 2 KiB); anything near SQS's own limit is not one of them.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// Legacy SNS action: the subscription is active.
pub const SUBSCRIBE_SUCCESS: &str = "subscribe-success";
/// Legacy SNS action: the subscription failed.
pub const SUBSCRIBE_FAIL: &str = "subscribe-fail";
/// Legacy SNS action: the buyer cancelled; final metering window open.
pub const UNSUBSCRIBE_PENDING: &str = "unsubscribe-pending";
/// Legacy SNS action: cancellation complete.
pub const UNSUBSCRIBE_SUCCESS: &str = "unsubscribe-success";
/// Legacy SNS action on the entitlement topic: entitlements changed.
pub const ENTITLEMENT_UPDATED: &str = "entitlement-updated";
/// EventBridge `source` of AWS Marketplace agreement and license events.
pub const EVENTBRIDGE_SOURCE: &str = "aws.agreement-marketplace";
/// SQS message attribute holding the send time in epoch milliseconds.
pub const SENT_TIMESTAMP_ATTRIBUTE: &str = "SentTimestamp";

/// One SQS message as the decoder sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboundMessage {
    /// SQS message id (or a stand-in for replayed bodies that never had one).
    pub message_id: String,
    /// The SQS message body, untouched.
    pub body: String,
    /// The SQS `SentTimestamp` attribute in epoch milliseconds, when known.
    pub sent_timestamp_ms: Option<i64>,
}

/// How the message reached the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Delivery {
    /// SNS notification inside its JSON envelope (raw message delivery off).
    SnsEnvelope,
    /// Bare marketplace JSON (SNS raw message delivery on).
    Raw,
    /// EventBridge event routed to SQS by a rule.
    EventBridge,
    /// A fact mplink read from AWS's Agreement API (`mplink reconcile`), never from the queue.
    Reconciled,
}

/// Which party's copy of an agreement event this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum Party {
    /// `- Proposer` variant (seller that is both proposer and manufacturer gets only this one).
    Proposer,
    /// `- Manufacturer` variant (channel-partner sales, License events).
    Manufacturer,
}

/// `agreement.intent` on Purchase Agreement Created / Amended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum Intent {
    /// A brand new agreement.
    New,
    /// Renews `previousAgreementId`.
    Renew,
    /// Replaces an earlier agreement.
    Replace,
    /// An amendment of an existing agreement.
    Amend,
}

/// `agreement.status` on Purchase Agreement Ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum EndStatus {
    /// The buyer cancelled.
    Cancelled,
    /// The agreement ran out.
    Expired,
    /// AWS terminated it (for example a payment failure).
    Terminated,
    /// A renewal agreement follows: nothing ends for the customer.
    Renewed,
    /// A replacement agreement follows: nothing ends for the customer.
    Replaced,
}

impl EndStatus {
    /// True when a successor agreement takes over instead of the subscription ending.
    pub fn hands_over(self) -> bool {
        matches!(self, EndStatus::Renewed | EndStatus::Replaced)
    }
}

/// What happened, in AWS's own vocabulary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum Action {
    /// Legacy `subscribe-success`.
    SubscribeSuccess,
    /// Legacy `subscribe-fail`.
    SubscribeFail,
    /// Legacy `unsubscribe-pending`.
    UnsubscribePending,
    /// Legacy `unsubscribe-success`.
    UnsubscribeSuccess,
    /// Legacy `entitlement-updated`.
    EntitlementUpdated,
    /// Purchase Agreement Created.
    AgreementCreated {
        /// Which copy.
        party: Party,
        /// New, renewal or replacement.
        intent: Intent,
    },
    /// Purchase Agreement Amended.
    AgreementAmended {
        /// Which copy.
        party: Party,
    },
    /// Purchase Agreement Ended.
    AgreementEnded {
        /// Which copy.
        party: Party,
        /// Why it ended.
        status: EndStatus,
    },
    /// License Updated - Manufacturer.
    LicenseUpdated,
    /// License Deprovisioned - Manufacturer.
    LicenseDeprovisioned,
    /// An informational agreement event: recorded and shown, changes no state.
    AgreementNotice {
        /// Which copy.
        party: Party,
        /// What it announces.
        notice: Notice,
    },
}

impl Action {
    /// Stable short name used in logs, metrics and the event log.
    pub fn name(&self) -> &'static str {
        match self {
            Action::SubscribeSuccess => SUBSCRIBE_SUCCESS,
            Action::SubscribeFail => SUBSCRIBE_FAIL,
            Action::UnsubscribePending => UNSUBSCRIBE_PENDING,
            Action::UnsubscribeSuccess => UNSUBSCRIBE_SUCCESS,
            Action::EntitlementUpdated => ENTITLEMENT_UPDATED,
            Action::AgreementCreated { .. } => "agreement-created",
            Action::AgreementAmended { .. } => "agreement-amended",
            Action::AgreementEnded { .. } => "agreement-ended",
            Action::LicenseUpdated => "license-updated",
            Action::LicenseDeprovisioned => "license-deprovisioned",
            Action::AgreementNotice { notice, .. } => notice.name(),
        }
    }
}

/// What an informational agreement event announces. None of these changes the subscription's
/// state; each is kept as a detail of the subscription, decided by event time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum Notice {
    /// Purchase Agreement Advisory Issued: AWS flags something about the agreement.
    AdvisoryIssued,
    /// Purchase Agreement Advisory Resolved.
    AdvisoryResolved,
    /// Purchase Agreement Ending: sent 180, 120, 90, 60 and 30 days before the end time.
    Ending,
    /// Purchase Agreement Renewal Terms Finalized: the renewal price is final.
    RenewalTermsFinalized,
    /// Purchase Agreement Renewal Upcoming.
    RenewalUpcoming,
    /// An Agreement Cancellation Request event, in the request's new status.
    CancellationRequest(CancellationRequestStatus),
    /// A Purchase Agreement Billing Adjustment event (a refund), in its new status.
    BillingAdjustment(BillingAdjustmentStatus),
}

impl Notice {
    /// Stable short name used in logs, metrics and the event log.
    pub fn name(self) -> &'static str {
        match self {
            Notice::AdvisoryIssued => "agreement-advisory-issued",
            Notice::AdvisoryResolved => "agreement-advisory-resolved",
            Notice::Ending => "agreement-ending",
            Notice::RenewalTermsFinalized => "agreement-renewal-terms-finalized",
            Notice::RenewalUpcoming => "agreement-renewal-upcoming",
            Notice::CancellationRequest(status) => match status {
                CancellationRequestStatus::PendingApproval => {
                    "cancellation-request-pending-approval"
                }
                CancellationRequestStatus::Approved => "cancellation-request-approved",
                CancellationRequestStatus::Rejected => "cancellation-request-rejected",
                CancellationRequestStatus::Cancelled => "cancellation-request-cancelled",
                CancellationRequestStatus::ValidationFailed => {
                    "cancellation-request-validation-failed"
                }
            },
            Notice::BillingAdjustment(status) => match status {
                BillingAdjustmentStatus::Completed => "billing-adjustment-completed",
                BillingAdjustmentStatus::Failed => "billing-adjustment-failed",
            },
        }
    }
}

/// Status of a seller's request to cancel an agreement (AWS's `statusCode`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum CancellationRequestStatus {
    /// The buyer has 7 days to approve or reject; silence approves.
    PendingApproval,
    /// Approved by the buyer or automatically: the agreement will end.
    Approved,
    /// The buyer rejected it.
    Rejected,
    /// The seller withdrew it.
    Cancelled,
    /// AWS refused the request.
    ValidationFailed,
}

impl CancellationRequestStatus {
    /// Stable name shown by `status`.
    pub fn as_str(self) -> &'static str {
        match self {
            CancellationRequestStatus::PendingApproval => "pending_approval",
            CancellationRequestStatus::Approved => "approved",
            CancellationRequestStatus::Rejected => "rejected",
            CancellationRequestStatus::Cancelled => "cancelled",
            CancellationRequestStatus::ValidationFailed => "validation_failed",
        }
    }
}

/// Status of a billing adjustment (refund) request.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum BillingAdjustmentStatus {
    /// The refund was processed.
    Completed,
    /// AWS refused the adjustment (Purchase Agreement Billing Adjustment Failed).
    // Details stored before the detail-type's name was corrected spell it `validation_failed`.
    #[serde(alias = "validation_failed")]
    Failed,
}

impl BillingAdjustmentStatus {
    /// Stable name shown by `status`.
    pub fn as_str(self) -> &'static str {
        match self {
            BillingAdjustmentStatus::Completed => "completed",
            BillingAdjustmentStatus::Failed => "failed",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The subscription an event is about: its primary key in the ledger.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SubjectKey {
    /// Legacy SNS events: product code + customer identifier.
    Customer {
        /// Marketplace product code.
        product_code: String,
        /// `customer-identifier` from ResolveCustomer / the SNS message.
        customer_identifier: String,
    },
    /// EventBridge events: the agreement id.
    Agreement {
        /// `agmt-…`.
        agreement_id: String,
    },
}

impl SubjectKey {
    /// Canonical text form, the ledger's primary key (`cust:<product>:<customer>` or `agmt:<id>`).
    pub fn as_key(&self) -> String {
        match self {
            SubjectKey::Customer {
                product_code,
                customer_identifier,
            } => format!("cust:{product_code}:{customer_identifier}"),
            SubjectKey::Agreement { agreement_id } => format!("agmt:{agreement_id}"),
        }
    }
}

impl fmt::Display for SubjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.as_key())
    }
}

/// Identifiers an event carries besides its subject key; the ledger merges them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identifiers {
    /// Marketplace product code (legacy events, License events).
    pub product_code: Option<String>,
    /// Legacy customer identifier.
    pub customer_identifier: Option<String>,
    /// The buyer's AWS account id (`acceptor.accountId`, or `agreement.acceptorId`).
    pub customer_aws_account_id: Option<String>,
    /// Agreement id (EventBridge events).
    pub agreement_id: Option<String>,
    /// License ARN (License events only), as AWS sent it.
    pub license_arn: Option<String>,
    /// `agreement.previousAgreementId` on renewals.
    pub previous_agreement_id: Option<String>,
    /// Offer id (`offer-identifier` on SNS, `offer.id` on EventBridge).
    pub offer_id: Option<String>,
}

/// What an event tells about the agreement besides identifiers: the subscription keeps the
/// newest value of each (by event time).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Details {
    /// `isFreeTrialTermPresent` (SNS `subscribe-success`; a string "true"/"false" on the wire).
    pub free_trial: Option<bool>,
    /// `agreement.startTime`, epoch ms.
    pub agreement_start_ms: Option<i64>,
    /// `agreement.endTime`, epoch ms.
    pub agreement_end_ms: Option<i64>,
    /// `agreement.acceptanceTime`, epoch ms.
    pub acceptance_ms: Option<i64>,
    /// `agreement.autoRenewalEnabled`.
    pub auto_renewal: Option<bool>,
    /// The proposer's account (`proposer.accountId`, or `agreement.proposerId`).
    pub proposer_account_id: Option<String>,
    /// `resaleAuthorization.id`: set on channel-partner sales.
    pub resale_authorization_id: Option<String>,
    /// The product's id (`product.id` or `agreement.productId`; not the product code).
    pub product_id: Option<String>,
    /// `agreement.daysBeforeEndTime` of a Purchase Agreement Ending event: how many days before
    /// the agreement's end AWS sent it (AWS documents 180, 120, 90, 60 and 30).
    pub days_before_end: Option<u32>,
    /// What a Purchase Agreement Billing Adjustment event says about the adjustment.
    pub billing_adjustment: Option<BillingAdjustment>,
}

/// A billing adjustment (refund) as AWS's Billing Adjustment events describe it; any part may be
/// missing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(default)]
pub struct BillingAdjustment {
    /// `billingAdjustmentRequest.id` (`ba-…`).
    pub id: Option<String>,
    /// `billingAdjustmentRequest.adjustmentAmount`, a decimal as AWS writes it (`"-100.00"`):
    /// kept as text, since a float would not keep every amount exactly.
    pub amount: Option<String>,
    /// `billingAdjustmentRequest.currencyCode` (ISO 4217, e.g. `USD`).
    pub currency_code: Option<String>,
    /// `billingAdjustmentRequest.adjustmentReasonCode` (e.g. `INCORRECT_TERMS_ACCEPTED`).
    pub reason_code: Option<String>,
    /// `invoice.originalInvoiceId`: the invoice the adjustment corrects.
    pub original_invoice_id: Option<String>,
}

/// A decoded marketplace event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// The SQS message id it arrived in (for logs; differs between redeliveries).
    pub sqs_message_id: String,
    /// Delivery identity: SNS `MessageId`, EventBridge `id`, or the SQS id for raw delivery.
    /// The same id twice is the same delivery.
    pub event_id: String,
    /// Identity of the fact: equal for the Manufacturer and Proposer copies of one agreement event.
    pub fact_key: String,
    /// Event time in epoch milliseconds (SNS `Timestamp`, EventBridge `time`, SQS `SentTimestamp`).
    pub time_ms: i64,
    /// How it was delivered.
    pub delivery: Delivery,
    /// What happened.
    pub action: Action,
    /// Which subscription it is about.
    pub subject: SubjectKey,
    /// Everything else it tells about the subscription.
    pub ids: Identifiers,
    /// What it tells about the agreement besides identifiers.
    pub details: Details,
    /// SNS `TopicArn` (enveloped SNS only).
    pub topic_arn: Option<String>,
    /// EventBridge `source` (EventBridge only).
    pub source: Option<String>,
}

/// The EventBridge rule pattern that delivers exactly what mplink handles: its source and every
/// detail-type in the decoder's table (`deploy/cloudformation.yaml` lists the same, a test
/// checks it).
pub fn eventbridge_rule_pattern() -> serde_json::Value {
    serde_json::json!({
        "source": [EVENTBRIDGE_SOURCE],
        "detail-type": handled_detail_types().collect::<Vec<_>>(),
    })
}

/// The one normalisation of an identifier from AWS or from a registration: surrounding
/// whitespace goes (AWS's own SNS examples spell `" X01EXAMPLEX"`), and what is left empty is no
/// identifier at all. License ARNs are further compared by [`license_id`].
pub fn normalize_identifier(raw: &str) -> Option<&str> {
    let trimmed = raw.trim();
    (!trimmed.is_empty()).then_some(trimmed)
}

/// The `l-…` id of a license ARN, which is how licenses are compared (AWS's own examples
/// sometimes drop the `arn:` prefix and `:license:` part).
pub fn license_id(arn: &str) -> &str {
    let tail = arn.rsplit([':', '/']).next().unwrap_or(arn);
    if tail.starts_with("l-") {
        tail
    } else {
        arn
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn license_id_takes_the_l_dash_part_of_every_spelling() {
        let id = "l-e52ca6f38bf84d0fafb8802ca15ac11x";
        assert_eq!(
            license_id(
                "arn:aws:license-manager::123456789012:license:l-e52ca6f38bf84d0fafb8802ca15ac11x"
            ),
            id
        );
        assert_eq!(
            license_id("aws:license-manager::123456789012:l-e52ca6f38bf84d0fafb8802ca15ac11x"),
            id
        );
        assert_eq!(license_id(id), id);
        assert_eq!(license_id("something-else"), "something-else");
    }

    #[test]
    fn a_billing_adjustment_stored_under_its_old_name_still_reads() {
        let old: BillingAdjustmentStatus =
            serde_json::from_str("\"validation_failed\"").expect("old name");
        assert_eq!(old, BillingAdjustmentStatus::Failed);
        assert_eq!(
            serde_json::to_string(&BillingAdjustmentStatus::Failed).expect("json"),
            "\"failed\""
        );
    }

    #[test]
    fn subject_keys_are_canonical() {
        let c = SubjectKey::Customer {
            product_code: "p".into(),
            customer_identifier: "c".into(),
        };
        assert_eq!(c.as_key(), "cust:p:c");
        let a = SubjectKey::Agreement {
            agreement_id: "agmt-1".into(),
        };
        assert_eq!(a.to_string(), "agmt:agmt-1");
    }
}
