//! The one path every message takes: decode → verify → apply → store. The SQS consumer, the
//! dead-letter tools and `mplink apply` all go through a [`Pipeline`]; none has an apply path
//! of its own.

use crate::event::{self, DecodeError, Event, InboundMessage, SubjectKey};
use crate::ledger::Outcome;
use crate::metrics::Metrics;
use crate::store::{Incoming, Store, StoreError};
use crate::time::now_ms;
use crate::verify::Verifier;
use futures_util::StreamExt;
use std::borrow::Borrow;
use std::sync::Arc;
use std::time::Instant;
use thiserror::Error;
use tracing::Instrument;

/// Members of a batch applied at once when the batch goes again one by one: enough that a
/// member waiting for a held row leaves the others room, few enough to leave the pool's
/// connections to the other receives.
const APPLY_ALONE_CONCURRENCY: usize = 4;

/// What became of one message.
#[derive(Debug)]
pub enum Processed {
    /// Its effect is committed (applied, stale or duplicate): the message may be deleted.
    Done(Outcome),
    /// It does not apply (undecodable, untrusted, or its certificate cannot be fetched now);
    /// recorded in the event log with `reason`. The message must stay in the queue: it is tried
    /// again after its visibility timeout, and the redrive policy takes it to the dead-letter
    /// queue after `maxReceiveCount` receives.
    Rejected {
        /// Short stable code (metrics label).
        reason: &'static str,
        /// The full explanation.
        detail: String,
    },
    /// A transient failure: try again later; nothing was committed.
    Retry(Transient),
}

/// A failure that may go away by itself while the message is held.
#[derive(Debug, Error)]
pub enum Transient {
    /// The database is unreachable or the transaction conflicted (shared by a failed batch).
    #[error(transparent)]
    Store(Arc<StoreError>),
}

/// What to do with an EventBridge event from an accepted source whose detail-type mplink does
/// not know (one AWS added since this version was built).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum UnrecognisedPolicy {
    /// Record it as `unrecognised`, count it by name, log it and delete it: AWS adds
    /// informational events over time, and none of them should page anyone.
    #[default]
    Acknowledge,
    /// Reject it like any undecodable message, so the redrive policy dead-letters it.
    DeadLetter,
}

/// Decode, verify, apply and record, with the metrics that count it.
#[derive(Clone)]
pub struct Pipeline {
    /// Where decisions are recorded.
    pub store: Store,
    /// Who decides what to trust.
    pub verifier: Arc<Verifier>,
    /// What counts it.
    pub metrics: Arc<Metrics>,
    /// Decide but change nothing: no rejection recorded, the apply rolled back.
    pub dry_run: bool,
    /// Unknown detail-types from an accepted source: acknowledge or dead-letter.
    pub unrecognised: UnrecognisedPolicy,
}

/// A message that passed decoding and verification, ready to apply.
struct Accepted {
    event: Event,
    span: tracing::Span,
    /// When SQS took the message (its `SentTimestamp`), for the debug line's latency.
    sent_timestamp_ms: Option<i64>,
}

impl Pipeline {
    /// A pipeline over these parts.
    pub fn new(store: Store, verifier: Arc<Verifier>, metrics: Arc<Metrics>) -> Pipeline {
        Pipeline {
            store,
            verifier,
            metrics,
            dry_run: false,
            unrecognised: UnrecognisedPolicy::default(),
        }
    }

    /// The same pipeline, treating unknown detail-types as `policy` says.
    pub fn unrecognised_detail_types(mut self, policy: UnrecognisedPolicy) -> Pipeline {
        self.unrecognised = policy;
        self
    }

    /// The same pipeline, deciding without changing anything.
    pub fn dry_run(mut self) -> Pipeline {
        self.dry_run = true;
        self
    }

    /// Processes one message in its own transaction.
    pub async fn process(&self, msg: &InboundMessage) -> Processed {
        self.process_batch(std::slice::from_ref(msg))
            .await
            .pop()
            .unwrap_or_else(|| Processed::Rejected {
                reason: "internal",
                detail: "empty batch result".into(),
            })
    }

