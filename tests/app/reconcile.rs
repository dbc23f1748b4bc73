//! Reconciliation end to end: AWS's Agreement API (`SearchAgreements` through the real
//! `aws-sdk-marketplaceagreement` client, Smithy RPC v2 CBOR, against the local double) against a
//! ledger that lost events; on SQLite and PostgreSQL.

use crate::common::*;
use mplink::api::routes::billing::load as billing;
use mplink::api::routes::history::entry_json;
use mplink::ledger::{LinkRequest, LinkState, SubState};
use mplink::reconcile::{reconcile, Drift, DriftReport, ReconcileConfig};
use mplink::store::{StatusFilter, Store};
use mplink::time::now_ms;
use mplink_marketplace_double::clients::agreement as agreement_client;
use mplink_marketplace_double::{Agreement, Failure, MarketplaceDouble, Operation};
use std::time::Duration;

const PRODUCT_ID: &str = "prod-recon1EXAMPLE";
const PRODUCT_CODE: &str = "code-recon-1";
const MINUTE_MS: i64 = 60_000;
const DAY_MS: i64 = 86_400_000;

struct Story {
    db: TestDb,
    double: MarketplaceDouble,
    client: aws_sdk_marketplaceagreement::Client,
    now: i64,
}

fn account(n: u32) -> String {
    format!("1000000000{n:02}")
}

fn license(n: u32) -> String {
    format!("arn:aws:license-manager::{}:license:l-recon{n}", account(n))
}

fn at(ms: i64) -> Option<chrono::DateTime<chrono::Utc>> {
    chrono::DateTime::from_timestamp_millis(ms / 1000 * 1000)
}

impl Story {
    async fn new(backend: Backend) -> Story {
        let double = MarketplaceDouble::start("127.0.0.1:0").await.unwrap();
        let client = agreement_client(&double).await;
        Story {
            db: TestDb::new(backend).await,
            double,
            client,
            now: now_ms() / 1000 * 1000,
        }
    }

    fn store(&self) -> &Store {
        &self.db.store
    }

    fn config(&self) -> ReconcileConfig {
        ReconcileConfig {
            product_code: Some(PRODUCT_CODE.into()),
            backoff_base: Duration::from_millis(1),
            backoff_cap: Duration::from_millis(5),
            ..ReconcileConfig::new(PRODUCT_ID)
        }
    }

    async fn run(&self, config: &ReconcileConfig) -> DriftReport {
        reconcile(self.store(), &self.client, config).await
    }

    /// `org` registered agreement `n`'s buyer (account and license, as ResolveCustomer gives).
    async fn registered(&self, org: &str, n: u32) {
        self.store()
            .link(&LinkRequest {
                org_id: org.into(),
                product_code: PRODUCT_CODE.into(),
                customer_identifier: None,
                customer_aws_account_id: Some(account(n)),
                license_arn: Some(license(n)),
                requested_at_ms: self.now - 4 * DAY_MS,
            })
            .await
            .unwrap();
    }

    async fn apply(&self, id: &str, body: String) {
        self.store()
            .apply(&decoded(id, &body), &body)
            .await
            .unwrap();
    }

    /// The events of agreement `n`'s start as the queue delivers them: created, and the license.
    async fn delivered_start(&self, n: u32, time: i64, fields: serde_json::Value) {
        let agreement = format!("agmt-{n}");
        let id = format!("created-{n}");
        self.apply(
            &id,
            agreement_body(
                &id,
                "Created",
                "Proposer",
                &agreement,
                &account(n),
                fields,
                time,
            ),
        )
        .await;
        let id = format!("license-{n}");
        self.apply(
            &id,
            license_body(
                &id,
                "Updated",
                &agreement,
                PRODUCT_CODE,
                &license(n),
                &account(n),
                time,
            ),
        )
        .await;
    }

    async fn delivered_end(&self, n: u32, status: &str, time: i64) {
        let id = format!("ended-{n}");
        self.apply(
            &id,
            agreement_body(
                &id,
                "Ended",
                "Proposer",
                &format!("agmt-{n}"),
                &account(n),
                serde_json::json!({ "status": status }),
                time,
            ),
        )
        .await;
    }

