//! Decoding of SNS envelopes, raw marketplace JSON and EventBridge events.
//!
//! Bodies are untrusted: every path here ends in an [`Event`] or a [`DecodeError`], never a panic.

use chrono::DateTime;
use serde_json::{Map, Value};

use super::{
    Action, DecodeError, Delivery, EndStatus, Event, Identifiers, InboundMessage, Intent, Party,
    SubjectKey, ENTITLEMENT_UPDATED, MAX_BODY_BYTES, SUBSCRIBE_FAIL, SUBSCRIBE_SUCCESS,
    UNSUBSCRIBE_PENDING, UNSUBSCRIBE_SUCCESS,
};

/// Errors end up in logs and the event log, so values copied from the body are capped.
const ECHO_LIMIT: usize = 100;

const AGREEMENT_ID: &[&str] = &["detail", "agreement", "id"];
const AGREEMENT_INTENT: &[&str] = &["detail", "agreement", "intent"];
const AGREEMENT_STATUS: &[&str] = &["detail", "agreement", "status"];
const PREVIOUS_AGREEMENT_ID: &[&str] = &["detail", "agreement", "previousAgreementId"];
const ACCEPTOR_ACCOUNT_ID: &[&str] = &["detail", "acceptor", "accountId"];
const OFFER_ID: &[&str] = &["detail", "offer", "id"];
const PRODUCT_CODE: &[&str] = &["detail", "product", "code"];
const LICENSE_ARN: &[&str] = &["detail", "license", "arn"];

type Object = Map<String, Value>;

