//! The HTTP API (`mplink serve`) over real HTTP, on SQLite and on PostgreSQL: tokens, error
//! shapes and limits, the reasons an organization cannot be linked, the link, the billing view
//! driven by real event fixtures, the events feed, and the checked-in OpenAPI description.
//! The landing (`/marketplace/register`) against the Marketplace test double is in
//! `tests/api_register.rs`.

use crate::common::api::{spawn_app, spawn_app_with, AppConfig, TestApp, OTHER_TOKEN, TOKEN, USER};
use crate::common::*;
use mplink::api::routes::register::{new_registration_id, token_sha256};
use mplink::ledger::LinkRequest;
use mplink::store::{NewRegistration, Registration, Store};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The fixtures' EventBridge subscription (tests/fixtures/events/eb_*.json).
pub(crate) const FIXTURE_PRODUCT: &str = "aw4fgf5tyo5w2ap6fEXAMPLE";
const FIXTURE_ACCOUNT: &str = "845735284135";
pub(crate) const FIXTURE_LICENSE: &str =
    "arn:aws:license-manager::123456789012:license:l-e52ca6f38bf84d0fafb8802ca15ac11x";
/// The fixtures' legacy SNS subscription.
const SNS_PRODUCT: &str = "n0123EXAMPLEXXXXXXXXXXXX";
const SNS_CUSTOMER: &str = "X01EXAMPLEX";