    /// What AWS says of agreement `n` (its license as the double derives it from the status).
    fn aws(&self, n: u32, status: &str, accepted: i64, ended: Option<i64>) {
        self.aws_license(n, status, accepted, ended, None);
    }

    /// What AWS says of agreement `n`, its license's status given.
    fn aws_license(
        &self,
        n: u32,
        status: &str,
        accepted: i64,
        ended: Option<i64>,
        license_status: Option<&str>,
    ) {
        self.double.put_agreement(Agreement {
            agreement_id: format!("agmt-{n}"),
            product_id: PRODUCT_ID.into(),
            acceptor_account_id: account(n),
            status: status.into(),
            offer_id: Some("offer-recon".into()),
            license_arn: Some(license(n)),
            acceptance_time: at(accepted),
            start_time: at(accepted),
            end_time: ended.and_then(at),
            license_status: license_status.map(str::to_string),
        });
    }

    async fn link_state(&self, org: &str) -> Option<LinkState> {
        billing(self.store(), org).await.unwrap().link_state
    }

    async fn told(&self, org: &str) -> Vec<(String, String)> {
        self.store()
            .outbox_after(0, 10_000)
            .await
            .unwrap()
            .into_iter()
            .filter(|r| r.org_id == org)
            .map(|r| (r.event_type, r.cause))
            .collect()
    }

    async fn outbox_len(&self) -> usize {
        self.store().outbox_after(0, 100_000).await.unwrap().len()
    }
}

fn drift_of<'a>(report: &'a DriftReport, agreement: &str) -> &'a Drift {
    report
        .drift
        .iter()
        .find(|d| d.agreement_id == agreement)
        .unwrap_or_else(|| panic!("no drift for {agreement}: {report:#?}"))
}

