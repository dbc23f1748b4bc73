//! The ledger's storage: SQLite (embedded default) or PostgreSQL through sqlx, with versioned
//! migrations. Applying events and recording them in the event log happen in one transaction;
//! the subscription row is locked first, so concurrent appliers serialize per subscription.

mod rows;

use crate::config::DatabaseUrl;
use crate::event::{license_id, Event, InboundMessage};
use crate::ledger::{self, LinkRequest, Outcome, Subscription};
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Executor, Row};
use std::collections::BTreeMap;
use std::time::Duration;
use thiserror::Error;

pub use rows::{StatusFilter, StatusRow};

/// The embedded, versioned migrations in `migrations/`.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// How often a batch is retried after a deadlock, serialization failure or busy database.
const MAX_CONFLICT_RETRIES: u32 = 8;

/// Everything that can go wrong talking to the database.
#[derive(Debug, Error)]
pub enum StoreError {
    /// Could not open the database.
    #[error("cannot connect to {url}: {source}")]
    Connect {
        /// The URL, password redacted.
        url: String,
        /// Driver error.
        #[source]
        source: sqlx::Error,
    },
    /// Migrations failed.
    #[error("migrating the database failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A query failed.
    #[error("database error while {op}: {source}")]
    Query {
        /// What the store was doing.
        op: &'static str,
        /// Driver error.
        #[source]
        source: sqlx::Error,
    },
    /// A row holds a value this version does not understand.
    #[error("corrupt row in {table}: column {column} has {value:?}")]
    Corrupt {
        /// Table.
        table: &'static str,
        /// Column.
        column: &'static str,
        /// Value found.
        value: String,
    },
    /// A link request that names no subscription.
    #[error("a link needs --customer-identifier, --license-arn or --customer-account-id to find the subscription")]
    LinkWithoutKey,
}

impl StoreError {
    /// True for errors worth retrying later (database down, lock conflicts): the message stays queued.
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::Connect { .. } => true,
            StoreError::Query { source, .. } => is_transient_sqlx(source),
            _ => false,
        }
    }
}

fn is_transient_sqlx(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => is_conflict_code(db.code().as_deref()),
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_) => true,
        _ => false,
    }
}

/// Deadlock, serialization failure, or SQLite busy/locked: the transaction can simply run again.
fn is_conflict_code(code: Option<&str>) -> bool {
    matches!(
        code,
        Some("40P01" | "40001" | "55P03" | "5" | "6" | "517" | "261" | "262")
    )
}

fn is_conflict(e: &StoreError) -> bool {
    matches!(e, StoreError::Query { source: sqlx::Error::Database(db), .. } if is_conflict_code(db.code().as_deref()))
}

fn q(op: &'static str) -> impl FnOnce(sqlx::Error) -> StoreError {
    move |source| StoreError::Query { op, source }
}

/// Which SQL dialect the pool speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// SQLite: one writer at a time, so transactions take the write lock up front.
    Sqlite,
    /// PostgreSQL: row locks per subscription.
    Postgres,
}

/// One decoded event with the body it came from (kept in the event log for audit).
#[derive(Debug, Clone, Copy)]
pub struct Incoming<'a> {
    /// The event.
    pub event: &'a Event,
    /// The raw SQS body.
    pub body: &'a str,
}

/// What `link` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkOutcome {
    /// The organization that held this subscription's link before and lost it, if any.
    pub moved_from: Option<String>,
    /// The link as it now stands.
    pub row: StatusRow,
}

/// The ledger's database.
#[derive(Debug, Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
}

impl Store {
    /// Opens (and for SQLite creates) the database and runs pending migrations.
    pub async fn open(url: &DatabaseUrl) -> Result<Store, StoreError> {
        let store = Store::connect(url).await?;
        store.migrate().await?;
        Ok(store)
    }

