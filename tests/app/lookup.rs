//! Keyed lookups: the paged status view equals the whole-ledger definition on every filter and
//! page size, and on a large PostgreSQL ledger no per-organization operation scans
//! `mplink_subscriptions` (with the indexes dropped, the same operations do: the check can fail).

use crate::common::*;
use mplink::ledger::{LinkRequest, LinkState};
use mplink::store::{status_rows, StatusFilter, StatusRow, Store};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use std::time::Duration;

const PRODUCT: &str = "prod-1234example";
const OTHER_PRODUCT: &str = "prod-5678example";

fn license(n: usize) -> String {
    format!("arn:aws:license-manager::123456789012:license:l-{n:032x}")
}

fn account(n: usize) -> String {
    format!("{:012}", 845_735_284_100 + n)
}

fn link(org: &str, product: &str) -> LinkRequest {
    LinkRequest {
        org_id: org.into(),
        product_code: product.into(),
        customer_identifier: None,
        customer_aws_account_id: None,
        license_arn: None,
        requested_at_ms: T0,
    }
}

/// A ledger with every shape a link can take: legacy customers in two products, agreement
/// chains (renewed twice, renewed once, never), two concurrent agreements of one account, and
/// links by customer, license and account, some naming nothing yet, one moved between orgs.
async fn varied_ledger(store: &Store) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x1dea);
    let actions = [
        "subscribe-success",
        "subscribe-fail",
        "unsubscribe-pending",
        "unsubscribe-success",
    ];
    let mut bodies = Vec::new();
    for c in 0..12 {
        for e in 0..rng.gen_range(1..4) {
            let action = actions.choose(&mut rng).expect("action");
            let t = T0 + rng.gen_range(0..5) * 1_000;
            bodies.push(sns_body(
                &format!("m-{c}-{e}"),
                action,
                PRODUCT,
                &format!("cust-{c}"),
                t,
            ));
        }
    }
    bodies.push(sns_body(
        "m-other",
        "subscribe-success",
        OTHER_PRODUCT,
        "cust-0",
        T0,
    ));
    for k in 0..4 {
        let chain = match k {
            0 => 3,
            2 => 2,
            _ => 1,
        };
        for step in 0..chain {
            let id = format!("agmt-{k}-{step}");
            let fields = if step == 0 {
                serde_json::json!({"intent": "NEW"})
            } else {
                serde_json::json!({"intent": "RENEW", "previousAgreementId": format!("agmt-{k}-{}", step - 1)})
            };
            let t = T0 + step * 86_400_000;
            bodies.push(agreement_body(
                &format!("c-{k}-{step}"),
                "Created",
                "Proposer",
                &id,
                &account(k),
                fields,
                t,
            ));
            if step == 0 {
                bodies.push(license_body(
                    &format!("l-{k}"),
                    "Updated",
                    &id,
                    PRODUCT,
                    &license(k),
                    &account(k),
                    t + 1_000,
                ));
            }
            if step + 1 < chain {
                bodies.push(agreement_body(
                    &format!("e-{k}-{step}"),
                    "Ended",
                    "Proposer",
                    &id,
                    &account(k),
                    serde_json::json!({"status": "RENEWED"}),
                    t + 86_399_000,
                ));
            }
        }
    }
    // One account, two concurrent agreements with their own licenses.
    for n in [10, 11] {
        let id = format!("agmt-x-{n}");
        bodies.push(agreement_body(
            &format!("cx-{n}"),
            "Created",
            "Proposer",
            &id,
            &account(9),
            serde_json::json!({"intent": "NEW"}),
            T0 + n as i64,
        ));
        bodies.push(license_body(
            &format!("lx-{n}"),
            "Updated",
            &id,
            PRODUCT,
            &license(n),
            &account(9),
            T0 + 5_000 + n as i64,
        ));
    }
    // Two agreements naming each other as predecessor (broken or hostile input): both are
    // superseded, and the link that names them must still rest on one.
    for (id, previous) in [("agmt-cyc-a", "agmt-cyc-b"), ("agmt-cyc-b", "agmt-cyc-a")] {
        bodies.push(agreement_body(
            &format!("c-{id}"),
            "Created",
            "Proposer",
            id,
            &account(20),
            serde_json::json!({"intent": "RENEW", "previousAgreementId": previous}),
            T0 + 7_000,
        ));
        let n = if id.ends_with('a') { 20 } else { 21 };
        bodies.push(license_body(
            &format!("l-{id}"),
            "Updated",
            id,
            PRODUCT,
            &license(n),
            &account(20),
            T0 + 8_000,
        ));
    }
    bodies.shuffle(&mut rng);
    for (i, body) in bodies.iter().enumerate() {
        let event = decoded(&format!("sqs-{i}"), body);
        store.apply(&event, body).await.expect("apply");
    }

    let mut links = Vec::new();
    for c in [0, 1, 2, 3, 5, 8, 99] {
        links.push(LinkRequest {
            customer_identifier: Some(format!("cust-{c}")),
            ..link(&format!("org-c{c}"), PRODUCT)
        });
    }
    links.push(LinkRequest {
        customer_identifier: Some("cust-0".into()),
        ..link("org-other", OTHER_PRODUCT)
    });
    for n in [0, 1, 11, 77] {
        links.push(LinkRequest {
            license_arn: Some(license(n)),
            customer_aws_account_id: Some(account(n)),
            ..link(&format!("org-l{n}"), PRODUCT)
        });
    }
    for n in [2, 9, 20, 66] {
        links.push(LinkRequest {
            customer_aws_account_id: Some(account(n)),
            ..link(&format!("org-a{n}"), PRODUCT)
        });
    }
    // Moves cust-3's subscription from org-c3 to org-z.
    links.push(LinkRequest {
        customer_identifier: Some("cust-3".into()),
        ..link("org-z", PRODUCT)
    });
    for l in &links {
        store.link(l).await.expect("link");
    }
}

