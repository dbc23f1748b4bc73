//! Queue outage, slow handler and bad input at volume.
//!
//! - `queue_outage` (issue scenario 3): the real `mplink run` binary talks to LocalStack through a
//!   TCP proxy that the test cuts for 10 s. The worker must back off with a capped delay (read
//!   back from its JSON logs), not spin the CPU, keep running and resume.
//! - `slow_handler` (scenario 6): a row lock held by the test makes one message's apply block for
//!   about 3.5 visibility timeouts while two in-process workers share the queue. The heartbeat
//!   must keep the message hidden: received once, never redelivered, nothing else held up.
//! - `bad_input_at_volume` (scenario 7): the real binary, verifying signatures, consumes good
//!   messages published through real SNS mixed with malformed, foreign, oversized, wrongly signed
//!   and truncated ones. Every good event applies once, every bad one is rejected with its own
//!   reason and ends in the dead-letter queue, and the worker's memory stays flat.

use crate::common::localstack::*;
use crate::common::*;
use crate::harness::{check, report, scaled, History};
use aws_sdk_sqs::types::SendMessageBatchRequestEntry;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde_json::Value;
use sqlx::Connection;
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------------
// Shared helpers
// ---------------------------------------------------------------------------------------------

/// Clock ticks per second for `/proc/<pid>/stat` (`getconf CLK_TCK`, 100 if that fails).
fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// User + system CPU seconds a process has used.
fn cpu_seconds(pid: u32, ticks: f64) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc/<pid>/stat");
    // The command name is in parentheses and may contain spaces: count fields after the last ')'.
    let rest = &stat[stat.rfind(')').expect("comm") + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Field 14 (utime) and 15 (stime) of the whole line are 12 and 13 after the command.
    let utime: f64 = fields[11].parse().expect("utime");
    let stime: f64 = fields[12].parse().expect("stime");
    (utime + stime) / ticks
}

/// Resident set size in KiB, or None once the process is gone.
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// `host:port` of the LocalStack endpoint, for the proxy to forward to.
fn endpoint_host_port() -> String {
    let e = endpoint();
    let e = e.split_once("://").map_or(e.as_str(), |(_, rest)| rest);
    e.trim_end_matches('/').to_string()
}

/// The SNS MessageId of a hand-made envelope.
fn envelope_id(body: &str) -> String {
    let v: Value = serde_json::from_str(body).expect("envelope");
    v["MessageId"].as_str().expect("MessageId").to_string()
}

/// One sample of Prometheus text, 0 when the series has not appeared yet.
fn metric_or_zero(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|r| r.trim().parse().ok()))
        .unwrap_or(0.0)
}

async fn metrics_of(addr: SocketAddr) -> String {
    let (status, text) = http_get(addr, "/metrics").await;
    assert_eq!(status, 200, "{text}");
    text
}

/// Sends bodies to the source queue and returns each one's SQS message id, in order. Small
/// bodies go ten to a request; large ones one at a time (a batch is limited to 256 KiB in all).
async fn send_with_ids(stack: &Stack, bodies: &[String]) -> Vec<String> {
    let mut ids = vec![String::new(); bodies.len()];
    let (large, small): (Vec<usize>, Vec<usize>) =
        (0..bodies.len()).partition(|&i| bodies[i].len() > 16 * 1024);
    for &i in &large {
        let out = stack
            .sqs
            .send_message()
            .queue_url(&stack.queue.queue_url)
            .message_body(&bodies[i])
            .send()
            .await
            .expect("send large message");
        ids[i] = out.message_id().expect("message id").to_string();
    }
    for chunk in small.chunks(10) {
        let entries: Vec<SendMessageBatchRequestEntry> = chunk
            .iter()
            .map(|&i| {
                SendMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .message_body(&bodies[i])
                    .build()
                    .expect("entry")
            })
            .collect();
        let out = stack
            .sqs
            .send_message_batch()
            .queue_url(&stack.queue.queue_url)
            .set_entries(Some(entries))
            .send()
            .await
            .expect("send batch");
        assert!(out.failed().is_empty(), "{:?}", out.failed());
        for ok in out.successful() {
            ids[ok.id().parse::<usize>().expect("entry id")] = ok.message_id().to_string();
        }
    }
    assert!(
        ids.iter().all(|id| !id.is_empty()),
        "a message id is missing"
    );
    ids
}

/// Publishes messages to `topic` through real SNS, ten to a request; returns the MessageId SNS
/// gave each, in order.
async fn publish_batch(sns: &aws_sdk_sns::Client, topic: &str, messages: &[String]) -> Vec<String> {
    let mut ids = Vec::with_capacity(messages.len());
    for chunk in messages.chunks(10) {
        let entries = chunk
            .iter()
            .enumerate()
            .map(|(i, m)| {
                aws_sdk_sns::types::PublishBatchRequestEntry::builder()
                    .id(i.to_string())
                    .message(m)
                    .build()
                    .expect("entry")
            })
            .collect();
        let out = sns
            .publish_batch()
            .topic_arn(topic)
            .set_publish_batch_request_entries(Some(entries))
            .send()
            .await
            .expect("sns publish batch");
        assert!(out.failed().is_empty(), "{:?}", out.failed());
        let mut got = vec![String::new(); chunk.len()];
        for ok in out.successful() {
            let i: usize = ok.id().and_then(|i| i.parse().ok()).expect("entry id");
            got[i] = ok.message_id().expect("sns message id").to_string();
        }
        assert!(got.iter().all(|id| !id.is_empty()), "{got:?}");
        ids.extend(got);
    }
    ids
}

/// The legacy marketplace JSON SNS carries for `customer` of `product`.
fn marketplace_json(action: &str, product: &str, customer: &str) -> String {
    serde_json::json!({
        "action": action,
        "customer-identifier": customer,
        "product-code": product,
        "offer-identifier": "offer-abcexample123",
        "isFreeTrialTermPresent": "false",
    })
    .to_string()
}

/// Receives `n` messages from `url` and keeps them hidden long enough to be received once.
async fn receive_all(stack: &Stack, url: &str, n: usize, within: Duration) -> Vec<String> {
    let deadline = Instant::now() + within;
    let mut seen: HashSet<String> = HashSet::new();
    let mut bodies = Vec::new();
    while bodies.len() < n {
        assert!(
            Instant::now() < deadline,
            "only {} of {n} messages could be received from {url}",
            bodies.len()
        );
        let out = stack
            .sqs
            .receive_message()
            .queue_url(url)
            .max_number_of_messages(10)
            .visibility_timeout(600)
            .wait_time_seconds(1)
            .send()
            .await
            .expect("receive");
        for m in out.messages() {
            if seen.insert(m.message_id().unwrap_or_default().to_string()) {
                bodies.push(m.body().unwrap_or_default().to_string());
            }
        }
    }
    bodies
}

