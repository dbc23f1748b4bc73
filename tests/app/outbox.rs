//! The outbox rows each ledger change writes, on SQLite and PostgreSQL: one per change of what an
//! organization sees, in the change's own transaction, none for duplicates and stale events.

use crate::common::*;
use mplink::ledger::{LinkRequest, Outcome};
use mplink::outbox::OutboxRow;
use mplink::store::{Incoming, Store};

const PRODUCT: &str = "prod-1234example";
const ACCOUNT: &str = "845735284135";
const LICENSE: &str =
    "arn:aws:license-manager::123456789012:license:l-e52ca6f38bf84d0fafb8802ca15ac11x";

fn legacy_link(org: &str, customer: &str) -> LinkRequest {
    LinkRequest {
        org_id: org.into(),
        product_code: PRODUCT.into(),
        customer_identifier: Some(customer.into()),
        customer_aws_account_id: None,
        license_arn: None,
        requested_at_ms: T0,
    }
}

async fn apply(store: &Store, sqs_id: &str, body: &str) -> Outcome {
    let event = decoded(sqs_id, body);
    store.apply(&event, body).await.expect("apply")
}

async fn all_rows(store: &Store) -> Vec<OutboxRow> {
    store.outbox_after(0, 10_000).await.expect("outbox")
}

/// (type, org, before, after, payment method before, payment method, cause)
type Summary = (
    String,
    String,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    String,
);

fn summary(rows: &[OutboxRow]) -> Vec<Summary> {
    rows.iter()
        .map(|r| {
            (
                r.event_type.clone(),
                r.org_id.clone(),
                r.state_before.clone(),
                r.state_after.clone(),
                r.payment_method_before.clone(),
                r.payment_method.clone(),
                r.cause.clone(),
            )
        })
        .collect()
}

fn s(v: &str) -> Option<String> {
    Some(v.to_string())
}

async fn legacy_lifecycle(backend: Backend) {
    let db = TestDb::new(backend).await;
    let st = &db.store;
    st.link(&legacy_link("org-1", "cust-1"))
        .await
        .expect("link");
    let steps = [
        "subscribe-success",
        "unsubscribe-pending",
        "unsubscribe-success",
    ];
    for (i, action) in steps.iter().enumerate() {
        let t = T0 + 60_000 * (i as i64 + 1);
        let body = sns_body(&format!("msg-{i}"), action, PRODUCT, "cust-1", t);
        assert_eq!(
            apply(st, &format!("sqs-{i}"), &body).await,
            Outcome::Applied
        );
        // The same delivery again, and a second SQS copy of it: nothing more.
        assert_eq!(
            apply(st, &format!("sqs-{i}-again"), &body).await,
            Outcome::Duplicate
        );
    }
    // An older confirmation arriving late is stale: nothing.
    let stale = sns_body("msg-old", "unsubscribe-pending", PRODUCT, "cust-1", T0 + 2);
    assert_eq!(apply(st, "sqs-old", &stale).await, Outcome::Stale);
    // Details only (an entitlement update): nothing the organization sees.
    let ent = sns_body(
        "msg-ent",
        "entitlement-updated",
        PRODUCT,
        "cust-1",
        T0 + 500_000,
    );
    apply(st, "sqs-ent", &ent).await;

    let rows = all_rows(st).await;
    assert_eq!(
        summary(&rows),
        vec![
            (
                "link.syncing".into(),
                "org-1".into(),
                None,
                s("syncing"),
                None,
                None,
                format!("link:org-1:{T0}")
            ),
            (
                "link.linked".into(),
                "org-1".into(),
                s("syncing"),
                s("linked"),
                None,
                s("aws_marketplace"),
                "msg-0".into()
            ),
            (
                "link.unlink_pending".into(),
                "org-1".into(),
                s("linked"),
                s("unlink_pending"),
                s("aws_marketplace"),
                s("aws_marketplace"),
                "msg-1".into()
            ),
            (
                "link.unlinked".into(),
                "org-1".into(),
                s("unlink_pending"),
                s("unlinked"),
                s("aws_marketplace"),
                None,
                "msg-2".into()
            ),
        ]
    );
    let seqs: Vec<i64> = rows.iter().map(|r| r.seq).collect();
    assert_eq!(seqs, vec![1, 2, 3, 4], "gapless, increasing");
    let ids: std::collections::HashSet<&str> = rows.iter().map(|r| r.event_id.as_str()).collect();
    assert_eq!(ids.len(), 4, "event ids unique");
    assert_eq!(rows[1].event_time, iso_ms(T0 + 60_000));
    assert_eq!(
        rows[1].subscription.customer_identifier.as_deref(),
        Some("cust-1")
    );
    assert_eq!(
        rows[1].subscription.sub_key.as_deref(),
        Some(&*format!("cust:{PRODUCT}:cust-1"))
    );
    // Linking again as it stands changes nothing the organization sees.
    st.link(&legacy_link("org-1", "cust-1"))
        .await
        .expect("relink");
    assert_eq!(all_rows(st).await.len(), 4);
    db.cleanup().await;
}

