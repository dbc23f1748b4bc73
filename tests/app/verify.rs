//! The verifier's contract: SNS signatures of both versions, each way a message can be tampered
//! with and its own reason, the certificate URL rule (no request at all for a refused URL), the
//! allow-lists, and real LocalStack-signed messages, alone and through the pipeline.

use crate::common::localstack::{endpoint, pipeline, signed, Stack};
use crate::common::{agreement_body, iso_ms, license_body, TestDb, T0};
use base64::Engine;
use mplink::event::{decode, InboundMessage, EVENTBRIDGE_SOURCE};
use mplink::ledger::Outcome;
use mplink::process::Processed;
use mplink::verify::{string_to_sign, SnsEnvelope, Verifier, VerifyConfig, VerifyError};
use rand::SeedableRng;
use rsa::{Pkcs1v15Sign, RsaPrivateKey, RsaPublicKey};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

// ---------------------------------------------------------------------------------------------
// Fixtures signed with a key pair of the test's own

const PRODUCT: &str = "prodverify0123EXAMPLE";
const OTHER_PRODUCT: &str = "prodother4567EXAMPLE";
const CUSTOMER: &str = "cust-verify-1";
const CERT_URL: &str = "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-test.pem";
const MP_ACCOUNT: &str = "287250355862";

fn sub_topic(product: &str) -> String {
    format!("arn:aws:sns:us-east-1:{MP_ACCOUNT}:aws-mp-subscription-notification-{product}")
}

fn ent_topic(product: &str) -> String {
    format!("arn:aws:sns:us-east-1:{MP_ACCOUNT}:aws-mp-entitlement-notification-{product}")
}

/// The signing key and a second, unrelated key; generated once from fixed seeds.
fn keys() -> &'static (RsaPrivateKey, RsaPrivateKey) {
    static KEYS: OnceLock<(RsaPrivateKey, RsaPrivateKey)> = OnceLock::new();
    KEYS.get_or_init(|| {
        let mut rng = rand::rngs::StdRng::seed_from_u64(0x5e5_0001);
        let signing = RsaPrivateKey::new(&mut rng, 1024).expect("signing key");
        let other = RsaPrivateKey::new(&mut rng, 1024).expect("other key");
        (signing, other)
    })
}

fn signing_key() -> &'static RsaPrivateKey {
    &keys().0
}

fn other_key() -> &'static RsaPrivateKey {
    &keys().1
}

/// A verifier that knows the test key under `CERT_URL` and fetches nothing.
fn fixed_verifier(config: VerifyConfig) -> Verifier {
    let public = RsaPublicKey::from(signing_key());
    Verifier::with_keys(config, HashMap::from([(CERT_URL.to_string(), public)]))
}

/// The legacy marketplace JSON carried in `Message`.
fn inner_message(action: &str, product: &str) -> String {
    json!({
        "action": action,
        "customer-identifier": CUSTOMER,
        "product-code": product,
        "offer-identifier": "offer-abcexample123",
        "isFreeTrialTermPresent": "false",
    })
    .to_string()
}

/// An unsigned SNS envelope of a subscribe-success for `product` on `topic`.
fn envelope(product: &str, topic: &str, subject: Option<&str>) -> Value {
    let mut env = json!({
        "Type": "Notification",
        "MessageId": "6b1f8a1e-0c3a-5d2e-9a47-3c1d2e9b8f01",
        "TopicArn": topic,
        "Message": inner_message("subscribe-success", product),
        "Timestamp": iso_ms(T0),
        "SigningCertURL": CERT_URL,
        "UnsubscribeURL": "https://sns.us-east-1.amazonaws.com/?Action=Unsubscribe&SubscriptionArn=x",
    });
    if let Some(subject) = subject {
        env["Subject"] = json!(subject);
    }
    env
}

fn field<'v>(env: &'v Value, name: &str) -> Option<&'v str> {
    env.get(name).and_then(Value::as_str)
}

/// The string to sign written out from the AWS documentation, independently of the crate.
fn documented_string_to_sign(env: &Value) -> String {
    let mut out = String::new();
    for name in [
        "Message",
        "MessageId",
        "Subject",
        "Timestamp",
        "TopicArn",
        "Type",
    ] {
        if let Some(value) = field(env, name) {
            out.push_str(&format!("{name}\n{value}\n"));
        }
    }
    out
}

/// Signs `env` as SNS would with `key`, setting `SignatureVersion` and `Signature`.
fn sign(env: &mut Value, key: &RsaPrivateKey, version: &str) {
    let text = documented_string_to_sign(env);
    // The crate's own string must be the documented one, or this fixture would prove nothing.
    let parsed: SnsEnvelope = serde_json::from_value(env.clone()).expect("envelope fields");
    assert_eq!(string_to_sign(&parsed), text);
    let signature = match version {
        "1" => {
            use sha1::Digest;
            key.sign(
                Pkcs1v15Sign::new::<sha1::Sha1>(),
                &sha1::Sha1::digest(text.as_bytes()),
            )
        }
        "2" => {
            use sha2::Digest;
            key.sign(
                Pkcs1v15Sign::new::<sha2::Sha256>(),
                &sha2::Sha256::digest(text.as_bytes()),
            )
        }
        other => panic!("no signature version {other}"),
    }
    .expect("sign");
    env["SignatureVersion"] = json!(version);
    env["Signature"] = json!(base64::engine::general_purpose::STANDARD.encode(signature));
}

/// A validly signed envelope of a subscribe-success for `PRODUCT` on its subscription topic.
fn signed_envelope(version: &str) -> Value {
    let mut env = envelope(PRODUCT, &sub_topic(PRODUCT), None);
    sign(&mut env, signing_key(), version);
    env
}

fn inbound(body: &str) -> InboundMessage {
    InboundMessage {
        message_id: "3f9c2d1e-7a4b-4c8d-9e0f-1a2b3c4d5e6f".to_string(),
        body: body.to_string(),
        sent_timestamp_ms: Some(T0),
    }
}