    /// Opens the database without migrating it.
    pub async fn connect(url: &DatabaseUrl) -> Result<Store, StoreError> {
        sqlx::any::install_default_drivers();
        let backend = if url.is_postgres() {
            Backend::Postgres
        } else {
            Backend::Sqlite
        };
        let raw = match backend {
            Backend::Sqlite if !url.expose().contains("mode=") => {
                let sep = if url.expose().contains('?') { '&' } else { '?' };
                format!("{}{sep}mode=rwc", url.expose())
            }
            _ => url.expose().to_string(),
        };
        let options = AnyPoolOptions::new()
            .max_connections(match backend {
                Backend::Sqlite => 4,
                Backend::Postgres => 16,
            })
            .acquire_timeout(Duration::from_secs(10))
            .after_connect(move |conn, _meta| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        // WAL lets `status` read while the worker writes; the busy timeout makes
                        // writers queue instead of failing.
                        conn.execute("PRAGMA journal_mode = WAL").await?;
                        conn.execute("PRAGMA busy_timeout = 10000").await?;
                        conn.execute("PRAGMA synchronous = NORMAL").await?;
                    }
                    Ok(())
                })
            });
        let pool = options
            .connect(&raw)
            .await
            .map_err(|source| StoreError::Connect {
                url: url.redacted(),
                source,
            })?;
        Ok(Store { pool, backend })
    }

    /// Runs pending migrations (idempotent).
    pub async fn migrate(&self) -> Result<(), StoreError> {
        MIGRATOR.run(&self.pool).await?;
        Ok(())
    }

    /// The SQL dialect in use.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The pool, for tests and health checks.
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// Answers when the database can run a query.
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map_err(q("pinging the database"))?;
        Ok(())
    }

    async fn begin(&self) -> Result<sqlx::Transaction<'static, sqlx::Any>, StoreError> {
        match self.backend {
            // Take the write lock first so two writers never deadlock upgrading a read lock.
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await,
            Backend::Postgres => self.pool.begin().await,
        }
        .map_err(q("beginning a transaction"))
    }

    /// Applies one event and records it; see [`Store::apply_batch`].
    pub async fn apply(&self, event: &Event, body: &str) -> Result<Outcome, StoreError> {
        let outcomes = self.apply_batch(&[Incoming { event, body }]).await?;
        Ok(outcomes[0])
    }

    /// Applies several events in one transaction and returns each one's outcome, in input order.
    ///
    /// Subscriptions are locked in key order, so two batches never wait on each other in a
    /// cycle; a deadlock or busy error from the database still just reruns the batch.
    pub async fn apply_batch(&self, batch: &[Incoming<'_>]) -> Result<Vec<Outcome>, StoreError> {
        let mut attempt = 0;
        loop {
            match self.try_apply_batch(batch).await {
                Err(e) if is_conflict(&e) && attempt < MAX_CONFLICT_RETRIES => {
                    attempt += 1;
                    tracing::debug!(attempt, error = %e, "transaction conflict, retrying batch");
                    tokio::time::sleep(Duration::from_millis(5 << attempt.min(6))).await;
                }
                other => return other,
            }
        }
    }

    /// What [`Store::apply_batch`] would decide, computed by the same code in a transaction
    /// that is rolled back: nothing changes.
    pub async fn preview_batch(&self, batch: &[Incoming<'_>]) -> Result<Vec<Outcome>, StoreError> {
        let mut attempt = 0;
        loop {
            match self.try_batch(batch, false).await {
                Err(e) if is_conflict(&e) && attempt < MAX_CONFLICT_RETRIES => attempt += 1,
                other => return other,
            }
        }
    }

    async fn try_apply_batch(&self, batch: &[Incoming<'_>]) -> Result<Vec<Outcome>, StoreError> {
        self.try_batch(batch, true).await
    }

    async fn try_batch(
        &self,
        batch: &[Incoming<'_>],
        commit: bool,
    ) -> Result<Vec<Outcome>, StoreError> {
        let mut groups: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for (i, item) in batch.iter().enumerate() {
            groups
                .entry(item.event.subject.as_key())
                .or_default()
                .push(i);
        }
        let now = now_ms();
        let mut outcomes = vec![Outcome::Duplicate; batch.len()];
        let mut tx = self.begin().await?;
        for (key, members) in groups {
            sqlx::query(
                "INSERT INTO mplink_subscriptions (sub_key, state, version, updated_at) \
                 VALUES ($1, 'pending', 0, $2) ON CONFLICT (sub_key) DO NOTHING",
            )
            .bind(&key)
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(q("creating a subscription row"))?;
            let select = match self.backend {
                Backend::Postgres => rows::SELECT_SUBSCRIPTION_FOR_UPDATE,
                Backend::Sqlite => rows::SELECT_SUBSCRIPTION,
            };
            let row = sqlx::query(select)
                .bind(&key)
                .fetch_one(&mut *tx)
                .await
                .map_err(q("locking a subscription"))?;
            let before = rows::subscription_from_row(&row)?;
            let mut current = before.clone();
            for i in members {
                let Incoming { event, body } = batch[i];
                let seen: Option<AnyRow> = sqlx::query(
                    "SELECT message_id FROM mplink_event_log WHERE message_id = $1 OR fact_key = $2 LIMIT 1",
                )
                .bind(&event.event_id)
                .bind(&event.fact_key)
                .fetch_optional(&mut *tx)
                .await
                .map_err(q("looking up the event log"))?;
                let outcome = match seen {
                    // This very delivery is already recorded: nothing to write.
                    Some(r)
                        if r.try_get::<String, _>(0).ok().as_deref()
                            == Some(event.event_id.as_str()) =>
                    {
                        outcomes[i] = Outcome::Duplicate;
                        continue;
                    }
                    // Another copy of the same fact (e.g. the Manufacturer copy of a Proposer event).
                    Some(_) => Outcome::Duplicate,
                    None => {
                        let decision = ledger::apply(&current, event);
                        current = decision.next;
                        decision.outcome
                    }
                };
                outcomes[i] = outcome;
                sqlx::query(
                    "INSERT INTO mplink_event_log \
                     (message_id, sqs_message_id, fact_key, sub_key, action, event_time, outcome, reason, body, recorded_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, NULL, $8, $9)",
                )
                .bind(&event.event_id)
                .bind(&event.sqs_message_id)
                .bind(&event.fact_key)
                .bind(&key)
                .bind(event.action.name())
                .bind(event.time_ms)
                .bind(outcome.as_str())
                .bind(body)
                .bind(now)
                .execute(&mut *tx)
                .await
                .map_err(q("recording an event"))?;
            }
            if current != before {
                rows::update_subscription(&mut tx, &current, now).await?;
            }
        }
        if commit {
            tx.commit().await.map_err(q("committing applied events"))?;
        } else {
            tx.rollback().await.map_err(q("rolling back a preview"))?;
        }
        Ok(outcomes)
    }

    /// Records a message that was refused (undecodable, unverifiable) so the refusal can be
    /// audited. Recording the same SQS message again keeps the first record.
    pub async fn record_rejection(
        &self,
        msg: &InboundMessage,
        reason: &str,
    ) -> Result<(), StoreError> {
        let body_hash = sha256_hex(&msg.body);
        sqlx::query(
            "INSERT INTO mplink_event_log \
             (message_id, sqs_message_id, fact_key, sub_key, action, event_time, outcome, reason, body, recorded_at) \
             VALUES ($1, $2, NULL, NULL, NULL, $3, 'rejected', $4, $5, $6) ON CONFLICT (message_id) DO NOTHING",
        )
        .bind(format!("rejected:{}:{}", msg.message_id, &body_hash[..16]))
        .bind(&msg.message_id)
        .bind(msg.sent_timestamp_ms)
        .bind(reason)
        .bind(&msg.body)
        .bind(now_ms())
        .execute(&self.pool)
        .await
        .map_err(q("recording a rejection"))?;
        Ok(())
    }

    /// The reason the event log gives for the last rejection of an SQS message, if any.
    pub async fn last_rejection(&self, sqs_message_id: &str) -> Result<Option<String>, StoreError> {
        let reason: Option<Option<String>> = sqlx::query_scalar(
            "SELECT reason FROM mplink_event_log WHERE sqs_message_id = $1 AND outcome = 'rejected' \
             ORDER BY recorded_at DESC LIMIT 1",
        )
        .bind(sqs_message_id)
        .fetch_optional(&self.pool)
        .await
        .map_err(q("looking up a rejection"))?;
        Ok(reason.flatten())
    }

    /// Records that `link.org_id` pays through the subscription `link` names. One subscription
    /// bills one organization: if another organization held it, that link moves here.
    pub async fn link(&self, link: &LinkRequest) -> Result<LinkOutcome, StoreError> {
        let link_key = link_key(link).ok_or(StoreError::LinkWithoutKey)?;
        let mut attempt = 0;
        let moved_from = loop {
            match self.try_link(link, &link_key).await {
                Err(e) if is_conflict(&e) && attempt < MAX_CONFLICT_RETRIES => attempt += 1,
                other => break other?,
            }
        };
        let filter = StatusFilter {
            org_id: Some(link.org_id.clone()),
            customer_identifier: None,
        };
        let row = self
            .status(&filter)
            .await?
            .into_iter()
            .next()
            .ok_or(StoreError::Corrupt {
                table: "mplink_org_links",
                column: "org_id",
                value: link.org_id.clone(),
            })?;
        Ok(LinkOutcome { moved_from, row })
    }

    async fn try_link(
        &self,
        link: &LinkRequest,
        link_key: &str,
    ) -> Result<Option<String>, StoreError> {
        let mut tx = self.begin().await?;
        let previous: Option<String> = sqlx::query_scalar(
            "SELECT org_id FROM mplink_org_links WHERE link_key = $1 AND org_id <> $2",
        )
        .bind(link_key)
        .bind(&link.org_id)
        .fetch_optional(&mut *tx)
        .await
        .map_err(q("looking up an existing link"))?;
        if previous.is_some() {
            sqlx::query("DELETE FROM mplink_org_links WHERE link_key = $1 AND org_id <> $2")
                .bind(link_key)
                .bind(&link.org_id)
                .execute(&mut *tx)
                .await
                .map_err(q("moving a link"))?;
        }
        sqlx::query(
            "INSERT INTO mplink_org_links \
             (org_id, link_key, product_code, customer_identifier, customer_aws_account_id, license_arn, requested_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) \
             ON CONFLICT (org_id) DO UPDATE SET link_key = excluded.link_key, product_code = excluded.product_code, \
             customer_identifier = excluded.customer_identifier, customer_aws_account_id = excluded.customer_aws_account_id, \
             license_arn = excluded.license_arn, requested_at = excluded.requested_at",
        )
        .bind(&link.org_id)
        .bind(link_key)
        .bind(&link.product_code)
        .bind(&link.customer_identifier)
        .bind(&link.customer_aws_account_id)
        .bind(&link.license_arn)
        .bind(link.requested_at_ms)
        .execute(&mut *tx)
        .await
        .map_err(q("recording a link"))?;
        tx.commit().await.map_err(q("committing a link"))?;
        Ok(previous)
    }

    /// Every subscription with its link, filtered; see [`StatusRow`].
    pub async fn status(&self, filter: &StatusFilter) -> Result<Vec<StatusRow>, StoreError> {
        let subs = self.subscriptions().await?;
        let links = self.links().await?;
        Ok(rows::status_rows(&subs, &links, filter))
    }

    /// Every subscription in the ledger, in key order.
    pub async fn subscriptions(&self) -> Result<Vec<Subscription>, StoreError> {
        let found = sqlx::query(rows::SELECT_ALL_SUBSCRIPTIONS)
            .fetch_all(&self.pool)
            .await
            .map_err(q("reading subscriptions"))?;
        found.iter().map(rows::subscription_from_row).collect()
    }

    /// Every link request, in organization order.
    pub async fn links(&self) -> Result<Vec<LinkRequest>, StoreError> {
        let found = sqlx::query(
            "SELECT org_id, product_code, customer_identifier, customer_aws_account_id, license_arn, requested_at \
             FROM mplink_org_links ORDER BY org_id",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(q("reading links"))?;
        found.iter().map(rows::link_from_row).collect()
    }

    /// The event log, oldest record first: (message id, outcome, reason).
    pub async fn event_log(&self) -> Result<Vec<LogEntry>, StoreError> {
        let found = sqlx::query(
            "SELECT message_id, sqs_message_id, action, event_time, outcome, reason, sub_key FROM mplink_event_log \
             ORDER BY recorded_at, message_id",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(q("reading the event log"))?;
        found
            .iter()
            .map(|r| {
                Ok(LogEntry {
                    message_id: r
                        .try_get("message_id")
                        .map_err(q("reading the event log"))?,
                    sqs_message_id: r
                        .try_get("sqs_message_id")
                        .map_err(q("reading the event log"))?,
                    action: r.try_get("action").map_err(q("reading the event log"))?,
                    event_time_ms: r
                        .try_get("event_time")
                        .map_err(q("reading the event log"))?,
                    outcome: r.try_get("outcome").map_err(q("reading the event log"))?,
                    reason: r.try_get("reason").map_err(q("reading the event log"))?,
                    sub_key: r.try_get("sub_key").map_err(q("reading the event log"))?,
                })
            })
            .collect()
    }

    /// Closes the pool, waiting for connections to finish.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// One record of the event log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    /// Delivery identity (or `rejected:…`).
    pub message_id: String,
    /// SQS message id it arrived in.
    pub sqs_message_id: Option<String>,
    /// Decoded action name, if decoded.
    pub action: Option<String>,
    /// Event time, epoch ms.
    pub event_time_ms: Option<i64>,
    /// applied / stale / duplicate / rejected.
    pub outcome: String,
    /// Why it was rejected.
    pub reason: Option<String>,
    /// Subscription it touched.
    pub sub_key: Option<String>,
}

/// The key under which a registration names its subscription; the most specific identifier wins.
pub fn link_key(link: &LinkRequest) -> Option<String> {
    if let Some(lic) = &link.license_arn {
        return Some(format!("lic:{}", license_id(lic)));
    }
    if let Some(cust) = &link.customer_identifier {
        return Some(format!("cust:{}:{cust}", link.product_code));
    }
    link.customer_aws_account_id
        .as_ref()
        .map(|acct| format!("acct:{}:{acct}", link.product_code))
}

/// Milliseconds since the epoch, now.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn sha256_hex(s: &str) -> String {
    use sha2::Digest;
    format!("{:x}", sha2::Sha256::digest(s.as_bytes()))
}
