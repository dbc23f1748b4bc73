//! Deletes of committed messages: gathered into DeleteMessageBatch calls, several in flight.

use super::Side;
use crate::backoff::Backoff;
use crate::metrics::Stage;
use crate::sqs::{delete_entries, entry_index, SQS_MAX_BATCH};
use aws_sdk_sqs::Client as SqsClient;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_util::task::TaskTracker;

/// How long a partial batch of deletes waits for companions before it is sent.
const DELETE_LINGER: Duration = Duration::from_millis(25);
/// DeleteMessageBatch calls in flight at once, so deletes keep up with commits.
const MAX_CONCURRENT_DELETES: usize = 4;
/// Attempts per DeleteMessageBatch entry before it is counted as failed.
const DELETE_ATTEMPTS: u32 = 5;

/// A committed message waiting to be deleted. It keeps its in-flight slot until the delete is
/// done, so `--max-in-flight` bounds received-but-not-deleted messages, not just unprocessed ones.
pub(super) struct Ack {
    pub(super) message_id: String,
    pub(super) receipt_handle: String,
    pub(super) committed_at: Instant,
    pub(super) _slot: OwnedSemaphorePermit,
}

/// Gathers acks into batches of up to ten (sent at once when full, after a short linger when
/// not) and deletes them with up to [`MAX_CONCURRENT_DELETES`] calls in flight.
pub(super) async fn delete_loop(
    side: Side,
    mut acks: mpsc::Receiver<Ack>,
    failures: Arc<AtomicU64>,
) {
    let slots = Arc::new(Semaphore::new(MAX_CONCURRENT_DELETES));
    let deletes = TaskTracker::new();
    while let Some(first) = acks.recv().await {
        let mut batch = vec![first];
        while batch.len() < SQS_MAX_BATCH {
            match acks.try_recv() {
                Ok(a) => batch.push(a),
                Err(_) => break,
            }
        }
        if batch.len() < SQS_MAX_BATCH {
            let linger = tokio::time::sleep(DELETE_LINGER);
            tokio::pin!(linger);
            while batch.len() < SQS_MAX_BATCH {
                tokio::select! {
                    _ = &mut linger => break,
                    next = acks.recv() => match next { Some(a) => batch.push(a), None => break },
                }
            }
        }
        let Ok(slot) = slots.clone().acquire_owned().await else {
            break;
        };
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
            // The batch's in-flight slots are freed here, with the batch.
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
