//! Debian's Chromium, headless, through its WebDriver (chromedriver) on a free port.

use fantoccini::{Client, ClientBuilder, Locator};
use std::future::Future;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// `MPLINK_BROWSER_TEST=off` lets a machine without Chromium skip the browser test. Without it
/// a missing Chromium fails the test: CI installs it (scripts/chromium.sh ensure).
pub const SWITCH_ENV: &str = "MPLINK_BROWSER_TEST";
/// How long any one step may take to show up in the page.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(45);

/// Where `name` is on PATH.
fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// Whether the test may run: `Some(chromedriver)` when Chromium and its driver are installed;
/// `None` (after saying why) only when they are missing and the switch allows skipping.
/// Panics when they are missing and skipping is not allowed.
pub fn chromedriver_or_skip() -> Option<PathBuf> {
    let driver = on_path("chromedriver");
    let browser = on_path("chromium");
    if let (Some(driver), Some(_)) = (&driver, &browser) {
        return Some(driver.clone());
    }
    let missing = match (driver, browser) {
        (None, None) => "chromium and chromedriver",
        (None, Some(_)) => "chromedriver",
        _ => "chromium",
    };
    if std::env::var(SWITCH_ENV).is_ok_and(|v| v == "off") {
        eprintln!("SKIPPED: the browser test needs {missing} (not on PATH) and {SWITCH_ENV}=off allows skipping it");
        return None;
    }
    panic!(
        "the browser test needs {missing}, not found on PATH: run scripts/chromium.sh ensure \
         (or set {SWITCH_ENV}=off to skip this test on a machine without a browser)"
    );
}

/// A free TCP port on 127.0.0.1 (bound then released; the OS does not hand it out again at once).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A chromedriver process, killed when dropped.
pub struct Driver {
    child: Child,
    /// Its WebDriver URL.
    pub url: String,
    log: PathBuf,
}

impl Driver {
    /// Starts chromedriver on a free port and waits until it answers.
    pub async fn start(chromedriver: &std::path::Path, log_dir: &std::path::Path) -> Driver {
        let port = free_port();
        let log = log_dir.join("chromedriver.log");
        let child = Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .arg(format!("--log-path={}", log.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let url = format!("http://127.0.0.1:{port}");
        let mut driver = Driver { child, url, log };
        let deadline = Instant::now() + Duration::from_secs(20);
        let status = format!("{}/status", driver.url);
        loop {
            if let Ok(resp) = reqwest::get(&status).await {
                if resp.status().is_success() {
                    return driver;
                }
            }
            if let Ok(Some(exit)) = driver.child.try_wait() {
                panic!(
                    "chromedriver exited at start ({exit}):\n{}",
                    driver.log_text()
                );
            }
            assert!(
                Instant::now() < deadline,
                "chromedriver did not answer on {status} within 20 s:\n{}",
                driver.log_text()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A new headless Chromium session.
    pub async fn session(&self) -> Client {
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({
                "args": [
                    "--headless=new",
                    // Tests run as root in containers, where Chromium's sandbox cannot start.
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    "--window-size=1100,760",
                ]
            }),
        );
        ClientBuilder::rustls()
            .expect("rustls connector")
            .capabilities(caps)
            .connect(&self.url)
            .await
            .unwrap_or_else(|e| panic!("no Chromium session: {e}\n{}", self.log_text()))
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Polls `probe` every 100 ms until it returns `Some`, or fails the test with what was awaited
/// and the page's last state.
pub async fn wait_for<T, F, Fut>(client: &Client, what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + STEP_TIMEOUT;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        if Instant::now() >= deadline {
            let url = client.current_url().await.map(|u| u.to_string());
            let body = match client.find(Locator::Css("body")).await {
                Ok(body) => body.text().await.unwrap_or_default(),
                Err(e) => format!("(no body: {e})"),
            };
            panic!(
                "timed out after {STEP_TIMEOUT:?} waiting for {what}; page {url:?} shows:\n{body}"
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The visible text of the element `css`, if it is there.
pub async fn text(client: &Client, css: &str) -> Option<String> {
    client.find(Locator::Css(css)).await.ok()?.text().await.ok()
}

/// Screenshots, numbered in the order taken, in `target/browser-artifacts/<name>/`.
pub struct Artifacts {
    dir: PathBuf,
    taken: u32,
    /// The files written so far.
    pub files: Vec<PathBuf>,
}

impl Artifacts {
    /// Empties (or creates) the artifacts directory `name` (one per test).
    pub fn new(name: &str) -> Artifacts {
        // CARGO_TARGET_TMPDIR is <target>/tmp; the artifacts go next to it.
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .parent()
            .expect("target dir")
            .join("browser-artifacts")
            .join(name);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("artifacts dir");
        Artifacts {
            dir,
            taken: 0,
            files: Vec::new(),
        }
    }

    /// The directory.
    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    /// Saves a PNG of the whole window as `NN-step.png`.
    pub async fn screenshot(&mut self, client: &Client, step: &str) {
        self.taken += 1;
        let png = client.screenshot().await.expect("screenshot");
        assert!(
            png.starts_with(b"\x89PNG"),
            "the screenshot of {step} is not a PNG"
        );
        let path = self.dir.join(format!("{:02}-{step}.png", self.taken));
        std::fs::write(&path, png).expect("write screenshot");
        eprintln!("screenshot: {}", path.display());
        self.files.push(path);
    }
}
