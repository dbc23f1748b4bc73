//! Usage metering: the SaaS gets paid for what its linked organizations use.
//!
//! The host reports usage ([`record_usage`]: per organization, dimension and time, with an
//! idempotency key). [`close`] turns each ended hour into one record per (subscription,
//! dimension, hour) — plus zero records for linked subscriptions without usage — once across
//! replicas, and a cancelled subscription's usage (the current partial hour included) at once.
//! [`send`] sends the records with `BatchMeterUsage`, 25 per call and product, and stores each
//! record's fate. [`runner`] is the loop the worker runs.
//!
//! Every record's quantity and timestamp are fixed when it is written, so any resend (after
//! throttling, `UnprocessedRecords`, a crash between AWS's answer and the commit) is identical
//! and AWS recognises it instead of answering `DuplicateRecord`.

pub mod close;
pub mod runner;
pub mod send;

use crate::ledger::{LinkState, SubState};
use crate::store::{Store, StoreError, UsageRow, USAGE_ACCEPTED, USAGE_REFUSED};
use chrono::{DateTime, Utc};
use std::time::Duration;
use thiserror::Error;

/// Milliseconds in an hour.
pub const HOUR_MS: i64 = 3_600_000;
/// Most records one `BatchMeterUsage` call takes.
pub const BATCH_RECORDS: usize = 25;
/// AWS refuses records this old (the documented hard limit).
pub const AWS_WINDOW: Duration = Duration::from_secs(6 * 3600);
/// Longest idempotency key or dimension accepted, in characters (AWS's limit for a dimension
/// name); organization ids have their own, shorter limit ([`crate::org::MAX_CHARS`]).
pub const MAX_ID_CHARS: usize = 255;

/// The start of the hour holding `ms`.
pub fn hour_of(ms: i64) -> i64 {
    ms - ms.rem_euclid(HOUR_MS)
}

/// How the metering loop behaves; [`MeterConfig::default`] holds every default.
#[derive(Debug, Clone)]
pub struct MeterConfig {
    /// This replica's name in leases and closed hours.
    pub owner: String,
    /// Dimensions that get a zero record each hour a linked subscription had no usage in them.
    pub zero_dimensions: Vec<String>,
    /// How long after an hour ends it is closed (late reports within it still count).
    pub close_grace: Duration,
    /// Records whose timestamp is older than AWS's window minus this are never sent.
    pub send_margin: Duration,
    /// How long a sender holds leased records.
    pub lease: Duration,
    /// Delays between attempts of a record that failed.
    pub backoff_base: Duration,
    /// Longest delay between attempts.
    pub backoff_cap: Duration,
    /// Attempts before a record is parked (`failed`) until `mplink meter retry`.
    pub max_attempts: i64,
    /// How often the loop looks for work.
    pub tick: Duration,
    /// How far in the future a usage time may be (clock skew of the host).
    pub future_skew: Duration,
    /// Contract products (by code): their usage must be in a dimension the buyer's contract
    /// entitles, else it is refused `not_entitled` (see docs/entitlements.md).
    pub contract_products: Vec<String>,
}

/// Metering defaults, read by the flags (`cli/metering.rs`) and by [`MeterConfig::default`].
pub mod defaults {
    /// Seconds after an hour ends before it is closed (late reports within it still count).
    pub const CLOSE_GRACE_S: u64 = 5 * 60;
    /// Seconds a sender holds the records it is sending.
    pub const LEASE_S: u64 = 60;
}

impl Default for MeterConfig {
    fn default() -> Self {
        MeterConfig {
            owner: format!("{}-meter", crate::store::lease_owner()),
            zero_dimensions: Vec::new(),
            close_grace: Duration::from_secs(defaults::CLOSE_GRACE_S),
            send_margin: Duration::from_secs(10 * 60),
            lease: Duration::from_secs(defaults::LEASE_S),
            backoff_base: Duration::from_secs(1),
            backoff_cap: Duration::from_secs(300),
            max_attempts: 20,
            tick: Duration::from_secs(30),
            future_skew: Duration::from_secs(5 * 60),
            contract_products: Vec::new(),
        }
    }
}

impl MeterConfig {
    /// Records with a timestamp before this (epoch ms) are past the window: never sent.
    pub fn expired_before(&self, now_ms: i64) -> i64 {
        now_ms - (AWS_WINDOW.saturating_sub(self.send_margin)).as_millis() as i64
    }
}