pub(crate) fn fixture(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/events")
        .join(format!("{name}.json"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

pub(crate) async fn apply_fixture(store: &Store, name: &str) {
    let body = fixture(name);
    let event = decoded(&format!("sqs-{name}"), &body);
    store.apply(&event, &body).await.expect("apply fixture");
}

/// Stores a registration as the landing would, for `license` (None: a legacy customer).
pub(crate) async fn registration(
    store: &Store,
    product: &str,
    license: Option<&str>,
    customer: Option<&str>,
    expires_in_ms: i64,
) -> Registration {
    let now = mplink::time::now_ms();
    store
        .create_registration(&NewRegistration {
            id: new_registration_id(),
            token_sha256: token_sha256(&format!("token-{}", rand::random::<u64>())),
            product_code: product.into(),
            customer_aws_account_id: Some(FIXTURE_ACCOUNT.into()),
            license_arn: license.map(str::to_owned),
            customer_identifier: customer.map(str::to_owned),
            offer_type: None,
            created_at_ms: now,
            expires_at_ms: now + expires_in_ms,
        })
        .await
        .expect("registration")
}

pub(crate) fn license(n: u32) -> String {
    format!("arn:aws:license-manager::123456789012:license:l-{n:032x}")
}

pub(crate) const HOUR: i64 = 3_600_000;

fn candidate(org: &str) -> Value {
    json!({"org_id": org, "payment_method_on_file": false, "other_marketplace": null,
           "under_contract": false, "can_change_billing": true})
}

/// The answers of `/organizations` by org id: (linkable, reason).
async fn reasons(
    app: &TestApp,
    reg: &str,
    orgs: Vec<Value>,
) -> Vec<(String, bool, Option<String>)> {
    let a = app
        .post_json(
            &format!("/v1/registrations/{reg}/organizations"),
            &json!({ "user_id": USER, "organizations": orgs }),
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.text);
    let body = a.json();
    assert_eq!(body["registration_id"], reg);
    body["organizations"]
        .as_array()
        .expect("organizations")
        .iter()
        .map(|o| {
            let reason = o["reason"].as_str().map(str::to_owned);
            // The tooltip comes with every reason, and only then.
            assert_eq!(o["reason_text"].is_string(), reason.is_some(), "{o}");
            (
                o["org_id"].as_str().expect("org_id").to_string(),
                o["linkable"].as_bool().expect("linkable"),
                reason,
            )
        })
        .collect()
}

fn v1_routes(reg: &str) -> Vec<(&'static str, String, Option<Value>)> {
    vec![
        ("GET", format!("/v1/registrations/{reg}"), None),
        (
            "POST",
            format!("/v1/registrations/{reg}/organizations"),
            Some(json!({"user_id": USER, "organizations": [candidate("org-1")]})),
        ),
        (
            "POST",
            format!("/v1/registrations/{reg}/link"),
            Some(json!({"user_id": USER, "org_id": "org-1"})),
        ),
        ("GET", "/v1/organizations/org-1/billing".to_string(), None),
        ("GET", "/v1/events?after=0".to_string(), None),
        (
            "POST",
            "/v1/usage".to_string(),
            Some(
                json!({"idempotency_key": "k", "org_id": "org-1", "dimension": "requests",
                        "quantity": 1, "time": "2026-11-26T10:00:00Z"}),
            ),
        ),
        ("GET", "/v1/no-such-route".to_string(), None),
    ]
}

fn request(
    app: &TestApp,
    method: &str,
    path: &str,
    body: &Option<Value>,
    auth: Option<&str>,
) -> reqwest::RequestBuilder {
    let url = app.url(path);
    let mut r = match method {
        "GET" => app.http.get(url),
        _ => app.http.post(url),
    };
    if let Some(body) = body {
        r = r
            .header("content-type", "application/json")
            .body(body.to_string());
    }
    if let Some(auth) = auth {
        r = r.header("authorization", auth);
    }
    r
}

async fn every_v1_route_refuses_a_missing_or_wrong_token(backend: Backend) {
    let app = spawn_app(backend).await;
    let reg = registration(
        &app.db.store,
        FIXTURE_PRODUCT,
        Some(&license(1)),
        None,
        HOUR,
    )
    .await;
    let wrong = format!("Bearer {}x", TOKEN);
    let basic = format!("Basic {TOKEN}");
    let short = format!("Bearer {}", &TOKEN[..TOKEN.len() - 1]);
    for (method, path, body) in v1_routes(&reg.id) {
        for auth in [
            None,
            Some(wrong.as_str()),
            Some(basic.as_str()),
            Some(short.as_str()),
            Some("Bearer"),
        ] {
            let a = app.send(request(&app, method, &path, &body, auth)).await;
            assert_eq!(a.status, 401, "{method} {path} with {auth:?}: {}", a.text);
            assert!(a.content_type.starts_with("application/json"), "{a:?}");
            assert_eq!(a.code(), "unauthorized", "{a:?}");
            assert!(!a.json()["message"].as_str().unwrap_or("").is_empty());
            assert!(
                a.header("www-authenticate")
                    .is_some_and(|v| v.starts_with("Bearer")),
                "{a:?}"
            );
        }
        // Either configured token passes (rotation).
        for token in [TOKEN, OTHER_TOKEN] {
            let a = app
                .send(request(
                    &app,
                    method,
                    &path,
                    &body,
                    Some(&format!("Bearer {token}")),
                ))
                .await;
            assert_ne!(a.status, 401, "{method} {path}: {}", a.text);
        }
    }
    // Five refused attempts per route, each counted.
    let refused = 5 * v1_routes(&reg.id).len();
    let errors = app.metrics.render();
    assert!(
        errors.contains(&format!(
            "mplink_api_errors_total{{code=\"unauthorized\"}} {refused}"
        )),
        "{errors}"
    );
    app.stop().await;
}

async fn bad_bodies_and_queries_get_json_4xx(backend: Backend) {
    let app = spawn_app(backend).await;
    let reg = registration(
        &app.db.store,
        FIXTURE_PRODUCT,
        Some(&license(2)),
        None,
        HOUR,
    )
    .await;
    let orgs = format!("/v1/registrations/{}/organizations", reg.id);
    let link = format!("/v1/registrations/{}/link", reg.id);
    let raw = |path: &str, content_type: &str, body: String| {
        app.http
            .post(app.url(path))
            .bearer_auth(TOKEN)
            .header("content-type", content_type)
            .body(body)
    };
    let cases: Vec<(reqwest::RequestBuilder, u16, &str, Option<&str>)> = vec![
        // Over 64 KiB.
        (
            raw(&link, "application/json", format!("{{\"org_id\": \"{}\"}}", "x".repeat(70_000))),
            413,
            "body_too_large",
            None,
        ),
        (raw(&link, "application/json", "{\"org_id\": ".into()), 400, "malformed_json", None),
        (raw(&link, "text/plain", "{\"org_id\": \"org-1\"}".into()), 415, "unsupported_media_type", None),
        (
            raw(&link, "application/json", json!({"user_id": USER, "org_id": "org-1", "force": true}).to_string()),
            422,
            "invalid_body",
            Some("unknown field `force`"),
        ),
        (raw(&link, "application/json", json!({"user_id": USER}).to_string()), 422, "invalid_body", Some("missing field `org_id`")),
        (raw(&link, "application/json", json!({"org_id": "org-1"}).to_string()), 422, "invalid_body", Some("missing field `user_id`")),
        (
            raw(&link, "application/json", json!({"user_id": USER, "org_id": 7}).to_string()),
            422,
            "invalid_body",
            Some("invalid type"),
        ),
        (
            raw(&link, "application/json", json!({"user_id": USER, "org_id": " padded"}).to_string()),
            422,
            "invalid_field",
            Some("org_id"),
        ),
        (
            raw(
                &orgs,
                "application/json",
                json!({"user_id": USER, "organizations": [{"org_id": "o", "can_change_billing": true, "role": "admin"}]}).to_string(),
            ),
            422,
            "invalid_body",
            Some("unknown field `role`"),
        ),
        (
            raw(&orgs, "application/json", json!({"user_id": USER, "organizations": [{"org_id": "o"}]}).to_string()),
            422,
            "invalid_body",
            Some("can_change_billing"),
        ),
        (
            raw(
                &orgs,
                "application/json",
                json!({"user_id": USER, "organizations": (0..101).map(|i| candidate(&format!("o-{i}"))).collect::<Vec<_>>()}).to_string(),
            ),
            422,
            "invalid_field",
            Some("at most 100"),
        ),
        (
            app.http.get(app.url("/v1/events?after=abc")).bearer_auth(TOKEN),
            400,
            "invalid_query",
            None,
        ),
        (
            app.http.get(app.url("/v1/events?after=0&wait=31")).bearer_auth(TOKEN),
            422,
            "invalid_field",
            Some("wait"),
        ),
        (
            app.http.get(app.url("/v1/events?since=3")).bearer_auth(TOKEN),
            400,
            "invalid_query",
            Some("unknown field"),
        ),
        (
            app.http.get(app.url("/v1/registrations/reg_nope")).bearer_auth(TOKEN),
            404,
            "registration_not_found",
            None,
        ),
        (
            app.http
                .get(app.url(&format!("/v1/registrations/{}", new_registration_id())))
                .bearer_auth(TOKEN),
            404,
            "registration_not_found",
            None,
        ),
        (
            app.http.get(app.url("/v1/organizations/org-1/payments")).bearer_auth(TOKEN),
            404,
            "route_not_found",
            // The whole path, not the nested router's tail.
            Some("GET /v1/organizations/org-1/payments"),
        ),
        (
            app.http.delete(app.url(&link)).bearer_auth(TOKEN),
            405,
            "method_not_allowed",
            None,
        ),
    ];
    for (i, (req, status, code, says)) in cases.into_iter().enumerate() {
        let a = app.send(req).await;
        assert_eq!(
            (a.status, a.code().as_str()),
            (status, code),
            "case {i}: {}",
            a.text
        );
        assert!(
            a.content_type.starts_with("application/json"),
            "case {i}: {a:?}"
        );
        if let Some(says) = says {
            assert!(
                a.text.contains(says),
                "case {i}: {says:?} not in {}",
                a.text
            );
        }
    }
    // Nothing was linked by any of them.
    assert!(app.db.store.links().await.expect("links").is_empty());
    app.stop().await;
}

async fn each_reason_is_given(backend: Backend) {
    let app = spawn_app(backend).await;
    let s = &app.db.store;
    let reg = registration(s, FIXTURE_PRODUCT, Some(&license(10)), None, HOUR).await;

    // mplink's knowledge: one organization billed through another subscription (syncing), one
    // whose old subscription was cancelled (free to link again).
    s.link(&LinkRequest {
        org_id: "org-elsewhere".into(),
        product_code: FIXTURE_PRODUCT.into(),
        customer_identifier: None,
        customer_aws_account_id: None,
        license_arn: Some(license(11)),
        requested_at_ms: T0,
    })
    .await
    .expect("link elsewhere");
    s.link(&LinkRequest {
        org_id: "org-cancelled".into(),
        product_code: SNS_PRODUCT.into(),
        customer_identifier: Some(SNS_CUSTOMER.into()),
        customer_aws_account_id: None,
        license_arn: None,
        requested_at_ms: T0,
    })
    .await
    .expect("link legacy");
    apply_fixture(s, "sns_subscribe_success").await;
    apply_fixture(s, "sns_unsubscribe_success").await;

    let mut both = candidate("org-both");
    both["other_marketplace"] = json!("gcp");
    both["can_change_billing"] = json!(false);
    let mut gcp = candidate("org-gcp");
    gcp["other_marketplace"] = json!("gcp");
    let mut blank = candidate("org-blank-marketplace");
    blank["other_marketplace"] = json!("  ");
    let mut contract = candidate("org-contract");
    contract["under_contract"] = json!(true);
    let mut viewer = candidate("org-viewer");
    viewer["can_change_billing"] = json!(false);
    let mut product = candidate("org-product");
    product["product_code"] = json!("prod-another");
    let mut same_product = candidate("org-same-product");
    same_product["product_code"] = json!(FIXTURE_PRODUCT);
    let mut card = candidate("org-card");
    card["payment_method_on_file"] = json!(true);
    let got = reasons(
        &app,
        &reg.id,
        vec![
            candidate("org-free"),
            gcp,
            blank,
            contract,
            viewer,
            product,
            same_product,
            candidate("org-elsewhere"),
            candidate("org-cancelled"),
            both,
            card,
        ],
    )
    .await;
    let expect = |org: &str, reason: Option<&str>| {
        (org.to_string(), reason.is_none(), reason.map(str::to_owned))
    };
    assert_eq!(
        got,
        vec![
            expect("org-free", None),
            expect("org-gcp", Some("other_marketplace")),
            expect("org-blank-marketplace", None),
            expect("org-contract", Some("under_contract")),
            expect("org-viewer", Some("not_permitted")),
            expect("org-product", Some("product_mismatch")),
            expect("org-same-product", None),
            expect("org-elsewhere", Some("already_linked")),
            expect("org-cancelled", None),
            expect("org-both", Some("other_marketplace")),
            expect("org-card", None),
        ]
    );
    // The texts are the tooltips docs/http-api.md lists.
    let a = app
        .post_json(
            &format!("/v1/registrations/{}/organizations", reg.id),
            &json!({"user_id": USER, "organizations": [candidate("org-elsewhere"), card_of("org-card")]}),
        )
        .await
        .json();
    assert_eq!(
        a["organizations"][0]["reason_text"],
        "This organization is already linked to an AWS Marketplace subscription."
    );
    assert_eq!(a["organizations"][1]["replaces_payment_method"], true);

    // Once an organization is linked through the registration, it stays linkable (the same
    // link again) and every other one is told the subscription is taken.
    let linked = app
        .post_json(
            &format!("/v1/registrations/{}/link", reg.id),
            &json!({"user_id": USER, "org_id": "org-free"}),
        )
        .await;
    assert_eq!(linked.status, 200, "{}", linked.text);
    let got = reasons(
        &app,
        &reg.id,
        vec![candidate("org-free"), candidate("org-next")],
    )
    .await;
    assert_eq!(
        got,
        vec![
            expect("org-free", None),
            expect("org-next", Some("registration_linked"))
        ]
    );

    // A subscription another organization holds already (linked by hand): taken too.
    let held = registration(s, FIXTURE_PRODUCT, Some(&license(12)), None, HOUR).await;
    s.link(&held.link_request("org-holder", T0))
        .await
        .expect("link by hand");
    let got = reasons(
        &app,
        &held.id,
        vec![candidate("org-holder"), candidate("org-other")],
    )
    .await;
    assert_eq!(
        got,
        vec![
            expect("org-holder", None),
            expect("org-other", Some("registration_linked"))
        ]
    );

    // An expired registration refuses everyone, first of all reasons.
    let old = registration(s, FIXTURE_PRODUCT, Some(&license(13)), None, -1).await;
    let mut gcp = candidate("org-gcp");
    gcp["other_marketplace"] = json!("gcp");
    let got = reasons(&app, &old.id, vec![candidate("org-free2"), gcp]).await;
    assert_eq!(
        got,
        vec![
            expect("org-free2", Some("registration_expired")),
            expect("org-gcp", Some("registration_expired"))
        ]
    );
    app.stop().await;
}

fn card_of(org: &str) -> Value {
    let mut c = candidate(org);
    c["payment_method_on_file"] = json!(true);
    c
}

async fn a_product_not_sold_here_is_a_mismatch(backend: Backend) {
    let app = spawn_app_with(
        backend,
        AppConfig {
            product_codes: vec!["prod-sold".into()],
            ..AppConfig::default()
        },
    )
    .await;
    let reg = registration(&app.db.store, "prod-unsold", Some(&license(20)), None, HOUR).await;
    let got = reasons(&app, &reg.id, vec![candidate("org-1")]).await;
    assert_eq!(
        got,
        vec![("org-1".into(), false, Some("product_mismatch".into()))]
    );
    app.stop().await;
}

async fn link_is_idempotent_and_refuses_what_link_would_move(backend: Backend) {
    let app = spawn_app(backend).await;
    let s = &app.db.store;
    let reg = registration(s, FIXTURE_PRODUCT, Some(&license(30)), None, HOUR).await;
    let path = format!("/v1/registrations/{}/link", reg.id);

    let first = app
        .post_json(&path, &json!({"user_id": USER, "org_id": "org-1"}))
        .await;
    assert_eq!(first.status, 200, "{}", first.text);
    let view = first.json();
    assert_eq!(view["link_state"], "syncing");
    assert_eq!(view["syncing"], true);
    assert_eq!(view["payment_method"], Value::Null);
    let again = app
        .post_json(&path, &json!({"user_id": USER, "org_id": "org-1"}))
        .await;
    assert_eq!((again.status, again.json()), (200, view.clone()));

    let second = app
        .post_json(&path, &json!({"user_id": USER, "org_id": "org-2"}))
        .await;
    assert_eq!(
        (second.status, second.code().as_str()),
        (409, "registration_linked"),
        "{}",
        second.text
    );

    // One link, one notification: the repeat and the refusal wrote nothing.
    let links = s.links().await.expect("links");
    assert_eq!(links.len(), 1);
    assert_eq!(links[0].org_id, "org-1");
    let rows = s.outbox_after(0, 100).await.expect("outbox");
    assert_eq!(
        rows.iter()
            .map(|r| (r.org_id.as_str(), r.event_type.as_str()))
            .collect::<Vec<_>>(),
        [("org-1", "link.syncing")]
    );
    let registration_now = s
        .registration(&reg.id)
        .await
        .expect("read")
        .expect("exists");
    assert_eq!(registration_now.linked_org_id.as_deref(), Some("org-1"));

    // org-1 is billed through that subscription now: another registration cannot take it.
    let other = registration(s, FIXTURE_PRODUCT, Some(&license(31)), None, HOUR).await;
    let a = app
        .post_json(
            &format!("/v1/registrations/{}/link", other.id),
            &json!({"user_id": USER, "org_id": "org-1"}),
        )
        .await;
    assert_eq!(
        (a.status, a.code().as_str()),
        (409, "already_linked"),
        "{}",
        a.text
    );

    // A subscription linked by hand to org-3: a registration of it does not move it to org-4.
    let held = registration(s, FIXTURE_PRODUCT, Some(&license(32)), None, HOUR).await;
    s.link(&held.link_request("org-3", T0))
        .await
        .expect("link by hand");
    let a = app
        .post_json(
            &format!("/v1/registrations/{}/link", held.id),
            &json!({"user_id": USER, "org_id": "org-4"}),
        )
        .await;
    assert_eq!(
        (a.status, a.code().as_str()),
        (409, "registration_linked"),
        "{}",
        a.text
    );
    let by_hand = s
        .org_link("org-3")
        .await
        .expect("read")
        .expect("still there");
    assert_eq!(by_hand.0.license_arn, Some(license(32)));
    assert!(s.org_link("org-4").await.expect("read").is_none());
    // …but linking the holder itself through it is the same link.
    let a = app
        .post_json(
            &format!("/v1/registrations/{}/link", held.id),
            &json!({"user_id": USER, "org_id": "org-3"}),
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.text);

    let expired = registration(s, FIXTURE_PRODUCT, Some(&license(33)), None, -1).await;
    let a = app
        .post_json(
            &format!("/v1/registrations/{}/link", expired.id),
            &json!({"user_id": USER, "org_id": "org-5"}),
        )
        .await;
    assert_eq!(
        (a.status, a.code().as_str()),
        (410, "registration_expired"),
        "{}",
        a.text
    );
    let a = app
        .post_json(
            &format!("/v1/registrations/{}/link", new_registration_id()),
            &json!({"user_id": USER, "org_id": "org-5"}),
        )
        .await;
    assert_eq!(
        (a.status, a.code().as_str()),
        (404, "registration_not_found")
    );

    // Concurrent links of two organizations through one registration: exactly one wins.
    let race = registration(s, FIXTURE_PRODUCT, Some(&license(34)), None, HOUR).await;
    let path = format!("/v1/registrations/{}/link", race.id);
    let (six, seven) = (
        json!({"user_id": USER, "org_id": "org-6"}),
        json!({"user_id": USER, "org_id": "org-7"}),
    );
    let (a, b) = tokio::join!(app.post_json(&path, &six), app.post_json(&path, &seven));
    let mut statuses = [a.status, b.status];
    statuses.sort();
    assert_eq!(statuses, [200, 409], "{} / {}", a.text, b.text);
    app.stop().await;
}

async fn linked_at_once_when_aws_confirmed_first(backend: Backend) {
    let app = spawn_app(backend).await;
    let s = &app.db.store;
    apply_fixture(s, "eb_created_new_manufacturer").await;
    apply_fixture(s, "eb_license_updated").await;
    let reg = registration(s, FIXTURE_PRODUCT, Some(FIXTURE_LICENSE), None, HOUR).await;
    let a = app
        .post_json(
            &format!("/v1/registrations/{}/link", reg.id),
            &json!({"user_id": USER, "org_id": "org-1"}),
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.text);
    let v = a.json();
    assert_eq!(v["link_state"], "linked");
    assert_eq!(v["payment_method"], "aws_marketplace");
    assert_eq!(v["edit_enabled"], false);
    let rows = s.outbox_after(0, 10).await.expect("outbox");
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].event_type, "link.linked");
    app.stop().await;
}

/// `POST /v1/usage` is `mplink usage record` over HTTP: counted once per key for a linked
/// organization, refused with a stored reason for one that is not, 409 for a key reused for
/// another report, 422 for a bad field or an unknown one.
async fn usage_is_metered_for_a_linked_organization_only(backend: Backend) {
    let app = spawn_app(backend).await;
    let s = &app.db.store;
    s.link(&LinkRequest {
        org_id: "org-usage".into(),
        product_code: SNS_PRODUCT.into(),
        customer_identifier: Some(SNS_CUSTOMER.into()),
        customer_aws_account_id: None,
        license_arn: None,
        requested_at_ms: T0,
    })
    .await
    .expect("link");
    apply_fixture(s, "sns_subscribe_success").await;
    let now = chrono::Utc::now().to_rfc3339();
    let report = |key: &str, org: &str, quantity: i64| {
        json!({"idempotency_key": key, "org_id": org, "dimension": "requests",
               "quantity": quantity, "time": now})
    };

    let first = app
        .post_json("/v1/usage", &report("k-1", "org-usage", 3))
        .await;
    assert_eq!(first.status, 200, "{}", first.text);
    let body = first.json();
    assert_eq!(body["accepted"], true, "{body}");
    assert_eq!(body["refusal"], Value::Null);
    assert_eq!(body["replayed"], false);
    let again = app
        .post_json("/v1/usage", &report("k-1", "org-usage", 3))
        .await;
    assert_eq!(again.status, 200);
    assert_eq!(again.json()["replayed"], true);
    assert_eq!(again.json()["accepted"], true);

    let reused = app
        .post_json("/v1/usage", &report("k-1", "org-usage", 4))
        .await;
    assert_eq!(
        (reused.status, reused.code()),
        (409, "idempotency_key_reused".into())
    );

    let unlinked = app
        .post_json("/v1/usage", &report("k-2", "org-nobody", 1))
        .await;
    assert_eq!(unlinked.status, 200, "{}", unlinked.text);
    assert_eq!(unlinked.json()["accepted"], false);
    assert_eq!(unlinked.json()["refusal"], "not_linked");

    let negative = app
        .post_json("/v1/usage", &report("k-3", "org-usage", -1))
        .await;
    assert_eq!(
        (negative.status, negative.code()),
        (422, "invalid_field".into())
    );
    let mut unknown = report("k-4", "org-usage", 1);
    unknown["labels"] = json!({"team": "a"});
    let unknown = app.post_json("/v1/usage", &unknown).await;
    assert_eq!(
        (unknown.status, unknown.code()),
        (422, "invalid_body".into())
    );
    app.stop().await;
}

async fn billing_view_follows_the_ledger(backend: Backend) {
    let app = spawn_app(backend).await;
    let s = &app.db.store;
    let reg = registration(s, FIXTURE_PRODUCT, Some(FIXTURE_LICENSE), None, HOUR).await;
    let billing = || app.get("/v1/organizations/org-1/billing");

    let none = billing().await;
    assert_eq!(none.status, 200);
    assert_eq!(
        none.json(),
        json!({"org_id": "org-1", "payment_method": null, "payment_method_text": null,
               "edit_enabled": true, "link_state": null, "syncing": false, "unlinked_at": null,
               "notice": null, "subscription": null, "entitlements": null})
    );

    let a = app
        .post_json(
            &format!("/v1/registrations/{}/link", reg.id),
            &json!({"user_id": USER, "org_id": "org-1"}),
        )
        .await;
    assert_eq!(a.status, 200);
    let syncing = billing().await.json();
    assert_eq!(syncing["link_state"], "syncing");
    assert_eq!(syncing["syncing"], true);
    assert_eq!(syncing["edit_enabled"], true);
    assert_eq!(syncing["payment_method"], Value::Null);
    assert!(syncing["notice"]
        .as_str()
        .unwrap_or("")
        .contains("being synced"));

    // The agreement alone does not name the license: still syncing until License Updated.
    apply_fixture(s, "eb_created_new_manufacturer").await;
    assert_eq!(billing().await.json()["link_state"], "syncing");
    apply_fixture(s, "eb_license_updated").await;
    let linked = billing().await.json();
    assert_eq!(linked["link_state"], "linked");
    assert_eq!(linked["payment_method"], "aws_marketplace");
    assert_eq!(
        linked["payment_method_text"],
        "AWS Marketplace Subscription"
    );
    assert_eq!(linked["edit_enabled"], false);
    assert_eq!(linked["syncing"], false);
    assert_eq!(linked["notice"], Value::Null);
    assert_eq!(
        linked["subscription"]["agreement_id"],
        "agmt-4mwg1nevbokzw95eca5797ixs"
    );
    assert_eq!(linked["subscription"]["state"], "active");

    apply_fixture(s, "eb_ended_cancelled_manufacturer").await;
    let pending = billing().await.json();
    assert_eq!(pending["link_state"], "unlink_pending");
    assert_eq!(pending["edit_enabled"], false);

    apply_fixture(s, "eb_license_deprovisioned").await;
    let unlinked = billing().await.json();
    assert_eq!(unlinked["link_state"], "unlinked");
    assert_eq!(unlinked["payment_method"], Value::Null);
    assert_eq!(unlinked["edit_enabled"], true);
    assert_eq!(unlinked["unlinked_at"], "2027-01-15T13:00:00.000Z");
    assert!(unlinked["notice"]
        .as_str()
        .unwrap_or("")
        .contains("resources and data were kept"));

    // An organization id that cannot be one.
    let long = "o".repeat(129);
    let a = app.get(&format!("/v1/organizations/{long}/billing")).await;
    assert_eq!((a.status, a.code().as_str()), (422, "invalid_field"));
    app.stop().await;
}

async fn the_events_feed_pages_and_long_polls(backend: Backend) {
    let app = spawn_app(backend).await;
    let s = &app.db.store;
    let empty = app.get("/v1/events?after=0").await.json();
    assert_eq!(empty, json!({"events": [], "next_after": 0}));

    let reg = registration(s, FIXTURE_PRODUCT, Some(FIXTURE_LICENSE), None, HOUR).await;
    app.post_json(
        &format!("/v1/registrations/{}/link", reg.id),
        &json!({"user_id": USER, "org_id": "org-1"}),
    )
    .await;
    apply_fixture(s, "eb_created_new_manufacturer").await;
    apply_fixture(s, "eb_license_updated").await;
    let page = app.get("/v1/events?after=0").await.json();
    let events = page["events"].as_array().expect("events");
    assert_eq!(events.len(), 2, "{page}");
    // The webhook payload, exactly as `mplink events --json` prints it.
    let rows = s.outbox_after(0, 10).await.expect("outbox");
    for (event, row) in events.iter().zip(&rows) {
        let printed: Value = serde_json::from_str(&row.payload_json()).expect("payload");
        assert_eq!(event, &printed);
    }
    assert_eq!(events[0]["type"], "link.syncing");
    assert_eq!(events[1]["type"], "link.linked");
    assert_eq!(events[1]["data"]["org_id"], "org-1");
    let next = page["next_after"].as_i64().expect("next_after");
    assert_eq!(next, rows[1].seq);
    let one = app.get("/v1/events?after=0&limit=1").await.json();
    assert_eq!(one["events"].as_array().map(Vec::len), Some(1));
    assert_eq!(one["next_after"], rows[0].seq);

    // Nothing new: `wait` holds the answer that long, then answers empty.
    let started = Instant::now();
    let a = app
        .get(&format!("/v1/events?after={next}&wait=1"))
        .await
        .json();
    assert!(started.elapsed() >= Duration::from_millis(900));
    assert_eq!(a, json!({"events": [], "next_after": next}));

    // A change during the wait answers at once.
    let started = Instant::now();
    let waiting = format!("/v1/events?after={next}&wait=20");
    let poll = app.get(&waiting);
    let change = async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        apply_fixture(s, "eb_ended_cancelled_manufacturer").await;
    };
    let (a, ()) = tokio::join!(poll, change);
    let a = a.json();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(a["events"][0]["type"], "link.unlink_pending", "{a}");
    app.stop().await;
}

