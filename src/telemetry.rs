//! Logging setup: JSON lines in production, readable text on a terminal.

use tracing_subscriber::{fmt, EnvFilter};

/// Environment variable choosing the log format (`json` or `text`).
pub const LOG_FORMAT_ENV: &str = "MPLINK_LOG_FORMAT";
/// Environment variable with the log filter (tracing `EnvFilter` syntax), e.g. `mplink=debug`.
pub const LOG_ENV: &str = "MPLINK_LOG";

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object per line (containers, log shippers).
    Json,
    /// Human-readable lines.
    Text,
}

impl LogFormat {
    /// The format `MPLINK_LOG_FORMAT` asks for (text unless it says json).
    pub fn from_env() -> LogFormat {
        match std::env::var(LOG_FORMAT_ENV) {
            Ok(v) if v.eq_ignore_ascii_case("json") => LogFormat::Json,
            _ => LogFormat::Text,
        }
    }
}

/// Installs the global subscriber, writing to stderr so stdout stays for command output.
/// `default_filter` applies when `MPLINK_LOG` is unset.
pub fn init(format: LogFormat, default_filter: &str) {
    let filter =
        EnvFilter::try_from_env(LOG_ENV).unwrap_or_else(|_| EnvFilter::new(default_filter));
    let builder = fmt().with_env_filter(filter).with_writer(std::io::stderr);
    // A second init (tests calling into the library) is harmless: keep the first subscriber.
    let _ = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init(),
        LogFormat::Text => {
            // Colours only for a person at a terminal: files, pipes and CI logs get plain text.
            use std::io::IsTerminal;
            let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
            builder.with_target(false).with_ansi(ansi).try_init()
        }
    };
}
