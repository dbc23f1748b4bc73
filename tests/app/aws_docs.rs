//! AWS's own examples (tests/fixtures/aws-docs/, listed in its manifest): every one decodes to
//! the event it documents, every handled detail-type has one, and the lifecycles AWS describes
//! walk through the store to the states and details they should, on SQLite and PostgreSQL.

use crate::common::*;
use mplink::event::{
    decode, handled_detail_types, Action, BillingAdjustment, DecodeError, InboundMessage, Party,
};
use mplink::ledger::{effect, Effect, LinkRequest, LinkState, Outcome, SubState};
use mplink::metrics::{Metrics, MAX_UNRECOGNISED_LABELS, OTHER_LABEL};
use mplink::process::{Pipeline, Processed, UnrecognisedPolicy};
use mplink::store::{StatusFilter, StatusRow, Store};
use mplink::verify::{Verifier, VerifyConfig};
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;

const AG: &str = "agmt-4mwg1nevbokzw95eca5797ixs";
/// The agreement of AWS's cancellation and billing-adjustment examples.
const AG_REQUESTS: &str = "agmt-abcdexampleid";
/// The agreement AWS's Created (intent RENEW) example renews `AG` into.
const AG_RENEWAL: &str = "agmt-newrenewalagreementid";
/// The detail-types AWS prints nowhere (it prints these events for the other party only):
/// their fixtures are the other party's example under this name (provenance "assumed").
const NEVER_PRINTED: [&str; 5] = [
    "Purchase Agreement Ending - Manufacturer",
    "Purchase Agreement Renewal Terms Finalized - Manufacturer",
    "Purchase Agreement Renewal Upcoming - Manufacturer",
    "Purchase Agreement Advisory Issued - Proposer",
    "Purchase Agreement Advisory Resolved - Proposer",
];
const PRODUCT_CODE: &str = "aw4fgf5tyo5w2ap6fEXAMPLE";
/// The license of AWS's License examples, as a registration (ResolveCustomer) spells it.
const LICENSE_ARN: &str =
    "arn:aws:license-manager::123456789012:license:l-e52ca6f38bf84d0fafb8802ca15ac11x";
const SNS_PRODUCT: &str = "n0123EXAMPLEXXXXXXXXXXXX";
/// The SNS examples' SQS send time (raw delivery dates events by it).
const SENT_MS: i64 = 1_725_053_763_000;

#[derive(Debug, Deserialize)]
struct Entry {
    file: String,
    source: String,
    section: String,
    provenance: String,
    /// Published: the copy of AWS's text the file was taken from.
    retrieved_from: Option<Retrieved>,
    /// Assumed: the published example it restates under a name AWS never prints.
    derived_from: Option<String>,
    expect: Expect,
}

#[derive(Debug, Deserialize)]
struct Retrieved {
    repo: String,
    path: String,
    commit: String,
}

#[derive(Debug, Deserialize)]
struct Expect {
    action: String,
    party: Option<String>,
    effect: String,
    subject: String,
}

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/aws-docs")
}

fn manifest() -> Vec<Entry> {
    let text = std::fs::read_to_string(dir().join("manifest.json")).expect("manifest");
    serde_json::from_str(&text).expect("manifest is a list of entries")
}

fn example(file: &str) -> Value {
    let text = std::fs::read_to_string(dir().join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{file}: {e}"))
}

/// An example with `edit` applied, as an SQS body.
fn edited(file: &str, edit: impl FnOnce(&mut Value)) -> String {
    let mut value = example(file);
    edit(&mut value);
    value.to_string()
}

/// The example as the queue would hold it (SNS examples as raw deliveries sent at `SENT_MS`).
fn inbound(sqs_id: &str, body: String) -> InboundMessage {
    InboundMessage {
        message_id: sqs_id.to_owned(),
        body,
        sent_timestamp_ms: Some(SENT_MS),
    }
}

fn party_name(action: &Action) -> Option<&'static str> {
    let party = match action {
        Action::AgreementCreated { party, .. }
        | Action::AgreementAmended { party }
        | Action::AgreementEnded { party, .. }
        | Action::AgreementNotice { party, .. } => *party,
        Action::LicenseUpdated | Action::LicenseDeprovisioned => Party::Manufacturer,
        _ => return None,
    };
    Some(match party {
        Party::Proposer => "Proposer",
        Party::Manufacturer => "Manufacturer",
    })
}

/// The example with the fields every copy of AWS's text spells differently set aside.
fn without_id_and_detail_type(file: &str) -> Value {
    let mut value = example(file);
    let object = value.as_object_mut().expect("object");
    object.remove("id");
    object.remove("detail-type");
    value
}

