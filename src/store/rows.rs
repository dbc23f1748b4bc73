//! Mapping between ledger types and database rows, and the `status` view built from them. One
//! job (a row and its type, both directions) and long because the subscription has many columns.

use super::{q, Backend, StoreError};
use crate::event::{
    license_id, BillingAdjustment, BillingAdjustmentStatus, CancellationRequestStatus,
};
use crate::ledger::{
    resolve_link_among, Advisory, Dated, LinkRequest, LinkState, PaymentMethod, Stamp, SubState,
    Subscription, SubscriptionDetails,
};
use serde::Serialize;
use sqlx::any::AnyRow;
use sqlx::{Any, Row, Transaction};

macro_rules! subscription_select {
    ($tail:literal) => {
        concat!(
            "SELECT sub_key, product_code, customer_identifier, customer_aws_account_id, ",
            "agreement_id, license_arn, previous_agreement_id, state, state_time, state_rank, state_fact, ",
            "first_active_time, first_active_rank, first_active_fact, handed_over_time, handed_over_rank, ",
            "handed_over_fact, last_event_time, details FROM mplink_subscriptions ",
            $tail
        )
    };
}

/// Subscriptions; the caller adds the condition.
pub(super) const SELECT_SUBSCRIPTIONS: &str = subscription_select!("");
/// Every subscription.
pub(super) const SELECT_ALL_SUBSCRIPTIONS: &str = subscription_select!("ORDER BY sub_key");

/// Link requests; the caller adds the condition. Read by [`link_from_row`].
pub(super) const SELECT_LINKS: &str =
    "SELECT org_id, product_code, customer_identifier, customer_aws_account_id, license_arn, requested_at \
     FROM mplink_org_links ";

fn get<'r, T>(row: &'r AnyRow, column: &'static str) -> Result<T, StoreError>
where
    T: sqlx::Decode<'r, Any> + sqlx::Type<Any>,
{
    row.try_get(column).map_err(q("decoding a row"))
}

fn stamp(
    row: &AnyRow,
    time: &'static str,
    rank: &'static str,
    fact: &'static str,
) -> Result<Option<Stamp>, StoreError> {
    let time: Option<i64> = get(row, time)?;
    let rank: Option<i64> = get(row, rank)?;
    let fact: Option<String> = get(row, fact)?;
    Ok(match (time, rank, fact) {
        (Some(time_ms), Some(rank), Some(fact_key)) => Some(Stamp {
            time_ms,
            rank,
            fact_key,
        }),
        _ => None,
    })
}

/// A subscription from its row.
pub(super) fn subscription_from_row(row: &AnyRow) -> Result<Subscription, StoreError> {
    let state_text: String = get(row, "state")?;
    let state = SubState::parse(&state_text).ok_or(StoreError::Corrupt {
        table: "mplink_subscriptions",
        column: "state",
        value: state_text,
    })?;
    Ok(Subscription {
        key: get(row, "sub_key")?,
        product_code: get(row, "product_code")?,
        customer_identifier: get(row, "customer_identifier")?,
        customer_aws_account_id: get(row, "customer_aws_account_id")?,
        agreement_id: get(row, "agreement_id")?,
        license_arn: get(row, "license_arn")?,
        previous_agreement_id: get(row, "previous_agreement_id")?,
        state,
        state_stamp: stamp(row, "state_time", "state_rank", "state_fact")?,
        first_active: stamp(
            row,
            "first_active_time",
            "first_active_rank",
            "first_active_fact",
        )?,
        handed_over: stamp(
            row,
            "handed_over_time",
            "handed_over_rank",
            "handed_over_fact",
        )?,
        last_event_time_ms: get(row, "last_event_time")?,
        details: details_from_column(get(row, "details")?)?,
    })
}

/// The `details` column: the ledger's [`SubscriptionDetails`] as JSON, NULL when empty.
fn details_from_column(text: Option<String>) -> Result<SubscriptionDetails, StoreError> {
    match text {
        None => Ok(SubscriptionDetails::default()),
        Some(text) => serde_json::from_str(&text).map_err(|_| StoreError::Corrupt {
            table: "mplink_subscriptions",
            column: "details",
            value: text.chars().take(100).collect(),
        }),
    }
}

