//! The state machine: a pure function of (current subscription, event) → decision, and of
//! (link request, subscriptions) → link view. No I/O lives here.
//!
//! Ordering rule: every state-changing event carries a [`Stamp`] = (event time, rank, fact key),
//! compared in that order. The subscription's state is the target state of the greatest stamp
//! seen so far (last writer wins by event time, never by arrival). Ties on time are broken by
//! rank (success < fail < unsubscribe-pending < unsubscribe-success: the later step in a
//! subscription's life wins) and then by the fact key's byte order, so any arrival order of the
//! same events gives the same final state.
//!
//! [`subscription`] is the state machine of one AWS subscription; [`link`] resolves an
//! organization's registration against the subscriptions it reaches.

mod link;
mod subscription;
#[cfg(test)]
mod tests;

pub use link::*;
pub use subscription::*;
