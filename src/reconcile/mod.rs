//! `mplink reconcile`: AWS's Agreement API is the source of truth. Every purchase agreement of a
//! product (`SearchAgreements`, the seller as proposer) is compared with the ledger; each one the
//! ledger does not agree with becomes `reconciled` facts (`crate::reconciled::facts`) applied
//! through the same transaction as events — the ledger's rules decide (an older statement of AWS
//! never overrides a newer event), the outbox tells the host, metering sends final usage. A fact's
//! id is the agreement and the status, so a rerun after a crash records nothing twice.

pub mod schedule;

use crate::backoff::Backoff;
use crate::ledger::{Outcome, SubState};
use crate::reconciled::{agrees, asks_license, facts, known_status, AwsAgreement};
use crate::store::{Incoming, Store, StoreError};
use crate::time::now_ms;
use aws_sdk_marketplaceagreement::error::ProvideErrorMetadata;
use aws_sdk_marketplaceagreement::types::Filter;
use serde::Serialize;
use std::time::Duration;
use thiserror::Error;

/// Agreements asked for per `SearchAgreements` page (AWS's most).
pub const PAGE_SIZE: i32 = 50;

/// How one reconcile pass runs; [`ReconcileConfig::new`] holds every default.
#[derive(Debug, Clone)]
pub struct ReconcileConfig {
    /// The product's id (`prod-…`): what the Agreement API filters on.
    pub product_id: String,
    /// The product's code, recorded on subscriptions only AWS's answer teaches the ledger.
    pub product_code: Option<String>,
    /// Report what differs, change nothing.
    pub dry_run: bool,
    /// Calls to AWS one pass makes at most (pages and retries): the bound on the seller's quota.
    pub max_calls: usize,
    /// Throttled calls retried in a row before the pass stops.
    pub throttle_retries: u32,
    /// First delay after a throttled call; doubles up to `backoff_cap`.
    pub backoff_base: Duration,
    /// Longest delay after a throttled call.
    pub backoff_cap: Duration,
}

impl ReconcileConfig {
    /// A pass over `product_id` with the defaults.
    pub fn new(product_id: impl Into<String>) -> ReconcileConfig {
        ReconcileConfig {
            product_id: product_id.into(),
            product_code: None,
            dry_run: false,
            max_calls: 1_000,
            throttle_retries: 6,
            backoff_base: Duration::from_millis(500),
            backoff_cap: Duration::from_secs(20),
        }
    }
}

/// Why a pass stopped before the end of AWS's list (what it did until then is in the report).
#[derive(Debug, Error)]
pub enum ReconcileError {
    /// AWS refused or did not answer.
    #[error("SearchAgreements for product {product_id} failed: {summary}")]
    Aws {
        /// The product.
        product_id: String,
        /// AWS's error code, when AWS answered with one.
        code: Option<String>,
        /// AWS's code, message and request id.
        summary: String,
    },
    /// The pass made as many calls as it may (`--max-calls`); a rerun goes on where it matters.
    #[error("reconcile of product {product_id} stopped at the bound of {calls} calls per pass")]
    CallBound {
        /// The product.
        product_id: String,
        /// The bound.
        calls: usize,
    },
    /// The ledger could not be read or written.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl ReconcileError {
    /// A stable reason code.
    pub fn reason(&self) -> &'static str {
        match self {
            ReconcileError::Aws { .. } => "aws_error",
            ReconcileError::CallBound { .. } => "call_bound",
            ReconcileError::Store(_) => "store_error",
        }
    }
}

/// One agreement the ledger did not agree with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Drift {
    /// The agreement.
    pub agreement_id: String,
    /// `missing` (the ledger never heard of it) or `differed`.
    pub kind: &'static str,
    /// AWS's status.
    pub aws_status: String,
    /// The ledger's state before the pass (null: missing).
    pub ledger_state: Option<SubState>,
    /// `repaired`, `would_repair` (dry run), `ledger_newer` (the ledger holds a newer event:
    /// AWS's statement was recorded and changed nothing), `unknown_status` (reported only), or
    /// `already_recorded`.
    pub outcome: &'static str,
    /// The ledger's state after the pass.
    pub ledger_state_after: Option<SubState>,
    /// The organizations whose link rests on it; empty: only AWS knows of it (reported for the
    /// operator, never linked by guess).
    pub orgs: Vec<String>,
}

