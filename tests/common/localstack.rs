//! LocalStack harness: a queue, its dead-letter queue, marketplace topics and an EventBridge
//! rule of the test's own, publishers, and an in-process worker on port 0.

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_sqs::types::{QueueAttributeName, SendMessageBatchRequestEntry};
use mplink::consumer::{RunSummary, WorkerConfig};
use mplink::metrics::Metrics;
use mplink::process::Pipeline;
use mplink::provision::{create_marketplace_topics, provision, ProvisionSpec, Provisioned};
use mplink::store::Store;
use mplink::verify::{Verifier, VerifyConfig};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

/// Where LocalStack answers unless `AWS_ENDPOINT_URL` says otherwise.
pub const DEFAULT_ENDPOINT: &str = "http://127.0.0.1:4566";

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// The LocalStack endpoint.
pub fn endpoint() -> String {
    std::env::var("AWS_ENDPOINT_URL").unwrap_or_else(|_| DEFAULT_ENDPOINT.to_string())
}

/// SDK configuration for LocalStack with dummy credentials.
pub async fn sdk() -> SdkConfig {
    aws_config::defaults(BehaviorVersion::latest())
        .endpoint_url(endpoint())
        .region(Region::new("us-east-1"))
        .credentials_provider(aws_sdk_sqs::config::Credentials::new(
            "test",
            "test",
            None,
            None,
            "mplink-tests",
        ))
        .timeout_config(
            aws_config::timeout::TimeoutConfig::builder()
                .operation_attempt_timeout(Duration::from_secs(30))
                .build(),
        )
        .load()
        .await
}

/// Environment for a spawned `mplink` binary to reach LocalStack.
pub fn binary_env() -> Vec<(&'static str, String)> {
    vec![
        ("AWS_ENDPOINT_URL", endpoint()),
        ("AWS_ACCESS_KEY_ID", "test".into()),
        ("AWS_SECRET_ACCESS_KEY", "test".into()),
        ("AWS_REGION", "us-east-1".into()),
    ]
}

