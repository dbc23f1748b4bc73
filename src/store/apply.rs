//! Applying events: a batch of decoded messages decided by the ledger and recorded, with its
//! event log, transitions and outbox rows, in one transaction. One job, in steps: load what the
//! batch names (`load_rows`, `seen_in_log`), decide each message in order
//! (`decide`, pure), write what changed (`record_log`, `record_transitions`, the subscriptions,
//! the outbox, `remove_rows`).

use super::*;
use sqlx::AnyConnection;

/// One decoded event with the body it came from (kept in the event log for audit).
#[derive(Debug, Clone, Copy)]
pub struct Incoming<'a> {
    /// The event.
    pub event: &'a Event,
    /// The raw SQS body.
    pub body: &'a str,
}

impl Store {
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

    pub(super) async fn try_apply_batch(
        &self,
        batch: &[Incoming<'_>],
    ) -> Result<Vec<Outcome>, StoreError> {
        self.try_batch(batch, true).await
    }

    /// The apply path. Set-based, so a batch costs a handful of statements whatever its size:
    /// make sure every subscription row exists, lock them all in key order (so concurrent
    /// batches cannot deadlock each other), look every delivery and fact up in the event log at
    /// once, decide in memory with the pure ledger, then write the log rows and the changed
    /// subscriptions in bulk, and remove the rows no event touched (all duplicates). Because
    /// the rows are locked before the log is read, two copies of one delivery or fact in
    /// concurrent transactions are serialized on their subscription.
    pub(super) async fn try_batch(
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
        self.set_batch_settings(&mut tx, batch.len()).await?;
        let (created, before) = self.load_rows(&mut tx, &keys, now).await?;
        let seen = self.seen_in_log(&mut tx, batch).await?;
        // The fault suite's broken build (src/failpoint.rs); false in every release.
        let broken = crate::failpoint::skip_duplicate_check();
        let decided = decide(batch, before.clone(), seen, broken)?;

        self.record_log(&mut tx, &decided.log_rows, now, broken)
            .await?;
        self.record_transitions(&mut tx, &decided.transitions, now)
            .await?;
        let changed: Vec<&Subscription> = keys
            .iter()
            .filter_map(|k| {
                decided
                    .current
                    .get(k)
                    .filter(|sub| before.get(k) != Some(*sub))
            })
            .collect();
        for chunk in changed.chunks(BULK_ROWS / 4) {
            rows::write_subscriptions(self.backend, &mut tx, chunk, now).await?;
        }
        // What the organizations see, event by event: a preview writes no outbox (nor locks it).
        if commit {
            let new =
                outbox::rows_for_steps(self.backend, &mut tx, &before, &decided.steps).await?;
            outbox::insert(self.backend, &mut tx, &new, now).await?;
            let asks: Vec<(String, i64)> = decided
                .log_rows
                .iter()
                .filter(|(_, o)| matches!(o, Outcome::Applied | Outcome::Stale | Outcome::Noted))
                .map(|(i, _)| i.event)
                .filter(|e| crate::entitlement::asks_for_entitlements(&e.action))
                .map(|e| (e.subject.as_key(), e.time_ms))
                .collect();
            entitlements::ask(self.backend, &mut tx, &asks, now).await?;
        }
        // A row this transaction created only to lock it (every event for it a duplicate) goes
        // again before anyone can see it; the lock still serialized the concurrent copies.
        let untouched: Vec<&String> = keys
            .iter()
            .filter(|k| created.contains(*k) && before.get(*k) == decided.current.get(*k))
            .collect();
        if self.backend == Backend::Postgres {
            self.remove_rows(&mut tx, &untouched).await?;
        }

        if commit {
            tx.commit().await.map_err(q("committing applied events"))?;
        } else {
            tx.rollback().await.map_err(q("rolling back a preview"))?;
        }
        Ok(decided.outcomes)
    }

    /// PostgreSQL only: the batch's lock timeout and planner setting, in one round trip.
    async fn set_batch_settings(
        &self,
        conn: &mut AnyConnection,
        batch_len: usize,
    ) -> Result<(), StoreError> {
        if self.backend != Backend::Postgres {
            return Ok(());
        }
        // SET does not take bind parameters; the value is a number of our own.
        let lock_timeout = match (self.batch_lock_timeout, batch_len > 1) {
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
        sqlx::Executor::execute(&mut *conn, settings.as_str())
            .await
            .map_err(q("setting the batch's planner and lock settings"))?;
        Ok(())
    }

    /// Every key's row as the batch starts, and the keys that had none. On PostgreSQL the
    /// missing rows are created and every row locked in key order, so concurrent copies of one
    /// event wait for each other. SQLite's transaction already holds the one write lock
    /// (`BEGIN IMMEDIATE`), so a missing row is only made in memory, as the blank row creating
    /// it would read back: it is written if an event changes it and never exists otherwise —
    /// two statements fewer per batch on the backend that runs one batch at a time.
    async fn load_rows(
        &self,
        conn: &mut AnyConnection,
        keys: &[String],
        now: i64,
    ) -> Result<(HashSet<String>, HashMap<String, Subscription>), StoreError> {
        match self.backend {
            Backend::Postgres => {
                let created = self.ensure_rows(conn, keys, now).await?;
                let before = self.lock_rows(conn, keys).await?;
                Ok((created, before))
            }
            Backend::Sqlite => {
                let mut before = self.lock_rows(conn, keys).await?;
                let mut created = HashSet::new();
                for key in keys {
                    if !before.contains_key(key) {
                        before.insert(key.clone(), Subscription::blank(key.clone()));
                        created.insert(key.clone());
                    }
                }
                Ok((created, before))
            }
        }
    }

    /// Makes sure a row exists for every key; returns the keys whose row this transaction
    /// created, so that those no event touches can go again.
    async fn ensure_rows(
        &self,
        conn: &mut AnyConnection,
        keys: &[String],
        now: i64,
    ) -> Result<HashSet<String>, StoreError> {
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
                    .fetch_all(&mut *conn)
                    .await
                    .map_err(q("creating subscription rows"))?,
            );
        }
        Ok(created)
    }

