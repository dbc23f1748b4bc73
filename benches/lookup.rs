//! Per-organization lookups and whole-ledger status at scale, on SQLite and PostgreSQL: wall
//! time and peak memory of whole `mplink` commands on a large ledger and on an empty one,
//! in-process lookup latency, and `status --json` of everything. Figures are printed and
//! written as JSON, never asserted (targets are read, not timed tests).
//!
//! Run through `scripts/bench.sh`, which builds the release binary first. Sizes:
//! `MPLINK_BENCH_SUBSCRIPTIONS` (default 1,000,000), `MPLINK_BENCH_LINKS` (default a fifth of
//! that), `MPLINK_BENCH_RUNS` command runs each (default 5), `MPLINK_BENCH_LOOKUPS` in-process
//! lookups (default 2,000); `MPLINK_BENCH_BIN` the binary (default target/release/mplink),
//! `MPLINK_BENCH_OUT` the JSON file (default target/bench/lookup.json); PostgreSQL from
//! `MPLINK_TEST_POSTGRES_URL` (`off` to skip). Peak memory is the kernel's maximum resident set
//! size of the process, read through `/usr/bin/time`.

#[path = "../tests/common/bulk.rs"]
mod bulk;
#[path = "common/postgres.rs"]
mod postgres;

use mplink::config::DatabaseUrl;
use mplink::ledger::LinkRequest;
use mplink::store::{StatusFilter, Store};
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn env_num(name: &str, default: i64) -> i64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.replace('_', "").parse().ok())
        .unwrap_or(default)
}

struct Config {
    subscriptions: i64,
    links: i64,
    runs: usize,
    lookups: usize,
    bin: PathBuf,
    out: PathBuf,
}

/// One finished process: wall time, peak resident memory and how many lines it printed.
struct Run {
    wall: Duration,
    peak_rss_kib: u64,
    lines: u64,
}

