//! What the command line accepts: the commands and their arguments (the worker's own, which
//! `dlq replay` and `apply` share in part, live in [`super::worker_args`]).

use super::worker_args::{parse_redrive_key, RunArgs, VerifyArgs, WebhookArgs};
use crate::config::DATABASE_URL_ENV;
use clap::{Parser, Subcommand};

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
    Run(Box<RunArgs>),
    /// Serve the HTTP API: the AWS Marketplace landing, the host application's /v1 routes
    /// (registrations, organizations to link, the link, billing, events) and /openapi.json;
    /// with --worker, also consume the queue in this process.
    Serve(Box<super::ServeArgs>),
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
    /// Report an organization's usage for metering.
    Usage(super::metering::UsageArgs),
    /// Usage metering tools: status, retry, send.
    Meter(super::metering::MeterArgs),
    /// One organization's timeline: each event about its subscriptions with its source, time,
    /// arrival and decision, each link change with its webhook delivery, each metering record.
    History(super::history::HistoryArgs),
    /// Registration tools: release a registration claimed by the wrong user of the host.
    Registration(super::registration::RegistrationArgs),
    /// Compare every purchase agreement AWS lists for a product (Agreement API) with the ledger
    /// and repair what differs, through the ledger's rules; --dry-run only reports.
    Reconcile(super::reconcile::ReconcileArgs),
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

/// Arguments of `mplink healthcheck`.
#[derive(Debug, clap::Args)]
pub struct HealthcheckArgs {
    /// The worker's HTTP address (its --http-addr); 0.0.0.0 or [::] is asked on loopback.
    #[arg(long, env = "MPLINK_HTTP_ADDR", default_value = crate::http::DEFAULT_ADDR)]
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

/// Arguments of `mplink link`.
#[derive(Debug, clap::Args)]
pub struct LinkArgs {
    /// The organization to link (the id rule: docs/http-api.md).
    #[arg(long = "org", value_parser = org_id)]
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
    #[arg(long = "org", value_parser = org_id)]
    pub org: Option<String>,
    /// Only this customer identifier.
    #[arg(long)]
    pub customer_identifier: Option<String>,
    /// One JSON object per line (stable keys, see docs/operations.md) instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// An organization id under the one rule every entry point applies ([`crate::org`]).
pub fn org_id(text: &str) -> Result<String, String> {
    crate::org::check(text)
        .map(|()| text.to_string())
        .map_err(|e| format!("the organization id {e}"))
}
