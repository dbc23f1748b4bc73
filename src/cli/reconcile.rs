//! `mplink reconcile --product-id prod-…`: compare every purchase agreement AWS lists for a
//! product with the ledger and repair what differs (see docs/reconcile.md).

use super::CliError;
use crate::reconcile::{reconcile_showing, DriftReport, ReconcileConfig};
use crate::store::Store;
use std::io::IsTerminal;
use std::io::Write;
use std::process::ExitCode;

/// Arguments of `mplink reconcile`.
#[derive(Debug, clap::Args)]
pub struct ReconcileArgs {
    /// The product's id (`prod-…`, not its code): what AWS's Agreement API filters on.
    #[arg(long)]
    pub product_id: String,
    /// The product's code, recorded on subscriptions only AWS's answer teaches the ledger.
    #[arg(long)]
    pub product_code: Option<String>,
    /// Report what differs and change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// The report as one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Most SearchAgreements calls this pass makes (pages and throttled retries).
    #[arg(long, default_value_t = 1_000)]
    pub max_calls: usize,
}

pub(super) async fn run(store: &Store, args: ReconcileArgs) -> Result<ExitCode, CliError> {
    let config = ReconcileConfig {
        product_code: args.product_code,
        dry_run: args.dry_run,
        max_calls: args.max_calls,
        ..ReconcileConfig::new(args.product_id)
    };
    let sdk = crate::aws::sdk_config(std::time::Duration::from_secs(30)).await;
    let client = crate::aws::agreement_client(&sdk);
    // Progress on a terminal only: a pipe or a log gets the report alone.
    let terminal = std::io::stderr().is_terminal();
    let report = reconcile_showing(store, &client, &config, |r| {
        if terminal {
            eprint!(
                "\r{} agreements read, {} differ, {} calls ({} throttled)",
                r.agreements,
                r.drift.len(),
                r.calls,
                r.throttled
            );
        }
    })
    .await;
    if terminal {
        eprintln!();
    }
    let mut out = std::io::stdout().lock();
    if args.json {
        let text = serde_json::to_string(&report).unwrap_or_default();
        writeln!(out, "{text}").map_err(CliError::Write)?;
    } else {
        print_table(&mut out, &report).map_err(CliError::Write)?;
    }
    Ok(if report.error.is_some() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn print_table(out: &mut impl Write, r: &DriftReport) -> std::io::Result<()> {
    writeln!(
        out,
        "{:<24} {:<9} {:<12} {:<14} {:<16} ORGANIZATIONS",
        "AGREEMENT", "KIND", "AWS", "LEDGER", "OUTCOME"
    )?;
    for d in &r.drift {
        let state = |s: Option<crate::ledger::SubState>| s.map_or("-", |s| s.as_str());
        let orgs = if d.orgs.is_empty() {
            "none: only AWS knows it (not linked)".to_string()
        } else {
            d.orgs.join(", ")
        };
        writeln!(
            out,
            "{:<24} {:<9} {:<12} {:<14} {:<16} {orgs}",
            d.agreement_id,
            d.kind,
            d.aws_status,
            format!(
                "{} -> {}",
                state(d.ledger_state),
                state(d.ledger_state_after)
            ),
            d.outcome
        )?;
    }
    writeln!(
        out,
        "{} agreements, {} in sync, {} differed; {} facts recorded{}; {} calls ({} throttled) in {} ms{}",
        r.agreements,
        r.in_sync,
        r.drift.len(),
        r.facts_recorded,
        if r.dry_run { " (dry run)" } else { "" },
        r.calls,
        r.throttled,
        r.elapsed_ms,
        match &r.error {
            Some(e) => format!("; stopped early: {e}"),
            None => String::new(),
        }
    )
}
