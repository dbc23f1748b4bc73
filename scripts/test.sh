#!/usr/bin/env bash
# The whole test suite: formatting, lints, and every test — unit and property tests, the store
# and CLI suites on SQLite and PostgreSQL, and the worker against real LocalStack SNS,
# EventBridge and SQS, and the deploy/ templates deployed to LocalStack.
#
# LocalStack: started here (scripts/localstack.sh installs it into .localstack-venv on first use).
# PostgreSQL: MPLINK_TEST_POSTGRES_URL, else DATABASE_URL if it is a postgres:// URL, else the
# local server at 127.0.0.1:5432 (database test) if one answers; with none, only SQLite runs.
# Each test creates and drops its own schema, so the database may be shared.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -z "${MPLINK_TEST_POSTGRES_URL:-}" ]; then
    case "${DATABASE_URL:-}" in
        postgres://* | postgresql://*) export MPLINK_TEST_POSTGRES_URL="$DATABASE_URL" ;;
        *)
            if command -v pg_isready >/dev/null && pg_isready -h 127.0.0.1 -p 5432 -q; then
                export MPLINK_TEST_POSTGRES_URL="postgres://postgres@127.0.0.1:5432/test"
            else
                echo "no PostgreSQL given or answering on 127.0.0.1:5432: running the SQLite variants only"
                export MPLINK_TEST_POSTGRES_URL=off
            fi
            ;;
    esac
fi
if [ "$MPLINK_TEST_POSTGRES_URL" = off ]; then echo "PostgreSQL tests: off"; else echo "PostgreSQL tests: on"; fi

scripts/localstack.sh start
# Debian's Chromium and chromedriver for the browser test (tests/browser), installed if missing.
scripts/chromium.sh ensure
export AWS_ENDPOINT_URL="${AWS_ENDPOINT_URL:-http://127.0.0.1:4566}"

# The production templates: both stacks linted, the queue stack deployed to LocalStack and
# exercised end to end, the Dockerfile linted with hadolint (scripts/hadolint.sh). It mostly
# waits on LocalStack, so it runs while the code is linted and compiled; its log follows.
deploy_log="$(mktemp)"
bash scripts/check-deploy.sh >"$deploy_log" 2>&1 &
deploy_pid=$!

cargo fmt --all -- --check
# Tests build the product with its failpoints (src/failpoint.rs); releases never do. Both are
# linted, and the binary built without them must not even name a switch.
tested=(--workspace --features mplink/failpoints)
cargo clippy --locked "${tested[@]}" --all-targets -- -D warnings
cargo clippy --locked --lib --bins -- -D warnings
cargo build --locked --bin mplink
if grep -a -o -E 'MPLINK_(FAILPOINT|CRASH_AFTER)[A-Z_]*' "${CARGO_TARGET_DIR:-target}/debug/mplink" | sort -u | grep .; then
    echo "the product binary (built without --features failpoints) names a failpoint switch" >&2
    exit 1
fi
cargo test --locked "${tested[@]}" --no-run

deploy_status=0
wait "$deploy_pid" || deploy_status=$?
cat "$deploy_log"
rm -f "$deploy_log"
if [ "$deploy_status" != 0 ]; then
    echo "scripts/check-deploy.sh failed (exit status $deploy_status)" >&2
    exit 1
fi
# The fault suite, one scenario at a time so they do not distort each other's figures; its
# summary tables are printed. MPLINK_FAULT_SCALE=10 runs it ten times bigger.
cargo test --locked "${tested[@]}" --test faults -- --nocapture --test-threads=1
# Everything else, the pure crate and the Marketplace double included.
cargo test --locked "${tested[@]}"
# Schemathesis against a seeded `mplink serve`, from docs/openapi.json: every check, all phases,
# zero failures (scripts/schemathesis.sh).
scripts/schemathesis.sh
# The worker benchmark at a tiny size on the debug build: it keeps working; its figures mean
# nothing at this size (scripts/bench.sh measures).
MPLINK_BENCH_PROFILE=dev MPLINK_BENCH_APPLY=2000 MPLINK_BENCH_RATE=10 MPLINK_BENCH_SECONDS=3 \
    scripts/bench/worker.sh 200
