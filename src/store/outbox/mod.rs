//! The outbox's tables: what an organization sees, computed inside a transaction before and
//! after a change, the rows that difference writes. [`queue`] is the other side: the deliverer's leases and the
//! operators' reads.
//!
//! Serialization: every transaction that may write outbox rows first locks the one row of
//! `mplink_outbox_seq` (apply batches only once they changed a subscription in a way a link can
//! see, just before reading the links). Without it, a `link` committing while a batch changes the
//! subscription it names could each miss the other's change and the organization would never be
//! told; with it, the later of the two reads the earlier's committed rows. Sequences are taken
//! under the same lock, so they appear in commit order.

mod queue;

pub use queue::*;

use super::{q, reach, rows, Backend, StoreError};
use crate::event::Event;
use crate::ledger::{resolve_link_among, LinkRequest, Subscription};
use crate::notify::{EventType, NewRow, OrgView, SubscriptionIds};
use sqlx::AnyConnection;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

/// The PostgreSQL channel a transaction that wrote outbox rows notifies on commit; the payload
/// is the newest sequence. Channels are per database, not per schema: a deployment sharing the
/// database with another only sees extra wake-ups, never a missed one.
pub const OUTBOX_CHANNEL: &str = "mplink_outbox";

/// Takes the outbox lock (see the module's comment) for the rest of the transaction.
pub(super) async fn lock(conn: &mut AnyConnection) -> Result<(), StoreError> {
    sqlx::query("UPDATE mplink_outbox_seq SET last_seq = last_seq WHERE id = 1")
        .execute(conn)
        .await
        .map_err(q("locking the outbox"))?;
    Ok(())
}

async fn links_where(
    backend: Backend,
    conn: &mut AnyConnection,
    column: &str,
    values: &[String],
) -> Result<Vec<LinkRequest>, StoreError> {
    let mut out = Vec::new();
    for chunk in values.chunks(super::BULK_ROWS) {
        let sql = format!(
            "SELECT org_id, product_code, customer_identifier, customer_aws_account_id, license_arn, requested_at \
             FROM mplink_org_links WHERE {column} IN {}",
            rows::tuples(backend, 1, chunk.len(), 1)
        );
        let mut query = sqlx::query(&sql);
        for v in chunk {
            query = query.bind(v);
        }
        for row in query
            .fetch_all(&mut *conn)
            .await
            .map_err(q("reading links for the outbox"))?
        {
            out.push(rows::link_from_row(&row)?);
        }
    }
    Ok(out)
}

/// The organizations whose view a change of `subs` can alter: the links naming one of them or
/// one of their predecessors along renewal chains.
pub(super) async fn affected_orgs(
    backend: Backend,
    conn: &mut AnyConnection,
    subs: &[&Subscription],
) -> Result<BTreeSet<String>, StoreError> {
    let subs: Vec<Subscription> = subs.iter().map(|s| (*s).clone()).collect();
    Ok(reach::links_naming(backend, conn, subs)
        .await?
        .into_iter()
        .map(|l| l.org_id)
        .collect())
}

/// What each of `orgs` that has a link sees now, as this transaction reads the database.
pub(super) async fn org_views(
    backend: Backend,
    conn: &mut AnyConnection,
    orgs: &BTreeSet<String>,
) -> Result<BTreeMap<String, OrgView>, StoreError> {
    let orgs: Vec<String> = orgs.iter().cloned().collect();
    let links = links_where(backend, conn, "org_id", &orgs).await?;
    if links.is_empty() {
        return Ok(BTreeMap::new());
    }
    let reached = reach::load_link_rows(backend, conn, &links).await?;
    let claimed = reached.claimed();
    Ok(links
        .iter()
        .map(|link| {
            let view = view_of(link, &reached.subscriptions, &claimed);
            (link.org_id.clone(), view)
        })
        .collect())
}

fn view_of(link: &LinkRequest, subs: &[Subscription], claimed: &HashSet<&str>) -> OrgView {
    let view = resolve_link_among(link, subs, claimed);
    let subscription = match view.subscription {
        Some(s) => SubscriptionIds::of(s),
        None => SubscriptionIds {
            product_code: Some(link.product_code.clone()),
            customer_identifier: link.customer_identifier.clone(),
            customer_aws_account_id: link.customer_aws_account_id.clone(),
            license_arn: link.license_arn.clone(),
            ..SubscriptionIds::default()
        },
    };
    OrgView {
        state: view.state,
        subscription,
    }
}

