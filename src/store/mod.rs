//! The ledger's storage: SQLite (embedded default) or PostgreSQL through sqlx, with versioned
//! migrations. Applying events and recording them in the event log happen in one transaction;
//! the subscription row is locked first, so concurrent appliers serialize per subscription.

mod listen;
mod metering;
mod outbox;
mod reach;
mod registrations;
mod rows;
mod view;

use crate::config::DatabaseUrl;
use crate::event::{license_id, Event, InboundMessage};
use crate::ledger::{self, LinkRequest, Outcome, SubState, Subscription};
use sqlx::any::AnyPoolOptions;
use sqlx::{AnyPool, Executor, Row};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::Duration;
use thiserror::Error;

pub use listen::OutboxListener;
pub use metering::{
    CloseRules, MeterRecord, MeterResult, MeterStats, MeterTarget, UsageRow, ENDED_FINAL,
    ENDED_NOT_SUBSCRIBED, METER_DUPLICATE, METER_EXPIRED, METER_FAILED, METER_NOT_SUBSCRIBED,
    METER_STOPPED, METER_SUCCESS, METER_UNSENT, USAGE_ACCEPTED, USAGE_REFUSED, USAGE_SUBMITTED,
};
pub use outbox::{
    AttemptResult, OutboxStats, OUTBOX_CHANNEL, STATUS_DELIVERED, STATUS_FAILED, STATUS_PENDING,
};
pub use reach::LinkRows;
pub use registrations::{
    still_billing, LinkRefusal, NewRegistration, Registration, RegistrationLink,
};
pub use rows::{status_rows, StatusDetails, StatusFilter, StatusRow};
pub use view::{StatusPages, STATUS_PAGE_ROWS};

/// The embedded, versioned migrations in `migrations/`.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Rows per bulk statement: keeps every statement far below the bind-parameter limits of both
/// backends (SQLite 32766, PostgreSQL 65535) at up to 22 parameters a row.
const BULK_ROWS: usize = 500;

/// How often a batch is retried after a deadlock, serialization failure or busy database.
const MAX_CONFLICT_RETRIES: u32 = 8;

/// How long a transaction applying several messages waits for one subscription's row lock
/// before giving up, so that a row held elsewhere (a long transaction, a stuck replica) holds
/// back only its own message and not its batch-mates; PostgreSQL only (SQLite has one writer).
pub const DEFAULT_BATCH_LOCK_TIMEOUT: Duration = Duration::from_secs(1);

/// How much of a rejected body the event log keeps (its size and SHA-256 are kept whole).
pub const REJECTED_BODY_LIMIT: usize = 8 * 1024;

/// Everything that can go wrong talking to the database.
#[derive(Debug, Error)]
pub enum StoreError {
    /// A member of a batch waited past the batch's lock timeout for a row another transaction
    /// holds: nothing of the batch was applied; its members go again one by one, so only the
    /// member whose row is held waits.
    #[error("a member of the batch waits for a row another transaction holds (more than {timeout_ms} ms)")]
    BatchMemberLocked {
        /// The batch's lock timeout.
        timeout_ms: u64,
    },
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

/// A unique violation: in the apply path only the event-log insert can raise one, when another
/// transaction recorded the same delivery between our lookup and our insert (a copy with a
/// different subject, so no row lock serialized the two). Rerunning the batch then finds the
/// record and decides `duplicate`.
fn is_unique_violation(code: Option<&str>) -> bool {
    matches!(code, Some("23505" | "2067" | "1555"))
}

/// PostgreSQL's `lock_not_available`: a lock wait passed `lock_timeout`.
fn is_lock_timeout(e: &StoreError) -> bool {
    matches!(e, StoreError::Query { source: sqlx::Error::Database(db), .. } if db.code().as_deref() == Some("55P03"))
}

fn is_conflict(e: &StoreError) -> bool {
    matches!(e, StoreError::Query { source: sqlx::Error::Database(db), .. } if is_conflict_code(db.code().as_deref()))
}

fn is_batch_retryable(e: &StoreError) -> bool {
    is_conflict(e)
        || matches!(e, StoreError::Query { source: sqlx::Error::Database(db), .. } if is_unique_violation(db.code().as_deref()))
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
    /// Kept for connections outside the pool (the outbox listener).
    url: DatabaseUrl,
    /// See [`DEFAULT_BATCH_LOCK_TIMEOUT`]; None waits as long as a single apply does.
    batch_lock_timeout: Option<Duration>,
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
        crate::tls::install_default_crypto_provider();
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
                        // writers queue instead of failing. FULL syncs the WAL at every commit:
                        // the message is deleted from SQS right after, so a commit that a power
                        // loss could take back (NORMAL) would be an acknowledged event lost.
                        conn.execute("PRAGMA journal_mode = WAL").await?;
                        conn.execute("PRAGMA busy_timeout = 10000").await?;
                        conn.execute("PRAGMA synchronous = FULL").await?;
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
        Ok(Store {
            pool,
            backend,
            url: url.clone(),
            batch_lock_timeout: Some(DEFAULT_BATCH_LOCK_TIMEOUT),
        })
    }

