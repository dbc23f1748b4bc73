//! The legacy path: an SNS envelope around the marketplace JSON, or that JSON delivered raw.

use super::fields::{echo, truncate, FieldReader};
use super::Object;
use serde_json::Value;

use crate::event::{
    Action, DecodeError, Delivery, Details, Event, Identifiers, InboundMessage, SubjectKey,
    ENTITLEMENT_UPDATED, SUBSCRIBE_FAIL, SUBSCRIBE_SUCCESS, UNSUBSCRIBE_PENDING,
    UNSUBSCRIBE_SUCCESS,
};

pub(super) fn sns_envelope(msg: &InboundMessage, envelope: &Object) -> Result<Event, DecodeError> {
    let fields = FieldReader::new(&msg.message_id, "");
    match envelope.get("Type") {
        Some(Value::String(kind)) if kind == "Notification" => {}
        other => {
            return Err(DecodeError::NotANotification {
                message_id: msg.message_id.clone(),
                kind: echo(other.unwrap_or(&Value::Null)),
            })
        }
    }
    let sns_message_id = fields.req_str(envelope, &["MessageId"])?;
    let topic_arn = fields.req_str(envelope, &["TopicArn"])?;
    let time_ms = fields.req_time_ms(envelope, &["Timestamp"])?;
    let message = fields.parse_object(fields.req_document(envelope, &["Message"])?, "Message")?;
    let (action, subject, ids, details) =
        marketplace(&FieldReader::new(&msg.message_id, "Message."), &message)?;
    Ok(Event {
        sqs_message_id: msg.message_id.clone(),
        event_id: sns_message_id.to_owned(),
        fact_key: format!("sns:{sns_message_id}"),
        time_ms,
        delivery: Delivery::SnsEnvelope,
        action,
        subject,
        ids,
        details,
        topic_arn: Some(topic_arn.to_owned()),
        source: None,
    })
}

pub(super) fn raw_delivery(msg: &InboundMessage, message: &Object) -> Result<Event, DecodeError> {
    // The bare marketplace JSON carries no time of its own; SQS's send time is the best we have.
    let time_ms = msg
        .sent_timestamp_ms
        .ok_or_else(|| DecodeError::MissingSentTimestamp {
            message_id: msg.message_id.clone(),
        })?;
    let (action, subject, ids, details) =
        marketplace(&FieldReader::new(&msg.message_id, ""), message)?;
    Ok(Event {
        sqs_message_id: msg.message_id.clone(),
        event_id: msg.message_id.clone(),
        fact_key: format!("raw:{}", msg.message_id),
        time_ms,
        delivery: Delivery::Raw,
        action,
        subject,
        ids,
        details,
        topic_arn: None,
        source: None,
    })
}

/// The legacy marketplace JSON, whether enveloped by SNS or delivered raw.
pub(super) fn marketplace(
    fields: &FieldReader,
    message: &Object,
) -> Result<(Action, SubjectKey, Identifiers, Details), DecodeError> {
    let action = match fields.req_str(message, &["action"])? {
        SUBSCRIBE_SUCCESS => Action::SubscribeSuccess,
        SUBSCRIBE_FAIL => Action::SubscribeFail,
        UNSUBSCRIBE_PENDING => Action::UnsubscribePending,
        UNSUBSCRIBE_SUCCESS => Action::UnsubscribeSuccess,
        ENTITLEMENT_UPDATED => Action::EntitlementUpdated,
        other => {
            return Err(DecodeError::UnknownAction {
                message_id: fields.message_id.to_owned(),
                action: truncate(other),
            })
        }
    };
    // Older documentation spells these keys in CamelCase; both spellings are still seen.
    let customer_identifier =
        fields.req_id_either(message, "customer-identifier", "CustomerIdentifier")?;
    let product_code = fields.req_id_either(message, "product-code", "ProductCode")?;
    let ids = Identifiers {
        product_code: Some(product_code.clone()),
        customer_identifier: Some(customer_identifier.clone()),
        offer_id: fields.opt_id(message, &["offer-identifier"])?,
        ..Identifiers::default()
    };
    let details = Details {
        free_trial: fields.opt_bool(message, &["isFreeTrialTermPresent"])?,
        ..Details::default()
    };
    let subject = SubjectKey::Customer {
        product_code,
        customer_identifier,
    };
    Ok((action, subject, ids, details))
}
