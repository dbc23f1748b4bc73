//! What keeps one client from spending the seller's AWS quota or holding the API: the landing's
//! per-address rate limit (tower_governor, keyed by the client address a trusted proxy header
//! names), a bound on concurrent ResolveCustomer calls, a short memory of the tokens AWS refused,
//! and a bound on concurrent long polls of `/v1/events`.

use super::routes::register::Failure;
use crate::metrics::Metrics;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{HeaderName, Request, Response};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{Semaphore, SemaphorePermit};
use tokio_util::sync::CancellationToken;
use tower_governor::governor::GovernorConfigBuilder;
use tower_governor::key_extractor::KeyExtractor;
use tower_governor::{GovernorError, GovernorLayer};

/// The guards' defaults, each defined once (the flags of `mplink serve`).
pub mod defaults {
    /// Landings per minute one client address may make, once its burst is spent.
    pub const REGISTER_PER_MINUTE: u32 = 30;
    /// Landings one client address may make at once.
    pub const REGISTER_BURST: u32 = 10;
    /// ResolveCustomer calls in flight at once, whoever asks.
    pub const RESOLVE_CONCURRENCY: u32 = 8;
    /// How long a landing waits for a ResolveCustomer slot before the buyer is told to retry.
    pub const RESOLVE_WAIT_MS: u64 = 2_000;
    /// Seconds a token AWS called invalid or expired is answered from memory.
    pub const REFUSED_TOKEN_TTL_S: u64 = 600;
    /// Most refused tokens remembered.
    pub const REFUSED_TOKENS: usize = 100_000;
    /// Long polls of `/v1/events` waiting at once; more are answered 429.
    pub const MAX_LONG_POLLS: u32 = 256;
}

/// How the guards are set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuardConfig {
    /// See [`defaults::REGISTER_PER_MINUTE`].
    pub register_per_minute: NonZeroU32,
    /// See [`defaults::REGISTER_BURST`].
    pub register_burst: NonZeroU32,
    /// See [`defaults::RESOLVE_CONCURRENCY`].
    pub resolve_concurrency: NonZeroU32,
    /// See [`defaults::RESOLVE_WAIT_MS`].
    pub resolve_wait: Duration,
    /// See [`defaults::REFUSED_TOKEN_TTL_S`].
    pub refused_token_ttl: Duration,
    /// See [`defaults::MAX_LONG_POLLS`].
    pub max_long_polls: NonZeroU32,
    /// The header a trusted proxy puts the client's address in, rightmost entry first
    /// (`X-Forwarded-For` behind an ALB); `None`: the connection's peer address.
    pub client_ip_header: Option<HeaderName>,
}

impl Default for GuardConfig {
    fn default() -> Self {
        let n = |v: u32| NonZeroU32::new(v).unwrap_or(NonZeroU32::MIN);
        GuardConfig {
            register_per_minute: n(defaults::REGISTER_PER_MINUTE),
            register_burst: n(defaults::REGISTER_BURST),
            resolve_concurrency: n(defaults::RESOLVE_CONCURRENCY),
            resolve_wait: Duration::from_millis(defaults::RESOLVE_WAIT_MS),
            refused_token_ttl: Duration::from_secs(defaults::REFUSED_TOKEN_TTL_S),
            max_long_polls: n(defaults::MAX_LONG_POLLS),
            client_ip_header: None,
        }
    }
}

/// The guards' state, shared by the handlers.
#[derive(Debug)]
pub struct Guards {
    /// The configuration.
    pub config: GuardConfig,
    resolve: Semaphore,
    refused: Mutex<HashMap<[u8; 32], (Instant, Failure)>>,
    long_polls: Semaphore,
}

impl Default for Guards {
    fn default() -> Self {
        Guards::new(GuardConfig::default())
    }
}

impl Guards {
    /// Guards set by `config`.
    pub fn new(config: GuardConfig) -> Guards {
        Guards {
            resolve: Semaphore::new(config.resolve_concurrency.get() as usize),
            long_polls: Semaphore::new(config.max_long_polls.get() as usize),
            refused: Mutex::new(HashMap::new()),
            config,
        }
    }

