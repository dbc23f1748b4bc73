//! Decoder contract: every fixture under `tests/fixtures/events/` decodes to exactly the expected
//! event, every kind of bad input to its specific error, and no input at all makes it panic.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::PathBuf;

use mplink_core::event::{
    decode, Action, DecodeError, Delivery, Details, EndStatus, Event, Identifiers, InboundMessage,
    Intent, Party, SubjectKey, EVENTBRIDGE_SOURCE, MAX_BODY_BYTES,
};
use proptest::prelude::*;
use proptest::sample::Index;
use serde_json::{json, Value};

const SQS_ID: &str = "c0a8d3f2-1b4e-4f6a-9d7c-2e5b8a1f4d7e";
const SENT_MS: i64 = 1_788_125_770_456;

const PRODUCT: &str = "n0123EXAMPLEXXXXXXXXXXXX";
const SUB_TOPIC: &str =
    "arn:aws:sns:us-east-1:287250355862:aws-mp-subscription-notification-n0123EXAMPLEXXXXXXXXXXXX";
const ENT_TOPIC: &str =
    "arn:aws:sns:us-east-1:287250355862:aws-mp-entitlement-notification-n0123EXAMPLEXXXXXXXXXXXX";
const OFFER: &str = "offer-abcexample123";

const AG1: &str = "agmt-4mwg1nevbokzw95eca5797ixs";
const AG2: &str = "agmt-7rpvl2j4k9q1x0z3w5y8u6t2s";
const AG3: &str = "agmt-2hq8w0c5n3m7b1v6x9z4k2j5d";
const AG4: &str = "agmt-9ftd3s6a1q8w2e5r7t0y4u3i6";
const AG5: &str = "agmt-5kx7c2v9b4n1m8q3w6e0r5t2y";
const BUYER: &str = "845735284135";
const EB_OFFER: &str = "offer-1234567890123";
const LICENSE_PRODUCT: &str = "aw4fgf5tyo5w2ap6fEXAMPLE";
const LICENSE_OFFER: &str = "8kkr91jo647j3qxlcjhlqce7y";
const FULL_ARN: &str =
    "arn:aws:license-manager::123456789012:license:l-e52ca6f38bf84d0fafb8802ca15ac11x";
const SHORT_ARN: &str = "aws:license-manager::123456789012:l-e52ca6f38bf84d0fafb8802ca15ac11x";

// ---------------------------------------------------------------------------------------------
// Helpers

fn fixture_dir() -> PathBuf {
    crate::repo_root().join("tests/fixtures/events")
}

