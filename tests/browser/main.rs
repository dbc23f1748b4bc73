//! The buyer's path in a real browser: Debian's Chromium, headless, through chromedriver, on the
//! example host pages of `mplink serve --example` (with its worker on a LocalStack queue, and
//! the Marketplace test double resolving the registration token).
//!
//! landing → organization list (disabled Link buttons with their reason as tooltip) → link →
//! billing page syncing → AWS confirms → "AWS Marketplace Subscription", Edit disabled → the
//! buyer cancels (pending, then final) → no payment method, Edit enabled, the notice that the
//! data was kept, the resources still listed.
//!
//! It runs for both kinds of listing (see [`aws::Listing`]): a current one, whose registration
//! carries a license ARN and whose confirmation and cancellation arrive as EventBridge agreement
//! and license events, and a legacy SNS one (subscribe-success, unsubscribe-pending,
//! unsubscribe-success), each through real LocalStack EventBridge or SNS and SQS to the worker
//! in the `serve` process.
//!
//! A screenshot of every step is kept in `target/browser-artifacts/<listing>/NN-step.png`, with
//! the chromedriver and `mplink serve` logs. Without Chromium the test fails unless
//! `MPLINK_BROWSER_TEST=off` (scripts/chromium.sh installs it).

#[path = "../common/mod.rs"]
mod common;

mod app;
mod aws;
mod driver;

use aws::{Aws, Listing};
use common::localstack::Stack;
use common::{Backend, TestDb};
use driver::{text, wait_for, Artifacts, Driver};
use fantoccini::{Client, Locator};
use mplink_marketplace_double::MarketplaceDouble;
use std::time::Duration;

const API_TOKEN: &str = "example-host-token-0123456789";
const REGISTRATION_TOKEN: &str = "browser-test-registration-token";
const AWS_TEXT: &str = "AWS Marketplace Subscription";
const NO_METHOD: &str = "No payment method";

/// One organization row on the select page: (enabled, title, data-reason).
async fn link_button(client: &Client, org: &str) -> (bool, Option<String>, Option<String>) {
    let button = client
        .find(Locator::Css(&format!("#org-{org} button.link")))
        .await
        .unwrap_or_else(|e| panic!("no Link button for {org}: {e}"));
    (
        button.is_enabled().await.expect("enabled"),
        button.attr("title").await.expect("title"),
        button.attr("data-reason").await.expect("data-reason"),
    )
}

/// What the billing page shows now.
#[derive(Debug)]
struct BillingPage {
    payment_method: String,
    edit_enabled: bool,
    link_state: String,
    sync_notice: Option<String>,
    notice: Option<String>,
    resources: Vec<String>,
}

async fn visible_text(client: &Client, css: &str) -> Option<String> {
    let element = client.find(Locator::Css(css)).await.ok()?;
    if element.is_displayed().await.ok()? {
        element.text().await.ok()
    } else {
        None
    }
}

async fn billing_page(client: &Client) -> Option<BillingPage> {
    let edit = client.find(Locator::Css("#edit-payment")).await.ok()?;
    let mut resources = Vec::new();
    for li in client.find_all(Locator::Css("#resources li")).await.ok()? {
        resources.push(li.attr("data-name").await.ok()??);
    }
    Some(BillingPage {
        payment_method: text(client, "#payment-method").await?,
        edit_enabled: edit.is_enabled().await.ok()?,
        link_state: client
            .find(Locator::Css("#link-state"))
            .await
            .ok()?
            .attr("data-state")
            .await
            .ok()?
            .unwrap_or_default(),
        sync_notice: visible_text(client, "#sync-notice").await,
        notice: visible_text(client, "#notice").await,
        resources,
    })
}

