//! Deletes of committed messages: gathered into DeleteMessageBatch calls, several in flight.

use super::Side;
use crate::backoff::Backoff;
use crate::metrics::Stage;
use crate::sqs::{delete_entries, entry_index, SQS_MAX_BATCH};
use aws_sdk_sqs::Client as SqsClient;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_util::task::TaskTracker;

/// DeleteMessageBatch calls in flight per receive loop (at least [`MIN_CONCURRENT_DELETES`]):
/// deletes must keep pace with receives however many loops there are, or the messages waiting
/// for them fill the delete backlog, and then hold the in-flight slots the loops need.
const DELETES_PER_RECEIVE_LOOP: usize = 2;
const MIN_CONCURRENT_DELETES: usize = 4;
/// Attempts per DeleteMessageBatch entry before it is counted as failed.
const DELETE_ATTEMPTS: u32 = 5;

/// A committed message waiting to be deleted. It gave its in-flight slot back at the commit and
/// holds a place in the delete backlog (as large as `--max-in-flight`) until the delete is done:
/// a delete's round trip overlaps the next receive, and a deleter that falls behind still stops
/// the receives, through the backlog and then the slots.
pub(super) struct Ack {
    pub(super) message_id: String,
    pub(super) receipt_handle: String,
    pub(super) committed_at: Instant,
    pub(super) _backlog: OwnedSemaphorePermit,
}

/// How long a delete call with fewer than ten messages waits for more. Every call is the
/// queue's time, so a busy queue's acks should fill their calls; the wait holds no in-flight
/// slot (a committed message has given its slot back) and a quiet queue's message is deleted
/// this much later, after its commit.
const DELETE_LINGER: Duration = Duration::from_millis(10);

/// Deletes committed messages, a batch's acks arriving together. A call starts when a call slot
/// is free and ten acks are waiting, or when the oldest has waited [`DELETE_LINGER`].
pub(super) async fn delete_loop(
    side: Side,
    mut acks: mpsc::Receiver<Vec<Ack>>,
    failures: Arc<AtomicU64>,
) {
    let concurrency =
        (side.config.receive_loops * DELETES_PER_RECEIVE_LOOP).max(MIN_CONCURRENT_DELETES);
    let slots = Arc::new(Semaphore::new(concurrency));
    let deletes = TaskTracker::new();
    let mut waiting: VecDeque<Ack> = VecDeque::new();
    loop {
        if waiting.is_empty() {
            match acks.recv().await {
                Some(batch) => waiting.extend(batch),
                None => break,
            }
        }
        let Ok(slot) = slots.clone().acquire_owned().await else {
            break;
        };
        while let Ok(batch) = acks.try_recv() {
            waiting.extend(batch);
        }
        let fill_by = waiting.front().map(|a| a.committed_at + DELETE_LINGER);
        if let Some(fill_by) = fill_by {
            while waiting.len() < SQS_MAX_BATCH {
                match tokio::time::timeout_at(fill_by.into(), acks.recv()).await {
                    Ok(Some(batch)) => waiting.extend(batch),
                    // Closed (shutting down) or the linger is over: send what there is.
                    Ok(None) | Err(_) => break,
                }
            }
        }
        let batch: Vec<Ack> = waiting.drain(..waiting.len().min(SQS_MAX_BATCH)).collect();
        for a in &batch {
            side.metrics
                .stage(Stage::AckWait, a.committed_at.elapsed().as_secs_f64());
        }
        let side = side.clone();
        let failures = failures.clone();
        deletes.spawn(async move {
            let started = Instant::now();
            let failed = delete_batch(&side.sqs, &side.config.queue_url, &batch).await;
            side.metrics
                .stage(Stage::Delete, started.elapsed().as_secs_f64());
            if failed > 0 {
                side.metrics.delete_failures.inc_by(failed as u64);
                failures.fetch_add(failed as u64, Ordering::Relaxed);
            }
            side.in_flight
                .untrack(batch.iter().map(|a| a.receipt_handle.as_str()));
            // The batch's places in the delete backlog are freed here, with the batch.
            drop(slot);
        });
    }
    deletes.close();
    deletes.wait().await;
}

/// Deletes a batch, retrying entries that failed on AWS's side; returns how many could not be
/// deleted (they will return and be recognised as duplicates).
async fn delete_batch(sqs: &SqsClient, queue_url: &str, batch: &[Ack]) -> usize {
    let mut pending: Vec<usize> = (0..batch.len()).collect();
    let mut undeletable = 0;
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
    for attempt in 1..=DELETE_ATTEMPTS {
        let entries = match delete_entries(
            pending.iter().map(|&i| batch[i].receipt_handle.as_str()),
        ) {
            Ok(entries) => entries,
            Err(e) => {
                tracing::error!(error = %e, count = pending.len(), "cannot delete; the messages will return and be deduplicated");
                return undeletable + pending.len();
            }
        };
        let sent = sqs
            .delete_message_batch()
            .queue_url(queue_url)
            .set_entries(Some(entries))
            .send()
            .await;
        match sent {
            Ok(out) => {
                let mut retry = Vec::new();
                for f in out.failed() {
                    // Entry ids are positions in this attempt's `pending`.
                    let Some(i) = entry_index(f.id(), pending.len()).map(|p| pending[p]) else {
                        continue;
                    };
                    let message_id = &batch[i].message_id;
                    if f.sender_fault() {
                        // A stale receipt handle will not get better by retrying.
                        tracing::error!(%message_id, code = f.code(), reason = f.message().unwrap_or(""), "delete refused");
                        undeletable += 1;
                    } else {
                        tracing::warn!(%message_id, code = f.code(), attempt, "delete failed; retrying");
                        retry.push(i);
                    }
                }
                pending = retry;
                if pending.is_empty() {
                    return undeletable;
                }
            }
            Err(e) => {
                tracing::warn!(error = %aws_sdk_sqs::error::DisplayErrorContext(&e), attempt, "DeleteMessageBatch failed; retrying");
            }
        }
        if attempt < DELETE_ATTEMPTS {
            tokio::time::sleep(backoff.next_delay()).await;
        }
    }
    for &i in &pending {
        tracing::error!(message_id = %batch[i].message_id, "delete failed after retries; the message will return and be deduplicated");
    }
    undeletable + pending.len()
}
