//! The integration suite in one binary, as zero-to-production's `tests/api/main.rs` is: the
//! full stack (store, CLI, worker against LocalStack, HTTP API, outbox, metering, DLQ tools) on
//! both backends, sharing one `common`. The pure tests live in `crates/mplink-core`, the
//! Marketplace double's in its own crate; the browser and fault suites are their own binaries.

#[path = "../common/bulk.rs"]
mod bulk;
#[macro_use]
#[path = "../common/mod.rs"]
mod common;

mod api;
mod api_cli;
mod api_flow;
mod api_ids;
mod api_limits;
mod api_register;
mod aws_docs;
mod cli;
mod dlq;
mod entitlements;
mod example;
mod fuzz;
mod healthcheck;
mod history;
mod lookup;
mod metering;
mod outbox;
mod outbox_cli;
mod postgres_tls;
mod readme;
mod reconcile;
mod store;
mod verify;
mod webhooks;
mod worker;