fn run_command(bin: &Path, url: &DatabaseUrl, args: &[String]) -> Run {
    let started = Instant::now();
    let mut child = Command::new("/usr/bin/time")
        .args(["-f", "peak_rss_kib=%M", "--"])
        .arg(bin)
        .arg("--database-url")
        .arg(url.expose())
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("/usr/bin/time and the mplink binary");
    let mut stdout = child.stdout.take().expect("stdout");
    let counter = std::thread::spawn(move || {
        let mut buf = vec![0u8; 1 << 16];
        let mut lines = 0u64;
        loop {
            match stdout.read(&mut buf) {
                Ok(0) | Err(_) => return lines,
                Ok(n) => lines += buf[..n].iter().filter(|b| **b == b'\n').count() as u64,
            }
        }
    });
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut stderr)
        .expect("read stderr");
    let status = child.wait().expect("wait");
    let wall = started.elapsed();
    let lines = counter.join().expect("line counter");
    assert!(status.success(), "mplink {args:?} failed: {stderr}");
    let peak_rss_kib = stderr
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("peak_rss_kib="))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no peak memory from /usr/bin/time: {stderr}"));
    Run {
        wall,
        peak_rss_kib,
        lines,
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

/// Runs `args(run)` `runs` times after one warm-up; median and range of wall time, the largest
/// peak memory.
fn measure(
    cfg: &Config,
    url: &DatabaseUrl,
    runs: usize,
    args: impl Fn(usize) -> Vec<String>,
) -> Value {
    run_command(&cfg.bin, url, &args(runs));
    let mut results: Vec<Run> = (0..runs)
        .map(|r| run_command(&cfg.bin, url, &args(r)))
        .collect();
    results.sort_by_key(|r| r.wall);
    json!({
        "runs": runs,
        "wall_ms_median": ms(results[results.len() / 2].wall),
        "wall_ms_min": ms(results[0].wall),
        "wall_ms_max": ms(results[results.len() - 1].wall),
        "peak_rss_mib": results.iter().map(|r| r.peak_rss_kib).max().unwrap_or(0) as f64 / 1024.0,
        "lines": results[0].lines,
    })
}

fn legacy_link_args(org: String, customer: String) -> Vec<String> {
    [
        "link",
        "--org",
        &org,
        "--product-code",
        bulk::BULK_PRODUCT,
        "--customer-identifier",
        &customer,
    ]
    .map(String::from)
    .to_vec()
}

/// The arguments of a command's run number `r`.
type ArgsOfRun<'a> = Box<dyn Fn(usize) -> Vec<String> + 'a>;

/// Command figures on the full ledger and on the empty one, side by side.
fn commands(cfg: &Config, full: &DatabaseUrl, empty: &DatabaseUrl) -> Vec<Value> {
    let n = cfg.subscriptions.max(1);
    let links = cfg.links.max(1);
    // A legacy customer no link names (every link's customer is c-(5i+1) with i % 3 == 0).
    let free_customer = |r: usize| format!("c-{}", (5 * (r as i64 % 1000) + 2).min(n));
    let per_org: Vec<(&str, ArgsOfRun<'_>)> = vec![
        (
            "link",
            Box::new(move |r| legacy_link_args(format!("bench-org-{r}"), free_customer(r))),
        ),
        (
            "status --org",
            Box::new(move |r| {
                let org = format!("org-{}", 1 + (r as i64 * 7919) % links);
                ["status", "--org", &org].map(String::from).to_vec()
            }),
        ),
        (
            "status --org --json",
            Box::new(move |r| {
                let org = format!("org-{}", 1 + (r as i64 * 104_729) % links);
                ["status", "--org", &org, "--json"]
                    .map(String::from)
                    .to_vec()
            }),
        ),
    ];
    let mut out = Vec::new();
    for (name, args) in &per_org {
        let on_full = measure(cfg, full, cfg.runs, args);
        let on_empty = measure(cfg, empty, cfg.runs, args);
        let extra = on_full["wall_ms_median"].as_f64().unwrap_or(0.0)
            - on_empty["wall_ms_median"].as_f64().unwrap_or(0.0);
        out.push(json!({
            "command": name,
            "full": on_full,
            "empty": on_empty,
            "extra_wall_ms_median": extra,
        }));
    }
    let everything = |_| ["status", "--json"].map(String::from).to_vec();
    let all_runs = cfg.runs.clamp(1, 2);
    out.push(json!({
        "command": "status --json (everything)",
        "full": measure(cfg, full, all_runs, everything),
        "empty": measure(cfg, empty, all_runs, everything),
    }));
    out
}

/// In-process latency of resolving one organization (`status --org`'s lookup), of reading its
/// history, and of linking one (the registration's write and lookup), on the full ledger.
async fn lookups(cfg: &Config, store: &Store) -> Value {
    let mut rng = rand::rngs::StdRng::seed_from_u64(15);
    let mut resolve = Vec::with_capacity(cfg.lookups);
    for _ in 0..cfg.lookups {
        let filter = StatusFilter {
            org_id: Some(format!("org-{}", rng.gen_range(1..=cfg.links.max(1)))),
            customer_identifier: None,
        };
        let started = Instant::now();
        let rows = store.status(&filter).await.expect("status --org");
        resolve.push(started.elapsed());
        assert_eq!(rows.len(), 1, "{filter:?}");
    }
    // One organization's history (`mplink history --org`): its link, the subscriptions it
    // reaches, and their events, link changes and meter records, each by key.
    let mut history = Vec::with_capacity(cfg.lookups);
    for _ in 0..cfg.lookups {
        let org = format!("org-{}", rng.gen_range(1..=cfg.links.max(1)));
        let started = Instant::now();
        store.org_history(&org).await.expect("history --org");
        history.push(started.elapsed());
    }
    let mut link = Vec::with_capacity(cfg.lookups / 4);
    for k in 0..(cfg.lookups / 4).max(1) {
        let request = LinkRequest {
            org_id: format!("bench-inproc-{k}"),
            product_code: bulk::BULK_PRODUCT.into(),
            customer_identifier: Some(format!(
                "c-{}",
                5 * rng.gen_range(0..cfg.subscriptions / 5) + 3
            )),
            customer_aws_account_id: None,
            license_arn: None,
            requested_at_ms: 0,
        };
        let started = Instant::now();
        store.link(&request).await.expect("link");
        link.push(started.elapsed());
    }
    let figures = |mut v: Vec<Duration>| {
        v.sort();
        json!({
            "n": v.len(),
            "p50_ms": ms(percentile(&v, 0.50)),
            "p99_ms": ms(percentile(&v, 0.99)),
            "max_ms": ms(v[v.len() - 1]),
        })
    };
    json!({ "resolve_org": figures(resolve), "history": figures(history), "link": figures(link) })
}

async fn bench_backend(cfg: &Config, name: &str, full: DatabaseUrl, empty: DatabaseUrl) -> Value {
    let store = Store::open(&full).await.expect("full ledger");
    Store::open(&empty)
        .await
        .expect("empty ledger")
        .close()
        .await;
    let started = Instant::now();
    bulk::bulk_ledger(store.pool(), cfg.subscriptions, cfg.links).await;
    let populate_s = started.elapsed().as_secs_f64();
    eprintln!("{name}: populated in {populate_s:.1} s");
    let lookups = lookups(cfg, &store).await;
    store.close().await;
    eprintln!("{name}: in-process lookups done");
    let commands = commands(cfg, &full, &empty);
    json!({
        "backend": name,
        "populate_s": populate_s,
        "in_process": lookups,
        "commands": commands,
    })
}

fn machine() -> Value {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let cpuinfo = read("/proc/cpuinfo");
    let cpu = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string());
    let mem_kib: Option<u64> = read("/proc/meminfo")
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok());
    json!({
        "nproc": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "cpu": cpu,
        "memory_gib": mem_kib.map(|k| k as f64 / 1024.0 / 1024.0),
    })
}

