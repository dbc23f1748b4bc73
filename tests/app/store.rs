//! The store suite: every test runs on SQLite and on PostgreSQL.

use crate::common::*;
use mplink::event::InboundMessage;
use mplink::ledger::{LinkRequest, LinkState, Outcome, PaymentMethod, SubState};
use mplink::store::{Incoming, StatusFilter, StatusRow, Store};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use std::collections::HashMap;

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

async fn org_row(store: &Store, org: &str) -> StatusRow {
    let filter = StatusFilter {
        org_id: Some(org.into()),
        customer_identifier: None,
    };
    let rows = store.status(&filter).await.expect("status");
    assert_eq!(rows.len(), 1, "one row for {org}: {rows:?}");
    rows.into_iter().next().expect("row")
}

async fn legacy_story(backend: Backend) {
    let db = TestDb::new(backend).await;
    let s = &db.store;
    s.link(&legacy_link("org-1", "cust-1")).await.expect("link");
    let row = org_row(s, "org-1").await;
    assert_eq!(
        (row.subscription_state, row.link_state, row.payment_method),
        (SubState::Pending, Some(LinkState::Syncing), None)
    );

    let steps = [
        (
            "subscribe-success",
            SubState::Active,
            LinkState::Linked,
            Some(PaymentMethod::AwsMarketplace),
        ),
        (
            "unsubscribe-pending",
            SubState::Cancelling,
            LinkState::UnlinkPending,
            Some(PaymentMethod::AwsMarketplace),
        ),
        (
            "unsubscribe-success",
            SubState::Cancelled,
            LinkState::Unlinked,
            None,
        ),
    ];
    for (i, (action, sub_state, link_state, pm)) in steps.into_iter().enumerate() {
        let t = T0 + 60_000 * (i as i64 + 1);
        let body = sns_body(&format!("msg-{i}"), action, PRODUCT, "cust-1", t);
        assert_eq!(
            apply(s, &format!("sqs-{i}"), &body).await,
            Outcome::Applied,
            "{action}"
        );
        let row = org_row(s, "org-1").await;
        assert_eq!(row.subscription_state, sub_state, "{action}");
        assert_eq!(row.link_state, Some(link_state), "{action}");
        assert_eq!(row.payment_method, pm, "{action}");
        assert_eq!(row.last_event_time, Some(iso_ms(t)));
    }
    // A newer confirmation re-activates a cancelled subscription.
    let body = sns_body(
        "msg-again",
        "subscribe-success",
        PRODUCT,
        "cust-1",
        T0 + 3_600_000,
    );
    assert_eq!(apply(s, "sqs-again", &body).await, Outcome::Applied);
    assert_eq!(
        org_row(s, "org-1").await.link_state,
        Some(LinkState::Linked)
    );
    db.cleanup().await;
}

async fn duplicates_and_stale_events(backend: Backend) {
    let db = TestDb::new(backend).await;
    let s = &db.store;
    let success = sns_body(
        "m-success",
        "subscribe-success",
        PRODUCT,
        "cust-1",
        T0 + 1_000,
    );
    let pending = sns_body(
        "m-pending",
        "unsubscribe-pending",
        PRODUCT,
        "cust-1",
        T0 + 2_000,
    );
    let cancelled = sns_body(
        "m-cancelled",
        "unsubscribe-success",
        PRODUCT,
        "cust-1",
        T0 + 3_000,
    );
    assert_eq!(apply(s, "q1", &cancelled).await, Outcome::Applied);
    // Older events arriving late never undo the newer one.
    assert_eq!(apply(s, "q2", &pending).await, Outcome::Stale);
    // An older confirmation still teaches history (it was active once), so it is applied.
    assert_eq!(apply(s, "q3", &success).await, Outcome::Applied);
    // SNS redelivers with the same MessageId in a new SQS message.
    assert_eq!(apply(s, "q4", &cancelled).await, Outcome::Duplicate);
    assert_eq!(apply(s, "q5", &success).await, Outcome::Duplicate);

    let subs = s.subscriptions().await.expect("subs");
    assert_eq!(subs.len(), 1);
    assert_eq!(subs[0].state, SubState::Cancelled);
    let log = s.event_log().await.expect("log");
    let mut ids: Vec<_> = log
        .iter()
        .map(|e| (e.message_id.as_str(), e.outcome.as_str()))
        .collect();
    ids.sort();
    assert_eq!(
        ids,
        vec![
            ("m-cancelled", "applied"),
            ("m-pending", "stale"),
            ("m-success", "applied")
        ]
    );
    db.cleanup().await;
}

