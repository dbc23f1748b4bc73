//! mplink: applies AWS Marketplace subscription events to a billing-link ledger.
//!
//! The path of one message: [`event`] decodes it, [`verify`] decides whether to trust it,
//! [`ledger`] decides what it does (pure, in `mplink-core`), [`store`] records the decision in one transaction.
//! [`process`] is that path; [`consumer`] feeds it from SQS, [`app`] runs the consumer with its
//! [`http`] surface, [`dlq`] replays dead letters through it. [`api`] is the HTTP API the host
//! application builds the buyer's pages on. [`cli`] drives everything.

pub mod api;
pub mod app;
pub mod aws;
pub mod backoff;
pub mod cli;
pub mod config;
pub mod consumer;
pub mod dlq;
pub mod entitlements;
pub mod failpoint;
pub mod healthcheck;
pub mod http;
pub mod metering;
pub mod metrics;
pub mod outbox;
pub mod process;
pub mod provision;
pub mod reconcile;
pub mod server;
pub mod shutdown;
pub mod sqs;
pub mod store;
pub mod telemetry;
pub mod tls;
pub mod verify;

pub use mplink_core::{
    entitlement, event, ledger, notify, org, reconciled, redrive, tags, time, topics,
};