    /// This store with another batch lock timeout (None: a batch waits for every row as long
    /// as it takes — what a test sets to show a held row stalling a whole batch).
    pub fn with_batch_lock_timeout(mut self, timeout: Option<Duration>) -> Store {
        self.batch_lock_timeout = timeout;
        self
    }

    /// Runs pending migrations (idempotent).
    pub async fn migrate(&self) -> Result<(), StoreError> {
        MIGRATOR.run(&self.pool).await?;
        Ok(())
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

    /// Runs a lease statement in a transaction of its own and returns the rows it leased. The
    /// statement binds `$1` the owner, `$2` the lease's end, `$3` now and `$4` the limit, and
    /// takes its rows with [`Store::skip_locked`] so two holders never lease one row.
    async fn lease_rows(
        &self,
        sql: &str,
        owner: &str,
        now_ms: i64,
        lease_ms: i64,
        limit: i64,
        op: &'static str,
    ) -> Result<Vec<sqlx::any::AnyRow>, StoreError> {
        let mut tx = self.begin().await?;
        let leased = sqlx::query(sql)
            .bind(owner)
            .bind(now_ms + lease_ms)
            .bind(now_ms)
            .bind(limit)
            .fetch_all(&mut *tx)
            .await
            .map_err(q(op))?;
        tx.commit().await.map_err(q(op))?;
        Ok(leased)
    }

    /// The row-lock clause of a lease's inner SELECT: rows another transaction holds are
    /// skipped on PostgreSQL; SQLite has one writer at a time.
    fn skip_locked(&self) -> &'static str {
        match self.backend {
            Backend::Postgres => " FOR UPDATE SKIP LOCKED",
            Backend::Sqlite => "",
        }
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
                Err(e) if batch.len() > 1 && is_lock_timeout(&e) => {
                    return Err(StoreError::BatchMemberLocked {
                        timeout_ms: self.batch_lock_timeout.map_or(0, |t| t.as_millis() as u64),
                    });
                }
                Err(e) if is_batch_retryable(&e) && attempt < MAX_CONFLICT_RETRIES => {
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
                Err(e) if is_batch_retryable(&e) && attempt < MAX_CONFLICT_RETRIES => attempt += 1,
                other => return other,
            }
        }
    }

    async fn try_apply_batch(&self, batch: &[Incoming<'_>]) -> Result<Vec<Outcome>, StoreError> {
        self.try_batch(batch, true).await
    }

    /// The apply path. Set-based, so a batch costs a handful of statements whatever its size:
    /// make sure every subscription row exists, lock them all in key order (so concurrent
    /// batches cannot deadlock each other), look every delivery and fact up in the event log at
    /// once, decide in memory with the pure ledger, then write the log rows and the changed
    /// subscriptions in bulk, and remove the rows no event touched (all duplicates). Because the rows are locked before the log is read, two copies of
    /// one delivery or fact in concurrent transactions are serialized on their subscription.
    async fn try_batch(
        &self,
        batch: &[Incoming<'_>],
        commit: bool,
    ) -> Result<Vec<Outcome>, StoreError> {
        let now = now_ms();
        let keys: Vec<String> = batch
            .iter()
            .map(|i| i.event.subject.as_key())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let mut tx = self.begin().await?;
        if self.backend == Backend::Postgres {
            // SET does not take bind parameters; the value is a number of our own.
            let lock_timeout = match (self.batch_lock_timeout, batch.len() > 1) {
                (Some(timeout), true) => {
                    format!(
                        "SET LOCAL lock_timeout = '{}ms'; ",
                        timeout.as_millis().max(1)
                    )
                }
                _ => String::new(),
            };
            // Every statement below is a keyed lookup or write. Without column statistics
            // (autovacuum off, or an event log growing faster than autoanalyze runs) PostgreSQL
            // takes each key of a 50-key lookup to match 0.5 % of the rows and scans the whole
            // event log instead, once per batch: throughput falling as the log grows.
            let settings = format!("{lock_timeout}SET LOCAL enable_seqscan = off");
            // Without bind parameters the statements go as one simple query: one round trip.
            sqlx::Executor::execute(&mut *tx, settings.as_str())
                .await
                .map_err(q("setting the batch's planner and lock settings"))?;
        }

        // The rows this transaction creates, so that those no event touches can go again.
        let mut created: HashSet<String> = HashSet::new();
        for chunk in keys.chunks(BULK_ROWS) {
            let sql = format!(
                "INSERT INTO mplink_subscriptions (sub_key, state, version, updated_at) VALUES {} \
                 ON CONFLICT (sub_key) DO NOTHING RETURNING sub_key",
                rows::tuples(self.backend, chunk.len(), 4, 1)
            );
            let mut query = sqlx::query_scalar::<_, String>(&sql);
            for key in chunk {
                query = query
                    .bind(key)
                    .bind(SubState::Pending.as_str())
                    .bind(0i64)
                    .bind(now);
            }
            created.extend(
                query
                    .fetch_all(&mut *tx)
                    .await
                    .map_err(q("creating subscription rows"))?,
            );
        }

        let mut current: HashMap<String, Subscription> = HashMap::with_capacity(keys.len());
        for chunk in keys.chunks(BULK_ROWS) {
            let lock = match self.backend {
                Backend::Postgres => " FOR UPDATE",
                Backend::Sqlite => "",
            };
            let sql = format!(
                "{} WHERE sub_key IN {} ORDER BY sub_key{lock}",
                rows::SELECT_SUBSCRIPTIONS,
                rows::tuples(self.backend, 1, chunk.len(), 1)
            );
            let mut query = sqlx::query(&sql);
            for key in chunk {
                query = query.bind(key);
            }
            for row in query
                .fetch_all(&mut *tx)
                .await
                .map_err(q("locking subscriptions"))?
            {
                let sub = rows::subscription_from_row(&row)?;
                current.insert(sub.key.clone(), sub);
            }
        }
        let before = current.clone();

        let mut seen_ids: HashSet<String> = HashSet::new();
        let mut seen_facts: HashSet<String> = HashSet::new();
        for chunk in batch.chunks(BULK_ROWS) {
            let n = chunk.len();
            let sql = format!(
                "SELECT message_id, fact_key FROM mplink_event_log WHERE message_id IN {} OR fact_key IN {}",
                rows::tuples(self.backend, 1, n, 1),
                rows::tuples(self.backend, 1, n, n + 1)
            );
            let mut query = sqlx::query(&sql);
            for item in chunk {
                query = query.bind(&item.event.event_id);
            }
            for item in chunk {
                query = query.bind(&item.event.fact_key);
            }
            for row in query
                .fetch_all(&mut *tx)
                .await
                .map_err(q("looking up the event log"))?
            {
                seen_ids.insert(
                    row.try_get("message_id")
                        .map_err(q("looking up the event log"))?,
                );
                if let Some(fact) = row
                    .try_get::<Option<String>, _>("fact_key")
                    .map_err(q("looking up the event log"))?
                {
                    seen_facts.insert(fact);
                }
            }
        }

        let skip_duplicate_check = crate::failpoint::skip_duplicate_check();
        let mut outcomes = Vec::with_capacity(batch.len());
        let mut log_rows: Vec<(&Incoming<'_>, Outcome)> = Vec::with_capacity(batch.len());
        let mut transitions: Vec<Transition<'_>> = Vec::new();
        let mut steps: Vec<outbox::Step<'_>> = Vec::new();
        for item in batch {
            let event = item.event;
            // This very delivery is already recorded: nothing to write.
            if !seen_ids.insert(event.event_id.clone()) && !skip_duplicate_check {
                outcomes.push(Outcome::Duplicate);
                continue;
            }
            let outcome = if seen_facts.contains(&event.fact_key) && !skip_duplicate_check {
                // Another copy of the same fact (e.g. the Manufacturer copy of a Proposer event).
                Outcome::Duplicate
            } else {
                let key = event.subject.as_key();
                let sub = current.get(&key).ok_or(StoreError::Corrupt {
                    table: "mplink_subscriptions",
                    column: "sub_key",
                    value: key.clone(),
                })?;
                let decision = if skip_duplicate_check {
                    crate::failpoint::apply_forgetting_ties(sub, event)
                } else {
                    ledger::apply(sub, event)
                };
                if visible_change(sub, &decision.next) {
                    steps.push(outbox::Step {
                        event,
                        sub: decision.next.clone(),
                    });
                }
                if decision.outcome == Outcome::Applied {
                    transitions.push(Transition {
                        event,
                        from: sub.state,
                        to: decision.next.state,
                    });
                }
                current.insert(key, decision.next);
                decision.outcome
            };
            seen_facts.insert(event.fact_key.clone());
            outcomes.push(outcome);
            log_rows.push((item, outcome));
        }

        // The broken build the fault suite proves its "double-applied" column with records a
        // second application instead of failing on the event log's key.
        let on_conflict = if skip_duplicate_check {
            " ON CONFLICT (message_id) DO NOTHING"
        } else {
            ""
        };
        for chunk in log_rows.chunks(BULK_ROWS) {
            let sql = format!(
                "INSERT INTO mplink_event_log \
                 (message_id, sqs_message_id, fact_key, sub_key, action, event_time, outcome, reason, body, recorded_at) \
                 VALUES {}{on_conflict}",
                rows::tuples(self.backend, chunk.len(), 10, 1)
            );
            let mut query = sqlx::query(&sql);
            for (item, outcome) in chunk {
                let e = item.event;
                query = query
                    .bind(&e.event_id)
                    .bind(&e.sqs_message_id)
                    .bind(&e.fact_key)
                    .bind(e.subject.as_key())
                    .bind(e.action.name())
                    .bind(e.time_ms)
                    .bind(outcome.as_str())
                    .bind(None::<String>)
                    .bind(item.body)
                    .bind(now);
            }
            query
                .execute(&mut *tx)
                .await
                .map_err(q("recording events"))?;
        }

        for chunk in transitions.chunks(BULK_ROWS) {
            let sql = format!(
                "INSERT INTO mplink_transitions \
                 (message_id, fact_key, sub_key, from_state, to_state, event_time, recorded_at) VALUES {}",
                rows::tuples(self.backend, chunk.len(), 7, 1)
            );
            let mut query = sqlx::query(&sql);
            for t in chunk {
                query = query
                    .bind(&t.event.event_id)
                    .bind(&t.event.fact_key)
                    .bind(t.event.subject.as_key())
                    .bind(t.from.as_str())
                    .bind(t.to.as_str())
                    .bind(t.event.time_ms)
                    .bind(now);
            }
            query
                .execute(&mut *tx)
                .await
                .map_err(q("recording transitions"))?;
        }

        let changed: Vec<&Subscription> = keys
            .iter()
            .filter_map(|k| current.get(k).filter(|sub| before.get(k) != Some(*sub)))
            .collect();

        for chunk in changed.chunks(BULK_ROWS / 4) {
            rows::write_subscriptions(self.backend, &mut tx, chunk, now).await?;
        }

        // What the organizations see, event by event: a preview writes no outbox (nor locks it).
        if commit {
            let new = outbox::rows_for_steps(self.backend, &mut tx, &before, &steps).await?;
            outbox::insert(self.backend, &mut tx, &new, now).await?;
        }

        // A row this transaction created only to lock it (every event for it a duplicate) goes
        // again before anyone can see it; the lock still serialized the concurrent copies.
        let untouched: Vec<&String> = keys
            .iter()
            .filter(|k| created.contains(*k) && before.get(*k) == current.get(*k))
            .collect();
        for chunk in untouched.chunks(BULK_ROWS) {
            let sql = format!(
                "DELETE FROM mplink_subscriptions WHERE sub_key IN {}",
                rows::tuples(self.backend, 1, chunk.len(), 1)
            );
            let mut query = sqlx::query(&sql);
            for key in chunk {
                query = query.bind(*key);
            }
            query
                .execute(&mut *tx)
                .await
                .map_err(q("removing unused subscription rows"))?;
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
        let id = format!("rejected:{}:{}", msg.message_id, &body_hash[..16]);
        self.record_undecoded(msg, &id, Outcome::Rejected, reason)
            .await
            .map_err(q("recording a rejection"))
    }

    /// Records an EventBridge event whose detail-type mplink does not know and acknowledges.
    /// Keyed by the event's own id (else the SQS message id), so a redelivery is recorded once.
    pub async fn record_unrecognised(
        &self,
        msg: &InboundMessage,
        event_id: Option<&str>,
        detail_type: &str,
    ) -> Result<(), StoreError> {
        let id = format!("unrecognised:{}", event_id.unwrap_or(&msg.message_id));
        let reason = format!("unrecognised detail-type {detail_type:?}");
        self.record_undecoded(msg, &id, Outcome::Unrecognised, &reason)
            .await
            .map_err(q("recording an unrecognised event"))
    }

    async fn record_undecoded(
        &self,
        msg: &InboundMessage,
        log_id: &str,
        outcome: Outcome,
        reason: &str,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO mplink_event_log \
             (message_id, sqs_message_id, fact_key, sub_key, action, event_time, outcome, reason, body, body_sha256, body_bytes, recorded_at) \
             VALUES ($1, $2, NULL, NULL, NULL, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (message_id) DO NOTHING",
        )
        .bind(log_id)
        .bind(&msg.message_id)
        .bind(msg.sent_timestamp_ms)
        .bind(outcome.as_str())
        .bind(storable_text(reason, REJECTED_BODY_LIMIT))
        .bind(storable_text(&msg.body, REJECTED_BODY_LIMIT))
        .bind(sha256_hex(&msg.body))
        .bind(msg.body.len() as i64)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
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
        outbox::lock(&mut tx).await?;
        let previous = self.link_in(&mut tx, link, link_key).await?;
        tx.commit().await.map_err(q("committing a link"))?;
        Ok(previous)
    }

    /// The link itself, in `tx` (which holds the outbox lock): records the link, moving it from
    /// the organization that held `link_key` if any (returned), and writes the outbox rows of
    /// every organization whose view changed.
    async fn link_in(
        &self,
        tx: &mut sqlx::Transaction<'static, sqlx::Any>,
        link: &LinkRequest,
        link_key: &str,
    ) -> Result<Option<String>, StoreError> {
        let previous: Option<String> = sqlx::query_scalar(
            "SELECT org_id FROM mplink_org_links WHERE link_key = $1 AND org_id <> $2",
        )
        .bind(link_key)
        .bind(&link.org_id)
        .fetch_optional(&mut **tx)
        .await
        .map_err(q("looking up an existing link"))?;
        // Everyone this link can change: the organization itself, the one losing the
        // subscription, and those whose links share its subscriptions (a registration by license
        // takes its agreement away from one by account).
        let reached = reach::load_link_rows(self.backend, tx, std::slice::from_ref(link)).await?;
        let mut orgs = outbox::affected_orgs(
            self.backend,
            tx,
            &reached.subscriptions.iter().collect::<Vec<_>>(),
        )
        .await?;
        orgs.insert(link.org_id.clone());
        orgs.extend(previous.clone());
        let views_before = outbox::org_views(self.backend, tx, &orgs).await?;
        if previous.is_some() {
            sqlx::query("DELETE FROM mplink_org_links WHERE link_key = $1 AND org_id <> $2")
                .bind(link_key)
                .bind(&link.org_id)
                .execute(&mut **tx)
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
        .execute(&mut **tx)
        .await
        .map_err(q("recording a link"))?;
        let views_after = outbox::org_views(self.backend, tx, &orgs).await?;
        let cause = format!("link:{}:{}", link.org_id, link.requested_at_ms);
        let new = outbox::diff(
            &views_before,
            &views_after,
            Some(&link.org_id),
            |_, _, _| (cause.clone(), link.requested_at_ms),
        );
        outbox::insert(self.backend, tx, &new, now_ms()).await?;
        Ok(previous)
    }

    /// Every subscription with its link, filtered, collected from [`Store::status_pages`]; see
    /// [`StatusRow`]. Without a filter this holds the whole view: stream the pages instead.
    pub async fn status(&self, filter: &StatusFilter) -> Result<Vec<StatusRow>, StoreError> {
        let mut pages = self.status_pages(filter);
        let mut out = Vec::new();
        while let Some(page) = pages.next_page().await? {
            out.extend(page);
        }
        Ok(out)
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
        let found = sqlx::query(&format!("{} ORDER BY org_id", rows::SELECT_LINKS))
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

/// True when `after` differs from `before` in something a link can see (its state, history or
/// identifiers; not its details or last event time).
fn visible_change(before: &Subscription, after: &Subscription) -> bool {
    let plain = |s: &Subscription| Subscription {
        details: Default::default(),
        last_event_time_ms: None,
        ..s.clone()
    };
    plain(before) != plain(after)
}

/// An applied decision, for `mplink_transitions`.
struct Transition<'a> {
    event: &'a Event,
    from: SubState,
    to: SubState,
}

/// At most `limit` bytes of `text` (on a character boundary), with NUL replaced: PostgreSQL
/// refuses it in text, and a rejected body may hold anything.
pub fn storable_text(text: &str, limit: usize) -> String {
    let mut end = text.len().min(limit);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].replace('\0', "\u{FFFD}")
}

impl Store {
    /// Facts applied more than once, by `mplink_transitions` (the fault suite's "double-applied").
    pub async fn double_applied_facts(&self) -> Result<u64, StoreError> {
        let n: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM (SELECT fact_key FROM mplink_transitions GROUP BY fact_key HAVING COUNT(*) > 1) twice",
        )
        .fetch_one(&self.pool)
        .await
        .map_err(q("counting double applications"))?;
        Ok(n as u64)
    }

    /// Outbox rows caused by events (not by links), and how many (cause, organization, type)
    /// groups hold more than one: a delivery notifies each organization of each change once,
    /// so the second figure is a measure of double application (the fault suite's).
    pub async fn notifications_by_event(&self) -> Result<(u64, u64), StoreError> {
        let rows: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM mplink_outbox WHERE cause NOT LIKE 'link:%'")
                .fetch_one(&self.pool)
                .await
                .map_err(q("counting notifications"))?;
        let repeated: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM (SELECT cause FROM mplink_outbox WHERE cause NOT LIKE 'link:%' \
             GROUP BY cause, org_id, event_type HAVING COUNT(*) > 1) twice",
        )
        .fetch_one(&self.pool)
        .await
        .map_err(q("counting repeated notifications"))?;
        Ok((rows as u64, repeated as u64))
    }
}

/// The keys under which a registration could name `sub` (see [`link_key`]): a link matches
/// the subscription exactly when its key is one of these.
fn link_keys_naming(sub: &Subscription) -> Vec<String> {
    let mut keys = Vec::new();
    if let Some(lic) = &sub.license_arn {
        keys.push(format!("lic:{}", license_id(lic)));
    }
    if let Some(product) = &sub.product_code {
        if let Some(cust) = &sub.customer_identifier {
            keys.push(format!("cust:{product}:{cust}"));
        }
        if let Some(acct) = &sub.customer_aws_account_id {
            keys.push(format!("acct:{product}:{acct}"));
        }
    }
    keys
}

/// Who holds a link key: [`Store::link_key_holder`] and the registration link's check.
const SELECT_LINK_KEY_HOLDER: &str = "SELECT org_id FROM mplink_org_links WHERE link_key = $1";

/// A name for this process's row leases (outbox deliveries, metering records): host, pid and a
/// random part, so replicas stay apart even where every container is pid 1.
pub fn lease_owner() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "mplink".to_string());
    format!(
        "{host}-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    )
}

/// Milliseconds since the epoch, now.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn sha256_hex(s: &str) -> String {
    use sha2::Digest;
    format!("{:x}", sha2::Sha256::digest(s.as_bytes()))
}
