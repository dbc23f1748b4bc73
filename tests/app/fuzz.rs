//! Fuzzing (issue 5, scenario 8): the decoder, the SNS string to sign, the certificate URL rule
//! and the signature check, each driven by proptest for a fixed wall-clock time.
//!
//! Only the stable toolchain is assumed, so this is proptest rather than `cargo fuzz`: each
//! `fuzz_*` test draws inputs from its generators until `MPLINK_FUZZ_SECONDS` (default 5, so a
//! plain `cargo test` stays fast) have passed; `scripts/fuzz.sh [SECONDS]` runs it for longer.
//! Every input must be answered (no panic) in under [`INPUT_LIMIT`], and each target checks a
//! property of its own on top of that.
//!
//! A failing input is shrunk by proptest, written to `tests/fuzz-regressions/<target>/`, and the
//! test fails naming the file. An input that hangs is written by a watchdog, which then ends the
//! process. `replay_regressions` runs every file in those directories on every `cargo test`;
//! `tests/fuzz-regressions/README.md` describes the layout.

use std::any::Any;
use std::cell::Cell;
use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::panic::{self, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Mutex, Once, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use base64::Engine;
use mplink::event::{decode, DecodeError, Delivery, Event, InboundMessage, MAX_BODY_BYTES};
use mplink::verify::{check_cert_url, string_to_sign, SnsEnvelope, Verifier, VerifyConfig};
use proptest::prelude::*;
use proptest::sample::{select, Index};
use proptest::test_runner::{Config, TestError, TestRunner};
use rand::SeedableRng;
use rsa::{Pkcs1v15Sign, RsaPrivateKey, RsaPublicKey};
use serde_json::{json, Map, Value};

/// Seconds per target when `MPLINK_FUZZ_SECONDS` is not set.
const DEFAULT_SECONDS: f64 = 5.0;
/// Longest any single input may take (decoding a 64 KiB body takes milliseconds).
const INPUT_LIMIT: Duration = Duration::from_secs(1);
/// An input still running after this long is a hang: the watchdog saves it and ends the process.
const HANG_LIMIT: Duration = Duration::from_secs(30);
/// Longest proptest may spend shrinking a failing input.
const SHRINK_MS: u32 = 60_000;

const MSG_ID: &str = "fuzz-sqs-message";
const SENT_MS: i64 = 1_788_125_770_456;
const PRODUCT: &str = "n0123EXAMPLEXXXXXXXXXXXX";
const CUSTOMER: &str = "X01EXAMPLEX";
const AGREEMENT: &str = "agmt-4mwg1nevbokzw95eca5797ixs";
const CERT_URL: &str = "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-fuzz.pem";
const LOCAL_PREFIX: &str = "http://127.0.0.1:4566/_aws/sns/";

// ---------------------------------------------------------------------------------------------
// The fuzz targets

#[test]
fn fuzz_decode() {
    let ok = Cell::new(0u64);
    let stats = fuzz("decode", "body", decode_inputs(), decode_file, |msg| {
        let decoded = check_decode(msg)?;
        ok.set(ok.get() + u64::from(decoded));
        Ok(())
    });
    report(
        "decode",
        &stats,
        &format!("{} decoded to an event", ok.get()),
    );
}

#[test]
fn fuzz_string_to_sign() {
    let stats = fuzz(
        "string_to_sign",
        "json",
        envelopes(),
        envelope_file,
        check_string_to_sign,
    );
    report("string_to_sign", &stats, "");
}

#[test]
fn fuzz_check_cert_url() {
    let accepted = Cell::new(0u64);
    let stats = fuzz(
        "check_cert_url",
        "url",
        cert_urls(),
        |url: &String| url.as_bytes().to_vec(),
        |url| {
            accepted.set(accepted.get() + u64::from(check_cert(url)?));
            Ok(())
        },
    );
    report(
        "check_cert_url",
        &stats,
        &format!("{} accepted", accepted.get()),
    );
}

#[test]
fn fuzz_verify() {
    let (valid, passed) = (Cell::new(0u64), Cell::new(0u64));
    let stats = fuzz(
        "verify",
        "body",
        verify_inputs(),
        |body: &String| body.as_bytes().to_vec(),
        |body| {
            let (signature_ok, accepted) = check_verify(body)?;
            valid.set(valid.get() + u64::from(signature_ok));
            passed.set(passed.get() + u64::from(accepted));
            Ok(())
        },
    );
    report(
        "verify",
        &stats,
        &format!(
            "{} signatures valid, {} SNS messages accepted, all carrying a signed fact unchanged",
            valid.get(),
            passed.get()
        ),
    );
}

/// Every file under `tests/fuzz-regressions/<target>/` (seeds and saved failures) still passes.
#[test]
fn replay_regressions() {
    type Replay = fn(&[u8]) -> Result<(), String>;
    let targets: [(&str, Replay); 4] = [
        ("decode", replay_decode),
        ("string_to_sign", replay_string_to_sign),
        ("check_cert_url", replay_cert_url),
        ("verify", replay_verify),
    ];
    let mut failures = Vec::new();
    let mut counts = Vec::new();
    for (target, check) in targets {
        let files = regression_files(target);
        counts.push(format!("{target} {}", files.len()));
        for file in files {
            let bytes = fs::read(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            if let Err(why) = run_with_deadline(move || check(&bytes)) {
                failures.push(format!("{}: {why}", file.display()));
            }
        }
    }
    println!("fuzz-report replay: {}", counts.join(", "));
    assert!(
        targets
            .iter()
            .map(|(t, _)| regression_files(t).len())
            .sum::<usize>()
            > 0,
        "no regression inputs under tests/fuzz-regressions/: the replay would prove nothing"
    );
    assert!(
        failures.is_empty(),
        "{} regression input(s) fail:\n  {}",
        failures.len(),
        failures.join("\n  ")
    );
}

/// The hand-built seeds are what the generators mutate, so they had better be valid.
#[test]
fn seeds_are_valid() {
    for body in built_decode_seeds() {
        let msg = inbound(&body, Some(SENT_MS));
        if let Err(e) = decode(&msg) {
            panic!("seed does not decode: {e}\n{body}");
        }
    }
    let signed = signed();
    for body in &signed.seeds {
        let msg = inbound(body, Some(SENT_MS));
        let event = decode(&msg).unwrap_or_else(|e| panic!("signed seed: {e}\n{body}"));
        block_on(signed.verifier.verify(&msg, &event))
            .unwrap_or_else(|e| panic!("signed seed is refused: {e}\n{body}"));
    }
}

/// The size limit is exact: a valid message padded with whitespace to `MAX_BODY_BYTES` decodes as
/// before; one byte more is refused as too large.
#[test]
fn size_limit_is_exact() {
    for body in built_decode_seeds() {
        let event = decode(&inbound(&body, Some(SENT_MS))).expect("seed decodes");
        let pad = |total: usize| format!("{}{}", " ".repeat(total - body.len()), body);
        assert_eq!(
            decode(&inbound(&pad(MAX_BODY_BYTES), Some(SENT_MS))).as_ref(),
            Ok(&event)
        );
        match decode(&inbound(&pad(MAX_BODY_BYTES + 1), Some(SENT_MS))) {
            Err(DecodeError::TooLarge { size, limit, .. }) => {
                assert_eq!((size, limit), (MAX_BODY_BYTES + 1, MAX_BODY_BYTES))
            }
            other => panic!("one byte over the limit: {other:?}"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The driver: a proptest runner in a loop until the time budget is spent

struct Stats {
    inputs: u64,
    elapsed: Duration,
}

fn budget() -> Duration {
    let Ok(text) = std::env::var("MPLINK_FUZZ_SECONDS") else {
        return Duration::from_secs_f64(DEFAULT_SECONDS);
    };
    match text.trim().parse::<f64>() {
        Ok(secs) if secs.is_finite() && (0.0..1e9).contains(&secs) => Duration::from_secs_f64(secs),
        _ => panic!("MPLINK_FUZZ_SECONDS={text:?} is not a number of seconds"),
    }
}

fn report(target: &str, stats: &Stats, extra: &str) {
    let secs = stats.elapsed.as_secs_f64();
    let rate = stats.inputs as f64 / secs.max(1e-9);
    let extra = if extra.is_empty() {
        String::new()
    } else {
        format!("; {extra}")
    };
    println!(
        "fuzz-report {target}: {} inputs in {secs:.1} s ({rate:.0}/s), no failure{extra}",
        stats.inputs
    );
}

/// Runs `check` on inputs from `strategy` until the budget is spent. A failing input (an `Err`,
/// a panic, or more than [`INPUT_LIMIT`]) is shrunk, saved with `save` and reported by panicking.
fn fuzz<S>(
    target: &'static str,
    ext: &'static str,
    strategy: S,
    save: fn(&S::Value) -> Vec<u8>,
    check: impl Fn(&S::Value) -> Result<(), String>,
) -> Stats
where
    S: Strategy,
    S::Value: Clone + Send,
{
    let budget = budget();
    quiet_repeated_panics();
    PANICS.with(|seen| seen.set(Some(0)));
    let mut runner = TestRunner::new(Config {
        failure_persistence: None,
        max_shrink_time: SHRINK_MS,
        ..Config::default()
    });
    let in_flight: Mutex<Option<(Instant, S::Value)>> = Mutex::new(None);
    let done = AtomicBool::new(false);
    let inputs = Cell::new(0u64);
    let started = Instant::now();
    let test = |value: S::Value| -> Result<(), TestCaseError> {
        inputs.set(inputs.get() + 1);
        *lock(&in_flight) = Some((Instant::now(), value.clone()));
        let _disarm = Disarm(&in_flight);
        let start = Instant::now();
        let verdict = check(&value);
        let took = start.elapsed();
        verdict.map_err(TestCaseError::fail)?;
        if took > INPUT_LIMIT {
            return Err(TestCaseError::fail(format!(
                "took {took:?}, more than {INPUT_LIMIT:?}"
            )));
        }
        Ok(())
    };
    let outcome = std::thread::scope(|scope| {
        scope.spawn(|| watchdog(target, ext, &in_flight, &done, save));
        let mut outcome = Ok(());
        while started.elapsed() < budget {
            let tree = match strategy.new_tree(&mut runner) {
                Ok(tree) => tree,
                Err(reason) => {
                    outcome = Err(TestError::Abort(reason));
                    break;
                }
            };
            if let Err(e) = runner.run_one(tree, test) {
                outcome = Err(e);
                break;
            }
        }
        done.store(true, Ordering::Relaxed);
        outcome
    });
    let panics = PANICS.with(|seen| seen.replace(None)).unwrap_or(0);
    match outcome {
        Ok(()) => Stats {
            inputs: inputs.get(),
            elapsed: started.elapsed(),
        },
        Err(TestError::Abort(reason)) => panic!("fuzz {target}: the generator gave up: {reason}"),
        Err(TestError::Fail(reason, value)) => {
            let bytes = save(&value);
            let path = save_regression(target, "crash", ext, &bytes);
            panic!(
                "fuzz {target}: input failed ({} inputs run, shrinking included): {reason}\n\
                 saved as {path}\ninput: {}{}",
                inputs.get(),
                preview(&bytes),
                match panics {
                    0 | 1 => String::new(),
                    n => format!("\n({} more panics while shrinking were not printed)", n - 1),
                }
            );
        }
    }
}

thread_local! {
    /// Panics seen on this thread while it fuzzes; `None` when it is not fuzzing.
    static PANICS: Cell<Option<u64>> = const { Cell::new(None) };
}

/// While a thread fuzzes, prints only its first panic: shrinking a panicking input panics again
/// at every step, and the one that matters is reported at the end with the input.
fn quiet_repeated_panics() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let default = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            let first = PANICS.with(|seen| match seen.get() {
                None => true,
                Some(n) => {
                    seen.set(Some(n + 1));
                    n == 0
                }
            });
            if first {
                default(info);
            }
        }));
    });
}

