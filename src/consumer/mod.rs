//! The SQS consumer: receive loops, a bounded number of messages in flight, visibility
//! extension, batched deletes, backoff and graceful shutdown. Each message goes through
//! [`crate::process::process`]; it is deleted only after its effect is committed.

use crate::backoff::Backoff;
use crate::ledger::Outcome;
use crate::metrics::Metrics;
use crate::process::{Pipeline, Processed};
use crate::sqs::SQS_MAX_BATCH;
use crate::store::now_ms;
use aws_sdk_sqs::types::{
    ChangeMessageVisibilityBatchRequestEntry, DeleteMessageBatchRequestEntry, Message,
    MessageSystemAttributeName,
};
use aws_sdk_sqs::Client as SqsClient;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

/// How long a partial batch of deletes waits for companions before it is sent.
const DELETE_LINGER: Duration = Duration::from_millis(25);
/// DeleteMessageBatch calls in flight at once, so deletes keep up with commits.
const MAX_CONCURRENT_DELETES: usize = 4;
/// Attempts per DeleteMessageBatch entry before it is counted as failed.
const DELETE_ATTEMPTS: u32 = 5;
/// Longest wait for SQS to take back an unfinished message at shutdown.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(2);

/// How the worker runs.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// The queue to consume.
    pub queue_url: String,
    /// Concurrent ReceiveMessage loops.
    pub receive_loops: usize,
    /// Messages being worked on at once, across all loops.
    pub max_in_flight: usize,
    /// Long-poll wait per ReceiveMessage.
    pub wait_time: Duration,
    /// Visibility timeout requested on receive, and renewed while a message is worked on.
    pub visibility_timeout: Duration,
    /// Time allowed after a shutdown signal to finish in-flight work and flush deletes.
    pub grace_period: Duration,
    /// Stop once a receive comes back empty with nothing in flight.
    pub exit_when_idle: bool,
    /// First backoff delay after a transient failure.
    pub backoff_base: Duration,
    /// Longest backoff delay.
    pub backoff_cap: Duration,
}

impl WorkerConfig {
    /// Defaults for a queue: 20 s long polls, 30 s visibility, 25 s grace (below ECS's 30 s).
    pub fn new(queue_url: impl Into<String>) -> WorkerConfig {
        WorkerConfig {
            queue_url: queue_url.into(),
            receive_loops: 2,
            max_in_flight: 32,
            wait_time: Duration::from_secs(20),
            visibility_timeout: Duration::from_secs(30),
            grace_period: Duration::from_secs(25),
            exit_when_idle: false,
            backoff_base: Duration::from_millis(200),
            backoff_cap: Duration::from_secs(20),
        }
    }
}

/// What readiness is judged on, shared between the worker and the HTTP surface.
#[derive(Debug, Default)]
pub struct Health {
    last_receive_ok_ms: AtomicI64,
    database_ok: AtomicBool,
}

impl Health {
    /// A health record that has seen nothing yet.
    pub fn new() -> Health {
        Health {
            last_receive_ok_ms: AtomicI64::new(0),
            database_ok: AtomicBool::new(true),
        }
    }

    /// Notes a successful ReceiveMessage.
    pub fn receive_ok(&self) {
        self.last_receive_ok_ms.store(now_ms(), Ordering::Relaxed);
    }

    /// When the queue last answered, epoch ms (0 for never).
    pub fn last_receive_ok_ms(&self) -> i64 {
        self.last_receive_ok_ms.load(Ordering::Relaxed)
    }

    /// Records whether the database answered the last time it was used.
    pub fn set_database_ok(&self, ok: bool) {
        self.database_ok.store(ok, Ordering::Relaxed);
    }

    /// Whether the database answered the last time it was used.
    pub fn database_ok(&self) -> bool {
        self.database_ok.load(Ordering::Relaxed)
    }
}

/// Totals of one run, for the exit line and tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RunSummary {
    /// Messages received.
    pub received: u64,
    /// Applied.
    pub applied: u64,
    /// Stale.
    pub stale: u64,
    /// Duplicate.
    pub duplicate: u64,
    /// Rejected (left for the dead-letter queue).
    pub rejected: u64,
    /// Messages released unfinished at shutdown (they return to the queue).
    pub released: u64,
    /// Deletes that failed for good.
    pub delete_failures: u64,
}

/// A message being worked on: what the visibility heartbeat needs.
struct Tracked {
    message_id: String,
    visible_until: Instant,
}