/// Decodes one SQS message into an [`Event`].
pub fn decode(msg: &InboundMessage) -> Result<Event, DecodeError> {
    let cx = Cx::new(&msg.message_id, "");
    if msg.body.len() > MAX_BODY_BYTES {
        return Err(DecodeError::TooLarge {
            message_id: msg.message_id.clone(),
            size: msg.body.len(),
            limit: MAX_BODY_BYTES,
        });
    }
    let root = cx.parse_object(&msg.body, "body")?;
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

fn sns_envelope(msg: &InboundMessage, envelope: &Object) -> Result<Event, DecodeError> {
    let cx = Cx::new(&msg.message_id, "");
    match envelope.get("Type") {
        Some(Value::String(kind)) if kind == "Notification" => {}
        other => {
            return Err(DecodeError::NotANotification {
                message_id: msg.message_id.clone(),
                kind: echo(other.unwrap_or(&Value::Null)),
            })
        }
    }
    let sns_message_id = cx.req_str(envelope, &["MessageId"])?;
    let topic_arn = cx.req_str(envelope, &["TopicArn"])?;
    let time_ms = cx.req_time_ms(envelope, &["Timestamp"])?;
    let message = cx.parse_object(cx.req_document(envelope, &["Message"])?, "Message")?;
    let (action, subject, ids) = marketplace(&Cx::new(&msg.message_id, "Message."), &message)?;
    Ok(Event {
        sqs_message_id: msg.message_id.clone(),
        event_id: sns_message_id.to_owned(),
        fact_key: format!("sns:{sns_message_id}"),
        time_ms,
        delivery: Delivery::SnsEnvelope,
        action,
        subject,
        ids,
        topic_arn: Some(topic_arn.to_owned()),
        source: None,
    })
}

fn raw_delivery(msg: &InboundMessage, message: &Object) -> Result<Event, DecodeError> {
    // The bare marketplace JSON carries no time of its own; SQS's send time is the best we have.
    let time_ms = msg
        .sent_timestamp_ms
        .ok_or_else(|| DecodeError::MissingSentTimestamp {
            message_id: msg.message_id.clone(),
        })?;
    let (action, subject, ids) = marketplace(&Cx::new(&msg.message_id, ""), message)?;
    Ok(Event {
        sqs_message_id: msg.message_id.clone(),
        event_id: msg.message_id.clone(),
        fact_key: format!("raw:{}", msg.message_id),
        time_ms,
        delivery: Delivery::Raw,
        action,
        subject,
        ids,
        topic_arn: None,
        source: None,
    })
}

/// The legacy marketplace JSON, whether enveloped by SNS or delivered raw.
fn marketplace(
    cx: &Cx,
    message: &Object,
) -> Result<(Action, SubjectKey, Identifiers), DecodeError> {
    let action = match cx.req_str(message, &["action"])? {
        SUBSCRIBE_SUCCESS => Action::SubscribeSuccess,
        SUBSCRIBE_FAIL => Action::SubscribeFail,
        UNSUBSCRIBE_PENDING => Action::UnsubscribePending,
        UNSUBSCRIBE_SUCCESS => Action::UnsubscribeSuccess,
        ENTITLEMENT_UPDATED => Action::EntitlementUpdated,
        other => {
            return Err(DecodeError::UnknownAction {
                message_id: cx.message_id.to_owned(),
                action: truncate(other),
            })
        }
    };
    // Older documentation spells these keys in CamelCase; both spellings are still seen.
    let customer_identifier =
        cx.req_str_either(message, "customer-identifier", "CustomerIdentifier")?;
    let product_code = cx.req_str_either(message, "product-code", "ProductCode")?;
    let ids = Identifiers {
        product_code: Some(product_code.to_owned()),
        customer_identifier: Some(customer_identifier.to_owned()),
        offer_id: cx
            .opt_str(message, &["offer-identifier"])?
            .map(str::to_owned),
        ..Identifiers::default()
    };
    let subject = SubjectKey::Customer {
        product_code: product_code.to_owned(),
        customer_identifier: customer_identifier.to_owned(),
    };
    Ok((action, subject, ids))
}

/// What a `detail-type` announces.
#[derive(Clone, Copy)]
enum DetailType {
    Created(Party),
    Amended(Party),
    Ended(Party),
    LicenseUpdated,
    LicenseDeprovisioned,
}

fn detail_type(text: &str) -> Option<DetailType> {
    use DetailType::*;
    Some(match text {
        "Purchase Agreement Created - Proposer" => Created(Party::Proposer),
        "Purchase Agreement Created - Manufacturer" => Created(Party::Manufacturer),
        "Purchase Agreement Amended - Proposer" => Amended(Party::Proposer),
        "Purchase Agreement Amended - Manufacturer" => Amended(Party::Manufacturer),
        "Purchase Agreement Ended - Proposer" => Ended(Party::Proposer),
        "Purchase Agreement Ended - Manufacturer" => Ended(Party::Manufacturer),
        "License Updated - Manufacturer" => LicenseUpdated,
        "License Deprovisioned - Manufacturer" => LicenseDeprovisioned,
        _ => return None,
    })
}

fn eventbridge(msg: &InboundMessage, event: &Object) -> Result<Event, DecodeError> {
    let cx = Cx::new(&msg.message_id, "");
    let event_id = cx.req_str(event, &["id"])?;
    let detail_text = cx.req_str(event, &["detail-type"])?;
    let kind = detail_type(detail_text).ok_or_else(|| DecodeError::UnknownDetailType {
        message_id: msg.message_id.clone(),
        detail_type: truncate(detail_text),
    })?;
    let time_ms = cx.req_time_ms(event, &["time"])?;
    let source = cx.opt_str(event, &["source"])?;
    match event.get("detail") {
        Some(Value::Object(_)) => {}
        None | Some(Value::Null) => return Err(cx.missing(&["detail"])),
        Some(_) => return Err(cx.wrong_type(&["detail"], "object")),
    }
    let agreement_id = agreement_id(&cx, event)?;
    let mut ids = Identifiers {
        agreement_id: Some(agreement_id.to_owned()),
        customer_aws_account_id: cx.opt_str(event, ACCEPTOR_ACCOUNT_ID)?.map(str::to_owned),
        previous_agreement_id: cx.opt_str(event, PREVIOUS_AGREEMENT_ID)?.map(str::to_owned),
        offer_id: cx.opt_str(event, OFFER_ID)?.map(str::to_owned),
        ..Identifiers::default()
    };
    // The Proposer and Manufacturer copies of one fact have different event ids but the same
    // agreement, time and qualifier, so the fact key leaves the party out.
    let (action, fact_key) = match kind {
        DetailType::Created(party) => {
            let (intent, qual) = match cx.opt_str(event, AGREEMENT_INTENT)? {
                None | Some("NEW") => (Intent::New, "NEW"),
                Some("RENEW") => (Intent::Renew, "RENEW"),
                Some("REPLACE") => (Intent::Replace, "REPLACE"),
                Some(other) => return Err(cx.invalid(AGREEMENT_INTENT, other)),
            };
            let key = format!("eb:created:{agreement_id}:{time_ms}:{qual}");
            (Action::AgreementCreated { party, intent }, key)
        }
        DetailType::Amended(party) => {
            let key = format!("eb:amended:{agreement_id}:{time_ms}:AMEND");
            (Action::AgreementAmended { party }, key)
        }
        DetailType::Ended(party) => {
            let (status, qual) = match cx.req_str(event, AGREEMENT_STATUS)? {
                "CANCELLED" => (EndStatus::Cancelled, "CANCELLED"),
                "EXPIRED" => (EndStatus::Expired, "EXPIRED"),
                "TERMINATED" => (EndStatus::Terminated, "TERMINATED"),
                "RENEWED" => (EndStatus::Renewed, "RENEWED"),
                "REPLACED" => (EndStatus::Replaced, "REPLACED"),
                other => return Err(cx.invalid(AGREEMENT_STATUS, other)),
            };
            let key = format!("eb:ended:{agreement_id}:{time_ms}:{qual}");
            (Action::AgreementEnded { party, status }, key)
        }
        DetailType::LicenseUpdated | DetailType::LicenseDeprovisioned => {
            ids.product_code = Some(cx.req_str(event, PRODUCT_CODE)?.to_owned());
            ids.license_arn = Some(cx.req_str(event, LICENSE_ARN)?.to_owned());
            let (action, name) = match kind {
                DetailType::LicenseUpdated => (Action::LicenseUpdated, "license-updated"),
                _ => (Action::LicenseDeprovisioned, "license-deprovisioned"),
            };
            (action, format!("eb:{name}:{agreement_id}:{time_ms}"))
        }
    };
    Ok(Event {
        sqs_message_id: msg.message_id.clone(),
        event_id: event_id.to_owned(),
        fact_key,
        time_ms,
        delivery: Delivery::EventBridge,
        action,
        subject: SubjectKey::Agreement {
            agreement_id: agreement_id.to_owned(),
        },
        ids,
        topic_arn: None,
        source: source.map(str::to_owned),
    })
}

/// `detail.agreement.id`, or failing that the id at the end of the agreement ARN in `resources`.
fn agreement_id<'v>(cx: &Cx, event: &'v Object) -> Result<&'v str, DecodeError> {
    if let Some(id) = cx.opt_str(event, AGREEMENT_ID)? {
        return Ok(id);
    }
    let from_resources = match event.get("resources") {
        None | Some(Value::Null) => None,
        Some(Value::Array(resources)) => resources
            .iter()
            .filter_map(Value::as_str)
            .find(|arn| arn.contains(":agreement:"))
            .and_then(|arn| arn.rsplit("agreement:").next())
            .filter(|id| !id.is_empty()),
        Some(_) => return Err(cx.wrong_type(&["resources"], "array")),
    };
    from_resources.ok_or_else(|| cx.missing(AGREEMENT_ID))
}

