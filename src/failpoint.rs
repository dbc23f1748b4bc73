//! Switches for the fault suite, each unset in production and costing one check:
//! - `MPLINK_CRASH_AFTER_COMMITS=N`: the process aborts (no cleanup, like `kill -9`) right after
//!   its N-th committed decision and before the message is deleted — the moment at-least-once
//!   delivery must survive.
//! - `MPLINK_FAILPOINT_SKIP_DUPLICATE_CHECK=1`: a deliberately broken build that applies every
//!   copy of an event as if it were new, so a test can show its double-application count
//!   would see it.
//! - `MPLINK_FAILPOINT_ABORT_AFTER_WEBHOOK=1`: the deliverer aborts (like `kill -9`) right after a
//!   webhook accepted a row and before the row is marked delivered, so a test can show the row
//!   is delivered again with the same `webhook-id`.
//! - `MPLINK_FAILPOINT_ABORT_AFTER_METERING=1`: the meter aborts right after BatchMeterUsage
//!   answered and before the answer is stored, so a test can show the resend is identical.
//!
//! All of it exists only with the `failpoints` Cargo feature, which the test builds enable and
//! release builds do not: without it every hook is an empty inline function and no switch's
//! name is in the binary, so no environment variable can break a production process.

// The names are constants so tests can arm them; a constant only reaches the binary where
// armed code reads it.

/// Environment variable arming the broken duplicate check.
pub const SKIP_DUPLICATE_CHECK_ENV: &str = "MPLINK_FAILPOINT_SKIP_DUPLICATE_CHECK";
/// Environment variable arming the crash point.
pub const CRASH_AFTER_COMMITS_ENV: &str = "MPLINK_CRASH_AFTER_COMMITS";
/// Environment variable arming the abort between a webhook's 2xx and the row's update.
pub const ABORT_AFTER_WEBHOOK_ENV: &str = "MPLINK_FAILPOINT_ABORT_AFTER_WEBHOOK";
/// Environment variable arming the abort between BatchMeterUsage's answer and storing it.
pub const ABORT_AFTER_METERING_ENV: &str = "MPLINK_FAILPOINT_ABORT_AFTER_METERING";

#[cfg(feature = "failpoints")]
mod armed {
    use super::*;
    use crate::event::Event;
    use crate::ledger::{self, Decision, Subscription};
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;

    /// True when the duplicate check is switched off (tests only).
    pub fn skip_duplicate_check() -> bool {
        static SKIP: OnceLock<bool> = OnceLock::new();
        *SKIP.get_or_init(|| std::env::var(SKIP_DUPLICATE_CHECK_ENV).is_ok_and(|v| v == "1"))
    }

    /// The broken ledger step: the state's stamp is forgotten, so another copy of the fact that
    /// set it applies again instead of being recognised.
    pub fn apply_forgetting_ties(current: &Subscription, event: &Event) -> Decision {
        let mut forgetful = current.clone();
        forgetful.state_stamp = None;
        let mut decision = ledger::apply(&forgetful, event);
        if decision.next.state_stamp.is_none() {
            decision.next.state_stamp = current.state_stamp.clone();
        }
        decision
    }

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

    /// Called once every webhook accepted a row, before it is marked delivered.
    pub fn webhook_accepted() {
        static ARMED: OnceLock<bool> = OnceLock::new();
        if *ARMED.get_or_init(|| std::env::var(ABORT_AFTER_WEBHOOK_ENV).is_ok_and(|v| v == "1")) {
            eprintln!(
                "mplink: {ABORT_AFTER_WEBHOOK_ENV} set: aborting before marking the row delivered"
            );
            std::process::abort();
        }
    }

    /// Called once AWS answered a BatchMeterUsage call, before its records' fate is stored.
    pub fn metering_answered() {
        static ARMED: OnceLock<bool> = OnceLock::new();
        if *ARMED.get_or_init(|| std::env::var(ABORT_AFTER_METERING_ENV).is_ok_and(|v| v == "1")) {
            eprintln!(
                "mplink: {ABORT_AFTER_METERING_ENV} set: aborting before storing AWS's answer"
            );
            std::process::abort();
        }
    }
}

#[cfg(feature = "failpoints")]
pub use armed::*;

#[cfg(not(feature = "failpoints"))]
mod disarmed {
    use crate::event::Event;
    use crate::ledger::{Decision, Subscription};

    #[inline(always)]
    pub fn skip_duplicate_check() -> bool {
        false
    }

    #[inline(always)]
    pub fn apply_forgetting_ties(current: &Subscription, event: &Event) -> Decision {
        crate::ledger::apply(current, event)
    }

    #[inline(always)]
    pub fn committed(_n: usize) {}

    #[inline(always)]
    pub fn webhook_accepted() {}

    #[inline(always)]
    pub fn metering_answered() {}
}

#[cfg(not(feature = "failpoints"))]
pub use disarmed::*;