    /// Processes several messages, applying the accepted ones in one transaction; results are
    /// in input order.
    pub async fn process_batch<M: Borrow<InboundMessage>>(&self, msgs: &[M]) -> Vec<Processed> {
        let started = Instant::now();
        let msgs: Vec<&InboundMessage> = msgs.iter().map(Borrow::borrow).collect();
        let mut results: Vec<Option<Processed>> = Vec::with_capacity(msgs.len());
        let mut accepted: Vec<(usize, Accepted)> = Vec::new();
        for (i, msg) in msgs.iter().enumerate() {
            match self.accept(msg).await {
                Ok(a) => {
                    accepted.push((i, a));
                    results.push(None);
                }
                Err(done) => results.push(Some(done)),
            }
        }
        if !accepted.is_empty() {
            let batch: Vec<Incoming<'_>> = accepted
                .iter()
                .map(|(i, a)| Incoming {
                    event: &a.event,
                    body: &msgs[*i].body,
                })
                .collect();
            let decided = if self.dry_run {
                self.store.preview_batch(&batch).await
            } else {
                self.store.apply_batch(&batch).await
            };
            match decided {
                Ok(outcomes) => {
                    if !self.dry_run {
                        crate::failpoint::committed(outcomes.len());
                    }
                    for ((i, a), outcome) in accepted.iter().zip(outcomes) {
                        self.decided(a, outcome);
                        results[*i] = Some(Processed::Done(outcome));
                    }
                }
                Err(e) if e.is_transient() => {
                    let e = Arc::new(e);
                    for (i, _) in &accepted {
                        results[*i] = Some(Processed::Retry(Transient::Store(e.clone())));
                    }
                }
                // A database that refuses a batch for good (a constraint, a corrupt row) may be
                // refusing one member: each goes again alone, so only that one is rejected
                // (and lands in the dead-letter queue for an operator).
                // A member whose row another transaction holds timed the batch out: the others
                // must not wait with it. Alone, concurrently, each waits only for its own row.
                Err(e) if accepted.len() > 1 => {
                    if matches!(e, StoreError::BatchMemberLocked { .. }) {
                        tracing::info!(error = %e, size = accepted.len(), "batch member locked; applying the members one by one");
                    } else {
                        tracing::warn!(error = %e, size = accepted.len(), "batch refused; applying its members one by one");
                    }
                    let mut alone =
                        futures_util::stream::iter(accepted.into_iter().map(|(i, a)| {
                            let msg = msgs[i];
                            async move { (i, self.apply_alone(msg, a).await) }
                        }))
                        .buffer_unordered(APPLY_ALONE_CONCURRENCY);
                    while let Some((i, processed)) = alone.next().await {
                        results[i] = Some(processed);
                    }
                }
                Err(e) => {
                    for (i, a) in &accepted {
                        let r = self
                            .reject(msgs[*i], &a.span, "store_error", e.to_string())
                            .await;
                        results[*i] = Some(r);
                    }
                }
            }
        }
        let elapsed = started.elapsed().as_secs_f64();
        results
            .into_iter()
            .map(|r| {
                let r = r.unwrap_or(Processed::Rejected {
                    reason: "internal",
                    detail: "no result".into(),
                });
                self.count(&r, elapsed);
                r
            })
            .collect()
    }

    /// One accepted message in a transaction of its own, after its batch was refused.
    async fn apply_alone(&self, msg: &InboundMessage, accepted: Accepted) -> Processed {
        let incoming = [Incoming {
            event: &accepted.event,
            body: &msg.body,
        }];
        let decided = if self.dry_run {
            self.store.preview_batch(&incoming).await
        } else {
            self.store.apply_batch(&incoming).await
        };
        match decided {
            Ok(outcomes) => {
                let outcome = outcomes.first().copied().unwrap_or(Outcome::Duplicate);
                self.decided(&accepted, outcome);
                Processed::Done(outcome)
            }
            Err(e) if e.is_transient() => Processed::Retry(Transient::Store(Arc::new(e))),
            Err(e) => {
                self.reject(msg, &accepted.span, "store_error", e.to_string())
                    .await
            }
        }
    }

    fn decided(&self, accepted: &Accepted, outcome: Outcome) {
        let age = (now_ms() - accepted.event.time_ms).max(0) as f64 / 1000.0;
        self.metrics.event_age_seconds.observe(age);
        // Debug only: the event log records every decision, and at info this line cost a fifth
        // of the worker's CPU; the worker logs a periodic summary instead. Written after the
        // commit, with SQS's send time: the worker's own part of an event's latency
        // (scripts/bench/worker.sh reads it).
        accepted.span.in_scope(|| {
            tracing::debug!(
                outcome = outcome.as_str(),
                event_id = accepted.event.event_id.as_str(),
                event_time_ms = accepted.event.time_ms,
                sqs_sent_ms = accepted.sent_timestamp_ms,
                "message decided"
            )
        });
    }

    /// Processes an SQS message as mapped by [`crate::sqs::received`]: refused outright when
    /// its redrive attributes are not believed.
    pub async fn process_received(&self, received: &crate::sqs::Received) -> Processed {
        match &received.untrusted_claim {
            Some(e) => {
                self.refuse(&received.inbound, e.reason(), e.to_string())
                    .await
            }
            None => self.process(&received.inbound).await,
        }
    }

    /// Processes SQS messages as mapped by [`crate::sqs::received`], the believed ones applied
    /// in one transaction; results are in input order.
    pub async fn process_received_batch(
        &self,
        received: &[&crate::sqs::Received],
    ) -> Vec<Processed> {
        let believed: Vec<&InboundMessage> = received
            .iter()
            .filter(|r| r.untrusted_claim.is_none())
            .map(|r| &r.inbound)
            .collect();
        let mut applied = self.process_batch(&believed).await.into_iter();
        let mut results = Vec::with_capacity(received.len());
        for r in received {
            let result = match &r.untrusted_claim {
                Some(e) => self.refuse(&r.inbound, e.reason(), e.to_string()).await,
                None => applied.next().unwrap_or(Processed::Rejected {
                    reason: "internal",
                    detail: "no result".into(),
                }),
            };
            results.push(result);
        }
        results
    }