    /// Locks every key's row, in key order, and reads it.
    async fn lock_rows(
        &self,
        conn: &mut AnyConnection,
        keys: &[String],
    ) -> Result<HashMap<String, Subscription>, StoreError> {
        let tail = match self.backend {
            Backend::Postgres => " ORDER BY sub_key FOR UPDATE",
            Backend::Sqlite => " ORDER BY sub_key",
        };
        let locked =
            reach::subscriptions_by_key(self.backend, conn, keys, tail, "locking subscriptions")
                .await?;
        let current: HashMap<String, Subscription> =
            locked.into_iter().map(|s| (s.key.clone(), s)).collect();
        Ok(current)
    }

    /// The deliveries and facts of `batch` the event log already holds.
    async fn seen_in_log(
        &self,
        conn: &mut AnyConnection,
        batch: &[Incoming<'_>],
    ) -> Result<Seen, StoreError> {
        let mut seen = Seen::default();
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
                .fetch_all(&mut *conn)
                .await
                .map_err(q("looking up the event log"))?
            {
                seen.ids.insert(
                    row.try_get("message_id")
                        .map_err(q("looking up the event log"))?,
                );
                if let Some(fact) = row
                    .try_get::<Option<String>, _>("fact_key")
                    .map_err(q("looking up the event log"))?
                {
                    seen.facts.insert(fact);
                }
            }
        }
        Ok(seen)
    }

    /// The event log's rows of the batch (duplicates of a recorded delivery write none).
    async fn record_log(
        &self,
        conn: &mut AnyConnection,
        log_rows: &[(&Incoming<'_>, Outcome)],
        now: i64,
        skip_duplicate_check: bool,
    ) -> Result<(), StoreError> {
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
                .execute(&mut *conn)
                .await
                .map_err(q("recording events"))?;
        }
        Ok(())
    }

    /// One `mplink_transitions` row per applied decision.
    async fn record_transitions(
        &self,
        conn: &mut AnyConnection,
        transitions: &[Transition<'_>],
        now: i64,
    ) -> Result<(), StoreError> {
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
                .execute(&mut *conn)
                .await
                .map_err(q("recording transitions"))?;
        }
        Ok(())
    }

    /// Deletes the rows of `keys`.
    async fn remove_rows(
        &self,
        conn: &mut AnyConnection,
        keys: &[&String],
    ) -> Result<(), StoreError> {
        for chunk in keys.chunks(BULK_ROWS) {
            let sql = format!(
                "DELETE FROM mplink_subscriptions WHERE sub_key IN {}",
                rows::tuples(self.backend, 1, chunk.len(), 1)
            );
            let mut query = sqlx::query(&sql);
            for key in chunk {
                query = query.bind(*key);
            }
            query
                .execute(&mut *conn)
                .await
                .map_err(q("removing unused subscription rows"))?;
        }
        Ok(())
    }
}

/// What the event log already holds of a batch: delivery ids and fact keys.
#[derive(Default)]
struct Seen {
    ids: HashSet<String>,
    facts: HashSet<String>,
}

/// What a batch decided, in memory, before anything of it is written.
struct Decided<'a> {
    /// Each message's outcome, in batch order.
    outcomes: Vec<Outcome>,
    /// The event log's rows: every message but a duplicate of a recorded delivery.
    log_rows: Vec<(&'a Incoming<'a>, Outcome)>,
    transitions: Vec<Transition<'a>>,
    /// The subscriptions as the batch leaves them.
    current: HashMap<String, Subscription>,
    /// Each change a link can see, for the outbox.
    steps: Vec<outbox::Step<'a>>,
}

/// Decides every message of `batch` in order with the pure ledger, starting from `current` (the
/// locked rows) and what the log has `seen`; `skip_duplicate_check` is the fault suite's broken
/// build. No I/O.
fn decide<'a>(
    batch: &'a [Incoming<'a>],
    mut current: HashMap<String, Subscription>,
    mut seen: Seen,
    skip_duplicate_check: bool,
) -> Result<Decided<'a>, StoreError> {
    let mut outcomes = Vec::with_capacity(batch.len());
    let mut log_rows = Vec::with_capacity(batch.len());
    let mut transitions = Vec::new();
    let mut steps = Vec::new();
    for item in batch {
        let event = item.event;
        // This very delivery is already recorded: nothing to write.
        if !seen.ids.insert(event.event_id.clone()) && !skip_duplicate_check {
            outcomes.push(Outcome::Duplicate);
            continue;
        }
        let outcome = if seen.facts.contains(&event.fact_key) && !skip_duplicate_check {
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
        seen.facts.insert(event.fact_key.clone());
        outcomes.push(outcome);
        log_rows.push((item, outcome));
    }
    Ok(Decided {
        outcomes,
        log_rows,
        transitions,
        current,
        steps,
    })
}

/// True when `after` differs from `before` in something a link can see (its state, history or
/// identifiers; not its details or last event time).
pub(super) fn visible_change(before: &Subscription, after: &Subscription) -> bool {
    let plain = |s: &Subscription| Subscription {
        details: Default::default(),
        last_event_time_ms: None,
        ..s.clone()
    };
    plain(before) != plain(after)
}

/// An applied decision, for `mplink_transitions`.
pub(super) struct Transition<'a> {
    event: &'a Event,
    from: SubState,
    to: SubState,
}