/// Clears the in-flight input when the check returns or panics.
struct Disarm<'a, V>(&'a Mutex<Option<(Instant, V)>>);

impl<V> Drop for Disarm<'_, V> {
    fn drop(&mut self) {
        *lock(self.0) = None;
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Saves an input that has run for longer than [`HANG_LIMIT`] and ends the process: a hung
/// thread cannot be stopped, and the test would otherwise never report.
fn watchdog<V>(
    target: &str,
    ext: &str,
    in_flight: &Mutex<Option<(Instant, V)>>,
    done: &AtomicBool,
    save: fn(&V) -> Vec<u8>,
) {
    while !done.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(50));
        let guard = lock(in_flight);
        if let Some((since, value)) = guard.as_ref() {
            if since.elapsed() > HANG_LIMIT {
                let bytes = save(value);
                let path = save_regression(target, "hang", ext, &bytes);
                // Straight to the process's stderr: the harness captures `eprintln!` of a
                // test's threads and would drop it at the exit below.
                let _ = writeln!(
                    std::io::stderr(),
                    "fuzz {target}: input still running after {HANG_LIMIT:?}: saved as {path}\n\
                     input: {}",
                    preview(&bytes)
                );
                std::process::exit(101);
            }
        }
    }
}

/// Runs one replayed input on its own thread: a panic, an `Err`, more than [`INPUT_LIMIT`] or a
/// hang (reported after [`HANG_LIMIT`], the thread left behind) all come back as `Err`.
fn run_with_deadline(
    check: impl FnOnce() -> Result<(), String> + Send + 'static,
) -> Result<(), String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let start = Instant::now();
        let outcome = panic::catch_unwind(AssertUnwindSafe(check));
        let _ = tx.send((outcome, start.elapsed()));
    });
    match rx.recv_timeout(HANG_LIMIT) {
        Ok((Ok(Ok(())), took)) if took <= INPUT_LIMIT => Ok(()),
        Ok((Ok(Ok(())), took)) => Err(format!("took {took:?}, more than {INPUT_LIMIT:?}")),
        Ok((Ok(Err(why)), _)) => Err(why),
        Ok((Err(payload), _)) => Err(format!("panicked: {}", panic_text(&*payload))),
        Err(_) => Err(format!("still running after {HANG_LIMIT:?}")),
    }
}

fn panic_text(payload: &(dyn Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(non-string panic payload)".into())
}

fn ensure(condition: bool, why: impl FnOnce() -> String) -> Result<(), String> {
    if condition {
        Ok(())
    } else {
        Err(why())
    }
}

// ---------------------------------------------------------------------------------------------
// Regression files

fn regression_dir(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fuzz-regressions")
        .join(target)
}

/// The input files of a target, sorted; README files and dotfiles are not inputs.
fn regression_files(target: &str) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(regression_dir(target)) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| path.is_file())
        .filter(|path| {
            let name = path.file_name().unwrap_or_default().to_string_lossy();
            !name.starts_with('.') && !name.to_ascii_lowercase().starts_with("readme")
        })
        .collect();
    files.sort();
    files
}