/// `mplink run --exit-when-idle` once, on a fresh empty queue of its own (deleted afterwards),
/// with `extra` flags and `env` beside LocalStack's: what a loop the worker runs beside the
/// queue (metering, entitlements, reconcile) does before the idle queue ends the process.
pub async fn run_worker_once(
    db_url: &str,
    extra: &[&str],
    env: &[(&str, String)],
) -> std::process::Output {
    let sqs = aws_sdk_sqs::Client::new(&sdk().await);
    let queue = sqs
        .create_queue()
        .queue_name(format!(
            "mplink-once-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ))
        .send()
        .await
        .expect("LocalStack answers")
        .queue_url
        .expect("a queue URL");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mplink"))
        .args([
            "run",
            "--queue-url",
            &queue,
            "--exit-when-idle",
            "--wait-time",
            "1",
        ])
        .args(["--http-addr", "127.0.0.1:0"])
        .args(extra)
        .envs(binary_env())
        .env("MPLINK_DATABASE_URL", db_url)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .expect("run mplink");
    sqs.delete_queue().queue_url(&queue).send().await.ok();
    out
}

/// A test's own slice of LocalStack.
pub struct Stack {
    /// SDK configuration.
    pub sdk: SdkConfig,
    /// SQS client.
    pub sqs: aws_sdk_sqs::Client,
    /// Unique product code (its marketplace topics are this test's own).
    pub product: String,
    /// Unique suffix for names.
    pub suffix: String,
    /// Subscription topic, then entitlement topic.
    pub topics: Vec<String>,
    /// The test's own event bus (the default bus would mix tests' events).
    pub bus: String,
    /// Queues and subscriptions.
    pub queue: Provisioned,
    /// The queue's visibility timeout.
    pub visibility: Duration,
}

impl Stack {
    /// Provisions everything with `mplink::provision`, as `mplink provision` would.
    pub async fn new(max_receive_count: u32, visibility: Duration) -> Stack {
        let sdk = sdk().await;
        let suffix = format!(
            "{}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst),
            rand::random::<u16>()
        );
        let product = format!("prod{}", suffix.replace('-', ""));
        let topics = create_marketplace_topics(&sdk, &product)
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "LocalStack at {} is needed (scripts/localstack.sh start): {e}",
                    endpoint()
                )
            });
        let bus = format!("mplink-test-{suffix}");
        aws_sdk_eventbridge::Client::new(&sdk)
            .create_event_bus()
            .name(&bus)
            .send()
            .await
            .expect("create event bus");
        let spec = ProvisionSpec {
            queue_name: format!("mplink-test-{suffix}"),
            max_receive_count,
            visibility_timeout: visibility,
            topic_arns: topics.clone(),
            eventbridge_rule: Some(format!("mplink-test-{suffix}")),
            event_bus: Some(bus.clone()),
            raw_delivery: false,
        };
        let queue = provision(&sdk, &spec).await.expect("provision");
        let again = provision(&sdk, &spec)
            .await
            .expect("provisioning twice is harmless");
        assert_eq!(again.queue_url, queue.queue_url);
        Stack {
            sqs: aws_sdk_sqs::Client::new(&sdk),
            sdk,
            product,
            suffix,
            topics,
            bus,
            queue,
            visibility,
        }
    }

    /// `verify` with this stack's own marketplace topics allowed: they live in LocalStack's
    /// account, not AWS's, so only an explicit allow-list admits them.
    pub fn trusting(&self, mut verify: VerifyConfig) -> VerifyConfig {
        verify
            .allowed_topic_arns
            .extend(self.topics.iter().cloned());
        verify
    }

    /// `--allowed-topic-arn` flags for this stack's topics, for a worker process.
    pub fn topic_flags(&self) -> Vec<String> {
        self.topics
            .iter()
            .flat_map(|t| ["--allowed-topic-arn".to_string(), t.clone()])
            .collect()
    }

    /// Publishes a legacy marketplace message to the subscription topic through real SNS.
    pub async fn publish(&self, action: &str, customer: &str) {
        let message = serde_json::json!({
            "action": action,
            "customer-identifier": customer,
            "product-code": self.product,
            "offer-identifier": "offer-test",
            "isFreeTrialTermPresent": "false",
        });
        aws_sdk_sns::Client::new(&self.sdk)
            .publish()
            .topic_arn(&self.topics[0])
            .message(message.to_string())
            .send()
            .await
            .expect("sns publish");
    }

    /// Puts one marketplace event on the test's bus through real EventBridge.
    pub async fn put_event(&self, detail_type: &str, detail: serde_json::Value, time_s: i64) {
        let entry = aws_sdk_eventbridge::types::PutEventsRequestEntry::builder()
            .source(mplink::event::EVENTBRIDGE_SOURCE)
            .detail_type(detail_type)
            .detail(detail.to_string())
            .event_bus_name(&self.bus)
            .time(aws_sdk_eventbridge::primitives::DateTime::from_secs(time_s))
            .build();
        let out = aws_sdk_eventbridge::Client::new(&self.sdk)
            .put_events()
            .entries(entry)
            .send()
            .await
            .expect("put events");
        assert_eq!(out.failed_entry_count, 0, "{:?}", out.entries());
    }

    /// Sends bodies straight to the queue (as a redelivery or a hand-made message would arrive).
    pub async fn send_bodies(&self, bodies: &[String]) {
        for chunk in bodies.chunks(10) {
            let entries: Vec<SendMessageBatchRequestEntry> = chunk
                .iter()
                .enumerate()
                .map(|(i, b)| {
                    SendMessageBatchRequestEntry::builder()
                        .id(i.to_string())
                        .message_body(b)
                        .build()
                        .expect("entry")
                })
                .collect();
            let out = self
                .sqs
                .send_message_batch()
                .queue_url(&self.queue.queue_url)
                .set_entries(Some(entries))
                .send()
                .await
                .expect("send batch");
            assert!(out.failed().is_empty(), "{:?}", out.failed());
        }
    }

    /// (visible, in flight) messages in a queue.
    pub async fn depth(&self, url: &str) -> (u64, u64) {
        let out = self
            .sqs
            .get_queue_attributes()
            .queue_url(url)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
            .send()
            .await
            .expect("queue attributes");
        let attrs = out.attributes.unwrap_or_default();
        let get = |k: QueueAttributeName| attrs.get(&k).and_then(|v| v.parse().ok()).unwrap_or(0);
        (
            get(QueueAttributeName::ApproximateNumberOfMessages),
            get(QueueAttributeName::ApproximateNumberOfMessagesNotVisible),
        )
    }

    /// Waits until the source queue holds at least `n` visible messages (SNS and EventBridge
    /// deliver asynchronously).
    pub async fn wait_for_visible(&self, n: u64) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (visible, _) = self.depth(&self.queue.queue_url).await;
            if visible >= n {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "only {visible} of {n} messages arrived"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Bodies in the dead-letter queue (received, not deleted).
    pub async fn dead_letters(&self) -> Vec<String> {
        let out = self
            .sqs
            .receive_message()
            .queue_url(&self.queue.dead_letter_queue_url)
            .max_number_of_messages(10)
            .visibility_timeout(1)
            .wait_time_seconds(1)
            .send()
            .await
            .expect("receive dlq");
        out.messages()
            .iter()
            .filter_map(|m| m.body().map(str::to_string))
            .collect()
    }

    /// A worker configuration suited to tests: short polls, quick backoff.
    pub fn worker_config(&self) -> WorkerConfig {
        let mut c = WorkerConfig::new(self.queue.queue_url.clone());
        c.wait_time = Duration::from_secs(1);
        c.visibility_timeout = self.visibility;
        c.grace_period = Duration::from_secs(10);
        c.exit_when_idle = true;
        c.backoff_base = Duration::from_millis(50);
        c.backoff_cap = Duration::from_secs(1);
        c
    }
}

