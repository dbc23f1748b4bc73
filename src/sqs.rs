//! The one mapping from an SQS message to the pipeline's input, shared by the worker and the
//! dead-letter tools: which identity and send time a message has, and whether its redrive
//! attributes are believed.

use crate::event::InboundMessage;
use crate::redrive::{self, RedriveError, RedriveKey};
use aws_sdk_sqs::types::{
    ChangeMessageVisibilityBatchRequestEntry, DeleteMessageBatchRequestEntry, Message,
    MessageSystemAttributeName,
};
use std::time::Duration;
use thiserror::Error;

/// SQS returns at most this many messages per ReceiveMessage, and takes at most this many
/// entries per batch call.
pub const SQS_MAX_BATCH: usize = 10;

/// The worker's ReceiveMessage: up to `max` messages, with the attributes the pipeline reads (the
/// send time, the receive count and the redrive attributes). The ceiling benchmark sends the same
/// request, so the queue does the same work for both.
pub fn receive_request(
    sqs: &aws_sdk_sqs::Client,
    queue_url: &str,
    max: usize,
    wait: Duration,
    visibility: Duration,
) -> aws_sdk_sqs::operation::receive_message::builders::ReceiveMessageFluentBuilder {
    sqs.receive_message()
        .queue_url(queue_url)
        .max_number_of_messages(max.clamp(1, SQS_MAX_BATCH) as i32)
        .wait_time_seconds(wait.as_secs() as i32)
        .visibility_timeout(visibility.as_secs() as i32)
        .message_system_attribute_names(MessageSystemAttributeName::SentTimestamp)
        .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
        .set_message_attribute_names(Some(redrive::ATTRIBUTES.map(String::from).to_vec()))
}

/// A batch entry the SDK would not build. Every entry gets an id and a receipt handle, so this
/// is a bug or an SDK change: the whole call is refused rather than one entry quietly left out
/// (a left-out delete returns as a duplicate, a left-out release waits out its visibility).
#[derive(Debug, Error)]
#[error("cannot build a {call} entry for receipt handle #{index}: {source}")]
pub struct EntryError {
    /// The batch call.
    pub call: &'static str,
    /// Position of the entry in the batch.
    pub index: usize,
    /// The SDK's reason.
    #[source]
    pub source: aws_sdk_sqs::error::BuildError,
}

/// DeleteMessageBatch entries for `receipts`, each with its position as id.
pub fn delete_entries<'a>(
    receipts: impl IntoIterator<Item = &'a str>,
) -> Result<Vec<DeleteMessageBatchRequestEntry>, EntryError> {
    receipts
        .into_iter()
        .enumerate()
        .map(|(index, receipt)| {
            DeleteMessageBatchRequestEntry::builder()
                .id(index.to_string())
                .receipt_handle(receipt)
                .build()
                .map_err(|source| EntryError {
                    call: "DeleteMessageBatch",
                    index,
                    source,
                })
        })
        .collect()
}

/// ChangeMessageVisibilityBatch entries setting `visibility` on `receipts`, each with its
/// position as id.
pub fn visibility_entries<'a>(
    receipts: impl IntoIterator<Item = &'a str>,
    visibility: Duration,
) -> Result<Vec<ChangeMessageVisibilityBatchRequestEntry>, EntryError> {
    let seconds = i32::try_from(visibility.as_secs()).unwrap_or(i32::MAX);
    receipts
        .into_iter()
        .enumerate()
        .map(|(index, receipt)| {
            ChangeMessageVisibilityBatchRequestEntry::builder()
                .id(index.to_string())
                .receipt_handle(receipt)
                .visibility_timeout(seconds)
                .build()
                .map_err(|source| EntryError {
                    call: "ChangeMessageVisibilityBatch",
                    index,
                    source,
                })
        })
        .collect()
}

/// The position a batch answer's entry id names, if it is one of the `len` sent.
pub fn entry_index(id: &str, len: usize) -> Option<usize> {
    id.parse::<usize>().ok().filter(|i| *i < len)
}

/// An SQS message as the pipeline sees it.
#[derive(Debug, Clone)]
pub struct Received {
    /// The message with the identity it is processed under: the original one a signed
    /// redrive claim names, else SQS's own.
    pub inbound: InboundMessage,
    /// Redrive attributes that are not believed: the message must be refused with this
    /// reason (under SQS's own identity) rather than processed.
    pub untrusted_claim: Option<RedriveError>,
}

/// Maps `message`, believing redrive attributes only when `key` signed them.
pub fn received(message: &Message, key: Option<&RedriveKey>) -> Received {
    let attribute = |name: &str| {
        message
            .message_attributes()
            .and_then(|a| a.get(name))
            .and_then(|v| v.string_value())
    };
    let body = message.body().unwrap_or_default();
    let own = InboundMessage {
        message_id: message.message_id().unwrap_or("unknown").to_string(),
        body: body.to_string(),
        sent_timestamp_ms: message
            .attributes()
            .and_then(|a| a.get(&MessageSystemAttributeName::SentTimestamp))
            .and_then(|s| s.parse().ok()),
    };
    match redrive::believe(
        key,
        attribute(redrive::ORIGINAL_MESSAGE_ID_ATTRIBUTE),
        attribute(redrive::ORIGINAL_SENT_TIMESTAMP_ATTRIBUTE),
        attribute(redrive::SIGNATURE_ATTRIBUTE),
        body,
    ) {
        Ok(None) => Received {
            inbound: own,
            untrusted_claim: None,
        },
        Ok(Some(claim)) => Received {
            inbound: InboundMessage {
                message_id: claim.message_id,
                sent_timestamp_ms: Some(claim.sent_timestamp_ms),
                ..own
            },
            untrusted_claim: None,
        },
        Err(e) => Received {
            inbound: own,
            untrusted_claim: Some(e),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_carry_their_position_and_receipt() {
        let entries = delete_entries(["a", "b"]).expect("entries");
        let ids: Vec<(&str, &str)> = entries
            .iter()
            .map(|e| (e.id(), e.receipt_handle()))
            .collect();
        assert_eq!(ids, [("0", "a"), ("1", "b")]);
        let entries = visibility_entries(["x"], Duration::from_secs(45)).expect("entries");
        assert_eq!(entries[0].visibility_timeout(), Some(45));
        assert_eq!(entry_index("1", 2), Some(1));
        assert_eq!(entry_index("2", 2), None);
        assert_eq!(entry_index("x", 2), None);
    }
}
