//! The ceiling the worker is measured against: the same SDK, client, receive request
//! (`mplink::sqs::receive_request`, attributes included) and batching as `mplink run`, with the
//! same receive loops and in-flight bound, but nothing decoded, verified or stored — each
//! receive's messages are deleted at once with DeleteMessageBatch calls running up to four at
//! a time.
//!
//! `cargo run --release --example sqs_ceiling -- QUEUE_URL [RECEIVE_LOOPS] [MAX_IN_FLIGHT]`
//! drains the queue, stops at the first empty receive after it has seen messages, and prints
//! one JSON line: `{"messages":N,"seconds":S,"per_second":R}`.

use mplink::sqs::{delete_entries, SQS_MAX_BATCH};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(queue_url) = args.first().cloned() else {
        eprintln!("usage: sqs_ceiling QUEUE_URL [RECEIVE_LOOPS] [MAX_IN_FLIGHT]");
        std::process::exit(2);
    };
    let defaults = mplink::consumer::WorkerConfig::new(queue_url.clone());
    let loops: usize = args
        .get(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(defaults.receive_loops);
    let in_flight: usize = args
        .get(2)
        .and_then(|v| v.parse().ok())
        .unwrap_or(defaults.max_in_flight);
    let sdk = mplink::aws::sdk_config(Duration::from_secs(15)).await;
    let sqs = mplink::aws::worker_sqs_client(&sdk);
    let permits = Arc::new(Semaphore::new(in_flight));
    let deletes = Arc::new(Semaphore::new(4));
    let done = Arc::new(AtomicU64::new(0));
    let drained = Arc::new(AtomicBool::new(false));
    // Nanoseconds since `base` of the first receive with messages and of the last delete.
    let base = Instant::now();
    let first_seen = Arc::new(tokio::sync::OnceCell::new());
    let last_done = Arc::new(AtomicU64::new(0));
    let mut handles = Vec::new();
    for _ in 0..loops {
        let last_done = last_done.clone();
        let (sqs, queue_url, permits, deletes, done, drained, first_seen) = (
            sqs.clone(),
            queue_url.clone(),
            permits.clone(),
            deletes.clone(),
            done.clone(),
            drained.clone(),
            first_seen.clone(),
        );
        handles.push(tokio::spawn(async move {
            let tasks = tokio_util::task::TaskTracker::new();
            while !drained.load(Ordering::Relaxed) {
                let first = permits.clone().acquire_owned().await.expect("open");
                let mut held = vec![first];
                while held.len() < SQS_MAX_BATCH {
                    match permits.clone().try_acquire_owned() {
                        Ok(p) => held.push(p),
                        Err(_) => break,
                    }
                }
                let out = mplink::sqs::receive_request(
                    &sqs,
                    &queue_url,
                    held.len(),
                    Duration::from_secs(1),
                    defaults.visibility_timeout,
                )
                .send()
                .await
                .expect("ReceiveMessage");
                let messages = out.messages.unwrap_or_default();
                if messages.is_empty() {
                    if first_seen.initialized() {
                        drained.store(true, Ordering::Relaxed);
                    }
                    continue;
                }
                let _ = first_seen.set(base.elapsed().as_nanos() as u64);
                let entries = delete_entries(messages.iter().filter_map(|m| m.receipt_handle()))
                    .expect("entries");
                let count = entries.len() as u64;
                let slot = deletes.clone().acquire_owned().await.expect("open");
                let (sqs, queue_url, done, last_done) = (
                    sqs.clone(),
                    queue_url.clone(),
                    done.clone(),
                    last_done.clone(),
                );
                tasks.spawn(async move {
                    sqs.delete_message_batch()
                        .queue_url(&queue_url)
                        .set_entries(Some(entries))
                        .send()
                        .await
                        .expect("DeleteMessageBatch");
                    done.fetch_add(count, Ordering::Relaxed);
                    last_done.fetch_max(base.elapsed().as_nanos() as u64, Ordering::Relaxed);
                    drop((slot, held));
                });
            }
            tasks.close();
            tasks.wait().await;
        }));
    }
    for h in handles {
        h.await.expect("receive loop");
    }
    let messages = done.load(Ordering::Relaxed);
    // Timed from the first message received to the last delete: the final empty receive (up to
    // its 1 s wait) says the queue is empty and is not part of draining it.
    let first = first_seen.get().copied().unwrap_or(0);
    let seconds = last_done.load(Ordering::Relaxed).saturating_sub(first) as f64 / 1e9;
    let per_second = if seconds > 0.0 {
        messages as f64 / seconds
    } else {
        0.0
    };
    println!("{{\"messages\":{messages},\"seconds\":{seconds:.3},\"per_second\":{per_second:.1}}}");
}
