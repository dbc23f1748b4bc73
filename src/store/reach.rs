//! The rows a link can reach, loaded over one connection: the pool's for reads, the open
//! transaction's when the outbox compares what organizations see before and after a change.
//! Forward, from links to the subscriptions they name and every renewal or replacement after
//! them ([`load_link_rows`]); backward, from subscriptions to the links that name them or one of
//! their predecessors ([`links_naming`]). Each is one indexed lookup per kind of key and one per
//! step along an agreement chain, however long the chain.

use super::rows::{self, SELECT_LINKS, SELECT_SUBSCRIPTIONS};
use super::{link_keys_naming, q, Backend, StoreError, BULK_ROWS};
use crate::event::license_id;
use crate::ledger::{resolve_link_among, LinkRequest, LinkView, Subscription};
use sqlx::AnyConnection;
use std::collections::HashSet;

/// The rows that decide some links: the subscriptions each link names and every renewal or
/// replacement that follows them through `previous_agreement_id`. What resolving a link needs
/// beyond that (other registrations of the same account, say) belongs here too.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LinkRows {
    /// The subscriptions reached, each once.
    pub subscriptions: Vec<Subscription>,
    /// License ids (`l-…`) of reached subscriptions that a registration names by license: an
    /// account-keyed registration does not take them.
    pub claimed_licenses: HashSet<String>,
}

impl LinkRows {
    /// Resolves one of the links these rows were loaded for.
    pub fn resolve<'a>(&'a self, link: &LinkRequest) -> LinkView<'a> {
        resolve_link_among(link, &self.subscriptions, &self.claimed())
    }

    /// The claimed license ids, borrowed as the ledger takes them.
    pub fn claimed(&self) -> HashSet<&str> {
        self.claimed_licenses.iter().map(String::as_str).collect()
    }
}

/// Subscriptions gathered from several lookups, each kept once.
#[derive(Default)]
pub(super) struct Reached {
    pub(super) subs: Vec<Subscription>,
    keys: HashSet<String>,
}

impl Reached {
    /// Adds the subscriptions not seen yet and returns them.
    pub(super) fn add(&mut self, found: Vec<Subscription>) -> &[Subscription] {
        let start = self.subs.len();
        for sub in found {
            if self.keys.insert(sub.key.clone()) {
                self.subs.push(sub);
            }
        }
        &self.subs[start..]
    }
}

async fn subscriptions_where<S: AsRef<str>>(
    conn: &mut AnyConnection,
    condition: &str,
    binds: &[S],
) -> Result<Vec<Subscription>, StoreError> {
    let sql = format!("{SELECT_SUBSCRIPTIONS} WHERE {condition}");
    let mut query = sqlx::query(&sql);
    for b in binds {
        query = query.bind(b.as_ref());
    }
    let found = query
        .fetch_all(&mut *conn)
        .await
        .map_err(q("looking up subscriptions"))?;
    found.iter().map(rows::subscription_from_row).collect()
}

/// Walks an agreement chain one indexed lookup per step: the subscriptions whose `column`
/// is in `frontier`, then those whose `column` is `next` of what turned up, until nothing new
/// does. Every subscription is added once, so a cycle of agreements ends the walk too.
pub(super) async fn walk_chain(
    backend: Backend,
    conn: &mut AnyConnection,
    reached: &mut Reached,
    mut frontier: Vec<String>,
    column: &str,
    next: fn(&Subscription) -> Option<String>,
) -> Result<(), StoreError> {
    while !frontier.is_empty() {
        let mut found_next = Vec::new();
        for chunk in frontier.chunks(BULK_ROWS) {
            let condition = format!("{column} IN {}", rows::tuples(backend, 1, chunk.len(), 1));
            let found = subscriptions_where(conn, &condition, chunk).await?;
            found_next.extend(reached.add(found).iter().filter_map(next));
        }
        frontier = found_next;
    }
    Ok(())
}

