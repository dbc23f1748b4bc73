//! What the double knows and reports: customers, injected failures, recorded calls and the
//! records AWS would bill. Plain data, shared by the Rust API and the `/_double` JSON API.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::fmt;
use std::time::Duration;

/// The operations the double answers, named as in `X-Amz-Target`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Operation {
    /// `AWSMPMeteringService.ResolveCustomer`.
    ResolveCustomer,
    /// `AWSMPMeteringService.BatchMeterUsage`.
    BatchMeterUsage,
    /// `AWSMPMeteringService.MeterUsage`.
    MeterUsage,
    /// `AWSMPEntitlementService.GetEntitlements`.
    GetEntitlements,
    /// `AWSMPCommerceService_v20200301.SearchAgreements` (the Agreement API).
    SearchAgreements,
    /// `AWSMPCommerceService_v20200301.GetAgreementEntitlements`.
    GetAgreementEntitlements,
}

impl Operation {
    /// Every operation, for lookups by name.
    pub const ALL: [Operation; 6] = [
        Operation::ResolveCustomer,
        Operation::BatchMeterUsage,
        Operation::MeterUsage,
        Operation::GetEntitlements,
        Operation::SearchAgreements,
        Operation::GetAgreementEntitlements,
    ];

    /// The operation's name, as it appears after the service prefix of `X-Amz-Target`.
    pub fn name(self) -> &'static str {
        match self {
            Operation::ResolveCustomer => "ResolveCustomer",
            Operation::BatchMeterUsage => "BatchMeterUsage",
            Operation::MeterUsage => "MeterUsage",
            Operation::GetEntitlements => "GetEntitlements",
            Operation::SearchAgreements => "SearchAgreements",
            Operation::GetAgreementEntitlements => "GetAgreementEntitlements",
        }
    }

    /// The `X-Amz-Target` service prefix the operation belongs to.
    pub fn service(self) -> &'static str {
        match self {
            Operation::GetEntitlements => "AWSMPEntitlementService",
            Operation::SearchAgreements | Operation::GetAgreementEntitlements => {
                "AWSMPCommerceService_v20200301"
            }
            _ => "AWSMPMeteringService",
        }
    }

    /// The operation an `X-Amz-Target` value names, if the double answers it.
    pub fn from_target(target: &str) -> Option<Operation> {
        let (service, name) = target.split_once('.')?;
        Operation::ALL
            .into_iter()
            .find(|op| op.service() == service && op.name() == name)
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What `ResolveCustomer` returns for a registration token; also the customer's subscription to
/// `product_code` for metering and entitlements.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResolvedCustomer {
    /// `CustomerAWSAccountId`.
    pub customer_aws_account_id: String,
    /// `LicenseArn`.
    pub license_arn: String,
    /// `ProductCode`.
    pub product_code: String,
    /// The legacy `CustomerIdentifier`; AWS leaves it empty for new integrations.
    #[serde(default)]
    pub customer_identifier: Option<String>,
    /// `Metadata.AgreementId`, when set.
    #[serde(default)]
    pub agreement_id: Option<String>,
}

/// An error the double can be told to answer with, by AWS's error shape name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Failure {
    /// `InvalidTokenException` (400).
    InvalidToken,
    /// `ExpiredTokenException` (400).
    ExpiredToken,
    /// `ThrottlingException` (400; the SDK retries it).
    Throttling,
    /// `InternalServiceErrorException` (500; the SDK retries it).
    InternalServiceError,
    /// `DisabledApiException` (400).
    DisabledApi,
    /// `TimestampOutOfBoundsException` (400).
    TimestampOutOfBounds,
    /// `InvalidProductCodeException` (400).
    InvalidProductCode,
    /// Any other shape name with the status to send.
    Other {
        /// The `__type` and `x-amzn-errortype`.
        code: String,
        /// The HTTP status.
        status: u16,
    },
}

impl Failure {
    /// The error shape name, HTTP status and message AWS would send.
    pub fn shape(&self) -> (String, u16, String) {
        let (code, status, message) = match self {
            Failure::InvalidToken => (
                "InvalidTokenException",
                400,
                "Registration token is invalid",
            ),
            Failure::ExpiredToken => (
                "ExpiredTokenException",
                400,
                "Registration token has expired",
            ),
            Failure::Throttling => ("ThrottlingException", 400, "Rate exceeded"),
            Failure::InternalServiceError => (
                "InternalServiceErrorException",
                500,
                "An internal error has occurred",
            ),
            Failure::DisabledApi => ("DisabledApiException", 400, "The API is disabled"),
            Failure::TimestampOutOfBounds => (
                "TimestampOutOfBoundsException",
                400,
                "The timestamp value passed in the UsageRecord is out of allowed range",
            ),
            Failure::InvalidProductCode => (
                "InvalidProductCodeException",
                400,
                "The product code passed does not match the caller's product",
            ),
            Failure::Other { code, status } => {
                return (code.clone(), *status, format!("injected {code}"));
            }
        };
        (code.to_string(), status, message.to_string())
    }
}

/// The double's rules that a test may want to change.
#[derive(Debug, Clone)]
pub struct DoubleConfig {
    /// Access key id → secret: requests signed with these are verified completely.
    pub credentials: Vec<(String, String)>,
    /// When set, a request signed with an access key id not in `credentials` is refused
    /// (`UnrecognizedClientException`); otherwise only its signature's form is checked.
    pub require_known_credentials: bool,
    /// A usage record this much older than now fails the whole call
    /// (`TimestampOutOfBoundsException`); AWS documents six hours.
    pub accept_past: Duration,
    /// A usage record this far in the future fails the whole call.
    pub accept_future: Duration,
    /// How far `X-Amz-Date` may be from now (AWS: 15 minutes).
    pub signature_skew: Duration,
}

