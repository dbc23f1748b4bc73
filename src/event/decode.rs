//! Decoding of SNS envelopes, raw marketplace JSON and EventBridge events.
//!
//! Bodies are untrusted: every path here ends in an [`Event`] or a [`DecodeError`], never a panic.

use chrono::DateTime;
use serde_json::{Map, Value};

use super::{
    normalize_identifier, Action, BillingAdjustment, BillingAdjustmentStatus,
    CancellationRequestStatus, DecodeError, Delivery, Details, EndStatus, Event, Identifiers,
    InboundMessage, Intent, Notice, Party, SubjectKey, ENTITLEMENT_UPDATED, MAX_BODY_BYTES,
    SUBSCRIBE_FAIL, SUBSCRIBE_SUCCESS, UNSUBSCRIBE_PENDING, UNSUBSCRIBE_SUCCESS,
};

/// Errors end up in logs and the event log, so values copied from the body are capped.
const ECHO_LIMIT: usize = 100;

/// The most days before its end an Ending notice may be for. AWS documents 180 at most; ten
/// years leaves room for notice points AWS adds and still refuses a count no agreement has.
const MAX_DAYS_BEFORE_END: u64 = 3_660;

/// The longest adjustment amount accepted, in characters: far beyond any invoice, short enough
/// that a value copied into an error or `status` stays readable.
const MAX_AMOUNT_LEN: usize = 32;

const AGREEMENT_ID: &[&str] = &["detail", "agreement", "id"];
const AGREEMENT_INTENT: &[&str] = &["detail", "agreement", "intent"];
const AGREEMENT_STATUS: &[&str] = &["detail", "agreement", "status"];
const PREVIOUS_AGREEMENT_ID: &[&str] = &["detail", "agreement", "previousAgreementId"];
const ACCEPTOR_ACCOUNT_ID: &[&str] = &["detail", "acceptor", "accountId"];
const OFFER_ID: &[&str] = &["detail", "offer", "id"];
const PRODUCT_CODE: &[&str] = &["detail", "product", "code"];
const LICENSE_ARN: &[&str] = &["detail", "license", "arn"];
const AGREEMENT_START: &[&str] = &["detail", "agreement", "startTime"];
const AGREEMENT_END: &[&str] = &["detail", "agreement", "endTime"];
const AGREEMENT_ACCEPTANCE: &[&str] = &["detail", "agreement", "acceptanceTime"];
const AUTO_RENEWAL: &[&str] = &["detail", "agreement", "autoRenewalEnabled"];
const DAYS_BEFORE_END: &[&str] = &["detail", "agreement", "daysBeforeEndTime"];
const PROPOSER_ACCOUNT_ID: &[&str] = &["detail", "proposer", "accountId"];
const RESALE_AUTHORIZATION_ID: &[&str] = &["detail", "resaleAuthorization", "id"];
const PRODUCT_ID: &[&str] = &["detail", "product", "id"];
// The cancellation and billing-adjustment events name these inside `agreement`.
const AGREEMENT_OFFER_ID: &[&str] = &["detail", "agreement", "offerId"];
const AGREEMENT_PROPOSER_ID: &[&str] = &["detail", "agreement", "proposerId"];
const AGREEMENT_PRODUCT_ID: &[&str] = &["detail", "agreement", "productId"];
// The seller's (Proposer) copy of a cancellation-request event names the buyer here; the
// buyer's copy names the seller as `proposerId` instead.
const AGREEMENT_ACCEPTOR_ID: &[&str] = &["detail", "agreement", "acceptorId"];
const ADJUSTMENT_ID: &[&str] = &["detail", "billingAdjustmentRequest", "id"];
const ADJUSTMENT_AMOUNT: &[&str] = &["detail", "billingAdjustmentRequest", "adjustmentAmount"];
const ADJUSTMENT_CURRENCY: &[&str] = &["detail", "billingAdjustmentRequest", "currencyCode"];
const ADJUSTMENT_REASON: &[&str] = &["detail", "billingAdjustmentRequest", "adjustmentReasonCode"];
const ORIGINAL_INVOICE_ID: &[&str] = &["detail", "invoice", "originalInvoiceId"];

type Object = Map<String, Value>;

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

