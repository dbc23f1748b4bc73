//! The metering tables (migration 000007): usage reports, meter records with their fate, closed
//! hours and ended subscriptions.
//!
//! Serialization: usage writers take `mplink_meter_lock` shared, closers take it exclusively
//! (PostgreSQL `FOR SHARE` / `FOR UPDATE`; SQLite has one writer at a time), so no usage commits
//! into an hour while the hour is being closed, and a closed hour is never closed again.

use super::{q, rows, storable_text, Backend, Store, StoreError};
use sqlx::{AnyConnection, Row};
use std::collections::{BTreeMap, HashSet};

/// A report's status: counted into the hour's record.
pub const USAGE_ACCEPTED: &str = "accepted";
/// A report's status: refused with a reason, never metered.
pub const USAGE_REFUSED: &str = "refused";

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

const RECORD_COLUMNS: &str =
    "sub_key, dimension, usage_hour, record_time, quantity, product_code, \
    customer_aws_account_id, license_arn, customer_identifier, final, status, metering_record_id, \
    attempts, last_error, created_at, sent_at";

fn record_from(row: &sqlx::any::AnyRow) -> Result<MeterRecord, StoreError> {
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
    })
}

fn usage_from(row: &sqlx::any::AnyRow) -> Result<UsageRow, StoreError> {
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
    })
}

async fn meter_lock(
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

async fn ended_reason(
    conn: &mut AnyConnection,
    sub_key: &str,
) -> Result<Option<String>, StoreError> {
    sqlx::query_scalar("SELECT reason FROM mplink_meter_ended WHERE sub_key = $1")
        .bind(sub_key)
        .fetch_optional(conn)
        .await
        .map_err(q("reading whether metering ended"))
}

async fn hour_closed(conn: &mut AnyConnection, hour: i64) -> Result<bool, StoreError> {
    let found: Option<i64> =
        sqlx::query_scalar("SELECT usage_hour FROM mplink_meter_hours WHERE usage_hour = $1")
            .bind(hour)
            .fetch_optional(conn)
            .await
            .map_err(q("reading closed hours"))?;
    Ok(found.is_some())
}

/// The subscriptions' identifiers, by key.
async fn targets(
    backend: Backend,
    conn: &mut AnyConnection,
    keys: &[String],
) -> Result<BTreeMap<String, MeterTarget>, StoreError> {
    let mut out = BTreeMap::new();
    for chunk in keys.chunks(super::BULK_ROWS) {
        let sql = format!(
            "SELECT sub_key, product_code, customer_aws_account_id, license_arn, customer_identifier \
             FROM mplink_subscriptions WHERE sub_key IN {}",
            rows::tuples(backend, 1, chunk.len(), 1)
        );
        let mut query = sqlx::query(&sql);
        for k in chunk {
            query = query.bind(k);
        }
        for row in query
            .fetch_all(&mut *conn)
            .await
            .map_err(q("reading subscriptions to meter"))?
        {
            let g = |e| StoreError::Query {
                op: "reading subscriptions to meter",
                source: e,
            };
            let t = MeterTarget {
                sub_key: row.try_get("sub_key").map_err(g)?,
                product_code: row.try_get("product_code").map_err(g)?,
                customer_aws_account_id: row.try_get("customer_aws_account_id").map_err(g)?,
                license_arn: row.try_get("license_arn").map_err(g)?,
                customer_identifier: row.try_get("customer_identifier").map_err(g)?,
            };
            out.insert(t.sub_key.clone(), t);
        }
    }
    Ok(out)
}

/// One record to write when closing.
pub(crate) struct NewRecord<'a> {
    target: &'a MeterTarget,
    dimension: String,
    usage_hour: i64,
    record_time: i64,
    quantity: i64,
    final_usage: bool,
    status: &'static str,
    last_error: Option<String>,
}

