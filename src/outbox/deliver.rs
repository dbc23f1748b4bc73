//! The webhook deliverer: leases due outbox rows (each organization's oldest undelivered one),
//! posts each to every configured URL signed per Standard Webhooks, and records the attempt.
//!
//! At least once: a row is marked delivered only after every URL answered 2xx, so a crash in
//! between sends it again with the same `webhook-id` (receivers dedupe on it). A failure (an
//! answer that is not 2xx, a redirect — never followed —, a timeout, a refused connection) is
//! retried after a capped exponential backoff with jitter; after the attempt limit the row is
//! parked as `failed`, holding its organization's later rows back until `mplink outbox retry`.
//! With several URLs a retry goes to all of them again (receivers dedupe).
//!
//! Wake-up: on PostgreSQL the commit that writes a row notifies the deliverer (LISTEN/NOTIFY, see
//! [`crate::store::OutboxListener`]) and a slow poll is the fallback; on SQLite, or while the
//! listening connection is down, a short poll.

use super::sign::{signature_header, SecretError, WebhookSecret};
use super::OutboxRow;
use crate::backoff::Backoff;
use crate::metrics::Metrics;
use crate::store::{AttemptResult, Store, StoreError};
use crate::time::now_ms;
use secrecy::{ExposeSecret, SecretString};
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;
use tokio_util::sync::CancellationToken;

/// Why the webhook configuration cannot work (refused at start-up).
#[derive(Debug, Error)]
pub enum WebhookConfigError {
    /// A URL that is not an absolute http(s) URL.
    #[error("webhook URL {url:?} refused: {reason}")]
    Url {
        /// The URL as configured.
        url: String,
        /// Why.
        reason: String,
    },
    /// URLs without a secret to sign with.
    #[error("webhook URLs are configured but no webhook secret (--webhook-secret / MPLINK_WEBHOOK_SECRETS)")]
    MissingSecret,
    /// A secret that cannot be used.
    #[error(transparent)]
    Secret(#[from] SecretError),
    /// The HTTP client could not be built.
    #[error("cannot build the webhook HTTP client: {0}")]
    Client(String),
}

/// Delivery defaults, read by the flags (`cli/worker_args.rs`) and by [`WebhookConfig::new`].
pub mod defaults {
    /// Seconds allowed for one POST.
    pub const TIMEOUT_S: u64 = 10;
    /// Attempts before a row is parked as failed.
    pub const MAX_ATTEMPTS: u32 = 15;
    /// First retry delay, milliseconds; doubles per failure, with jitter.
    pub const BACKOFF_BASE_MS: u64 = 1000;
    /// Longest retry delay, seconds.
    pub const BACKOFF_CAP_S: u64 = 600;
}

/// Where and how rows are delivered.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// Every URL each row goes to.
    pub urls: Vec<url::Url>,
    /// Signing secrets: every one signs (several during a rotation).
    pub secrets: Vec<WebhookSecret>,
    /// Time allowed for one POST, connection included.
    pub timeout: Duration,
    /// Attempts before a row is parked as failed.
    pub max_attempts: u32,
    /// Retry delays: base · 2ⁿ with jitter, up to the cap.
    pub backoff: Backoff,
    /// Sleep between polls when nothing is due and no notification can wake the deliverer.
    pub poll_interval: Duration,
    /// Sleep between polls while a PostgreSQL listener wakes the deliverer on every commit:
    /// only rows whose retry came due, and notifications lost to a reconnect, wait for it.
    pub notified_poll_interval: Duration,
    /// Listen for commits (PostgreSQL); off only to measure what the poll alone does.
    pub listen: bool,
    /// Rows leased per poll.
    pub batch: i64,
    /// Tests only: a lease other than the one derived from the timeout (0 shows what a
    /// deliverer without leases would do).
    pub lease_override: Option<Duration>,
}