fn sns_envelope(msg: &InboundMessage, envelope: &Object) -> Result<Event, DecodeError> {
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

fn raw_delivery(msg: &InboundMessage, message: &Object) -> Result<Event, DecodeError> {
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
fn marketplace(
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

/// What a `detail-type` announces.
#[derive(Clone, Copy)]
enum DetailType {
    Created(Party),
    Amended(Party),
    Ended(Party),
    LicenseUpdated,
    LicenseDeprovisioned,
    Note(Party, Notice),
}

/// Every `aws.agreement-marketplace` detail-type mplink handles, with what it is: the one list
/// the decoder, the EventBridge rule (`provision`, `deploy/`) and the README's table follow.
const DETAIL_TYPES: &[(&str, DetailType)] = {
    use super::Notice as N;
    use BillingAdjustmentStatus as B;
    use CancellationRequestStatus as C;
    use DetailType::*;
    use Party::{Manufacturer as M, Proposer as P};
    &[
        ("Purchase Agreement Created - Proposer", Created(P)),
        ("Purchase Agreement Created - Manufacturer", Created(M)),
        ("Purchase Agreement Amended - Proposer", Amended(P)),
        ("Purchase Agreement Amended - Manufacturer", Amended(M)),
        ("Purchase Agreement Ended - Proposer", Ended(P)),
        ("Purchase Agreement Ended - Manufacturer", Ended(M)),
        ("License Updated - Manufacturer", LicenseUpdated),
        ("License Deprovisioned - Manufacturer", LicenseDeprovisioned),
        (
            "Purchase Agreement Advisory Issued - Proposer",
            Note(P, N::AdvisoryIssued),
        ),
        (
            "Purchase Agreement Advisory Issued - Manufacturer",
            Note(M, N::AdvisoryIssued),
        ),
        (
            "Purchase Agreement Advisory Resolved - Proposer",
            Note(P, N::AdvisoryResolved),
        ),
        (
            "Purchase Agreement Advisory Resolved - Manufacturer",
            Note(M, N::AdvisoryResolved),
        ),
        ("Purchase Agreement Ending - Proposer", Note(P, N::Ending)),
        (
            "Purchase Agreement Ending - Manufacturer",
            Note(M, N::Ending),
        ),
        (
            "Purchase Agreement Renewal Terms Finalized - Proposer",
            Note(P, N::RenewalTermsFinalized),
        ),
        (
            "Purchase Agreement Renewal Terms Finalized - Manufacturer",
            Note(M, N::RenewalTermsFinalized),
        ),
        (
            "Purchase Agreement Renewal Upcoming - Proposer",
            Note(P, N::RenewalUpcoming),
        ),
        (
            "Purchase Agreement Renewal Upcoming - Manufacturer",
            Note(M, N::RenewalUpcoming),
        ),
        (
            "Agreement Cancellation Request Pending Approval - Proposer",
            Note(P, N::CancellationRequest(C::PendingApproval)),
        ),
        (
            "Agreement Cancellation Request Approved - Proposer",
            Note(P, N::CancellationRequest(C::Approved)),
        ),
        (
            "Agreement Cancellation Request Rejected - Proposer",
            Note(P, N::CancellationRequest(C::Rejected)),
        ),
        (
            "Agreement Cancellation Request Cancelled - Proposer",
            Note(P, N::CancellationRequest(C::Cancelled)),
        ),
        (
            "Agreement Cancellation Request Validation Failed - Proposer",
            Note(P, N::CancellationRequest(C::ValidationFailed)),
        ),
        (
            "Purchase Agreement Billing Adjustment Completed - Proposer",
            Note(P, N::BillingAdjustment(B::Completed)),
        ),
        (
            "Purchase Agreement Billing Adjustment Failed - Proposer",
            Note(P, N::BillingAdjustment(B::Failed)),
        ),
    ]
};

fn detail_type(text: &str) -> Option<DetailType> {
    DETAIL_TYPES
        .iter()
        .find(|(name, _)| *name == text)
        .map(|(_, kind)| *kind)
}

/// The detail-types mplink handles, in the order of its table.
pub fn handled_detail_types() -> impl Iterator<Item = &'static str> {
    DETAIL_TYPES.iter().map(|(name, _)| *name)
}

fn eventbridge(msg: &InboundMessage, event: &Object) -> Result<Event, DecodeError> {
    let fields = FieldReader::new(&msg.message_id, "");
    let event_id = fields.req_str(event, &["id"])?;
    let detail_text = fields.req_str(event, &["detail-type"])?;
    let source = fields.opt_str(event, &["source"])?;
    let kind = detail_type(detail_text).ok_or_else(|| DecodeError::UnknownDetailType {
        message_id: msg.message_id.clone(),
        detail_type: truncate(detail_text),
        event_id: Some(truncate(event_id)),
        event_source: source.map(truncate),
    })?;
    let time_ms = fields.req_time_ms(event, &["time"])?;
    match event.get("detail") {
        Some(Value::Object(_)) => {}
        None | Some(Value::Null) => return Err(fields.missing(&["detail"])),
        Some(_) => return Err(fields.wrong_type(&["detail"], "object")),
    }
    let agreement_id = agreement_id(&fields, event)?;
    let mut ids = Identifiers {
        agreement_id: Some(agreement_id.to_owned()),
        customer_aws_account_id: fields
            .first_id(event, &[ACCEPTOR_ACCOUNT_ID, AGREEMENT_ACCEPTOR_ID])?,
        previous_agreement_id: fields.opt_id(event, PREVIOUS_AGREEMENT_ID)?,
        offer_id: fields.first_id(event, &[OFFER_ID, AGREEMENT_OFFER_ID])?,
        ..Identifiers::default()
    };
    let details = Details {
        free_trial: None,
        agreement_start_ms: fields.opt_time_ms(event, AGREEMENT_START)?,
        agreement_end_ms: fields.opt_time_ms(event, AGREEMENT_END)?,
        acceptance_ms: fields.opt_time_ms(event, AGREEMENT_ACCEPTANCE)?,
        auto_renewal: fields.opt_bool(event, AUTO_RENEWAL)?,
        proposer_account_id: fields
            .first_id(event, &[PROPOSER_ACCOUNT_ID, AGREEMENT_PROPOSER_ID])?,
        resale_authorization_id: fields.opt_id(event, RESALE_AUTHORIZATION_ID)?,
        product_id: fields.first_id(event, &[PRODUCT_ID, AGREEMENT_PRODUCT_ID])?,
        // Only the Ending notice says it; it belongs to that notice, not to the agreement.
        days_before_end: match kind {
            DetailType::Note(_, Notice::Ending) => {
                fields.opt_count(event, DAYS_BEFORE_END, MAX_DAYS_BEFORE_END)?
            }
            _ => None,
        },
        billing_adjustment: match kind {
            DetailType::Note(_, Notice::BillingAdjustment(_)) => {
                billing_adjustment(&fields, event)?
            }
            _ => None,
        },
    };
    // The Proposer and Manufacturer copies of one fact have different event ids but the same
    // agreement, time and qualifier, so the fact key leaves the party out.
    let (action, fact_key) = match kind {
        DetailType::Created(party) => {
            let (intent, qual) = match fields.opt_str(event, AGREEMENT_INTENT)? {
                None | Some("NEW") => (Intent::New, "NEW"),
                Some("RENEW") => (Intent::Renew, "RENEW"),
                Some("REPLACE") => (Intent::Replace, "REPLACE"),
                Some(other) => return Err(fields.invalid(AGREEMENT_INTENT, other)),
            };
            let key = format!("eb:created:{agreement_id}:{time_ms}:{qual}");
            (Action::AgreementCreated { party, intent }, key)
        }
        DetailType::Amended(party) => {
            let key = format!("eb:amended:{agreement_id}:{time_ms}:AMEND");
            (Action::AgreementAmended { party }, key)
        }
        DetailType::Ended(party) => {
            let (status, qual) = match fields.req_str(event, AGREEMENT_STATUS)? {
                "CANCELLED" => (EndStatus::Cancelled, "CANCELLED"),
                "EXPIRED" => (EndStatus::Expired, "EXPIRED"),
                "TERMINATED" => (EndStatus::Terminated, "TERMINATED"),
                "RENEWED" => (EndStatus::Renewed, "RENEWED"),
                "REPLACED" => (EndStatus::Replaced, "REPLACED"),
                other => return Err(fields.invalid(AGREEMENT_STATUS, other)),
            };
            let key = format!("eb:ended:{agreement_id}:{time_ms}:{qual}");
            (Action::AgreementEnded { party, status }, key)
        }
        DetailType::LicenseUpdated | DetailType::LicenseDeprovisioned => {
            ids.product_code = Some(fields.req_id(event, PRODUCT_CODE)?);
            ids.license_arn = Some(fields.req_id(event, LICENSE_ARN)?);
            let (action, name) = match kind {
                DetailType::LicenseUpdated => (Action::LicenseUpdated, "license-updated"),
                _ => (Action::LicenseDeprovisioned, "license-deprovisioned"),
            };
            (action, format!("eb:{name}:{agreement_id}:{time_ms}"))
        }
        DetailType::Note(party, notice) => {
            let key = format!("eb:{}:{agreement_id}:{time_ms}", notice.name());
            (Action::AgreementNotice { party, notice }, key)
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
        details,
        topic_arn: None,
        source: source.map(str::to_owned),
    })
}

/// The adjustment a Billing Adjustment event describes; None when it names none of its parts.
fn billing_adjustment(
    fields: &FieldReader,
    event: &Object,
) -> Result<Option<BillingAdjustment>, DecodeError> {
    let amount = match fields.opt_str(event, ADJUSTMENT_AMOUNT)? {
        None => None,
        Some(text) if is_decimal(text.trim()) => Some(text.trim().to_owned()),
        Some(text) => return Err(fields.invalid(ADJUSTMENT_AMOUNT, text)),
    };
    let currency_code = match fields.opt_id(event, ADJUSTMENT_CURRENCY)? {
        None => None,
        Some(code) if code.len() == 3 && code.bytes().all(|b| b.is_ascii_uppercase()) => Some(code),
        Some(code) => return Err(fields.invalid(ADJUSTMENT_CURRENCY, &code)),
    };
    let adjustment = BillingAdjustment {
        id: fields.opt_id(event, ADJUSTMENT_ID)?,
        amount,
        currency_code,
        reason_code: fields.opt_id(event, ADJUSTMENT_REASON)?,
        original_invoice_id: fields.opt_id(event, ORIGINAL_INVOICE_ID)?,
    };
    Ok((adjustment != BillingAdjustment::default()).then_some(adjustment))
}

/// A decimal as AWS writes amounts: an optional sign, digits, and optionally a point followed
/// by digits (`-100.00`). No exponent, no thousands separator, at most [`MAX_AMOUNT_LEN`].
fn is_decimal(text: &str) -> bool {
    let unsigned = text.strip_prefix(['-', '+']).unwrap_or(text);
    let (whole, fraction) = match unsigned.split_once('.') {
        Some((whole, fraction)) => (whole, Some(fraction)),
        None => (unsigned, None),
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    text.len() <= MAX_AMOUNT_LEN && digits(whole) && fraction.is_none_or(digits)
}

/// `detail.agreement.id`, or failing that the id at the end of the agreement ARN in `resources`.
fn agreement_id<'v>(fields: &FieldReader, event: &'v Object) -> Result<&'v str, DecodeError> {
    if let Some(id) = fields
        .opt_str(event, AGREEMENT_ID)?
        .and_then(normalize_identifier)
    {
        return Ok(id);
    }
    let from_resources = match event.get("resources") {
        None | Some(Value::Null) => None,
        Some(Value::Array(resources)) => resources
            .iter()
            .filter_map(Value::as_str)
            .find(|arn| arn.contains(":agreement:"))
            .and_then(|arn| arn.rsplit("agreement:").next())
            .and_then(normalize_identifier),
        Some(_) => return Err(fields.wrong_type(&["resources"], "array")),
    };
    from_resources.ok_or_else(|| fields.missing(AGREEMENT_ID))
}

/// Field access for one message; `prefix` names the enclosing field in error paths.
struct FieldReader<'a> {
    message_id: &'a str,
    prefix: &'static str,
}

