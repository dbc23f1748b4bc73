#!/usr/bin/env bash
# Benchmarks that print figures (never timed tests): the apply engine's throughput, the
# per-organization lookups and whole-ledger status at scale, a link change's way to its webhook,
# and the worker draining a queue against the bare SQS loop (scripts/bench/worker.sh), on SQLite
# and PostgreSQL.
#
#   scripts/bench.sh                  # 1,000,000 subscriptions, 200,000 links (the issue's size)
#   scripts/bench.sh --size 10000     # a quick run: 10,000 subscriptions, 2,000 links
#   scripts/bench.sh --lookup-only    # skip the apply and worker benchmarks
#   scripts/bench.sh --messages 2000  # the worker benchmark's load (default 20,000)
#   scripts/bench.sh --worker-only    # only the worker benchmark
#
# MPLINK_BENCH_SUBSCRIPTIONS / MPLINK_BENCH_LINKS / MPLINK_BENCH_RUNS / MPLINK_BENCH_LOOKUPS
# override the sizes; MPLINK_TEST_POSTGRES_URL names the PostgreSQL server (default
# postgres://postgres@127.0.0.1:5432/test, `off` for SQLite only). The lookup figures are also
# written as JSON to target/bench/lookup.json, the worker's to target/bench/worker.json (see
# docs/performance.md for how to read them).
set -euo pipefail
cd "$(dirname "$0")/.."

apply=1
lookup=1
worker=1
while [ $# -gt 0 ]; do
    case "$1" in
        --size) export MPLINK_BENCH_SUBSCRIPTIONS="$2"; shift 2 ;;
        --lookup-only) apply=0; worker=0; shift ;;
        --worker-only) apply=0; lookup=0; shift ;;
        --messages) export MPLINK_BENCH_MESSAGES="$2"; shift 2 ;;
        -h | --help) sed -n '2,17p' "$0"; exit 0 ;;
        *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
done

cargo build --locked --release --bin mplink
mkdir -p target/bench
if [ "$apply" = 1 ]; then
    cargo bench --locked --bench apply
fi
if [ "$lookup" = 1 ]; then
    MPLINK_BENCH_BIN="$PWD/target/release/mplink" MPLINK_BENCH_OUT="$PWD/target/bench/lookup.json" \
        cargo bench --locked --bench lookup
fi
if [ "$lookup" = 1 ]; then
    cargo bench --locked --bench webhook_latency
fi
if [ "$worker" = 1 ]; then
    scripts/bench/worker.sh
fi
