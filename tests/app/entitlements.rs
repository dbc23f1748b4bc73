//! Contract entitlements end to end: events and links ask for a check, the entitlement loop asks
//! AWS through the real `aws-sdk-marketplaceentitlement` client (Smithy RPC v2 CBOR) against the
//! local double, and the answer is stored by the event time it stands for, shown on the billing
//! view and announced as `link.entitlements_changed`; on SQLite and PostgreSQL.

use crate::common::*;
use mplink::api::routes::billing::load as billing;
use mplink::entitlement::EntitlementView;
use mplink::entitlements::{refresh_due, EntitlementConfig, RefreshSummary};
use mplink::ledger::LinkRequest;
use mplink::store::Store;
use mplink::time::{now_ms, rfc3339_millis};
use mplink_marketplace_double::clients::entitlement as entitlement_client;
use mplink_marketplace_double::{
    Entitlement, EntitlementValue, Failure, MarketplaceDouble, Operation,
};
use std::time::Duration;

const PRODUCT: &str = "prod-contract-1";
const DAY_MS: i64 = 86_400_000;

struct Story {
    db: TestDb,
    double: MarketplaceDouble,
    client: aws_sdk_marketplaceentitlement::Client,
    config: EntitlementConfig,
    now: i64,
}

impl Story {
    async fn new(backend: Backend) -> Story {
        let double = MarketplaceDouble::start("127.0.0.1:0").await.unwrap();
        let client = entitlement_client(&double).await;
        Story {
            db: TestDb::new(backend).await,
            double,
            client,
            config: EntitlementConfig {
                owner: "replica-1".into(),
                backoff_base: Duration::from_millis(10),
                backoff_cap: Duration::from_millis(20),
                ..EntitlementConfig::default()
            },
            now: now_ms(),
        }
    }

    fn store(&self) -> &Store {
        &self.db.store
    }

    async fn link(&self, org: &str, customer: &str) {
        self.store()
            .link(&LinkRequest {
                org_id: org.into(),
                product_code: PRODUCT.into(),
                customer_identifier: Some(customer.into()),
                customer_aws_account_id: None,
                license_arn: None,
                requested_at_ms: self.now - 5 * DAY_MS,
            })
            .await
            .unwrap();
    }

    async fn event(&self, id: &str, action: &str, customer: &str, at: i64) {
        let body = sns_body(id, action, PRODUCT, customer, at);
        self.store()
            .apply(&decoded(id, &body), &body)
            .await
            .unwrap();
    }

    async fn body(&self, id: &str, body: String) {
        self.store()
            .apply(&decoded(id, &body), &body)
            .await
            .unwrap();
    }

    async fn refresh(&self) -> RefreshSummary {
        refresh_due(self.store(), &self.client, &self.config, now_ms())
            .await
            .unwrap()
    }

    /// The billing view's entitlements of `org`: (as of, refreshing, items).
    async fn shown(&self, org: &str) -> Option<(Option<String>, bool, Vec<EntitlementView>)> {
        billing(self.store(), org)
            .await
            .unwrap()
            .entitlements
            .map(|e| (e.as_of, e.refreshing, e.items))
    }

    fn calls(&self) -> usize {
        self.double.calls_of(Operation::GetEntitlements).len()
    }

    /// The outbox's rows of `org`, as (type, state after, cause).
    async fn told(&self, org: &str) -> Vec<(String, Option<String>, String)> {
        self.store()
            .outbox_after(0, 1000)
            .await
            .unwrap()
            .into_iter()
            .filter(|r| r.org_id == org)
            .map(|r| (r.event_type, r.state_after, r.cause))
            .collect()
    }
}

/// A legacy customer's entitlement of `dimension`.
fn legacy(
    customer: &str,
    dimension: &str,
    value: EntitlementValue,
    expires: Option<i64>,
) -> Entitlement {
    Entitlement {
        product_code: PRODUCT.into(),
        dimension: dimension.into(),
        customer_aws_account_id: format!("acct-{customer}"),
        license_arn: None,
        customer_identifier: Some(customer.into()),
        value,
        expiration_date: expires.map(|t| chrono::DateTime::from_timestamp_millis(t).unwrap()),
    }
}

fn item(
    dimension: &str,
    value: serde_json::Value,
    expires: Option<i64>,
    expired: bool,
) -> EntitlementView {
    EntitlementView {
        dimension: dimension.into(),
        value_type: match &value {
            serde_json::Value::Bool(_) => "boolean",
            serde_json::Value::String(_) => "string",
            v if v.is_i64() => "integer",
            _ => "double",
        },
        value,
        expires_at: expires.map(rfc3339_millis),
        expired,
    }
}