async fn events_before_the_link_and_a_moved_link(backend: Backend) {
    let db = TestDb::new(backend).await;
    let st = &db.store;
    // No organization yet: the subscription's confirmation tells nobody.
    let ok = sns_body("m-ok", "subscribe-success", PRODUCT, "cust-2", T0);
    assert_eq!(apply(st, "q-ok", &ok).await, Outcome::Applied);
    assert!(all_rows(st).await.is_empty());
    // The registration comes after the confirmation: linked straight away.
    st.link(&legacy_link("org-a", "cust-2"))
        .await
        .expect("link a");
    // Another organization registers the same subscription: it moves.
    let moved = st
        .link(&legacy_link("org-b", "cust-2"))
        .await
        .expect("link b");
    assert_eq!(moved.moved_from.as_deref(), Some("org-a"));
    let rows = all_rows(st).await;
    assert_eq!(
        summary(&rows),
        vec![
            (
                "link.linked".into(),
                "org-a".into(),
                None,
                s("linked"),
                None,
                s("aws_marketplace"),
                format!("link:org-a:{T0}")
            ),
            (
                "link.moved".into(),
                "org-a".into(),
                s("linked"),
                None,
                s("aws_marketplace"),
                None,
                format!("link:org-b:{T0}")
            ),
            (
                "link.linked".into(),
                "org-b".into(),
                None,
                s("linked"),
                None,
                s("aws_marketplace"),
                format!("link:org-b:{T0}")
            ),
        ]
    );
    assert_eq!(rows[1].moved_to_org_id.as_deref(), Some("org-b"));
    // A failure before any confirmation: link.failed.
    st.link(&legacy_link("org-f", "cust-f"))
        .await
        .expect("link f");
    let fail = sns_body("m-fail", "subscribe-fail", PRODUCT, "cust-f", T0);
    assert_eq!(apply(st, "q-fail", &fail).await, Outcome::Applied);
    let last = all_rows(st).await.pop().expect("row");
    assert_eq!(
        (
            last.event_type.as_str(),
            last.org_id.as_str(),
            last.cause.as_str()
        ),
        ("link.failed", "org-f", "m-fail")
    );
    db.cleanup().await;
}

