//! Replaying dead letters through the worker's pipeline; a letter leaves the queue only once
//! its effect is committed.

use super::*;

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_line_names_every_count_and_each_failing_reason() {
        let mut summary = ReplaySummary {
            seen: 7,
            applied: 2,
            duplicate: 1,
            stale: 1,
            noted: 0,
            unrecognised: 0,
            ..ReplaySummary::default()
        };
        assert_eq!(
            summary.line(),
            "seen 7, applied 2, duplicate 1, stale 1, noted 0, unrecognised 0, still failing 0"
        );
        summary.still_failing.insert("bad_signature".into(), 2);
        summary.still_failing.insert("decode_error".into(), 1);
        assert_eq!(
            summary.line(),
            "seen 7, applied 2, duplicate 1, stale 1, noted 0, unrecognised 0, still failing 3 \
             (bad_signature: 2, decode_error: 1)"
        );
    }
}
