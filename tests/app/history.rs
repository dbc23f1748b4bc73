//! An organization's history (`GET /v1/organizations/{org_id}/history`, `mplink history`): the
//! link request, the events that confirmed it (one delivered twice), each change with its
//! webhook delivery, in one timeline ordered by each fact's own time.

use crate::api::{apply_fixture, fixture, registration, FIXTURE_LICENSE, FIXTURE_PRODUCT, HOUR};
use crate::common::api::{spawn_app, USER};
use crate::common::process::run_mplink;
use crate::common::*;
use serde_json::{json, Value};

async fn an_organizations_history_tells_its_story(backend: Backend) {
    let app = spawn_app(backend).await;
    let s = &app.db.store;
    let reg = registration(s, FIXTURE_PRODUCT, Some(FIXTURE_LICENSE), None, HOUR).await;
    let empty = app.get("/v1/organizations/org-h/history").await;
    assert_eq!(
        (empty.status, empty.json()["entries"].clone()),
        (200, json!([]))
    );
    let a = app
        .post_json(
            &format!("/v1/registrations/{}/link", reg.id),
            &json!({"user_id": USER, "org_id": "org-h"}),
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.text);
    apply_fixture(s, "eb_created_new_manufacturer").await;
    apply_fixture(s, "eb_license_updated").await;
    // The same fact delivered again under another id (AWS redelivers with a new event id):
    // recorded as a duplicate, changing nothing. The very same delivery again is not a new
    // entry at all (the event log keeps one row per delivery).
    apply_fixture(s, "eb_license_updated").await;
    let body = fixture("eb_license_updated").replace(
        "b3e6a9d2-5f8c-4b1e-a4d7-0c3f6b9e2a5d",
        "b3e6a9d2-0000-4b1e-a4d7-0c3f6b9e2a5d",
    );
    let again = decoded("sqs-redelivered", &body);
    s.apply(&again, &body).await.expect("apply the redelivery");

    let a = app.get("/v1/organizations/org-h/history").await;
    assert_eq!(a.status, 200, "{}", a.text);
    let entries: Vec<Value> = a.json()["entries"].as_array().cloned().unwrap_or_default();
    let of = |kind: &str| -> Vec<&Value> { entries.iter().filter(|e| e["kind"] == kind).collect() };
    let events = of("event");
    let outcomes: Vec<&str> = events
        .iter()
        .filter_map(|e| e["outcome"].as_str())
        .collect();
    assert_eq!(
        outcomes.iter().filter(|o| **o == "applied").count(),
        2,
        "{entries:#?}"
    );
    assert_eq!(
        outcomes.iter().filter(|o| **o == "duplicate").count(),
        1,
        "{entries:#?}"
    );
    assert!(
        events.iter().all(|e| e["source"] == "eventbridge"),
        "{events:#?}"
    );
    let states: Vec<&str> = of("link_change")
        .iter()
        .filter_map(|e| e["state_after"].as_str())
        .collect();
    assert!(
        states.contains(&"syncing") && states.contains(&"linked"),
        "{states:?}"
    );
    assert!(of("link_change")
        .iter()
        .all(|e| e["delivery"]["status"] == "pending"));
    let times: Vec<&str> = entries.iter().filter_map(|e| e["time"].as_str()).collect();
    let mut sorted = times.clone();
    sorted.sort();
    assert_eq!(times, sorted, "oldest first");

    // Pages, and the CLI prints the same entries.
    let first = app
        .get("/v1/organizations/org-h/history?limit=2")
        .await
        .json();
    assert_eq!(first["entries"].as_array().map(Vec::len), Some(2));
    assert_eq!(first["next_after"], 2);
    let rest = app
        .get("/v1/organizations/org-h/history?after=2&limit=1000")
        .await
        .json();
    assert_eq!(rest["next_after"], Value::Null);
    assert_eq!(
        rest["entries"].as_array().map(Vec::len),
        Some(entries.len() - 2)
    );
    let out = run_mplink(&app.db, &["history", "--org", "org-h", "--json"], None, &[]);
    assert!(out.status.success(), "{out:?}");
    let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert_eq!(lines, entries);
    let table = run_mplink(&app.db, &["history", "--org", "org-h"], None, &[]);
    assert!(String::from_utf8_lossy(&table.stdout).contains("duplicate"));
    app.stop().await;
}

both_backends! {
    an_organizations_history_tells_its_story => an_organizations_history_tells_its_story;
}
