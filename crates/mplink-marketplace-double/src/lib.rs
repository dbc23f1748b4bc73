//! The one local test double of the AWS Marketplace Metering and Entitlement services.
//!
//! LocalStack emulates neither service, so tests and the demo point the real
//! `aws-sdk-marketplacemetering` / `aws-sdk-marketplaceentitlement` clients at this double with
//! `.endpoint_url(double.endpoint_url())`. It speaks both wire protocols those crates use:
//! - AWS JSON 1.1 (metering 1.124): `POST /` with
//!   `X-Amz-Target: AWSMPMeteringService.{ResolveCustomer,BatchMeterUsage,MeterUsage}` or
//!   `AWSMPEntitlementService.GetEntitlements`, answers as `application/x-amz-json-1.1`, errors as
//!   `{"__type", "message"}` plus `x-amzn-errortype`;
//! - Smithy RPC v2 CBOR (entitlement 1.126 — not JSON, whatever older documents say):
//!   `POST /service/AWSMPEntitlementService/operation/GetEntitlements` with
//!   `smithy-protocol: rpc-v2-cbor`, errors as a CBOR `{"__type": "<namespace>#<Code>", "message"}`.
//!
//! Status codes are AWS's, so the SDK parses errors into its typed errors
//! (`InvalidTokenException`, `ExpiredTokenException`, `ThrottlingException`,
//! `InternalServiceErrorException`, `TimestampOutOfBoundsException`, …).
//!
//! What it enforces, as AWS does:
//! - **Signatures** ([`sigv4`]): no `Authorization` → `MissingAuthenticationTokenException`;
//!   a malformed SigV4 header or no `X-Amz-Date` → `IncompleteSignatureException`; a credential
//!   scoped to another service than `aws-marketplace`, a stale date or (for the access keys in
//!   [`DoubleConfig::credentials`], by default `test`/`test`) a wrong signature →
//!   `InvalidSignatureException`.
//! - **ResolveCustomer**: seeded tokens resolve to their [`ResolvedCustomer`]; an unknown token
//!   is `InvalidTokenException`, an expired one `ExpiredTokenException`.
//! - **BatchMeterUsage**: at most 25 records, one product per call (a record for a customer of
//!   another product is `CustomerNotSubscribed`); one record per customer, dimension and hour —
//!   the same quantity again is `Success` with the same `MeteringRecordId`, another quantity is
//!   `DuplicateRecord` and not billed; a customer who is not (or no longer) subscribed gets
//!   `CustomerNotSubscribed`; one timestamp outside [`DoubleConfig::accept_past`] (6 h) /
//!   [`DoubleConfig::accept_future`] fails the whole call with `TimestampOutOfBoundsException`;
//!   records can be returned as `UnprocessedRecords` on request. The Rust SDK always sends
//!   `CustomerIdentifier` (as `""` when unset), so an empty one counts as absent.
//! - **MeterUsage** (AMI/container products, kept minimal): the caller's access key is the
//!   customer; a second quantity for the same hour is `DuplicateRequestException`.
//! - **SearchAgreements** (Agreement API, RPC v2 CBOR at
//!   `/service/AWSMPCommerceService_v20200301/operation/SearchAgreements`): `catalog`
//!   AWSMarketplace, 1–10 filters of one value each with `PartyType=Proposer` required, pages of
//!   at most 50 with a `nextToken` bound to its filters; **GetAgreementEntitlements**: the license
//!   an agreement grants with its status, `ResourceNotFoundException` for an unknown agreement.
//! - **GetEntitlements**: filters (values ORed within a name, names ANDed), pages of at most 25
//!   with an opaque `NextToken` bound to its query; an empty answer is an empty list.
//!
//! Controls, in process ([`MarketplaceDouble`]) or over HTTP for other processes (JSON,
//! unsigned):
//!
//! | Rust | HTTP |
//! |---|---|
//! | [`MarketplaceDouble::add_customer`] | `POST /_double/customers` `{"token", "customer_aws_account_id", "license_arn", "product_code", "customer_identifier"?, "agreement_id"?}` |
//! | [`MarketplaceDouble::expire_token`] | `POST /_double/tokens/{token}/expire` |
//! | [`MarketplaceDouble::set_subscribed`] / [`MarketplaceDouble::set_not_subscribed`] | `POST /_double/subscriptions` `{"customer", "subscribed"}` |
//! | [`MarketplaceDouble::add_product`] | `POST /_double/products` `{"product_code"}` |
//! | [`MarketplaceDouble::fail_next`] / [`MarketplaceDouble::delay_next`] | `POST /_double/faults` `{"operation": "ResolveCustomer", "failure"?: "Throttling", "delay_ms"?, "times"}` |
//! | [`MarketplaceDouble::unprocess_next_records`] | `POST /_double/unprocessed` `{"records"}` |
//! | [`MarketplaceDouble::add_entitlement`] | `POST /_double/entitlements` (an [`Entitlement`]) |
//! | [`MarketplaceDouble::remove_entitlements`] | (in process only) |
//! | [`MarketplaceDouble::put_agreement`] | (in process only) |
//! | [`MarketplaceDouble::calls`] | `GET /_double/calls` |
//! | [`MarketplaceDouble::metered_records`] | `GET /_double/metered-records` |
//!
//! `mplink-marketplace-double --listen 127.0.0.1:0` runs it as a process: it prints its
//! endpoint URL on stdout and serves until SIGTERM or Ctrl-C.