/// Messages being worked on, by receipt handle: a message received twice (a redelivery while
/// the first copy is still held) is two entries, and finishing one never untracks the other.
type InFlight = Arc<Mutex<HashMap<String, Tracked>>>;

/// A committed message waiting to be deleted. It keeps its in-flight slot until the delete is
/// done, so `--max-in-flight` bounds received-but-not-deleted messages, not just unprocessed ones.
struct Ack {
    message_id: String,
    receipt_handle: String,
    _slot: OwnedSemaphorePermit,
}

/// The long-running consumer.
pub struct Worker {
    sqs: SqsClient,
    pipeline: Pipeline,
    config: WorkerConfig,
    health: Arc<Health>,
}

/// Everything a message task needs, cheap to clone.
#[derive(Clone)]
struct Ctx {
    sqs: SqsClient,
    pipeline: Pipeline,
    config: Arc<WorkerConfig>,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    in_flight: InFlight,
    acks: mpsc::Sender<Ack>,
    released: Arc<AtomicU64>,
}

/// What the deleter and the visibility heartbeat share. Unlike [`Ctx`] it holds no ack
/// sender, so the ack channel closes once the last message task ends.
#[derive(Clone)]
struct Side {
    sqs: SqsClient,
    config: Arc<WorkerConfig>,
    metrics: Arc<Metrics>,
    in_flight: InFlight,
}

impl Worker {
    /// A worker on `config.queue_url`, sending every message through `pipeline`.
    pub fn new(
        sqs: SqsClient,
        pipeline: Pipeline,
        config: WorkerConfig,
        health: Arc<Health>,
    ) -> Worker {
        Worker {
            sqs,
            pipeline,
            config,
            health,
        }
    }

    /// Runs until `shutdown` is cancelled (or, with `exit_when_idle`, the queue is drained),
    /// then finishes or releases what is in flight and flushes deletes within the grace period.
    pub async fn run(self, shutdown: CancellationToken) -> RunSummary {
        let metrics = self.pipeline.metrics.clone();
        let started = Snapshot::take(&metrics);
        let stop_receiving = shutdown.child_token();
        // Idle exit lets open receives finish (their messages are processed); shutdown cancels them.
        let idle = CancellationToken::new();
        let abort = CancellationToken::new();
        let permits = Arc::new(Semaphore::new(self.config.max_in_flight.max(1)));
        // Every ack holds an in-flight slot, so the channel never holds more than this.
        let (acks, ack_rx) = mpsc::channel(self.config.max_in_flight.max(1));
        let delete_failures = Arc::new(AtomicU64::new(0));
        let config = Arc::new(self.config);
        let ctx = Ctx {
            sqs: self.sqs,
            pipeline: self.pipeline,
            config: config.clone(),
            metrics: metrics.clone(),
            health: self.health,
            in_flight: Arc::new(Mutex::new(HashMap::new())),
            acks,
            released: Arc::new(AtomicU64::new(0)),
        };

        let side = Side {
            sqs: ctx.sqs.clone(),
            config: config.clone(),
            metrics: ctx.metrics.clone(),
            in_flight: ctx.in_flight.clone(),
        };
        let deleter = tokio::spawn(delete_loop(side.clone(), ack_rx, delete_failures.clone()));
        let heartbeat_stop = CancellationToken::new();
        let heartbeat = tokio::spawn(heartbeat_loop(side, heartbeat_stop.clone()));
        let tasks = TaskTracker::new();
        let loops = TaskTracker::new();
        for n in 0..config.receive_loops.max(1) {
            loops.spawn(
                receive_loop(
                    ctx.clone(),
                    permits.clone(),
                    tasks.clone(),
                    stop_receiving.clone(),
                    idle.clone(),
                    abort.clone(),
                )
                .instrument(tracing::info_span!("receive_loop", n)),
            );
        }
        loops.close();
        loops.wait().await;

        // Receiving has stopped (signal or idle): finish what is in flight within the grace period.
        let deadline = Instant::now() + config.grace_period;
        tasks.close();
        if tokio::time::timeout_at(deadline.into(), tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!("grace period over: releasing unfinished messages back to the queue");
            abort.cancel();
            tasks.wait().await;
        }
        // Every sender is gone once the tasks are: the deleter drains and stops.
        let released = ctx.released.clone();
        drop(ctx);
        if tokio::time::timeout_at(deadline.into(), deleter)
            .await
            .is_err()
        {
            tracing::error!("grace period over before all deletes were flushed; those messages will return as duplicates");
        }
        heartbeat_stop.cancel();
        let _ = heartbeat.await;

        let mut summary = Snapshot::take(&metrics).since(&started);
        summary.delete_failures = delete_failures.load(Ordering::Relaxed);
        summary.released = released.load(Ordering::Relaxed);
        tracing::info!(?summary, "worker stopped");
        summary
    }
}

