//! The worker against real LocalStack SNS, EventBridge and SQS, on both databases.

use crate::common::localstack::*;
use crate::common::*;
use mplink::ledger::{LinkRequest, LinkState, SubState};
use mplink::store::{StatusFilter, StatusRow, Store};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use std::collections::HashMap;
use std::time::{Duration, Instant};

const ACCOUNT: &str = "845735284135";

async fn org(store: &Store, org: &str) -> StatusRow {
    let rows = store
        .status(&StatusFilter {
            org_id: Some(org.into()),
            customer_identifier: None,
        })
        .await
        .expect("status");
    assert_eq!(rows.len(), 1, "{rows:?}");
    rows.into_iter().next().expect("row")
}

async fn assert_queue_empty(stack: &Stack) {
    eventually(Duration::from_secs(10), "the queue to be empty", || async {
        stack.depth(&stack.queue.queue_url).await == (0, 0)
    })
    .await;
}

async fn sns_and_eventbridge_end_to_end(backend: Backend) {
    let db = TestDb::new(backend).await;
    let stack = Stack::new(5, Duration::from_secs(30)).await;
    let s = &db.store;
    let license = format!(
        "arn:aws:license-manager::123456789012:license:l-{}",
        stack.suffix.replace('-', "")
    );
    let agreement = format!("agmt-{}", stack.suffix);
    s.link(&LinkRequest {
        org_id: "org-sns".into(),
        product_code: stack.product.clone(),
        customer_identifier: Some("cust-1".into()),
        customer_aws_account_id: None,
        license_arn: None,
        requested_at_ms: T0,
    })
    .await
    .expect("link sns org");
    s.link(&LinkRequest {
        org_id: "org-eb".into(),
        product_code: stack.product.clone(),
        customer_identifier: None,
        customer_aws_account_id: Some(ACCOUNT.into()),
        license_arn: Some(license.clone()),
        requested_at_ms: T0,
    })
    .await
    .expect("link eb org");

    let t = chrono::Utc::now().timestamp();
    let agreement_detail = |extra: serde_json::Value| {
        let mut a = serde_json::json!({ "id": agreement });
        a.as_object_mut()
            .expect("obj")
            .extend(extra.as_object().expect("obj").clone());
        serde_json::json!({
            "requestId": format!("req-{}", rand::random::<u32>()),
            "catalog": "AWSMarketplace",
            "agreement": a,
            "acceptor": { "accountId": ACCOUNT },
            "proposer": { "accountId": "123456789012" },
        })
    };
    let license_detail = serde_json::json!({
        "requestId": "req-license",
        "catalog": "AWSMarketplace",
        "agreement": { "id": agreement },
        "product": { "code": stack.product, "id": "prod-test" },
        "license": { "arn": license },
        "acceptor": { "accountId": ACCOUNT },
        "proposer": { "accountId": "123456789012" },
    });
    stack.publish("subscribe-success", "cust-1").await;
    stack
        .put_event(
            "Purchase Agreement Created - Proposer",
            agreement_detail(serde_json::json!({"intent": "NEW", "status": "ACTIVE"})),
            t,
        )
        .await;
    stack
        .put_event(
            "License Updated - Manufacturer",
            license_detail.clone(),
            t + 1,
        )
        .await;
    stack.wait_for_visible(3).await;
    let summary = drain(&stack, s).await;
    assert_eq!(
        (summary.received, summary.applied, summary.rejected),
        (3, 3, 0),
        "{summary:?}"
    );
    for o in ["org-sns", "org-eb"] {
        let row = org(s, o).await;
        assert_eq!(row.link_state, Some(LinkState::Linked), "{o}: {row:?}");
        assert_eq!(row.subscription_state, SubState::Active);
    }
    assert_eq!(
        org(s, "org-eb").await.agreement_id.as_deref(),
        Some(agreement.as_str())
    );

    stack.publish("unsubscribe-pending", "cust-1").await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    stack.publish("unsubscribe-success", "cust-1").await;
    stack
        .put_event(
            "Purchase Agreement Ended - Proposer",
            agreement_detail(serde_json::json!({"status": "CANCELLED"})),
            t + 60,
        )
        .await;
    stack
        .put_event(
            "License Deprovisioned - Manufacturer",
            license_detail,
            t + 120,
        )
        .await;
    stack.wait_for_visible(4).await;
    let summary = drain(&stack, s).await;
    // Messages are worked on concurrently: an older one finishing last is stale, not applied.
    assert_eq!(
        (summary.received, summary.applied + summary.stale),
        (4, 4),
        "{summary:?}"
    );
    for o in ["org-sns", "org-eb"] {
        let row = org(s, o).await;
        assert_eq!(row.link_state, Some(LinkState::Unlinked), "{o}: {row:?}");
        assert_eq!(row.payment_method, None);
        assert_eq!(row.subscription_state, SubState::Cancelled);
    }
    let log = s.event_log().await.expect("log");
    assert_eq!(log.len(), 7);
    assert!(
        log.iter()
            .all(|e| e.outcome == "applied" || e.outcome == "stale"),
        "{log:?}"
    );
    assert_queue_empty(&stack).await;
    db.cleanup().await;
}

