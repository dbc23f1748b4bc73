#!/usr/bin/env bash
# The whole test suite: formatting, lints, and every test on SQLite and PostgreSQL.
# PostgreSQL comes from MPLINK_TEST_POSTGRES_URL (default postgres://postgres@127.0.0.1:5432/test);
# each test creates and drops its own schema there, so the database may be shared.
set -euo pipefail
cd "$(dirname "$0")/.."

export MPLINK_TEST_POSTGRES_URL="${MPLINK_TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/test}"

cargo fmt --all -- --check
cargo clippy --locked --all-targets -- -D warnings
cargo test --locked
