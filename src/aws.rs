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

/// Renders an SDK error with its whole cause chain, on one line.
pub fn error_text<E: std::error::Error>(e: &E) -> String {
    aws_sdk_sqs::error::DisplayErrorContext(e).to_string()
}
