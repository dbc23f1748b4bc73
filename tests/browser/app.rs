//! `mplink serve --example --worker` as a child process on a free port: the API, the example
//! host and the worker in one process, on one database pool.

use crate::common::localstack::{binary_env, endpoint, Stack};
use crate::driver::free_port;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running `mplink serve --example` and its worker, killed when dropped.
pub struct Serve {
    child: Child,
    log: PathBuf,
    /// Its base URL, e.g. `http://127.0.0.1:40123`.
    pub base: String,
}

impl Serve {
    /// Starts it on `db_url`, resolving registration tokens at the double on `marketplace`,
    /// consuming `stack`'s queue, with `token` as its only API token. The log goes to `log_dir`.
    pub async fn start(
        db_url: &str,
        token: &str,
        marketplace: &str,
        stack: &Stack,
        log_dir: &Path,
    ) -> Serve {
        let port = free_port();
        let log = log_dir.join("mplink-serve.log");
        let stderr = std::fs::File::create(&log).expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_mplink"))
            .args(["--database-url", db_url, "serve"])
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--api-token", token])
            .args(["--marketplace-endpoint-url", marketplace])
            .arg("--example")
            .args(["--worker", "--queue-url", &stack.queue.queue_url])
            .args(["--http-addr", "127.0.0.1:0", "--wait-time", "1"])
            // Signatures are verified as in production; LocalStack's signing certificate and
            // its topics (in LocalStack's account) are trusted explicitly.
            .args([
                "--sns-cert-url-prefix",
                &format!("{}/_aws/sns/", endpoint()),
            ])
            .args(stack.topic_flags())
            .envs(binary_env())
            .env("MPLINK_LOG_FORMAT", "json")
            .env("MPLINK_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::from(stderr))
            .spawn()
            .expect("spawn mplink serve");
        let mut serve = Serve {
            child,
            log,
            base: format!("http://127.0.0.1:{port}"),
        };
        serve.wait_ready().await;
        serve
    }

    async fn wait_ready(&mut self) {
        let url = format!("{}/example/", self.base);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(resp) = reqwest::get(&url).await {
                if resp.status().is_success() {
                    return;
                }
            }
            if let Ok(Some(exit)) = self.child.try_wait() {
                panic!(
                    "mplink serve exited at start ({exit}):\n{}",
                    self.log_text()
                );
            }
            assert!(
                Instant::now() < deadline,
                "mplink serve did not answer {url} within 30 s:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The log so far, for failure messages.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
