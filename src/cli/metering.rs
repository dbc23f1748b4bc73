//! `mplink usage record` and `mplink meter status|retry|send`, with their arguments; the
//! worker's `--meter` flags live here too.

use super::{print_line, CliError};
use crate::metering::send::rfc3339;
use crate::metering::{record_usage, MeterConfig, MeteringError, UsageReport};
use crate::store::Store;
use clap::Subcommand;
use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

/// Exit code of `usage record` when the report was refused (stored, counted, not metered).
pub const EXIT_REFUSED: u8 = 3;

/// Arguments of `mplink usage`.
#[derive(Debug, clap::Args)]
pub struct UsageArgs {
    /// What to do with usage.
    #[command(subcommand)]
    pub command: UsageCommand,
}

/// The usage tools.
#[derive(Debug, Subcommand)]
pub enum UsageCommand {
    /// Report usage of one organization (the same --key twice counts once).
    Record(UsageRecordArgs),
    /// One organization's metered usage by hour: quantity, allocations by tag, refusals and
    /// the fate of each hour's record at AWS.
    Show(UsageShowArgs),
}

/// Arguments of `mplink usage show`.
#[derive(Debug, clap::Args)]
pub struct UsageShowArgs {
    /// The organization.
    #[arg(long, value_parser = super::args::org_id)]
    pub org: String,
    /// First hour (RFC 3339; default: the start of the current month, UTC).
    #[arg(long)]
    pub from: Option<chrono::DateTime<chrono::Utc>>,
    /// End, exclusive (RFC 3339; default: the end of the current hour).
    #[arg(long)]
    pub to: Option<chrono::DateTime<chrono::Utc>>,
    /// One JSON object per hour and dimension (the API's `hours` entries) instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `mplink usage record`.
#[derive(Debug, clap::Args)]
pub struct UsageRecordArgs {
    /// The organization that used the product.
    #[arg(long, value_parser = super::args::org_id)]
    pub org: String,
    /// The pricing dimension, as listed on AWS Marketplace.
    #[arg(long)]
    pub dimension: String,
    /// How much (0 to 2147483647).
    #[arg(long)]
    pub quantity: i64,
    /// When (RFC 3339); now when omitted.
    #[arg(long)]
    pub time: Option<chrono::DateTime<chrono::Utc>>,
    /// The report's idempotency key.
    #[arg(long)]
    pub key: String,
    /// An allocation tag KEY=VALUE (repeatable, at most 5): the hour's record splits usage by
    /// tag set, as the buyer then sees it in Cost Explorer.
    #[arg(long = "tag", value_parser = tag)]
    pub tags: Vec<(String, String)>,
    /// One JSON object.
    #[arg(long)]
    pub json: bool,
}

/// `KEY=VALUE`, split at the first `=` (a value may hold more).
fn tag(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| "a tag is KEY=VALUE".to_string())
}

/// Arguments of `mplink meter`.
#[derive(Debug, clap::Args)]
pub struct MeterArgs {
    /// What to do with metering.
    #[command(subcommand)]
    pub command: MeterCommand,
}

/// The metering tools.
#[derive(Debug, Subcommand)]
pub enum MeterCommand {
    /// Counts by status and the records per hour and subscription: sent, pending, failed, why.
    Status(MeterStatusArgs),
    /// Put records parked as failed back to unsent, due now.
    Retry,
    /// Close the hours and final usage that are due and send what is due, once.
    Send(MeterLoopArgs),
}

/// Arguments of `mplink meter status`.
#[derive(Debug, clap::Args)]
pub struct MeterStatusArgs {
    /// One JSON object per record.
    #[arg(long)]
    pub json: bool,
    /// At most this many records, newest hour first.
    #[arg(long, default_value_t = 100)]
    pub limit: i64,
}

/// How the metering loop runs (shared by `mplink run --meter` and `mplink meter send`).
#[derive(Debug, Clone, clap::Args)]
pub struct MeterLoopArgs {
    /// A dimension that gets a zero record every hour a linked subscription had no usage in
    /// it (repeatable; AWS asks for one record per hour per customer).
    #[arg(
        long = "meter-zero-dimension",
        env = "MPLINK_METER_ZERO_DIMENSIONS",
        value_delimiter = ','
    )]
    pub zero_dimensions: Vec<String>,
    /// Seconds after an hour ends before it is closed (late reports within it still count).
    #[arg(long, env = "MPLINK_METER_CLOSE_GRACE", default_value_t = crate::metering::defaults::CLOSE_GRACE_S)]
    pub meter_close_grace: u64,
    /// Seconds a sender holds the records it is sending.
    #[arg(long, env = "MPLINK_METER_LEASE", default_value_t = crate::metering::defaults::LEASE_S)]
    pub meter_lease: u64,
}

