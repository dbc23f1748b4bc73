//! `mplink serve` facing the internet: connections that send nothing, headers a byte at a time,
//! bodies shorter than they said, hundreds of idle sockets, and landings with fresh or repeated
//! bad tokens. Each check is run once with the protection off too, to show it can fail.

use crate::common::api::{spawn_app_with, AppConfig, TestApp, TOKEN};
use crate::common::localstack::metric;
use crate::common::*;
use mplink::api::guard::GuardConfig;
use mplink::server::ConnectionLimits;
use mplink_marketplace_double::{MarketplaceDouble, Operation};
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long a connection stayed open (`None`: still open after `give_up`), and what the
/// server sent before closing it.
struct Ending {
    after: Option<Duration>,
    answer: String,
}

/// Writes `bytes` one at a time, `every` apart (all at once when `every` is zero), then waits;
/// reports when the server closed the connection.
async fn hold(addr: SocketAddr, bytes: &[u8], every: Duration, give_up: Duration) -> Ending {
    let started = Instant::now();
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let mut answer = Vec::new();
    let mut next = 0;
    let mut buf = [0u8; 4096];
    loop {
        let left = give_up.saturating_sub(started.elapsed());
        if left.is_zero() {
            return Ending {
                after: None,
                answer: String::from_utf8_lossy(&answer).into(),
            };
        }
        if next < bytes.len() {
            let chunk = if every.is_zero() {
                &bytes[next..]
            } else {
                &bytes[next..next + 1]
            };
            if stream.write_all(chunk).await.is_err() {
                break;
            }
            next += chunk.len();
        }
        let wait = if next < bytes.len() && !every.is_zero() {
            every.min(left)
        } else {
            left
        };
        match tokio::time::timeout(wait, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => answer.extend_from_slice(&buf[..n]),
            Err(_) => {}
        }
    }
    Ending {
        after: Some(started.elapsed()),
        answer: String::from_utf8_lossy(&answer).into(),
    }
}

const HEADER: &[u8] = b"GET /healthz HTTP/1.1\r\nhost: mplink\r\nuser-agent: slow\r\n\r\n";

fn short_body() -> Vec<u8> {
    format!(
        "POST /v1/usage HTTP/1.1\r\nhost: mplink\r\nauthorization: Bearer {TOKEN}\r\n\
         content-type: application/json\r\ncontent-length: 100\r\n\r\n{{\"org_id\":"
    )
    .into_bytes()
}

async fn app_with(connections: ConnectionLimits) -> TestApp {
    spawn_app_with(
        Backend::Sqlite,
        AppConfig {
            connections,
            ..AppConfig::default()
        },
    )
    .await
}

/// The three slow clients against timeouts of one second: each is closed within it (plus
/// scheduling slack), the short body with 408 `body_timeout`. With the timeouts off the same
/// clients are still connected when the test gives up, so the check is not vacuous.
#[tokio::test]
async fn slow_clients_are_closed_within_the_timeouts() {
    let second = Duration::from_secs(1);
    let on = app_with(ConnectionLimits {
        header_timeout: Some(second),
        body_timeout: Some(second),
        ..ConnectionLimits::default()
    })
    .await;
    let off = app_with(ConnectionLimits {
        header_timeout: None,
        body_timeout: None,
        ..ConnectionLimits::default()
    })
    .await;
    let give_up = Duration::from_secs(4);
    let byte = Duration::from_millis(250);
    let body = short_body();
    for (app, closes) in [(&on, true), (&off, false)] {
        let (silent, dribble, short) = tokio::join!(
            hold(app.addr, b"", Duration::ZERO, give_up),
            hold(app.addr, HEADER, byte, give_up),
            hold(app.addr, &body, Duration::ZERO, give_up),
        );
        for (what, ending) in [
            ("silent", &silent),
            ("dribble", &dribble),
            ("short body", &short),
        ] {
            if closes {
                let after = ending
                    .after
                    .unwrap_or_else(|| panic!("{what}: still open after {give_up:?}"));
                assert!(
                    after < Duration::from_millis(2500),
                    "{what}: closed after {after:?}"
                );
            } else {
                assert_eq!(ending.after, None, "{what}: closed with the timeouts off");
            }
        }
        if closes {
            assert!(
                short.answer.starts_with("HTTP/1.1 408") && short.answer.contains("body_timeout"),
                "{}",
                short.answer
            );
        }
    }
    let metrics = on.metrics.render();
    assert!(
        metric(
            &metrics,
            "mplink_http_connections_refused_total{listener=\"api\",reason=\"header_timeout\"}"
        ) >= 2.0,
        "{metrics}"
    );
    assert!(
        metric(&metrics, "mplink_api_errors_total{code=\"body_timeout\"}") >= 1.0,
        "{metrics}"
    );
    on.stop().await;
    off.stop().await;
}

/// `/healthz` over a connection from 127.0.0.2 (another client address on the loopback).
async fn healthz_from_elsewhere(addr: SocketAddr) -> Result<u16, String> {
    let socket = tokio::net::TcpSocket::new_v4().map_err(|e| e.to_string())?;
    socket
        .bind("127.0.0.2:0".parse().expect("address"))
        .map_err(|e| e.to_string())?;
    let mut stream = tokio::time::timeout(Duration::from_secs(2), socket.connect(addr))
        .await
        .map_err(|_| "connect timed out".to_string())?
        .map_err(|e| e.to_string())?;
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: mplink\r\nconnection: close\r\n\r\n")
        .await
        .map_err(|e| e.to_string())?;
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(2), stream.read_to_string(&mut answer))
        .await
        .map_err(|_| "no answer within 2 s".to_string())?
        .map_err(|e| e.to_string())?;
    answer
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("not HTTP: {answer:?}"))
}