async fn confirmation_before_registration(backend: Backend) {
    let db = TestDb::new(backend).await;
    let s = &db.store;
    let body = sns_body("m1", "subscribe-success", PRODUCT, "cust-early", T0);
    assert_eq!(apply(s, "q1", &body).await, Outcome::Applied);
    let rows = s.status(&StatusFilter::default()).await.expect("status");
    assert_eq!(rows.len(), 1);
    assert_eq!(
        (rows[0].org_id.as_deref(), rows[0].link_state),
        (None, None)
    );
    assert_eq!(rows[0].subscription_state, SubState::Active);

    let outcome = s
        .link(&legacy_link("org-late", "cust-early"))
        .await
        .expect("link");
    assert_eq!(outcome.row.link_state, Some(LinkState::Linked));
    assert_eq!(
        outcome.row.payment_method,
        Some(PaymentMethod::AwsMarketplace)
    );
    db.cleanup().await;
}

async fn failure_before_activation(backend: Backend) {
    let db = TestDb::new(backend).await;
    let s = &db.store;
    s.link(&legacy_link("org-f", "cust-f")).await.expect("link");
    apply(
        s,
        "q1",
        &sns_body("f1", "subscribe-fail", PRODUCT, "cust-f", T0),
    )
    .await;
    let row = org_row(s, "org-f").await;
    assert_eq!(
        (row.subscription_state, row.link_state, row.payment_method),
        (SubState::Failed, Some(LinkState::Failed), None)
    );
    db.cleanup().await;
}

async fn eventbridge_story_with_both_copies(backend: Backend) {
    let db = TestDb::new(backend).await;
    let s = &db.store;
    let agmt = "agmt-4mwg1nevbokzw95eca5797ixs";
    let intent_new = serde_json::json!({"intent": "NEW", "status": "ACTIVE"});
    // Created arrives first in both copies, then the License event joins product and license.
    let created_p = agreement_body(
        "ev-c-p",
        "Created",
        "Proposer",
        agmt,
        ACCOUNT,
        intent_new.clone(),
        T0,
    );
    let created_m = agreement_body(
        "ev-c-m",
        "Created",
        "Manufacturer",
        agmt,
        ACCOUNT,
        intent_new,
        T0,
    );
    assert_eq!(apply(s, "q1", &created_p).await, Outcome::Applied);
    assert_eq!(
        apply(s, "q2", &created_m).await,
        Outcome::Duplicate,
        "the Manufacturer copy of the same fact"
    );
    let lic = license_body(
        "ev-l",
        "Updated",
        agmt,
        PRODUCT,
        LICENSE,
        ACCOUNT,
        T0 + 60_000,
    );
    assert_eq!(apply(s, "q3", &lic).await, Outcome::Applied);

    // The registration names the license in AWS's short spelling: it is compared by its l- id.
    let link = LinkRequest {
        org_id: "org-eb".into(),
        product_code: PRODUCT.into(),
        customer_identifier: None,
        customer_aws_account_id: Some(ACCOUNT.into()),
        license_arn: Some("l-e52ca6f38bf84d0fafb8802ca15ac11x".into()),
        requested_at_ms: T0,
    };
    let row = s.link(&link).await.expect("link").row;
    assert_eq!(row.link_state, Some(LinkState::Linked));
    assert_eq!(row.agreement_id.as_deref(), Some(agmt));
    assert_eq!(row.license_arn.as_deref(), Some(LICENSE));

    let ended = agreement_body(
        "ev-e",
        "Ended",
        "Proposer",
        agmt,
        ACCOUNT,
        serde_json::json!({"status": "CANCELLED"}),
        T0 + 120_000,
    );
    assert_eq!(apply(s, "q4", &ended).await, Outcome::Applied);
    assert_eq!(
        org_row(s, "org-eb").await.link_state,
        Some(LinkState::UnlinkPending)
    );
    let gone = license_body(
        "ev-d",
        "Deprovisioned",
        agmt,
        PRODUCT,
        LICENSE,
        ACCOUNT,
        T0 + 180_000,
    );
    assert_eq!(apply(s, "q5", &gone).await, Outcome::Applied);
    let row = org_row(s, "org-eb").await;
    assert_eq!(
        (row.subscription_state, row.link_state, row.payment_method),
        (SubState::Cancelled, Some(LinkState::Unlinked), None)
    );
    let log = s.event_log().await.expect("log");
    assert_eq!(log.len(), 5, "each delivery recorded once: {log:?}");
    assert_eq!(log.iter().filter(|e| e.outcome == "duplicate").count(), 1);
    db.cleanup().await;
}

