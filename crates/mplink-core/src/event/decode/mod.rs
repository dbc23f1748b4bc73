//! Decoding of SNS envelopes, raw marketplace JSON and EventBridge events: [`sns`] reads the
//! legacy path (an SNS envelope or a raw delivery), [`eventbridge`] the agreement events,
//! [`fields`] is the field access and error wording both share.
//!
//! Bodies are untrusted: every path here ends in an [`Event`] or a [`DecodeError`], never a panic.

mod eventbridge;
mod fields;
mod sns;
#[cfg(test)]
mod tests;

pub use eventbridge::handled_detail_types;

use super::{DecodeError, Event, InboundMessage, MAX_BODY_BYTES};
use eventbridge::eventbridge;
use fields::FieldReader;
use serde_json::{Map, Value};
use sns::{raw_delivery, sns_envelope};

pub(super) type Object = Map<String, Value>;

/// Decodes one SQS message into an [`Event`].
pub fn decode(msg: &InboundMessage) -> Result<Event, DecodeError> {
    let fields = FieldReader::new(&msg.message_id, "");
    if msg.body.len() > MAX_BODY_BYTES {
        return Err(DecodeError::TooLarge {
            message_id: msg.message_id.clone(),
            size: msg.body.len(),
            limit: MAX_BODY_BYTES,
        });
    }
    let root = fields.parse_object(&msg.body, "body")?;
    if root.contains_key("Type") {
        sns_envelope(msg, &root)
    } else if root.contains_key("detail-type") {
        eventbridge(msg, &root)
    } else if root.contains_key("action") {
        raw_delivery(msg, &root)
    } else {
        Err(DecodeError::UnknownShape {
            message_id: msg.message_id.clone(),
        })
    }
}