/// The issue's drift cases in one ledger: a create never delivered, a cancellation never
/// delivered (recent: unlink pending, so the final usage goes out; old: unlinked), an agreement
/// only AWS knows, AWS older than the ledger, one in sync; then a rerun that repeats nothing.
async fn lost_events_are_repaired_through_the_ledger_rules(backend: Backend) {
    let s = Story::new(backend).await;
    let t0 = s.now - 3 * DAY_MS;
    // 1: registered, its create never delivered.
    s.registered("org-1", 1).await;
    s.aws(1, "ACTIVE", t0, None);
    // 2: linked, its cancellation ten minutes ago never delivered; AWS still provisions the
    // license for the final usage hour.
    s.registered("org-2", 2).await;
    s.delivered_start(2, t0, serde_json::json!({})).await;
    s.aws_license(
        2,
        "CANCELLED",
        t0,
        Some(s.now - 10 * MINUTE_MS),
        Some("PROVISIONED"),
    );
    // 3: only AWS knows it: nobody registered.
    s.aws(3, "ACTIVE", t0, None);
    // 4: the ledger holds a newer event than AWS's (stale) answer.
    s.registered("org-4", 4).await;
    s.delivered_start(4, t0, serde_json::json!({})).await;
    s.delivered_end(4, "CANCELLED", s.now - 5 * MINUTE_MS).await;
    s.aws(4, "ACTIVE", t0, None);
    // 5: in sync.
    s.registered("org-5", 5).await;
    s.delivered_start(5, t0, serde_json::json!({})).await;
    s.aws(5, "ACTIVE", t0, None);
    // 6: cancelled two days ago, neither the end nor the license's deprovisioning delivered.
    s.registered("org-6", 6).await;
    s.delivered_start(6, t0, serde_json::json!({})).await;
    s.aws(6, "CANCELLED", t0, Some(s.now - 2 * DAY_MS));
    // 7: cancelled two days ago too, but AWS's license is still provisioned: AWS's word, not the
    // clock, decides (cancelling, not cancelled).
    s.registered("org-7", 7).await;
    s.delivered_start(7, t0, serde_json::json!({})).await;
    s.aws_license(
        7,
        "CANCELLED",
        t0,
        Some(s.now - 2 * DAY_MS),
        Some("PROVISIONED"),
    );
    assert_eq!(s.link_state("org-1").await, Some(LinkState::Syncing));
    assert_eq!(s.link_state("org-2").await, Some(LinkState::Linked));
    assert_eq!(s.link_state("org-6").await, Some(LinkState::Linked));

    let report = s.run(&s.config()).await;
    assert!(report.complete && report.error.is_none(), "{report:#?}");
    // One page, and one GetAgreementEntitlements for each ended agreement the ledger had not
    // cancelled (2, 6 and 7).
    assert_eq!((report.agreements, report.in_sync, report.calls), (7, 1, 4));
    let seen: Vec<(&str, &str, &str, Vec<String>)> = report
        .drift
        .iter()
        .map(|d| (d.agreement_id.as_str(), d.kind, d.outcome, d.orgs.clone()))
        .collect();
    assert_eq!(
        seen,
        [
            ("agmt-1", "missing", "repaired", vec!["org-1".to_string()]),
            ("agmt-2", "differed", "repaired", vec!["org-2".to_string()]),
            ("agmt-3", "missing", "repaired", vec![]),
            (
                "agmt-4",
                "differed",
                "ledger_newer",
                vec!["org-4".to_string()]
            ),
            ("agmt-6", "differed", "repaired", vec!["org-6".to_string()]),
            ("agmt-7", "differed", "repaired", vec!["org-7".to_string()]),
        ]
    );
    assert_eq!(
        drift_of(&report, "agmt-3").ledger_state_after,
        Some(SubState::Active)
    );
    assert_eq!(
        drift_of(&report, "agmt-4").ledger_state_after,
        Some(SubState::Cancelling)
    );
    assert_eq!(s.link_state("org-1").await, Some(LinkState::Linked));
    assert_eq!(s.link_state("org-2").await, Some(LinkState::UnlinkPending));
    assert_eq!(s.link_state("org-4").await, Some(LinkState::UnlinkPending));
    assert_eq!(s.link_state("org-5").await, Some(LinkState::Linked));
    assert_eq!(s.link_state("org-6").await, Some(LinkState::Unlinked));
    assert_eq!(s.link_state("org-7").await, Some(LinkState::UnlinkPending));
    // The host is told of each repair, caused by the reconciled fact.
    assert_eq!(
        s.told("org-1").await.last().cloned(),
        Some(("link.linked".into(), "reconciled:agmt-1:ACCEPTED".into()))
    );
    assert_eq!(
        s.told("org-2").await.last().cloned(),
        Some((
            "link.unlink_pending".into(),
            "reconciled:agmt-2:CANCELLED".into()
        ))
    );
    assert_eq!(
        s.told("org-6").await.last().cloned(),
        Some((
            "link.unlinked".into(),
            "reconciled:agmt-6:DEPROVISIONED".into()
        ))
    );
    // Support sees where it came from.
    let history = s.store().org_history("org-1").await.unwrap();
    assert!(
        history
            .iter()
            .map(entry_json)
            .any(|e| e["source"] == "reconciled" && e["outcome"] == "applied"),
        "{:#?}",
        history.iter().map(entry_json).collect::<Vec<_>>()
    );

    // A rerun records nothing and tells nobody again.
    let outbox = s.outbox_len().await;
    let again = s.run(&s.config()).await;
    assert_eq!(again.facts_recorded, 0, "{again:#?}");
    assert_eq!(again.in_sync, 6, "{again:#?}");
    assert_eq!(drift_of(&again, "agmt-4").outcome, "already_recorded");
    assert_eq!(s.outbox_len().await, outbox);
    s.db.cleanup().await;
}

/// A renewal whose old agreement's end was lost: the successor keeps the link.
async fn a_renewal_keeps_the_link(backend: Backend) {
    let s = Story::new(backend).await;
    let t0 = s.now - 30 * DAY_MS;
    let t1 = s.now - DAY_MS;
    s.registered("org-r", 7).await;
    s.delivered_start(7, t0, serde_json::json!({})).await;
    // The renewal's create arrived; the old agreement's Ended RENEWED did not.
    let id = "created-8";
    s.apply(
        id,
        agreement_body(
            id,
            "Created",
            "Proposer",
            "agmt-8",
            &account(7),
            serde_json::json!({ "intent": "RENEW", "previousAgreementId": "agmt-7" }),
            t1,
        ),
    )
    .await;
    s.aws(7, "RENEWED", t0, Some(t1));
    s.double.put_agreement(Agreement {
        agreement_id: "agmt-8".into(),
        product_id: PRODUCT_ID.into(),
        acceptor_account_id: account(7),
        status: "ACTIVE".into(),
        offer_id: None,
        license_arn: Some(license(7)),
        acceptance_time: at(t1),
        start_time: at(t1),
        end_time: None,
        license_status: None,
    });
    let report = s.run(&s.config()).await;
    assert_eq!(
        drift_of(&report, "agmt-7").outcome,
        "repaired",
        "{report:#?}"
    );
    assert_eq!(s.link_state("org-r").await, Some(LinkState::Linked));
    assert!(
        !s.told("org-r")
            .await
            .iter()
            .any(|(t, _)| t == "link.unlinked" || t == "link.unlink_pending"),
        "{:?}",
        s.told("org-r").await
    );
    s.db.cleanup().await;
}

