//! The Marketplace test double as a process, for the demo and tests that run several processes:
//! prints its endpoint URL on stdout, serves until SIGTERM or Ctrl-C. Controls: `/_double/…`
//! (see the crate's documentation).

use clap::Parser;
use mplink_marketplace_double::{DoubleConfig, MarketplaceDouble};
use std::io::Write;
use std::process::ExitCode;

/// Local double of AWS Marketplace Metering and Entitlement (AWS JSON 1.1, SigV4-checked).
#[derive(Parser)]
#[command(name = "mplink-marketplace-double")]
struct Args {
    /// Address to listen on; port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: String,
    /// Refuse requests signed with access keys other than the test credentials (test/test).
    #[arg(long)]
    require_known_credentials: bool,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("MPLINK_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let config = DoubleConfig {
        require_known_credentials: args.require_known_credentials,
        ..DoubleConfig::default()
    };
    let double = match MarketplaceDouble::start_with(args.listen.as_str(), config).await {
        Ok(d) => d,
        Err(e) => {
            eprintln!("mplink-marketplace-double: error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut out = std::io::stdout();
    if writeln!(out, "{}", double.endpoint_url())
        .and_then(|()| out.flush())
        .is_err()
    {
        eprintln!("mplink-marketplace-double: error: cannot write the endpoint URL to stdout");
        return ExitCode::FAILURE;
    }
    shutdown_signal().await;
    double.shutdown().await;
    ExitCode::SUCCESS
}

/// Ctrl-C or SIGTERM, whichever comes first (the demo stops the double with SIGTERM).
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}