impl WebhookConfig {
    /// Checks URLs (absolute http or https) and secrets (`whsec_…`); None when no URL is set.
    pub fn new(
        urls: &[String],
        secrets: &[WebhookSecret],
    ) -> Result<Option<WebhookConfig>, WebhookConfigError> {
        if urls.is_empty() {
            return Ok(None);
        }
        let urls = urls
            .iter()
            .map(|raw| check_url(raw))
            .collect::<Result<Vec<_>, _>>()?;
        if secrets.is_empty() {
            return Err(WebhookConfigError::MissingSecret);
        }
        Ok(Some(WebhookConfig {
            urls,
            secrets: secrets.to_vec(),
            timeout: Duration::from_secs(defaults::TIMEOUT_S),
            max_attempts: defaults::MAX_ATTEMPTS,
            backoff: Backoff::new(
                Duration::from_millis(defaults::BACKOFF_BASE_MS),
                Duration::from_secs(defaults::BACKOFF_CAP_S),
            ),
            poll_interval: Duration::from_millis(250),
            notified_poll_interval: Duration::from_secs(2),
            listen: true,
            batch: 32,
            lease_override: None,
        }))
    }

    /// How long a lease lasts: twice every URL's timeout and some slack, so a live deliverer
    /// never loses the row it is working on, and a dead one's rows are taken over soon after.
    fn lease(&self) -> Duration {
        self.lease_override
            .unwrap_or(self.timeout * self.urls.len() as u32 * 2 + Duration::from_secs(2))
    }
}

fn check_url(raw: &str) -> Result<url::Url, WebhookConfigError> {
    let refuse = |reason: &str| WebhookConfigError::Url {
        url: crate::config::redact_url(raw),
        reason: reason.to_string(),
    };
    let url = url::Url::parse(raw.trim()).map_err(|e| refuse(&e.to_string()))?;
    match url.scheme() {
        "http" | "https" => {}
        other => return Err(refuse(&format!("scheme {other:?} is not http or https"))),
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(refuse("no host"));
    }
    Ok(url)
}

/// Parses the secrets of the configuration, numbering them from 1 in errors.
pub fn parse_secrets(texts: &[SecretString]) -> Result<Vec<WebhookSecret>, SecretError> {
    texts
        .iter()
        .map(|t| t.expose_secret())
        .filter(|t| !t.trim().is_empty())
        .enumerate()
        .map(|(i, t)| WebhookSecret::parse(t, i + 1))
        .collect()
}

/// One deliverer (several replicas may run one each on the same database).
pub struct Deliverer {
    store: Store,
    config: WebhookConfig,
    client: reqwest::Client,
    owner: String,
    metrics: Arc<Metrics>,
}

