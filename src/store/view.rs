//! Reading the ledger one link at a time. Every per-organization operation loads only the rows
//! its link can reach ([`Store::link_rows`]) through indexed lookups, and `status` without a
//! filter walks the ledger in keyset pages ([`StatusPages`]), so no command holds the whole
//! ledger and none scans it to answer for one organization.

use super::reach::{self, LinkRows};
use super::rows::{self, row_for, SELECT_LINKS, SELECT_SUBSCRIPTIONS};
use super::{q, StatusFilter, StatusRow, Store, StoreError};
use crate::ledger::{resolve_link, LinkRequest, LinkState, Subscription};
use std::collections::{BTreeSet, HashMap, HashSet};

/// Rows per `status` page: bounds what one page holds in memory.
pub const STATUS_PAGE_ROWS: usize = 1000;

/// Links resolved against one [`LinkRows`]: `resolve_link` compares a link with every row it is
/// handed, so the rows shared by a batch are kept few.
const RESOLVE_BATCH: usize = 100;

impl Store {
    /// Loads the rows relevant to `links` (see [`LinkRows`]): one indexed lookup per kind of
    /// key, then one per step along the agreement chains.
    pub async fn link_rows(&self, links: &[LinkRequest]) -> Result<LinkRows, StoreError> {
        let mut conn = self
            .pool
            .acquire()
            .await
            .map_err(q("taking a connection"))?;
        reach::load_link_rows(self.backend, &mut conn, links).await
    }

    /// One organization's link and the rows that decide it, if the organization has a link.
    pub async fn org_link(
        &self,
        org_id: &str,
    ) -> Result<Option<(LinkRequest, LinkRows)>, StoreError> {
        let sql = format!("{SELECT_LINKS} WHERE org_id = $1");
        let found = sqlx::query(&sql)
            .bind(org_id)
            .fetch_optional(&self.pool)
            .await
            .map_err(q("reading an organization's link"))?;
        let Some(row) = found else {
            return Ok(None);
        };
        let link = rows::link_from_row(&row)?;
        let relevant = self.link_rows(std::slice::from_ref(&link)).await?;
        Ok(Some((link, relevant)))
    }

    /// The status view in pages; see [`StatusPages`].
    pub fn status_pages(&self, filter: &StatusFilter) -> StatusPages<'_> {
        let stage = match &filter.org_id {
            Some(_) => Stage::Org,
            None => Stage::Subscriptions { after: None },
        };
        StatusPages {
            store: self,
            filter: filter.clone(),
            page_rows: STATUS_PAGE_ROWS,
            stage,
        }
    }

    /// Keyset page: rows after `after` in `order` (the table's key), with an optional equality.
    async fn page_where(
        &self,
        select: &str,
        order: &str,
        equal: Option<(&str, &str)>,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<sqlx::any::AnyRow>, StoreError> {
        let mut conditions = Vec::new();
        let mut binds = Vec::new();
        if let Some((column, value)) = equal {
            binds.push(value);
            conditions.push(format!(
                "{column} = {}",
                rows::placeholder(self.backend, binds.len())
            ));
        }
        if let Some(after) = after {
            binds.push(after);
            conditions.push(format!(
                "{order} > {}",
                rows::placeholder(self.backend, binds.len())
            ));
        }
        let filter = if conditions.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", conditions.join(" AND "))
        };
        let sql = format!("{select}{filter} ORDER BY {order} LIMIT {limit}");
        let mut query = sqlx::query(&sql);
        for b in binds {
            query = query.bind(b);
        }
        query
            .fetch_all(&self.pool)
            .await
            .map_err(q("reading a status page"))
    }

    /// The links that resolve to subscriptions of `page`, by subscription key, each list in
    /// organization order. A link reaches a subscription it names or one that follows such a
    /// subscription, so the candidates are the links naming `page` or its predecessors.
    async fn links_resolving_to(
        &self,
        page: &[Subscription],
    ) -> Result<HashMap<String, Vec<(LinkRequest, LinkState)>>, StoreError> {
        let mut conn = self
            .pool
            .acquire()
            .await
            .map_err(q("taking a connection"))?;
        let candidates = reach::links_naming(self.backend, &mut conn, page.to_vec()).await?;
        drop(conn);

        let in_page: HashSet<&str> = page.iter().map(|s| s.key.as_str()).collect();
        let mut resolved: HashMap<String, Vec<(LinkRequest, LinkState)>> = HashMap::new();
        for batch in candidates.chunks(RESOLVE_BATCH) {
            let relevant = self.link_rows(batch).await?;
            for link in batch {
                let view = relevant.resolve(link);
                if let Some(sub) = view
                    .subscription
                    .filter(|s| in_page.contains(s.key.as_str()))
                {
                    resolved
                        .entry(sub.key.clone())
                        .or_default()
                        .push((link.clone(), view.state));
                }
            }
        }
        Ok(resolved)
    }
}

enum Stage {
    /// One organization: a keyed lookup.
    Org,
    /// Subscriptions in key order, each with the links resolved to it.
    Subscriptions {
        after: Option<String>,
    },
    /// Links in organization order whose subscription is not among the rows printed.
    Unresolved {
        after: Option<String>,
    },
    Done,
}

/// The status view ([`rows::status_rows`]) read in pages of at most a page size of
/// subscriptions or links: memory stays flat however large the ledger, and each page costs a
/// few indexed queries.
pub struct StatusPages<'s> {
    store: &'s Store,
    filter: StatusFilter,
    page_rows: usize,
    stage: Stage,
}

