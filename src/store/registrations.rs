//! Registrations (`mplink_registrations`): what ResolveCustomer returned for a buyer's token,
//! waiting for the host application to link one organization to it. Linking through a
//! registration is [`Store::link`]'s transition, with refusals where `link` would move a link.

use super::{is_conflict, link_key, outbox, q, LinkOutcome, StatusFilter, Store, StoreError};
use super::{MAX_CONFLICT_RETRIES, SELECT_LINK_KEY_HOLDER};
use crate::ledger::{LinkRequest, LinkState};
use sqlx::any::AnyRow;
use sqlx::Row;
use std::collections::BTreeSet;

/// A stored registration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    /// Opaque id (`reg_` + 32 hex digits), carried by the buyer's browser.
    pub id: String,
    /// Marketplace product code.
    pub product_code: String,
    /// The buyer's AWS account id.
    pub customer_aws_account_id: Option<String>,
    /// License ARN (new integrations).
    pub license_arn: Option<String>,
    /// Legacy customer identifier, when AWS still returns one.
    pub customer_identifier: Option<String>,
    /// `x-amzn-marketplace-offer-type` as posted (e.g. `free-trial`), if any.
    pub offer_type: Option<String>,
    /// When it was created, epoch ms.
    pub created_at_ms: i64,
    /// After this (epoch ms) no organization can be linked through it.
    pub expires_at_ms: i64,
    /// The organization linked through it, if any.
    pub linked_org_id: Option<String>,
    /// When that organization was linked, epoch ms.
    pub linked_at_ms: Option<i64>,
    /// The host's user who claimed it (the first to ask about or link through it).
    pub claimed_by: Option<String>,
}

impl Registration {
    /// True once `now_ms` is past the expiry.
    pub fn expired(&self, now_ms: i64) -> bool {
        now_ms >= self.expires_at_ms
    }

    /// The link request that links `org_id` to this registration's subscription.
    pub fn link_request(&self, org_id: &str, requested_at_ms: i64) -> LinkRequest {
        LinkRequest {
            org_id: org_id.to_string(),
            product_code: self.product_code.clone(),
            customer_identifier: self.customer_identifier.clone(),
            customer_aws_account_id: self.customer_aws_account_id.clone(),
            license_arn: self.license_arn.clone(),
            requested_at_ms,
        }
    }

    /// The key naming its subscription in `mplink_org_links` (see [`link_key`]).
    pub fn link_key(&self) -> Option<String> {
        link_key(&self.link_request("", 0))
    }
}

/// What ResolveCustomer returned, to be stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewRegistration {
    /// Fresh opaque id; used only when the token was not registered before.
    pub id: String,
    /// SHA-256 (hex) of the registration token.
    pub token_sha256: String,
    /// Marketplace product code.
    pub product_code: String,
    /// The buyer's AWS account id.
    pub customer_aws_account_id: Option<String>,
    /// License ARN.
    pub license_arn: Option<String>,
    /// Legacy customer identifier.
    pub customer_identifier: Option<String>,
    /// The posted offer type.
    pub offer_type: Option<String>,
    /// Creation time, epoch ms.
    pub created_at_ms: i64,
    /// Expiry, epoch ms.
    pub expires_at_ms: i64,
}

/// Why an organization cannot be linked through a registration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkRefusal {
    /// No registration has this id.
    NotFound,
    /// The registration expired before an organization was linked.
    Expired,
    /// Another organization was linked through this registration.
    RegistrationLinked {
        /// That organization.
        org_id: String,
    },
    /// Another organization already holds this registration's subscription.
    SubscriptionLinked {
        /// That organization.
        org_id: String,
    },
    /// The organization is linked to another AWS Marketplace subscription that still bills it
    /// (or is waiting for AWS's confirmation).
    OrgLinked {
        /// That link's state.
        state: LinkState,
    },
}

/// What [`Store::link_registration`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegistrationLink {
    /// Linked now, or already linked to this organization (idempotent).
    Linked(Box<LinkOutcome>),
    /// Refused; nothing changed.
    Refused(LinkRefusal),
}

const SELECT_REGISTRATION: &str =
    "SELECT id, product_code, customer_aws_account_id, license_arn, customer_identifier, offer_type, \
     created_at, expires_at, linked_org_id, linked_at, claimed_by FROM mplink_registrations ";