/// Field access for one message; `prefix` names the enclosing field in error paths.
struct Cx<'a> {
    message_id: &'a str,
    prefix: &'static str,
}

impl<'a> Cx<'a> {
    fn new(message_id: &'a str, prefix: &'static str) -> Self {
        Cx { message_id, prefix }
    }

    fn field(&self, path: &[&str]) -> String {
        format!("{}{}", self.prefix, path.join("."))
    }

    fn missing(&self, path: &[&str]) -> DecodeError {
        DecodeError::MissingField {
            message_id: self.message_id.to_owned(),
            field: self.field(path),
        }
    }

    fn wrong_type(&self, path: &[&str], expected: &'static str) -> DecodeError {
        DecodeError::WrongType {
            message_id: self.message_id.to_owned(),
            field: self.field(path),
            expected,
        }
    }

    fn invalid(&self, path: &[&str], value: &str) -> DecodeError {
        DecodeError::InvalidValue {
            message_id: self.message_id.to_owned(),
            field: self.field(path),
            value: truncate(value),
        }
    }

    fn parse_object(&self, text: &str, field: &'static str) -> Result<Object, DecodeError> {
        let not_json = |detail: String| DecodeError::NotJson {
            message_id: self.message_id.to_owned(),
            field,
            detail,
        };
        match serde_json::from_str::<Value>(text) {
            Ok(Value::Object(object)) => Ok(object),
            Ok(other) => Err(not_json(format!("found {}", json_kind(&other)))),
            Err(e) => Err(not_json(e.to_string())),
        }
    }