both_backends! {
    every_v1_route_refuses_a_missing_or_wrong_token => every_v1_route_refuses_a_missing_or_wrong_token;
    usage_is_metered_for_a_linked_organization_only => usage_is_metered_for_a_linked_organization_only;
    bad_bodies_and_queries_get_json_4xx => bad_bodies_and_queries_get_json_4xx;
    each_reason_is_given => each_reason_is_given;
    a_product_not_sold_here_is_a_mismatch => a_product_not_sold_here_is_a_mismatch;
    link_is_idempotent_and_refuses_what_link_would_move => link_is_idempotent_and_refuses_what_link_would_move;
    linked_at_once_when_aws_confirmed_first => linked_at_once_when_aws_confirmed_first;
    billing_view_follows_the_ledger => billing_view_follows_the_ledger;
    the_events_feed_pages_and_long_polls => the_events_feed_pages_and_long_polls;
}

/// `docs/openapi.json` is what the code generates; `MPLINK_WRITE_OPENAPI=1` rewrites it.
#[tokio::test]
async fn openapi_matches_the_checked_in_file() {
    let app = spawn_app(Backend::Sqlite).await;
    let served = app.send(app.http.get(app.url("/openapi.json"))).await;
    assert_eq!(served.status, 200);
    let generated = mplink::api::routes::openapi::openapi_json();
    assert_eq!(served.text, generated);
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs/openapi.json");
    if std::env::var("MPLINK_WRITE_OPENAPI").is_ok_and(|v| v == "1") {
        std::fs::write(&path, &generated).expect("write docs/openapi.json");
    }
    let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        checked_in == generated,
        "docs/openapi.json differs from what the code generates; regenerate with \
         `MPLINK_WRITE_OPENAPI=1 cargo test --test app api::openapi` and commit it"
    );
    let doc = served.json();
    assert_eq!(doc["openapi"], "3.1.0");
    app.stop().await;
}

