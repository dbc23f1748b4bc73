//! What the API's handlers share, and the configuration it is built from.

use super::auth::ApiTokens;
use crate::metrics::Metrics;
use crate::store::Store;
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;
use tokio_util::sync::CancellationToken;

/// How long a registration can be linked after the buyer landed, unless configured.
pub const DEFAULT_REGISTRATION_TTL: Duration = Duration::from_secs(24 * 3600);

/// The handlers' shared state.
#[derive(Clone)]
pub struct ApiState {
    /// The ledger (shared with the worker when both run in one process).
    pub store: Store,
    /// ResolveCustomer's client.
    pub metering: aws_sdk_marketplacemetering::Client,
    /// The host application's bearer tokens.
    pub tokens: ApiTokens,
    /// Where `/marketplace/register` sends the buyer.
    pub select_organization_url: SelectUrl,
    /// How long a registration can be linked.
    pub registration_ttl: Duration,
    /// The product codes this SaaS sells (empty: any); a registration for another is refused.
    pub product_codes: Vec<String>,
    /// Contract products: `POST /v1/usage` refuses their usage outside the buyer's entitlements.
    pub contract_products: Vec<String>,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// Rate limits, ResolveCustomer slots, refused tokens, long-poll slots.
    pub guards: Arc<super::guard::Guards>,
    /// Cancelled at shutdown: long polls answer at once.
    pub shutdown: CancellationToken,
}

/// A bad `--select-organization-url`.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("--select-organization-url must be an absolute http(s) URL or a path starting with /, without a fragment: {0:?}")]
pub struct SelectUrlError(pub String);

/// The host's "Select an Organization to Link" page: an absolute http(s) URL, or a path on
/// this server (the example host's `/example/select.html`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SelectUrl(String);

impl SelectUrl {
    /// Checks `raw`.
    pub fn new(raw: &str) -> Result<SelectUrl, SelectUrlError> {
        let bad = || SelectUrlError(raw.to_string());
        if raw.contains('#') || raw.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(bad());
        }
        if raw.starts_with('/') && !raw.starts_with("//") {
            return Ok(SelectUrl(raw.to_string()));
        }
        let url = url::Url::parse(raw).map_err(|_| bad())?;
        if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
            return Err(bad());
        }
        Ok(SelectUrl(raw.to_string()))
    }

    /// The page's URL carrying `registration=<id>`.
    pub fn with_registration(&self, id: &str) -> String {
        let sep = if self.0.contains('?') { '&' } else { '?' };
        let encoded: String = url::form_urlencoded::byte_serialize(id.as_bytes()).collect();
        format!("{}{sep}registration={encoded}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_registration_id_is_appended_to_the_query() {
        let plain = SelectUrl::new("https://app.example.com/link").unwrap();
        assert_eq!(
            plain.with_registration("reg_1"),
            "https://app.example.com/link?registration=reg_1"
        );
        let query = SelectUrl::new("https://app.example.com/link?from=aws").unwrap();
        assert_eq!(
            query.with_registration("reg_1"),
            "https://app.example.com/link?from=aws&registration=reg_1"
        );
        let path = SelectUrl::new("/example/select.html").unwrap();
        assert_eq!(
            path.with_registration("reg_1"),
            "/example/select.html?registration=reg_1"
        );
        for bad in [
            "ftp://x/",
            "//evil.example.com/x",
            "javascript:alert(1)",
            "https://a/#x",
            "relative",
            "",
        ] {
            assert!(SelectUrl::new(bad).is_err(), "{bad}");
        }
    }
}
