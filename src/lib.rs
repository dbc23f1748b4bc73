//! mplink: applies AWS Marketplace subscription events to a billing-link ledger.
//!
//! The path of one message: [`event`] decodes it, [`ledger`] decides what it does (pure),
//! [`store`] records the decision in one transaction. [`cli`] drives it from the command line.

pub mod cli;
pub mod config;
pub mod event;
pub mod ledger;
pub mod store;
pub mod telemetry;
