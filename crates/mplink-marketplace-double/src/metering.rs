//! The metering service's rules: `ResolveCustomer`, `BatchMeterUsage` and `MeterUsage`.

use super::model::{CustomerRef, MeteredRecord, Operation, ResolvedCustomer};
use super::state::State;
use super::wire::{self, AwsError};
use chrono::{DateTime, DurationRound, Utc};
use serde_json::{json, Map, Value};

/// Most records one `BatchMeterUsage` call takes.
pub const MAX_RECORDS_PER_CALL: usize = 25;
/// Most tags one usage allocation carries.
const MAX_TAGS_PER_ALLOCATION: usize = 5;
/// Most allocations one usage record carries.
const MAX_ALLOCATIONS: usize = 2500;

/// What AWS dedupes metering on: one record per customer, dimension and hour.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct DedupeKey {
    product_code: String,
    customer_aws_account_id: String,
    license_arn: String,
    dimension: String,
    hour: DateTime<Utc>,
}

pub(super) fn resolve_customer(state: &State, input: &Value) -> Result<Value, AwsError> {
    let token = wire::req_str(input, "RegistrationToken")?;
    let Some(entry) = state.tokens.get(token) else {
        return Err(AwsError::new(
            "InvalidTokenException",
            400,
            "Registration token is invalid",
        ));
    };
    if entry.expired {
        return Err(AwsError::new(
            "ExpiredTokenException",
            400,
            "Registration token has expired",
        ));
    }
    let c = &entry.customer;
    let mut out = Map::new();
    out.insert(
        "CustomerAWSAccountId".into(),
        json!(c.customer_aws_account_id),
    );
    out.insert("LicenseArn".into(), json!(c.license_arn));
    out.insert("ProductCode".into(), json!(c.product_code));
    if let Some(id) = &c.customer_identifier {
        out.insert("CustomerIdentifier".into(), json!(id));
    }
    if let Some(agreement) = &c.agreement_id {
        out.insert("Metadata".into(), json!({ "AgreementId": agreement }));
    }
    Ok(Value::Object(out))
}

fn hour_of(t: DateTime<Utc>) -> DateTime<Utc> {
    t.duration_trunc(chrono::Duration::hours(1)).unwrap_or(t)
}

fn check_window(state: &State, at: DateTime<Utc>, now: DateTime<Utc>) -> Result<(), AwsError> {
    let past = chrono::Duration::from_std(state.config.accept_past).unwrap_or_default();
    let future = chrono::Duration::from_std(state.config.accept_future).unwrap_or_default();
    if at <= now - past || at > now + future {
        return Err(AwsError::new(
            "TimestampOutOfBoundsException",
            400,
            format!(
                "The timestamp value {} passed in the UsageRecord is out of allowed range",
                at.to_rfc3339()
            ),
        ));
    }
    Ok(())
}

/// Checks `UsageAllocations` the way AWS does: allocated quantities add up to the record's.
fn check_allocations(record: &Value, quantity: i64) -> Result<Option<Value>, AwsError> {
    let Some(allocations) = record.get("UsageAllocations").filter(|v| !v.is_null()) else {
        return Ok(None);
    };
    let list = allocations
        .as_array()
        .ok_or_else(|| AwsError::serialization("UsageAllocations: expected a list"))?;
    if list.is_empty() || list.len() > MAX_ALLOCATIONS {
        return Err(AwsError::new(
            "InvalidUsageAllocationsException",
            400,
            format!("UsageAllocations must hold 1 to {MAX_ALLOCATIONS} allocations"),
        ));
    }
    let mut total = 0i64;
    for allocation in list {
        total += wire::opt_int(allocation, "AllocatedUsageQuantity")?.unwrap_or(0);
        let tags = allocation.get("Tags").and_then(Value::as_array);
        if tags.is_some_and(|t| t.is_empty() || t.len() > MAX_TAGS_PER_ALLOCATION) {
            return Err(AwsError::new(
                "InvalidTagException",
                400,
                format!("an allocation carries 1 to {MAX_TAGS_PER_ALLOCATION} tags"),
            ));
        }
        for tag in tags.into_iter().flatten() {
            check_tag(tag)?;
        }
    }
    if total != quantity {
        return Err(AwsError::new(
            "InvalidUsageAllocationsException",
            400,
            format!("allocated quantities add up to {total}, the record's quantity is {quantity}"),
        ));
    }
    Ok(Some(allocations.clone()))
}

