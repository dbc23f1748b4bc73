//! Command-line interface: argument definitions and one function per command.

use crate::config::{DatabaseUrl, DATABASE_URL_ENV, DEFAULT_DATABASE_URL};
use crate::consumer::defaults;
use crate::event::{normalize_identifier, InboundMessage, SENT_TIMESTAMP_ATTRIBUTE};
use crate::ledger::{LinkRequest, Outcome};
use crate::process::Processed;
use crate::store::{now_ms, StatusFilter, StatusRow, Store, StoreError};
use clap::{Parser, Subcommand};
use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use thiserror::Error;

/// Keeps SaaS billing links true to AWS Marketplace subscription events.
#[derive(Debug, Parser)]
#[command(name = "mplink", version, about)]
pub struct Cli {
    /// Database URL: sqlite://FILE (created if missing) or postgres://USER@HOST/DB.
    /// Falls back to DATABASE_URL, then to sqlite://mplink.db.
    #[arg(long, global = true, env = DATABASE_URL_ENV, hide_env_values = true)]
    pub database_url: Option<String>,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create or upgrade the database schema (other commands also do this on start).
    Migrate,
    /// Record that an organization pays through a marketplace subscription (the registration
    /// page calls this with what ResolveCustomer returned).
    Link(LinkArgs),
    /// Apply SQS message bodies or exported SQS messages, one JSON object per line.
    Apply(ApplyArgs),
    /// Print each subscription with its organization link.
    Status(StatusArgs),
    /// Consume the SQS queue: apply every message, serve /healthz, /readyz and /metrics.
    Run(RunArgs),
    /// Create the queue, dead-letter queue, policy, SNS subscriptions and EventBridge rule
    /// (idempotent; for local use and tests, production uses the deploy templates).
    Provision(ProvisionArgs),
    /// Dead-letter queue tools: inspect, replay, redrive, export.
    Dlq(DlqArgs),
    /// Ask a running worker's /readyz (or /healthz) and exit 0 when it answers 200, else 1:
    /// the container health check, without shell tools.
    Healthcheck(HealthcheckArgs),
    /// Print link-change events (the outbox) after a sequence; --follow waits for new ones.
    Events(EventsArgs),
    /// Webhook outbox tools: inspect, retry, deliver.
    Outbox(OutboxArgs),
}