fn details_to_column(details: &SubscriptionDetails) -> Result<Option<String>, StoreError> {
    if *details == SubscriptionDetails::default() {
        return Ok(None);
    }
    serde_json::to_string(details)
        .map(Some)
        .map_err(|e| StoreError::Corrupt {
            table: "mplink_subscriptions",
            column: "details",
            value: e.to_string(),
        })
}

/// `rows` parenthesised groups of `width` placeholders, numbered from `$start` for PostgreSQL
/// (`tuples(Postgres, 2, 2, 1)` is `($1, $2), ($3, $4)`) and anonymous `?` for SQLite, whose
/// lookup of numbered parameters by name is linear per parameter and so quadratic per bulk
/// statement. Only placeholders are generated; values are always bound.
pub(super) fn tuples(backend: Backend, rows: usize, width: usize, start: usize) -> String {
    let mut out = String::with_capacity(rows * width * 5);
    for r in 0..rows {
        if r > 0 {
            out.push_str(", ");
        }
        out.push('(');
        for c in 0..width {
            if c > 0 {
                out.push_str(", ");
            }
            match backend {
                Backend::Postgres => {
                    out.push('$');
                    out.push_str(&(start + r * width + c).to_string());
                }
                Backend::Sqlite => out.push('?'),
            }
        }
        out.push(')');
    }
    out
}

/// The `n`th bind placeholder (from 1) in `backend`'s dialect; see [`tuples`].
pub(super) fn placeholder(backend: Backend, n: usize) -> String {
    match backend {
        Backend::Postgres => format!("${n}"),
        Backend::Sqlite => "?".to_string(),
    }
}

/// `(a = $s AND b = $s+1) OR …` for `pairs` pairs of values bound in that order: both backends
/// answer each term from an index on (a, b), where a row-value `IN` list is not always planned so.
pub(super) fn pairs_any(backend: Backend, a: &str, b: &str, pairs: usize, start: usize) -> String {
    (0..pairs)
        .map(|i| {
            format!(
                "({a} = {} AND {b} = {})",
                placeholder(backend, start + 2 * i),
                placeholder(backend, start + 2 * i + 1)
            )
        })
        .collect::<Vec<_>>()
        .join(" OR ")
}

/// Columns written by [`write_subscriptions`], in bind order.
const WRITE_COLUMNS: [&str; 22] = [
    "sub_key",
    "product_code",
    "customer_identifier",
    "customer_aws_account_id",
    "agreement_id",
    "license_arn",
    "license_id",
    "previous_agreement_id",
    "state",
    "state_time",
    "state_rank",
    "state_fact",
    "first_active_time",
    "first_active_rank",
    "first_active_fact",
    "handed_over_time",
    "handed_over_rank",
    "handed_over_fact",
    "last_event_time",
    "details",
    "version",
    "updated_at",
];

/// Writes every ledger field of `subs` back to their (locked) rows in one statement.
pub(super) async fn write_subscriptions(
    backend: Backend,
    tx: &mut Transaction<'static, Any>,
    subs: &[&Subscription],
    now: i64,
) -> Result<(), StoreError> {
    let updates: Vec<String> = WRITE_COLUMNS[1..]
        .iter()
        .map(|c| match *c {
            "version" => "version = mplink_subscriptions.version + 1".to_string(),
            c => format!("{c} = excluded.{c}"),
        })
        .collect();
    let sql = format!(
        "INSERT INTO mplink_subscriptions ({}) VALUES {} ON CONFLICT (sub_key) DO UPDATE SET {}",
        WRITE_COLUMNS.join(", "),
        tuples(backend, subs.len(), WRITE_COLUMNS.len(), 1),
        updates.join(", ")
    );
    let parts = |s: &Option<Stamp>| match s {
        Some(s) => (Some(s.time_ms), Some(s.rank), Some(s.fact_key.clone())),
        None => (None, None, None),
    };
    let mut query = sqlx::query(&sql);
    for sub in subs {
        let (st, sr, sf) = parts(&sub.state_stamp);
        let (ft, fr, ff) = parts(&sub.first_active);
        let (ht, hr, hf) = parts(&sub.handed_over);
        query = query
            .bind(&sub.key)
            .bind(&sub.product_code)
            .bind(&sub.customer_identifier)
            .bind(&sub.customer_aws_account_id)
            .bind(&sub.agreement_id)
            .bind(&sub.license_arn)
            .bind(
                sub.license_arn
                    .as_deref()
                    .map(|l| license_id(l).to_string()),
            )
            .bind(&sub.previous_agreement_id)
            .bind(sub.state.as_str())
            .bind(st)
            .bind(sr)
            .bind(sf)
            .bind(ft)
            .bind(fr)
            .bind(ff)
            .bind(ht)
            .bind(hr)
            .bind(hf)
            .bind(sub.last_event_time_ms)
            .bind(details_to_column(&sub.details)?)
            .bind(1i64)
            .bind(now);
    }
    query
        .execute(&mut **tx)
        .await
        .map_err(q("updating subscriptions"))?;
    Ok(())
}