async fn renewal_never_unlinks(backend: Backend) {
    let db = TestDb::new(backend).await;
    let s = &db.store;
    let (old, new) = ("agmt-old", "agmt-new");
    let link = LinkRequest {
        org_id: "org-r".into(),
        product_code: PRODUCT.into(),
        customer_identifier: None,
        customer_aws_account_id: Some(ACCOUNT.into()),
        license_arn: Some(LICENSE.into()),
        requested_at_ms: T0,
    };
    s.link(&link).await.expect("link");
    let bodies = [
        agreement_body(
            "r1",
            "Created",
            "Proposer",
            old,
            ACCOUNT,
            serde_json::json!({"intent": "NEW"}),
            T0,
        ),
        license_body("r2", "Updated", old, PRODUCT, LICENSE, ACCOUNT, T0 + 1_000),
        agreement_body(
            "r3",
            "Ended",
            "Proposer",
            old,
            ACCOUNT,
            serde_json::json!({"status": "RENEWED"}),
            T0 + 86_400_000,
        ),
    ];
    // Agreement events carry no product code or license: the link waits for the License event.
    let expected = [LinkState::Syncing, LinkState::Linked, LinkState::Linked];
    for (i, (body, want)) in bodies.iter().zip(expected).enumerate() {
        apply(s, &format!("rq{i}"), body).await;
        assert_eq!(
            org_row(s, "org-r").await.link_state,
            Some(want),
            "after step {i}"
        );
    }
    // The successor arrives, then the old license is deprovisioned: still linked, to the new agreement.
    let renewal = agreement_body(
        "r4",
        "Created",
        "Proposer",
        new,
        ACCOUNT,
        serde_json::json!({"intent": "RENEW", "previousAgreementId": old}),
        T0 + 86_401_000,
    );
    apply(s, "rq4", &renewal).await;
    apply(
        s,
        "rq5",
        &license_body(
            "r5",
            "Deprovisioned",
            old,
            PRODUCT,
            LICENSE,
            ACCOUNT,
            T0 + 86_402_000,
        ),
    )
    .await;
    let row = org_row(s, "org-r").await;
    assert_eq!(row.link_state, Some(LinkState::Linked));
    assert_eq!(row.agreement_id.as_deref(), Some(new));
    // And when the successor ends for good, the link goes.
    let ended = agreement_body(
        "r6",
        "Ended",
        "Proposer",
        new,
        ACCOUNT,
        serde_json::json!({"status": "EXPIRED"}),
        T0 + 90_000_000,
    );
    apply(s, "rq6", &ended).await;
    assert_eq!(
        org_row(s, "org-r").await.link_state,
        Some(LinkState::UnlinkPending)
    );
    db.cleanup().await;
}

async fn relinking_moves_the_subscription(backend: Backend) {
    let db = TestDb::new(backend).await;
    let s = &db.store;
    apply(
        s,
        "q",
        &sns_body("m", "subscribe-success", PRODUCT, "cust-m", T0),
    )
    .await;
    s.link(&legacy_link("org-a", "cust-m"))
        .await
        .expect("link a");
    let moved = s
        .link(&legacy_link("org-b", "cust-m"))
        .await
        .expect("link b");
    assert_eq!(moved.moved_from.as_deref(), Some("org-a"));
    assert_eq!(moved.row.link_state, Some(LinkState::Linked));
    let rows = s
        .status(&StatusFilter {
            org_id: Some("org-a".into()),
            customer_identifier: None,
        })
        .await
        .expect("status");
    assert!(
        rows.is_empty(),
        "org-a no longer pays through AWS: {rows:?}"
    );
    let none = LinkRequest {
        customer_identifier: None,
        ..legacy_link("org-c", "x")
    };
    assert!(
        s.link(&none).await.is_err(),
        "a link must name its subscription"
    );
    db.cleanup().await;
}

