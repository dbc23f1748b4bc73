//! The arguments of `mplink serve`: the HTTP API, and optionally the worker in the same process.

use super::worker_args::RunArgs;
use crate::api::guard::defaults as guard;

/// Arguments of `mplink serve`. Every flag can also be set by the environment variable shown.
/// The worker's flags are `mplink run`'s; its queue URL is needed only with `--worker`.
#[derive(Debug, clap::Args)]
#[command(mut_arg("queue_url", |a| a.required(false).default_value("").hide_default_value(true)))]
pub struct ServeArgs {
    /// The API's configuration.
    #[command(flatten)]
    pub api: ApiArgs,
    /// Also consume the SQS queue in this process, sharing the database pool: takes `mplink
    /// run`'s flags (--queue-url at least; its /healthz, /readyz and /metrics on --http-addr).
    /// The process stops when either stops.
    #[arg(long, env = "MPLINK_SERVE_WORKER", requires = "queue_url")]
    pub worker: bool,
    /// The worker's flags, used with --worker (clap cannot make a flattened group with nested
    /// groups optional, so they are always parsed; the queue URL defaults to empty).
    #[command(flatten)]
    pub run: RunArgs,
}

/// The HTTP API's configuration.
#[derive(Debug, Clone, clap::Args)]
pub struct ApiArgs {
    /// Address the API listens on.
    #[arg(
        long = "listen",
        env = "MPLINK_API_LISTEN",
        default_value = "127.0.0.1:8080"
    )]
    pub listen: std::net::SocketAddr,
    /// A bearer token the host application sends on /v1 (repeatable, or space-separated in the
    /// environment variable, so a token can be rotated; at least 24 characters each).
    /// Prefer MPLINK_API_TOKENS or --api-token-file: a command line is visible to every user
    /// of the machine (`ps`).
    #[arg(long = "api-token", env = "MPLINK_API_TOKENS", value_delimiter = ' ', hide_env_values = true, value_parser = secret_text)]
    pub api_tokens: Vec<secrecy::SecretString>,
    /// A file holding the bearer token(s), one per line (blank lines and `#` comments
    /// ignored); added to any --api-token.
    #[arg(long, env = "MPLINK_API_TOKEN_FILE")]
    pub api_token_file: Option<std::path::PathBuf>,
    /// The header a trusted proxy in front of mplink puts the client's address in (its
    /// rightmost entry is used), e.g. X-Forwarded-For behind an ALB; default: the peer address.
    /// Never set it without such a proxy: clients could then choose their own address.
    #[arg(long, env = "MPLINK_CLIENT_IP_HEADER")]
    pub client_ip_header: Option<axum::http::HeaderName>,
    /// Landings on /marketplace/register per minute one client address may make once its
    /// burst is spent; more get a 429 page.
    #[arg(long, env = "MPLINK_REGISTER_PER_MINUTE", default_value_t = guard::REGISTER_PER_MINUTE, value_parser = clap::value_parser!(u32).range(1..=60_000))]
    pub register_per_minute: u32,
    /// Landings one client address may make at once.
    #[arg(long, env = "MPLINK_REGISTER_BURST", default_value_t = guard::REGISTER_BURST, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub register_burst: u32,
    /// ResolveCustomer calls in flight at once (AWS's quota is the seller's, shared by all).
    #[arg(long, env = "MPLINK_RESOLVE_CONCURRENCY", default_value_t = guard::RESOLVE_CONCURRENCY, value_parser = clap::value_parser!(u32).range(1..=1_000))]
    pub resolve_concurrency: u32,
    /// Seconds a token AWS called invalid or expired is answered without asking AWS again.
    #[arg(long, env = "MPLINK_REFUSED_TOKEN_TTL", default_value_t = guard::REFUSED_TOKEN_TTL_S, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub refused_token_ttl: u64,
    /// Long polls of /v1/events waiting at once; more are answered 429.
    #[arg(long, env = "MPLINK_MAX_LONG_POLLS", default_value_t = guard::MAX_LONG_POLLS, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub max_long_polls: u32,
    /// The host's "Select an Organization to Link" page, where /marketplace/register redirects
    /// the buyer with ?registration=ID (absolute http(s) URL, or a path on this server).
    /// Needed unless --example serves the example host.
    #[arg(long, env = "MPLINK_SELECT_ORGANIZATION_URL")]
    pub select_organization_url: Option<String>,
    /// Endpoint of the AWS Marketplace Metering API (ResolveCustomer), e.g. the local test
    /// double; default: AWS's (or AWS_ENDPOINT_URL_MARKETPLACE_METERING).
    #[arg(long, env = "MPLINK_MARKETPLACE_ENDPOINT_URL")]
    pub marketplace_endpoint_url: Option<String>,
    /// Seconds after the buyer's landing during which an organization can be linked.
    #[arg(long, env = "MPLINK_REGISTRATION_TTL", default_value_t = crate::api::DEFAULT_REGISTRATION_TTL.as_secs(), value_parser = clap::value_parser!(u64).range(60..=2_592_000))]
    pub registration_ttl: u64,
    /// A product code this SaaS sells (repeatable or comma-separated; default: any). A buyer
    /// landing for another product gets an error page.
    #[arg(
        long = "product-code",
        env = "MPLINK_PRODUCT_CODES",
        value_delimiter = ','
    )]
    pub product_codes: Vec<String>,
    /// A contract product (repeatable or comma-separated): its usage must be in a dimension the
    /// buyer's contract entitles (as AWS last answered GetEntitlements), else POST /v1/usage
    /// refuses it `not_entitled`.
    #[arg(
        long = "contract-product",
        env = "MPLINK_CONTRACT_PRODUCTS",
        value_delimiter = ','
    )]
    pub contract_products: Vec<String>,
    /// Serve the example host pages under /example/ (a demo of the host side; not for
    /// production). The select-organization URL then defaults to /example/select.html.
    #[arg(long, env = "MPLINK_EXAMPLE")]
    pub example: bool,
}