/// An in-process worker with its HTTP surface on a free port.
pub struct RunningWorker {
    /// Where /healthz, /readyz and /metrics answer.
    pub addr: SocketAddr,
    /// Cancel to stop it.
    pub shutdown: CancellationToken,
    /// Its totals when it stops.
    pub handle: tokio::task::JoinHandle<RunSummary>,
}

/// What the tests trust: real signatures, with LocalStack's certificate location allowed.
pub fn signed() -> VerifyConfig {
    VerifyConfig {
        extra_cert_url_prefixes: vec![format!("{}/_aws/sns/", endpoint())],
        ..VerifyConfig::default()
    }
}

/// For hand-made envelopes sent straight to the queue: they carry no real signature.
pub fn unsigned() -> VerifyConfig {
    VerifyConfig {
        verify_signatures: false,
        ..VerifyConfig::default()
    }
}

/// A pipeline over `store` trusting `verify`.
pub fn pipeline(store: Store, verify: VerifyConfig) -> Pipeline {
    Pipeline::new(
        store,
        Arc::new(Verifier::new(verify).expect("certificate client")),
        Arc::new(Metrics::new()),
    )
}

/// Starts the worker (and its HTTP surface) the way `mplink run` does.
pub async fn spawn_worker(
    stack: &Stack,
    store: Store,
    verify: VerifyConfig,
    config: WorkerConfig,
) -> RunningWorker {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let shutdown = CancellationToken::new();
    let sqs = stack.sqs.clone();
    let token = shutdown.clone();
    let pipeline = pipeline(store, stack.trusting(verify));
    let handle = tokio::spawn(async move {
        mplink::app::run(sqs, pipeline, config, listener, Default::default(), token).await
    });
    RunningWorker {
        addr,
        shutdown,
        handle,
    }
}

/// Runs a worker (verifying signatures) until the queue is drained and returns its totals.
pub async fn drain(stack: &Stack, store: &Store) -> RunSummary {
    let worker = spawn_worker(stack, store.clone(), signed(), stack.worker_config()).await;
    tokio::time::timeout(Duration::from_secs(60), worker.handle)
        .await
        .expect("worker drained the queue in time")
        .expect("worker task")
}

/// A plain HTTP/1.0 GET: (status code, body).
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let mut raw = String::new();
    stream.read_to_string(&mut raw).await.expect("read");
    let status = raw
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status line");
    let body = raw
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// The value of one sample in Prometheus text, e.g. `mplink_messages_total{outcome="applied"}`.
pub fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(name)
                .and_then(|rest| rest.trim().parse().ok())
        })
        .unwrap_or_else(|| panic!("metric {name} missing in:\n{text}"))
}

