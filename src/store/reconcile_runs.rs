//! Scheduled reconciliation's lease: one replica at a time runs a product's pass, at most once
//! per period, and the row keeps when it last ran and succeeded.

use super::*;

impl Store {
    /// Takes `product_id`'s pass for `owner` until `now_ms + lease_ms` when no one holds it and
    /// the last pass started at least `every_ms` ago; false otherwise.
    pub async fn claim_reconcile(
        &self,
        product_id: &str,
        owner: &str,
        every_ms: i64,
        lease_ms: i64,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let mut tx = self.begin().await?;
        sqlx::query(
            "INSERT INTO mplink_reconcile_runs (product_id) VALUES ($1) ON CONFLICT (product_id) DO NOTHING",
        )
        .bind(product_id)
        .execute(&mut *tx)
        .await
        .map_err(q("registering a reconciled product"))?;
        let taken = sqlx::query(
            "UPDATE mplink_reconcile_runs SET lease_owner = $1, lease_until = $2, last_started_at = $3 \
             WHERE product_id = $4 AND (lease_until IS NULL OR lease_until < $3) \
             AND (last_started_at IS NULL OR last_started_at <= $5)",
        )
        .bind(owner)
        .bind(now_ms + lease_ms)
        .bind(now_ms)
        .bind(product_id)
        .bind(now_ms - every_ms)
        .execute(&mut *tx)
        .await
        .map_err(q("taking a reconcile lease"))?;
        tx.commit().await.map_err(q("taking a reconcile lease"))?;
        Ok(taken.rows_affected() == 1)
    }

    /// Ends `owner`'s pass over `product_id`: the lease goes, the report stays.
    pub async fn finish_reconcile(
        &self,
        product_id: &str,
        owner: &str,
        succeeded: bool,
        report_json: &str,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE mplink_reconcile_runs SET lease_owner = NULL, lease_until = NULL, last_finished_at = $1, \
             last_success_at = CASE WHEN $2 THEN $1 ELSE last_success_at END, last_report = $3 \
             WHERE product_id = $4 AND lease_owner = $5",
        )
        .bind(now_ms)
        .bind(succeeded)
        .bind(report_json)
        .bind(product_id)
        .bind(owner)
        .execute(&self.pool)
        .await
        .map_err(q("finishing a reconcile pass"))?;
        Ok(())
    }
}