/// Arguments of `mplink events`.
#[derive(Debug, clap::Args)]
pub struct EventsArgs {
    /// Only events after this sequence (the last one the consumer handled).
    #[arg(long, default_value_t = 0)]
    pub after: i64,
    /// Keep printing new events as they commit, until Ctrl-C/SIGTERM.
    #[arg(long)]
    pub follow: bool,
    /// One JSON object per line: the webhook payload.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `mplink outbox`.
#[derive(Debug, clap::Args)]
pub struct OutboxArgs {
    /// What to do with the outbox.
    #[command(subcommand)]
    pub command: OutboxCommand,
}

/// The outbox tools.
#[derive(Debug, Subcommand)]
pub enum OutboxCommand {
    /// Counts by delivery state and the rows not delivered yet, with their last error.
    Inspect(OutboxInspectArgs),
    /// Put rows parked as failed back to pending, due now.
    Retry(OutboxRetryArgs),
    /// Deliver outbox rows to the webhooks without consuming SQS.
    Deliver(OutboxDeliverArgs),
}

/// Arguments of `mplink outbox inspect`.
#[derive(Debug, clap::Args)]
pub struct OutboxInspectArgs {
    /// One JSON object.
    #[arg(long)]
    pub json: bool,
    /// At most this many undelivered rows listed.
    #[arg(long, default_value_t = 100)]
    pub limit: i64,
}

/// Arguments of `mplink outbox retry`.
#[derive(Debug, clap::Args)]
pub struct OutboxRetryArgs {
    /// The sequence of a parked row (repeatable).
    #[arg(long = "id", conflicts_with = "all_failed")]
    pub ids: Vec<i64>,
    /// Every parked row.
    #[arg(long)]
    pub all_failed: bool,
}

/// Arguments of `mplink outbox deliver`.
#[derive(Debug, clap::Args)]
pub struct OutboxDeliverArgs {
    /// Exit once no row is pending (parked rows do not count).
    #[arg(long)]
    pub until_idle: bool,
    /// Where to deliver.
    #[command(flatten)]
    pub webhooks: WebhookArgs,
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
    #[arg(long, env = "MPLINK_WEBHOOK_TIMEOUT", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=300))]
    pub webhook_timeout: u64,
    /// Attempts before a row is parked as failed (see `outbox retry`).
    #[arg(long, env = "MPLINK_WEBHOOK_MAX_ATTEMPTS", default_value_t = 15, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub webhook_max_attempts: u32,
    /// First retry delay in milliseconds; doubles per failure, with jitter.
    #[arg(long, env = "MPLINK_WEBHOOK_BACKOFF_BASE_MS", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=600_000))]
    pub webhook_backoff_base_ms: u64,
    /// Longest retry delay in seconds.
    #[arg(long, env = "MPLINK_WEBHOOK_BACKOFF_CAP", default_value_t = 600, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub webhook_backoff_cap: u64,
}

/// Never fails, so clap never prints the value in an error; the secret is checked later.
fn secret_text(text: &str) -> Result<secrecy::SecretString, std::convert::Infallible> {
    Ok(secrecy::SecretString::from(text.to_string()))
}

/// Arguments of `mplink healthcheck`.
#[derive(Debug, clap::Args)]
pub struct HealthcheckArgs {
    /// The worker's HTTP address (its --http-addr); 0.0.0.0 or [::] is asked on loopback.
    #[arg(long, env = "MPLINK_HTTP_ADDR", default_value = "127.0.0.1:9090")]
    pub http_addr: std::net::SocketAddr,
    /// Ask /healthz (the process answers) instead of /readyz (database and queue answer).
    #[arg(long)]
    pub live: bool,
    /// Seconds to wait for the answer.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=60))]
    pub timeout: u64,
}

/// Arguments of `mplink dlq`.
#[derive(Debug, clap::Args)]
pub struct DlqArgs {
    /// What to do with the dead-letter queue.
    #[command(subcommand)]
    pub command: DlqCommand,
}

/// The dead-letter queue tools.
#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// List what is waiting, without consuming it (messages become visible again right away).
    Inspect(DlqInspectArgs),
    /// Apply dead letters through the worker's own path; delete each once its effect is
    /// committed (or it is a known duplicate or stale), leave the rest with their reasons.
    Replay(DlqReplayArgs),
    /// Move dead letters back to the source queue (SQS StartMessageMoveTask, or --portable).
    Redrive(DlqRedriveArgs),
    /// Print dead letters as JSON lines that `mplink apply` reads back (not consuming them).
    Export(DlqExportArgs),
}

/// Arguments of `mplink dlq inspect`.
#[derive(Debug, clap::Args)]
pub struct DlqInspectArgs {
    /// The dead-letter queue.
    #[arg(long, env = "MPLINK_DLQ_URL")]
    pub queue_url: String,
    /// One JSON object per line.
    #[arg(long)]
    pub json: bool,
    /// At most this many messages.
    #[arg(long, default_value_t = 100)]
    pub max: usize,
}

/// Arguments of `mplink dlq replay`.
#[derive(Debug, clap::Args)]
pub struct DlqReplayArgs {
    /// The dead-letter queue.
    #[arg(long, env = "MPLINK_DLQ_URL")]
    pub queue_url: String,
    /// Show what would happen; apply, record and delete nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// At most this many messages.
    #[arg(long, default_value_t = usize::MAX, hide_default_value = true)]
    pub max: usize,
    /// At most this many messages per second.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Print the summary as one JSON object.
    #[arg(long)]
    pub json: bool,
    /// What to trust.
    #[command(flatten)]
    pub verify: VerifyArgs,
}

/// Arguments of `mplink dlq redrive`.
#[derive(Debug, clap::Args)]
pub struct DlqRedriveArgs {
    /// The dead-letter queue.
    #[arg(long, env = "MPLINK_DLQ_URL")]
    pub queue_url: String,
    /// Destination queue URL (default: the queue whose redrive policy names this one).
    #[arg(long)]
    pub to: Option<String>,
    /// Receive, send and delete instead of StartMessageMoveTask (emulators, special queues).
    /// Needs the redrive key: the original identity travels signed with it.
    #[arg(long)]
    pub portable: bool,
    /// The key that signs a portable redrive's original-identity attributes.
    #[arg(long, env = "MPLINK_REDRIVE_KEY", hide_env_values = true, value_parser = parse_redrive_key)]
    pub redrive_key: Option<crate::redrive::RedriveKey>,
}