fn fixture(name: &str) -> String {
    let path = fixture_dir().join(name);
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Names of the valid fixtures (the `invalid/` subdirectory is not included).
fn fixture_names() -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(fixture_dir())
        .expect("fixture dir")
        .map(|entry| entry.expect("dir entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "json"))
        .map(|path| {
            path.file_name()
                .expect("name")
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    names.sort();
    names
}

fn inbound(body: impl Into<String>) -> InboundMessage {
    InboundMessage {
        message_id: SQS_ID.to_owned(),
        body: body.into(),
        sent_timestamp_ms: Some(SENT_MS),
    }
}

fn decode_ok(name: &str, body: impl Into<String>) -> Event {
    decode(&inbound(body)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn decode_fixture(name: &str) -> Event {
    decode_ok(name, fixture(name))
}

fn decode_err(body: impl Into<String>) -> DecodeError {
    match decode(&inbound(body)) {
        Ok(event) => panic!("expected an error, decoded {event:#?}"),
        Err(e) => e,
    }
}

/// The fixture's JSON with `edit` applied, serialised again.
fn edited(name: &str, edit: impl FnOnce(&mut Value)) -> String {
    let mut value: Value = serde_json::from_str(&fixture(name)).expect("fixture is JSON");
    edit(&mut value);
    value.to_string()
}

/// An SNS fixture whose inner marketplace `Message` has `edit` applied.
fn edited_message(name: &str, edit: impl FnOnce(&mut Value)) -> String {
    edited(name, |envelope| {
        let text = envelope["Message"].as_str().expect("Message is a string");
        let mut message: Value = serde_json::from_str(text).expect("Message is JSON");
        edit(&mut message);
        envelope["Message"] = Value::String(message.to_string());
    })
}

/// Sets the field at JSON pointer `pointer`, creating it if needed.
fn set(value: &mut Value, pointer: &str, new: Value) {
    let (parent, key) = pointer.rsplit_once('/').expect("pointer");
    value
        .pointer_mut(parent)
        .and_then(Value::as_object_mut)
        .unwrap_or_else(|| panic!("no object at {parent:?}"))
        .insert(key.to_owned(), new);
}

/// Removes the field at JSON pointer `pointer`, which must exist.
fn remove(value: &mut Value, pointer: &str) {
    let (parent, key) = pointer.rsplit_once('/').expect("pointer");
    value
        .pointer_mut(parent)
        .and_then(Value::as_object_mut)
        .and_then(|object| object.remove(key))
        .unwrap_or_else(|| panic!("no field at {pointer:?}"));
}

fn missing(field: &str) -> DecodeError {
    DecodeError::MissingField {
        message_id: SQS_ID.to_owned(),
        field: field.to_owned(),
    }
}

fn wrong_type(field: &str, expected: &'static str) -> DecodeError {
    DecodeError::WrongType {
        message_id: SQS_ID.to_owned(),
        field: field.to_owned(),
        expected,
    }
}

fn invalid(field: &str, value: &str) -> DecodeError {
    DecodeError::InvalidValue {
        message_id: SQS_ID.to_owned(),
        field: field.to_owned(),
        value: value.to_owned(),
    }
}

fn customer(customer_identifier: &str) -> SubjectKey {
    SubjectKey::Customer {
        product_code: PRODUCT.to_owned(),
        customer_identifier: customer_identifier.to_owned(),
    }
}

fn legacy_ids(customer_identifier: &str, offer: Option<&str>) -> Identifiers {
    Identifiers {
        product_code: Some(PRODUCT.to_owned()),
        customer_identifier: Some(customer_identifier.to_owned()),
        offer_id: offer.map(str::to_owned),
        ..Identifiers::default()
    }
}

fn sns_event(
    sns_message_id: &str,
    time_ms: i64,
    topic: &str,
    action: Action,
    customer_identifier: &str,
    offer: Option<&str>,
) -> Event {
    Event {
        sqs_message_id: SQS_ID.to_owned(),
        event_id: sns_message_id.to_owned(),
        fact_key: format!("sns:{sns_message_id}"),
        time_ms,
        delivery: Delivery::SnsEnvelope,
        action,
        subject: customer(customer_identifier),
        ids: legacy_ids(customer_identifier, offer),
        details: Details::default(),
        topic_arn: Some(topic.to_owned()),
        source: None,
    }
}

fn raw_event(action: Action, customer_identifier: &str, offer: Option<&str>) -> Event {
    Event {
        sqs_message_id: SQS_ID.to_owned(),
        event_id: SQS_ID.to_owned(),
        fact_key: format!("raw:{SQS_ID}"),
        time_ms: SENT_MS,
        delivery: Delivery::Raw,
        action,
        subject: customer(customer_identifier),
        ids: legacy_ids(customer_identifier, offer),
        details: Details::default(),
        topic_arn: None,
        source: None,
    }
}

fn agreement_ids(agreement_id: &str, buyer: &str, offer: Option<&str>) -> Identifiers {
    Identifiers {
        agreement_id: Some(agreement_id.to_owned()),
        customer_aws_account_id: Some(buyer.to_owned()),
        offer_id: offer.map(str::to_owned),
        ..Identifiers::default()
    }
}

fn license_ids(arn: &str) -> Identifiers {
    Identifiers {
        product_code: Some(LICENSE_PRODUCT.to_owned()),
        license_arn: Some(arn.to_owned()),
        ..agreement_ids(AG1, BUYER, Some(LICENSE_OFFER))
    }
}

fn eb_event(
    event_id: &str,
    time_ms: i64,
    action: Action,
    fact_key: &str,
    ids: Identifiers,
) -> Event {
    Event {
        sqs_message_id: SQS_ID.to_owned(),
        event_id: event_id.to_owned(),
        fact_key: fact_key.to_owned(),
        time_ms,
        delivery: Delivery::EventBridge,
        action,
        subject: SubjectKey::Agreement {
            agreement_id: ids.agreement_id.clone().expect("agreement id"),
        },
        ids,
        details: Details::default(),
        topic_arn: None,
        source: Some(EVENTBRIDGE_SOURCE.to_owned()),
    }
}

// ---------------------------------------------------------------------------------------------
// Expected decodings of every fixture

fn sns_cases() -> Vec<(&'static str, Event)> {
    vec![
        (
            "sns_subscribe_success.json",
            sns_event(
                "9f4c1a6e-2b7d-5e0f-8a3c-1d2e3f4a5b6c",
                1_788_125_763_123,
                SUB_TOPIC,
                Action::SubscribeSuccess,
                "X01EXAMPLEX",
                Some(OFFER),
            ),
        ),
        (
            "sns_subscribe_fail.json",
            sns_event(
                "0b7e2d9c-6a1f-5c3e-9d8b-4f2a1e0c7b6d",
                1_788_126_012_007,
                SUB_TOPIC,
                Action::SubscribeFail,
                "X02EXAMPLEX",
                None,
            ),
        ),
        (
            // Old CamelCase keys and an SNS Subject.
            "sns_unsubscribe_pending.json",
            sns_event(
                "5d3a8f1b-9c2e-5a7d-8b4f-6e1c0a9d2f3b",
                1_800_014_400_500,
                SUB_TOPIC,
                Action::UnsubscribePending,
                "X01EXAMPLEX",
                None,
            ),
        ),
        (
            // Unknown extra fields, one of them an object.
            "sns_unsubscribe_success.json",
            sns_event(
                "7c2b9e4d-1f8a-5b6c-a3d2-8e9f0b1c4d5a",
                1_800_018_001_999,
                SUB_TOPIC,
                Action::UnsubscribeSuccess,
                "X01EXAMPLEX",
                Some(OFFER),
            ),
        ),
        (
            "sns_entitlement_updated.json",
            sns_event(
                "3e8d1c7b-4a9f-5d2e-b6c1-0f7a8e9d3c2b",
                1_790_846_100_042,
                ENT_TOPIC,
                Action::EntitlementUpdated,
                "X03EXAMPLEX",
                Some("offer-contract456"),
            ),
        ),
    ]
}

fn raw_cases() -> Vec<(&'static str, Event)> {
    vec![
        (
            "raw_subscribe_success.json",
            raw_event(Action::SubscribeSuccess, "X04EXAMPLEX", Some(OFFER)),
        ),
        (
            "raw_subscribe_fail.json",
            raw_event(Action::SubscribeFail, "X05EXAMPLEX", None),
        ),
        (
            "raw_unsubscribe_pending.json",
            raw_event(Action::UnsubscribePending, "X04EXAMPLEX", None),
        ),
        (
            "raw_unsubscribe_success.json",
            raw_event(Action::UnsubscribeSuccess, "X04EXAMPLEX", Some(OFFER)),
        ),
        (
            "raw_entitlement_updated.json",
            raw_event(Action::EntitlementUpdated, "X06EXAMPLEX", None),
        ),
    ]
}

fn created_cases() -> Vec<(&'static str, Event)> {
    let new_key = format!("eb:created:{AG1}:1788125763000:NEW");
    vec![
        (
            "eb_created_new_proposer.json",
            eb_event(
                "d5a3f8e1-6b2c-4d9e-a7f0-1c3b5e7d9a2f",
                1_788_125_763_000,
                Action::AgreementCreated {
                    party: Party::Proposer,
                    intent: Intent::New,
                },
                &new_key,
                agreement_ids(AG1, BUYER, Some(EB_OFFER)),
            ),
        ),
        (
            "eb_created_new_manufacturer.json",
            eb_event(
                "8b1e4c7a-2d5f-4a8b-9e3c-6f0a2d4b7c1e",
                1_788_125_763_000,
                Action::AgreementCreated {
                    party: Party::Manufacturer,
                    intent: Intent::New,
                },
                &new_key,
                agreement_ids(AG1, BUYER, Some(EB_OFFER)),
            ),
        ),
        (
            "eb_created_renew_proposer.json",
            eb_event(
                "4f7c0a3d-8e1b-4c5f-b2a9-7d3e6f1a0b4c",
                1_819_661_763_000,
                Action::AgreementCreated {
                    party: Party::Proposer,
                    intent: Intent::Renew,
                },
                &format!("eb:created:{AG2}:1819661763000:RENEW"),
                Identifiers {
                    previous_agreement_id: Some(AG1.to_owned()),
                    ..agreement_ids(AG2, BUYER, Some(EB_OFFER))
                },
            ),
        ),
        (
            // No `offer` at all.
            "eb_created_replace_manufacturer.json",
            eb_event(
                "c2e5a8d1-4b7f-4e0a-8c3d-9b2f5e8a1d4c",
                1_793_614_830_000,
                Action::AgreementCreated {
                    party: Party::Manufacturer,
                    intent: Intent::Replace,
                },
                &format!("eb:created:{AG3}:1793614830000:REPLACE"),
                Identifiers {
                    previous_agreement_id: Some(AG5.to_owned()),
                    ..agreement_ids(AG3, "998877665544", None)
                },
            ),
        ),
    ]
}

fn amended_cases() -> Vec<(&'static str, Event)> {
    let key = format!("eb:amended:{AG1}:1790846100000:AMEND");
    vec![
        (
            "eb_amended_proposer.json",
            eb_event(
                "e9b2d5f8-1a4c-4b7e-a0d3-5c8f1b4e7a0d",
                1_790_846_100_000,
                Action::AgreementAmended {
                    party: Party::Proposer,
                },
                &key,
                agreement_ids(AG1, BUYER, Some(EB_OFFER)),
            ),
        ),
        (
            "eb_amended_manufacturer.json",
            eb_event(
                "1a4d7b0e-3c6f-4e9a-b2d5-8f1c4a7d0b3e",
                1_790_846_100_000,
                Action::AgreementAmended {
                    party: Party::Manufacturer,
                },
                &key,
                agreement_ids(AG1, BUYER, Some(EB_OFFER)),
            ),
        ),
    ]
}

fn ended_cases() -> Vec<(&'static str, Event)> {
    let ended = |party, status| Action::AgreementEnded { party, status };
    let cancelled_key = format!("eb:ended:{AG1}:1800014400000:CANCELLED");
    vec![
        (
            "eb_ended_cancelled_proposer.json",
            eb_event(
                "6c9f2b5e-8d1a-4f4c-9e7b-0a3d6f9c2e5b",
                1_800_014_400_000,
                ended(Party::Proposer, EndStatus::Cancelled),
                &cancelled_key,
                agreement_ids(AG1, BUYER, Some(EB_OFFER)),
            ),
        ),
        (
            "eb_ended_cancelled_manufacturer.json",
            eb_event(
                "2d5a8e1b-4f7c-4a0d-8b3e-6c9f2a5d8b1e",
                1_800_014_400_000,
                ended(Party::Manufacturer, EndStatus::Cancelled),
                &cancelled_key,
                agreement_ids(AG1, BUYER, Some(EB_OFFER)),
            ),
        ),
        (
            "eb_ended_expired_proposer.json",
            eb_event(
                "9e2c5f8b-1d4a-4c7e-a0b3-6d9e2c5f8a1b",
                1_825_150_830_000,
                ended(Party::Proposer, EndStatus::Expired),
                &format!("eb:ended:{AG3}:1825150830000:EXPIRED"),
                agreement_ids(AG3, "998877665544", None),
            ),
        ),
        (
            "eb_ended_terminated_manufacturer.json",
            eb_event(
                "5b8e1a4d-7c0f-4e3a-9d6b-2f5a8d1e4b7c",
                1_796_083_205_000,
                ended(Party::Manufacturer, EndStatus::Terminated),
                &format!("eb:ended:{AG4}:1796083205000:TERMINATED"),
                agreement_ids(AG4, "112233445566", Some(EB_OFFER)),
            ),
        ),
        (
            "eb_ended_renewed_proposer.json",
            eb_event(
                "0f3c6a9d-2e5b-4b8f-a1c4-7e0b3d6f9a2c",
                1_819_661_763_000,
                ended(Party::Proposer, EndStatus::Renewed),
                &format!("eb:ended:{AG1}:1819661763000:RENEWED"),
                agreement_ids(AG1, BUYER, Some(EB_OFFER)),
            ),
        ),
        (
            "eb_ended_replaced_manufacturer.json",
            eb_event(
                "7a0d3f6c-9b2e-4d5a-8c1f-4b7e0a3d6c9f",
                1_793_614_830_000,
                ended(Party::Manufacturer, EndStatus::Replaced),
                &format!("eb:ended:{AG5}:1793614830000:REPLACED"),
                agreement_ids(AG5, "998877665544", Some(EB_OFFER)),
            ),
        ),
    ]
}

fn license_cases() -> Vec<(&'static str, Event)> {
    vec![
        (
            "eb_license_updated.json",
            eb_event(
                "b3e6a9d2-5f8c-4b1e-a4d7-0c3f6b9e2a5d",
                1_788_125_831_000,
                Action::LicenseUpdated,
                &format!("eb:license-updated:{AG1}:1788125831000"),
                license_ids(FULL_ARN),
            ),
        ),
        (
            // AWS's documentation example: no `arn:` prefix, no `:license:` part. Kept as sent.
            "eb_license_updated_short_arn.json",
            eb_event(
                "f1c4e7a0-3d6b-4f9c-b2e5-8a1d4f7c0e3b",
                1_790_846_162_000,
                Action::LicenseUpdated,
                &format!("eb:license-updated:{AG1}:1790846162000"),
                license_ids(SHORT_ARN),
            ),
        ),
        (
            "eb_license_deprovisioned.json",
            eb_event(
                "a8d1b4e7-0c3f-4a6d-9b2e-5f8c1a4d7b0e",
                1_800_018_000_000,
                Action::LicenseDeprovisioned,
                &format!("eb:license-deprovisioned:{AG1}:1800018000000"),
                license_ids(FULL_ARN),
            ),
        ),
    ]
}

fn all_cases() -> Vec<(&'static str, Event)> {
    [
        sns_cases(),
        raw_cases(),
        created_cases(),
        amended_cases(),
        ended_cases(),
        license_cases(),
    ]
    .concat()
}

/// The cases above describe everything but the agreement details, which
/// `details_are_decoded_from_the_fixtures` checks on their own.
fn assert_cases(cases: Vec<(&'static str, Event)>) {
    for (name, expected) in cases {
        let decoded = Event {
            details: Details::default(),
            ..decode_fixture(name)
        };
        assert_eq!(decoded, expected, "{name}");
    }
}

// ---------------------------------------------------------------------------------------------
// Valid input

#[test]
fn sns_envelopes_decode_exactly() {
    assert_cases(sns_cases());
}

#[test]
fn raw_deliveries_decode_exactly() {
    assert_cases(raw_cases());
}

#[test]
fn agreement_created_decodes_exactly() {
    assert_cases(created_cases());
}

#[test]
fn agreement_amended_decodes_exactly() {
    assert_cases(amended_cases());
}

#[test]
fn agreement_ended_decodes_exactly() {
    assert_cases(ended_cases());
}

#[test]
fn license_events_decode_exactly() {
    assert_cases(license_cases());
}

fn ms(text: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(text)
        .expect("time")
        .timestamp_millis()
}

#[test]
fn details_are_decoded_from_the_fixtures() {
    assert_eq!(
        decode_fixture("sns_subscribe_success.json").details,
        Details {
            free_trial: Some(true),
            ..Details::default()
        }
    );
    assert_eq!(
        decode_fixture("sns_entitlement_updated.json")
            .details
            .free_trial,
        Some(false)
    );
    assert_eq!(
        decode_fixture("sns_unsubscribe_pending.json").details,
        Details::default()
    );
    assert_eq!(
        decode_fixture("eb_created_renew_proposer.json").details,
        Details {
            free_trial: None,
            agreement_start_ms: Some(ms("2027-08-30T21:36:03Z")),
            agreement_end_ms: Some(ms("2028-08-30T21:36:03Z")),
            acceptance_ms: Some(ms("2027-08-30T21:36:01Z")),
            auto_renewal: Some(true),
            proposer_account_id: Some("123456512334".to_owned()),
            resale_authorization_id: None,
            product_id: Some("prod-qtwveEXAMPLE".to_owned()),
            days_before_end: None,
            billing_adjustment: None,
        }
    );
    let manufacturer = decode_fixture("eb_created_new_manufacturer.json").details;
    assert_eq!(
        manufacturer.resale_authorization_id.as_deref(),
        Some("resaleauthz-yaxjqxiskysxa")
    );
    assert_eq!(
        manufacturer.agreement_end_ms,
        Some(ms("9999-01-01T00:00:00Z"))
    );
    assert_eq!(manufacturer.auto_renewal, None);
}

#[test]
fn free_trial_and_auto_renewal_take_booleans_or_their_strings_and_nothing_else() {
    for (text, expected) in [
        (json!("true"), Some(true)),
        (json!("false"), Some(false)),
        (json!(true), Some(true)),
        (json!(""), None),
    ] {
        let event = decode_ok(
            "flag",
            edited_message("sns_subscribe_success.json", |m| {
                set(m, "/isFreeTrialTermPresent", text.clone())
            }),
        );
        assert_eq!(event.details.free_trial, expected, "{text}");
    }
    assert_eq!(
        decode_err(edited_message("sns_subscribe_success.json", |m| {
            set(m, "/isFreeTrialTermPresent", json!("yes"))
        })),
        invalid("Message.isFreeTrialTermPresent", "yes")
    );
    assert_eq!(
        decode_err(edited("eb_created_renew_proposer.json", |v| {
            set(v, "/detail/agreement/autoRenewalEnabled", json!(1))
        })),
        wrong_type("detail.agreement.autoRenewalEnabled", "boolean")
    );
    assert_eq!(
        decode_err(edited("eb_created_renew_proposer.json", |v| {
            set(v, "/detail/agreement/endTime", json!("next year"))
        })),
        invalid("detail.agreement.endTime", "next year")
    );
}

#[test]
fn identifiers_lose_surrounding_whitespace_and_blank_ones_are_absent() {
    let event = decode_ok(
        "padded identifiers",
        edited_message("sns_subscribe_success.json", |m| {
            set(m, "/customer-identifier", json!(" X01EXAMPLEX"));
            set(m, "/product-code", json!("n0123EXAMPLEXXXXXXXXXXXX\t"));
            set(m, "/offer-identifier", json!("  "));
        }),
    );
    assert_eq!(event.subject, customer("X01EXAMPLEX"));
    assert_eq!(event.ids, legacy_ids("X01EXAMPLEX", None));
    let event = decode_ok(
        "padded agreement",
        edited("eb_license_updated.json", |v| {
            set(
                v,
                "/detail/agreement/id",
                json!(" agmt-4mwg1nevbokzw95eca5797ixs "),
            );
            set(v, "/detail/license/arn", json!(format!(" {FULL_ARN}\n")));
        }),
    );
    assert_eq!(
        event.subject,
        SubjectKey::Agreement {
            agreement_id: AG1.to_owned()
        }
    );
    assert_eq!(event.ids.license_arn.as_deref(), Some(FULL_ARN));
    assert_eq!(
        decode_err(edited_message("sns_subscribe_success.json", |m| {
            set(m, "/customer-identifier", json!("   "))
        })),
        missing("Message.customer-identifier")
    );
}

#[test]
fn every_fixture_has_an_expected_decoding() {
    let covered: BTreeSet<String> = all_cases()
        .iter()
        .map(|(name, _)| name.to_string())
        .collect();
    let present: BTreeSet<String> = fixture_names().into_iter().collect();
    assert_eq!(present, covered);
}

#[test]
fn proposer_and_manufacturer_copies_share_a_fact_key_and_other_facts_do_not() {
    let mut by_key: BTreeMap<String, Vec<&str>> = BTreeMap::new();
    let mut event_ids = BTreeSet::new();
    for (name, _) in all_cases() {
        let event = decode_fixture(name);
        if event.delivery != Delivery::Raw {
            assert!(
                event_ids.insert(event.event_id.clone()),
                "{name}: event id reused"
            );
        }
        by_key.entry(event.fact_key).or_default().push(name);
    }
    let shared: Vec<Vec<&str>> = by_key
        .into_values()
        .filter(|names| names.len() > 1)
        .collect();
    // Raw deliveries key on the SQS id, which the tests give every message.
    let raw: Vec<&str> = raw_cases().iter().map(|(name, _)| *name).collect();
    assert_eq!(
        shared,
        vec![
            vec!["eb_amended_proposer.json", "eb_amended_manufacturer.json"],
            vec![
                "eb_created_new_proposer.json",
                "eb_created_new_manufacturer.json"
            ],
            vec![
                "eb_ended_cancelled_proposer.json",
                "eb_ended_cancelled_manufacturer.json"
            ],
            raw,
        ]
    );
}

#[test]
fn facts_differing_in_kind_qualifier_or_time_get_different_keys() {
    let key = |body: String| decode_ok("edited", body).fact_key;
    let cancelled = decode_fixture("eb_ended_cancelled_proposer.json").fact_key;
    let expired = key(edited("eb_ended_cancelled_proposer.json", |v| {
        set(v, "/detail/agreement/status", json!("EXPIRED"))
    }));
    assert_ne!(cancelled, expired);

    let created = decode_fixture("eb_created_new_proposer.json").fact_key;
    let a_second_later = key(edited("eb_created_new_proposer.json", |v| {
        set(v, "/time", json!("2026-08-30T21:36:04Z"))
    }));
    let amended_then = key(edited("eb_created_new_proposer.json", |v| {
        set(
            v,
            "/detail-type",
            json!("Purchase Agreement Amended - Proposer"),
        )
    }));
    let ended_then = key(edited("eb_created_new_proposer.json", |v| {
        set(
            v,
            "/detail-type",
            json!("Purchase Agreement Ended - Proposer"),
        );
        set(v, "/detail/agreement/status", json!("CANCELLED"));
    }));
    let keys: BTreeSet<&String> = [&created, &a_second_later, &amended_then, &ended_then].into();
    assert_eq!(keys.len(), 4);

    let updated = decode_fixture("eb_license_updated.json").fact_key;
    let deprovisioned_then = key(edited("eb_license_updated.json", |v| {
        set(
            v,
            "/detail-type",
            json!("License Deprovisioned - Manufacturer"),
        )
    }));
    assert_ne!(updated, deprovisioned_then);
}

#[test]
fn created_without_intent_is_new() {
    let event = decode_ok(
        "no intent",
        edited("eb_created_new_proposer.json", |v| {
            remove(v, "/detail/agreement/intent")
        }),
    );
    assert_eq!(event, decode_fixture("eb_created_new_proposer.json"));
}

#[test]
fn null_and_empty_optionals_count_as_absent() {
    let event = decode_ok(
        "null optionals",
        edited("eb_created_renew_proposer.json", |v| {
            set(v, "/source", Value::Null);
            set(v, "/detail/offer", Value::Null);
            set(v, "/detail/acceptor/accountId", Value::Null);
            set(v, "/detail/agreement/previousAgreementId", json!(""));
        }),
    );
    assert_eq!(event.source, None);
    assert_eq!(
        event.ids,
        Identifiers {
            agreement_id: Some(AG2.to_owned()),
            ..Identifiers::default()
        }
    );

    let event = decode_ok(
        "null offer",
        edited_message("sns_subscribe_success.json", |m| {
            set(m, "/offer-identifier", Value::Null)
        }),
    );
    assert_eq!(event.ids.offer_id, None);
}

#[test]
fn agreement_id_falls_back_to_the_agreement_arn_in_resources() {
    let event = decode_ok(
        "no detail.agreement.id",
        edited("eb_ended_cancelled_proposer.json", |v| {
            remove(v, "/detail/agreement/id");
            set(
                v,
                "/resources",
                json!([
                    "arn:aws:aws-marketplace::aws:offer:offer-1",
                    "arn:aws:aws-marketplace::aws:agreement:agmt-123"
                ]),
            );
        }),
    );
    assert_eq!(
        event.subject,
        SubjectKey::Agreement {
            agreement_id: "agmt-123".to_owned()
        }
    );
    assert_eq!(event.ids.agreement_id.as_deref(), Some("agmt-123"));
    assert!(
        event.fact_key.starts_with("eb:ended:agmt-123:"),
        "{}",
        event.fact_key
    );
}

#[test]
fn kebab_case_keys_win_over_old_camel_case_ones() {
    let event = decode_ok(
        "both spellings",
        edited("raw_subscribe_success.json", |v| {
            set(v, "/CustomerIdentifier", json!("OLD"));
            set(v, "/ProductCode", json!("OLD"));
        }),
    );
    assert_eq!(event, decode_fixture("raw_subscribe_success.json"));
}

#[test]
fn a_body_of_exactly_the_limit_is_accepted() {
    let mut body = fixture("eb_license_updated.json");
    body.push_str(&" ".repeat(MAX_BODY_BYTES - body.len()));
    assert_eq!(
        decode_ok("padded", body),
        decode_fixture("eb_license_updated.json")
    );
}

#[test]
fn sqs_message_id_is_always_the_inbound_one() {
    for name in fixture_names() {
        let msg = InboundMessage {
            message_id: "another-sqs-id".to_owned(),
            ..inbound(fixture(&name))
        };
        let event = decode(&msg).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(event.sqs_message_id, "another-sqs-id", "{name}");
    }
}

// ---------------------------------------------------------------------------------------------
// Invalid input

#[test]
fn oversized_body_is_too_large() {
    let mut body = fixture("eb_license_updated.json");
    body.push_str(&" ".repeat(MAX_BODY_BYTES + 1 - body.len()));
    assert_eq!(
        decode_err(body),
        DecodeError::TooLarge {
            message_id: SQS_ID.to_owned(),
            size: MAX_BODY_BYTES + 1,
            limit: MAX_BODY_BYTES,
        }
    );
}

#[test]
fn body_that_is_not_a_json_object_is_not_json() {
    for body in [
        "",
        "subscribe-success",
        "{\"action\": ",
        "[{\"action\":\"subscribe-success\"}]",
        "\"{}\"",
        "null",
    ] {
        match decode_err(body) {
            DecodeError::NotJson {
                message_id,
                field: "body",
                detail,
            } => {
                assert_eq!(message_id, SQS_ID);
                assert!(!detail.is_empty(), "{body:?}");
            }
            other => panic!("{body:?}: {other:?}"),
        }
    }
}

#[test]
fn sns_message_that_is_not_a_json_object_is_not_json() {
    for message in ["subscribe-success", "{\"action\":", "[1, 2]", "42"] {
        let body = edited("sns_subscribe_success.json", |v| {
            set(v, "/Message", json!(message))
        });
        match decode_err(body) {
            DecodeError::NotJson {
                message_id,
                field: "Message",
                ..
            } => assert_eq!(message_id, SQS_ID),
            other => panic!("{message:?}: {other:?}"),
        }
    }
}

#[test]
fn sns_message_must_be_a_string_not_an_object() {
    let body = edited("sns_subscribe_success.json", |v| {
        set(v, "/Message", json!({"action": "subscribe-success"}))
    });
    assert_eq!(decode_err(body), wrong_type("Message", "string"));
}

#[test]
fn subscription_confirmation_is_not_a_notification() {
    assert_eq!(
        decode_err(fixture("invalid/sns_subscription_confirmation.json")),
        DecodeError::NotANotification {
            message_id: SQS_ID.to_owned(),
            kind: "SubscriptionConfirmation".to_owned(),
        }
    );
    let body = edited("sns_subscribe_success.json", |v| set(v, "/Type", json!(1)));
    assert_eq!(
        decode_err(body),
        DecodeError::NotANotification {
            message_id: SQS_ID.to_owned(),
            kind: "1".to_owned(),
        }
    );
}

#[test]
fn missing_null_or_empty_envelope_fields_are_missing() {
    for field in ["MessageId", "TopicArn", "Timestamp", "Message"] {
        let pointer = format!("/{field}");
        let removed = edited("sns_subscribe_success.json", |v| remove(v, &pointer));
        assert_eq!(decode_err(removed), missing(field), "{field} removed");
        let null = edited("sns_subscribe_success.json", |v| {
            set(v, &pointer, Value::Null)
        });
        assert_eq!(decode_err(null), missing(field), "{field} null");
        let empty = edited("sns_subscribe_success.json", |v| {
            set(v, &pointer, json!(""))
        });
        assert_eq!(decode_err(empty), missing(field), "{field} empty");
    }
}

#[test]
fn non_string_envelope_fields_are_wrong_type() {
    let body = edited("sns_subscribe_success.json", |v| {
        set(v, "/MessageId", json!(12345))
    });
    assert_eq!(decode_err(body), wrong_type("MessageId", "string"));
    let body = edited("sns_subscribe_success.json", |v| {
        set(v, "/Timestamp", json!(1_788_125_763_123_i64))
    });
    assert_eq!(decode_err(body), wrong_type("Timestamp", "string"));
}

#[test]
fn unparsable_timestamps_are_invalid_values() {
    for timestamp in [
        "yesterday",
        "2026-08-30",
        "2026-08-30 21:36",
        "2026-13-30T21:36:03Z",
        "1788125763123",
    ] {
        let body = edited("sns_subscribe_success.json", |v| {
            set(v, "/Timestamp", json!(timestamp))
        });
        assert_eq!(decode_err(body), invalid("Timestamp", timestamp));
        let body = edited("eb_created_new_proposer.json", |v| {
            set(v, "/time", json!(timestamp))
        });
        assert_eq!(decode_err(body), invalid("time", timestamp));
    }
}

#[test]
fn missing_marketplace_fields_are_named_with_their_path() {
    for (key, old_key) in [
        ("customer-identifier", "CustomerIdentifier"),
        ("product-code", "ProductCode"),
    ] {
        let body = edited_message("sns_subscribe_success.json", |m| {
            remove(m, &format!("/{key}"))
        });
        assert_eq!(decode_err(body), missing(&format!("Message.{key}")));
        // An old-style message missing the field is reported under the current name.
        let body = edited("raw_subscribe_fail.json", |v| {
            remove(v, &format!("/{old_key}"))
        });
        assert_eq!(decode_err(body), missing(key));
    }
    let body = edited_message("sns_subscribe_success.json", |m| remove(m, "/action"));
    assert_eq!(decode_err(body), missing("Message.action"));
    let body = edited("raw_subscribe_success.json", |v| {
        set(v, "/action", Value::Null)
    });
    assert_eq!(decode_err(body), missing("action"));
}

#[test]
fn wrongly_typed_marketplace_fields_are_wrong_type() {
    let body = edited_message("sns_subscribe_success.json", |m| {
        set(m, "/customer-identifier", json!(1234567))
    });
    assert_eq!(
        decode_err(body),
        wrong_type("Message.customer-identifier", "string")
    );
    let body = edited("raw_subscribe_fail.json", |v| {
        set(v, "/CustomerIdentifier", json!(["X05EXAMPLEX"]))
    });
    assert_eq!(decode_err(body), wrong_type("CustomerIdentifier", "string"));
    let body = edited("raw_subscribe_success.json", |v| {
        set(v, "/offer-identifier", json!(false))
    });
    assert_eq!(decode_err(body), wrong_type("offer-identifier", "string"));
    let body = edited("raw_subscribe_success.json", |v| {
        set(v, "/action", json!(1))
    });
    assert_eq!(decode_err(body), wrong_type("action", "string"));
}

#[test]
fn unknown_action_is_reported_truncated() {
    let body = edited_message("sns_subscribe_success.json", |m| {
        set(m, "/action", json!("subscribe-pending"))
    });
    assert_eq!(
        decode_err(body),
        DecodeError::UnknownAction {
            message_id: SQS_ID.to_owned(),
            action: "subscribe-pending".to_owned(),
        }
    );
    let long = "ü".repeat(150);
    let body = edited("raw_subscribe_success.json", |v| {
        set(v, "/action", json!(long))
    });
    assert_eq!(
        decode_err(body),
        DecodeError::UnknownAction {
            message_id: SQS_ID.to_owned(),
            action: "ü".repeat(100),
        }
    );
}

#[test]
fn unknown_detail_type_is_reported() {
    for detail_type in [
        "Purchase Agreement Created",
        "License Updated - Proposer",
        "purchase agreement created - proposer",
        "Purchase Agreement Renewed - Proposer",
        "AWS API Call via CloudTrail",
    ] {
        let body = edited("eb_created_new_proposer.json", |v| {
            set(v, "/detail-type", json!(detail_type))
        });
        assert_eq!(
            decode_err(body),
            DecodeError::UnknownDetailType {
                message_id: SQS_ID.to_owned(),
                detail_type: detail_type.to_owned(),
                event_id: Some("d5a3f8e1-6b2c-4d9e-a7f0-1c3b5e7d9a2f".to_owned()),
                event_source: Some(EVENTBRIDGE_SOURCE.to_owned()),
            }
        );
    }
}

#[test]
fn missing_eventbridge_fields_are_named_with_their_path() {
    let cases: [(&str, &str, &str); 6] = [
        ("eb_created_new_proposer.json", "/id", "id"),
        ("eb_created_new_proposer.json", "/time", "time"),
        ("eb_created_new_proposer.json", "/detail", "detail"),
        (
            "eb_license_updated.json",
            "/detail/license/arn",
            "detail.license.arn",
        ),
        (
            "eb_license_deprovisioned.json",
            "/detail/product/code",
            "detail.product.code",
        ),
        (
            "eb_ended_cancelled_manufacturer.json",
            "/detail/agreement/status",
            "detail.agreement.status",
        ),
    ];
    for (name, pointer, field) in cases {
        let body = edited(name, |v| remove(v, pointer));
        assert_eq!(decode_err(body), missing(field), "{name} without {field}");
    }
    let body = edited("eb_license_updated.json", |v| remove(v, "/detail/license"));
    assert_eq!(decode_err(body), missing("detail.license.arn"));
}

#[test]
fn agreement_without_any_id_is_missing_detail_agreement_id() {
    let body = edited("eb_amended_proposer.json", |v| {
        remove(v, "/detail/agreement/id");
        remove(v, "/resources");
    });
    assert_eq!(decode_err(body), missing("detail.agreement.id"));
    let body = edited("eb_amended_proposer.json", |v| {
        remove(v, "/detail/agreement/id");
        set(
            v,
            "/resources",
            json!(["arn:aws:aws-marketplace::aws:offer:offer-1"]),
        );
    });
    assert_eq!(decode_err(body), missing("detail.agreement.id"));
}

#[test]
fn wrongly_typed_eventbridge_fields_are_wrong_type() {
    let cases: [(&str, &str, Value, &str, &str); 7] = [
        (
            "eb_created_new_proposer.json",
            "/detail",
            json!("{\"agreement\":{}}"),
            "detail",
            "object",
        ),
        (
            "eb_created_new_proposer.json",
            "/detail/acceptor/accountId",
            json!(845_735_284_135_i64),
            "detail.acceptor.accountId",
            "string",
        ),
        (
            "eb_created_new_proposer.json",
            "/detail/offer",
            json!("offer-1234567890123"),
            "detail.offer",
            "object",
        ),
        (
            "eb_created_new_proposer.json",
            "/detail/agreement/id",
            json!(7),
            "detail.agreement.id",
            "string",
        ),
        (
            "eb_created_new_proposer.json",
            "/source",
            json!(["aws.agreement-marketplace"]),
            "source",
            "string",
        ),
        (
            "eb_created_renew_proposer.json",
            "/detail/agreement/previousAgreementId",
            json!({}),
            "detail.agreement.previousAgreementId",
            "string",
        ),
        (
            "eb_license_updated.json",
            "/detail/license/arn",
            json!(true),
            "detail.license.arn",
            "string",
        ),
    ];
    for (name, pointer, value, field, expected) in cases {
        let body = edited(name, |v| set(v, pointer, value));
        assert_eq!(
            decode_err(body),
            wrong_type(field, expected),
            "{name} {pointer}"
        );
    }
}

#[test]
fn unknown_end_status_and_intent_are_invalid_values() {
    for status in ["ACTIVE", "cancelled", "SUPERSEDED"] {
        let body = edited("eb_ended_expired_proposer.json", |v| {
            set(v, "/detail/agreement/status", json!(status))
        });
        assert_eq!(decode_err(body), invalid("detail.agreement.status", status));
    }
    for intent in ["AMEND", "new", "UPGRADE"] {
        let body = edited("eb_created_new_manufacturer.json", |v| {
            set(v, "/detail/agreement/intent", json!(intent))
        });
        assert_eq!(decode_err(body), invalid("detail.agreement.intent", intent));
    }
}

#[test]
fn raw_delivery_without_sent_timestamp_cannot_be_dated() {
    let msg = InboundMessage {
        sent_timestamp_ms: None,
        ..inbound(fixture("raw_subscribe_success.json"))
    };
    assert_eq!(
        decode(&msg),
        Err(DecodeError::MissingSentTimestamp {
            message_id: SQS_ID.to_owned(),
        })
    );
    // Enveloped and EventBridge messages carry their own time.
    for name in ["sns_subscribe_success.json", "eb_license_updated.json"] {
        let msg = InboundMessage {
            sent_timestamp_ms: None,
            ..inbound(fixture(name))
        };
        assert!(decode(&msg).is_ok(), "{name}");
    }
}

#[test]
fn json_of_no_known_shape_is_unknown_shape() {
    for body in [
        "{}",
        "{\"hello\":\"world\"}",
        "{\"type\":\"Notification\",\"Action\":\"subscribe-success\"}",
    ] {
        assert_eq!(
            decode_err(body),
            DecodeError::UnknownShape {
                message_id: SQS_ID.to_owned(),
            },
            "{body}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Never panics

/// Strings likely to reach deep into the decoder, mixed with arbitrary ones.
fn interesting_string() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "",
            "Notification",
            "SubscriptionConfirmation",
            "subscribe-success",
            "entitlement-updated",
            "NEW",
            "RENEW",
            "CANCELLED",
            "RENEWED",
            "2026-08-30T21:36:03Z",
            "2026-08-30T21:36:03.123Z",
            "+262143-12-31T23:59:59Z",
            "Purchase Agreement Created - Proposer",
            "Purchase Agreement Ended - Manufacturer",
            "License Updated - Manufacturer",
            "arn:aws:aws-marketplace::aws:agreement:",
            "arn:aws:aws-marketplace::aws:agreement:agmt-1",
            r#"{"action":"subscribe-success","product-code":"p","customer-identifier":"c"}"#,
            "[]",
        ])
        .prop_map(str::to_owned),
        any::<String>(),
    ]
}

fn interesting_key() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "Type",
            "Message",
            "MessageId",
            "Timestamp",
            "action",
            "customer-identifier",
            "CustomerIdentifier",
            "detail-type",
            "detail",
            "agreement",
            "id",
            "status",
            "intent",
            "resources",
            "license",
            "arn",
        ])
        .prop_map(str::to_owned),
        any::<String>(),
    ]
}

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_filter_map("finite", |f| serde_json::Number::from_f64(f)
            .map(Value::Number)),
        interesting_string().prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(interesting_key(), inner, 0..4)
                .prop_map(|map| Value::Object(map.into_iter().collect())),
        ]
    })
}

