//! Dead-letter queue tooling: inspect, replay, redrive and export. Replay goes through the
//! same [`Pipeline`] as the worker; this module has no apply path of its own.

use crate::aws::error_text;
use crate::event::{self, SubjectKey};
use crate::ledger::Outcome;
use crate::process::{Pipeline, Processed};
use crate::redrive::{
    Claim, RedriveKey, ORIGINAL_MESSAGE_ID_ATTRIBUTE, ORIGINAL_SENT_TIMESTAMP_ATTRIBUTE,
    SIGNATURE_ATTRIBUTE,
};
use crate::sqs::{delete_entries, visibility_entries, Received, SQS_MAX_BATCH};
use crate::store::Store;
use aws_sdk_sqs::types::{
    Message, MessageAttributeValue, MessageSystemAttributeName, QueueAttributeName,
    SendMessageBatchRequestEntry,
};
use aws_sdk_sqs::Client as SqsClient;
use serde::Serialize;
use std::collections::{BTreeMap, HashSet};
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};
use thiserror::Error;

/// How long messages stay hidden while a tool works through the queue, so one pass never sees
/// a message twice; they are made visible again when the tool is done with them.
const PASS_VISIBILITY: i32 = 120;

/// A dead-letter tool failed.
#[derive(Debug, Error)]
pub enum DlqError {
    /// An SQS call failed.
    #[error("SQS {op} failed: {detail}")]
    Sqs {
        /// The operation.
        op: &'static str,
        /// AWS's answer.
        detail: String,
    },
    /// The database failed.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// A redrive did not finish.
    #[error("message move task {status}: {detail}")]
    MoveTask {
        /// Final status.
        status: String,
        /// Why.
        detail: String,
    },
    /// The queue has no source queue to redrive to.
    #[error("no source queue names {0} as its dead-letter queue; pass --to")]
    NoSource(String),
    /// Output failed.
    #[error("cannot write output: {0}")]
    Write(#[from] std::io::Error),
    /// A batch entry could not be built (a bug, never skipped).
    #[error(transparent)]
    Entry(#[from] crate::sqs::EntryError),
    /// A dead letter lacks what moving it needs (a bug or an SQS change, never skipped).
    #[error("dead letter {message_id} cannot be moved: {why}")]
    Unmovable {
        /// The SQS message id.
        message_id: String,
        /// What is missing.
        why: &'static str,
    },
}

fn sqs<E: std::error::Error>(op: &'static str) -> impl FnOnce(E) -> DlqError {
    move |e| DlqError::Sqs {
        op,
        detail: error_text(&e),
    }
}

/// One received dead letter.
struct Letter {
    message: Message,
    received: Received,
}

impl Letter {
    fn receipt(&self) -> &str {
        self.message.receipt_handle().unwrap_or_default()
    }

    fn sqs_id(&self) -> &str {
        self.message.message_id().unwrap_or_default()
    }

    fn system(&self, name: MessageSystemAttributeName) -> Option<&str> {
        self.message
            .attributes()
            .and_then(|a| a.get(&name))
            .map(String::as_str)
    }
}

/// Receives every message of a queue once (up to `max`), hiding each for the pass.
async fn receive_pass(
    client: &SqsClient,
    queue_url: &str,
    max: usize,
    seen: &mut HashSet<String>,
    key: Option<&RedriveKey>,
) -> Result<Vec<Letter>, DlqError> {
    let mut out = Vec::new();
    let mut empty_receives = 0;
    while out.len() < max && empty_receives < 2 {
        let want = (max - out.len()).min(SQS_MAX_BATCH) as i32;
        let got = client
            .receive_message()
            .queue_url(queue_url)
            .max_number_of_messages(want)
            .visibility_timeout(PASS_VISIBILITY)
            .wait_time_seconds(1)
            .message_system_attribute_names(MessageSystemAttributeName::All)
            .message_attribute_names("All")
            .send()
            .await
            .map_err(sqs("ReceiveMessage"))?;
        let messages = got.messages.unwrap_or_default();
        let fresh: Vec<Message> = messages
            .into_iter()
            .filter(|m| seen.insert(m.message_id().unwrap_or_default().to_string()))
            .collect();
        if fresh.is_empty() {
            // SQS samples servers on each receive: one empty answer is not proof of an empty queue.
            empty_receives += 1;
            continue;
        }
        empty_receives = 0;
        out.extend(fresh.into_iter().map(|message| Letter {
            received: crate::sqs::received(&message, key),
            message,
        }));
    }
    Ok(out)
}

/// Makes messages visible again at once (the tool is done looking at them).
async fn release(client: &SqsClient, queue_url: &str, letters: &[&Letter]) -> Result<(), DlqError> {
    for chunk in letters.chunks(SQS_MAX_BATCH) {
        let entries = visibility_entries(chunk.iter().map(|l| l.receipt()), Duration::ZERO)?;
        let out = client
            .change_message_visibility_batch()
            .queue_url(queue_url)
            .set_entries(Some(entries))
            .send()
            .await
            .map_err(sqs("ChangeMessageVisibilityBatch"))?;
        for f in out.failed() {
            tracing::warn!(
                code = f.code(),
                "could not make a message visible again; it returns after its visibility timeout"
            );
        }
    }
    Ok(())
}

/// Deletes messages; returns how many could not be deleted.
async fn delete(
    client: &SqsClient,
    queue_url: &str,
    letters: &[&Letter],
) -> Result<usize, DlqError> {
    let mut failed = 0;
    for chunk in letters.chunks(SQS_MAX_BATCH) {
        let entries = delete_entries(chunk.iter().map(|l| l.receipt()))?;
        let out = client
            .delete_message_batch()
            .queue_url(queue_url)
            .set_entries(Some(entries))
            .send()
            .await
            .map_err(sqs("DeleteMessageBatch"))?;
        for f in out.failed() {
            failed += 1;
            tracing::error!(
                code = f.code(),
                reason = f.message().unwrap_or(""),
                "delete failed; the message stays in the queue"
            );
        }
    }
    Ok(failed)
}

/// Approximate number of visible messages in a queue.
pub async fn depth(client: &SqsClient, queue_url: &str) -> Result<u64, DlqError> {
    let out = client
        .get_queue_attributes()
        .queue_url(queue_url)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
        .send()
        .await
        .map_err(sqs("GetQueueAttributes"))?;
    Ok(out
        .attributes
        .and_then(|a| {
            a.get(&QueueAttributeName::ApproximateNumberOfMessages)
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0))
}

/// What `inspect` shows of one dead letter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Inspected {
    /// SQS message id (or the original one a portable redrive carried).
    pub message_id: String,
    /// ApproximateReceiveCount.
    pub receive_count: Option<u64>,
    /// ApproximateFirstReceiveTimestamp, RFC 3339.
    pub first_seen: Option<String>,
    /// Decoded action.
    pub action: Option<String>,
    /// Decoded product code.
    pub product_code: Option<String>,
    /// Decoded customer (identifier or account).
    pub customer: Option<String>,
    /// Subscription key.
    pub subscription: Option<String>,
    /// Why it does not decode.
    pub decode_error: Option<String>,
    /// The reason the event log gives for its last rejection.
    pub last_rejection: Option<String>,
}

/// A `SentTimestamp` attribute (epoch ms as text) as RFC 3339.
fn rfc3339(ms: &str) -> Option<String> {
    let ms = ms.parse::<i64>().ok()?;
    crate::time::rfc3339(ms, crate::time::Precision::Millis)
}

/// Lists up to `max` dead letters without consuming them: each is made visible again as soon
/// as it has been read.
pub async fn inspect(
    client: &SqsClient,
    store: &Store,
    queue_url: &str,
    max: usize,
) -> Result<Vec<Inspected>, DlqError> {
    let mut seen = HashSet::new();
    let letters = receive_pass(client, queue_url, max, &mut seen, None).await?;
    let refs: Vec<&Letter> = letters.iter().collect();
    release(client, queue_url, &refs).await?;
    let mut out = Vec::with_capacity(letters.len());
    for l in &letters {
        let decoded = event::decode(&l.received.inbound);
        let (action, product_code, customer, subscription, decode_error) = match &decoded {
            Ok(e) => (
                Some(e.action.name().to_string()),
                e.ids.product_code.clone(),
                match &e.subject {
                    SubjectKey::Customer {
                        customer_identifier,
                        ..
                    } => Some(customer_identifier.clone()),
                    SubjectKey::Agreement { .. } => e.ids.customer_aws_account_id.clone(),
                },
                Some(e.subject.as_key()),
                None,
            ),
            Err(err) => (None, None, None, None, Some(err.to_string())),
        };
        out.push(Inspected {
            message_id: l.received.inbound.message_id.clone(),
            receive_count: l
                .system(MessageSystemAttributeName::ApproximateReceiveCount)
                .and_then(|v| v.parse().ok()),
            first_seen: l
                .system(MessageSystemAttributeName::ApproximateFirstReceiveTimestamp)
                .and_then(rfc3339),
            action,
            product_code,
            customer,
            subscription,
            decode_error,
            last_rejection: store.last_rejection(l.sqs_id()).await?,
        });
    }
    Ok(out)
}

/// Options of a replay.
#[derive(Debug, Clone)]
pub struct ReplayOptions {
    /// Decide without changing anything (nothing applied, recorded or deleted).
    pub dry_run: bool,
    /// Stop after this many messages.
    pub max: usize,
    /// At most this many messages per second.
    pub rate: Option<f64>,
}

/// Totals of a replay.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct ReplaySummary {
    /// Messages looked at.
    pub seen: u64,
    /// Applied (deleted from the dead-letter queue).
    pub applied: u64,
    /// Already applied before (deleted).
    pub duplicate: u64,
    /// Older than the current state (deleted).
    pub stale: u64,
    /// Informational events kept as details (deleted).
    pub noted: u64,
    /// Unrecognised detail-types acknowledged (deleted).
    pub unrecognised: u64,
    /// Still failing, by reason (left in the dead-letter queue).
    pub still_failing: BTreeMap<String, u64>,
    /// Done but not deleted (they will be duplicates next time).
    pub delete_failures: u64,
}

impl ReplaySummary {
    /// One line for people.
    pub fn line(&self) -> String {
        let failing: u64 = self.still_failing.values().sum();
        let reasons: Vec<String> = self
            .still_failing
            .iter()
            .map(|(r, n)| format!("{r}: {n}"))
            .collect();
        format!(
            "seen {}, applied {}, duplicate {}, stale {}, noted {}, unrecognised {}, still failing {}{}",
            self.seen,
            self.applied,
            self.duplicate,
            self.stale,
            self.noted,
            self.unrecognised,
            failing,
            if reasons.is_empty() {
                String::new()
            } else {
                format!(" ({})", reasons.join(", "))
            }
        )
    }
}

/// Replays dead letters through `pipeline`: a message is deleted from the dead-letter queue
/// only once its effect is committed (or it is known as a duplicate or stale); the rest stay,
/// visible again, with their reasons in the event log.
pub async fn replay(
    client: &SqsClient,
    pipeline: &Pipeline,
    queue_url: &str,
    options: &ReplayOptions,
    progress: &mut Progress,
) -> Result<ReplaySummary, DlqError> {
    let pipeline = if options.dry_run {
        pipeline.clone().dry_run()
    } else {
        pipeline.clone()
    };
    let mut summary = ReplaySummary::default();
    let mut seen = HashSet::new();
    let total = depth(client, queue_url).await?.min(options.max as u64);
    progress.start(total);
    let started = Instant::now();
    // What stays is made visible again only at the end, so this pass never meets it twice.
    let mut left: Vec<Letter> = Vec::new();
    while (summary.seen as usize) < options.max {
        let want = (options.max - summary.seen as usize).min(SQS_MAX_BATCH);
        let key = pipeline.verifier.redrive_key();
        let letters = receive_pass(client, queue_url, want, &mut seen, key).await?;
        if letters.is_empty() {
            break;
        }
        let mut done: Vec<Letter> = Vec::new();
        for l in letters {
            if let Some(rate) = options.rate.filter(|r| *r > 0.0) {
                let due = started + Duration::from_secs_f64(summary.seen as f64 / rate);
                tokio::time::sleep_until(due.into()).await;
            }
            summary.seen += 1;
            match pipeline.process_received(&l.received).await {
                Processed::Done(outcome) => {
                    match outcome {
                        Outcome::Applied => summary.applied += 1,
                        Outcome::Duplicate => summary.duplicate += 1,
                        Outcome::Stale => summary.stale += 1,
                        Outcome::Noted => summary.noted += 1,
                        Outcome::Unrecognised => summary.unrecognised += 1,
                        Outcome::Rejected => {}
                    }
                    done.push(l);
                }
                Processed::Rejected { reason, .. } => {
                    *summary.still_failing.entry(reason.to_string()).or_default() += 1;
                    left.push(l);
                }
                Processed::Retry(e) => {
                    tracing::warn!(message_id = %l.received.inbound.message_id, error = %e, "transient failure; left in the queue");
                    *summary
                        .still_failing
                        .entry("transient".to_string())
                        .or_default() += 1;
                    left.push(l);
                }
            }
            progress.tick(summary.seen);
        }
        if options.dry_run {
            left.append(&mut done);
        } else {
            let refs: Vec<&Letter> = done.iter().collect();
            summary.delete_failures += delete(client, queue_url, &refs).await? as u64;
        }
    }
    let refs: Vec<&Letter> = left.iter().collect();
    release(client, queue_url, &refs).await?;
    progress.finish(summary.seen);
    Ok(summary)
}

/// Exports up to `max` dead letters as JSON lines that `mplink apply` reads back, without
/// consuming them.
pub async fn export(
    client: &SqsClient,
    queue_url: &str,
    max: usize,
    out: &mut dyn Write,
) -> Result<usize, DlqError> {
    let mut seen = HashSet::new();
    let letters = receive_pass(client, queue_url, max, &mut seen, None).await?;
    for l in &letters {
        let mut attributes = serde_json::Map::new();
        if let Some(attrs) = l.message.attributes() {
            for (k, v) in attrs {
                attributes.insert(k.as_str().to_string(), serde_json::Value::String(v.clone()));
            }
        }
        // An export keeps the identity and time the message had before any redrive.
        if let Some(sent) = l.received.inbound.sent_timestamp_ms {
            attributes.insert(
                "SentTimestamp".into(),
                serde_json::Value::String(sent.to_string()),
            );
        }
        let line = serde_json::json!({
            "MessageId": l.received.inbound.message_id,
            "Body": l.received.inbound.body,
            "Attributes": attributes,
        });
        writeln!(out, "{line}")?;
    }
    let refs: Vec<&Letter> = letters.iter().collect();
    release(client, queue_url, &refs).await?;
    Ok(letters.len())
}

/// The source queue that names `dlq_url` as its dead-letter queue.
pub async fn source_of(client: &SqsClient, dlq_url: &str) -> Result<String, DlqError> {
    let out = client
        .list_dead_letter_source_queues()
        .queue_url(dlq_url)
        .send()
        .await
        .map_err(sqs("ListDeadLetterSourceQueues"))?;
    out.queue_urls
        .into_iter()
        .next()
        .ok_or_else(|| DlqError::NoSource(dlq_url.to_string()))
}

async fn queue_arn(client: &SqsClient, url: &str) -> Result<String, DlqError> {
    let out = client
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .map_err(sqs("GetQueueAttributes"))?;
    out.attributes
        .and_then(|mut a| a.remove(&QueueAttributeName::QueueArn))
        .ok_or(DlqError::Sqs {
            op: "GetQueueAttributes",
            detail: "no QueueArn".into(),
        })
}

/// Moves every dead letter back with SQS's own StartMessageMoveTask (to `to`, or to the
/// original source queues), waiting for the task and reporting progress; returns how many moved.
pub async fn redrive_native(
    client: &SqsClient,
    dlq_url: &str,
    to: Option<&str>,
    progress: &mut Progress,
) -> Result<u64, DlqError> {
    let source_arn = queue_arn(client, dlq_url).await?;
    let destination_arn = match to {
        Some(url) => Some(queue_arn(client, url).await?),
        None => None,
    };
    let total = depth(client, dlq_url).await?;
    progress.start(total);
    client
        .start_message_move_task()
        .source_arn(&source_arn)
        .set_destination_arn(destination_arn)
        .send()
        .await
        .map_err(sqs("StartMessageMoveTask"))?;
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let tasks = client
            .list_message_move_tasks()
            .source_arn(&source_arn)
            .max_results(1)
            .send()
            .await
            .map_err(sqs("ListMessageMoveTasks"))?;
        let Some(task) = tasks.results().first() else {
            continue;
        };
        let moved = task.approximate_number_of_messages_moved() as u64;
        progress.tick(moved);
        match task.status().unwrap_or_default() {
            "RUNNING" | "CANCELLING" => continue,
            "COMPLETED" => {
                progress.finish(moved);
                return Ok(moved);
            }
            other => {
                return Err(DlqError::MoveTask {
                    status: other.to_string(),
                    detail: task
                        .failure_reason()
                        .unwrap_or("no reason given")
                        .to_string(),
                })
            }
        }
    }
}

