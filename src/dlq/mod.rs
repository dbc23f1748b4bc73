//! Dead-letter queue tooling: [`inspect`] and [`export`] read, [`replay`] applies through the
//! worker's own pipeline (no apply path of its own), [`redrive`] moves letters back. What they
//! share lives here: receiving a pass, releasing, deleting, progress.

mod inspect;
mod redrive;
mod replay;

pub use inspect::{export, inspect, Inspected};
pub use redrive::{redrive_native, redrive_portable, source_of};
pub use replay::{replay, ReplayOptions, ReplaySummary};

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
