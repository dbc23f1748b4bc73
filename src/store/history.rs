//! One organization's history: every fact that decided what it sees — each event about its
//! subscriptions with its source, own time, arrival and decision; each link change with its
//! webhook delivery; each metering record with AWS's answer — in one timeline, oldest first.
//! What support reads to answer "why is this organization unlinked?" or "why was 14:00 not
//! billed?". Keyed lookups only: the link by organization, the subscriptions it reaches, the
//! event log and meter records by subscription, the outbox by organization.

use super::metering::{record_from, RECORD_COLUMNS};
use super::{q, Store, StoreError};
use sqlx::Row;
use std::collections::BTreeSet;

/// Most entries one history holds (the newest are kept).
pub const MAX_HISTORY: usize = 10_000;

/// One entry of a history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HistoryEntry {
    /// A delivery mplink decided on.
    Event {
        /// The event's own time, epoch ms (arrival for one that could not be read).
        time_ms: i64,
        /// When mplink decided on it.
        recorded_ms: i64,
        /// The delivery's id.
        message_id: String,
        /// `sns`, `eventbridge`, `raw` (an SQS message without an envelope) or `rejected`.
        source: &'static str,
        /// The action or detail-type.
        action: Option<String>,
        /// The subscription it named.
        sub_key: Option<String>,
        /// `applied`, `stale`, `duplicate`, `rejected`, ...
        outcome: String,
        /// Why, for a rejection.
        reason: Option<String>,
    },
    /// A change of what the organization sees, with its webhook delivery.
    LinkChange {
        /// The change's own time (the deciding event's), epoch ms.
        time_ms: i64,
        /// When it was committed.
        recorded_ms: i64,
        /// Its sequence in the feed.
        seq: i64,
        /// `link.linked`, `link.unlinked`, ...
        event_type: String,
        /// The subscription.
        sub_key: Option<String>,
        /// The link state before and after.
        state_before: Option<String>,
        /// After.
        state_after: Option<String>,
        /// What caused it (an event log message id, or the link request).
        cause: String,
        /// `pending`, `delivered` or `failed`.
        delivery: String,
        /// Webhook attempts.
        attempts: i64,
        /// When the webhook was delivered.
        delivered_ms: Option<i64>,
        /// The last delivery error.
        last_error: Option<String>,
    },
    /// An hour's metering record.
    MeterRecord(Box<super::MeterRecord>),
}

impl HistoryEntry {
    /// The time the timeline orders by: an event's or change's own time, a record's hour.
    pub fn time_ms(&self) -> i64 {
        match self {
            HistoryEntry::Event { time_ms, .. } | HistoryEntry::LinkChange { time_ms, .. } => {
                *time_ms
            }
            HistoryEntry::MeterRecord(r) => r.usage_hour,
        }
    }

    fn recorded_ms(&self) -> i64 {
        match self {
            HistoryEntry::Event { recorded_ms, .. }
            | HistoryEntry::LinkChange { recorded_ms, .. } => *recorded_ms,
            HistoryEntry::MeterRecord(r) => r.created_at,
        }
    }
}

/// Where a delivery came from, by the first bytes of its body.
fn source_of(message_id: &str, head: &str) -> &'static str {
    if message_id.starts_with("rejected:") {
        "rejected"
    } else if message_id.starts_with(crate::reconciled::RECONCILED_PREFIX) {
        "reconciled"
    } else if head.contains("\"detail-type\"") {
        "eventbridge"
    } else if head.contains("\"TopicArn\"") || head.contains("\"Type\"") {
        "sns"
    } else {
        "raw"
    }
}

