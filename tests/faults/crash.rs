//! Crash, database outage, replicas and graceful stop scenarios.

use crate::common::localstack::*;
use crate::common::*;
use crate::harness::{check, report, scaled, History};
use mplink::store::Store;
use sqlx::Connection;
use std::time::{Duration, Instant};

fn postgres_or_skip() -> bool {
    if !postgres_enabled() {
        eprintln!("PostgreSQL disabled (MPLINK_TEST_POSTGRES_URL=off): not run");
        return false;
    }
    true
}

async fn logged(store: &Store) -> usize {
    store.event_log().await.expect("event log").len()
}

async fn wait_logged(store: &Store, at_least: usize, within: Duration, what: &str) {
    eventually(within, what, || async { logged(store).await >= at_least }).await;
}

/// Waits until one of the worker's statements is stuck behind a lock the test holds.
async fn wait_for_lock_wait(db: &TestDb) {
    let mut admin = sqlx::PgConnection::connect(db.url.expose())
        .await
        .expect("admin connection");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE '%mplink_subscriptions%'",
        )
        .fetch_one(&mut admin)
        .await
        .expect("pg_stat_activity");
        if waiting > 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the worker never blocked on the held lock"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// 1. kill -9 at different moments while a backlog drains: mid-receive, at a random point,
/// mid-transaction, and between commit and delete; a restart each time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash() {
    if !postgres_or_skip() {
        return;
    }
    let db = TestDb::new(Backend::Postgres).await;
    // Short visibility so a dead worker's messages come back quickly; a receive count high
    // enough that repeated crashes never push a message to the dead-letter queue.
    let stack = Stack::new(10, Duration::from_secs(3)).await;
    let history = History::random(1, &stack.product, 50, scaled(2000));
    history.link_every_customer(&db.store).await;
    let bodies = history.bodies(1, scaled(200));
    let url = db.url.expose().to_string();
    let queue = stack.queue.queue_url.clone();

    // Mid-receive: the worker is in an open long poll on an empty queue.
    let mut w = WorkerProcess::spawn(
        &url,
        &queue,
        &["--wait-time", "20", "--visibility-timeout", "3"],
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    w.signal("KILL");
    w.wait(Duration::from_secs(5)).await;

    stack.send_bodies(&bodies).await;

    // At a random point of the drain.
    let mut w = WorkerProcess::spawn(
        &url,
        &queue,
        &["--max-in-flight", "16", "--visibility-timeout", "3"],
    );
    let cut = history.events.len() / 6 + rand::random::<usize>() % (history.events.len() / 6);
    wait_logged(
        &db.store,
        cut,
        Duration::from_secs(60),
        "the drain to start",
    )
    .await;
    w.signal("KILL");
    w.wait(Duration::from_secs(5)).await;

    // Mid-transaction: hold a subscription row the backlog still needs, let the worker block
    // on it inside its transaction, kill it there.
    let mut holder = sqlx::PgConnection::connect(&url)
        .await
        .expect("lock holder");
    let mut tx = holder.begin().await.expect("begin");
    let key = format!("cust:{}:cust-0", history.product);
    sqlx::query("INSERT INTO mplink_subscriptions (sub_key, state, version, updated_at) VALUES ($1, 'pending', 0, 0) ON CONFLICT DO NOTHING")
        .bind(&key)
        .execute(&mut *tx)
        .await
        .expect("ensure row");
    sqlx::query("SELECT sub_key FROM mplink_subscriptions WHERE sub_key = $1 FOR UPDATE")
        .bind(&key)
        .execute(&mut *tx)
        .await
        .expect("lock row");
    let mut w = WorkerProcess::spawn(
        &url,
        &queue,
        &["--max-in-flight", "16", "--visibility-timeout", "3"],
    );
    wait_for_lock_wait(&db).await;
    w.signal("KILL");
    w.wait(Duration::from_secs(5)).await;
    tx.rollback().await.expect("release the row");

    // Between commit and delete: the process aborts right after its 40th commit.
    let mut w = WorkerProcess::spawn_with_env(
        &url,
        &queue,
        &["--visibility-timeout", "3"],
        &[(mplink::failpoint::CRASH_AFTER_COMMITS_ENV, "40")],
    );
    let status = w.wait(Duration::from_secs(60)).await;
    assert!(!status.success(), "the crash point fired: {status}");
    let last_crash = Instant::now();

    // The restart finishes the backlog.
    let mut w = WorkerProcess::spawn(&url, &queue, &["--visibility-timeout", "3"]);
    wait_logged(
        &db.store,
        history.events.len(),
        Duration::from_secs(120),
        "the backlog after the crashes",
    )
    .await;
    let recovery = last_crash.elapsed();
    w.signal("TERM");
    assert!(w.wait(Duration::from_secs(30)).await.success());
    assert_eq!(
        stack.depth(&stack.queue.dead_letter_queue_url).await,
        (0, 0),
        "nothing went to the DLQ"
    );

    let mut tally = check(&db.store, &history, bodies.len(), 0).await;
    tally.recovery = Some(recovery);
    report("crash (kill -9 ×3, abort after commit ×1)", &tally);
    db.cleanup().await;
}

