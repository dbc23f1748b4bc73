//! Link-change notifications: what an outbox row is and the pure rule deciding when one is
//! written. The store writes the rows in the transaction that made the change; mplink's
//! `outbox` module delivers them.

use crate::ledger::{LinkState, PaymentMethod, Subscription};
use serde::Serialize;
use std::fmt;

/// What an organization is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum EventType {
    /// Linked, waiting for AWS's confirmation (a link created before its subscription is known).
    #[serde(rename = "link.syncing")]
    Syncing,
    /// Paying through AWS Marketplace: payment method set.
    #[serde(rename = "link.linked")]
    Linked,
    /// Cancelled on AWS; final usage must be sent within the hour.
    #[serde(rename = "link.unlink_pending")]
    UnlinkPending,
    /// Billing link removed: payment method removed, billing back to the SaaS.
    #[serde(rename = "link.unlinked")]
    Unlinked,
    /// AWS refused the subscription.
    #[serde(rename = "link.failed")]
    Failed,
    /// The subscription now bills another organization: this one lost its link.
    #[serde(rename = "link.moved")]
    Moved,
    /// What AWS says the linked subscription is entitled to changed (a contract's dimensions,
    /// quantities or end); the link's state is unchanged and the billing view has the new set.
    #[serde(rename = "link.entitlements_changed")]
    EntitlementsChanged,
}

impl EventType {
    /// The stable name stored in `mplink_outbox.event_type` and sent as the payload's `type`.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Syncing => "link.syncing",
            EventType::Linked => "link.linked",
            EventType::UnlinkPending => "link.unlink_pending",
            EventType::Unlinked => "link.unlinked",
            EventType::Failed => "link.failed",
            EventType::Moved => "link.moved",
            EventType::EntitlementsChanged => "link.entitlements_changed",
        }
    }

    /// Parses [`EventType::as_str`]'s output.
    pub fn parse(s: &str) -> Option<EventType> {
        Some(match s {
            "link.syncing" => EventType::Syncing,
            "link.linked" => EventType::Linked,
            "link.unlink_pending" => EventType::UnlinkPending,
            "link.unlinked" => EventType::Unlinked,
            "link.failed" => EventType::Failed,
            "link.moved" => EventType::Moved,
            "link.entitlements_changed" => EventType::EntitlementsChanged,
            _ => return None,
        })
    }

    /// The type announcing that a link is now in `state`.
    pub fn entering(state: LinkState) -> EventType {
        match state {
            LinkState::Syncing => EventType::Syncing,
            LinkState::Linked => EventType::Linked,
            LinkState::UnlinkPending => EventType::UnlinkPending,
            LinkState::Unlinked => EventType::Unlinked,
            LinkState::Failed => EventType::Failed,
        }
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What an organization sees of its link: its state and the subscription carrying it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrgView {
    /// The link's state.
    pub state: LinkState,
    /// The subscription's identifiers (the registration's while no event names it).
    pub subscription: SubscriptionIds,
}

/// The identifiers of a subscription, as a notification carries them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SubscriptionIds {
    /// The ledger's key (`cust:…` or `agmt:…`); null while no event names the subscription.
    pub sub_key: Option<String>,
    /// Marketplace product code.
    pub product_code: Option<String>,
    /// Legacy customer identifier.
    pub customer_identifier: Option<String>,
    /// Buyer's AWS account id.
    pub customer_aws_account_id: Option<String>,
    /// Agreement id.
    pub agreement_id: Option<String>,
    /// License ARN.
    pub license_arn: Option<String>,
}

impl SubscriptionIds {
    /// The identifiers of a ledger subscription.
    pub fn of(sub: &Subscription) -> SubscriptionIds {
        SubscriptionIds {
            sub_key: Some(sub.key.clone()),
            product_code: sub.product_code.clone(),
            customer_identifier: sub.customer_identifier.clone(),
            customer_aws_account_id: sub.customer_aws_account_id.clone(),
            agreement_id: sub.agreement_id.clone(),
            license_arn: sub.license_arn.clone(),
        }
    }
}

/// The type of the row written when an organization's view goes from `before` (None: it had no
/// link) to `after`, or None when nothing it sees changed. A change of subscription at the same
/// state (a renewal taking over, say) changes neither state nor payment method: no row.
pub fn change_type(before: Option<LinkState>, after: LinkState) -> Option<EventType> {
    (before != Some(after)).then(|| EventType::entering(after))
}

