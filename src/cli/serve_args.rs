//! The arguments of `mplink serve`: the HTTP API, and optionally the worker in the same process.

use super::worker_args::RunArgs;

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
    #[arg(long = "api-token", env = "MPLINK_API_TOKENS", value_delimiter = ' ', hide_env_values = true, value_parser = secret_text)]
    pub api_tokens: Vec<secrecy::SecretString>,
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
    /// Serve the example host pages under /example/ (a demo of the host side; not for
    /// production). The select-organization URL then defaults to /example/select.html.
    #[arg(long, env = "MPLINK_EXAMPLE")]
    pub example: bool,
}

/// Never fails, so clap never prints the value in an error; the token is checked later.
fn secret_text(text: &str) -> Result<secrecy::SecretString, std::convert::Infallible> {
    Ok(secrecy::SecretString::from(text.to_string()))
}

#[cfg(test)]
mod tests {
    use crate::cli::{Cli, Command};
    use clap::Parser;

    fn serve(args: &[&str]) -> Result<super::ServeArgs, clap::Error> {
        let mut all = vec!["mplink", "serve"];
        all.extend_from_slice(args);
        match Cli::try_parse_from(all)?.command {
            Command::Serve(args) => Ok(args),
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
