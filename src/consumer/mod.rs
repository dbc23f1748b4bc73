//! The SQS consumer: receive loops, a bounded number of messages in flight, one transaction per
//! batch of received messages, visibility extension, batched deletes, backoff and graceful
//! shutdown. A message is deleted only after its effect is committed.
//!
//! - [`receive`]: the receive loops, the combiner that turns receives into commit batches, and
//!   the task that takes one batch through the pipeline;
//! - [`ack`]: deletes of committed messages;
//! - [`visibility`]: what is in flight, its visibility extension, and releases at shutdown.

mod ack;
mod receive;
mod visibility;

use crate::ledger::Outcome;
use crate::metrics::Metrics;
use crate::process::Pipeline;
use crate::time::now_ms;
use aws_sdk_sqs::Client as SqsClient;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

/// Every default of the worker, stated once: `WorkerConfig::new` and the `mplink run` flags
/// both read them.
pub mod defaults {
    /// Concurrent ReceiveMessage loops.
    pub const RECEIVE_LOOPS: u16 = 2;
    /// Messages received but not yet committed, across all loops; as many committed ones may
    /// wait for their delete.
    pub const MAX_IN_FLIGHT: u16 = 32;
    /// Long-poll wait per ReceiveMessage, seconds.
    pub const WAIT_TIME_S: u64 = 20;
    /// Visibility timeout requested on receive and renewed while a message is worked on, seconds.
    pub const VISIBILITY_TIMEOUT_S: u64 = 30;
    /// Time after a shutdown signal to finish and flush, seconds (below ECS's 30 s stopTimeout).
    pub const GRACE_PERIOD_S: u64 = 25;
    /// First backoff delay after a transient failure, milliseconds.
    pub const BACKOFF_BASE_MS: u64 = 200;
    /// Longest backoff delay, seconds.
    pub const BACKOFF_CAP_S: u64 = 20;
    /// How long a full receive waits for further receives to share its transaction,
    /// milliseconds (0: only receives already waiting are combined).
    pub const BATCH_LINGER_MS: u64 = 0;
    /// Most messages in one transaction.
    pub const MAX_BATCH: u16 = 50;
}

/// How often the worker logs a summary of what it decided (the per-message line is debug).
const SUMMARY_PERIOD: Duration = Duration::from_secs(10);

/// How the worker runs.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// The queue to consume.
    pub queue_url: String,
    /// Concurrent ReceiveMessage loops.
    pub receive_loops: usize,
    /// Messages received but not yet committed, across all loops. Committed messages waiting
    /// for their delete have a bound of the same size of their own, so a delete's round trip
    /// never holds a slot a receive could use.
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
    /// How long a full receive waits for more receives to join its transaction; a receive that
    /// came back short (a quiet queue) never waits.
    pub batch_linger: Duration,
    /// Most messages applied in one transaction.
    pub max_batch: usize,
}