#[test]
fn every_documented_example_decodes_to_its_intended_event() {
    let entries = manifest();
    assert!(entries.len() >= 31, "{} examples", entries.len());
    let mut assumed = BTreeSet::new();
    for entry in &entries {
        assert!(entry
            .source
            .starts_with("https://docs.aws.amazon.com/marketplace/"));
        assert!(!entry.section.is_empty());
        match entry.provenance.as_str() {
            "published" => {
                let from = entry
                    .retrieved_from
                    .as_ref()
                    .unwrap_or_else(|| panic!("{}: published from where?", entry.file));
                assert!(from.repo.contains('/') && from.path.ends_with(".md"));
                assert!(
                    from.commit.len() == 40 && from.commit.bytes().all(|b| b.is_ascii_hexdigit()),
                    "{}",
                    entry.file
                );
                assert!(entry.derived_from.is_none(), "{}", entry.file);
            }
            "assumed" => {
                let original = entry.derived_from.as_deref().expect("derived_from");
                let published = entries
                    .iter()
                    .find(|e| e.file == original)
                    .unwrap_or_else(|| panic!("{}: {original} is not listed", entry.file));
                assert_eq!(published.provenance, "published", "{}", entry.file);
                assert!(entry.retrieved_from.is_none(), "{}", entry.file);
                // The other party's example, under the other name: nothing else differs.
                assert_eq!(
                    without_id_and_detail_type(&entry.file),
                    without_id_and_detail_type(original),
                    "{}",
                    entry.file
                );
                let value = example(&entry.file);
                assumed.insert(
                    value["detail-type"]
                        .as_str()
                        .expect("detail-type")
                        .to_owned(),
                );
            }
            other => panic!("{}: provenance {other}", entry.file),
        }
        let body = example(&entry.file).to_string();
        let event = decode(&inbound("sqs-1", body))
            .unwrap_or_else(|e| panic!("{} is rejected: {e}", entry.file));
        assert_eq!(event.action.name(), entry.expect.action, "{}", entry.file);
        assert_eq!(
            party_name(&event.action),
            entry.expect.party.as_deref(),
            "{}",
            entry.file
        );
        let noted = effect(&event.action) == Effect::Note;
        assert_eq!(noted, entry.expect.effect == "noted", "{}", entry.file);
        assert_eq!(
            event.subject.as_key(),
            entry.expect.subject,
            "{}",
            entry.file
        );
    }
    assert_eq!(assumed, BTreeSet::from(NEVER_PRINTED.map(str::to_owned)));
}

fn decoded(file: &str) -> mplink::event::Event {
    decode(&inbound("sqs-1", example(file).to_string())).unwrap_or_else(|e| panic!("{file}: {e}"))
}

#[test]
fn the_cancellation_requests_name_the_buyer_as_acceptor() {
    for file in [
        "agreement-cancellation-request-pending-approval-proposer.json",
        "agreement-cancellation-request-approved-proposer.json",
        "agreement-cancellation-request-rejected-proposer.json",
        "agreement-cancellation-request-cancelled-proposer.json",
        "agreement-cancellation-request-validation-failed-proposer.json",
    ] {
        let event = decoded(file);
        assert_eq!(
            event.ids.customer_aws_account_id.as_deref(),
            Some("123465789012"),
            "{file}"
        );
        // The seller's copy does not name the proposer (the seller itself).
        assert_eq!(event.details.proposer_account_id, None, "{file}");
        assert_eq!(event.ids.offer_id.as_deref(), Some("offer-exampleid"));
        assert_eq!(event.details.product_id.as_deref(), Some("prod-exampleid"));
    }
    // Where both are present, the acceptor object is the one AWS's agreement events use.
    let both = edited(
        "agreement-cancellation-request-pending-approval-proposer.json",
        |v| v["detail"]["acceptor"] = json!({"accountId": "845735284135"}),
    );
    let event = decode(&inbound("sqs-2", both)).expect("decodes");
    assert_eq!(
        event.ids.customer_aws_account_id.as_deref(),
        Some("845735284135")
    );
}

#[test]
fn the_ending_notice_says_how_many_days_are_left() {
    let event = decoded("purchase-agreement-ending-proposer.json");
    assert_eq!(event.details.days_before_end, Some(180));
    assert_eq!(
        decoded("purchase-agreement-ending-manufacturer.json")
            .details
            .days_before_end,
        Some(180)
    );
    // Every count AWS documents, and none on an event that is not an Ending notice.
    for days in [180, 120, 90, 60, 30, 0] {
        let body = edited("purchase-agreement-ending-proposer.json", |v| {
            v["detail"]["agreement"]["daysBeforeEndTime"] = json!(days);
        });
        let event = decode(&inbound("sqs-1", body)).expect("decodes");
        assert_eq!(event.details.days_before_end, Some(days));
    }
    let amended = edited("purchase-agreement-amended-proposer.json", |v| {
        v["detail"]["agreement"]["daysBeforeEndTime"] = json!(90);
    });
    let event = decode(&inbound("sqs-1", amended)).expect("decodes");
    assert_eq!(event.details.days_before_end, None);
    let absent = edited("purchase-agreement-ending-proposer.json", |v| {
        v["detail"]["agreement"]["daysBeforeEndTime"] = Value::Null;
    });
    let event = decode(&inbound("sqs-1", absent)).expect("decodes");
    assert_eq!(event.details.days_before_end, None);
}

#[test]
fn a_days_before_end_that_is_no_count_of_days_is_refused_by_name() {
    let field = "detail.agreement.daysBeforeEndTime";
    for (value, error) in [
        (
            json!(-30),
            DecodeError::InvalidValue {
                message_id: "sqs-bad".into(),
                field: field.into(),
                value: "-30".into(),
            },
        ),
        (
            json!(30.5),
            DecodeError::InvalidValue {
                message_id: "sqs-bad".into(),
                field: field.into(),
                value: "30.5".into(),
            },
        ),
        (
            json!(3_661),
            DecodeError::InvalidValue {
                message_id: "sqs-bad".into(),
                field: field.into(),
                value: "3661".into(),
            },
        ),
        (
            json!(u64::MAX),
            DecodeError::InvalidValue {
                message_id: "sqs-bad".into(),
                field: field.into(),
                value: u64::MAX.to_string(),
            },
        ),
        (
            json!("180"),
            DecodeError::WrongType {
                message_id: "sqs-bad".into(),
                field: field.into(),
                expected: "a non-negative integer",
            },
        ),
        (
            json!(true),
            DecodeError::WrongType {
                message_id: "sqs-bad".into(),
                field: field.into(),
                expected: "a non-negative integer",
            },
        ),
    ] {
        let body = edited("purchase-agreement-ending-proposer.json", |v| {
            v["detail"]["agreement"]["daysBeforeEndTime"] = value.clone();
        });
        assert_eq!(decode(&inbound("sqs-bad", body)), Err(error), "{value}");
    }
    // The largest count accepted.
    let body = edited("purchase-agreement-ending-proposer.json", |v| {
        v["detail"]["agreement"]["daysBeforeEndTime"] = json!(3_660);
    });
    let event = decode(&inbound("sqs-1", body)).expect("decodes");
    assert_eq!(event.details.days_before_end, Some(3_660));
}

