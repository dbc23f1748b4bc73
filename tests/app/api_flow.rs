//! The seed's whole flow over HTTP, on SQLite and on PostgreSQL: the buyer lands from AWS
//! Marketplace (ResolveCustomer against the test double), the host lists organizations (one Link
//! button disabled, with its reason), links one, shows the billing page syncing; the confirmation
//! travels through real LocalStack EventBridge and SQS to the worker, which shares the API's
//! database pool (as `mplink serve --worker` runs them); the page shows "AWS Marketplace
//! Subscription" with Edit disabled; the cancellation arrives the same way; the page shows no
//! payment method, Edit enabled, and the notice that the organization's data was kept.

use crate::common::api::{spawn_app_with, AppConfig, SELECT_URL, USER};
use crate::common::localstack::*;
use crate::common::*;
use mplink_marketplace_double::{MarketplaceDouble, ResolvedCustomer};
use serde_json::{json, Value};
use std::time::Duration;

const ACCOUNT: &str = "845735284135";

async fn the_whole_flow(backend: Backend) {
    let stack = Stack::new(5, Duration::from_secs(30)).await;
    let double = MarketplaceDouble::start("127.0.0.1:0")
        .await
        .expect("double");
    let app = spawn_app_with(
        backend,
        AppConfig {
            marketplace_endpoint: double.endpoint_url(),
            ..AppConfig::default()
        },
    )
    .await;
    let mut config = stack.worker_config();
    config.exit_when_idle = false;
    let worker = spawn_worker(&stack, app.db.store.clone(), signed(), config).await;

    let license = format!(
        "arn:aws:license-manager::123456789012:license:l-{}",
        stack.suffix.replace('-', "")
    );
    let agreement = format!("agmt-{}", stack.suffix);
    let token = format!("tok-flow-{}", stack.suffix);
    double.add_customer(
        &token,
        ResolvedCustomer {
            customer_aws_account_id: ACCOUNT.into(),
            license_arn: license.clone(),
            product_code: stack.product.clone(),
            customer_identifier: None,
            agreement_id: None,
        },
    );

    // 1. Landing: AWS Marketplace posts the buyer's browser here.
    let landing = app.register(&token, None).await;
    assert_eq!(landing.status, 303, "{landing:?}");
    let location = landing.location.expect("Location");
    let reg = location
        .strip_prefix(&format!("{SELECT_URL}?registration="))
        .expect("redirect to the select page")
        .to_string();

    // 2. Select an Organization to Link: one button disabled, with its tooltip.
    let answer = app
        .post_json(
            &format!("/v1/registrations/{reg}/organizations"),
            &json!({"user_id": USER, "organizations": [
                {"org_id": "org-acme", "payment_method_on_file": true, "other_marketplace": null,
                 "under_contract": false, "can_change_billing": true},
                {"org_id": "org-gcp", "payment_method_on_file": false, "other_marketplace": "gcp",
                 "under_contract": false, "can_change_billing": true},
            ]}),
        )
        .await
        .json();
    assert_eq!(answer["organizations"][0]["linkable"], true, "{answer}");
    assert_eq!(answer["organizations"][1]["linkable"], false);
    assert_eq!(answer["organizations"][1]["reason"], "other_marketplace");
    assert_eq!(
        answer["organizations"][1]["reason_text"],
        "This organization pays through another marketplace."
    );

    // 3. Link: syncing until AWS confirms.
    let linked = app
        .post_json(
            &format!("/v1/registrations/{reg}/link"),
            &json!({"user_id": USER, "org_id": "org-acme"}),
        )
        .await;
    assert_eq!(linked.status, 200, "{}", linked.text);
    let billing = || async { app.get("/v1/organizations/org-acme/billing").await.json() };
    let page = billing().await;
    assert_eq!(page["link_state"], "syncing");
    assert_eq!(page["syncing"], true);
    assert_eq!(page["payment_method"], Value::Null);

    // 4. The confirmation, through EventBridge and SQS to the worker.
    let t = chrono::Utc::now().timestamp();
    let agreement_detail = |extra: Value| {
        let mut a = json!({ "id": agreement });
        a.as_object_mut()
            .expect("obj")
            .extend(extra.as_object().expect("obj").clone());
        json!({
            "requestId": format!("req-{}", rand::random::<u32>()),
            "catalog": "AWSMarketplace",
            "agreement": a,
            "acceptor": { "accountId": ACCOUNT },
            "proposer": { "accountId": "123456789012" },
        })
    };
    let license_detail = json!({
        "requestId": "req-license",
        "catalog": "AWSMarketplace",
        "agreement": { "id": agreement },
        "product": { "code": stack.product, "id": "prod-flow" },
        "license": { "arn": license },
        "acceptor": { "accountId": ACCOUNT },
        "proposer": { "accountId": "123456789012" },
    });
    stack
        .put_event(
            "Purchase Agreement Created - Manufacturer",
            agreement_detail(json!({"intent": "NEW", "status": "ACTIVE"})),
            t,
        )
        .await;
    stack
        .put_event(
            "License Updated - Manufacturer",
            license_detail.clone(),
            t + 1,
        )
        .await;
    eventually(
        Duration::from_secs(60),
        "the link to be confirmed",
        || async { billing().await["link_state"] == "linked" },
    )
    .await;
    let page = billing().await;
    assert_eq!(page["payment_method"], "aws_marketplace");
    assert_eq!(page["payment_method_text"], "AWS Marketplace Subscription");
    assert_eq!(page["edit_enabled"], false);
    assert_eq!(page["syncing"], false);

    // 5. The cancellation, the same way.
    stack
        .put_event(
            "Purchase Agreement Ended - Manufacturer",
            agreement_detail(json!({"status": "CANCELLED"})),
            t + 60,
        )
        .await;
    stack
        .put_event(
            "License Deprovisioned - Manufacturer",
            license_detail,
            t + 120,
        )
        .await;
    eventually(
        Duration::from_secs(60),
        "the link to be removed",
        || async { billing().await["link_state"] == "unlinked" },
    )
    .await;
    let page = billing().await;
    assert_eq!(page["payment_method"], Value::Null);
    assert_eq!(page["edit_enabled"], true);
    assert!(page["unlinked_at"].is_string(), "{page}");
    assert!(page["notice"]
        .as_str()
        .unwrap_or("")
        .contains("resources and data were kept"));

    // The host's feed told each change, in order.
    let feed = app.get("/v1/events?after=0").await.json();
    let types: Vec<&str> = feed["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter(|e| e["data"]["org_id"] == "org-acme")
        .filter_map(|e| e["type"].as_str())
        .collect();
    assert_eq!(types.first(), Some(&"link.syncing"), "{types:?}");
    assert!(types.contains(&"link.linked"), "{types:?}");
    assert_eq!(types.last(), Some(&"link.unlinked"), "{types:?}");

    worker.shutdown.cancel();
    let summary = tokio::time::timeout(Duration::from_secs(30), worker.handle)
        .await
        .expect("worker stops")
        .expect("worker task");
    assert_eq!(summary.rejected, 0, "{summary:?}");
    app.stop().await;
}

both_backends! {
    the_whole_flow => the_whole_flow;
}