/// What a pass found and did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct DriftReport {
    /// The product.
    pub product_id: String,
    /// True when nothing was changed.
    pub dry_run: bool,
    /// Agreements AWS listed.
    pub agreements: usize,
    /// Of those, agreements the ledger already agreed with.
    pub in_sync: usize,
    /// Every other one.
    pub drift: Vec<Drift>,
    /// `reconciled` facts recorded (0 in a dry run).
    pub facts_recorded: usize,
    /// SearchAgreements calls made (retries included).
    pub calls: usize,
    /// Of those, calls AWS throttled.
    pub throttled: usize,
    /// True when the pass reached the end of AWS's list (false: it stopped at the call bound or
    /// an error; a rerun starts again and repeats nothing harmful).
    pub complete: bool,
    /// Why it stopped early, if it did.
    pub error: Option<String>,
    /// How long it took, milliseconds.
    pub elapsed_ms: u64,
}

impl DriftReport {
    /// Drift entries of one kind and outcome.
    pub fn count(&self, outcome: &str) -> usize {
        self.drift.iter().filter(|d| d.outcome == outcome).count()
    }
}

fn ms(t: Option<&aws_sdk_marketplaceagreement::primitives::DateTime>) -> Option<i64> {
    t.and_then(|t| t.to_millis().ok())
}

fn read_summary(
    s: &aws_sdk_marketplaceagreement::types::AgreementViewSummary,
) -> Option<AwsAgreement> {
    let resources = s
        .proposal_summary()
        .map(|p| p.resources())
        .unwrap_or_default();
    Some(AwsAgreement {
        agreement_id: s.agreement_id()?.to_string(),
        status: s.status().map(|v| v.as_str().to_string())?,
        acceptor_account_id: s
            .acceptor()
            .and_then(|a| a.account_id())
            .map(str::to_string),
        product_id: resources.first().and_then(|r| r.id()).map(str::to_string),
        offer_id: s
            .proposal_summary()
            .and_then(|p| p.offer_id())
            .map(str::to_string),
        license_arn: s
            .entitlements()
            .iter()
            .find_map(|e| e.license_arn())
            .map(str::to_string),
        acceptance_ms: ms(s.acceptance_time()),
        start_ms: ms(s.start_time()),
        end_ms: ms(s.end_time()),
        last_update_ms: ms(s.last_update_time()),
        license_status: None,
    })
}

/// True when the ledger knows every identifier of `a` AWS names (buyer, license, product code):
/// a subscription whose License Updated was lost is active but reaches no registration by
/// license, and a link waits on it for ever.
fn knows_ids(
    sub: Option<&crate::ledger::Subscription>,
    a: &AwsAgreement,
    config: &ReconcileConfig,
) -> bool {
    let Some(sub) = sub else {
        return false;
    };
    let lacks = |aws: bool, ledger: &Option<String>| aws && ledger.is_none();
    !(lacks(a.license_arn.is_some(), &sub.license_arn)
        || lacks(
            a.acceptor_account_id.is_some(),
            &sub.customer_aws_account_id,
        )
        || lacks(config.product_code.is_some(), &sub.product_code))
}

/// What the event log keeps as the fact's body: what AWS said and when it was asked.
fn body_of(a: &AwsAgreement, observed_ms: i64) -> String {
    serde_json::json!({
        "source": "mplink reconcile",
        "operation": "SearchAgreements",
        "observed_at": crate::time::rfc3339_millis(observed_ms),
        "agreement": {
            "agreementId": a.agreement_id,
            "status": a.status,
            "acceptorAccountId": a.acceptor_account_id,
            "productId": a.product_id,
            "offerId": a.offer_id,
            "licenseArn": a.license_arn,
            "acceptanceTime": a.acceptance_ms.map(crate::time::rfc3339_millis),
            "startTime": a.start_ms.map(crate::time::rfc3339_millis),
            "endTime": a.end_ms.map(crate::time::rfc3339_millis),
        }
    })
    .to_string()
}

