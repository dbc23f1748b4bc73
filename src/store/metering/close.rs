//! Closing: an hour's (or a cancelled subscription's) usage becomes meter records, once.

use super::{
    ended_reason, hour_closed, meter_lock, MeterTarget, ENDED_FINAL, ENDED_NOT_SUBSCRIBED,
    METER_EXPIRED, METER_FAILED, METER_STOPPED, METER_UNSENT,
};
use crate::store::{q, rows, Backend, Store, StoreError};
use sqlx::{AnyConnection, Row};
use std::collections::{BTreeMap, HashSet};

/// The subscriptions' identifiers, by key.
async fn targets(
    backend: Backend,
    conn: &mut AnyConnection,
    keys: &[String],
) -> Result<BTreeMap<String, MeterTarget>, StoreError> {
    let mut out = BTreeMap::new();
    for chunk in keys.chunks(crate::store::BULK_ROWS) {
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
    /// The allocations' JSON ([`allocations_text`]), fixed here so every resend is the same.
    allocations: Option<String>,
}

/// A record's usage: its total and its parts per tag set.
#[derive(Debug, Default)]
struct Summed {
    quantity: i64,
    by_tags: Vec<(crate::tags::Tags, i64)>,
}

impl Summed {
    fn add(&mut self, tags: &str, quantity: i64) {
        self.quantity += quantity;
        self.by_tags.push((crate::tags::parse(tags), quantity));
    }

    /// The record's `UsageAllocations` as stored: `None` when no usage was tagged.
    fn allocations_text(&self) -> Option<String> {
        crate::tags::allocations(&self.by_tags).and_then(|a| serde_json::to_string(&a).ok())
    }
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
             created_at, sent_at, allocations) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, \
             NULL, 0, $12, NULL, NULL, $13, $14, NULL, $15) ON CONFLICT DO NOTHING",
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
        .bind(r.allocations.clone())
        .execute(&mut *conn)
        .await
        .map_err(q("writing meter records"))?;
        written += done.rows_affected() as usize;
    }
    Ok(written)
}

/// How a closing decides each record's first status. Record times are whole seconds (the
/// hour's last second, or now for a partial hour) so they survive the wire's float seconds.
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
            "SELECT u.sub_key, u.dimension, u.tags, CAST(SUM(u.quantity) AS BIGINT) AS quantity \
             FROM mplink_usage u WHERE u.usage_hour = $1 AND u.status = 'accepted' AND NOT EXISTS \
             (SELECT 1 FROM mplink_meter_records r WHERE r.sub_key = u.sub_key AND \
             r.dimension = u.dimension AND r.usage_hour = u.usage_hour) \
             GROUP BY u.sub_key, u.dimension, u.tags",
        )
        .bind(hour)
        .fetch_all(&mut *tx)
        .await
        .map_err(q("summing an hour's usage"))?;
        let mut usage: BTreeMap<(String, String), Summed> = BTreeMap::new();
        for row in &sums {
            let g = |e| StoreError::Query {
                op: "summing an hour's usage",
                source: e,
            };
            let tags: String = row.try_get("tags").map_err(g)?;
            usage
                .entry((
                    row.try_get("sub_key").map_err(g)?,
                    row.try_get("dimension").map_err(g)?,
                ))
                .or_default()
                .add(&tags, row.try_get("quantity").map_err(g)?);
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
        let record_time =
            (hour + 3_600_000 - 1_000).min(rules.now_ms - rules.now_ms.rem_euclid(1_000));
        let mut records = Vec::new();
        for ((sub, dimension), summed) in &usage {
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
                quantity: summed.quantity,
                final_usage: false,
                status,
                last_error,
                allocations: summed.allocations_text(),
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
                    allocations: None,
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
            "SELECT u.usage_hour, u.dimension, u.tags, CAST(SUM(u.quantity) AS BIGINT) AS quantity \
             FROM mplink_usage u WHERE u.sub_key = $1 AND u.status = 'accepted' AND u.usage_hour <= $2 \
             AND NOT EXISTS (SELECT 1 FROM mplink_meter_records r WHERE r.sub_key = u.sub_key AND \
             r.dimension = u.dimension AND r.usage_hour = u.usage_hour) \
             GROUP BY u.usage_hour, u.dimension, u.tags",
        )
        .bind(&target.sub_key)
        .bind(current)
        .fetch_all(&mut *tx)
        .await
        .map_err(q("summing final usage"))?;
        let mut usage: BTreeMap<(i64, String), Summed> = BTreeMap::new();
        for row in &sums {
            let g = |e| StoreError::Query {
                op: "summing final usage",
                source: e,
            };
            let tags: String = row.try_get("tags").map_err(g)?;
            usage
                .entry((
                    row.try_get("usage_hour").map_err(g)?,
                    row.try_get("dimension").map_err(g)?,
                ))
                .or_default()
                .add(&tags, row.try_get("quantity").map_err(g)?);
        }
        // Zero records for the hours no close has covered: the current one and, during the
        // grace after an hour ends, the previous one.
        for hour in [current - 3_600_000, current] {
            if hour_closed(&mut tx, hour).await? {
                continue;
            }
            for d in zero_dimensions {
                usage.entry((hour, d.clone())).or_default();
            }
        }
        let records: Vec<NewRecord<'_>> = usage
            .into_iter()
            .map(|((hour, dimension), summed)| {
                let record_time =
                    (hour + 3_600_000 - 1_000).min(rules.now_ms - rules.now_ms.rem_euclid(1_000));
                let (status, last_error) = first_status(target, record_time, rules, false);
                NewRecord {
                    target,
                    dimension,
                    usage_hour: hour,
                    record_time,
                    quantity: summed.quantity,
                    final_usage: true,
                    status,
                    last_error,
                    allocations: summed.allocations_text(),
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
}
