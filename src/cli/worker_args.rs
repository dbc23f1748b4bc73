//! The worker's arguments — what `mplink run` consumes, delivers and trusts — and the
//! configurations they describe.

use super::CliError;
use crate::consumer::defaults;
use crate::outbox::deliver::defaults as deliver_defaults;
use crate::server::defaults as server_defaults;
use crate::store::Store;

/// Arguments of `mplink run`. Every flag can also be set by the environment variable shown.
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// URL of the SQS queue to consume.
    #[arg(long, env = "MPLINK_QUEUE_URL")]
    pub queue_url: String,
    /// Concurrent ReceiveMessage long-poll loops.
    #[arg(long, env = "MPLINK_RECEIVE_LOOPS", default_value_t = defaults::RECEIVE_LOOPS, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub receive_loops: u16,
    /// Most messages received and not yet committed (a slow one holds only its own slot); as
    /// many committed ones may wait for their delete.
    #[arg(long, env = "MPLINK_MAX_IN_FLIGHT", default_value_t = defaults::MAX_IN_FLIGHT, value_parser = clap::value_parser!(u16).range(1..=1000))]
    pub max_in_flight: u16,
    /// Long-poll wait per receive, in seconds (0-20).
    #[arg(long, env = "MPLINK_WAIT_TIME", default_value_t = defaults::WAIT_TIME_S, value_parser = clap::value_parser!(u64).range(0..=20))]
    pub wait_time: u64,
    /// Visibility timeout in seconds; renewed while a message is still being worked on.
    #[arg(long, env = "MPLINK_VISIBILITY_TIMEOUT", default_value_t = defaults::VISIBILITY_TIMEOUT_S, value_parser = clap::value_parser!(u64).range(1..=43_200))]
    pub visibility_timeout: u64,
    /// Seconds allowed after SIGTERM/Ctrl-C to finish in-flight messages and flush deletes
    /// (keep it below ECS's stopTimeout, 30 s by default).
    #[arg(long, env = "MPLINK_GRACE_PERIOD", default_value_t = defaults::GRACE_PERIOD_S)]
    pub grace_period: u64,
    /// Longest backoff, in seconds, after SQS or database failures.
    #[arg(long, env = "MPLINK_BACKOFF_CAP", default_value_t = defaults::BACKOFF_CAP_S, value_parser = clap::value_parser!(u64).range(1..=600))]
    pub backoff_cap: u64,
    /// Milliseconds a full receive (a busy queue) waits for further receives to share its
    /// transaction; a short receive is applied at once. 0 combines only receives already waiting.
    #[arg(long, env = "MPLINK_BATCH_LINGER_MS", default_value_t = defaults::BATCH_LINGER_MS, value_parser = clap::value_parser!(u64).range(0..=1000))]
    pub batch_linger_ms: u64,
    /// Most messages applied in one transaction (1 commits every message alone).
    #[arg(long, env = "MPLINK_MAX_BATCH", default_value_t = defaults::MAX_BATCH, value_parser = clap::value_parser!(u16).range(1..=1000))]
    pub max_batch: u16,
    /// Address of the HTTP endpoint (/healthz, /readyz, /metrics).
    #[arg(long, env = "MPLINK_HTTP_ADDR", default_value = crate::http::DEFAULT_ADDR)]
    pub http_addr: std::net::SocketAddr,
    /// The timeouts and connection caps of every HTTP listener (this one, and the API's with
    /// `mplink serve`).
    #[command(flatten)]
    pub http: HttpArgs,
    /// Exit once a receive comes back empty and nothing is in flight (replays, tests).
    #[arg(long, env = "MPLINK_EXIT_WHEN_IDLE")]
    pub exit_when_idle: bool,
    /// Also run the usage-metering loop: close each hour, send BatchMeterUsage, final usage on
    /// cancellation (see docs/metering.md).
    #[arg(long, env = "MPLINK_METER")]
    pub meter: bool,
    /// The metering loop's settings.
    #[command(flatten)]
    pub metering: super::metering::MeterLoopArgs,
    /// Also run the entitlement loop: ask GetEntitlements after each event or link that can
    /// change a contract's entitlements and store the answer (see docs/entitlements.md).
    #[arg(long, env = "MPLINK_ENTITLEMENTS")]
    pub entitlements: bool,
    /// Also reconcile with AWS's Agreement API every this many seconds, at least 60 (one
    /// replica at a time; see docs/reconcile.md). 0 or unset: off. Needs --reconcile-product.
    #[arg(long, env = "MPLINK_RECONCILE_EVERY")]
    pub reconcile_every: Option<u64>,
    /// A product to reconcile: PRODUCT_ID or PRODUCT_ID=PRODUCT_CODE (repeatable;
    /// MPLINK_RECONCILE_PRODUCTS, comma-separated; empty entries are ignored, so a stack can
    /// pass an empty list).
    #[arg(long, env = "MPLINK_RECONCILE_PRODUCTS", value_delimiter = ',')]
    pub reconcile_product: Vec<String>,
    /// Link-change webhooks delivered by this process.
    #[command(flatten)]
    pub webhooks: WebhookArgs,
    /// What to trust.
    #[command(flatten)]
    pub verify: VerifyArgs,
}