/// True once every id in `ids` has an event-log record.
async fn all_logged(store: &mplink::store::Store, ids: &HashSet<&str>) -> bool {
    let log = store.event_log().await.expect("log");
    let logged: HashSet<&str> = log.iter().map(|e| e.message_id.as_str()).collect();
    ids.iter().all(|id| logged.contains(id))
}

async fn queue_total(stack: &Stack, url: &str) -> u64 {
    let (visible, hidden) = stack.depth(url).await;
    visible + hidden
}

// ---------------------------------------------------------------------------------------------
// 3. Queue outage
// ---------------------------------------------------------------------------------------------

/// The worker's backoff cap, in seconds, for the outage.
const OUTAGE_BACKOFF_CAP_S: u64 = 2;
/// How long SQS stays unreachable.
const OUTAGE: Duration = Duration::from_secs(10);
/// Longer than the worker's long-poll wait (1 s): after this, no poll opened before the cut is
/// still waiting inside LocalStack.
const ORPHANED_POLLS: Duration = Duration::from_secs(2);
/// Longest acceptable time from the restore to every event applied: a loop may be in its worker
/// backoff (at most the cap) when the queue comes back.
const RECOVERY_BOUND: Duration = Duration::from_secs(10);
/// Most CPU the idle-but-failing worker may use during the outage.
const OUTAGE_CPU_BUDGET_S: f64 = 1.5;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_outage() {
    if !postgres_enabled() {
        eprintln!("PostgreSQL disabled (MPLINK_TEST_POSTGRES_URL=off): queue_outage not run");
        return;
    }
    let started = Instant::now();
    let db = TestDb::new(Backend::Postgres).await;
    let stack = Stack::new(5, Duration::from_secs(30)).await;
    let n = scaled(200);
    let history = History::random(3, &stack.product, (n / 8).max(2), n);
    history.link_every_customer(&db.store).await;
    let bodies = history.bodies(3, scaled(20));
    let (first, second) = bodies.split_at(bodies.len() / 2);
    let first_ids: HashSet<String> = first.iter().map(|b| envelope_id(b)).collect();
    let only_second: HashSet<String> = second
        .iter()
        .map(|b| envelope_id(b))
        .filter(|id| !first_ids.contains(id))
        .collect();
    assert!(
        !only_second.is_empty(),
        "the second half must bring new events"
    );

    // The worker reaches SQS only through the proxy; the test's own client goes direct.
    let target = endpoint_host_port();
    let proxy = Proxy::start(0, &target).await;
    let port = proxy.port;
    let backoff_cap = OUTAGE_BACKOFF_CAP_S.to_string();
    let mut worker = WorkerProcess::spawn_with_env(
        db.url.expose(),
        &stack.queue.queue_url,
        &[
            "--verify-signatures",
            "false",
            "--backoff-cap",
            &backoff_cap,
        ],
        &[("AWS_ENDPOINT_URL", &format!("http://127.0.0.1:{port}"))],
    );
    let pid = worker.pid();

    stack.send_bodies(first).await;
    eventually(
        Duration::from_secs(60),
        "the first half to be applied",
        || async {
            let log = db.store.event_log().await.expect("log");
            let ids: HashSet<&str> = log.iter().map(|e| e.message_id.as_str()).collect();
            first_ids.iter().all(|id| ids.contains(id.as_str()))
        },
    )
    .await;
    // Deletes flushed too, so none is pending when the queue goes away.
    eventually(
        Duration::from_secs(20),
        "the first half to be deleted",
        || async { queue_total(&stack, &stack.queue.queue_url).await == 0 },
    )
    .await;
    let failures_before = receive_failures(&worker.log_lines()).len();

    // The outage.
    let port_again = proxy.cut().await;
    assert_eq!(port_again, port);
    let ticks = clock_ticks();
    let cut_at = Instant::now();
    let cpu_at_cut = cpu_seconds(pid, ticks);
    // A long poll that was open when the proxy cut it is still waiting inside LocalStack, which
    // does not notice the client went: what it picked up would be marked in flight and its
    // response lost, so those messages would return only after the visibility timeout (30 s).
    // Real SQS does the same with a lost response; let the orphaned polls run out (wait time
    // 1 s) before the second half arrives, so recovery measures the backoff and nothing else.
    tokio::time::sleep(ORPHANED_POLLS).await;
    stack.send_bodies(second).await;
    let mut cpu_samples = Vec::new();
    while cut_at.elapsed() < OUTAGE {
        tokio::time::sleep(Duration::from_millis(500)).await;
        cpu_samples.push(cpu_seconds(pid, ticks) - cpu_at_cut);
    }
    let cpu_used = cpu_seconds(pid, ticks) - cpu_at_cut;
    let outage = cut_at.elapsed();
    println!(
        "queue_outage: CPU used during the {:.1} s outage: {cpu_used:.2} s (samples {:?})",
        outage.as_secs_f64(),
        cpu_samples
            .iter()
            .map(|c| format!("{c:.2}"))
            .collect::<Vec<_>>()
    );
    assert!(
        worker.running(),
        "the worker died during the outage:\n{}",
        worker.log_text()
    );
    assert!(
        cpu_used < OUTAGE_CPU_BUDGET_S,
        "the worker spun during the outage: {cpu_used:.2} s of CPU in {outage:?}"
    );
    // The outage was real: nothing of the second half got through.
    let log = db.store.event_log().await.expect("log");
    let leaked = log
        .iter()
        .filter(|e| only_second.contains(&e.message_id))
        .count();
    assert_eq!(
        leaked, 0,
        "the worker reached SQS during the outage (proxy bypassed?)"
    );
    assert_eq!(
        queue_total(&stack, &stack.queue.queue_url).await,
        second.len() as u64,
        "the second half waits in the queue"
    );

    // Back again, on the same port.
    let proxy = Proxy::start(port, &target).await;
    let restored = Instant::now();
    let all_ids: HashSet<&str> = history.events.iter().map(|e| e.3.as_str()).collect();
    eventually(
        Duration::from_secs(60),
        "every event after the outage",
        || all_logged(&db.store, &all_ids),
    )
    .await;
    let recovery = restored.elapsed();
    let recovered_ms = mplink::time::now_ms();
    eventually(Duration::from_secs(20), "the queue to drain", || async {
        queue_total(&stack, &stack.queue.queue_url).await == 0
    })
    .await;

    // What the logs say about the backoff.
    let lines = worker.log_lines();
    let failures = receive_failures(&lines);
    let during: Vec<&Failure> = failures[failures_before..].iter().collect();
    print_failures(&during);
    assert!(
        during.len() >= 3,
        "expected several 'receive failed; backing off' lines, found {}:\n{}",
        during.len(),
        worker.log_text()
    );
    let cap_ms = OUTAGE_BACKOFF_CAP_S * 1000;
    for f in &during {
        assert!(
            f.delay_ms <= cap_ms,
            "delay above the {cap_ms} ms cap: {f:?}"
        );
    }
    let mut grew = false;
    let loops: HashSet<u64> = during.iter().map(|f| f.receive_loop).collect();
    for l in &loops {
        let seq: Vec<&&Failure> = during.iter().filter(|f| f.receive_loop == *l).collect();
        for w in seq.windows(2) {
            assert!(
                w[1].attempt == w[0].attempt + 1,
                "loop {l}: attempts must count up during one outage: {seq:?}"
            );
        }
        let first = seq[0].delay_ms;
        let max = seq.iter().map(|f| f.delay_ms).max().unwrap_or(0);
        if seq.len() >= 3 && max > first {
            grew = true;
        }
    }
    assert!(
        grew,
        "no receive loop's delay grew over the outage: {during:?}"
    );
    // The schedule itself: attempt k waits within [c/2, c], c = min(base · 2^(k-1), cap), with
    // the worker's fixed base of 200 ms (`WorkerConfig::new`; `run` has no flag for it).
    for f in &during {
        let ceiling = (100u64 << f.attempt.min(20)).min(cap_ms);
        assert!(
            f.delay_ms >= ceiling / 2 && f.delay_ms <= ceiling,
            "attempt {} waited {} ms, outside [{}, {ceiling}] ms: {f:?}",
            f.attempt,
            f.delay_ms,
            ceiling / 2
        );
    }
    // The worker makes one SDK attempt per receive, so within 10 s the doubling (0.2, 0.4,
    // 0.8, 1.6 s, then the 2 s cap) must reach the cap and stay there.
    let capped: Vec<&Failure> = during.iter().copied().filter(|f| f.attempt >= 5).collect();
    assert!(
        !capped.is_empty(),
        "the backoff never reached its cap: {during:?}"
    );
    assert!(
        capped
            .iter()
            .all(|f| f.delay_ms >= cap_ms / 2 && f.delay_ms <= cap_ms),
        "capped delays outside [{}, {cap_ms}] ms: {capped:?}",
        cap_ms / 2
    );
    // Once every event is in, no loop may still be failing.
    let late: Vec<&Failure> = failures
        .iter()
        .filter(|f| f.at_ms > recovered_ms + 1_000)
        .collect();
    assert!(
        late.is_empty(),
        "receives kept failing after the queue came back: {late:?}"
    );

    assert!(
        worker.running(),
        "the worker exited:\n{}",
        worker.log_text()
    );
    assert_eq!(
        queue_total(&stack, &stack.queue.dead_letter_queue_url).await,
        0,
        "the outage pushed messages to the dead-letter queue"
    );
    worker.signal("TERM");
    let status = worker.wait(Duration::from_secs(15)).await;
    assert!(
        status.success(),
        "exit after SIGTERM: {status:?}\n{}",
        worker.log_text()
    );
    let _ = proxy.cut().await;

    let mut tally = check(&db.store, &history, bodies.len(), 0).await;
    tally.recovery = Some(recovery);
    assert!(
        recovery < RECOVERY_BOUND,
        "recovery took {recovery:?} (backoff cap {OUTAGE_BACKOFF_CAP_S} s)"
    );
    println!(
        "queue_outage: ran in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    report("queue_outage", &tally);
    db.cleanup().await;
}

/// A `receive failed; backing off` log line.
#[derive(Debug)]
struct Failure {
    at_ms: i64,
    receive_loop: u64,
    attempt: u64,
    delay_ms: u64,
}

fn receive_failures(lines: &[Value]) -> Vec<Failure> {
    lines
        .iter()
        .filter(|l| l["message"] == "receive failed; backing off")
        .map(|l| Failure {
            at_ms: l["timestamp"]
                .as_str()
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                .map_or(0, |t| t.timestamp_millis()),
            receive_loop: l["span"]["n"].as_u64().unwrap_or(u64::MAX),
            attempt: l["attempt"].as_u64().expect("attempt field"),
            delay_ms: l["delay_ms"].as_u64().expect("delay_ms field"),
        })
        .collect()
}

fn print_failures(failures: &[&Failure]) {
    let mut by_loop: HashMap<u64, Vec<String>> = HashMap::new();
    for f in failures {
        by_loop
            .entry(f.receive_loop)
            .or_default()
            .push(format!("#{} {} ms", f.attempt, f.delay_ms));
    }
    let mut loops: Vec<_> = by_loop.into_iter().collect();
    loops.sort();
    for (l, seq) in loops {
        println!(
            "queue_outage: receive loop {l} backed off: {}",
            seq.join(", ")
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 6. Slow handler
// ---------------------------------------------------------------------------------------------

/// The queue's (and the workers') visibility timeout.
const SLOW_VISIBILITY: Duration = Duration::from_secs(2);
/// How long the test holds the subscription's row lock after the worker took the message.
const LOCK_HELD: Duration = Duration::from_secs(7);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_handler() {
    if !postgres_enabled() {
        eprintln!("PostgreSQL disabled (MPLINK_TEST_POSTGRES_URL=off): slow_handler not run");
        return;
    }
    let started = Instant::now();
    let db = TestDb::new(Backend::Postgres).await;
    let stack = Stack::new(5, SLOW_VISIBILITY).await;
    let n = scaled(40);
    let mut history = History::random(6, &stack.product, (n / 4).max(2), n);
    let others: Vec<String> = history
        .events
        .iter()
        .map(|(c, t, a, id)| sns_body(id, a, &stack.product, c, *t))
        .collect();
    let mut rng = rand::rngs::StdRng::seed_from_u64(6);
    let mut other_bodies = others.clone();
    for _ in 0..scaled(5) {
        other_bodies.push(others[rng.gen_range(0..others.len())].clone());
    }
    other_bodies.shuffle(&mut rng);

    // A subscription of its own: applied once directly, then locked by the test.
    let customer = "cust-blocked";
    let seed_id = format!("{}-seed", stack.product);
    let blocked_id = format!("{}-blocked", stack.product);
    let seed_body = sns_body(&seed_id, "subscribe-success", &stack.product, customer, T0);
    let blocked_body = sns_body(
        &blocked_id,
        "unsubscribe-pending",
        &stack.product,
        customer,
        T0 + 3_600_000,
    );
    history.events.push((
        customer.to_string(),
        T0,
        "subscribe-success",
        seed_id.clone(),
    ));
    history.events.push((
        customer.to_string(),
        T0 + 3_600_000,
        "unsubscribe-pending",
        blocked_id.clone(),
    ));
    history.link_every_customer(&db.store).await;
    let seeded = db
        .store
        .apply(&decoded("seed", &seed_body), &seed_body)
        .await
        .expect("seed");
    assert_eq!(seeded.as_str(), "applied");
    let sub_key = decoded("blocked", &blocked_body).subject.as_key();

    let mut conn = sqlx::PgConnection::connect(db.url.expose())
        .await
        .expect("test connection");
    let mut tx = conn.begin().await.expect("begin");
    let locked: Option<String> = sqlx::query_scalar(
        "SELECT sub_key FROM mplink_subscriptions WHERE sub_key = $1 FOR UPDATE",
    )
    .bind(&sub_key)
    .fetch_optional(&mut *tx)
    .await
    .expect("lock the subscription");
    assert_eq!(
        locked.as_deref(),
        Some(sub_key.as_str()),
        "the seeded row exists"
    );

    let mut config = stack.worker_config();
    config.exit_when_idle = false;
    config.visibility_timeout = SLOW_VISIBILITY;
    let a = spawn_worker(&stack, db.store.clone(), unsigned(), config.clone()).await;
    let b = spawn_worker(&stack, db.another_store().await, unsigned(), config).await;
    let sum = |name: &'static str| {
        let (a, b) = (a.addr, b.addr);
        async move {
            metric_or_zero(&metrics_of(a).await, name) + metric_or_zero(&metrics_of(b).await, name)
        }
    };

    // The blocked message first, alone, so one of the workers is surely stuck on it.
    stack.send_bodies(std::slice::from_ref(&blocked_body)).await;
    eventually(
        Duration::from_secs(15),
        "a worker to take the blocked message",
        || async { sum("mplink_in_flight").await == 1.0 },
    )
    .await;
    let taken = Instant::now();
    stack.send_bodies(&other_bodies).await;
    let sent = other_bodies.len() + 1;

    // The rest flows past it while it is stuck.
    let other_ids: HashSet<&str> = history
        .events
        .iter()
        .map(|e| e.3.as_str())
        .filter(|id| *id != blocked_id)
        .collect();
    eventually(
        LOCK_HELD,
        "the other messages to be applied while one is blocked",
        || all_logged(&db.store, &other_ids),
    )
    .await;
    let others_done = taken.elapsed();
    assert!(
        others_done < LOCK_HELD,
        "the others waited for the blocked one"
    );
    let left = LOCK_HELD.saturating_sub(taken.elapsed());
    tokio::time::sleep(left).await;

    // Still blocked after ~3.5 visibility timeouts, and never handed out again.
    let log = db.store.event_log().await.expect("log");
    assert!(
        !log.iter().any(|e| e.message_id == blocked_id),
        "the blocked message was applied while its row was locked"
    );
    assert_eq!(
        sum("mplink_in_flight").await,
        1.0,
        "the blocked message is still being worked on"
    );
    assert_eq!(
        sum("mplink_messages_received_total").await,
        sent as f64,
        "a message was redelivered while it was being worked on"
    );
    let (visible, hidden) = stack.depth(&stack.queue.queue_url).await;
    assert_eq!(
        (visible, hidden),
        (0, 1),
        "only the blocked message is in the queue, hidden"
    );

    tx.rollback().await.expect("release the lock");
    let released = Instant::now();
    eventually(
        Duration::from_secs(10),
        "the blocked message to apply",
        || async {
            let log = db.store.event_log().await.expect("log");
            log.iter().any(|e| e.message_id == blocked_id)
        },
    )
    .await;
    let recovery = released.elapsed();
    eventually(Duration::from_secs(10), "the queue to drain", || async {
        queue_total(&stack, &stack.queue.queue_url).await == 0
    })
    .await;
    // Give a wrong redelivery a visibility timeout and a poll to show up.
    tokio::time::sleep(SLOW_VISIBILITY + Duration::from_secs(2)).await;

    let (ma, mb) = (metrics_of(a.addr).await, metrics_of(b.addr).await);
    let received_a = metric(&ma, "mplink_messages_received_total");
    let received_b = metric(&mb, "mplink_messages_received_total");
    println!(
        "slow_handler: received {received_a} + {received_b} of {sent} sent; others applied after {:.1} s; blocked applied {:.2} s after the lock went",
        others_done.as_secs_f64(),
        recovery.as_secs_f64()
    );
    assert_eq!(received_a + received_b, sent as f64, "redelivery happened");
    assert_eq!(metric(&ma, "mplink_visibility_failures_total"), 0.0, "{ma}");
    assert_eq!(metric(&mb, "mplink_visibility_failures_total"), 0.0, "{mb}");
    assert_eq!(metric(&ma, "mplink_delete_failures_total"), 0.0, "{ma}");
    assert_eq!(metric(&mb, "mplink_delete_failures_total"), 0.0, "{mb}");
    assert_eq!(
        metric_or_zero(&ma, "mplink_messages_total{outcome=\"rejected\"}")
            + metric_or_zero(&mb, "mplink_messages_total{outcome=\"rejected\"}"),
        0.0
    );
    assert!(
        recovery < Duration::from_secs(5),
        "the blocked message took {recovery:?} after the lock went"
    );
    assert_eq!(
        queue_total(&stack, &stack.queue.dead_letter_queue_url).await,
        0
    );

    a.shutdown.cancel();
    b.shutdown.cancel();
    let sa = a.handle.await.expect("worker a");
    let sb = b.handle.await.expect("worker b");
    assert_eq!(sa.received + sb.received, sent as u64, "{sa:?} {sb:?}");
    assert_eq!(sa.released + sb.released, 0, "{sa:?} {sb:?}");

    // The seed was applied directly: it counts as sent.
    let tally = {
        let mut t = check(&db.store, &history, sent + 1, 0).await;
        t.recovery = Some(recovery);
        t
    };
    let state = db
        .store
        .subscriptions()
        .await
        .expect("subscriptions")
        .into_iter()
        .find(|s| s.customer_identifier.as_deref() == Some(customer))
        .map(|s| s.state.as_str().to_string());
    assert_eq!(
        state.as_deref(),
        Some("cancelling"),
        "the blocked event took effect"
    );
    println!(
        "slow_handler: ran in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    report("slow_handler", &tally);
    conn.close().await.ok();
    db.cleanup().await;
}

// ---------------------------------------------------------------------------------------------
// 7. Bad input at volume
// ---------------------------------------------------------------------------------------------

/// Kinds of bad input, with the reason each must be rejected for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Bad {
    /// Not JSON at all.
    Malformed,
    /// An SNS envelope from a topic not named after its product.
    ForeignTopic,
    /// An EventBridge event from another source.
    ForeignSource,
    /// A valid envelope above `MAX_BODY_BYTES` (but within SQS's 256 KiB).
    Oversized,
    /// A real LocalStack-signed envelope whose Message was changed.
    WronglySigned,
    /// A real envelope cut in half.
    Truncated,
    /// A real envelope whose certificate URL (under a trusted prefix) answers 404.
    CertNotFound,
    /// A real envelope whose certificate host does not resolve.
    CertUnreachable,
    /// An EventBridge Agreement Ended dated in 2100.
    FutureDated,
    /// A genuinely signed envelope from a marketplace-named topic that is not allowed.
    ForeignAccount,
    /// A message whose redrive attributes claim another identity without the key.
    ForgedRedrive,
}

impl Bad {
    fn reason(self) -> &'static str {
        match self {
            Bad::Malformed | Bad::Truncated => "not_json",
            Bad::ForeignTopic => "foreign_topic",
            Bad::ForeignSource => "foreign_source",
            Bad::Oversized => "too_large",
            Bad::WronglySigned => "signature_mismatch",
            Bad::CertNotFound => "cert_unavailable",
            Bad::CertUnreachable => "cert_fetch_failed",
            Bad::FutureDated => "event_from_future",
            Bad::ForeignAccount => "foreign_topic",
            Bad::ForgedRedrive => "redrive_attributes_forged",
        }
    }
}

/// Where the hostile certificate URLs point, each under a trusted prefix.
struct CertHosts {
    not_found: String,
    unreachable: String,
}

/// A local certificate host that answers 404 to everything and counts the requests.
struct NotFoundServer {
    port: u16,
    connections: Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl NotFoundServer {
    async fn start() -> NotFoundServer {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let connections = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = connections.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    let _ = socket.read(&mut buf).await;
                    let _ = socket
                        .write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                        .await;
                });
            }
        });
        NotFoundServer {
            port,
            connections,
            task,
        }
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