/// Decodes `body` (it must decode) and asks `verifier`.
async fn verdict_body(verifier: &Verifier, body: &str) -> Result<(), VerifyError> {
    let msg = inbound(body);
    let event = decode(&msg).unwrap_or_else(|e| panic!("fixture does not decode: {e}\n{body}"));
    verifier.verify(&msg, &event).await
}

async fn verdict(verifier: &Verifier, env: &Value) -> Result<(), VerifyError> {
    verdict_body(verifier, &env.to_string()).await
}

/// Asserts `result` is exactly `expected` with the reason code `reason`.
fn assert_refused(result: Result<(), VerifyError>, expected: VerifyError, reason: &str) {
    match result {
        Err(e) => {
            assert_eq!(e, expected);
            assert_eq!(e.reason(), reason, "{e}");
            assert!(!e.is_transient(), "{e} must not be retried");
        }
        Ok(()) => panic!("accepted, expected {expected:?}"),
    }
}

/// The marketplace JSON inside `env` with its action replaced, re-serialized.
fn with_action(env: &Value, action: &str) -> Value {
    let mut inner: Value =
        serde_json::from_str(field(env, "Message").expect("Message")).expect("inner JSON");
    inner["action"] = json!(action);
    let mut out = env.clone();
    out["Message"] = json!(inner.to_string());
    out
}

/// `env` with its `Timestamp` moved by `delta_ms`, still a valid SNS timestamp.
fn with_timestamp_moved(env: &Value, delta_ms: i64) -> Value {
    let ts = field(env, "Timestamp").expect("Timestamp");
    let ms = chrono::DateTime::parse_from_rfc3339(ts)
        .unwrap_or_else(|e| panic!("Timestamp {ts}: {e}"))
        .timestamp_millis();
    let mut out = env.clone();
    out["Timestamp"] = json!(iso_ms(ms + delta_ms));
    out
}

fn with_field(env: &Value, name: &str, value: &str) -> Value {
    let mut out = env.clone();
    out[name] = json!(value);
    out
}

fn refused_url(url: &str, why: &'static str) -> VerifyError {
    VerifyError::CertUrlRefused {
        url: url.to_string(),
        why,
    }
}

// ---------------------------------------------------------------------------------------------
// 1. Valid signatures of both versions

#[tokio::test]
async fn both_signature_versions_verify() {
    let verifier = fixed_verifier(VerifyConfig::default());
    for version in ["1", "2"] {
        let env = signed_envelope(version);
        assert_eq!(field(&env, "SignatureVersion"), Some(version));
        assert_eq!(verdict(&verifier, &env).await, Ok(()), "version {version}");
    }
    assert_eq!(verifier.fetches(), 0, "known keys are never fetched");
}

#[tokio::test]
async fn a_signed_subject_verifies_and_is_covered_by_the_signature() {
    let verifier = fixed_verifier(VerifyConfig::default());
    for version in ["1", "2"] {
        let mut env = envelope(
            PRODUCT,
            &sub_topic(PRODUCT),
            Some("Marketplace notification"),
        );
        sign(&mut env, signing_key(), version);
        assert!(documented_string_to_sign(&env).contains("\nSubject\nMarketplace notification\n"));
        assert_eq!(verdict(&verifier, &env).await, Ok(()), "version {version}");

        let changed = with_field(&env, "Subject", "Something else");
        assert_refused(
            verdict(&verifier, &changed).await,
            VerifyError::SignatureMismatch,
            "signature_mismatch",
        );
        let mut dropped = env.clone();
        dropped.as_object_mut().expect("object").remove("Subject");
        assert_refused(
            verdict(&verifier, &dropped).await,
            VerifyError::SignatureMismatch,
            "signature_mismatch",
        );
    }
}

#[tokio::test]
async fn re_serializing_an_untampered_envelope_keeps_it_valid() {
    // Tamper tests below re-serialize with serde_json; this shows that alone changes nothing.
    let verifier = fixed_verifier(VerifyConfig::default());
    for version in ["1", "2"] {
        let env = signed_envelope(version);
        let reparsed: Value = serde_json::from_str(&env.to_string()).expect("json");
        let pretty = serde_json::to_string_pretty(&reparsed).expect("pretty");
        assert_eq!(verdict_body(&verifier, &pretty).await, Ok(()));
    }
}

// ---------------------------------------------------------------------------------------------
// 2. Each tamper has its own reason

#[tokio::test]
async fn a_changed_message_timestamp_or_topic_breaks_the_signature() {
    let verifier = fixed_verifier(VerifyConfig::default());
    for version in ["1", "2"] {
        let env = signed_envelope(version);
        let tampered = [
            ("Message", with_action(&env, "unsubscribe-success")),
            ("Timestamp", with_timestamp_moved(&env, 1_000)),
            // Another marketplace topic of the same product: the topic check passes.
            (
                "TopicArn",
                with_field(&env, "TopicArn", &ent_topic(PRODUCT)),
            ),
            (
                "MessageId",
                with_field(&env, "MessageId", "00000000-0000-0000-0000-000000000000"),
            ),
        ];
        for (what, body) in tampered {
            assert_ne!(body, env, "{what} was changed");
            assert_refused(
                verdict(&verifier, &body).await,
                VerifyError::SignatureMismatch,
                "signature_mismatch",
            );
        }
    }
}

#[tokio::test]
async fn a_signature_by_another_key_does_not_match() {
    let verifier = fixed_verifier(VerifyConfig::default());
    for version in ["1", "2"] {
        let mut env = envelope(PRODUCT, &sub_topic(PRODUCT), None);
        sign(&mut env, other_key(), version);
        assert_refused(
            verdict(&verifier, &env).await,
            VerifyError::SignatureMismatch,
            "signature_mismatch",
        );
    }
}