impl Deliverer {
    /// A deliverer with a fresh lease owner id.
    pub fn new(
        store: Store,
        config: WebhookConfig,
        metrics: Arc<Metrics>,
    ) -> Result<Deliverer, WebhookConfigError> {
        crate::tls::install_default_crypto_provider();
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(config.timeout)
            .connect_timeout(config.timeout)
            .user_agent(concat!("mplink/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| WebhookConfigError::Client(e.to_string()))?;
        let owner = crate::store::lease_owner();
        Ok(Deliverer {
            store,
            config,
            client,
            owner,
            metrics,
        })
    }

    /// Delivers until `shutdown`; database errors are logged and retried after a pause.
    pub async fn run(self, shutdown: CancellationToken) {
        tracing::info!(
            urls = ?self.config.urls.iter().map(|u| u.as_str()).collect::<Vec<_>>(),
            secrets = self.config.secrets.len(),
            owner = %self.owner,
            "webhook deliverer starting"
        );
        let wake = Arc::new(tokio::sync::Notify::new());
        let listening = self.config.listen && self.spawn_listener(wake.clone(), &shutdown).await;
        let idle_pause = if listening {
            self.config.notified_poll_interval
        } else {
            self.config.poll_interval
        };
        let mut last_stats = tokio::time::Instant::now() - Duration::from_secs(60);
        while !shutdown.is_cancelled() {
            if last_stats.elapsed() >= Duration::from_secs(5) {
                self.refresh_gauges().await;
                last_stats = tokio::time::Instant::now();
            }
            let pause = match self.deliver_due().await {
                Ok(0) => idle_pause,
                Ok(_) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "webhook deliverer: database error, retrying");
                    Duration::from_secs(2)
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(pause) => {}
                // A notification that arrived while rows were being delivered left a permit, so
                // a commit is never missed between `deliver_due` and this wait.
                _ = wake.notified() => {}
            }
        }
        tracing::info!("webhook deliverer stopped");
    }

    /// Starts forwarding PostgreSQL's notifications to `wake`; false when there is nothing to
    /// listen to (SQLite) or the listening connection cannot be opened (then the poll serves).
    async fn spawn_listener(
        &self,
        wake: Arc<tokio::sync::Notify>,
        shutdown: &CancellationToken,
    ) -> bool {
        let mut listener = match self.store.outbox_listener().await {
            Ok(Some(listener)) => listener,
            Ok(None) => return false,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for outbox commits; polling instead");
                return false;
            }
        };
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    next = listener.next() => match next {
                        Ok(()) => wake.notify_one(),
                        Err(e) => {
                            // The poll covers the gap; the next call reconnects.
                            tracing::warn!(error = %e, "outbox listener lost its connection");
                            wake.notify_one();
                            tokio::time::sleep(Duration::from_secs(1)).await;
                        }
                    }
                }
            }
        });
        tracing::info!(
            channel = crate::store::OUTBOX_CHANNEL,
            "webhook deliverer woken by LISTEN/NOTIFY"
        );
        true
    }

    /// Updates the pending and oldest-age gauges.
    pub async fn refresh_gauges(&self) {
        match self.store.outbox_stats().await {
            Ok(stats) => {
                self.metrics
                    .outbox_pending
                    .set(stats.pending + stats.failed);
                let age = stats
                    .oldest_undelivered_ms
                    .map_or(0, |t| (now_ms() - t).max(0) / 1000);
                self.metrics.outbox_oldest_age_seconds.set(age);
            }
            Err(e) => tracing::warn!(error = %e, "cannot count the outbox"),
        }
    }

    /// Leases the rows due now and attempts each once (concurrently: at most one per
    /// organization is leased). Returns how many were attempted.
    pub async fn deliver_due(&self) -> Result<usize, StoreError> {
        let now = now_ms();
        let lease_ms = self.config.lease().as_millis() as i64;
        let rows = self
            .store
            .claim_outbox(&self.owner, now, lease_ms, self.config.batch)
            .await?;
        let n = rows.len();
        let mut attempts = tokio::task::JoinSet::new();
        for row in rows {
            let attempt = self.attempt_once(row);
            attempts.spawn(attempt);
        }
        let mut first_error = None;
        while let Some(done) = attempts.join_next().await {
            match done {
                Ok(Ok(())) => {}
                Ok(Err(e)) => first_error = first_error.or(Some(e)),
                Err(e) => tracing::error!(error = %e, "webhook attempt task failed"),
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(n),
        }
    }

    fn attempt_once(
        &self,
        row: OutboxRow,
    ) -> impl std::future::Future<Output = Result<(), StoreError>> + Send + 'static {
        let store = self.store.clone();
        let client = self.client.clone();
        let config = self.config.clone();
        let owner = self.owner.clone();
        let metrics = self.metrics.clone();
        async move {
            let body = row.payload_json();
            let result = match post_everywhere(&client, &config, &row, &body).await {
                Ok(()) => {
                    crate::failpoint::webhook_accepted();
                    AttemptResult::Delivered
                }
                Err(error) => {
                    let failures = row.attempts as u32 + 1;
                    let park = failures >= config.max_attempts;
                    tracing::warn!(
                        seq = row.seq,
                        webhook_id = %row.event_id,
                        attempt = failures,
                        parked = park,
                        %error,
                        "webhook delivery failed"
                    );
                    AttemptResult::Failed {
                        error,
                        retry_at_ms: now_ms()
                            + config.backoff.delay_after(failures).as_millis() as i64,
                        park,
                    }
                }
            };
            let now = now_ms();
            let kept = store
                .outbox_attempted(row.seq, &owner, now, &result)
                .await?;
            let outcome = match (&result, kept) {
                (_, false) => "lease_lost",
                (AttemptResult::Delivered, true) => {
                    metrics
                        .webhook_latency_seconds
                        .observe((now - row.created_at_ms).max(0) as f64 / 1000.0);
                    "delivered"
                }
                (AttemptResult::Failed { park: true, .. }, true) => "parked",
                (AttemptResult::Failed { .. }, true) => "retry",
            };
            metrics
                .webhook_deliveries
                .with_label_values(&[outcome])
                .inc();
            Ok(())
        }
    }
}