async fn asked_stored_and_updated_by_event_time(backend: Backend) {
    let s = Story::new(backend).await;
    // Whole seconds: the SNS timestamp keeps milliseconds, the CBOR ExpirationDate seconds.
    let ends = (s.now + 90 * DAY_MS) / 1000 * 1000;
    let t1 = s.now - 3 * DAY_MS;
    s.link("org-a", "cust-a").await;
    s.double.add_entitlement(legacy(
        "cust-a",
        "seats",
        EntitlementValue::Integer(10),
        Some(ends),
    ));
    s.double.add_entitlement(legacy(
        "cust-a",
        "tier",
        EntitlementValue::String("gold".into()),
        None,
    ));
    assert_eq!(s.shown("org-a").await, None, "nothing asked while syncing");
    s.event("sub-a", "subscribe-success", "cust-a", t1).await;

    let first = s.refresh().await;
    assert_eq!(
        (
            first.claimed,
            first.answered,
            first.changed,
            first.notified,
            first.calls
        ),
        (1, 1, 1, 1, 1),
        "{first:?}"
    );
    let seats10 = item("seats", serde_json::json!(10), Some(ends), false);
    let gold = item("tier", serde_json::json!("gold"), None, false);
    assert_eq!(
        s.shown("org-a").await,
        Some((
            Some(rfc3339_millis(t1)),
            false,
            vec![seats10.clone(), gold.clone()]
        ))
    );
    // status --json carries them too, by organization and in the whole-ledger view.
    let by_org = s
        .store()
        .status(&mplink::store::StatusFilter {
            org_id: Some("org-a".into()),
            customer_identifier: None,
        })
        .await
        .unwrap();
    assert_eq!(
        by_org[0].entitlements,
        Some(vec![seats10.clone(), gold.clone()])
    );
    let whole = s.store().status(&Default::default()).await.unwrap();
    assert_eq!(whole.len(), 1);
    assert_eq!(whole[0].entitlements, by_org[0].entitlements);
    let json = serde_json::to_value(&whole[0]).unwrap();
    assert_eq!(json["entitlements"][0]["dimension"], "seats", "{json}");
    let cause1 = format!("entitlements:cust:{PRODUCT}:cust-a:{t1}");
    assert_eq!(
        s.told("org-a").await.last().cloned(),
        Some((
            "link.entitlements_changed".into(),
            Some("linked".into()),
            cause1
        ))
    );
    // Answered: nothing is due, no call, however often the loop looks.
    let idle = s.refresh().await;
    assert_eq!((idle.claimed, idle.calls), (0, 0), "{idle:?}");

    // The contract grows: AWS says so with entitlement-updated.
    let t2 = t1 + DAY_MS;
    s.double.remove_entitlements("cust-a");
    s.double.add_entitlement(legacy(
        "cust-a",
        "seats",
        EntitlementValue::Integer(20),
        Some(ends),
    ));
    s.double.add_entitlement(legacy(
        "cust-a",
        "tier",
        EntitlementValue::String("gold".into()),
        None,
    ));
    s.event("ent-a-2", "entitlement-updated", "cust-a", t2)
        .await;
    let second = s.refresh().await;
    assert_eq!(
        (second.answered, second.changed, second.notified),
        (1, 1, 1),
        "{second:?}"
    );
    let seats20 = item("seats", serde_json::json!(20), Some(ends), false);
    assert_eq!(
        s.shown("org-a").await,
        Some((
            Some(rfc3339_millis(t2)),
            false,
            vec![seats20.clone(), gold.clone()]
        ))
    );

    // An older event delivered late asks nothing: the newer answer stands.
    s.event("ent-a-0", "entitlement-updated", "cust-a", t1 - DAY_MS)
        .await;
    // The same delivery again is a duplicate: nothing asked either.
    s.event("ent-a-2", "entitlement-updated", "cust-a", t2)
        .await;
    let late = s.refresh().await;
    assert_eq!((late.claimed, late.calls), (0, 0), "{late:?}");

    // A newer event with the same answer: stored as of it, nobody told again.
    let t3 = t2 + DAY_MS;
    s.event("ent-a-3", "entitlement-updated", "cust-a", t3)
        .await;
    let same = s.refresh().await;
    assert_eq!(
        (same.answered, same.changed, same.notified),
        (1, 0, 0),
        "{same:?}"
    );
    assert_eq!(
        s.shown("org-a").await,
        Some((Some(rfc3339_millis(t3)), false, vec![seats20, gold]))
    );
    let changes = s
        .told("org-a")
        .await
        .iter()
        .filter(|r| r.0 == "link.entitlements_changed")
        .count();
    assert_eq!(changes, 2, "one row per change, none for the same answer");
    s.db.cleanup().await;
}