impl StatusPages<'_> {
    /// Reads pages of at most `rows` subscriptions or links (at least one).
    pub fn page_rows(mut self, rows: usize) -> Self {
        self.page_rows = rows.max(1);
        self
    }

    /// The next rows of the view, or None once it is exhausted. A page is never empty.
    pub async fn next_page(&mut self) -> Result<Option<Vec<StatusRow>>, StoreError> {
        loop {
            let rows = match std::mem::replace(&mut self.stage, Stage::Done) {
                Stage::Done => return Ok(None),
                Stage::Org => self.org().await?,
                Stage::Subscriptions { after } => self.subscriptions(after).await?,
                Stage::Unresolved { after } => self.unresolved(after).await?,
            };
            if !rows.is_empty() {
                return Ok(Some(self.with_entitlements(rows).await?));
            }
        }
    }

    /// Adds each row's entitlements: one keyed lookup for the page.
    async fn with_entitlements(
        &self,
        mut rows: Vec<StatusRow>,
    ) -> Result<Vec<StatusRow>, StoreError> {
        let keys: Vec<String> = rows
            .iter()
            .filter_map(|r| r.sub_key.clone())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        if keys.is_empty() {
            return Ok(rows);
        }
        let answered = self.store.answered_entitlements(&keys).await?;
        let now = crate::time::now_ms();
        for row in &mut rows {
            row.entitlements = row
                .sub_key
                .as_ref()
                .and_then(|k| answered.get(k))
                .map(|items| items.iter().map(|e| e.view(now)).collect());
        }
        Ok(rows)
    }

    fn wants_customer(&self, row: &StatusRow) -> bool {
        self.filter
            .customer_identifier
            .as_ref()
            .is_none_or(|c| row.customer_identifier.as_ref() == Some(c))
    }

    async fn org(&mut self) -> Result<Vec<StatusRow>, StoreError> {
        let org_id = self.filter.org_id.as_deref().unwrap_or_default();
        let Some((link, relevant)) = self.store.org_link(org_id).await? else {
            return Ok(Vec::new());
        };
        let view = relevant.resolve(&link);
        let row = row_for(view.subscription, Some((&link, view.state)));
        Ok(Some(row)
            .into_iter()
            .filter(|r| self.wants_customer(r))
            .collect())
    }

    async fn subscriptions(&mut self, after: Option<String>) -> Result<Vec<StatusRow>, StoreError> {
        let customer = self.filter.customer_identifier.as_deref();
        let found = self
            .store
            .page_where(
                SELECT_SUBSCRIPTIONS,
                "sub_key",
                customer.map(|c| ("customer_identifier", c)),
                after.as_deref(),
                self.page_rows,
            )
            .await?;
        let page: Vec<Subscription> = found
            .iter()
            .map(rows::subscription_from_row)
            .collect::<Result<_, _>>()?;
        self.stage = match page.last() {
            Some(last) => Stage::Subscriptions {
                after: Some(last.key.clone()),
            },
            None => Stage::Unresolved { after: None },
        };
        let mut resolved = self.store.links_resolving_to(&page).await?;
        let mut out = Vec::with_capacity(page.len());
        for sub in &page {
            match resolved.remove(&sub.key) {
                None => out.push(row_for(Some(sub), None)),
                Some(links) => out.extend(
                    links
                        .iter()
                        .map(|(link, state)| row_for(Some(sub), Some((link, *state)))),
                ),
            }
        }
        Ok(out)
    }

    async fn unresolved(&mut self, after: Option<String>) -> Result<Vec<StatusRow>, StoreError> {
        let customer = self.filter.customer_identifier.as_deref();
        let found = self
            .store
            .page_where(
                SELECT_LINKS,
                "org_id",
                customer.map(|c| ("customer_identifier", c)),
                after.as_deref(),
                self.page_rows,
            )
            .await?;
        let links: Vec<LinkRequest> = found
            .iter()
            .map(rows::link_from_row)
            .collect::<Result<_, _>>()?;
        self.stage = match links.last() {
            Some(last) => Stage::Unresolved {
                after: Some(last.org_id.clone()),
            },
            None => Stage::Done,
        };
        if customer.is_none() {
            // Every link that names a subscription was printed with the one it resolves to;
            // the rest resolve to none, and need no resolving to be found.
            let mut conn = self
                .store
                .pool
                .acquire()
                .await
                .map_err(q("taking a connection"))?;
            let named =
                reach::orgs_naming_a_subscription(self.store.backend, &mut conn, &links).await?;
            return Ok(links
                .iter()
                .filter(|l| !named.contains(&l.org_id))
                .map(|l| row_for(None, Some((l, resolve_link(l, &[]).state))))
                .collect());
        }
        let mut out = Vec::new();
        for batch in links.chunks(RESOLVE_BATCH) {
            let relevant = self.store.link_rows(batch).await?;
            for link in batch {
                let view = relevant.resolve(link);
                // Printed with its subscription already, unless the customer filter skipped a
                // subscription that has no customer identifier of its own.
                let printed = view
                    .subscription
                    .is_some_and(|s| customer.is_none() || s.customer_identifier.is_some());
                if !printed {
                    let row = row_for(view.subscription, Some((link, view.state)));
                    if self.wants_customer(&row) {
                        out.push(row);
                    }
                }
            }
        }
        Ok(out)
    }
}