/// Posts `body` to every URL; Ok once all answered 2xx, else what went wrong (no body, no
/// secret: the URL's password, if any, is redacted).
async fn post_everywhere(
    client: &reqwest::Client,
    config: &WebhookConfig,
    row: &OutboxRow,
    body: &str,
) -> Result<(), String> {
    let timestamp = chrono::Utc::now().timestamp();
    let signature = signature_header(&config.secrets, &row.event_id, timestamp, body);
    let mut errors = Vec::new();
    for url in &config.urls {
        let sent = client
            .post(url.clone())
            .header("content-type", "application/json")
            .header("webhook-id", &row.event_id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", &signature)
            .body(body.to_string())
            .send()
            .await;
        let shown = crate::config::redact_url(url.as_str());
        match sent {
            Ok(answer) if answer.status().is_success() => {}
            Ok(answer) if answer.status().is_redirection() => errors.push(format!(
                "{shown}: answered {} (redirects are not followed)",
                answer.status()
            )),
            Ok(answer) => errors.push(format!("{shown}: answered {}", answer.status())),
            Err(e) if e.is_timeout() => {
                errors.push(format!("{shown}: no answer within {:?}", config.timeout))
            }
            Err(e) => errors.push(format!("{shown}: {}", without_url(&e))),
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("; "))
    }
}

/// The error and its causes, without the URL reqwest puts in its own message (a query string
/// may carry a token).
fn without_url(e: &reqwest::Error) -> String {
    let mut text = if e.is_connect() {
        "cannot connect"
    } else if e.is_body() || e.is_decode() {
        "broken answer"
    } else {
        "request failed"
    }
    .to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text = format!("{text}: {s}");
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_http_and_https_urls_with_a_secret_are_accepted() {
        let secret =
            parse_secrets(&[SecretString::from("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")]).unwrap();
        assert!(WebhookConfig::new(&[], &[]).unwrap().is_none());
        for bad in [
            "ftp://example.com/hook",
            "file:///etc/passwd",
            "example.com/hook",
            "http://",
        ] {
            let err = WebhookConfig::new(&[bad.into()], &secret).unwrap_err();
            assert!(
                matches!(err, WebhookConfigError::Url { .. }),
                "{bad}: {err}"
            );
        }
        let err = WebhookConfig::new(&["https://hooks.example.com/mp".into()], &[]).unwrap_err();
        assert!(matches!(err, WebhookConfigError::MissingSecret));
        let ok = WebhookConfig::new(
            &[
                "https://hooks.example.com/mp".into(),
                "http://127.0.0.1:9/x".into(),
            ],
            &secret,
        )
        .unwrap()
        .unwrap();
        assert_eq!(ok.urls.len(), 2);
        // A password in a refused URL does not reach the message.
        let err = WebhookConfig::new(&["gopher://u:s3cret@h/".into()], &secret).unwrap_err();
        assert!(!err.to_string().contains("s3cret"), "{err}");
    }
}