/// Writes `bytes` as `<kind>-<hash>.<ext>` under the target's directory and returns the path
/// (or why it could not be written, which is reported instead).
fn save_regression(target: &str, kind: &str, ext: &str, bytes: &[u8]) -> String {
    let dir = regression_dir(target);
    let path = dir.join(format!("{kind}-{:016x}.{ext}", fnv1a(bytes)));
    match fs::create_dir_all(&dir).and_then(|()| fs::write(&path, bytes)) {
        Ok(()) => path.display().to_string(),
        Err(e) => format!("(could not write {}: {e})", path.display()),
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn preview(bytes: &[u8]) -> String {
    const SHOWN: usize = 800;
    let text = String::from_utf8_lossy(bytes);
    let shown: String = text.chars().take(SHOWN).collect();
    if shown.len() < text.len() {
        format!("{shown:?}… ({} bytes in all)", bytes.len())
    } else {
        format!("{shown:?}")
    }
}

fn decode_file(msg: &InboundMessage) -> Vec<u8> {
    msg.body.clone().into_bytes()
}

/// The envelope as the JSON an SNS notification would carry (and `SnsEnvelope` reads back).
fn envelope_file(env: &SnsEnvelope) -> Vec<u8> {
    let mut object = Map::new();
    let mut put = |name: &str, value: &Option<String>| {
        if let Some(value) = value {
            object.insert(name.to_owned(), Value::String(value.clone()));
        }
    };
    put("Type", &Some(env.kind.clone()));
    put("MessageId", &Some(env.message_id.clone()));
    put("TopicArn", &Some(env.topic_arn.clone()));
    put("Subject", &env.subject);
    put("Message", &Some(env.message.clone()));
    put("Timestamp", &Some(env.timestamp.clone()));
    put("SignatureVersion", &env.signature_version);
    put("Signature", &env.signature);
    put("SigningCertURL", &env.signing_cert_url);
    serde_json::to_vec_pretty(&Value::Object(object)).expect("JSON")
}

/// A decode regression is a body; it is replayed with and without a `SentTimestamp`.
fn replay_decode(bytes: &[u8]) -> Result<(), String> {
    let body = String::from_utf8_lossy(bytes);
    for sent in [None, Some(SENT_MS), Some(0), Some(i64::MIN), Some(i64::MAX)] {
        check_decode(&inbound(&body, sent))
            .map_err(|why| format!("SentTimestamp {sent:?}: {why}"))?;
    }
    Ok(())
}

fn replay_string_to_sign(bytes: &[u8]) -> Result<(), String> {
    let env: SnsEnvelope = serde_json::from_slice(bytes)
        .map_err(|e| format!("not an SNS envelope JSON object: {e}"))?;
    check_string_to_sign(&env)
}

fn replay_cert_url(bytes: &[u8]) -> Result<(), String> {
    check_cert(&String::from_utf8_lossy(bytes)).map(|_| ())
}

fn replay_verify(bytes: &[u8]) -> Result<(), String> {
    check_verify(&String::from_utf8_lossy(bytes)).map(|_| ())
}

// ---------------------------------------------------------------------------------------------
// Checks: what must hold for every input

fn inbound(body: &str, sent: Option<i64>) -> InboundMessage {
    InboundMessage {
        message_id: MSG_ID.to_owned(),
        body: body.to_owned(),
        sent_timestamp_ms: sent,
    }
}

/// `decode` answers, and its answer is consistent with the input; true when it decoded.
fn check_decode(msg: &InboundMessage) -> Result<bool, String> {
    let too_large = msg.body.len() > MAX_BODY_BYTES;
    match decode(msg) {
        Ok(event) => {
            ensure(!too_large, || {
                format!("accepted a {} byte body", msg.body.len())
            })?;
            ensure(event.sqs_message_id == msg.message_id, || {
                format!("event names SQS message {:?}", event.sqs_message_id)
            })?;
            if event.delivery == Delivery::Raw {
                ensure(Some(event.time_ms) == msg.sent_timestamp_ms, || {
                    format!("raw event time {} is not the SentTimestamp", event.time_ms)
                })?;
            }
            ensure(!event.action.name().is_empty(), || {
                "empty action name".into()
            })?;
            ensure(event.subject.as_key().contains(':'), || {
                format!("subject key {:?}", event.subject.as_key())
            })?;
            Ok(true)
        }
        Err(e) => {
            ensure(e.message_id() == msg.message_id, || {
                format!("error names message {:?}: {e}", e.message_id())
            })?;
            ensure(
                matches!(e, DecodeError::TooLarge { .. }) == too_large,
                || format!("{} byte body: {e:?}", msg.body.len()),
            )?;
            let echoed = match &e {
                DecodeError::InvalidValue { value, .. } => Some(value),
                DecodeError::UnknownAction { action, .. } => Some(action),
                DecodeError::UnknownDetailType { detail_type, .. } => Some(detail_type),
                DecodeError::NotANotification { kind, .. } => Some(kind),
                _ => None,
            };
            if let Some(echoed) = echoed {
                ensure(echoed.chars().count() <= 100, || {
                    format!("echoes {} chars of the body", echoed.chars().count())
                })?;
            }
            // Errors go to logs and the event log: what they copy from the body is capped.
            let text = e.to_string();
            ensure(!e.reason().is_empty() && !text.is_empty(), || {
                "empty error".into()
            })?;
            ensure(text.len() <= 2048 + msg.message_id.len(), || {
                format!("a {} byte error message", text.len())
            })?;
            Ok(false)
        }
    }
}

/// `string_to_sign` is exactly the documented `name\nvalue\n` sequence.
fn check_string_to_sign(env: &SnsEnvelope) -> Result<(), String> {
    let out = string_to_sign(env);
    // Written out independently of the crate: Subject only when present; nothing else counts.
    let mut expected = String::new();
    expected += "Message\n";
    expected += &env.message;
    expected += "\nMessageId\n";
    expected += &env.message_id;
    expected += "\n";
    if let Some(subject) = &env.subject {
        expected += "Subject\n";
        expected += subject;
        expected += "\n";
    }
    expected += "Timestamp\n";
    expected += &env.timestamp;
    expected += "\nTopicArn\n";
    expected += &env.topic_arn;
    expected += "\nType\n";
    expected += &env.kind;
    expected += "\n";
    ensure(out == expected, || {
        format!("got {out:?}\nexpected {expected:?}")
    })?;
    ensure(out.starts_with("Message\n"), || {
        "does not start with Message".into()
    })?;
    ensure(out.ends_with(&format!("Type\n{}\n", env.kind)), || {
        "does not end with the Type".into()
    })?;
    // "Subject" can only come from the Subject field name or from inside a value (a value is
    // followed by a newline, and the word has none), so with no value containing it the line is
    // there exactly when the field is.
    let values = [
        &env.message,
        &env.message_id,
        &env.timestamp,
        &env.topic_arn,
        &env.kind,
    ];
    let in_values = values.iter().any(|v| v.contains("Subject"))
        || env
            .subject
            .as_deref()
            .is_some_and(|s| s.contains("Subject"));
    if !in_values {
        ensure(out.contains("\nSubject\n") == env.subject.is_some(), || {
            format!("Subject line present: {}", out.contains("\nSubject\n"))
        })?;
    }
    Ok(())
}

/// `check_cert_url` answers, and what it accepts follows the rule; true when accepted.
fn check_cert(url: &str) -> Result<bool, String> {
    let mut accepted = false;
    if let Ok(parsed) = check_cert_url(url, &[]) {
        accepted = true;
        aws_rule(&parsed)?;
        // What was accepted is accepted again in its normal form.
        let again = check_cert_url(parsed.as_str(), &[])
            .map_err(|e| format!("normal form {:?} refused: {e}", parsed.as_str()))?;
        ensure(again == parsed, || format!("normal form changed: {again}"))?;
    }
    let prefixes = vec![LOCAL_PREFIX.to_string()];
    if let Ok(parsed) = check_cert_url(url, &prefixes) {
        ensure(aws_rule(&parsed).is_ok() || local_rule(&parsed), || {
            format!("accepted {:?} under prefix {LOCAL_PREFIX}", parsed.as_str())
        })?;
    }
    Ok(accepted)
}

/// `https://sns.<region>.amazonaws.com[.cn]/….pem`, no credentials, the default port.
fn aws_rule(url: &url::Url) -> Result<(), String> {
    let bad = |why: &str| Err(format!("accepted {:?}: {why}", url.as_str()));
    if url.scheme() != "https" {
        return bad("not https");
    }
    if !url.username().is_empty() || url.password().is_some() {
        return bad("credentials");
    }
    if url.port_or_known_default() != Some(443) {
        return bad("port");
    }
    let Some(url::Host::Domain(host)) = url.host() else {
        return bad("host is not a domain name");
    };
    let region = host.strip_prefix("sns.").and_then(|rest| {
        rest.strip_suffix(".amazonaws.com")
            .or_else(|| rest.strip_suffix(".amazonaws.com.cn"))
    });
    match region {
        Some(r)
            if !r.is_empty()
                && r.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-') => {}
        _ => return bad("host is not sns.<region>.amazonaws.com[.cn]"),
    }
    if !url.path().ends_with(".pem") {
        return bad("path does not end in .pem");
    }
    Ok(())
}

fn local_rule(url: &url::Url) -> bool {
    url.scheme() == "http"
        && url.host_str() == Some("127.0.0.1")
        && url.port_or_known_default() == Some(4566)
        && url.username().is_empty()
        && url.password().is_none()
        && url.path().starts_with("/_aws/sns/")
}

/// Nothing but a signed fact gets through: a signature is only valid for a string to sign that
/// was signed, and an SNS message the verifier accepts decodes to exactly the signed event.
/// Returns whether the signature was valid and whether the verifier accepted an SNS message.
fn check_verify(body: &str) -> Result<(bool, bool), String> {
    let signed = signed();
    let msg = inbound(body, Some(SENT_MS));
    let envelope = serde_json::from_str::<SnsEnvelope>(body).ok();
    let mut signature_ok = false;
    if let Some(env) = &envelope {
        check_string_to_sign(env)?;
        if block_on(signed.verifier.check_signature(env)).is_ok() {
            ensure(signed.events.contains_key(&string_to_sign(env)), || {
                format!(
                    "signature accepted for an unsigned text {:?}",
                    string_to_sign(env)
                )
            })?;
            signature_ok = true;
        }
    }
    let Ok(event) = decode(&msg) else {
        return Ok((signature_ok, false));
    };
    if block_on(signed.verifier.verify(&msg, &event)).is_err()
        || event.delivery != Delivery::SnsEnvelope
    {
        return Ok((signature_ok, false));
    }
    let Some(env) = &envelope else {
        return Err("accepted an SNS message whose envelope does not parse".into());
    };
    ensure(signature_ok, || {
        "accepted an SNS message with a bad signature".into()
    })?;
    let expected = &signed.events[&string_to_sign(env)];
    ensure(&event == expected, || {
        format!("accepted {event:?}\nbut what was signed is {expected:?}")
    })?;
    Ok((signature_ok, true))
}

fn block_on<F: std::future::Future>(future: F) -> F::Output {
    thread_local! {
        static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
    }
    RUNTIME.with(|rt| rt.block_on(future))
}

// ---------------------------------------------------------------------------------------------
// Seeds: valid messages of every shape

fn sub_topic() -> String {
    format!("arn:aws:sns:us-east-1:287250355862:aws-mp-subscription-notification-{PRODUCT}")
}

fn ent_topic() -> String {
    format!("arn:aws:sns:us-east-1:287250355862:aws-mp-entitlement-notification-{PRODUCT}")
}

fn marketplace(action: &str, camel: bool) -> Value {
    if camel {
        json!({"action": action, "CustomerIdentifier": CUSTOMER, "ProductCode": PRODUCT})
    } else {
        json!({
            "action": action,
            "customer-identifier": CUSTOMER,
            "product-code": PRODUCT,
            "offer-identifier": "offer-abcexample123",
            "isFreeTrialTermPresent": "true",
        })
    }
}

fn sns(action: &str, n: u32, subject: Option<&str>, camel: bool) -> Value {
    let topic = if action == "entitlement-updated" {
        ent_topic()
    } else {
        sub_topic()
    };
    let mut env = json!({
        "Type": "Notification",
        "MessageId": format!("9f4c1a6e-2b7d-5e0f-8a3c-1d2e3f4a5b{n:02}"),
        "TopicArn": topic,
        "Message": marketplace(action, camel).to_string(),
        "Timestamp": format!("2026-08-30T21:36:{:02}.123Z", n % 60),
        "SigningCertURL": CERT_URL,
        "UnsubscribeURL": "https://sns.us-east-1.amazonaws.com/?Action=Unsubscribe&SubscriptionArn=x",
    });
    if let Some(subject) = subject {
        env["Subject"] = json!(subject);
    }
    env
}

fn eventbridge(detail_type: &str, agreement: Value, extra: Value) -> Value {
    let mut detail = json!({
        "requestId": "3d4c9f9b-b809-4f5e-9fac-a9ae98b05c01",
        "catalog": "AWSMarketplace",
        "agreement": agreement,
        "acceptor": {"accountId": "845735284135"},
        "proposer": {"accountId": "123456512334"},
        "offer": {"id": "offer-1234567890123"},
    });
    if let (Some(detail), Value::Object(extra)) = (detail.as_object_mut(), extra) {
        detail.extend(extra);
    }
    json!({
        "version": "0",
        "id": format!("d5a3f8e1-6b2c-4d9e-a7f0-{:012x}", fnv1a(detail_type.as_bytes()) >> 16),
        "detail-type": detail_type,
        "source": "aws.agreement-marketplace",
        "account": "123456512334",
        "time": "2026-08-30T21:36:03Z",
        "region": "us-east-1",
        "resources": [format!("arn:aws:aws-marketplace::aws:agreement:{AGREEMENT}")],
        "detail": detail,
    })
}

/// Valid messages of each delivery and kind, built here (each must decode: `seeds_are_valid`).
fn built_decode_seeds() -> Vec<String> {
    let mut seeds = Vec::new();
    let actions = [
        "subscribe-success",
        "subscribe-fail",
        "unsubscribe-pending",
        "unsubscribe-success",
        "entitlement-updated",
    ];
    for (n, action) in actions.iter().enumerate() {
        let n = n as u32;
        seeds.push(sns(action, n, None, false).to_string());
        seeds.push(marketplace(action, n % 2 == 1).to_string());
    }
    seeds.push(
        sns(
            "subscribe-success",
            7,
            Some("AWS Notification Message"),
            true,
        )
        .to_string(),
    );
    let license = json!({
        "product": {"code": "aw4fgf5tyo5w2ap6fEXAMPLE", "id": "prod-qtwveEXAMPLE"},
        "license": {"arn": "arn:aws:license-manager::123456789012:license:l-e52ca6f38bf84d0fafb8802ca15ac11x"},
    });
    let events = [
        (
            "Purchase Agreement Created - Proposer",
            json!({"id": AGREEMENT, "intent": "NEW", "status": "ACTIVE"}),
            json!({}),
        ),
        (
            "Purchase Agreement Created - Manufacturer",
            json!({"id": AGREEMENT, "intent": "RENEW", "previousAgreementId": "agmt-7rpvl2j4k9q1x0z3w5y8u6t2s"}),
            json!({}),
        ),
        (
            "Purchase Agreement Created - Proposer",
            json!({"id": AGREEMENT, "intent": "REPLACE"}),
            json!({}),
        ),
        (
            "Purchase Agreement Amended - Manufacturer",
            json!({"id": AGREEMENT}),
            json!({}),
        ),
        (
            "Purchase Agreement Ended - Proposer",
            json!({"id": AGREEMENT, "status": "CANCELLED"}),
            json!({}),
        ),
        (
            "Purchase Agreement Ended - Manufacturer",
            json!({"id": AGREEMENT, "status": "REPLACED"}),
            json!({}),
        ),
        (
            "Purchase Agreement Ended - Proposer",
            json!({"id": AGREEMENT, "status": "EXPIRED"}),
            json!({}),
        ),
        // The agreement id only in `resources`.
        (
            "Purchase Agreement Amended - Proposer",
            json!({}),
            json!({}),
        ),
        (
            "License Updated - Manufacturer",
            json!({"id": AGREEMENT}),
            license.clone(),
        ),
        (
            "License Deprovisioned - Manufacturer",
            json!({"id": AGREEMENT}),
            license,
        ),
    ];
    for (detail_type, agreement, extra) in events {
        seeds.push(eventbridge(detail_type, agreement, extra).to_string());
    }
    // One pretty-printed, as a person or another tool might send it.
    seeds.push(
        serde_json::to_string_pretty(&sns("unsubscribe-pending", 9, None, false)).expect("JSON"),
    );
    seeds
}

/// The built seeds and, when present, every JSON file under `tests/fixtures/events/`.
fn decode_seeds() -> &'static [String] {
    static SEEDS: OnceLock<Vec<String>> = OnceLock::new();
    SEEDS.get_or_init(|| {
        let mut seeds = built_decode_seeds();
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/events");
        for dir in [dir.clone(), dir.join("invalid")] {
            let mut files: Vec<PathBuf> = fs::read_dir(&dir)
                .into_iter()
                .flatten()
                .filter_map(Result::ok)
                .map(|entry| entry.path())
                .filter(|path| path.extension().is_some_and(|ext| ext == "json"))
                .collect();
            files.sort();
            seeds.extend(
                files
                    .iter()
                    .filter_map(|path| fs::read_to_string(path).ok()),
            );
        }
        seeds
    })
}

/// Signed SNS envelopes, the verifier that knows their key, and the event each one states.
struct Signed {
    verifier: Verifier,
    seeds: Vec<String>,
    /// String to sign → the event its message decodes to.
    events: HashMap<String, Event>,
}

fn signed() -> &'static Signed {
    static SIGNED: OnceLock<Signed> = OnceLock::new();
    SIGNED.get_or_init(|| {
        let mut rng = rand::rngs::StdRng::seed_from_u64(0xf022_0005);
        let key = RsaPrivateKey::new(&mut rng, 1024).expect("key");
        let verifier = Verifier::with_keys(
            VerifyConfig::default(),
            HashMap::from([(CERT_URL.to_string(), RsaPublicKey::from(&key))]),
        );
        let cases = [
            ("subscribe-success", None, "1"),
            ("unsubscribe-pending", Some("AWS Notification Message"), "2"),
            ("entitlement-updated", None, "2"),
            ("subscribe-fail", Some("line\nbreak"), "1"),
            ("unsubscribe-success", Some(""), "1"),
        ];
        let mut seeds = Vec::new();
        let mut events = HashMap::new();
        for (n, (action, subject, version)) in cases.into_iter().enumerate() {
            let mut env = sns(action, 20 + n as u32, subject, n == 2);
            let parsed: SnsEnvelope = serde_json::from_value(env.clone()).expect("envelope");
            let text = string_to_sign(&parsed);
            let signature = match version {
                "1" => {
                    use sha1::Digest;
                    let digest = sha1::Sha1::digest(text.as_bytes());
                    key.sign(Pkcs1v15Sign::new::<sha1::Sha1>(), &digest)
                }
                _ => {
                    use sha2::Digest;
                    let digest = sha2::Sha256::digest(text.as_bytes());
                    key.sign(Pkcs1v15Sign::new::<sha2::Sha256>(), &digest)
                }
            }
            .expect("sign");
            env["SignatureVersion"] = json!(version);
            env["Signature"] = json!(base64::engine::general_purpose::STANDARD.encode(signature));
            let body = env.to_string();
            let event = decode(&inbound(&body, Some(SENT_MS))).expect("signed seed decodes");
            events.insert(text, event);
            seeds.push(body);
        }
        Signed {
            verifier,
            seeds,
            events,
        }
    })
}

