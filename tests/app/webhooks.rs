//! Webhook delivery against a local receiver (an axum server in the test): signatures checked by
//! an implementation of the Standard Webhooks rule written here, independently of mplink's;
//! failures and retries, a hang past the timeout, a receiver down and back, a redirect not
//! followed, parking and retry, a kill -9 between the receiver's 200 and the row's update, and
//! three replicas delivering one outbox on PostgreSQL.

use crate::common::*;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, Mac};
use mplink::ledger::LinkRequest;
use mplink::metrics::Metrics;
use mplink::outbox::deliver::{parse_secrets, Deliverer, WebhookConfig};
use mplink::store::Store;
use secrecy::SecretString;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;

const PRODUCT: &str = "prod-1234example";
const SECRET_A: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fn secret_b() -> String {
    format!("whsec_{}", STANDARD.encode([42u8; 32]))
}

/// One request as the receiver saw it.
#[derive(Debug, Clone)]
struct Received {
    path: String,
    id: String,
    timestamp: String,
    signature: String,
    body: String,
}

/// What the receiver answers to the n-th (0-based) request for one webhook-id.
type Behaviour = Arc<dyn Fn(&Received, usize) -> Answer + Send + Sync>;

#[derive(Debug, Clone, Copy)]
enum Answer {
    Status(u16),
    /// Sleep, then 200.
    Hang(Duration),
    /// 302 to /elsewhere.
    Redirect,
}

struct Shared {
    log: Mutex<Vec<Received>>,
    behaviour: Behaviour,
    in_flight: Mutex<HashMap<String, usize>>,
    overlapping: AtomicUsize,
    delay: Duration,
}

struct Receiver {
    addr: SocketAddr,
    shared: Arc<Shared>,
    server: tokio::task::JoinHandle<()>,
}

impl Receiver {
    async fn start(behaviour: Behaviour) -> Receiver {
        Receiver::start_on("127.0.0.1:0", behaviour, Duration::ZERO).await
    }

    async fn start_on(addr: &str, behaviour: Behaviour, delay: Duration) -> Receiver {
        let listener = TcpListener::bind(addr).await.expect("bind receiver");
        let addr = listener.local_addr().expect("addr");
        let shared = Arc::new(Shared {
            log: Mutex::new(Vec::new()),
            behaviour,
            in_flight: Mutex::new(HashMap::new()),
            overlapping: AtomicUsize::new(0),
            delay,
        });
        let app = axum::Router::new()
            .fallback(receive)
            .with_state(shared.clone());
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Receiver {
            addr,
            shared,
            server,
        }
    }

    fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    fn log(&self) -> Vec<Received> {
        self.shared.log.lock().unwrap().clone()
    }

    /// Requests that reached /hook, in arrival order.
    fn hook_log(&self) -> Vec<Received> {
        self.log()
            .into_iter()
            .filter(|r| r.path == "/hook")
            .collect()
    }
}

async fn receive(
    State(shared): State<Arc<Shared>>,
    uri: Uri,
    headers: HeaderMap,
    body: String,
) -> Response {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let got = Received {
        path: uri.path().to_string(),
        id: header("webhook-id"),
        timestamp: header("webhook-timestamp"),
        signature: header("webhook-signature"),
        body,
    };
    let nth = {
        let mut log = shared.log.lock().unwrap();
        let nth = log
            .iter()
            .filter(|r| r.id == got.id && r.path == got.path)
            .count();
        log.push(got.clone());
        nth
    };
    {
        let mut flying = shared.in_flight.lock().unwrap();
        let n = flying.entry(got.id.clone()).or_default();
        *n += 1;
        if *n > 1 {
            shared.overlapping.fetch_add(1, Ordering::SeqCst);
        }
    }
    if !shared.delay.is_zero() {
        tokio::time::sleep(shared.delay).await;
    }
    let answer = (shared.behaviour)(&got, nth);
    let response = match answer {
        Answer::Status(code) => StatusCode::from_u16(code).unwrap().into_response(),
        Answer::Hang(d) => {
            tokio::time::sleep(d).await;
            StatusCode::OK.into_response()
        }
        Answer::Redirect => (StatusCode::FOUND, [("location", "/elsewhere")]).into_response(),
    };
    *shared.in_flight.lock().unwrap().get_mut(&got.id).unwrap() -= 1;
    response
}

