//! Contract entitlements: the loop that asks AWS's `GetEntitlements` what a subscription is
//! entitled to whenever an event or a link asked for it, and stores the answer by the event time
//! it stands for (see `docs/entitlements.md`).
//!
//! An empty answer is a fact ("no entitlement"), stored and never asked again until another event
//! asks; a failure (throttling, an AWS error, more pages than [`EntitlementConfig::max_pages`]) is
//! tried again after a capped backoff and kept as the check's `last_error`.

use crate::backoff::Backoff;
use crate::entitlement::{Entitlement, EntitlementValue};
use crate::event::license_id;
use crate::metrics::Metrics;
use crate::store::{EntitlementCheck, Store, StoreError};
use crate::time::now_ms;
use aws_sdk_marketplaceentitlement::types::GetEntitlementFilterName;
use prometheus::{IntCounterVec, Opts};
use std::time::Duration;
use thiserror::Error;
use tokio_util::sync::CancellationToken;

/// Most entitlements AWS returns in one page.
pub const PAGE_SIZE: i32 = 25;

/// How the entitlement loop behaves; [`EntitlementConfig::default`] holds every default.
#[derive(Debug, Clone)]
pub struct EntitlementConfig {
    /// This replica's name in the checks' leases.
    pub owner: String,
    /// How long a loop holds the checks it leased.
    pub lease: Duration,
    /// Checks leased per pass.
    pub batch: i64,
    /// Pages of one answer read at most: a bound on the calls one subscription can cost.
    pub max_pages: usize,
    /// First delay after a failed check.
    pub backoff_base: Duration,
    /// Longest delay between attempts.
    pub backoff_cap: Duration,
    /// How often the loop looks for work.
    pub tick: Duration,
}

impl Default for EntitlementConfig {
    fn default() -> Self {
        EntitlementConfig {
            owner: format!("{}-entitlements", crate::store::lease_owner()),
            lease: Duration::from_secs(60),
            batch: 25,
            max_pages: 40,
            backoff_base: Duration::from_secs(2),
            backoff_cap: Duration::from_secs(15 * 60),
            tick: Duration::from_secs(1),
        }
    }
}

/// Why one check could not be answered.
#[derive(Debug, Error)]
pub enum CheckError {
    /// The ledger knows no product code for the subscription, so there is nothing to ask.
    #[error("subscription {sub_key} has no product code yet")]
    NoProduct {
        /// The subscription.
        sub_key: String,
    },
    /// The ledger knows no customer of the subscription to filter by.
    #[error("subscription {sub_key} names no customer (identifier, account or license)")]
    NoCustomer {
        /// The subscription.
        sub_key: String,
    },
    /// AWS refused or did not answer.
    #[error("GetEntitlements failed for {sub_key}: {summary}")]
    Aws {
        /// The subscription.
        sub_key: String,
        /// AWS's code, message and request id.
        summary: String,
    },
    /// The answer did not end within the page bound: nothing of it is stored.
    #[error("GetEntitlements for {sub_key} had more than {pages} pages")]
    TooManyPages {
        /// The subscription.
        sub_key: String,
        /// The bound.
        pages: usize,
    },
    /// AWS answered an entitlement without a dimension or a value.
    #[error("GetEntitlements for {sub_key} answered an entitlement without {field}")]
    Malformed {
        /// The subscription.
        sub_key: String,
        /// The missing field.
        field: &'static str,
    },
}

impl CheckError {
    /// A stable reason code, the label of `mplink_entitlement_checks_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            CheckError::NoProduct { .. } => "no_product",
            CheckError::NoCustomer { .. } => "no_customer",
            CheckError::Aws { .. } => "aws_error",
            CheckError::TooManyPages { .. } => "too_many_pages",
            CheckError::Malformed { .. } => "malformed_answer",
        }
    }
}

