//! The seed's story end to end through the `mplink` binary, on both backends.

use crate::common::process::{ok, run_mplink};
use crate::common::*;
use serde_json::Value;

const PRODUCT: &str = "n0123EXAMPLEXXXXXXXXXXXX";
const CUSTOMER: &str = "X01EXAMPLEX";

fn mplink(db: &TestDb, args: &[&str], stdin: Option<&str>) -> std::process::Output {
    run_mplink(db, args, stdin, &[])
}

fn status_json(db: &TestDb, org: &str) -> Value {
    let out = ok(&mplink(db, &["status", "--org", org, "--json"], None));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 1, "one line per subscription: {out}");
    serde_json::from_str(lines[0]).expect("status line is JSON")
}

async fn clusters(db: &TestDb) -> Vec<(String, String, String)> {
    sqlx::query_as::<_, (String, String, String)>(
        "SELECT org_id, name, payment_note FROM clusters ORDER BY name",
    )
    .fetch_all(db.store.pool())
    .await
    .expect("read clusters")
}

async fn seed_story(backend: Backend) {
    let db = TestDb::new(backend).await;
    // A table the store does not own, standing in for the organization's clusters.
    sqlx::query("CREATE TABLE clusters (org_id TEXT NOT NULL, name TEXT NOT NULL, payment_note TEXT NOT NULL)")
        .execute(db.store.pool())
        .await
        .expect("create clusters");
    for name in ["analytics", "primary"] {
        sqlx::query("INSERT INTO clusters (org_id, name, payment_note) VALUES ($1, $2, $3)")
            .bind("org-1")
            .bind(name)
            .bind("billed monthly")
            .execute(db.store.pool())
            .await
            .expect("insert cluster");
    }
    let before = clusters(&db).await;

    let out = ok(&mplink(
        &db,
        &[
            "link",
            "--org",
            "org-1",
            "--product-code",
            PRODUCT,
            "--customer-identifier",
            CUSTOMER,
        ],
        None,
    ));
    assert!(out.contains("syncing"), "{out}");
    let row = status_json(&db, "org-1");
    assert_eq!(row["link_state"], "syncing");
    assert_eq!(row["payment_method"], Value::Null);
    assert_eq!(row["subscription_state"], "pending");

    // The confirmation, from a file.
    let dir = tempfile::tempdir().expect("tmp");
    let file = dir.path().join("confirm.jsonl");
    std::fs::write(
        &file,
        sns_body("m-1", "subscribe-success", PRODUCT, CUSTOMER, T0) + "\n",
    )
    .expect("write");
    let out = ok(&mplink(
        &db,
        &[
            "apply",
            "--verify-signatures",
            "false",
            file.to_str().expect("path"),
        ],
        None,
    ));
    assert!(out.contains("applied 1"), "{out}");
    let row = status_json(&db, "org-1");
    assert_eq!(row["link_state"], "linked");
    assert_eq!(row["payment_method"], "aws_marketplace");
    assert_eq!(row["subscription_state"], "active");

    // Cancellation, from standard input, as an exported SQS message and with a redelivery.
    let pending = sns_body("m-2", "unsubscribe-pending", PRODUCT, CUSTOMER, T0 + 60_000);
    let exported = serde_json::json!({"MessageId": "sqs-2", "Body": pending, "Attributes": {"SentTimestamp": "1795687260000"}});
    let input = format!("{exported}\n\n{pending}\n");
    let out = ok(&mplink(
        &db,
        &["apply", "--verify-signatures", "false", "-"],
        Some(&input),
    ));
    assert!(
        out.contains("applied 1, stale 0, duplicate 1, rejected 0"),
        "{out}"
    );
    let row = status_json(&db, "org-1");
    assert_eq!(row["link_state"], "unlink_pending");
    assert_eq!(row["subscription_state"], "cancelling");

    let done = sns_body(
        "m-3",
        "unsubscribe-success",
        PRODUCT,
        CUSTOMER,
        T0 + 3_600_000,
    );
    ok(&mplink(
        &db,
        &["apply", "--verify-signatures", "false", "-"],
        Some(&done),
    ));
    let row = status_json(&db, "org-1");
    assert_eq!(row["link_state"], "unlinked");
    assert_eq!(row["payment_method"], Value::Null);
    assert_eq!(row["subscription_state"], "cancelled");
    assert_eq!(row["org_id"], "org-1");
    assert_eq!(row["product_code"], PRODUCT);
    assert_eq!(row["customer_identifier"], CUSTOMER);
    assert_eq!(row["last_event_time"], iso_ms(T0 + 3_600_000));
    // The contract: the original keys, in their order, then the appended detail keys.
    let line = ok(&mplink(&db, &["status", "--org", "org-1", "--json"], None));
    let expected = [
        "org_id",
        "product_code",
        "customer_identifier",
        "customer_aws_account_id",
        "agreement_id",
        "license_arn",
        "subscription_state",
        "link_state",
        "payment_method",
        "last_event_time",
        "offer_id",
        "free_trial",
        "product_id",
        "agreement_start_time",
        "agreement_end_time",
        "agreement_acceptance_time",
        "auto_renewal",
        "proposer_account_id",
        "resale_authorization_id",
        "ending_notice_time",
        "renewal_upcoming_time",
        "renewal_terms_finalized_time",
        "advisory",
        "cancellation_request",
        "cancellation_request_time",
        "billing_adjustment",
        "ending_notice_days_before_end",
        "billing_adjustment_request",
        "entitlements",
    ];
    let mut keys: Vec<&str> = row
        .as_object()
        .expect("object")
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort();
    let mut expected_sorted = expected.to_vec();
    expected_sorted.sort();
    assert_eq!(keys, expected_sorted);
    let positions: Vec<usize> = expected
        .iter()
        .map(|k| line.find(&format!("\"{k}\":")).expect("key in line"))
        .collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "{line}");
    assert_eq!(row["offer_id"], "offer-abcexample123");
    assert_eq!(row["free_trial"], false);
    // The organization's data is exactly as it was.
    assert_eq!(clusters(&db).await, before);

    // The table view.
    let table = ok(&mplink(&db, &["status"], None));
    assert!(table.starts_with("ORG"), "{table}");
    assert!(
        table.contains("org-1") && table.contains("unlinked") && table.contains("(none)"),
        "{table}"
    );
    db.cleanup().await;
}