async fn rejections_are_recorded_once(backend: Backend) {
    let db = TestDb::new(backend).await;
    let msg = InboundMessage {
        message_id: "sqs-bad".into(),
        body: "{not json".into(),
        sent_timestamp_ms: Some(T0),
    };
    db.store
        .record_rejection(&msg, "not_json: body is not a JSON object")
        .await
        .expect("record");
    db.store
        .record_rejection(&msg, "not_json: body is not a JSON object")
        .await
        .expect("record again");
    let log = db.store.event_log().await.expect("log");
    assert_eq!(log.len(), 1);
    assert_eq!(log[0].outcome, "rejected");
    assert_eq!(log[0].sqs_message_id.as_deref(), Some("sqs-bad"));
    assert!(log[0]
        .reason
        .as_deref()
        .is_some_and(|r| r.starts_with("not_json")));
    db.cleanup().await;
}

/// Random legacy histories for a few customers, as (customer, time, action, message id).
fn random_history(
    rng: &mut impl Rng,
    customers: usize,
    events: usize,
) -> Vec<(String, i64, &'static str, String)> {
    let actions = [
        "subscribe-success",
        "subscribe-fail",
        "unsubscribe-pending",
        "unsubscribe-success",
        "entitlement-updated",
    ];
    (0..events)
        .map(|i| {
            let customer = format!("cust-{}", rng.gen_range(0..customers));
            // Few distinct times so that ties happen.
            let t = T0 + rng.gen_range(0..8) * 1_000;
            (
                customer,
                t,
                *actions.choose(rng).expect("action"),
                format!("msg-{i}"),
            )
        })
        .collect()
}

fn expected_states(
    history: &[(String, i64, &'static str, String)],
) -> HashMap<String, &'static str> {
    let mut per: HashMap<String, Vec<(i64, &str, String)>> = HashMap::new();
    for (c, t, a, id) in history {
        per.entry(c.clone())
            .or_default()
            .push((*t, a, format!("sns:{id}")));
    }
    per.into_iter()
        .map(|(c, evs)| (c, model_state(&evs)))
        .collect()
}

async fn concurrent_appliers_lose_nothing(backend: Backend) {
    let db = TestDb::new(backend).await;
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed);
    let history = random_history(&mut rng, 6, 400);
    let bodies: Vec<(String, String)> = history
        .iter()
        .map(|(c, t, a, id)| (id.clone(), sns_body(id, a, PRODUCT, c, *t)))
        .collect();
    // Every message delivered twice, in a different random order to each of four appliers,
    // each with its own connection pool, as four processes would.
    let mut deliveries: Vec<(String, String)> =
        bodies.iter().chain(bodies.iter()).cloned().collect();
    deliveries.shuffle(&mut rng);
    let mut tasks = Vec::new();
    for worker in 0..4 {
        let store = db.another_store().await;
        let mine: Vec<(String, String)> =
            deliveries.iter().skip(worker).step_by(4).cloned().collect();
        tasks.push(tokio::spawn(async move {
            let mut outcomes = Vec::new();
            // Alternate single events and batches (small for two appliers, large for the other
            // two, so whole sets of rows are locked against each other) so every path contends.
            let size = if worker % 2 == 0 { 3 } else { 17 };
            for (n, chunk) in mine.chunks(size).enumerate() {
                let events: Vec<_> = chunk
                    .iter()
                    .map(|(id, b)| (decoded(&format!("sqs-{id}-{worker}"), b), b.clone()))
                    .collect();
                let batch: Vec<Incoming<'_>> = events
                    .iter()
                    .map(|(event, body)| Incoming { event, body })
                    .collect();
                if n % 2 == 0 {
                    outcomes.extend(store.apply_batch(&batch).await.expect("batch"));
                } else {
                    for item in &batch {
                        outcomes.push(store.apply(item.event, item.body).await.expect("apply"));
                    }
                }
            }
            store.close().await;
            outcomes
        }));
    }
    let mut applied_or_stale = 0;
    for t in tasks {
        applied_or_stale += t
            .await
            .expect("task")
            .iter()
            .filter(|o| **o != Outcome::Duplicate)
            .count();
    }
    let expected = expected_states(&history);
    let subs = db.store.subscriptions().await.expect("subs");
    let actual: HashMap<String, &'static str> = subs
        .iter()
        .map(|s| {
            (
                s.customer_identifier.clone().expect("customer"),
                s.state.as_str(),
            )
        })
        .collect();
    assert_eq!(actual, expected);
    let log = db.store.event_log().await.expect("log");
    assert_eq!(
        log.len(),
        history.len(),
        "each message id recorded exactly once"
    );
    let mut ids: Vec<_> = log.iter().map(|e| e.message_id.clone()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), history.len());
    assert_eq!(
        applied_or_stale,
        history.len(),
        "the second copy of every message is a duplicate"
    );
    db.cleanup().await;
}