/// One outbox row about to be written (the store adds sequence, id and delivery columns).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewRow {
    /// What happened.
    pub event_type: EventType,
    /// The organization told.
    pub org_id: String,
    /// For `link.moved`: the organization now holding the link.
    pub moved_to_org_id: Option<String>,
    /// The subscription concerned.
    pub subscription: SubscriptionIds,
    /// The link state before (None: no link).
    pub state_before: Option<LinkState>,
    /// The link state after (None: no link any more, for `link.moved`).
    pub state_after: Option<LinkState>,
    /// The event's own time (or the link request's), epoch ms.
    pub event_time_ms: i64,
    /// The delivery (event-log message id) or link request (`link:<org>:<ms>`) that caused it.
    pub cause: String,
}

impl NewRow {
    /// The payment method before the change.
    pub fn payment_method_before(&self) -> Option<PaymentMethod> {
        self.state_before.and_then(LinkState::payment_method)
    }

    /// The payment method after the change.
    pub fn payment_method(&self) -> Option<PaymentMethod> {
        self.state_after.and_then(LinkState::payment_method)
    }
}

/// A stored outbox row, as the feed, the deliverer and the operators see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OutboxRow {
    /// Position in the outbox: increasing in commit order; feed consumers remember the last.
    pub seq: i64,
    /// Stable id: the `webhook-id`, the same on every attempt; receivers dedupe on it.
    pub event_id: String,
    /// `link.…`.
    pub event_type: String,
    /// The organization told.
    pub org_id: String,
    /// For `link.moved`: the organization now holding the link.
    pub moved_to_org_id: Option<String>,
    /// The subscription concerned.
    pub subscription: SubscriptionIds,
    /// Link state before (null: no link).
    pub state_before: Option<String>,
    /// Link state after (null: no link any more).
    pub state_after: Option<String>,
    /// Payment method before (null: none owned by mplink).
    pub payment_method_before: Option<String>,
    /// Payment method after.
    pub payment_method: Option<String>,
    /// The causing event's own time (RFC 3339).
    pub event_time: String,
    /// The causing delivery or link request.
    pub cause: String,
    /// When the row was committed (RFC 3339).
    pub created_at: String,
    /// pending, delivered or failed.
    #[serde(skip)]
    pub status: String,
    /// Delivery attempts so far.
    #[serde(skip)]
    pub attempts: i64,
    /// Last delivery error.
    #[serde(skip)]
    pub last_error: Option<String>,
    /// When the row was committed, epoch ms.
    #[serde(skip)]
    pub created_at_ms: i64,
}

/// The Standard Webhooks payload: `{"type", "timestamp", "data"}`.
#[derive(Debug, Serialize)]
pub struct Payload<'a> {
    /// `link.…`.
    #[serde(rename = "type")]
    pub event_type: &'a str,
    /// The causing event's time.
    pub timestamp: &'a str,
    /// The row.
    pub data: &'a OutboxRow,
}

impl OutboxRow {
    /// The JSON body sent to webhooks and printed by `mplink events --json`.
    pub fn payload_json(&self) -> String {
        let payload = Payload {
            event_type: &self.event_type,
            timestamp: &self.event_time,
            data: self,
        };
        // Plain strings and integers only: serialisation cannot fail.
        serde_json::to_string(&payload).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_row_only_when_the_state_changes() {
        assert_eq!(
            change_type(None, LinkState::Syncing),
            Some(EventType::Syncing)
        );
        assert_eq!(
            change_type(Some(LinkState::Linked), LinkState::Linked),
            None
        );
        assert_eq!(
            change_type(Some(LinkState::Linked), LinkState::UnlinkPending),
            Some(EventType::UnlinkPending)
        );
        for t in [
            EventType::Syncing,
            EventType::Linked,
            EventType::UnlinkPending,
            EventType::Unlinked,
            EventType::Failed,
            EventType::Moved,
            EventType::EntitlementsChanged,
        ] {
            assert_eq!(EventType::parse(t.as_str()), Some(t));
            assert_eq!(
                serde_json::to_string(&t).unwrap(),
                format!("\"{}\"", t.as_str())
            );
        }
    }
}
