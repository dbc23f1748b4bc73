//! The event log: what arrived and what was decided (applied, duplicate, rejected,
//! unrecognised), and the fault suite's measures over it.

use super::*;

impl Store {
    /// Records a message that was refused (undecodable, unverifiable) so the refusal can be
    /// audited. Recording the same SQS message again keeps the first record.
    pub async fn record_rejection(
        &self,
        msg: &InboundMessage,
        reason: &str,
    ) -> Result<(), StoreError> {
        let body_hash = sha256_hex(&msg.body);
        let id = format!("rejected:{}:{}", msg.message_id, &body_hash[..16]);
        self.record_undecoded(msg, &id, Outcome::Rejected, reason)
            .await
            .map_err(q("recording a rejection"))
    }

    /// Records an EventBridge event whose detail-type mplink does not know and acknowledges.
    /// Keyed by the event's own id (else the SQS message id), so a redelivery is recorded once.
    pub async fn record_unrecognised(
        &self,
        msg: &InboundMessage,
        event_id: Option<&str>,
        detail_type: &str,
    ) -> Result<(), StoreError> {
        let id = format!("unrecognised:{}", event_id.unwrap_or(&msg.message_id));
        let reason = format!("unrecognised detail-type {detail_type:?}");
        self.record_undecoded(msg, &id, Outcome::Unrecognised, &reason)
            .await
            .map_err(q("recording an unrecognised event"))
    }

    pub(super) async fn record_undecoded(
        &self,
        msg: &InboundMessage,
        log_id: &str,
        outcome: Outcome,
        reason: &str,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO mplink_event_log \
             (message_id, sqs_message_id, fact_key, sub_key, action, event_time, outcome, reason, body, body_sha256, body_bytes, recorded_at) \
             VALUES ($1, $2, NULL, NULL, NULL, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (message_id) DO NOTHING",
        )
        .bind(log_id)
        .bind(&msg.message_id)
        .bind(msg.sent_timestamp_ms)
        .bind(outcome.as_str())
        .bind(storable_text(reason, REJECTED_BODY_LIMIT))
        .bind(storable_text(&msg.body, REJECTED_BODY_LIMIT))
        .bind(sha256_hex(&msg.body))
        .bind(msg.body.len() as i64)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The reason the event log gives for the last rejection of an SQS message, if any.
    pub async fn last_rejection(&self, sqs_message_id: &str) -> Result<Option<String>, StoreError> {
        let reason: Option<Option<String>> = sqlx::query_scalar(
            "SELECT reason FROM mplink_event_log WHERE sqs_message_id = $1 AND outcome = 'rejected' \
             ORDER BY recorded_at DESC LIMIT 1",
        )
        .bind(sqs_message_id)
        .fetch_optional(&self.pool)
        .await
        .map_err(q("looking up a rejection"))?;
        Ok(reason.flatten())
    }

    /// The event log, oldest record first: (message id, outcome, reason).
    pub async fn event_log(&self) -> Result<Vec<LogEntry>, StoreError> {
        let found = sqlx::query(
            "SELECT message_id, sqs_message_id, action, event_time, outcome, reason, sub_key FROM mplink_event_log \
             ORDER BY recorded_at, message_id",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(q("reading the event log"))?;
        found
            .iter()
            .map(|r| {
                Ok(LogEntry {
                    message_id: r
                        .try_get("message_id")
                        .map_err(q("reading the event log"))?,
                    sqs_message_id: r
                        .try_get("sqs_message_id")
                        .map_err(q("reading the event log"))?,
                    action: r.try_get("action").map_err(q("reading the event log"))?,
                    event_time_ms: r
                        .try_get("event_time")
                        .map_err(q("reading the event log"))?,
                    outcome: r.try_get("outcome").map_err(q("reading the event log"))?,
                    reason: r.try_get("reason").map_err(q("reading the event log"))?,
                    sub_key: r.try_get("sub_key").map_err(q("reading the event log"))?,
                })
            })
            .collect()
    }
}

/// One record of the event log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    /// Delivery identity (or `rejected:…`).
    pub message_id: String,
    /// SQS message id it arrived in.
    pub sqs_message_id: Option<String>,
    /// Decoded action name, if decoded.
    pub action: Option<String>,
    /// Event time, epoch ms.
    pub event_time_ms: Option<i64>,
    /// applied / stale / duplicate / rejected.
    pub outcome: String,
    /// Why it was rejected.
    pub reason: Option<String>,
    /// Subscription it touched.
    pub sub_key: Option<String>,
}

/// At most `limit` bytes of `text` (on a character boundary), with NUL replaced: PostgreSQL
/// refuses it in text, and a rejected body may hold anything.
pub fn storable_text(text: &str, limit: usize) -> String {
    let mut end = text.len().min(limit);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].replace('\0', "\u{FFFD}")
}

impl Store {
    /// Facts applied more than once, by `mplink_transitions` (the fault suite's "double-applied").
    pub async fn double_applied_facts(&self) -> Result<u64, StoreError> {
        let n: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM (SELECT fact_key FROM mplink_transitions GROUP BY fact_key HAVING COUNT(*) > 1) twice",
        )
        .fetch_one(&self.pool)
        .await
        .map_err(q("counting double applications"))?;
        Ok(n as u64)
    }

    /// Outbox rows caused by events (not by links), and how many (cause, organization, type)
    /// groups hold more than one: a delivery notifies each organization of each change once,
    /// so the second figure is a measure of double application (the fault suite's).
    pub async fn notifications_by_event(&self) -> Result<(u64, u64), StoreError> {
        let rows: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM mplink_outbox WHERE cause NOT LIKE 'link:%'")
                .fetch_one(&self.pool)
                .await
                .map_err(q("counting notifications"))?;
        let repeated: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM (SELECT cause FROM mplink_outbox WHERE cause NOT LIKE 'link:%' \
             GROUP BY cause, org_id, event_type HAVING COUNT(*) > 1) twice",
        )
        .fetch_one(&self.pool)
        .await
        .map_err(q("counting repeated notifications"))?;
        Ok((rows as u64, repeated as u64))
    }
}

pub(super) fn sha256_hex(s: &str) -> String {
    use sha2::Digest;
    format!("{:x}", sha2::Sha256::digest(s.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storable_text_cuts_on_a_character_boundary_and_replaces_nul() {
        assert_eq!(storable_text("abc", 10), "abc");
        assert_eq!(storable_text("abcdef", 3), "abc");
        // "é" is two bytes: a limit inside it keeps the whole characters before it.
        assert_eq!(storable_text("aé", 2), "a");
        assert_eq!(storable_text("a\0b", 10), "a\u{FFFD}b");
        assert_eq!(storable_text("", 0), "");
    }

    #[test]
    fn hashes_are_lowercase_hex_sha256() {
        assert_eq!(
            sha256_hex("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
