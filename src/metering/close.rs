//! Closing hours: usage becomes meter records, once across replicas (see
//! [`crate::store::Store::close_hour`] for the serialization).

use super::{hour_of, MeterConfig, HOUR_MS};
use crate::ledger::{LinkState, SubState};
use crate::store::{CloseRules, MeterTarget, Store, StoreError};

/// Links resolved per lookup, as the status view does.
const RESOLVE_CHUNK: usize = 100;

/// What one pass of [`close_due`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CloseSummary {
    /// Hours this replica closed.
    pub hours_closed: Vec<i64>,
    /// Subscriptions whose final usage this replica closed.
    pub finals_closed: Vec<String>,
    /// Records written.
    pub records: usize,
}

/// A subscription metered now, and since when (epoch ms of its activation, when known).
#[derive(Debug, Clone)]
pub struct Metered {
    /// Who the records name.
    pub target: MeterTarget,
    /// When it became active: no zero record is written for an hour that ended before, where
    /// AWS would answer `CustomerNotSubscribed` and metering would stop for good.
    pub active_since_ms: Option<i64>,
}

/// The subscriptions metered now: each linked organization's subscription while it is active
/// (linked) or cancelling (unlink pending), with the link's identifiers filling what the
/// subscription has not learned yet.
pub async fn metered_targets(store: &Store) -> Result<Vec<Metered>, StoreError> {
    let links = store.links().await?;
    let mut out = Vec::new();
    for chunk in links.chunks(RESOLVE_CHUNK) {
        let rows = store.link_rows(chunk).await?;
        for link in chunk {
            let view = rows.resolve(link);
            let Some(sub) = view.subscription else {
                continue;
            };
            let metered = matches!(view.state, LinkState::Linked | LinkState::UnlinkPending)
                && matches!(sub.state, SubState::Active | SubState::Cancelling);
            if !metered {
                continue;
            }
            // An active subscription's state stamp is its (latest) activation; a cancelling
            // one's is the cancellation, so its first confirmation stands in.
            let active_since_ms = match sub.state {
                SubState::Active => sub.state_stamp.as_ref().map(|s| s.time_ms),
                _ => sub.first_active.as_ref().map(|s| s.time_ms),
            };
            let target = MeterTarget {
                sub_key: sub.key.clone(),
                product_code: sub.product_code.clone().or(Some(link.product_code.clone())),
                customer_aws_account_id: sub
                    .customer_aws_account_id
                    .clone()
                    .or(link.customer_aws_account_id.clone()),
                license_arn: sub.license_arn.clone().or(link.license_arn.clone()),
                customer_identifier: sub
                    .customer_identifier
                    .clone()
                    .or(link.customer_identifier.clone()),
            };
            out.push(Metered {
                target,
                active_since_ms,
            });
        }
    }
    Ok(out)
}

/// Closes every hour that is due at `now_ms` (ended more than the grace ago) and not closed
/// yet, and the final usage of every cancelled subscription that has usage.
pub async fn close_due(
    store: &Store,
    config: &MeterConfig,
    now_ms: i64,
) -> Result<CloseSummary, StoreError> {
    let rules = CloseRules {
        expired_before_ms: config.expired_before(now_ms),
        now_ms,
    };
    let mut summary = CloseSummary::default();
    // Reports written with SQL count in their hour like any other: decided before closing.
    super::settle_submitted(store, config).await?;
    // The newest hour that ended at least the grace ago, and any older hour holding usage.
    let newest = hour_of(now_ms - config.close_grace.as_millis() as i64) - HOUR_MS;
    let mut hours = store.unclosed_usage_hours(newest).await?;
    if !store.is_hour_closed(newest).await? {
        hours.push(newest);
    }
    if !hours.is_empty() {
        let targets = metered_targets(store).await?;
        for hour in hours {
            // Zero records only where they could still be sent, for subscriptions active then.
            let zero: Vec<MeterTarget> = if hour + HOUR_MS - 1_000 < rules.expired_before_ms {
                Vec::new()
            } else {
                targets
                    .iter()
                    .filter(|m| m.active_since_ms.is_none_or(|t| t < hour + HOUR_MS))
                    .map(|m| m.target.clone())
                    .collect()
            };
            if let Some(n) = store
                .close_hour(hour, &zero, &config.zero_dimensions, &config.owner, rules)
                .await?
            {
                tracing::info!(hour = %super::send::rfc3339(hour), records = n, "closed a metering hour");
                summary.hours_closed.push(hour);
                summary.records += n;
            }
        }
    }
    for (target, state) in store.final_usage_due().await? {
        // A cancelling subscription is still linked: it gets zero records like any hour's.
        let zero: &[String] = if state == SubState::Cancelling.as_str() {
            &config.zero_dimensions
        } else {
            &[]
        };
        if let Some(n) = store.close_final(&target, zero, rules).await? {
            tracing::info!(sub_key = %target.sub_key, records = n, "closed final usage of a cancelled subscription");
            summary.finals_closed.push(target.sub_key.clone());
            summary.records += n;
        }
    }
    Ok(summary)
}
