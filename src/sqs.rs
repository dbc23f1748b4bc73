//! The one mapping from an SQS message to the pipeline's input, shared by the worker and the
//! dead-letter tools: which identity and send time a message has, and whether its redrive
//! attributes are believed.

use crate::event::InboundMessage;
use crate::redrive::{self, RedriveError, RedriveKey};
use aws_sdk_sqs::types::{Message, MessageSystemAttributeName};

/// SQS returns at most this many messages per ReceiveMessage, and takes at most this many
/// entries per batch call.
pub const SQS_MAX_BATCH: usize = 10;

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
