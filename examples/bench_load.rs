//! The worker benchmark's load, made once and replayed on every queue it measures.
//!
//! `bench_load capture TOPIC_ARN STAGING_QUEUE_URL N FILE` publishes N distinct events — half
//! SaaS notifications through SNS (signed by the SNS service, verification on), half agreement
//! events through EventBridge (`aws.agreement-marketplace` on the default bus), over 2,000
//! subscriptions — lets SNS and EventBridge deliver them to the staging queue (a queue
//! `mplink provision` subscribed to both), drains it and writes every delivered body, one JSON
//! string per line, to FILE.
//!
//! `bench_load send QUEUE_URL FILE [DUPLICATE_PERCENT]` sends those bodies to a queue, each
//! once plus DUPLICATE_PERCENT (default 10) of them again, shuffled: the same bytes a
//! redelivery would carry, so the duplicates are recognised as such.
//!
//! `bench_load generate N FILE` writes N events for `mplink apply` (the apply engine alone): half
//! SNS envelopes (unsigned: apply them with `--verify-signatures false`), half EventBridge
//! events, over N / 10 subscriptions, each subscription's events a second apart.
//!
//! `bench_load steady TOPIC_ARN RATE SECONDS FILE` publishes RATE events a second for SECONDS,
//! alternating SNS and EventBridge, each for a subscription of its own, and writes one JSON line
//! per event: its id (the SNS MessageId or EventBridge id, which the event log keys on) and when
//! it was published.

use aws_sdk_eventbridge::types::PutEventsRequestEntry;
use aws_sdk_sns::types::PublishBatchRequestEntry;
use aws_sdk_sqs::types::SendMessageBatchRequestEntry;
use mplink::sqs::{delete_entries, SQS_MAX_BATCH};
use rand::seq::SliceRandom;
use std::io::{BufRead, Write};
use std::time::Duration;

const SUBSCRIPTIONS: usize = 2_000;
const PRODUCT: &str = "benchproduct";

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let sdk = mplink::aws::sdk_config(Duration::from_secs(30)).await;
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["capture", topic, staging, n, file] => {
            let n: usize = n.parse().expect("N is a number");
            capture(&sdk, topic, staging, n, file).await
        }
        ["send", queue, file, rest @ ..] => {
            let dup: usize = rest
                .first()
                .map_or(10, |d| d.parse().expect("a percentage"));
            send(&sdk, queue, file, dup).await
        }
        ["generate", n, file] => generate(n.parse().expect("N is a number"), file),
        ["steady", topic, rate, seconds, file] => {
            let rate: u64 = rate.parse().expect("RATE is a number");
            let seconds: u64 = seconds.parse().expect("SECONDS is a number");
            steady(&sdk, topic, rate, seconds, file).await
        }
        _ => {
            eprintln!("usage: bench_load capture TOPIC_ARN STAGING_QUEUE_URL N FILE | send QUEUE_URL FILE [DUPLICATE_PERCENT] | generate N FILE | steady TOPIC_ARN RATE SECONDS FILE");
            std::process::exit(2);
        }
    }
}