impl MeterLoopArgs {
    /// The loop's configuration.
    pub fn config(&self) -> MeterConfig {
        MeterConfig {
            zero_dimensions: self.zero_dimensions.clone(),
            close_grace: Duration::from_secs(self.meter_close_grace),
            lease: Duration::from_secs(self.meter_lease.max(1)),
            ..MeterConfig::default()
        }
    }
}

/// The metering client: one attempt per call (the loop retries with its own backoff).
/// `AWS_ENDPOINT_URL_MARKETPLACE_METERING` points it elsewhere (the local double).
pub async fn metering_client() -> aws_sdk_marketplacemetering::Client {
    let sdk = crate::aws::sdk_config(Duration::from_secs(30)).await;
    let config = aws_sdk_marketplacemetering::config::Builder::from(&sdk)
        .retry_config(aws_config::retry::RetryConfig::standard().with_max_attempts(1))
        .build();
    aws_sdk_marketplacemetering::Client::from_conf(config)
}

pub(super) async fn usage_show(store: &Store, args: UsageShowArgs) -> Result<ExitCode, CliError> {
    use crate::api::routes::org_usage::{usage_range, UsageHourView};
    let (from, to) = usage_range(args.from, args.to, chrono::Utc::now());
    let mut out = std::io::stdout().lock();
    let mut next = Some(from);
    if !args.json {
        writeln!(
            out,
            "HOUR                      DIMENSION        QUANTITY  FATE            RECORD / WHY"
        )
        .map_err(CliError::Write)?;
    }
    while let Some(start) = next {
        let page = store
            .org_usage(&args.org, start, to, crate::store::MAX_PAGE_HOURS)
            .await?;
        for hour in page.hours {
            let view = UsageHourView::of(hour);
            if args.json {
                let line = serde_json::to_string(&view).unwrap_or_default();
                writeln!(out, "{line}").map_err(CliError::Write)?;
                continue;
            }
            let why = view
                .record
                .metering_record_id
                .clone()
                .or(view.record.last_error.clone())
                .unwrap_or_default();
            writeln!(
                out,
                "{:<25} {:<16} {:>9}  {:<15} {}",
                view.usage_hour, view.dimension, view.quantity, view.record.fate, why
            )
            .map_err(CliError::Write)?;
            for a in view
                .allocations
                .iter()
                .filter(|_| view.allocations.len() > 1 || !view.allocations[0].tags.is_empty())
            {
                let tags: Vec<String> = a.tags.iter().map(|(k, v)| format!("{k}={v}")).collect();
                let tags = if tags.is_empty() {
                    "(untagged)".to_string()
                } else {
                    tags.join(" ")
                };
                writeln!(
                    out,
                    "{:<25} {:<16} {:>9}  {}",
                    "", "  allocation", a.quantity, tags
                )
                .map_err(CliError::Write)?;
            }
            for (reason, quantity) in &view.refused {
                writeln!(
                    out,
                    "{:<25} {:<16} {:>9}  refused: {reason}",
                    "", "", quantity
                )
                .map_err(CliError::Write)?;
            }
        }
        next = page.next_from;
    }
    Ok(ExitCode::SUCCESS)
}

