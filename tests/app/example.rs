//! The example host of `mplink serve --example` over HTTP: its pages only with the flag, and its
//! backend, which calls `/v1` with the configured token on the browser's behalf and checks what
//! the browser sends first. The Marketplace double resolves the registration token.

use crate::common::api::{metering_client, TOKEN};
use crate::common::{Backend, TestDb};
use mplink::api::{ApiOptions, ApiState, ApiTokens, SelectUrl};
use mplink_marketplace_double::{MarketplaceDouble, ResolvedCustomer};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

const REGISTRATION_TOKEN: &str = "example-test-registration-token";

struct Example {
    addr: SocketAddr,
    http: reqwest::Client,
    shutdown: CancellationToken,
    double: MarketplaceDouble,
    metrics: Arc<mplink::metrics::Metrics>,
}

/// The API with `example` as its example-host token (None: no example host), over `db`.
async fn start(db: &TestDb, example: Option<&str>) -> Example {
    let double = MarketplaceDouble::start("127.0.0.1:0")
        .await
        .expect("double");
    double.add_customer(
        REGISTRATION_TOKEN,
        ResolvedCustomer {
            customer_aws_account_id: "845735284135".into(),
            license_arn: format!(
                "arn:aws:license-manager::123456789012:license:l-{:032x}",
                rand::random::<u128>()
            ),
            product_code: "prodexample".into(),
            customer_identifier: None,
            agreement_id: None,
        },
    );
    let shutdown = CancellationToken::new();
    let metrics = Arc::new(mplink::metrics::Metrics::new());
    let state = ApiState {
        store: db.store.clone(),
        metering: metering_client(&double.endpoint_url()).await,
        tokens: ApiTokens::new(&[secrecy::SecretString::from(TOKEN)]).expect("tokens"),
        select_organization_url: SelectUrl::new("/example/select.html").expect("select url"),
        registration_ttl: mplink::api::DEFAULT_REGISTRATION_TTL,
        product_codes: Vec::new(),
        contract_products: Vec::new(),
        metrics: metrics.clone(),
        guards: Default::default(),
        shutdown: shutdown.clone(),
    };
    let options = ApiOptions {
        example: example.map(secrecy::SecretString::from),
        connections: Default::default(),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(mplink::api::serve(listener, state, options));
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    Example {
        addr,
        http,
        shutdown,
        double,
        metrics,
    }
}

impl Example {
    /// (status, headers, body) of a request the browser would send (never a token).
    async fn send(
        &self,
        request: reqwest::RequestBuilder,
    ) -> (u16, reqwest::header::HeaderMap, String) {
        let resp = request.send().await.expect("request");
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp.text().await.expect("body");
        // Whatever the browser gets, the token is never in it.
        assert!(
            !body.contains(TOKEN),
            "an answer carries the API token: {body}"
        );
        assert!(
            headers.values().all(|v| !v
                .as_bytes()
                .windows(TOKEN.len())
                .any(|w| w == TOKEN.as_bytes())),
            "a header carries the API token: {headers:?}"
        );
        (status, headers, body)
    }

    async fn get(&self, path: &str) -> (u16, reqwest::header::HeaderMap, String) {
        self.send(self.http.get(format!("http://{}{path}", self.addr)))
            .await
    }

    async fn post(&self, path: &str, body: String) -> (u16, Value) {
        let (status, _, text) = self
            .send(
                self.http
                    .post(format!("http://{}{path}", self.addr))
                    .header("content-type", "application/json")
                    .body(body),
            )
            .await;
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    async fn get_json(&self, path: &str) -> (u16, Value) {
        let (status, _, text) = self.get(path).await;
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// Posts the registration token as AWS Marketplace would; returns the registration id.
    async fn register(&self) -> String {
        let (status, headers, body) = self
            .send(
                self.http
                    .post(format!("http://{}/marketplace/register", self.addr))
                    .header("content-type", "application/x-www-form-urlencoded")
                    .body(format!("x-amzn-marketplace-token={REGISTRATION_TOKEN}")),
            )
            .await;
        assert_eq!(status, 303, "{body}");
        let location = headers["location"].to_str().expect("location").to_string();
        let id = location
            .strip_prefix("/example/select.html?registration=")
            .unwrap_or_else(|| panic!("redirect to {location}"));
        id.to_string()
    }
}

async fn pages_and_backend(backend: Backend) {
    let db = TestDb::new(backend).await;
    let app = start(&db, Some(TOKEN)).await;

    // The pages: HTML with a policy that lets only their own script run.
    for (path, kind) in [
        ("/example/", "text/html"),
        ("/example/select.html", "text/html"),
        ("/example/app.js", "text/javascript"),
        ("/example/style.css", "text/css"),
    ] {
        let (status, headers, body) = app.get(path).await;
        assert_eq!(status, 200, "{path}");
        let content_type = headers["content-type"].to_str().expect("type");
        assert!(content_type.starts_with(kind), "{path}: {content_type}");
        let policy = headers["content-security-policy"].to_str().expect("csp");
        assert!(policy.contains("script-src 'self'"), "{path}: {policy}");
        assert!(!body.contains(TOKEN), "{path} carries the token");
    }
    let (status, page) = app.get_json("/example/secrets.html").await;
    assert_eq!(
        (status, page["code"].as_str()),
        (404, Some("page_not_found"))
    );

    // The organization list, with no token from the browser: the backend adds it.
    let id = app.register().await;
    let (status, list) = app
        .get_json(&format!("/example/api/registrations/{id}/organizations"))
        .await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(list["registration"]["id"], id.as_str());
    let verdicts: Vec<(&str, bool, Option<&str>)> = list["organizations"]
        .as_array()
        .expect("organizations")
        .iter()
        .map(|o| {
            (
                o["org_id"].as_str().unwrap_or_default(),
                o["linkable"].as_bool().unwrap_or_default(),
                o["reason"].as_str(),
            )
        })
        .collect();
    assert_eq!(
        verdicts,
        [
            ("org-acme", true, None),
            ("org-globex", false, Some("other_marketplace")),
            ("org-initech", false, Some("not_permitted")),
        ]
    );

    // What the browser sends is checked before it reaches /v1.
    let (status, answer) = app
        .get_json("/example/api/registrations/reg_..%2Fx/organizations")
        .await;
    assert_eq!(
        (status, answer["code"].as_str()),
        (400, Some("invalid_registration_id"))
    );
    let link = format!("/example/api/registrations/{id}/link");
    let (status, answer) = app
        .post(&link, json!({"org_id": "org-other"}).to_string())
        .await;
    assert_eq!(
        (status, answer["code"].as_str()),
        (404, Some("unknown_organization"))
    );
    let (status, answer) = app
        .post(
            &link,
            json!({"org_id": "org-acme", "admin": true}).to_string(),
        )
        .await;
    assert_eq!(
        (status, answer["code"].as_str()),
        (400, Some("invalid_body"))
    );
    // The server answers before reading the whole body and closes that connection: a client
    // of its own, so the shared one does not reuse the closed connection.
    let resp = reqwest::Client::new()
        .post(format!("http://{}{link}", app.addr))
        .header("content-type", "application/json")
        .body("x".repeat(64 * 1024))
        .send()
        .await
        .expect("oversized request");
    assert_eq!(resp.status().as_u16(), 413);
    let answer: Value = serde_json::from_str(&resp.text().await.expect("body")).expect("json");
    assert_eq!(answer["code"], "body_too_large");
    let (status, billing) = app
        .get_json("/example/api/organizations/org-acme/billing")
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        billing["billing"]["link_state"],
        Value::Null,
        "nothing linked yet: {billing}"
    );

    // The link, then the billing view with the host's resources; /v1's own errors pass through.
    let (status, linked) = app
        .post(&link, json!({"org_id": "org-acme"}).to_string())
        .await;
    assert_eq!(status, 200, "{linked}");
    assert_eq!(linked["link_state"], "syncing");
    let (status, billing) = app
        .get_json("/example/api/organizations/org-acme/billing")
        .await;
    assert_eq!(status, 200, "{billing}");
    assert_eq!(billing["billing"]["syncing"], true);
    assert_eq!(billing["resources"][0]["name"], "prod-eu");
    let (status, refused) = app
        .post(&link, json!({"org_id": "org-initech"}).to_string())
        .await;
    assert_eq!(status, 409, "{refused}");
    assert!(refused["code"].is_string(), "{refused}");
    let (status, missing) = app
        .get_json("/example/api/registrations/reg_00000000000000000000000000000000/organizations")
        .await;
    assert_eq!(
        (status, missing["code"].as_str()),
        (404, Some("registration_not_found"))
    );

    // The example's refusals and /v1's errors passed through are counted like /v1's own.
    let counted = |code: &str| app.metrics.api_errors.with_label_values(&[code]).get();
    assert_eq!(counted("unknown_organization"), 1);
    assert_eq!(counted("invalid_registration_id"), 1);
    assert_eq!(counted("registration_not_found"), 1);

    // The browser itself gets nothing from /v1.
    let (status, _, _) = app.get("/v1/organizations/org-acme/billing").await;
    assert_eq!(status, 401);

    app.shutdown.cancel();
    drop(app.double);
    db.cleanup().await;
}

async fn a_wrong_token_is_refused_by_v1(backend: Backend) {
    // The backend really goes through /v1's authentication: with a token /v1 does not know,
    // the browser gets /v1's 401, not the organizations.
    let db = TestDb::new(backend).await;
    let app = start(&db, Some("not-the-configured-token-0123")).await;
    let id = app.register().await;
    let (status, answer) = app
        .get_json(&format!("/example/api/registrations/{id}/organizations"))
        .await;
    assert_eq!(
        (status, answer["code"].as_str()),
        (401, Some("unauthorized"))
    );
    app.shutdown.cancel();
    db.cleanup().await;
}

async fn no_example_without_the_flag(backend: Backend) {
    let db = TestDb::new(backend).await;
    let app = start(&db, None).await;
    for path in [
        "/example/",
        "/example/select.html",
        "/example/api/organizations/org-acme/billing",
    ] {
        let (status, _, _) = app.get(path).await;
        assert_eq!(status, 404, "{path}");
    }
    app.shutdown.cancel();
    db.cleanup().await;
}

both_backends! {
    example_pages_and_backend => pages_and_backend;
    example_backend_goes_through_v1_authentication => a_wrong_token_is_refused_by_v1;
    example_host_only_with_the_flag => no_example_without_the_flag;
}