// ---------------------------------------------------------------------------------------------
// Generators: raw bytes and text

fn sent_timestamp() -> impl Strategy<Value = Option<i64>> {
    prop_oneof![Just(None), Just(Some(SENT_MS)), any::<i64>().prop_map(Some)]
}

fn lossy_bytes(max: usize) -> impl Strategy<Value = String> {
    prop::collection::vec(any::<u8>(), 0..max)
        .prop_map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
}

fn any_text(max: usize) -> impl Strategy<Value = String> {
    prop::collection::vec(any::<char>(), 0..max).prop_map(String::from_iter)
}

/// Pieces of JSON and of marketplace messages, for splicing.
const TOKENS: &[&str] = &[
    "{",
    "}",
    "[",
    "]",
    ":",
    ",",
    "\"",
    "\\",
    " ",
    "\n",
    "\t",
    "null",
    "true",
    "false",
    "0",
    "-",
    "1e999999",
    "-1e-999999",
    "18446744073709551616",
    "-9223372036854775809",
    "1.5",
    "NaN",
    "\"\\ud800\"",
    "\\ud800",
    "\\udc00",
    "\\u0000",
    "\\u",
    "\\x41",
    "\"\"",
    "{}",
    "[]",
    "\"Type\"",
    "\"Notification\"",
    "\"Message\"",
    "\"MessageId\"",
    "\"TopicArn\"",
    "\"Timestamp\"",
    "\"action\"",
    "\"subscribe-success\"",
    "\"customer-identifier\"",
    "\"product-code\"",
    "\"detail-type\"",
    "\"detail\"",
    "\"agreement\"",
    "\"id\"",
    "\"status\"",
    "\"intent\"",
    "\"resources\"",
    "\"time\"",
    "\"license\"",
    "\"arn\"",
    "\"Purchase Agreement Created - Proposer\"",
    "\"License Updated - Manufacturer\"",
    "\"2026-08-30T21:36:03Z\"",
    "\"arn:aws:aws-marketplace::aws:agreement:\"",
    "\u{feff}",
    "\u{0}",
    "é",
    "\u{10ffff}",
    "\u{2028}",
    "𝄞",
    "\u{fffd}",
];