/// Loads the rows relevant to `links` (see [`LinkRows`]).
pub(super) async fn load_link_rows(
    backend: Backend,
    conn: &mut AnyConnection,
    links: &[LinkRequest],
) -> Result<LinkRows, StoreError> {
    let keys = NamingKeys::of(links);
    let mut reached = Reached::default();
    for chunk in keys.licenses.chunks(BULK_ROWS) {
        let condition = format!("license_id IN {}", rows::tuples(backend, 1, chunk.len(), 1));
        let found = subscriptions_where(conn, &condition, chunk).await?;
        reached.add(found);
    }
    for (pairs, a, b) in keys.pairs() {
        for chunk in pairs.chunks(BULK_ROWS / 2) {
            let condition = rows::pairs_any(backend, a, b, chunk.len(), 1);
            let found = subscriptions_where(conn, &condition, &pair_binds(chunk)).await?;
            reached.add(found);
        }
    }

    // Follow renewals and replacements forward.
    let frontier: Vec<String> = reached
        .subs
        .iter()
        .filter_map(|s| s.agreement_id.clone())
        .collect();
    walk_chain(
        backend,
        conn,
        &mut reached,
        frontier,
        "previous_agreement_id",
        |s| s.agreement_id.clone(),
    )
    .await?;

    // Which reached licenses a registration claims: a lookup on the unique link key.
    let license_keys: Vec<String> = reached
        .subs
        .iter()
        .filter_map(|s| s.license_arn.as_deref())
        .map(|l| format!("lic:{}", license_id(l)))
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    let mut claimed_licenses = HashSet::new();
    for chunk in license_keys.chunks(BULK_ROWS) {
        let sql = format!(
            "SELECT link_key FROM mplink_org_links WHERE link_key IN {}",
            rows::tuples(backend, 1, chunk.len(), 1)
        );
        let mut query = sqlx::query_scalar::<_, String>(&sql);
        for key in chunk {
            query = query.bind(key);
        }
        for key in query
            .fetch_all(&mut *conn)
            .await
            .map_err(q("looking up claimed licenses"))?
        {
            if let Some(id) = key.strip_prefix("lic:") {
                claimed_licenses.insert(id.to_string());
            }
        }
    }
    Ok(LinkRows {
        subscriptions: reached.subs,
        claimed_licenses,
    })
}

/// The keys by which some links name subscriptions, each once, with the same precedence as
/// `LinkRequest::matches`: the most specific key alone decides.
struct NamingKeys {
    licenses: Vec<String>,
    /// (product code, customer identifier)
    customers: Vec<(String, String)>,
    /// (account id, product code)
    accounts: Vec<(String, String)>,
}

impl NamingKeys {
    fn of(links: &[LinkRequest]) -> NamingKeys {
        let mut keys = NamingKeys {
            licenses: Vec::new(),
            customers: Vec::new(),
            accounts: Vec::new(),
        };
        for link in links {
            if let Some(lic) = &link.license_arn {
                keys.licenses.push(license_id(lic).to_string());
            } else if let Some(cust) = &link.customer_identifier {
                keys.customers
                    .push((link.product_code.clone(), cust.clone()));
            } else if let Some(acct) = &link.customer_aws_account_id {
                keys.accounts
                    .push((acct.clone(), link.product_code.clone()));
            }
        }
        for pairs in [&mut keys.customers, &mut keys.accounts] {
            pairs.sort();
            pairs.dedup();
        }
        keys.licenses.sort();
        keys.licenses.dedup();
        keys
    }

    /// The two pair-keyed kinds with the columns they are compared with, in the order of the
    /// subscription table's indexes.
    fn pairs(&self) -> [PairKind<'_>; 2] {
        [
            (&self.customers, "product_code", "customer_identifier"),
            (&self.accounts, "customer_aws_account_id", "product_code"),
        ]
    }
}

/// Pairs of one kind of key, with the two columns they are compared with.
type PairKind<'a> = (&'a [(String, String)], &'static str, &'static str);

fn pair_binds(pairs: &[(String, String)]) -> Vec<&str> {
    pairs
        .iter()
        .flat_map(|(x, y)| [x.as_str(), y.as_str()])
        .collect()
}