    /// Refuses a message before it is decoded (its redrive attributes are not believed): recorded
    /// and counted like any rejection.
    pub async fn refuse(
        &self,
        msg: &InboundMessage,
        reason: &'static str,
        detail: String,
    ) -> Processed {
        let span = tracing::info_span!("message", message_id = %msg.message_id);
        let result = self.reject(msg, &span, reason, detail).await;
        self.count(&result, 0.0);
        result
    }

    /// Decodes and verifies; `Err` carries the final result of a message that goes no further.
    async fn accept(&self, msg: &InboundMessage) -> Result<Accepted, Processed> {
        let span = tracing::info_span!(
            "message",
            message_id = %msg.message_id,
            action = tracing::field::Empty,
            product = tracing::field::Empty,
            customer = tracing::field::Empty,
            subscription = tracing::field::Empty,
        );
        let event = match event::decode(msg) {
            Ok(event) => event,
            Err(DecodeError::UnknownDetailType {
                detail_type,
                event_id,
                event_source,
                ..
            }) if self.unrecognised == UnrecognisedPolicy::Acknowledge
                && self.verifier.accepts_source(event_source.as_deref()) =>
            {
                return Err(self
                    .acknowledge(msg, &span, &detail_type, event_id.as_deref())
                    .await)
            }
            Err(e) => return Err(self.reject(msg, &span, e.reason(), e.to_string()).await),
        };
        match self
            .verifier
            .verify(msg, &event)
            .instrument(span.clone())
            .await
        {
            // Only a trusted message's values reach the log.
            Ok(()) => {
                record_event_fields(&span, &event);
                Ok(Accepted {
                    event,
                    span,
                    sent_timestamp_ms: msg.sent_timestamp_ms,
                })
            }
            // A certificate that cannot be fetched now is not retried while the message is
            // held: it returns after its visibility timeout, so its receive count advances and
            // an unfetchable certificate ends in the dead-letter queue, not in a stalled worker.
            Err(e) => Err(self.reject(msg, &span, e.reason(), e.to_string()).await),
        }
    }

    /// Records, counts and logs an unrecognised detail-type; the message may then be deleted.
    async fn acknowledge(
        &self,
        msg: &InboundMessage,
        span: &tracing::Span,
        detail_type: &str,
        event_id: Option<&str>,
    ) -> Processed {
        // The name is the sender's text: no control character reaches a log line.
        let detail_type: String = detail_type.chars().filter(|c| !c.is_control()).collect();
        span.in_scope(|| tracing::warn!(%detail_type, "unrecognised detail-type acknowledged"));
        if self.dry_run {
            return Processed::Done(Outcome::Unrecognised);
        }
        match self
            .store
            .record_unrecognised(msg, event_id, &detail_type)
            .await
        {
            Ok(()) => {
                self.metrics.unrecognised(&detail_type);
                Processed::Done(Outcome::Unrecognised)
            }
            Err(e) if e.is_transient() => Processed::Retry(Transient::Store(Arc::new(e))),
            Err(e) => self.reject(msg, span, "store_error", e.to_string()).await,
        }
    }

    async fn reject(
        &self,
        msg: &InboundMessage,
        span: &tracing::Span,
        reason: &'static str,
        detail: String,
    ) -> Processed {
        // The reason and message id only: bodies stay in the event log, never in logs.
        span.in_scope(|| tracing::warn!(reason, error = %detail, "message rejected"));
        if self.dry_run {
            return Processed::Rejected { reason, detail };
        }
        match self
            .store
            .record_rejection(msg, &format!("{reason}: {detail}"))
            .await
        {
            Ok(()) => Processed::Rejected { reason, detail },
            Err(e) if e.is_transient() => Processed::Retry(Transient::Store(Arc::new(e))),
            Err(e) => {
                span.in_scope(|| tracing::error!(error = %e, "could not record a rejection"));
                Processed::Rejected { reason, detail }
            }
        }
    }

    fn count(&self, result: &Processed, elapsed_s: f64) {
        match result {
            Processed::Done(outcome) => {
                self.metrics.outcome(*outcome);
                self.metrics.apply_seconds.observe(elapsed_s);
            }
            Processed::Rejected { reason, .. } => {
                self.metrics.outcome(Outcome::Rejected);
                self.metrics.rejected.with_label_values(&[reason]).inc();
            }
            Processed::Retry(Transient::Store(_)) => self.metrics.database_errors.inc(),
        }
    }
}

fn record_event_fields(span: &tracing::Span, event: &Event) {
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
}
