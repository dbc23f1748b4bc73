//! What mplink decides without touching the world: [`event`] decodes a message into an event,
//! [`ledger`] decides what it does to a subscription and to the organization linked to it,
//! [`notify`] says what that organization is told. [`redrive`] is the identity a dead letter
//! keeps across a move, [`org`] the one rule for organization ids, [`tags`] usage allocation
//! tags, [`time`] the one clock and timestamp format, [`topics`] AWS's names.
//!
//! No tokio, sqlx, HTTP or AWS SDK here: Cargo refuses them, so the rules stay testable alone.

pub mod entitlement;
pub mod event;
pub mod ledger;
pub mod notify;
pub mod org;
pub mod reconciled;
pub mod redrive;
pub mod tags;
pub mod time;
pub mod topics;