#[derive(Debug, Clone)]
enum Mutation {
    Remove(Index),
    Replace(Index, Value),
    InsertSibling(Index, String, Value),
}

fn arb_mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        any::<Index>().prop_map(Mutation::Remove),
        (any::<Index>(), arb_json()).prop_map(|(i, v)| Mutation::Replace(i, v)),
        (any::<Index>(), interesting_key(), arb_json())
            .prop_map(|(i, k, v)| Mutation::InsertSibling(i, k, v)),
    ]
}

#[derive(Debug, Clone)]
enum Step {
    Key(String),
    At(usize),
}

/// Every non-root node as (JSON pointer of its parent, step from the parent).
fn nodes(value: &Value, pointer: &str, out: &mut Vec<(String, Step)>) {
    match value {
        Value::Object(map) => {
            for (key, child) in map {
                out.push((pointer.to_owned(), Step::Key(key.clone())));
                let escaped = key.replace('~', "~0").replace('/', "~1");
                nodes(child, &format!("{pointer}/{escaped}"), out);
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                out.push((pointer.to_owned(), Step::At(i)));
                nodes(child, &format!("{pointer}/{i}"), out);
            }
        }
        _ => {}
    }
}

fn apply(root: &mut Value, mutation: &Mutation) {
    let mut all = Vec::new();
    nodes(root, "", &mut all);
    let index = match mutation {
        Mutation::Remove(i) | Mutation::Replace(i, _) | Mutation::InsertSibling(i, _, _) => i,
    };
    if all.is_empty() {
        return;
    }
    let (parent, step) = all[index.index(all.len())].clone();
    let Some(parent) = root.pointer_mut(&parent) else {
        return;
    };
    match (mutation, parent, step) {
        (Mutation::Remove(_), Value::Object(map), Step::Key(key)) => {
            map.remove(&key);
        }
        (Mutation::Remove(_), Value::Array(items), Step::At(i)) => {
            items.remove(i);
        }
        (Mutation::Replace(_, new), Value::Object(map), Step::Key(key)) => {
            map.insert(key, new.clone());
        }
        (Mutation::Replace(_, new), Value::Array(items), Step::At(i)) => {
            items[i] = new.clone();
        }
        (Mutation::InsertSibling(_, key, new), Value::Object(map), _) => {
            map.insert(key.clone(), new.clone());
        }
        _ => {}
    }
}