/// Counter values at one moment, to report a run's own totals.
struct Snapshot {
    received: u64,
    applied: u64,
    stale: u64,
    duplicate: u64,
    rejected: u64,
}

impl Snapshot {
    fn take(m: &Metrics) -> Snapshot {
        Snapshot {
            received: m.received.get(),
            applied: m.outcome_count(Outcome::Applied),
            stale: m.outcome_count(Outcome::Stale),
            duplicate: m.outcome_count(Outcome::Duplicate),
            rejected: m.outcome_count(Outcome::Rejected),
        }
    }

    fn since(&self, earlier: &Snapshot) -> RunSummary {
        RunSummary {
            received: self.received - earlier.received,
            applied: self.applied - earlier.applied,
            stale: self.stale - earlier.stale,
            duplicate: self.duplicate - earlier.duplicate,
            rejected: self.rejected - earlier.rejected,
            released: 0,
            delete_failures: 0,
        }
    }
}

async fn receive_loop(
    ctx: Ctx,
    permits: Arc<Semaphore>,
    tasks: TaskTracker,
    stop: CancellationToken,
    idle: CancellationToken,
    abort: CancellationToken,
) {
    let mut backoff = Backoff::new(ctx.config.backoff_base, ctx.config.backoff_cap);
    loop {
        if idle.is_cancelled() {
            return;
        }
        // While the database is down, receiving would only burn receive counts towards the
        // dead-letter queue: wait for it instead.
        if !ctx.health.database_ok() {
            // A ping can wait out the pool's acquire timeout: a shutdown must not wait with it.
            let ping = tokio::select! {
                _ = stop.cancelled() => return,
                p = ctx.pipeline.store.ping() => p,
            };
            match ping {
                Ok(()) => {
                    tracing::info!("database reachable again");
                    ctx.health.set_database_ok(true);
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
        let first = tokio::select! {
            _ = stop.cancelled() => return,
            p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
        };
        let mut held = vec![first];
        while held.len() < SQS_MAX_BATCH {
            match permits.clone().try_acquire_owned() {
                Ok(p) => held.push(p),
                Err(_) => break,
            }
        }
        let request = ctx
            .sqs
            .receive_message()
            .queue_url(&ctx.config.queue_url)
            .max_number_of_messages(held.len() as i32)
            .wait_time_seconds(ctx.config.wait_time.as_secs() as i32)
            .visibility_timeout(ctx.config.visibility_timeout.as_secs() as i32)
            .message_system_attribute_names(MessageSystemAttributeName::SentTimestamp)
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .set_message_attribute_names(Some(
                crate::redrive::ATTRIBUTES.map(String::from).to_vec(),
            ))
            .send();
        // Dropping the request future on shutdown cancels the open long poll at once.
        let received = tokio::select! {
            _ = stop.cancelled() => return,
            r = request => r,
        };
        let messages = match received {
            Ok(out) => {
                ctx.health.receive_ok();
                backoff.reset();
                out.messages.unwrap_or_default()
            }
            Err(e) => {
                ctx.metrics.receive_errors.inc();
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
            if ctx.config.exit_when_idle && tasks.is_empty() {
                tracing::info!("queue drained; stopping (--exit-when-idle)");
                idle.cancel();
                return;
            }
            continue;
        }
        ctx.metrics.received.inc_by(messages.len() as u64);
        for (message, permit) in messages.into_iter().zip(held.drain(..)) {
            tasks.spawn(handle_message(
                ctx.clone(),
                message,
                permit,
                stop.clone(),
                abort.clone(),
            ));
        }
    }
}

/// Sleeps for `delay`; true when `stop` fired first.
async fn sleep_or_stop(delay: Duration, stop: &CancellationToken) -> bool {
    tokio::select! {
        _ = stop.cancelled() => true,
        _ = tokio::time::sleep(delay) => false,
    }
}

async fn handle_message(
    ctx: Ctx,
    message: Message,
    permit: OwnedSemaphorePermit,
    stop: CancellationToken,
    abort: CancellationToken,
) {
    ctx.metrics.in_flight.inc();
    let _gauge = scopeguard(&ctx.metrics);
    let received = crate::sqs::received(&message, ctx.pipeline.verifier.redrive_key());
    let message_id = received.inbound.message_id.clone();
    let Some(receipt) = message.receipt_handle().map(str::to_string) else {
        tracing::error!(%message_id, "message without receipt handle; cannot acknowledge");
        return;
    };
    tracing::debug!(%message_id, "received");
    track(&ctx, &message_id, &receipt);
    let mut backoff = Backoff::new(ctx.config.backoff_base, ctx.config.backoff_cap);
    loop {
        let result = tokio::select! {
            _ = abort.cancelled() => { release(&ctx, &message_id, &receipt).await; return; }
            r = ctx.pipeline.process_received(&received) => r,
        };
        match result {
            Processed::Done(_) => {
                ctx.health.set_database_ok(true);
                // The deleter owns the message (and its slot) from here; it stays tracked, and
                // its visibility extended, until the delete is done.
                let ack = Ack {
                    message_id,
                    receipt_handle: receipt,
                    _slot: permit,
                };
                if ctx.acks.send(ack).await.is_err() {
                    tracing::error!("the deleter stopped before every ack was sent");
                }
                return;
            }
            Processed::Rejected { .. } => {
                // Not deleted: it becomes visible again and the redrive policy moves it to the
                // dead-letter queue after maxReceiveCount receives.
                untrack(&ctx, &receipt);
                return;
            }
            Processed::Retry(e) => {
                ctx.health.set_database_ok(false);
                let delay = backoff.next_delay();
                tracing::warn!(%message_id, error = %e, delay_ms = delay.as_millis() as u64, "transient failure; retrying");
                let stopped = tokio::select! {
                    _ = abort.cancelled() => true,
                    _ = stop.cancelled() => true,
                    _ = tokio::time::sleep(delay) => false,
                };
                if stopped {
                    // Give it back now rather than sit on it through the shutdown.
                    release(&ctx, &message_id, &receipt).await;
                    return;
                }
            }
        }
    }
}

/// Decrements the in-flight gauge when a message task ends, however it ends.
struct GaugeGuard<'a>(&'a Metrics);

impl Drop for GaugeGuard<'_> {
    fn drop(&mut self) {
        self.0.in_flight.dec();
    }
}

fn scopeguard(m: &Metrics) -> GaugeGuard<'_> {
    GaugeGuard(m)
}

fn track(ctx: &Ctx, message_id: &str, receipt: &str) {
    if let Ok(mut m) = ctx.in_flight.lock() {
        m.insert(
            receipt.to_string(),
            Tracked {
                message_id: message_id.to_string(),
                visible_until: Instant::now() + ctx.config.visibility_timeout,
            },
        );
    }
}

fn untrack(ctx: &Ctx, receipt: &str) {
    if let Ok(mut m) = ctx.in_flight.lock() {
        m.remove(receipt);
    }
}

/// Makes an unfinished message visible again at once so another replica can take it.
async fn release(ctx: &Ctx, message_id: &str, receipt: &str) {
    untrack(ctx, receipt);
    ctx.released.fetch_add(1, Ordering::Relaxed);
    let request = ctx
        .sqs
        .change_message_visibility()
        .queue_url(&ctx.config.queue_url)
        .receipt_handle(receipt)
        .visibility_timeout(0)
        .send();
    // Releasing is a courtesy to other replicas; it must not hold up a shutdown.
    match tokio::time::timeout(RELEASE_TIMEOUT, request).await {
        Ok(Ok(_)) => tracing::info!(message_id, "released unfinished message to the queue"),
        Err(_) => {
            ctx.metrics.visibility_failures.inc();
            tracing::warn!(
                message_id,
                "releasing timed out; the message returns when its visibility times out"
            );
        }
        Ok(Err(e)) => {
            ctx.metrics.visibility_failures.inc();
            tracing::warn!(message_id, error = %aws_sdk_sqs::error::DisplayErrorContext(&e), "could not release message; it returns when its visibility times out");
        }
    }
}

/// Gathers acks into batches of up to ten (sent at once when full, after a short linger when
/// not) and deletes them with up to [`MAX_CONCURRENT_DELETES`] calls in flight.
async fn delete_loop(side: Side, mut acks: mpsc::Receiver<Ack>, failures: Arc<AtomicU64>) {
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
        let side = side.clone();
        let failures = failures.clone();
        deletes.spawn(async move {
            let failed = delete_batch(&side.sqs, &side.config, &batch).await;
            if !failed.is_empty() {
                side.metrics.delete_failures.inc_by(failed.len() as u64);
                failures.fetch_add(failed.len() as u64, Ordering::Relaxed);
            }
            if let Ok(mut m) = side.in_flight.lock() {
                for ack in &batch {
                    m.remove(&ack.receipt_handle);
                }
            }
            // The batch's in-flight slots are freed here, with the batch.
            drop(slot);
        });
    }
    deletes.close();
    deletes.wait().await;
}

