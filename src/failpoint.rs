//! A crash point for the fault suite: with `MPLINK_CRASH_AFTER_COMMITS=N` the process aborts
//! (no cleanup, like `kill -9`) right after its N-th committed decision and before the message
//! is deleted — the moment at-least-once delivery must survive. Unset, it costs one check.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

/// Environment variable arming the crash point.
pub const CRASH_AFTER_COMMITS_ENV: &str = "MPLINK_CRASH_AFTER_COMMITS";

fn remaining() -> Option<&'static AtomicU64> {
    static REMAINING: OnceLock<Option<AtomicU64>> = OnceLock::new();
    REMAINING
        .get_or_init(|| {
            std::env::var(CRASH_AFTER_COMMITS_ENV)
                .ok()
                .and_then(|v| v.parse::<u64>().ok())
                .map(AtomicU64::new)
        })
        .as_ref()
}

/// Counts `n` committed decisions; aborts the process once the armed number is reached.
pub fn committed(n: usize) {
    if let Some(left) = remaining() {
        let before = left.fetch_sub(
            (n as u64).min(left.load(Ordering::SeqCst)),
            Ordering::SeqCst,
        );
        if before <= n as u64 {
            eprintln!(
                "mplink: {CRASH_AFTER_COMMITS_ENV} reached: aborting between commit and delete"
            );
            std::process::abort();
        }
    }
}