/// One call to AWS within the pass's bound, throttling waited out (`config.throttle_retries` in
/// a row at most); every attempt counts in `report.calls`.
async fn call_aws<T, E, F, Fut>(
    config: &ReconcileConfig,
    report: &mut DriftReport,
    mut call: F,
) -> Result<T, ReconcileError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<
        Output = Result<
            T,
            aws_sdk_marketplaceagreement::error::SdkError<
                E,
                aws_sdk_marketplaceagreement::config::http::HttpResponse,
            >,
        >,
    >,
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let mut backoff = Backoff::new(config.backoff_base, config.backoff_cap);
    loop {
        if report.calls >= config.max_calls {
            return Err(ReconcileError::CallBound {
                product_id: config.product_id.clone(),
                calls: config.max_calls,
            });
        }
        report.calls += 1;
        match call().await {
            Ok(answer) => return Ok(answer),
            Err(e)
                if e.code() == Some("ThrottlingException")
                    && backoff.attempts() < config.throttle_retries =>
            {
                report.throttled += 1;
                tokio::time::sleep(backoff.next_delay()).await;
            }
            Err(e) => {
                return Err(ReconcileError::Aws {
                    product_id: config.product_id.clone(),
                    code: e.code().map(str::to_string),
                    summary: crate::aws::error_summary(&e),
                })
            }
        }
    }
}

/// The status of the license agreement `agreement_id` grants, as `GetAgreementEntitlements`
/// states it: DEPROVISIONED once every license it lists is; else the first other status; None
/// when AWS lists none (or knows no such agreement), and the end's timing decides.
async fn license_status(
    client: &aws_sdk_marketplaceagreement::Client,
    config: &ReconcileConfig,
    report: &mut DriftReport,
    agreement_id: &str,
) -> Result<Option<String>, ReconcileError> {
    let answer = call_aws(config, report, || {
        client
            .get_agreement_entitlements()
            .agreement_id(agreement_id)
            .send()
    })
    .await;
    let answer = match answer {
        Ok(a) => a,
        Err(ReconcileError::Aws { code, .. })
            if code.as_deref() == Some("ResourceNotFoundException") =>
        {
            return Ok(None)
        }
        Err(e) => return Err(e),
    };
    let statuses: Vec<&str> = answer
        .agreement_entitlements()
        .iter()
        .filter_map(|e| e.status().map(|s| s.as_str()))
        .collect();
    Ok(if statuses.is_empty() {
        None
    } else if statuses
        .iter()
        .all(|s| *s == crate::reconciled::DEPROVISIONED)
    {
        Some(crate::reconciled::DEPROVISIONED.to_string())
    } else {
        statuses
            .iter()
            .find(|s| **s != crate::reconciled::DEPROVISIONED)
            .map(|s| s.to_string())
    })
}

/// Compares one page of AWS's agreements with the ledger and applies (or previews) the facts of
/// each the ledger does not agree with.
async fn settle_page(
    store: &Store,
    client: &aws_sdk_marketplaceagreement::Client,
    config: &ReconcileConfig,
    page: Vec<AwsAgreement>,
    report: &mut DriftReport,
) -> Result<(), ReconcileError> {
    let observed = now_ms();
    let keys: Vec<String> = page
        .iter()
        .map(|a| format!("agmt:{}", a.agreement_id))
        .collect();
    let before = store.subscriptions_by_key(&keys).await?;
    report.agreements += page.len();
    let mut work = Vec::new();
    for (mut a, key) in page.into_iter().zip(keys) {
        let sub = before.get(&key);
        let state = sub.map(|s| s.state);
        let handed_over = sub.is_some_and(|s| s.handed_over.is_some());
        if agrees(&a, state, handed_over, observed) && knows_ids(sub, &a, config) {
            report.in_sync += 1;
            continue;
        }
        // An ended agreement the ledger has not cancelled: AWS's license status (one call)
        // says whether it is deprovisioned, so a license AWS still provisions is not taken away
        // by the clock, and one it deprovisioned early is.
        if asks_license(&a, state) {
            a.license_status = license_status(client, config, report, &a.agreement_id).await?;
            if agrees(&a, state, handed_over, observed) && knows_ids(sub, &a, config) {
                report.in_sync += 1;
                continue;
            }
        }
        if !known_status(&a.status) {
            report.drift.push(Drift {
                agreement_id: a.agreement_id.clone(),
                kind: if sub.is_some() { "differed" } else { "missing" },
                aws_status: a.status.clone(),
                ledger_state: state,
                outcome: "unknown_status",
                ledger_state_after: state,
                orgs: Vec::new(),
            });
            continue;
        }
        let events = facts(&a, config.product_code.as_deref(), observed);
        let body = body_of(&a, observed);
        work.push((a, key, state, events, body));
    }
    if work.is_empty() {
        return Ok(());
    }
    let batch: Vec<Incoming<'_>> = work
        .iter()
        .flat_map(|(_, _, _, events, body)| {
            events.iter().map(move |event| Incoming { event, body })
        })
        .collect();
    let outcomes = if config.dry_run {
        store.preview_batch(&batch).await?
    } else {
        store.apply_batch(&batch).await?
    };
    if !config.dry_run {
        report.facts_recorded += outcomes
            .iter()
            .filter(|o| matches!(o, Outcome::Applied | Outcome::Stale | Outcome::Noted))
            .count();
    }
    let keys: Vec<String> = work.iter().map(|w| w.1.clone()).collect();
    let after = store.subscriptions_by_key(&keys).await?;
    let mut outcomes = outcomes.into_iter();
    for (a, key, state, events, _) in work {
        let mine: Vec<Outcome> = outcomes.by_ref().take(events.len()).collect();
        let now = after.get(&key).or(before.get(&key));
        let recorded_now = mine.iter().any(|o| *o != Outcome::Duplicate);
        // Repaired means the ledger now says what AWS says; a fact the ledger's rules kept from
        // changing the state (a newer event stands) is recorded, not a repair.
        let outcome = if config.dry_run {
            if mine.contains(&Outcome::Applied) {
                "would_repair"
            } else if recorded_now {
                "ledger_newer"
            } else {
                "already_recorded"
            }
        } else if agrees(
            &a,
            now.map(|s| s.state),
            now.is_some_and(|s| s.handed_over.is_some()),
            observed,
        ) && knows_ids(now, &a, config)
        {
            "repaired"
        } else if recorded_now {
            "ledger_newer"
        } else {
            "already_recorded"
        };
        let orgs = match now {
            Some(sub) => store.orgs_naming(vec![sub.clone()]).await?,
            None => Default::default(),
        };
        report.drift.push(Drift {
            agreement_id: a.agreement_id,
            kind: if state.is_some() {
                "differed"
            } else {
                "missing"
            },
            aws_status: a.status,
            ledger_state: state,
            outcome,
            ledger_state_after: now.map(|s| s.state),
            orgs: orgs.into_iter().collect(),
        });
    }
    Ok(())
}