async fn duplicates_and_reordering_through_the_queue(backend: Backend) {
    let db = TestDb::new(backend).await;
    let stack = Stack::new(5, Duration::from_secs(30)).await;
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let actions = [
        "subscribe-success",
        "subscribe-fail",
        "unsubscribe-pending",
        "unsubscribe-success",
        "entitlement-updated",
    ];
    let history: Vec<(String, i64, &str, String)> = (0..60)
        .map(|i| {
            let customer = format!("cust-{}", rng.gen_range(0..4));
            let t = T0 + rng.gen_range(0..10) * 1_000;
            (
                customer,
                t,
                *actions.choose(&mut rng).expect("action"),
                format!("sns-{}-{i}", stack.suffix),
            )
        })
        .collect();
    let mut bodies: Vec<String> = history
        .iter()
        .map(|(c, t, a, id)| sns_body(id, a, &stack.product, c, *t))
        .collect();
    let duplicates: Vec<String> = bodies.choose_multiple(&mut rng, 20).cloned().collect();
    bodies.extend(duplicates);
    bodies.shuffle(&mut rng);
    stack.send_bodies(&bodies).await;

    let mut config = stack.worker_config();
    config.exit_when_idle = false;
    config.receive_loops = 3;
    config.max_in_flight = 8;
    let worker = spawn_worker(&stack, db.store.clone(), unsigned(), config).await;
    eventually(
        Duration::from_secs(60),
        "every message to be applied",
        || async { db.store.event_log().await.expect("log").len() == history.len() },
    )
    .await;
    assert_queue_empty(&stack).await;

    let (status, _) = http_get(worker.addr, "/healthz").await;
    assert_eq!(status, 200);
    let (status, body) = http_get(worker.addr, "/readyz").await;
    assert_eq!(status, 200, "{body}");
    let (status, text) = http_get(worker.addr, "/metrics").await;
    assert_eq!(status, 200);
    let received = metric(&text, "mplink_messages_received_total");
    let applied = metric(&text, "mplink_messages_total{outcome=\"applied\"}");
    let stale = metric(&text, "mplink_messages_total{outcome=\"stale\"}");
    let duplicate = metric(&text, "mplink_messages_total{outcome=\"duplicate\"}");
    let rejected = metric(&text, "mplink_messages_total{outcome=\"rejected\"}");
    assert_eq!(received, bodies.len() as f64, "{text}");
    assert_eq!(applied + stale, history.len() as f64, "{text}");
    assert_eq!(duplicate, 20.0, "{text}");
    assert_eq!(rejected, 0.0);
    assert_eq!(metric(&text, "mplink_apply_seconds_count"), received);
    assert_eq!(metric(&text, "mplink_in_flight"), 0.0);

    worker.shutdown.cancel();
    let summary = worker.handle.await.expect("worker");
    assert_eq!(summary.delete_failures, 0);

    let mut per: HashMap<String, Vec<(i64, &str, String)>> = HashMap::new();
    for (c, t, a, id) in &history {
        per.entry(c.clone())
            .or_default()
            .push((*t, a, format!("sns:{id}")));
    }
    for sub in db.store.subscriptions().await.expect("subs") {
        let customer = sub.customer_identifier.clone().expect("customer");
        assert_eq!(
            sub.state.as_str(),
            model_state(&per[&customer]),
            "{customer}"
        );
    }
    db.cleanup().await;
}

