//! The ledger's storage: SQLite (embedded default) or PostgreSQL through sqlx, with versioned
//! migrations. Applying events and recording them in the event log happen in one transaction;
//! the subscription row is locked first, so concurrent appliers serialize per subscription.

mod apply;
mod entitlements;
mod error;
mod events;
mod history;
mod link;
mod listen;
mod metering;
mod outbox;
mod reach;
mod reconcile_runs;
mod registrations;
mod rows;
mod view;

use crate::config::DatabaseUrl;
use crate::event::{license_id, Event, InboundMessage};
use crate::ledger::{self, LinkRequest, Outcome, SubState, Subscription};
use crate::time::now_ms;
use sqlx::any::AnyPoolOptions;
use sqlx::{AnyPool, Executor, Row};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::Duration;
use thiserror::Error;

pub use apply::Incoming;
pub use entitlements::{AnswerStored, EntitlementCheck, EntitlementSet};
pub use error::StoreError;
use error::*;
use events::sha256_hex;
pub use events::{storable_text, LogEntry};
pub use history::{HistoryEntry, MAX_HISTORY};
use link::*;
pub use link::{link_key, LinkOutcome};
pub use listen::OutboxListener;
pub use metering::{
    CloseRules, MeterRecord, MeterResult, MeterStats, MeterTarget, OrgUsageHour, OrgUsagePage,
    UsageRow, ENDED_FINAL, ENDED_NOT_SUBSCRIBED, MAX_PAGE_HOURS, METER_DUPLICATE, METER_EXPIRED,
    METER_FAILED, METER_NOT_SUBSCRIBED, METER_STOPPED, METER_SUCCESS, METER_UNSENT, USAGE_ACCEPTED,
    USAGE_REFUSED, USAGE_SUBMITTED,
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

/// Apply transactions the worker runs at once on PostgreSQL: enough to overlap one batch's
/// round trips with another's, few enough that batches grow under load instead of splitting.
const POSTGRES_CONCURRENT_BATCHES: usize = 4;

/// How much of a rejected body the event log keeps (its size and SHA-256 are kept whole).
pub const REJECTED_BODY_LIMIT: usize = 8 * 1024;

/// Which SQL dialect the pool speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// SQLite: one writer at a time, so transactions take the write lock up front.
    Sqlite,
    /// PostgreSQL: row locks per subscription.
    Postgres,
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

    /// How many apply transactions are worth running at once. SQLite has one writer: a second
    /// transaction waits in SQLite's busy handler, which sleeps (1, 2, 5, … up to 100 ms) and
    /// retries rather than queueing, so the worker queues its batches itself and merges the
    /// receives that wait meanwhile into the next one.
    pub fn concurrent_batches(&self) -> usize {
        match self.backend {
            Backend::Sqlite => 1,
            Backend::Postgres => POSTGRES_CONCURRENT_BATCHES,
        }
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

    /// The subscriptions with these keys that exist, by key (keyed lookups only).
    pub async fn subscriptions_by_key(
        &self,
        keys: &[String],
    ) -> Result<HashMap<String, Subscription>, StoreError> {
        let mut conn = self
            .pool
            .acquire()
            .await
            .map_err(q("reading subscriptions"))?;
        Ok(
            reach::subscriptions_by_key(self.backend, &mut conn, keys, "", "reading subscriptions")
                .await?
                .into_iter()
                .map(|s| (s.key.clone(), s))
                .collect(),
        )
    }

    /// The organizations whose links name one of `subs` (or a predecessor along a renewal
    /// chain), by org id.
    pub async fn orgs_naming(
        &self,
        subs: Vec<Subscription>,
    ) -> Result<BTreeSet<String>, StoreError> {
        let mut conn = self.pool.acquire().await.map_err(q("reading links"))?;
        Ok(reach::links_naming(self.backend, &mut conn, subs)
            .await?
            .into_iter()
            .map(|l| l.org_id)
            .collect())
    }

    /// Every link request, in organization order.
    pub async fn links(&self) -> Result<Vec<LinkRequest>, StoreError> {
        let found = sqlx::query(&format!("{} ORDER BY org_id", rows::SELECT_LINKS))
            .fetch_all(&self.pool)
            .await
            .map_err(q("reading links"))?;
        found.iter().map(rows::link_from_row).collect()
    }

    /// Closes the pool, waiting for connections to finish.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

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
