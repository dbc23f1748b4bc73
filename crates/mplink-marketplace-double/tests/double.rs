//! The Marketplace test double against the real AWS SDK clients: what it answers, what it
//! refuses, and that the SDK reads its errors as the typed errors AWS's would be.

use aws_sdk_marketplaceentitlement::types::GetEntitlementFilterName;
use aws_sdk_marketplacemetering::primitives::DateTime as SdkTime;
use aws_sdk_marketplacemetering::types::{UsageRecord, UsageRecordResultStatus};
use chrono::{DateTime, Duration as ChronoDuration, DurationRound, Utc};
use mplink_marketplace_double::clients::{customer, entitlement, metering, sdk_for};
use mplink_marketplace_double::{
    Agreement, CallOutcome, Entitlement, EntitlementValue, Failure, MarketplaceDouble, Operation,
    ResolvedCustomer,
};

const PRODUCT: &str = "prod-double-1";

async fn double() -> MarketplaceDouble {
    MarketplaceDouble::start("127.0.0.1:0")
        .await
        .expect("double starts")
}

fn record(account: &str, dimension: &str, quantity: i32, at: DateTime<Utc>) -> UsageRecord {
    UsageRecord::builder()
        .timestamp(SdkTime::from_secs(at.timestamp()))
        .customer_aws_account_id(account)
        .license_arn(customer(PRODUCT, account).license_arn)
        .dimension(dimension)
        .quantity(quantity)
        .build()
        .expect("a complete usage record")
}

fn this_hour() -> DateTime<Utc> {
    Utc::now().duration_trunc(ChronoDuration::hours(1)).unwrap()
}

#[tokio::test]
async fn resolve_customer_returns_what_was_seeded() {
    let d = double().await;
    let new = ResolvedCustomer {
        agreement_id: Some("agmt-1".into()),
        ..customer(PRODUCT, "111122223333")
    };
    let legacy = ResolvedCustomer {
        customer_identifier: Some("cust-legacy".into()),
        ..customer(PRODUCT, "444455556666")
    };
    d.add_customer("tok-new", new.clone());
    d.add_customer("tok-legacy", legacy.clone());
    let client = metering(&d, 1).await;

    let out = client
        .resolve_customer()
        .registration_token("tok-new")
        .send()
        .await
        .unwrap();
    assert_eq!(out.customer_aws_account_id(), Some("111122223333"));
    assert_eq!(out.license_arn(), Some(new.license_arn.as_str()));
    assert_eq!(out.product_code(), Some(PRODUCT));
    assert_eq!(
        out.customer_identifier(),
        None,
        "new integrations get no CustomerIdentifier"
    );
    assert_eq!(
        out.metadata().and_then(|m| m.agreement_id()),
        Some("agmt-1")
    );

    let out = client
        .resolve_customer()
        .registration_token("tok-legacy")
        .send()
        .await
        .unwrap();
    assert_eq!(out.customer_identifier(), Some("cust-legacy"));
    assert_eq!(out.customer_aws_account_id(), Some("444455556666"));

    let calls = d.calls_of(Operation::ResolveCustomer);
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[0].input["RegistrationToken"], "tok-new");
    assert!(matches!(calls[0].outcome, CallOutcome::Ok { .. }));
    d.shutdown().await;
}

#[tokio::test]
async fn unknown_and_expired_tokens_are_typed_errors() {
    let d = double().await;
    d.add_customer("tok-1", customer(PRODUCT, "111122223333"));
    let client = metering(&d, 1).await;

    let err = client
        .resolve_customer()
        .registration_token("nope")
        .send()
        .await
        .unwrap_err();
    let err = err.into_service_error();
    assert!(err.is_invalid_token_exception(), "{err:?}");

    assert!(d.expire_token("tok-1"));
    let err = client
        .resolve_customer()
        .registration_token("tok-1")
        .send()
        .await
        .unwrap_err();
    let err = err.into_service_error();
    assert!(err.is_expired_token_exception(), "{err:?}");
    assert!(!d.expire_token("never-seeded"));
}

