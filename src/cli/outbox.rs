//! The bodies of `mplink events`, `mplink outbox inspect|retry|deliver` (their arguments live
//! in [`crate::cli`]).

use crate::cli::{
    print_line, CliError, EventsArgs, OutboxDeliverArgs, OutboxInspectArgs, OutboxRetryArgs,
    WebhookArgs,
};
use crate::metrics::Metrics;
use crate::outbox::deliver::{parse_secrets, Deliverer, WebhookConfig};
use crate::outbox::OutboxRow;
use crate::store::Store;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Rows read per feed query.
const FEED_PAGE: i64 = 500;

/// How often `events --follow` asks for new rows.
const FOLLOW_POLL: Duration = Duration::from_millis(500);

fn line(row: &OutboxRow) -> String {
    let sub = row
        .subscription
        .sub_key
        .clone()
        .or_else(|| row.subscription.license_arn.clone())
        .or_else(|| row.subscription.customer_identifier.clone())
        .or_else(|| row.subscription.customer_aws_account_id.clone())
        .unwrap_or_else(|| "-".into());
    format!(
        "{:>8}  {}  {:<20} {:<20} {:>14} -> {:<14} {}  {}",
        row.seq,
        row.event_time,
        row.event_type,
        row.org_id,
        row.state_before.as_deref().unwrap_or("-"),
        row.state_after.as_deref().unwrap_or("-"),
        sub,
        row.cause
    )
}

/// `mplink events`: every row after `--after`, in sequence order; with `--follow`, then every
/// new row as it commits, until Ctrl-C/SIGTERM.
pub async fn events(store: &Store, args: EventsArgs) -> Result<ExitCode, CliError> {
    let stop = CancellationToken::new();
    if args.follow {
        let on_signal = stop.clone();
        tokio::spawn(async move {
            crate::shutdown::shutdown_signal().await;
            on_signal.cancel();
        });
    }
    let mut after = args.after;
    loop {
        let rows = store.outbox_after(after, FEED_PAGE).await?;
        for row in &rows {
            print_line(&if args.json {
                row.payload_json()
            } else {
                line(row)
            })?;
            after = row.seq;
        }
        if rows.len() as i64 == FEED_PAGE {
            continue;
        }
        if !args.follow {
            return Ok(ExitCode::SUCCESS);
        }
        tokio::select! {
            _ = stop.cancelled() => return Ok(ExitCode::SUCCESS),
            _ = tokio::time::sleep(FOLLOW_POLL) => {}
        }
    }
}