async fn errors_are_one_clear_line(backend: Backend) {
    let db = TestDb::new(backend).await;
    let out = mplink(
        &db,
        &["link", "--org", "org-x", "--product-code", PRODUCT],
        None,
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("--customer-identifier"), "{err}");

    let good = sns_body("g-1", "subscribe-success", PRODUCT, CUSTOMER, T0);
    let bad = sns_body("b-1", "subscribe-maybe", PRODUCT, CUSTOMER, T0);
    let input = format!("{good}\n{bad}\n");
    let out = mplink(
        &db,
        &["apply", "--verify-signatures", "false", "-"],
        Some(&input),
    );
    assert!(!out.status.success(), "a rejected line fails the run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("line 2") && err.contains("subscribe-maybe"),
        "{err}"
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("applied 1"),
        "the good line is still applied"
    );
    let log = db.store.event_log().await.expect("log");
    assert_eq!(log.iter().filter(|e| e.outcome == "rejected").count(), 1);
    assert_eq!(log.iter().filter(|e| e.outcome == "applied").count(), 1);
    db.cleanup().await;
}

/// The "double-applied" measure (facts with more than one row in `mplink_transitions`) can
/// fail: with the duplicate check switched off, redeliveries and the second party's copy of a
/// fact are applied again and counted; with it on, nothing is.
async fn double_application_is_measurable(backend: Backend) {
    crate::common::require_failpoints();
    let created = agreement_body(
        "ev-p",
        "Created",
        "Proposer",
        "agmt-dbl",
        "845735284135",
        serde_json::json!({"intent": "NEW"}),
        T0,
    );
    let copy = agreement_body(
        "ev-m",
        "Created",
        "Manufacturer",
        "agmt-dbl",
        "845735284135",
        serde_json::json!({"intent": "NEW"}),
        T0,
    );
    let confirm = sns_body("m-dbl", "subscribe-success", PRODUCT, CUSTOMER, T0);
    let input = format!("{created}\n{copy}\n{confirm}\n{confirm}\n");
    for (broken, expected) in [(false, 0), (true, 2)] {
        let db = TestDb::new(backend).await;
        let env: &[(&str, &str)] = if broken {
            &[(mplink::failpoint::SKIP_DUPLICATE_CHECK_ENV, "1")]
        } else {
            &[]
        };
        let out = run_mplink(
            &db,
            &["apply", "--verify-signatures", "false", "-"],
            Some(&input),
            env,
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            db.store.double_applied_facts().await.expect("count"),
            expected,
            "duplicate check broken: {broken}"
        );
        db.cleanup().await;
    }
}

