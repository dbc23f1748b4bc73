//! The dead-letter tools against real LocalStack queues whose dead letters were put there by
//! the real redrive policy.

use crate::common::localstack::*;
use crate::common::process::{mplink_command, ok};
use crate::common::*;
use serde_json::Value;
use std::process::Output;
use std::time::{Duration, Instant};

/// Runs the `mplink` binary against LocalStack; hand-made envelopes carry no real signature.
fn mplink(db: &TestDb, args: &[&str]) -> Output {
    mplink_command(db)
        .args(args)
        .envs(binary_env())
        .env_remove("MPLINK_LOG_FORMAT")
        .output()
        .expect("run mplink")
}

/// A consumer that keeps failing: receives every message without deleting it until the
/// redrive policy (maxReceiveCount 1) has moved them all to the dead-letter queue.
async fn crash_until_dead(stack: &Stack, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        stack
            .sqs
            .receive_message()
            .queue_url(&stack.queue.queue_url)
            .max_number_of_messages(10)
            .visibility_timeout(1)
            .wait_time_seconds(1)
            .send()
            .await
            .expect("receive");
        if stack.depth(&stack.queue.dead_letter_queue_url).await.0 >= n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "messages did not reach the dead-letter queue"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

fn replay_json(db: &TestDb, dlq: &str, extra: &[&str]) -> Value {
    let mut args = vec![
        "dlq",
        "replay",
        "--queue-url",
        dlq,
        "--json",
        "--verify-signatures",
        "false",
    ];
    args.extend_from_slice(extra);
    let out = ok(&mplink(db, &args));
    serde_json::from_str(out.trim()).expect("summary is JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_after_an_incident_applies_the_good_once_and_keeps_the_bad() {
    let db = TestDb::new(Backend::Sqlite).await;
    let stack = Stack::new(1, Duration::from_secs(1)).await;
    let product = stack.product.clone();
    let s = &db.store;
    // Before the incident: one message was already applied, and c2 is already cancelled.
    let dup = sns_body("dup-1", "subscribe-success", &product, "c3", T0);
    let newer = sns_body(
        "newer-1",
        "unsubscribe-success",
        &product,
        "c2",
        T0 + 20_000,
    );
    for (id, body) in [("sqs-dup", &dup), ("sqs-newer", &newer)] {
        s.apply(&decoded(id, body), body).await.expect("apply");
    }
    let good = sns_body("good-1", "subscribe-success", &product, "c1", T0 + 10_000);
    let stale = sns_body("stale-1", "unsubscribe-pending", &product, "c2", T0 + 5_000);
    let bad_json = "{\"Type\": \"Notification\", truncated".to_string();
    let bad_action = sns_body("bad-1", "subscribe-maybe", &product, "c9", T0);
    let letters = vec![good, dup, stale, bad_json, bad_action];
    stack.send_bodies(&letters).await;
    crash_until_dead(&stack, 5).await;
    let dlq = stack.queue.dead_letter_queue_url.clone();

    // Inspect lists everything and consumes nothing.
    let out = ok(&mplink(
        &db,
        &["dlq", "inspect", "--queue-url", &dlq, "--json"],
    ));
    let listed: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    assert_eq!(listed.len(), 5, "{out}");
    assert_eq!(
        listed
            .iter()
            .filter(|m| !m["decode_error"].is_null())
            .count(),
        2,
        "{out}"
    );
    assert!(
        listed
            .iter()
            .any(|m| m["action"] == "subscribe-success" && m["customer"] == "c1"),
        "{out}"
    );
    assert!(
        listed
            .iter()
            .all(|m| m["receive_count"].as_u64().is_some_and(|n| n >= 1)),
        "{out}"
    );
    assert_eq!(stack.depth(&dlq).await.0, 5, "inspect consumed nothing");

    // A dry run says what would happen and changes nothing.
    let subs_before = s.subscriptions().await.expect("subs");
    let log_before = s.event_log().await.expect("log");
    let dry = replay_json(&db, &dlq, &["--dry-run"]);
    assert_eq!(
        (
            dry["applied"].as_u64(),
            dry["duplicate"].as_u64(),
            dry["stale"].as_u64()
        ),
        (Some(1), Some(1), Some(1)),
        "{dry}"
    );
    assert_eq!(
        dry["still_failing"],
        serde_json::json!({"not_json": 1, "unknown_action": 1}),
        "{dry}"
    );
    assert_eq!(s.subscriptions().await.expect("subs"), subs_before);
    assert_eq!(s.event_log().await.expect("log"), log_before);
    assert_eq!(stack.depth(&dlq).await.0, 5, "a dry run deletes nothing");

    let first = replay_json(&db, &dlq, &[]);
    assert_eq!(
        (
            first["applied"].as_u64(),
            first["duplicate"].as_u64(),
            first["stale"].as_u64()
        ),
        (Some(1), Some(1), Some(1)),
        "{first}"
    );
    assert_eq!(
        first["still_failing"],
        serde_json::json!({"not_json": 1, "unknown_action": 1})
    );
    assert_eq!(stack.depth(&dlq).await.0, 2, "only the bad ones stay");
    let subs = s.subscriptions().await.expect("subs");
    let state = |c: &str| {
        subs.iter()
            .find(|x| x.customer_identifier.as_deref() == Some(c))
            .map(|x| x.state.as_str())
    };
    assert_eq!(
        (state("c1"), state("c2"), state("c3")),
        (Some("active"), Some("cancelled"), Some("active"))
    );
    let log = s.event_log().await.expect("log");
    let reasons: Vec<&str> = log
        .iter()
        .filter(|e| e.outcome == "rejected")
        .filter_map(|e| e.reason.as_deref())
        .collect();
    assert_eq!(reasons.len(), 2, "{log:?}");
    assert!(
        reasons.iter().any(|r| r.starts_with("not_json"))
            && reasons.iter().any(|r| r.starts_with("unknown_action"))
    );

    // Inspect now tells why the rest is still there.
    let out = ok(&mplink(
        &db,
        &["dlq", "inspect", "--queue-url", &dlq, "--json"],
    ));
    let listed: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    assert_eq!(listed.len(), 2);
    assert!(
        listed.iter().all(|m| m["last_rejection"].is_string()),
        "{out}"
    );

    // A second replay changes nothing.
    let subs_after_first = s.subscriptions().await.expect("subs");
    let log_after_first = s.event_log().await.expect("log");
    let second = replay_json(&db, &dlq, &[]);
    assert_eq!(
        (
            second["applied"].as_u64(),
            second["duplicate"].as_u64(),
            second["stale"].as_u64()
        ),
        (Some(0), Some(0), Some(0)),
        "{second}"
    );
    assert_eq!(second["seen"].as_u64(), Some(2));
    assert_eq!(s.subscriptions().await.expect("subs"), subs_after_first);
    assert_eq!(s.event_log().await.expect("log"), log_after_first);
    assert_eq!(stack.depth(&dlq).await.0, 2);
    db.cleanup().await;
}

async fn redrive_then_work(portable: bool) {
    let db = TestDb::new(Backend::Sqlite).await;
    let stack = Stack::new(1, Duration::from_secs(1)).await;
    let bodies: Vec<String> = (0..4)
        .map(|i| {
            sns_body(
                &format!("rd-{}-{i}", stack.suffix),
                "subscribe-success",
                &stack.product,
                &format!("c{i}"),
                T0 + i,
            )
        })
        .collect();
    stack.send_bodies(&bodies).await;
    crash_until_dead(&stack, 4).await;
    let dlq = stack.queue.dead_letter_queue_url.clone();
    let mut args = vec!["dlq", "redrive", "--queue-url", &dlq];
    // A portable redrive signs each message's original identity with the operator's key; the
    // workers believe it only with the same key.
    const KEY: &str = "the-operators-redrive-key-0001";
    if portable {
        args.extend(["--portable", "--redrive-key", KEY]);
    }
    let out = ok(&mplink(&db, &args));
    assert!(out.contains("moved 4"), "{out}");
    eventually(
        Duration::from_secs(20),
        "the dead-letter queue to empty",
        || async { stack.depth(&dlq).await == (0, 0) },
    )
    .await;
    stack.wait_for_visible(4).await;
    let verify = mplink::verify::VerifyConfig {
        redrive_key: Some(mplink::redrive::RedriveKey::new(KEY).expect("key")),
        ..unsigned()
    };
    let worker = spawn_worker(&stack, db.store.clone(), verify, stack.worker_config()).await;
    let summary = worker.handle.await.expect("worker");
    assert_eq!(summary.applied, 4, "{summary:?}");
    let log = db.store.event_log().await.expect("log");
    assert_eq!(log.len(), 4);
    assert!(log.iter().all(|e| e.outcome == "applied"));
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_redrive_moves_everything_back_and_the_worker_applies_it() {
    redrive_then_work(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn portable_redrive_moves_everything_back_and_the_worker_applies_it() {
    redrive_then_work(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_replays_later_against_another_database() {
    let live = TestDb::new(Backend::Sqlite).await;
    let archive = TestDb::new(Backend::Sqlite).await;
    let stack = Stack::new(1, Duration::from_secs(1)).await;
    let mut bodies: Vec<String> = (0..3)
        .map(|i| {
            sns_body(
                &format!("ex-{}-{i}", stack.suffix),
                "subscribe-success",
                &stack.product,
                &format!("c{i}"),
                T0 + i,
            )
        })
        .collect();
    // A raw delivery too: its identity and time come from the SQS message, which the export keeps.
    bodies.push(
        serde_json::json!({"action": "subscribe-fail", "customer-identifier": "raw-1", "product-code": stack.product})
            .to_string(),
    );
    stack.send_bodies(&bodies).await;
    crash_until_dead(&stack, 4).await;
    let dlq = stack.queue.dead_letter_queue_url.clone();

    let exported = ok(&mplink(&live, &["dlq", "export", "--queue-url", &dlq]));
    assert_eq!(exported.lines().count(), 4, "{exported}");
    assert_eq!(stack.depth(&dlq).await.0, 4, "export consumed nothing");
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("dlq.jsonl");
    std::fs::write(&file, &exported).expect("write export");
    let path = file.to_str().expect("path");
    let trust = ["--verify-signatures", "false", "--accept-raw-delivery"];
    let mut args = vec!["apply"];
    args.extend_from_slice(&trust);
    args.push(path);
    let out = ok(&mplink(&archive, &args));
    assert!(
        out.contains("applied 4, stale 0, duplicate 0, rejected 0"),
        "{out}"
    );
    // Replaying the archive again is harmless.
    let out = ok(&mplink(&archive, &args));
    assert!(out.contains("applied 0, stale 0, duplicate 4"), "{out}");

    // The live database gets the same messages by replaying the queue itself.
    let mut args = vec!["dlq", "replay", "--queue-url", &dlq];
    args.extend_from_slice(&trust);
    ok(&mplink(&live, &args));
    assert_eq!(stack.depth(&dlq).await.0, 0);
    let a = archive.store.subscriptions().await.expect("subs");
    let b = live.store.subscriptions().await.expect("subs");
    assert_eq!(a, b, "an archive replayed elsewhere gives the same ledger");
    assert_eq!(a.len(), 4);
    assert!(
        a.iter()
            .any(|s| s.customer_identifier.as_deref() == Some("raw-1")
                && s.state.as_str() == "failed")
    );
    live.cleanup().await;
    archive.cleanup().await;
}
