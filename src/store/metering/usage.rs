//! Usage reports: stored once per idempotency key, refused when their hour is closed or
//! their subscription's metering ended.

use super::{
    ended_reason, hour_closed, meter_lock, usage_from, UsageRow, ENDED_FINAL, USAGE_ACCEPTED,
    USAGE_REFUSED, USAGE_SUBMITTED,
};
use crate::store::{q, Store, StoreError};

/// Whether the (subscription, dimension, hour) record is written already (a final close of a
/// cancellation covers the current hour before the hourly close does).
async fn record_exists(
    conn: &mut sqlx::AnyConnection,
    sub: &str,
    dimension: &str,
    hour: i64,
) -> Result<bool, StoreError> {
    let found: Option<i64> = sqlx::query_scalar(
        "SELECT usage_hour FROM mplink_meter_records WHERE sub_key = $1 AND dimension = $2 AND usage_hour = $3",
    )
    .bind(sub)
    .bind(dimension)
    .bind(hour)
    .fetch_optional(conn)
    .await
    .map_err(q("reading meter records"))?;
    Ok(found.is_some())
}

impl Store {
    /// Stores a usage report, or returns the one already stored under its idempotency key.
    /// An accepted report is refused instead when its hour is closed or its subscription's
    /// metering ended (checked under the metering lock, so never into an hour being closed).
    /// Returns the stored row and whether this call inserted it. `reopen`: the subscription is
    /// active again after a cancellation whose final usage was closed (a legacy customer who
    /// re-subscribed keeps its subscription key), so its metering starts again.
    pub async fn insert_usage(
        &self,
        report: &UsageRow,
        reopen: bool,
    ) -> Result<(UsageRow, bool), StoreError> {
        // Two writers of one key at once: the loser's insert hits the primary key, and its
        // second round finds the winner's row.
        let mut attempt = 0;
        loop {
            match self.try_insert_usage(report, reopen).await {
                Err(StoreError::Query {
                    source: sqlx::Error::Database(db),
                    ..
                }) if attempt < 2 && crate::store::is_unique_violation(db.code().as_deref()) => {
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    async fn try_insert_usage(
        &self,
        report: &UsageRow,
        reopen: bool,
    ) -> Result<(UsageRow, bool), StoreError> {
        let mut tx = self.begin().await?;
        meter_lock(self.backend, &mut tx, false).await?;
        let existing = sqlx::query("SELECT * FROM mplink_usage WHERE idempotency_key = $1")
            .bind(&report.idempotency_key)
            .fetch_optional(&mut *tx)
            .await
            .map_err(q("reading a usage report"))?;
        // A row a host wrote with SQL (`submitted`) is decided here, in place.
        let mut submitted = false;
        if let Some(row) = existing {
            let stored = usage_from(&row)?;
            if stored.status != USAGE_SUBMITTED {
                return Ok((stored, false));
            }
            submitted = true;
        }
        let mut row = report.clone();
        if row.status == USAGE_ACCEPTED {
            let refusal = match &row.sub_key {
                Some(sub) => {
                    let mut ended = ended_reason(&mut tx, sub).await?;
                    if reopen && ended.as_deref() == Some(ENDED_FINAL) {
                        sqlx::query(
                            "DELETE FROM mplink_meter_ended WHERE sub_key = $1 AND reason = $2",
                        )
                        .bind(sub)
                        .bind(ENDED_FINAL)
                        .execute(&mut *tx)
                        .await
                        .map_err(q("reopening a subscription's metering"))?;
                        ended = None;
                    }
                    match ended {
                        Some(r) if r == ENDED_FINAL => Some("subscription_cancelled"),
                        Some(_) => Some("customer_not_subscribed"),
                        None if hour_closed(&mut tx, row.usage_hour).await?
                            || record_exists(&mut tx, sub, &row.dimension, row.usage_hour)
                                .await? =>
                        {
                            Some("hour_closed")
                        }
                        None => None,
                    }
                }
                None => Some("not_linked"),
            };
            if let Some(reason) = refusal {
                row.status = USAGE_REFUSED.to_string();
                row.reason = Some(reason.to_string());
                row.sub_key = None;
            }
        }
        let write = if submitted {
            sqlx::query(
                "UPDATE mplink_usage SET org_id = $2, sub_key = $3, dimension = $4, quantity = $5, \
                 usage_time = $6, usage_hour = $7, status = $8, reason = $9, recorded_at = $10, \
                 tags = $11 WHERE idempotency_key = $1 AND status = 'submitted'",
            )
        } else {
            sqlx::query(
                "INSERT INTO mplink_usage (idempotency_key, org_id, sub_key, dimension, quantity, \
                 usage_time, usage_hour, status, reason, recorded_at, tags) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
            )
        };
        write
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
            .bind(&row.tags)
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

    /// Reports hosts wrote with SQL and mplink has not decided yet, oldest first.
    pub async fn submitted_usage(&self, limit: i64) -> Result<Vec<UsageRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT * FROM mplink_usage WHERE status = 'submitted' ORDER BY recorded_at, idempotency_key LIMIT $1",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(q("reading submitted usage"))?;
        rows.iter().map(usage_from).collect()
    }

    /// Refuses a submitted report that is not a valid report (`reason` says which field).
    pub async fn refuse_submitted(
        &self,
        key: &str,
        reason: &str,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE mplink_usage SET status = 'refused', reason = $1, sub_key = NULL, recorded_at = $2 \
             WHERE idempotency_key = $3 AND status = 'submitted'",
        )
        .bind(reason)
        .bind(now_ms)
        .bind(key)
        .execute(&self.pool)
        .await
        .map_err(q("refusing submitted usage"))?;
        Ok(())
    }
}