/// What one pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RefreshSummary {
    /// Checks leased.
    pub claimed: usize,
    /// Answers stored (an empty answer included).
    pub answered: usize,
    /// Of those, answers that said nothing was entitled.
    pub empty: usize,
    /// Answers that differed from the one before.
    pub changed: usize,
    /// `link.entitlements_changed` rows written.
    pub notified: usize,
    /// Checks that failed, by reason.
    pub failed: Vec<&'static str>,
    /// GetEntitlements calls made.
    pub calls: usize,
}

/// The filter a subscription is asked by: its legacy customer identifier, else its buyer's
/// account (then kept to its license, compared on the `l-…` id, since AWS spells license ARNs in
/// two ways), else its license ARN.
fn query_of(
    sub: &crate::ledger::Subscription,
) -> Result<(String, GetEntitlementFilterName, String), CheckError> {
    let product = sub.product_code.clone().ok_or(CheckError::NoProduct {
        sub_key: sub.key.clone(),
    })?;
    if let Some(c) = &sub.customer_identifier {
        return Ok((
            product,
            GetEntitlementFilterName::CustomerIdentifier,
            c.clone(),
        ));
    }
    if let Some(a) = &sub.customer_aws_account_id {
        return Ok((
            product,
            GetEntitlementFilterName::CustomerAwsAccountId,
            a.clone(),
        ));
    }
    if let Some(l) = &sub.license_arn {
        return Ok((product, GetEntitlementFilterName::LicenseArn, l.clone()));
    }
    Err(CheckError::NoCustomer {
        sub_key: sub.key.clone(),
    })
}

fn value_of(
    v: &aws_sdk_marketplaceentitlement::types::EntitlementValue,
) -> Option<EntitlementValue> {
    if let Some(i) = v.integer_value() {
        return Some(EntitlementValue::Integer(i.into()));
    }
    if let Some(d) = v.double_value() {
        return Some(EntitlementValue::Double(d));
    }
    if let Some(b) = v.boolean_value() {
        return Some(EntitlementValue::Boolean(b));
    }
    v.string_value()
        .map(|s| EntitlementValue::String(s.to_string()))
}

/// Asks AWS for `check`'s whole answer, page by page, counting each call in `calls`.
async fn fetch(
    client: &aws_sdk_marketplaceentitlement::Client,
    check: &EntitlementCheck,
    max_pages: usize,
    calls: &mut usize,
) -> Result<Vec<Entitlement>, CheckError> {
    let sub = &check.subscription;
    let sub_key = || sub.key.clone();
    let (product, filter, value) = query_of(sub)?;
    let by_account = filter == GetEntitlementFilterName::CustomerAwsAccountId;
    let license = sub.license_arn.as_deref().map(license_id);
    let mut out = Vec::new();
    let mut token: Option<String> = None;
    for _ in 0..max_pages {
        *calls += 1;
        let answer = client
            .get_entitlements()
            .product_code(&product)
            .filter(filter.clone(), vec![value.clone()])
            .max_results(PAGE_SIZE)
            .set_next_token(token.take())
            .send()
            .await
            .map_err(|e| CheckError::Aws {
                sub_key: sub_key(),
                summary: crate::aws::error_summary(&e),
            })?;
        for e in answer.entitlements() {
            // Asked by account: only this subscription's license counts (an account can hold
            // several licenses of one product).
            if by_account {
                if let (Some(want), Some(got)) = (license, e.license_arn()) {
                    if license_id(got) != want {
                        continue;
                    }
                }
            }
            let dimension = e.dimension().ok_or_else(|| CheckError::Malformed {
                sub_key: sub_key(),
                field: "Dimension",
            })?;
            let value = e
                .value()
                .and_then(value_of)
                .ok_or_else(|| CheckError::Malformed {
                    sub_key: sub_key(),
                    field: "Value",
                })?;
            out.push(Entitlement {
                dimension: dimension.to_string(),
                value,
                expires_at_ms: e.expiration_date().and_then(|t| t.to_millis().ok()),
            });
        }
        match answer.next_token() {
            Some(t) if !t.is_empty() => token = Some(t.to_string()),
            _ => return Ok(out),
        }
    }
    Err(CheckError::TooManyPages {
        sub_key: sub_key(),
        pages: max_pages,
    })
}

