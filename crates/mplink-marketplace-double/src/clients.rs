//! The real AWS SDK Marketplace clients, pointed at a double: what every test that talks to one
//! needs, so each configures them the same way.

use crate::{MarketplaceDouble, ResolvedCustomer};
use aws_config::retry::RetryConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_marketplacemetering::config::Credentials;
use std::time::Duration;

/// SDK configuration for the double: test credentials, us-east-1, `max_attempts` tries per call.
pub async fn sdk_for(endpoint: &str, secret: &str, max_attempts: u32) -> SdkConfig {
    aws_config::defaults(BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("test", secret, None, None, "mplink-tests"))
        .retry_config(
            RetryConfig::standard()
                .with_max_attempts(max_attempts)
                .with_initial_backoff(Duration::from_millis(10)),
        )
        .load()
        .await
}

/// A metering client for `double` (test/test credentials).
pub async fn metering(
    double: &MarketplaceDouble,
    max_attempts: u32,
) -> aws_sdk_marketplacemetering::Client {
    aws_sdk_marketplacemetering::Client::new(
        &sdk_for(&double.endpoint_url(), "test", max_attempts).await,
    )
}

/// An entitlement client for `double`.
pub async fn entitlement(double: &MarketplaceDouble) -> aws_sdk_marketplaceentitlement::Client {
    aws_sdk_marketplaceentitlement::Client::new(&sdk_for(&double.endpoint_url(), "test", 1).await)
}

/// A new-integration customer of `product`: account `account`, license `…:license/l-{account}`.
pub fn customer(product: &str, account: &str) -> ResolvedCustomer {
    ResolvedCustomer {
        customer_aws_account_id: account.to_string(),
        license_arn: format!("arn:aws:license-manager::{account}:license:l-{account}"),
        product_code: product.to_string(),
        customer_identifier: None,
        agreement_id: None,
    }
}

/// An Agreement API client for `double`.
pub async fn agreement(double: &MarketplaceDouble) -> aws_sdk_marketplaceagreement::Client {
    aws_sdk_marketplaceagreement::Client::new(&sdk_for(&double.endpoint_url(), "test", 1).await)
}