/// A link request from its row.
pub(super) fn link_from_row(row: &AnyRow) -> Result<LinkRequest, StoreError> {
    Ok(LinkRequest {
        org_id: get(row, "org_id")?,
        product_code: get(row, "product_code")?,
        customer_identifier: get(row, "customer_identifier")?,
        customer_aws_account_id: get(row, "customer_aws_account_id")?,
        license_arn: get(row, "license_arn")?,
        requested_at_ms: get(row, "requested_at")?,
    })
}

/// Which rows `status` prints.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatusFilter {
    /// Only this organization's link.
    pub org_id: Option<String>,
    /// Only subscriptions of this legacy customer.
    pub customer_identifier: Option<String>,
}

/// One line of `mplink status --json`: a subscription with its link. A stable contract for
/// operators' scripts: keys are never renamed or removed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StatusRow {
    /// The linked organization, or null when no organization is linked.
    pub org_id: Option<String>,
    /// Marketplace product code.
    pub product_code: Option<String>,
    /// Legacy customer identifier.
    pub customer_identifier: Option<String>,
    /// Buyer's AWS account id.
    pub customer_aws_account_id: Option<String>,
    /// Agreement id (EventBridge).
    pub agreement_id: Option<String>,
    /// License ARN.
    pub license_arn: Option<String>,
    /// pending, active, failed, cancelling, cancelled.
    pub subscription_state: SubState,
    /// syncing, linked, failed, unlink_pending, unlinked; null without an organization.
    pub link_state: Option<LinkState>,
    /// aws_marketplace or null.
    pub payment_method: Option<PaymentMethod>,
    /// Time of the newest event applied to the subscription (RFC 3339, UTC), or null.
    pub last_event_time: Option<String>,
    /// The subscription's details: keys appended after `last_event_time`, null when unknown.
    #[serde(flatten)]
    pub details: StatusDetails,
    /// A contract's entitlements as AWS last answered GetEntitlements (appended after the
    /// details; an empty list when AWS said none); null until AWS answered.
    pub entitlements: Option<Vec<crate::entitlement::EntitlementView>>,
    /// The subscription's ledger key, by which the store adds the entitlements.
    #[serde(skip)]
    pub sub_key: Option<String>,
}

/// The keys `status --json` gained with the subscription's details (appended after the
/// original ones, which never change).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct StatusDetails {
    /// Offer id, the newest by event time.
    pub offer_id: Option<String>,
    /// Free trial (SNS `isFreeTrialTermPresent`).
    pub free_trial: Option<bool>,
    /// Product id (`prod-…`, not the product code).
    pub product_id: Option<String>,
    /// Agreement start (RFC 3339).
    pub agreement_start_time: Option<String>,
    /// Agreement end (RFC 3339).
    pub agreement_end_time: Option<String>,
    /// When the buyer accepted the agreement (RFC 3339).
    pub agreement_acceptance_time: Option<String>,
    /// Auto-renewal on or off.
    pub auto_renewal: Option<bool>,
    /// The proposer's AWS account id.
    pub proposer_account_id: Option<String>,
    /// Resale authorization id (channel-partner sales).
    pub resale_authorization_id: Option<String>,
    /// Time of the newest Purchase Agreement Ending event (RFC 3339).
    pub ending_notice_time: Option<String>,
    /// Time of the newest Renewal Upcoming event (RFC 3339).
    pub renewal_upcoming_time: Option<String>,
    /// Time of the newest Renewal Terms Finalized event (RFC 3339).
    pub renewal_terms_finalized_time: Option<String>,
    /// `issued` or `resolved`: the newest advisory event.
    pub advisory: Option<Advisory>,
    /// The newest cancellation-request status: `pending_approval`, `approved`, `rejected`,
    /// `cancelled`, `validation_failed`.
    pub cancellation_request: Option<CancellationRequestStatus>,
    /// Time of that cancellation-request event (RFC 3339).
    pub cancellation_request_time: Option<String>,
    /// The newest billing-adjustment status: `completed`, `failed`.
    pub billing_adjustment: Option<BillingAdjustmentStatus>,
    /// Days before the agreement's end the newest Ending notice was sent for (180, 120, 90,
    /// 60, 30), null when it did not say.
    pub ending_notice_days_before_end: Option<u32>,
    /// The newest billing adjustment's `id`, `amount` (decimal text, e.g. `"-100.00"`),
    /// `currency_code`, `reason_code` and `original_invoice_id`; null when unknown.
    pub billing_adjustment_request: Option<BillingAdjustment>,
}