/// Never fails, so clap never prints the value in an error; the token is checked later.
fn secret_text(text: &str) -> Result<secrecy::SecretString, std::convert::Infallible> {
    Ok(secrecy::SecretString::from(text.to_string()))
}

impl ApiArgs {
    /// The guards these arguments describe.
    pub fn guard_config(&self) -> crate::api::guard::GuardConfig {
        use std::num::NonZeroU32;
        let n = |v: u32| NonZeroU32::new(v).unwrap_or(NonZeroU32::MIN);
        crate::api::guard::GuardConfig {
            register_per_minute: n(self.register_per_minute),
            register_burst: n(self.register_burst),
            resolve_concurrency: n(self.resolve_concurrency),
            refused_token_ttl: std::time::Duration::from_secs(self.refused_token_ttl),
            max_long_polls: n(self.max_long_polls),
            client_ip_header: self.client_ip_header.clone(),
            ..Default::default()
        }
    }

    /// Every configured token: the flags' and the file's.
    pub fn all_tokens(&self) -> Result<Vec<secrecy::SecretString>, String> {
        let mut tokens = self.api_tokens.clone();
        if let Some(path) = &self.api_token_file {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read --api-token-file {}: {e}", path.display()))?;
            tokens.extend(
                text.lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty() && !l.starts_with('#'))
                    .map(|l| secrecy::SecretString::from(l.to_string())),
            );
        }
        Ok(tokens)
    }
}

#[cfg(test)]
mod tests {
    use crate::cli::{Cli, Command};
    use clap::Parser;

    fn serve(args: &[&str]) -> Result<super::ServeArgs, clap::Error> {
        let mut all = vec!["mplink", "serve"];
        all.extend_from_slice(args);
        match Cli::try_parse_from(all)?.command {
            Command::Serve(args) => Ok(*args),
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn the_worker_flags_are_needed_only_with_worker() {
        let api_only = serve(&["--api-token", "t"]).unwrap();
        assert!(!api_only.worker);
        let both = serve(&["--worker", "--queue-url", "https://q", "--wait-time", "1"]).unwrap();
        assert!(both.worker);
        assert_eq!(both.run.queue_url, "https://q");
        assert_eq!(both.run.wait_time, 1);
        assert!(serve(&["--worker"]).is_err());
    }
}