async fn insert_records(
    conn: &mut AnyConnection,
    records: &[NewRecord<'_>],
    now_ms: i64,
) -> Result<usize, StoreError> {
    let mut written = 0;
    for r in records {
        let done = sqlx::query(
            "INSERT INTO mplink_meter_records (sub_key, dimension, usage_hour, record_time, quantity, \
             product_code, customer_aws_account_id, license_arn, customer_identifier, final, status, \
             metering_record_id, attempts, next_attempt_at, lease_owner, lease_until, last_error, \
             created_at, sent_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, NULL, 0, $12, \
             NULL, NULL, $13, $14, NULL) ON CONFLICT DO NOTHING",
        )
        .bind(&r.target.sub_key)
        .bind(&r.dimension)
        .bind(r.usage_hour)
        .bind(r.record_time)
        .bind(r.quantity)
        .bind(r.target.product_code.clone().unwrap_or_default())
        .bind(r.target.customer_aws_account_id.clone())
        .bind(r.target.license_arn.clone())
        .bind(r.target.customer_identifier.clone())
        .bind(i64::from(r.final_usage))
        .bind(r.status)
        .bind(now_ms)
        .bind(r.last_error.clone())
        .bind(now_ms)
        .execute(&mut *conn)
        .await
        .map_err(q("writing meter records"))?;
        written += done.rows_affected() as usize;
    }
    Ok(written)
}

/// How a closing decides each record's first status.
#[derive(Debug, Clone, Copy)]
pub struct CloseRules {
    /// Records with a `record_time` before this are past AWS's window: written `expired`.
    pub expired_before_ms: i64,
    /// Now.
    pub now_ms: i64,
}

fn first_status(
    target: &MeterTarget,
    record_time: i64,
    rules: CloseRules,
    stopped: bool,
) -> (&'static str, Option<String>) {
    if stopped {
        (
            METER_STOPPED,
            Some("AWS answered CustomerNotSubscribed for this subscription".into()),
        )
    } else if target.product_code.is_none()
        || (target.customer_aws_account_id.is_none() && target.customer_identifier.is_none())
    {
        (
            METER_FAILED,
            Some("the subscription has no product code or customer to meter".into()),
        )
    } else if record_time < rules.expired_before_ms {
        (
            METER_EXPIRED,
            Some("past AWS's metering window before it could be sent".into()),
        )
    } else {
        (METER_UNSENT, None)
    }
}

impl Store {
    /// Stores a usage report, or returns the one already stored under its idempotency key.
    /// An accepted report is refused instead when its hour is closed or its subscription's
    /// metering ended (checked under the metering lock, so never into an hour being closed).
    /// Returns the stored row and whether this call inserted it.
    pub async fn insert_usage(&self, report: &UsageRow) -> Result<(UsageRow, bool), StoreError> {
        // Two writers of one key at once: the loser's insert hits the primary key, and its
        // second round finds the winner's row.
        let mut attempt = 0;
        loop {
            match self.try_insert_usage(report).await {
                Err(StoreError::Query {
                    source: sqlx::Error::Database(db),
                    ..
                }) if attempt < 2 && super::is_unique_violation(db.code().as_deref()) => {
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    async fn try_insert_usage(&self, report: &UsageRow) -> Result<(UsageRow, bool), StoreError> {
        let mut tx = self.begin().await?;
        meter_lock(self.backend, &mut tx, false).await?;
        let existing = sqlx::query("SELECT * FROM mplink_usage WHERE idempotency_key = $1")
            .bind(&report.idempotency_key)
            .fetch_optional(&mut *tx)
            .await
            .map_err(q("reading a usage report"))?;
        if let Some(row) = existing {
            return Ok((usage_from(&row)?, false));
        }
        let mut row = report.clone();
        if row.status == USAGE_ACCEPTED {
            let refusal = match &row.sub_key {
                Some(sub) => match ended_reason(&mut tx, sub).await? {
                    Some(r) if r == ENDED_FINAL => Some("subscription_cancelled"),
                    Some(_) => Some("customer_not_subscribed"),
                    None if hour_closed(&mut tx, row.usage_hour).await? => Some("hour_closed"),
                    None => None,
                },
                None => Some("not_linked"),
            };
            if let Some(reason) = refusal {
                row.status = USAGE_REFUSED.to_string();
                row.reason = Some(reason.to_string());
                row.sub_key = None;
            }
        }
        sqlx::query(
            "INSERT INTO mplink_usage (idempotency_key, org_id, sub_key, dimension, quantity, usage_time, \
             usage_hour, status, reason, recorded_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(&row.idempotency_key)
        .bind(&row.org_id)
        .bind(row.sub_key.clone())
        .bind(&row.dimension)
        .bind(row.quantity)
        .bind(row.usage_time)
        .bind(row.usage_hour)
        .bind(&row.status)
        .bind(row.reason.clone())
        .bind(row.recorded_at)
        .execute(&mut *tx)
        .await
        .map_err(q("storing a usage report"))?;
        tx.commit().await.map_err(q("storing a usage report"))?;
        Ok((row, true))
    }

    /// Hours before `before_ms` holding accepted usage that no close has covered yet.
    pub async fn unclosed_usage_hours(&self, before_ms: i64) -> Result<Vec<i64>, StoreError> {
        sqlx::query_scalar(
            "SELECT DISTINCT u.usage_hour FROM mplink_usage u WHERE u.status = 'accepted' \
             AND u.usage_hour < $1 AND NOT EXISTS \
             (SELECT 1 FROM mplink_meter_hours h WHERE h.usage_hour = u.usage_hour) ORDER BY u.usage_hour",
        )
        .bind(before_ms)
        .fetch_all(&self.pool)
        .await
        .map_err(q("finding hours to close"))
    }

    /// Whether `hour` is closed.
    pub async fn is_hour_closed(&self, hour: i64) -> Result<bool, StoreError> {
        let mut conn = self
            .pool
            .acquire()
            .await
            .map_err(q("reading closed hours"))?;
        hour_closed(&mut conn, hour).await
    }

    /// Closes `hour` for every subscription once: the accepted usage of each (subscription,
    /// dimension) becomes one record, and each of `zero_targets` gets a zero record for every
    /// dimension of `zero_dimensions` it had no usage in. None when the hour was closed already
    /// (by this or another replica); else how many records were written.
    pub async fn close_hour(
        &self,
        hour: i64,
        zero_targets: &[MeterTarget],
        zero_dimensions: &[String],
        owner: &str,
        rules: CloseRules,
    ) -> Result<Option<usize>, StoreError> {
        let mut tx = self.begin().await?;
        meter_lock(self.backend, &mut tx, true).await?;
        if hour_closed(&mut tx, hour).await? {
            return Ok(None);
        }
        let sums = sqlx::query(
            "SELECT u.sub_key, u.dimension, CAST(SUM(u.quantity) AS BIGINT) AS quantity FROM mplink_usage u \
             WHERE u.usage_hour = $1 AND u.status = 'accepted' AND NOT EXISTS (SELECT 1 FROM \
             mplink_meter_records r WHERE r.sub_key = u.sub_key AND r.dimension = u.dimension \
             AND r.usage_hour = u.usage_hour) GROUP BY u.sub_key, u.dimension",
        )
        .bind(hour)
        .fetch_all(&mut *tx)
        .await
        .map_err(q("summing an hour's usage"))?;
        let mut usage: BTreeMap<(String, String), i64> = BTreeMap::new();
        for row in &sums {
            let g = |e| StoreError::Query {
                op: "summing an hour's usage",
                source: e,
            };
            usage.insert(
                (
                    row.try_get("sub_key").map_err(g)?,
                    row.try_get("dimension").map_err(g)?,
                ),
                row.try_get("quantity").map_err(g)?,
            );
        }
        let keys: Vec<String> = usage
            .keys()
            .map(|(s, _)| s.clone())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        let mut known = targets(self.backend, &mut tx, &keys).await?;
        // Resolved through a link, a target also carries what the link knows (a product code
        // the subscription has not learned yet): it wins over the bare subscription row.
        for t in zero_targets {
            known.insert(t.sub_key.clone(), t.clone());
        }
        let ended: HashSet<(String, String)> = {
            let rows = sqlx::query("SELECT sub_key, reason FROM mplink_meter_ended")
                .fetch_all(&mut *tx)
                .await
                .map_err(q("reading ended subscriptions"))?;
            rows.iter()
                .filter_map(|r| Some((r.try_get("sub_key").ok()?, r.try_get("reason").ok()?)))
                .collect()
        };
        let is_ended =
            |sub: &str, reason: &str| ended.contains(&(sub.to_string(), reason.to_string()));
        let record_time = (hour + 3_600_000 - 1_000).min(rules.now_ms);
        let mut records = Vec::new();
        for ((sub, dimension), quantity) in &usage {
            let Some(target) = known.get(sub) else {
                continue;
            };
            let (status, last_error) = first_status(
                target,
                record_time,
                rules,
                is_ended(sub, ENDED_NOT_SUBSCRIBED),
            );
            records.push(NewRecord {
                target,
                dimension: dimension.clone(),
                usage_hour: hour,
                record_time,
                quantity: *quantity,
                final_usage: false,
                status,
                last_error,
            });
        }
        for t in zero_targets {
            if is_ended(&t.sub_key, ENDED_FINAL) || is_ended(&t.sub_key, ENDED_NOT_SUBSCRIBED) {
                continue;
            }
            for dimension in zero_dimensions {
                if usage.contains_key(&(t.sub_key.clone(), dimension.clone())) {
                    continue;
                }
                let (status, last_error) = first_status(t, record_time, rules, false);
                records.push(NewRecord {
                    target: t,
                    dimension: dimension.clone(),
                    usage_hour: hour,
                    record_time,
                    quantity: 0,
                    final_usage: false,
                    status,
                    last_error,
                });
            }
        }
        let written = insert_records(&mut tx, &records, rules.now_ms).await?;
        sqlx::query(
            "INSERT INTO mplink_meter_hours (usage_hour, closed_at, closed_by) VALUES ($1, $2, $3)",
        )
        .bind(hour)
        .bind(rules.now_ms)
        .bind(owner)
        .execute(&mut *tx)
        .await
        .map_err(q("closing an hour"))?;
        tx.commit().await.map_err(q("closing an hour"))?;
        Ok(Some(written))
    }

    /// Closes a cancelled subscription's metering: every hour of its accepted usage up to and
    /// including the current (partial) one becomes records, with zero records for the hours
    /// not closed yet; afterwards its usage is refused. None when it was closed already.
    pub async fn close_final(
        &self,
        target: &MeterTarget,
        zero_dimensions: &[String],
        rules: CloseRules,
    ) -> Result<Option<usize>, StoreError> {
        let current = rules.now_ms - rules.now_ms.rem_euclid(3_600_000);
        let mut tx = self.begin().await?;
        meter_lock(self.backend, &mut tx, true).await?;
        if ended_reason(&mut tx, &target.sub_key).await?.is_some() {
            return Ok(None);
        }
        let sums = sqlx::query(
            "SELECT u.usage_hour, u.dimension, CAST(SUM(u.quantity) AS BIGINT) AS quantity FROM mplink_usage u \
             WHERE u.sub_key = $1 AND u.status = 'accepted' AND u.usage_hour <= $2 AND NOT EXISTS \
             (SELECT 1 FROM mplink_meter_records r WHERE r.sub_key = u.sub_key AND \
             r.dimension = u.dimension AND r.usage_hour = u.usage_hour) GROUP BY u.usage_hour, u.dimension",
        )
        .bind(&target.sub_key)
        .bind(current)
        .fetch_all(&mut *tx)
        .await
        .map_err(q("summing final usage"))?;
        let mut usage: BTreeMap<(i64, String), i64> = BTreeMap::new();
        for row in &sums {
            let g = |e| StoreError::Query {
                op: "summing final usage",
                source: e,
            };
            usage.insert(
                (
                    row.try_get("usage_hour").map_err(g)?,
                    row.try_get("dimension").map_err(g)?,
                ),
                row.try_get("quantity").map_err(g)?,
            );
        }
        // Zero records for the hours no close has covered: the current one and, during the
        // grace after an hour ends, the previous one.
        for hour in [current - 3_600_000, current] {
            if hour_closed(&mut tx, hour).await? {
                continue;
            }
            for d in zero_dimensions {
                usage.entry((hour, d.clone())).or_insert(0);
            }
        }
        let records: Vec<NewRecord<'_>> = usage
            .into_iter()
            .map(|((hour, dimension), quantity)| {
                let record_time = (hour + 3_600_000 - 1_000).min(rules.now_ms);
                let (status, last_error) = first_status(target, record_time, rules, false);
                NewRecord {
                    target,
                    dimension,
                    usage_hour: hour,
                    record_time,
                    quantity,
                    final_usage: true,
                    status,
                    last_error,
                }
            })
            .collect();
        let written = insert_records(&mut tx, &records, rules.now_ms).await?;
        sqlx::query(
            "INSERT INTO mplink_meter_ended (sub_key, reason, last_hour, ended_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(&target.sub_key)
        .bind(ENDED_FINAL)
        .bind(current)
        .bind(rules.now_ms)
        .execute(&mut *tx)
        .await
        .map_err(q("ending a subscription's metering"))?;
        tx.commit().await.map_err(q("closing final usage"))?;
        Ok(Some(written))
    }

    /// Cancelled subscriptions (cancelling, or cancelled by a deprovisioned license) holding
    /// accepted usage whose metering has not ended yet: their final usage is due.
    pub async fn final_usage_due(&self) -> Result<Vec<(MeterTarget, String)>, StoreError> {
        let rows = sqlx::query(
            "SELECT s.sub_key, s.product_code, s.customer_aws_account_id, s.license_arn, \
             s.customer_identifier, s.state FROM mplink_subscriptions s \
             WHERE s.state IN ('cancelling', 'cancelled') \
             AND NOT EXISTS (SELECT 1 FROM mplink_meter_ended e WHERE e.sub_key = s.sub_key) \
             AND EXISTS (SELECT 1 FROM mplink_usage u WHERE u.sub_key = s.sub_key AND u.status = 'accepted')",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(q("finding final usage to close"))?;
        let g = |e| StoreError::Query {
            op: "finding final usage to close",
            source: e,
        };
        rows.iter()
            .map(|row| {
                Ok((
                    MeterTarget {
                        sub_key: row.try_get("sub_key").map_err(g)?,
                        product_code: row.try_get("product_code").map_err(g)?,
                        customer_aws_account_id: row
                            .try_get("customer_aws_account_id")
                            .map_err(g)?,
                        license_arn: row.try_get("license_arn").map_err(g)?,
                        customer_identifier: row.try_get("customer_identifier").map_err(g)?,
                    },
                    row.try_get("state").map_err(g)?,
                ))
            })
            .collect()
    }

    /// Subscriptions whose metering ended, with why.
    pub async fn metering_ended(&self) -> Result<BTreeMap<String, String>, StoreError> {
        let rows = sqlx::query("SELECT sub_key, reason FROM mplink_meter_ended")
            .fetch_all(&self.pool)
            .await
            .map_err(q("reading ended subscriptions"))?;
        Ok(rows
            .iter()
            .filter_map(|r| Some((r.try_get("sub_key").ok()?, r.try_get("reason").ok()?)))
            .collect())
    }

    /// Marks unsent records older than `before_ms` expired: past AWS's window, never sent.
    /// Returns them.
    pub async fn expire_meter_records(
        &self,
        before_ms: i64,
    ) -> Result<Vec<MeterRecord>, StoreError> {
        let found = sqlx::query(&format!(
            "UPDATE mplink_meter_records SET status = '{METER_EXPIRED}', \
             last_error = 'past AWS''s metering window before it could be sent', lease_owner = NULL, \
             lease_until = NULL WHERE status = '{METER_UNSENT}' AND record_time < $1 RETURNING {RECORD_COLUMNS}"
        ))
        .bind(before_ms)
        .fetch_all(&self.pool)
        .await
        .map_err(q("expiring meter records"))?;
        found.iter().map(record_from).collect()
    }

    /// Leases up to `limit` unsent records due at `now_ms` to `owner` for `lease_ms`, oldest
    /// hour first; never one another sender holds (`FOR UPDATE SKIP LOCKED` on PostgreSQL).
    pub async fn claim_meter_records(
        &self,
        owner: &str,
        now_ms: i64,
        lease_ms: i64,
        limit: i64,
    ) -> Result<Vec<MeterRecord>, StoreError> {
        let lock = match self.backend {
            Backend::Postgres => " FOR UPDATE SKIP LOCKED",
            Backend::Sqlite => "",
        };
        let sql = format!(
            "UPDATE mplink_meter_records SET lease_owner = $1, lease_until = $2 \
             WHERE (sub_key, dimension, usage_hour) IN (SELECT r.sub_key, r.dimension, r.usage_hour \
               FROM mplink_meter_records r WHERE r.status = '{METER_UNSENT}' AND r.next_attempt_at <= $3 \
               AND (r.lease_until IS NULL OR r.lease_until < $3) \
               ORDER BY r.usage_hour, r.sub_key, r.dimension LIMIT $4{lock}) \
             RETURNING {RECORD_COLUMNS}"
        );
        let mut tx = self.begin().await?;
        let found = sqlx::query(&sql)
            .bind(owner)
            .bind(now_ms + lease_ms)
            .bind(now_ms)
            .bind(limit)
            .fetch_all(&mut *tx)
            .await
            .map_err(q("leasing meter records"))?;
        tx.commit().await.map_err(q("leasing meter records"))?;
        let mut out: Vec<MeterRecord> = found.iter().map(record_from).collect::<Result<_, _>>()?;
        out.sort_by(|a, b| {
            (a.usage_hour, &a.sub_key, &a.dimension).cmp(&(b.usage_hour, &b.sub_key, &b.dimension))
        });
        Ok(out)
    }

    /// Stores what happened to a record `owner` leased; false when the lease was lost. A
    /// `CustomerNotSubscribed` answer also ends the subscription's metering: its other unsent
    /// records become `stopped` and its later usage is refused.
    pub async fn meter_recorded(
        &self,
        record: &MeterRecord,
        owner: &str,
        now_ms: i64,
        result: &MeterResult,
    ) -> Result<bool, StoreError> {
        let mut tx = self.begin().await?;
        let done = match result {
            MeterResult::Answered {
                status,
                metering_record_id,
            } => sqlx::query(
                "UPDATE mplink_meter_records SET status = $1, metering_record_id = $2, sent_at = $3, \
                 attempts = attempts + 1, last_error = NULL, lease_owner = NULL, lease_until = NULL \
                 WHERE sub_key = $4 AND dimension = $5 AND usage_hour = $6 AND lease_owner = $7",
            )
            .bind(status)
            .bind(metering_record_id.clone())
            .bind(now_ms),
            MeterResult::Failed {
                error,
                retry_at_ms,
                park,
            } => sqlx::query(
                "UPDATE mplink_meter_records SET status = $1, next_attempt_at = $2, last_error = $3, \
                 attempts = attempts + 1, lease_owner = NULL, lease_until = NULL \
                 WHERE sub_key = $4 AND dimension = $5 AND usage_hour = $6 AND lease_owner = $7",
            )
            .bind(if *park { METER_FAILED } else { METER_UNSENT })
            .bind(*retry_at_ms)
            .bind(storable_text(error, 1024)),
        }
        .bind(&record.sub_key)
        .bind(&record.dimension)
        .bind(record.usage_hour)
        .bind(owner)
        .execute(&mut *tx)
        .await
        .map_err(q("recording a metering answer"))?;
        if matches!(result, MeterResult::Answered { status, .. } if status == METER_NOT_SUBSCRIBED)
        {
            sqlx::query(
                "INSERT INTO mplink_meter_ended (sub_key, reason, last_hour, ended_at) \
                 VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
            )
            .bind(&record.sub_key)
            .bind(ENDED_NOT_SUBSCRIBED)
            .bind(record.usage_hour)
            .bind(now_ms)
            .execute(&mut *tx)
            .await
            .map_err(q("ending a subscription's metering"))?;
            sqlx::query(&format!(
                "UPDATE mplink_meter_records SET status = '{METER_STOPPED}', \
                 last_error = 'AWS answered CustomerNotSubscribed for this subscription' \
                 WHERE sub_key = $1 AND status = '{METER_UNSENT}'"
            ))
            .bind(&record.sub_key)
            .execute(&mut *tx)
            .await
            .map_err(q("stopping a subscription's records"))?;
        }
        tx.commit()
            .await
            .map_err(q("recording a metering answer"))?;
        Ok(done.rows_affected() == 1)
    }

    /// Puts parked (`failed`) records back to unsent, due now. Returns how many.
    pub async fn meter_retry(&self, now_ms: i64) -> Result<u64, StoreError> {
        Ok(sqlx::query(&format!(
            "UPDATE mplink_meter_records SET status = '{METER_UNSENT}', attempts = 0, \
             next_attempt_at = $1 WHERE status = '{METER_FAILED}' AND product_code <> ''"
        ))
        .bind(now_ms)
        .execute(&self.pool)
        .await
        .map_err(q("retrying meter records"))?
        .rows_affected())
    }

    /// Meter records, newest hour first, at most `limit`.
    pub async fn meter_records(&self, limit: i64) -> Result<Vec<MeterRecord>, StoreError> {
        let found = sqlx::query(&format!(
            "SELECT {RECORD_COLUMNS} FROM mplink_meter_records \
             ORDER BY usage_hour DESC, sub_key, dimension LIMIT $1"
        ))
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(q("reading meter records"))?;
        found.iter().map(record_from).collect()
    }

    /// Usage reports, oldest first, at most `limit`.
    pub async fn usage_reports(&self, limit: i64) -> Result<Vec<UsageRow>, StoreError> {
        let found = sqlx::query(
            "SELECT * FROM mplink_usage ORDER BY recorded_at, idempotency_key LIMIT $1",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(q("reading usage reports"))?;
        found.iter().map(usage_from).collect()
    }

    /// Counts for `meter status` and the metrics.
    pub async fn meter_stats(&self) -> Result<MeterStats, StoreError> {
        let mut stats = MeterStats::default();
        for row in
            sqlx::query("SELECT status, COUNT(*) AS n FROM mplink_meter_records GROUP BY status")
                .fetch_all(&self.pool)
                .await
                .map_err(q("counting meter records"))?
        {
            let status: String = row.try_get("status").map_err(q("counting meter records"))?;
            let n: i64 = row.try_get("n").map_err(q("counting meter records"))?;
            stats.by_status.insert(status, n);
        }
        for row in sqlx::query(
            "SELECT reason, COUNT(*) AS n FROM mplink_usage WHERE status = 'refused' GROUP BY reason",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(q("counting refused usage"))?
        {
            let reason: Option<String> = row.try_get("reason").map_err(q("counting refused usage"))?;
            let n: i64 = row.try_get("n").map_err(q("counting refused usage"))?;
            stats.refused.insert(reason.unwrap_or_default(), n);
        }
        stats.oldest_unsent_hour = sqlx::query_scalar(&format!(
            "SELECT MIN(usage_hour) FROM mplink_meter_records WHERE status = '{METER_UNSENT}'"
        ))
        .fetch_one(&self.pool)
        .await
        .map_err(q("finding the oldest unsent hour"))?;
        stats.oldest_unsent_final = sqlx::query_scalar(&format!(
            "SELECT MIN(created_at) FROM mplink_meter_records WHERE status = '{METER_UNSENT}' AND final = 1"
        ))
        .fetch_one(&self.pool)
        .await
        .map_err(q("finding the oldest unsent final usage"))?;
        Ok(stats)
    }
}
