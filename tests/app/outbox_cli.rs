//! `mplink events`, `mplink outbox inspect|retry|deliver` and the webhook start-up checks,
//! through the binary.

use crate::common::process::{mplink_command, ok, run_mplink};
use crate::common::*;
use serde_json::Value;

const PRODUCT: &str = "n0123EXAMPLEXXXXXXXXXXXX";

fn mplink(db: &TestDb, args: &[&str], stdin: Option<&str>) -> std::process::Output {
    run_mplink(db, args, stdin, &[])
}

fn story(db: &TestDb) {
    ok(&mplink(
        db,
        &[
            "link",
            "--org",
            "org-1",
            "--product-code",
            PRODUCT,
            "--customer-identifier",
            "C1",
        ],
        None,
    ));
    let input = [
        sns_body("m1", "subscribe-success", PRODUCT, "C1", T0 + 1000),
        sns_body("m2", "unsubscribe-pending", PRODUCT, "C1", T0 + 2000),
    ]
    .join("\n");
    ok(&mplink(
        db,
        &["apply", "--verify-signatures", "false", "-"],
        Some(&input),
    ));
}

async fn feed_and_tools(backend: Backend) {
    let db = TestDb::new(backend).await;
    story(&db);
    let all = ok(&mplink(&db, &["events", "--json"], None));
    let rows: Vec<Value> = all
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    let types: Vec<&str> = rows.iter().map(|r| r["type"].as_str().unwrap()).collect();
    assert_eq!(
        types,
        ["link.syncing", "link.linked", "link.unlink_pending"]
    );
    assert_eq!(rows[1]["data"]["payment_method"], "aws_marketplace");
    assert_eq!(rows[1]["data"]["cause"], "m1");
    // A consumer that remembers the last sequence it handled gets only what came after.
    let after = ok(&mplink(&db, &["events", "--after", "2", "--json"], None));
    assert_eq!(after.lines().count(), 1);
    assert!(after.contains("link.unlink_pending"));
    let table = ok(&mplink(&db, &["events"], None));
    assert_eq!(table.lines().count(), 3);
    assert!(
        table.contains("org-1") && table.contains("linked"),
        "{table}"
    );

    // Nothing delivered yet: inspect shows three pending.
    let inspect: Value =
        serde_json::from_str(&ok(&mplink(&db, &["outbox", "inspect", "--json"], None))).unwrap();
    assert_eq!(
        (inspect["pending"].as_i64(), inspect["failed"].as_i64()),
        (Some(3), Some(0))
    );
    assert!(inspect["oldest_undelivered_age_seconds"].is_i64());

    // A receiver that is not there: one attempt and the head row is parked.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", dead.local_addr().unwrap());
    drop(dead);
    let out = mplink_command(&db)
        .args(["outbox", "deliver", "--until-idle"])
        .args(["--webhook-url", &url, "--webhook-max-attempts", "1"])
        .env(
            "MPLINK_WEBHOOK_SECRETS",
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        )
        .output()
        .unwrap();
    let printed = ok(&out);
    assert!(
        printed.contains("delivered 0, retried 0, parked 1"),
        "{printed}"
    );
    let inspect = ok(&mplink(&db, &["outbox", "inspect"], None));
    assert!(
        inspect.starts_with("pending 2, failed 1, delivered 0"),
        "{inspect}"
    );
    assert!(inspect.contains("cannot connect"), "{inspect}");
    let retried = ok(&mplink(&db, &["outbox", "retry", "--all-failed"], None));
    assert!(retried.starts_with("1 parked row(s)"), "{retried}");
    let inspect = ok(&mplink(&db, &["outbox", "inspect"], None));
    assert!(inspect.starts_with("pending 3, failed 0"), "{inspect}");
    // retry needs a choice.
    assert!(!mplink(&db, &["outbox", "retry"], None).status.success());
    db.cleanup().await;
}

both_backends! {
    the_feed_and_the_operator_tools_work => feed_and_tools;
}

#[tokio::test]
async fn bad_webhook_configuration_stops_the_start() {
    let db = TestDb::new(Backend::Sqlite).await;
    let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    for (url, secret, expected) in [
        (
            "ftp://hooks.example.com/x",
            Some(secret),
            "is not http or https",
        ),
        ("https://hooks.example.com/x", None, "no webhook secret"),
        (
            "https://hooks.example.com/x",
            Some("s3cret-not-whsec"),
            "does not start with whsec_",
        ),
    ] {
        // `run` checks before it touches SQS: no queue is needed to see the refusal.
        let mut cmd = mplink_command(&db);
        cmd.args(["run", "--queue-url", "http://127.0.0.1:9/q"])
            .args(["--webhook-url", url, "--http-addr", "127.0.0.1:0"]);
        if let Some(s) = secret {
            cmd.env("MPLINK_WEBHOOK_SECRETS", s);
        }
        let out = cmd.output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{url}: started");
        assert!(stderr.contains(expected), "{url}: {stderr}");
        assert!(
            !stderr.contains("s3cret"),
            "a secret reached the output: {stderr}"
        );
    }
    db.cleanup().await;
}