fn parse_redrive_key(text: &str) -> Result<crate::redrive::RedriveKey, String> {
    crate::redrive::RedriveKey::new(text).map_err(|e| e.to_string())
}

/// Arguments of `mplink dlq export`.
#[derive(Debug, clap::Args)]
pub struct DlqExportArgs {
    /// The dead-letter queue.
    #[arg(long, env = "MPLINK_DLQ_URL")]
    pub queue_url: String,
    /// At most this many messages.
    #[arg(long, default_value_t = usize::MAX, hide_default_value = true)]
    pub max: usize,
}

/// Arguments of `mplink run`. Every flag can also be set by the environment variable shown.
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// URL of the SQS queue to consume.
    #[arg(long, env = "MPLINK_QUEUE_URL")]
    pub queue_url: String,
    /// Concurrent ReceiveMessage long-poll loops.
    #[arg(long, env = "MPLINK_RECEIVE_LOOPS", default_value_t = defaults::RECEIVE_LOOPS, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub receive_loops: u16,
    /// Most messages received and not yet deleted (a slow one holds only its own slot).
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
    #[arg(long, env = "MPLINK_HTTP_ADDR", default_value = "127.0.0.1:9090")]
    pub http_addr: std::net::SocketAddr,
    /// Exit once a receive comes back empty and nothing is in flight (replays, tests).
    #[arg(long, env = "MPLINK_EXIT_WHEN_IDLE")]
    pub exit_when_idle: bool,
    /// Link-change webhooks delivered by this process.
    #[command(flatten)]
    pub webhooks: WebhookArgs,
    /// What to trust.
    #[command(flatten)]
    pub verify: VerifyArgs,
}