fn adjustment(amount: &str) -> BillingAdjustment {
    BillingAdjustment {
        id: Some("ba-abcdexampleid".into()),
        amount: Some(amount.into()),
        currency_code: Some("USD".into()),
        reason_code: Some("INCORRECT_TERMS_ACCEPTED".into()),
        original_invoice_id: Some("2028746221".into()),
    }
}

#[test]
fn the_billing_adjustments_say_what_was_adjusted() {
    assert_eq!(
        decoded("purchase-agreement-billing-adjustment-completed-proposer.json")
            .details
            .billing_adjustment,
        Some(adjustment("-100.00"))
    );
    assert_eq!(
        decoded("purchase-agreement-billing-adjustment-failed-proposer.json")
            .details
            .billing_adjustment,
        Some(adjustment("-1000.00"))
    );
    // Amounts as AWS might write them, and an event that names no part of the adjustment.
    for amount in ["100", "+5.5", "0.00", "-0"] {
        let body = edited(
            "purchase-agreement-billing-adjustment-completed-proposer.json",
            |v| v["detail"]["billingAdjustmentRequest"]["adjustmentAmount"] = json!(amount),
        );
        let event = decode(&inbound("sqs-1", body)).expect("decodes");
        let decoded = event.details.billing_adjustment.expect("adjustment");
        assert_eq!(decoded.amount.as_deref(), Some(amount));
    }
    let bare = edited(
        "purchase-agreement-billing-adjustment-completed-proposer.json",
        |v| {
            let detail = v["detail"].as_object_mut().expect("detail");
            detail.remove("billingAdjustmentRequest");
            detail.remove("invoice");
        },
    );
    let event = decode(&inbound("sqs-1", bare)).expect("decodes");
    assert_eq!(event.details.billing_adjustment, None);
    // Only a billing-adjustment event's adjustment is read.
    let other = edited(
        "agreement-cancellation-request-approved-proposer.json",
        |v| {
            v["detail"]["billingAdjustmentRequest"] = json!({"adjustmentAmount": "-1.00"});
        },
    );
    let event = decode(&inbound("sqs-1", other)).expect("decodes");
    assert_eq!(event.details.billing_adjustment, None);
}

#[test]
fn a_malformed_billing_adjustment_is_refused_by_name() {
    let file = "purchase-agreement-billing-adjustment-completed-proposer.json";
    let invalid = |field: &str, value: &str| DecodeError::InvalidValue {
        message_id: "sqs-bad".into(),
        field: field.into(),
        value: value.into(),
    };
    let wrong = |field: &str, expected: &'static str| DecodeError::WrongType {
        message_id: "sqs-bad".into(),
        field: field.into(),
        expected,
    };
    let amount = "detail.billingAdjustmentRequest.adjustmentAmount";
    let currency = "detail.billingAdjustmentRequest.currencyCode";
    let long = format!("1{}", "0".repeat(32));
    let cases: Vec<(&str, &str, Value, DecodeError)> = vec![
        (
            "billingAdjustmentRequest",
            "adjustmentAmount",
            json!("1e3"),
            invalid(amount, "1e3"),
        ),
        (
            "billingAdjustmentRequest",
            "adjustmentAmount",
            json!("-"),
            invalid(amount, "-"),
        ),
        (
            "billingAdjustmentRequest",
            "adjustmentAmount",
            json!("1."),
            invalid(amount, "1."),
        ),
        (
            "billingAdjustmentRequest",
            "adjustmentAmount",
            json!(".5"),
            invalid(amount, ".5"),
        ),
        (
            "billingAdjustmentRequest",
            "adjustmentAmount",
            json!("1,000.00"),
            invalid(amount, "1,000.00"),
        ),
        (
            "billingAdjustmentRequest",
            "adjustmentAmount",
            json!(long.clone()),
            invalid(amount, &long),
        ),
        (
            "billingAdjustmentRequest",
            "adjustmentAmount",
            json!(-100.0),
            wrong(amount, "string"),
        ),
        (
            "billingAdjustmentRequest",
            "currencyCode",
            json!("usd"),
            invalid(currency, "usd"),
        ),
        (
            "billingAdjustmentRequest",
            "currencyCode",
            json!("US"),
            invalid(currency, "US"),
        ),
        (
            "billingAdjustmentRequest",
            "currencyCode",
            json!(840),
            wrong(currency, "string"),
        ),
        (
            "billingAdjustmentRequest",
            "id",
            json!(7),
            wrong("detail.billingAdjustmentRequest.id", "string"),
        ),
        (
            "invoice",
            "originalInvoiceId",
            json!(2028746221),
            wrong("detail.invoice.originalInvoiceId", "string"),
        ),
    ];
    for (object, key, value, error) in cases {
        let body = edited(file, |v| v["detail"][object][key] = value.clone());
        assert_eq!(
            decode(&inbound("sqs-bad", body)),
            Err(error),
            "{key}: {value}"
        );
    }
}