async fn agreement_copies_and_license_link(backend: Backend) {
    let db = TestDb::new(backend).await;
    let st = &db.store;
    let agmt = "agmt-4mwg1nevbokzw95eca5797ixs";
    st.link(&LinkRequest {
        org_id: "org-eb".into(),
        product_code: PRODUCT.into(),
        customer_identifier: None,
        customer_aws_account_id: Some(ACCOUNT.into()),
        license_arn: Some(LICENSE.into()),
        requested_at_ms: T0,
    })
    .await
    .expect("link");
    let intent = serde_json::json!({"intent": "NEW", "status": "ACTIVE"});
    let created_p = agreement_body(
        "c-p",
        "Created",
        "Proposer",
        agmt,
        ACCOUNT,
        intent.clone(),
        T0,
    );
    let created_m = agreement_body("c-m", "Created", "Manufacturer", agmt, ACCOUNT, intent, T0);
    let lic = license_body(
        "l-1",
        "Updated",
        agmt,
        PRODUCT,
        LICENSE,
        ACCOUNT,
        T0 + 60_000,
    );
    // Both copies and the license event in one batch: one change, syncing → linked.
    let bodies = [created_p, created_m, lic];
    let events: Vec<_> = bodies
        .iter()
        .enumerate()
        .map(|(i, b)| decoded(&format!("q{i}"), b))
        .collect();
    let batch: Vec<Incoming<'_>> = events
        .iter()
        .zip(&bodies)
        .map(|(event, body)| Incoming { event, body })
        .collect();
    st.apply_batch(&batch).await.expect("batch");
    let rows = all_rows(st).await;
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert_eq!(rows[1].event_type, "link.linked");
    assert_eq!(
        rows[1].cause, "l-1",
        "the license event made the link reach the agreement"
    );
    assert_eq!(rows[1].subscription.agreement_id.as_deref(), Some(agmt));
    // Every copy again: nothing.
    st.apply_batch(&batch).await.expect("batch again");
    assert_eq!(all_rows(st).await.len(), 2);
    let ended = agreement_body(
        "e-p",
        "Ended",
        "Proposer",
        agmt,
        ACCOUNT,
        serde_json::json!({"status": "CANCELLED"}),
        T0 + 120_000,
    );
    apply(st, "q-e", &ended).await;
    let last = all_rows(st).await.pop().expect("row");
    assert_eq!(
        (last.event_type.as_str(), last.cause.as_str()),
        ("link.unlink_pending", "e-p")
    );
    db.cleanup().await;
}

/// Two appliers racing over the same deliveries (each twice, in opposite orders): at most one
/// row per (cause, organization), and each organization's last row is its final state.
async fn at_most_one_row_per_cause_and_org(backend: Backend) {
    let db = TestDb::new(backend).await;
    let st = &db.store;
    for c in 0..4 {
        st.link(&legacy_link(&format!("org-{c}"), &format!("c-{c}")))
            .await
            .expect("link");
    }
    let actions = [
        "subscribe-success",
        "unsubscribe-pending",
        "subscribe-fail",
        "unsubscribe-success",
    ];
    let mut bodies = Vec::new();
    for c in 0..4 {
        for (i, a) in actions.iter().enumerate() {
            bodies.push(sns_body(
                &format!("m-{c}-{i}"),
                a,
                PRODUCT,
                &format!("c-{c}"),
                T0 + ((i * 7 + c * 3) % 5) as i64 * 1000,
            ));
        }
    }
    // Apply from two stores at once, each every body twice.
    let other = db.another_store().await;
    let (a, b) = tokio::join!(
        async {
            for (i, body) in bodies.iter().enumerate() {
                apply(st, &format!("a{i}"), body).await;
            }
        },
        async {
            for (i, body) in bodies.iter().enumerate().rev() {
                apply(&other, &format!("b{i}"), body).await;
            }
        }
    );
    let ((), ()) = (a, b);
    let rows = all_rows(st).await;
    let mut per: std::collections::HashMap<(String, String), usize> = Default::default();
    for r in &rows {
        *per.entry((r.cause.clone(), r.org_id.clone())).or_default() += 1;
    }
    assert!(per.values().all(|n| *n == 1), "{per:?}");
    // Each organization's last row is its final state.
    for c in 0..4 {
        let org = format!("org-{c}");
        let last = rows.iter().rev().find(|r| r.org_id == org).expect("rows");
        let status = st
            .status(&mplink::store::StatusFilter {
                org_id: Some(org.clone()),
                customer_identifier: None,
            })
            .await
            .expect("status");
        assert_eq!(
            last.state_after.as_deref(),
            status[0].link_state.map(|s| s.as_str()),
            "{org}"
        );
    }
    other.close().await;
    db.cleanup().await;
}

both_backends! {
    legacy_lifecycle_writes_one_row_per_change => legacy_lifecycle;
    events_before_the_link_and_a_moved_link_are_told => events_before_the_link_and_a_moved_link;
    agreement_copies_and_a_license_link => agreement_copies_and_license_link;
    concurrent_appliers_write_at_most_one_row_per_cause_and_org => at_most_one_row_per_cause_and_org;
}
