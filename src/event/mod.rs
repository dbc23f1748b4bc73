//! Wire formats: turns one SQS message into a typed [`Event`] or a typed [`DecodeError`].
//!
//! This module knows how AWS Marketplace messages look on the wire (SNS envelope, raw SNS
//! delivery, EventBridge) and nothing about state. It does no I/O.

mod decode;
mod error;

pub use decode::decode;
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
    /// The buyer's AWS account id (`acceptor.accountId`).
    pub customer_aws_account_id: Option<String>,
    /// Agreement id (EventBridge events).
    pub agreement_id: Option<String>,
    /// License ARN (License events only), as AWS sent it.
    pub license_arn: Option<String>,
    /// `agreement.previousAgreementId` on renewals.
    pub previous_agreement_id: Option<String>,
    /// Offer id, informational.
    pub offer_id: Option<String>,
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
    /// SNS `TopicArn` (enveloped SNS only).
    pub topic_arn: Option<String>,
    /// EventBridge `source` (EventBridge only).
    pub source: Option<String>,
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
