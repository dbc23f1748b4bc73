//! `mplink healthcheck`: [`crate::healthcheck`] asked once, its answer as an exit code.

use super::HealthcheckArgs;
use crate::healthcheck;
use std::process::ExitCode;
use std::time::Duration;

/// `mplink healthcheck`: the answer on stdout and exit 0, or the reason on stderr and exit 1.
pub async fn run(args: &HealthcheckArgs) -> ExitCode {
    let endpoint = if args.live {
        healthcheck::Endpoint::Live
    } else {
        healthcheck::Endpoint::Ready
    };
    match healthcheck::check(args.http_addr, endpoint, Duration::from_secs(args.timeout)).await {
        Ok(body) => {
            println!("{}", body.replace('\n', "; "));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("mplink: healthcheck failed: {e}");
            ExitCode::FAILURE
        }
    }
}