async fn paged(store: &Store, filter: &StatusFilter, page_rows: usize) -> Vec<StatusRow> {
    let mut pages = store.status_pages(filter).page_rows(page_rows);
    let mut out = Vec::new();
    while let Some(page) = pages.next_page().await.expect("page") {
        assert!(!page.is_empty(), "pages are never empty");
        assert!(
            page.len() <= page_rows * 2,
            "a page holds about page_rows rows"
        );
        out.extend(page);
    }
    out
}

async fn paged_view_is_the_whole_ledger_view(backend: Backend) {
    let db = TestDb::new(backend).await;
    let s = &db.store;
    varied_ledger(s).await;
    let subs = s.subscriptions().await.expect("subscriptions");
    let links = s.links().await.expect("links");

    let everything = status_rows(&subs, &links, &StatusFilter::default());
    // The ledger really has the shapes the paging must get right.
    let org = |o: &str| everything.iter().find(|r| r.org_id.as_deref() == Some(o));
    assert_eq!(
        org("org-l0").and_then(|r| r.agreement_id.as_deref()),
        Some("agmt-0-2"),
        "the license link follows two renewals"
    );
    assert_eq!(
        org("org-a2").and_then(|r| r.agreement_id.as_deref()),
        Some("agmt-2-1"),
        "the account link follows one renewal"
    );
    assert!(org("org-c99")
        .is_some_and(|r| r.agreement_id.is_none() && r.link_state == Some(LinkState::Syncing)));
    assert!(org("org-c3").is_none(), "moved to org-z");
    assert!(
        org("org-a20").is_some_and(|r| r
            .agreement_id
            .as_deref()
            .is_some_and(|a| a.starts_with("agmt-cyc-"))),
        "a link naming a cycle of agreements rests on one of them"
    );
    assert!(everything.iter().any(|r| r.org_id.is_none()));

    let mut filters = vec![StatusFilter::default()];
    for l in &links {
        filters.push(StatusFilter {
            org_id: Some(l.org_id.clone()),
            customer_identifier: None,
        });
    }
    for c in ["cust-0", "cust-4", "cust-99", "nobody"] {
        filters.push(StatusFilter {
            org_id: None,
            customer_identifier: Some(c.into()),
        });
    }
    filters.push(StatusFilter {
        org_id: Some("org-missing".into()),
        customer_identifier: None,
    });
    filters.push(StatusFilter {
        org_id: Some("org-c0".into()),
        customer_identifier: Some("cust-0".into()),
    });
    filters.push(StatusFilter {
        org_id: Some("org-c0".into()),
        customer_identifier: Some("cust-1".into()),
    });
    for filter in &filters {
        let want = status_rows(&subs, &links, filter);
        assert_eq!(s.status(filter).await.expect("status"), want, "{filter:?}");
        for page_rows in [1, 2, 5] {
            assert_eq!(
                paged(s, filter, page_rows).await,
                want,
                "{filter:?}, pages of {page_rows}"
            );
        }
    }
    db.cleanup().await;
}