#[tokio::test]
async fn the_signature_version_chooses_the_hash() {
    // A SHA1 signature presented as version 2 (and the other way round) does not verify.
    let verifier = fixed_verifier(VerifyConfig::default());
    for (signed_as, claimed) in [("1", "2"), ("2", "1")] {
        let env = with_field(&signed_envelope(signed_as), "SignatureVersion", claimed);
        assert_refused(
            verdict(&verifier, &env).await,
            VerifyError::SignatureMismatch,
            "signature_mismatch",
        );
    }
}

#[tokio::test]
async fn an_unknown_or_missing_signature_version_is_unsupported() {
    let verifier = fixed_verifier(VerifyConfig::default());
    let env = signed_envelope("1");
    for version in ["3", "0", "", "1 "] {
        assert_refused(
            verdict(&verifier, &with_field(&env, "SignatureVersion", version)).await,
            VerifyError::UnsupportedSignatureVersion {
                version: version.to_string(),
            },
            "unsupported_signature_version",
        );
    }
    let mut missing = env.clone();
    missing
        .as_object_mut()
        .expect("object")
        .remove("SignatureVersion");
    assert_refused(
        verdict(&verifier, &missing).await,
        VerifyError::UnsupportedSignatureVersion {
            version: String::new(),
        },
        "unsupported_signature_version",
    );
}

#[tokio::test]
async fn a_signature_that_is_not_base64_is_refused_as_such() {
    let verifier = fixed_verifier(VerifyConfig::default());
    let env = signed_envelope("2");
    for bad in ["not base64!", "%%%%", "c2lnbmF0dXJl="] {
        assert_refused(
            verdict(&verifier, &with_field(&env, "Signature", bad)).await,
            VerifyError::SignatureEncoding,
            "signature_encoding",
        );
    }
    // Valid base64 of the wrong bytes is a mismatch, not an encoding error.
    assert_refused(
        verdict(&verifier, &with_field(&env, "Signature", "c2lnbmF0dXJl")).await,
        VerifyError::SignatureMismatch,
        "signature_mismatch",
    );
}

#[tokio::test]
async fn missing_signature_fields_are_envelope_errors() {
    let verifier = fixed_verifier(VerifyConfig::default());
    let env = signed_envelope("1");
    for (name, field_name) in [
        ("Signature", "Signature"),
        ("SigningCertURL", "SigningCertURL"),
    ] {
        let mut missing = env.clone();
        missing.as_object_mut().expect("object").remove(name);
        assert_refused(
            verdict(&verifier, &missing).await,
            VerifyError::EnvelopeField { field: field_name },
            "envelope_field",
        );
    }
}

#[tokio::test]
async fn certificate_urls_aws_would_not_use_are_refused() {
    let verifier = fixed_verifier(VerifyConfig::default());
    let env = signed_envelope("1");
    let cases = [
        (
            "http://sns.us-east-1.amazonaws.com/SimpleNotificationService-test.pem",
            "not https",
        ),
        (
            "https://sns.us-east-1.amazonaws.com.evil.example/x.pem",
            "host is not sns.<region>.amazonaws.com",
        ),
        (
            "https://evil.example/sns.us-east-1.amazonaws.com/x.pem",
            "host is not sns.<region>.amazonaws.com",
        ),
        (
            "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-test.txt",
            "path does not end in .pem",
        ),
        (
            "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-test.txt?x=1.pem",
            "path does not end in .pem",
        ),
        (
            "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-test.txt#x.pem",
            "path does not end in .pem",
        ),
        (
            "https://sns.us-east-1.amazonaws.com@evil.example/x.pem",
            "carries credentials",
        ),
        (
            "https://sns.us-east-1.amazonaws.com%2eevil.example/x.pem",
            "host is not sns.<region>.amazonaws.com",
        ),
        (
            "https://sns.us-east-1.amazonaws.com:8443/x.pem",
            "non-standard port",
        ),
        ("ftp://sns.us-east-1.amazonaws.com/x.pem", "not https"),
    ];
    for (url, why) in cases {
        assert_refused(
            verdict(&verifier, &with_field(&env, "SigningCertURL", url)).await,
            refused_url(url, why),
            "cert_url_refused",
        );
    }
    assert_eq!(verifier.fetches(), 0);
}

#[tokio::test]
async fn an_aws_certificate_url_without_a_known_key_is_not_fetched_by_a_fixed_verifier() {
    let verifier = fixed_verifier(VerifyConfig::default());
    let url = "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-other.pem";
    let env = with_field(&signed_envelope("1"), "SigningCertURL", url);
    match verdict(&verifier, &env).await {
        Err(e @ VerifyError::CertFetch { .. }) => assert_eq!(e.reason(), "cert_fetch_failed"),
        other => panic!("{other:?}"),
    }
    assert_eq!(verifier.fetches(), 0);
}

#[tokio::test]
async fn a_topic_not_named_for_the_messages_product_is_foreign() {
    let verifier = fixed_verifier(VerifyConfig::default());
    let topics = [
        format!("arn:aws:sns:us-east-1:{MP_ACCOUNT}:some-other-topic"),
        // Named like a marketplace topic, but of another product than the message's.
        sub_topic(OTHER_PRODUCT),
        format!("arn:aws:sns:us-east-1:{MP_ACCOUNT}:aws-mp-subscription-notification-"),
        format!("{}-suffix", sub_topic(PRODUCT)),
    ];
    for topic in topics {
        // Signed over the foreign topic: the signature is fine, the topic is not.
        let mut env = envelope(PRODUCT, &topic, None);
        sign(&mut env, signing_key(), "2");
        assert_refused(
            verdict(&verifier, &env).await,
            VerifyError::ForeignTopic {
                topic: topic.clone(),
            },
            "foreign_topic",
        );
    }
}

