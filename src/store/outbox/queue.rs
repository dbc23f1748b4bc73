//! The outbox as a queue: delivery states, the rows the deliverer leases and settles, and the
//! reads behind the feed, `outbox inspect` and the metrics.

use crate::notify::{OutboxRow, SubscriptionIds};
use crate::store::{q, rows, Backend, StoreError};
use crate::time::rfc3339_millis;
use sqlx::Row;

/// Delivery states of an outbox row.
pub const STATUS_PENDING: &str = "pending";
/// Every webhook accepted it.
pub const STATUS_DELIVERED: &str = "delivered";
/// Parked after the attempt limit: kept, listed by `outbox inspect`, resumed by `outbox retry`.
pub const STATUS_FAILED: &str = "failed";

/// Every column of a stored row, for [`row_from`].
pub(super) const SELECT_ROWS: &str = "SELECT seq, event_id, event_type, org_id, moved_to_org_id, sub_key, product_code, \
     customer_identifier, customer_aws_account_id, agreement_id, license_arn, state_before, state_after, \
     payment_method_before, payment_method, event_time, cause, created_at, status, attempts, last_error \
     FROM mplink_outbox";

/// A stored row.
pub(super) fn row_from(row: &sqlx::any::AnyRow) -> Result<OutboxRow, StoreError> {
    let get = |c: &'static str| -> Result<Option<String>, StoreError> {
        row.try_get(c).map_err(q("decoding an outbox row"))
    };
    let int = |c: &'static str| -> Result<i64, StoreError> {
        row.try_get(c).map_err(q("decoding an outbox row"))
    };
    let created_at_ms = int("created_at")?;
    Ok(OutboxRow {
        seq: int("seq")?,
        event_id: get("event_id")?.unwrap_or_default(),
        event_type: get("event_type")?.unwrap_or_default(),
        org_id: get("org_id")?.unwrap_or_default(),
        moved_to_org_id: get("moved_to_org_id")?,
        subscription: SubscriptionIds {
            sub_key: get("sub_key")?,
            product_code: get("product_code")?,
            customer_identifier: get("customer_identifier")?,
            customer_aws_account_id: get("customer_aws_account_id")?,
            agreement_id: get("agreement_id")?,
            license_arn: get("license_arn")?,
        },
        state_before: get("state_before")?,
        state_after: get("state_after")?,
        payment_method_before: get("payment_method_before")?,
        payment_method: get("payment_method")?,
        event_time: rfc3339_millis(int("event_time")?),
        cause: get("cause")?.unwrap_or_default(),
        created_at: rfc3339_millis(created_at_ms),
        status: get("status")?.unwrap_or_default(),
        attempts: int("attempts")?,
        last_error: get("last_error")?,
        created_at_ms,
    })
}

/// Counts of the outbox by delivery state, and the oldest row not yet delivered.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct OutboxStats {
    /// Rows waiting for delivery (or being delivered).
    pub pending: i64,
    /// Rows parked after the attempt limit.
    pub failed: i64,
    /// Rows every webhook accepted.
    pub delivered: i64,
    /// When the oldest pending or failed row was committed, epoch ms.
    pub oldest_undelivered_ms: Option<i64>,
}

/// The order a deliverer's claim leaves a row in after one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptResult {
    /// Every webhook accepted the row.
    Delivered,
    /// It failed; try again at this time (epoch ms), or park it when `park` is set.
    Failed {
        /// What went wrong (no body, no secret).
        error: String,
        /// Next attempt, epoch ms.
        retry_at_ms: i64,
        /// The attempt limit is reached: park the row as failed.
        park: bool,
    },
}

impl crate::store::Store {
    /// Rows after `after`, in sequence order, at most `limit`: the pull feed.
    pub async fn outbox_after(&self, after: i64, limit: i64) -> Result<Vec<OutboxRow>, StoreError> {
        let sql = format!("{SELECT_ROWS} WHERE seq > $1 ORDER BY seq LIMIT $2");
        let found = sqlx::query(&sql)
            .bind(after)
            .bind(limit)
            .fetch_all(&self.pool)
            .await
            .map_err(q("reading the outbox"))?;
        found.iter().map(row_from).collect()
    }

    /// Rows not delivered yet (pending and failed), oldest first, at most `limit`.
    pub async fn outbox_undelivered(&self, limit: i64) -> Result<Vec<OutboxRow>, StoreError> {
        let sql = format!(
            "{SELECT_ROWS} WHERE status IN ('{STATUS_PENDING}', '{STATUS_FAILED}') ORDER BY seq LIMIT $1"
        );
        let found = sqlx::query(&sql)
            .bind(limit)
            .fetch_all(&self.pool)
            .await
            .map_err(q("reading the outbox"))?;
        found.iter().map(row_from).collect()
    }