fn json_soup() -> impl Strategy<Value = String> {
    prop::collection::vec(select(TOKENS), 0..120).prop_map(|tokens| tokens.concat())
}

/// A few bytes to splice in: a token, random bytes (invalid UTF-8 included), or one char.
fn fragment() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => select(TOKENS).prop_map(|t| t.as_bytes().to_vec()),
        2 => prop::collection::vec(any::<u8>(), 1..8),
        1 => any::<char>().prop_map(|c| c.to_string().into_bytes()),
    ]
}

/// A byte-level edit; positions are `Index`es so they fit any length.
#[derive(Debug, Clone)]
enum Edit {
    Insert(Index, Vec<u8>),
    Overwrite(Index, Vec<u8>),
    Delete(Index, usize),
    Flip(Index, u8),
    Truncate(Index),
    Duplicate(Index, usize, Index),
}

fn edits(max: usize) -> impl Strategy<Value = Vec<Edit>> {
    let edit = prop_oneof![
        3 => (any::<Index>(), fragment()).prop_map(|(at, b)| Edit::Insert(at, b)),
        2 => (any::<Index>(), fragment()).prop_map(|(at, b)| Edit::Overwrite(at, b)),
        2 => (any::<Index>(), 1usize..24).prop_map(|(at, n)| Edit::Delete(at, n)),
        2 => (any::<Index>(), 1u8..=255).prop_map(|(at, mask)| Edit::Flip(at, mask)),
        1 => any::<Index>().prop_map(Edit::Truncate),
        1 => (any::<Index>(), 1usize..64, any::<Index>())
            .prop_map(|(from, n, to)| Edit::Duplicate(from, n, to)),
    ];
    prop::collection::vec(edit, 1..max)
}