both_backends! {
    the_paged_status_view_is_the_whole_ledger_view => paged_view_is_the_whole_ledger_view;
    a_seeded_history_on_the_large_ledger => a_seeded_history_on_the_large_ledger;
}

/// A ledger large enough that PostgreSQL's planner prefers an index to a scan.
const PLAN_SUBSCRIPTIONS: i64 = 100_000;
const PLAN_LINKS: i64 = 20_000;

/// Every per-organization operation, from a store of its own that is closed afterwards: a
/// PostgreSQL backend reports its scan counts when it exits.
async fn per_org_operations(db: &TestDb) {
    let store = db.another_store().await;
    for i in [3, 4, 5, 300, 301, 302, 9_999, 10_000, 10_001] {
        let filter = StatusFilter {
            org_id: Some(format!("org-{i}")),
            customer_identifier: None,
        };
        let rows = store.status(&filter).await.expect("status --org");
        assert_eq!(rows.len(), 1, "{filter:?}");
        assert!(rows[0].agreement_id.is_some() || rows[0].customer_identifier.is_some());
    }
    // An organization's history reads its link and what it reaches by key, never the ledger.
    for i in [3, 300, 10_000] {
        store
            .org_history(&format!("org-{i}"))
            .await
            .expect("history --org");
    }
    let linked = store
        .link(&LinkRequest {
            customer_identifier: Some("c-7".into()),
            ..link("org-new", crate::bulk::BULK_PRODUCT)
        })
        .await
        .expect("link");
    assert_eq!(linked.row.link_state, Some(LinkState::Linked));
    let linked = store
        .link(&LinkRequest {
            license_arn: Some("arn:aws:license-manager::1:license:l-30".into()),
            ..link("org-new-license", crate::bulk::BULK_PRODUCT)
        })
        .await
        .expect("link by license");
    // a-30's successor is a-35 (every other agreement renews the one before); no org holds l-30.
    assert_eq!(linked.row.agreement_id.as_deref(), Some("a-35"));
    let rows = store
        .status(&StatusFilter {
            org_id: None,
            customer_identifier: Some("c-9".into()),
        })
        .await
        .expect("status --customer-identifier");
    assert_eq!(rows.len(), 1);
    store.close().await;
}

/// Sequential scans of each table during [`per_org_operations`], and whether the statistics
/// arrived at all (index scans counted).
async fn scans_during(db: &TestDb, schema: &str) -> Vec<(&'static str, i64, i64)> {
    let tables = ["mplink_subscriptions", "mplink_org_links"];
    let mut before = Vec::new();
    for t in tables {
        before.push(pg_scans(schema, t).await);
    }
    per_org_operations(db).await;
    // A backend flushes its counts as it exits, just after the pool has let it go.
    let mut after = Vec::new();
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        after.clear();
        for t in tables {
            after.push(pg_scans(schema, t).await);
        }
        if after.iter().zip(&before).all(|(a, b)| a != b) {
            break;
        }
    }
    // Room for a second connection of the pool that exits a moment later.
    tokio::time::sleep(Duration::from_millis(500)).await;
    after.clear();
    for t in tables {
        after.push(pg_scans(schema, t).await);
    }
    tables
        .iter()
        .zip(before.iter().zip(&after))
        .map(|(t, (b, a))| (*t, a.0 - b.0, a.1 - b.1))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_organization_lookups_never_scan_the_ledger() {
    if !postgres_enabled() {
        eprintln!("PostgreSQL disabled (MPLINK_TEST_POSTGRES_URL=off): not run");
        return;
    }
    let db = TestDb::new(Backend::Postgres).await;
    crate::bulk::bulk_ledger(db.store.pool(), PLAN_SUBSCRIPTIONS, PLAN_LINKS).await;
    let schema: String = sqlx::query_scalar("SELECT current_schema()::text")
        .fetch_one(db.store.pool())
        .await
        .expect("schema");

    let with_indexes = scans_during(&db, &schema).await;
    eprintln!("(table, sequential scans, index scans) with the indexes: {with_indexes:?}");
    for (table, seq, idx) in &with_indexes {
        assert!(
            *idx > 0,
            "index scans of {table} were counted: {with_indexes:?}"
        );
        assert_eq!(*seq, 0, "sequential scans of {table}: {with_indexes:?}");
    }

    // The same operations without the lookup indexes: the planner has to scan, and the check
    // sees it.
    for index in [
        "mplink_subscriptions_license",
        "mplink_subscriptions_customer",
        "mplink_subscriptions_account",
        "mplink_subscriptions_previous",
        "mplink_subscriptions_agreement",
        "mplink_subscriptions_customer_page",
    ] {
        sqlx::query(&format!("DROP INDEX {index}"))
            .execute(db.store.pool())
            .await
            .expect("drop index");
    }
    let without = scans_during(&db, &schema).await;
    eprintln!("without the subscription indexes: {without:?}");
    let (_, seq, _) = without[0];
    assert!(
        seq > 0,
        "without its indexes mplink_subscriptions is scanned: {without:?}"
    );
    db.cleanup().await;
}

