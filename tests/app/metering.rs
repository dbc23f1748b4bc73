//! Usage metering end to end: usage reports → hourly records → BatchMeterUsage through the real
//! `aws-sdk-marketplacemetering` client against the local Marketplace double, on SQLite and
//! PostgreSQL.

use crate::common::*;
use mplink::ledger::LinkRequest;
use mplink::metering::runner::tick;
use mplink::metering::{hour_of, record_usage, MeterConfig, Refusal, UsageReport, HOUR_MS};
use mplink::store::{MeterRecord, Store};
use mplink::time::now_ms;
use mplink_marketplace_double::clients::metering as metering_client;
use mplink_marketplace_double::{
    CallOutcome, Failure, MarketplaceDouble, Operation, ResolvedCustomer,
};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

const PRODUCT: &str = "prod-meter-1";
const DIM: &str = "requests";

struct Story {
    db: TestDb,
    double: MarketplaceDouble,
    client: aws_sdk_marketplacemetering::Client,
    config: MeterConfig,
    now: i64,
}

fn config(owner: &str) -> MeterConfig {
    MeterConfig {
        owner: owner.into(),
        zero_dimensions: vec![DIM.into()],
        close_grace: Duration::ZERO,
        backoff_base: Duration::from_millis(10),
        backoff_cap: Duration::from_millis(50),
        lease: Duration::from_secs(30),
        ..MeterConfig::default()
    }
}

impl Story {
    /// What the double billed, (hour, quantity) in the order it was metered.
    fn billed(&self) -> Vec<(i64, i64)> {
        self.double
            .metered_records()
            .iter()
            .map(|r| (r.hour.timestamp_millis(), r.quantity))
            .collect()
    }

    async fn new(backend: Backend) -> Story {
        let double = MarketplaceDouble::start("127.0.0.1:0").await.unwrap();
        let client = metering_client(&double, 1).await;
        Story {
            db: TestDb::new(backend).await,
            double,
            client,
            config: config("replica-1"),
            now: now_ms(),
        }
    }

    fn store(&self) -> &Store {
        &self.db.store
    }

    /// `org` links to legacy customer `customer`, whom AWS confirmed four hours ago.
    async fn subscribed(&self, org: &str, customer: &str) {
        self.subscribed_at(org, customer, self.now - 4 * HOUR_MS)
            .await;
    }

    /// `org` links to legacy customer `customer`, whom AWS confirmed at `at`.
    async fn subscribed_at(&self, org: &str, customer: &str, at: i64) {
        self.store()
            .link(&LinkRequest {
                org_id: org.into(),
                product_code: PRODUCT.into(),
                customer_identifier: Some(customer.into()),
                customer_aws_account_id: None,
                license_arn: None,
                requested_at_ms: self.now - 5 * HOUR_MS,
            })
            .await
            .unwrap();
        self.event(
            &format!("sub-{customer}"),
            "subscribe-success",
            customer,
            at,
        )
        .await;
        self.double.add_customer(
            &format!("tok-{customer}"),
            ResolvedCustomer {
                customer_aws_account_id: format!("acct-{customer}"),
                license_arn: format!("arn:aws:license-manager::1:license:l-{customer}"),
                product_code: PRODUCT.into(),
                customer_identifier: Some(customer.into()),
                agreement_id: None,
            },
        );
    }

    async fn event(&self, id: &str, action: &str, customer: &str, at: i64) {
        let body = sns_body(id, action, PRODUCT, customer, at);
        self.store()
            .apply(&decoded(id, &body), &body)
            .await
            .unwrap();
    }

    async fn usage(
        &self,
        org: &str,
        key: &str,
        quantity: i64,
        at: i64,
    ) -> mplink::metering::UsageReceipt {
        self.usage_tagged(org, key, quantity, at, &[])
            .await
            .unwrap()
    }

    /// A usage report with allocation tags.
    async fn usage_tagged(
        &self,
        org: &str,
        key: &str,
        quantity: i64,
        at: i64,
        tags: &[(&str, &str)],
    ) -> Result<mplink::metering::UsageReceipt, mplink::metering::MeteringError> {
        record_usage(
            self.store(),
            &UsageReport {
                idempotency_key: key.into(),
                org_id: org.into(),
                dimension: DIM.into(),
                quantity,
                time: chrono::DateTime::from_timestamp_millis(at).unwrap(),
                tags: tags
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            },
            &self.config,
        )
        .await
    }

    /// The hour `n` hours before the current one, plus `minutes`.
    fn at(&self, hours_back: i64, minutes: i64) -> i64 {
        hour_of(self.now) - hours_back * HOUR_MS + minutes * 60_000
    }

    async fn tick_at(
        &self,
        now: i64,
    ) -> (
        mplink::metering::close::CloseSummary,
        mplink::metering::send::SendSummary,
    ) {
        tick(self.store(), &self.client, &self.config, now)
            .await
            .unwrap()
    }