fn apply_edits(text: &str, edits: &[Edit]) -> String {
    let mut bytes = text.as_bytes().to_vec();
    for edit in edits {
        let at = |i: &Index, len: usize| i.index(len + 1);
        match edit {
            Edit::Insert(i, b) => {
                let at = at(i, bytes.len());
                bytes.splice(at..at, b.iter().copied());
            }
            Edit::Overwrite(i, b) => {
                let at = at(i, bytes.len());
                let end = (at + b.len()).min(bytes.len());
                bytes.splice(at..end, b.iter().copied());
            }
            Edit::Delete(i, n) => {
                let at = at(i, bytes.len());
                let end = (at + n).min(bytes.len());
                bytes.drain(at..end);
            }
            Edit::Flip(i, mask) => {
                if !bytes.is_empty() {
                    let at = i.index(bytes.len());
                    bytes[at] ^= mask;
                }
            }
            Edit::Truncate(i) => {
                let at = at(i, bytes.len());
                bytes.truncate(at);
            }
            Edit::Duplicate(from, n, to) => {
                let from = at(from, bytes.len());
                let end = (from + n).min(bytes.len());
                let copy = bytes[from..end].to_vec();
                let to = at(to, bytes.len());
                bytes.splice(to..to, copy);
            }
        }
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

// ---------------------------------------------------------------------------------------------
// Generators: structured messages

fn pick<'a>(seeds: &'a [String], index: &Index) -> &'a str {
    &seeds[index.index(seeds.len())]
}

/// An SNS envelope's `Message` parsed, when there is one that is JSON.
fn inner_message(outer: &Value) -> Option<Value> {
    outer
        .get("Message")
        .and_then(Value::as_str)
        .and_then(|m| serde_json::from_str(m).ok())
}

/// Applies `change` to the seed's text, or with `inner` to its SNS `Message` text (kept a
/// properly escaped string, so the envelope stays valid and only the message is broken).
fn change_text(seed: &str, inner: bool, change: impl FnOnce(&str) -> String) -> String {
    if inner {
        if let Ok(mut outer) = serde_json::from_str::<Value>(seed) {
            if let Some(message) = outer.get("Message").and_then(Value::as_str) {
                let changed = change(message);
                outer["Message"] = Value::String(changed);
                return outer.to_string();
            }
        }
    }
    change(seed)
}

/// Applies `change` to the seed's JSON tree, or with `inner` to its SNS `Message` tree.
fn change_tree(seed: &str, inner: bool, change: impl FnOnce(&mut Value)) -> String {
    let Ok(mut outer) = serde_json::from_str::<Value>(seed) else {
        return seed.to_owned();
    };
    if inner {
        if let Some(mut message) = inner_message(&outer) {
            change(&mut message);
            outer["Message"] = Value::String(message.to_string());
            return outer.to_string();
        }
    }
    change(&mut outer);
    outer.to_string()
}

/// JSON pointers of every node of `value`, the root ("") first.
fn pointers(value: &Value, at: &str, out: &mut Vec<String>) {
    out.push(at.to_owned());
    match value {
        Value::Object(map) => {
            for (key, child) in map {
                let key = key.replace('~', "~0").replace('/', "~1");
                pointers(child, &format!("{at}/{key}"), out);
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                pointers(child, &format!("{at}/{i}"), out);
            }
        }
        _ => {}
    }
}

fn pick_pointer(root: &Value, index: &Index) -> String {
    let mut all = Vec::new();
    pointers(root, "", &mut all);
    all.swap_remove(index.index(all.len()))
}

#[derive(Debug, Clone)]
enum TreeEdit {
    Remove(Index),
    Replace(Index, Value),
    Insert(Index, String, Value),
}

fn apply_tree_edit(root: &mut Value, edit: &TreeEdit) {
    match edit {
        TreeEdit::Remove(i) => {
            let pointer = pick_pointer(root, i);
            let Some((parent, last)) = pointer.rsplit_once('/') else {
                return;
            };
            let last = last.replace("~1", "/").replace("~0", "~");
            match root.pointer_mut(parent) {
                Some(Value::Object(map)) => {
                    map.remove(&last);
                }
                Some(Value::Array(items)) => {
                    if let Ok(i) = last.parse::<usize>() {
                        if i < items.len() {
                            items.remove(i);
                        }
                    }
                }
                _ => {}
            }
        }
        TreeEdit::Replace(i, new) => {
            let pointer = pick_pointer(root, i);
            if let Some(node) = root.pointer_mut(&pointer) {
                *node = new.clone();
            }
        }
        TreeEdit::Insert(i, key, new) => {
            let pointer = pick_pointer(root, i);
            match root.pointer_mut(&pointer) {
                Some(Value::Object(map)) => {
                    map.insert(key.clone(), new.clone());
                }
                Some(Value::Array(items)) => items.push(new.clone()),
                _ => {}
            }
        }
    }
}

/// Keys the decoder looks at, and a few it does not.
const KEYS: &[&str] = &[
    "Type",
    "MessageId",
    "TopicArn",
    "Message",
    "Timestamp",
    "Subject",
    "Signature",
    "SignatureVersion",
    "SigningCertURL",
    "action",
    "customer-identifier",
    "CustomerIdentifier",
    "product-code",
    "ProductCode",
    "offer-identifier",
    "id",
    "detail-type",
    "detail",
    "time",
    "source",
    "resources",
    "agreement",
    "intent",
    "status",
    "previousAgreementId",
    "acceptor",
    "accountId",
    "offer",
    "product",
    "code",
    "license",
    "arn",
    "",
    "\u{0}",
    "type",
];

/// Values the decoder gives meaning to, and ones near them.
const WORDS: &[&str] = &[
    "",
    " ",
    "Notification",
    "SubscriptionConfirmation",
    "notification",
    "subscribe-success",
    "subscribe-fail",
    "unsubscribe-pending",
    "unsubscribe-success",
    "entitlement-updated",
    "Purchase Agreement Created - Proposer",
    "Purchase Agreement Ended - Manufacturer",
    "License Deprovisioned - Manufacturer",
    "License Updated - Proposer",
    "NEW",
    "RENEW",
    "REPLACE",
    "new",
    "CANCELLED",
    "EXPIRED",
    "TERMINATED",
    "RENEWED",
    "REPLACED",
    "ACTIVE",
    "aws.agreement-marketplace",
    "2026-08-30T21:36:03Z",
    "2026-08-30T21:36:03.123456789Z",
    "0000-01-01T00:00:00+23:59",
    "9999-12-31T23:59:60.999999999-23:59",
    "2026-02-30T00:00:00Z",
    "2026-08-30 21:36:03Z",
    "+275760-09-13T00:00:00Z",
    "arn:aws:aws-marketplace::aws:agreement:",
    "arn:aws:aws-marketplace::aws:agreement:agmt-1",
    "agreement:agreement:",
    ":agreement:",
    "\u{0}",
    "\u{feff}",
    "\u{10ffff}",
    "é",
    "𝄞",
    "\n",
    "\"",
    "\\",
    "null",
    "{}",
    "[]",
    "{\"action\":\"subscribe-success\"}",
];

fn timestamp_text() -> impl Strategy<Value = String> {
    "[0-9+-]{0,7}-[0-9]{1,2}-[0-9]{1,2}[Tt ][0-9]{1,2}:[0-9]{1,2}:[0-9]{1,2}(\\.[0-9]{0,12})?([Zz]|[+-][0-9]{2}:?[0-9]{2})?"
}

fn word() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => select(WORDS).prop_map(str::to_owned),
        2 => any_text(24),
        1 => timestamp_text(),
        1 => (0usize..70_000).prop_map(|n| "a".repeat(n)),
    ]
}

fn key() -> impl Strategy<Value = String> {
    prop_oneof![3 => select(KEYS).prop_map(str::to_owned), 1 => any_text(12)]
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        word().prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(key(), inner, 0..4)
                .prop_map(|map| Value::Object(map.into_iter().collect())),
        ]
    })
}