/// Every operation the description lists is routed (not the router's 404 or 405), and every
/// route is described: the two cannot drift apart.
#[tokio::test]
async fn every_described_operation_is_routed() {
    let app = spawn_app(Backend::Sqlite).await;
    let doc = app
        .send(app.http.get(app.url("/openapi.json")))
        .await
        .json();
    let paths = doc["paths"].as_object().expect("paths");
    let mut described = Vec::new();
    for (path, item) in paths {
        for method in item.as_object().expect("path item").keys() {
            let concrete = path
                .replace("{id}", &new_registration_id())
                .replace("{org_id}", "org-1");
            let req = match method.as_str() {
                "get" => app.http.get(app.url(&concrete)),
                "post" => app.http.post(app.url(&concrete)),
                other => panic!("unexpected method {other}"),
            };
            let a = app.send(req.bearer_auth(TOKEN)).await;
            let code = serde_json::from_str::<Value>(&a.text)
                .ok()
                .and_then(|v| v["code"].as_str().map(str::to_owned))
                .unwrap_or_default();
            assert!(
                code != "route_not_found" && code != "method_not_allowed",
                "{method} {path}: {}",
                a.text
            );
            described.push(format!("{} {path}", method.to_uppercase()));
        }
    }
    described.sort();
    assert_eq!(
        described,
        [
            "GET /v1/events",
            "GET /v1/organizations/{org_id}/billing",
            "GET /v1/organizations/{org_id}/history",
            "GET /v1/organizations/{org_id}/usage",
            "GET /v1/registrations/{id}",
            "POST /marketplace/register",
            "POST /v1/registrations/{id}/link",
            "POST /v1/registrations/{id}/organizations",
            "POST /v1/usage",
        ]
    );
    app.stop().await;
}