/// What became of an hour's record, as the billing page and `mplink usage show` name it:
/// `open` (the hour has not closed), `pending` (waiting to be sent or resent), `sent` (AWS
/// accepted it), `duplicate` (AWS had another quantity for the hour), `not_subscribed` (AWS said
/// the customer is not subscribed), `expired` (past AWS's window, never sent), `stopped`
/// (metering of the customer stopped, never sent), `failed` (parked after the attempt limit).
pub fn record_fate(status: Option<&str>) -> &'static str {
    use crate::store::{
        METER_DUPLICATE, METER_EXPIRED, METER_FAILED, METER_NOT_SUBSCRIBED, METER_STOPPED,
        METER_SUCCESS, METER_UNSENT,
    };
    match status {
        None => "open",
        Some(METER_UNSENT) => "pending",
        Some(METER_SUCCESS) => "sent",
        Some(METER_DUPLICATE) => "duplicate",
        Some(METER_NOT_SUBSCRIBED) => "not_subscribed",
        Some(METER_EXPIRED) => "expired",
        Some(METER_STOPPED) => "stopped",
        Some(METER_FAILED) => "failed",
        Some(_) => "unknown",
    }
}

/// A usage report from the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageReport {
    /// Same key, same report: counted once.
    pub idempotency_key: String,
    /// The organization that used the product.
    pub org_id: String,
    /// The pricing dimension, as listed on AWS Marketplace.
    pub dimension: String,
    /// How much (0 to 2,147,483,647, AWS's limit per record).
    pub quantity: i64,
    /// When it was used.
    pub time: DateTime<Utc>,
    /// Allocation tags (at most five; AWS's rules, see [`crate::tags`]).
    pub tags: crate::tags::Tags,
}

/// Why a report is not metered. Stable codes, stored with the report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The organization is not linked to a subscription paying through AWS Marketplace.
    NotLinked,
    /// The subscription is cancelled and its final usage was sent.
    SubscriptionCancelled,
    /// AWS answered `CustomerNotSubscribed`: metering for it stopped.
    CustomerNotSubscribed,
    /// Its hour was already closed and sent.
    HourClosed,
    /// Older than AWS accepts.
    TooOld,
    /// Before the subscription became active (AWS would answer `CustomerNotSubscribed`).
    BeforeSubscription,
    /// Later than now plus the allowed clock skew: an hour that has not happened cannot be
    /// metered. A refusal rather than an invalid field, as `too_old` is: whether a time is in
    /// the future depends on when it arrives, which no schema can say.
    InTheFuture,
    /// A contract product's usage in a dimension the buyer's contract does not entitle (or no
    /// longer: its expiration passed), as AWS last answered GetEntitlements.
    NotEntitled,
}

impl Refusal {
    /// Every reason, for parsing and for metrics that list each one.
    pub const ALL: [Refusal; 8] = [
        Refusal::NotLinked,
        Refusal::SubscriptionCancelled,
        Refusal::CustomerNotSubscribed,
        Refusal::HourClosed,
        Refusal::TooOld,
        Refusal::BeforeSubscription,
        Refusal::InTheFuture,
        Refusal::NotEntitled,
    ];

    /// The stable code.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::NotLinked => "not_linked",
            Refusal::SubscriptionCancelled => "subscription_cancelled",
            Refusal::CustomerNotSubscribed => "customer_not_subscribed",
            Refusal::HourClosed => "hour_closed",
            Refusal::TooOld => "too_old",
            Refusal::BeforeSubscription => "before_subscription",
            Refusal::InTheFuture => "in_the_future",
            Refusal::NotEntitled => "not_entitled",
        }
    }

    /// Parses [`Refusal::as_str`]'s output.
    pub fn parse(s: &str) -> Option<Refusal> {
        Refusal::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

/// What became of a report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageReceipt {
    /// The report's key.
    pub idempotency_key: String,
    /// Counted into its hour's record (else see `refusal`).
    pub accepted: bool,
    /// Why not.
    pub refusal: Option<Refusal>,
    /// The subscription it is metered under.
    pub sub_key: Option<String>,
    /// Its hour (epoch ms).
    pub usage_hour: i64,
    /// The key was seen before: this is the stored answer, nothing new was counted.
    pub replayed: bool,
}