/// The reproduction: `mplink serve` with 256 file descriptors and 300 silent connections
/// from one address. The per-client cap refuses most of them at once, so `/healthz` from another
/// address answers 3 times out of 3; with the caps lifted to more than the descriptors, the
/// same silent connections take every descriptor and `/healthz` fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hundred_silent_connections_do_not_stop_healthz() {
    for capped in [true, false] {
        let db = TestDb::new(Backend::Sqlite).await;
        let dir = tempfile::tempdir().expect("temp dir");
        let log = dir.path().join("serve.log");
        let (total, per_client) = if capped {
            ("128", "32")
        } else {
            ("100000", "0")
        };
        let mut child = std::process::Command::new("sh")
            .args(["-c", "ulimit -n 256 && exec \"$0\" \"$@\""])
            .arg(env!("CARGO_BIN_EXE_mplink"))
            .args(["--database-url", db.url.expose(), "serve"])
            .args(["--listen", "127.0.0.1:0"])
            .args([
                "--select-organization-url",
                "https://app.example.com/select",
            ])
            .args(["--http-max-connections", total])
            .args(["--http-max-connections-per-client", per_client])
            .args(["--http-header-timeout", "30"])
            .env("MPLINK_API_TOKENS", TOKEN)
            .env("MPLINK_LOG_FORMAT", "json")
            .env_remove("MPLINK_DATABASE_URL")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log"))
            .spawn()
            .expect("spawn mplink serve");
        let addr = crate::api_cli::logged_addr(&log, "mplink API starting", "listen").await;
        let mut silent = Vec::new();
        for _ in 0..300 {
            if let Ok(s) = TcpStream::connect(addr).await {
                silent.push(s);
            }
        }
        // Give the server time to accept (or refuse) every one of them.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let mut answers = Vec::new();
        for _ in 0..3 {
            answers.push(healthz_from_elsewhere(addr).await);
        }
        if capped {
            assert_eq!(answers, vec![Ok(200), Ok(200), Ok(200)], "with the caps");
        } else {
            assert!(
                answers.iter().any(|a| a != &Ok(200)),
                "without the caps /healthz still answered: the check shows nothing: {answers:?}"
            );
        }
        drop(silent);
        let _ = child.kill();
        let _ = child.wait();
        db.cleanup().await;
    }
}

fn landing_app_config(double: &MarketplaceDouble, guards: GuardConfig) -> AppConfig {
    AppConfig {
        marketplace_endpoint: double.endpoint_url(),
        guards,
        ..AppConfig::default()
    }
}

async fn land(app: &TestApp, token: &str, client: Option<&str>) -> crate::common::api::Answer {
    let mut request = app
        .http
        .post(app.url("/marketplace/register"))
        .form(&[("x-amzn-marketplace-token", token)]);
    if let Some(client) = client {
        request = request.header("x-forwarded-for", client);
    }
    app.send(request).await
}

/// 300 landings with fresh random tokens from one address reach ResolveCustomer at most the
/// burst (10) times and the rest get the 429 page, which still tells a buyer what to do; the
/// same bad token twice reaches AWS once. Behind a proxy the bucket is the rightmost
/// X-Forwarded-For entry, which a client cannot choose.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn landings_are_rate_limited_and_refused_tokens_remembered() {
    let double = MarketplaceDouble::start("127.0.0.1:0")
        .await
        .expect("start the Marketplace double");
    let burst = 10;
    let guards = GuardConfig {
        register_burst: NonZeroU32::new(burst).expect("burst"),
        register_per_minute: NonZeroU32::new(1).expect("rate"),
        client_ip_header: Some("x-forwarded-for".parse().expect("header")),
        ..GuardConfig::default()
    };
    let app = spawn_app_with(Backend::Sqlite, landing_app_config(&double, guards)).await;
    let calls = || double.calls_of(Operation::ResolveCustomer).len();

    let mut limited = 0;
    let mut refused = 0;
    for i in 0..300 {
        // Each claims another first hop; the proxy's own entry (rightmost) is the same.
        let client = format!("10.9.{}.{}, 203.0.113.7", i / 250, i % 250);
        let token = format!("tok-random-{:016x}", rand::random::<u64>());
        let a = land(&app, &token, Some(&client)).await;
        match a.status {
            429 => {
                limited += 1;
                assert!(
                    a.text.contains(mplink::api::routes::register::TRY_AGAIN),
                    "{a:?}"
                );
            }
            403 => refused += 1,
            other => panic!("landing {i}: {other} {a:?}"),
        }
    }
    assert_eq!((refused, limited), (burst as usize, 300 - burst as usize));
    assert_eq!(calls(), burst as usize, "ResolveCustomer calls");
    let metrics = app.metrics.render();
    assert_eq!(
        metric(
            &metrics,
            "mplink_registrations_total{outcome=\"rate_limited\"}"
        ),
        (300 - burst) as f64
    );

    // Another address: the same bad token twice is one call.
    let before = calls();
    for _ in 0..2 {
        let a = land(&app, "tok-known-bad-0001", Some("198.51.100.4")).await;
        assert_eq!(a.status, 403, "{a:?}");
    }
    assert_eq!(
        calls() - before,
        1,
        "the second landing was answered from memory"
    );
    app.stop().await;

    // The memory is what saves the call: with a TTL that has passed, AWS is asked again.
    let forgetful = GuardConfig {
        refused_token_ttl: Duration::from_millis(1),
        ..GuardConfig::default()
    };
    let app = spawn_app_with(Backend::Sqlite, landing_app_config(&double, forgetful)).await;
    let before = calls();
    for _ in 0..2 {
        land(&app, "tok-known-bad-0002", None).await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(calls() - before, 2);
    app.stop().await;
}