    /// The value at `path`; `None` when it or any parent is absent or null.
    fn lookup<'v>(
        &self,
        root: &'v Object,
        path: &[&str],
    ) -> Result<Option<&'v Value>, DecodeError> {
        let mut object = root;
        for (depth, key) in path.iter().enumerate() {
            match object.get(*key) {
                None | Some(Value::Null) => return Ok(None),
                Some(value) if depth + 1 == path.len() => return Ok(Some(value)),
                Some(Value::Object(inner)) => object = inner,
                Some(_) => return Err(self.wrong_type(&path[..=depth], "object")),
            }
        }
        Ok(None)
    }

    /// An optional string; an empty string says no more than an absent one. Control characters
    /// are refused: no identifier or time contains one, and PostgreSQL refuses `\u0000` in
    /// text, which would fail every event in the same transaction.
    fn opt_str<'v>(&self, root: &'v Object, path: &[&str]) -> Result<Option<&'v str>, DecodeError> {
        match self.lookup(root, path)? {
            None => Ok(None),
            Some(Value::String(s)) if s.is_empty() => Ok(None),
            Some(Value::String(s)) if s.chars().any(char::is_control) => {
                Err(DecodeError::ControlCharacter {
                    message_id: self.message_id.to_owned(),
                    field: self.field(path),
                })
            }
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(self.wrong_type(path, "string")),
        }
    }

    /// A string that is itself a document (the SNS `Message`): newlines and tabs are its
    /// whitespace, but no other control character may hide in it.
    fn req_document<'v>(&self, root: &'v Object, path: &[&str]) -> Result<&'v str, DecodeError> {
        match self.lookup(root, path)? {
            Some(Value::String(s))
                if s.chars()
                    .any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t')) =>
            {
                Err(DecodeError::ControlCharacter {
                    message_id: self.message_id.to_owned(),
                    field: self.field(path),
                })
            }
            Some(Value::String(s)) if !s.is_empty() => Ok(s),
            Some(Value::String(_)) | None => Err(self.missing(path)),
            Some(_) => Err(self.wrong_type(path, "string")),
        }
    }

    fn req_str<'v>(&self, root: &'v Object, path: &[&str]) -> Result<&'v str, DecodeError> {
        self.opt_str(root, path)?.ok_or_else(|| self.missing(path))
    }

    /// A required top-level string under its current key or, failing that, its old one.
    fn req_str_either<'v>(
        &self,
        root: &'v Object,
        key: &str,
        old_key: &str,
    ) -> Result<&'v str, DecodeError> {
        match self.opt_str(root, &[key])? {
            Some(s) => Ok(s),
            None => self
                .opt_str(root, &[old_key])?
                .ok_or_else(|| self.missing(&[key])),
        }
    }

    fn req_time_ms(&self, root: &Object, path: &[&str]) -> Result<i64, DecodeError> {
        let text = self.req_str(root, path)?;
        rfc3339_ms(text).ok_or_else(|| self.invalid(path, text))
    }
}