/// Why a report could not be taken at all.
#[derive(Debug, Error)]
pub enum MeteringError {
    /// A field is invalid.
    #[error("usage report {key:?}: {field} {problem}")]
    Invalid {
        /// The report's idempotency key (may itself be the problem).
        key: String,
        /// The field.
        field: &'static str,
        /// What is wrong.
        problem: String,
    },
    /// The key was used for a different report.
    #[error("idempotency key {key:?} was already used for a different usage report")]
    KeyReused {
        /// The key.
        key: String,
    },
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl MeteringError {
    /// A stable reason code.
    pub fn reason(&self) -> &'static str {
        match self {
            MeteringError::Invalid { .. } => "invalid",
            MeteringError::KeyReused { .. } => "key_reused",
            MeteringError::Store(_) => "database",
        }
    }
}

fn check_id(key: &str, field: &'static str, value: &str) -> Result<(), MeteringError> {
    crate::org::check_id(value, MAX_ID_CHARS).map_err(|e| MeteringError::Invalid {
        // A bad key is not repeated in its own error.
        key: if field == "idempotency_key" {
            String::new()
        } else {
            key.to_string()
        },
        field,
        problem: e.to_string(),
    })
}

/// Checks a report's fields (everything a sender chooses).
pub fn validate(report: &UsageReport) -> Result<(), MeteringError> {
    let key = &report.idempotency_key;
    check_id(key, "idempotency_key", key)?;
    crate::org::check(&report.org_id).map_err(|e| MeteringError::Invalid {
        key: key.clone(),
        field: "org_id",
        problem: e.to_string(),
    })?;
    check_id(key, "dimension", &report.dimension)?;
    crate::tags::check(&report.tags).map_err(|e| MeteringError::Invalid {
        key: key.clone(),
        field: "tags",
        problem: e.to_string(),
    })?;
    if !(0..=i64::from(i32::MAX)).contains(&report.quantity) {
        return Err(MeteringError::Invalid {
            key: key.clone(),
            field: "quantity",
            problem: format!("{} is outside 0..={}", report.quantity, i32::MAX),
        });
    }
    Ok(())
}

/// False when `sub` is of a contract product and AWS's last answer entitles no `dimension` in
/// force at `now`. Usage is not refused while AWS has not answered yet: a lagging entitlement
/// loop must not turn the host's usage away.
async fn entitled(
    store: &Store,
    config: &MeterConfig,
    sub: &crate::ledger::Subscription,
    dimension: &str,
    now: DateTime<Utc>,
) -> Result<bool, StoreError> {
    let contract = sub
        .product_code
        .as_ref()
        .is_some_and(|p| config.contract_products.contains(p));
    if !contract {
        return Ok(true);
    }
    Ok(match store.entitlements(&sub.key).await? {
        Some(set) if set.as_of_ms.is_some() => set
            .items
            .iter()
            .any(|e| e.dimension == dimension && !e.expired_at(now.timestamp_millis())),
        _ => true,
    })
}