/// A fixture with `mutations` applied, reaching inside an SNS `Message` as well.
fn mutated(name: &str, mutations: &[Mutation]) -> String {
    let mut value: Value = serde_json::from_str(&fixture(name)).expect("fixture is JSON");
    let inner = value["Message"]
        .as_str()
        .and_then(|m| serde_json::from_str::<Value>(m).ok());
    if let Some(inner) = inner {
        value["Message"] = inner;
    }
    for mutation in mutations {
        apply(&mut value, mutation);
    }
    if let Some(message) = value.get_mut("Message") {
        if message.is_object() || message.is_array() {
            *message = Value::String(message.to_string());
        }
    }
    value.to_string()
}

/// Decodes and checks what must hold for any input: no panic, and the right message id.
fn check_total(body: String, sent_timestamp_ms: Option<i64>) -> Result<(), TestCaseError> {
    let msg = InboundMessage {
        message_id: "prop-msg".to_owned(),
        body,
        sent_timestamp_ms,
    };
    match decode(&msg) {
        Ok(event) => prop_assert_eq!(event.sqs_message_id, "prop-msg"),
        Err(e) => {
            prop_assert_eq!(e.message_id(), "prop-msg");
            let echoed = match &e {
                DecodeError::InvalidValue { value, .. } => Some(value),
                DecodeError::UnknownAction { action, .. } => Some(action),
                DecodeError::UnknownDetailType { detail_type, .. } => Some(detail_type),
                DecodeError::NotANotification { kind, .. } => Some(kind),
                _ => None,
            };
            if let Some(echoed) = echoed {
                prop_assert!(echoed.chars().count() <= 100, "{:?}", e);
            }
            prop_assert!(!e.to_string().is_empty());
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn never_panics_on_arbitrary_strings(body in any::<String>(), sent in any::<Option<i64>>()) {
        check_total(body, sent)?;
    }

    #[test]
    fn never_panics_on_arbitrary_json(value in arb_json(), sent in any::<Option<i64>>()) {
        check_total(value.to_string(), sent)?;
    }

    #[test]
    fn never_panics_on_mutated_fixtures(
        name in prop::sample::select(fixture_names()),
        mutations in prop::collection::vec(arb_mutation(), 1..4),
        sent in any::<Option<i64>>(),
    ) {
        check_total(mutated(&name, &mutations), sent)?;
    }

    #[test]
    fn never_panics_on_truncated_fixtures(
        name in prop::sample::select(fixture_names()),
        cut in any::<Index>(),
    ) {
        let body = fixture(&name);
        let prefix: String = body.chars().take(cut.index(body.chars().count() + 1)).collect();
        check_total(prefix, Some(SENT_MS))?;
    }
}

#[test]
fn control_characters_in_text_fields_are_refused_with_the_field_named() {
    let nul_customer = edited_message("sns_subscribe_success.json", |m| {
        set(m, "/customer-identifier", json!("X01\u{0}EXAMPLEX"));
    });
    match decode_err(nul_customer) {
        e @ DecodeError::ControlCharacter { .. } => {
            assert_eq!(e.reason(), "control_character");
            assert!(e.to_string().contains("Message.customer-identifier"), "{e}");
        }
        other => panic!("{other:?}"),
    }
    let nul_agreement = edited("eb_created_new_proposer.json", |v| {
        set(v, "/detail/agreement/id", json!("agmt-\u{7}1"));
    });
    assert!(matches!(
        decode_err(nul_agreement),
        DecodeError::ControlCharacter { field, .. } if field == "detail.agreement.id"
    ));
    // The SNS Message is itself a document: its own newlines are whitespace, but a NUL in it
    // is refused before it is parsed.
    let mut envelope: Value =
        serde_json::from_str(&fixture("sns_subscribe_success.json")).expect("fixture");
    let message = envelope["Message"].as_str().expect("Message").to_string();
    set(
        &mut envelope,
        "/Message",
        json!(message.replace(',', ",\n")),
    );
    decode_ok("pretty-printed Message", envelope.to_string());
    set(&mut envelope, "/Message", json!(format!("{message}\u{0}")));
    assert!(matches!(
        decode_err(envelope.to_string()),
        DecodeError::ControlCharacter { field, .. } if field == "Message"
    ));
}
