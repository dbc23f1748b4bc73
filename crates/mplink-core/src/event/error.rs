//! Why a message could not be decoded.

use thiserror::Error;

/// A message that is not a marketplace event we understand. Every variant names the message
/// and, where there is one, the field at fault.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DecodeError {
    /// The body is larger than [`super::MAX_BODY_BYTES`].
    #[error("message {message_id}: body is {size} bytes, more than the {limit} allowed")]
    TooLarge {
        /// SQS message id.
        message_id: String,
        /// Body size in bytes.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The body (or the SNS `Message` inside it) is not JSON, or not a JSON object.
    #[error("message {message_id}: {field} is not a JSON object: {detail}")]
    NotJson {
        /// SQS message id.
        message_id: String,
        /// `body` or `Message`.
        field: &'static str,
        /// The parser's complaint.
        detail: String,
    },
    /// The body is JSON but neither an SNS envelope, a marketplace message nor an EventBridge event.
    #[error("message {message_id}: unrecognised message shape (no Type, action or detail-type)")]
    UnknownShape {
        /// SQS message id.
        message_id: String,
    },
    /// A required field is absent (or null, or an empty string).
    #[error("message {message_id}: missing field {field}")]
    MissingField {
        /// SQS message id.
        message_id: String,
        /// JSON path of the field, e.g. `detail.agreement.id`.
        field: String,
    },
    /// A field has the wrong JSON type.
    #[error("message {message_id}: field {field} should be {expected}")]
    WrongType {
        /// SQS message id.
        message_id: String,
        /// JSON path of the field.
        field: String,
        /// What it should have been.
        expected: &'static str,
    },
    /// A field holds a value outside the documented set (an enum value, a malformed timestamp).
    #[error("message {message_id}: field {field} has invalid value {value:?}")]
    InvalidValue {
        /// SQS message id.
        message_id: String,
        /// JSON path of the field.
        field: String,
        /// The offending value, truncated.
        value: String,
    },
    /// A legacy `action` we do not know.
    #[error("message {message_id}: unknown action {action:?}")]
    UnknownAction {
        /// SQS message id.
        message_id: String,
        /// The action as sent, truncated.
        action: String,
    },
    /// An EventBridge `detail-type` we do not know (perhaps one AWS added since). Carries what
    /// the pipeline needs to acknowledge it as unrecognised instead of dead-lettering it.
    #[error("message {message_id}: unknown detail-type {detail_type:?}")]
    UnknownDetailType {
        /// SQS message id.
        message_id: String,
        /// The detail-type as sent, truncated.
        detail_type: String,
        /// The event's `id`, when it has one (truncated).
        event_id: Option<String>,
        /// The event's `source`, when it has one (truncated).
        event_source: Option<String>,
    },
    /// An SNS envelope whose `Type` is not `Notification`.
    #[error("message {message_id}: SNS envelope Type {kind:?} is not Notification")]
    NotANotification {
        /// SQS message id.
        message_id: String,
        /// The Type as sent, truncated.
        kind: String,
    },
    /// A text field holds a control character (`\u0000` and the like): no marketplace
    /// identifier has one, and the database would refuse it.
    #[error("message {message_id}: field {field} contains a control character")]
    ControlCharacter {
        /// SQS message id.
        message_id: String,
        /// JSON path of the field.
        field: String,
    },
    /// A raw (unenveloped) message without the SQS `SentTimestamp` to date it.
    #[error("message {message_id}: raw delivery needs the SQS SentTimestamp attribute to date the event")]
    MissingSentTimestamp {
        /// SQS message id.
        message_id: String,
    },
}

impl DecodeError {
    /// A short stable code for metrics labels and the event log.
    pub fn reason(&self) -> &'static str {
        match self {
            DecodeError::TooLarge { .. } => "too_large",
            DecodeError::NotJson { .. } => "not_json",
            DecodeError::UnknownShape { .. } => "unknown_shape",
            DecodeError::MissingField { .. } => "missing_field",
            DecodeError::WrongType { .. } => "wrong_type",
            DecodeError::InvalidValue { .. } => "invalid_value",
            DecodeError::UnknownAction { .. } => "unknown_action",
            DecodeError::UnknownDetailType { .. } => "unknown_detail_type",
            DecodeError::NotANotification { .. } => "not_a_notification",
            DecodeError::ControlCharacter { .. } => "control_character",
            DecodeError::MissingSentTimestamp { .. } => "missing_sent_timestamp",
        }
    }

    /// The SQS message id the error is about.
    pub fn message_id(&self) -> &str {
        match self {
            DecodeError::TooLarge { message_id, .. }
            | DecodeError::NotJson { message_id, .. }
            | DecodeError::UnknownShape { message_id }
            | DecodeError::MissingField { message_id, .. }
            | DecodeError::WrongType { message_id, .. }
            | DecodeError::InvalidValue { message_id, .. }
            | DecodeError::UnknownAction { message_id, .. }
            | DecodeError::UnknownDetailType { message_id, .. }
            | DecodeError::NotANotification { message_id, .. }
            | DecodeError::ControlCharacter { message_id, .. }
            | DecodeError::MissingSentTimestamp { message_id } => message_id,
        }
    }
}