/// A `Tag` as AWS's model constrains it: `Key` 1-100 and `Value` 1-256 characters matching
/// `^[a-zA-Z0-9+ -=._:\/@]+$` (whose ` -=` is the range from space to `=`).
fn check_tag(tag: &Value) -> Result<(), AwsError> {
    let allowed = |c: char| {
        c.is_ascii_alphanumeric()
            || (' '..='=').contains(&c)
            || matches!(c, '.' | '_' | ':' | '/' | '@')
    };
    for (field, max) in [("Key", 100), ("Value", 256)] {
        let text = tag.get(field).and_then(Value::as_str).unwrap_or("");
        let len = text.chars().count();
        if len == 0 || len > max || !text.chars().all(allowed) {
            return Err(AwsError::new(
                "ValidationException",
                400,
                format!("1 validation error detected: Value at 'usageRecords.member.usageAllocations.member.tags.member.{}' failed to satisfy constraint: Member must have length between 1 and {max} and match pattern ^[a-zA-Z0-9+ -=._:\\/@]+$", field.to_lowercase()),
            ));
        }
    }
    Ok(())
}

/// One usage record, read and checked.
struct Record {
    raw: Value,
    at: DateTime<Utc>,
    customer: CustomerRef,
    dimension: String,
    quantity: i64,
    allocations: Option<Value>,
}

fn read_record(raw: &Value) -> Result<Record, AwsError> {
    if !raw.is_object() {
        return Err(AwsError::serialization("UsageRecords: expected objects"));
    }
    let at = wire::req_timestamp(raw, "Timestamp")?;
    let dimension = wire::req_str(raw, "Dimension")?.to_string();
    let quantity = wire::opt_int(raw, "Quantity")?.unwrap_or(0);
    if !(0..=i64::from(i32::MAX)).contains(&quantity) {
        return Err(AwsError::validation(format!(
            "Quantity {quantity} must be between 0 and {}",
            i32::MAX
        )));
    }
    // The Rust SDK always sends `CustomerIdentifier`, as "" when unset: empty means absent.
    let identifier = wire::opt_str(raw, "CustomerIdentifier")?.filter(|s| !s.is_empty());
    let account = wire::opt_str(raw, "CustomerAWSAccountId")?.filter(|s| !s.is_empty());
    let license = wire::opt_str(raw, "LicenseArn")?.filter(|s| !s.is_empty());
    let customer = match (identifier, account) {
        (Some(_), Some(_)) => {
            return Err(AwsError::validation(
                "CustomerIdentifier and CustomerAWSAccountId are mutually exclusive",
            ))
        }
        (Some(id), None) => CustomerRef::Identifier(id.to_string()),
        (None, Some(account)) => CustomerRef::Account {
            customer_aws_account_id: account.to_string(),
            license_arn: license.map(str::to_string),
        },
        (None, None) => {
            return Err(AwsError::validation(
                "a usage record needs CustomerAWSAccountId (or the legacy CustomerIdentifier)",
            ))
        }
    };
    let allocations = check_allocations(raw, quantity)?;
    Ok(Record {
        raw: raw.clone(),
        at,
        customer,
        dimension,
        quantity,
        allocations,
    })
}

fn matches(customer: &ResolvedCustomer, product: &str, r: &CustomerRef) -> bool {
    customer.product_code == product
        && match r {
            CustomerRef::Identifier(id) => customer.customer_identifier.as_deref() == Some(id),
            CustomerRef::Account {
                customer_aws_account_id,
                license_arn,
            } => {
                &customer.customer_aws_account_id == customer_aws_account_id
                    && license_arn
                        .as_ref()
                        .is_none_or(|l| l == &customer.license_arn)
            }
        }
}

/// The product a call meters: `ProductCode`, else the product of the first record's license.
fn product_of(state: &State, input: &Value, records: &[Record]) -> Result<String, AwsError> {
    let product = match wire::opt_str(input, "ProductCode")?.filter(|s| !s.is_empty()) {
        Some(p) => Some(p.to_string()),
        None => records.iter().find_map(|r| match &r.customer {
            CustomerRef::Account {
                license_arn: Some(l),
                ..
            } => state
                .subscribers
                .iter()
                .find(|s| &s.customer.license_arn == l)
                .map(|s| s.customer.product_code.clone()),
            _ => None,
        }),
    };
    match product {
        Some(p) if state.knows_product(&p) => Ok(p),
        Some(p) => Err(AwsError::new(
            "InvalidProductCodeException",
            400,
            format!("product code {p:?} is not one of the caller's products"),
        )),
        None => Err(AwsError::new(
            "InvalidProductCodeException",
            400,
            "ProductCode is required unless the records' LicenseArn names the product",
        )),
    }
}