    async fn records(&self) -> Vec<MeterRecord> {
        let mut r = self.store().meter_records(10_000).await.unwrap();
        r.sort_by_key(|r| (r.sub_key.clone(), r.dimension.clone(), r.usage_hour));
        r
    }
}

/// Every record sent in any BatchMeterUsage call: (customer, dimension, hour) → quantities sent.
fn sent_records(double: &MarketplaceDouble) -> BTreeMap<(String, String, i64), Vec<i64>> {
    let mut out: BTreeMap<(String, String, i64), Vec<i64>> = BTreeMap::new();
    for call in double.calls_of(Operation::BatchMeterUsage) {
        for r in call.input["UsageRecords"]
            .as_array()
            .cloned()
            .unwrap_or_default()
        {
            let customer = r["CustomerIdentifier"]
                .as_str()
                .filter(|s| !s.is_empty())
                .or(r["CustomerAWSAccountId"].as_str())
                .unwrap_or("")
                .to_string();
            let ts = (r["Timestamp"].as_f64().unwrap() * 1000.0) as i64;
            out.entry((
                customer,
                r["Dimension"].as_str().unwrap().to_string(),
                hour_of(ts),
            ))
            .or_default()
            .push(r["Quantity"].as_i64().unwrap_or(0));
        }
    }
    out
}

/// Statuses AWS answered, over every call.
fn answered_statuses(double: &MarketplaceDouble) -> Vec<String> {
    double
        .calls_of(Operation::BatchMeterUsage)
        .iter()
        .filter_map(|c| match &c.outcome {
            CallOutcome::Ok { output } => {
                Some(output["Results"].as_array().cloned().unwrap_or_default())
            }
            _ => None,
        })
        .flatten()
        .map(|r| r["Status"].as_str().unwrap_or("").to_string())
        .collect()
}

/// The double never saw a second quantity for an hour (which AWS would not bill).
fn assert_no_different_resend(double: &MarketplaceDouble) {
    for (key, quantities) in sent_records(double) {
        let distinct: BTreeSet<i64> = quantities.iter().copied().collect();
        assert_eq!(
            distinct.len(),
            1,
            "{key:?} was sent with different quantities {quantities:?}"
        );
    }
    assert!(
        !answered_statuses(double)
            .iter()
            .any(|s| s == "DuplicateRecord"),
        "AWS answered DuplicateRecord"
    );
}

async fn meters_each_hour_once_with_zero_records(backend: Backend) {
    let s = Story::new(backend).await;
    s.subscribed("org-a", "cust-a").await;
    s.subscribed("org-b", "cust-b").await;
    assert!(s.usage("org-a", "k1", 3, s.at(3, 5)).await.accepted);
    assert!(s.usage("org-a", "k2", 4, s.at(3, 50)).await.accepted);
    let again = s.usage("org-a", "k2", 4, s.at(3, 50)).await;
    assert!(again.accepted && again.replayed, "the same key counts once");
    assert!(s.usage("org-a", "k3", 5, s.at(2, 1)).await.accepted);
    let refused = s.usage("org-nobody", "k4", 1, s.at(1, 1)).await;
    assert_eq!(refused.refusal, Some(Refusal::NotLinked));
    // A customer who subscribed half-way through the last hour: zero records from that hour
    // on only, and no usage before it (AWS would say CustomerNotSubscribed).
    s.subscribed_at("org-c", "cust-c", s.at(1, 30)).await;
    let early = s.usage("org-c", "k6", 1, s.at(1, 10)).await;
    assert_eq!(early.refusal, Some(Refusal::BeforeSubscription));

    let (closed, sent) = s.tick_at(s.now).await;
    assert_eq!(closed.hours_closed.len(), 3, "{closed:?}");
    assert_eq!(sent.answered.get("Success"), Some(&7), "{sent:?}");
    let billed: BTreeMap<(String, i64), i64> = s
        .double
        .metered_records()
        .iter()
        .map(|r| {
            (
                (r.customer_aws_account_id.clone(), r.hour.timestamp_millis()),
                r.quantity,
            )
        })
        .collect();
    let expected: BTreeMap<(String, i64), i64> = [
        (("acct-cust-a".to_string(), s.at(3, 0)), 7),
        (("acct-cust-a".to_string(), s.at(2, 0)), 5),
        (("acct-cust-a".to_string(), s.at(1, 0)), 0),
        (("acct-cust-b".to_string(), s.at(3, 0)), 0),
        (("acct-cust-b".to_string(), s.at(2, 0)), 0),
        (("acct-cust-b".to_string(), s.at(1, 0)), 0),
        (("acct-cust-c".to_string(), s.at(1, 0)), 0),
    ]
    .into_iter()
    .collect();
    assert_eq!(billed, expected);
    assert_eq!(s.double.metered_records().len(), 7, "each hour billed once");
    // Each stored record carries AWS's answer.
    let ids: BTreeSet<String> = s
        .double
        .metered_records()
        .iter()
        .map(|r| r.metering_record_id.clone())
        .collect();
    for r in s.records().await {
        assert_eq!(r.status, "Success", "{r:?}");
        assert!(
            ids.contains(r.metering_record_id.as_deref().unwrap()),
            "{r:?}"
        );
    }
    // Nothing is due any more: a second pass sends nothing.
    let calls = s.double.calls_of(Operation::BatchMeterUsage).len();
    let (closed, sent) = s.tick_at(s.now).await;
    assert!(closed.hours_closed.is_empty() && sent.calls == 0);
    assert_eq!(s.double.calls_of(Operation::BatchMeterUsage).len(), calls);
    // Usage into a closed hour is refused, not silently lost.
    assert_eq!(
        s.usage("org-a", "k5", 1, s.at(2, 30)).await.refusal,
        Some(Refusal::HourClosed)
    );
    assert_no_different_resend(&s.double);
    s.db.cleanup().await;
}