fn tree_edits() -> impl Strategy<Value = Vec<TreeEdit>> {
    let edit = prop_oneof![
        any::<Index>().prop_map(TreeEdit::Remove),
        (any::<Index>(), json_value()).prop_map(|(i, v)| TreeEdit::Replace(i, v)),
        (any::<Index>(), key(), json_value()).prop_map(|(i, k, v)| TreeEdit::Insert(i, k, v)),
    ];
    prop::collection::vec(edit, 1..4)
}

/// Nesting `depth` deep with one of a few openers, closed or left open.
fn deep_nesting() -> impl Strategy<Value = String> {
    const OPENERS: &[(&str, &str)] = &[
        ("[", "]"),
        ("{\"a\":", "}"),
        ("{\"Type\":", "}"),
        ("{\"detail\":", "}"),
        ("[{\"\":", "}]"),
        ("{\"Message\":", "}"),
    ];
    let depth = prop_oneof![1usize..200, 120usize..140, 200usize..40_000];
    (
        depth,
        select(OPENERS),
        any::<bool>(),
        select(&["null", "1", "\"x\"", ""][..]),
    )
        .prop_map(|(depth, (open, close), closed, centre)| {
            let depth = depth.min(70_000 / open.len());
            let mut text = open.repeat(depth);
            text += centre;
            if closed {
                text += &close.repeat(depth);
            }
            text
        })
}

fn huge_number() -> impl Strategy<Value = String> {
    prop_oneof![
        (1usize..65_000, select(&["9", "0", "1"][..])).prop_map(|(n, d)| d.repeat(n)),
        (1usize..65_000).prop_map(|n| format!("-1.{}e-99999999999", "0".repeat(n))),
        "-?[0-9]{1,400}(\\.[0-9]{1,400})?([eE][+-]?[0-9]{1,30})?",
        select(
            &[
                "1e999999",
                "-1e999999",
                "1e-999999",
                "1.7976931348623157e309",
                "4.9e-325",
                "18446744073709551616",
                "18446744073709551615",
                "-9223372036854775808",
                "-9223372036854775809",
                "-0",
                "-0.0",
                "0e0",
                "1E+2",
                "01",
                "1.",
                ".5",
                "+1",
                "-",
                "NaN",
                "Infinity",
                "-Infinity",
                "0x10",
                "1_000",
            ][..]
        )
        .prop_map(str::to_owned),
    ]
}

/// A JSON string literal with an odd escape or char, raw (not re-escaped).
fn odd_string() -> impl Strategy<Value = String> {
    prop_oneof![
        select(
            &[
                "\"\\ud800\"",
                "\"\\udc00\"",
                "\"\\ud800\\u0041\"",
                "\"\\ud800\\ud800\"",
                "\"\\udbff\\udfff\"",
                "\"\\ud83d\\ude00\"",
                "\"\\uD800\"",
                "\"\\udfff\\ud800\"",
                "\"\\u0000\"",
                "\"a\\u0000b\"",
                "\"\\u12\"",
                "\"\\uzzzz\"",
                "\"\\x41\"",
                "\"\\\"",
                "\"\\ud800",
                "\"\u{1}\"",
                "\"a\nb\"",
                "\"\u{feff}\"",
                "\"\\/\"",
                "\"\u{7f}\"",
                "\"\u{10ffff}\"",
                "\"\\U0041\"",
            ][..]
        )
        .prop_map(str::to_owned),
        any_text(32).prop_map(|s| Value::String(s).to_string()),
        (
            0usize..70_000,
            select(&["a", "\\n", "\\ud800", "é", "\\\\"][..])
        )
            .prop_map(|(n, unit)| format!("\"{}\"", unit.repeat(n / unit.len()))),
    ]
}

/// Raw JSON (or nearly) to put in place of a value.
fn raw_fragment() -> impl Strategy<Value = String> {
    prop_oneof![
        2 => deep_nesting(),
        2 => huge_number(),
        3 => odd_string(),
        1 => select(&[
            "null", "true", "false", "[]", "{}", "\"\"", "[null]", "{\"\":null}",
            "{\"id\":\"a\",\"id\":\"b\"}", "{\"Type\":\"Notification\",\"Type\":null}",
            "undefined", "", " ", "\"Notification\" \"x\"", "[1,]", "{\"a\":1,}",
        ][..])
        .prop_map(str::to_owned),
    ]
}

const PLACEHOLDER: &str = "\u{1}fuzz-placeholder\u{1}";

/// The seed (or its SNS `Message`) with the node at `at` replaced by the raw text `raw`.
fn place_raw(seed: &str, inner: bool, at: &Index, raw: &str) -> String {
    let placeholder = Value::String(PLACEHOLDER.into()).to_string();
    let put = |value: &mut Value| {
        let pointer = pick_pointer(value, at);
        if pointer.is_empty() {
            *value = Value::String(PLACEHOLDER.into());
        } else if let Some(node) = value.pointer_mut(&pointer) {
            *node = Value::String(PLACEHOLDER.into());
        }
    };
    let Ok(mut outer) = serde_json::from_str::<Value>(seed) else {
        return raw.to_owned();
    };
    if inner {
        if let Some(mut message) = inner_message(&outer) {
            put(&mut message);
            outer["Message"] = Value::String(message.to_string().replacen(&placeholder, raw, 1));
            return outer.to_string();
        }
    }
    put(&mut outer);
    outer.to_string().replacen(&placeholder, raw, 1)
}

/// A seed padded with whitespace (or a long string field) to sizes around the limit.
fn near_the_limit(seeds: &'static [String]) -> impl Strategy<Value = String> {
    let size = prop_oneof![
        (MAX_BODY_BYTES - 2..MAX_BODY_BYTES + 3),
        Just(70 * 1024),
        (MAX_BODY_BYTES / 2..MAX_BODY_BYTES * 2),
    ];
    (any::<Index>(), size, any::<bool>()).prop_map(move |(seed, size, in_string)| {
        let seed = pick(seeds, &seed);
        let pad = size.saturating_sub(seed.len());
        if in_string {
            let mut value: Value = serde_json::from_str(seed).unwrap_or(Value::Null);
            if let Some(object) = value.as_object_mut() {
                object.insert(
                    "padding".into(),
                    Value::String("p".repeat(pad.saturating_sub(14))),
                );
                return value.to_string();
            }
        }
        format!("{}{seed}", " ".repeat(pad))
    })
}

fn decode_bodies() -> impl Strategy<Value = String> {
    let seeds = decode_seeds();
    prop_oneof![
        2 => lossy_bytes(1024),
        1 => any_text(512),
        1 => json_soup(),
        6 => (any::<Index>(), any::<bool>(), edits(8))
            .prop_map(move |(seed, inner, edits)| {
                change_text(pick(seeds, &seed), inner, |text| apply_edits(text, &edits))
            }),
        4 => (any::<Index>(), any::<bool>(), tree_edits())
            .prop_map(move |(seed, inner, edits)| {
                change_tree(pick(seeds, &seed), inner, |root| {
                    edits.iter().for_each(|edit| apply_tree_edit(root, edit))
                })
            }),
        4 => (any::<Index>(), any::<bool>(), any::<Index>(), raw_fragment())
            .prop_map(move |(seed, inner, at, raw)| place_raw(pick(seeds, &seed), inner, &at, &raw)),
        1 => near_the_limit(seeds),
    ]
}

fn decode_inputs() -> impl Strategy<Value = InboundMessage> {
    (decode_bodies(), sent_timestamp()).prop_map(|(body, sent)| inbound(&body, sent))
}

