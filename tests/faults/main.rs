//! The fault suite: crashes, outages, concurrent replicas, SIGTERM under load and bad input
//! at volume, against real LocalStack and real PostgreSQL. Every scenario ends by comparing the
//! store with the model (the state that sorting all sent events by time gives) and by checking
//! that the event log holds each message id exactly once, and prints a summary table.
//!
//! Not part of the default `cargo test`: `scripts/test.sh` runs it on its own, one scenario at
//! a time, with `cargo test --test faults -- --nocapture --test-threads=1`. Sizes come from
//! `MPLINK_FAULT_SCALE` (a multiplier, default 1) so it can run much bigger by hand.

#[path = "../common/mod.rs"]
mod common;

mod crash;
mod harness;
mod queue;