/// `--dry-run` reports what it would repair and leaves the database as it was.
async fn a_dry_run_changes_nothing(backend: Backend) {
    let s = Story::new(backend).await;
    let t0 = s.now - 3 * DAY_MS;
    s.registered("org-1", 1).await;
    s.aws(1, "ACTIVE", t0, None);
    s.registered("org-2", 2).await;
    s.delivered_start(2, t0, serde_json::json!({})).await;
    s.aws(2, "CANCELLED", t0, Some(s.now - 2 * DAY_MS));
    let snapshot = |s: &Story| {
        let store = s.store().clone();
        async move {
            (
                store.subscriptions().await.unwrap(),
                store.status(&StatusFilter::default()).await.unwrap(),
                store.outbox_after(0, 100_000).await.unwrap(),
                store.org_history("org-1").await.unwrap(),
                store.org_history("org-2").await.unwrap(),
            )
        }
    };
    let before = snapshot(&s).await;
    let report = s
        .run(&ReconcileConfig {
            dry_run: true,
            ..s.config()
        })
        .await;
    assert_eq!(report.count("would_repair"), 2, "{report:#?}");
    assert_eq!(report.facts_recorded, 0);
    assert_eq!(snapshot(&s).await, before, "a dry run wrote something");
    // And the real run does repair: the dry run's verdict was not a no-op by construction.
    let real = s.run(&s.config()).await;
    assert_eq!(real.count("repaired"), 2, "{real:#?}");
    assert_ne!(snapshot(&s).await, before);
    s.db.cleanup().await;
}

/// Several pages, throttling mid-run waited out; a pass stopped by its call bound (as a crash
/// would stop it) and a rerun: every agreement once, no fact twice, no notification twice.
async fn paging_throttling_and_a_rerun_after_a_stop(backend: Backend) {
    let s = Story::new(backend).await;
    let t0 = s.now - 3 * DAY_MS;
    for n in 0..60 {
        s.registered(&format!("org-{n}"), n).await;
    }
    for n in 0..120 {
        s.aws(n, "ACTIVE", t0, None);
    }
    let registered = s.outbox_len().await;
    // Stopped after two pages.
    let stopped = s
        .run(&ReconcileConfig {
            max_calls: 2,
            ..s.config()
        })
        .await;
    assert!(!stopped.complete && stopped.error.is_some(), "{stopped:#?}");
    assert_eq!((stopped.agreements, stopped.count("repaired")), (100, 100));
    let told = s.outbox_len().await;
    assert_eq!(
        told,
        registered + 60,
        "each registered organization linked once"
    );

    s.double
        .fail_next(Operation::SearchAgreements, Failure::Throttling, 2);
    let rerun = s.run(&s.config()).await;
    assert!(rerun.complete, "{rerun:#?}");
    assert_eq!(
        (rerun.calls, rerun.throttled),
        (5, 2),
        "3 pages and 2 throttled calls"
    );
    assert_eq!(
        (rerun.agreements, rerun.in_sync, rerun.count("repaired")),
        (120, 100, 20)
    );
    assert_eq!(s.outbox_len().await, told, "nobody told twice");
    let facts = s
        .store()
        .subscriptions()
        .await
        .unwrap()
        .iter()
        .filter(|sub| sub.state == SubState::Active)
        .count();
    assert_eq!(facts, 120);
    // Throttled past the retry bound: the pass stops and says why.
    s.double
        .fail_next(Operation::SearchAgreements, Failure::Throttling, 10);
    let given_up = s.run(&s.config()).await;
    assert!(
        !given_up.complete
            && given_up
                .error
                .as_deref()
                .is_some_and(|e| e.contains("ThrottlingException")),
        "{given_up:#?}"
    );
    s.db.cleanup().await;
}