async fn throttling_and_unprocessed_records_are_retried(backend: Backend) {
    let s = Story::new(backend).await;
    s.subscribed("org-a", "cust-a").await;
    s.usage("org-a", "k1", 9, s.at(2, 10)).await;
    s.double
        .fail_next(Operation::BatchMeterUsage, Failure::Throttling, 1);
    let (_, sent) = s.tick_at(s.now).await;
    assert_eq!(sent.failed, 2, "{sent:?}");
    let pending = s.records().await;
    assert!(
        pending.iter().all(|r| r.status == "unsent"
            && r.last_error
                .as_deref()
                .unwrap_or("")
                .contains("ThrottlingException")),
        "{pending:?}"
    );
    // AWS's code and message, on one short line: never the SDK error's Debug form (the raw
    // response, headers and body bytes).
    for r in &pending {
        let why = r.last_error.as_deref().unwrap_or("");
        assert!(
            why.len() < 300
                && !why.contains('\n')
                && !why.contains("Headers")
                && !why.contains("body"),
            "{why}"
        );
    }

    // The retry after the backoff: one record comes back unprocessed, the other is accepted.
    s.double.unprocess_next_records(1);
    let (_, sent) = s.tick_at(s.now + 1_000).await;
    assert_eq!(
        (sent.answered.get("Success"), sent.failed),
        (Some(&1), 1),
        "{sent:?}"
    );
    let (_, sent) = s.tick_at(s.now + 2_000).await;
    assert_eq!(sent.answered.get("Success"), Some(&1), "{sent:?}");
    assert!(s.records().await.iter().all(|r| r.status == "Success"));
    assert_eq!(s.double.metered_records().len(), 2);
    assert_eq!(s.double.calls_of(Operation::BatchMeterUsage).len(), 3);
    assert_no_different_resend(&s.double);
    s.db.cleanup().await;
}

async fn customer_not_subscribed_stops_that_customer(backend: Backend) {
    let s = Story::new(backend).await;
    s.subscribed("org-a", "cust-a").await;
    s.subscribed("org-b", "cust-b").await;
    s.usage("org-a", "k1", 2, s.at(1, 10)).await;
    s.double.set_not_subscribed("cust-a");
    let (_, sent) = s.tick_at(s.now).await;
    assert_eq!(
        sent.answered.get("CustomerNotSubscribed"),
        Some(&1),
        "{sent:?}"
    );
    assert_eq!(sent.answered.get("Success"), Some(&1), "{sent:?}");
    let ended = s.store().metering_ended().await.unwrap();
    assert_eq!(ended.values().collect::<Vec<_>>(), vec!["not_subscribed"]);
    // Its later usage is refused with the reason, and its later hours are not metered.
    assert_eq!(
        s.usage("org-a", "k2", 1, s.now).await.refusal,
        Some(Refusal::CustomerNotSubscribed)
    );
    let calls_before = sent_records(&s.double)
        .keys()
        .filter(|(c, _, _)| c == "cust-a")
        .count();
    s.tick_at(s.now + HOUR_MS).await;
    let calls_after = sent_records(&s.double)
        .keys()
        .filter(|(c, _, _)| c == "cust-a")
        .count();
    assert_eq!(
        calls_before, calls_after,
        "nothing more sent for the stopped customer"
    );
    assert!(
        sent_records(&s.double)
            .keys()
            .any(|(c, _, h)| c == "cust-b" && *h == hour_of(s.now)),
        "the other customer goes on"
    );
    s.db.cleanup().await;
}