impl RunArgs {
    /// The scheduled reconcile these arguments ask for: None when off; an error naming the flag
    /// when only half of it is given or the period is too short.
    pub fn reconcile_schedule(
        &self,
    ) -> Result<Option<crate::reconcile::schedule::Schedule>, String> {
        use crate::reconcile::schedule::{Product, Schedule, MIN_EVERY_S};
        let products = self
            .reconcile_product
            .iter()
            .map(|p| p.trim())
            .filter(|p| !p.is_empty())
            .map(str::parse::<Product>)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("--reconcile-product: {e}"))?;
        match (self.reconcile_every.unwrap_or(0), products.is_empty()) {
            (0, true) => Ok(None),
            (0, false) => {
                Err("--reconcile-product needs --reconcile-every (MPLINK_RECONCILE_EVERY)".into())
            }
            (_, true) => Err(
                "--reconcile-every needs --reconcile-product (MPLINK_RECONCILE_PRODUCTS)".into(),
            ),
            (every, false) if every < MIN_EVERY_S => Err(format!(
                "--reconcile-every {every}: at least {MIN_EVERY_S} seconds (0: off)"
            )),
            (every, false) => Ok(Some(Schedule::new(
                products,
                std::time::Duration::from_secs(every),
            ))),
        }
    }

    /// The worker configuration these arguments describe.
    pub fn worker_config(&self) -> crate::consumer::WorkerConfig {
        use std::time::Duration;
        let mut config = crate::consumer::WorkerConfig::new(self.queue_url.clone());
        config.receive_loops = self.receive_loops.into();
        config.max_in_flight = self.max_in_flight.into();
        config.wait_time = Duration::from_secs(self.wait_time);
        config.visibility_timeout = Duration::from_secs(self.visibility_timeout);
        config.grace_period = Duration::from_secs(self.grace_period);
        config.backoff_cap = Duration::from_secs(self.backoff_cap);
        config.batch_linger = Duration::from_millis(self.batch_linger_ms);
        config.max_batch = self.max_batch.into();
        config.exit_when_idle = self.exit_when_idle;
        config
    }
}

/// Timeouts and connection caps of an HTTP listener (see docs/http-api.md, "Limits").
#[derive(Debug, Clone, clap::Args)]
pub struct HttpArgs {
    /// Seconds a client has to send a request's headers, after connecting or after its previous
    /// response (so also how long a kept-alive connection may sit idle); 0 is off. Behind a load
    /// balancer, set it above the balancer's idle timeout.
    #[arg(long, env = "MPLINK_HTTP_HEADER_TIMEOUT", default_value_t = server_defaults::HEADER_TIMEOUT_S, value_parser = clap::value_parser!(u64).range(0..=3600))]
    pub http_header_timeout: u64,
    /// Seconds a client has to send a whole request body once its headers arrived; 0 is off.
    #[arg(long, env = "MPLINK_HTTP_BODY_TIMEOUT", default_value_t = server_defaults::BODY_TIMEOUT_S, value_parser = clap::value_parser!(u64).range(0..=3600))]
    pub http_body_timeout: u64,
    /// Most open connections per listener; more are answered 503 and closed.
    #[arg(long, env = "MPLINK_HTTP_MAX_CONNECTIONS", default_value_t = server_defaults::MAX_CONNECTIONS, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub http_max_connections: u32,
    /// Most open connections from one client address; 0 is no cap (behind a load balancer,
    /// whose own addresses are the only clients).
    #[arg(long, env = "MPLINK_HTTP_MAX_CONNECTIONS_PER_CLIENT", default_value_t = server_defaults::MAX_CONNECTIONS_PER_CLIENT, value_parser = clap::value_parser!(u32).range(0..=1_000_000))]
    pub http_max_connections_per_client: u32,
}