/// Arguments of `mplink provision`.
#[derive(Debug, clap::Args)]
pub struct ProvisionArgs {
    /// Name of the queue to create; its dead-letter queue gets the suffix -dlq.
    #[arg(long, env = "MPLINK_QUEUE_NAME", default_value = "mplink-events")]
    pub queue_name: String,
    /// Receives before a message moves to the dead-letter queue.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub max_receive_count: u32,
    /// The queue's visibility timeout, in seconds.
    #[arg(long, default_value_t = 30)]
    pub visibility_timeout: u64,
    /// SNS topic ARN to subscribe the queue to (repeatable).
    #[arg(long = "topic-arn")]
    pub topic_arns: Vec<String>,
    /// Create the two marketplace topics of this product code first and subscribe to them
    /// (LocalStack only: AWS owns these topics in production; repeatable).
    #[arg(long = "create-topics-for-product")]
    pub create_topics_for: Vec<String>,
    /// Name of an EventBridge rule for aws.agreement-marketplace events to create and target.
    #[arg(long)]
    pub eventbridge_rule: Option<String>,
    /// Event bus of the rule (default: the default bus, where AWS Marketplace sends).
    #[arg(long)]
    pub event_bus: Option<String>,
    /// Subscribe with SNS raw message delivery.
    #[arg(long)]
    pub raw_delivery: bool,
    /// Print the result as one JSON object.
    #[arg(long)]
    pub json: bool,
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

/// Arguments of `mplink link`.
#[derive(Debug, clap::Args)]
pub struct LinkArgs {
    /// The organization to link.
    #[arg(long = "org")]
    pub org: String,
    /// Marketplace product code.
    #[arg(long)]
    pub product_code: String,
    /// Customer identifier (legacy listings).
    #[arg(long)]
    pub customer_identifier: Option<String>,
    /// Customer AWS account id.
    #[arg(long = "customer-account-id")]
    pub customer_account_id: Option<String>,
    /// License ARN (listings with concurrent agreements).
    #[arg(long)]
    pub license_arn: Option<String>,
}

/// Arguments of `mplink apply`.
#[derive(Debug, clap::Args)]
pub struct ApplyArgs {
    /// File with one JSON object per line, or - for standard input. A line is either an SQS
    /// body (SNS envelope or EventBridge event) or an SQS message as `aws sqs receive-message`
    /// prints it ({"MessageId", "Body", "Attributes": {"SentTimestamp"}}), which raw
    /// deliveries need for their time.
    pub file: String,
    /// Events applied per database transaction.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub batch_size: u32,
    /// What to trust.
    #[command(flatten)]
    pub verify: VerifyArgs,
}

/// Arguments of `mplink status`.
#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// Only this organization.
    #[arg(long = "org")]
    pub org: Option<String>,
    /// Only this customer identifier.
    #[arg(long)]
    pub customer_identifier: Option<String>,
    /// One JSON object per line (stable keys, see README) instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Why a command failed.
#[derive(Debug, Error)]
pub enum CliError {
    /// The database refused.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// An input file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The database or a certificate host failed; nothing of the failed batch was applied.
    #[error(
        "stopped: {0} (earlier batches are applied; rerun to continue, duplicates are skipped)"
    )]
    Transient(#[source] crate::process::Transient),
    /// A dead-letter tool failed.
    #[error(transparent)]
    Dlq(#[from] crate::dlq::DlqError),
    /// The configuration cannot work (a missing key, a client that cannot be built).
    #[error("{0}")]
    Setup(String),
    /// Provisioning failed.
    #[error(transparent)]
    Provision(#[from] crate::provision::ProvisionError),
    /// The HTTP address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: std::net::SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Output could not be written.
    #[error("cannot write output: {0}")]
    Write(#[source] std::io::Error),
    /// Some input lines were rejected (the rest were applied).
    #[error("{rejected} of {total} messages rejected (recorded in the event log as rejected)")]
    Rejected {
        /// How many lines were rejected.
        rejected: usize,
        /// How many lines were read.
        total: usize,
    },
    /// `link --product-code` is empty once surrounding whitespace is removed.
    #[error("--product-code is empty")]
    EmptyProductCode,
}

impl Cli {
    /// The database URL from the flag, `MPLINK_DATABASE_URL`, `DATABASE_URL`, or the default.
    pub fn database(&self) -> DatabaseUrl {
        let url = self
            .database_url
            .clone()
            .or_else(|| std::env::var("DATABASE_URL").ok().filter(|s| !s.is_empty()))
            .unwrap_or_else(|| DEFAULT_DATABASE_URL.to_string());
        DatabaseUrl::new(url)
    }
}

/// Runs the parsed command.
pub async fn run(cli: Cli) -> Result<ExitCode, CliError> {
    // Commands that only talk to AWS open no database.
    let cli = match cli.command {
        Command::Provision(args) => return provision(args).await,
        Command::Dlq(DlqArgs {
            command: DlqCommand::Redrive(args),
        }) => return dlq_redrive(args).await,
        Command::Dlq(DlqArgs {
            command: DlqCommand::Export(args),
        }) => return dlq_export(args).await,
        Command::Healthcheck(args) => return Ok(crate::healthcheck::run(&args).await),
        command => Cli { command, ..cli },
    };
    let url = cli.database();
    tracing::debug!(database = %url, "opening database");
    let store = Store::open(&url).await?;
    let result = match cli.command {
        Command::Migrate => {
            println!("database {} is up to date", url.redacted());
            Ok(ExitCode::SUCCESS)
        }
        Command::Link(args) => link(&store, args).await,
        Command::Apply(args) => apply(&store, args).await,
        Command::Status(args) => status(&store, args).await,
        Command::Run(args) => run_worker(&store, &url, args).await,
        Command::Dlq(DlqArgs {
            command: DlqCommand::Inspect(args),
        }) => dlq_inspect(&store, args).await,
        Command::Dlq(DlqArgs {
            command: DlqCommand::Replay(args),
        }) => dlq_replay(&store, args).await,
        Command::Events(args) => crate::outbox::commands::events(&store, args).await,
        Command::Outbox(OutboxArgs { command }) => match command {
            OutboxCommand::Inspect(args) => crate::outbox::commands::inspect(&store, args).await,
            OutboxCommand::Retry(args) => crate::outbox::commands::retry(&store, args).await,
            OutboxCommand::Deliver(args) => crate::outbox::commands::deliver(&store, args).await,
        },
        Command::Provision(_) | Command::Dlq(_) | Command::Healthcheck(_) => {
            unreachable!("handled before opening the database")
        }
    };
    store.close().await;
    result
}

impl RunArgs {
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

async fn run_worker(store: &Store, url: &DatabaseUrl, args: RunArgs) -> Result<ExitCode, CliError> {
    // A webhook URL that is not http(s), or URLs without a secret, stop the start.
    let webhooks = args.webhooks.config()?;
    let config = args.worker_config();
    // Above the long-poll wait, so a receive that the network swallowed cannot hang the loop.
    let attempt_timeout = config.wait_time + std::time::Duration::from_secs(10);
    let sdk = crate::aws::sdk_config(attempt_timeout).await;
    let listener = tokio::net::TcpListener::bind(args.http_addr)
        .await
        .map_err(|source| CliError::Listen {
            addr: args.http_addr,
            source,
        })?;
    tracing::info!(
        database = %url,
        queue_url = %config.queue_url,
        http_addr = %listener.local_addr().unwrap_or(args.http_addr),
        receive_loops = config.receive_loops,
        max_in_flight = config.max_in_flight,
        wait_time_s = config.wait_time.as_secs(),
        visibility_timeout_s = config.visibility_timeout.as_secs(),
        grace_period_s = config.grace_period.as_secs(),
        backoff_cap_s = config.backoff_cap.as_secs(),
        batch_linger_ms = config.batch_linger.as_millis() as u64,
        max_batch = config.max_batch,
        exit_when_idle = config.exit_when_idle,
        "mplink worker starting"
    );
    let shutdown = tokio_util::sync::CancellationToken::new();
    let on_signal = shutdown.clone();
    tokio::spawn(async move {
        crate::app::shutdown_signal().await;
        on_signal.cancel();
    });
    tracing::info!(verify = ?args.verify.config(), "trusting");
    let pipeline = args.verify.pipeline(store)?;
    // The deliverer stops with the worker, whether a signal or an idle queue stopped it.
    let deliverer_stop = shutdown.child_token();
    let deliverer = crate::outbox::commands::spawn_deliverer(
        store,
        webhooks,
        pipeline.metrics.clone(),
        deliverer_stop.clone(),
    )?;
    let summary = crate::app::run(
        crate::aws::worker_sqs_client(&sdk),
        pipeline,
        config,
        listener,
        shutdown,
    )
    .await;
    deliverer_stop.cancel();
    if let Some(handle) = deliverer {
        let _ = handle.await;
    }
    println!(
        "received {}, applied {}, stale {}, duplicate {}, rejected {}, released {}, delete failures {}",
        summary.received,
        summary.applied,
        summary.stale,
        summary.duplicate,
        summary.rejected,
        summary.released,
        summary.delete_failures
    );
    Ok(ExitCode::SUCCESS)
}

async fn provision(args: ProvisionArgs) -> Result<ExitCode, CliError> {
    let sdk = crate::aws::sdk_config(std::time::Duration::from_secs(30)).await;
    let mut topic_arns = args.topic_arns.clone();
    for product in &args.create_topics_for {
        topic_arns.extend(crate::provision::create_marketplace_topics(&sdk, product).await?);
    }
    let spec = crate::provision::ProvisionSpec {
        queue_name: args.queue_name,
        max_receive_count: args.max_receive_count,
        visibility_timeout: std::time::Duration::from_secs(args.visibility_timeout),
        topic_arns: topic_arns.clone(),
        eventbridge_rule: args.eventbridge_rule,
        event_bus: args.event_bus,
        raw_delivery: args.raw_delivery,
    };
    let done = crate::provision::provision(&sdk, &spec).await?;
    if args.json {
        let out = serde_json::json!({
            "queue_url": done.queue_url,
            "queue_arn": done.queue_arn,
            "dead_letter_queue_url": done.dead_letter_queue_url,
            "dead_letter_queue_arn": done.dead_letter_queue_arn,
            "topic_arns": topic_arns,
            "subscription_arns": done.subscription_arns,
            "rule_arn": done.rule_arn,
        });
        println!("{out}");
    } else {
        println!("queue              {}", done.queue_url);
        println!("dead-letter queue  {}", done.dead_letter_queue_url);
        for (topic, sub) in topic_arns.iter().zip(&done.subscription_arns) {
            println!("subscribed to      {topic} ({sub})");
        }
        if let Some(rule) = &done.rule_arn {
            println!("EventBridge rule   {rule}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn sqs_client() -> aws_sdk_sqs::Client {
    aws_sdk_sqs::Client::new(&crate::aws::sdk_config(std::time::Duration::from_secs(30)).await)
}

async fn dlq_inspect(store: &Store, args: DlqInspectArgs) -> Result<ExitCode, CliError> {
    let found = crate::dlq::inspect(&sqs_client().await, store, &args.queue_url, args.max).await?;
    let mut out = std::io::stdout().lock();
    if args.json {
        for item in &found {
            let line = serde_json::to_string(item).map_err(|e| CliError::Write(e.into()))?;
            writeln!(out, "{line}").map_err(CliError::Write)?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    writeln!(
        out,
        "{} message(s) waiting (showing at most {})",
        found.len(),
        args.max
    )
    .map_err(CliError::Write)?;
    for m in &found {
        let what = match &m.decode_error {
            Some(e) => format!("undecodable: {e}"),
            None => format!(
                "{} {} {}",
                m.action.as_deref().unwrap_or("-"),
                m.product_code.as_deref().unwrap_or("-"),
                m.customer.as_deref().unwrap_or("-")
            ),
        };
        writeln!(
            out,
            "{}  received {}x  first {}  {}{}",
            m.message_id,
            m.receive_count.map_or("?".to_string(), |n| n.to_string()),
            m.first_seen.as_deref().unwrap_or("-"),
            what,
            m.last_rejection
                .as_deref()
                .map(|r| format!("  [last rejected: {r}]"))
                .unwrap_or_default()
        )
        .map_err(CliError::Write)?;
    }
    Ok(ExitCode::SUCCESS)
}

async fn dlq_replay(store: &Store, args: DlqReplayArgs) -> Result<ExitCode, CliError> {
    let options = crate::dlq::ReplayOptions {
        dry_run: args.dry_run,
        max: args.max,
        rate: args.rate,
    };
    let mut progress = if args.json {
        crate::dlq::Progress::quiet("replayed")
    } else {
        crate::dlq::Progress::new("replayed")
    };
    let pipeline = args.verify.pipeline(store)?;
    let summary = crate::dlq::replay(
        &sqs_client().await,
        &pipeline,
        &args.queue_url,
        &options,
        &mut progress,
    )
    .await?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string(&summary).map_err(|e| CliError::Write(e.into()))?
        );
    } else {
        let prefix = if args.dry_run {
            "dry run, nothing changed: "
        } else {
            ""
        };
        println!("{prefix}{}", summary.line());
    }
    Ok(ExitCode::SUCCESS)
}

async fn dlq_redrive(args: DlqRedriveArgs) -> Result<ExitCode, CliError> {
    let client = sqs_client().await;
    let mut progress = crate::dlq::Progress::new("moved");
    let moved = if args.portable {
        let to = match args.to {
            Some(to) => to,
            None => crate::dlq::source_of(&client, &args.queue_url).await?,
        };
        let key = args.redrive_key.as_ref().ok_or_else(|| {
            CliError::Setup(
                "--portable needs --redrive-key (MPLINK_REDRIVE_KEY): the workers believe a redriven message's original identity only when it is signed with their key".into(),
            )
        })?;
        crate::dlq::redrive_portable(&client, &args.queue_url, &to, key, &mut progress).await?
    } else {
        crate::dlq::redrive_native(&client, &args.queue_url, args.to.as_deref(), &mut progress)
            .await?
    };
    println!("moved {moved} message(s)");
    Ok(ExitCode::SUCCESS)
}

async fn dlq_export(args: DlqExportArgs) -> Result<ExitCode, CliError> {
    let mut out = std::io::stdout().lock();
    let n = crate::dlq::export(&sqs_client().await, &args.queue_url, args.max, &mut out).await?;
    eprintln!("exported {n} message(s)");
    Ok(ExitCode::SUCCESS)
}

async fn link(store: &Store, args: LinkArgs) -> Result<ExitCode, CliError> {
    // Registrations are normalised exactly as the decoder normalises what AWS sends.
    let id = |raw: Option<String>| {
        raw.as_deref()
            .and_then(normalize_identifier)
            .map(str::to_owned)
    };
    let request = LinkRequest {
        org_id: args.org,
        product_code: id(Some(args.product_code)).ok_or(CliError::EmptyProductCode)?,
        customer_identifier: id(args.customer_identifier),
        customer_aws_account_id: id(args.customer_account_id),
        license_arn: id(args.license_arn),
        requested_at_ms: now_ms(),
    };
    let outcome = store.link(&request).await?;
    if let Some(previous) = outcome.moved_from {
        println!("link moved from organization {previous}");
    }
    print!("{}", render_table(std::slice::from_ref(&outcome.row)));
    Ok(ExitCode::SUCCESS)
}

/// Tallies of an `apply` run.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ApplySummary {
    /// Lines read (blank lines excluded).
    pub total: usize,
    /// Applied events.
    pub applied: usize,
    /// Stale events.
    pub stale: usize,
    /// Duplicate events.
    pub duplicate: usize,
    /// Rejected lines.
    pub rejected: usize,
    /// Informational events kept as details.
    pub noted: usize,
    /// Unrecognised detail-types acknowledged.
    pub unrecognised: usize,
}

impl ApplySummary {
    fn count(&mut self, outcome: Outcome) {
        match outcome {
            Outcome::Applied => self.applied += 1,
            Outcome::Stale => self.stale += 1,
            Outcome::Duplicate => self.duplicate += 1,
            Outcome::Rejected => self.rejected += 1,
            Outcome::Noted => self.noted += 1,
            Outcome::Unrecognised => self.unrecognised += 1,
        }
    }
}

async fn apply(store: &Store, args: ApplyArgs) -> Result<ExitCode, CliError> {
    let read_err = |source| CliError::Read {
        path: args.file.clone(),
        source,
    };
    let reader: Box<dyn BufRead> = if args.file == "-" {
        Box::new(std::io::stdin().lock())
    } else {
        Box::new(std::io::BufReader::new(
            std::fs::File::open(PathBuf::from(&args.file)).map_err(read_err)?,
        ))
    };
    let pipeline = args.verify.pipeline(store)?;
    let mut summary = ApplySummary::default();
    let mut pending: Vec<(usize, InboundMessage)> = Vec::new();
    for (index, line) in reader.split(b'\n').enumerate() {
        let mut bytes = line.map_err(read_err)?;
        if bytes.last() == Some(&b'\r') {
            bytes.pop();
        }
        let line_no = index + 1;
        // One line that is not UTF-8 is one rejected line, not the end of the run.
        let line = match String::from_utf8(bytes) {
            Ok(line) => line,
            Err(e) => {
                let lossy = String::from_utf8_lossy(e.as_bytes()).into_owned();
                let msg = inbound_from_line(&lossy, line_no);
                let detail = format!("line {line_no} is not UTF-8: {}", e.utf8_error());
                summary.total += 1;
                match pipeline.refuse(&msg, "not_utf8", detail.clone()).await {
                    Processed::Retry(e) => return Err(CliError::Transient(e)),
                    _ => {
                        eprintln!("line {line_no}: rejected: {detail}");
                        summary.count(Outcome::Rejected);
                    }
                }
                continue;
            }
        };
        if line.trim().is_empty() {
            continue;
        }
        summary.total += 1;
        pending.push((line_no, inbound_from_line(&line, line_no)));
        if pending.len() >= args.batch_size as usize {
            flush(&pipeline, &mut pending, &mut summary).await?;
        }
    }
    flush(&pipeline, &mut pending, &mut summary).await?;
    println!(
        "applied {}, stale {}, duplicate {}, rejected {}, noted {}, unrecognised {}",
        summary.applied,
        summary.stale,
        summary.duplicate,
        summary.rejected,
        summary.noted,
        summary.unrecognised
    );
    if summary.rejected > 0 {
        return Err(CliError::Rejected {
            rejected: summary.rejected,
            total: summary.total,
        });
    }
    Ok(ExitCode::SUCCESS)
}

async fn flush(
    pipeline: &crate::process::Pipeline,
    pending: &mut Vec<(usize, InboundMessage)>,
    summary: &mut ApplySummary,
) -> Result<(), CliError> {
    if pending.is_empty() {
        return Ok(());
    }
    let msgs: Vec<InboundMessage> = pending.iter().map(|(_, m)| m.clone()).collect();
    for ((line, _), result) in pending.iter().zip(pipeline.process_batch(&msgs).await) {
        match result {
            Processed::Done(outcome) => summary.count(outcome),
            Processed::Rejected { detail, .. } => {
                eprintln!("line {line}: rejected: {detail}");
                summary.count(Outcome::Rejected);
            }
            Processed::Retry(e) => return Err(CliError::Transient(e)),
        }
    }
    pending.clear();
    Ok(())
}

/// Turns one input line into an SQS message: either an exported SQS message (with MessageId,
/// Body and Attributes) or a bare body, which gets a stand-in message id from its line number
/// and content.
pub fn inbound_from_line(line: &str, line_no: usize) -> InboundMessage {
    #[derive(serde::Deserialize)]
    struct Exported {
        #[serde(rename = "MessageId")]
        message_id: String,
        #[serde(rename = "Body")]
        body: String,
        #[serde(rename = "Attributes", default)]
        attributes: std::collections::HashMap<String, serde_json::Value>,
    }
    if let Ok(exported) = serde_json::from_str::<Exported>(line) {
        let sent = exported
            .attributes
            .get(SENT_TIMESTAMP_ATTRIBUTE)
            .and_then(|v| {
                v.as_str()
                    .and_then(|s| s.parse().ok())
                    .or_else(|| v.as_i64())
            });
        return InboundMessage {
            message_id: exported.message_id,
            body: exported.body,
            sent_timestamp_ms: sent,
        };
    }
    InboundMessage {
        message_id: format!("line-{line_no}"),
        body: line.to_string(),
        sent_timestamp_ms: None,
    }
}

async fn status(store: &Store, args: StatusArgs) -> Result<ExitCode, CliError> {
    let filter = StatusFilter {
        org_id: args.org,
        customer_identifier: args.customer_identifier,
    };
    // Page by page, so memory stays flat however large the ledger.
    let mut pages = store.status_pages(&filter);
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut table: Option<Table> = None;
    while let Some(page) = pages.next_page().await? {
        if args.json {
            for row in &page {
                serde_json::to_writer(&mut out, row).map_err(|e| CliError::Write(e.into()))?;
                writeln!(out).map_err(CliError::Write)?;
            }
            continue;
        }
        let table = match &mut table {
            Some(table) => table,
            None => {
                let sized = Table::sized_for(&page);
                out.write_all(sized.header().as_bytes())
                    .map_err(CliError::Write)?;
                table.insert(sized)
            }
        };
        for row in &page {
            out.write_all(table.line(row).as_bytes())
                .map_err(CliError::Write)?;
        }
    }
    if !args.json && table.is_none() {
        write!(out, "{}", render_table(&[])).map_err(CliError::Write)?;
    }
    out.flush().map_err(CliError::Write)?;
    Ok(ExitCode::SUCCESS)
}

/// Renders status rows as an aligned text table.
pub fn render_table(rows: &[StatusRow]) -> String {
    let table = Table::sized_for(rows);
    let mut out = table.header();
    for row in rows {
        out.push_str(&table.line(row));
    }
    if rows.is_empty() {
        out.push_str("(no subscriptions)\n");
    }
    out
}

const TABLE_HEADER: [&str; 10] = [
    "ORG",
    "PRODUCT",
    "CUSTOMER",
    "ACCOUNT",
    "AGREEMENT",
    "SUBSCRIPTION",
    "LINK",
    "PAYMENT METHOD",
    "LAST EVENT",
    "NOTES",
];

/// Column widths of the status table, measured on the first page only (a bounded look-ahead):
/// a longer value further down widens its own line, never the lines already printed.
struct Table {
    widths: [usize; 10],
}

impl Table {
    fn sized_for(rows: &[StatusRow]) -> Table {
        let mut widths = TABLE_HEADER.map(str::len);
        for row in rows {
            for (w, c) in widths.iter_mut().zip(table_cells(row)) {
                *w = (*w).max(c.chars().count());
            }
        }
        Table { widths }
    }

    fn header(&self) -> String {
        self.render(&TABLE_HEADER)
    }

    fn line(&self, row: &StatusRow) -> String {
        let cells = table_cells(row);
        self.render(&cells.each_ref().map(String::as_str))
    }

    fn render(&self, cells: &[&str; 10]) -> String {
        let line: Vec<String> = cells
            .iter()
            .zip(self.widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        let mut out = line.join("  ").trim_end().to_string();
        out.push('\n');
        out
    }
}

fn table_cells(r: &StatusRow) -> [String; 10] {
    let dash = || "-".to_string();
    [
        r.org_id.clone().unwrap_or_else(dash),
        r.product_code.clone().unwrap_or_else(dash),
        r.customer_identifier.clone().unwrap_or_else(dash),
        r.customer_aws_account_id.clone().unwrap_or_else(dash),
        r.agreement_id.clone().unwrap_or_else(dash),
        r.subscription_state.to_string(),
        r.link_state.map_or_else(dash, |s| s.to_string()),
        match (r.link_state, r.payment_method) {
            (None, _) => dash(),
            (Some(_), Some(_)) => "AWS Marketplace Subscription".to_string(),
            (Some(_), None) => "(none)".to_string(),
        },
        r.last_event_time.clone().unwrap_or_else(dash),
        Some(r.notes().join("; "))
            .filter(|n| !n.is_empty())
            .unwrap_or_else(dash),
    ]
}