async fn a_record_past_the_window_is_never_sent_and_surfaced(backend: Backend) {
    let s = Story::new(backend).await;
    s.subscribed("org-a", "cust-a").await;
    s.usage("org-a", "k1", 4, s.at(3, 0)).await;
    // AWS fails every call until the records are too old to send.
    s.double.fail_next(
        Operation::BatchMeterUsage,
        Failure::InternalServiceError,
        100,
    );
    s.tick_at(s.now).await;
    assert!(s.records().await.iter().all(|r| r.status == "unsent"));
    let calls = s.double.calls_of(Operation::BatchMeterUsage).len();
    let (_, sent) = s.tick_at(s.now + 4 * HOUR_MS).await;
    let expired: Vec<(i64, i64)> = sent
        .expired
        .iter()
        .map(|r| (r.usage_hour, r.quantity))
        .collect();
    assert!(expired.contains(&(s.at(3, 0), 4)), "{expired:?}");
    let stats = s.store().meter_stats().await.unwrap();
    assert!(
        stats.by_status.get("expired").copied().unwrap_or(0) >= 1,
        "{stats:?}"
    );
    // The expired records were never offered again.
    let resent: usize = s.double.calls_of(Operation::BatchMeterUsage)[calls..]
        .iter()
        .map(|c| {
            c.input["UsageRecords"].as_array().map_or(0, |a| {
                a.iter()
                    .filter(|r| {
                        hour_of((r["Timestamp"].as_f64().unwrap() * 1000.0) as i64) == s.at(3, 0)
                    })
                    .count()
            })
        })
        .sum();
    assert_eq!(resent, 0);
    assert!(s
        .double
        .metered_records()
        .iter()
        .all(|r| r.hour.timestamp_millis() != s.at(3, 0)));
    s.db.cleanup().await;
}

async fn two_replicas_send_each_hour_once(backend: Backend) {
    let s = Story::new(backend).await;
    for i in 0..30 {
        s.subscribed(&format!("org-{i}"), &format!("cust-{i}"))
            .await;
        s.usage(&format!("org-{i}"), &format!("k{i}"), i, s.at(2, 5))
            .await;
    }
    let other = s.db.another_store().await;
    let config2 = config("replica-2");
    for round in 0..3 {
        let now = s.now + round * 1_000;
        let (a, b) = tokio::join!(
            tick(s.store(), &s.client, &s.config, now),
            tick(&other, &s.client, &config2, now)
        );
        a.unwrap();
        b.unwrap();
    }
    let sent = sent_records(&s.double);
    // 30 customers × 2 closed hours, each sent exactly once between the two replicas.
    assert_eq!(sent.len(), 60);
    assert!(sent.values().all(|q| q.len() == 1), "{sent:?}");
    assert_eq!(s.double.metered_records().len(), 60);
    assert!(s.records().await.iter().all(|r| r.status == "Success"));
    other.close().await;
    s.db.cleanup().await;
}

async fn seed_story_with_usage(backend: Backend) {
    let s = Story::new(backend).await;
    s.subscribed("org-1", "cust-1").await;
    for (i, hours_back) in [3, 2, 1].into_iter().enumerate() {
        let r = s
            .usage(
                "org-1",
                &format!("u{i}"),
                10 + i as i64,
                s.at(hours_back, 20),
            )
            .await;
        assert!(r.accepted);
    }
    // Usage in the current hour, then the customer cancels.
    assert!(s.usage("org-1", "u-now", 2, s.now - 1).await.accepted);
    s.event("cancel-1", "unsubscribe-pending", "cust-1", s.now)
        .await;
    let (closed, sent) = s.tick_at(s.now).await;
    assert_eq!(closed.finals_closed.len(), 1, "{closed:?}");
    assert!(sent.failed == 0 && sent.expired.is_empty(), "{sent:?}");
    let billed: BTreeMap<i64, i64> = s.billed().into_iter().collect();
    let expected: BTreeMap<i64, i64> = [
        (s.at(3, 0), 10),
        (s.at(2, 0), 11),
        (s.at(1, 0), 12),
        (hour_of(s.now), 2),
    ]
    .into_iter()
    .collect();
    assert_eq!(
        billed, expected,
        "every hour, the partial one included, metered once"
    );
    let finals: Vec<MeterRecord> = s
        .records()
        .await
        .into_iter()
        .filter(|r| r.final_usage)
        .collect();
    assert!(!finals.is_empty());
    for f in &finals {
        assert!(
            f.sent_at.unwrap() - f.created_at < HOUR_MS,
            "final usage sent inside the window: {f:?}"
        );
    }
    // After the cancellation, usage is refused and counted; nothing more is sent.
    assert_eq!(
        s.usage("org-1", "late", 1, s.now).await.refusal,
        Some(Refusal::SubscriptionCancelled)
    );
    s.event("cancel-2", "unsubscribe-success", "cust-1", s.now + 1)
        .await;
    assert_eq!(
        s.usage("org-1", "later", 1, s.now).await.refusal,
        Some(Refusal::SubscriptionCancelled)
    );
    let calls = s.double.calls_of(Operation::BatchMeterUsage).len();
    s.tick_at(s.now + HOUR_MS).await;
    assert_eq!(s.double.calls_of(Operation::BatchMeterUsage).len(), calls);
    let stats = s.store().meter_stats().await.unwrap();
    assert_eq!(stats.refused.get("subscription_cancelled"), Some(&2));
    // The customer subscribes again (same legacy subscription key): metering reopens, and usage
    // for the hour the final close already sent is refused rather than dropped.
    s.event("resub", "subscribe-success", "cust-1", s.now + 2)
        .await;
    assert_eq!(
        s.usage("org-1", "again", 1, s.now + 3).await.refusal,
        Some(Refusal::HourClosed)
    );
    assert!(
        s.store().metering_ended().await.unwrap().is_empty(),
        "metering reopened"
    );
    assert_no_different_resend(&s.double);
    s.db.cleanup().await;
}