/// Deletes a batch, retrying entries that failed on AWS's side; returns the message ids that
/// could not be deleted (they will return and be recognised as duplicates).
async fn delete_batch(sqs: &SqsClient, config: &WorkerConfig, batch: &[Ack]) -> Vec<String> {
    let mut pending: Vec<usize> = (0..batch.len()).collect();
    let mut undeletable = Vec::new();
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
    for attempt in 1..=DELETE_ATTEMPTS {
        let entries: Vec<DeleteMessageBatchRequestEntry> = pending
            .iter()
            .filter_map(|&i| {
                DeleteMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .receipt_handle(&batch[i].receipt_handle)
                    .build()
                    .ok()
            })
            .collect();
        let sent = sqs
            .delete_message_batch()
            .queue_url(&config.queue_url)
            .set_entries(Some(entries))
            .send()
            .await;
        match sent {
            Ok(out) => {
                let mut retry = Vec::new();
                for f in out.failed() {
                    let Some(i) = f.id().parse::<usize>().ok().filter(|i| *i < batch.len()) else {
                        continue;
                    };
                    let message_id = &batch[i].message_id;
                    if f.sender_fault() {
                        // A stale receipt handle will not get better by retrying.
                        tracing::error!(%message_id, code = f.code(), reason = f.message().unwrap_or(""), "delete refused");
                        undeletable.push(message_id.clone());
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
        undeletable.push(batch[i].message_id.clone());
    }
    undeletable
}

async fn heartbeat_loop(side: Side, stop: CancellationToken) {
    let Side {
        sqs,
        config,
        metrics,
        in_flight,
    } = side;
    let visibility = config.visibility_timeout;
    let period = (visibility / 4).max(Duration::from_millis(500));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(period) => {}
        }
        let now = Instant::now();
        let due: Vec<(String, String)> = match in_flight.lock() {
            Ok(m) => m
                .iter()
                .filter(|(_, t)| t.visible_until.saturating_duration_since(now) < visibility / 2)
                .map(|(receipt, t)| (t.message_id.clone(), receipt.clone()))
                .collect(),
            Err(_) => continue,
        };
        for chunk in due.chunks(SQS_MAX_BATCH) {
            let entries: Vec<ChangeMessageVisibilityBatchRequestEntry> = chunk
                .iter()
                .enumerate()
                .filter_map(|(i, (_, receipt))| {
                    ChangeMessageVisibilityBatchRequestEntry::builder()
                        .id(i.to_string())
                        .receipt_handle(receipt)
                        .visibility_timeout(visibility.as_secs() as i32)
                        .build()
                        .ok()
                })
                .collect();
            let extended_at = Instant::now();
            match sqs
                .change_message_visibility_batch()
                .queue_url(&config.queue_url)
                .set_entries(Some(entries))
                .send()
                .await
            {
                Ok(out) => {
                    let failed: Vec<usize> = out
                        .failed()
                        .iter()
                        .filter_map(|f| f.id().parse().ok())
                        .collect();
                    for f in out.failed() {
                        metrics.visibility_failures.inc();
                        tracing::warn!(
                            code = f.code(),
                            reason = f.message().unwrap_or(""),
                            "visibility extension refused"
                        );
                    }
                    if let Ok(mut m) = in_flight.lock() {
                        for (i, (_, receipt)) in chunk.iter().enumerate() {
                            if failed.contains(&i) {
                                continue;
                            }
                            if let Some(t) = m.get_mut(receipt) {
                                t.visible_until = extended_at + visibility;
                            }
                        }
                    }
                    tracing::debug!(count = chunk.len(), "extended visibility");
                }
                Err(e) => {
                    metrics.visibility_failures.inc_by(chunk.len() as u64);
                    tracing::warn!(error = %aws_sdk_sqs::error::DisplayErrorContext(&e), "ChangeMessageVisibilityBatch failed");
                }
            }
        }
    }
}