async fn batch_and_single_applies_agree(backend: Backend) {
    let db_batch = TestDb::new(backend).await;
    let db_single = TestDb::new(backend).await;
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    let history = random_history(&mut rng, 5, 200);
    let events: Vec<(mplink::event::Event, String)> = history
        .iter()
        .map(|(c, t, a, id)| {
            let body = sns_body(id, a, PRODUCT, c, *t);
            (decoded(id, &body), body)
        })
        .collect();
    let batch: Vec<Incoming<'_>> = events
        .iter()
        .map(|(event, body)| Incoming { event, body })
        .collect();
    db_batch.store.apply_batch(&batch).await.expect("batch");
    for item in &batch {
        db_single
            .store
            .apply(item.event, item.body)
            .await
            .expect("single");
    }
    let a = db_batch.store.subscriptions().await.expect("subs");
    let b = db_single.store.subscriptions().await.expect("subs");
    assert_eq!(a, b);
    let expected = expected_states(&history);
    for sub in &a {
        assert_eq!(
            sub.state.as_str(),
            expected[sub.customer_identifier.as_deref().expect("customer")]
        );
    }
    db_batch.cleanup().await;
    db_single.cleanup().await;
}

/// A rejected body is kept bounded: its first 8 KiB (NUL replaced, which PostgreSQL refuses),
/// with the whole body's size and SHA-256.
async fn rejected_bodies_are_stored_bounded(backend: Backend) {
    let db = TestDb::new(backend).await;
    let body = format!("\u{0}{}", "x".repeat(100_000));
    let msg = InboundMessage {
        message_id: "sqs-huge".into(),
        body: body.clone(),
        sent_timestamp_ms: Some(T0),
    };
    db.store
        .record_rejection(&msg, "too_large: body is 100001 bytes")
        .await
        .expect("record");
    let (stored, bytes, hash): (String, i64, String) = sqlx::query_as(
        "SELECT body, body_bytes, body_sha256 FROM mplink_event_log WHERE sqs_message_id = 'sqs-huge'",
    )
    .fetch_one(db.store.pool())
    .await
    .expect("row");
    assert!(
        stored.len() <= mplink::store::REJECTED_BODY_LIMIT + 2,
        "{}",
        stored.len()
    );
    assert!(stored.starts_with('\u{FFFD}'));
    assert_eq!(bytes, body.len() as i64);
    use sha2::Digest;
    assert_eq!(hash, format!("{:x}", sha2::Sha256::digest(body.as_bytes())));
    db.cleanup().await;
}

/// One delivery id on two subscriptions (a hostile sender reusing an EventBridge id), applied
/// concurrently from separate pools: no row lock orders them, so one insert into the event log
/// meets the other's; the loser reruns and is a duplicate, never a permanent error.
async fn one_delivery_id_on_two_subjects_concurrently(backend: Backend) {
    let db = TestDb::new(backend).await;
    for round in 0..10 {
        let id = format!("shared-id-{round}");
        let bodies: Vec<String> = ["a", "b"]
            .iter()
            .map(|side| {
                agreement_body(
                    &id,
                    "Created",
                    "Proposer",
                    &format!("agmt-{side}-{round}"),
                    ACCOUNT,
                    serde_json::json!({"intent": "NEW"}),
                    T0 + round,
                )
            })
            .collect();
        let stores = [db.another_store().await, db.another_store().await];
        let mut tasks = Vec::new();
        for (store, body) in stores.into_iter().zip(bodies) {
            tasks.push(tokio::spawn(async move {
                let event = decoded("sqs-shared", &body);
                store.apply(&event, &body).await
            }));
        }
        let mut outcomes = Vec::new();
        for t in tasks {
            outcomes.push(t.await.expect("task").expect("no permanent error"));
        }
        outcomes.sort_by_key(|o| o.as_str());
        assert_eq!(
            outcomes,
            vec![Outcome::Applied, Outcome::Duplicate],
            "round {round}"
        );
    }
    db.cleanup().await;
}