fn print_table(report: &Value) {
    println!(
        "ledger: {} subscriptions, {} links",
        report["subscriptions"], report["links"]
    );
    for b in report["backends"].as_array().into_iter().flatten() {
        let name = b["backend"].as_str().unwrap_or("?");
        for (op, f) in b["in_process"].as_object().into_iter().flatten() {
            println!(
                "{name:<9} in-process {op:<12} n={:<5} p50 {:>7.2} ms  p99 {:>7.2} ms  max {:>7.2} ms",
                f["n"],
                f["p50_ms"].as_f64().unwrap_or(0.0),
                f["p99_ms"].as_f64().unwrap_or(0.0),
                f["max_ms"].as_f64().unwrap_or(0.0)
            );
        }
        for c in b["commands"].as_array().into_iter().flatten() {
            let (full, empty) = (&c["full"], &c["empty"]);
            println!(
                "{name:<9} {:<27} full {:>9.1} ms {:>7.1} MiB {:>8} lines | empty {:>7.1} ms {:>6.1} MiB",
                c["command"].as_str().unwrap_or("?"),
                full["wall_ms_median"].as_f64().unwrap_or(0.0),
                full["peak_rss_mib"].as_f64().unwrap_or(0.0),
                full["lines"],
                empty["wall_ms_median"].as_f64().unwrap_or(0.0),
                empty["peak_rss_mib"].as_f64().unwrap_or(0.0),
            );
        }
    }
}

#[tokio::main]
async fn main() {
    let subscriptions = env_num("MPLINK_BENCH_SUBSCRIPTIONS", 1_000_000).max(5);
    let cfg = Config {
        subscriptions,
        links: env_num("MPLINK_BENCH_LINKS", subscriptions / 5).clamp(1, subscriptions / 5),
        runs: env_num("MPLINK_BENCH_RUNS", 5).max(1) as usize,
        lookups: env_num("MPLINK_BENCH_LOOKUPS", 2_000).max(4) as usize,
        bin: std::env::var("MPLINK_BENCH_BIN")
            .unwrap_or_else(|_| "target/release/mplink".into())
            .into(),
        out: std::env::var("MPLINK_BENCH_OUT")
            .unwrap_or_else(|_| "target/bench/lookup.json".into())
            .into(),
    };
    assert!(
        cfg.bin.exists(),
        "{} missing: build it first (cargo build --release --bin mplink)",
        cfg.bin.display()
    );
    let dir = tempfile::tempdir_in(cfg.out.parent().unwrap_or(Path::new(".")))
        .or_else(|_| tempfile::tempdir())
        .expect("temp dir");
    let sqlite = |f: &str| DatabaseUrl::new(format!("sqlite://{}", dir.path().join(f).display()));
    let mut backends =
        vec![bench_backend(&cfg, "sqlite", sqlite("full.db"), sqlite("empty.db")).await];

    if let Some(server) = postgres::server() {
        let full = postgres::BenchSchema::create(&server, "full").await;
        let empty = postgres::BenchSchema::create(&server, "empty").await;
        backends.push(bench_backend(&cfg, "postgres", full.url.clone(), empty.url.clone()).await);
        full.drop().await;
        empty.drop().await;
    }

    let report = json!({
        "subscriptions": cfg.subscriptions,
        "links": cfg.links,
        "machine": machine(),
        "backends": backends,
    });
    print_table(&report);
    if let Some(parent) = cfg.out.parent() {
        std::fs::create_dir_all(parent).expect("output directory");
    }
    std::fs::write(
        &cfg.out,
        serde_json::to_string_pretty(&report).expect("json"),
    )
    .expect("write");
    println!("written to {}", cfg.out.display());
}