impl HttpArgs {
    /// The limits these arguments describe.
    pub fn limits(&self) -> crate::server::ConnectionLimits {
        let seconds = |s: u64| (s > 0).then(|| std::time::Duration::from_secs(s));
        crate::server::ConnectionLimits {
            header_timeout: seconds(self.http_header_timeout),
            body_timeout: seconds(self.http_body_timeout),
            max_connections: self.http_max_connections as usize,
            max_per_client: self.http_max_connections_per_client as usize,
        }
    }
}

/// Webhook delivery of the outbox (`mplink run`, `mplink outbox deliver`).
#[derive(Debug, Clone, clap::Args)]
pub struct WebhookArgs {
    /// A URL every link-change event is POSTed to (repeatable; the environment variable takes
    /// a comma-separated list). Must be http or https; redirects are not followed.
    #[arg(
        long = "webhook-url",
        env = "MPLINK_WEBHOOK_URLS",
        value_delimiter = ','
    )]
    pub webhook_urls: Vec<String>,
    /// A Standard Webhooks secret, whsec_<base64> (repeatable, or space-separated in the
    /// environment variable): each signs every request, so a secret can be rotated.
    #[arg(long = "webhook-secret", env = "MPLINK_WEBHOOK_SECRETS", value_delimiter = ' ', hide_env_values = true, value_parser = secret_text)]
    pub webhook_secrets: Vec<secrecy::SecretString>,
    /// Seconds allowed for one POST.
    #[arg(long, env = "MPLINK_WEBHOOK_TIMEOUT", default_value_t = deliver_defaults::TIMEOUT_S, value_parser = clap::value_parser!(u64).range(1..=300))]
    pub webhook_timeout: u64,
    /// Attempts before a row is parked as failed (see `outbox retry`).
    #[arg(long, env = "MPLINK_WEBHOOK_MAX_ATTEMPTS", default_value_t = deliver_defaults::MAX_ATTEMPTS, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub webhook_max_attempts: u32,
    /// First retry delay in milliseconds; doubles per failure, with jitter.
    #[arg(long, env = "MPLINK_WEBHOOK_BACKOFF_BASE_MS", default_value_t = deliver_defaults::BACKOFF_BASE_MS, value_parser = clap::value_parser!(u64).range(1..=600_000))]
    pub webhook_backoff_base_ms: u64,
    /// Longest retry delay in seconds.
    #[arg(long, env = "MPLINK_WEBHOOK_BACKOFF_CAP", default_value_t = deliver_defaults::BACKOFF_CAP_S, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub webhook_backoff_cap: u64,
}

/// Never fails, so clap never prints the value in an error; the secret is checked later.
fn secret_text(text: &str) -> Result<secrecy::SecretString, std::convert::Infallible> {
    Ok(secrecy::SecretString::from(text.to_string()))
}

