//! Who may act on a registration, and what an organization id is: a registration belongs to the
//! host user who first asked about it, and every entry point that takes an organization id
//! gives the same verdict on it, so an organization that can be linked can be metered.

use crate::api::{license, registration, FIXTURE_PRODUCT, HOUR};
use crate::common::api::{spawn_app, TestApp, USER};
use crate::common::localstack::metric;
use crate::common::process::run_mplink;
use crate::common::*;
use serde_json::json;

async fn ask(app: &TestApp, reg: &str, user: &str) -> crate::common::api::Answer {
    app.post_json(
        &format!("/v1/registrations/{reg}/organizations"),
        &json!({"user_id": user, "organizations": [
            {"org_id": "org-1", "can_change_billing": true}
        ]}),
    )
    .await
}

async fn link(app: &TestApp, reg: &str, user: &str, org: &str) -> crate::common::api::Answer {
    app.post_json(
        &format!("/v1/registrations/{reg}/link"),
        &json!({"user_id": user, "org_id": org}),
    )
    .await
}

/// The first `user_id` claims the registration; a second gets 403 `registration_claimed` on
/// both routes (counted) while the first keeps working; the operator's release lets the next
/// user claim it.
async fn a_registration_belongs_to_its_first_user(backend: Backend) {
    let app = spawn_app(backend).await;
    let reg = registration(
        &app.db.store,
        FIXTURE_PRODUCT,
        Some(&license(41)),
        None,
        HOUR,
    )
    .await;
    let first = ask(&app, &reg.id, USER).await;
    assert_eq!(first.status, 200, "{}", first.text);
    for answer in [
        ask(&app, &reg.id, "user-intruder").await,
        link(&app, &reg.id, "user-intruder", "org-intruder").await,
    ] {
        assert_eq!(
            (answer.status, answer.code().as_str()),
            (403, "registration_claimed")
        );
    }
    let view = app.get(&format!("/v1/registrations/{}", reg.id)).await;
    assert_eq!(view.json()["claimed_by"], USER);
    let linked = link(&app, &reg.id, USER, "org-1").await;
    assert_eq!(linked.status, 200, "{}", linked.text);
    let metrics = app.metrics.render();
    assert_eq!(
        metric(
            &metrics,
            "mplink_api_errors_total{code=\"registration_claimed\"}"
        ),
        2.0
    );

    // A claim the operator releases goes to whoever asks next.
    let other = registration(
        &app.db.store,
        FIXTURE_PRODUCT,
        Some(&license(42)),
        None,
        HOUR,
    )
    .await;
    assert_eq!(ask(&app, &other.id, "user-wrong").await.status, 200);
    assert_eq!(ask(&app, &other.id, USER).await.status, 403);
    let out = run_mplink(&app.db, &["registration", "release", &other.id], None, &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("user-wrong"),
        "{out:?}"
    );
    assert_eq!(ask(&app, &other.id, USER).await.status, 200);
    assert_eq!(ask(&app, &other.id, "user-wrong").await.status, 403);
    let unknown = run_mplink(
        &app.db,
        &[
            "registration",
            "release",
            &mplink::api::routes::register::new_registration_id(),
        ],
        None,
        &[],
    );
    assert!(!unknown.status.success());
    app.stop().await;
}

/// Ids every entry point must judge alike: plain ones, inner and outer whitespace, control and
/// format characters (a bidi override, a zero-width space, a soft hyphen), and the length limit.
fn ids() -> Vec<String> {
    [
        "org-1",
        "org_2.x",
        "組織-3",
        "Acme Corp",
        " org",
        "org\t1",
        "org\u{202E}1",
        "org\u{200B}1",
        "org\u{00AD}1",
        "org\u{00A0}1",
    ]
    .into_iter()
    .map(str::to_string)
    .chain(["a".repeat(128), "a".repeat(129)])
    .collect()
}

/// Whether the API's answer refused the organization id (422 naming the field).
fn refused_org(answer: &crate::common::api::Answer, field: &str) -> bool {
    answer.status == 422
        && answer.json()["message"]
            .as_str()
            .unwrap_or("")
            .starts_with(field)
}