/// The test credentials the double verifies by default (the ones LocalStack uses).
pub const TEST_ACCESS_KEY_ID: &str = "test";
/// The secret of [`TEST_ACCESS_KEY_ID`].
pub const TEST_SECRET_ACCESS_KEY: &str = "test";

impl Default for DoubleConfig {
    fn default() -> Self {
        DoubleConfig {
            credentials: vec![(
                TEST_ACCESS_KEY_ID.to_string(),
                TEST_SECRET_ACCESS_KEY.to_string(),
            )],
            require_known_credentials: false,
            accept_past: Duration::from_secs(6 * 3600),
            accept_future: Duration::from_secs(5 * 60),
            signature_skew: Duration::from_secs(15 * 60),
        }
    }
}

/// How a recorded call ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum CallOutcome {
    /// 200 with this body.
    Ok {
        /// The response body.
        output: Value,
    },
    /// An AWS error.
    Error {
        /// The error shape name (`__type`).
        code: String,
        /// The HTTP status.
        status: u16,
        /// The message.
        message: String,
    },
}

impl CallOutcome {
    /// The error shape name, if the call failed.
    pub fn error_code(&self) -> Option<&str> {
        match self {
            CallOutcome::Error { code, .. } => Some(code),
            CallOutcome::Ok { .. } => None,
        }
    }
}

/// One request the double received, in arrival order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Call {
    /// 1, 2, … in arrival order.
    pub seq: u64,
    /// When it arrived.
    pub at: DateTime<Utc>,
    /// The operation, when `X-Amz-Target` named a known one.
    pub operation: Option<Operation>,
    /// The `X-Amz-Target` header as sent (empty when missing).
    pub target: String,
    /// The parsed JSON body (`null` when it was not JSON).
    pub input: Value,
    /// What the double answered.
    pub outcome: CallOutcome,
}

/// Which customer a usage record names.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CustomerRef {
    /// `CustomerAWSAccountId` (+ `LicenseArn`), for new integrations.
    Account {
        /// `CustomerAWSAccountId`.
        customer_aws_account_id: String,
        /// `LicenseArn`, when sent.
        license_arn: Option<String>,
    },
    /// The legacy `CustomerIdentifier`.
    Identifier(String),
}

/// A usage record AWS accepted and would bill.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MeteredRecord {
    /// The id returned as `MeteringRecordId`.
    pub metering_record_id: String,
    /// The product metered.
    pub product_code: String,
    /// The customer as the record named them.
    pub customer: CustomerRef,
    /// The subscribed customer's account id (whatever identifier the record used).
    pub customer_aws_account_id: String,
    /// `Dimension` (`UsageDimension` for MeterUsage).
    pub dimension: String,
    /// `Quantity`.
    pub quantity: i64,
    /// `Timestamp` as sent.
    pub timestamp: DateTime<Utc>,
    /// The hour the record dedupes on.
    pub hour: DateTime<Utc>,
    /// `UsageAllocations` as sent, if any.
    pub usage_allocations: Option<Value>,
    /// Which operation accepted it.
    pub operation: Operation,
    /// When the double accepted it.
    pub accepted_at: DateTime<Utc>,
}

/// The value of an entitlement: exactly one of AWS's four kinds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntitlementValue {
    /// `IntegerValue`.
    Integer(i64),
    /// `DoubleValue`.
    Double(f64),
    /// `BooleanValue`.
    Boolean(bool),
    /// `StringValue`.
    String(String),
}

/// One entitlement `GetEntitlements` returns.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entitlement {
    /// `ProductCode`.
    pub product_code: String,
    /// `Dimension`.
    pub dimension: String,
    /// `CustomerAWSAccountId`.
    pub customer_aws_account_id: String,
    /// `LicenseArn`.
    #[serde(default)]
    pub license_arn: Option<String>,
    /// The legacy `CustomerIdentifier`.
    #[serde(default)]
    pub customer_identifier: Option<String>,
    /// `Value`.
    pub value: EntitlementValue,
    /// `ExpirationDate`.
    #[serde(default)]
    pub expiration_date: Option<DateTime<Utc>>,
}

/// A purchase agreement the seller (the double's caller) proposed, as `SearchAgreements` lists
/// it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Agreement {
    /// `agreementId`.
    pub agreement_id: String,
    /// The product's id (`prod-…`): `proposalSummary.resources[0].id`, what
    /// `ResourceIdentifier` filters on.
    pub product_id: String,
    /// `acceptor.accountId`: the buyer.
    pub acceptor_account_id: String,
    /// `status`: ACTIVE, CANCELLED, EXPIRED, RENEWED, REPLACED, …
    pub status: String,
    /// `proposalSummary.offerId`.
    #[serde(default)]
    pub offer_id: Option<String>,
    /// `entitlements[0].licenseArn`.
    #[serde(default)]
    pub license_arn: Option<String>,
    /// `acceptanceTime`.
    #[serde(default)]
    pub acceptance_time: Option<DateTime<Utc>>,
    /// `startTime`.
    #[serde(default)]
    pub start_time: Option<DateTime<Utc>>,
    /// `endTime`.
    #[serde(default)]
    pub end_time: Option<DateTime<Utc>>,
    /// The license's status `GetAgreementEntitlements` answers; None: PROVISIONED while the
    /// agreement is ACTIVE, DEPROVISIONED once it is not.
    #[serde(default)]
    pub license_status: Option<String>,
}
