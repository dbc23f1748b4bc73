//! The API on a free port over a fresh database (SQLite file or PostgreSQL schema), as `mplink
//! serve` runs it, and a small client for it.

use super::{Backend, TestDb};
use mplink::api::guard::{GuardConfig, Guards};
use mplink::api::{ApiOptions, ApiState, ApiTokens, SelectUrl};
use mplink::metrics::Metrics;
use mplink::server::ConnectionLimits;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The token the tests' host application sends.
pub const TOKEN: &str = "test-token-0123456789abcdef";
/// A second configured token (rotation).
pub const OTHER_TOKEN: &str = "rotated-token-fedcba9876543210";
/// The host's signed-in user the tests act as (`user_id`).
pub const USER: &str = "user-1";
/// Where the buyer is sent after the landing.
pub const SELECT_URL: &str = "https://app.example.com/aws/select";
/// An endpoint where nothing listens: ResolveCustomer fails fast when no double is given.
pub const NO_MARKETPLACE: &str = "http://127.0.0.1:9";

/// How a test's API is configured.
#[derive(Debug, Clone)]
pub struct AppConfig {
    /// ResolveCustomer's endpoint (the test double's URL).
    pub marketplace_endpoint: String,
    /// Registration lifetime.
    pub registration_ttl: Duration,
    /// Product codes sold (empty: any).
    pub product_codes: Vec<String>,
    /// Rate limits and the other guards.
    pub guards: GuardConfig,
    /// The listener's timeouts and connection caps.
    pub connections: ConnectionLimits,
}

impl Default for AppConfig {
    fn default() -> Self {
        AppConfig {
            marketplace_endpoint: NO_MARKETPLACE.to_string(),
            registration_ttl: mplink::api::DEFAULT_REGISTRATION_TTL,
            product_codes: Vec::new(),
            guards: GuardConfig::default(),
            connections: ConnectionLimits::default(),
        }
    }
}

/// A running API.
pub struct TestApp {
    /// Its database.
    pub db: TestDb,
    /// Where it listens.
    pub addr: SocketAddr,
    /// A client that does not follow redirects.
    pub http: reqwest::Client,
    /// Stops it.
    pub shutdown: CancellationToken,
    /// Shared with the worker when a test runs one.
    pub metrics: Arc<Metrics>,
    handle: tokio::task::JoinHandle<std::io::Result<()>>,
}

/// The metering client `mplink serve` would build, pointed at `endpoint` with test credentials.
pub async fn metering_client(endpoint: &str) -> aws_sdk_marketplacemetering::Client {
    let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_sqs::config::Credentials::new(
            "test",
            "test",
            None,
            None,
            "mplink-tests",
        ))
        .timeout_config(
            aws_config::timeout::TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(2))
                .operation_attempt_timeout(Duration::from_secs(5))
                .build(),
        )
        .load()
        .await;
    mplink::aws::metering_client(&sdk, Some(endpoint))
}

/// Starts the API over a fresh database on `backend`.
pub async fn spawn_app(backend: Backend) -> TestApp {
    spawn_app_with(backend, AppConfig::default()).await
}

/// Starts the API over a fresh database on `backend`, configured by `config`.
pub async fn spawn_app_with(backend: Backend, config: AppConfig) -> TestApp {
    let db = TestDb::new(backend).await;
    let shutdown = CancellationToken::new();
    let metrics = Arc::new(Metrics::new());
    let tokens = [TOKEN, OTHER_TOKEN].map(|t| secrecy::SecretString::from(t.to_string()));
    let state = ApiState {
        store: db.store.clone(),
        metering: metering_client(&config.marketplace_endpoint).await,
        tokens: ApiTokens::new(&tokens).expect("tokens"),
        select_organization_url: SelectUrl::new(SELECT_URL).expect("select url"),
        registration_ttl: config.registration_ttl,
        product_codes: config.product_codes,
        contract_products: Vec::new(),
        metrics: metrics.clone(),
        guards: Arc::new(Guards::new(config.guards.clone())),
        shutdown: shutdown.clone(),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let handle = tokio::spawn(mplink::api::serve(
        listener,
        state,
        ApiOptions {
            example: None,
            connections: config.connections,
        },
    ));
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(60))
        .build()
        .expect("client");
    TestApp {
        db,
        addr,
        http,
        shutdown,
        metrics,
        handle,
    }
}

/// An answer: status, content type and body.
#[derive(Debug)]
pub struct Answer {
    /// Status code.
    pub status: u16,
    /// `Content-Type`.
    pub content_type: String,
    /// `Location`, if any.
    pub location: Option<String>,
    /// Body text.
    pub text: String,
    /// Every header.
    pub headers: reqwest::header::HeaderMap,
}

impl Answer {
    /// The body as JSON (panics, with the body, when it is not).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.text)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {} {}", self.status, self.text))
    }

    /// A header's value as text, if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The error code of a JSON error body.
    pub fn code(&self) -> String {
        self.json()["code"].as_str().unwrap_or_default().to_string()
    }
}

async fn answer(response: reqwest::Response) -> Answer {
    let header = |name: reqwest::header::HeaderName| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let content_type = header(reqwest::header::CONTENT_TYPE).unwrap_or_default();
    let location = header(reqwest::header::LOCATION);
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let text = response.text().await.expect("body");
    Answer {
        status,
        content_type,
        location,
        text,
        headers,
    }
}

impl TestApp {
    /// The absolute URL of `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Sends `request` and reads the answer.
    pub async fn send(&self, request: reqwest::RequestBuilder) -> Answer {
        answer(request.send().await.expect("request")).await
    }

    /// GET with the host's token.
    pub async fn get(&self, path: &str) -> Answer {
        self.send(self.http.get(self.url(path)).bearer_auth(TOKEN))
            .await
    }

    /// POST of a JSON value with the host's token.
    pub async fn post_json(&self, path: &str, body: &serde_json::Value) -> Answer {
        self.send(
            self.http
                .post(self.url(path))
                .bearer_auth(TOKEN)
                .header("content-type", "application/json")
                .body(body.to_string()),
        )
        .await
    }

    /// The buyer's browser posting AWS Marketplace's form.
    pub async fn register(&self, token: &str, offer_type: Option<&str>) -> Answer {
        let mut form = vec![("x-amzn-marketplace-token", token)];
        if let Some(offer) = offer_type {
            form.push(("x-amzn-marketplace-offer-type", offer));
        }
        self.send(
            self.http
                .post(self.url("/marketplace/register"))
                .form(&form),
        )
        .await
    }

    /// Stops the server and drops the database.
    pub async fn stop(self) {
        self.shutdown.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.handle).await;
        self.db.cleanup().await;
    }
}