/// A cancellation AWS's queue never delivered still closes the subscription's metering: the
/// final usage goes out once reconcile has recorded the end.
async fn a_lost_cancellation_still_sends_the_final_usage(backend: Backend) {
    use mplink::metering::{record_usage, runner::tick, MeterConfig, UsageReport};
    let s = Story::new(backend).await;
    let t0 = s.now - 4 * 3_600_000;
    s.registered("org-u", 9).await;
    s.delivered_start(9, t0, serde_json::json!({})).await;
    s.double.add_customer(
        "tok-u",
        mplink_marketplace_double::ResolvedCustomer {
            customer_aws_account_id: account(9),
            license_arn: license(9),
            product_code: PRODUCT_CODE.into(),
            customer_identifier: None,
            agreement_id: Some("agmt-9".into()),
        },
    );
    let meter = MeterConfig {
        owner: "replica-1".into(),
        close_grace: Duration::ZERO,
        ..MeterConfig::default()
    };
    let used = chrono::DateTime::from_timestamp_millis(s.now - 2 * MINUTE_MS).unwrap();
    let receipt = record_usage(
        s.store(),
        &UsageReport {
            idempotency_key: "u-1".into(),
            org_id: "org-u".into(),
            dimension: "requests".into(),
            quantity: 5,
            time: used,
            tags: Default::default(),
        },
        &meter,
    )
    .await
    .unwrap();
    assert!(receipt.accepted, "{receipt:?}");
    s.aws(9, "CANCELLED", t0, Some(s.now - 1_000));
    let report = s.run(&s.config()).await;
    assert_eq!(
        drift_of(&report, "agmt-9").outcome,
        "repaired",
        "{report:#?}"
    );
    let client = mplink_marketplace_double::clients::metering(&s.double, 1).await;
    let (closed, _) = tick(s.store(), &client, &meter, now_ms()).await.unwrap();
    assert_eq!(closed.finals_closed.len(), 1, "{closed:?}");
    let billed: Vec<(String, i64)> = s
        .double
        .metered_records()
        .iter()
        .map(|r| (r.customer_aws_account_id.clone(), r.quantity))
        .collect();
    assert_eq!(billed, vec![(account(9), 5)]);
    s.db.cleanup().await;
}

/// `mplink reconcile` as the operator runs it: `--dry-run` prints the table and changes nothing,
/// `--json` prints the report; the SDK's own endpoint variable points it at the double.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_reports_and_repairs() {
    let s = Story::new(Backend::Sqlite).await;
    let t0 = s.now - 3 * DAY_MS;
    s.registered("org-1", 1).await;
    s.aws(1, "ACTIVE", t0, None);
    s.aws(3, "ACTIVE", t0, None);
    let run = |extra: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_mplink"))
            .args([
                "reconcile",
                "--product-id",
                PRODUCT_ID,
                "--product-code",
                PRODUCT_CODE,
            ])
            .args(extra)
            .envs(crate::common::localstack::binary_env())
            .env("MPLINK_DATABASE_URL", s.db.url.expose())
            .env(
                "AWS_ENDPOINT_URL_MARKETPLACE_AGREEMENT",
                s.double.endpoint_url(),
            )
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(out.status.success(), "{stdout}\n{stderr}");
        stdout
    };
    let table = run(&["--dry-run"]);
    assert!(
        table.contains("agmt-1")
            && table.contains("would_repair")
            && table.contains("only AWS knows it"),
        "{table}"
    );
    assert_eq!(s.link_state("org-1").await, Some(LinkState::Syncing));
    let json: serde_json::Value = serde_json::from_str(run(&["--json"]).trim()).unwrap();
    assert_eq!(json["complete"], true, "{json}");
    assert_eq!(json["drift"][0]["outcome"], "repaired", "{json}");
    assert_eq!(
        json["drift"][0]["orgs"],
        serde_json::json!(["org-1"]),
        "{json}"
    );
    assert_eq!(json["drift"][1]["orgs"], serde_json::json!([]), "{json}");
    assert_eq!(s.link_state("org-1").await, Some(LinkState::Linked));
    s.db.cleanup().await;
}