mod agreement;
mod cbor;
pub mod clients;
mod control;
mod entitlement;
mod metering;
mod model;
mod server;
pub mod sigv4;
mod state;
pub mod wire;

pub use agreement::MAX_PAGE as MAX_AGREEMENTS_PER_PAGE;
pub use entitlement::MAX_PAGE as MAX_ENTITLEMENTS_PER_PAGE;
pub use metering::MAX_RECORDS_PER_CALL;
pub use model::{
    Agreement, Call, CallOutcome, CustomerRef, DoubleConfig, Entitlement, EntitlementValue,
    Failure, MeteredRecord, Operation, ResolvedCustomer, TEST_ACCESS_KEY_ID,
    TEST_SECRET_ACCESS_KEY,
};

use server::Shared;
use state::State;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::{TcpListener, ToSocketAddrs};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Why the double could not start.
#[derive(Debug, thiserror::Error)]
pub enum DoubleError {
    /// The listen address could not be bound.
    #[error("marketplace double: cannot listen on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
}

impl DoubleError {
    /// A stable reason code.
    pub fn reason(&self) -> &'static str {
        match self {
            DoubleError::Bind { .. } => "bind",
        }
    }
}

/// A running double. Dropping it stops the server; [`MarketplaceDouble::shutdown`] also waits.
pub struct MarketplaceDouble {
    shared: Shared,
    addr: SocketAddr,
    stop: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl MarketplaceDouble {
    /// Starts a double with the default rules on `addr` (`"127.0.0.1:0"` for any free port).
    pub async fn start(addr: impl ToSocketAddrs + std::fmt::Debug) -> Result<Self, DoubleError> {
        MarketplaceDouble::start_with(addr, DoubleConfig::default()).await
    }

    /// Starts a double with `config` on `addr`.
    pub async fn start_with(
        addr: impl ToSocketAddrs + std::fmt::Debug,
        config: DoubleConfig,
    ) -> Result<Self, DoubleError> {
        let shown = format!("{addr:?}");
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| DoubleError::Bind {
                addr: shown.clone(),
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| DoubleError::Bind {
            addr: shown,
            source,
        })?;
        let shared = Shared(Arc::new(Mutex::new(State::new(config))));
        let stop = CancellationToken::new();
        let app = server::router(shared.clone());
        let stopped = stop.clone().cancelled_owned();
        let task = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app)
                .with_graceful_shutdown(stopped)
                .await
            {
                tracing::error!(error = %e, "marketplace double: server stopped");
            }
        });
        Ok(MarketplaceDouble {
            shared,
            addr,
            stop,
            task: Some(task),
        })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The URL to give the SDK's `endpoint_url` (a wildcard listen address becomes loopback).
    pub fn endpoint_url(&self) -> String {
        let mut addr = self.addr;
        if addr.ip().is_unspecified() {
            addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        format!("http://{addr}")
    }

    /// Seeds a registration token and the customer's subscription to its product.
    pub fn add_customer(&self, token: &str, customer: ResolvedCustomer) {
        self.shared.lock().add_customer(token, customer);
    }

    /// Makes `token` answer `ExpiredTokenException`; false when it was never seeded.
    pub fn expire_token(&self, token: &str) -> bool {
        self.shared.lock().expire_token(token)
    }

    /// Sets whether the customer named by `customer` (account id, license ARN or legacy
    /// identifier) is subscribed; returns how many subscriptions matched.
    pub fn set_subscribed(&self, customer: &str, subscribed: bool) -> usize {
        self.shared.lock().set_subscribed(customer, subscribed)
    }

    /// From now on `customer`'s usage records come back `CustomerNotSubscribed`.
    pub fn set_not_subscribed(&self, customer: &str) -> usize {
        self.set_subscribed(customer, false)
    }

    /// Makes `product_code` one of the caller's products without any customer (for MeterUsage
    /// and for metering calls that should find nobody subscribed).
    pub fn add_product(&self, product_code: &str) {
        self.shared.lock().products.insert(product_code.to_string());
    }

    /// The next `times` calls of `operation` (after the signature check) fail with `failure`.
    /// Armed failures queue up in the order given.
    pub fn fail_next(&self, operation: Operation, failure: Failure, times: u32) {
        self.shared.lock().fail_next(operation, failure, times);
    }

    /// The next `times` calls of `operation` wait `delay` before being answered.
    pub fn delay_next(&self, operation: Operation, delay: Duration, times: u32) {
        self.shared.lock().delay_next(operation, delay, times);
    }

    /// The next `records` usage records BatchMeterUsage receives come back as
    /// `UnprocessedRecords` (neither metered nor refused).
    pub fn unprocess_next_records(&self, records: usize) {
        self.shared.lock().unprocess_next += records;
    }

    /// Adds an entitlement GetEntitlements returns (and makes its product known).
    pub fn add_entitlement(&self, entitlement: Entitlement) {
        let mut state = self.shared.lock();
        state.products.insert(entitlement.product_code.clone());
        state.entitlements.push(entitlement);
    }

    /// Removes the entitlements of the customer named by `customer` (account id, license ARN
    /// or legacy identifier), as a contract ending or changing does; returns how many.
    pub fn remove_entitlements(&self, customer: &str) -> usize {
        let mut state = self.shared.lock();
        let before = state.entitlements.len();
        state.entitlements.retain(|e| {
            e.customer_aws_account_id != customer
                && e.license_arn.as_deref() != Some(customer)
                && e.customer_identifier.as_deref() != Some(customer)
        });
        before - state.entitlements.len()
    }

    /// Adds an agreement SearchAgreements lists, or replaces the one with its id (AWS changing
    /// its status, say), keeping its place in the listing.
    pub fn put_agreement(&self, agreement: Agreement) {
        let mut state = self.shared.lock();
        match state
            .agreements
            .iter_mut()
            .find(|a| a.agreement_id == agreement.agreement_id)
        {
            Some(existing) => *existing = agreement,
            None => state.agreements.push(agreement),
        }
    }

    /// Every request received so far, in order.
    pub fn calls(&self) -> Vec<Call> {
        self.shared.lock().calls.clone()
    }

    /// The requests of one operation, in order.
    pub fn calls_of(&self, operation: Operation) -> Vec<Call> {
        self.shared
            .lock()
            .calls
            .iter()
            .filter(|c| c.operation == Some(operation))
            .cloned()
            .collect()
    }

    /// The usage AWS would bill: every accepted record, once, in acceptance order.
    pub fn metered_records(&self) -> Vec<MeteredRecord> {
        self.shared.lock().metered.clone()
    }

    /// Stops the server and waits for it.
    pub async fn shutdown(mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for MarketplaceDouble {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