/// One pass at `now`: lease what is due, ask AWS, store each answer or failure.
pub async fn refresh_due(
    store: &Store,
    client: &aws_sdk_marketplaceentitlement::Client,
    config: &EntitlementConfig,
    now: i64,
) -> Result<RefreshSummary, StoreError> {
    let checks = store
        .claim_entitlement_checks(
            &config.owner,
            now,
            config.lease.as_millis() as i64,
            config.batch,
        )
        .await?;
    let mut summary = RefreshSummary {
        claimed: checks.len(),
        ..RefreshSummary::default()
    };
    let backoff = Backoff::new(config.backoff_base, config.backoff_cap);
    for check in &checks {
        match fetch(client, check, config.max_pages, &mut summary.calls).await {
            Ok(answer) => {
                let empty = answer.is_empty();
                let stored = store
                    .store_entitlements(check, &config.owner, answer, now_ms())
                    .await?;
                if stored.stored {
                    summary.answered += 1;
                    summary.empty += usize::from(empty);
                    summary.changed += usize::from(stored.changed);
                    summary.notified += stored.notified;
                }
            }
            Err(e) => {
                let failures = (check.attempts + 1).clamp(1, 30) as u32;
                let retry_at = now_ms() + backoff.delay_after(failures).as_millis() as i64;
                tracing::warn!(
                    sub_key = %check.subscription.key,
                    reason = e.reason(),
                    error = %e,
                    attempts = failures,
                    "entitlement check failed"
                );
                store
                    .entitlement_check_failed(check, &config.owner, &e.to_string(), retry_at)
                    .await?;
                summary.failed.push(e.reason());
            }
        }
    }
    Ok(summary)
}

/// `mplink_entitlement_checks_total{outcome}`: answered, empty, changed, or a failure's reason.
#[derive(Clone)]
pub struct EntitlementMetrics {
    checks: IntCounterVec,
}

impl EntitlementMetrics {
    /// Creates the counters and registers them with `metrics`.
    pub fn new(metrics: &Metrics) -> prometheus::Result<EntitlementMetrics> {
        let checks = IntCounterVec::new(
            Opts::new(
                "mplink_entitlement_checks_total",
                "Entitlement checks by outcome: answered, empty, changed, or why one failed",
            ),
            &["outcome"],
        )?;
        metrics.register(Box::new(checks.clone()))?;
        Ok(EntitlementMetrics { checks })
    }

    fn count(&self, s: &RefreshSummary) {
        for (outcome, n) in [
            ("answered", s.answered),
            ("empty", s.empty),
            ("changed", s.changed),
        ] {
            self.checks.with_label_values(&[outcome]).inc_by(n as u64);
        }
        for reason in &s.failed {
            self.checks.with_label_values(&[reason]).inc();
        }
    }
}

/// Runs [`refresh_due`] every `config.tick` (at once again while a pass filled its batch) until
/// `shutdown`; database errors back off and retry.
pub async fn run(
    store: Store,
    client: aws_sdk_marketplaceentitlement::Client,
    config: EntitlementConfig,
    metrics: Option<EntitlementMetrics>,
    shutdown: CancellationToken,
) {
    let mut backoff = Backoff::new(config.backoff_base, config.backoff_cap);
    while !shutdown.is_cancelled() {
        let delay = match refresh_due(&store, &client, &config, now_ms()).await {
            Ok(summary) => {
                backoff.reset();
                if let Some(m) = &metrics {
                    m.count(&summary);
                }
                if summary.claimed as i64 >= config.batch {
                    Duration::ZERO
                } else {
                    config.tick
                }
            }
            Err(e) => {
                let delay = backoff.next_delay();
                tracing::warn!(error = %e, retry_in = ?delay, "entitlement pass failed");
                delay
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}