impl StatusRow {
    /// What an operator should notice about the subscription besides its state, in words
    /// (the `NOTES` column of `status`).
    pub fn notes(&self) -> Vec<String> {
        let mut notes = Vec::new();
        if self.details.free_trial == Some(true) {
            notes.push("free trial".to_string());
        }
        if let Some(status) = self.details.cancellation_request {
            notes.push(
                match status {
                    CancellationRequestStatus::PendingApproval => "cancellation requested",
                    CancellationRequestStatus::Approved => "cancellation approved",
                    CancellationRequestStatus::Rejected => "cancellation rejected",
                    CancellationRequestStatus::Cancelled => "cancellation withdrawn",
                    CancellationRequestStatus::ValidationFailed => "cancellation request failed",
                }
                .to_string(),
            );
        }
        let notice = self
            .details
            .ending_notice_days_before_end
            .map(|days| format!(" ({days}-day notice)"))
            .unwrap_or_default();
        // AWS writes a far-future end (9999-…) for agreements without one.
        match self.details.agreement_end_time.as_deref() {
            Some(end) if !end.starts_with("9999") => {
                notes.push(format!("ends on {}{notice}", end.get(..10).unwrap_or(end)));
            }
            _ if self.details.ending_notice_time.is_some() => notes.push(format!("ending{notice}")),
            _ => {}
        }
        if self.details.auto_renewal == Some(false) {
            notes.push("auto-renewal off".to_string());
        }
        if self.details.renewal_upcoming_time.is_some() {
            notes.push("renewal upcoming".to_string());
        }
        if self.details.advisory == Some(Advisory::Issued) {
            notes.push("advisory issued".to_string());
        }
        let amount = match &self.details.billing_adjustment_request {
            Some(BillingAdjustment {
                amount: Some(amount),
                currency_code,
                ..
            }) => match currency_code {
                Some(currency) => format!(" ({amount} {currency})"),
                None => format!(" ({amount})"),
            },
            _ => String::new(),
        };
        match self.details.billing_adjustment {
            Some(BillingAdjustmentStatus::Completed) => {
                notes.push(format!("refund completed{amount}"))
            }
            Some(BillingAdjustmentStatus::Failed) => notes.push(format!("refund failed{amount}")),
            None => {}
        }
        notes
    }
}

/// The status line of a subscription and the link resolved to it; either may be missing.
pub(super) fn row_for(
    sub: Option<&Subscription>,
    link: Option<(&LinkRequest, LinkState)>,
) -> StatusRow {
    let from_link = |f: fn(&LinkRequest) -> Option<String>| link.and_then(|(l, _)| f(l));
    StatusRow {
        org_id: link.map(|(l, _)| l.org_id.clone()),
        product_code: sub
            .and_then(|s| s.product_code.clone())
            .or_else(|| from_link(|l| Some(l.product_code.clone()))),
        customer_identifier: sub
            .and_then(|s| s.customer_identifier.clone())
            .or_else(|| from_link(|l| l.customer_identifier.clone())),
        customer_aws_account_id: sub
            .and_then(|s| s.customer_aws_account_id.clone())
            .or_else(|| from_link(|l| l.customer_aws_account_id.clone())),
        agreement_id: sub.and_then(|s| s.agreement_id.clone()),
        license_arn: sub
            .and_then(|s| s.license_arn.clone())
            .or_else(|| from_link(|l| l.license_arn.clone())),
        subscription_state: sub.map_or(SubState::Pending, |s| s.state),
        link_state: link.map(|(_, state)| state),
        payment_method: link.and_then(|(_, state)| state.payment_method()),
        last_event_time: sub.and_then(|s| s.last_event_time_ms).and_then(time_text),
        details: sub.map_or_else(StatusDetails::default, |s| details_columns(&s.details)),
        entitlements: None,
        sub_key: sub.map(|s| s.key.clone()),
    }
}