/// Field text for the string to sign: anything, with newlines, NULs and the field names.
fn field_text() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => any_text(48),
        2 => select(&[
            "", "\n", "\nSubject\n", "Subject", "Subject\n", "\nSubject", "Type\n",
            "\nType\nNotification\n", "Message\n", "\0", "\0\0", "é", "𝄞", "\u{feff}", "\r\n",
            "Notification", "\nTimestamp\n",
        ][..])
        .prop_map(str::to_owned),
        2 => prop::collection::vec(
            select(&["\n", "Subject", "Type", "Message", "\0", "a", "é", " ", "\r", "\u{10ffff}"][..]),
            0..16,
        )
        .prop_map(|parts| parts.concat()),
        1 => (0usize..20_000).prop_map(|n| "x".repeat(n)),
    ]
}

fn envelopes() -> impl Strategy<Value = SnsEnvelope> {
    (
        (field_text(), field_text(), field_text()),
        (
            proptest::option::of(field_text()),
            field_text(),
            field_text(),
        ),
        (
            proptest::option::of(field_text()),
            proptest::option::of(field_text()),
            proptest::option::of(field_text()),
        ),
    )
        .prop_map(
            |(
                (kind, message_id, topic_arn),
                (subject, message, timestamp),
                (signature_version, signature, signing_cert_url),
            )| SnsEnvelope {
                kind,
                message_id,
                topic_arn,
                subject,
                message,
                timestamp,
                signature_version,
                signature,
                signing_cert_url,
            },
        )
}

const URL_SEEDS: &[&str] = &[
    CERT_URL,
    "https://sns.cn-north-1.amazonaws.com.cn/SimpleNotificationService-abc.pem",
    "https://sns.us-gov-west-1.amazonaws.com/x.pem",
    "http://127.0.0.1:4566/_aws/sns/SimpleNotificationService-x.pem",
    "https://user:pw@sns.us-east-1.amazonaws.com:443/x.pem?y=1#z",
];

fn cert_urls() -> impl Strategy<Value = String> {
    let scheme = select(
        &[
            "https", "http", "HTTPS", "hTtPs", "file", "", "https:", "ftp", "ws",
        ][..],
    );
    let sep = select(&["://", ":/", ":", ":///", ":\\\\", "://\\", ":////"][..]);
    let userinfo = select(
        &[
            "",
            "",
            "",
            "user@",
            "user:pw@",
            ":@",
            "@",
            "sns.us-east-1.amazonaws.com@",
            "127.0.0.1:4566@",
            "%40@",
        ][..],
    );
    let label = select(
        &[
            "sns",
            "sns",
            "SNS",
            "us-east-1",
            "cn-north-1",
            "us-gov-west-1",
            "eu-central-1",
            "amazonaws",
            "com",
            "cn",
            "evil",
            "s3",
            "",
            "xn--sns-9ja",
            "ѕns",
            "sns\u{200b}",
            "%73ns",
            "sns%2eus-east-1",
            "us_east_1",
            "1-2-3",
            "127",
            "0",
            "localhost",
            "a-b-",
        ][..],
    );
    let host_end = select(
        &[
            "",
            ".amazonaws.com",
            ".amazonaws.com",
            ".amazonaws.com.cn",
            ".amazonaws.com.",
            ".amazonaws.com.evil.com",
            ".AMAZONAWS.COM",
            ".amazonaws%2ecom",
            "。amazonaws。com",
            ".amazonaws.com\u{0}",
            ".amazonaws.com:443",
            ".amazonaws.com#",
            "[::1]",
            "127.0.0.1:4566",
        ][..],
    );
    let port = select(
        &[
            "", "", ":443", ":8443", ":", ":0", ":65536", ":0443", ":4566",
        ][..],
    );
    let path = prop::collection::vec(
        select(
            &[
                "/",
                "SimpleNotificationService-abc",
                ".pem",
                ".pem",
                "%2Epem",
                "..",
                "/../",
                "?",
                "#",
                "x.pem?.txt",
                ".PEM",
                "\\",
                "%00",
                " ",
                "\t",
                "\n",
                "_aws/sns/",
                "/_aws/sns/",
                ".pem/",
            ][..],
        ),
        0..6,
    );
    let structured = (
        scheme,
        sep,
        userinfo,
        prop::collection::vec(label, 1..5),
        host_end,
        port,
        path,
    )
        .prop_map(|(scheme, sep, userinfo, labels, host_end, port, path)| {
            format!(
                "{scheme}{sep}{userinfo}{}{host_end}{port}{}",
                labels.join("."),
                path.concat()
            )
        });
    prop_oneof![
        1 => any_text(96),
        1 => lossy_bytes(96),
        5 => structured,
        2 => (select(URL_SEEDS), edits(4)).prop_map(|(url, edits)| apply_edits(url, &edits)),
    ]
}

/// An edit of a signed envelope's fields, signature fields included.
#[derive(Debug, Clone)]
enum FieldEdit {
    Set(String, Value),
    Remove(String),
    Signature(Vec<Edit>),
    RandomSignature(Vec<u8>),
}

fn verify_inputs() -> impl Strategy<Value = String> {
    let seeds: &'static [String] = &signed().seeds;
    let field = select(
        &[
            "Type",
            "MessageId",
            "TopicArn",
            "Message",
            "Timestamp",
            "Subject",
            "SignatureVersion",
            "Signature",
            "SigningCertURL",
            "UnsubscribeURL",
        ][..],
    )
    .prop_map(str::to_owned);
    let set_value = prop_oneof![
        json_value(),
        select(&["1", "2", "3", "", " 1", "1 ", "01", "２", "1\u{0}"][..]).prop_map(|v| json!(v)),
        select(URL_SEEDS).prop_map(|v| json!(v)),
        Just(json!(CERT_URL.to_uppercase())),
        Just(json!(format!("{CERT_URL}?x=1"))),
    ];
    let field_edit = prop_oneof![
        3 => (field.clone(), set_value).prop_map(|(f, v)| FieldEdit::Set(f, v)),
        1 => field.prop_map(FieldEdit::Remove),
        2 => edits(4).prop_map(FieldEdit::Signature),
        1 => prop_oneof![Just(128usize), Just(127), Just(129), 0usize..300]
            .prop_flat_map(|n| prop::collection::vec(any::<u8>(), n))
            .prop_map(FieldEdit::RandomSignature),
    ];
    prop_oneof![
        3 => (any::<Index>(), prop::collection::vec(field_edit, 1..3)).prop_map(move |(seed, edits)| {
            let mut env: Value = serde_json::from_str(pick(seeds, &seed)).expect("seed");
            for edit in edits {
                match edit {
                    FieldEdit::Set(field, value) => env[field] = value,
                    FieldEdit::Remove(field) => {
                        if let Some(object) = env.as_object_mut() {
                            object.remove(&field);
                        }
                    }
                    FieldEdit::Signature(edits) => {
                        let old = env["Signature"].as_str().unwrap_or_default().to_owned();
                        env["Signature"] = json!(apply_edits(&old, &edits));
                    }
                    FieldEdit::RandomSignature(bytes) => {
                        env["Signature"] =
                            json!(base64::engine::general_purpose::STANDARD.encode(bytes));
                    }
                }
            }
            env.to_string()
        }),
        3 => (any::<Index>(), any::<bool>(), edits(6)).prop_map(move |(seed, inner, edits)| {
            change_text(pick(seeds, &seed), inner, |text| apply_edits(text, &edits))
        }),
        1 => (any::<Index>(), any::<bool>(), tree_edits()).prop_map(move |(seed, inner, edits)| {
            change_tree(pick(seeds, &seed), inner, |root| {
                edits.iter().for_each(|edit| apply_tree_edit(root, edit))
            })
        }),
        // Unchanged, and the same JSON written differently: both still carry the signed fact.
        1 => (any::<Index>(), any::<bool>()).prop_map(move |(seed, pretty)| {
            let value: Value = serde_json::from_str(pick(seeds, &seed)).expect("seed");
            if pretty {
                serde_json::to_string_pretty(&value).expect("JSON")
            } else {
                pick(seeds, &seed).to_owned()
            }
        }),
    ]
}