impl<'a> FieldReader<'a> {
    fn new(message_id: &'a str, prefix: &'static str) -> Self {
        FieldReader { message_id, prefix }
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
            // Surrounding whitespace (a tab, a newline) is trimmed from identifiers instead.
            Some(Value::String(s)) if s.trim().chars().any(char::is_control) => {
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

    /// An optional identifier, normalised by [`normalize_identifier`].
    fn opt_id(&self, root: &Object, path: &[&str]) -> Result<Option<String>, DecodeError> {
        Ok(self
            .opt_str(root, path)?
            .and_then(normalize_identifier)
            .map(str::to_owned))
    }

    fn req_id(&self, root: &Object, path: &[&str]) -> Result<String, DecodeError> {
        self.opt_id(root, path)?.ok_or_else(|| self.missing(path))
    }

    /// The first of several places AWS puts the same identifier.
    fn first_id(&self, root: &Object, paths: &[&[&str]]) -> Result<Option<String>, DecodeError> {
        for path in paths {
            if let Some(id) = self.opt_id(root, path)? {
                return Ok(Some(id));
            }
        }
        Ok(None)
    }

    /// A required top-level identifier under its current key or, failing that, its old one.
    fn req_id_either(
        &self,
        root: &Object,
        key: &str,
        old_key: &str,
    ) -> Result<String, DecodeError> {
        match self.opt_id(root, &[key])? {
            Some(s) => Ok(s),
            None => self
                .opt_id(root, &[old_key])?
                .ok_or_else(|| self.missing(&[key])),
        }
    }

    /// An optional flag: a JSON boolean, or the strings "true"/"false" SNS messages use.
    fn opt_bool(&self, root: &Object, path: &[&str]) -> Result<Option<bool>, DecodeError> {
        match self.lookup(root, path)? {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(Value::String(s)) => match s.trim() {
                "" => Ok(None),
                t if t.eq_ignore_ascii_case("true") => Ok(Some(true)),
                t if t.eq_ignore_ascii_case("false") => Ok(Some(false)),
                _ => Err(self.invalid(path, s)),
            },
            Some(_) => Err(self.wrong_type(path, "boolean")),
        }
    }

    /// An optional count: a JSON integer from 0 to `max`. AWS writes a number, so a string is
    /// the wrong type rather than a spelling to accept.
    fn opt_count(
        &self,
        root: &Object,
        path: &[&str],
        max: u64,
    ) -> Result<Option<u32>, DecodeError> {
        match self.lookup(root, path)? {
            None => Ok(None),
            Some(Value::Number(n)) => n
                .as_u64()
                .filter(|&count| count <= max)
                .and_then(|count| u32::try_from(count).ok())
                .map(Some)
                .ok_or_else(|| self.invalid(path, &n.to_string())),
            Some(_) => Err(self.wrong_type(path, "a non-negative integer")),
        }
    }

    fn opt_time_ms(&self, root: &Object, path: &[&str]) -> Result<Option<i64>, DecodeError> {
        match self.opt_str(root, path)? {
            None => Ok(None),
            Some(text) => rfc3339_ms(text)
                .map(Some)
                .ok_or_else(|| self.invalid(path, text)),
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
        let fields = FieldReader::new("m", "Message.");
        let root = object(json!({"detail": {"offer": null, "agreement": "agmt-1"}}));
        assert_eq!(fields.lookup(&root, OFFER_ID), Ok(None));
        assert_eq!(
            fields.lookup(&root, AGREEMENT_ID),
            Err(DecodeError::WrongType {
                message_id: "m".into(),
                field: "Message.detail.agreement".into(),
                expected: "object",
            })
        );
    }

    #[test]
    fn agreement_id_falls_back_to_the_first_agreement_resource() {
        let fields = FieldReader::new("m", "");
        let root = object(json!({"detail": {}, "resources": [
            7,
            "arn:aws:aws-marketplace::aws:offer:offer-1",
            "arn:aws:aws-marketplace::aws:agreement:agmt-123",
            "arn:aws:aws-marketplace::aws:agreement:agmt-456",
        ]}));
        assert_eq!(agreement_id(&fields, &root), Ok("agmt-123"));
        let empty_tail =
            object(json!({"detail": {}, "resources": ["arn:aws:aws-marketplace::aws:agreement:"]}));
        assert_eq!(
            agreement_id(&fields, &empty_tail),
            Err(fields.missing(AGREEMENT_ID))
        );
        let not_array = object(
            json!({"detail": {}, "resources": "arn:aws:aws-marketplace::aws:agreement:agmt-1"}),
        );
        assert_eq!(
            agreement_id(&fields, &not_array),
            Err(fields.wrong_type(&["resources"], "array"))
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