#[test]
fn every_handled_detail_type_has_a_documented_example_with_its_own_id() {
    let mut documented = BTreeSet::new();
    let mut ids = BTreeSet::new();
    for entry in manifest() {
        let value = example(&entry.file);
        if let Some(detail_type) = value["detail-type"].as_str() {
            documented.insert(detail_type.to_owned());
            assert!(
                ids.insert(value["id"].as_str().expect("id").to_owned()),
                "{} reuses an id",
                entry.file
            );
        }
    }
    let handled: BTreeSet<String> = handled_detail_types().map(str::to_owned).collect();
    assert_eq!(documented, handled);
}

// ---------------------------------------------------------------------------------------------
// Lifecycles through the store

async fn apply(store: &Store, sqs_id: &str, body: String) -> Outcome {
    let event = decode(&inbound(sqs_id, body.clone())).expect("decodes");
    store.apply(&event, &body).await.expect("apply")
}

async fn org_row(store: &Store, org: &str) -> StatusRow {
    let filter = StatusFilter {
        org_id: Some(org.into()),
        customer_identifier: None,
    };
    let rows = store.status(&filter).await.expect("status");
    assert_eq!(rows.len(), 1, "one row for {org}: {rows:?}");
    rows.into_iter().next().expect("row")
}

fn license_link(org: &str) -> LinkRequest {
    LinkRequest {
        org_id: org.into(),
        product_code: PRODUCT_CODE.into(),
        customer_identifier: None,
        customer_aws_account_id: None,
        license_arn: Some(LICENSE_ARN.into()),
        requested_at_ms: T0,
    }
}

/// A subscription's state and its organization's link state.
type View = (SubState, Option<LinkState>);

fn link_state(row: &StatusRow) -> View {
    (row.subscription_state, row.link_state)
}

/// Rows of subscriptions no event ever touched (what a duplicate used to leave behind).
async fn untouched_rows(store: &Store) -> Vec<String> {
    store
        .subscriptions()
        .await
        .expect("subscriptions")
        .into_iter()
        .filter(|s| s.last_event_time_ms.is_none())
        .map(|s| s.key)
        .collect()
}

/// An example re-keyed to another agreement (its `resources` too), as a lifecycle needs when
/// AWS's examples of one story name different agreements.
fn for_agreement(file: &str, agreement_id: &str) -> Value {
    let mut value = example(file);
    value["resources"] = json!([format!(
        "arn:aws:aws-marketplace::aws:agreement:{agreement_id}"
    )]);
    value["detail"]["agreement"]["id"] = json!(agreement_id);
    value
}

async fn create_license_amend_end_deprovision(backend: Backend) {
    let db = TestDb::new(backend).await;
    let s = &db.store;
    s.link(&license_link("org-1")).await.expect("link");
    // AWS prints every example of this agreement at one time: the tie rule alone (the later
    // step in a subscription's life wins) must walk them to the right states.
    let steps: [(&str, Outcome, View); 5] = [
        (
            "purchase-agreement-created-proposer.json",
            Outcome::Applied,
            (SubState::Active, Some(LinkState::Syncing)),
        ),
        (
            "license-updated-manufacturer.json",
            Outcome::Applied,
            (SubState::Active, Some(LinkState::Linked)),
        ),
        (
            "purchase-agreement-amended-proposer.json",
            Outcome::Applied,
            (SubState::Active, Some(LinkState::Linked)),
        ),
        (
            "purchase-agreement-ended-proposer.json",
            Outcome::Applied,
            (SubState::Cancelling, Some(LinkState::UnlinkPending)),
        ),
        (
            "license-deprovisioned-manufacturer.json",
            Outcome::Applied,
            (SubState::Cancelled, Some(LinkState::Unlinked)),
        ),
    ];
    for (i, (file, outcome, expected)) in steps.into_iter().enumerate() {
        let body = example(file).to_string();
        assert_eq!(apply(s, &format!("sqs-{i}"), body).await, outcome, "{file}");
        // Until the License event names the license, the license-keyed link cannot see it.
        let row = org_row(s, "org-1").await;
        if i == 0 {
            assert_eq!(row.link_state, expected.1, "{file}");
            continue;
        }
        assert_eq!(link_state(&row), expected, "{file}");
        if i == 2 {
            // AWS's License example names another offer and product id than its agreement
            // examples, at the same time: at equal times the greater fact key decides
            // ("eb:license-updated…" > "eb:created…" > "eb:amended…"), whatever the order.
            let d = &row.details;
            assert_eq!(d.offer_id.as_deref(), Some("8kkr91jo647j3qxlcjhlqce7y"));
            assert_eq!(d.product_id.as_deref(), Some("prod-qtwveEXAMPLE"));
            // Said by the amendment alone.
            assert_eq!(d.auto_renewal, Some(true));
            assert_eq!(d.proposer_account_id.as_deref(), Some("123456512334"));
            assert_eq!(
                d.resale_authorization_id.as_deref(),
                Some("resaleauthz-yaxjqxiskysxa")
            );
            assert_eq!(
                d.agreement_start_time.as_deref(),
                Some("2024-08-30T21:36:03.000Z")
            );
            assert_eq!(
                d.agreement_end_time.as_deref(),
                Some("2025-05-30T21:36:03.000Z")
            );
            assert_eq!(
                d.agreement_acceptance_time.as_deref(),
                Some("2024-06-26T21:36:03.000Z")
            );
            assert_eq!(row.customer_aws_account_id.as_deref(), Some("845735284135"));
            assert!(row.notes().contains(&"ends on 2025-05-30".to_string()));
            assert!(!row.notes().contains(&"auto-renewal off".to_string()));
        }
    }
    // A later amendment (the seller opting out of auto-renewal, as the page says such an
    // opt-out surfaces) is newer than what the creation said, so it wins.
    let opt_out = edited("purchase-agreement-amended-proposer.json", |v| {
        v["id"] = json!("01234567-0123-0123-0123-100000000003");
        v["time"] = json!("2024-09-30T21:36:03Z");
        v["detail"]["agreement"]["autoRenewalEnabled"] = json!(false);
        v["detail"]["renewalSummary"]["disabledBy"] = json!("PROPOSER");
    });
    assert_eq!(apply(s, "sqs-opt-out", opt_out).await, Outcome::Applied);
    let row = org_row(s, "org-1").await;
    assert_eq!(row.details.auto_renewal, Some(false));
    assert_eq!(row.details.offer_id.as_deref(), Some("offer-1234567890123"));
    assert_eq!(
        row.details.product_id.as_deref(),
        Some("prod-aw4fgf5tyo5w2ap6fEXAMPLE")
    );
    assert!(row.notes().contains(&"auto-renewal off".to_string()));
    // The Manufacturer copies of the same facts change nothing.
    for (i, file) in [
        "purchase-agreement-created-manufacturer.json",
        "purchase-agreement-amended-manufacturer.json",
        "purchase-agreement-ended-manufacturer.json",
    ]
    .into_iter()
    .enumerate()
    {
        let body = example(file).to_string();
        assert_eq!(
            apply(s, &format!("sqs-copy-{i}"), body).await,
            Outcome::Duplicate,
            "{file}"
        );
    }
    assert_eq!(
        link_state(&org_row(s, "org-1").await),
        (SubState::Cancelled, Some(LinkState::Unlinked))
    );
    db.cleanup().await;
}