/// The issue's measure of done: a queue that lost a third of a lifecycle's events, then one pass,
/// leaves every subscription and every link as a ledger that received every event has them.
async fn a_third_of_the_events_lost_then_one_pass_equals_full_delivery(backend: Backend) {
    let s = Story::new(backend).await;
    let full = TestDb::new(backend).await;
    let t0 = s.now - 10 * DAY_MS;
    let ended = s.now - 2 * DAY_MS;
    // 30 lifecycles: every one created and licensed; two in three cancelled, then deprovisioned.
    let mut events: Vec<(String, String)> = Vec::new();
    for n in 0..30u32 {
        let agreement = format!("agmt-{n}");
        let (acct, lic) = (account(n), license(n));
        events.push((
            format!("created-{n}"),
            agreement_body(
                &format!("created-{n}"),
                "Created",
                "Proposer",
                &agreement,
                &acct,
                serde_json::json!({}),
                t0,
            ),
        ));
        events.push((
            format!("license-{n}"),
            license_body(
                &format!("license-{n}"),
                "Updated",
                &agreement,
                PRODUCT_CODE,
                &lic,
                &acct,
                t0 + MINUTE_MS,
            ),
        ));
        let cancelled = n % 3 != 0;
        if cancelled {
            events.push((
                format!("ended-{n}"),
                agreement_body(
                    &format!("ended-{n}"),
                    "Ended",
                    "Proposer",
                    &agreement,
                    &acct,
                    serde_json::json!({ "status": "CANCELLED" }),
                    ended,
                ),
            ));
            events.push((
                format!("deprov-{n}"),
                license_body(
                    &format!("deprov-{n}"),
                    "Deprovisioned",
                    &agreement,
                    PRODUCT_CODE,
                    &lic,
                    &acct,
                    ended + 3_600_000,
                ),
            ));
        }
        s.aws(
            n,
            if cancelled { "CANCELLED" } else { "ACTIVE" },
            t0,
            cancelled.then_some(ended),
        );
    }
    for n in 0..30u32 {
        let link = LinkRequest {
            org_id: format!("org-{n}"),
            product_code: PRODUCT_CODE.into(),
            customer_identifier: None,
            customer_aws_account_id: Some(account(n)),
            license_arn: Some(license(n)),
            requested_at_ms: t0 - DAY_MS,
        };
        s.store().link(&link).await.unwrap();
        full.store.link(&link).await.unwrap();
    }
    let mut lost = 0;
    for (i, (id, body)) in events.iter().enumerate() {
        full.store.apply(&decoded(id, body), body).await.unwrap();
        if i % 3 == 0 {
            lost += 1;
            continue;
        }
        s.apply(id, body.clone()).await;
    }
    assert_eq!(lost, events.len().div_ceil(3));
    let states = |subs: Vec<mplink::ledger::Subscription>| -> Vec<(String, SubState)> {
        subs.into_iter().map(|sub| (sub.key, sub.state)).collect()
    };
    let links = |rows: Vec<mplink::store::StatusRow>| -> Vec<(Option<String>, Option<LinkState>)> {
        let mut v: Vec<_> = rows.into_iter().map(|r| (r.org_id, r.link_state)).collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    };
    let want = states(full.store.subscriptions().await.unwrap());
    let want_links = links(full.store.status(&StatusFilter::default()).await.unwrap());
    assert_ne!(
        states(s.store().subscriptions().await.unwrap()),
        want,
        "the loss shows"
    );

    let report = s.run(&s.config()).await;
    assert!(report.complete, "{report:#?}");
    assert_eq!(states(s.store().subscriptions().await.unwrap()), want);
    assert_eq!(
        links(s.store().status(&StatusFilter::default()).await.unwrap()),
        want_links
    );
    full.cleanup().await;
    s.db.cleanup().await;
}

