//! Apply-engine throughput: events per second through `Store::apply_batch` on SQLite and
//! PostgreSQL, printed as figures (never asserted: speed targets are read, not timed tests).
//!
//! `cargo bench --bench apply` — sizes from `MPLINK_BENCH_EVENTS` (default 20000) and
//! `MPLINK_BENCH_BATCH` (default 500); PostgreSQL from `MPLINK_TEST_POSTGRES_URL` (default
//! postgres://postgres@127.0.0.1:5432/test, `off` to skip).

#[path = "common/postgres.rs"]
mod postgres;

use mplink::config::DatabaseUrl;
use mplink::event::{decode, Event, InboundMessage};
use mplink::store::{Incoming, Store};
use std::time::Instant;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `n` SNS-enveloped legacy events over `n / 10` subscriptions, decoded as the worker would.
fn events(n: usize) -> Vec<(Event, String)> {
    let actions = [
        "subscribe-success",
        "unsubscribe-pending",
        "unsubscribe-success",
        "entitlement-updated",
    ];
    (0..n)
        .map(|i| {
            let inner = serde_json::json!({
                "action": actions[i % actions.len()],
                "customer-identifier": format!("cust-{}", (i * 7919) % (n / 10).max(1)),
                "product-code": "benchproduct",
            });
            let body = serde_json::json!({
                "Type": "Notification",
                "MessageId": format!("bench-{i}"),
                "TopicArn": "arn:aws:sns:us-east-1:287250355862:aws-mp-subscription-notification-benchproduct",
                "Message": inner.to_string(),
                "Timestamp": chrono::DateTime::from_timestamp_millis(1_795_687_200_000 + i as i64)
                    .expect("time")
                    .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                "SignatureVersion": "1",
                "Signature": "x",
                "SigningCertURL": "https://sns.us-east-1.amazonaws.com/x.pem",
            })
            .to_string();
            let msg = InboundMessage { message_id: format!("sqs-{i}"), body: body.clone(), sent_timestamp_ms: None };
            (decode(&msg).expect("bench event decodes"), body)
        })
        .collect()
}

async fn run(name: &str, store: &Store, events: &[(Event, String)], batch: usize) {
    let started = Instant::now();
    for chunk in events.chunks(batch) {
        let items: Vec<Incoming<'_>> = chunk
            .iter()
            .map(|(event, body)| Incoming { event, body })
            .collect();
        store.apply_batch(&items).await.expect("apply");
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{name:<10} {} events in batches of {batch}: {secs:.2} s, {:.0} events/s",
        events.len(),
        events.len() as f64 / secs
    );
}

#[tokio::main]
async fn main() {
    let n = env_usize("MPLINK_BENCH_EVENTS", 20_000);
    let batch = env_usize("MPLINK_BENCH_BATCH", 500);
    let events = events(n);

    let dir = tempfile::tempdir().expect("temp dir");
    let sqlite = Store::open(&DatabaseUrl::new(format!(
        "sqlite://{}",
        dir.path().join("bench.db").display()
    )))
    .await
    .expect("sqlite");
    run("sqlite", &sqlite, &events, batch).await;

    let Some(server) = postgres::server() else {
        return;
    };
    let schema = postgres::BenchSchema::create(&server, "apply").await;
    let pg = Store::open(&schema.url).await.expect("postgres store");
    run("postgres", &pg, &events, batch).await;
    pg.close().await;
    schema.drop().await;
}