#[tokio::test]
async fn injected_failures_surface_typed_and_the_sdk_retries_the_retryable_ones() {
    let d = double().await;
    d.add_customer("tok-1", customer(PRODUCT, "111122223333"));

    // One attempt per call: each armed failure is what the caller sees.
    let once = metering(&d, 1).await;
    d.fail_next(Operation::ResolveCustomer, Failure::Throttling, 1);
    d.fail_next(Operation::ResolveCustomer, Failure::InternalServiceError, 1);
    d.fail_next(Operation::ResolveCustomer, Failure::InvalidToken, 1);
    let e = once
        .resolve_customer()
        .registration_token("tok-1")
        .send()
        .await
        .unwrap_err();
    assert!(e.into_service_error().is_throttling_exception());
    let e = once
        .resolve_customer()
        .registration_token("tok-1")
        .send()
        .await
        .unwrap_err();
    assert_eq!(e.raw_response().map(|r| r.status().as_u16()), Some(500));
    assert!(e.into_service_error().is_internal_service_error_exception());
    let e = once
        .resolve_customer()
        .registration_token("tok-1")
        .send()
        .await
        .unwrap_err();
    assert!(
        e.into_service_error().is_invalid_token_exception(),
        "an armed failure wins over a valid token"
    );
    once.resolve_customer()
        .registration_token("tok-1")
        .send()
        .await
        .expect("armed failures used up");

    // Three attempts: the SDK classifies throttling as retryable, so two throttles then success.
    let retrying = metering(&d, 3).await;
    let before = d.calls_of(Operation::ResolveCustomer).len();
    d.fail_next(Operation::ResolveCustomer, Failure::Throttling, 2);
    retrying
        .resolve_customer()
        .registration_token("tok-1")
        .send()
        .await
        .unwrap();
    assert_eq!(d.calls_of(Operation::ResolveCustomer).len() - before, 3);
    // Failures are per operation: metering is unaffected by a ResolveCustomer failure.
    d.fail_next(Operation::GetEntitlements, Failure::Throttling, 1);
    once.resolve_customer()
        .registration_token("tok-1")
        .send()
        .await
        .unwrap();
}

#[tokio::test]
async fn a_delay_holds_the_answer_back() {
    let d = double().await;
    d.add_customer("tok-1", customer(PRODUCT, "111122223333"));
    let client = metering(&d, 1).await;
    d.delay_next(
        Operation::ResolveCustomer,
        std::time::Duration::from_millis(300),
        1,
    );
    let started = std::time::Instant::now();
    client
        .resolve_customer()
        .registration_token("tok-1")
        .send()
        .await
        .unwrap();
    assert!(started.elapsed() >= std::time::Duration::from_millis(300));
    let started = std::time::Instant::now();
    client
        .resolve_customer()
        .registration_token("tok-1")
        .send()
        .await
        .unwrap();
    assert!(started.elapsed() < std::time::Duration::from_millis(300));
}

