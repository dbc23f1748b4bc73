//! The buyer's landing, `POST /marketplace/register`, through real HTTP with the real
//! `aws-sdk-marketplacemetering` client against the Marketplace test double
//! (`mplink_marketplace_double`, AWS JSON 1.1): success, invalid and expired tokens,
//! throttling within and beyond the SDK's retries, the same token twice.

use crate::common::api::{spawn_app_with, AppConfig, TestApp, SELECT_URL};
use crate::common::*;
use mplink::api::routes::register::token_sha256;
use mplink_marketplace_double::{Failure, MarketplaceDouble, Operation, ResolvedCustomer};
use serde_json::Value;

const PRODUCT: &str = "prod-registerexample";
const ACCOUNT: &str = "845735284135";

fn license(n: u32) -> String {
    format!("arn:aws:license-manager::123456789012:license:l-{n:032x}")
}

fn customer(n: u32, legacy: bool) -> ResolvedCustomer {
    ResolvedCustomer {
        customer_aws_account_id: ACCOUNT.into(),
        license_arn: license(n),
        product_code: PRODUCT.into(),
        customer_identifier: legacy.then(|| format!("cust-{n}")),
        agreement_id: None,
    }
}

async fn app(backend: Backend) -> (TestApp, MarketplaceDouble) {
    let double = MarketplaceDouble::start("127.0.0.1:0")
        .await
        .expect("start the Marketplace double");
    let app = spawn_app_with(
        backend,
        AppConfig {
            marketplace_endpoint: double.endpoint_url(),
            ..AppConfig::default()
        },
    )
    .await;
    (app, double)
}

fn resolve_calls(double: &MarketplaceDouble) -> usize {
    double.calls_of(Operation::ResolveCustomer).len()
}

/// The registration id of a 303 to the select-organization page.
fn registration_of(a: &crate::common::api::Answer) -> String {
    assert_eq!(a.status, 303, "{a:?}");
    let location = a.location.as_deref().expect("Location");
    let id = location
        .strip_prefix(&format!("{SELECT_URL}?registration="))
        .unwrap_or_else(|| panic!("unexpected Location {location}"));
    assert!(id.starts_with("reg_") && id.len() == 36, "{id}");
    id.to_string()
}

fn assert_error_page(a: &crate::common::api::Answer, status: u16, says: &str, token: &str) {
    assert_eq!(a.status, status, "{a:?}");
    assert!(a.content_type.starts_with("text/html"), "{a:?}");
    assert!(a.text.contains(says), "{says:?} not in {}", a.text);
    assert!(
        a.text
            .contains("Return to Manage Subscriptions in AWS Marketplace and click Set Up Your Account again."),
        "{}",
        a.text
    );
    assert!(
        !token.is_empty() && !a.text.contains(token),
        "the page echoes the token"
    );
    for leak in ["panicked", "stack backtrace", "Error {", "Exception"] {
        assert!(!a.text.contains(leak), "{leak} in {}", a.text);
    }
}

async fn a_resolved_token_registers_and_redirects(backend: Backend) {
    let (app, double) = app(backend).await;
    let token = format!("tok-new-{}", rand::random::<u64>());
    double.add_customer(&token, customer(1, false));
    let a = app.register(&token, Some("free-trial")).await;
    let id = registration_of(&a);
    assert_eq!(resolve_calls(&double), 1);
    // The select page's URL holds the id: no Referer hands it on.
    assert_eq!(a.header("referrer-policy"), Some("no-referrer"));

    let r = app.get(&format!("/v1/registrations/{id}")).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let r = r.json();
    assert_eq!(r["product_code"], PRODUCT);
    assert_eq!(r["customer_aws_account_id"], ACCOUNT);
    assert_eq!(r["license_arn"], license(1));
    assert_eq!(r["customer_identifier"], Value::Null);
    assert_eq!(r["offer_type"], "free-trial");
    assert_eq!(r["expired"], false);
    assert_eq!(r["linked_org_id"], Value::Null);
    let time = |k: &str| {
        chrono::DateTime::parse_from_rfc3339(r[k].as_str().expect(k))
            .expect(k)
            .timestamp()
    };
    assert_eq!(time("expires_at") - time("created_at"), 24 * 3600);

    // The token is kept only as its SHA-256.
    let stored = app
        .db
        .store
        .registration_by_token(&token_sha256(&token))
        .await
        .expect("read")
        .expect("by hash");
    assert_eq!(stored.id, id);
    let dump: Vec<String> = sqlx::query_scalar(
        "SELECT id || '|' || token_sha256 || '|' || product_code || '|' || COALESCE(license_arn, '') FROM mplink_registrations",
    )
    .fetch_all(app.db.store.pool())
    .await
    .expect("dump");
    assert!(dump.iter().all(|row| !row.contains(&token)), "{dump:?}");

    // A legacy listing: the customer identifier AWS still returns is kept beside the rest.
    let legacy = format!("tok-legacy-{}", rand::random::<u64>());
    double.add_customer(&legacy, customer(2, true));
    let id = registration_of(&app.register(&legacy, None).await);
    let r = app.get(&format!("/v1/registrations/{id}")).await.json();
    assert_eq!(r["customer_identifier"], "cust-2");
    assert_eq!(r["license_arn"], license(2));
    assert_eq!(r["offer_type"], Value::Null);
    let metrics = app.metrics.render();
    assert!(
        metrics.contains("mplink_registrations_total{outcome=\"registered\"} 2"),
        "{metrics}"
    );
    app.stop().await;
}