async fn renewal_with_previous_agreement_id(backend: Backend) {
    let db = TestDb::new(backend).await;
    let s = &db.store;
    s.link(&license_link("org-1")).await.expect("link");
    apply(
        s,
        "sqs-1",
        example("purchase-agreement-created-proposer.json").to_string(),
    )
    .await;
    apply(
        s,
        "sqs-2",
        example("license-updated-manufacturer.json").to_string(),
    )
    .await;
    let renewed = edited("purchase-agreement-ended-proposer.json", |v| {
        v["detail"]["agreement"]["status"] = json!("RENEWED");
    });
    assert_eq!(apply(s, "sqs-3", renewed).await, Outcome::Applied);
    assert_eq!(
        org_row(s, "org-1").await.link_state,
        Some(LinkState::Linked),
        "a renewal never unlinks"
    );
    // AWS's own example of the renewal's Created event, naming AG as its previous agreement.
    let renewal = example("purchase-agreement-created-renew-proposer.json").to_string();
    assert_eq!(apply(s, "sqs-4", renewal).await, Outcome::Applied);
    let row = org_row(s, "org-1").await;
    assert_eq!(row.agreement_id.as_deref(), Some(AG_RENEWAL));
    assert_eq!(
        link_state(&row),
        (SubState::Active, Some(LinkState::Linked))
    );
    assert_eq!(
        row.details.agreement_end_time.as_deref(),
        Some("2025-05-30T21:36:03.000Z")
    );
    assert_eq!(
        row.details.product_id.as_deref(),
        Some("prod-aw4fgf5tyo5w2ap6fEXAMPLE")
    );
    assert_eq!(row.details.resale_authorization_id, None);
    db.cleanup().await;
}

async fn license_before_create(backend: Backend) {
    let db = TestDb::new(backend).await;
    let s = &db.store;
    s.link(&license_link("org-1")).await.expect("link");
    let license = example("license-updated-manufacturer.json").to_string();
    assert_eq!(apply(s, "sqs-1", license).await, Outcome::Applied);
    assert_eq!(
        link_state(&org_row(s, "org-1").await),
        (SubState::Pending, Some(LinkState::Syncing))
    );
    let created = example("purchase-agreement-created-proposer.json").to_string();
    assert_eq!(apply(s, "sqs-2", created).await, Outcome::Applied);
    assert_eq!(
        link_state(&org_row(s, "org-1").await),
        (SubState::Active, Some(LinkState::Linked))
    );
    db.cleanup().await;
}

async fn cancellation_request_pending_approved_ended(backend: Backend) {
    let db = TestDb::new(backend).await;
    let s = &db.store;
    s.link(&license_link("org-1")).await.expect("link");
    // AWS's cancellation examples name another agreement than its agreement and license
    // examples: the agreement's own events are re-keyed to it.
    let created = for_agreement("purchase-agreement-created-proposer.json", AG_REQUESTS);
    assert_eq!(
        apply(s, "sqs-1", created.to_string()).await,
        Outcome::Applied
    );
    let license = for_agreement("license-updated-manufacturer.json", AG_REQUESTS);
    assert_eq!(
        apply(s, "sqs-2", license.to_string()).await,
        Outcome::Applied
    );

    let pending = example("agreement-cancellation-request-pending-approval-proposer.json");
    assert_eq!(apply(s, "sqs-3", pending.to_string()).await, Outcome::Noted);
    let row = org_row(s, "org-1").await;
    assert_eq!(row.agreement_id.as_deref(), Some(AG_REQUESTS));
    assert_eq!(
        link_state(&row),
        (SubState::Active, Some(LinkState::Linked))
    );
    assert!(row.notes().contains(&"cancellation requested".to_string()));
    assert_eq!(
        serde_json::to_value(&row).expect("json")["cancellation_request"],
        json!("pending_approval")
    );

    let approved = example("agreement-cancellation-request-approved-proposer.json");
    assert_eq!(
        apply(s, "sqs-4", approved.to_string()).await,
        Outcome::Noted
    );
    // The pending request again (a redelivery through another SQS message) is a duplicate, and
    // an older copy of it under a new event id is noted but cannot undo the approval.
    assert_eq!(
        apply(s, "sqs-5", pending.to_string()).await,
        Outcome::Duplicate
    );
    let older = edited(
        "agreement-cancellation-request-pending-approval-proposer.json",
        |v| {
            v["id"] = json!("01234567-0123-0123-0123-100000000002");
            v["time"] = json!("2025-01-01T13:14:00Z");
        },
    );
    assert_eq!(apply(s, "sqs-6", older).await, Outcome::Noted);
    let row = org_row(s, "org-1").await;
    assert!(
        row.notes().contains(&"cancellation approved".to_string()),
        "{:?}",
        row.notes()
    );
    assert_eq!(
        row.details.cancellation_request_time.as_deref(),
        Some("2025-01-01T13:16:07.000Z")
    );

    let mut ended = for_agreement("purchase-agreement-ended-proposer.json", AG_REQUESTS);
    ended["time"] = json!("2025-01-06T00:00:00Z");
    assert_eq!(ended["detail"]["agreement"]["status"], json!("CANCELLED"));
    assert_eq!(apply(s, "sqs-7", ended.to_string()).await, Outcome::Applied);
    assert_eq!(
        link_state(&org_row(s, "org-1").await),
        (SubState::Cancelling, Some(LinkState::UnlinkPending))
    );
    db.cleanup().await;
}

