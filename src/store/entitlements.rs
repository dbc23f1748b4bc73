//! Contract entitlements: the checks the apply and link transactions ask for, the entitlement
//! loop's leases on them, and AWS's answers, stored with the event time they answer.

use super::*;
use crate::entitlement::{normalized, Entitlement, EntitlementValue};
use crate::notify::{EventType, NewRow};
use sqlx::AnyConnection;
use std::collections::BTreeMap;

/// `next_attempt_at` of a check with nothing to ask: beyond every due time, so the due index
/// never reads answered checks.
const NOTHING_TO_ASK: i64 = i64::MAX;

/// A check the entitlement loop leased: the subscription to ask AWS about and the event time the
/// answer will stand for.
#[derive(Debug, Clone, PartialEq)]
pub struct EntitlementCheck {
    /// The subscription as the ledger knows it (its identifiers choose the query).
    pub subscription: Subscription,
    /// The newest event (or link) time that asked for it.
    pub wanted_time_ms: i64,
    /// Failed attempts since the last answer.
    pub attempts: i64,
}

/// What the ledger holds about one subscription's entitlements.
#[derive(Debug, Clone, PartialEq)]
pub struct EntitlementSet {
    /// AWS's last answer, each dimension once; empty when AWS said "no entitlement" or has not
    /// answered yet.
    pub items: Vec<Entitlement>,
    /// The event time the answer stands for; None before the first answer.
    pub as_of_ms: Option<i64>,
    /// When it was stored.
    pub answered_at_ms: Option<i64>,
    /// True while a newer event asked and AWS has not answered it yet.
    pub refreshing: bool,
    /// The last failed attempt's error (AWS's code, message and request id).
    pub last_error: Option<String>,
}

/// What storing an answer did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AnswerStored {
    /// False when the lease was lost or a newer answer was stored meanwhile: nothing written.
    pub stored: bool,
    /// The answer differs from the one before.
    pub changed: bool,
    /// `link.entitlements_changed` rows written.
    pub notified: usize,
}

/// Asks for a check of each `(sub_key, time)`, in a transaction applying events or a link: a
/// newer time than the check's asks again (at once), an older one changes nothing.
pub(super) async fn ask(
    backend: Backend,
    conn: &mut AnyConnection,
    asks: &[(String, i64)],
    now: i64,
) -> Result<(), StoreError> {
    // The newest time per subscription, in key order (one row each in a statement).
    let mut newest: BTreeMap<&str, i64> = BTreeMap::new();
    for (key, time) in asks {
        let t = newest.entry(key).or_insert(*time);
        *t = (*t).max(*time);
    }
    let asks: Vec<(&str, i64)> = newest.into_iter().collect();
    for chunk in asks.chunks(BULK_ROWS) {
        let sql = format!(
            "INSERT INTO mplink_entitlement_checks (sub_key, wanted_time, attempts, next_attempt_at) \
             VALUES {} ON CONFLICT (sub_key) DO UPDATE SET \
             wanted_time = excluded.wanted_time, attempts = 0, last_error = NULL, \
             next_attempt_at = excluded.next_attempt_at \
             WHERE excluded.wanted_time > mplink_entitlement_checks.wanted_time",
            rows::tuples(backend, chunk.len(), 4, 1)
        );
        let mut query = sqlx::query(&sql);
        for (key, time) in chunk {
            query = query.bind(*key).bind(*time).bind(0i64).bind(now);
        }
        query
            .execute(&mut *conn)
            .await
            .map_err(q("asking for entitlement checks"))?;
    }
    Ok(())
}

const CHECK_COLUMNS: &str =
    "sub_key, wanted_time, answered_time, answered_at, attempts, last_error";

impl Store {
    /// Leases up to `limit` checks due at `now_ms` to `owner` for `lease_ms`, the longest waiting
    /// first; never one another loop holds.
    pub async fn claim_entitlement_checks(
        &self,
        owner: &str,
        now_ms: i64,
        lease_ms: i64,
        limit: i64,
    ) -> Result<Vec<EntitlementCheck>, StoreError> {
        let lock = self.skip_locked();
        let sql = format!(
            "UPDATE mplink_entitlement_checks SET lease_owner = $1, lease_until = $2 \
             WHERE sub_key IN (SELECT c.sub_key FROM mplink_entitlement_checks c \
               WHERE c.next_attempt_at <= $3 AND (c.lease_until IS NULL OR c.lease_until < $3) \
               ORDER BY c.next_attempt_at, c.sub_key LIMIT $4{lock}) \
             RETURNING {CHECK_COLUMNS}"
        );
        let leased = self
            .lease_rows(
                &sql,
                owner,
                now_ms,
                lease_ms,
                limit,
                "leasing entitlement checks",
            )
            .await?;
        let mut wanted: HashMap<String, (i64, i64)> = HashMap::new();
        for row in &leased {
            let key: String = row.try_get("sub_key").map_err(q("reading a check"))?;
            let time: i64 = row.try_get("wanted_time").map_err(q("reading a check"))?;
            let attempts: i64 = row.try_get("attempts").map_err(q("reading a check"))?;
            wanted.insert(key, (time, attempts));
        }
        let keys: Vec<String> = wanted.keys().cloned().collect();
        let mut conn = self
            .pool
            .acquire()
            .await
            .map_err(q("reading checked subscriptions"))?;
        let mut out = Vec::with_capacity(keys.len());
        for sub in reach::subscriptions_by_key(
            self.backend,
            &mut conn,
            &keys,
            "",
            "reading checked subscriptions",
        )
        .await?
        {
            let (wanted_time_ms, attempts) = wanted[&sub.key];
            out.push(EntitlementCheck {
                subscription: sub,
                wanted_time_ms,
                attempts,
            });
        }
        out.sort_by(|a, b| a.subscription.key.cmp(&b.subscription.key));
        Ok(out)
    }

