//! The names AWS Marketplace gives its SNS topics (the legacy delivery path). `provision`
//! subscribes the queue to them and `verify` only trusts envelopes from them.

/// Prefix of the legacy subscription topic, followed by the product code.
pub const SUBSCRIPTION_TOPIC_PREFIX: &str = "aws-mp-subscription-notification-";
/// Prefix of the legacy entitlement topic, followed by the product code.
pub const ENTITLEMENT_TOPIC_PREFIX: &str = "aws-mp-entitlement-notification-";