/// Polls `check` every 100 ms until it is true or `within` passes.
pub async fn eventually<F, Fut>(within: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A store on `db` whose connections go through a [`Proxy`] the test can cut; also returns
/// the proxy's target, to start it again on the same port.
pub async fn store_via_proxy(db: &crate::common::TestDb) -> (Store, Proxy, String) {
    let direct = url::Url::parse(db.url.expose()).expect("url");
    let target = format!(
        "{}:{}",
        direct.host_str().expect("host"),
        direct.port().unwrap_or(5432)
    );
    let proxy = Proxy::start(0, &target).await;
    let mut via_proxy = direct;
    via_proxy.set_port(Some(proxy.port)).expect("port");
    let store = Store::connect(&mplink::config::DatabaseUrl::new(via_proxy.to_string()))
        .await
        .expect("store via proxy");
    (store, proxy, target)
}

/// A TCP proxy in front of the database that a test can cut and restore.
pub struct Proxy {
    /// The port it listens on.
    pub port: u16,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Listens on `port` (0 for any) and forwards every connection to `target`.
    pub async fn start(port: u16, target: &str) -> Proxy {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("bind proxy");
        let port = listener.local_addr().expect("addr").port();
        let stop = CancellationToken::new();
        let token = stop.clone();
        let target = target.to_string();
        let task = tokio::spawn(async move {
            let conns = tokio_util::task::TaskTracker::new();
            loop {
                let accepted = tokio::select! {
                    _ = token.cancelled() => break,
                    a = listener.accept() => a,
                };
                let Ok((mut client, _)) = accepted else {
                    continue;
                };
                let target = target.clone();
                let token = token.clone();
                conns.spawn(async move {
                    let Ok(mut server) = tokio::net::TcpStream::connect(&target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = token.cancelled() => {}
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                    }
                });
            }
            conns.close();
            conns.wait().await;
        });
        Proxy { port, stop, task }
    }

    /// Refuses new connections and cuts every open one.
    pub async fn cut(self) -> u16 {
        self.stop.cancel();
        let _ = self.task.await;
        self.port
    }
}

/// A `mplink run` process: JSON logs captured to a file the test can read, killed if the
/// test ends (or panics) while it still runs.
pub struct WorkerProcess {
    child: std::process::Child,
    log: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl WorkerProcess {
    /// Starts `mplink run` on `queue_url` with `extra` flags. Unless `extra` says otherwise,
    /// signatures are not verified: envelopes sent straight to the queue carry none.
    pub fn spawn(db_url: &str, queue_url: &str, extra: &[&str]) -> WorkerProcess {
        WorkerProcess::spawn_with_env(db_url, queue_url, extra, &[])
    }

    /// As [`WorkerProcess::spawn`], with extra environment variables (they override the
    /// LocalStack defaults, e.g. `AWS_ENDPOINT_URL` through a proxy).
    pub fn spawn_with_env(
        db_url: &str,
        queue_url: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> WorkerProcess {
        let dir = tempfile::tempdir().expect("temp dir");
        let log = dir.path().join("worker.log");
        let stderr = std::fs::File::create(&log).expect("log file");
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_mplink"));
        command
            .args(["--database-url", db_url, "run", "--queue-url", queue_url])
            .args(["--http-addr", "127.0.0.1:0", "--wait-time", "1"]);
        if !extra.contains(&"--verify-signatures") {
            command.args(["--verify-signatures", "false"]);
        }
        let child = command
            .args(extra)
            .envs(binary_env())
            .env("MPLINK_LOG_FORMAT", "json")
            .env("MPLINK_LOG", "info")
            .envs(env.iter().copied())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::from(stderr))
            .spawn()
            .expect("spawn mplink run");
        WorkerProcess {
            child,
            log,
            _dir: dir,
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// True while the process has not exited.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Sends a signal by name (`TERM`, `KILL`).
    pub fn signal(&self, name: &str) {
        let status = std::process::Command::new("kill")
            .args([format!("-{name}"), self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success(), "kill -{name} failed");
    }

    /// Waits for the process to exit; fails the test after `within`.
    pub async fn wait(&mut self, within: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "mplink did not exit within {within:?}:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Every JSON log line written so far (anything else on stderr is kept as a string).
    pub fn log_lines(&self) -> Vec<serde_json::Value> {
        self.log_text()
            .lines()
            .map(|l| {
                serde_json::from_str(l).unwrap_or_else(|_| serde_json::Value::String(l.to_string()))
            })
            .collect()
    }

    /// The raw log, for failure messages.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Where its HTTP surface listens, read from the `mplink worker starting` line.
    pub async fn http_addr(&mut self) -> SocketAddr {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let found = self.log_lines().iter().find_map(|l| {
                (l["message"] == "mplink worker starting")
                    .then(|| l["http_addr"].as_str().and_then(|a| a.parse().ok()))
                    .flatten()
            });
            if let Some(addr) = found {
                return addr;
            }
            assert!(
                self.running(),
                "mplink exited at start:\n{}",
                self.log_text()
            );
            assert!(
                Instant::now() < deadline,
                "no start line:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