    /// Stores AWS's answer to `check` (leased by `owner`) as of the check's event time, and tells
    /// the organization the subscription bills when it changed. Nothing is written when the lease
    /// was lost or an answer for a newer time is already stored.
    pub async fn store_entitlements(
        &self,
        check: &EntitlementCheck,
        owner: &str,
        answer: Vec<Entitlement>,
        now_ms: i64,
    ) -> Result<AnswerStored, StoreError> {
        let key = &check.subscription.key;
        let wanted = check.wanted_time_ms;
        let answer = normalized(answer);
        let mut tx = self.begin().await?;
        outbox::lock(&mut tx).await?;
        // Asked again meanwhile (a newer wanted_time): answered for this time, due again now.
        let updated = sqlx::query(
            "UPDATE mplink_entitlement_checks SET answered_time = $1, answered_at = $2, attempts = 0, \
             last_error = NULL, lease_owner = NULL, lease_until = NULL, \
             next_attempt_at = CASE WHEN wanted_time > $1 THEN $2 ELSE $3 END \
             WHERE sub_key = $4 AND lease_owner = $5 AND (answered_time IS NULL OR answered_time < $1)",
        )
        .bind(wanted)
        .bind(now_ms)
        .bind(NOTHING_TO_ASK)
        .bind(key)
        .bind(owner)
        .execute(&mut *tx)
        .await
        .map_err(q("recording an entitlement answer"))?;
        if updated.rows_affected() == 0 {
            tx.rollback()
                .await
                .map_err(q("dropping a stale entitlement answer"))?;
            return Ok(AnswerStored::default());
        }
        let before = read_items(&mut tx, key).await?;
        let changed = before != answer;
        let mut notified = 0;
        if changed {
            sqlx::query("DELETE FROM mplink_entitlements WHERE sub_key = $1")
                .bind(key)
                .execute(&mut *tx)
                .await
                .map_err(q("replacing entitlements"))?;
            for chunk in answer.chunks(BULK_ROWS) {
                let sql = format!(
                    "INSERT INTO mplink_entitlements (sub_key, dimension, value_type, value, expires_at) VALUES {}",
                    rows::tuples(self.backend, chunk.len(), 5, 1)
                );
                let mut query = sqlx::query(&sql);
                for item in chunk {
                    let (kind, text) = item.value.to_stored();
                    query = query
                        .bind(key)
                        .bind(&item.dimension)
                        .bind(kind)
                        .bind(text)
                        .bind(item.expires_at_ms);
                }
                query
                    .execute(&mut *tx)
                    .await
                    .map_err(q("storing entitlements"))?;
            }
            let rows = change_rows(self.backend, &mut tx, check).await?;
            notified = rows.len();
            outbox::insert(self.backend, &mut tx, &rows, now_ms).await?;
        }
        tx.commit()
            .await
            .map_err(q("committing an entitlement answer"))?;
        Ok(AnswerStored {
            stored: true,
            changed,
            notified,
        })
    }