async fn poison_messages_end_in_the_dead_letter_queue(backend: Backend) {
    let db = TestDb::new(backend).await;
    let stack = Stack::new(2, Duration::from_secs(2)).await;
    let good: Vec<String> = (0..3)
        .map(|i| {
            sns_body(
                &format!("good-{}-{i}", stack.suffix),
                "subscribe-success",
                &stack.product,
                &format!("c{i}"),
                T0 + i,
            )
        })
        .collect();
    let poison = vec![
        "this is not json".to_string(),
        sns_body(
            &format!("bad-{}", stack.suffix),
            "subscribe-perhaps",
            &stack.product,
            "c9",
            T0,
        ),
    ];
    let mut all = good.clone();
    all.insert(1, poison[0].clone());
    all.push(poison[1].clone());
    stack.send_bodies(&all).await;

    let mut config = stack.worker_config();
    config.exit_when_idle = false;
    let worker = spawn_worker(&stack, db.store.clone(), unsigned(), config).await;
    let mut dead: Vec<String> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while dead.len() < 2 {
        assert!(
            Instant::now() < deadline,
            "poison did not reach the dead-letter queue: {dead:?}"
        );
        for body in stack.dead_letters().await {
            if !dead.contains(&body) {
                dead.push(body);
            }
        }
    }
    worker.shutdown.cancel();
    let summary = worker.handle.await.expect("worker");
    assert_eq!(summary.applied, 3, "{summary:?}");
    assert!(
        summary.rejected >= 4,
        "each poison message was rejected on every receive: {summary:?}"
    );
    dead.sort();
    let mut expected = poison.clone();
    expected.sort();
    assert_eq!(dead, expected);

    let log = db.store.event_log().await.expect("log");
    let rejected: Vec<_> = log.iter().filter(|e| e.outcome == "rejected").collect();
    assert_eq!(rejected.len(), 2, "one record per poison message: {log:?}");
    let reasons: Vec<&str> = rejected
        .iter()
        .filter_map(|e| e.reason.as_deref())
        .collect();
    assert!(
        reasons.iter().any(|r| r.starts_with("not_json")),
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|r| r.starts_with("unknown_action") && r.contains("subscribe-perhaps")),
        "{reasons:?}"
    );
    assert_eq!(log.iter().filter(|e| e.outcome == "applied").count(), 3);
    assert_queue_empty(&stack).await;
    db.cleanup().await;
}

