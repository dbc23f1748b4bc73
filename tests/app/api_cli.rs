//! `mplink serve` as a process: configuration it refuses, and `--worker` running the API and the
//! SQS worker in one process on one database pool (a confirmation sent through LocalStack SQS
//! shows on the API's billing page; the API's counters show on the worker's /metrics).

use crate::common::api::TOKEN;
use crate::common::localstack::*;
use crate::common::*;
use mplink::api::routes::register::{new_registration_id, token_sha256};
use mplink::store::NewRegistration;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const SELECT: &str = "https://app.example.com/select";

fn serve(db: &TestDb, args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_mplink"))
        .args(["--database-url", db.url.expose(), "serve"])
        .args(args)
        .env_remove("MPLINK_API_TOKENS")
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .expect("run mplink serve")
}

#[tokio::test]
async fn serve_refuses_a_configuration_that_cannot_work() {
    let db = TestDb::new(Backend::Sqlite).await;
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);
    // Tokens come from the file too (one per line, comments skipped), and are checked alike.
    let dir = tempfile::tempdir().expect("temp dir");
    let short = dir.path().join("tokens");
    std::fs::write(&short, "# the host's tokens\nshort-token\n").expect("token file");
    let short_file = short.to_str().expect("path");
    let cases: [Case; 7] = [
        (
            &["--select-organization-url", SELECT],
            &[],
            "at least one API token",
        ),
        (
            &[
                "--select-organization-url",
                SELECT,
                "--api-token",
                "short-token",
            ],
            &[],
            "at least 24 are needed",
        ),
        (&["--api-token", TOKEN], &[], "--select-organization-url"),
        (
            &[
                "--api-token",
                TOKEN,
                "--select-organization-url",
                "javascript:alert(1)",
            ],
            &[],
            "absolute http(s) URL",
        ),
        (
            &[
                "--select-organization-url",
                SELECT,
                "--api-token-file",
                "/nonexistent/mplink-tokens",
            ],
            &[],
            "cannot read --api-token-file /nonexistent/mplink-tokens",
        ),
        (
            &[
                "--select-organization-url",
                SELECT,
                "--api-token-file",
                short_file,
            ],
            &[],
            "at least 24 are needed",
        ),
        (
            &["--select-organization-url", SELECT, "--worker"],
            &[("MPLINK_API_TOKENS", TOKEN)],
            "--queue-url",
        ),
    ];
    for (args, env, says) in cases {
        let out = serve(&db, args, env);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} started");
        assert!(stderr.contains(says), "{args:?}: {says:?} not in {stderr}");
        assert!(
            !stderr.contains("short-token"),
            "a token in the error: {stderr}"
        );
    }
    db.cleanup().await;
}

/// Reads `field` of the first JSON log line whose message is `message`.
pub(crate) async fn logged_addr(log: &std::path::Path, message: &str, field: &str) -> SocketAddr {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let found = text.lines().find_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).ok()?;
            (v["message"] == message)
                .then(|| v[field].as_str()?.parse().ok())
                .flatten()
        });
        if let Some(addr) = found {
            return addr;
        }
        assert!(Instant::now() < deadline, "no {message:?} line:\n{text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_with_worker_shares_one_database_and_one_set_of_metrics() {
    let db = TestDb::new(Backend::Sqlite).await;
    let stack = Stack::new(5, Duration::from_secs(30)).await;
    let license = format!(
        "arn:aws:license-manager::123456789012:license:l-{}",
        stack.suffix.replace('-', "")
    );
    let agreement = format!("agmt-{}", stack.suffix);
    let now = mplink::time::now_ms();
    let reg = db
        .store
        .create_registration(&NewRegistration {
            id: new_registration_id(),
            token_sha256: token_sha256("tok-cli"),
            product_code: stack.product.clone(),
            customer_aws_account_id: Some("845735284135".into()),
            license_arn: Some(license.clone()),
            customer_identifier: None,
            offer_type: None,
            created_at_ms: now,
            expires_at_ms: now + 3_600_000,
        })
        .await
        .expect("registration");

    let dir = tempfile::tempdir().expect("temp dir");
    let log = dir.path().join("serve.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_mplink"))
        .args(["--database-url", db.url.expose(), "serve"])
        .args([
            "--listen",
            "127.0.0.1:0",
            "--select-organization-url",
            SELECT,
        ])
        .args(["--worker", "--queue-url", &stack.queue.queue_url])
        .args(["--http-addr", "127.0.0.1:0", "--wait-time", "1"])
        .args(["--verify-signatures", "false"])
        .envs(binary_env())
        .env("MPLINK_API_TOKENS", TOKEN)
        .env("MPLINK_LOG_FORMAT", "json")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log"))
        .spawn()
        .expect("spawn mplink serve --worker");
    let api = logged_addr(&log, "mplink API starting", "listen").await;
    let worker = logged_addr(&log, "mplink worker starting", "http_addr").await;
    let http = reqwest::Client::new();
    let get = |url: String| {
        let http = http.clone();
        async move {
            let r = http.get(url).bearer_auth(TOKEN).send().await.expect("get");
            (r.status().as_u16(), r.text().await.expect("body"))
        }
    };

    let linked = http
        .post(format!("http://{api}/v1/registrations/{}/link", reg.id))
        .bearer_auth(TOKEN)
        .header("content-type", "application/json")
        .body(r#"{"user_id": "user-cli", "org_id": "org-cli"}"#)
        .send()
        .await
        .expect("link");
    assert_eq!(linked.status(), 200);
    let unauthorized = http
        .get(format!("http://{api}/v1/events"))
        .send()
        .await
        .expect("events");
    assert_eq!(unauthorized.status(), 401);

    // The confirmation through SQS, applied by the worker of the same process.
    let t = now - 60_000;
    stack
        .send_bodies(&[
            agreement_body(
                &format!("eb-created-{}", stack.suffix),
                "Created",
                "Manufacturer",
                &agreement,
                "845735284135",
                serde_json::json!({"intent": "NEW", "status": "ACTIVE"}),
                t,
            ),
            license_body(
                &format!("eb-license-{}", stack.suffix),
                "Updated",
                &agreement,
                &stack.product,
                &license,
                "845735284135",
                t + 1000,
            ),
        ])
        .await;
    let billing = format!("http://{api}/v1/organizations/org-cli/billing");
    eventually(
        Duration::from_secs(30),
        "the link to be confirmed",
        || async {
            get(billing.clone())
                .await
                .1
                .contains("\"link_state\":\"linked\"")
        },
    )
    .await;
    let (status, metrics) = get(format!("http://{worker}/metrics")).await;
    assert_eq!(status, 200);
    assert!(
        metrics.contains("mplink_api_errors_total{code=\"unauthorized\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("mplink_messages_total{outcome=\"applied\"} 2"),
        "{metrics}"
    );

    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(kill.success());
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        assert!(Instant::now() < deadline, "serve did not stop");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(status.success(), "{status}: {text}");
    // The registration id is a capability: its log lines name its first 8 hex digits only.
    assert!(
        !text.contains(&reg.id),
        "the whole registration id was logged:\n{text}"
    );
    assert!(
        text.contains(&reg.id[..12]),
        "the link was not logged:\n{text}"
    );
    db.cleanup().await;
}
