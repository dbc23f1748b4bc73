//! AWS SDK configuration shared by the worker, provisioning and the dead-letter tools.

use aws_config::meta::region::RegionProviderChain;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, SdkConfig};
use std::time::Duration;

/// Marketplace topics and EventBridge events live in this region.
pub const MARKETPLACE_REGION: &str = "us-east-1";

/// Loads the standard AWS configuration (environment, profile, `AWS_ENDPOINT_URL` for
/// LocalStack), defaulting the region to us-east-1. Every operation attempt is bounded by
/// `attempt_timeout`, which callers set above the long-poll wait so a receive can never hang.
pub async fn sdk_config(attempt_timeout: Duration) -> SdkConfig {
    let region = RegionProviderChain::default_provider().or_else(MARKETPLACE_REGION);
    aws_config::defaults(BehaviorVersion::latest())
        .region(region)
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(5))
                .operation_attempt_timeout(attempt_timeout)
                .build(),
        )
        .load()
        .await
}

/// The worker's SQS client: one attempt per call, because the worker's own loops retry with
/// capped, jittered backoff (and keep messages hidden meanwhile); SDK retries on top would
/// stretch every delay past `--backoff-cap`.
pub fn worker_sqs_client(sdk: &SdkConfig) -> aws_sdk_sqs::Client {
    let config = aws_sdk_sqs::config::Builder::from(sdk)
        .retry_config(aws_config::retry::RetryConfig::standard().with_max_attempts(1))
        .build();
    aws_sdk_sqs::Client::from_conf(config)
}

/// The Marketplace Metering client (ResolveCustomer) of the API: one retry at most (throttling
/// and server errors; the buyer is waiting, and each retry spends the seller's quota again),
/// pointed at `endpoint` when given (the
/// local test double); otherwise AWS's, or `AWS_ENDPOINT_URL_MARKETPLACE_METERING`.
pub fn metering_client(
    sdk: &SdkConfig,
    endpoint: Option<&str>,
) -> aws_sdk_marketplacemetering::Client {
    let mut config = aws_sdk_marketplacemetering::config::Builder::from(sdk)
        .retry_config(aws_config::retry::RetryConfig::standard().with_max_attempts(2));
    if let Some(url) = endpoint {
        config = config.endpoint_url(url);
    }
    aws_sdk_marketplacemetering::Client::from_conf(config.build())
}

/// The Marketplace Entitlement client of the entitlement loop: one attempt per call (the loop
/// retries each check with its own capped backoff), always us-east-1 (the only region AWS serves
/// it in); `AWS_ENDPOINT_URL_MARKETPLACE_ENTITLEMENT_SERVICE` points it at the local double.
pub fn entitlement_client(sdk: &SdkConfig) -> aws_sdk_marketplaceentitlement::Client {
    let config = aws_sdk_marketplaceentitlement::config::Builder::from(sdk)
        .region(aws_config::Region::new(MARKETPLACE_REGION))
        .retry_config(aws_config::retry::RetryConfig::standard().with_max_attempts(1))
        .build();
    aws_sdk_marketplaceentitlement::Client::from_conf(config)
}

/// The Agreement API client of `mplink reconcile`: one attempt per call (the pass waits out
/// throttling itself, within its call bound), always us-east-1;
/// `AWS_ENDPOINT_URL_MARKETPLACE_AGREEMENT` points it at the local double.
pub fn agreement_client(sdk: &SdkConfig) -> aws_sdk_marketplaceagreement::Client {
    let config = aws_sdk_marketplaceagreement::config::Builder::from(sdk)
        .region(aws_config::Region::new(MARKETPLACE_REGION))
        .retry_config(aws_config::retry::RetryConfig::standard().with_max_attempts(1))
        .build();
    aws_sdk_marketplaceagreement::Client::from_conf(config)
}

/// Longest error text kept or logged: enough for a code, a message and a request id.
const MAX_ERROR_CHARS: usize = 300;

/// An error and its causes, each by its Display, on one line and at most 300 characters. Not
/// the SDK's `DisplayErrorContext`, which appends the error's Debug form: the raw response,
/// headers and body bytes, about 1.4 KB for one throttle.
pub fn error_text<E: std::error::Error>(e: &E) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let part = c.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        cause = c.source();
    }
    text.chars().take(MAX_ERROR_CHARS).collect()
}

/// An SDK call's failure as a person reads it: AWS's error code and message and the request id
/// when AWS answered (`ThrottlingException: Rate exceeded (request id …)`); what kept the
/// request from an answer otherwise. Stored as a record's reason and logged; nothing else.
pub fn error_summary<E>(
    e: &aws_sdk_sqs::error::SdkError<E, aws_sdk_sqs::config::http::HttpResponse>,
) -> String
where
    E: aws_sdk_sqs::error::ProvideErrorMetadata + std::error::Error + 'static,
{
    use aws_sdk_sqs::error::{ProvideErrorMetadata, SdkError};
    use aws_sdk_sqs::operation::RequestId;
    let text = match e {
        SdkError::ServiceError(_) => {
            let code = e.code().unwrap_or("an error without a code");
            let message = e.message().unwrap_or("no message");
            match e.request_id() {
                Some(id) => format!("{code}: {message} (request id {id})"),
                None => format!("{code}: {message}"),
            }
        }
        SdkError::TimeoutError(_) => "no answer from AWS within the attempt timeout".to_string(),
        // A connection refused, an unreadable answer, a request that could not be built.
        _ => error_text(e),
    };
    text.chars().take(MAX_ERROR_CHARS).collect()
}