/// `mplink outbox inspect`: counts by delivery state and the rows not delivered yet.
pub async fn inspect(store: &Store, args: OutboxInspectArgs) -> Result<ExitCode, CliError> {
    let stats = store.outbox_stats().await?;
    let rows = store.outbox_undelivered(args.limit).await?;
    let now = crate::time::now_ms();
    if args.json {
        let body = serde_json::json!({
            "pending": stats.pending,
            "failed": stats.failed,
            "delivered": stats.delivered,
            "oldest_undelivered_age_seconds": stats.oldest_undelivered_ms.map(|t| (now - t).max(0) / 1000),
            "undelivered": rows.iter().map(|r| serde_json::json!({
                "seq": r.seq,
                "webhook_id": r.event_id,
                "type": r.event_type,
                "org_id": r.org_id,
                "status": r.status,
                "attempts": r.attempts,
                "last_error": r.last_error,
                "created_at": r.created_at,
            })).collect::<Vec<_>>(),
        });
        print_line(&body.to_string())?;
    } else {
        print_line(&format!(
            "pending {}, failed {}, delivered {}, oldest undelivered {}",
            stats.pending,
            stats.failed,
            stats.delivered,
            stats
                .oldest_undelivered_ms
                .map_or("-".to_string(), |t| format!(
                    "{}s ago",
                    (now - t).max(0) / 1000
                ))
        ))?;
        for r in &rows {
            print_line(&format!(
                "{:>8}  {:<9} attempts {:<3} {:<20} {:<20} {}",
                r.seq,
                r.status,
                r.attempts,
                r.event_type,
                r.org_id,
                r.last_error.as_deref().unwrap_or("")
            ))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `mplink outbox retry`: parked rows back to pending, due now.
pub async fn retry(store: &Store, args: OutboxRetryArgs) -> Result<ExitCode, CliError> {
    let n = if args.all_failed {
        store.outbox_retry(None).await?
    } else if args.ids.is_empty() {
        return Err(CliError::Setup(
            "outbox retry needs --id SEQ (repeatable) or --all-failed".into(),
        ));
    } else {
        store.outbox_retry(Some(&args.ids)).await?
    };
    print_line(&format!("{n} parked row(s) due for delivery again"))?;
    if !args.all_failed && (n as usize) < args.ids.len() {
        eprintln!(
            "mplink: {} of the given rows were not parked as failed (delivered, pending or unknown): left as they are",
            args.ids.len() - n as usize
        );
    }
    Ok(ExitCode::SUCCESS)
}

impl WebhookArgs {
    /// The deliverer's configuration, None when no URL is configured; refuses a URL that is
    /// not http(s) and URLs without a secret.
    pub fn config(&self) -> Result<Option<WebhookConfig>, CliError> {
        let secrets =
            parse_secrets(&self.webhook_secrets).map_err(|e| CliError::Setup(e.to_string()))?;
        let Some(mut config) = WebhookConfig::new(&self.webhook_urls, &secrets)
            .map_err(|e| CliError::Setup(e.to_string()))?
        else {
            return Ok(None);
        };
        config.timeout = Duration::from_secs(self.webhook_timeout);
        config.max_attempts = self.webhook_max_attempts;
        config.backoff = crate::backoff::Backoff::new(
            Duration::from_millis(self.webhook_backoff_base_ms),
            Duration::from_secs(self.webhook_backoff_cap),
        );
        Ok(Some(config))
    }
}

/// Starts the deliverer next to the worker when webhooks are configured.
pub fn spawn_deliverer(
    store: &Store,
    config: Option<WebhookConfig>,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) -> Result<Option<tokio::task::JoinHandle<()>>, CliError> {
    let Some(config) = config else {
        return Ok(None);
    };
    let deliverer = Deliverer::new(store.clone(), config, metrics)
        .map_err(|e| CliError::Setup(e.to_string()))?;
    Ok(Some(tokio::spawn(deliverer.run(stop))))
}

/// `mplink outbox deliver`: delivers until Ctrl-C/SIGTERM, or with `--until-idle` until nothing
/// is due.
pub async fn deliver(store: &Store, args: OutboxDeliverArgs) -> Result<ExitCode, CliError> {
    let Some(config) = args.webhooks.config()? else {
        return Err(CliError::Setup(
            "outbox deliver needs --webhook-url (or MPLINK_WEBHOOK_URLS)".into(),
        ));
    };
    let metrics = Arc::new(Metrics::new());
    let deliverer = Deliverer::new(store.clone(), config, metrics.clone())
        .map_err(|e| CliError::Setup(e.to_string()))?;
    if args.until_idle {
        loop {
            if deliverer.deliver_due().await? == 0 {
                // Rows waiting for a backoff are not idle; parked ones and those they hold
                // back are.
                if store.outbox_deliverable().await? == 0 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    } else {
        let stop = CancellationToken::new();
        let on_signal = stop.clone();
        tokio::spawn(async move {
            crate::shutdown::shutdown_signal().await;
            on_signal.cancel();
        });
        deliverer.run(stop).await;
    }
    let count = |o: &str| metrics.webhook_deliveries.with_label_values(&[o]).get();
    print_line(&format!(
        "delivered {}, retried {}, parked {}",
        count("delivered"),
        count("retry"),
        count("parked")
    ))?;
    Ok(ExitCode::SUCCESS)
}