async fn capture(sdk: &aws_config::SdkConfig, topic: &str, staging: &str, n: usize, file: &str) {
    let sns = aws_sdk_sns::Client::new(sdk);
    let events = aws_sdk_eventbridge::Client::new(sdk);
    let now = chrono::Utc::now().timestamp();
    let sns_count = n / 2;
    let actions = [
        "subscribe-success",
        "unsubscribe-pending",
        "unsubscribe-success",
    ];
    let mut published = 0;
    for chunk in (0..sns_count).collect::<Vec<_>>().chunks(SQS_MAX_BATCH) {
        let entries: Vec<PublishBatchRequestEntry> = chunk
            .iter()
            .map(|&i| {
                let message = serde_json::json!({
                    "action": actions[i % actions.len()],
                    "customer-identifier": format!("CUST{:05}", i % SUBSCRIPTIONS),
                    "product-code": PRODUCT,
                    "offer-identifier": "offer-bench",
                    "isFreeTrialTermPresent": "false",
                });
                PublishBatchRequestEntry::builder()
                    .id(i.to_string())
                    .message(message.to_string())
                    .build()
                    .expect("id and message are set")
            })
            .collect();
        let out = sns
            .publish_batch()
            .topic_arn(topic)
            .set_publish_batch_request_entries(Some(entries))
            .send()
            .await
            .expect("SNS PublishBatch");
        assert!(out.failed().is_empty(), "SNS refused: {:?}", out.failed());
        published += chunk.len();
    }
    let kinds = [
        ("Purchase Agreement Created - Proposer", "ACTIVE"),
        ("Purchase Agreement Amended - Proposer", "ACTIVE"),
        ("Purchase Agreement Ended - Proposer", "CANCELLED"),
    ];
    for chunk in (0..n - sns_count).collect::<Vec<_>>().chunks(SQS_MAX_BATCH) {
        let entries: Vec<PutEventsRequestEntry> = chunk
            .iter()
            .map(|&i| {
                let (detail_type, status) = kinds[i % kinds.len()];
                let detail = serde_json::json!({
                    "requestId": format!("req-{i}"),
                    "catalog": "AWSMarketplace",
                    "agreement": {"id": format!("agmt-{:05}", i % SUBSCRIPTIONS), "intent": "NEW", "status": status},
                    "acceptor": {"accountId": "845735284135"},
                    "proposer": {"accountId": "123456789012"},
                });
                PutEventsRequestEntry::builder()
                    .source(mplink::event::EVENTBRIDGE_SOURCE)
                    .detail_type(detail_type)
                    .detail(detail.to_string())
                    // Spread over distinct seconds so the ledger sees an order, not ties.
                    .time(aws_sdk_eventbridge::primitives::DateTime::from_secs(
                        now - (n - i) as i64,
                    ))
                    .build()
            })
            .collect();
        let out = events
            .put_events()
            .set_entries(Some(entries))
            .send()
            .await
            .expect("EventBridge PutEvents");
        assert_eq!(out.failed_entry_count, 0, "EventBridge refused events");
        published += chunk.len();
    }
    let sqs = mplink::aws::worker_sqs_client(sdk);
    let mut out = std::io::BufWriter::new(std::fs::File::create(file).expect("FILE"));
    let mut captured = 0;
    let mut empty = 0;
    while captured < published && empty < 10 {
        let got = sqs
            .receive_message()
            .queue_url(staging)
            .max_number_of_messages(SQS_MAX_BATCH as i32)
            .wait_time_seconds(1)
            .send()
            .await
            .expect("ReceiveMessage");
        let messages = got.messages.unwrap_or_default();
        if messages.is_empty() {
            empty += 1;
            continue;
        }
        empty = 0;
        for m in &messages {
            let body = m.body().unwrap_or_default();
            writeln!(out, "{}", serde_json::to_string(body).expect("string")).expect("write");
        }
        captured += messages.len();
        let entries =
            delete_entries(messages.iter().filter_map(|m| m.receipt_handle())).expect("entries");
        sqs.delete_message_batch()
            .queue_url(staging)
            .set_entries(Some(entries))
            .send()
            .await
            .expect("DeleteMessageBatch");
    }
    out.flush().expect("write");
    assert_eq!(
        captured, published,
        "not every published event was delivered"
    );
    eprintln!("captured {captured} delivered bodies in {file}");
}

async fn send(sdk: &aws_config::SdkConfig, queue: &str, file: &str, dup_percent: usize) {
    let reader = std::io::BufReader::new(std::fs::File::open(file).expect("FILE"));
    let bodies: Vec<String> = reader
        .lines()
        .map(|l| serde_json::from_str(&l.expect("read")).expect("one JSON string a line"))
        .collect();
    let mut rng = rand::thread_rng();
    let mut load: Vec<&String> = bodies.iter().collect();
    let extra = bodies.len() * dup_percent / 100;
    load.extend(bodies.choose_multiple(&mut rng, extra));
    load.shuffle(&mut rng);
    let sqs = mplink::aws::worker_sqs_client(sdk);
    // Eight sends at a time: loading is not what is measured.
    let batches: Vec<Vec<String>> = load
        .chunks(SQS_MAX_BATCH)
        .map(|c| c.iter().map(|b| b.to_string()).collect())
        .collect();
    for group in batches.chunks(8) {
        let mut sends = tokio::task::JoinSet::new();
        for chunk in group {
            let entries: Vec<SendMessageBatchRequestEntry> = chunk
                .iter()
                .enumerate()
                .map(|(i, b)| {
                    SendMessageBatchRequestEntry::builder()
                        .id(i.to_string())
                        .message_body(b)
                        .build()
                        .expect("id and body are set")
                })
                .collect();
            let (sqs, queue) = (sqs.clone(), queue.to_string());
            sends.spawn(async move {
                sqs.send_message_batch()
                    .queue_url(queue)
                    .set_entries(Some(entries))
                    .send()
                    .await
            });
        }
        while let Some(out) = sends.join_next().await {
            let out = out.expect("send task").expect("SendMessageBatch");
            assert!(out.failed().is_empty(), "SQS refused: {:?}", out.failed());
        }
    }
    println!("{}", load.len());
}

