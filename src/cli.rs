//! Command-line interface: argument definitions and one function per command.

use crate::config::{DatabaseUrl, DATABASE_URL_ENV, DEFAULT_DATABASE_URL};
use crate::event::{self, InboundMessage, SENT_TIMESTAMP_ATTRIBUTE};
use crate::ledger::{LinkRequest, Outcome};
use crate::store::{now_ms, Incoming, StatusFilter, StatusRow, Store, StoreError};
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
    };
    store.close().await;
    result
}

async fn link(store: &Store, args: LinkArgs) -> Result<ExitCode, CliError> {
    let request = LinkRequest {
        org_id: args.org,
        product_code: args.product_code,
        customer_identifier: args.customer_identifier,
        customer_aws_account_id: args.customer_account_id,
        license_arn: args.license_arn,
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
}

impl ApplySummary {
    fn count(&mut self, outcome: Outcome) {
        match outcome {
            Outcome::Applied => self.applied += 1,
            Outcome::Stale => self.stale += 1,
            Outcome::Duplicate => self.duplicate += 1,
            Outcome::Rejected => self.rejected += 1,
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
    let mut summary = ApplySummary::default();
    let mut pending: Vec<(event::Event, String)> = Vec::new();
    for (index, line) in reader.lines().enumerate() {
        let line = line.map_err(read_err)?;
        if line.trim().is_empty() {
            continue;
        }
        summary.total += 1;
        let msg = inbound_from_line(&line, index + 1);
        match event::decode(&msg) {
            Ok(ev) => pending.push((ev, msg.body)),
            Err(e) => {
                eprintln!("line {}: rejected: {e}", index + 1);
                store.record_rejection(&msg, &e.to_string()).await?;
                summary.count(Outcome::Rejected);
            }
        }
        if pending.len() >= args.batch_size as usize {
            flush(store, &mut pending, &mut summary).await?;
        }
    }
    flush(store, &mut pending, &mut summary).await?;
    println!(
        "applied {}, stale {}, duplicate {}, rejected {}",
        summary.applied, summary.stale, summary.duplicate, summary.rejected
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
    store: &Store,
    pending: &mut Vec<(event::Event, String)>,
    summary: &mut ApplySummary,
) -> Result<(), CliError> {
    if pending.is_empty() {
        return Ok(());
    }
    let batch: Vec<Incoming<'_>> = pending
        .iter()
        .map(|(event, body)| Incoming { event, body })
        .collect();
    for outcome in store.apply_batch(&batch).await? {
        summary.count(outcome);
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
    let rows = store.status(&filter).await?;
    let mut out = std::io::stdout().lock();
    if args.json {
        for row in &rows {
            let line = serde_json::to_string(row).map_err(|e| CliError::Write(e.into()))?;
            writeln!(out, "{line}").map_err(CliError::Write)?;
        }
    } else {
        write!(out, "{}", render_table(&rows)).map_err(CliError::Write)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Renders status rows as an aligned text table.
pub fn render_table(rows: &[StatusRow]) -> String {
    let header = [
        "ORG",
        "PRODUCT",
        "CUSTOMER",
        "ACCOUNT",
        "AGREEMENT",
        "SUBSCRIPTION",
        "LINK",
        "PAYMENT METHOD",
        "LAST EVENT",
    ];
    let dash = || "-".to_string();
    let cells: Vec<[String; 9]> = rows
        .iter()
        .map(|r| {
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
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &cells {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    let mut push_row = |row: &[&str]| {
        let line: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    };
    push_row(&header);
    for row in &cells {
        push_row(&row.iter().map(String::as_str).collect::<Vec<_>>());
    }
    if rows.is_empty() {
        out.push_str("(no subscriptions)\n");
    }
    out
}
