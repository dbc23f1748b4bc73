//! The sender's side: expiring, leasing, storing AWS's answers, retrying, listing, counting.

use super::{
    record_from, usage_from, MeterRecord, MeterResult, MeterStats, UsageRow, ENDED_NOT_SUBSCRIBED,
    METER_EXPIRED, METER_FAILED, METER_NOT_SUBSCRIBED, METER_STOPPED, METER_UNSENT, RECORD_COLUMNS,
};
use crate::store::{q, storable_text, Store, StoreError};
use sqlx::Row;

impl Store {
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
        let lock = self.skip_locked();
        let sql = format!(
            "UPDATE mplink_meter_records SET lease_owner = $1, lease_until = $2 \
             WHERE (sub_key, dimension, usage_hour) IN (SELECT r.sub_key, r.dimension, r.usage_hour \
               FROM mplink_meter_records r WHERE r.status = '{METER_UNSENT}' AND r.next_attempt_at <= $3 \
               AND (r.lease_until IS NULL OR r.lease_until < $3) \
               ORDER BY r.usage_hour, r.sub_key, r.dimension LIMIT $4{lock}) \
             RETURNING {RECORD_COLUMNS}"
        );
        let found = self
            .lease_rows(
                &sql,
                owner,
                now_ms,
                lease_ms,
                limit,
                "leasing meter records",
            )
            .await?;
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