async fn the_same_token_twice_is_the_same_registration(backend: Backend) {
    let (app, double) = app(backend).await;
    let token = format!("tok-twice-{}", rand::random::<u64>());
    double.add_customer(&token, customer(3, false));
    let first = registration_of(&app.register(&token, None).await);
    let second = registration_of(&app.register(&token, None).await);
    assert_eq!(first, second);
    // AWS was asked once: a resubmitted token may come back expired.
    assert_eq!(resolve_calls(&double), 1);

    // Two posts at once (a double click): one registration still.
    let racing = format!("tok-race-{}", rand::random::<u64>());
    double.add_customer(&racing, customer(4, false));
    let (a, b) = tokio::join!(app.register(&racing, None), app.register(&racing, None));
    assert_eq!(registration_of(&a), registration_of(&b));
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM mplink_registrations")
        .fetch_one(app.db.store.pool())
        .await
        .expect("count");
    assert_eq!(n, 2);
    app.stop().await;
}

async fn invalid_and_expired_tokens_get_a_page_saying_what_to_do(backend: Backend) {
    let (app, double) = app(backend).await;
    let unknown = format!("tok-unknown-{}", rand::random::<u64>());
    let a = app.register(&unknown, None).await;
    assert_error_page(&a, 403, "could not verify", &unknown);

    let expired = format!("tok-expired-{}", rand::random::<u64>());
    double.add_customer(&expired, customer(5, false));
    double.expire_token(&expired);
    let a = app.register(&expired, None).await;
    assert_error_page(&a, 403, "has expired", &expired);
    assert_eq!(resolve_calls(&double), 2);

    // No token, or one that cannot be: refused without asking AWS.
    let a = app
        .send(
            app.http
                .post(app.url("/marketplace/register"))
                .form(&[("x-amzn-marketplace-offer-type", "free-trial")]),
        )
        .await;
    assert_error_page(&a, 400, "could not read", "no token");
    let huge = "t".repeat(5000);
    let a = app.register(&huge, None).await;
    assert_error_page(&a, 400, "could not read", &huge);
    let a = app
        .send(
            app.http
                .post(app.url("/marketplace/register"))
                .body("x".repeat(20_000)),
        )
        .await;
    assert_error_page(&a, 400, "could not read", "no token");
    assert_eq!(resolve_calls(&double), 2);
    let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM mplink_registrations")
        .fetch_one(app.db.store.pool())
        .await
        .expect("count");
    assert_eq!(count, 0);
    app.stop().await;
}

async fn throttling_is_retried_then_gives_up_with_a_503_page(backend: Backend) {
    let (app, double) = app(backend).await;
    let token = format!("tok-throttled-{}", rand::random::<u64>());
    double.add_customer(&token, customer(6, false));
    // One throttle: the SDK's second (and last) attempt succeeds.
    double.fail_next(Operation::ResolveCustomer, Failure::Throttling, 1);
    registration_of(&app.register(&token, None).await);
    assert_eq!(resolve_calls(&double), 2);

    let other = format!("tok-throttled-more-{}", rand::random::<u64>());
    double.add_customer(&other, customer(7, false));
    double.fail_next(Operation::ResolveCustomer, Failure::Throttling, 10);
    let a = app.register(&other, None).await;
    assert_error_page(&a, 503, "busy", &other);
    assert_eq!(resolve_calls(&double), 4, "two attempts, then the page");
    let metrics = app.metrics.render();
    assert!(
        metrics.contains("mplink_registrations_total{outcome=\"unavailable\"} 1"),
        "{metrics}"
    );
    app.stop().await;
}

/// Nothing answers at the Marketplace endpoint: the same 503 page, never a 500.
#[tokio::test]
async fn an_unreachable_marketplace_is_a_503_page() {
    let app = crate::common::api::spawn_app(Backend::Sqlite).await;
    let a = app.register("tok-nowhere-0001", None).await;
    assert_error_page(&a, 503, "busy", "tok-nowhere-0001");
    app.stop().await;
}

both_backends! {
    a_resolved_token_registers_and_redirects => a_resolved_token_registers_and_redirects;
    the_same_token_twice_is_the_same_registration => the_same_token_twice_is_the_same_registration;
    invalid_and_expired_tokens_get_a_page_saying_what_to_do => invalid_and_expired_tokens_get_a_page_saying_what_to_do;
    throttling_is_retried_then_gives_up_with_a_503_page => throttling_is_retried_then_gives_up_with_a_503_page;
}