impl Drop for NotFoundServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Sends `body` with redrive attributes claiming `claimed_id`, signed with a key the worker
/// does not have; returns the SQS message id.
async fn send_forged(stack: &Stack, body: &str, claimed_id: &str) -> String {
    use aws_sdk_sqs::types::MessageAttributeValue;
    let attribute = |v: &str| {
        MessageAttributeValue::builder()
            .data_type("String")
            .string_value(v)
            .build()
            .expect("attribute")
    };
    let claim = mplink::redrive::Claim {
        message_id: claimed_id.to_string(),
        sent_timestamp_ms: T0,
    };
    let signature = mplink::redrive::RedriveKey::new("an-attackers-guess-at-the-key")
        .expect("key")
        .sign(&claim, body);
    stack
        .sqs
        .send_message()
        .queue_url(&stack.queue.queue_url)
        .message_body(body)
        .message_attributes(
            mplink::redrive::ORIGINAL_MESSAGE_ID_ATTRIBUTE,
            attribute(claimed_id),
        )
        .message_attributes(
            mplink::redrive::ORIGINAL_SENT_TIMESTAMP_ATTRIBUTE,
            attribute(&T0.to_string()),
        )
        .message_attributes(mplink::redrive::SIGNATURE_ATTRIBUTE, attribute(&signature))
        .send()
        .await
        .expect("send forged message")
        .message_id()
        .expect("message id")
        .to_string()
}