/// A seeded story's history on the 100,000-subscription ledger: exactly its own entries, oldest
/// first (the ledger around it adds none), and the time it took printed beside the lookups'.
async fn a_seeded_history_on_the_large_ledger(backend: Backend) {
    use mplink::api::routes::history::entry_json;
    let db = TestDb::new(backend).await;
    crate::bulk::bulk_ledger(db.store.pool(), PLAN_SUBSCRIPTIONS, PLAN_LINKS).await;
    let store = &db.store;
    let product = crate::bulk::BULK_PRODUCT;
    let hour = 3_600_000;
    let now = mplink::time::now_ms() / 1000 * 1000;
    let (t_link, t_fail, t_ok, t_cancel) = (
        now - 6 * hour,
        now - 5 * hour,
        now - 4 * hour,
        now - 3 * hour,
    );
    store
        .link(&LinkRequest {
            customer_identifier: Some("story-c".into()),
            requested_at_ms: t_link,
            ..link("org-story", product)
        })
        .await
        .unwrap();
    let apply = |id: &'static str, action: &'static str, at: i64| {
        let body = sns_body(id, action, product, "story-c", at);
        async move { store.apply(&decoded(id, &body), &body).await.unwrap() }
    };
    let ok = apply("story-ok", "subscribe-success", t_ok).await;
    let cancel = apply("story-cancel", "unsubscribe-pending", t_cancel).await;
    // The same delivery again, and an older fact delivered late.
    apply("story-ok", "subscribe-success", t_ok).await;
    let fail = apply("story-fail", "subscribe-fail", t_fail).await;

    let started = std::time::Instant::now();
    let history = store.org_history("org-story").await.unwrap();
    eprintln!(
        "{backend:?}: history of one organization on {PLAN_SUBSCRIPTIONS} subscriptions in {:.2} ms",
        started.elapsed().as_secs_f64() * 1000.0
    );
    let time = mplink::time::rfc3339_millis;
    let got: Vec<(String, String, String)> = history
        .iter()
        .map(entry_json)
        .map(|e| {
            let what = if e["kind"] == "event" {
                format!(
                    "{} {}",
                    e["action"].as_str().unwrap(),
                    e["outcome"].as_str().unwrap()
                )
            } else {
                e["event_type"].as_str().unwrap().to_string()
            };
            (
                e["time"].as_str().unwrap().to_string(),
                e["kind"].as_str().unwrap().to_string(),
                what,
            )
        })
        .collect();
    let mut expected = vec![
        (
            time(t_link),
            "link_change".to_string(),
            "link.syncing".to_string(),
        ),
        (
            time(t_fail),
            "event".into(),
            format!("subscribe-fail {}", fail.as_str()),
        ),
        (
            time(t_ok),
            "event".into(),
            format!("subscribe-success {}", ok.as_str()),
        ),
        (time(t_ok), "link_change".into(), "link.linked".into()),
        (
            time(t_cancel),
            "event".into(),
            format!("unsubscribe-pending {}", cancel.as_str()),
        ),
        (
            time(t_cancel),
            "link_change".into(),
            "link.unlink_pending".into(),
        ),
    ];
    let mut sorted = got.clone();
    sorted.sort();
    expected.sort();
    assert_eq!(sorted, expected, "{got:#?}");
    let times: Vec<&String> = got.iter().map(|g| &g.0).collect();
    assert!(
        times.windows(2).all(|w| w[0] <= w[1]),
        "oldest first: {got:#?}"
    );
    db.cleanup().await;
}