/// The appended detail keys of a subscription's status row.
fn details_columns(details: &SubscriptionDetails) -> StatusDetails {
    let d = details.clone();
    let time = |v: Option<Dated<i64>>| v.and_then(|d| time_text(d.value));
    let stamp_time = |s: Option<Stamp>| s.and_then(|s| time_text(s.time_ms));
    StatusDetails {
        offer_id: d.offer_id.map(|v| v.value),
        free_trial: d.free_trial.map(|v| v.value),
        product_id: d.product_id.map(|v| v.value),
        agreement_start_time: time(d.agreement_start_ms),
        agreement_end_time: time(d.agreement_end_ms),
        agreement_acceptance_time: time(d.acceptance_ms),
        auto_renewal: d.auto_renewal.map(|v| v.value),
        proposer_account_id: d.proposer_account_id.map(|v| v.value),
        resale_authorization_id: d.resale_authorization_id.map(|v| v.value),
        ending_notice_time: stamp_time(d.ending_notice),
        renewal_upcoming_time: stamp_time(d.renewal_upcoming),
        renewal_terms_finalized_time: stamp_time(d.renewal_terms_finalized),
        advisory: d.advisory.map(|v| v.value),
        cancellation_request_time: d
            .cancellation_request
            .as_ref()
            .and_then(|v| time_text(v.stamp.time_ms)),
        cancellation_request: d.cancellation_request.map(|v| v.value),
        billing_adjustment: d.billing_adjustment.map(|v| v.value),
        ending_notice_days_before_end: d.ending_notice_days,
        billing_adjustment_request: d.billing_adjustment_request,
    }
}

/// The status view of a whole ledger held in memory: each subscription (in key order) with the
/// links that resolve to it (in organization order), then the links whose subscription no event
/// has named yet. The store builds the same view page by page from keyed lookups
/// ([`super::StatusPages`]); this is the definition it is checked against.
pub fn status_rows(
    subs: &[Subscription],
    links: &[LinkRequest],
    filter: &StatusFilter,
) -> Vec<StatusRow> {
    // Agreements that a registration names by license are not for an account-keyed link.
    let claimed: std::collections::HashSet<&str> = links
        .iter()
        .filter_map(|l| l.license_arn.as_deref().map(crate::event::license_id))
        .collect();
    let resolved: Vec<(&LinkRequest, Option<&Subscription>, LinkState)> = links
        .iter()
        .map(|l| {
            let view = resolve_link_among(l, subs, &claimed);
            (l, view.subscription, view.state)
        })
        .collect();
    let mut out = Vec::new();
    for sub in subs {
        let mine: Vec<_> = resolved
            .iter()
            .filter(|(_, s, _)| s.is_some_and(|s| s.key == sub.key))
            .collect();
        if mine.is_empty() {
            out.push(row_for(Some(sub), None));
        }
        for (l, _, state) in mine {
            out.push(row_for(Some(sub), Some((l, *state))));
        }
    }
    for (l, s, state) in &resolved {
        if s.is_none() {
            out.push(row_for(None, Some((l, *state))));
        }
    }
    out.retain(|r| {
        filter
            .org_id
            .as_ref()
            .is_none_or(|o| r.org_id.as_ref() == Some(o))
            && filter
                .customer_identifier
                .as_ref()
                .is_none_or(|c| r.customer_identifier.as_ref() == Some(c))
    });
    out
}

fn time_text(ms: i64) -> Option<String> {
    crate::time::rfc3339(ms, crate::time::Precision::Millis)
}
