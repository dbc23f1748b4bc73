//! The one path every message takes: decode → (verify) → apply → store. The SQS consumer, the
//! dead-letter replay and tests all call [`process`]; none has an apply path of its own.

use crate::event::{self, InboundMessage, SubjectKey};
use crate::ledger::Outcome;
use crate::metrics::Metrics;
use crate::store::{now_ms, Store, StoreError};
use std::time::Instant;
use tracing::Instrument;

/// What became of one message.
#[derive(Debug)]
pub enum Processed {
    /// Its effect is committed (applied, stale or duplicate): the message may be deleted.
    Done(Outcome),
    /// It will never apply (undecodable or refused); recorded in the event log with `reason`.
    /// The message must stay in the queue so the redrive policy takes it to the dead-letter queue.
    Rejected {
        /// Short stable code (metrics label).
        reason: &'static str,
        /// The full explanation.
        detail: String,
    },
    /// A transient failure (database unreachable, lock conflict): try again later.
    Retry(StoreError),
}

impl Processed {
    /// True when the message may be deleted from the queue.
    pub fn is_done(&self) -> bool {
        matches!(self, Processed::Done(_))
    }
}

/// Decodes, applies and records one message, counting the result in `metrics`.
pub async fn process(store: &Store, metrics: &Metrics, msg: &InboundMessage) -> Processed {
    let started = Instant::now();
    let span = tracing::info_span!(
        "message",
        message_id = %msg.message_id,
        action = tracing::field::Empty,
        product = tracing::field::Empty,
        customer = tracing::field::Empty,
        subscription = tracing::field::Empty,
    );
    let result = async {
        let event = match event::decode(msg) {
            Ok(event) => event,
            Err(e) => return reject(store, msg, e.reason(), e.to_string()).await,
        };
        let span = tracing::Span::current();
        span.record("action", event.action.name());
        span.record("subscription", event.subject.as_key().as_str());
        if let Some(product) = &event.ids.product_code {
            span.record("product", product.as_str());
        }
        match &event.subject {
            SubjectKey::Customer {
                customer_identifier,
                ..
            } => {
                span.record("customer", customer_identifier.as_str());
            }
            SubjectKey::Agreement { .. } => {
                if let Some(account) = &event.ids.customer_aws_account_id {
                    span.record("customer", account.as_str());
                }
            }
        }
        match store.apply(&event, &msg.body).await {
            Ok(outcome) => {
                let age = (now_ms() - event.time_ms).max(0) as f64 / 1000.0;
                metrics.event_age_seconds.observe(age);
                tracing::info!(
                    outcome = outcome.as_str(),
                    event_time_ms = event.time_ms,
                    "message decided"
                );
                Processed::Done(outcome)
            }
            Err(e) if e.is_transient() => Processed::Retry(e),
            // A database that refuses this message for good (a constraint, a corrupt row) must not
            // lose it: reject it so it lands in the dead-letter queue for an operator.
            Err(e) => reject(store, msg, "store_error", e.to_string()).await,
        }
    }
    .instrument(span)
    .await;
    match &result {
        Processed::Done(outcome) => {
            metrics.outcome(*outcome);
            metrics
                .apply_seconds
                .observe(started.elapsed().as_secs_f64());
        }
        Processed::Rejected { reason, .. } => {
            metrics.outcome(Outcome::Rejected);
            metrics.rejected.with_label_values(&[reason]).inc();
        }
        Processed::Retry(_) => metrics.database_errors.inc(),
    }
    result
}

async fn reject(
    store: &Store,
    msg: &InboundMessage,
    reason: &'static str,
    detail: String,
) -> Processed {
    // Only the reason and the message id at warn level: bodies stay in the event log, not in logs.
    tracing::warn!(reason, error = %detail, "message rejected");
    match store
        .record_rejection(msg, &format!("{reason}: {detail}"))
        .await
    {
        Ok(()) => Processed::Rejected { reason, detail },
        Err(e) if e.is_transient() => Processed::Retry(e),
        Err(e) => {
            tracing::error!(error = %e, "could not record a rejection");
            Processed::Rejected { reason, detail }
        }
    }
}
