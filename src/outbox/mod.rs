//! Link-change notifications. Every change of what an organization sees becomes one row of
//! `mplink_outbox`, written by the store in the transaction that made the change
//! ([`crate::store`]); [`deliver`] sends the rows to webhooks signed per Standard Webhooks
//! ([`sign`]). What a row is, and when one is written, is pure and lives in
//! [`mplink_core::notify`], re-exported here.

pub mod deliver;
pub mod sign;

pub use mplink_core::notify::*;