/// Waits until the billing page (which polls every second) shows what `want` accepts.
async fn billing_until(
    client: &Client,
    what: &str,
    want: impl Fn(&BillingPage) -> bool,
) -> BillingPage {
    wait_for(client, what, || async {
        billing_page(client).await.filter(|page| want(page))
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buyer_path_eventbridge_listing() {
    buyer_path(Listing::EventBridge).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buyer_path_legacy_sns_listing() {
    buyer_path(Listing::LegacySns).await
}

async fn buyer_path(listing: Listing) {
    let Some(chromedriver) = driver::chromedriver_or_skip() else {
        return;
    };
    // fantoccini's rustls connector needs the process-wide provider (two are compiled in).
    mplink::tls::install_default_crypto_provider();
    let mut artifacts = Artifacts::new(listing.name());
    let db = TestDb::new(Backend::Sqlite).await;
    let stack = Stack::new(5, Duration::from_secs(30)).await;
    let double = MarketplaceDouble::start("127.0.0.1:0")
        .await
        .expect("marketplace double");
    let aws = Aws::new(&stack, listing);
    double.add_customer(REGISTRATION_TOKEN, aws.resolved());
    let serve = app::Serve::start(
        db.url.expose(),
        API_TOKEN,
        &double.endpoint_url(),
        &stack,
        artifacts.dir(),
    )
    .await;
    let driver = Driver::start(&chromedriver, artifacts.dir()).await;
    let client = driver.session().await;
    let base = &serve.base;

    // 1. A token AWS never issued: the buyer gets a page saying what to do, not a stack trace.
    client
        .goto(&format!(
            "{base}/example/aws-landing.html?token=not-a-token-aws-issued"
        ))
        .await
        .expect("open landing");
    let shown = wait_for(&client, "the registration error page", || async {
        let url = client.current_url().await.ok()?;
        if url.path() != "/marketplace/register" {
            return None;
        }
        text(&client, "body").await
    })
    .await;
    assert!(
        shown.contains("Manage Subscriptions") && shown.contains("Set Up Your Account"),
        "the error page must tell the buyer what to do: {shown}"
    );
    artifacts.screenshot(&client, "landing-invalid-token").await;

    // 2. AWS Marketplace posts the real token; mplink answers 303 to the organization list.
    client
        .goto(&format!(
            "{base}/example/aws-landing.html?token={REGISTRATION_TOKEN}"
        ))
        .await
        .expect("open landing");
    let registration = wait_for(&client, "the redirect to select.html", || async {
        let url = client.current_url().await.ok()?;
        (url.path() == "/example/select.html")
            .then(|| url.query_pairs().find(|(k, _)| k == "registration"))
            .flatten()
            .map(|(_, v)| v.into_owned())
    })
    .await;
    assert!(
        registration.len() >= 22,
        "registration id {registration:?} is too short to carry 128 random bits"
    );

    // 3. The organization list: Acme can be linked; Globex pays through another marketplace
    // and Initech's billing may not be changed by this user, each with its reason as tooltip.
    wait_for(&client, "the organization rows", || async {
        (client
            .find_all(Locator::Css("#organizations tbody tr"))
            .await
            .ok()?
            .len()
            == 3)
            .then_some(())
    })
    .await;
    let verdicts = reqwest::Client::new()
        .post(format!(
            "{base}/v1/registrations/{registration}/organizations"
        ))
        .bearer_auth(API_TOKEN)
        .header("content-type", "application/json")
        // As the example host's signed-in user, who claimed the registration when the page loaded.
        .body(serde_json::json!({"user_id": mplink::api::example::SIGNED_IN_USER, "organizations": [
            {"org_id": "org-globex", "payment_method_on_file": false, "other_marketplace": "gcp",
             "under_contract": false, "can_change_billing": true},
            {"org_id": "org-initech", "payment_method_on_file": true, "other_marketplace": null,
             "under_contract": false, "can_change_billing": false},
        ]}).to_string())
        .send()
        .await
        .expect("verdicts")
        .text()
        .await
        .expect("verdicts body");
    let verdicts: serde_json::Value = serde_json::from_str(&verdicts).expect("verdicts json");
    let reason_text = |i: usize| {
        verdicts["organizations"][i]["reason_text"]
            .as_str()
            .map(str::to_string)
    };
    assert_eq!(link_button(&client, "org-acme").await, (true, None, None));
    let (enabled, title, reason) = link_button(&client, "org-globex").await;
    assert!(!enabled, "Globex's Link button must be disabled");
    assert_eq!(reason.as_deref(), Some("other_marketplace"));
    assert_eq!(
        title,
        reason_text(0),
        "Globex's tooltip is the API's reason text"
    );
    assert!(title.is_some_and(|t| t.to_lowercase().contains("marketplace")));
    let (enabled, title, reason) = link_button(&client, "org-initech").await;
    assert!(!enabled, "Initech's Link button must be disabled");
    assert_eq!(reason.as_deref(), Some("not_permitted"));
    assert_eq!(title, reason_text(1));
    artifacts.screenshot(&client, "select-organization").await;
    // A disabled Link button does nothing when clicked.
    client
        .find(Locator::Css("#org-org-globex button.link"))
        .await
        .expect("globex button")
        .click()
        .await
        .expect("click the disabled button");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let url = client.current_url().await.expect("url");
    assert_eq!(url.path(), "/example/select.html", "a disabled Link linked");

    // 4. Link Acme: the billing page, no payment method yet, the "being synced" notice.
    client
        .find(Locator::Css("#org-org-acme button.link"))
        .await
        .expect("acme button")
        .click()
        .await
        .expect("click Link");
    wait_for(&client, "billing.html for org-acme", || async {
        let url = client.current_url().await.ok()?;
        (url.path() == "/example/billing.html" && url.query() == Some("org=org-acme")).then_some(())
    })
    .await;
    let page = billing_until(&client, "the syncing notice", |p| p.sync_notice.is_some()).await;
    assert_eq!(page.payment_method, NO_METHOD, "{page:?}");
    assert_eq!(page.link_state, "syncing", "{page:?}");
    assert!(page.notice.is_none(), "{page:?}");
    assert_eq!(page.resources, ["prod-eu", "staging"]);
    artifacts.screenshot(&client, "billing-syncing").await;

    // 5. AWS confirms (→ SQS → the worker): an AWS Marketplace subscription, not editable.
    aws.confirm().await;
    let page = billing_until(&client, "the AWS Marketplace payment method", |p| {
        p.payment_method == AWS_TEXT
    })
    .await;
    assert!(!page.edit_enabled, "Edit must be disabled: {page:?}");
    assert!(page.sync_notice.is_none(), "{page:?}");
    assert_eq!(page.link_state, "linked", "{page:?}");
    // Usage the host reports shows on the billing page within a second, split by its tags,
    // its hour still open.
    assert!(
        visible_text(&client, "#usage-empty").await.is_some(),
        "no usage yet"
    );
    let reported = reqwest::Client::new()
        .post(format!("{base}/v1/usage"))
        .bearer_auth(API_TOKEN)
        .header("content-type", "application/json")
        .body(
            serde_json::json!({"idempotency_key": "browser-usage-1", "org_id": "org-acme",
                "dimension": "requests", "quantity": 12, "time": chrono::Utc::now().to_rfc3339(),
                "tags": {"project": "analytics"}})
            .to_string(),
        )
        .send()
        .await
        .expect("usage")
        .text()
        .await
        .expect("usage body");
    assert!(reported.contains("\"accepted\":true"), "{reported}");
    let row = wait_for(&client, "the usage row", || async {
        let quantity = text(&client, "#usage tbody tr td.quantity").await?;
        (quantity == "12").then_some(())?;
        Some((
            text(&client, "#usage tbody tr td.tags").await?,
            text(&client, "#usage tbody tr td.fate").await?,
        ))
    })
    .await;
    assert_eq!(
        row,
        (
            "project=analytics: 12".to_string(),
            "this hour is still open".to_string()
        )
    );
    artifacts.screenshot(&client, "billing-linked").await;

    // 6. The buyer cancels: the cancellation is pending (still paid through AWS) …
    aws.cancel().await;
    let page = billing_until(&client, "unlink pending", |p| {
        p.link_state == "unlink_pending"
    })
    .await;
    assert_eq!(page.payment_method, AWS_TEXT, "{page:?}");
    assert!(!page.edit_enabled, "{page:?}");
    assert!(
        page.notice.is_some(),
        "the cancellation is announced: {page:?}"
    );
    artifacts
        .screenshot(&client, "billing-unlink-pending")
        .await;

    // 7. … then final: no payment method, Edit enabled, data kept.
    aws.end().await;
    let page = billing_until(&client, "the unlinked billing page", |p| {
        p.payment_method == NO_METHOD && p.notice.is_some()
    })
    .await;
    assert!(page.edit_enabled, "Edit must be enabled again: {page:?}");
    assert_eq!(page.link_state, "unlinked", "{page:?}");
    let notice = page.notice.clone().unwrap_or_default().to_lowercase();
    assert!(
        notice.contains("kept"),
        "the notice must say the data was kept: {page:?}"
    );
    assert_eq!(page.resources, ["prod-eu", "staging"], "resources stay");
    artifacts.screenshot(&client, "billing-unlinked").await;
    // Edit is really usable again: the (example's stand-in) card form answers.
    client
        .find(Locator::Css("#edit-payment"))
        .await
        .expect("edit")
        .click()
        .await
        .expect("click Edit");
    wait_for(&client, "the Edit button's answer", || async {
        visible_text(&client, "#edit-message").await
    })
    .await;

    // The token never reached the browser: not in any page, and /v1 refuses the browser.
    let status = client
        .execute(
            "return fetch('/v1/organizations/org-acme/billing').then(r => r.status)",
            vec![],
        )
        .await
        .expect("fetch from the page");
    assert_eq!(status, serde_json::json!(401));
    for page in [
        "index.html",
        "aws-landing.html",
        "select.html",
        "billing.html",
        "app.js",
    ] {
        let body = reqwest::get(format!("{base}/example/{page}"))
            .await
            .expect("page")
            .text()
            .await
            .expect("page text");
        assert!(!body.contains(API_TOKEN), "{page} carries the API token");
    }

    client.close().await.expect("close session");
    assert_eq!(artifacts.files.len(), 6);
    drop(serve);
    db.cleanup().await;
}
