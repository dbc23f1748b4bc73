//! Time as mplink stores it (epoch milliseconds) and writes it (RFC 3339, UTC, `Z`): one clock,
//! one formatter and one parser, so a webhook, a table and a log agree on how an instant reads.

use chrono::{DateTime, SecondsFormat, Utc};

/// How much of the second a formatted time keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    /// `2026-08-30T21:36:03Z`: hours of usage and operator tables.
    Seconds,
    /// `2026-08-30T21:36:03.123Z`: event times, payloads and the event log.
    Millis,
}

/// Milliseconds since the epoch, now.
pub fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

/// An epoch-ms time as RFC 3339 in UTC; None when it lies outside what a calendar date can hold.
pub fn rfc3339(ms: i64, precision: Precision) -> Option<String> {
    let format = match precision {
        Precision::Seconds => SecondsFormat::Secs,
        Precision::Millis => SecondsFormat::Millis,
    };
    DateTime::from_timestamp_millis(ms).map(|t| t.to_rfc3339_opts(format, true))
}

/// [`rfc3339`] in milliseconds, empty for a time no calendar holds: the form payloads and API
/// answers carry, where an impossible stored time must not turn into an error for the reader.
pub fn rfc3339_millis(ms: i64) -> String {
    rfc3339(ms, Precision::Millis).unwrap_or_default()
}

/// Epoch ms of an RFC 3339 time with any offset; None when `text` is not one.
pub fn parse_rfc3339(text: &str) -> Option<i64> {
    DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|t| t.timestamp_millis())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_round_trip_through_the_parser() {
        let ms = 1_788_125_763_123;
        let millis = rfc3339(ms, Precision::Millis).unwrap();
        assert_eq!(millis, "2026-08-30T21:36:03.123Z");
        assert_eq!(parse_rfc3339(&millis), Some(ms));
        assert_eq!(
            rfc3339(ms, Precision::Seconds).as_deref(),
            Some("2026-08-30T21:36:03Z")
        );
    }

    #[test]
    fn out_of_range_times_format_to_none() {
        assert_eq!(rfc3339(i64::MAX, Precision::Millis), None);
        assert_eq!(parse_rfc3339("2026-08-30"), None);
    }
}
