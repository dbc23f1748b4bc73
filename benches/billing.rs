//! The billing page's lookup over HTTP: `GET /v1/organizations/{org_id}/billing` against the
//! API (`mplink::api::serve`, as `mplink serve` runs it) on a PostgreSQL ledger of 100,000
//! subscriptions. Prints p50/p99 (and writes them as JSON); never asserts a time (issue 9's
//! target, p99 under 5 ms, is read off the figures).
//!
//! `cargo bench --bench billing`. Sizes: `MPLINK_BENCH_SUBSCRIPTIONS` (default 100,000),
//! `MPLINK_BENCH_LINKS` (default a fifth of that), `MPLINK_BENCH_REQUESTS` (default 5,000, after
//! 200 warm-up requests); `MPLINK_BENCH_OUT` (default target/bench/billing.json). PostgreSQL
//! from `MPLINK_TEST_POSTGRES_URL` (a schema of its own, dropped at the end).

#[path = "../tests/common/bulk.rs"]
mod bulk;
#[path = "common/postgres.rs"]
mod postgres;

use mplink::api::{ApiOptions, ApiState, ApiTokens, SelectUrl};
use mplink::store::Store;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

const TOKEN: &str = "bench-token-0123456789abcdef";

fn env_num(name: &str, default: i64) -> i64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.replace('_', "").parse().ok())
        .unwrap_or(default)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn figures(mut v: Vec<Duration>) -> Value {
    v.sort();
    json!({
        "n": v.len(),
        "p50_ms": ms(percentile(&v, 0.50)),
        "p90_ms": ms(percentile(&v, 0.90)),
        "p99_ms": ms(percentile(&v, 0.99)),
        "max_ms": ms(v[v.len() - 1]),
    })
}

/// `requests` GETs of the billing page of random linked organizations (and, for a tenth of
/// them, organizations without a link), one at a time over one keep-alive connection.
async fn measure(base: &str, links: i64, requests: usize, warmup: usize) -> (Value, Value) {
    let http = reqwest::Client::new();
    let mut rng = rand::rngs::StdRng::seed_from_u64(9);
    let mut linked = Vec::with_capacity(requests);
    let mut unlinked = Vec::with_capacity(requests / 10);
    for i in 0..warmup + requests {
        let with_link = i % 10 != 9;
        let org = if with_link {
            format!("org-{}", rng.gen_range(1..=links))
        } else {
            format!("no-link-{i}")
        };
        let started = Instant::now();
        let response = http
            .get(format!("{base}/v1/organizations/{org}/billing"))
            .bearer_auth(TOKEN)
            .send()
            .await
            .expect("request");
        assert_eq!(response.status(), 200);
        let body: Value =
            serde_json::from_str(&response.text().await.expect("body")).expect("json");
        let took = started.elapsed();
        assert_eq!(body["link_state"].is_null(), !with_link, "{body}");
        if i >= warmup {
            if with_link {
                linked.push(took);
            } else {
                unlinked.push(took);
            }
        }
    }
    (figures(linked), figures(unlinked))
}

#[tokio::main]
async fn main() {
    let subscriptions = env_num("MPLINK_BENCH_SUBSCRIPTIONS", 100_000).max(5);
    let links = env_num("MPLINK_BENCH_LINKS", subscriptions / 5).clamp(1, subscriptions / 5);
    let requests = env_num("MPLINK_BENCH_REQUESTS", 5_000).max(10) as usize;
    let out =
        std::env::var("MPLINK_BENCH_OUT").unwrap_or_else(|_| "target/bench/billing.json".into());
    let server = postgres::server().expect("the billing benchmark needs PostgreSQL");
    let schema = postgres::BenchSchema::create(&server, "billing").await;
    let store = Store::open(&schema.url).await.expect("store");
    let started = Instant::now();
    bulk::bulk_ledger(store.pool(), subscriptions, links).await;
    let populate_s = started.elapsed().as_secs_f64();
    eprintln!("populated {subscriptions} subscriptions and {links} links in {populate_s:.1} s");

    let shutdown = CancellationToken::new();
    let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("us-east-1"))
        .load()
        .await;
    let state = ApiState {
        store: store.clone(),
        metering: mplink::aws::metering_client(&sdk, Some("http://127.0.0.1:9")),
        tokens: ApiTokens::new(&[secrecy::SecretString::from(TOKEN.to_string())]).expect("token"),
        select_organization_url: SelectUrl::new("https://app.example.com/select").expect("url"),
        registration_ttl: mplink::api::DEFAULT_REGISTRATION_TTL,
        product_codes: Vec::new(),
        contract_products: Vec::new(),
        metrics: Arc::new(mplink::metrics::Metrics::new()),
        guards: Default::default(),
        shutdown: shutdown.clone(),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    // Every client of the benchmark is on loopback: no per-address cap.
    let options = ApiOptions {
        example: None,
        connections: mplink::server::ConnectionLimits {
            max_per_client: 0,
            ..Default::default()
        },
    };
    let server_task = tokio::spawn(mplink::api::serve(listener, state, options));

    let (linked, unlinked) = measure(&base, links, requests, 200).await;
    shutdown.cancel();
    let _ = server_task.await;
    store.close().await;
    schema.drop().await;

    let report = json!({
        "subscriptions": subscriptions,
        "links": links,
        "populate_s": populate_s,
        "nproc": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "billing_linked": linked,
        "billing_no_link": unlinked,
    });
    for (name, f) in [
        ("linked org", &report["billing_linked"]),
        ("org without link", &report["billing_no_link"]),
    ] {
        println!(
            "GET /v1/organizations/{{org}}/billing, {name:<16} n={:<5} p50 {:>6.2} ms  p90 {:>6.2} ms  p99 {:>6.2} ms  max {:>6.2} ms",
            f["n"],
            f["p50_ms"].as_f64().unwrap_or(0.0),
            f["p90_ms"].as_f64().unwrap_or(0.0),
            f["p99_ms"].as_f64().unwrap_or(0.0),
            f["max_ms"].as_f64().unwrap_or(0.0),
        );
    }
    let out = std::path::PathBuf::from(out);
    if let Some(parent) = out.parent() {
        std::fs::create_dir_all(parent).expect("output directory");
    }
    std::fs::write(&out, serde_json::to_string_pretty(&report).expect("json")).expect("write");
    println!("written to {}", out.display());
}