fn rfc3339_ms(text: &str) -> Option<i64> {
    DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|t| t.timestamp_millis())
}

fn truncate(text: &str) -> String {
    text.chars().take(ECHO_LIMIT).collect()
}

fn echo(value: &Value) -> String {
    match value {
        Value::String(s) => truncate(s),
        other => truncate(&other.to_string()),
    }
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn object(value: Value) -> Object {
        match value {
            Value::Object(o) => o,
            _ => Map::new(),
        }
    }

    #[test]
    fn truncate_keeps_at_most_the_limit_on_a_char_boundary() {
        let long = "é".repeat(ECHO_LIMIT + 5);
        assert_eq!(truncate(&long).chars().count(), ECHO_LIMIT);
        assert_eq!(truncate("short"), "short");
    }

    #[test]
    fn rfc3339_keeps_milliseconds_and_offsets() {
        assert_eq!(
            rfc3339_ms("2026-08-30T21:36:03.123Z"),
            Some(1_788_125_763_123)
        );
        assert_eq!(
            rfc3339_ms("2026-08-30T23:36:03+02:00"),
            Some(1_788_125_763_000)
        );
        assert_eq!(rfc3339_ms("2026-08-30"), None);
        assert_eq!(
            rfc3339_ms("9999-01-01T00:00:00Z"),
            Some(253_370_764_800_000)
        );
    }

    #[test]
    fn lookup_treats_null_as_absent_and_names_a_non_object_parent() {
        let cx = Cx::new("m", "Message.");
        let root = object(json!({"detail": {"offer": null, "agreement": "agmt-1"}}));
        assert_eq!(cx.lookup(&root, OFFER_ID), Ok(None));
        assert_eq!(
            cx.lookup(&root, AGREEMENT_ID),
            Err(DecodeError::WrongType {
                message_id: "m".into(),
                field: "Message.detail.agreement".into(),
                expected: "object",
            })
        );
    }

    #[test]
    fn agreement_id_falls_back_to_the_first_agreement_resource() {
        let cx = Cx::new("m", "");
        let root = object(json!({"detail": {}, "resources": [
            7,
            "arn:aws:aws-marketplace::aws:offer:offer-1",
            "arn:aws:aws-marketplace::aws:agreement:agmt-123",
            "arn:aws:aws-marketplace::aws:agreement:agmt-456",
        ]}));
        assert_eq!(agreement_id(&cx, &root), Ok("agmt-123"));
        let empty_tail =
            object(json!({"detail": {}, "resources": ["arn:aws:aws-marketplace::aws:agreement:"]}));
        assert_eq!(
            agreement_id(&cx, &empty_tail),
            Err(cx.missing(AGREEMENT_ID))
        );
        let not_array = object(
            json!({"detail": {}, "resources": "arn:aws:aws-marketplace::aws:agreement:agmt-1"}),
        );
        assert_eq!(
            agreement_id(&cx, &not_array),
            Err(cx.wrong_type(&["resources"], "array"))
        );
    }

    #[test]
    fn every_documented_detail_type_is_known() {
        for text in [
            "Purchase Agreement Created - Proposer",
            "Purchase Agreement Created - Manufacturer",
            "Purchase Agreement Amended - Proposer",
            "Purchase Agreement Amended - Manufacturer",
            "Purchase Agreement Ended - Proposer",
            "Purchase Agreement Ended - Manufacturer",
            "License Updated - Manufacturer",
            "License Deprovisioned - Manufacturer",
        ] {
            assert!(detail_type(text).is_some(), "{text}");
        }
        assert!(detail_type("License Updated - Proposer").is_none());
        assert!(detail_type("Purchase Agreement Created").is_none());
    }
}
