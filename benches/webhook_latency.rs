//! From a link change's commit to its webhook's arrival, on an idle PostgreSQL: the deliverer
//! woken by the commit's NOTIFY against the same deliverer polling alone. Figures are printed,
//! never asserted.
//!
//! `cargo bench --bench webhook_latency` (also run by `scripts/bench.sh`). Changes:
//! `MPLINK_BENCH_WEBHOOK_CHANGES` (default 300), one at a time with 20–80 ms of idleness
//! between them, each timed from just before the `link` call (so the commit itself counts) to
//! the moment the local receiver has the request. PostgreSQL from `MPLINK_TEST_POSTGRES_URL`
//! (`off` skips the benchmark: SQLite has no notifications to measure).

#[path = "../tests/common/mod.rs"]
mod common;

use axum::extract::State;
use axum::http::StatusCode;
use common::{postgres_enabled, Backend, TestDb};
use mplink::ledger::LinkRequest;
use mplink::metrics::Metrics;
use mplink::outbox::deliver::{parse_secrets, Deliverer, WebhookConfig};
use rand::Rng;
use secrecy::SecretString;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

async fn receive(
    State(tx): State<mpsc::UnboundedSender<(String, Instant)>>,
    body: String,
) -> StatusCode {
    let arrived = Instant::now();
    let org = serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["data"]["org_id"].as_str().map(str::to_owned))
        .unwrap_or_default();
    let _ = tx.send((org, arrived));
    StatusCode::NO_CONTENT
}

/// Latencies of `changes` link changes, in milliseconds, sorted.
async fn measure(listen: bool, changes: usize) -> Vec<f64> {
    let db = TestDb::new(Backend::Postgres).await;
    let (tx, mut arrivals) = mpsc::unbounded_channel();
    let app = axum::Router::new()
        .route("/hook", axum::routing::post(receive))
        .with_state(tx);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let secrets = parse_secrets(&[SecretString::from(SECRET)]).unwrap();
    // The production defaults: 250 ms poll alone, 2 s poll behind the listener.
    let mut config = WebhookConfig::new(&[url], &secrets).unwrap().unwrap();
    config.listen = listen;
    let deliverer = Deliverer::new(db.store.clone(), config, Arc::new(Metrics::new())).unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let running = tokio::spawn(deliverer.run(stop.clone()));
    tokio::time::sleep(Duration::from_millis(500)).await;

    let mut latencies = Vec::with_capacity(changes);
    for i in 0..changes {
        let idle = rand::thread_rng().gen_range(20..=80);
        tokio::time::sleep(Duration::from_millis(idle)).await;
        let org = format!("org-{i:05}");
        let started = Instant::now();
        db.store
            .link(&LinkRequest {
                org_id: org.clone(),
                product_code: "prod-bench".into(),
                customer_identifier: Some(format!("cust-{i}")),
                customer_aws_account_id: None,
                license_arn: None,
                requested_at_ms: 1_700_000_000_000 + i as i64,
            })
            .await
            .expect("link");
        loop {
            let (got, arrived) = tokio::time::timeout(Duration::from_secs(10), arrivals.recv())
                .await
                .expect("a webhook within 10 s")
                .expect("receiver running");
            if got == org {
                latencies.push(arrived.duration_since(started).as_secs_f64() * 1000.0);
                break;
            }
        }
    }
    stop.cancel();
    let _ = running.await;
    db.cleanup().await;
    latencies.sort_by(f64::total_cmp);
    latencies
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[tokio::main]
async fn main() {
    if !postgres_enabled() {
        println!("webhook latency: PostgreSQL off, nothing to measure");
        return;
    }
    let changes = std::env::var("MPLINK_BENCH_WEBHOOK_CHANGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300usize);
    println!("webhook latency, commit to arrival, {changes} changes one at a time on an idle PostgreSQL (ms)");
    println!(
        "{:<28} {:>8} {:>8} {:>8} {:>8}",
        "wake-up", "p50", "p95", "p99", "max"
    );
    for (name, listen) in [
        ("LISTEN/NOTIFY (+2 s poll)", true),
        ("poll alone (250 ms)", false),
    ] {
        let l = measure(listen, changes).await;
        println!(
            "{name:<28} {:>8.1} {:>8.1} {:>8.1} {:>8.1}",
            percentile(&l, 50.0),
            percentile(&l, 95.0),
            percentile(&l, 99.0),
            l[l.len() - 1]
        );
    }
}
