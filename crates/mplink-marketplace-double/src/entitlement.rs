//! The entitlement service's `GetEntitlements`: filters and `NextToken` pages.

use super::model::{Entitlement, EntitlementValue};
use super::state::State;
use super::wire::{self, AwsError};
use serde_json::{json, Map, Value};

/// Most entitlements one page holds.
pub const MAX_PAGE: usize = 25;

const FILTERS: [&str; 4] = [
    "CUSTOMER_IDENTIFIER",
    "CUSTOMER_AWS_ACCOUNT_ID",
    "LICENSE_ARN",
    "DIMENSION",
];

fn invalid(message: impl Into<String>) -> AwsError {
    AwsError::new("InvalidParameterException", 400, message)
}

fn field<'a>(e: &'a Entitlement, filter: &str) -> Option<&'a str> {
    match filter {
        "CUSTOMER_IDENTIFIER" => e.customer_identifier.as_deref(),
        "CUSTOMER_AWS_ACCOUNT_ID" => Some(&e.customer_aws_account_id),
        "LICENSE_ARN" => e.license_arn.as_deref(),
        _ => Some(&e.dimension),
    }
}

/// The filter, read and checked: each name once, values ORed within a name, names ANDed.
fn read_filter(input: &Value) -> Result<Vec<(String, Vec<String>)>, AwsError> {
    let Some(filter) = input.get("Filter").filter(|v| !v.is_null()) else {
        return Ok(Vec::new());
    };
    let map = filter
        .as_object()
        .ok_or_else(|| AwsError::serialization("Filter: expected a map"))?;
    let mut out = Vec::new();
    for (name, values) in map {
        if !FILTERS.contains(&name.as_str()) {
            return Err(invalid(format!(
                "Filter name {name:?} is not one of {}",
                FILTERS.join(", ")
            )));
        }
        let values = values
            .as_array()
            .ok_or_else(|| AwsError::serialization(format!("Filter.{name}: expected a list")))?
            .iter()
            .map(|v| v.as_str().map(str::to_string))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| AwsError::serialization(format!("Filter.{name}: expected strings")))?;
        if values.is_empty() {
            return Err(invalid(format!("Filter.{name} needs at least one value")));
        }
        out.push((name.clone(), values));
    }
    out.sort();
    Ok(out)
}

fn to_wire(e: &Entitlement) -> Value {
    let mut out = Map::new();
    out.insert("ProductCode".into(), json!(e.product_code));
    out.insert("Dimension".into(), json!(e.dimension));
    out.insert(
        "CustomerAWSAccountId".into(),
        json!(e.customer_aws_account_id),
    );
    if let Some(l) = &e.license_arn {
        out.insert("LicenseArn".into(), json!(l));
    }
    if let Some(c) = &e.customer_identifier {
        out.insert("CustomerIdentifier".into(), json!(c));
    }
    let value = match &e.value {
        EntitlementValue::Integer(v) => json!({ "IntegerValue": v }),
        EntitlementValue::Double(v) => json!({ "DoubleValue": v }),
        EntitlementValue::Boolean(v) => json!({ "BooleanValue": v }),
        EntitlementValue::String(v) => json!({ "StringValue": v }),
    };
    out.insert("Value".into(), value);
    if let Some(t) = e.expiration_date {
        out.insert("ExpirationDate".into(), wire::epoch_seconds(t));
    }
    Value::Object(out)
}

pub(super) fn get_entitlements(state: &State, input: &Value) -> Result<Value, AwsError> {
    let product = wire::req_str(input, "ProductCode")?;
    let filter = read_filter(input)?;
    let page = match wire::opt_int(input, "MaxResults")? {
        None => MAX_PAGE,
        Some(n) if n >= 1 => (n as usize).min(MAX_PAGE),
        Some(n) => return Err(invalid(format!("MaxResults {n} must be at least 1"))),
    };
    let fp = wire::fingerprint(&json!([product, filter]));
    let offset = match wire::opt_str(input, "NextToken")? {
        Some(t) => wire::decode_token(t, &fp)
            .ok_or_else(|| invalid("NextToken is not a token this query returned"))?,
        None => 0,
    };
    let matching: Vec<&Entitlement> = state
        .entitlements
        .iter()
        .filter(|e| e.product_code == product)
        .filter(|e| {
            filter
                .iter()
                .all(|(name, values)| field(e, name).is_some_and(|v| values.iter().any(|x| x == v)))
        })
        .collect();
    let end = (offset + page).min(matching.len());
    let items: Vec<Value> = matching
        .get(offset.min(end)..end)
        .unwrap_or_default()
        .iter()
        .map(|e| to_wire(e))
        .collect();
    let mut out = json!({ "Entitlements": items });
    if end < matching.len() {
        out["NextToken"] = json!(wire::encode_token(end, &fp));
    }
    Ok(out)
}
