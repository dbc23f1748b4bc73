//! Unit tests of the shared field rules.

use super::eventbridge::*;
use super::fields::*;
use super::*;
use crate::time::parse_rfc3339;
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
        parse_rfc3339("2026-08-30T21:36:03.123Z"),
        Some(1_788_125_763_123)
    );
    assert_eq!(
        parse_rfc3339("2026-08-30T23:36:03+02:00"),
        Some(1_788_125_763_000)
    );
    assert_eq!(parse_rfc3339("2026-08-30"), None);
    assert_eq!(
        parse_rfc3339("9999-01-01T00:00:00Z"),
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
    let not_array =
        object(json!({"detail": {}, "resources": "arn:aws:aws-marketplace::aws:agreement:agmt-1"}));
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