/// Moves dead letters back by receive → send → delete, for emulators and queues without the
/// native move. The original message id and SentTimestamp travel as message attributes, so a
/// raw delivery keeps its identity and event time.
pub async fn redrive_portable(
    client: &SqsClient,
    dlq_url: &str,
    to: &str,
    key: &RedriveKey,
    progress: &mut Progress,
) -> Result<u64, DlqError> {
    let total = depth(client, dlq_url).await?;
    progress.start(total);
    let mut moved = 0u64;
    let mut seen = HashSet::new();
    loop {
        let letters = receive_pass(client, dlq_url, SQS_MAX_BATCH, &mut seen, Some(key)).await?;
        if letters.is_empty() {
            break;
        }
        let entries = letters
            .iter()
            .enumerate()
            .map(|(i, l)| portable_entry(i, l, key))
            .collect::<Result<Vec<SendMessageBatchRequestEntry>, DlqError>>()?;
        let out = client
            .send_message_batch()
            .queue_url(to)
            .set_entries(Some(entries))
            .send()
            .await
            .map_err(sqs("SendMessageBatch"))?;
        // Delete only what the source queue took; the rest stays in the dead-letter queue.
        let sent: Vec<&Letter> = out
            .successful()
            .iter()
            .filter_map(|s| s.id().parse::<usize>().ok().and_then(|i| letters.get(i)))
            .collect();
        let unsent: Vec<&Letter> = out
            .failed()
            .iter()
            .filter_map(|f| f.id().parse::<usize>().ok().and_then(|i| letters.get(i)))
            .collect();
        for f in out.failed() {
            tracing::error!(
                code = f.code(),
                reason = f.message().unwrap_or(""),
                "could not send a message back; it stays in the dead-letter queue"
            );
        }
        let failed_deletes = delete(client, dlq_url, &sent).await?;
        release(client, dlq_url, &unsent).await?;
        moved += (sent.len() - failed_deletes) as u64;
        progress.tick(moved);
    }
    progress.finish(moved);
    Ok(moved)
}