/// What to trust: SNS signatures and allow-lists (for `run`, `apply` and `dlq replay`).
#[derive(Debug, Clone, clap::Args)]
pub struct VerifyArgs {
    /// Verify SNS signatures (SignatureVersion 1 and 2). Turn off only for hand-made test input.
    #[arg(long, env = "MPLINK_VERIFY_SIGNATURES", default_value_t = true, action = clap::ArgAction::Set)]
    pub verify_signatures: bool,
    /// Extra trusted signing-certificate URL prefix besides https://sns.<region>.amazonaws.com
    /// (LocalStack: http://127.0.0.1:4566/_aws/sns/). Repeatable or comma-separated.
    #[arg(
        long = "sns-cert-url-prefix",
        env = "MPLINK_SNS_CERT_URL_PREFIXES",
        value_delimiter = ','
    )]
    pub sns_cert_url_prefixes: Vec<String>,
    /// Accepted SNS topic ARNs (default: any topic named like the marketplace topic of the
    /// message's own product). Repeatable or comma-separated.
    #[arg(
        long = "allowed-topic-arn",
        env = "MPLINK_ALLOWED_TOPIC_ARNS",
        value_delimiter = ','
    )]
    pub allowed_topic_arns: Vec<String>,
    /// Accepted product codes (default: any). Repeatable or comma-separated.
    #[arg(
        long = "allowed-product-code",
        env = "MPLINK_ALLOWED_PRODUCT_CODES",
        value_delimiter = ','
    )]
    pub allowed_product_codes: Vec<String>,
    /// Accepted EventBridge sources.
    #[arg(long = "allowed-source", env = "MPLINK_ALLOWED_SOURCES", value_delimiter = ',', default_value = crate::event::EVENTBRIDGE_SOURCE)]
    pub allowed_sources: Vec<String>,
    /// Accept unenveloped marketplace JSON: only when the SNS subscription uses raw message
    /// delivery (such messages carry no signature).
    #[arg(long, env = "MPLINK_ACCEPT_RAW_DELIVERY")]
    pub accept_raw_delivery: bool,
    /// Seconds an event's own time may lie after the moment it is decided (or SQS's send time,
    /// if later); later events are refused as `event_from_future`.
    #[arg(long, env = "MPLINK_MAX_CLOCK_SKEW", default_value_t = crate::verify::DEFAULT_MAX_CLOCK_SKEW.as_secs())]
    pub max_clock_skew: u64,
    /// The key that signs a portable redrive's original-identity attributes (at least 16
    /// bytes). Without it, a message carrying such attributes is refused.
    #[arg(long, env = "MPLINK_REDRIVE_KEY", hide_env_values = true, value_parser = parse_redrive_key)]
    pub redrive_key: Option<crate::redrive::RedriveKey>,
    /// An EventBridge detail-type mplink does not know, from an accepted source: `acknowledge`
    /// records it as unrecognised, counts and logs it and deletes it; `dead-letter` rejects it
    /// so it reaches the dead-letter queue.
    #[arg(
        long,
        env = "MPLINK_UNRECOGNISED_DETAIL_TYPES",
        value_enum,
        default_value_t = crate::process::UnrecognisedPolicy::Acknowledge
    )]
    pub unrecognised_detail_types: crate::process::UnrecognisedPolicy,
}

impl VerifyArgs {
    /// The verifier configuration these arguments describe.
    pub fn config(&self) -> crate::verify::VerifyConfig {
        crate::verify::VerifyConfig {
            verify_signatures: self.verify_signatures,
            extra_cert_url_prefixes: self.sns_cert_url_prefixes.clone(),
            allowed_topic_arns: self.allowed_topic_arns.clone(),
            allowed_product_codes: self.allowed_product_codes.clone(),
            allowed_sources: self.allowed_sources.clone(),
            accept_raw_delivery: self.accept_raw_delivery,
            max_clock_skew: std::time::Duration::from_secs(self.max_clock_skew),
            redrive_key: self.redrive_key.clone(),
        }
    }

    /// A pipeline over `store` trusting what these arguments say.
    pub fn pipeline(&self, store: &Store) -> Result<crate::process::Pipeline, CliError> {
        let verifier = crate::verify::Verifier::new(self.config())
            .map_err(|e| CliError::Setup(e.to_string()))?;
        Ok(crate::process::Pipeline::new(
            store.clone(),
            std::sync::Arc::new(verifier),
            std::sync::Arc::new(crate::metrics::Metrics::new()),
        )
        .unrecognised_detail_types(self.unrecognised_detail_types))
    }
}

pub(super) fn parse_redrive_key(text: &str) -> Result<crate::redrive::RedriveKey, String> {
    crate::redrive::RedriveKey::new(text).map_err(|e| e.to_string())
}
