//! mplink: applies AWS Marketplace subscription events to a billing-link ledger.

pub mod event;
