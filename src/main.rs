//! The `mplink` binary: parses the command line and hands over to the library.

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = mplink::cli::Cli::parse();
    // The worker reports what it does; one-shot commands speak only when something is wrong.
    let default_filter = match cli.command {
        mplink::cli::Command::Run(_)
        | mplink::cli::Command::Serve(_)
        | mplink::cli::Command::Provision(_) => "info",
        _ => "warn",
    };
    mplink::telemetry::init(mplink::telemetry::LogFormat::from_env(), default_filter);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("mplink: error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(mplink::cli::run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("mplink: error: {e}");
            ExitCode::FAILURE
        }
    }
}
