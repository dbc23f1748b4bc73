//! Sending meter records: `BatchMeterUsage`, 25 records per call and product, each record's
//! fate stored. Records are leased (like the outbox's rows) so replicas never send the same
//! record at the same time; what they send is fixed in the row, so a resend is identical.

use super::{MeterConfig, BATCH_RECORDS};
use crate::backoff::Backoff;
use crate::store::{MeterRecord, MeterResult, Store, StoreError};
use aws_sdk_marketplacemetering::primitives::DateTime as SdkTime;
use aws_sdk_marketplacemetering::types::{Tag, UsageAllocation, UsageRecord};
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

/// Records leased per claim.
const CLAIM: i64 = 100;

/// What one pass of [`send_due`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SendSummary {
    /// `BatchMeterUsage` calls made.
    pub calls: usize,
    /// Records answered, by AWS's status.
    pub answered: BTreeMap<String, usize>,
    /// Records that failed this time (retried later, or parked).
    pub failed: usize,
    /// Records found past the window: never sent.
    pub expired: Vec<MeterRecord>,
    /// Answers lost because the lease expired meanwhile.
    pub lease_lost: usize,
}

/// An hour of usage as RFC 3339 to the second, for logs and tables; the raw ms if no calendar
/// holds it, so a corrupt row still prints.
pub fn rfc3339(ms: i64) -> String {
    crate::time::rfc3339(ms, crate::time::Precision::Seconds).unwrap_or_else(|| ms.to_string())
}

/// Which customer a record names on the wire: account + license for new integrations, the
/// legacy identifier otherwise (AWS takes one or the other, never both).
fn usage_record(r: &MeterRecord) -> Result<UsageRecord, String> {
    let quantity = i32::try_from(r.quantity)
        .map_err(|_| format!("quantity {} exceeds AWS's per-record limit", r.quantity))?;
    let mut b = UsageRecord::builder()
        .timestamp(SdkTime::from_millis(r.record_time))
        .dimension(&r.dimension)
        .quantity(quantity);
    b = match (
        &r.license_arn,
        &r.customer_identifier,
        &r.customer_aws_account_id,
    ) {
        (Some(license), _, Some(account)) => {
            b.customer_aws_account_id(account).license_arn(license)
        }
        (_, Some(id), _) => b.customer_identifier(id),
        (None, None, Some(account)) => b.customer_aws_account_id(account),
        _ => return Err("the record names no customer".into()),
    };
    if let Some(allocations) = &r.allocations {
        b = b.set_usage_allocations(Some(usage_allocations(allocations)?));
    }
    b.build().map_err(|e| e.to_string())
}

/// The stored allocations as AWS's shapes; an allocation without tags carries none.
fn usage_allocations(
    allocations: &[crate::tags::Allocation],
) -> Result<Vec<UsageAllocation>, String> {
    allocations
        .iter()
        .map(|a| {
            let quantity = i32::try_from(a.quantity)
                .map_err(|_| format!("allocated quantity {} exceeds AWS's limit", a.quantity))?;
            let tags = a
                .tags
                .iter()
                .map(|(k, v)| {
                    Tag::builder()
                        .key(k)
                        .value(v)
                        .build()
                        .map_err(|e| e.to_string())
                })
                .collect::<Result<Vec<_>, _>>()?;
            UsageAllocation::builder()
                .allocated_usage_quantity(quantity)
                .set_tags((!tags.is_empty()).then_some(tags))
                .build()
                .map_err(|e| e.to_string())
        })
        .collect()
}

/// What identifies a record in AWS's answer.
type AnswerKey = (String, String, String, i64);

fn key_of(u: &UsageRecord) -> AnswerKey {
    let customer = u
        .customer_aws_account_id()
        .filter(|s| !s.is_empty())
        .unwrap_or(u.customer_identifier())
        .to_string();
    (
        customer,
        u.license_arn().unwrap_or_default().to_string(),
        u.dimension().to_string(),
        // Whole seconds: records are written on the second, and a float round trip may move
        // the milliseconds.
        u.timestamp().secs(),
    )
}

fn backoff(config: &MeterConfig) -> Backoff {
    Backoff::new(config.backoff_base, config.backoff_cap)
}

fn failed(config: &MeterConfig, r: &MeterRecord, error: String, now_ms: i64) -> MeterResult {
    let attempts = r.attempts + 1;
    let delay: Duration = backoff(config).delay_after(attempts.clamp(1, 30) as u32);
    MeterResult::Failed {
        error,
        retry_at_ms: now_ms + delay.as_millis() as i64,
        park: attempts >= config.max_attempts,
    }
}