fn generate(n: usize, file: &str) {
    let subscriptions = (n / 10).max(1);
    let start_ms = chrono::Utc::now().timestamp_millis() - (n as i64 + 1) * 1000;
    let topic =
        format!("arn:aws:sns:us-east-1:287250355862:aws-mp-subscription-notification-{PRODUCT}");
    let sns_actions = [
        "subscribe-success",
        "unsubscribe-pending",
        "unsubscribe-success",
    ];
    let agreement_kinds = [
        ("Purchase Agreement Created - Proposer", "ACTIVE"),
        ("Purchase Agreement Amended - Proposer", "ACTIVE"),
        ("Purchase Agreement Ended - Proposer", "CANCELLED"),
    ];
    let mut out = std::io::BufWriter::new(std::fs::File::create(file).expect("FILE"));
    for i in 0..n {
        let time_ms = start_ms + i as i64 * 1000;
        let time = chrono::DateTime::from_timestamp_millis(time_ms).expect("a time");
        let subscription = (i / 2) % subscriptions;
        let line = if i % 2 == 0 {
            let message = serde_json::json!({
                "action": sns_actions[(i / 2 / subscriptions) % sns_actions.len()],
                "customer-identifier": format!("GEN{subscription:07}"),
                "product-code": PRODUCT,
                "offer-identifier": "offer-bench",
                "isFreeTrialTermPresent": "false",
            });
            serde_json::json!({
                "Type": "Notification",
                "MessageId": format!("gen-sns-{i}"),
                "TopicArn": topic,
                "Message": message.to_string(),
                "Timestamp": time.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string(),
            })
        } else {
            let (detail_type, status) =
                agreement_kinds[(i / 2 / subscriptions) % agreement_kinds.len()];
            serde_json::json!({
                "version": "0",
                "id": format!("gen-eb-{i}"),
                "detail-type": detail_type,
                "source": mplink::event::EVENTBRIDGE_SOURCE,
                "account": "287250355862",
                "time": time.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
                "region": "us-east-1",
                "resources": [],
                "detail": {
                    "requestId": format!("req-gen-{i}"),
                    "catalog": "AWSMarketplace",
                    "agreement": {"id": format!("agmt-gen{subscription:07}"), "intent": "NEW", "status": status},
                    "acceptor": {"accountId": "845735284135"},
                    "proposer": {"accountId": "123456789012"},
                },
            })
        };
        writeln!(out, "{line}").expect("write");
    }
    out.flush().expect("write");
    eprintln!("generated {n} events over {subscriptions} subscriptions in {file}");
}

/// One published event of the steady load.
#[derive(serde::Serialize)]
struct Published {
    id: String,
    kind: &'static str,
    published_ms: i64,
}

async fn steady(sdk: &aws_config::SdkConfig, topic: &str, rate: u64, seconds: u64, file: &str) {
    let sns = aws_sdk_sns::Client::new(sdk);
    let events = aws_sdk_eventbridge::Client::new(sdk);
    let run = chrono::Utc::now().timestamp_millis();
    let total = rate * seconds;
    let mut ticker = tokio::time::interval(Duration::from_micros(1_000_000 / rate.max(1)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut publishes = tokio::task::JoinSet::new();
    for i in 0..total {
        ticker.tick().await;
        let (sns, events, topic) = (sns.clone(), events.clone(), topic.to_string());
        // Each publish on its own task: a slow call must not delay the next one's schedule.
        publishes.spawn(async move {
            let published_ms = chrono::Utc::now().timestamp_millis();
            if i % 2 == 0 {
                let message = serde_json::json!({
                    "action": "subscribe-success",
                    "customer-identifier": format!("LAT{run}-{i}"),
                    "product-code": PRODUCT,
                    "offer-identifier": "offer-bench",
                    "isFreeTrialTermPresent": "false",
                });
                let out = sns
                    .publish()
                    .topic_arn(topic)
                    .message(message.to_string())
                    .send()
                    .await
                    .expect("SNS Publish");
                let id = out.message_id.expect("SNS answers with a MessageId");
                (id, "sns", published_ms)
            } else {
                let detail = serde_json::json!({
                    "requestId": format!("req-lat-{run}-{i}"),
                    "catalog": "AWSMarketplace",
                    "agreement": {"id": format!("agmt-lat{run}-{i}"), "intent": "NEW", "status": "ACTIVE"},
                    "acceptor": {"accountId": "845735284135"},
                    "proposer": {"accountId": "123456789012"},
                });
                let entry = PutEventsRequestEntry::builder()
                    .source(mplink::event::EVENTBRIDGE_SOURCE)
                    .detail_type("Purchase Agreement Created - Proposer")
                    .detail(detail.to_string())
                    .build();
                let out = events
                    .put_events()
                    .entries(entry)
                    .send()
                    .await
                    .expect("EventBridge PutEvents");
                assert_eq!(out.failed_entry_count, 0, "EventBridge refused the event");
                let id = out
                    .entries
                    .unwrap_or_default()
                    .into_iter()
                    .next()
                    .and_then(|e| e.event_id)
                    .expect("EventBridge answers with an event id");
                (id, "eventbridge", published_ms)
            }
        });
    }
    let mut published = Vec::with_capacity(total as usize);
    while let Some(done) = publishes.join_next().await {
        let (id, kind, published_ms) = done.expect("publish task");
        published.push(Published {
            id,
            kind,
            published_ms,
        });
    }
    let mut out = std::io::BufWriter::new(std::fs::File::create(file).expect("FILE"));
    for p in &published {
        writeln!(out, "{}", serde_json::to_string(p).expect("json")).expect("write");
    }
    out.flush().expect("write");
    eprintln!("published {} events at {rate}/s", published.len());
}