async fn an_empty_answer_is_a_fact_and_expiry_is_honoured(backend: Backend) {
    let s = Story::new(backend).await;
    let t = s.now - DAY_MS;
    // Confirmed before the link: the confirmation and the link both ask; one answer.
    s.event("sub-b", "subscribe-success", "cust-b", t).await;
    s.link("org-b", "cust-b").await;
    let empty = s.refresh().await;
    assert_eq!(
        (
            empty.claimed,
            empty.answered,
            empty.empty,
            empty.changed,
            empty.notified,
            empty.calls
        ),
        (1, 1, 1, 0, 0, 1),
        "{empty:?}"
    );
    assert_eq!(
        s.shown("org-b").await,
        Some((Some(rfc3339_millis(t)), false, Vec::new())),
        "no entitlement, and AWS said so"
    );
    // Not a retry loop: the empty answer is final until another event asks.
    for _ in 0..3 {
        let again = s.refresh().await;
        assert_eq!((again.claimed, again.calls), (0, 0), "{again:?}");
    }

    // A contract that already ended: kept as AWS said it, shown as no longer in force.
    let ended = (s.now - 2 * DAY_MS) / 1000 * 1000;
    s.double.add_entitlement(legacy(
        "cust-c",
        "storage_gb",
        EntitlementValue::Double(2.5),
        Some(ended),
    ));
    s.double.add_entitlement(legacy(
        "cust-c",
        "sso",
        EntitlementValue::Boolean(true),
        None,
    ));
    s.event("sub-c", "subscribe-success", "cust-c", t).await;
    s.link("org-c", "cust-c").await;
    s.refresh().await;
    assert_eq!(
        s.shown("org-c").await,
        Some((
            Some(rfc3339_millis(t)),
            false,
            vec![
                item("sso", serde_json::json!(true), None, false),
                item("storage_gb", serde_json::json!(2.5), Some(ended), true),
            ]
        ))
    );
    s.db.cleanup().await;
}

async fn throttling_is_retried_and_every_page_is_read(backend: Backend) {
    let s = Story::new(backend).await;
    let t = s.now - DAY_MS;
    for i in 0..30 {
        s.double.add_entitlement(legacy(
            "cust-d",
            &format!("d{i:02}"),
            EntitlementValue::Integer(i),
            None,
        ));
    }
    s.link("org-d", "cust-d").await;
    s.event("sub-d", "subscribe-success", "cust-d", t).await;
    s.double
        .fail_next(Operation::GetEntitlements, Failure::Throttling, 1);
    let throttled = s.refresh().await;
    assert_eq!(
        (
            throttled.answered,
            throttled.failed.clone(),
            throttled.calls
        ),
        (0, vec!["aws_error"], 1),
        "{throttled:?}"
    );
    let key = format!("cust:{PRODUCT}:cust-d");
    let set = s.store().entitlements(&key).await.unwrap().unwrap();
    assert!(set.refreshing && set.as_of_ms.is_none(), "{set:?}");
    let error = set.last_error.unwrap();
    assert!(error.contains("ThrottlingException"), "{error}");
    assert_eq!(s.shown("org-d").await, Some((None, true, Vec::new())));

    // After the backoff: both pages, every dimension.
    tokio::time::sleep(Duration::from_millis(30)).await;
    let answered = s.refresh().await;
    assert_eq!((answered.answered, answered.calls), (1, 2), "{answered:?}");
    let (_, _, items) = s.shown("org-d").await.unwrap();
    assert_eq!(items.len(), 30);
    assert_eq!(items[29], item("d29", serde_json::json!(29), None, false));
    assert!(s
        .store()
        .entitlements(&key)
        .await
        .unwrap()
        .unwrap()
        .last_error
        .is_none());

    // An answer longer than the page bound is stored not at all, never in part.
    let bounded = Story {
        config: EntitlementConfig {
            max_pages: 1,
            ..s.config.clone()
        },
        ..s
    };
    bounded
        .event("ent-d-2", "entitlement-updated", "cust-d", t + 1000)
        .await;
    let cut = bounded.refresh().await;
    assert_eq!(cut.failed, vec!["too_many_pages"], "{cut:?}");
    let (as_of, refreshing, items) = bounded.shown("org-d").await.unwrap();
    assert_eq!(
        (as_of, refreshing, items.len()),
        (Some(rfc3339_millis(t)), true, 30)
    );
    bounded.db.cleanup().await;
}