/// The fault suite's "notified twice" column measures too: a delivery that comes back after a
/// tie was settled is applied again by the broken build and tells the organization a second
/// time; the real build counts it a duplicate and notifies nobody.
async fn repeated_notification_is_measurable(backend: Backend) {
    crate::common::require_failpoints();
    let linked = sns_body("m-tie-a", "subscribe-success", PRODUCT, CUSTOMER, T0);
    let tie = sns_body("m-tie-b", "unsubscribe-pending", PRODUCT, CUSTOMER, T0);
    let input = format!("{linked}\n{tie}\n{linked}\n");
    for (broken, expected) in [(false, 0), (true, 1)] {
        let db = TestDb::new(backend).await;
        ok(&mplink(
            &db,
            &[
                "link",
                "--org",
                "org-tie",
                "--product-code",
                PRODUCT,
                "--customer-identifier",
                CUSTOMER,
            ],
            None,
        ));
        let env: &[(&str, &str)] = if broken {
            &[(mplink::failpoint::SKIP_DUPLICATE_CHECK_ENV, "1")]
        } else {
            &[]
        };
        let out = run_mplink(
            &db,
            &["apply", "--verify-signatures", "false", "-"],
            Some(&input),
            env,
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let (notified, twice) = db.store.notifications_by_event().await.expect("count");
        assert!(
            notified >= 2,
            "linked and unlink_pending were notified: {notified}"
        );
        assert_eq!(twice, expected, "duplicate check broken: {broken}");
        db.cleanup().await;
    }
}

/// A line that is not UTF-8 is one rejected line; the lines around it still apply.
async fn a_non_utf8_line_is_one_rejected_line(backend: Backend) {
    let db = TestDb::new(backend).await;
    let good = sns_body("m-u1", "subscribe-success", PRODUCT, CUSTOMER, T0);
    let mut bytes = good.clone().into_bytes();
    bytes.extend_from_slice(b"\n{\"action\": \"\xff\xfe\"}\n");
    let later = sns_body("m-u2", "unsubscribe-pending", PRODUCT, CUSTOMER, T0 + 1000);
    bytes.extend_from_slice(later.as_bytes());
    let dir = tempfile::tempdir().expect("tmp");
    let file = dir.path().join("mixed.jsonl");
    std::fs::write(&file, &bytes).expect("write");
    let out = mplink(
        &db,
        &[
            "apply",
            "--verify-signatures",
            "false",
            file.to_str().expect("path"),
        ],
        None,
    );
    assert!(!out.status.success(), "a rejected line fails the run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("applied 2, stale 0, duplicate 0, rejected 1"),
        "{stdout}"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 2") && err.contains("not UTF-8"), "{err}");
    let log = db.store.event_log().await.expect("log");
    assert!(log.iter().any(|e| e
        .reason
        .as_deref()
        .is_some_and(|r| r.starts_with("not_utf8:"))));
    db.cleanup().await;
}

/// Every example on AWS's pages fed to `mplink apply` as printed (SNS messages as raw
/// deliveries with their SQS send time): nothing is rejected, and `status` shows the notices.
async fn aws_examples_through_apply(backend: Backend) {
    let db = TestDb::new(backend).await;
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/aws-docs");
    let manifest: Vec<Value> = serde_json::from_str(
        &std::fs::read_to_string(dir.join("manifest.json")).expect("manifest"),
    )
    .expect("manifest JSON");
    let mut lines = String::new();
    for (i, entry) in manifest.iter().enumerate() {
        let file = entry["file"].as_str().expect("file");
        let body: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join(file)).expect("example"))
                .expect("example JSON");
        // SQS sends an EventBridge event after it happened; AWS dates some examples after this
        // test's base time (one, Renewal Upcoming, even after the clock of the day it was
        // written), which only a send time at least the event's own makes plausible.
        let event_ms = body["time"].as_str().map(|t| {
            chrono::DateTime::parse_from_rfc3339(t)
                .expect("example time")
                .timestamp_millis()
        });
        let sent_ms = event_ms.map_or(1_725_053_763_000i64 + i as i64, |t| {
            t.max(1_725_053_763_000i64 + i as i64)
        });
        let line = serde_json::json!({
            "MessageId": format!("sqs-{i}"),
            "Body": body.to_string(),
            "Attributes": { "SentTimestamp": sent_ms.to_string() },
        });
        lines.push_str(&line.to_string());
        lines.push('\n');
    }
    let out = ok(&mplink(
        &db,
        &[
            "apply",
            "--accept-raw-delivery",
            "--verify-signatures",
            "false",
            "-",
        ],
        Some(&lines),
    ));
    assert!(out.contains(", rejected 0, noted "), "{out}");
    assert!(out.contains("unrecognised 0"), "{out}");
    // A registration typed with stray blanks is the registration ResolveCustomer returned.
    ok(&mplink(
        &db,
        &[
            "link",
            "--org",
            "org-1",
            "--product-code",
            PRODUCT,
            "--customer-identifier",
            " X01EXAMPLEX ",
        ],
        None,
    ));
    // It found the subscription the examples made (the last of them, unsubscribe-success).
    let row = status_json(&db, "org-1");
    assert_eq!(row["customer_identifier"], CUSTOMER);
    assert_eq!(row["subscription_state"], "cancelled");
    assert_eq!(row["link_state"], "unlinked");
    let table = ok(&mplink(&db, &["status"], None));
    assert!(table.contains("NOTES"), "{table}");
    // The renewal agreement ends as its Created example says; the first agreement as its
    // newest notice (Renewal Upcoming) says.
    assert!(table.contains("ends on 2025-05-30"), "{table}");
    assert!(table.contains("ends on 2026-12-31"), "{table}");
    db.cleanup().await;
}

both_backends! {
    seed_story_through_the_cli => seed_story;
    errors_are_one_clear_line => errors_are_one_clear_line;
    double_application_is_measurable => double_application_is_measurable;
    repeated_notification_is_measurable => repeated_notification_is_measurable;
    a_non_utf8_line_is_one_rejected_line => a_non_utf8_line_is_one_rejected_line;
    aws_examples_through_apply => aws_examples_through_apply;
}
