//! The Agreement API's `SearchAgreements` and `GetAgreementEntitlements` (Smithy RPC v2 CBOR, as
//! `aws-sdk-marketplaceagreement` 1.124 speaks it): the seller's purchase agreements, filtered and
//! paged as AWS does, and the license each grants.

use super::model::Agreement;
use super::state::State;
use super::wire::{self, AwsError};
use serde_json::{json, Map, Value};

/// Most agreements one page holds (AWS's `maxResults` bound).
pub const MAX_PAGE: usize = 50;
/// Most filters one search takes.
const MAX_FILTERS: usize = 10;
/// The seller the double's caller is: agreements it proposed.
const PROPOSER_ACCOUNT: &str = "123456789012";

fn validation(message: impl Into<String>) -> AwsError {
    AwsError::new("ValidationException", 400, message)
}

/// The filters, checked: known names, one value each, `PartyType=Proposer` among them.
fn read_filters(input: &Value) -> Result<Vec<(String, String)>, AwsError> {
    let list = input
        .get("filters")
        .and_then(Value::as_array)
        .ok_or_else(|| validation("filters: at least the PartyType filter is required"))?;
    if list.is_empty() || list.len() > MAX_FILTERS {
        return Err(validation(format!(
            "filters: between 1 and {MAX_FILTERS} filters, got {}",
            list.len()
        )));
    }
    let mut out = Vec::new();
    for f in list {
        let name = f
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| AwsError::serialization("filters[].name: expected a string"))?;
        let values: Vec<&str> = f
            .get("values")
            .and_then(Value::as_array)
            .map(|v| v.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let [value] = values[..] else {
            return Err(validation(format!("filter {name}: exactly one value")));
        };
        if !matches!(
            name,
            "PartyType"
                | "AgreementType"
                | "ResourceIdentifier"
                | "ResourceType"
                | "Status"
                | "AcceptorAccountId"
        ) {
            return Err(validation(format!("filter {name:?} is not supported")));
        }
        out.push((name.to_string(), value.to_string()));
    }
    if !out.contains(&("PartyType".into(), "Proposer".into())) {
        return Err(validation(
            "filters: PartyType=Proposer is required for the seller's agreements",
        ));
    }
    out.sort();
    Ok(out)
}

fn matches(a: &Agreement, filters: &[(String, String)]) -> bool {
    filters.iter().all(|(name, value)| match name.as_str() {
        "AgreementType" => value == "PurchaseAgreement",
        "ResourceIdentifier" => &a.product_id == value,
        "ResourceType" => value == "SaaSProduct",
        "Status" => &a.status == value,
        "AcceptorAccountId" => &a.acceptor_account_id == value,
        _ => true,
    })
}

fn to_wire(a: &Agreement) -> Value {
    let mut out = Map::new();
    out.insert("agreementId".into(), json!(a.agreement_id));
    out.insert("agreementType".into(), json!("PurchaseAgreement"));
    out.insert("status".into(), json!(a.status));
    out.insert(
        "acceptor".into(),
        json!({ "accountId": a.acceptor_account_id }),
    );
    out.insert("proposer".into(), json!({ "accountId": PROPOSER_ACCOUNT }));
    let mut proposal = json!({ "resources": [{ "id": a.product_id, "type": "SaaSProduct" }] });
    if let Some(o) = &a.offer_id {
        proposal["offerId"] = json!(o);
    }
    out.insert("proposalSummary".into(), proposal);
    if let Some(l) = &a.license_arn {
        out.insert("entitlements".into(), json!([{ "licenseArn": l }]));
    }
    for (name, t) in [
        ("acceptanceTime", a.acceptance_time),
        ("startTime", a.start_time),
        ("endTime", a.end_time),
    ] {
        if let Some(t) = t {
            out.insert(name.into(), wire::epoch_seconds(t));
        }
    }
    Value::Object(out)
}

pub(super) fn search_agreements(state: &State, input: &Value) -> Result<Value, AwsError> {
    match wire::opt_str(input, "catalog")? {
        Some("AWSMarketplace") => {}
        other => {
            return Err(validation(format!(
                "catalog must be AWSMarketplace, got {other:?}"
            )))
        }
    }
    let filters = read_filters(input)?;
    let page = match wire::opt_int(input, "maxResults")? {
        None => MAX_PAGE,
        Some(n) if (1..=MAX_PAGE as i64).contains(&n) => n as usize,
        Some(n) => {
            return Err(validation(format!(
                "maxResults {n} is not within 1-{MAX_PAGE}"
            )))
        }
    };
    let fp = wire::fingerprint(&json!(filters));
    let offset = match wire::opt_str(input, "nextToken")? {
        Some(t) => wire::decode_token(t, &fp)
            .ok_or_else(|| validation("nextToken is not a token this search returned"))?,
        None => 0,
    };
    let found: Vec<&Agreement> = state
        .agreements
        .iter()
        .filter(|a| matches(a, &filters))
        .collect();
    let end = (offset + page).min(found.len());
    let items: Vec<Value> = found
        .get(offset.min(end)..end)
        .unwrap_or_default()
        .iter()
        .map(|a| to_wire(a))
        .collect();
    let mut out = json!({ "agreementViewSummaries": items });
    if end < found.len() {
        out["nextToken"] = json!(wire::encode_token(end, &fp));
    }
    Ok(out)
}

pub(super) fn get_agreement_entitlements(state: &State, input: &Value) -> Result<Value, AwsError> {
    let id = wire::req_str(input, "agreementId")?;
    let a = state
        .agreements
        .iter()
        .find(|a| a.agreement_id == id)
        .ok_or_else(|| {
            AwsError::new(
                "ResourceNotFoundException",
                404,
                format!("Agreement {id} was not found"),
            )
        })?;
    let status = a.license_status.clone().unwrap_or_else(|| {
        if a.status == "ACTIVE" {
            "PROVISIONED"
        } else {
            "DEPROVISIONED"
        }
        .to_string()
    });
    let mut entitlement = json!({
        "resource": { "id": a.product_id, "type": "SaaSProduct" },
        "status": status,
    });
    if let Some(l) = &a.license_arn {
        entitlement["licenseArn"] = json!(l);
    }
    Ok(json!({ "agreementEntitlements": [entitlement] }))
}