#[tokio::test]
async fn unsigned_and_badly_signed_requests_are_refused() {
    let d = double().await;
    d.add_customer("tok-1", customer(PRODUCT, "111122223333"));
    let http = reqwest::Client::new();
    let post = |auth: Option<String>, date: Option<String>| {
        let mut req = http
            .post(d.endpoint_url())
            .header("content-type", "application/x-amz-json-1.1")
            .header("x-amz-target", "AWSMPMeteringService.ResolveCustomer")
            .body(r#"{"RegistrationToken":"tok-1"}"#);
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        if let Some(dt) = date {
            req = req.header("x-amz-date", dt);
        }
        req.send()
    };
    let now = Utc::now().format("%Y%m%dT%H%M%SZ").to_string();
    let day = now[..8].to_string();
    let sig = "a".repeat(64);
    let cases = [
        (None, Some(now.clone()), 403, "MissingAuthenticationTokenException"),
        (Some("Bearer xyz".to_string()), Some(now.clone()), 400, "IncompleteSignatureException"),
        (
            Some(format!("AWS4-HMAC-SHA256 Credential=test/{day}/us-east-1/aws-marketplace/aws4_request, SignedHeaders=host;x-amz-date, Signature={sig}")),
            None,
            400,
            "IncompleteSignatureException",
        ),
        (
            Some(format!("AWS4-HMAC-SHA256 Credential=other/{day}/us-east-1/execute-api/aws4_request, SignedHeaders=host;x-amz-date, Signature={sig}")),
            Some(now.clone()),
            403,
            "InvalidSignatureException",
        ),
        (
            Some(format!("AWS4-HMAC-SHA256 Credential=test/{day}/us-east-1/aws-marketplace/aws4_request, SignedHeaders=host;x-amz-date, Signature={sig}")),
            Some(now.clone()),
            403,
            "InvalidSignatureException",
        ),
    ];
    for (auth, date, status, code) in cases {
        let resp = post(auth.clone(), date).await.unwrap();
        assert_eq!(resp.status().as_u16(), status, "{auth:?}");
        assert_eq!(resp.headers()["x-amzn-errortype"], code, "{auth:?}");
        let body: serde_json::Value = serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap();
        assert_eq!(body["__type"], code);
        assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    // The real SDK signing with the wrong secret for a key the double knows: refused too.
    let wrong = aws_sdk_marketplacemetering::Client::new(
        &sdk_for(&d.endpoint_url(), "not-the-secret", 1).await,
    );
    let e = wrong
        .resolve_customer()
        .registration_token("tok-1")
        .send()
        .await
        .unwrap_err();
    assert_eq!(
        aws_sdk_marketplacemetering::error::ProvideErrorMetadata::code(&e),
        Some("InvalidSignatureException")
    );
    // Nothing reached the operation: every call ended in a signature error.
    let calls = d.calls();
    assert_eq!(calls.len(), 6);
    assert!(calls.iter().all(|c| c
        .outcome
        .error_code()
        .is_some_and(|c| c.contains("Signature") || c.contains("Authentication"))));
}

#[tokio::test]
async fn batch_meter_usage_meters_once_per_customer_dimension_and_hour() {
    let d = double().await;
    d.add_customer("t1", customer(PRODUCT, "111122223333"));
    d.add_customer("t2", customer(PRODUCT, "444455556666"));
    let client = metering(&d, 1).await;
    let hour = this_hour() - ChronoDuration::hours(1);

    let out = client
        .batch_meter_usage()
        .product_code(PRODUCT)
        .usage_records(record("111122223333", "requests", 7, hour))
        .usage_records(record("444455556666", "requests", 0, hour))
        .send()
        .await
        .unwrap();
    let results = out.results();
    assert_eq!(results.len(), 2);
    assert!(results
        .iter()
        .all(|r| r.status() == Some(&UsageRecordResultStatus::Success)));
    let first_id = results[0].metering_record_id().unwrap().to_string();
    assert!(out.unprocessed_records().is_empty());

    // The same quantity again (even at another minute of the hour): the same record.
    let out = client
        .batch_meter_usage()
        .product_code(PRODUCT)
        .usage_records(record(
            "111122223333",
            "requests",
            7,
            hour + ChronoDuration::minutes(10),
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(
        out.results()[0].status(),
        Some(&UsageRecordResultStatus::Success)
    );
    assert_eq!(
        out.results()[0].metering_record_id(),
        Some(first_id.as_str())
    );

    // Another quantity for that hour: DuplicateRecord, not billed.
    let out = client
        .batch_meter_usage()
        .product_code(PRODUCT)
        .usage_records(record("111122223333", "requests", 8, hour))
        .send()
        .await
        .unwrap();
    assert_eq!(
        out.results()[0].status(),
        Some(&UsageRecordResultStatus::DuplicateRecord)
    );

    // Another dimension or hour is another record.
    client
        .batch_meter_usage()
        .product_code(PRODUCT)
        .usage_records(record("111122223333", "storage", 8, hour))
        .usage_records(record("111122223333", "requests", 9, this_hour()))
        .send()
        .await
        .unwrap();

    let billed = d.metered_records();
    assert_eq!(billed.len(), 4, "{billed:#?}");
    let requests_last_hour: Vec<_> = billed
        .iter()
        .filter(|r| {
            r.customer_aws_account_id == "111122223333"
                && r.dimension == "requests"
                && r.hour == hour
        })
        .collect();
    assert_eq!(requests_last_hour.len(), 1);
    assert_eq!(requests_last_hour[0].quantity, 7);
    assert_eq!(requests_last_hour[0].metering_record_id, first_id);
}

#[tokio::test]
async fn customers_not_subscribed_are_refused_record_by_record() {
    let d = double().await;
    d.add_customer("t1", customer(PRODUCT, "111122223333"));
    d.add_customer("t2", customer(PRODUCT, "444455556666"));
    d.add_customer("t3", customer("other-product", "777788889999"));
    assert_eq!(d.set_not_subscribed("444455556666"), 1);
    let client = metering(&d, 1).await;
    let hour = this_hour();
    let out = client
        .batch_meter_usage()
        .product_code(PRODUCT)
        .usage_records(record("111122223333", "requests", 1, hour))
        .usage_records(record("444455556666", "requests", 1, hour))
        .usage_records(record("777788889999", "requests", 1, hour))
        .usage_records(record("000000000000", "requests", 1, hour))
        .send()
        .await
        .unwrap();
    let statuses: Vec<_> = out
        .results()
        .iter()
        .map(|r| r.status().unwrap().clone())
        .collect();
    assert_eq!(
        statuses,
        vec![
            UsageRecordResultStatus::Success,
            UsageRecordResultStatus::CustomerNotSubscribed,
            UsageRecordResultStatus::CustomerNotSubscribed, // another product's customer
            UsageRecordResultStatus::CustomerNotSubscribed, // nobody
        ]
    );
    assert_eq!(d.metered_records().len(), 1);
}

#[tokio::test]
async fn a_timestamp_outside_the_window_fails_the_whole_call() {
    let d = double().await;
    d.add_customer("t1", customer(PRODUCT, "111122223333"));
    let client = metering(&d, 1).await;
    for at in [
        Utc::now() - ChronoDuration::hours(6) - ChronoDuration::seconds(5),
        Utc::now() + ChronoDuration::hours(1),
    ] {
        let e = client
            .batch_meter_usage()
            .product_code(PRODUCT)
            .usage_records(record("111122223333", "requests", 1, this_hour()))
            .usage_records(record("111122223333", "storage", 1, at))
            .send()
            .await
            .unwrap_err();
        let e = e.into_service_error();
        assert!(e.is_timestamp_out_of_bounds_exception(), "{e:?}");
    }
    assert!(
        d.metered_records().is_empty(),
        "a refused call meters nothing, not even its good records"
    );
    // Five hours back is still inside the window.
    client
        .batch_meter_usage()
        .product_code(PRODUCT)
        .usage_records(record(
            "111122223333",
            "requests",
            1,
            Utc::now() - ChronoDuration::hours(5),
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(d.metered_records().len(), 1);
}

#[tokio::test]
async fn unprocessed_records_are_returned_then_accepted_on_retry() {
    let d = double().await;
    d.add_customer("t1", customer(PRODUCT, "111122223333"));
    let client = metering(&d, 1).await;
    let hour = this_hour();
    d.unprocess_next_records(1);
    let out = client
        .batch_meter_usage()
        .product_code(PRODUCT)
        .usage_records(record("111122223333", "requests", 3, hour))
        .usage_records(record("111122223333", "storage", 4, hour))
        .send()
        .await
        .unwrap();
    assert_eq!(out.unprocessed_records().len(), 1);
    assert_eq!(out.unprocessed_records()[0].dimension(), "requests");
    assert_eq!(out.results().len(), 1);
    assert_eq!(d.metered_records().len(), 1);
    let retry = out.unprocessed_records()[0].clone();
    let out = client
        .batch_meter_usage()
        .product_code(PRODUCT)
        .usage_records(retry)
        .send()
        .await
        .unwrap();
    assert_eq!(
        out.results()[0].status(),
        Some(&UsageRecordResultStatus::Success)
    );
    assert_eq!(d.metered_records().len(), 2);
}

#[tokio::test]
async fn batch_limits_and_legacy_identifiers() {
    let d = double().await;
    d.add_customer(
        "t1",
        ResolvedCustomer {
            customer_identifier: Some("cust-legacy".into()),
            ..customer(PRODUCT, "111122223333")
        },
    );
    let client = metering(&d, 1).await;
    let hour = this_hour();
    let mut call = client.batch_meter_usage().product_code(PRODUCT);
    for i in 0..26 {
        call = call.usage_records(record("111122223333", &format!("d{i}"), 1, hour));
    }
    let e = call.send().await.unwrap_err();
    assert_eq!(
        aws_sdk_marketplacemetering::error::ProvideErrorMetadata::code(&e),
        Some("ValidationException")
    );

    let legacy = UsageRecord::builder()
        .timestamp(SdkTime::from_secs(hour.timestamp()))
        .customer_identifier("cust-legacy")
        .dimension("requests")
        .quantity(2)
        .build()
        .unwrap();
    let out = client
        .batch_meter_usage()
        .product_code(PRODUCT)
        .usage_records(legacy)
        .send()
        .await
        .unwrap();
    assert_eq!(
        out.results()[0].status(),
        Some(&UsageRecordResultStatus::Success)
    );
    // The legacy identifier and the account id are one customer: a second quantity is a duplicate.
    let out = client
        .batch_meter_usage()
        .product_code(PRODUCT)
        .usage_records(record("111122223333", "requests", 5, hour))
        .send()
        .await
        .unwrap();
    assert_eq!(
        out.results()[0].status(),
        Some(&UsageRecordResultStatus::DuplicateRecord)
    );

    let e = client
        .batch_meter_usage()
        .product_code("not-mine")
        .usage_records(record("111122223333", "requests", 5, hour))
        .send()
        .await
        .unwrap_err();
    assert!(e.into_service_error().is_invalid_product_code_exception());
}

#[tokio::test]
async fn get_entitlements_filters_and_pages() {
    let d = double().await;
    for i in 0..30 {
        d.add_entitlement(Entitlement {
            product_code: PRODUCT.into(),
            dimension: format!("seats-{i:02}"),
            customer_aws_account_id: "111122223333".into(),
            license_arn: Some("arn:l-1".into()),
            customer_identifier: None,
            value: EntitlementValue::Integer(i),
            expiration_date: Some(DateTime::from_timestamp(1_800_000_000, 0).unwrap()),
        });
    }
    for (i, value) in [
        EntitlementValue::Boolean(true),
        EntitlementValue::String("gold".into()),
        EntitlementValue::Double(2.5),
    ]
    .into_iter()
    .enumerate()
    {
        d.add_entitlement(Entitlement {
            product_code: PRODUCT.into(),
            dimension: format!("tier-{i}"),
            customer_aws_account_id: "444455556666".into(),
            license_arn: None,
            customer_identifier: Some("cust-b".into()),
            value,
            expiration_date: None,
        });
    }
    let client = entitlement(&d).await;

    let mut seen = Vec::new();
    let mut token = None;
    let mut pages = 0;
    loop {
        let out = client
            .get_entitlements()
            .product_code(PRODUCT)
            .filter(
                GetEntitlementFilterName::CustomerAwsAccountId,
                vec!["111122223333".to_string()],
            )
            .set_next_token(token.clone())
            .send()
            .await
            .unwrap();
        pages += 1;
        assert!(out.entitlements().len() <= 25);
        for e in out.entitlements() {
            assert_eq!(e.customer_aws_account_id(), Some("111122223333"));
            assert_eq!(e.expiration_date().map(|t| t.secs()), Some(1_800_000_000));
            seen.push(e.dimension().unwrap().to_string());
        }
        token = out.next_token().map(str::to_string);
        if token.is_none() {
            break;
        }
    }
    assert_eq!(pages, 2);
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 30);

    let out = client
        .get_entitlements()
        .product_code(PRODUCT)
        .filter(
            GetEntitlementFilterName::CustomerIdentifier,
            vec!["cust-b".to_string()],
        )
        .filter(
            GetEntitlementFilterName::Dimension,
            vec!["tier-1".to_string(), "tier-2".to_string()],
        )
        .send()
        .await
        .unwrap();
    let values: Vec<_> = out
        .entitlements()
        .iter()
        .map(|e| e.value().cloned().unwrap())
        .collect();
    assert_eq!(values.len(), 2);
    assert_eq!(values[0].string_value(), Some("gold"));
    assert_eq!(values[1].double_value(), Some(2.5));

    // No entitlement: an empty page and no token (a client must not loop on it).
    let out = client
        .get_entitlements()
        .product_code(PRODUCT)
        .filter(
            GetEntitlementFilterName::CustomerAwsAccountId,
            vec!["999999999999".to_string()],
        )
        .send()
        .await
        .unwrap();
    assert!(out.entitlements().is_empty());
    assert!(out.next_token().is_none());

    // Injected failures come back typed over RPC v2 CBOR too.
    d.fail_next(Operation::GetEntitlements, Failure::Throttling, 1);
    let e = client
        .get_entitlements()
        .product_code(PRODUCT)
        .send()
        .await
        .unwrap_err();
    assert!(e.into_service_error().is_throttling_exception());
    assert_eq!(
        d.calls_of(Operation::GetEntitlements).last().unwrap().input["ProductCode"],
        PRODUCT,
        "the CBOR input is recorded like the JSON one"
    );

    // A token from another query is refused.
    let first = client
        .get_entitlements()
        .product_code(PRODUCT)
        .max_results(5)
        .send()
        .await
        .unwrap();
    let e = client
        .get_entitlements()
        .product_code(PRODUCT)
        .filter(
            GetEntitlementFilterName::Dimension,
            vec!["tier-0".to_string()],
        )
        .set_next_token(first.next_token().map(str::to_string))
        .send()
        .await
        .unwrap_err();
    assert!(e.into_service_error().is_invalid_parameter_exception());
}

#[tokio::test]
async fn the_binary_serves_until_sigterm_and_takes_controls_over_http() {
    use std::io::{BufRead, BufReader};
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_mplink-marketplace-double"))
        .args(["--listen", "127.0.0.1:0"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = line.trim().to_string();
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");

    let http = reqwest::Client::new();
    let seeded = http
        .post(format!("{url}/_double/customers"))
        .header("content-type", "application/json")
        .body(
            serde_json::json!({
                "token": "tok-http", "customer_aws_account_id": "111122223333",
                "license_arn": "arn:l-http", "product_code": PRODUCT
            })
            .to_string(),
        )
        .send()
        .await
        .unwrap();
    assert!(seeded.status().is_success());
    let armed = http
        .post(format!("{url}/_double/faults"))
        .header("content-type", "application/json")
        .body(
            serde_json::json!({"operation": "ResolveCustomer", "failure": "Throttling", "times": 1})
                .to_string(),
        )
        .send()
        .await
        .unwrap();
    assert!(armed.status().is_success());

    let client = aws_sdk_marketplacemetering::Client::new(&sdk_for(&url, "test", 1).await);
    let e = client
        .resolve_customer()
        .registration_token("tok-http")
        .send()
        .await
        .unwrap_err();
    assert!(e.into_service_error().is_throttling_exception());
    let out = client
        .resolve_customer()
        .registration_token("tok-http")
        .send()
        .await
        .unwrap();
    assert_eq!(out.license_arn(), Some("arn:l-http"));

    let calls = http
        .get(format!("{url}/_double/calls"))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let calls: Vec<serde_json::Value> = serde_json::from_slice(&calls).unwrap();
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[0]["outcome"]["code"], "ThrottlingException");
    assert_eq!(calls[1]["outcome"]["kind"], "ok");

    let status = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = child.wait().unwrap();
    assert!(exit.success(), "SIGTERM stops it cleanly: {exit:?}");
}

/// Allocations are checked as AWS checks them: quantities add up to the record's, 1 to 5 tags
/// each, keys and values of AWS's lengths and characters; accepted ones are recorded as sent.
#[tokio::test]
async fn usage_allocations_are_checked_and_recorded() {
    use aws_sdk_marketplacemetering::types::{Tag, UsageAllocation};
    let d = double().await;
    d.add_customer("t-alloc", customer(PRODUCT, "777788889999"));
    let client = metering(&d, 1).await;
    let hour = this_hour() - ChronoDuration::hours(1);
    let tag = |k: &str, v: &str| Tag::builder().key(k).value(v).build().unwrap();
    let allocation = |q: i32, tags: Vec<Tag>| {
        UsageAllocation::builder()
            .allocated_usage_quantity(q)
            .set_tags((!tags.is_empty()).then_some(tags))
            .build()
            .unwrap()
    };
    let with = |dimension: &str, quantity: i32, allocations: Vec<UsageAllocation>| {
        let mut r = record("777788889999", dimension, quantity, hour);
        r.usage_allocations = Some(allocations);
        r
    };
    let send = |r: UsageRecord| {
        let client = client.clone();
        async move {
            client
                .batch_meter_usage()
                .product_code(PRODUCT)
                .usage_records(r)
                .send()
                .await
        }
    };
    let ok = send(with(
        "requests",
        9,
        vec![
            allocation(5, vec![tag("project", "alpha")]),
            allocation(4, vec![]),
        ],
    ))
    .await
    .expect("a valid allocation is accepted");
    assert_eq!(
        ok.results()[0].status(),
        Some(&UsageRecordResultStatus::Success)
    );
    let recorded = d.metered_records();
    let sent = recorded[0].usage_allocations.as_ref().expect("recorded");
    assert_eq!(sent[0]["Tags"][0]["Key"], "project");
    assert_eq!(sent[0]["AllocatedUsageQuantity"], 5);

    let code = |e: &aws_sdk_marketplacemetering::error::SdkError<_, _>| {
        use aws_sdk_marketplacemetering::error::ProvideErrorMetadata;
        e.code().unwrap_or_default().to_string()
    };
    let cases = [
        (
            with("a", 9, vec![allocation(5, vec![tag("p", "x")])]),
            "InvalidUsageAllocationsException",
        ),
        (
            with("b", 1, vec![allocation(1, vec![tag("p", "a|b")])]),
            "ValidationException",
        ),
        (
            with(
                "c",
                1,
                vec![allocation(1, vec![tag(&"k".repeat(101), "v")])],
            ),
            "ValidationException",
        ),
        (
            with(
                "d",
                1,
                vec![allocation(
                    1,
                    (0..6).map(|i| tag(&format!("k{i}"), "v")).collect(),
                )],
            ),
            "InvalidTagException",
        ),
    ];
    for (r, expected) in cases {
        let e = send(r).await.expect_err("refused");
        assert_eq!(code(&e), expected);
    }
    assert_eq!(d.metered_records().len(), 1, "nothing refused was billed");
}

#[tokio::test]
async fn search_agreements_filters_pages_and_refuses_what_aws_refuses() {
    use aws_sdk_marketplaceagreement::error::ProvideErrorMetadata;
    use aws_sdk_marketplaceagreement::types::Filter;
    let d = double().await;
    let accepted = DateTime::from_timestamp(1_790_000_000, 0).unwrap();
    for i in 0..120 {
        d.put_agreement(Agreement {
            agreement_id: format!("agmt-{i:03}"),
            product_id: if i % 2 == 0 { "prod-even" } else { "prod-odd" }.into(),
            acceptor_account_id: format!("{:012}", i),
            status: if i % 10 == 0 { "CANCELLED" } else { "ACTIVE" }.into(),
            offer_id: Some("offer-1".into()),
            license_arn: Some(format!("arn:aws:license-manager::1:license:l-{i:03}")),
            acceptance_time: Some(accepted),
            start_time: Some(accepted),
            end_time: None,
            license_status: None,
        });
    }
    // AWS changing an agreement's status replaces it in place.
    d.put_agreement(Agreement {
        agreement_id: "agmt-002".into(),
        product_id: "prod-even".into(),
        acceptor_account_id: format!("{:012}", 2),
        status: "EXPIRED".into(),
        offer_id: None,
        license_arn: None,
        acceptance_time: Some(accepted),
        start_time: None,
        end_time: Some(accepted),
        license_status: None,
    });
    let client = mplink_marketplace_double::clients::agreement(&d).await;
    let calls_before = d.calls().len();
    let filter = |n: &str, v: &str| Filter::builder().name(n).values(v).build();
    let mut token = None;
    let mut seen = Vec::new();
    let mut pages = 0;
    loop {
        let out = client
            .search_agreements()
            .catalog("AWSMarketplace")
            .filters(filter("PartyType", "Proposer"))
            .filters(filter("ResourceIdentifier", "prod-even"))
            .max_results(25)
            .set_next_token(token.take())
            .send()
            .await
            .unwrap();
        pages += 1;
        for a in out.agreement_view_summaries() {
            let resource = a.proposal_summary().unwrap().resources()[0].id().unwrap();
            assert_eq!(resource, "prod-even");
            assert_eq!(a.acceptance_time().map(|t| t.secs()), Some(1_790_000_000));
            seen.push((
                a.agreement_id().unwrap().to_string(),
                a.status().unwrap().as_str().to_string(),
            ));
        }
        match out.next_token() {
            Some(t) => token = Some(t.to_string()),
            None => break,
        }
    }
    assert_eq!((pages, seen.len()), (3, 60));
    assert_eq!(seen[1], ("agmt-002".to_string(), "EXPIRED".to_string()));
    assert_eq!(seen.iter().filter(|(_, s)| s == "CANCELLED").count(), 12);
    assert_eq!(d.calls().len() - calls_before, 3, "one call per page");

    // Without the seller's party, with a foreign token, or past the page bound: refused.
    let no_party = client
        .search_agreements()
        .catalog("AWSMarketplace")
        .filters(filter("ResourceIdentifier", "prod-even"))
        .send()
        .await
        .unwrap_err();
    assert_eq!(no_party.code(), Some("ValidationException"));
    let foreign = client
        .search_agreements()
        .catalog("AWSMarketplace")
        .filters(filter("PartyType", "Proposer"))
        .next_token("bm90LWEtdG9rZW4")
        .send()
        .await
        .unwrap_err();
    assert_eq!(foreign.code(), Some("ValidationException"));
    let too_many = client
        .search_agreements()
        .catalog("AWSMarketplace")
        .filters(filter("PartyType", "Proposer"))
        .max_results(51)
        .send()
        .await
        .unwrap_err();
    assert_eq!(too_many.code(), Some("ValidationException"));
    // The license each grants: provisioned while active, deprovisioned once not; unknown: 404.
    let status = |id: &'static str| {
        let client = client.clone();
        async move {
            client
                .get_agreement_entitlements()
                .agreement_id(id)
                .send()
                .await
                .map(|a| {
                    a.agreement_entitlements()[0]
                        .status()
                        .unwrap()
                        .as_str()
                        .to_string()
                })
        }
    };
    assert_eq!(status("agmt-001").await.unwrap(), "PROVISIONED");
    assert_eq!(status("agmt-002").await.unwrap(), "DEPROVISIONED");
    assert_eq!(
        status("agmt-999").await.unwrap_err().code(),
        Some("ResourceNotFoundException")
    );
    // Throttling as AWS answers it, by code.
    d.fail_next(Operation::SearchAgreements, Failure::Throttling, 1);
    let throttled = client
        .search_agreements()
        .catalog("AWSMarketplace")
        .filters(filter("PartyType", "Proposer"))
        .send()
        .await
        .unwrap_err();
    assert_eq!(throttled.code(), Some("ThrottlingException"));
}
