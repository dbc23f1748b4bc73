//! Receiving: the long-poll loops, the combiner that turns receives into commit batches, and
//! the task that takes one batch through the pipeline to its acks.

use super::ack::Ack;
use super::{visibility, WorkerParts};
use crate::backoff::Backoff;
use crate::metrics::{Metrics, Stage};
use crate::process::Processed;
use crate::sqs::{Received, SQS_MAX_BATCH};
use aws_sdk_sqs::types::Message;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::task_tracker::TaskTrackerToken;
use tokio_util::task::TaskTracker;

/// The messages of one ReceiveMessage, each with its in-flight slot. The token counts it as
/// work in progress from the moment it is received, so an idle exit never overlooks it.
pub(super) struct Receipt {
    messages: Vec<(Message, OwnedSemaphorePermit)>,
    work: TaskTrackerToken,
    received_at: Instant,
}

pub(super) async fn receive_loop(
    parts: WorkerParts,
    permits: Arc<Semaphore>,
    tasks: TaskTracker,
    batches: mpsc::Sender<Receipt>,
    stop: CancellationToken,
    idle: CancellationToken,
) {
    let mut backoff = Backoff::new(parts.config.backoff_base, parts.config.backoff_cap);
    loop {
        if idle.is_cancelled() {
            return;
        }
        // While the database is down, receiving would only burn receive counts towards the
        // dead-letter queue: wait for it instead.
        if !parts.health.database_ok() {
            // A ping can wait out the pool's acquire timeout: a shutdown must not wait with it.
            let ping = tokio::select! {
                _ = stop.cancelled() => return,
                p = parts.pipeline.store.ping() => p,
            };
            match ping {
                Ok(()) => {
                    tracing::info!("database reachable again");
                    parts.health.set_database_ok(true);
                }
                Err(e) => {
                    let delay = backoff.next_delay();
                    tracing::warn!(error = %e, delay_ms = delay.as_millis() as u64, attempt = backoff.attempts(), "database unreachable; waiting before receiving");
                    if sleep_or_stop(delay, &stop).await {
                        return;
                    }
                    continue;
                }
            }
        }
        // A full share of slots before asking: a receive of a few messages costs the queue a
        // call all the same, and on a busy queue every call is the queue's time.
        let waiting = Instant::now();
        let mut slots = tokio::select! {
            _ = stop.cancelled() => return,
            p = permits.clone().acquire_many_owned(receive_share(&parts.config) as u32) => match p { Ok(p) => p, Err(_) => return },
        };
        parts
            .metrics
            .stage(Stage::SlotWait, waiting.elapsed().as_secs_f64());
        let mut held = Vec::with_capacity(slots.num_permits());
        while slots.num_permits() > 1 {
            held.extend(slots.split(1));
        }
        held.push(slots);
        let request = crate::sqs::receive_request(
            &parts.sqs,
            &parts.config.queue_url,
            held.len(),
            parts.config.wait_time,
            parts.config.visibility_timeout,
        )
        .send();
        // Dropping the request future on shutdown cancels the open long poll at once.
        let asked = Instant::now();
        let received = tokio::select! {
            _ = stop.cancelled() => return,
            r = request => r,
        };
        let messages = match received {
            Ok(out) => {
                parts.health.receive_ok();
                backoff.reset();
                out.messages.unwrap_or_default()
            }
            Err(e) => {
                parts.metrics.receive_errors.inc();
                let delay = backoff.next_delay();
                tracing::warn!(
                    error = %aws_sdk_sqs::error::DisplayErrorContext(&e),
                    delay_ms = delay.as_millis() as u64,
                    attempt = backoff.attempts(),
                    "receive failed; backing off"
                );
                drop(held);
                if sleep_or_stop(delay, &stop).await {
                    return;
                }
                continue;
            }
        };
        if messages.is_empty() {
            drop(held);
            if parts.config.exit_when_idle && tasks.is_empty() {
                tracing::info!("queue drained; stopping (--exit-when-idle)");
                idle.cancel();
                return;
            }
            continue;
        }
        parts.metrics.received.inc_by(messages.len() as u64);
        parts
            .metrics
            .stage(Stage::Receive, asked.elapsed().as_secs_f64());
        let receipt = Receipt {
            messages: messages.into_iter().zip(held.drain(..)).collect(),
            work: tasks.token(),
            received_at: Instant::now(),
        };
        if batches.send(receipt).await.is_err() {
            tracing::error!("the combiner stopped before the receive loops");
            return;
        }
    }
}