fn always(answer: Answer) -> Behaviour {
    Arc::new(move |_, _| answer)
}

/// The Standard Webhooks check as a receiver implements it, written from the specification
/// (not with mplink's signer): HMAC-SHA256 keyed with the base64 after `whsec_`, over
/// `{id}.{timestamp}.{body}`, base64, compared with each `v1,` entry of the header; the
/// timestamp within five minutes.
fn receiver_verifies(secret: &str, r: &Received) -> bool {
    let key = STANDARD
        .decode(secret.strip_prefix("whsec_").expect("whsec_ prefix"))
        .expect("base64 key");
    let ts: i64 = match r.timestamp.parse() {
        Ok(ts) => ts,
        Err(_) => return false,
    };
    if (chrono::Utc::now().timestamp() - ts).abs() > 300 {
        return false;
    }
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{}.{}.{}", r.id, r.timestamp, r.body).as_bytes());
    let expected = mac.finalize().into_bytes();
    r.signature.split(' ').any(|entry| {
        entry
            .strip_prefix("v1,")
            .and_then(|b64| STANDARD.decode(b64).ok())
            .is_some_and(|sig| sig.as_slice() == expected.as_slice())
    })
}

fn config(urls: &[String], secrets: &[String]) -> WebhookConfig {
    let secrets: Vec<SecretString> = secrets
        .iter()
        .map(|s| SecretString::from(s.clone()))
        .collect();
    let mut config = WebhookConfig::new(urls, &parse_secrets(&secrets).expect("secrets"))
        .expect("config")
        .expect("urls set");
    config.timeout = Duration::from_secs(2);
    config.backoff =
        mplink::backoff::Backoff::new(Duration::from_millis(20), Duration::from_millis(200));
    config.poll_interval = Duration::from_millis(20);
    config
}

/// Links `orgs` organizations and walks each through subscribe, cancel, unsubscribe: four
/// outbox rows per organization.
async fn populate(store: &Store, orgs: usize) {
    for o in 0..orgs {
        store
            .link(&LinkRequest {
                org_id: format!("org-{o:02}"),
                product_code: PRODUCT.into(),
                customer_identifier: Some(format!("cust-{o}")),
                customer_aws_account_id: None,
                license_arn: None,
                requested_at_ms: T0,
            })
            .await
            .expect("link");
        for (i, action) in [
            "subscribe-success",
            "unsubscribe-pending",
            "unsubscribe-success",
        ]
        .iter()
        .enumerate()
        {
            let body = sns_body(
                &format!("m-{o}-{i}"),
                action,
                PRODUCT,
                &format!("cust-{o}"),
                T0 + 1000 * (i as i64 + 1),
            );
            let event = decoded(&format!("q-{o}-{i}"), &body);
            store.apply(&event, &body).await.expect("apply");
        }
    }
}

