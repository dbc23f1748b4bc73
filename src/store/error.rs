//! What can go wrong talking to the database, and which failures a rerun cures.

use super::*;

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

pub(super) fn is_transient_sqlx(e: &sqlx::Error) -> bool {
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
pub(super) fn is_conflict_code(code: Option<&str>) -> bool {
    matches!(
        code,
        Some("40P01" | "40001" | "55P03" | "5" | "6" | "517" | "261" | "262")
    )
}

/// A unique violation: in the apply path only the event-log insert can raise one, when another
/// transaction recorded the same delivery between our lookup and our insert (a copy with a
/// different subject, so no row lock serialized the two). Rerunning the batch then finds the
/// record and decides `duplicate`.
pub(super) fn is_unique_violation(code: Option<&str>) -> bool {
    matches!(code, Some("23505" | "2067" | "1555"))
}

/// PostgreSQL's `lock_not_available`: a lock wait passed `lock_timeout`.
pub(super) fn is_lock_timeout(e: &StoreError) -> bool {
    matches!(e, StoreError::Query { source: sqlx::Error::Database(db), .. } if db.code().as_deref() == Some("55P03"))
}

pub(super) fn is_conflict(e: &StoreError) -> bool {
    matches!(e, StoreError::Query { source: sqlx::Error::Database(db), .. } if is_conflict_code(db.code().as_deref()))
}

pub(super) fn is_batch_retryable(e: &StoreError) -> bool {
    is_conflict(e)
        || matches!(e, StoreError::Query { source: sqlx::Error::Database(db), .. } if is_unique_violation(db.code().as_deref()))
}

pub(super) fn q(op: &'static str) -> impl FnOnce(sqlx::Error) -> StoreError {
    move |source| StoreError::Query { op, source }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conflicts_on_either_backend_rerun_and_other_failures_do_not() {
        // PostgreSQL: deadlock, serialization failure, lock timeout; SQLite: busy, locked and
        // their extended codes.
        for code in ["40P01", "40001", "55P03", "5", "6", "517", "261", "262"] {
            assert!(is_conflict_code(Some(code)), "{code} is a conflict");
        }
        // A unique violation is not a conflict (the batch rule treats it on its own), nor is a
        // syntax error or a missing code.
        for code in [Some("23505"), Some("42601"), Some("1"), None] {
            assert!(!is_conflict_code(code), "{code:?} is not a conflict");
        }
        for code in ["23505", "2067", "1555"] {
            assert!(
                is_unique_violation(Some(code)),
                "{code} is a unique violation"
            );
        }
        assert!(!is_unique_violation(Some("40001")));
    }

    #[test]
    fn a_lost_connection_is_transient_and_a_corrupt_row_is_not() {
        let down = q("reading links")(sqlx::Error::PoolTimedOut);
        assert!(down.is_transient());
        assert_eq!(
            down.to_string(),
            "database error while reading links: pool timed out while waiting for an open connection"
        );
        let corrupt = StoreError::Corrupt {
            table: "mplink_subscriptions",
            column: "state",
            value: "bogus".into(),
        };
        assert!(!corrupt.is_transient());
        assert!(!is_batch_retryable(&corrupt));
        assert!(!StoreError::LinkWithoutKey.is_transient());
    }
}