/// The slots one receive waits for: a full receive (10), or the loop's share of the in-flight
/// bound when that is smaller, so every loop can have a receive open.
fn receive_share(config: &super::WorkerConfig) -> usize {
    let share = config.max_in_flight.max(1) / config.receive_loops.max(1);
    share.clamp(1, SQS_MAX_BATCH)
}

/// Sleeps for `delay`; true when `stop` fired first.
async fn sleep_or_stop(delay: Duration, stop: &CancellationToken) -> bool {
    tokio::select! {
        _ = stop.cancelled() => true,
        _ = tokio::time::sleep(delay) => false,
    }
}

/// Turns receives into commit batches. At most [`Store::concurrent_batches`] transactions run
/// at once; while they do, the receives that arrive wait here and go together into the next
/// one (up to `--max-batch` messages), so a busy queue gets fewer, larger transactions and a
/// quiet one has each receive applied at once. After a full receive it may also wait up to the
/// configured linger for more.
///
/// [`Store::concurrent_batches`]: crate::store::Store::concurrent_batches
pub(super) async fn combine(
    parts: WorkerParts,
    mut receipts: mpsc::Receiver<Receipt>,
    tasks: TaskTracker,
    stop: CancellationToken,
    abort: CancellationToken,
) {
    let max = parts.config.max_batch.max(1);
    let mut waiting: VecDeque<Receipt> = VecDeque::new();
    let mut open = true;
    while open || !waiting.is_empty() {
        if waiting.is_empty() {
            match receipts.recv().await {
                Some(r) => waiting.push_back(r),
                None => break,
            }
        }
        // Receives keep arriving while every transaction is busy: gather them.
        let permit = loop {
            tokio::select! {
                biased;
                p = parts.commits.clone().acquire_owned() => break p,
                next = receipts.recv(), if open => match next {
                    Some(r) => waiting.push_back(r),
                    None => open = false,
                },
            }
        };
        let Ok(permit) = permit else { break };
        while let Ok(r) = receipts.try_recv() {
            waiting.push_back(r);
        }
        let mut size: usize = waiting.iter().map(|r| r.messages.len()).sum();
        let full = waiting
            .back()
            .is_some_and(|r| r.messages.len() >= SQS_MAX_BATCH);
        if open && full && size < max && !parts.config.batch_linger.is_zero() {
            let linger = tokio::time::sleep(parts.config.batch_linger);
            tokio::pin!(linger);
            while size < max {
                tokio::select! {
                    _ = &mut linger => break,
                    next = receipts.recv() => match next {
                        Some(r) => { size += r.messages.len(); waiting.push_back(r); }
                        None => { open = false; break; }
                    },
                }
            }
        }
        // Whole receives, the first always, until the next would pass the bound.
        let mut batch = Vec::new();
        let mut taken = 0;
        while let Some(r) = waiting.front() {
            if !batch.is_empty() && taken + r.messages.len() > max {
                break;
            }
            taken += r.messages.len();
            batch.extend(waiting.pop_front());
        }
        tasks.spawn(handle_batch(
            parts.clone(),
            batch,
            permit,
            stop.clone(),
            abort.clone(),
        ));
    }
}

/// One message of a batch, tracked until it is acked, rejected or released.
struct Pending {
    received: Received,
    receipt: String,
    /// Its in-flight slot, given back when the message leaves the batch.
    _slot: OwnedSemaphorePermit,
}