both_backends! {
    rejected_bodies_are_stored_bounded => rejected_bodies_are_stored_bounded;
    one_delivery_id_on_two_subjects_concurrently => one_delivery_id_on_two_subjects_concurrently;
    legacy_story_links_then_unlinks => legacy_story;
    duplicates_and_stale_events_have_no_effect => duplicates_and_stale_events;
    a_confirmation_before_registration_is_kept => confirmation_before_registration;
    a_failure_before_activation_fails_the_link => failure_before_activation;
    eventbridge_story_with_manufacturer_and_proposer_copies => eventbridge_story_with_both_copies;
    a_renewal_never_unlinks => renewal_never_unlinks;
    relinking_moves_the_subscription_to_the_new_org => relinking_moves_the_subscription;
    rejections_are_recorded_once => rejections_are_recorded_once;
    concurrent_appliers_lose_nothing => concurrent_appliers_lose_nothing;
    batch_and_single_applies_agree => batch_and_single_applies_agree;
}

/// On PostgreSQL, applies a batch whose first member's subscription row another transaction
/// holds, and reports whether its five batch-mates were applied within five seconds while the
/// row stayed held (and how long that took). The row is released afterwards and the whole batch
/// must end applied.
async fn batch_mates_of_a_held_row(
    timeout: Option<std::time::Duration>,
) -> (bool, std::time::Duration) {
    use sqlx::Connection;
    use std::time::{Duration, Instant};
    let db = TestDb::new(Backend::Postgres).await;
    let store = db.store.clone().with_batch_lock_timeout(timeout);
    let seed = sns_body("held-seed", "subscribe-success", PRODUCT, "cust-held", T0);
    apply(&store, "q-seed", &seed).await;
    let held_key = decoded("q-seed", &seed).subject.as_key();
    let mut conn = sqlx::PgConnection::connect(db.url.expose())
        .await
        .expect("test connection");
    let mut holder = conn.begin().await.expect("begin");
    sqlx::query("SELECT sub_key FROM mplink_subscriptions WHERE sub_key = $1 FOR UPDATE")
        .bind(&held_key)
        .fetch_optional(&mut *holder)
        .await
        .expect("hold the row");

    let mut batch = vec![InboundMessage {
        message_id: "q-held".into(),
        body: sns_body(
            "held-next",
            "unsubscribe-pending",
            PRODUCT,
            "cust-held",
            T0 + 1_000,
        ),
        sent_timestamp_ms: None,
    }];
    let mates: Vec<String> = (0..5).map(|i| format!("mate-{i}")).collect();
    for (i, id) in mates.iter().enumerate() {
        batch.push(InboundMessage {
            message_id: format!("q-mate-{i}"),
            body: sns_body(id, "subscribe-success", PRODUCT, &format!("cust-{i}"), T0),
            sent_timestamp_ms: None,
        });
    }
    let pipeline =
        crate::common::localstack::pipeline(store.clone(), crate::common::localstack::unsigned());
    let started = Instant::now();
    let running = tokio::spawn(async move { pipeline.process_batch(&batch).await });
    let mut mates_in = false;
    while started.elapsed() < Duration::from_secs(5) {
        let log = store.event_log().await.expect("log");
        if mates.iter().all(|m| log.iter().any(|e| &e.message_id == m)) {
            mates_in = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let waited = started.elapsed();
    holder.rollback().await.expect("release the row");
    let results = running.await.expect("batch task");
    for r in &results {
        assert!(
            matches!(r, mplink::process::Processed::Done(Outcome::Applied)),
            "every member applied once the row is free: {r:?}"
        );
    }
    db.cleanup().await;
    (mates_in, waited)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_row_holds_back_only_its_own_batch_member() {
    if !postgres_enabled() {
        eprintln!("PostgreSQL off: row locks have nothing to test");
        return;
    }
    // The check can fail: with no batch lock timeout the whole batch waits for the held row.
    let (stalled, _) = batch_mates_of_a_held_row(None).await;
    assert!(
        !stalled,
        "the batch-mates went through without the lock timeout"
    );
    let (through, waited) =
        batch_mates_of_a_held_row(Some(mplink::store::DEFAULT_BATCH_LOCK_TIMEOUT)).await;
    assert!(
        through,
        "the batch-mates waited for the held row ({waited:?})"
    );
}

/// The event-log lookup of a batch of 50, as the store phrases it (50 delivery ids, 50 facts).
const LOOKUP_OF_50: &str = "SELECT message_id, fact_key FROM mplink_event_log \
     WHERE message_id IN ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, \
     $17, $18, $19, $20, $21, $22, $23, $24, $25, $26, $27, $28, $29, $30, $31, $32, $33, $34, \
     $35, $36, $37, $38, $39, $40, $41, $42, $43, $44, $45, $46, $47, $48, $49, $50) \
     OR fact_key IN ($51, $52, $53, $54, $55, $56, $57, $58, $59, $60, $61, $62, $63, $64, $65, \
     $66, $67, $68, $69, $70, $71, $72, $73, $74, $75, $76, $77, $78, $79, $80, $81, $82, $83, \
     $84, $85, $86, $87, $88, $89, $90, $91, $92, $93, $94, $95, $96, $97, $98, $99, $100)";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgres_a_batch_never_scans_an_event_log_without_statistics() {
    use sqlx::Connection;
    if !postgres_enabled() {
        eprintln!("PostgreSQL off: its planner has nothing to test");
        return;
    }
    let db = TestDb::new(Backend::Postgres).await;
    let schema = db.schema().expect("a PostgreSQL schema").to_string();
    // The migrations' own scans are reported when their connections close: before the count.
    db.store.close().await;
    let mut conn = sqlx::PgConnection::connect(db.url.expose())
        .await
        .expect("test connection");
    // A grown event log that was never analysed, whatever the server's autovacuum does.
    sqlx::query("ALTER TABLE mplink_event_log SET (autovacuum_enabled = false)")
        .execute(&mut conn)
        .await
        .expect("no autovacuum");
    sqlx::query(
        "INSERT INTO mplink_event_log (message_id, fact_key, outcome, body, recorded_at) \
         SELECT 'bulk-' || g, 'fact-' || g, 'applied', '{}', 0 FROM generate_series(1, 50000) g",
    )
    .execute(&mut conn)
    .await
    .expect("a grown event log");

    // The check can fail: planned the way PostgreSQL plans it by default, the lookup scans.
    let mut lookup = sqlx::query(LOOKUP_OF_50);
    for i in 0..100 {
        lookup = lookup.bind(format!("probe-{i}"));
    }
    let (seq_before, _) = pg_scans(&schema, "mplink_event_log").await;
    lookup.fetch_all(&mut conn).await.expect("lookup");
    conn.close().await.expect("close");
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let (seq_default, _) = pg_scans(&schema, "mplink_event_log").await;
    assert!(
        seq_default > seq_before,
        "without the batch's planner setting the lookup of 50 scans the event log"
    );

    let batch: Vec<InboundMessage> = (0..50)
        .map(|i| InboundMessage {
            message_id: format!("q-scan-{i}"),
            body: sns_body(
                &format!("scan-{i}"),
                "subscribe-success",
                PRODUCT,
                &format!("cust-scan-{i}"),
                T0,
            ),
            sent_timestamp_ms: None,
        })
        .collect();
    let store = db.another_store().await;
    let pipeline =
        crate::common::localstack::pipeline(store.clone(), crate::common::localstack::unsigned());
    for r in pipeline.process_batch(&batch).await {
        assert!(
            matches!(r, mplink::process::Processed::Done(Outcome::Applied)),
            "{r:?}"
        );
    }
    store.close().await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let (seq_after, idx_after) = pg_scans(&schema, "mplink_event_log").await;
    assert_eq!(
        seq_after, seq_default,
        "the batch scanned the event log ({idx_after} index scans)"
    );
    db.cleanup().await;
}