/// Runs `deliverer` until no row is pending (or the deadline).
async fn settle(deliverer: &Deliverer, store: &Store, deadline: Duration) {
    let start = Instant::now();
    loop {
        deliverer.deliver_due().await.expect("deliver");
        let stats = store.outbox_stats().await.expect("stats");
        if stats.pending == 0 {
            return;
        }
        assert!(start.elapsed() < deadline, "not settled: {stats:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Per organization, the sequences of the requests that reached the receiver, in arrival order.
fn arrivals_per_org(log: &[Received]) -> HashMap<String, Vec<i64>> {
    let mut per: HashMap<String, Vec<i64>> = HashMap::new();
    for r in log {
        let v: serde_json::Value = serde_json::from_str(&r.body).expect("JSON body");
        per.entry(v["data"]["org_id"].as_str().unwrap().to_string())
            .or_default()
            .push(v["data"]["seq"].as_i64().unwrap());
    }
    per
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signatures_verify_with_the_documented_algorithm_for_every_secret() {
    let db = TestDb::new(Backend::Sqlite).await;
    populate(&db.store, 2).await;
    let rx = Receiver::start(always(Answer::Status(204))).await;
    let metrics = Arc::new(Metrics::new());
    let d = Deliverer::new(
        db.store.clone(),
        config(&[rx.url()], &[SECRET_A.into(), secret_b()]),
        metrics.clone(),
    )
    .unwrap();
    settle(&d, &db.store, Duration::from_secs(20)).await;
    let log = rx.hook_log();
    let rows = db.store.outbox_after(0, 100).await.unwrap();
    assert_eq!(rows.len(), 8);
    assert_eq!(log.len(), 8, "each row once");
    for r in &log {
        assert!(receiver_verifies(SECRET_A, r), "secret A: {r:?}");
        assert!(receiver_verifies(&secret_b(), r), "secret B: {r:?}");
        // A tampered body, id or timestamp, or another key, does not verify.
        let tampered = Received {
            body: r.body.replace("org-", "org-x"),
            ..r.clone()
        };
        assert!(!receiver_verifies(SECRET_A, &tampered));
        let other_id = Received {
            id: format!("{}x", r.id),
            ..r.clone()
        };
        assert!(!receiver_verifies(SECRET_A, &other_id));
        let old = Received {
            timestamp: (chrono::Utc::now().timestamp() - 3600).to_string(),
            ..r.clone()
        };
        assert!(!receiver_verifies(SECRET_A, &old));
        let stranger = format!("whsec_{}", STANDARD.encode([1u8; 32]));
        assert!(!receiver_verifies(&stranger, r));
        // The payload names the row it carries, and the id is the row's.
        let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        let row = rows
            .iter()
            .find(|row| row.event_id == r.id)
            .expect("row of the id");
        assert_eq!(v["type"], row.event_type.as_str());
        assert_eq!(v["data"]["seq"], row.seq);
        assert_eq!(v["data"]["org_id"], row.org_id.as_str());
    }
    assert_eq!(
        metrics
            .webhook_deliveries
            .with_label_values(&["delivered"])
            .get(),
        8
    );
    assert!(metrics
        .render()
        .contains("mplink_webhook_latency_seconds_count 8"));
    d.refresh_gauges().await;
    assert_eq!(metrics.outbox_pending.get(), 0);
    rx.server.abort();
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_500_is_retried_until_a_200_with_the_same_id() {
    let db = TestDb::new(Backend::Sqlite).await;
    populate(&db.store, 1).await;
    let rx = Receiver::start(Arc::new(|_, nth| {
        if nth < 2 {
            Answer::Status(500)
        } else {
            Answer::Status(200)
        }
    }))
    .await;
    let metrics = Arc::new(Metrics::new());
    let d = Deliverer::new(
        db.store.clone(),
        config(&[rx.url()], &[SECRET_A.into()]),
        metrics.clone(),
    )
    .unwrap();
    settle(&d, &db.store, Duration::from_secs(20)).await;
    let log = rx.hook_log();
    assert_eq!(log.len(), 12, "three attempts for each of four rows");
    let mut per_id: HashMap<&str, usize> = HashMap::new();
    for r in &log {
        *per_id.entry(&r.id).or_default() += 1;
        assert!(receiver_verifies(SECRET_A, r));
    }
    assert!(per_id.values().all(|n| *n == 3), "{per_id:?}");
    // In order: no row is sent before the previous one of the organization was accepted.
    let seqs = &arrivals_per_org(&log)["org-00"];
    assert!(seqs.windows(2).all(|w| w[0] <= w[1]), "{seqs:?}");
    assert_eq!(
        metrics
            .webhook_deliveries
            .with_label_values(&["retry"])
            .get(),
        8
    );
    assert_eq!(
        metrics
            .webhook_deliveries
            .with_label_values(&["delivered"])
            .get(),
        4
    );
    rx.server.abort();
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hang_past_the_timeout_is_a_failed_attempt_then_retried() {
    let db = TestDb::new(Backend::Sqlite).await;
    populate(&db.store, 1).await;
    let rx = Receiver::start(Arc::new(|_, nth| {
        if nth == 0 {
            Answer::Hang(Duration::from_secs(5))
        } else {
            Answer::Status(200)
        }
    }))
    .await;
    let mut cfg = config(&[rx.url()], &[SECRET_A.into()]);
    cfg.timeout = Duration::from_millis(500);
    cfg.backoff = mplink::backoff::Backoff::new(Duration::from_secs(30), Duration::from_secs(30));
    let d = Deliverer::new(db.store.clone(), cfg, Arc::new(Metrics::new())).unwrap();
    let started = Instant::now();
    assert_eq!(
        d.deliver_due().await.unwrap(),
        1,
        "only the organization's first row"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "the attempt was cut at the timeout"
    );
    let rows = db.store.outbox_undelivered(10).await.unwrap();
    assert_eq!(rows[0].attempts, 1);
    assert!(
        rows[0]
            .last_error
            .as_deref()
            .unwrap_or("")
            .contains("no answer within"),
        "{:?}",
        rows[0].last_error
    );
    // Backing off: nothing is due now.
    assert_eq!(d.deliver_due().await.unwrap(), 0);
    rx.server.abort();
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_down_for_a_while_gets_everything_in_order_per_organization() {
    let db = TestDb::new(Backend::Sqlite).await;
    populate(&db.store, 4).await;
    // A port nobody listens on yet.
    let port = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}/hook");
    let mut cfg = config(&[url], &[SECRET_A.into()]);
    cfg.max_attempts = 1000;
    let d = Deliverer::new(db.store.clone(), cfg, Arc::new(Metrics::new())).unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let running = tokio::spawn(d.run(stop.clone()));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let failed_so_far = db.store.outbox_undelivered(100).await.unwrap();
    assert_eq!(failed_so_far.len(), 16, "nothing delivered while down");
    assert!(
        failed_so_far.iter().any(|r| r.attempts >= 2),
        "retried while down"
    );
    let rx = Receiver::start_on(
        &format!("127.0.0.1:{port}"),
        always(Answer::Status(200)),
        Duration::ZERO,
    )
    .await;
    let start = Instant::now();
    while db.store.outbox_stats().await.unwrap().pending > 0 {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "not all delivered"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.cancel();
    running.await.unwrap();
    let log = rx.hook_log();
    let per = arrivals_per_org(&log);
    assert_eq!(per.len(), 4);
    for (org, seqs) in &per {
        assert_eq!(seqs.len(), 4, "{org}: {seqs:?}");
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "{org} out of order: {seqs:?}"
        );
    }
    rx.server.abort();
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_is_not_followed_and_the_row_parks_then_retries() {
    let db = TestDb::new(Backend::Sqlite).await;
    populate(&db.store, 1).await;
    let rx = Receiver::start(Arc::new(|r, _| {
        if r.path == "/hook" {
            Answer::Redirect
        } else {
            Answer::Status(200)
        }
    }))
    .await;
    let mut cfg = config(&[rx.url()], &[SECRET_A.into()]);
    cfg.max_attempts = 2;
    let metrics = Arc::new(Metrics::new());
    let d = Deliverer::new(db.store.clone(), cfg, metrics.clone()).unwrap();
    let start = Instant::now();
    while db.store.outbox_stats().await.unwrap().failed == 0 {
        d.deliver_due().await.unwrap();
        assert!(start.elapsed() < Duration::from_secs(20), "never parked");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        rx.log().iter().all(|r| r.path == "/hook"),
        "the redirect was followed"
    );
    let stats = db.store.outbox_stats().await.unwrap();
    assert_eq!(
        (stats.pending, stats.failed, stats.delivered),
        (3, 1, 0),
        "{stats:?}"
    );
    let parked = db.store.outbox_undelivered(10).await.unwrap();
    assert_eq!(parked[0].status, "failed");
    assert!(parked[0]
        .last_error
        .as_deref()
        .unwrap()
        .contains("redirects are not followed"));
    // The parked head holds the organization's later rows back.
    assert_eq!(d.deliver_due().await.unwrap(), 0);
    assert_eq!(rx.hook_log().len(), 2);
    assert_eq!(
        metrics
            .webhook_deliveries
            .with_label_values(&["parked"])
            .get(),
        1
    );
    // Retried, it goes out again with the same id.
    assert_eq!(
        db.store.outbox_retry(Some(&[parked[0].seq])).await.unwrap(),
        1
    );
    d.deliver_due().await.unwrap();
    let log = rx.hook_log();
    assert_eq!(log.len(), 3);
    assert_eq!(log[2].id, parked[0].event_id);
    rx.server.abort();
    db.cleanup().await;
}

/// Delivers one outbox with three deliverers, each with its own pool; returns (requests per
/// webhook-id, requests that overlapped another of the same id, rows).
async fn three_replicas(lease: Option<Duration>) -> (HashMap<String, usize>, usize, usize) {
    let db = TestDb::new(Backend::Postgres).await;
    populate(&db.store, 15).await;
    let rx = Receiver::start_on(
        "127.0.0.1:0",
        always(Answer::Status(200)),
        Duration::from_millis(15),
    )
    .await;
    let mut runs = Vec::new();
    let stop = tokio_util::sync::CancellationToken::new();
    let mut stores = Vec::new();
    for _ in 0..3 {
        let store = db.another_store().await;
        let mut cfg = config(&[rx.url()], &[SECRET_A.into()]);
        cfg.lease_override = lease;
        cfg.batch = 4;
        let d = Deliverer::new(store.clone(), cfg, Arc::new(Metrics::new())).unwrap();
        runs.push(tokio::spawn(d.run(stop.clone())));
        stores.push(store);
    }
    let start = Instant::now();
    while db.store.outbox_stats().await.unwrap().pending > 0 {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "not all delivered"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.cancel();
    for r in runs {
        r.await.unwrap();
    }
    for s in stores {
        s.close().await;
    }
    let mut per_id: HashMap<String, usize> = HashMap::new();
    for r in rx.hook_log() {
        *per_id.entry(r.id).or_default() += 1;
    }
    let overlapping = rx.shared.overlapping.load(Ordering::SeqCst);
    let rows = db.store.outbox_after(0, 1000).await.unwrap().len();
    rx.server.abort();
    db.cleanup().await;
    (per_id, overlapping, rows)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_deliver_each_row_once_between_them() {
    if !postgres_enabled() {
        eprintln!("PostgreSQL disabled (MPLINK_TEST_POSTGRES_URL=off): not run");
        return;
    }
    let (per_id, overlapping, rows) = three_replicas(None).await;
    assert_eq!(rows, 60);
    assert_eq!(per_id.len(), 60, "every row delivered");
    assert!(
        per_id.values().all(|n| *n == 1),
        "a row delivered twice: {per_id:?}"
    );
    assert_eq!(overlapping, 0);
    // The check can fail: without leases (a lease that ends at once) replicas take each
    // other's rows.
    let (per_id, overlapping, _) = three_replicas(Some(Duration::ZERO)).await;
    eprintln!(
        "leaseless replicas: {} of 60 rows delivered more than once, {overlapping} overlapping requests",
        per_id.values().filter(|n| **n > 1).count()
    );
    assert!(
        per_id.values().any(|n| *n > 1) || overlapping > 0,
        "leaseless replicas never collided: the check would not see a double delivery"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_between_the_200_and_the_update_the_row_goes_again_with_the_same_id() {
    crate::common::require_failpoints();
    let db = TestDb::new(Backend::Sqlite).await;
    populate(&db.store, 1).await;
    let rx = Receiver::start(always(Answer::Status(200))).await;
    let run = |failpoint: bool| {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_mplink"));
        cmd.args([
            "--database-url",
            db.url.expose(),
            "outbox",
            "deliver",
            "--until-idle",
            "--webhook-url",
            &rx.url(),
            "--webhook-timeout",
            "1",
        ])
        .env("MPLINK_WEBHOOK_SECRETS", SECRET_A)
        .env_remove("MPLINK_FAILPOINT_ABORT_AFTER_WEBHOOK");
        if failpoint {
            cmd.env("MPLINK_FAILPOINT_ABORT_AFTER_WEBHOOK", "1");
        }
        cmd.output()
    };
    let crashed = run(true).await.expect("run mplink");
    assert!(
        !crashed.status.success(),
        "the failpoint aborted the process"
    );
    let first = rx.hook_log();
    assert_eq!(
        first.len(),
        1,
        "the receiver accepted one row before the abort"
    );
    assert_eq!(
        db.store.outbox_stats().await.unwrap().delivered,
        0,
        "not marked delivered"
    );
    // Once the dead deliverer's lease ends (2 × 1 s + 2 s), the next one sends it again.
    let done = run(false).await.expect("run mplink");
    assert!(
        done.status.success(),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
    let log = rx.hook_log();
    assert_eq!(log.len(), 5, "the row again, then the other three");
    assert_eq!(
        log[1].id, first[0].id,
        "same webhook-id: the receiver dedupes on it"
    );
    assert_eq!(db.store.outbox_stats().await.unwrap().delivered, 4);
    rx.server.abort();
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_receiver_verifies_real_deliveries_and_refuses_forgeries() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let example = std::fs::read_to_string(root.join("examples/webhook_receiver.py")).unwrap();
    let guide = std::fs::read_to_string(root.join("docs/webhooks.md")).unwrap();
    assert!(
        guide.contains(example.trim_end()),
        "the receiver in docs/webhooks.md is not examples/webhook_receiver.py"
    );
    let port = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut receiver = tokio::process::Command::new("python3")
        .arg(root.join("examples/webhook_receiver.py"))
        .arg(port.to_string())
        .env("MPLINK_WEBHOOK_SECRET", SECRET_A)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python3 runs the example receiver");
    let start = Instant::now();
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "receiver did not start"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let url = format!("http://127.0.0.1:{port}/hook");
    // A forgery (signed with another key) is refused: the row is not delivered.
    let db = TestDb::new(Backend::Sqlite).await;
    populate(&db.store, 1).await;
    let mut forged = config(std::slice::from_ref(&url), &[secret_b()]);
    forged.max_attempts = 1;
    let d = Deliverer::new(db.store.clone(), forged, Arc::new(Metrics::new())).unwrap();
    d.deliver_due().await.unwrap();
    let parked = db.store.outbox_undelivered(10).await.unwrap();
    assert!(
        parked[0].last_error.as_deref().unwrap().contains("401"),
        "{parked:?}"
    );
    db.store.outbox_retry(None).await.unwrap();
    // Signed with its secret (and another, as during a rotation): every row accepted, in order.
    let d = Deliverer::new(
        db.store.clone(),
        config(&[url], &[secret_b(), SECRET_A.into()]),
        Arc::new(Metrics::new()),
    )
    .unwrap();
    settle(&d, &db.store, Duration::from_secs(20)).await;
    receiver.start_kill().unwrap();
    let out = receiver.wait_with_output().await.unwrap();
    let printed: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.split(' ').next().unwrap().to_string())
        .collect();
    assert_eq!(
        printed,
        [
            "link.syncing",
            "link.linked",
            "link.unlink_pending",
            "link.unlinked"
        ]
    );
    db.cleanup().await;
}

/// How long after a link's commit its `link.syncing` row reaches the receiver, with the poll
/// slowed to a minute: only a wake-up from the commit itself can deliver it sooner.
async fn first_delivery_after_a_commit(listen: bool, wait: Duration) -> Option<Duration> {
    let db = TestDb::new(Backend::Postgres).await;
    let rx = Receiver::start(always(Answer::Status(204))).await;
    let mut cfg = config(&[rx.url()], &[SECRET_A.into()]);
    cfg.poll_interval = Duration::from_secs(60);
    cfg.notified_poll_interval = Duration::from_secs(60);
    cfg.listen = listen;
    let d = Deliverer::new(db.store.clone(), cfg, Arc::new(Metrics::new())).unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let running = tokio::spawn(d.run(stop.clone()));
    // Past the deliverer's first (empty) poll and into its minute-long wait.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let committed = Instant::now();
    db.store
        .link(&LinkRequest {
            org_id: "org-notified".into(),
            product_code: PRODUCT.into(),
            customer_identifier: Some("cust-notified".into()),
            customer_aws_account_id: None,
            license_arn: None,
            requested_at_ms: T0,
        })
        .await
        .expect("link");
    let mut arrived = None;
    while committed.elapsed() < wait {
        if !rx.hook_log().is_empty() {
            arrived = Some(committed.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stop.cancel();
    running.await.expect("deliverer task");
    db.cleanup().await;
    arrived
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgres_a_commit_wakes_the_deliverer_without_waiting_for_the_poll() {
    if !postgres_enabled() {
        eprintln!("PostgreSQL off: LISTEN/NOTIFY has nothing to test");
        return;
    }
    // The check can fail: without the listener the row waits for the minute-long poll.
    let unheard = first_delivery_after_a_commit(false, Duration::from_secs(3)).await;
    assert_eq!(
        unheard, None,
        "delivered without a wake-up: the poll is not slowed"
    );
    let heard = first_delivery_after_a_commit(true, Duration::from_secs(20)).await;
    assert!(
        heard.is_some(),
        "the commit's NOTIFY did not wake the deliverer within 20 s (the poll is 60 s)"
    );
}
