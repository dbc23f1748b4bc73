//! Contract entitlements: what AWS's `GetEntitlements` says a subscription may use, as mplink
//! keeps and shows it. No I/O: the store keeps the rows, mplink's `entitlements` module asks AWS.

use crate::event::Action;
use serde::Serialize;

/// One dimension of a contract: its purchased value and the contract's end.
#[derive(Debug, Clone, PartialEq)]
pub struct Entitlement {
    /// The product's dimension (`seats`, `storage_gb`, …).
    pub dimension: String,
    /// What was bought: a quantity, a flag or a tier name.
    pub value: EntitlementValue,
    /// AWS's `ExpirationDate`: the contract's end or renewal, epoch ms; None when AWS gave none.
    pub expires_at_ms: Option<i64>,
}

/// AWS's `EntitlementValue`: exactly one of four kinds.
#[derive(Debug, Clone, PartialEq)]
pub enum EntitlementValue {
    /// `IntegerValue`: a quantity.
    Integer(i64),
    /// `DoubleValue`.
    Double(f64),
    /// `BooleanValue`: a feature bought or not.
    Boolean(bool),
    /// `StringValue`: a tier.
    String(String),
}

/// The stored name of each kind (`mplink_entitlements.value_type`).
const INTEGER: &str = "integer";
const DOUBLE: &str = "double";
const BOOLEAN: &str = "boolean";
const STRING: &str = "string";

impl EntitlementValue {
    /// The kind's stored name and the value as text, for `mplink_entitlements`.
    pub fn to_stored(&self) -> (&'static str, String) {
        match self {
            EntitlementValue::Integer(v) => (INTEGER, v.to_string()),
            EntitlementValue::Double(v) => (DOUBLE, v.to_string()),
            EntitlementValue::Boolean(v) => (BOOLEAN, v.to_string()),
            EntitlementValue::String(v) => (STRING, v.clone()),
        }
    }

    /// Reads [`EntitlementValue::to_stored`]'s output back; None when it is not one.
    pub fn from_stored(kind: &str, text: &str) -> Option<EntitlementValue> {
        Some(match kind {
            INTEGER => EntitlementValue::Integer(text.parse().ok()?),
            DOUBLE => EntitlementValue::Double(text.parse().ok()?),
            BOOLEAN => EntitlementValue::Boolean(text.parse().ok()?),
            STRING => EntitlementValue::String(text.to_string()),
            _ => return None,
        })
    }
}

impl Entitlement {
    /// True once the contract's end has passed at `now_ms`: the entitlement is kept (it is what
    /// AWS said) but no longer counts.
    pub fn expired_at(&self, now_ms: i64) -> bool {
        self.expires_at_ms.is_some_and(|t| t <= now_ms)
    }
}

/// One dimension of a contract as the billing view, `status --json` and the feed show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EntitlementView {
    /// The product's dimension.
    pub dimension: String,
    /// `integer`, `double`, `boolean` or `string`: which of AWS's values it is.
    pub value_type: &'static str,
    /// The value: a number, true or false, or a string.
    pub value: serde_json::Value,
    /// AWS's ExpirationDate, the contract's end (RFC 3339), or null.
    pub expires_at: Option<String>,
    /// True once `expires_at` has passed: kept as AWS said it, but no longer in force.
    pub expired: bool,
}

impl Entitlement {
    /// How the views show it at `now_ms`.
    pub fn view(&self, now_ms: i64) -> EntitlementView {
        EntitlementView {
            dimension: self.dimension.clone(),
            value_type: self.value.to_stored().0,
            value: match &self.value {
                EntitlementValue::Integer(v) => serde_json::json!(v),
                EntitlementValue::Double(v) => serde_json::json!(v),
                EntitlementValue::Boolean(v) => serde_json::json!(v),
                EntitlementValue::String(v) => serde_json::json!(v),
            },
            expires_at: self.expires_at_ms.map(crate::time::rfc3339_millis),
            expired: self.expired_at(now_ms),
        }
    }
}

/// An answer as the views show it: each dimension once (the latest expiration wins when AWS
/// lists one twice), in dimension order, so two answers compare equal exactly when they say the
/// same.
pub fn normalized(mut items: Vec<Entitlement>) -> Vec<Entitlement> {
    items.sort_by(|a, b| {
        a.dimension.cmp(&b.dimension).then(
            b.expires_at_ms
                .unwrap_or(i64::MAX)
                .cmp(&a.expires_at_ms.unwrap_or(i64::MAX)),
        )
    });
    items.dedup_by(|later, first| later.dimension == first.dimension);
    items
}

/// True for the events after which a subscription's entitlements may have changed, so mplink
/// asks AWS again: the legacy `entitlement-updated`, License Updated, Agreement Amended, and the
/// confirmations (a contract's first entitlements come with them).
pub fn asks_for_entitlements(action: &Action) -> bool {
    matches!(
        action,
        Action::EntitlementUpdated
            | Action::LicenseUpdated
            | Action::AgreementAmended { .. }
            | Action::SubscribeSuccess
            | Action::AgreementCreated { .. }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(dimension: &str, value: i64, expires: Option<i64>) -> Entitlement {
        Entitlement {
            dimension: dimension.into(),
            value: EntitlementValue::Integer(value),
            expires_at_ms: expires,
        }
    }

    #[test]
    fn every_kind_survives_storage() {
        for v in [
            EntitlementValue::Integer(-3),
            EntitlementValue::Double(2.5),
            EntitlementValue::Boolean(true),
            EntitlementValue::String("gold tier".into()),
        ] {
            let (kind, text) = v.to_stored();
            assert_eq!(EntitlementValue::from_stored(kind, &text), Some(v));
        }
        assert_eq!(EntitlementValue::from_stored("integer", "ten"), None);
        assert_eq!(EntitlementValue::from_stored("decimal", "1"), None);
    }

    #[test]
    fn one_entry_per_dimension_the_latest_expiration_first() {
        let got = normalized(vec![
            e("seats", 5, Some(10)),
            e("admins", 1, None),
            e("seats", 10, Some(20)),
        ]);
        assert_eq!(got, vec![e("admins", 1, None), e("seats", 10, Some(20))]);
        assert!(got[1].expired_at(20));
        assert!(!got[1].expired_at(19));
        assert!(!got[0].expired_at(i64::MAX));
    }
}