/// 2. PostgreSQL refuses connections for 10 s in the middle of a run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_outage() {
    if !postgres_or_skip() {
        return;
    }
    let db = TestDb::new(Backend::Postgres).await;
    let stack = Stack::new(3, Duration::from_secs(5)).await;
    let history = History::random(2, &stack.product, 40, scaled(1000));
    history.link_every_customer(&db.store).await;
    let bodies = history.bodies(2, scaled(100));
    let (first, second) = bodies.split_at(bodies.len() / 2);

    let (store, proxy, target) = store_via_proxy(&db).await;
    let mut config = stack.worker_config();
    config.exit_when_idle = false;
    config.max_in_flight = 16;
    let worker = spawn_worker(&stack, store, unsigned(), config).await;

    stack.send_bodies(first).await;
    eventually(Duration::from_secs(60), "the first half", || async {
        let (visible, hidden) = stack.depth(&stack.queue.queue_url).await;
        visible + hidden == 0
    })
    .await;
    let port = proxy.cut().await;
    stack.send_bodies(second).await;
    eventually(
        Duration::from_secs(20),
        "/readyz to go not ready",
        || async { http_get(worker.addr, "/readyz").await.0 == 503 },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert!(!worker.handle.is_finished(), "the worker stays up");
    let proxy = Proxy::start(port, &target).await;
    let restored = Instant::now();
    wait_logged(
        &db.store,
        history.events.len(),
        Duration::from_secs(90),
        "every message after the outage",
    )
    .await;
    let recovery = restored.elapsed();
    eventually(
        Duration::from_secs(30),
        "/readyz to be ready again",
        || async { http_get(worker.addr, "/readyz").await.0 == 200 },
    )
    .await;
    let (_, metrics) = http_get(worker.addr, "/metrics").await;
    assert!(
        metric(&metrics, "mplink_database_errors_total") > 0.0,
        "the outage was felt"
    );
    worker.shutdown.cancel();
    worker.handle.await.expect("worker");
    proxy.cut().await;
    assert_eq!(
        stack.depth(&stack.queue.dead_letter_queue_url).await,
        (0, 0),
        "the outage sent nothing to the DLQ"
    );

    let mut tally = check(&db.store, &history, bodies.len(), 0).await;
    tally.recovery = Some(recovery);
    report("database outage (10 s)", &tally);
    db.cleanup().await;
}

/// 4. Three worker processes on one queue and one PostgreSQL, contending for few subscriptions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas() {
    if !postgres_or_skip() {
        return;
    }
    let db = TestDb::new(Backend::Postgres).await;
    let stack = Stack::new(5, Duration::from_secs(30)).await;
    let history = History::random(4, &stack.product, 12, scaled(3000));
    history.link_every_customer(&db.store).await;
    let bodies = history.bodies(4, scaled(600));
    stack.send_bodies(&bodies).await;
    let url = db.url.expose().to_string();
    let started = Instant::now();
    let mut workers: Vec<WorkerProcess> = (0..3)
        .map(|_| WorkerProcess::spawn(&url, &stack.queue.queue_url, &["--max-in-flight", "16"]))
        .collect();
    wait_logged(
        &db.store,
        history.events.len(),
        Duration::from_secs(180),
        "three replicas to drain the queue",
    )
    .await;
    let took = started.elapsed();
    assert_queue_drained(&stack).await;
    for w in &workers {
        w.signal("TERM");
    }
    for w in &mut workers {
        assert!(w.wait(Duration::from_secs(30)).await.success());
    }
    let tally = check(&db.store, &history, bodies.len(), 0).await;
    println!(
        "three replicas drained {} messages in {:.1} s",
        bodies.len(),
        took.as_secs_f64()
    );
    report("replicas (3 processes)", &tally);
    db.cleanup().await;
}

async fn assert_queue_drained(stack: &Stack) {
    eventually(Duration::from_secs(30), "the queue to be empty", || async {
        stack.depth(&stack.queue.queue_url).await == (0, 0)
    })
    .await;
}

/// 5. SIGTERM while a backlog drains: exit 0 within the grace period, the next run finishes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_stop_under_load() {
    if !postgres_or_skip() {
        return;
    }
    let db = TestDb::new(Backend::Postgres).await;
    let stack = Stack::new(5, Duration::from_secs(4)).await;
    let history = History::random(5, &stack.product, 100, scaled(2000));
    history.link_every_customer(&db.store).await;
    let bodies = history.bodies(5, scaled(100));
    stack.send_bodies(&bodies).await;
    let url = db.url.expose().to_string();
    let grace = Duration::from_secs(10);

    let mut w = WorkerProcess::spawn(
        &url,
        &stack.queue.queue_url,
        &[
            "--grace-period",
            "10",
            "--max-in-flight",
            "32",
            "--visibility-timeout",
            "4",
        ],
    );
    wait_logged(
        &db.store,
        history.events.len() / 5,
        Duration::from_secs(60),
        "a fifth of the backlog",
    )
    .await;
    let stopped = Instant::now();
    w.signal("TERM");
    let status = w.wait(grace + Duration::from_secs(5)).await;
    let took = stopped.elapsed();
    assert!(status.success(), "exit status {status}");
    assert!(
        took < grace,
        "stopped in {took:?}, beyond the {grace:?} grace period"
    );
    let after_stop = logged(&db.store).await;
    assert!(
        after_stop < history.events.len(),
        "the stop came while work remained"
    );

    let restarted = Instant::now();
    let mut w = WorkerProcess::spawn(&url, &stack.queue.queue_url, &["--visibility-timeout", "4"]);
    wait_logged(
        &db.store,
        history.events.len(),
        Duration::from_secs(120),
        "the next run to finish the backlog",
    )
    .await;
    let recovery = restarted.elapsed();
    w.signal("TERM");
    assert!(w.wait(Duration::from_secs(30)).await.success());
    assert_queue_drained(&stack).await;
    println!(
        "SIGTERM to exit: {:.2} s; {after_stop} of {} events done before the stop",
        took.as_secs_f64(),
        history.events.len()
    );
    let mut tally = check(&db.store, &history, bodies.len(), 0).await;
    tally.recovery = Some(recovery);
    report("graceful stop under load", &tally);
    db.cleanup().await;
}