fn registration_from_row(row: &AnyRow) -> Result<Registration, StoreError> {
    let get = |source| StoreError::Query {
        op: "decoding a registration",
        source,
    };
    Ok(Registration {
        id: row.try_get("id").map_err(&get)?,
        product_code: row.try_get("product_code").map_err(&get)?,
        customer_aws_account_id: row.try_get("customer_aws_account_id").map_err(&get)?,
        license_arn: row.try_get("license_arn").map_err(&get)?,
        customer_identifier: row.try_get("customer_identifier").map_err(&get)?,
        offer_type: row.try_get("offer_type").map_err(&get)?,
        created_at_ms: row.try_get("created_at").map_err(&get)?,
        expires_at_ms: row.try_get("expires_at").map_err(&get)?,
        linked_org_id: row.try_get("linked_org_id").map_err(&get)?,
        linked_at_ms: row.try_get("linked_at").map_err(&get)?,
        claimed_by: row.try_get("claimed_by").map_err(&get)?,
    })
}

impl Store {
    /// The registration with this id.
    pub async fn registration(&self, id: &str) -> Result<Option<Registration>, StoreError> {
        let row = sqlx::query(&format!("{SELECT_REGISTRATION}WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(q("reading a registration"))?;
        row.as_ref().map(registration_from_row).transpose()
    }

    /// The registration made from the token with this SHA-256, if any.
    pub async fn registration_by_token(
        &self,
        token_sha256: &str,
    ) -> Result<Option<Registration>, StoreError> {
        let row = sqlx::query(&format!("{SELECT_REGISTRATION}WHERE token_sha256 = $1"))
            .bind(token_sha256)
            .fetch_optional(&self.pool)
            .await
            .map_err(q("reading a registration by token"))?;
        row.as_ref().map(registration_from_row).transpose()
    }

    /// Stores `new` unless its token is registered already, and returns the token's
    /// registration: two posts of one token, even concurrent, give one registration.
    pub async fn create_registration(
        &self,
        new: &NewRegistration,
    ) -> Result<Registration, StoreError> {
        sqlx::query(
            "INSERT INTO mplink_registrations (id, token_sha256, product_code, customer_aws_account_id, \
             license_arn, customer_identifier, offer_type, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (token_sha256) DO NOTHING",
        )
        .bind(&new.id)
        .bind(&new.token_sha256)
        .bind(&new.product_code)
        .bind(&new.customer_aws_account_id)
        .bind(&new.license_arn)
        .bind(&new.customer_identifier)
        .bind(&new.offer_type)
        .bind(new.created_at_ms)
        .bind(new.expires_at_ms)
        .execute(&self.pool)
        .await
        .map_err(q("storing a registration"))?;
        self.registration_by_token(&new.token_sha256)
            .await?
            .ok_or(StoreError::Corrupt {
                table: "mplink_registrations",
                column: "token_sha256",
                value: new.token_sha256.clone(),
            })
    }

    /// Claims registration `id` for `user_id` unless another user claimed it first, and returns
    /// it (`None`: no such registration); the caller compares `claimed_by`. One statement, so
    /// two users racing for it cannot both win.
    pub async fn claim_registration(
        &self,
        id: &str,
        user_id: &str,
        now_ms: i64,
    ) -> Result<Option<Registration>, StoreError> {
        sqlx::query(
            "UPDATE mplink_registrations SET claimed_by = $1, claimed_at = $2 \
             WHERE id = $3 AND claimed_by IS NULL",
        )
        .bind(user_id)
        .bind(now_ms)
        .bind(id)
        .execute(&self.pool)
        .await
        .map_err(q("claiming a registration"))?;
        self.registration(id).await
    }

    /// Clears registration `id`'s claim (`mplink registration release`); returns who held it,
    /// or `None` when there is no such registration.
    pub async fn release_registration(
        &self,
        id: &str,
    ) -> Result<Option<Option<String>>, StoreError> {
        let Some(registration) = self.registration(id).await? else {
            return Ok(None);
        };
        sqlx::query(
            "UPDATE mplink_registrations SET claimed_by = NULL, claimed_at = NULL WHERE id = $1",
        )
        .bind(id)
        .execute(&self.pool)
        .await
        .map_err(q("releasing a registration"))?;
        Ok(Some(registration.claimed_by))
    }

    /// The organization whose link names the subscription `link_key` names, if any.
    pub async fn link_key_holder(&self, link_key: &str) -> Result<Option<String>, StoreError> {
        sqlx::query_scalar(SELECT_LINK_KEY_HOLDER)
            .bind(link_key)
            .fetch_optional(&self.pool)
            .await
            .map_err(q("looking up who holds a subscription"))
    }

    /// Links `org_id` to the subscription of registration `id`: the transition of
    /// [`Store::link`] (the same outbox rows), except that where `link` would move a link this
    /// refuses — a second organization for the same registration, a subscription another
    /// organization holds, an organization still billed through another subscription. The same
    /// organization again is answered as linked, changing nothing.
    pub async fn link_registration(
        &self,
        id: &str,
        org_id: &str,
        now_ms: i64,
    ) -> Result<RegistrationLink, StoreError> {
        let mut attempt = 0;
        let refusal = loop {
            match self.try_link_registration(id, org_id, now_ms).await {
                Err(e) if is_conflict(&e) && attempt < MAX_CONFLICT_RETRIES => attempt += 1,
                other => break other?,
            }
        };
        if let Some(refusal) = refusal {
            return Ok(RegistrationLink::Refused(refusal));
        }
        let filter = StatusFilter {
            org_id: Some(org_id.to_string()),
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
                value: org_id.to_string(),
            })?;
        Ok(RegistrationLink::Linked(Box::new(LinkOutcome {
            moved_from: None,
            row,
        })))
    }

    async fn try_link_registration(
        &self,
        id: &str,
        org_id: &str,
        now_ms: i64,
    ) -> Result<Option<LinkRefusal>, StoreError> {
        let mut tx = self.begin().await?;
        // Every link takes this lock first: the checks below and the link see one state.
        outbox::lock(&mut tx).await?;
        let found = sqlx::query(&format!("{SELECT_REGISTRATION}WHERE id = $1"))
            .bind(id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(q("reading a registration"))?;
        let Some(registration) = found.as_ref().map(registration_from_row).transpose()? else {
            return Ok(Some(LinkRefusal::NotFound));
        };
        match registration.linked_org_id.as_deref() {
            Some(linked) if linked == org_id => return Ok(None),
            Some(other) => {
                return Ok(Some(LinkRefusal::RegistrationLinked {
                    org_id: other.to_string(),
                }))
            }
            None => {}
        }
        if registration.expired(now_ms) {
            return Ok(Some(LinkRefusal::Expired));
        }
        let link = registration.link_request(org_id, now_ms);
        let key = link_key(&link).ok_or(StoreError::LinkWithoutKey)?;
        let holder: Option<String> = sqlx::query_scalar(SELECT_LINK_KEY_HOLDER)
            .bind(&key)
            .fetch_optional(&mut *tx)
            .await
            .map_err(q("looking up who holds a subscription"))?;
        match holder {
            Some(holder) if holder != org_id => {
                return Ok(Some(LinkRefusal::SubscriptionLinked { org_id: holder }))
            }
            // Already this organization's subscription (`mplink link`, or another registration
            // of it): nothing to change but the registration.
            Some(_) => {}
            None => {
                let orgs = BTreeSet::from([org_id.to_string()]);
                let current = outbox::org_views(self.backend, &mut tx, &orgs).await?;
                if let Some(view) = current.get(org_id) {
                    if still_billing(view.state) {
                        return Ok(Some(LinkRefusal::OrgLinked { state: view.state }));
                    }
                }
                self.link_in(&mut tx, &link, &key).await?;
            }
        }
        sqlx::query(
            "UPDATE mplink_registrations SET linked_org_id = $1, linked_at = $2 WHERE id = $3",
        )
        .bind(org_id)
        .bind(now_ms)
        .bind(id)
        .execute(&mut *tx)
        .await
        .map_err(q("recording a registration's organization"))?;
        tx.commit()
            .await
            .map_err(q("committing a registration's link"))?;
        Ok(None)
    }
}

/// True for a link state in which the organization pays (or is about to pay) through its
/// subscription: linking it to another one would take that away. Once unlinked or failed, the
/// organization may link a new subscription (a buyer who subscribes again).
pub fn still_billing(state: LinkState) -> bool {
    matches!(
        state,
        LinkState::Syncing | LinkState::Linked | LinkState::UnlinkPending
    )
}
