//! Why a command failed.

use crate::store::StoreError;
use thiserror::Error;

/// Why a command failed.
#[derive(Debug, Error)]
pub enum CliError {
    /// The database refused.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// An input file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The database or a certificate host failed; nothing of the failed batch was applied.
    #[error(
        "stopped: {0} (earlier batches are applied; rerun to continue, duplicates are skipped)"
    )]
    Transient(#[source] crate::process::Transient),
    /// A dead-letter tool failed.
    #[error(transparent)]
    Dlq(#[from] crate::dlq::DlqError),
    /// The configuration cannot work (a missing key, a client that cannot be built).
    #[error("{0}")]
    Setup(String),
    /// Provisioning failed.
    #[error(transparent)]
    Provision(#[from] crate::provision::ProvisionError),
    /// The HTTP address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: std::net::SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Output could not be written.
    #[error("cannot write output: {0}")]
    Write(#[source] std::io::Error),
    /// Some input lines were rejected (the rest were applied).
    #[error("{rejected} of {total} messages rejected (recorded in the event log as rejected)")]
    Rejected {
        /// How many lines were rejected.
        rejected: usize,
        /// How many lines were read.
        total: usize,
    },
    /// The input names nothing that can be acted on (a malformed or unknown id).
    #[error("{0}")]
    Refused(String),
    /// `link --product-code` is empty once surrounding whitespace is removed.
    #[error("--product-code is empty")]
    EmptyProductCode,
}
