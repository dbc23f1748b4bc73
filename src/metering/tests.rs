//! The report checks and refusal codes.
use super::*;

fn report() -> UsageReport {
    UsageReport {
        tags: Default::default(),
        idempotency_key: "k-1".into(),
        org_id: "org-1".into(),
        dimension: "requests".into(),
        quantity: 5,
        time: Utc::now(),
    }
}

#[test]
fn reports_are_checked_field_by_field() {
    assert!(validate(&report()).is_ok());
    let cases: Vec<(UsageReport, &str)> = vec![
        (
            UsageReport {
                idempotency_key: String::new(),
                ..report()
            },
            "idempotency_key",
        ),
        (
            UsageReport {
                org_id: "a b".into(),
                ..report()
            },
            "org_id",
        ),
        (
            UsageReport {
                dimension: "x".repeat(300),
                ..report()
            },
            "dimension",
        ),
        (
            UsageReport {
                quantity: -1,
                ..report()
            },
            "quantity",
        ),
        (
            UsageReport {
                quantity: i64::from(i32::MAX) + 1,
                ..report()
            },
            "quantity",
        ),
    ];
    for (r, field) in cases {
        match validate(&r) {
            Err(MeteringError::Invalid { field: f, .. }) => assert_eq!(f, field),
            other => panic!("{field}: {other:?}"),
        }
    }
}

#[test]
fn hours_and_refusal_codes() {
    assert_eq!(hour_of(HOUR_MS * 5 + 1234), HOUR_MS * 5);
    assert_eq!(hour_of(-1), -HOUR_MS);
    for r in [
        "not_linked",
        "subscription_cancelled",
        "customer_not_subscribed",
        "hour_closed",
        "too_old",
        "in_the_future",
    ] {
        assert_eq!(Refusal::parse(r).unwrap().as_str(), r);
    }
}
