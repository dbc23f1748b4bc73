//! `mplink healthcheck` through the binary, against mplink's own HTTP router (a SQLite store,
//! the worker's health record driven by the test) and against servers that fail in ways the
//! router cannot: nothing listening, and one that never answers.

use mplink::config::DatabaseUrl;
use mplink::consumer::Health;
use mplink::http::{router, AppState};
use mplink::metrics::Metrics;
use mplink::store::Store;
use std::net::SocketAddr;
use std::process::Output;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// Runs `mplink healthcheck ARGS` with no MPLINK_HTTP_ADDR of the caller's leaking in.
async fn healthcheck(args: &[&str]) -> Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_mplink"))
        .arg("healthcheck")
        .args(args)
        .env_remove("MPLINK_HTTP_ADDR")
        .env_remove("HTTP_PROXY")
        .env_remove("http_proxy")
        .output()
        .await
        .expect("run mplink healthcheck")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The worker's own router on a free loopback port, with the health record it reads.
async fn serve_router() -> (SocketAddr, Arc<Health>, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = DatabaseUrl::new(format!("sqlite://{}", dir.path().join("h.db").display()));
    let store = Store::open(&url).await.expect("open sqlite store");
    let health = Arc::new(Health::new());
    let state = AppState {
        store,
        metrics: Arc::new(Metrics::new()),
        health: health.clone(),
        queue_freshness: Duration::from_secs(50),
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    tokio::spawn(async move { axum::serve(listener, router(state)).await });
    (addr, health, dir)
}

#[tokio::test]
async fn exit_code_follows_readyz_and_healthz() {
    let (addr, health, _dir) = serve_router().await;
    let addr_arg = addr.to_string();

    // No receive has succeeded yet: /readyz is 503, so the check fails and says why.
    let out = healthcheck(&["--http-addr", &addr_arg]).await;
    assert_eq!(out.status.code(), Some(1), "stdout: {}", text(&out.stdout));
    let err = text(&out.stderr);
    assert!(
        err.contains("/readyz answered 503") && err.contains("queue: no recent answer"),
        "stderr names the endpoint, the status and the failing part: {err}"
    );

    // The process is alive all the same: --live asks /healthz.
    let out = healthcheck(&["--http-addr", &addr_arg, "--live"]).await;
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), "ok");

    // The queue answered: ready.
    health.receive_ok();
    let out = healthcheck(&["--http-addr", &addr_arg]).await;
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), "database: ok; queue: ok");

    // The address as the container sets it (0.0.0.0:PORT, here through the variable) is
    // asked on loopback.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_mplink"))
        .arg("healthcheck")
        .env("MPLINK_HTTP_ADDR", format!("0.0.0.0:{}", addr.port()))
        .output()
        .await
        .expect("run mplink healthcheck");
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
}

#[tokio::test]
async fn nothing_listening_fails() {
    // A port that was free a moment ago and is closed now.
    let addr = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind")
        .local_addr()
        .expect("local addr");
    let out = healthcheck(&["--http-addr", &addr.to_string()]).await;
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains(&format!("cannot reach http://{addr}/readyz")),
        "stderr: {err}"
    );
}

#[tokio::test]
async fn a_server_that_never_answers_fails_after_the_timeout() {
    // Accepts connections and reads nothing, answers nothing.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    // The outer timeout only keeps a hang from stalling the suite; the assertion is the exit code.
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        healthcheck(&["--http-addr", &addr.to_string(), "--timeout", "1"]),
    )
    .await
    .expect("mplink healthcheck hung past its --timeout");
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("cannot reach") && err.contains("timed out"),
        "stderr: {err}"
    );
}