impl Store {
    /// `org_id`'s history, oldest first (at most [`MAX_HISTORY`] entries, the newest).
    pub async fn org_history(&self, org_id: &str) -> Result<Vec<HistoryEntry>, StoreError> {
        let g = |op| move |e| StoreError::Query { op, source: e };
        // The subscriptions: those the link reaches now, and any it carried before (the feed
        // names each change's subscription).
        let mut subs: BTreeSet<String> = BTreeSet::new();
        if let Some((_, rows)) = self.org_link(org_id).await? {
            subs.extend(rows.subscriptions.iter().map(|s| s.key.clone()));
        }
        let changes = sqlx::query(
            "SELECT seq, event_type, sub_key, state_before, state_after, event_time, cause, \
             created_at, status, attempts, delivered_at, last_error FROM mplink_outbox \
             WHERE org_id = $1 ORDER BY seq",
        )
        .bind(org_id)
        .fetch_all(&self.pool)
        .await
        .map_err(q("reading an organization's link changes"))?;
        let mut entries = Vec::new();
        for row in &changes {
            let get = g("reading an organization's link changes");
            let sub_key: Option<String> = row.try_get("sub_key").map_err(get)?;
            subs.extend(sub_key.clone());
            entries.push(HistoryEntry::LinkChange {
                time_ms: row.try_get("event_time").map_err(get)?,
                recorded_ms: row.try_get("created_at").map_err(get)?,
                seq: row.try_get("seq").map_err(get)?,
                event_type: row.try_get("event_type").map_err(get)?,
                sub_key,
                state_before: row.try_get("state_before").map_err(get)?,
                state_after: row.try_get("state_after").map_err(get)?,
                cause: row.try_get("cause").map_err(get)?,
                delivery: row.try_get("status").map_err(get)?,
                attempts: row.try_get("attempts").map_err(get)?,
                delivered_ms: row.try_get("delivered_at").map_err(get)?,
                last_error: row.try_get("last_error").map_err(get)?,
            });
        }
        for sub in &subs {
            let events = sqlx::query(
                "SELECT message_id, action, sub_key, event_time, outcome, reason, recorded_at, \
                 SUBSTR(body, 1, 300) AS head FROM mplink_event_log WHERE sub_key = $1",
            )
            .bind(sub)
            .fetch_all(&self.pool)
            .await
            .map_err(q("reading a subscription's events"))?;
            for row in &events {
                let get = g("reading a subscription's events");
                let message_id: String = row.try_get("message_id").map_err(get)?;
                let head: String = row.try_get("head").map_err(get)?;
                let recorded_ms: i64 = row.try_get("recorded_at").map_err(get)?;
                let time: Option<i64> = row.try_get("event_time").map_err(get)?;
                entries.push(HistoryEntry::Event {
                    time_ms: time.unwrap_or(recorded_ms),
                    recorded_ms,
                    source: source_of(&message_id, &head),
                    message_id,
                    action: row.try_get("action").map_err(get)?,
                    sub_key: row.try_get("sub_key").map_err(get)?,
                    outcome: row.try_get("outcome").map_err(get)?,
                    reason: row.try_get("reason").map_err(get)?,
                });
            }
            let records = sqlx::query(&format!(
                "SELECT {RECORD_COLUMNS} FROM mplink_meter_records WHERE sub_key = $1"
            ))
            .bind(sub)
            .fetch_all(&self.pool)
            .await
            .map_err(q("reading a subscription's meter records"))?;
            for row in &records {
                entries.push(HistoryEntry::MeterRecord(Box::new(record_from(row)?)));
            }
        }
        entries.sort_by_key(|e| (e.time_ms(), e.recorded_ms()));
        if entries.len() > MAX_HISTORY {
            entries.drain(..entries.len() - MAX_HISTORY);
        }
        Ok(entries)
    }
}

#[cfg(test)]
mod tests {
    use super::source_of;

    #[test]
    fn the_source_is_read_from_the_body() {
        assert_eq!(
            source_of("m1", r#"{"version":"0","detail-type":"Purchase"#),
            "eventbridge"
        );
        assert_eq!(
            source_of("m2", r#"{"Type":"Notification","MessageId""#),
            "sns"
        );
        assert_eq!(source_of("m3", r#"{"action":"subscribe-success"}"#), "raw");
        assert_eq!(source_of("rejected:m4", "anything"), "rejected");
    }
}