/// One pass over `config.product_id`: every page of AWS's list, throttling waited out, at most
/// `config.max_calls` calls. Stops at the first error other than throttling; the report says how
/// far it got.
pub async fn reconcile(
    store: &Store,
    client: &aws_sdk_marketplaceagreement::Client,
    config: &ReconcileConfig,
) -> DriftReport {
    reconcile_showing(store, client, config, |_| {}).await
}

/// [`reconcile`], handing the report so far to `progress` after each page (the command shows it
/// on a terminal).
pub async fn reconcile_showing(
    store: &Store,
    client: &aws_sdk_marketplaceagreement::Client,
    config: &ReconcileConfig,
    mut progress: impl FnMut(&DriftReport),
) -> DriftReport {
    let started = std::time::Instant::now();
    let mut report = DriftReport {
        product_id: config.product_id.clone(),
        dry_run: config.dry_run,
        ..DriftReport::default()
    };
    if let Err(e) = run_pages(store, client, config, &mut report, &mut progress).await {
        tracing::warn!(product_id = %config.product_id, reason = e.reason(), error = %e, "reconcile stopped");
        report.error = Some(e.to_string());
    }
    report.elapsed_ms = started.elapsed().as_millis() as u64;
    report
}

async fn run_pages(
    store: &Store,
    client: &aws_sdk_marketplaceagreement::Client,
    config: &ReconcileConfig,
    report: &mut DriftReport,
    progress: &mut impl FnMut(&DriftReport),
) -> Result<(), ReconcileError> {
    let filter = |name: &str, value: &str| Filter::builder().name(name).values(value).build();
    let filters = vec![
        filter("PartyType", "Proposer"),
        filter("AgreementType", "PurchaseAgreement"),
        filter("ResourceIdentifier", &config.product_id),
    ];
    let mut token: Option<String> = None;
    loop {
        let answer = call_aws(config, report, || {
            client
                .search_agreements()
                .catalog("AWSMarketplace")
                .set_filters(Some(filters.clone()))
                .max_results(PAGE_SIZE)
                .set_next_token(token.clone())
                .send()
        })
        .await?;
        let page: Vec<AwsAgreement> = answer
            .agreement_view_summaries()
            .iter()
            .filter_map(read_summary)
            .collect();
        settle_page(store, client, config, page, report).await?;
        progress(report);
        match answer.next_token() {
            Some(t) if !t.is_empty() => token = Some(t.to_string()),
            _ => {
                report.complete = true;
                return Ok(());
            }
        }
    }
}
