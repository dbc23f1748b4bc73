//! `mplink dlq inspect|replay|redrive|export`.

use super::{CliError, DlqExportArgs, DlqInspectArgs, DlqRedriveArgs, DlqReplayArgs};
use crate::store::Store;
use std::io::Write;
use std::process::ExitCode;

async fn sqs_client() -> aws_sdk_sqs::Client {
    aws_sdk_sqs::Client::new(&crate::aws::sdk_config(std::time::Duration::from_secs(30)).await)
}

pub(super) async fn inspect(store: &Store, args: DlqInspectArgs) -> Result<ExitCode, CliError> {
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

pub(super) async fn replay(store: &Store, args: DlqReplayArgs) -> Result<ExitCode, CliError> {
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

pub(super) async fn redrive(args: DlqRedriveArgs) -> Result<ExitCode, CliError> {
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

pub(super) async fn export(args: DlqExportArgs) -> Result<ExitCode, CliError> {
    let mut out = std::io::stdout().lock();
    let n = crate::dlq::export(&sqs_client().await, &args.queue_url, args.max, &mut out).await?;
    eprintln!("exported {n} message(s)");
    Ok(ExitCode::SUCCESS)
}