/// Which of `links` name at least one subscription (by org id): only key columns are read, one
/// indexed lookup per kind of key and chunk. A link that names none resolves to none
/// (`resolve_link_among`), so the status view finds those without resolving every link.
pub(super) async fn orgs_naming_a_subscription(
    backend: Backend,
    conn: &mut AnyConnection,
    links: &[LinkRequest],
) -> Result<HashSet<String>, StoreError> {
    let keys = NamingKeys::of(links);
    let mut found: HashSet<(String, String, String)> = HashSet::new();
    for chunk in keys.licenses.chunks(BULK_ROWS) {
        let sql = format!(
            "SELECT DISTINCT license_id FROM mplink_subscriptions WHERE license_id IN {}",
            rows::tuples(backend, 1, chunk.len(), 1)
        );
        let mut query = sqlx::query_scalar::<_, String>(&sql);
        for id in chunk {
            query = query.bind(id);
        }
        for id in query
            .fetch_all(&mut *conn)
            .await
            .map_err(q("looking up named licenses"))?
        {
            found.insert(("license_id".into(), id, String::new()));
        }
    }
    for (pairs, a, b) in keys.pairs() {
        for chunk in pairs.chunks(BULK_ROWS / 2) {
            let sql = format!(
                "SELECT DISTINCT {a}, {b} FROM mplink_subscriptions WHERE {}",
                rows::pairs_any(backend, a, b, chunk.len(), 1)
            );
            let mut query = sqlx::query_as::<_, (String, String)>(&sql);
            for bind in pair_binds(chunk) {
                query = query.bind(bind);
            }
            for (x, y) in query
                .fetch_all(&mut *conn)
                .await
                .map_err(q("looking up named subscriptions"))?
            {
                found.insert((a.to_string(), x, y));
            }
        }
    }
    let named = |link: &LinkRequest| {
        let key = if let Some(lic) = &link.license_arn {
            ("license_id", license_id(lic).to_string(), String::new())
        } else if let Some(cust) = &link.customer_identifier {
            ("product_code", link.product_code.clone(), cust.clone())
        } else if let Some(acct) = &link.customer_aws_account_id {
            (
                "customer_aws_account_id",
                acct.clone(),
                link.product_code.clone(),
            )
        } else {
            return false;
        };
        found.contains(&(key.0.to_string(), key.1, key.2))
    };
    Ok(links
        .iter()
        .filter(|l| named(l))
        .map(|l| l.org_id.clone())
        .collect())
}

/// The links that name one of `subs` or one of their predecessors along agreement chains (each
/// once, in organization order): every link a change of `subs` can concern.
pub(super) async fn links_naming(
    backend: Backend,
    conn: &mut AnyConnection,
    subs: Vec<Subscription>,
) -> Result<Vec<LinkRequest>, StoreError> {
    // Several versions of one subscription (before and after a change) may be given: each
    // counts, since a registration may name either.
    let mut keys: Vec<String> = subs.iter().flat_map(link_keys_naming).collect();
    let wanted: Vec<String> = subs
        .iter()
        .filter_map(|s| s.previous_agreement_id.clone())
        .collect();
    let mut reached = Reached::default();
    reached.add(subs);
    walk_chain(backend, conn, &mut reached, wanted, "agreement_id", |s| {
        s.previous_agreement_id.clone()
    })
    .await?;
    keys.extend(reached.subs.iter().flat_map(link_keys_naming));
    keys.sort();
    keys.dedup();

    let mut links = Vec::new();
    for chunk in keys.chunks(BULK_ROWS) {
        let sql = format!(
            "{SELECT_LINKS} WHERE link_key IN {}",
            rows::tuples(backend, 1, chunk.len(), 1)
        );
        let mut query = sqlx::query(&sql);
        for key in chunk {
            query = query.bind(key);
        }
        for row in query
            .fetch_all(&mut *conn)
            .await
            .map_err(q("looking up links"))?
        {
            links.push(rows::link_from_row(&row)?);
        }
    }
    links.sort_by(|a, b| a.org_id.cmp(&b.org_id));
    links.dedup_by(|a, b| a.org_id == b.org_id);
    Ok(links)
}

/// The subscriptions with these keys (those that exist), by primary key in chunks; `tail` ends
/// each statement (an ORDER BY and a row lock for the apply path), `op` names it in errors.
pub(super) async fn subscriptions_by_key(
    backend: Backend,
    conn: &mut AnyConnection,
    keys: &[String],
    tail: &str,
    op: &'static str,
) -> Result<Vec<Subscription>, StoreError> {
    let mut out = Vec::with_capacity(keys.len());
    for chunk in keys.chunks(BULK_ROWS) {
        let sql = format!(
            "{} WHERE sub_key IN {}{tail}",
            rows::SELECT_SUBSCRIPTIONS,
            rows::tuples(backend, 1, chunk.len(), 1)
        );
        let mut query = sqlx::query(&sql);
        for key in chunk {
            query = query.bind(key);
        }
        for row in query.fetch_all(&mut *conn).await.map_err(q(op))? {
            out.push(rows::subscription_from_row(&row)?);
        }
    }
    Ok(out)
}
