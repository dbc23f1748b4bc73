//! Shared test harness: a fresh database per test on either backend, message builders, and
//! the reference model the ledger is checked against.
#![allow(dead_code)]

pub mod api;
pub mod localstack;
pub mod process;

use mplink::config::DatabaseUrl;
use mplink::event::{decode, Event, InboundMessage};
use mplink::store::Store;
use sqlx::Connection;
use std::sync::atomic::{AtomicU32, Ordering};

/// Environment variable naming the PostgreSQL server tests create their schemas in.
pub const TEST_POSTGRES_ENV: &str = "MPLINK_TEST_POSTGRES_URL";
/// Where PostgreSQL is on a developer's machine and in CI.
pub const DEFAULT_TEST_POSTGRES: &str = "postgres://postgres@127.0.0.1:5432/test";

/// The two databases every store test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// A SQLite file in a fresh temporary directory.
    Sqlite,
    /// A fresh schema in the test PostgreSQL database.
    Postgres,
}

/// A database of the test's own, migrated and empty.
pub struct TestDb {
    /// The URL the test (or the binary under test) connects with.
    pub url: DatabaseUrl,
    /// A store on it.
    pub store: Store,
    schema: Option<String>,
    _dir: Option<tempfile::TempDir>,
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// False when `MPLINK_TEST_POSTGRES_URL=off`: the PostgreSQL variants then say so and do nothing
/// (scripts/test.sh sets it only when no PostgreSQL server answers).
pub fn postgres_enabled() -> bool {
    std::env::var(TEST_POSTGRES_ENV).map_or(true, |v| v != "off")
}

fn postgres_server() -> String {
    std::env::var(TEST_POSTGRES_ENV).unwrap_or_else(|_| DEFAULT_TEST_POSTGRES.to_string())
}

impl TestDb {
    /// Creates a fresh database on `backend`.
    pub async fn new(backend: Backend) -> TestDb {
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("temp dir");
                let url = DatabaseUrl::new(format!(
                    "sqlite://{}",
                    dir.path().join("mplink.db").display()
                ));
                let store = Store::open(&url).await.expect("open sqlite store");
                TestDb {
                    url,
                    store,
                    schema: None,
                    _dir: Some(dir),
                }
            }
            Backend::Postgres => {
                let server = postgres_server();
                let schema = format!(
                    "mplink_t_{}_{}_{}",
                    std::process::id(),
                    COUNTER.fetch_add(1, Ordering::SeqCst),
                    rand::random::<u32>()
                );
                let mut admin = sqlx::PgConnection::connect(&server)
                    .await
                    .unwrap_or_else(|e| {
                        panic!("PostgreSQL at {server} ({TEST_POSTGRES_ENV}) is needed: {e}")
                    });
                sqlx::query(&format!("CREATE SCHEMA {schema}"))
                    .execute(&mut admin)
                    .await
                    .expect("create schema");
                admin.close().await.ok();
                let sep = if server.contains('?') { '&' } else { '?' };
                let url =
                    DatabaseUrl::new(format!("{server}{sep}options=-c%20search_path%3D{schema}"));
                let store = Store::open(&url).await.expect("open postgres store");
                TestDb {
                    url,
                    store,
                    schema: Some(schema),
                    _dir: None,
                }
            }
        }
    }

    /// The PostgreSQL schema the test's tables live in.
    pub fn schema(&self) -> Option<&str> {
        self.schema.as_deref()
    }

    /// Another store on the same database, with its own pool (as another process would have).
    pub async fn another_store(&self) -> Store {
        Store::connect(&self.url).await.expect("second store")
    }

    /// Drops the PostgreSQL schema (SQLite files go with their temporary directory).
    pub async fn cleanup(self) {
        self.store.close().await;
        if let Some(schema) = self.schema {
            let mut admin = sqlx::PgConnection::connect(&postgres_server())
                .await
                .expect("admin connection");
            sqlx::query(&format!("DROP SCHEMA {schema} CASCADE"))
                .execute(&mut admin)
                .await
                .expect("drop schema");
        }
    }
}

/// Refuses to run a test of the deliberately broken build unless the failpoints are compiled in:
/// without them the broken build is the real one, and a test that says it catches a broken
/// build would pass without having seen one.
pub fn require_failpoints() {
    #[cfg(not(feature = "failpoints"))]
    panic!(
        "this test drives the deliberately broken build: run it with `--features failpoints` \
         (scripts/test.sh does)"
    );
}

/// Runs an async test body once per backend, as two named tests.
#[macro_export]
macro_rules! both_backends {
    ($($name:ident => $body:ident;)*) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$body($crate::common::Backend::Sqlite).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    if !$crate::common::postgres_enabled() {
                        eprintln!("PostgreSQL disabled (MPLINK_TEST_POSTGRES_URL=off): not run");
                        return;
                    }
                    super::$body($crate::common::Backend::Postgres).await
                }
            )*
        }
    };
}