/// The same ids through the link, the candidates, billing, `/v1/usage`, `mplink usage record`,
/// `mplink link` and `mplink status --org`: one verdict per id, the rule's.
async fn every_entry_point_judges_an_organization_id_alike(backend: Backend) {
    let app = spawn_app(backend).await;
    let reg = registration(
        &app.db.store,
        FIXTURE_PRODUCT,
        Some(&license(43)),
        None,
        HOUR,
    )
    .await;
    for (i, id) in ids().into_iter().enumerate() {
        let expected = mplink::org::check(&id).is_ok();
        let mut verdicts = Vec::new();
        let a = app
            .post_json(
                &format!("/v1/registrations/{}/organizations", reg.id),
                &json!({"user_id": USER, "organizations": [{"org_id": id, "can_change_billing": true}]}),
            )
            .await;
        verdicts.push(("organizations", !refused_org(&a, "organizations[0].org_id")));
        let a = link(
            &app,
            &mplink::api::routes::register::new_registration_id(),
            USER,
            &id,
        )
        .await;
        verdicts.push(("link", !refused_org(&a, "org_id")));
        let encoded: String = url::form_urlencoded::byte_serialize(id.as_bytes()).collect();
        let a = app
            .get(&format!(
                "/v1/organizations/{}/billing",
                encoded.replace('+', "%20")
            ))
            .await;
        verdicts.push(("billing", !refused_org(&a, "org_id")));
        let a = app
            .post_json(
                "/v1/usage",
                &json!({"idempotency_key": format!("key-{i}"), "org_id": id,
                        "dimension": "requests", "quantity": 1, "time": "2026-01-01T00:00:00Z"}),
            )
            .await;
        verdicts.push(("/v1/usage", !refused_org(&a, "org_id")));
        let mentions_org = |out: &std::process::Output| {
            let err = String::from_utf8_lossy(&out.stderr);
            out.status.success() || !(err.contains("--org") || err.contains("org_id"))
        };
        let key = format!("cli-key-{i}");
        let out = run_mplink(
            &app.db,
            &[
                "usage",
                "record",
                "--org",
                &id,
                "--dimension",
                "requests",
                "--quantity",
                "1",
                "--key",
                &key,
            ],
            None,
            &[],
        );
        verdicts.push(("usage record", mentions_org(&out)));
        let out = run_mplink(
            &app.db,
            &[
                "link",
                "--org",
                &id,
                "--product-code",
                "prod-ids",
                "--customer-identifier",
                &format!("cust-{i}"),
            ],
            None,
            &[],
        );
        verdicts.push(("link (CLI)", out.status.success()));
        let out = run_mplink(&app.db, &["status", "--org", &id], None, &[]);
        verdicts.push(("status --org", out.status.success()));
        for (entry, verdict) in verdicts {
            assert_eq!(
                verdict, expected,
                "{entry} on {id:?}: accepted = {verdict}, rule = {expected}"
            );
        }
    }
    app.stop().await;
}

/// An organization listed twice is answered twice, alike.
async fn an_organization_listed_twice_is_answered_twice(backend: Backend) {
    let app = spawn_app(backend).await;
    let reg = registration(
        &app.db.store,
        FIXTURE_PRODUCT,
        Some(&license(44)),
        None,
        HOUR,
    )
    .await;
    let org = json!({"org_id": "org-twice", "can_change_billing": true});
    let a = app
        .post_json(
            &format!("/v1/registrations/{}/organizations", reg.id),
            &json!({"user_id": USER, "organizations": [org, org]}),
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.text);
    let answers = a.json()["organizations"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(answers.len(), 2);
    assert_eq!(answers[0], answers[1]);
    app.stop().await;
}

/// An organization's usage page: usage refused for an organization without a link shows with
/// its reason, the hour's record as `open`; bad queries are specific errors; `mplink usage
/// show --json` prints the same entries.
async fn an_organizations_usage_shows_each_hour_and_its_fate(backend: Backend) {
    let app = spawn_app(backend).await;
    let now = chrono::Utc::now();
    for (key, quantity, tags) in [("u1", 3, json!({})), ("u2", 4, json!({"project": "alpha"}))] {
        let a = app
            .post_json(
                "/v1/usage",
                &json!({"idempotency_key": key, "org_id": "org-u", "dimension": "requests",
                        "quantity": quantity, "time": now.to_rfc3339(), "tags": tags}),
            )
            .await;
        assert_eq!(a.status, 200, "{}", a.text);
        assert_eq!(a.json()["refusal"], "not_linked");
    }
    let a = app.get("/v1/organizations/org-u/usage").await;
    assert_eq!(a.status, 200, "{}", a.text);
    let body = a.json();
    let hours = body["hours"].as_array().cloned().unwrap_or_default();
    assert_eq!(hours.len(), 1, "{body}");
    assert_eq!(hours[0]["quantity"], 0);
    assert_eq!(hours[0]["refused"]["not_linked"], 7);
    assert_eq!(hours[0]["record"]["fate"], "open");
    assert_eq!(body["next_from"], serde_json::Value::Null);
    // A range that ends before it starts holds no hours.
    let empty = app
        .get("/v1/organizations/org-u/usage?from=2026-02-01T00:00:00Z&to=2026-01-01T00:00:00Z")
        .await;
    assert_eq!(
        (empty.status, empty.json()["hours"].clone()),
        (200, json!([]))
    );
    for (query, status) in [("?limit=0", 422), ("?from=yesterday", 400)] {
        let a = app
            .get(&format!("/v1/organizations/org-u/usage{query}"))
            .await;
        assert_eq!(a.status, status, "{query}: {}", a.text);
    }
    let out = run_mplink(
        &app.db,
        &["usage", "show", "--org", "org-u", "--json"],
        None,
        &[],
    );
    assert!(out.status.success(), "{out:?}");
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    assert_eq!(lines, hours);
    app.stop().await;
}

both_backends! {
    an_organizations_usage_shows_each_hour_and_its_fate => an_organizations_usage_shows_each_hour_and_its_fate;
    an_organization_listed_twice_is_answered_twice => an_organization_listed_twice_is_answered_twice;
    a_registration_belongs_to_its_first_user => a_registration_belongs_to_its_first_user;
    every_entry_point_judges_an_organization_id_alike => every_entry_point_judges_an_organization_id_alike;
}
