//! The Marketplace test double as a process, for the demo and tests that run several processes:
//! prints its endpoint URL on stdout, serves until SIGTERM or Ctrl-C. Controls: `/_double/…`
//! (see `mplink::marketplace_double`).

use clap::Parser;
use mplink::marketplace_double::{DoubleConfig, MarketplaceDouble};
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
    mplink::telemetry::init(mplink::telemetry::LogFormat::from_env(), "warn");
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
    mplink::app::shutdown_signal().await;
    double.shutdown().await;
    ExitCode::SUCCESS
}