pub(super) fn batch_meter_usage(
    state: &mut State,
    input: &Value,
    now: DateTime<Utc>,
) -> Result<Value, AwsError> {
    let raw_records = match input.get("UsageRecords") {
        Some(Value::Array(a)) => a,
        _ => {
            return Err(AwsError::validation(
                "1 validation error detected: Value null at 'usageRecords' failed to satisfy constraint: Member must not be null",
            ))
        }
    };
    if raw_records.len() > MAX_RECORDS_PER_CALL {
        return Err(AwsError::validation(format!(
            "1 validation error detected: Value at 'usageRecords' failed to satisfy constraint: Member must have length less than or equal to {MAX_RECORDS_PER_CALL} (got {})",
            raw_records.len()
        )));
    }
    let records = raw_records
        .iter()
        .map(read_record)
        .collect::<Result<Vec<_>, _>>()?;
    // One record outside the window fails the whole call, before anything is metered.
    for r in &records {
        check_window(state, r.at, now)?;
    }
    let product = product_of(state, input, &records)?;
    let mut results = Vec::new();
    let mut unprocessed = Vec::new();
    for r in records {
        if state.unprocess_next > 0 {
            state.unprocess_next -= 1;
            unprocessed.push(r.raw);
            continue;
        }
        let subscriber = state
            .subscribers
            .iter()
            .find(|s| s.subscribed && matches(&s.customer, &product, &r.customer))
            .map(|s| s.customer.clone());
        let Some(customer) = subscriber else {
            results.push(json!({"UsageRecord": r.raw, "Status": "CustomerNotSubscribed"}));
            continue;
        };
        let (id, status) = meter(
            state,
            &product,
            &customer,
            &r,
            Operation::BatchMeterUsage,
            now,
        );
        results.push(json!({"UsageRecord": r.raw, "MeteringRecordId": id, "Status": status}));
    }
    Ok(json!({"Results": results, "UnprocessedRecords": unprocessed}))
}

/// Records one accepted usage record, or recognises it: the same quantity for an hour already
/// metered is the same record (`Success`, same id); another quantity is a `DuplicateRecord`.
fn meter(
    state: &mut State,
    product: &str,
    customer: &ResolvedCustomer,
    r: &Record,
    operation: Operation,
    now: DateTime<Utc>,
) -> (String, &'static str) {
    let key = DedupeKey {
        product_code: product.to_string(),
        customer_aws_account_id: customer.customer_aws_account_id.clone(),
        license_arn: customer.license_arn.clone(),
        dimension: r.dimension.clone(),
        hour: hour_of(r.at),
    };
    if let Some(&i) = state.dedupe.get(&key) {
        let existing = &state.metered[i];
        let status = if existing.quantity == r.quantity {
            "Success"
        } else {
            "DuplicateRecord"
        };
        return (existing.metering_record_id.clone(), status);
    }
    let id = wire::new_id();
    state.dedupe.insert(key.clone(), state.metered.len());
    state.metered.push(MeteredRecord {
        metering_record_id: id.clone(),
        product_code: product.to_string(),
        customer: r.customer.clone(),
        customer_aws_account_id: customer.customer_aws_account_id.clone(),
        dimension: r.dimension.clone(),
        quantity: r.quantity,
        timestamp: r.at,
        hour: key.hour,
        usage_allocations: r.allocations.clone(),
        operation,
        accepted_at: now,
    });
    (id, "Success")
}

/// `MeterUsage` (AMI and container products): the caller is the customer, named by the access
/// key that signed the call.
pub(super) fn meter_usage(
    state: &mut State,
    input: &Value,
    caller: &str,
    now: DateTime<Utc>,
) -> Result<Value, AwsError> {
    let product = wire::req_str(input, "ProductCode")?.to_string();
    let at = wire::req_timestamp(input, "Timestamp")?;
    let dimension = wire::req_str(input, "UsageDimension")?.to_string();
    let quantity = wire::opt_int(input, "UsageQuantity")?.unwrap_or(0);
    if !(0..=i64::from(i32::MAX)).contains(&quantity) {
        return Err(AwsError::validation(format!(
            "UsageQuantity {quantity} out of range"
        )));
    }
    let allocations = check_allocations(input, quantity)?;
    check_window(state, at, now)?;
    if !state.knows_product(&product) {
        return Err(AwsError::new(
            "InvalidProductCodeException",
            400,
            format!("product code {product:?} is not one of the caller's products"),
        ));
    }
    if input.get("DryRun").and_then(Value::as_bool) == Some(true) {
        return Ok(json!({}));
    }
    let customer = ResolvedCustomer {
        customer_aws_account_id: caller.to_string(),
        license_arn: String::new(),
        product_code: product.clone(),
        customer_identifier: None,
        agreement_id: None,
    };
    let record = Record {
        raw: input.clone(),
        at,
        customer: CustomerRef::Account {
            customer_aws_account_id: caller.to_string(),
            license_arn: None,
        },
        dimension,
        quantity,
        allocations,
    };
    match meter(
        state,
        &product,
        &customer,
        &record,
        Operation::MeterUsage,
        now,
    ) {
        (id, "Success") => Ok(json!({ "MeteringRecordId": id })),
        _ => Err(AwsError::new(
            "DuplicateRequestException",
            400,
            "A metering record for this hour and dimension exists with another quantity",
        )),
    }
}