#[tokio::test]
async fn the_topic_check_applies_even_without_signature_checks() {
    let verifier = fixed_verifier(VerifyConfig {
        verify_signatures: false,
        ..VerifyConfig::default()
    });
    let topic = sub_topic(OTHER_PRODUCT);
    let env = envelope(PRODUCT, &topic, None); // unsigned
    assert_refused(
        verdict(&verifier, &env).await,
        VerifyError::ForeignTopic { topic },
        "foreign_topic",
    );
    // The switch itself works: the same unsigned envelope on the right topic passes.
    let env = envelope(PRODUCT, &sub_topic(PRODUCT), None);
    assert_eq!(verdict(&verifier, &env).await, Ok(()));
}

#[tokio::test]
async fn only_aws_own_topics_pass_unless_another_is_listed() {
    // A topic named exactly like the product's marketplace topic, in someone else's account
    // (or AWS's account in another region): a genuine SNS signature proves nothing about it.
    let lookalikes = [
        format!("arn:aws:sns:us-east-1:123456789012:aws-mp-subscription-notification-{PRODUCT}"),
        format!("arn:aws:sns:eu-west-1:287250355862:aws-mp-subscription-notification-{PRODUCT}"),
        format!(
            "arn:aws:sns:us-east-1:287250355862:extra:aws-mp-subscription-notification-{PRODUCT}"
        ),
    ];
    let verifier = fixed_verifier(VerifyConfig::default());
    for topic in &lookalikes {
        let mut env = envelope(PRODUCT, topic, None);
        sign(&mut env, signing_key(), "1");
        assert_refused(
            verdict(&verifier, &env).await,
            VerifyError::ForeignTopic {
                topic: topic.clone(),
            },
            "foreign_topic",
        );
    }
    // AWS's own topic of the product passes by default.
    assert_eq!(verdict(&verifier, &signed_envelope("1")).await, Ok(()));
    // A listed topic passes too (LocalStack's, a test account's), and AWS's own still does.
    let listing = fixed_verifier(VerifyConfig {
        allowed_topic_arns: vec![lookalikes[0].clone()],
        ..VerifyConfig::default()
    });
    let mut listed = envelope(PRODUCT, &lookalikes[0], None);
    sign(&mut listed, signing_key(), "1");
    assert_eq!(verdict(&listing, &listed).await, Ok(()));
    assert_eq!(verdict(&listing, &signed_envelope("1")).await, Ok(()));
}

#[tokio::test]
async fn with_an_allowed_product_list_other_products_are_foreign() {
    let verifier = fixed_verifier(VerifyConfig {
        allowed_product_codes: vec![PRODUCT.to_string()],
        ..VerifyConfig::default()
    });
    // Another product's message on its own topic, validly signed: only the product list stops it.
    let mut env = envelope(OTHER_PRODUCT, &sub_topic(OTHER_PRODUCT), None);
    sign(&mut env, signing_key(), "2");
    assert_refused(
        verdict(&verifier, &env).await,
        VerifyError::ForeignProduct {
            product: OTHER_PRODUCT.to_string(),
        },
        "foreign_product",
    );
    assert_eq!(verdict(&verifier, &signed_envelope("2")).await, Ok(()));
    // Without the list the same message is accepted.
    let open = fixed_verifier(VerifyConfig::default());
    assert_eq!(verdict(&open, &env).await, Ok(()));
}

#[tokio::test]
async fn eventbridge_events_from_another_source_are_foreign() {
    let verifier = fixed_verifier(VerifyConfig::default());
    let body: Value = serde_json::from_str(&agreement_body(
        "eb-verify-1",
        "Created",
        "Proposer",
        "agmt-verify1",
        "845735284135",
        json!({}),
        T0,
    ))
    .expect("json");
    assert_eq!(field(&body, "source"), Some(EVENTBRIDGE_SOURCE));
    assert_eq!(verdict(&verifier, &body).await, Ok(()));

    let foreign = with_field(&body, "source", "aws.evil");
    assert_refused(
        verdict(&verifier, &foreign).await,
        VerifyError::ForeignSource {
            event_source: "aws.evil".into(),
        },
        "foreign_source",
    );
    let mut absent = body.clone();
    absent.as_object_mut().expect("object").remove("source");
    assert_refused(
        verdict(&verifier, &absent).await,
        VerifyError::ForeignSource {
            event_source: String::new(),
        },
        "foreign_source",
    );
    // A configured source list replaces the default.
    let custom = fixed_verifier(VerifyConfig {
        allowed_sources: vec!["aws.evil".into()],
        ..VerifyConfig::default()
    });
    assert_eq!(verdict(&custom, &foreign).await, Ok(()));
    assert_refused(
        verdict(&custom, &body).await,
        VerifyError::ForeignSource {
            event_source: EVENTBRIDGE_SOURCE.into(),
        },
        "foreign_source",
    );
}

#[tokio::test]
async fn eventbridge_license_events_obey_the_product_list() {
    let verifier = fixed_verifier(VerifyConfig {
        allowed_product_codes: vec![PRODUCT.to_string()],
        ..VerifyConfig::default()
    });
    let license = |product: &str| {
        license_body(
            "eb-lic-1",
            "Updated",
            "agmt-verify2",
            product,
            "arn:aws:license-manager::123456789012:license:l-0123456789abcdef0123456789abcdef",
            "845735284135",
            T0,
        )
    };
    assert_eq!(verdict_body(&verifier, &license(PRODUCT)).await, Ok(()));
    assert_refused(
        verdict_body(&verifier, &license(OTHER_PRODUCT)).await,
        VerifyError::ForeignProduct {
            product: OTHER_PRODUCT.into(),
        },
        "foreign_product",
    );
}

#[tokio::test]
async fn raw_delivery_is_refused_unless_configured() {
    let raw = inner_message("subscribe-success", PRODUCT);
    let strict = fixed_verifier(VerifyConfig::default());
    assert_refused(
        verdict_body(&strict, &raw).await,
        VerifyError::RawDeliveryNotAccepted,
        "raw_delivery_not_accepted",
    );
    let raw_ok = fixed_verifier(VerifyConfig {
        accept_raw_delivery: true,
        ..VerifyConfig::default()
    });
    assert_eq!(verdict_body(&raw_ok, &raw).await, Ok(()));
    // Accepting raw delivery does not bypass the product list.
    let raw_listed = fixed_verifier(VerifyConfig {
        accept_raw_delivery: true,
        allowed_product_codes: vec![OTHER_PRODUCT.into()],
        ..VerifyConfig::default()
    });
    assert_refused(
        verdict_body(&raw_listed, &raw).await,
        VerifyError::ForeignProduct {
            product: PRODUCT.into(),
        },
        "foreign_product",
    );
}