/// Applies a batch in one transaction (the pipeline retries its members one by one when the
/// database refuses the batch), hands the committed ones to the deleter and leaves the rejected
/// ones for the dead-letter queue. Members that hit a transient failure are retried together.
async fn handle_batch(
    parts: WorkerParts,
    receipts: Vec<Receipt>,
    commit_slot: OwnedSemaphorePermit,
    stop: CancellationToken,
    abort: CancellationToken,
) {
    let count = receipts.iter().map(|r| r.messages.len()).sum::<usize>();
    let _gauge = GaugeGuard::new(&parts.metrics, count as i64);
    // The work tokens end with this task, whatever way it ends.
    let mut works = Vec::with_capacity(receipts.len());
    let mut pending = Vec::with_capacity(count);
    for Receipt {
        messages,
        work,
        received_at,
    } in receipts
    {
        parts
            .metrics
            .stage(Stage::Combine, received_at.elapsed().as_secs_f64());
        works.push(work);
        for (message, slot) in messages {
            let received = crate::sqs::received(&message, parts.pipeline.verifier.redrive_key());
            let message_id = &received.inbound.message_id;
            let Some(receipt) = message.receipt_handle().map(str::to_string) else {
                tracing::error!(%message_id, "message without receipt handle; cannot acknowledge");
                continue;
            };
            tracing::debug!(%message_id, "received");
            parts
                .in_flight
                .track(message_id, &receipt, parts.config.visibility_timeout);
            pending.push(Pending {
                received,
                receipt,
                _slot: slot,
            });
        }
    }
    let mut backoff = Backoff::new(parts.config.backoff_base, parts.config.backoff_cap);
    let mut commit_slot = Some(commit_slot);
    while !pending.is_empty() {
        // A retry waits for a transaction slot like any batch.
        let slot = match commit_slot.take() {
            Some(slot) => slot,
            None => tokio::select! {
                _ = abort.cancelled() => { release(&parts, &pending).await; return; }
                s = parts.commits.clone().acquire_owned() => match s {
                    Ok(s) => s,
                    Err(_) => { release(&parts, &pending).await; return; }
                },
            },
        };
        let refs: Vec<&Received> = pending.iter().map(|p| &p.received).collect();
        let started = Instant::now();
        let results = tokio::select! {
            _ = abort.cancelled() => { release(&parts, &pending).await; return; }
            r = parts.pipeline.process_received_batch(&refs) => r,
        };
        drop(slot);
        parts
            .metrics
            .stage(Stage::Commit, started.elapsed().as_secs_f64());
        let committed_at = Instant::now();
        drop(refs);
        let mut retry = Vec::new();
        let mut transient = None;
        let mut committed = Vec::new();
        for (p, result) in pending.into_iter().zip(results) {
            match result {
                Processed::Done(_) => {
                    parts.health.set_database_ok(true);
                    committed.push(p);
                }
                Processed::Rejected { .. } => {
                    // Not deleted: it becomes visible again and the redrive policy moves it to
                    // the dead-letter queue after maxReceiveCount receives.
                    parts.in_flight.untrack([p.receipt.as_str()]);
                }
                Processed::Retry(e) => {
                    transient = Some(e);
                    retry.push(p);
                }
            }
        }
        // One send per transaction: the deleter sees the batch whole and fills its calls.
        if !committed.is_empty() {
            if let Some(acks) = into_acks(&parts, committed, committed_at).await {
                if parts.acks.send(acks).await.is_err() {
                    tracing::error!("the deleter stopped before every ack was sent");
                }
            }
        }
        pending = retry;
        if let Some(e) = transient {
            parts.health.set_database_ok(false);
            let delay = backoff.next_delay();
            tracing::warn!(count = pending.len(), first_message_id = %pending[0].received.inbound.message_id, error = %e, delay_ms = delay.as_millis() as u64, "transient failure; retrying");
            let stopped = tokio::select! {
                _ = abort.cancelled() => true,
                _ = stop.cancelled() => true,
                _ = tokio::time::sleep(delay) => false,
            };
            if stopped {
                // Give them back now rather than sit on them through the shutdown.
                release(&parts, &pending).await;
                return;
            }
        }
    }
}

/// Hands committed messages over to the deleter: they stay tracked, and their visibility
/// extended, until the delete is done, and their in-flight slots go once they have places in the
/// delete backlog. The places are taken for the whole batch at once (a batch never holds more
/// slots than the backlog has places), so two batches never each hold part of what they need.
async fn into_acks(
    parts: &WorkerParts,
    committed: Vec<Pending>,
    committed_at: Instant,
) -> Option<Vec<Ack>> {
    let mut places = match parts
        .delete_backlog
        .clone()
        .acquire_many_owned(committed.len() as u32)
        .await
    {
        Ok(places) => places,
        Err(_) => {
            tracing::error!("the delete backlog closed before every ack was sent");
            return None;
        }
    };
    let mut acks = Vec::with_capacity(committed.len());
    // One place each; the message's in-flight slot drops with its `Pending`.
    for p in committed {
        let place = places.split(1)?;
        acks.push(Ack {
            message_id: p.received.inbound.message_id,
            receipt_handle: p.receipt,
            committed_at,
            _backlog: place,
        });
    }
    Some(acks)
}

async fn release(parts: &WorkerParts, pending: &[Pending]) {
    let messages: Vec<(&str, &str)> = pending
        .iter()
        .map(|p| (p.received.inbound.message_id.as_str(), p.receipt.as_str()))
        .collect();
    visibility::release(parts, &messages).await;
}

/// Counts a batch in the in-flight gauge while its task runs, however it ends.
struct GaugeGuard<'a>(&'a Metrics, i64);

impl<'a> GaugeGuard<'a> {
    fn new(metrics: &'a Metrics, count: i64) -> GaugeGuard<'a> {
        metrics.in_flight.add(count);
        GaugeGuard(metrics, count)
    }
}

impl Drop for GaugeGuard<'_> {
    fn drop(&mut self) {
        self.0.in_flight.sub(self.1);
    }
}
