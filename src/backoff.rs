//! Capped exponential backoff with jitter, for transient SQS and database failures.

use rand::Rng;
use std::time::Duration;

/// Delays grow as base · 2ⁿ up to `cap`; each is drawn from the upper half of that value so
/// replicas that failed together do not retry together.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
}

impl Backoff {
    /// A backoff starting at `base` and never exceeding `cap`.
    pub fn new(base: Duration, cap: Duration) -> Backoff {
        Backoff {
            base,
            cap: cap.max(base),
            attempt: 0,
        }
    }

    /// The delay before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        let exp = self.base.saturating_mul(1u32 << self.attempt.min(20));
        self.attempt = self.attempt.saturating_add(1);
        let ceiling = exp.min(self.cap);
        let low = ceiling / 2;
        let jitter =
            rand::thread_rng().gen_range(0..=ceiling.saturating_sub(low).as_millis() as u64);
        low + Duration::from_millis(jitter)
    }

    /// The delay after `failures` consecutive failures (at least one), for callers that keep
    /// the count themselves (the outbox keeps it per row).
    pub fn delay_after(&self, failures: u32) -> Duration {
        Backoff {
            attempt: failures.saturating_sub(1),
            ..self.clone()
        }
        .next_delay()
    }

    /// Consecutive failures so far.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    /// Starts over after a success.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_then_stay_under_the_cap() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let first = b.next_delay();
        assert!(
            first >= Duration::from_millis(50) && first <= Duration::from_millis(100),
            "{first:?}"
        );
        for _ in 0..40 {
            let d = b.next_delay();
            assert!(d <= Duration::from_secs(2), "{d:?}");
        }
        // Past the cap every delay is within [cap/2, cap].
        assert!(b.next_delay() >= Duration::from_secs(1));
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
        assert_eq!(b.attempts(), 1);
    }
}