async fn every_informational_example_is_noted_and_shown(backend: Backend) {
    let db = TestDb::new(backend).await;
    let s = &db.store;
    let mut noted = 0;
    for (i, entry) in manifest().into_iter().enumerate() {
        if entry.expect.effect != "noted" {
            continue;
        }
        let body = example(&entry.file).to_string();
        let outcome = apply(s, &format!("sqs-{i}"), body).await;
        // The Manufacturer copy of a Proposer notice is the same fact.
        let expected = if entry.expect.party.as_deref() == Some("Manufacturer") {
            Outcome::Duplicate
        } else {
            Outcome::Noted
        };
        assert_eq!(outcome, expected, "{}", entry.file);
        noted += 1;
    }
    assert_eq!(noted, 17, "informational examples");
    let rows = s.status(&StatusFilter::default()).await.expect("status");
    assert_eq!(rows.len(), 2, "{rows:?}");
    // AWS's agreement notices, about AG.
    let row = &rows[0];
    assert_eq!(row.agreement_id.as_deref(), Some(AG));
    assert_eq!(row.subscription_state, SubState::Pending);
    let d = &row.details;
    assert_eq!(
        d.ending_notice_time.as_deref(),
        Some("2026-07-04T00:00:00.000Z")
    );
    assert_eq!(d.ending_notice_days_before_end, Some(180));
    assert!(
        row.notes()
            .contains(&"ends on 2026-12-31 (180-day notice)".to_string()),
        "{:?}",
        row.notes()
    );
    assert_eq!(
        serde_json::to_value(row).expect("json")["ending_notice_days_before_end"],
        json!(180)
    );
    assert_eq!(
        d.renewal_terms_finalized_time.as_deref(),
        Some("2026-11-01T00:00:00.000Z")
    );
    assert_eq!(
        d.renewal_upcoming_time.as_deref(),
        Some("2026-12-01T00:00:00.000Z")
    );
    assert_eq!(
        d.agreement_end_time.as_deref(),
        Some("2026-12-31T00:00:00.000Z")
    );
    // AWS dates Issued and Resolved at the same time: the greater fact key ("…resolved…" >
    // "…issued…") decides, whatever the arrival order.
    assert_eq!(
        serde_json::to_value(row).expect("json")["advisory"],
        json!("resolved")
    );
    // AWS's cancellation and billing-adjustment examples, about AG_REQUESTS.
    let row = &rows[1];
    assert_eq!(row.agreement_id.as_deref(), Some(AG_REQUESTS));
    assert_eq!(row.subscription_state, SubState::Pending);
    assert_eq!(
        row.customer_aws_account_id.as_deref(),
        Some("123465789012"),
        "the buyer, from the cancellation requests' acceptorId"
    );
    // Rejected (2025-01-02T10:30) is the newest of the five requests.
    assert_eq!(
        serde_json::to_value(row).expect("json")["cancellation_request"],
        json!("rejected")
    );
    assert_eq!(
        row.details.cancellation_request_time.as_deref(),
        Some("2025-01-02T10:30:00.000Z")
    );
    // Failed (13:15:00) is newer than Completed (13:12:22), and its adjustment goes with it.
    assert_eq!(
        serde_json::to_value(row).expect("json")["billing_adjustment"],
        json!("failed")
    );
    assert_eq!(
        row.details.billing_adjustment_request,
        Some(adjustment("-1000.00"))
    );
    assert_eq!(
        serde_json::to_value(row).expect("json")["billing_adjustment_request"],
        json!({
            "id": "ba-abcdexampleid",
            "amount": "-1000.00",
            "currency_code": "USD",
            "reason_code": "INCORRECT_TERMS_ACCEPTED",
            "original_invoice_id": "2028746221",
        })
    );
    assert!(
        row.notes()
            .contains(&"refund failed (-1000.00 USD)".to_string()),
        "{:?}",
        row.notes()
    );
    db.cleanup().await;
}

