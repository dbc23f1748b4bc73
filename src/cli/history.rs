//! `mplink history --org ORG`: one organization's timeline, oldest first — what support reads
//! to answer "why is this organization unlinked?" or "why was 14:00 not billed?".

use super::CliError;
use crate::api::routes::history::entry_json;
use crate::store::Store;
use std::io::Write;
use std::process::ExitCode;

/// Arguments of `mplink history`.
#[derive(Debug, clap::Args)]
pub struct HistoryArgs {
    /// The organization.
    #[arg(long, value_parser = super::args::org_id)]
    pub org: String,
    /// One JSON object per entry (the API's `entries`) instead of a table.
    #[arg(long)]
    pub json: bool,
}

pub(super) async fn run(store: &Store, args: HistoryArgs) -> Result<ExitCode, CliError> {
    let entries = store.org_history(&args.org).await?;
    let mut out = std::io::stdout().lock();
    if !args.json {
        writeln!(out, "{:<25} {:<12} WHAT", "TIME", "KIND").map_err(CliError::Write)?;
    }
    for entry in &entries {
        let v = entry_json(entry);
        if args.json {
            writeln!(out, "{v}").map_err(CliError::Write)?;
            continue;
        }
        let s = |k: &str| v[k].as_str().unwrap_or("-").to_string();
        let what = match s("kind").as_str() {
            "event" => format!(
                "{} {} from {}: {}{} (arrived {})",
                s("action"),
                s("sub_key"),
                s("source"),
                s("outcome"),
                v["reason"]
                    .as_str()
                    .map(|r| format!(" ({r})"))
                    .unwrap_or_default(),
                s("recorded_at"),
            ),
            "link_change" => format!(
                "{} {} -> {} (webhook {}, {} attempts)",
                s("event_type"),
                v["state_before"].as_str().unwrap_or("none"),
                v["state_after"].as_str().unwrap_or("none"),
                v["delivery"]["status"].as_str().unwrap_or("-"),
                v["delivery"]["attempts"],
            ),
            _ => format!(
                "{} {} x{}: {}{}",
                s("sub_key"),
                s("dimension"),
                v["quantity"],
                s("fate"),
                v["metering_record_id"]
                    .as_str()
                    .or(v["last_error"].as_str())
                    .map(|r| format!(" ({r})"))
                    .unwrap_or_default(),
            ),
        };
        writeln!(out, "{:<25} {:<12} {what}", s("time"), s("kind")).map_err(CliError::Write)?;
    }
    Ok(ExitCode::SUCCESS)
}
