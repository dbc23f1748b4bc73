//! `mplink reconcile` at scale: one pass over `MPLINK_BENCH_AGREEMENTS` (default 10,000)
//! agreements the Marketplace double lists, against an empty ledger (every agreement missing:
//! one fact each, in pages of 50) and again against the repaired one (every agreement in sync),
//! on SQLite and PostgreSQL; prints calls and wall time, never asserts a speed.
//!
//! `cargo bench --bench reconcile`; PostgreSQL from `MPLINK_TEST_POSTGRES_URL` (default
//! postgres://postgres@127.0.0.1:5432/test, `off` to skip).

#[path = "common/postgres.rs"]
mod postgres;

use mplink::config::DatabaseUrl;
use mplink::reconcile::{reconcile, ReconcileConfig};
use mplink::store::Store;
use mplink_marketplace_double::{clients, Agreement, MarketplaceDouble};

const PRODUCT_ID: &str = "prod-benchEXAMPLE";

async fn run(name: &str, store: &Store, client: &aws_sdk_marketplaceagreement::Client) {
    let config = ReconcileConfig {
        product_code: Some("benchproduct".into()),
        max_calls: 10_000,
        ..ReconcileConfig::new(PRODUCT_ID)
    };
    for pass in ["empty ledger", "in sync"] {
        let r = reconcile(store, client, &config).await;
        assert!(r.complete, "{name}: {:?}", r.error);
        println!(
            "{name:<9} {pass:<13} {} agreements: {} in sync, {} repaired, {} facts, {} calls, {:.2} s ({:.0} agreements/s)",
            r.agreements,
            r.in_sync,
            r.count("repaired"),
            r.facts_recorded,
            r.calls,
            r.elapsed_ms as f64 / 1000.0,
            r.agreements as f64 / (r.elapsed_ms.max(1) as f64 / 1000.0)
        );
    }
}

#[tokio::main]
async fn main() {
    let n: u64 = std::env::var("MPLINK_BENCH_AGREEMENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let double = MarketplaceDouble::start("127.0.0.1:0")
        .await
        .expect("double");
    let started = chrono::Utc::now() - chrono::Duration::days(30);
    for i in 0..n {
        double.put_agreement(Agreement {
            agreement_id: format!("agmt-bench-{i:06}"),
            product_id: PRODUCT_ID.into(),
            acceptor_account_id: format!("{:012}", 100_000_000_000 + i),
            // One in ten ended two days ago: three facts each.
            status: if i % 10 == 0 { "CANCELLED" } else { "ACTIVE" }.into(),
            offer_id: Some("offer-bench".into()),
            license_arn: Some(format!("arn:aws:license-manager::1:license:l-bench{i:06}")),
            acceptance_time: Some(started),
            start_time: Some(started),
            end_time: (i % 10 == 0).then(|| chrono::Utc::now() - chrono::Duration::days(2)),
            license_status: None,
        });
    }
    let client = clients::agreement(&double).await;

    let dir = tempfile::tempdir().expect("temp dir");
    let sqlite = Store::open(&DatabaseUrl::new(format!(
        "sqlite://{}",
        dir.path().join("bench.db").display()
    )))
    .await
    .expect("sqlite");
    run("sqlite", &sqlite, &client).await;

    let Some(server) = postgres::server() else {
        return;
    };
    let schema = postgres::BenchSchema::create(&server, "reconcile").await;
    let pg = Store::open(&schema.url).await.expect("postgres store");
    run("postgres", &pg, &client).await;
    pg.close().await;
    schema.drop().await;
}