    /// Records that asking AWS for `check` failed: tried again at `retry_at_ms`, `error` kept.
    /// False when `owner` no longer holds the lease.
    pub async fn entitlement_check_failed(
        &self,
        check: &EntitlementCheck,
        owner: &str,
        error: &str,
        retry_at_ms: i64,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE mplink_entitlement_checks SET attempts = attempts + 1, last_error = $1, \
             next_attempt_at = $2, lease_owner = NULL, lease_until = NULL \
             WHERE sub_key = $3 AND lease_owner = $4",
        )
        .bind(error)
        .bind(retry_at_ms)
        .bind(&check.subscription.key)
        .bind(owner)
        .execute(&self.pool)
        .await
        .map_err(q("recording a failed entitlement check"))?;
        Ok(done.rows_affected() == 1)
    }

    /// The answered entitlements of each of `keys` that AWS answered for (an empty list when it
    /// said none), by primary key in chunks.
    pub async fn answered_entitlements(
        &self,
        keys: &[String],
    ) -> Result<HashMap<String, Vec<Entitlement>>, StoreError> {
        let mut out: HashMap<String, Vec<Entitlement>> = HashMap::new();
        let mut conn = self
            .pool
            .acquire()
            .await
            .map_err(q("reading entitlements"))?;
        for chunk in keys.chunks(BULK_ROWS) {
            let list = rows::tuples(self.backend, 1, chunk.len(), 1);
            let sql = format!(
                "SELECT sub_key FROM mplink_entitlement_checks \
                 WHERE sub_key IN {list} AND answered_time IS NOT NULL"
            );
            let mut query = sqlx::query_scalar::<_, String>(&sql);
            for k in chunk {
                query = query.bind(k);
            }
            for key in query
                .fetch_all(&mut *conn)
                .await
                .map_err(q("reading entitlement checks"))?
            {
                out.insert(key, Vec::new());
            }
            let sql = format!(
                "SELECT sub_key, dimension, value_type, value, expires_at FROM mplink_entitlements \
                 WHERE sub_key IN {list} ORDER BY sub_key, dimension"
            );
            let mut query = sqlx::query(&sql);
            for k in chunk {
                query = query.bind(k);
            }
            for row in query
                .fetch_all(&mut *conn)
                .await
                .map_err(q("reading entitlements"))?
            {
                let key: String = row.try_get("sub_key").map_err(q("reading entitlements"))?;
                let item = item_from(&row, &key)?;
                out.entry(key).or_default().push(item);
            }
        }
        Ok(out)
    }

    /// What the ledger holds about `sub_key`'s entitlements; None when nothing ever asked.
    pub async fn entitlements(&self, sub_key: &str) -> Result<Option<EntitlementSet>, StoreError> {
        let mut conn = self
            .pool
            .acquire()
            .await
            .map_err(q("reading entitlements"))?;
        let Some(row) = sqlx::query(&format!(
            "SELECT {CHECK_COLUMNS} FROM mplink_entitlement_checks WHERE sub_key = $1"
        ))
        .bind(sub_key)
        .fetch_optional(&mut *conn)
        .await
        .map_err(q("reading an entitlement check"))?
        else {
            return Ok(None);
        };
        let get = |c: &str| {
            row.try_get::<Option<i64>, _>(c)
                .map_err(q("reading an entitlement check"))
        };
        let wanted: i64 = row
            .try_get("wanted_time")
            .map_err(q("reading an entitlement check"))?;
        let as_of_ms = get("answered_time")?;
        Ok(Some(EntitlementSet {
            items: read_items(&mut conn, sub_key).await?,
            as_of_ms,
            answered_at_ms: get("answered_at")?,
            refreshing: as_of_ms.is_none_or(|t| t < wanted),
            last_error: row
                .try_get("last_error")
                .map_err(q("reading an entitlement check"))?,
        }))
    }
}

fn item_from(row: &sqlx::any::AnyRow, sub_key: &str) -> Result<Entitlement, StoreError> {
    let get = || q("reading entitlements");
    let kind: String = row.try_get("value_type").map_err(get())?;
    let text: String = row.try_get("value").map_err(get())?;
    let value = EntitlementValue::from_stored(&kind, &text).ok_or_else(|| StoreError::Corrupt {
        table: "mplink_entitlements",
        column: "value",
        value: format!("{sub_key}: {kind} {text:?}"),
    })?;
    Ok(Entitlement {
        dimension: row.try_get("dimension").map_err(get())?,
        value,
        expires_at_ms: row.try_get("expires_at").map_err(get())?,
    })
}

async fn read_items(
    conn: &mut AnyConnection,
    sub_key: &str,
) -> Result<Vec<Entitlement>, StoreError> {
    let found = sqlx::query(
        "SELECT dimension, value_type, value, expires_at FROM mplink_entitlements \
         WHERE sub_key = $1 ORDER BY dimension",
    )
    .bind(sub_key)
    .fetch_all(&mut *conn)
    .await
    .map_err(q("reading entitlements"))?;
    let mut out = Vec::with_capacity(found.len());
    for row in found {
        out.push(item_from(&row, sub_key)?);
    }
    Ok(out)
}

/// `link.entitlements_changed` for each organization whose link rests on the checked
/// subscription, at its unchanged state.
async fn change_rows(
    backend: Backend,
    conn: &mut AnyConnection,
    check: &EntitlementCheck,
) -> Result<Vec<NewRow>, StoreError> {
    let key = &check.subscription.key;
    let orgs = outbox::affected_orgs(backend, conn, &[&check.subscription]).await?;
    let views = outbox::org_views(backend, conn, &orgs).await?;
    Ok(views
        .into_iter()
        .filter(|(_, view)| view.subscription.sub_key.as_deref() == Some(key.as_str()))
        .map(|(org_id, view)| NewRow {
            event_type: EventType::EntitlementsChanged,
            org_id,
            moved_to_org_id: None,
            subscription: view.subscription,
            state_before: Some(view.state),
            state_after: Some(view.state),
            event_time_ms: check.wanted_time_ms,
            cause: format!("entitlements:{key}:{}", check.wanted_time_ms),
        })
        .collect())
}