/// The days left go with the newest Ending notice, by event time, whatever the arrival order.
async fn the_newest_ending_notice_says_the_days_left(backend: Backend) {
    let db = TestDb::new(backend).await;
    let s = &db.store;
    let notice = |id: &str, time: &str, days: Value| {
        edited("purchase-agreement-ending-proposer.json", |v| {
            v["id"] = json!(id);
            v["time"] = json!(time);
            v["detail"]["agreement"]["daysBeforeEndTime"] = days;
        })
    };
    let days = |row: &StatusRow| row.details.ending_notice_days_before_end;
    let only_row = || async {
        let rows = s.status(&StatusFilter::default()).await.expect("status");
        assert_eq!(rows.len(), 1, "{rows:?}");
        rows.into_iter().next().expect("row")
    };
    // The 30-day notice first, then AWS's 180-day one, which is older: it changes nothing.
    let thirty = notice(
        "01234567-0123-0123-0123-100000000030",
        "2026-12-01T00:00:00Z",
        json!(30),
    );
    assert_eq!(apply(s, "sqs-1", thirty).await, Outcome::Noted);
    let published = example("purchase-agreement-ending-proposer.json").to_string();
    assert_eq!(apply(s, "sqs-2", published).await, Outcome::Noted);
    let row = only_row().await;
    assert_eq!(days(&row), Some(30));
    assert_eq!(
        row.details.ending_notice_time.as_deref(),
        Some("2026-12-01T00:00:00.000Z")
    );
    assert!(row
        .notes()
        .contains(&"ends on 2026-12-31 (30-day notice)".to_string()));
    // The Manufacturer copy of the 180-day notice is the same fact.
    let copy = example("purchase-agreement-ending-manufacturer.json").to_string();
    assert_eq!(apply(s, "sqs-3", copy).await, Outcome::Duplicate);
    assert_eq!(days(&only_row().await), Some(30));
    // A newer notice that does not say the days leaves none, rather than the older notice's.
    let silent = notice(
        "01234567-0123-0123-0123-100000000031",
        "2026-12-02T00:00:00Z",
        Value::Null,
    );
    assert_eq!(apply(s, "sqs-4", silent).await, Outcome::Noted);
    let row = only_row().await;
    assert_eq!(days(&row), None);
    assert_eq!(
        row.details.ending_notice_time.as_deref(),
        Some("2026-12-02T00:00:00.000Z")
    );
    assert!(row.notes().contains(&"ends on 2026-12-31".to_string()));
    db.cleanup().await;
}

async fn sns_examples_match_the_resolve_customer_identifier(backend: Backend) {
    let db = TestDb::new(backend).await;
    let s = &db.store;
    // ResolveCustomer returns X01EXAMPLEX; a registration typed with stray blanks is the same.
    s.link(&LinkRequest {
        org_id: "org-1".into(),
        product_code: SNS_PRODUCT.into(),
        customer_identifier: Some("X01EXAMPLEX".into()),
        customer_aws_account_id: None,
        license_arn: None,
        requested_at_ms: T0,
    })
    .await
    .expect("link");
    let success = example("sns-subscribe-success.json").to_string();
    assert_eq!(apply(s, "sqs-1", success).await, Outcome::Applied);
    let rows = s.status(&StatusFilter::default()).await.expect("status");
    assert_eq!(
        rows.len(),
        1,
        "no orphan subscription beside the link: {rows:?}"
    );
    let row = &rows[0];
    assert_eq!(row.org_id.as_deref(), Some("org-1"));
    assert_eq!(row.customer_identifier.as_deref(), Some("X01EXAMPLEX"));
    assert_eq!(row.link_state, Some(LinkState::Linked));
    assert_eq!(row.details.free_trial, Some(true));
    assert_eq!(row.details.offer_id.as_deref(), Some("offer-abcexample123"));
    assert!(row.notes().contains(&"free trial".to_string()));

    // An agreement-based offer replaces the old one: AWS re-sends subscribe-success with the new
    // offer id. A newer message changes it; an older one arriving later does not undo it.
    let resend = |sqs: &str, offer: &str, sent: i64| {
        let body = edited("sns-subscribe-success.json", |v| {
            v["offer-identifier"] = json!(offer);
            v["isFreeTrialTermPresent"] = json!("false");
        });
        (
            InboundMessage {
                message_id: sqs.to_owned(),
                body,
                sent_timestamp_ms: Some(sent),
            },
            offer.to_owned(),
        )
    };
    for (msg, _) in [
        resend("sqs-2", "offer-newexample456", SENT_MS + 60_000),
        resend("sqs-3", "offer-olderexample789", SENT_MS + 30_000),
    ] {
        let event = decode(&msg).expect("decodes");
        s.apply(&event, &msg.body).await.expect("apply");
    }
    let row = org_row(s, "org-1").await;
    assert_eq!(row.details.offer_id.as_deref(), Some("offer-newexample456"));
    assert_eq!(row.details.free_trial, Some(false));
    db.cleanup().await;
}

async fn a_duplicate_never_creates_a_subscription_row(backend: Backend) {
    let db = TestDb::new(backend).await;
    let s = &db.store;
    let first = example("purchase-agreement-created-proposer.json").to_string();
    assert_eq!(apply(s, "sqs-1", first).await, Outcome::Applied);
    // The same delivery (same event id) naming another agreement, e.g. a replay of a message
    // decoded differently since: it is a duplicate, and its agreement gets no row.
    let other = edited("purchase-agreement-created-proposer.json", |v| {
        v["detail"]["agreement"]["id"] = json!("agmt-duplicateonly000000000");
    });
    assert_eq!(apply(s, "sqs-2", other).await, Outcome::Duplicate);
    let keys: Vec<String> = s
        .subscriptions()
        .await
        .expect("subscriptions")
        .into_iter()
        .map(|sub| sub.key)
        .collect();
    assert_eq!(keys, vec![format!("agmt:{AG}")]);
    assert_eq!(untouched_rows(s).await, Vec::<String>::new());

    // The check above catches such a row: one made by hand, as the old apply path left them.
    sqlx::query(
        "INSERT INTO mplink_subscriptions (sub_key, state, version, updated_at) \
         VALUES ('agmt:agmt-handmade', 'pending', 0, 0)",
    )
    .execute(s.pool())
    .await
    .expect("insert");
    assert_eq!(
        untouched_rows(s).await,
        vec!["agmt:agmt-handmade".to_string()]
    );
    db.cleanup().await;
}

