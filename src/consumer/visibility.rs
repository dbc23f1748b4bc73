//! What is in flight, keeping it hidden while it is worked on, and giving it back at shutdown.

use super::{Side, WorkerParts};
use crate::sqs::{entry_index, visibility_entries, SQS_MAX_BATCH};
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Longest wait for SQS to take back unfinished messages at shutdown.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(2);

/// A message being worked on: what the visibility heartbeat needs.
struct Tracked {
    message_id: String,
    visible_until: Instant,
}

/// Messages being worked on, by receipt handle: a message received twice (a redelivery while
/// the first copy is still held) is two entries, and finishing one never untracks the other.
#[derive(Clone, Default)]
pub(super) struct InFlight(Arc<Mutex<HashMap<String, Tracked>>>);

impl InFlight {
    pub(super) fn track(&self, message_id: &str, receipt: &str, visibility: Duration) {
        if let Ok(mut m) = self.0.lock() {
            m.insert(
                receipt.to_string(),
                Tracked {
                    message_id: message_id.to_string(),
                    visible_until: Instant::now() + visibility,
                },
            );
        }
    }

    pub(super) fn untrack<'a>(&self, receipts: impl IntoIterator<Item = &'a str>) {
        if let Ok(mut m) = self.0.lock() {
            for receipt in receipts {
                m.remove(receipt);
            }
        }
    }

    /// (message id, receipt handle) of those whose visibility ends within `margin`.
    fn due(&self, margin: Duration) -> Vec<(String, String)> {
        let now = Instant::now();
        match self.0.lock() {
            Ok(m) => m
                .iter()
                .filter(|(_, t)| t.visible_until.saturating_duration_since(now) < margin)
                .map(|(receipt, t)| (t.message_id.clone(), receipt.clone()))
                .collect(),
            Err(_) => Vec::new(),
        }
    }

    fn extended<'a>(&self, receipts: impl IntoIterator<Item = &'a str>, until: Instant) {
        if let Ok(mut m) = self.0.lock() {
            for receipt in receipts {
                if let Some(t) = m.get_mut(receipt) {
                    t.visible_until = until;
                }
            }
        }
    }
}

/// Makes unfinished messages, as (message id, receipt handle), visible again at once so another
/// replica can take them.
pub(super) async fn release(parts: &WorkerParts, messages: &[(&str, &str)]) {
    parts.in_flight.untrack(messages.iter().map(|(_, r)| *r));
    parts
        .released
        .fetch_add(messages.len() as u64, Ordering::Relaxed);
    for chunk in messages.chunks(SQS_MAX_BATCH) {
        let entries = match visibility_entries(chunk.iter().map(|(_, r)| *r), Duration::ZERO) {
            Ok(entries) => entries,
            Err(e) => {
                parts.metrics.visibility_failures.inc_by(chunk.len() as u64);
                tracing::error!(error = %e, "cannot release; the messages return when their visibility times out");
                continue;
            }
        };
        let request = parts
            .sqs
            .change_message_visibility_batch()
            .queue_url(&parts.config.queue_url)
            .set_entries(Some(entries))
            .send();
        // Releasing is a courtesy to other replicas; it must not hold up a shutdown.
        match tokio::time::timeout(RELEASE_TIMEOUT, request).await {
            Ok(Ok(out)) => {
                let failed: Vec<usize> = out
                    .failed()
                    .iter()
                    .filter_map(|f| entry_index(f.id(), chunk.len()))
                    .collect();
                for (i, (message_id, _)) in chunk.iter().enumerate() {
                    if failed.contains(&i) {
                        parts.metrics.visibility_failures.inc();
                        tracing::warn!(
                            message_id,
                            "could not release message; it returns when its visibility times out"
                        );
                    } else {
                        tracing::info!(message_id, "released unfinished message to the queue");
                    }
                }
            }
            Err(_) => {
                parts.metrics.visibility_failures.inc_by(chunk.len() as u64);
                tracing::warn!(
                    count = chunk.len(),
                    "releasing timed out; the messages return when their visibility times out"
                );
            }
            Ok(Err(e)) => {
                parts.metrics.visibility_failures.inc_by(chunk.len() as u64);
                tracing::warn!(count = chunk.len(), error = %aws_sdk_sqs::error::DisplayErrorContext(&e), "could not release messages; they return when their visibility times out");
            }
        }
    }
}

/// Renews the visibility of every message still worked on or waiting for its delete.
pub(super) async fn heartbeat_loop(side: Side, stop: CancellationToken) {
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
        let due = in_flight.due(visibility / 2);
        for chunk in due.chunks(SQS_MAX_BATCH) {
            let entries =
                match visibility_entries(chunk.iter().map(|(_, r)| r.as_str()), visibility) {
                    Ok(entries) => entries,
                    Err(e) => {
                        metrics.visibility_failures.inc_by(chunk.len() as u64);
                        tracing::error!(error = %e, "cannot extend visibility");
                        continue;
                    }
                };
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
                        .filter_map(|f| entry_index(f.id(), chunk.len()))
                        .collect();
                    for f in out.failed() {
                        metrics.visibility_failures.inc();
                        tracing::warn!(
                            code = f.code(),
                            reason = f.message().unwrap_or(""),
                            "visibility extension refused"
                        );
                    }
                    in_flight.extended(
                        chunk
                            .iter()
                            .enumerate()
                            .filter(|(i, _)| !failed.contains(i))
                            .map(|(_, (_, receipt))| receipt.as_str()),
                        extended_at + visibility,
                    );
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