/// The message sent back for a dead letter: its body, and its original identity signed with
/// the redrive key (a letter whose own claim was not believed travels under its SQS identity).
fn portable_entry(
    index: usize,
    letter: &Letter,
    key: &RedriveKey,
) -> Result<SendMessageBatchRequestEntry, DlqError> {
    let inbound = &letter.received.inbound;
    let unmovable = |why| DlqError::Unmovable {
        message_id: letter.sqs_id().to_string(),
        why,
    };
    let claim = Claim {
        message_id: inbound.message_id.clone(),
        sent_timestamp_ms: inbound
            .sent_timestamp_ms
            .ok_or_else(|| unmovable("no SentTimestamp"))?,
    };
    let signature = key.sign(&claim, &inbound.body);
    let attribute = |value: &str| {
        MessageAttributeValue::builder()
            .data_type("String")
            .string_value(value)
            .build()
            .map_err(|_| unmovable("an attribute that does not build"))
    };
    SendMessageBatchRequestEntry::builder()
        .id(index.to_string())
        .message_body(&inbound.body)
        .message_attributes(ORIGINAL_MESSAGE_ID_ATTRIBUTE, attribute(&claim.message_id)?)
        .message_attributes(
            ORIGINAL_SENT_TIMESTAMP_ATTRIBUTE,
            attribute(&claim.sent_timestamp_ms.to_string())?,
        )
        .message_attributes(SIGNATURE_ATTRIBUTE, attribute(&signature)?)
        .build()
        .map_err(|_| unmovable("a send entry that does not build"))
}