impl WorkerConfig {
    /// A worker on `queue_url` with the [`defaults`].
    pub fn new(queue_url: impl Into<String>) -> WorkerConfig {
        WorkerConfig {
            queue_url: queue_url.into(),
            receive_loops: defaults::RECEIVE_LOOPS.into(),
            max_in_flight: defaults::MAX_IN_FLIGHT.into(),
            wait_time: Duration::from_secs(defaults::WAIT_TIME_S),
            visibility_timeout: Duration::from_secs(defaults::VISIBILITY_TIMEOUT_S),
            grace_period: Duration::from_secs(defaults::GRACE_PERIOD_S),
            exit_when_idle: false,
            backoff_base: Duration::from_millis(defaults::BACKOFF_BASE_MS),
            backoff_cap: Duration::from_secs(defaults::BACKOFF_CAP_S),
            batch_linger: Duration::from_millis(defaults::BATCH_LINGER_MS),
            max_batch: defaults::MAX_BATCH.into(),
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

/// The long-running consumer.
pub struct Worker {
    sqs: SqsClient,
    pipeline: Pipeline,
    config: WorkerConfig,
    health: Arc<Health>,
}

/// Everything a batch task needs, cheap to clone.
#[derive(Clone)]
struct WorkerParts {
    sqs: SqsClient,
    pipeline: Pipeline,
    config: Arc<WorkerConfig>,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    in_flight: visibility::InFlight,
    acks: mpsc::Sender<Vec<ack::Ack>>,
    released: Arc<AtomicU64>,
    /// Transactions that may run at once (see [`crate::store::Store::concurrent_batches`]).
    commits: Arc<Semaphore>,
    /// Committed messages waiting for their delete, bounded like the in-flight ones.
    delete_backlog: Arc<Semaphore>,
}

/// What the deleter and the visibility heartbeat share. Unlike [`WorkerParts`] it holds no ack
/// sender, so the ack channel closes once the last batch task ends.
#[derive(Clone)]
struct Side {
    sqs: SqsClient,
    config: Arc<WorkerConfig>,
    metrics: Arc<Metrics>,
    in_flight: visibility::InFlight,
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
        // Every ack holds a place in the delete backlog, so the channel never holds more than
        // this many batches (of one message at least).
        let (acks, ack_rx) = mpsc::channel(self.config.max_in_flight.max(1));
        let delete_backlog = Arc::new(Semaphore::new(self.config.max_in_flight.max(1)));
        let delete_failures = Arc::new(AtomicU64::new(0));
        let config = Arc::new(self.config);
        let commits = Arc::new(Semaphore::new(self.pipeline.store.concurrent_batches()));
        let parts = WorkerParts {
            sqs: self.sqs,
            pipeline: self.pipeline,
            config: config.clone(),
            metrics: metrics.clone(),
            health: self.health,
            in_flight: visibility::InFlight::default(),
            acks,
            released: Arc::new(AtomicU64::new(0)),
            commits,
            delete_backlog,
        };

        let side = Side {
            sqs: parts.sqs.clone(),
            config: config.clone(),
            metrics: parts.metrics.clone(),
            in_flight: parts.in_flight.clone(),
        };
        let deleter = tokio::spawn(ack::delete_loop(
            side.clone(),
            ack_rx,
            delete_failures.clone(),
        ));
        let side_stop = CancellationToken::new();
        let heartbeat = tokio::spawn(visibility::heartbeat_loop(side, side_stop.clone()));
        let summaries = tokio::spawn(summary_loop(metrics.clone(), side_stop.clone()));
        let tasks = TaskTracker::new();
        let (batches, batch_rx) = mpsc::channel(config.receive_loops.max(1));
        let combiner = tokio::spawn(receive::combine(
            parts.clone(),
            batch_rx,
            tasks.clone(),
            stop_receiving.clone(),
            abort.clone(),
        ));
        let loops = TaskTracker::new();
        for n in 0..config.receive_loops.max(1) {
            loops.spawn(
                receive::receive_loop(
                    parts.clone(),
                    permits.clone(),
                    tasks.clone(),
                    batches.clone(),
                    stop_receiving.clone(),
                    idle.clone(),
                )
                .instrument(tracing::info_span!("receive_loop", n)),
            );
        }
        drop(batches);
        loops.close();
        loops.wait().await;
        // The loops are gone, so the combiner hands over what they sent and stops.
        let _ = combiner.await;

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
        let released = parts.released.clone();
        drop(parts);
        if tokio::time::timeout_at(deadline.into(), deleter)
            .await
            .is_err()
        {
            tracing::error!("grace period over before all deletes were flushed; those messages will return as duplicates");
        }
        side_stop.cancel();
        let _ = heartbeat.await;
        let _ = summaries.await;

        let mut summary = Snapshot::take(&metrics).since(&started);
        summary.delete_failures = delete_failures.load(Ordering::Relaxed);
        summary.released = released.load(Ordering::Relaxed);
        tracing::info!(?summary, stages = %metrics.stage_breakdown(), "worker stopped");
        summary
    }
}

/// Logs, every [`SUMMARY_PERIOD`] in which something was received, what was decided.
async fn summary_loop(metrics: Arc<Metrics>, stop: CancellationToken) {
    let mut last = Snapshot::take(&metrics);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(SUMMARY_PERIOD) => {}
        }
        let now = Snapshot::take(&metrics);
        let d = now.since(&last);
        if d.received > 0 {
            tracing::info!(
                received = d.received,
                applied = d.applied,
                stale = d.stale,
                duplicate = d.duplicate,
                rejected = d.rejected,
                period_s = SUMMARY_PERIOD.as_secs(),
                "messages decided"
            );
        }
        last = now;
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
