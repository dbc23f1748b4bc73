//! `mplink serve`: the HTTP API, and with `--worker` the SQS worker beside it on the same pool.

use super::{ApiArgs, CliError, ServeArgs};
use crate::api::{ApiOptions, ApiState, ApiTokens, SelectUrl};
use crate::config::DatabaseUrl;
use crate::store::Store;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Where `--example` sends the buyer unless told otherwise.
const EXAMPLE_SELECT_URL: &str = "/example/select.html";

/// How long one ResolveCustomer attempt may take: the buyer's browser is waiting.
const RESOLVE_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);

impl ApiArgs {
    /// The API's state over `store`, refusing a configuration that cannot work.
    pub async fn state(
        &self,
        store: &Store,
        metrics: Arc<crate::metrics::Metrics>,
        shutdown: CancellationToken,
    ) -> Result<ApiState, CliError> {
        let tokens = ApiTokens::new(&self.all_tokens().map_err(CliError::Setup)?)
            .map_err(|e| CliError::Setup(e.to_string()))?;
        let select = match (&self.select_organization_url, self.example) {
            (Some(url), _) => url.as_str(),
            (None, true) => EXAMPLE_SELECT_URL,
            (None, false) => return Err(CliError::Setup(
                "mplink serve needs --select-organization-url (or MPLINK_SELECT_ORGANIZATION_URL)"
                    .into(),
            )),
        };
        let select_organization_url =
            SelectUrl::new(select).map_err(|e| CliError::Setup(e.to_string()))?;
        let sdk = crate::aws::sdk_config(RESOLVE_ATTEMPT_TIMEOUT).await;
        Ok(ApiState {
            store: store.clone(),
            metering: crate::aws::metering_client(&sdk, self.marketplace_endpoint_url.as_deref()),
            tokens,
            select_organization_url,
            registration_ttl: Duration::from_secs(self.registration_ttl),
            product_codes: self
                .product_codes
                .iter()
                .filter_map(|p| crate::event::normalize_identifier(p))
                .map(str::to_owned)
                .collect(),
            contract_products: self
                .contract_products
                .iter()
                .filter_map(|p| crate::event::normalize_identifier(p))
                .map(str::to_owned)
                .collect(),
            metrics,
            guards: Arc::new(crate::api::guard::Guards::new(self.guard_config())),
            shutdown,
        })
    }
}

pub(super) async fn serve(
    store: &Store,
    url: &DatabaseUrl,
    args: ServeArgs,
) -> Result<ExitCode, CliError> {
    let shutdown = CancellationToken::new();
    let metrics = Arc::new(crate::metrics::Metrics::new());
    let state = args
        .api
        .state(store, metrics.clone(), shutdown.clone())
        .await?;
    let connections = args.run.http.limits();
    let worker = match (args.worker, args.run) {
        (true, run) if run.queue_url.trim().is_empty() => {
            return Err(CliError::Setup("--worker needs --queue-url".into()));
        }
        (true, run) => Some(run),
        (false, _) => None,
    };
    let listener = tokio::net::TcpListener::bind(args.api.listen)
        .await
        .map_err(|source| CliError::Listen {
            addr: args.api.listen,
            source,
        })?;
    tracing::info!(
        database = %url,
        listen = %listener.local_addr().unwrap_or(args.api.listen),
        example = args.api.example,
        worker = worker.is_some(),
        "mplink API starting"
    );
    let on_signal = shutdown.clone();
    tokio::spawn(async move {
        crate::shutdown::shutdown_signal().await;
        on_signal.cancel();
    });
    let options = ApiOptions {
        example: args
            .api
            .example
            .then(|| {
                args.api
                    .all_tokens()
                    .ok()
                    .and_then(|t| t.into_iter().next())
            })
            .flatten(),
        connections,
    };
    let api = tokio::spawn(crate::api::serve(listener, state, options));
    let result = match worker {
        // The worker stops on the same signal; when it stops on its own (an idle queue with
        // --exit-when-idle) the API stops with it.
        Some(run) => {
            let result =
                super::worker::run_until(store, url, run, Some(metrics), shutdown.clone()).await;
            shutdown.cancel();
            result
        }
        None => Ok(ExitCode::SUCCESS),
    };
    match api.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(CliError::Setup(format!("the API server failed: {e}"))),
        Err(e) => return Err(CliError::Setup(format!("the API server task failed: {e}"))),
    }
    result
}