    /// Counts by delivery state.
    pub async fn outbox_stats(&self) -> Result<OutboxStats, StoreError> {
        let found = sqlx::query(
            "SELECT status, COUNT(*) AS n, MIN(created_at) AS oldest FROM mplink_outbox GROUP BY status",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(q("counting the outbox"))?;
        let mut stats = OutboxStats::default();
        for row in found {
            let status: String = row.try_get("status").map_err(q("counting the outbox"))?;
            let n: i64 = row.try_get("n").map_err(q("counting the outbox"))?;
            let oldest: Option<i64> = row.try_get("oldest").map_err(q("counting the outbox"))?;
            match status.as_str() {
                STATUS_DELIVERED => stats.delivered = n,
                s => {
                    if s == STATUS_FAILED {
                        stats.failed = n;
                    } else {
                        stats.pending = n;
                    }
                    stats.oldest_undelivered_ms = match (stats.oldest_undelivered_ms, oldest) {
                        (Some(a), Some(b)) => Some(a.min(b)),
                        (a, b) => a.or(b),
                    };
                }
            }
        }
        Ok(stats)
    }

    /// Pending rows that can still go out: those not held back by a parked row of their
    /// organization (`outbox deliver --until-idle` stops when none is left).
    pub async fn outbox_deliverable(&self) -> Result<i64, StoreError> {
        sqlx::query_scalar(&format!(
            "SELECT COUNT(*) FROM mplink_outbox o WHERE o.status = '{STATUS_PENDING}' \
             AND NOT EXISTS (SELECT 1 FROM mplink_outbox e WHERE e.org_id = o.org_id \
             AND e.seq < o.seq AND e.status = '{STATUS_FAILED}')"
        ))
        .fetch_one(&self.pool)
        .await
        .map_err(q("counting the outbox"))
    }

    /// Leases up to `limit` rows due for delivery to `owner` until `now_ms + lease_ms`: for each
    /// organization only its oldest undelivered row (so rows reach a webhook in sequence order
    /// per organization, and a parked row holds the later ones back until it is retried), and
    /// never a row another deliverer holds (`FOR UPDATE SKIP LOCKED` on PostgreSQL; SQLite has
    /// one writer at a time).
    pub async fn claim_outbox(
        &self,
        owner: &str,
        now_ms: i64,
        lease_ms: i64,
        limit: i64,
    ) -> Result<Vec<OutboxRow>, StoreError> {
        let lock = self.skip_locked();
        let columns = SELECT_ROWS
            .trim_start_matches("SELECT ")
            .trim_end_matches(" FROM mplink_outbox");
        let sql = format!(
            "UPDATE mplink_outbox SET lease_owner = $1, lease_until = $2 WHERE seq IN (\
               SELECT o.seq FROM mplink_outbox o \
               WHERE o.status = '{STATUS_PENDING}' AND o.next_attempt_at <= $3 \
                 AND (o.lease_until IS NULL OR o.lease_until < $3) \
                 AND NOT EXISTS (SELECT 1 FROM mplink_outbox e \
                   WHERE e.org_id = o.org_id AND e.seq < o.seq AND e.status <> '{STATUS_DELIVERED}') \
               ORDER BY o.seq LIMIT $4{lock}) \
             RETURNING {columns}"
        );
        let found = self
            .lease_rows(&sql, owner, now_ms, lease_ms, limit, "leasing outbox rows")
            .await?;
        let mut rows: Vec<OutboxRow> = found.iter().map(row_from).collect::<Result<_, _>>()?;
        rows.sort_by_key(|r| r.seq);
        Ok(rows)
    }

    /// Records one delivery attempt of a row `owner` leased; false when the lease was lost
    /// (it expired and another deliverer took the row).
    pub async fn outbox_attempted(
        &self,
        seq: i64,
        owner: &str,
        now_ms: i64,
        result: &AttemptResult,
    ) -> Result<bool, StoreError> {
        let delivered = format!(
            "UPDATE mplink_outbox SET status = '{STATUS_DELIVERED}', delivered_at = $1, \
             attempts = attempts + 1, last_error = NULL, lease_owner = NULL, lease_until = NULL \
             WHERE seq = $2 AND lease_owner = $3"
        );
        let done = match result {
            AttemptResult::Delivered => sqlx::query(&delivered)
            .bind(now_ms)
            .bind(seq)
            .bind(owner),
            AttemptResult::Failed {
                error,
                retry_at_ms,
                park,
            } => sqlx::query(
                "UPDATE mplink_outbox SET status = $1, next_attempt_at = $2, attempts = attempts + 1, \
                 last_error = $3, lease_owner = NULL, lease_until = NULL WHERE seq = $4 AND lease_owner = $5",
            )
            .bind(if *park { STATUS_FAILED } else { STATUS_PENDING })
            .bind(*retry_at_ms)
            .bind(crate::store::storable_text(error, 1024))
            .bind(seq)
            .bind(owner),
        }
        .execute(&self.pool)
        .await
        .map_err(q("recording a delivery attempt"))?;
        Ok(done.rows_affected() == 1)
    }

    /// Puts parked rows back to pending, due now, with a fresh attempt count: those in `seqs`,
    /// or every parked row when `seqs` is None. Returns how many.
    pub async fn outbox_retry(&self, seqs: Option<&[i64]>) -> Result<u64, StoreError> {
        // SQLite's placeholders are anonymous in the generated lists: never mixed with $n.
        let now_placeholder = match self.backend {
            Backend::Postgres => "$1",
            Backend::Sqlite => "?",
        };
        let set = format!(
            "UPDATE mplink_outbox SET status = '{STATUS_PENDING}', attempts = 0, \
             next_attempt_at = {now_placeholder}, last_error = NULL WHERE status = '{STATUS_FAILED}'"
        );
        let now = crate::time::now_ms();
        let n = match seqs {
            None => sqlx::query(&set)
                .bind(now)
                .execute(&self.pool)
                .await
                .map_err(q("retrying outbox rows"))?
                .rows_affected(),
            Some(seqs) => {
                let mut n = 0;
                for chunk in seqs.chunks(crate::store::BULK_ROWS) {
                    let sql = format!(
                        "{set} AND seq IN {}",
                        rows::tuples(self.backend, 1, chunk.len(), 2)
                    );
                    let mut query = sqlx::query(&sql).bind(now);
                    for s in chunk {
                        query = query.bind(*s);
                    }
                    n += query
                        .execute(&self.pool)
                        .await
                        .map_err(q("retrying outbox rows"))?
                        .rows_affected();
                }
                n
            }
        };
        Ok(n)
    }
}