async fn an_agreement_is_asked_by_account_and_kept_to_its_license(backend: Backend) {
    let s = Story::new(backend).await;
    let t = s.now - DAY_MS;
    let account = "111122223333";
    let mine = format!("arn:aws:license-manager::{account}:license:l-mine");
    let other = format!("arn:aws:license-manager::{account}:license:l-other");
    // The account's other license first, and with a dimension of its own: neither may show.
    for (license, dimension, value) in [
        (&other, "seats", 50),
        (&other, "admins", 1),
        (&mine, "seats", 5),
    ] {
        s.double.add_entitlement(Entitlement {
            product_code: PRODUCT.into(),
            dimension: dimension.into(),
            customer_aws_account_id: account.into(),
            license_arn: Some(license.clone()),
            customer_identifier: None,
            value: EntitlementValue::Integer(value),
            expiration_date: None,
        });
    }
    s.store()
        .link(&LinkRequest {
            org_id: "org-e".into(),
            product_code: PRODUCT.into(),
            customer_identifier: None,
            customer_aws_account_id: Some(account.into()),
            license_arn: Some(mine.clone()),
            requested_at_ms: t - DAY_MS,
        })
        .await
        .unwrap();
    // The agreement is confirmed before any event names its product: nothing to ask yet.
    s.body(
        "agmt-e-created",
        agreement_body(
            "agmt-e-created",
            "Created",
            "Proposer",
            "agmt-e",
            account,
            serde_json::json!({}),
            t,
        ),
    )
    .await;
    let early = s.refresh().await;
    assert_eq!(
        (early.failed.clone(), early.calls),
        (vec!["no_product"], 0),
        "{early:?}"
    );
    // License Updated names product and license (spelled as AWS's event spells it).
    let event_arn = format!("aws:license-manager:us-east-1:{account}:l-mine");
    s.body(
        "lic-e",
        license_body(
            "lic-e",
            "Updated",
            "agmt-e",
            PRODUCT,
            &event_arn,
            account,
            t + 1000,
        ),
    )
    .await;
    let answered = s.refresh().await;
    assert_eq!((answered.answered, answered.calls), (1, 1), "{answered:?}");
    let (_, _, items) = s.shown("org-e").await.unwrap();
    assert_eq!(
        items,
        vec![item("seats", serde_json::json!(5), None, false)]
    );
    s.db.cleanup().await;
}