fn pipeline(store: &Store, policy: UnrecognisedPolicy) -> (Pipeline, Arc<Metrics>) {
    let metrics = Arc::new(Metrics::new());
    let verifier = Verifier::new(VerifyConfig {
        accept_raw_delivery: true,
        ..VerifyConfig::default()
    })
    .expect("certificate client");
    let pipeline = Pipeline::new(store.clone(), Arc::new(verifier), metrics.clone())
        .unrecognised_detail_types(policy);
    (pipeline, metrics)
}

fn unknown(detail_type: &str, id: &str, source: &str) -> InboundMessage {
    let body = edited("purchase-agreement-ending-proposer.json", |v| {
        v["detail-type"] = json!(detail_type);
        v["id"] = json!(id);
        v["source"] = json!(source);
    });
    InboundMessage {
        message_id: format!("sqs-{id}"),
        body,
        sent_timestamp_ms: None,
    }
}

async fn unknown_detail_types_are_acknowledged_or_dead_lettered_as_configured(backend: Backend) {
    let db = TestDb::new(backend).await;
    let s = &db.store;
    let (ack, metrics) = pipeline(s, UnrecognisedPolicy::Acknowledge);
    let msg = unknown(
        "Purchase Agreement Paused - Proposer",
        "new-1",
        "aws.agreement-marketplace",
    );
    assert!(matches!(
        ack.process(&msg).await,
        Processed::Done(Outcome::Unrecognised)
    ));
    // A redelivery of the same event is recorded once.
    let again = InboundMessage {
        message_id: "sqs-new-1-again".into(),
        ..msg.clone()
    };
    assert!(matches!(
        ack.process(&again).await,
        Processed::Done(Outcome::Unrecognised)
    ));
    let log = s.event_log().await.expect("log");
    let recorded: Vec<_> = log.iter().filter(|e| e.outcome == "unrecognised").collect();
    assert_eq!(recorded.len(), 1, "{log:?}");
    assert!(recorded[0]
        .reason
        .as_deref()
        .is_some_and(|r| r.contains("Purchase Agreement Paused - Proposer")));
    assert_eq!(metrics.outcome_count(Outcome::Unrecognised), 2);
    assert_eq!(
        metrics
            .unrecognised_detail_types
            .with_label_values(&["Purchase Agreement Paused - Proposer"])
            .get(),
        2
    );
    assert!(s.subscriptions().await.expect("subs").is_empty());

    // A foreign source is refused whatever the policy.
    let foreign = unknown("Something - Proposer", "new-2", "evil.example");
    assert!(matches!(
        ack.process(&foreign).await,
        Processed::Rejected {
            reason: "unknown_detail_type",
            ..
        }
    ));

    // A sender inventing names cannot grow the metric without bound.
    for i in 0..(MAX_UNRECOGNISED_LABELS + 10) {
        let m = unknown(
            &format!("Invented {i}"),
            &format!("inv-{i}"),
            "aws.agreement-marketplace",
        );
        assert!(matches!(ack.process(&m).await, Processed::Done(_)));
    }
    let labels = metrics
        .render()
        .lines()
        .filter(|l| l.starts_with("mplink_unrecognised_events_total{"))
        .count();
    assert_eq!(
        labels,
        MAX_UNRECOGNISED_LABELS + 1,
        "the names, then {OTHER_LABEL}"
    );
    assert_eq!(
        metrics
            .unrecognised_detail_types
            .with_label_values(&[OTHER_LABEL])
            .get(),
        11
    );

    let (dead_letter, _) = pipeline(s, UnrecognisedPolicy::DeadLetter);
    let msg = unknown(
        "Purchase Agreement Paused - Proposer",
        "new-3",
        "aws.agreement-marketplace",
    );
    assert!(matches!(
        dead_letter.process(&msg).await,
        Processed::Rejected {
            reason: "unknown_detail_type",
            ..
        }
    ));

    // Documented informational events go through the same pipeline as noted, to be deleted.
    let ending = InboundMessage {
        message_id: "sqs-ending".into(),
        body: example("purchase-agreement-ending-proposer.json").to_string(),
        sent_timestamp_ms: None,
    };
    assert!(matches!(
        ack.process(&ending).await,
        Processed::Done(Outcome::Noted)
    ));
    assert_eq!(metrics.outcome_count(Outcome::Noted), 1);
    db.cleanup().await;
}

both_backends! {
    create_license_amend_end_deprovision => create_license_amend_end_deprovision;
    renewal_with_previous_agreement_id => renewal_with_previous_agreement_id;
    license_before_create => license_before_create;
    cancellation_request_pending_approved_ended => cancellation_request_pending_approved_ended;
    every_informational_example_is_noted_and_shown => every_informational_example_is_noted_and_shown;
    the_newest_ending_notice_says_the_days_left => the_newest_ending_notice_says_the_days_left;
    sns_examples_match_the_resolve_customer_identifier => sns_examples_match_the_resolve_customer_identifier;
    a_duplicate_never_creates_a_subscription_row => a_duplicate_never_creates_a_subscription_row;
    unknown_detail_types_are_acknowledged_or_dead_lettered_as_configured => unknown_detail_types_are_acknowledged_or_dead_lettered_as_configured;
}