pub(super) async fn usage_record(
    store: &Store,
    args: UsageRecordArgs,
) -> Result<ExitCode, CliError> {
    let mut tags = crate::tags::Tags::new();
    for (key, value) in args.tags {
        if tags.insert(key.clone(), value).is_some() {
            return Err(CliError::Refused(format!("--tag {key:?} is given twice")));
        }
    }
    let report = UsageReport {
        idempotency_key: args.key,
        org_id: args.org,
        dimension: args.dimension,
        quantity: args.quantity,
        time: args.time.unwrap_or_else(chrono::Utc::now),
        tags,
    };
    let receipt = match record_usage(store, &report, &MeterConfig::default()).await {
        Ok(r) => r,
        Err(MeteringError::Store(e)) => return Err(e.into()),
        Err(e) => return Err(CliError::Setup(e.to_string())),
    };
    let refusal = receipt.refusal.map(|r| r.as_str());
    if args.json {
        print_line(
            &serde_json::json!({
                "key": receipt.idempotency_key,
                "accepted": receipt.accepted,
                "refusal": refusal,
                "sub_key": receipt.sub_key,
                "hour": rfc3339(receipt.usage_hour),
                "replayed": receipt.replayed,
            })
            .to_string(),
        )?;
    } else if receipt.accepted {
        print_line(&format!(
            "accepted {} for hour {}{}",
            receipt.idempotency_key,
            rfc3339(receipt.usage_hour),
            if receipt.replayed {
                " (already recorded)"
            } else {
                ""
            }
        ))?;
    } else {
        print_line(&format!(
            "refused {}: {}",
            receipt.idempotency_key,
            refusal.unwrap_or("unknown")
        ))?;
    }
    Ok(if receipt.accepted {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_REFUSED)
    })
}

pub(super) async fn meter_status(
    store: &Store,
    args: MeterStatusArgs,
) -> Result<ExitCode, CliError> {
    let stats = store.meter_stats().await?;
    let records = store.meter_records(args.limit).await?;
    if args.json {
        for r in &records {
            print_line(&serde_json::json!({
                "hour": rfc3339(r.usage_hour), "sub_key": r.sub_key, "dimension": r.dimension,
                "quantity": r.quantity, "status": r.status, "metering_record_id": r.metering_record_id,
                "attempts": r.attempts, "last_error": r.last_error, "final": r.final_usage,
                "product_code": r.product_code,
            })
            .to_string())?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    let counts: Vec<String> = stats
        .by_status
        .iter()
        .map(|(s, n)| format!("{s} {n}"))
        .collect();
    print_line(&format!(
        "records: {}",
        if counts.is_empty() {
            "none".into()
        } else {
            counts.join(", ")
        }
    ))?;
    let refused: Vec<String> = stats
        .refused
        .iter()
        .map(|(r, n)| format!("{r} {n}"))
        .collect();
    if !refused.is_empty() {
        print_line(&format!("usage refused: {}", refused.join(", ")))?;
    }
    if let Some(h) = stats.oldest_unsent_hour {
        print_line(&format!("oldest unsent hour: {}", rfc3339(h)))?;
    }
    let rows: Vec<Vec<String>> = records
        .iter()
        .map(|r| {
            vec![
                rfc3339(r.usage_hour),
                r.sub_key.clone(),
                r.dimension.clone(),
                r.quantity.to_string(),
                r.status.clone(),
                r.metering_record_id.clone().unwrap_or_else(|| "-".into()),
                r.attempts.to_string(),
                r.last_error.clone().unwrap_or_default(),
            ]
        })
        .collect();
    print_line(&table(
        &[
            "HOUR",
            "SUBSCRIPTION",
            "DIMENSION",
            "QUANTITY",
            "STATUS",
            "RECORD ID",
            "ATTEMPTS",
            "WHY",
        ],
        &rows,
    ))?;
    Ok(ExitCode::SUCCESS)
}

/// Columns padded to their widest cell.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        padded.join("  ").trim_end().to_string()
    };
    let mut out = line(header.to_vec());
    for row in rows {
        out.push('\n');
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

pub(super) async fn meter_retry(store: &Store) -> Result<ExitCode, CliError> {
    let n = store.meter_retry(crate::time::now_ms()).await?;
    print_line(&format!("{n} records put back to unsent"))?;
    Ok(ExitCode::SUCCESS)
}

pub(super) async fn meter_send(store: &Store, args: MeterLoopArgs) -> Result<ExitCode, CliError> {
    let client = metering_client().await;
    let config = args.config();
    let (closed, sent) =
        crate::metering::runner::tick(store, &client, &config, crate::time::now_ms()).await?;
    let answered: Vec<String> = sent
        .answered
        .iter()
        .map(|(s, n)| format!("{s} {n}"))
        .collect();
    print_line(&format!(
        "closed {} hours and {} final usages ({} records); {} calls: {}; {} failed, {} expired",
        closed.hours_closed.len(),
        closed.finals_closed.len(),
        closed.records,
        sent.calls,
        if answered.is_empty() {
            "nothing answered".into()
        } else {
            answered.join(", ")
        },
        sent.failed,
        sent.expired.len()
    ))?;
    Ok(ExitCode::SUCCESS)
}