/// RFC 3339 with milliseconds, as SNS writes `Timestamp`.
pub fn iso_ms(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .expect("valid time")
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// RFC 3339 in whole seconds, as EventBridge writes `time`.
pub fn iso_s(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms - ms.rem_euclid(1000))
        .expect("valid time")
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// Base time of the test stories: 2026-11-26T10:00:00Z.
pub const T0: i64 = 1_795_687_200_000;

/// An SNS-enveloped legacy marketplace message, as SQS holds it.
pub fn sns_body(
    message_id: &str,
    action: &str,
    product: &str,
    customer: &str,
    time_ms: i64,
) -> String {
    let inner = serde_json::json!({
        "action": action,
        "customer-identifier": customer,
        "product-code": product,
        "offer-identifier": "offer-abcexample123",
        "isFreeTrialTermPresent": "false",
    });
    let topic = if action == "entitlement-updated" {
        format!("arn:aws:sns:us-east-1:287250355862:aws-mp-entitlement-notification-{product}")
    } else {
        format!("arn:aws:sns:us-east-1:287250355862:aws-mp-subscription-notification-{product}")
    };
    serde_json::json!({
        "Type": "Notification",
        "MessageId": message_id,
        "TopicArn": topic,
        "Message": inner.to_string(),
        "Timestamp": iso_ms(time_ms),
        "SignatureVersion": "1",
        "Signature": "c2lnbmF0dXJl",
        "SigningCertURL": "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-example.pem",
        "UnsubscribeURL": "https://sns.us-east-1.amazonaws.com/?Action=Unsubscribe",
    })
    .to_string()
}

/// An EventBridge event body for an agreement event (`kind` is Created/Amended/Ended).
pub fn agreement_body(
    id: &str,
    kind: &str,
    party: &str,
    agreement: &str,
    account: &str,
    agreement_fields: serde_json::Value,
    time_ms: i64,
) -> String {
    let mut agreement_obj = serde_json::json!({ "id": agreement });
    if let (Some(obj), Some(extra)) = (agreement_obj.as_object_mut(), agreement_fields.as_object())
    {
        obj.extend(extra.clone());
    }
    serde_json::json!({
        "version": "0",
        "id": id,
        "detail-type": format!("Purchase Agreement {kind} - {party}"),
        "source": "aws.agreement-marketplace",
        "account": "123456789012",
        "time": iso_s(time_ms),
        "region": "us-east-1",
        "resources": [format!("arn:aws:aws-marketplace::aws:agreement:{agreement}")],
        "detail": {
            "requestId": format!("req-{id}"),
            "catalog": "AWSMarketplace",
            "agreement": agreement_obj,
            "acceptor": { "accountId": account },
            "proposer": { "accountId": "123456789012" },
        }
    })
    .to_string()
}

/// An EventBridge License Updated / Deprovisioned event body.
pub fn license_body(
    id: &str,
    kind: &str,
    agreement: &str,
    product: &str,
    license_arn: &str,
    account: &str,
    time_ms: i64,
) -> String {
    serde_json::json!({
        "version": "0",
        "id": id,
        "detail-type": format!("License {kind} - Manufacturer"),
        "source": "aws.agreement-marketplace",
        "account": "123456789012",
        "time": iso_s(time_ms),
        "region": "us-east-1",
        "resources": [format!("arn:aws:aws-marketplace::aws:agreement:{agreement}")],
        "detail": {
            "requestId": format!("req-{id}"),
            "catalog": "AWSMarketplace",
            "agreement": { "id": agreement },
            "product": { "code": product, "id": "prod-qtwveEXAMPLE" },
            "license": { "arn": license_arn },
            "acceptor": { "accountId": account },
            "proposer": { "accountId": "123456789012" },
        }
    })
    .to_string()
}

/// Decodes a body through the real decoder, as the worker would.
pub fn decoded(sqs_id: &str, body: &str) -> Event {
    decode(&InboundMessage {
        message_id: sqs_id.to_string(),
        body: body.to_string(),
        sent_timestamp_ms: None,
    })
    .unwrap_or_else(|e| panic!("fixture does not decode: {e}"))
}

/// The reference model: the state a subscription ends in when every distinct legacy event is
/// applied in (time, rank, fact) order, rank ordering success < fail < pending < success-unsub.
pub fn model_state(events: &[(i64, &str, String)]) -> &'static str {
    let rank = |action: &str| match action {
        "subscribe-success" => 1,
        "subscribe-fail" => 2,
        "unsubscribe-pending" => 3,
        "unsubscribe-success" => 4,
        _ => 0,
    };
    let target = |action: &str| match action {
        "subscribe-success" => "active",
        "subscribe-fail" => "failed",
        "unsubscribe-pending" => "cancelling",
        "unsubscribe-success" => "cancelled",
        _ => unreachable!(),
    };
    events
        .iter()
        .filter(|(_, a, _)| rank(a) > 0)
        .max_by(|x, y| (x.0, rank(x.1), &x.2).cmp(&(y.0, rank(y.1), &y.2)))
        .map_or("pending", |(_, a, _)| target(a))
}

/// Sequential and index scans of `table` in `schema` so far, as PostgreSQL counts them (a
/// backend reports its counts when its transaction ends or it exits: close the pool first).
pub async fn pg_scans(schema: &str, table: &str) -> (i64, i64) {
    let mut conn = sqlx::PgConnection::connect(&postgres_server())
        .await
        .expect("stats connection");
    let row: (i64, i64) = sqlx::query_as(
        "SELECT seq_scan, COALESCE(idx_scan, 0) FROM pg_stat_user_tables \
         WHERE schemaname = $1 AND relname = $2",
    )
    .bind(schema)
    .bind(table)
    .fetch_one(&mut conn)
    .await
    .expect("table statistics");
    conn.close().await.ok();
    row
}