/// One applied event of a batch with the subscription as it left it.
pub(super) struct Step<'a> {
    /// The event.
    pub event: &'a Event,
    /// Its subscription after it.
    pub sub: Subscription,
}

/// The rows an apply batch writes: its steps replayed in batch order over what the affected
/// organizations see, one row per change of an organization's view, caused by the step's event.
/// Called once the subscriptions are written (the database holds every identifier the batch
/// taught, so every row a link can reach during the replay is loaded); `before` holds the
/// subscriptions as they were.
pub(super) async fn rows_for_steps(
    backend: Backend,
    conn: &mut AnyConnection,
    before: &HashMap<String, Subscription>,
    steps: &[Step<'_>],
) -> Result<Vec<NewRow>, StoreError> {
    if steps.is_empty() {
        return Ok(Vec::new());
    }
    lock(conn).await?;
    let seeds: Vec<&Subscription> = steps
        .iter()
        .flat_map(|s| [Some(&s.sub), before.get(&s.sub.key)])
        .flatten()
        .collect();
    let orgs: Vec<String> = affected_orgs(backend, conn, &seeds)
        .await?
        .into_iter()
        .collect();
    let links = links_where(backend, conn, "org_id", &orgs).await?;
    if links.is_empty() {
        return Ok(Vec::new());
    }
    let reached = reach::load_link_rows(backend, conn, &links).await?;
    let claimed = reached.claimed();
    let last = &reached.subscriptions;
    // Each link's slice: what it reaches once the batch is applied. Identifiers and chain links
    // are only ever learned, so that covers what it reaches at any step of the batch.
    let slices: Vec<Vec<String>> = links
        .iter()
        .map(|link| {
            let reached = crate::ledger::reach(link, last);
            reached.into_iter().map(|s| s.key.clone()).collect()
        })
        .collect();
    let mut state: HashMap<String, Subscription> = last
        .iter()
        .map(|s| (s.key.clone(), before.get(&s.key).unwrap_or(s).clone()))
        .collect();
    let slice_subs = |state: &HashMap<String, Subscription>, i: usize| -> Vec<Subscription> {
        slices[i]
            .iter()
            .filter_map(|k| state.get(k).cloned())
            .collect()
    };
    let mut views: Vec<OrgView> = (0..links.len())
        .map(|i| view_of(&links[i], &slice_subs(&state, i), &claimed))
        .collect();
    let mut out = Vec::new();
    for step in steps {
        if !state.contains_key(&step.sub.key) {
            // No link reaches it.
            continue;
        }
        state.insert(step.sub.key.clone(), step.sub.clone());
        for (i, link) in links.iter().enumerate() {
            if !slices[i].contains(&step.sub.key) {
                continue;
            }
            let now = view_of(link, &slice_subs(&state, i), &claimed);
            if let Some(event_type) = crate::notify::change_type(Some(views[i].state), now.state) {
                out.push(NewRow {
                    event_type,
                    org_id: link.org_id.clone(),
                    moved_to_org_id: None,
                    subscription: now.subscription.clone(),
                    state_before: Some(views[i].state),
                    state_after: Some(now.state),
                    event_time_ms: step.event.time_ms,
                    cause: step.event.event_id.clone(),
                });
            }
            views[i] = now;
        }
    }
    Ok(out)
}

/// The rows telling each organization what changed between `before` and `after`. An
/// organization that lost its link gets `link.moved` (to `moved_to`); `cause` gives each row's
/// causing delivery and event time.
pub(super) fn diff(
    before: &BTreeMap<String, OrgView>,
    after: &BTreeMap<String, OrgView>,
    moved_to: Option<&str>,
    cause: impl Fn(&str, Option<&OrgView>, Option<&OrgView>) -> (String, i64),
) -> Vec<NewRow> {
    let orgs: BTreeSet<&String> = before.keys().chain(after.keys()).collect();
    let mut out = Vec::new();
    for org in orgs {
        let (b, a) = (before.get(org), after.get(org));
        let event_type = match (b, a) {
            (Some(_), None) => Some(EventType::Moved),
            (b, Some(a)) => crate::notify::change_type(b.map(|v| v.state), a.state),
            (None, None) => None,
        };
        let Some(event_type) = event_type else {
            continue;
        };
        let (cause, event_time_ms) = cause(org, b, a);
        out.push(NewRow {
            event_type,
            org_id: org.clone(),
            moved_to_org_id: (event_type == EventType::Moved)
                .then(|| moved_to.map(str::to_string))
                .flatten(),
            subscription: a.or(b).map(|v| v.subscription.clone()).unwrap_or_default(),
            state_before: b.map(|v| v.state),
            state_after: a.map(|v| v.state),
            event_time_ms,
            cause,
        });
    }
    out
}

/// Columns written by [`insert`], in bind order.
const COLUMNS: [&str; 21] = [
    "seq",
    "event_id",
    "event_type",
    "org_id",
    "moved_to_org_id",
    "sub_key",
    "product_code",
    "customer_identifier",
    "customer_aws_account_id",
    "agreement_id",
    "license_arn",
    "state_before",
    "state_after",
    "payment_method_before",
    "payment_method",
    "event_time",
    "cause",
    "created_at",
    "status",
    "attempts",
    "next_attempt_at",
];

/// Writes `new` with the next sequences (the caller holds the outbox lock).
pub(super) async fn insert(
    backend: Backend,
    conn: &mut AnyConnection,
    new: &[NewRow],
    now: i64,
) -> Result<(), StoreError> {
    if new.is_empty() {
        return Ok(());
    }
    let last: i64 = sqlx::query_scalar(
        "UPDATE mplink_outbox_seq SET last_seq = last_seq + $1 WHERE id = 1 RETURNING last_seq",
    )
    .bind(new.len() as i64)
    .fetch_one(&mut *conn)
    .await
    .map_err(q("taking outbox sequences"))?;
    let first = last - new.len() as i64 + 1;
    let numbered: Vec<(i64, &NewRow)> = new
        .iter()
        .enumerate()
        .map(|(i, r)| (first + i as i64, r))
        .collect();
    for chunk in numbered.chunks(super::BULK_ROWS) {
        let sql = format!(
            "INSERT INTO mplink_outbox ({}) VALUES {}",
            COLUMNS.join(", "),
            rows::tuples(backend, chunk.len(), COLUMNS.len(), 1)
        );
        let mut query = sqlx::query(&sql);
        for (seq, r) in chunk {
            let s = &r.subscription;
            query = query
                .bind(*seq)
                .bind(event_id(*seq, r))
                .bind(r.event_type.as_str())
                .bind(&r.org_id)
                .bind(&r.moved_to_org_id)
                .bind(&s.sub_key)
                .bind(&s.product_code)
                .bind(&s.customer_identifier)
                .bind(&s.customer_aws_account_id)
                .bind(&s.agreement_id)
                .bind(&s.license_arn)
                .bind(r.state_before.map(|v| v.as_str()))
                .bind(r.state_after.map(|v| v.as_str()))
                .bind(r.payment_method_before().map(|p| p.as_str()))
                .bind(r.payment_method().map(|p| p.as_str()))
                .bind(r.event_time_ms)
                .bind(&r.cause)
                .bind(now)
                .bind(STATUS_PENDING)
                .bind(0i64)
                .bind(now);
        }
        query
            .execute(&mut *conn)
            .await
            .map_err(q("writing the outbox"))?;
    }
    if backend == Backend::Postgres {
        // Delivered at commit (and not at all on rollback): wakes every deliverer listening.
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(OUTBOX_CHANNEL)
            .bind(last.to_string())
            .execute(&mut *conn)
            .await
            .map_err(q("notifying the outbox's listeners"))?;
    }
    Ok(())
}

/// The stable id of a row: the same on every delivery attempt, unique in the outbox.
fn event_id(seq: i64, row: &NewRow) -> String {
    let hash = super::sha256_hex(&format!(
        "{seq}\n{}\n{}\n{}",
        row.cause, row.org_id, row.event_type
    ));
    format!("msg_{seq}_{}", &hash[..16])
}