async fn sigterm_with_messages_in_flight(backend: Backend) {
    let db = TestDb::new(backend).await;
    let stack = Stack::new(5, Duration::from_secs(4)).await;
    let n = 300;
    let bodies: Vec<String> = (0..n)
        .map(|i| {
            sns_body(
                &format!("term-{}-{i}", stack.suffix),
                "subscribe-success",
                &stack.product,
                &format!("c{i}"),
                T0 + i,
            )
        })
        .collect();
    stack.send_bodies(&bodies).await;

    let mut child = WorkerProcess::spawn(
        db.url.expose(),
        &stack.queue.queue_url,
        &["--grace-period", "10", "--max-in-flight", "16"],
    );
    eventually(
        Duration::from_secs(30),
        "the worker to start applying",
        || async { !db.store.event_log().await.expect("log").is_empty() },
    )
    .await;
    let stopped_at = Instant::now();
    child.signal("TERM");
    let status = child.wait(Duration::from_secs(15)).await;
    let took = stopped_at.elapsed();
    assert!(status.success(), "exit status {status}");
    assert!(
        took < Duration::from_secs(10),
        "stopped in {took:?}, beyond the grace period"
    );
    let first_run = db.store.event_log().await.expect("log").len();
    // A second run picks up whatever was left; nothing is applied twice. (The long poll
    // cancelled at SIGTERM may have taken messages with it: they come back once their
    // visibility times out, like any unacknowledged message, so this run waits for them.)
    let mut child = WorkerProcess::spawn(db.url.expose(), &stack.queue.queue_url, &[]);
    eventually(
        Duration::from_secs(60),
        "the second run to finish the backlog",
        || async { db.store.event_log().await.expect("log").len() >= n as usize },
    )
    .await;
    child.signal("TERM");
    assert!(child.wait(Duration::from_secs(15)).await.success());
    let log = db.store.event_log().await.expect("log");
    assert_eq!(log.len(), n as usize, "first run recorded {first_run}");
    assert!(log.iter().all(|e| e.outcome == "applied"));
    assert_eq!(
        db.store.subscriptions().await.expect("subs").len(),
        n as usize
    );
    assert_queue_empty(&stack).await;
    db.cleanup().await;
}

both_backends! {
    sns_and_eventbridge_end_to_end => sns_and_eventbridge_end_to_end;
    duplicates_and_reordering_through_the_queue => duplicates_and_reordering_through_the_queue;
    poison_messages_end_in_the_dead_letter_queue => poison_messages_end_in_the_dead_letter_queue;
    sigterm_with_messages_in_flight => sigterm_with_messages_in_flight;
}

/// The database made unreachable (a proxy in front of PostgreSQL is cut) while messages arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_outage_is_survived() {
    if !postgres_enabled() {
        eprintln!("PostgreSQL disabled (MPLINK_TEST_POSTGRES_URL=off): not run");
        return;
    }
    let db = TestDb::new(Backend::Postgres).await;
    let stack = Stack::new(2, Duration::from_secs(3)).await;
    let (store, proxy, target) = store_via_proxy(&db).await;

    let batch = |from: i64, to: i64| -> Vec<String> {
        (from..to)
            .map(|i| {
                sns_body(
                    &format!("out-{}-{i}", stack.suffix),
                    "subscribe-success",
                    &stack.product,
                    &format!("c{i}"),
                    T0 + i,
                )
            })
            .collect()
    };
    let mut config = stack.worker_config();
    config.exit_when_idle = false;
    let worker = spawn_worker(&stack, store, unsigned(), config).await;
    stack.send_bodies(&batch(0, 20)).await;
    eventually(Duration::from_secs(30), "the first batch", || async {
        db.store.event_log().await.expect("log").len() == 20
    })
    .await;

    let port = proxy.cut().await;
    stack.send_bodies(&batch(20, 40)).await;
    eventually(
        Duration::from_secs(30),
        "/readyz to report not ready",
        || async { http_get(worker.addr, "/readyz").await.0 == 503 },
    )
    .await;
    // Longer than visibility × maxReceiveCount: without the worker's care these would be dead letters.
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert!(
        !worker.handle.is_finished(),
        "the worker keeps running through the outage"
    );
    assert_eq!(http_get(worker.addr, "/healthz").await.0, 200);

    let proxy = Proxy::start(port, &target).await;
    eventually(
        Duration::from_secs(60),
        "every message after the outage",
        || async { db.store.event_log().await.expect("log").len() == 40 },
    )
    .await;
    eventually(
        Duration::from_secs(30),
        "/readyz to report ready again",
        || async { http_get(worker.addr, "/readyz").await.0 == 200 },
    )
    .await;
    worker.shutdown.cancel();
    worker.handle.await.expect("worker");
    proxy.cut().await;

    let log = db.store.event_log().await.expect("log");
    assert!(log.iter().all(|e| e.outcome == "applied"), "{log:?}");
    assert!(
        stack.dead_letters().await.is_empty(),
        "the outage sent nothing to the dead-letter queue"
    );
    assert_queue_empty(&stack).await;
    db.cleanup().await;
}
