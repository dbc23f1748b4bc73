//! The metering tables (migration 000007): usage reports, meter records with their fate, closed
//! hours and ended subscriptions.
//!
//! Serialization: usage writers take `mplink_meter_lock` shared, closers take it exclusively
//! (PostgreSQL `FOR SHARE` / `FOR UPDATE`; SQLite has one writer at a time), so no usage commits
//! into an hour while the hour is being closed, and a closed hour is never closed again.
//! [`usage`] takes reports, [`close`] turns hours into records, [`records`] is the sender's side,
//! [`org_usage`] is one organization's view of them.

mod close;
mod org_usage;
mod records;
mod usage;

pub use close::CloseRules;
pub use org_usage::{OrgUsageHour, OrgUsagePage, MAX_PAGE_HOURS};

use super::{q, Backend, StoreError};
use sqlx::{AnyConnection, Row};
use std::collections::BTreeMap;

/// A report's status: counted into the hour's record.
pub const USAGE_ACCEPTED: &str = "accepted";
/// A report's status: refused with a reason, never metered.
pub const USAGE_REFUSED: &str = "refused";
/// A report's status: written by a host with SQL, not decided yet (the metering loop decides
/// it as if it had come through `record_usage`).
pub const USAGE_SUBMITTED: &str = "submitted";

/// Meter record: waiting to be sent (or resent).
pub const METER_UNSENT: &str = "unsent";
/// Meter record: AWS accepted it.
pub const METER_SUCCESS: &str = "Success";
/// Meter record: AWS says the customer is not subscribed.
pub const METER_NOT_SUBSCRIBED: &str = "CustomerNotSubscribed";
/// Meter record: AWS already had another quantity for the hour; not billed.
pub const METER_DUPLICATE: &str = "DuplicateRecord";
/// Meter record: past AWS's window before it could be sent; never sent.
pub const METER_EXPIRED: &str = "expired";
/// Meter record: its customer stopped being subscribed; never sent.
pub const METER_STOPPED: &str = "stopped";
/// Meter record: parked after the attempt limit; `mplink meter retry` puts it back.
pub const METER_FAILED: &str = "failed";

/// Why a subscription's metering ended: its final usage was closed after cancellation.
pub const ENDED_FINAL: &str = "final";
/// Why a subscription's metering ended: AWS answered `CustomerNotSubscribed`.
pub const ENDED_NOT_SUBSCRIBED: &str = "not_subscribed";

/// One usage report as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageRow {
    /// The report's idempotency key.
    pub idempotency_key: String,
    /// The reporting organization.
    pub org_id: String,
    /// The subscription the organization was linked to (accepted reports).
    pub sub_key: Option<String>,
    /// The dimension.
    pub dimension: String,
    /// The quantity.
    pub quantity: i64,
    /// When the usage happened (epoch ms).
    pub usage_time: i64,
    /// Its hour (epoch ms).
    pub usage_hour: i64,
    /// accepted or refused.
    pub status: String,
    /// Why it was refused.
    pub reason: Option<String>,
    /// When it was recorded.
    pub recorded_at: i64,
    /// Its tags' canonical text ([`crate::tags::canonical`]; empty for none).
    pub tags: String,
}

/// The customer a subscription's records name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeterTarget {
    /// The subscription.
    pub sub_key: String,
    /// Its product code.
    pub product_code: Option<String>,
    /// Its buyer's account id.
    pub customer_aws_account_id: Option<String>,
    /// Its license ARN.
    pub license_arn: Option<String>,
    /// Its legacy customer identifier.
    pub customer_identifier: Option<String>,
}

/// One meter record as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeterRecord {
    /// The subscription.
    pub sub_key: String,
    /// The dimension.
    pub dimension: String,
    /// The hour (epoch ms).
    pub usage_hour: i64,
    /// The record's `Timestamp` (epoch ms), fixed at creation.
    pub record_time: i64,
    /// The record's `Quantity`, fixed at creation.
    pub quantity: i64,
    /// The product metered.
    pub product_code: String,
    /// The buyer's account id.
    pub customer_aws_account_id: Option<String>,
    /// The license ARN.
    pub license_arn: Option<String>,
    /// The legacy customer identifier.
    pub customer_identifier: Option<String>,
    /// Written by a final-usage close.
    pub final_usage: bool,
    /// See the `METER_*` constants.
    pub status: String,
    /// AWS's `MeteringRecordId`.
    pub metering_record_id: Option<String>,
    /// Send attempts so far.
    pub attempts: i64,
    /// The last error, while unsent or failed.
    pub last_error: Option<String>,
    /// When the record was written.
    pub created_at: i64,
    /// When AWS answered for it.
    pub sent_at: Option<i64>,
    /// Its `UsageAllocations`, fixed at creation (`None`: no usage was tagged).
    pub allocations: Option<Vec<crate::tags::Allocation>>,
}