#[tokio::test]
async fn a_duplicated_message_field_cannot_smuggle_an_unsigned_message() {
    // The decoder keeps the last `Message`; if the verifier checked the first one, a signed
    // subscribe-success could carry an unsigned unsubscribe-success past it.
    let verifier = fixed_verifier(VerifyConfig::default());
    let env = signed_envelope("1");
    let signed_text = env.to_string();
    let evil_inner = inner_message("unsubscribe-success", PRODUCT);
    let body = format!(
        "{},\"Message\":{}}}",
        signed_text.strip_suffix('}').expect("object"),
        json!(evil_inner)
    );
    let msg = inbound(&body);
    let event = decode(&msg).expect("decodes");
    assert_eq!(
        event.action.name(),
        "unsubscribe-success",
        "decoder took the last"
    );
    match verifier.verify(&msg, &event).await {
        Err(e @ VerifyError::EnvelopeField { .. }) => assert_eq!(e.reason(), "envelope_field"),
        other => panic!("smuggled message not refused as an envelope error: {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// 3. No request at all for a refused certificate URL

/// A local HTTP server that counts the connections it accepts and answers each the same way.
struct CountingServer {
    port: u16,
    accepted: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl CountingServer {
    /// Answers every request with 404.
    async fn start() -> CountingServer {
        CountingServer::answering(
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_vec(),
        )
        .await
    }

    /// Answers every request with `response` (a whole HTTP response).
    async fn answering(response: Vec<u8>) -> CountingServer {
        let response = Arc::new(response);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    continue;
                };
                count.fetch_add(1, Ordering::SeqCst);
                let response = response.clone();
                tokio::spawn(async move {
                    let mut request = Vec::new();
                    let mut buf = [0u8; 1024];
                    let read_head = async {
                        while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                            match stream.read(&mut buf).await {
                                Ok(0) | Err(_) => break,
                                Ok(n) => request.extend_from_slice(&buf[..n]),
                            }
                        }
                    };
                    let _ = tokio::time::timeout(Duration::from_secs(2), read_head).await;
                    let _ = stream.write_all(&response).await;
                    let _ = stream.shutdown().await;
                });
            }
        });
        CountingServer {
            port,
            accepted,
            task,
        }
    }

    fn connections(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for CountingServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_request_is_made_for_a_refused_certificate_url() {
    let server = CountingServer::start().await;
    let port = server.port;
    let verifier = Verifier::new(VerifyConfig::default()).expect("certificate client");
    let env = signed_envelope("1");
    let urls = [
        format!("http://127.0.0.1:{port}/cert.pem"),
        format!("https://127.0.0.1:{port}/cert.pem"),
        "https://127.0.0.1/cert.pem".to_string(),
    ];
    for url in &urls {
        match verdict(&verifier, &with_field(&env, "SigningCertURL", url)).await {
            Err(e @ VerifyError::CertUrlRefused { .. }) => {
                assert_eq!(e.reason(), "cert_url_refused");
                assert!(!e.is_transient());
            }
            other => panic!("{url}: {other:?}"),
        }
    }
    // Give a stray connection, had there been one, time to be counted.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(server.connections(), 0, "the server saw a request");
    assert_eq!(verifier.fetches(), 0);

    // The counters do count: trust the server's prefix and the certificate is fetched.
    let trusting = trusting(port);
    let env = with_field(&env, "SigningCertURL", &urls[0]);
    match verdict(&trusting, &env).await {
        Err(e @ VerifyError::CertUnavailable { status: 404, .. }) => {
            assert!(e.to_string().contains("404"), "{e}");
            assert_eq!(e.reason(), "cert_unavailable");
            assert!(!e.is_transient(), "a 404 will not get better");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(server.connections(), 1);
    assert_eq!(trusting.fetches(), 1);
    // The failure is remembered for a while: the next messages naming the URL ask nobody.
    for _ in 0..5 {
        assert!(matches!(
            verdict(&trusting, &env).await,
            Err(VerifyError::CertUnavailable { status: 404, .. })
        ));
    }
    assert_eq!(server.connections(), 1);
    assert_eq!(trusting.fetches(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_and_unreachable_hosts_are_transient_and_asked_once_for_a_burst() {
    let failing =
        CountingServer::answering(http_response("503 Service Unavailable", "", b"")).await;
    let verifier = Arc::new(trusting(failing.port));
    let url = format!("http://127.0.0.1:{}/cert.pem", failing.port);
    let env = with_field(&signed_envelope("1"), "SigningCertURL", &url);
    // A burst of concurrent messages naming the same URL makes one request.
    let verdicts = concurrent_verdicts(verifier.clone(), &env, 8).await;
    for v in &verdicts {
        match v {
            Err(e @ VerifyError::CertFetch { .. }) => {
                assert!(e.to_string().contains("503"), "{e}");
                assert!(e.is_transient());
                assert_eq!(e.reason(), "cert_fetch_failed");
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(failing.connections(), 1);
    assert_eq!(verifier.fetches(), 1);

    // A host that does not resolve: transient, with the reason named.
    let unresolvable = Verifier::new(VerifyConfig {
        extra_cert_url_prefixes: vec!["http://cert-host.invalid/".into()],
        ..VerifyConfig::default()
    })
    .expect("certificate client");
    let env = with_field(
        &signed_envelope("1"),
        "SigningCertURL",
        "http://cert-host.invalid/cert.pem",
    );
    match verdict(&unresolvable, &env).await {
        Err(e @ VerifyError::CertFetch { .. }) => assert!(e.is_transient(), "{e}"),
        other => panic!("{other:?}"),
    }
}

/// `n` verdicts on `env` run concurrently.
async fn concurrent_verdicts(
    verifier: Arc<Verifier>,
    env: &Value,
    n: usize,
) -> Vec<Result<(), VerifyError>> {
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..n {
        let verifier = verifier.clone();
        let env = env.clone();
        tasks.spawn(async move { verdict(&verifier, &env).await });
    }
    tasks.join_all().await
}

fn http_response(status: &str, extra_headers: &str, body: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status}\r\n{extra_headers}Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body);
    out
}

/// A network verifier trusting the local server on `port`.
fn trusting(port: u16) -> Verifier {
    Verifier::new(VerifyConfig {
        extra_cert_url_prefixes: vec![format!("http://127.0.0.1:{port}/")],
        ..VerifyConfig::default()
    })
    .expect("certificate client")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trusted_certificate_host_cannot_redirect_the_fetch_elsewhere() {
    let target = CountingServer::start().await;
    let redirect = http_response(
        "302 Found",
        &format!("Location: http://127.0.0.1:{}/cert.pem\r\n", target.port),
        b"",
    );
    let redirector = CountingServer::answering(redirect).await;
    let verifier = trusting(redirector.port);
    let url = format!("http://127.0.0.1:{}/cert.pem", redirector.port);
    let env = with_field(&signed_envelope("1"), "SigningCertURL", &url);
    match verdict(&verifier, &env).await {
        Err(e @ VerifyError::CertUnavailable { status: 302, .. }) => {
            assert!(!e.is_transient(), "{e}")
        }
        other => panic!("{other:?}"),
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(redirector.connections(), 1);
    assert_eq!(target.connections(), 0, "the redirect was followed");
    assert_eq!(verifier.fetches(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unusable_certificates_are_refused_for_good() {
    let big = vec![b'A'; 17 * 1024];
    let cases: [(&[u8], &str); 3] = [
        (b"this is not a certificate", "not PEM"),
        (
            b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
            "not an X.509 certificate",
        ),
        (&big, "larger than 16 KiB"),
    ];
    for (body, expected) in cases {
        let server = CountingServer::answering(http_response("200 OK", "", body)).await;
        let verifier = trusting(server.port);
        let url = format!("http://127.0.0.1:{}/cert.pem", server.port);
        let env = with_field(&signed_envelope("2"), "SigningCertURL", &url);
        match verdict(&verifier, &env).await {
            Err(e @ VerifyError::BadCertificate { .. }) => {
                assert!(e.to_string().contains(expected), "{e}");
                assert_eq!(e.reason(), "bad_certificate");
                assert!(!e.is_transient(), "{e}");
            }
            other => panic!("{expected}: {other:?}"),
        }
        assert_eq!(server.connections(), 1);
        assert_eq!(verifier.fetches(), 1);
    }
}

// ---------------------------------------------------------------------------------------------
// 4. and 5. Messages signed by LocalStack's SNS

/// Receives the one message SNS delivered to the stack's queue, without deleting it.
async fn receive_one(stack: &Stack) -> InboundMessage {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = stack
            .sqs
            .receive_message()
            .queue_url(&stack.queue.queue_url)
            .max_number_of_messages(1)
            .wait_time_seconds(1)
            .message_system_attribute_names(
                aws_sdk_sqs::types::MessageSystemAttributeName::SentTimestamp,
            )
            .send()
            .await
            .expect("receive");
        if let Some(message) = out.messages().first() {
            return mplink::sqs::received(message, None).inbound;
        }
        assert!(
            Instant::now() < deadline,
            "SNS delivered nothing to the queue within 10 s"
        );
    }
}

/// A LocalStack-signed subscribe-success of a product of the test's own.
async fn localstack_message(customer: &str) -> (Stack, InboundMessage) {
    let stack = Stack::new(5, Duration::from_secs(30)).await;
    stack.publish("subscribe-success", customer).await;
    let msg = receive_one(&stack).await;
    (stack, msg)
}

fn body_json(msg: &InboundMessage) -> Value {
    serde_json::from_str(&msg.body).expect("SNS envelope is JSON")
}

fn with_body(msg: &InboundMessage, body: &Value) -> InboundMessage {
    InboundMessage {
        body: body.to_string(),
        ..msg.clone()
    }
}

async fn check(verifier: &Verifier, msg: &InboundMessage) -> Result<(), VerifyError> {
    let event = decode(msg).unwrap_or_else(|e| panic!("does not decode: {e}\n{}", msg.body));
    verifier.verify(msg, &event).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn localstack_signed_messages_verify_and_tampered_copies_do_not() {
    let (stack, msg) = localstack_message("cust-v").await;
    let env = body_json(&msg);
    let cert_url = field(&env, "SigningCertURL")
        .expect("SigningCertURL")
        .to_string();
    assert!(
        cert_url.starts_with(&format!("{}/_aws/sns/", endpoint())),
        "{cert_url}"
    );
    assert_eq!(field(&env, "TopicArn"), Some(stack.topics[0].as_str()));
    assert_eq!(field(&env, "SignatureVersion"), Some("1"));
    let event = decode(&msg).expect("decodes");
    assert_eq!(
        event.ids.product_code.as_deref(),
        Some(stack.product.as_str())
    );

    let verifier = Verifier::new(stack.trusting(signed())).expect("certificate client");
    assert_eq!(check(&verifier, &msg).await, Ok(()));
    assert_eq!(check(&verifier, &msg).await, Ok(()));
    assert_eq!(verifier.fetches(), 1, "the certificate is cached");

    // Re-serializing alone keeps it valid, so the tampers below fail for their change only.
    assert_eq!(check(&verifier, &with_body(&msg, &env)).await, Ok(()));

    let entitlement_topic = stack
        .topics
        .iter()
        .find(|t| t.contains(mplink::topics::ENTITLEMENT_TOPIC_PREFIX))
        .expect("entitlement topic")
        .clone();
    let tampered = [
        ("Message", with_action(&env, "unsubscribe-success")),
        ("Timestamp", with_timestamp_moved(&env, 1_000)),
        ("TopicArn", with_field(&env, "TopicArn", &entitlement_topic)),
    ];
    for (what, body) in tampered {
        assert_ne!(body, env);
        match check(&verifier, &with_body(&msg, &body)).await {
            Err(e @ VerifyError::SignatureMismatch) => {
                assert_eq!(e.reason(), "signature_mismatch")
            }
            other => panic!("tampered {what}: {other:?}"),
        }
    }
    assert_eq!(verifier.fetches(), 1, "still the one cached certificate");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_localstack_signed_subject_verifies_and_is_covered() {
    let stack = Stack::new(5, Duration::from_secs(30)).await;
    let message = json!({
        "action": "subscribe-success",
        "customer-identifier": "cust-v",
        "product-code": stack.product,
        "offer-identifier": "offer-test",
        "isFreeTrialTermPresent": "false",
    });
    aws_sdk_sns::Client::new(&stack.sdk)
        .publish()
        .topic_arn(&stack.topics[0])
        .subject("Marketplace notification")
        .message(message.to_string())
        .send()
        .await
        .expect("sns publish");
    let msg = receive_one(&stack).await;
    let env = body_json(&msg);
    assert_eq!(field(&env, "Subject"), Some("Marketplace notification"));
    let verifier = Verifier::new(stack.trusting(signed())).expect("certificate client");
    assert_eq!(check(&verifier, &msg).await, Ok(()));
    let mut dropped = env.clone();
    dropped.as_object_mut().expect("object").remove("Subject");
    for body in [with_field(&env, "Subject", "Something else"), dropped] {
        assert_eq!(
            check(&verifier, &with_body(&msg, &body)).await,
            Err(VerifyError::SignatureMismatch)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn localstack_certificates_are_refused_without_the_configured_prefix() {
    let (stack, msg) = localstack_message("cust-v").await;
    let verifier =
        Verifier::new(stack.trusting(VerifyConfig::default())).expect("certificate client");
    match check(&verifier, &msg).await {
        Err(e @ VerifyError::CertUrlRefused { why, .. }) => {
            assert_eq!(why, "not https", "{e}");
            assert_eq!(e.reason(), "cert_url_refused");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(verifier.fetches(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pipeline_rejects_a_tampered_localstack_message_and_applies_the_real_one() {
    let (stack, msg) = localstack_message("cust-v").await;
    let db = TestDb::new(crate::common::Backend::Sqlite).await;
    let pipeline = pipeline(db.store.clone(), stack.trusting(signed()));

    let tampered = with_body(&msg, &with_action(&body_json(&msg), "unsubscribe-success"));
    match pipeline.process(&tampered).await {
        Processed::Rejected { reason, detail } => {
            assert_eq!(reason, "signature_mismatch", "{detail}")
        }
        other => panic!("{other:?}"),
    }
    assert!(
        db.store.subscriptions().await.expect("subs").is_empty(),
        "a tampered message applied"
    );
    let log = db.store.event_log().await.expect("log");
    assert_eq!(log.len(), 1, "{log:?}");
    assert_eq!(log[0].outcome, "rejected");
    assert!(
        log[0]
            .reason
            .as_deref()
            .is_some_and(|r| r.starts_with("signature_mismatch")),
        "{log:?}"
    );
    assert_eq!(
        log[0].sqs_message_id.as_deref(),
        Some(msg.message_id.as_str())
    );

    match pipeline.process(&msg).await {
        Processed::Done(Outcome::Applied) => {}
        other => panic!("{other:?}"),
    }
    let subs = db.store.subscriptions().await.expect("subs");
    assert_eq!(subs.len(), 1, "{subs:?}");
    let log = db.store.event_log().await.expect("log");
    assert_eq!(
        log.iter().map(|e| e.outcome.as_str()).collect::<Vec<_>>(),
        ["rejected", "applied"],
        "{log:?}"
    );
    db.cleanup().await;
}

// ---------------------------------------------------------------------------------------------
// Hostile senders: future-dated events, forged redrive attributes (issue 8)

fn eventbridge_ended_at(time: &str, id: &str) -> InboundMessage {
    let body = json!({
        "version": "0", "id": id,
        "detail-type": "Purchase Agreement Ended - Proposer",
        "source": "aws.agreement-marketplace", "account": "123456789012",
        "time": time, "region": "us-east-1",
        "resources": ["arn:aws:aws-marketplace::aws:agreement:agmt-future"],
        "detail": {"agreement": {"id": "agmt-future", "status": "CANCELLED"},
                   "acceptor": {"accountId": "845735284135"}},
    });
    inbound(&body.to_string())
}

#[tokio::test]
async fn an_event_dated_beyond_the_skew_is_refused_and_one_within_it_is_not() {
    let verifier = fixed_verifier(VerifyConfig::default());
    let now = mplink::time::now_ms();
    let iso = |ms: i64| iso_ms(ms);
    let far = eventbridge_ended_at("2099-01-01T00:00:00Z", "far");
    let event = decode(&far).expect("decodes");
    match verifier.verify(&far, &event).await {
        Err(e @ VerifyError::EventFromFuture { .. }) => {
            assert_eq!(e.reason(), "event_from_future");
            assert!(!e.is_transient());
        }
        other => panic!("{other:?}"),
    }
    // Just past the default five minutes: refused; just inside: accepted.
    for (ahead_s, accepted) in [(330, false), (240, true), (-86_400 * 365, true)] {
        let msg = eventbridge_ended_at(&iso(now + ahead_s * 1000), "near");
        let event = decode(&msg).expect("decodes");
        assert_eq!(
            verifier.verify(&msg, &event).await.is_ok(),
            accepted,
            "{ahead_s} s ahead"
        );
    }
    // SQS's send time, when later than our clock, is the reference (our clock may lag).
    let mut msg = eventbridge_ended_at(&iso(now + 600_000), "sent-later");
    msg.sent_timestamp_ms = Some(now + 400_000);
    let event = decode(&msg).expect("decodes");
    assert_eq!(verifier.verify(&msg, &event).await, Ok(()));
    // The skew is configurable.
    let strict = fixed_verifier(VerifyConfig {
        max_clock_skew: Duration::from_secs(1),
        ..VerifyConfig::default()
    });
    let msg = eventbridge_ended_at(&iso(now + 60_000), "strict");
    let event = decode(&msg).expect("decodes");
    assert!(matches!(
        strict.verify(&msg, &event).await,
        Err(VerifyError::EventFromFuture { .. })
    ));
}

#[tokio::test]
async fn a_future_event_cannot_pin_a_subscription_through_the_pipeline() {
    let db = TestDb::new(crate::common::Backend::Sqlite).await;
    let pipeline = pipeline(db.store.clone(), VerifyConfig::default());
    let far = eventbridge_ended_at("2099-01-01T00:00:00Z", "far-1");
    match pipeline.process(&far).await {
        Processed::Rejected { reason, .. } => assert_eq!(reason, "event_from_future"),
        other => panic!("{other:?}"),
    }
    // A real, present-day event of the same agreement still decides its state.
    let now = eventbridge_ended_at(&iso_ms(mplink::time::now_ms() - 1000), "now-1");
    assert!(matches!(
        pipeline.process(&now).await,
        Processed::Done(mplink::ledger::Outcome::Applied)
    ));
    let subs = db.store.subscriptions().await.expect("subscriptions");
    assert_eq!(subs.len(), 1);
    assert_eq!(subs[0].state, mplink::ledger::SubState::Cancelling);
    assert!(subs[0].last_event_time_ms.unwrap() < mplink::time::now_ms());
    db.cleanup().await;
}

fn sqs_message(body: &str, attributes: &[(&str, &str)]) -> aws_sdk_sqs::types::Message {
    let mut m = aws_sdk_sqs::types::Message::builder()
        .message_id("sqs-own-id")
        .receipt_handle("rh")
        .body(body)
        .attributes(
            aws_sdk_sqs::types::MessageSystemAttributeName::SentTimestamp,
            "1788125763000",
        );
    for (name, value) in attributes {
        m = m.message_attributes(
            *name,
            aws_sdk_sqs::types::MessageAttributeValue::builder()
                .data_type("String")
                .string_value(*value)
                .build()
                .expect("attribute"),
        );
    }
    m.build()
}

#[tokio::test]
async fn forged_redrive_attributes_are_refused_and_signed_ones_believed() {
    use mplink::redrive::{Claim, RedriveKey, ORIGINAL_MESSAGE_ID_ATTRIBUTE as ID};
    use mplink::redrive::{ORIGINAL_SENT_TIMESTAMP_ATTRIBUTE as SENT, SIGNATURE_ATTRIBUTE as SIG};
    let key = RedriveKey::new("operator-redrive-key-0001").expect("key");
    let body = std::fs::read_to_string("tests/fixtures/events/raw_subscribe_success.json")
        .expect("fixture");
    let claim = Claim {
        message_id: "original-id".into(),
        sent_timestamp_ms: 1_700_000_000_000,
    };
    let good = key.sign(&claim, &body);
    let attrs = |sig: &str| {
        vec![
            (ID, "original-id".to_string()),
            (SENT, "1700000000000".to_string()),
            (SIG, sig.to_string()),
        ]
    };
    let message = |attrs: Vec<(&str, String)>| {
        let pairs: Vec<(&str, &str)> = attrs.iter().map(|(k, v)| (*k, v.as_str())).collect();
        sqs_message(&body, &pairs)
    };
    // Signed with the key: the original identity and time are believed.
    let believed = mplink::sqs::received(&message(attrs(&good)), Some(&key));
    assert!(believed.untrusted_claim.is_none());
    assert_eq!(believed.inbound.message_id, "original-id");
    assert_eq!(believed.inbound.sent_timestamp_ms, Some(1_700_000_000_000));
    // Forged (another key), unsigned, or unverifiable: refused under SQS's own identity.
    let other = RedriveKey::new("somebody-elses-key-0002").expect("key");
    let forged_sig = other.sign(&claim, &body);
    for (attrs, key, reason) in [
        (attrs(&forged_sig), Some(&key), "redrive_attributes_forged"),
        (
            attrs(&good)[..2].to_vec(),
            Some(&key),
            "redrive_attributes_malformed",
        ),
        (attrs(&good), None, "redrive_attributes_unverifiable"),
    ] {
        let r = mplink::sqs::received(&message(attrs), key);
        assert_eq!(r.inbound.message_id, "sqs-own-id");
        assert_eq!(r.inbound.sent_timestamp_ms, Some(1_788_125_763_000));
        assert_eq!(r.untrusted_claim.as_ref().map(|e| e.reason()), Some(reason));
    }
    // Through the pipeline the forgery is recorded as a rejection with its reason.
    let db = TestDb::new(crate::common::Backend::Sqlite).await;
    let pipeline = pipeline(
        db.store.clone(),
        VerifyConfig {
            accept_raw_delivery: true,
            verify_signatures: false,
            redrive_key: Some(key.clone()),
            ..VerifyConfig::default()
        },
    );
    let forged = mplink::sqs::received(&message(attrs(&forged_sig)), Some(&key));
    match pipeline.process_received(&forged).await {
        Processed::Rejected { reason, .. } => assert_eq!(reason, "redrive_attributes_forged"),
        other => panic!("{other:?}"),
    }
    assert!(db.store.subscriptions().await.expect("subs").is_empty());
    assert!(matches!(
        pipeline.process_received(&believed).await,
        Processed::Done(mplink::ledger::Outcome::Applied)
    ));
    let log = db.store.event_log().await.expect("log");
    assert!(log.iter().any(|e| e.message_id == "original-id"));
    db.cleanup().await;
}