async fn a_crash_between_answer_and_commit_resends_identical_records(backend: Backend) {
    crate::common::require_failpoints();
    let s = Story::new(backend).await;
    s.subscribed("org-a", "cust-a").await;
    s.usage("org-a", "k1", 6, s.at(2, 0)).await;
    // Tagged usage too: its allocations are part of what must be resent identically.
    s.usage_tagged("org-a", "k1-tagged", 4, s.at(2, 5), &[("project", "alpha")])
        .await
        .unwrap();
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_mplink"))
        .args([
            "meter",
            "send",
            "--meter-zero-dimension",
            DIM,
            "--meter-close-grace",
            "0",
            "--meter-lease",
            "1",
        ])
        .env("MPLINK_DATABASE_URL", s.db.url.expose())
        .env(
            "AWS_ENDPOINT_URL_MARKETPLACE_METERING",
            s.double.endpoint_url(),
        )
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_REGION", "us-east-1")
        .env("MPLINK_FAILPOINT_ABORT_AFTER_METERING", "1")
        .status()
        .unwrap();
    assert!(!status.success(), "the failpoint aborted the sender");
    assert_eq!(s.double.metered_records().len(), 2, "AWS took the records");
    assert!(
        s.records()
            .await
            .iter()
            .all(|r| r.status == "unsent" && r.metering_record_id.is_none()),
        "the answer was never stored"
    );
    // Once the child's lease ran out, this process resends: the very same records.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let (_, sent) = s.tick_at(now_ms()).await;
    assert_eq!(sent.answered.get("Success"), Some(&2), "{sent:?}");
    let calls = s.double.calls_of(Operation::BatchMeterUsage);
    assert_eq!(calls.len(), 2);
    assert_eq!(
        calls[0].input["UsageRecords"], calls[1].input["UsageRecords"],
        "identical resend"
    );
    assert!(
        calls[0].input["UsageRecords"]
            .as_array()
            .is_some_and(|records| records.iter().any(|r| r["UsageAllocations"].is_array())),
        "the resend compared carries allocations: {}",
        calls[0].input
    );
    assert_eq!(s.double.metered_records().len(), 2, "nothing billed twice");
    assert_no_different_resend(&s.double);
    // The check above catches a resend with another quantity (the failure it guards against).
    let hour = s.at(2, 0) + 1_000;
    s.client
        .batch_meter_usage()
        .product_code(PRODUCT)
        .usage_records(
            aws_sdk_marketplacemetering::types::UsageRecord::builder()
                .timestamp(aws_sdk_marketplacemetering::primitives::DateTime::from_millis(hour))
                .customer_identifier("cust-a")
                .dimension(DIM)
                .quantity(7)
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    let caught = std::panic::catch_unwind(|| assert_no_different_resend(&s.double));
    assert!(
        caught.is_err(),
        "a different quantity for a sent hour is caught"
    );
    s.db.cleanup().await;
}

fn mplink(db: &TestDb, args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mplink"))
        .args(args)
        .env("MPLINK_DATABASE_URL", db.url.expose())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn usage_and_meter_commands() {
    let s = Story::new(Backend::Sqlite).await;
    s.subscribed("org-a", "cust-a").await;
    let time = mplink::metering::send::rfc3339(s.at(1, 10));
    let record = |key: &str, org: &str, quantity: &str| {
        mplink(
            &s.db,
            &[
                "usage",
                "record",
                "--org",
                org,
                "--dimension",
                DIM,
                &format!("--quantity={quantity}"),
                "--time",
                &time,
                "--key",
                key,
                "--json",
            ],
        )
    };
    let (code, out, err) = record("cli-1", "org-a", "3");
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(
        (v["accepted"].as_bool(), v["replayed"].as_bool()),
        (Some(true), Some(false))
    );
    let (code, out, _) = record("cli-1", "org-a", "3");
    assert_eq!(code, 0);
    assert!(out.contains("\"replayed\":true"), "{out}");
    let (code, out, _) = record("cli-2", "org-unknown", "3");
    assert_eq!(code, i32::from(mplink::cli::EXIT_REFUSED));
    assert!(out.contains("not_linked"), "{out}");
    let (code, _, err) = record("cli-3", "org-a", "-1");
    assert_eq!(code, 1);
    assert!(err.contains("quantity"), "{err}");
    let (code, _, err) = record("cli-1", "org-a", "4");
    assert_eq!(code, 1, "a key reused for another report is an error");
    assert!(err.contains("already used"), "{err}");

    s.tick_at(s.now).await;
    let (code, out, err) = mplink(&s.db, &["meter", "status", "--json"]);
    assert_eq!(code, 0, "{err}");
    let rows: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let hour = rows
        .iter()
        .find(|r| r["hour"] == mplink::metering::send::rfc3339(s.at(1, 0)))
        .expect("the hour's record");
    assert_eq!(
        (hour["quantity"].as_i64(), hour["status"].as_str()),
        (Some(3), Some("Success"))
    );
    let (code, out, _) = mplink(&s.db, &["meter", "status"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("Success") && out.contains("usage refused: not_linked 1"),
        "{out}"
    );
    let (code, out, _) = mplink(&s.db, &["meter", "retry"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("0 records"), "{out}");
    s.db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_loop_meters_until_shutdown() {
    let s = Story::new(Backend::Sqlite).await;
    s.subscribed("org-a", "cust-a").await;
    s.usage("org-a", "k1", 8, s.at(1, 10)).await;
    let stop = tokio_util::sync::CancellationToken::new();
    let metrics = mplink::metrics::Metrics::new();
    let meter = mplink::metering::runner::MeterMetrics::new(&metrics).unwrap();
    let config = MeterConfig {
        tick: Duration::from_millis(50),
        ..s.config.clone()
    };
    // AWS throttles the first pass; a later one succeeds.
    s.double
        .fail_next(Operation::BatchMeterUsage, Failure::Throttling, 1);
    let task = tokio::spawn(mplink::metering::runner::run(
        s.store().clone(),
        s.client.clone(),
        config,
        Some(meter.clone()),
        stop.clone(),
    ));
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while s.double.metered_records().is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the loop never metered"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("the loop stops on shutdown")
        .unwrap();
    assert_eq!(s.double.metered_records()[0].quantity, 8);
    assert_eq!(meter.answers.with_label_values(&["Success"]).get(), 1);
    s.db.cleanup().await;
}

/// `mplink run --meter`: the worker process meters too (one pass before an idle queue ends it),
/// with LocalStack's SQS for the queue and the double for metering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_meters_with_its_flag() {
    let s = Story::new(Backend::Sqlite).await;
    s.subscribed("org-a", "cust-a").await;
    s.usage("org-a", "k1", 4, s.at(1, 10)).await;
    let out = crate::common::localstack::run_worker_once(
        s.db.url.expose(),
        &[
            "--meter",
            "--meter-zero-dimension",
            DIM,
            "--meter-close-grace",
            "0",
        ],
        &[(
            "AWS_ENDPOINT_URL_MARKETPLACE_METERING",
            s.double.endpoint_url(),
        )],
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let billed = s.billed();
    assert_eq!(billed, vec![(s.at(1, 0), 4)]);
    let records = s.records().await;
    assert!(
        records.iter().all(|r| r.status == "Success"),
        "{records:#?}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    s.db.cleanup().await;
}

/// Hosts that write SQL: rows inserted as `submitted` are decided by the loop like any report.
#[tokio::test]
async fn usage_rows_written_with_sql_are_decided_and_metered() {
    let s = Story::new(Backend::Sqlite).await;
    s.subscribed("org-a", "cust-a").await;
    for (key, org, quantity) in [
        ("sql-1", "org-a", 6),
        ("sql-2", "org-a", -5),
        ("sql-3", "org-x", 1),
    ] {
        sqlx::query(
            "INSERT INTO mplink_usage (idempotency_key, org_id, sub_key, dimension, quantity, usage_time, \
             usage_hour, status, reason, recorded_at) VALUES ($1, $2, NULL, $3, $4, $5, 0, 'submitted', NULL, $6)",
        )
        .bind(key)
        .bind(org)
        .bind(DIM)
        .bind(quantity)
        .bind(s.at(1, 20))
        .bind(s.now)
        .execute(s.store().pool())
        .await
        .unwrap();
    }
    s.tick_at(s.now).await;
    let rows: BTreeMap<String, (String, Option<String>, i64)> = s
        .store()
        .usage_reports(100)
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.idempotency_key, (r.status, r.reason, r.usage_hour)))
        .collect();
    assert_eq!(rows["sql-1"], ("accepted".to_string(), None, s.at(1, 0)));
    assert_eq!(rows["sql-2"].1.as_deref(), Some("invalid_quantity"));
    assert_eq!(rows["sql-3"].1.as_deref(), Some("not_linked"));
    let billed = s.billed();
    assert_eq!(billed, vec![(s.at(1, 0), 6)]);
    s.db.cleanup().await;
}

#[tokio::test]
async fn metering_figures_reach_the_metrics() {
    let s = Story::new(Backend::Sqlite).await;
    s.subscribed("org-a", "cust-a").await;
    s.usage("org-a", "k1", 5, s.at(1, 10)).await;
    s.usage("org-x", "k2", 5, s.at(1, 10)).await;
    let metrics = mplink::metrics::Metrics::new();
    let meter = mplink::metering::runner::MeterMetrics::new(&metrics).unwrap();
    s.double
        .fail_next(Operation::BatchMeterUsage, Failure::Throttling, 1);
    s.tick_at(s.now).await;
    meter.refresh(s.store(), s.now).await.unwrap();
    let text = metrics.render();
    assert!(
        text.contains("mplink_meter_records{status=\"unsent\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("mplink_usage_refused{reason=\"not_linked\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("mplink_meter_final_window_seconds_left 3600"),
        "{text}"
    );
    let age = meter.oldest_unsent_age_seconds.get();
    assert!((0..=3600).contains(&age), "{age}");
    s.tick_at(s.now + 1_000).await;
    meter.refresh(s.store(), s.now).await.unwrap();
    let text = metrics.render();
    assert!(
        text.contains("mplink_meter_records{status=\"unsent\"} 0"),
        "{text}"
    );
    assert!(
        text.contains("mplink_meter_records{status=\"Success\"} 1"),
        "{text}"
    );
    assert_eq!(meter.oldest_unsent_age_seconds.get(), 0);
    s.db.cleanup().await;
}

/// The seed story on a new (EventBridge) listing: the records name the buyer by
/// `CustomerAWSAccountId` + `LicenseArn`, and a deprovisioned license after the cancellation
/// sends nothing more.
async fn seed_story_on_an_eventbridge_listing(backend: Backend) {
    let s = Story::new(backend).await;
    let (agmt, account) = ("agmt-meter-1", "845735284135");
    let license = "arn:aws:license-manager::123456789012:license:l-meter0000000000000000000001";
    s.store()
        .link(&LinkRequest {
            org_id: "org-eb".into(),
            product_code: PRODUCT.into(),
            customer_identifier: None,
            customer_aws_account_id: Some(account.into()),
            license_arn: Some(license.into()),
            requested_at_ms: s.now - 5 * HOUR_MS,
        })
        .await
        .unwrap();
    s.double.add_customer(
        "tok-eb",
        ResolvedCustomer {
            customer_aws_account_id: account.into(),
            license_arn: license.into(),
            product_code: PRODUCT.into(),
            customer_identifier: None,
            agreement_id: Some(agmt.into()),
        },
    );
    let t = s.now - 4 * HOUR_MS;
    for (id, body) in [
        (
            "c-p",
            agreement_body(
                "c-p",
                "Created",
                "Proposer",
                agmt,
                account,
                serde_json::json!({"intent": "NEW", "status": "ACTIVE"}),
                t,
            ),
        ),
        (
            "l-1",
            license_body(
                "l-1",
                "Updated",
                agmt,
                PRODUCT,
                license,
                account,
                t + 60_000,
            ),
        ),
    ] {
        s.store().apply(&decoded(id, &body), &body).await.unwrap();
    }
    for (i, hours_back) in [3, 2, 1].into_iter().enumerate() {
        assert!(
            s.usage(
                "org-eb",
                &format!("u{i}"),
                1 + i as i64,
                s.at(hours_back, 30)
            )
            .await
            .accepted
        );
    }
    let ended = agreement_body(
        "e-p",
        "Ended",
        "Proposer",
        agmt,
        account,
        serde_json::json!({"status": "CANCELLED"}),
        s.now - 1_000,
    );
    s.store()
        .apply(&decoded("e-p", &ended), &ended)
        .await
        .unwrap();
    let (closed, sent) = s.tick_at(s.now).await;
    assert_eq!(closed.finals_closed.len(), 1, "{closed:?}");
    assert_eq!(sent.failed, 0, "{sent:?}");
    for call in s.double.calls_of(Operation::BatchMeterUsage) {
        for r in call.input["UsageRecords"].as_array().unwrap() {
            assert_eq!(r["CustomerAWSAccountId"], account);
            assert_eq!(r["LicenseArn"], license);
            assert_eq!(
                r["CustomerIdentifier"], "",
                "new integrations send no CustomerIdentifier"
            );
        }
    }
    let billed: BTreeMap<i64, i64> = s.billed().into_iter().collect();
    let expected: BTreeMap<i64, i64> = [
        (s.at(3, 0), 1),
        (s.at(2, 0), 2),
        (s.at(1, 0), 3),
        (hour_of(s.now), 0),
    ]
    .into_iter()
    .collect();
    assert_eq!(billed, expected);
    let gone = license_body(
        "l-2",
        "Deprovisioned",
        agmt,
        PRODUCT,
        license,
        account,
        s.now,
    );
    s.store()
        .apply(&decoded("l-2", &gone), &gone)
        .await
        .unwrap();
    assert_eq!(
        s.usage("org-eb", "late", 1, s.now).await.refusal,
        Some(Refusal::SubscriptionCancelled)
    );
    let calls = s.double.calls_of(Operation::BatchMeterUsage).len();
    s.tick_at(s.now + HOUR_MS).await;
    assert_eq!(s.double.calls_of(Operation::BatchMeterUsage).len(), calls);
    assert_no_different_resend(&s.double);
    s.db.cleanup().await;
}

/// Usage with three tag sets and some untagged in one hour reaches AWS as one record whose
/// allocations add up to its quantity, one per tag set; the same key with other tags is
/// refused; a tag AWS would refuse is refused here, naming the rule.
async fn usage_allocations_split_an_hour_by_tag_set(backend: Backend) {
    let s = Story::new(backend).await;
    s.subscribed("org-a", "cust-a").await;
    let alpha = [("project", "alpha")];
    let beta = [("project", "beta"), ("env", "prod")];
    let team = [("team", "db/core")];
    for (key, quantity, minute, tags) in [
        ("t1", 5, 10, &alpha[..]),
        ("t2", 7, 20, &beta[..]),
        ("t3", 2, 30, &alpha[..]),
        ("t4", 4, 40, &team[..]),
        ("t5", 3, 50, &[][..]),
    ] {
        let r = s
            .usage_tagged("org-a", key, quantity, s.at(2, minute), tags)
            .await;
        assert!(r.unwrap().accepted);
    }
    let reused = s.usage_tagged("org-a", "t1", 5, s.at(2, 10), &beta).await;
    assert!(
        matches!(
            reused,
            Err(mplink::metering::MeteringError::KeyReused { .. })
        ),
        "{reused:?}"
    );
    let bad = s
        .usage_tagged("org-a", "t6", 1, s.at(2, 10), &[("project", "a|b")])
        .await;
    assert!(
        matches!(
            &bad,
            Err(mplink::metering::MeteringError::Invalid { field: "tags", .. })
        ),
        "{bad:?}"
    );
    // The organization's view before the hour closed: counted, split, not sent yet.
    let hour = s.at(2, 0);
    let view = |page: mplink::store::OrgUsagePage| {
        page.hours
            .into_iter()
            .find(|h| h.usage_hour == hour && h.dimension == DIM)
            .expect("the hour in the organization's usage")
    };
    let before = view(
        s.store()
            .org_usage("org-a", hour, hour + HOUR_MS, 24)
            .await
            .unwrap(),
    );
    assert_eq!((before.accepted, before.by_tags.len()), (21, 4));
    assert_eq!(
        mplink::metering::record_fate(before.record.as_ref().map(|r| r.status.as_str())),
        "open"
    );
    s.tick_at(s.now).await;
    let after = view(
        s.store()
            .org_usage("org-a", hour, hour + HOUR_MS, 24)
            .await
            .unwrap(),
    );
    let sent = after.record.expect("the hour's record");
    assert_eq!(mplink::metering::record_fate(Some(&sent.status)), "sent");
    assert_eq!(sent.quantity, 21);
    assert!(sent.metering_record_id.is_some());
    assert_eq!(after.by_tags, before.by_tags);
    let record = s
        .double
        .metered_records()
        .into_iter()
        .find(|r| r.hour.timestamp_millis() == hour && r.dimension == DIM)
        .expect("the hour's record reached AWS");
    assert_eq!(record.quantity, 21);
    let mut got: BTreeMap<BTreeMap<String, String>, i64> = BTreeMap::new();
    for a in record
        .usage_allocations
        .as_ref()
        .and_then(|v| v.as_array())
        .expect("allocations")
    {
        let tags = a["Tags"]
            .as_array()
            .map(|t| {
                t.iter()
                    .map(|t| {
                        (
                            t["Key"].as_str().unwrap().to_string(),
                            t["Value"].as_str().unwrap().to_string(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        *got.entry(tags).or_default() += a["AllocatedUsageQuantity"].as_i64().unwrap();
    }
    let set = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    let expected: BTreeMap<_, _> = [
        (set(&alpha), 7),
        (set(&beta), 7),
        (set(&team), 4),
        (set(&[]), 3),
    ]
    .into_iter()
    .collect();
    assert_eq!(got, expected);
    assert_eq!(got.values().sum::<i64>(), record.quantity);
    assert_no_different_resend(&s.double);
    s.db.cleanup().await;
}

both_backends! {
    usage_allocations_split_an_hour_by_tag_set => usage_allocations_split_an_hour_by_tag_set;
    seed_story_on_an_eventbridge_listing => seed_story_on_an_eventbridge_listing;
    meters_each_hour_once_with_zero_records => meters_each_hour_once_with_zero_records;
    throttling_and_unprocessed_records_are_retried => throttling_and_unprocessed_records_are_retried;
    customer_not_subscribed_stops_that_customer => customer_not_subscribed_stops_that_customer;
    a_record_past_the_window_is_never_sent_and_surfaced => a_record_past_the_window_is_never_sent_and_surfaced;
    two_replicas_send_each_hour_once => two_replicas_send_each_hour_once;
    seed_story_with_usage => seed_story_with_usage;
    a_crash_between_answer_and_commit_resends_identical_records => a_crash_between_answer_and_commit_resends_identical_records;
}
