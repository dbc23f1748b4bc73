//! Registrations as links: which organization a subscription bills, and the key a
//! registration names it by.

use super::*;

/// What `link` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkOutcome {
    /// The organization that held this subscription's link before and lost it, if any.
    pub moved_from: Option<String>,
    /// The link as it now stands.
    pub row: StatusRow,
}

impl Store {
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

    pub(super) async fn try_link(
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
    pub(super) async fn link_in(
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
        // A contract's entitlements are asked for as soon as the link rests on a subscription
        // (a link made before AWS confirms asks with the confirmation instead).
        if let Some(key) = views_after
            .get(&link.org_id)
            .and_then(|v| v.subscription.sub_key.clone())
        {
            entitlements::ask(self.backend, tx, &[(key, link.requested_at_ms)], now_ms()).await?;
        }
        Ok(previous)
    }
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

/// The keys under which a registration could name `sub` (see [`link_key`]): a link matches
/// the subscription exactly when its key is one of these.
pub(super) fn link_keys_naming(sub: &Subscription) -> Vec<String> {
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
pub(super) const SELECT_LINK_KEY_HOLDER: &str =
    "SELECT org_id FROM mplink_org_links WHERE link_key = $1";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::SubjectKey;

    fn agreement() -> Subscription {
        let mut sub = Subscription::new(&SubjectKey::Agreement {
            agreement_id: "agmt-1".into(),
        });
        sub.product_code = Some("prod".into());
        sub.customer_aws_account_id = Some("111122223333".into());
        sub.license_arn = Some("arn:aws:license-manager::111122223333:license:l-abc".into());
        sub
    }

    fn link(license: bool, customer: bool, account: bool) -> LinkRequest {
        LinkRequest {
            org_id: "org".into(),
            product_code: "prod".into(),
            customer_identifier: customer.then(|| "cust".into()),
            customer_aws_account_id: account.then(|| "111122223333".into()),
            license_arn: license
                .then(|| "arn:aws:license-manager::111122223333:license:l-abc".into()),
            requested_at_ms: 0,
        }
    }

    #[test]
    fn the_most_specific_identifier_is_the_key() {
        assert_eq!(
            link_key(&link(true, true, true)).as_deref(),
            Some("lic:l-abc")
        );
        assert_eq!(
            link_key(&link(false, true, true)).as_deref(),
            Some("cust:prod:cust")
        );
        assert_eq!(
            link_key(&link(false, false, true)).as_deref(),
            Some("acct:prod:111122223333")
        );
        assert_eq!(link_key(&link(false, false, false)), None);
    }

    /// The key lookup finds a registration exactly when the ledger's own rule says it names
    /// the subscription: the index and `LinkRequest::matches` never disagree.
    #[test]
    fn a_subscription_is_found_under_a_key_exactly_when_the_link_matches_it() {
        let sub = agreement();
        let keys = link_keys_naming(&sub);
        for (license, customer, account) in [
            (true, false, false),
            (false, false, true),
            (false, true, false),
            (true, true, true),
        ] {
            let l = link(license, customer, account);
            let key = link_key(&l).expect("a key");
            assert_eq!(
                keys.contains(&key),
                l.matches(&sub),
                "{key} against {keys:?}"
            );
        }
    }
}
