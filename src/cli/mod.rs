//! Command-line interface: the arguments ([`args`], [`worker_args`]), the dispatch below, and
//! one module per command family.

mod apply;
mod args;
mod dlq;
mod error;
mod healthcheck;
mod history;
mod metering;
mod outbox;
mod output;
mod provision;
mod reconcile;
mod registration;
mod serve;
mod serve_args;
mod status;
mod worker;
mod worker_args;

pub use apply::{inbound_from_line, ApplySummary};
pub use args::*;
pub use error::CliError;
pub use metering::{
    metering_client, MeterArgs, MeterCommand, MeterLoopArgs, MeterStatusArgs, UsageArgs,
    UsageCommand, UsageRecordArgs, EXIT_REFUSED,
};
pub(crate) use output::print_line;
pub use output::render_table;
pub use serve_args::{ApiArgs, ServeArgs};
pub use worker_args::{RunArgs, VerifyArgs, WebhookArgs};

use crate::config::{DatabaseUrl, DEFAULT_DATABASE_URL};
use crate::store::Store;
use std::future::Future;
use std::process::ExitCode;

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
    match cli.command {
        // Commands that only talk to AWS open no database.
        Command::Provision(args) => provision::provision(args).await,
        Command::Healthcheck(args) => Ok(healthcheck::run(&args).await),
        Command::Dlq(DlqArgs { command }) => match command {
            DlqCommand::Redrive(args) => dlq::redrive(args).await,
            DlqCommand::Export(args) => dlq::export(args).await,
            DlqCommand::Inspect(args) => {
                with_store(
                    &url,
                    |store| async move { dlq::inspect(&store, args).await },
                )
                .await
            }
            DlqCommand::Replay(args) => {
                with_store(&url, |store| async move { dlq::replay(&store, args).await }).await
            }
        },
        Command::Migrate => {
            with_store(&url, |_| async {
                println!("database {} is up to date", url.redacted());
                Ok(ExitCode::SUCCESS)
            })
            .await
        }
        Command::Link(args) => {
            with_store(
                &url,
                |store| async move { status::link(&store, args).await },
            )
            .await
        }
        Command::Apply(args) => {
            with_store(
                &url,
                |store| async move { apply::apply(&store, args).await },
            )
            .await
        }
        Command::Status(args) => {
            with_store(
                &url,
                |store| async move { status::status(&store, args).await },
            )
            .await
        }
        Command::Run(args) => {
            let worker_url = url.clone();
            with_store(&url, |store| async move {
                worker::run(&store, &worker_url, *args).await
            })
            .await
        }
        Command::Serve(args) => {
            let api_url = url.clone();
            with_store(&url, |store| async move {
                serve::serve(&store, &api_url, *args).await
            })
            .await
        }
        Command::Events(args) => {
            with_store(
                &url,
                |store| async move { outbox::events(&store, args).await },
            )
            .await
        }
        Command::Outbox(OutboxArgs { command }) => {
            with_store(&url, |store| async move {
                match command {
                    OutboxCommand::Inspect(args) => outbox::inspect(&store, args).await,
                    OutboxCommand::Retry(args) => outbox::retry(&store, args).await,
                    OutboxCommand::Deliver(args) => outbox::deliver(&store, args).await,
                }
            })
            .await
        }
        Command::Usage(UsageArgs { command }) => {
            with_store(&url, |store| async move {
                match command {
                    UsageCommand::Record(args) => metering::usage_record(&store, args).await,
                    UsageCommand::Show(args) => metering::usage_show(&store, args).await,
                }
            })
            .await
        }
        Command::History(args) => {
            with_store(
                &url,
                |store| async move { history::run(&store, args).await },
            )
            .await
        }
        Command::Reconcile(args) => {
            with_store(
                &url,
                |store| async move { reconcile::run(&store, args).await },
            )
            .await
        }
        Command::Registration(args) => {
            with_store(&url, |store| async move {
                registration::run(&store, args).await
            })
            .await
        }
        Command::Meter(MeterArgs { command }) => {
            with_store(&url, |store| async move {
                match command {
                    MeterCommand::Status(args) => metering::meter_status(&store, args).await,
                    MeterCommand::Retry => metering::meter_retry(&store).await,
                    MeterCommand::Send(args) => metering::meter_send(&store, args).await,
                }
            })
            .await
        }
    }
}

/// Opens (and migrates) the database, runs `command` on it and closes it, whatever the outcome.
async fn with_store<F, Fut>(url: &DatabaseUrl, command: F) -> Result<ExitCode, CliError>
where
    F: FnOnce(Store) -> Fut,
    Fut: Future<Output = Result<ExitCode, CliError>>,
{
    tracing::debug!(database = %url, "opening database");
    let store = Store::open(url).await?;
    let result = command(store.clone()).await;
    store.close().await;
    result
}