/// Takes a usage report: refused with a reason (stored and counted) when the organization is
/// not linked to a subscription that is metered, accepted otherwise. The same idempotency key
/// again returns the stored answer. This is what `POST /v1/usage` and `mplink usage record` call.
pub async fn record_usage(
    store: &Store,
    report: &UsageReport,
    config: &MeterConfig,
) -> Result<UsageReceipt, MeteringError> {
    let now = Utc::now();
    validate(report)?;
    let usage_time = report.time.timestamp_millis();
    let usage_hour = hour_of(usage_time);
    let mut reopen = false;
    let skew = chrono::Duration::from_std(config.future_skew).unwrap_or_default();
    let refusal_for_link = if report.time > now + skew {
        Err(Refusal::InTheFuture)
    } else if usage_time < config.expired_before(now.timestamp_millis()) {
        Err(Refusal::TooOld)
    } else {
        match store.org_link(&report.org_id).await? {
            None => Err(Refusal::NotLinked),
            Some((link, rows)) => {
                let view = rows.resolve(&link);
                match (view.state, view.subscription) {
                    (LinkState::Linked | LinkState::UnlinkPending, Some(sub))
                        if sub.state == SubState::Active
                            && sub
                                .state_stamp
                                .as_ref()
                                .is_some_and(|s| s.time_ms > usage_time) =>
                    {
                        Err(Refusal::BeforeSubscription)
                    }
                    (LinkState::Linked | LinkState::UnlinkPending, Some(sub))
                        if !entitled(store, config, sub, &report.dimension, now).await? =>
                    {
                        Err(Refusal::NotEntitled)
                    }
                    (LinkState::Linked | LinkState::UnlinkPending, Some(sub)) => {
                        reopen = sub.state == SubState::Active;
                        Ok(sub.key.clone())
                    }
                    (_, Some(sub)) if sub.state == SubState::Cancelled => {
                        Err(Refusal::SubscriptionCancelled)
                    }
                    _ => Err(Refusal::NotLinked),
                }
            }
        }
    };
    let row = UsageRow {
        idempotency_key: report.idempotency_key.clone(),
        org_id: report.org_id.clone(),
        sub_key: refusal_for_link.as_ref().ok().cloned(),
        dimension: report.dimension.clone(),
        quantity: report.quantity,
        usage_time,
        usage_hour,
        status: if refusal_for_link.is_ok() {
            USAGE_ACCEPTED
        } else {
            USAGE_REFUSED
        }
        .to_string(),
        reason: refusal_for_link.err().map(|r| r.as_str().to_string()),
        recorded_at: now.timestamp_millis(),
        tags: crate::tags::canonical(&report.tags),
    };
    let (stored, inserted) = store.insert_usage(&row, reopen).await?;
    let replayed = !inserted;
    if replayed
        && (stored.org_id != row.org_id
            || stored.dimension != row.dimension
            || stored.quantity != row.quantity
            || stored.usage_time != row.usage_time
            || stored.tags != row.tags)
    {
        return Err(MeteringError::KeyReused {
            key: report.idempotency_key.clone(),
        });
    }
    let refusal = stored.reason.as_deref().and_then(Refusal::parse);
    if let Some(r) = refusal {
        if !replayed {
            tracing::info!(org_id = %report.org_id, key = %report.idempotency_key, reason = r.as_str(), "usage report refused");
        }
    }
    Ok(UsageReceipt {
        idempotency_key: stored.idempotency_key,
        accepted: stored.status == USAGE_ACCEPTED,
        refusal,
        sub_key: stored.sub_key,
        usage_hour: stored.usage_hour,
        replayed,
    })
}

/// Decides the reports hosts wrote into `mplink_usage` with SQL (status `submitted`) exactly
/// as [`record_usage`] decides reports that come through it; an invalid one is refused with
/// `invalid_<field>`. Returns how many were decided.
pub async fn settle_submitted(store: &Store, config: &MeterConfig) -> Result<usize, StoreError> {
    // One read per pass: a row that stayed submitted for any reason waits for the next pass
    // instead of spinning this one.
    let mut settled = 0;
    {
        let rows = store.submitted_usage(SETTLE_BATCH).await?;
        for row in rows {
            let Some(time) = DateTime::from_timestamp_millis(row.usage_time) else {
                store
                    .refuse_submitted(
                        &row.idempotency_key,
                        "invalid_time",
                        Utc::now().timestamp_millis(),
                    )
                    .await?;
                settled += 1;
                continue;
            };
            let report = UsageReport {
                idempotency_key: row.idempotency_key.clone(),
                org_id: row.org_id,
                dimension: row.dimension,
                quantity: row.quantity,
                time,
                tags: crate::tags::parse(&row.tags),
            };
            match record_usage(store, &report, config).await {
                Ok(_) => {}
                Err(MeteringError::Store(e)) => return Err(e),
                Err(MeteringError::Invalid { field, .. }) => {
                    tracing::warn!(key = %row.idempotency_key, field, "submitted usage row is invalid: refused");
                    store
                        .refuse_submitted(
                            &row.idempotency_key,
                            &format!("invalid_{field}"),
                            Utc::now().timestamp_millis(),
                        )
                        .await?;
                }
                // The key names this very row: its payload is the report's.
                Err(MeteringError::KeyReused { .. }) => {
                    store
                        .refuse_submitted(
                            &row.idempotency_key,
                            "key_reused",
                            Utc::now().timestamp_millis(),
                        )
                        .await?;
                }
            }
            settled += 1;
        }
    }
    Ok(settled)
}

/// Submitted rows decided per pass.
const SETTLE_BATCH: i64 = 500;

#[cfg(test)]
mod tests;
