//! The `aws.agreement-marketplace` EventBridge events, one `detail-type` at a time.

use super::fields::{truncate, FieldReader};
use super::Object;
use serde_json::Value;

use crate::event::{
    normalize_identifier, Action, BillingAdjustment, BillingAdjustmentStatus,
    CancellationRequestStatus, DecodeError, Delivery, Details, EndStatus, Event, Identifiers,
    InboundMessage, Intent, Notice, Party, SubjectKey,
};

/// The most days before its end an Ending notice may be for. AWS documents 180 at most; ten
/// years leaves room for notice points AWS adds and still refuses a count no agreement has.
pub(super) const MAX_DAYS_BEFORE_END: u64 = 3_660;

/// The longest adjustment amount accepted, in characters: far beyond any invoice, short enough
/// that a value copied into an error or `status` stays readable.
pub(super) const MAX_AMOUNT_LEN: usize = 32;

pub(super) const AGREEMENT_ID: &[&str] = &["detail", "agreement", "id"];
pub(super) const AGREEMENT_INTENT: &[&str] = &["detail", "agreement", "intent"];
pub(super) const AGREEMENT_STATUS: &[&str] = &["detail", "agreement", "status"];
pub(super) const PREVIOUS_AGREEMENT_ID: &[&str] = &["detail", "agreement", "previousAgreementId"];
pub(super) const ACCEPTOR_ACCOUNT_ID: &[&str] = &["detail", "acceptor", "accountId"];
pub(super) const OFFER_ID: &[&str] = &["detail", "offer", "id"];
pub(super) const PRODUCT_CODE: &[&str] = &["detail", "product", "code"];
pub(super) const LICENSE_ARN: &[&str] = &["detail", "license", "arn"];
pub(super) const AGREEMENT_START: &[&str] = &["detail", "agreement", "startTime"];
pub(super) const AGREEMENT_END: &[&str] = &["detail", "agreement", "endTime"];
pub(super) const AGREEMENT_ACCEPTANCE: &[&str] = &["detail", "agreement", "acceptanceTime"];
pub(super) const AUTO_RENEWAL: &[&str] = &["detail", "agreement", "autoRenewalEnabled"];
pub(super) const DAYS_BEFORE_END: &[&str] = &["detail", "agreement", "daysBeforeEndTime"];
pub(super) const PROPOSER_ACCOUNT_ID: &[&str] = &["detail", "proposer", "accountId"];
pub(super) const RESALE_AUTHORIZATION_ID: &[&str] = &["detail", "resaleAuthorization", "id"];
pub(super) const PRODUCT_ID: &[&str] = &["detail", "product", "id"];
// The cancellation and billing-adjustment events name these inside `agreement`.
pub(super) const AGREEMENT_OFFER_ID: &[&str] = &["detail", "agreement", "offerId"];
pub(super) const AGREEMENT_PROPOSER_ID: &[&str] = &["detail", "agreement", "proposerId"];
pub(super) const AGREEMENT_PRODUCT_ID: &[&str] = &["detail", "agreement", "productId"];
// The seller's (Proposer) copy of a cancellation-request event names the buyer here; the
// buyer's copy names the seller as `proposerId` instead.
pub(super) const AGREEMENT_ACCEPTOR_ID: &[&str] = &["detail", "agreement", "acceptorId"];
pub(super) const ADJUSTMENT_ID: &[&str] = &["detail", "billingAdjustmentRequest", "id"];
pub(super) const ADJUSTMENT_AMOUNT: &[&str] =
    &["detail", "billingAdjustmentRequest", "adjustmentAmount"];
pub(super) const ADJUSTMENT_CURRENCY: &[&str] =
    &["detail", "billingAdjustmentRequest", "currencyCode"];
pub(super) const ADJUSTMENT_REASON: &[&str] =
    &["detail", "billingAdjustmentRequest", "adjustmentReasonCode"];
pub(super) const ORIGINAL_INVOICE_ID: &[&str] = &["detail", "invoice", "originalInvoiceId"];

/// What a `detail-type` announces.
#[derive(Clone, Copy)]
pub(super) enum DetailType {
    Created(Party),
    Amended(Party),
    Ended(Party),
    LicenseUpdated,
    LicenseDeprovisioned,
    Note(Party, Notice),
}

/// Every `aws.agreement-marketplace` detail-type mplink handles, with what it is: the one list
/// the decoder, the EventBridge rule (`provision`, `deploy/`) and docs/events.md's table follow.
pub(super) const DETAIL_TYPES: &[(&str, DetailType)] = {
    use crate::event::Notice as N;
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

pub(super) fn detail_type(text: &str) -> Option<DetailType> {
    DETAIL_TYPES
        .iter()
        .find(|(name, _)| *name == text)
        .map(|(_, kind)| *kind)
}

/// The detail-types mplink handles, in the order of its table.
pub fn handled_detail_types() -> impl Iterator<Item = &'static str> {
    DETAIL_TYPES.iter().map(|(name, _)| *name)
}

pub(super) fn eventbridge(msg: &InboundMessage, event: &Object) -> Result<Event, DecodeError> {
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
pub(super) fn billing_adjustment(
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
pub(super) fn is_decimal(text: &str) -> bool {
    let unsigned = text.strip_prefix(['-', '+']).unwrap_or(text);
    let (whole, fraction) = match unsigned.split_once('.') {
        Some((whole, fraction)) => (whole, Some(fraction)),
        None => (unsigned, None),
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    text.len() <= MAX_AMOUNT_LEN && digits(whole) && fraction.is_none_or(digits)
}

/// `detail.agreement.id`, or failing that the id at the end of the agreement ARN in `resources`.
pub(super) fn agreement_id<'v>(
    fields: &FieldReader,
    event: &'v Object,
) -> Result<&'v str, DecodeError> {
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