/// Progress of a long operation on stderr: a live line on a terminal, plain lines otherwise.
pub struct Progress {
    label: &'static str,
    total: u64,
    started: Instant,
    last_line: Instant,
    terminal: bool,
    quiet: bool,
}

impl Progress {
    /// Progress for `label` ("replayed", "moved").
    pub fn new(label: &'static str) -> Progress {
        Progress {
            label,
            total: 0,
            started: Instant::now(),
            last_line: Instant::now(),
            terminal: std::io::stderr().is_terminal(),
            quiet: false,
        }
    }

    /// Progress that prints nothing (tests, JSON output).
    pub fn quiet(label: &'static str) -> Progress {
        Progress {
            quiet: true,
            ..Progress::new(label)
        }
    }

    fn start(&mut self, total: u64) {
        self.total = total;
        self.started = Instant::now();
    }

    fn render(&self, done: u64) -> String {
        let secs = self.started.elapsed().as_secs_f64().max(0.001);
        let rate = done as f64 / secs;
        let remaining = self.total.saturating_sub(done);
        let eta = if rate > 0.0 {
            format!("{:.0}s", remaining as f64 / rate)
        } else {
            "?".into()
        };
        format!(
            "{} {done}/{} ({rate:.1}/s, about {eta} left)",
            self.label,
            self.total.max(done)
        )
    }

    fn tick(&mut self, done: u64) {
        if self.quiet {
            return;
        }
        if self.terminal {
            eprint!("\r{}   ", self.render(done));
        } else if self.last_line.elapsed() >= Duration::from_secs(2) {
            eprintln!("{}", self.render(done));
            self.last_line = Instant::now();
        }
    }

    fn finish(&mut self, done: u64) {
        if self.quiet {
            return;
        }
        if self.terminal {
            eprintln!("\r{}   ", self.render(done));
        } else {
            eprintln!("{}", self.render(done));
        }
    }
}