/// What AWS (or the sender) decided for one leased record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MeterResult {
    /// AWS answered with a status (`Success`, `CustomerNotSubscribed`, `DuplicateRecord`).
    Answered {
        /// The status.
        status: String,
        /// The `MeteringRecordId`, when given.
        metering_record_id: Option<String>,
    },
    /// Not sent or not processed: try again at `retry_at_ms`, or park it.
    Failed {
        /// Why.
        error: String,
        /// When to try again.
        retry_at_ms: i64,
        /// Give up until `meter retry`.
        park: bool,
    },
}

/// Counts for `meter status` and the metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MeterStats {
    /// Records by status.
    pub by_status: BTreeMap<String, i64>,
    /// Hour of the oldest unsent record (epoch ms).
    pub oldest_unsent_hour: Option<i64>,
    /// Creation time of the oldest unsent final-usage record (epoch ms): its one-hour window
    /// runs from there.
    pub oldest_unsent_final: Option<i64>,
    /// Usage reports refused, by reason.
    pub refused: BTreeMap<String, i64>,
}

pub(super) const RECORD_COLUMNS: &str =
    "sub_key, dimension, usage_hour, record_time, quantity, product_code, \
    customer_aws_account_id, license_arn, customer_identifier, final, status, metering_record_id, \
    attempts, last_error, created_at, sent_at, allocations";

pub(super) fn record_from(row: &sqlx::any::AnyRow) -> Result<MeterRecord, StoreError> {
    let g = |e| StoreError::Query {
        op: "reading a meter record",
        source: e,
    };
    Ok(MeterRecord {
        sub_key: row.try_get("sub_key").map_err(g)?,
        dimension: row.try_get("dimension").map_err(g)?,
        usage_hour: row.try_get("usage_hour").map_err(g)?,
        record_time: row.try_get("record_time").map_err(g)?,
        quantity: row.try_get("quantity").map_err(g)?,
        product_code: row.try_get("product_code").map_err(g)?,
        customer_aws_account_id: row.try_get("customer_aws_account_id").map_err(g)?,
        license_arn: row.try_get("license_arn").map_err(g)?,
        customer_identifier: row.try_get("customer_identifier").map_err(g)?,
        final_usage: row.try_get::<i64, _>("final").map_err(g)? != 0,
        status: row.try_get("status").map_err(g)?,
        metering_record_id: row.try_get("metering_record_id").map_err(g)?,
        attempts: row.try_get("attempts").map_err(g)?,
        last_error: row.try_get("last_error").map_err(g)?,
        created_at: row.try_get("created_at").map_err(g)?,
        sent_at: row.try_get("sent_at").map_err(g)?,
        allocations: {
            let text: Option<String> = row.try_get("allocations").map_err(g)?;
            match text {
                None => None,
                Some(t) => Some(serde_json::from_str(&t).map_err(|_| StoreError::Corrupt {
                    table: "mplink_meter_records",
                    column: "allocations",
                    value: t.chars().take(100).collect(),
                })?),
            }
        },
    })
}

pub(super) fn usage_from(row: &sqlx::any::AnyRow) -> Result<UsageRow, StoreError> {
    let g = |e| StoreError::Query {
        op: "reading a usage report",
        source: e,
    };
    Ok(UsageRow {
        idempotency_key: row.try_get("idempotency_key").map_err(g)?,
        org_id: row.try_get("org_id").map_err(g)?,
        sub_key: row.try_get("sub_key").map_err(g)?,
        dimension: row.try_get("dimension").map_err(g)?,
        quantity: row.try_get("quantity").map_err(g)?,
        usage_time: row.try_get("usage_time").map_err(g)?,
        usage_hour: row.try_get("usage_hour").map_err(g)?,
        status: row.try_get("status").map_err(g)?,
        reason: row.try_get("reason").map_err(g)?,
        recorded_at: row.try_get("recorded_at").map_err(g)?,
        tags: row.try_get("tags").map_err(g)?,
    })
}

pub(super) async fn meter_lock(
    backend: Backend,
    conn: &mut AnyConnection,
    exclusive: bool,
) -> Result<(), StoreError> {
    let suffix = match (backend, exclusive) {
        (Backend::Sqlite, _) => "",
        (Backend::Postgres, true) => " FOR UPDATE",
        (Backend::Postgres, false) => " FOR SHARE",
    };
    sqlx::query(&format!(
        "SELECT id FROM mplink_meter_lock WHERE id = 1{suffix}"
    ))
    .fetch_one(conn)
    .await
    .map_err(q("locking the metering tables"))?;
    Ok(())
}

pub(super) async fn ended_reason(
    conn: &mut AnyConnection,
    sub_key: &str,
) -> Result<Option<String>, StoreError> {
    sqlx::query_scalar("SELECT reason FROM mplink_meter_ended WHERE sub_key = $1")
        .bind(sub_key)
        .fetch_optional(conn)
        .await
        .map_err(q("reading whether metering ended"))
}

pub(super) async fn hour_closed(conn: &mut AnyConnection, hour: i64) -> Result<bool, StoreError> {
    let found: Option<i64> =
        sqlx::query_scalar("SELECT usage_hour FROM mplink_meter_hours WHERE usage_hour = $1")
            .bind(hour)
            .fetch_optional(conn)
            .await
            .map_err(q("reading closed hours"))?;
    Ok(found.is_some())
}
