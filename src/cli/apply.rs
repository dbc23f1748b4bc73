//! `mplink apply`: SQS bodies or exported messages, a line each, through the worker's pipeline.

use super::{ApplyArgs, CliError};
use crate::event::{InboundMessage, SENT_TIMESTAMP_ATTRIBUTE};
use crate::ledger::Outcome;
use crate::process::Processed;
use crate::store::Store;
use std::io::BufRead;
use std::path::PathBuf;
use std::process::ExitCode;

/// Tallies of an `apply` run.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ApplySummary {
    /// Lines read (blank lines excluded).
    pub total: usize,
    /// Applied events.
    pub applied: usize,
    /// Stale events.
    pub stale: usize,
    /// Duplicate events.
    pub duplicate: usize,
    /// Rejected lines.
    pub rejected: usize,
    /// Informational events kept as details.
    pub noted: usize,
    /// Unrecognised detail-types acknowledged.
    pub unrecognised: usize,
}

impl ApplySummary {
    fn count(&mut self, outcome: Outcome) {
        match outcome {
            Outcome::Applied => self.applied += 1,
            Outcome::Stale => self.stale += 1,
            Outcome::Duplicate => self.duplicate += 1,
            Outcome::Rejected => self.rejected += 1,
            Outcome::Noted => self.noted += 1,
            Outcome::Unrecognised => self.unrecognised += 1,
        }
    }
}

pub(super) async fn apply(store: &Store, args: ApplyArgs) -> Result<ExitCode, CliError> {
    let read_err = |source| CliError::Read {
        path: args.file.clone(),
        source,
    };
    let reader: Box<dyn BufRead> = if args.file == "-" {
        Box::new(std::io::stdin().lock())
    } else {
        Box::new(std::io::BufReader::new(
            std::fs::File::open(PathBuf::from(&args.file)).map_err(read_err)?,
        ))
    };
    let pipeline = args.verify.pipeline(store)?;
    let mut summary = ApplySummary::default();
    let mut pending: Vec<(usize, InboundMessage)> = Vec::new();
    for (index, line) in reader.split(b'\n').enumerate() {
        let mut bytes = line.map_err(read_err)?;
        if bytes.last() == Some(&b'\r') {
            bytes.pop();
        }
        let line_no = index + 1;
        // One line that is not UTF-8 is one rejected line, not the end of the run.
        let line = match String::from_utf8(bytes) {
            Ok(line) => line,
            Err(e) => {
                let lossy = String::from_utf8_lossy(e.as_bytes()).into_owned();
                let msg = inbound_from_line(&lossy, line_no);
                let detail = format!("line {line_no} is not UTF-8: {}", e.utf8_error());
                summary.total += 1;
                match pipeline.refuse(&msg, "not_utf8", detail.clone()).await {
                    Processed::Retry(e) => return Err(CliError::Transient(e)),
                    _ => {
                        eprintln!("line {line_no}: rejected: {detail}");
                        summary.count(Outcome::Rejected);
                    }
                }
                continue;
            }
        };
        if line.trim().is_empty() {
            continue;
        }
        summary.total += 1;
        pending.push((line_no, inbound_from_line(&line, line_no)));
        if pending.len() >= args.batch_size as usize {
            flush(&pipeline, &mut pending, &mut summary).await?;
        }
    }
    flush(&pipeline, &mut pending, &mut summary).await?;
    println!(
        "applied {}, stale {}, duplicate {}, rejected {}, noted {}, unrecognised {}",
        summary.applied,
        summary.stale,
        summary.duplicate,
        summary.rejected,
        summary.noted,
        summary.unrecognised
    );
    if summary.rejected > 0 {
        return Err(CliError::Rejected {
            rejected: summary.rejected,
            total: summary.total,
        });
    }
    Ok(ExitCode::SUCCESS)
}

async fn flush(
    pipeline: &crate::process::Pipeline,
    pending: &mut Vec<(usize, InboundMessage)>,
    summary: &mut ApplySummary,
) -> Result<(), CliError> {
    if pending.is_empty() {
        return Ok(());
    }
    let msgs: Vec<InboundMessage> = pending.iter().map(|(_, m)| m.clone()).collect();
    for ((line, _), result) in pending.iter().zip(pipeline.process_batch(&msgs).await) {
        match result {
            Processed::Done(outcome) => summary.count(outcome),
            Processed::Rejected { detail, .. } => {
                eprintln!("line {line}: rejected: {detail}");
                summary.count(Outcome::Rejected);
            }
            Processed::Retry(e) => return Err(CliError::Transient(e)),
        }
    }
    pending.clear();
    Ok(())
}

/// Turns one input line into an SQS message: either an exported SQS message (with MessageId,
/// Body and Attributes) or a bare body, which gets a stand-in message id from its line number
/// and content.
pub fn inbound_from_line(line: &str, line_no: usize) -> InboundMessage {
    #[derive(serde::Deserialize)]
    struct Exported {
        #[serde(rename = "MessageId")]
        message_id: String,
        #[serde(rename = "Body")]
        body: String,
        #[serde(rename = "Attributes", default)]
        attributes: std::collections::HashMap<String, serde_json::Value>,
    }
    if let Ok(exported) = serde_json::from_str::<Exported>(line) {
        let sent = exported
            .attributes
            .get(SENT_TIMESTAMP_ATTRIBUTE)
            .and_then(|v| {
                v.as_str()
                    .and_then(|s| s.parse().ok())
                    .or_else(|| v.as_i64())
            });
        return InboundMessage {
            message_id: exported.message_id,
            body: exported.body,
            sent_timestamp_ms: sent,
        };
    }
    InboundMessage {
        message_id: format!("line-{line_no}"),
        body: line.to_string(),
        sent_timestamp_ms: None,
    }
}