/// Sends one product's records (at most 25) and stores each one's fate.
async fn send_batch(
    store: &Store,
    client: &aws_sdk_marketplacemetering::Client,
    config: &MeterConfig,
    product: &str,
    records: &[MeterRecord],
    now_ms: i64,
    summary: &mut SendSummary,
) -> Result<(), StoreError> {
    let mut fates: Vec<(&MeterRecord, MeterResult)> = Vec::new();
    let mut wire = Vec::new();
    let mut sendable = Vec::new();
    for r in records {
        match usage_record(r) {
            Ok(u) => {
                wire.push(u);
                sendable.push(r);
            }
            // Nothing a resend could fix (a sum above AWS's limit, no customer): parked.
            Err(e) => fates.push((
                r,
                MeterResult::Failed {
                    error: e,
                    retry_at_ms: now_ms,
                    park: true,
                },
            )),
        }
    }
    if !wire.is_empty() {
        summary.calls += 1;
        let answer = client
            .batch_meter_usage()
            .product_code(product)
            .set_usage_records(Some(wire))
            .send()
            .await;
        crate::failpoint::metering_answered();
        match answer {
            Ok(out) => {
                let mut answered: HashMap<AnswerKey, MeterResult> = HashMap::new();
                for result in out.results() {
                    let Some(u) = result.usage_record() else {
                        continue;
                    };
                    answered.insert(
                        key_of(u),
                        MeterResult::Answered {
                            status: result
                                .status()
                                .map(|s| s.as_str().to_string())
                                .unwrap_or_default(),
                            metering_record_id: result.metering_record_id().map(str::to_string),
                        },
                    );
                }
                for r in sendable {
                    let key = usage_record(r).map(|u| key_of(&u)).ok();
                    let fate = match key.and_then(|k| answered.remove(&k)) {
                        Some(a) => a,
                        None => failed(
                            config,
                            r,
                            "returned as UnprocessedRecords (or missing from the answer)".into(),
                            now_ms,
                        ),
                    };
                    fates.push((r, fate));
                }
            }
            Err(e) => {
                let text = format!("BatchMeterUsage failed: {}", crate::aws::error_summary(&e));
                tracing::warn!(product_code = %product, records = sendable.len(), error = %text, "metering call failed");
                for r in sendable {
                    fates.push((r, failed(config, r, text.clone(), now_ms)));
                }
            }
        }
    }
    for (r, fate) in fates {
        match &fate {
            MeterResult::Answered { status, .. } => {
                *summary.answered.entry(status.clone()).or_default() += 1;
                if status == crate::store::METER_NOT_SUBSCRIBED {
                    tracing::warn!(sub_key = %r.sub_key, "AWS says the customer is not subscribed: metering for this subscription stops");
                }
            }
            MeterResult::Failed { .. } => summary.failed += 1,
        }
        if !store
            .meter_recorded(r, &config.owner, now_ms, &fate)
            .await?
        {
            summary.lease_lost += 1;
        }
    }
    Ok(())
}

/// Marks records past the window expired (never sent, surfaced), then leases and sends every
/// due record, 25 per call and product.
pub async fn send_due(
    store: &Store,
    client: &aws_sdk_marketplacemetering::Client,
    config: &MeterConfig,
    now_ms: i64,
) -> Result<SendSummary, StoreError> {
    let mut summary = SendSummary {
        expired: store
            .expire_meter_records(config.expired_before(now_ms))
            .await?,
        ..SendSummary::default()
    };
    for r in &summary.expired {
        tracing::error!(sub_key = %r.sub_key, dimension = %r.dimension, hour = %rfc3339(r.usage_hour), quantity = r.quantity, "meter record past AWS's window: never sent");
    }
    loop {
        let claimed = store
            .claim_meter_records(
                &config.owner,
                now_ms,
                config.lease.as_millis() as i64,
                CLAIM,
            )
            .await?;
        let n = claimed.len();
        let mut by_product: BTreeMap<String, Vec<MeterRecord>> = BTreeMap::new();
        for r in claimed {
            by_product
                .entry(r.product_code.clone())
                .or_default()
                .push(r);
        }
        for (product, records) in &by_product {
            for batch in records.chunks(BATCH_RECORDS) {
                send_batch(store, client, config, product, batch, now_ms, &mut summary).await?;
            }
        }
        if n < CLAIM as usize {
            break;
        }
    }
    Ok(summary)
}