/// `docs/openapi.json` is a valid OpenAPI 3.1 document, by `openapi-spec-validator` (installed
/// with LocalStack in `MPLINK_LOCALSTACK_VENV`, else from the system's Python).
#[test]
fn the_openapi_file_validates() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let venv = std::env::var("MPLINK_LOCALSTACK_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root.join(".localstack-venv"));
    let candidates = [venv.join("bin/python"), PathBuf::from("python3")];
    let python = candidates
        .iter()
        .find(|p| {
            std::process::Command::new(p)
                .args(["-c", "import openapi_spec_validator"])
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .unwrap_or_else(|| {
            panic!("no Python with openapi-spec-validator among {candidates:?} (scripts/localstack.sh installs it)")
        });
    let check = |path: &std::path::Path| {
        std::process::Command::new(python)
            .args(["-m", "openapi_spec_validator"])
            .arg(path)
            .output()
            .expect("run openapi-spec-validator")
    };
    let out = check(&root.join("docs/openapi.json"));
    assert!(
        out.status.success(),
        "docs/openapi.json does not validate: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // The validator can fail: a document with a duplicate operation id does not pass.
    let text = std::fs::read_to_string(root.join("docs/openapi.json")).expect("read");
    let mut broken: Value = serde_json::from_str(&text).expect("json");
    broken["paths"]["/v1/events"]["get"]["operationId"] = json!("get_billing");
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("openapi.json");
    std::fs::write(&path, broken.to_string()).expect("write");
    assert!(
        !check(&path).status.success(),
        "the validator accepted a broken document"
    );
    // Every reference names a schema the document defines (the validator does not look: a
    // type alias once became a `$ref` to a `BTreeMap` schema nobody defined).
    let document: Value = serde_json::from_str(&text).expect("json");
    let mut dangling = Vec::new();
    find_refs(&document, &mut |r| {
        let name = r.strip_prefix("#/components/schemas/").unwrap_or(r);
        if document["components"]["schemas"].get(name).is_none() {
            dangling.push(r.to_string());
        }
    });
    assert!(
        dangling.is_empty(),
        "references to undefined schemas: {dangling:?}"
    );
    let mut broken = document.clone();
    broken["components"]["schemas"]["UsageBody"]["properties"]["tags"] =
        json!({"$ref": "#/components/schemas/BTreeMap"});
    let mut found = 0;
    find_refs(&broken, &mut |r| {
        found += usize::from(r.ends_with("/BTreeMap"))
    });
    assert_eq!(found, 1, "the reference check sees references");
}

fn find_refs(value: &Value, found: &mut impl FnMut(&str)) {
    match value {
        Value::Object(map) => {
            for (key, v) in map {
                match (key.as_str(), v.as_str()) {
                    ("$ref", Some(r)) => found(r),
                    _ => find_refs(v, found),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| find_refs(v, found)),
        _ => {}
    }
}

/// The HTTP API guide's table of reasons says what the code says: every code with its exact
/// tooltip.
#[test]
fn the_api_guide_lists_every_reason_with_its_text() {
    let guide =
        std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs/http-api.md"))
            .expect("docs/http-api.md");
    for reason in mplink::api::reasons::Reason::ALL {
        let row = format!("| `{}` | {} |", reason.code(), reason.text());
        assert!(
            guide.contains(&row),
            "docs/http-api.md lacks the row {row:?}"
        );
    }
}