/// The source queue's maxReceiveCount: small, so bad messages reach the dead-letter queue fast.
const BAD_MAX_RECEIVE: u32 = 2;
/// Waves the input is fed in, spread over the run so both halves of it carry load.
const WAVES: usize = 10;
/// Time between the starts of two waves.
const WAVE_GAP: Duration = Duration::from_secs(2);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_at_volume() {
    if !postgres_enabled() {
        eprintln!(
            "PostgreSQL disabled (MPLINK_TEST_POSTGRES_URL=off): bad_input_at_volume not run"
        );
        return;
    }
    let started = Instant::now();
    let db = TestDb::new(Backend::Postgres).await;
    let stack = Stack::new(BAD_MAX_RECEIVE, Duration::from_secs(2)).await;
    let sns = aws_sdk_sns::Client::new(&stack.sdk);
    let good_n = scaled(1500);
    let bad_n = scaled(440);
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);

    // Good input: real SNS publications, verified by the worker. Each customer gets one event
    // per round and rounds are published one after another, so a customer's events carry
    // increasing SNS timestamps; the model times are the rounds (checked against the log below).
    let customers = (good_n / 3).max(1);
    let actions = [
        "subscribe-success",
        "subscribe-fail",
        "unsubscribe-pending",
        "unsubscribe-success",
        "entitlement-updated",
    ];
    let mut plan: Vec<(usize, String, &'static str)> = Vec::new(); // (round, customer, action)
    let mut round = 0;
    while plan.len() < good_n {
        let mut who: Vec<usize> = (0..customers).collect();
        who.shuffle(&mut rng);
        for c in who.into_iter().take(good_n - plan.len()) {
            plan.push((
                round,
                format!("cust-{c}"),
                *actions.choose(&mut rng).expect("action"),
            ));
        }
        round += 1;
    }
    // Every customer's organization linked before anything is published, so each change the
    // good events make is notified (ids are not known yet; linking needs only the customers).
    History {
        events: plan
            .iter()
            .map(|(r, c, a)| (c.clone(), *r as i64, *a, String::new()))
            .collect(),
        product: stack.product.clone(),
    }
    .link_every_customer(&db.store)
    .await;
    // Publish batches: per round, per topic (entitlement-updated goes to the entitlement topic).
    let mut batches: Vec<(usize, String, Vec<usize>)> = Vec::new();
    for r in 0..round {
        for (t, topic) in stack.topics.iter().enumerate() {
            let members: Vec<usize> = (0..plan.len())
                .filter(|&i| plan[i].0 == r && ((plan[i].2 == "entitlement-updated") == (t == 1)))
                .collect();
            for chunk in members.chunks(10) {
                batches.push((r, topic.clone(), chunk.to_vec()));
            }
        }
    }

    // Real signed envelopes to tamper with and truncate, from a product of their own.
    let kinds: Vec<Bad> = (0..bad_n)
        .map(|i| match i % 11 {
            0 => Bad::Malformed,
            1 => Bad::ForeignTopic,
            2 => Bad::ForeignSource,
            3 => Bad::Oversized,
            4 => Bad::WronglySigned,
            5 => Bad::Truncated,
            6 => Bad::CertNotFound,
            7 => Bad::CertUnreachable,
            8 => Bad::FutureDated,
            9 => Bad::ForeignAccount,
            _ => Bad::ForgedRedrive,
        })
        .collect();
    let need_signed = kinds
        .iter()
        .filter(|k| {
            matches!(
                k,
                Bad::WronglySigned | Bad::Truncated | Bad::CertNotFound | Bad::CertUnreachable
            )
        })
        .count();
    let need_foreign = kinds.iter().filter(|k| **k == Bad::ForeignAccount).count();
    // A product of its own: its subscription topic is allowed (for the tampered copies), its
    // entitlement topic is not (a genuine signature from a topic nobody listed).
    let source = Stack::new(5, Duration::from_secs(30)).await;
    let signed_msgs: Vec<String> = (0..need_signed)
        .map(|i| marketplace_json("subscribe-success", &source.product, &format!("victim-{i}")))
        .collect();
    publish_batch(&sns, &source.topics[0], &signed_msgs).await;
    let foreign_msgs: Vec<String> = (0..need_foreign)
        .map(|i| {
            marketplace_json(
                "entitlement-updated",
                &source.product,
                &format!("intruder-{i}"),
            )
        })
        .collect();
    publish_batch(&sns, &source.topics[1], &foreign_msgs).await;
    let mut signed_bodies = receive_all(
        &source,
        &source.queue.queue_url,
        need_signed + need_foreign,
        Duration::from_secs(60),
    )
    .await;
    signed_bodies.sort();
    let (mut foreign_bodies, signed_bodies): (Vec<String>, Vec<String>) = signed_bodies
        .into_iter()
        .partition(|b| b.contains(&source.topics[1]));
    assert_eq!(foreign_bodies.len(), need_foreign);
    let mut signed_iter = signed_bodies.into_iter();
    let mut foreign_iter = foreign_bodies.drain(..);
    let missing_certs = NotFoundServer::start().await;
    let hosts = CertHosts {
        not_found: format!("http://127.0.0.1:{}/", missing_certs.port),
        unreachable: "http://cert-host.invalid/".to_string(),
    };
    let bad_bodies: Vec<String> = kinds
        .iter()
        .enumerate()
        .map(|(i, kind)| match kind {
            Bad::ForeignAccount => foreign_iter.next().expect("a foreign envelope"),
            _ => bad_body(*kind, i, &stack, &hosts, &mut signed_iter),
        })
        .collect();
    let expected_per_reason: HashMap<&str, usize> =
        kinds.iter().fold(HashMap::new(), |mut m, k| {
            *m.entry(k.reason()).or_default() += 1;
            m
        });

    // The worker: real binary, signatures verified, LocalStack's certificate trusted, and the
    // two certificate hosts of the hostile kinds under trusted prefixes (so the failure is the
    // fetch itself, not the URL rule).
    let cert_prefix = format!("{}/_aws/sns/", endpoint());
    let mut args: Vec<String> = [
        "--verify-signatures",
        "true",
        "--sns-cert-url-prefix",
        &cert_prefix,
        "--sns-cert-url-prefix",
        &hosts.not_found,
        "--sns-cert-url-prefix",
        &hosts.unreachable,
        "--visibility-timeout",
        "2",
        "--redrive-key",
        "the-operators-redrive-key-0001",
        "--allowed-topic-arn",
        &source.topics[0],
    ]
    .map(String::from)
    .to_vec();
    args.extend(stack.topic_flags());
    let arg_refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut worker = WorkerProcess::spawn(db.url.expose(), &stack.queue.queue_url, &arg_refs);
    let pid = worker.pid();
    let addr = worker.http_addr().await;

    // Memory, every 200 ms, for the whole run.
    let samples: Arc<Mutex<Vec<(Duration, u64)>>> = Arc::default();
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let (samples, sampling) = (samples.clone(), sampling.clone());
        let t0 = Instant::now();
        tokio::spawn(async move {
            while sampling.load(Ordering::Relaxed) {
                if let Some(kib) = rss_kib(pid) {
                    samples.lock().expect("samples").push((t0.elapsed(), kib));
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };

    // Feed it in waves: good publications (round by round) and bad messages mixed.
    let feed_start = Instant::now();
    let mut sns_ids: Vec<String> = vec![String::new(); plan.len()];
    let mut bad_ids: Vec<(String, Bad)> = Vec::new();
    let mut last_round = 0;
    for w in 0..WAVES {
        let at = feed_start + WAVE_GAP * w as u32;
        tokio::time::sleep_until(at.into()).await;
        let (b0, b1) = (w * batches.len() / WAVES, (w + 1) * batches.len() / WAVES);
        for (r, topic, members) in &batches[b0..b1] {
            if *r != last_round {
                // Timestamps are in ms: keep rounds apart.
                tokio::time::sleep(Duration::from_millis(20)).await;
                last_round = *r;
            }
            let messages: Vec<String> = members
                .iter()
                .map(|&i| marketplace_json(plan[i].2, &stack.product, &plan[i].1))
                .collect();
            for (&i, id) in members
                .iter()
                .zip(publish_batch(&sns, topic, &messages).await)
            {
                sns_ids[i] = id;
            }
        }
        let (k0, k1) = (w * bad_n / WAVES, (w + 1) * bad_n / WAVES);
        let (forged, plain): (Vec<usize>, Vec<usize>) =
            (k0..k1).partition(|&k| kinds[k] == Bad::ForgedRedrive);
        let plain_bodies: Vec<String> = plain.iter().map(|&k| bad_bodies[k].clone()).collect();
        for (k, id) in plain.iter().zip(send_with_ids(&stack, &plain_bodies).await) {
            bad_ids.push((id, kinds[*k]));
        }
        for &k in &forged {
            // It claims the identity of a good event, to shadow it as a duplicate.
            let id = send_forged(&stack, &bad_bodies[k], &format!("victim-id-{k}")).await;
            bad_ids.push((id, kinds[k]));
        }
    }
    let fed = feed_start.elapsed();
    assert!(sns_ids.iter().all(|id| !id.is_empty()));
    let history = History {
        events: plan
            .iter()
            .zip(&sns_ids)
            .map(|((r, c, a), id)| (c.clone(), T0 + *r as i64 * 1_000, *a, id.clone()))
            .collect(),
        product: stack.product.clone(),
    };

    // Until every good event is in the log and every bad message in the dead-letter queue.
    let good_ids: HashSet<&str> = sns_ids.iter().map(String::as_str).collect();
    eventually(
        Duration::from_secs(120),
        "every good event to be applied",
        || async {
            let log = db.store.event_log().await.expect("log");
            log.iter()
                .filter(|e| good_ids.contains(e.message_id.as_str()))
                .count()
                >= good_ids.len()
        },
    )
    .await;
    eventually(
        Duration::from_secs(120),
        "every bad message to reach the dead-letter queue",
        || async { queue_total(&stack, &stack.queue.dead_letter_queue_url).await >= bad_n as u64 },
    )
    .await;
    eventually(
        Duration::from_secs(20),
        "the source queue to be empty",
        || async { queue_total(&stack, &stack.queue.queue_url).await == 0 },
    )
    .await;
    let run = started.elapsed();
    sampling.store(false, Ordering::Relaxed);
    sampler.await.expect("sampler");
    // The failure cache: the 404 host was asked a few times over the run, not once per receive.
    let not_found_receives =
        kinds.iter().filter(|k| **k == Bad::CertNotFound).count() * BAD_MAX_RECEIVE as usize;
    println!(
        "bad_input_at_volume: the 404 certificate host was asked {} times for {} receives over {:.0} s",
        missing_certs.connections(),
        not_found_receives,
        run.as_secs_f64()
    );
    assert!(
        missing_certs.connections() >= 1
            && missing_certs.connections() as u64 <= run.as_secs() / 15 + 2,
        "failed fetches are not cached: {} requests",
        missing_certs.connections()
    );
    let cpu = cpu_seconds(pid, clock_ticks());
    println!(
        "bad_input_at_volume: worker CPU {:.2} s for {} messages over {:.0} s",
        cpu,
        plan.len() + bad_n * BAD_MAX_RECEIVE as usize,
        run.as_secs_f64()
    );
    assert!(
        worker.running(),
        "the worker exited:\n{}",
        worker.log_text()
    );
    let text = metrics_of(addr).await;

    // Memory stayed flat: the second half of the run peaks no higher than the first allows.
    let samples = samples.lock().expect("samples").clone();
    let end = samples.last().map_or(Duration::ZERO, |s| s.0);
    let (first_half, second_half): (Vec<_>, Vec<_>) = samples.iter().partition(|s| s.0 < end / 2);
    let peak = |v: &[&(Duration, u64)]| v.iter().map(|s| s.1).max().unwrap_or(0);
    let (first_peak, second_peak) = (peak(&first_half), peak(&second_half));
    let min = samples.iter().map(|s| s.1).min().unwrap_or(0);
    let max = samples.iter().map(|s| s.1).max().unwrap_or(0);
    println!(
        "bad_input_at_volume: {} RSS samples over {:.1} s (fed over {:.1} s): min {} KiB, max {} KiB, first-half peak {} KiB, second-half peak {} KiB",
        samples.len(),
        end.as_secs_f64(),
        fed.as_secs_f64(),
        min,
        max,
        first_peak,
        second_peak
    );
    assert!(
        samples.len() >= 20,
        "too few RSS samples: {}",
        samples.len()
    );
    let allowed = (first_peak * 3 / 2).min(first_peak + 30 * 1024);
    assert!(
        second_peak <= allowed,
        "memory grew: second-half peak {second_peak} KiB > {allowed} KiB (first-half peak {first_peak} KiB)"
    );

    // Every bad message: rejected once, for its own reason.
    let log = db.store.event_log().await.expect("log");
    let mut rejected_by_sqs: HashMap<&str, Vec<&str>> = HashMap::new();
    for e in log.iter().filter(|e| e.outcome == "rejected") {
        rejected_by_sqs
            .entry(e.sqs_message_id.as_deref().unwrap_or(""))
            .or_default()
            .push(e.reason.as_deref().unwrap_or(""));
    }
    for (id, kind) in &bad_ids {
        let reasons = rejected_by_sqs
            .get(id.as_str())
            .cloned()
            .unwrap_or_default();
        assert_eq!(
            reasons.len(),
            1,
            "{kind:?} message {id}: rejections {reasons:?}"
        );
        assert!(
            reasons[0].starts_with(&format!("{}:", kind.reason())),
            "{kind:?} message {id} rejected for {:?}",
            reasons[0]
        );
    }
    let rejected_rows = log.iter().filter(|e| e.outcome == "rejected").count();
    assert_eq!(
        rejected_rows, bad_n,
        "rejections other than the bad messages"
    );
    let mut found_per_reason: HashMap<String, usize> = HashMap::new();
    for e in log.iter().filter(|e| e.outcome == "rejected") {
        let reason = e
            .reason
            .as_deref()
            .unwrap_or("")
            .split(':')
            .next()
            .unwrap_or("")
            .to_string();
        *found_per_reason.entry(reason).or_default() += 1;
    }
    let mut reasons: Vec<_> = expected_per_reason.iter().collect();
    reasons.sort();
    for (reason, expected) in reasons {
        let found = found_per_reason.get(*reason).copied().unwrap_or(0);
        let counted = metric_or_zero(
            &text,
            &format!("mplink_messages_rejected_total{{reason=\"{reason}\"}}"),
        );
        println!("bad_input_at_volume: {reason}: sent {expected}, rejected {found}, rejections counted {counted}");
        assert_eq!(found, *expected, "{reason}");
        // Each is rejected on every receive until the redrive policy moves it: exactly
        // maxReceiveCount receives each.
        assert_eq!(
            counted,
            (BAD_MAX_RECEIVE as usize * expected) as f64,
            "{reason}: {counted} rejections counted for {expected} messages"
        );
    }
    assert_eq!(
        metric(&text, "mplink_messages_received_total"),
        metric_sum_outcomes(&text),
        "{text}"
    );

    // Every bad message, and nothing else, in the dead-letter queue.
    let dlq_depth = queue_total(&stack, &stack.queue.dead_letter_queue_url).await;
    assert_eq!(
        dlq_depth, bad_n as u64,
        "the dead-letter queue holds more than the bad messages"
    );
    let mut dead = receive_all(
        &stack,
        &stack.queue.dead_letter_queue_url,
        bad_n,
        Duration::from_secs(60),
    )
    .await;
    dead.sort();
    let mut expected_dead = bad_bodies.clone();
    expected_dead.sort();
    assert!(
        dead == expected_dead,
        "the dead-letter queue does not hold exactly the bad messages"
    );

    // The SNS timestamps agree with the model's round order for every customer.
    let times: HashMap<&str, i64> = log
        .iter()
        .filter_map(|e| Some((e.message_id.as_str(), e.event_time_ms?)))
        .collect();
    let mut per_customer: HashMap<&str, Vec<(usize, i64)>> = HashMap::new();
    for ((r, c, _), id) in plan.iter().zip(&sns_ids) {
        per_customer
            .entry(c.as_str())
            .or_default()
            .push((*r, times[id.as_str()]));
    }
    for (c, mut evs) in per_customer {
        evs.sort();
        for w in evs.windows(2) {
            assert!(
                w[0].1 < w[1].1,
                "{c}: SNS timestamps do not follow publication rounds: {evs:?}"
            );
        }
    }
    let subs = db.store.subscriptions().await.expect("subscriptions");
    let customers_used: HashSet<&str> = plan.iter().map(|p| p.1.as_str()).collect();
    assert_eq!(
        subs.len(),
        customers_used.len(),
        "a bad message created a subscription"
    );

    // Rejections name the reason and message id, never the body ("What mplink trusts").
    let logged: String = worker
        .log_lines()
        .iter()
        .map(|l| strings_of(l).join("\n"))
        .collect::<Vec<_>>()
        .join("\n");
    let leaked = bad_bodies
        .iter()
        .filter(|b| logged.contains(b.as_str()))
        .count();
    assert_eq!(leaked, 0, "bad message bodies appear in the worker's logs");
    assert!(
        logged.contains("message rejected"),
        "the rejections were not logged (or the logs were not read)"
    );

    worker.signal("TERM");
    let status = worker.wait(Duration::from_secs(15)).await;
    assert!(
        status.success(),
        "exit after SIGTERM: {status:?}\n{}",
        worker.log_text()
    );

    let tally = check(&db.store, &history, good_n + bad_n, bad_n).await;
    assert_eq!(tally.applied, good_n, "{tally:?}");
    assert_eq!(tally.rejected, bad_n, "{tally:?}");
    println!(
        "bad_input_at_volume: ran in {:.1} s (until all settled: {:.1} s)",
        started.elapsed().as_secs_f64(),
        run.as_secs_f64()
    );
    report("bad_input_at_volume", &tally);
    db.cleanup().await;
}

/// Every string value in a JSON log line (field values unescaped), nested ones included.
fn strings_of(v: &Value) -> Vec<String> {
    match v {
        Value::String(s) => vec![s.clone()],
        Value::Array(a) => a.iter().flat_map(strings_of).collect(),
        Value::Object(o) => o.values().flat_map(strings_of).collect(),
        _ => Vec::new(),
    }
}

/// Applied + stale + duplicate + rejected, which every received message ends in.
fn metric_sum_outcomes(text: &str) -> f64 {
    ["applied", "stale", "duplicate", "rejected"]
        .iter()
        .map(|o| metric_or_zero(text, &format!("mplink_messages_total{{outcome=\"{o}\"}}")))
        .sum()
}

/// The `i`-th bad message, of `kind`.
fn bad_body(
    kind: Bad,
    i: usize,
    stack: &Stack,
    hosts: &CertHosts,
    signed: &mut impl Iterator<Item = String>,
) -> String {
    let with_cert_url = |body: String, prefix: &str| {
        let mut v: Value = serde_json::from_str(&body).expect("envelope");
        // One URL for all of a kind, as when a certificate goes missing for everyone.
        v["SigningCertURL"] =
            Value::String(format!("{prefix}SimpleNotificationService-nonexistent.pem"));
        v.to_string()
    };
    match kind {
        Bad::CertNotFound => {
            with_cert_url(signed.next().expect("a signed envelope"), &hosts.not_found)
        }
        Bad::CertUnreachable => with_cert_url(
            signed.next().expect("a signed envelope"),
            &hosts.unreachable,
        ),
        Bad::FutureDated => agreement_body(
            &format!("future-{}-{i}", stack.suffix),
            "Ended",
            "Proposer",
            &format!("agmt-future-{i}"),
            "123456789012",
            serde_json::json!({"status": "CANCELLED"}),
            4_102_444_800_000,
        ),
        Bad::ForgedRedrive => sns_body(
            &format!("forged-{}-{i}", stack.suffix),
            "unsubscribe-success",
            &stack.product,
            &format!("forged-{i}"),
            T0,
        ),
        Bad::ForeignAccount => unreachable!("foreign envelopes are genuine SNS deliveries"),
        Bad::Malformed => match i % 3 {
            0 => format!("malformed message {i}: this is not JSON"),
            1 => format!("<Notification><MessageId>bad-{i}</MessageId></Notification>"),
            _ => format!("{{'Type': 'Notification', 'MessageId': 'bad-{i}'}}"),
        },
        Bad::ForeignTopic => {
            let mut v: Value = serde_json::from_str(&sns_body(
                &format!("foreign-{}-{i}", stack.suffix),
                "subscribe-success",
                &stack.product,
                &format!("foreign-{i}"),
                T0,
            ))
            .expect("envelope");
            v["TopicArn"] =
                Value::String("arn:aws:sns:us-east-1:123456789012:someone-elses-topic".into());
            v.to_string()
        }
        Bad::ForeignSource => {
            let mut v: Value = serde_json::from_str(&agreement_body(
                &format!("foreign-{}-{i}", stack.suffix),
                "Created",
                "Proposer",
                &format!("agmt-foreign-{i}"),
                "123456789012",
                serde_json::json!({}),
                T0,
            ))
            .expect("event");
            v["source"] = Value::String("com.example.not-marketplace".into());
            v.to_string()
        }
        Bad::Oversized => {
            let mut v: Value = serde_json::from_str(&sns_body(
                &format!("big-{}-{i}", stack.suffix),
                "subscribe-success",
                &stack.product,
                &format!("big-{i}"),
                T0,
            ))
            .expect("envelope");
            let size = mplink::event::MAX_BODY_BYTES + 1024 + (i % 7) * 1024;
            v["Padding"] = Value::String("x".repeat(size));
            let body = v.to_string();
            assert!(body.len() > mplink::event::MAX_BODY_BYTES && body.len() < 256 * 1024);
            body
        }
        Bad::WronglySigned => {
            let mut v: Value =
                serde_json::from_str(&signed.next().expect("a signed envelope")).expect("envelope");
            let mut message: Value = serde_json::from_str(v["Message"].as_str().expect("Message"))
                .expect("Message JSON");
            message["action"] = Value::String("unsubscribe-success".into());
            message["customer-identifier"] = Value::String(format!("tampered-{i}"));
            v["Message"] = Value::String(message.to_string());
            v.to_string()
        }
        Bad::Truncated => {
            let body = signed.next().expect("a signed envelope");
            body[..body.len() / 2].to_string()
        }
    }
}