/// On a schedule, two replicas at once: one runs the pass, the other finds it taken; nothing runs
/// again before the period has passed.
async fn the_schedule_runs_one_replica_at_a_time(backend: Backend) {
    use mplink::reconcile::schedule::{scheduled_pass, Product, Schedule};
    let s = Story::new(backend).await;
    s.registered("org-1", 1).await;
    s.aws(1, "ACTIVE", s.now - DAY_MS, None);
    let plan = |owner: &str, every: Duration| Schedule {
        owner: owner.into(),
        ..Schedule::new(
            vec![Product {
                id: PRODUCT_ID.into(),
                code: Some(PRODUCT_CODE.into()),
            }],
            every,
        )
    };
    let hourly = Duration::from_secs(3600);
    // No period between them: only the lease keeps the second replica out.
    let (one, two) = (
        plan("replica-1", Duration::ZERO),
        plan("replica-2", Duration::ZERO),
    );
    let (a, b) = tokio::join!(
        scheduled_pass(s.store(), &s.client, &one, None),
        scheduled_pass(s.store(), &s.client, &two, None),
    );
    let ran = a.unwrap().len() + b.unwrap().len();
    assert_eq!(ran, 1, "one replica runs the pass");
    assert_eq!(s.double.calls_of(Operation::SearchAgreements).len(), 1);
    assert_eq!(s.link_state("org-1").await, Some(LinkState::Linked));
    let early = scheduled_pass(s.store(), &s.client, &plan("replica-2", hourly), None)
        .await
        .unwrap();
    assert!(early.is_empty(), "not due within the hour: {early:?}");
    let due = scheduled_pass(
        s.store(),
        &s.client,
        &plan("replica-2", Duration::ZERO),
        None,
    )
    .await
    .unwrap();
    assert_eq!(due.len(), 1);
    assert_eq!((due[0].in_sync, due[0].facts_recorded), (1, 0));
    s.db.cleanup().await;
}

/// `mplink run --reconcile-every --reconcile-product`: the worker process reconciles too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_reconciles_with_its_flags() {
    let s = Story::new(Backend::Sqlite).await;
    s.registered("org-1", 1).await;
    s.aws(1, "ACTIVE", s.now - DAY_MS, None);
    let product = format!("{PRODUCT_ID}={PRODUCT_CODE}");
    let out = crate::common::localstack::run_worker_once(
        s.db.url.expose(),
        &["--reconcile-every", "3600", "--reconcile-product", &product],
        &[(
            "AWS_ENDPOINT_URL_MARKETPLACE_AGREEMENT",
            s.double.endpoint_url(),
        )],
    )
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(
        s.link_state("org-1").await,
        Some(LinkState::Linked),
        "{stderr}"
    );
    // Half a schedule, or too short a period, is refused at once, naming the flag; an empty
    // list with a period of 0 (what a stack passes to turn it off) is no schedule.
    for (every, products, says) in [
        ("3600", "", "needs --reconcile-product"),
        ("0", product.as_str(), "needs --reconcile-every"),
        ("59", product.as_str(), "at least 60 seconds"),
        ("3600", "not a product", "--reconcile-product"),
    ] {
        let refused = std::process::Command::new(env!("CARGO_BIN_EXE_mplink"))
            // Refused before any queue is read: the URL is never called.
            .args([
                "run",
                "--queue-url",
                "http://127.0.0.1:9/000000000000/unused",
            ])
            .env("MPLINK_DATABASE_URL", s.db.url.expose())
            .env("MPLINK_RECONCILE_EVERY", every)
            .env("MPLINK_RECONCILE_PRODUCTS", products)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert_eq!(
            refused.status.code(),
            Some(1),
            "{every} {products}: {stderr}"
        );
        assert!(stderr.contains(says), "{every} {products}: {stderr}");
    }
    s.db.cleanup().await;
}

both_backends! {
    lost_events_are_repaired_through_the_ledger_rules => lost_events_are_repaired_through_the_ledger_rules;
    a_renewal_keeps_the_link => a_renewal_keeps_the_link;
    a_dry_run_changes_nothing => a_dry_run_changes_nothing;
    paging_throttling_and_a_rerun_after_a_stop => paging_throttling_and_a_rerun_after_a_stop;
    a_lost_cancellation_still_sends_the_final_usage => a_lost_cancellation_still_sends_the_final_usage;
    the_schedule_runs_one_replica_at_a_time => the_schedule_runs_one_replica_at_a_time;
    a_third_of_the_events_lost_then_one_pass_equals_full_delivery => a_third_of_the_events_lost_then_one_pass_equals_full_delivery;
}
