//! Reading dead letters without consuming them: a table for the operator, JSON lines for `apply`.

use super::*;

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sent_timestamp_reads_as_rfc3339_and_garbage_as_nothing() {
        assert_eq!(
            rfc3339("1788125763123").as_deref(),
            Some("2026-08-30T21:36:03.123Z")
        );
        assert_eq!(rfc3339("not a number"), None);
        assert_eq!(rfc3339(&i64::MAX.to_string()), None);
    }
}