    /// A ResolveCustomer slot, waiting at most the configured time; `None`: all are busy.
    pub async fn resolve_slot(&self) -> Option<SemaphorePermit<'_>> {
        tokio::time::timeout(self.config.resolve_wait, self.resolve.acquire())
            .await
            .ok()
            .and_then(Result::ok)
    }

    /// A long-poll slot, or `None` when all are taken.
    pub fn long_poll_slot(&self) -> Option<SemaphorePermit<'_>> {
        self.long_polls.try_acquire().ok()
    }

    /// What AWS answered this token recently, if it refused it.
    pub fn refused(&self, token: &str) -> Option<Failure> {
        let key = digest(token);
        let refused = self.refused.lock().unwrap_or_else(|e| e.into_inner());
        refused
            .get(&key)
            .filter(|(until, _)| *until > Instant::now())
            .map(|(_, failure)| *failure)
    }

    /// Remembers that AWS refused `token` with `failure`.
    pub fn remember_refusal(&self, token: &str, failure: Failure) {
        let now = Instant::now();
        let mut refused = self.refused.lock().unwrap_or_else(|e| e.into_inner());
        if refused.len() >= defaults::REFUSED_TOKENS {
            refused.retain(|_, (until, _)| *until > now);
            if refused.len() >= defaults::REFUSED_TOKENS {
                // Flooded with distinct bad tokens: the rate limit bounds what this costs AWS,
                // and forgetting is only a cache miss.
                refused.clear();
            }
        }
        refused.insert(
            digest(token),
            (now + self.config.refused_token_ttl, failure),
        );
    }
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// The client address a landing is counted against: the rightmost entry of the trusted proxy's
/// header (what the proxy itself appended; entries to its left are the client's to choose), or
/// the connection's peer.
#[derive(Debug, Clone)]
pub struct ClientAddress {
    header: Option<HeaderName>,
}

impl ClientAddress {
    /// Reads `header` when set, else the peer address.
    pub fn new(header: Option<HeaderName>) -> ClientAddress {
        ClientAddress { header }
    }

    /// The address of `request`'s client.
    pub fn of<T>(&self, request: &Request<T>) -> Option<IpAddr> {
        let forwarded = self.header.as_ref().and_then(|name| {
            let last = request.headers().get_all(name).iter().next_back()?;
            let entry = last.to_str().ok()?.rsplit(',').next()?.trim();
            entry.parse::<IpAddr>().ok()
        });
        forwarded.or_else(|| {
            request
                .extensions()
                .get::<ConnectInfo<SocketAddr>>()
                .map(|ConnectInfo(peer)| peer.ip())
        })
    }
}

impl KeyExtractor for ClientAddress {
    type Key = IpAddr;

    fn extract<T>(&self, request: &Request<T>) -> Result<IpAddr, GovernorError> {
        self.of(request).ok_or(GovernorError::UnableToExtractKey)
    }
}

/// The landing's rate limit as a layer: a limited client gets the 429 page (which still tells a
/// buyer what to do), counted as the `rate_limited` landing outcome. The limiter forgets idle
/// addresses every minute until `shutdown`.
pub fn register_rate_limit(
    config: &GuardConfig,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> GovernorLayer<ClientAddress, governor::middleware::NoOpMiddleware, Body> {
    let period = Duration::from_secs(60) / config.register_per_minute.get();
    let governor = GovernorConfigBuilder::default()
        .period(period)
        .burst_size(config.register_burst.get())
        .key_extractor(ClientAddress::new(config.client_ip_header.clone()))
        .finish()
        .expect("a non-zero period and burst");
    let limiter = governor.limiter().clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(60));
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => limiter.retain_recent(),
            }
        }
    });
    GovernorLayer::new(governor).error_handler(move |error| -> Response<Body> {
        let failure = match error {
            GovernorError::TooManyRequests { .. } => Failure::RateLimited,
            _ => Failure::BadRequest,
        };
        metrics
            .registrations
            .with_label_values(&[failure.outcome()])
            .inc();
        failure.page()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(peer: &str, forwarded: &[&str]) -> Request<()> {
        let mut builder = Request::builder();
        for value in forwarded {
            builder = builder.header("x-forwarded-for", *value);
        }
        let mut request = builder.body(()).unwrap();
        request
            .extensions_mut()
            .insert(ConnectInfo(peer.parse::<SocketAddr>().unwrap()));
        request
    }

    #[test]
    fn the_client_is_the_rightmost_forwarded_entry_or_the_peer() {
        let header = ClientAddress::new(Some(HeaderName::from_static("x-forwarded-for")));
        let peer = ClientAddress::new(None);
        let ip = |s: &str| Some(s.parse::<IpAddr>().unwrap());
        // A client's own entries (left) cannot choose its bucket.
        let r = request("10.0.0.5:1000", &["6.6.6.6, 203.0.113.7"]);
        assert_eq!(header.of(&r), ip("203.0.113.7"));
        assert_eq!(peer.of(&r), ip("10.0.0.5"));
        let r = request("10.0.0.5:1000", &["6.6.6.6", "198.51.100.2"]);
        assert_eq!(header.of(&r), ip("198.51.100.2"));
        // No usable header: the peer.
        assert_eq!(header.of(&request("10.0.0.5:1", &["junk"])), ip("10.0.0.5"));
        assert_eq!(header.of(&request("[::1]:1", &[])), ip("::1"));
    }

    #[test]
    fn refused_tokens_are_remembered_for_their_time_only() {
        let guards = Guards::new(GuardConfig {
            refused_token_ttl: Duration::from_millis(50),
            ..GuardConfig::default()
        });
        assert_eq!(guards.refused("t1"), None);
        guards.remember_refusal("t1", Failure::InvalidToken);
        assert_eq!(guards.refused("t1"), Some(Failure::InvalidToken));
        assert_eq!(guards.refused("t2"), None);
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(guards.refused("t1"), None);
    }
}