async fn two_replicas_ask_once_per_check(backend: Backend) {
    let s = Story::new(backend).await;
    let t = s.now - DAY_MS;
    for i in 0..6 {
        let customer = format!("cust-r{i}");
        s.double.add_entitlement(legacy(
            &customer,
            "seats",
            EntitlementValue::Integer(i),
            None,
        ));
        s.link(&format!("org-r{i}"), &customer).await;
        s.event(&format!("sub-r{i}"), "subscribe-success", &customer, t)
            .await;
    }
    let other = EntitlementConfig {
        owner: "replica-2".into(),
        batch: 3,
        ..s.config.clone()
    };
    let first = EntitlementConfig {
        batch: 3,
        ..s.config.clone()
    };
    let (a, b) = tokio::join!(
        refresh_due(s.store(), &s.client, &first, now_ms()),
        refresh_due(s.store(), &s.client, &other, now_ms()),
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    let rest = s.refresh().await;
    assert_eq!(
        a.answered + b.answered + rest.answered,
        6,
        "{a:?} {b:?} {rest:?}"
    );
    assert_eq!(s.calls(), 6, "each check asked once");
    let changes = s
        .store()
        .outbox_after(0, 1000)
        .await
        .unwrap()
        .iter()
        .filter(|r| r.event_type == "link.entitlements_changed")
        .count();
    assert_eq!(changes, 6);
    s.db.cleanup().await;
}

/// A contract product's usage must be in a dimension the contract entitles, in force; other
/// products, and a contract AWS has not answered for yet, meter whatever is reported.
async fn usage_outside_a_contract_is_refused_when_the_product_says_so(backend: Backend) {
    use mplink::metering::{record_usage, MeterConfig, Refusal, UsageReport};
    let s = Story::new(backend).await;
    let t = s.now - DAY_MS;
    s.double.add_entitlement(legacy(
        "cust-u",
        "seats",
        EntitlementValue::Integer(10),
        Some(s.now + 30 * DAY_MS),
    ));
    s.double.add_entitlement(legacy(
        "cust-u",
        "storage_gb",
        EntitlementValue::Integer(100),
        Some(s.now - DAY_MS),
    ));
    s.link("org-u", "cust-u").await;
    s.event("sub-u", "subscribe-success", "cust-u", t).await;
    s.link("org-v", "cust-v").await;
    s.event("sub-v", "subscribe-success", "cust-v", t).await;
    let contract = MeterConfig {
        contract_products: vec![PRODUCT.into()],
        ..MeterConfig::default()
    };
    let usage = |org: &str, key: &str, dimension: &str| UsageReport {
        idempotency_key: key.into(),
        org_id: org.into(),
        dimension: dimension.into(),
        quantity: 1,
        time: chrono::DateTime::from_timestamp_millis(s.now - 60_000).unwrap(),
        tags: Default::default(),
    };
    // Before AWS answered: accepted (the loop lagging must not turn usage away).
    let early = record_usage(s.store(), &usage("org-u", "k0", "gpu_hours"), &contract)
        .await
        .unwrap();
    assert!(early.accepted, "{early:?}");
    s.refresh().await;
    for (key, dimension, refusal) in [
        ("k1", "seats", None),
        ("k2", "gpu_hours", Some(Refusal::NotEntitled)),
        ("k3", "storage_gb", Some(Refusal::NotEntitled)),
    ] {
        let got = record_usage(s.store(), &usage("org-u", key, dimension), &contract)
            .await
            .unwrap();
        assert_eq!(got.refusal, refusal, "{dimension}: {got:?}");
        assert_eq!(got.accepted, refusal.is_none());
    }
    // AWS answered "no entitlement" for cust-v: nothing of the contract product is metered.
    let none = record_usage(s.store(), &usage("org-v", "k4", "seats"), &contract)
        .await
        .unwrap();
    assert_eq!(none.refusal, Some(Refusal::NotEntitled), "{none:?}");
    // A product that is not declared a contract meters whatever is reported.
    let plain = record_usage(
        s.store(),
        &usage("org-u", "k5", "gpu_hours"),
        &MeterConfig::default(),
    )
    .await
    .unwrap();
    assert!(plain.accepted, "{plain:?}");
    s.db.cleanup().await;
}

/// `mplink run --entitlements` answers the checks its events asked for, through the SDK's own
/// endpoint variable. Two threads: the double answers while this one waits for the process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_asks_with_its_flag() {
    let s = Story::new(Backend::Sqlite).await;
    let t = s.now - DAY_MS;
    s.double.add_entitlement(legacy(
        "cust-w",
        "seats",
        EntitlementValue::Integer(7),
        None,
    ));
    s.link("org-w", "cust-w").await;
    s.event("sub-w", "subscribe-success", "cust-w", t).await;
    let out = crate::common::localstack::run_worker_once(
        s.db.url.expose(),
        &["--entitlements"],
        &[(
            "AWS_ENDPOINT_URL_MARKETPLACE_ENTITLEMENT_SERVICE",
            s.double.endpoint_url(),
        )],
    )
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(
        s.shown("org-w").await,
        Some((
            Some(rfc3339_millis(t)),
            false,
            vec![item("seats", serde_json::json!(7), None, false)]
        )),
        "{stderr}"
    );
    assert_eq!(s.calls(), 1);
    s.db.cleanup().await;
}

both_backends! {
    asked_stored_and_updated_by_event_time => asked_stored_and_updated_by_event_time;
    an_empty_answer_is_a_fact_and_expiry_is_honoured => an_empty_answer_is_a_fact_and_expiry_is_honoured;
    throttling_is_retried_and_every_page_is_read => throttling_is_retried_and_every_page_is_read;
    an_agreement_is_asked_by_account_and_kept_to_its_license => an_agreement_is_asked_by_account_and_kept_to_its_license;
    two_replicas_ask_once_per_check => two_replicas_ask_once_per_check;
    usage_outside_a_contract_is_refused_when_the_product_says_so => usage_outside_a_contract_is_refused_when_the_product_says_so;
}
