#!/usr/bin/env bash
# Schemathesis (PyPI, pinned in scripts/schemathesis/requirements.txt) against a seeded
# `mplink serve`: every check, all four phases (examples, coverage, fuzzing, stateful), a
# bounded number of examples per operation and a fixed seed. It must report no failure: a false
# positive is fixed in docs/openapi.json (in the code that generates it), never silenced here.
#
#   scripts/schemathesis.sh            # MPLINK_SCHEMATHESIS_EXAMPLES=N for more cases
#
# Seeded: the Marketplace test double knows one buyer's token, the landing resolves it into a
# registration, and the registration routes are exercised on it. The server runs on SQLite in
# a temporary directory; nothing outlives the run.
set -euo pipefail
cd "$(dirname "$0")/.."

die() {
    echo "schemathesis: FAILED: $*" >&2
    exit 1
}

venv="${MPLINK_SCHEMATHESIS_VENV:-$PWD/.schemathesis-venv}"
if [ ! -x "$venv/bin/schemathesis" ]; then
    echo "installing Schemathesis into $venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q -r scripts/schemathesis/requirements.txt
fi

cargo build --locked --bin mplink
cargo build --locked -p mplink-marketplace-double
bin="${CARGO_TARGET_DIR:-target}/debug"

tmp="$(mktemp -d)"
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$tmp"
}
trap cleanup EXIT

"$bin/mplink-marketplace-double" >"$tmp/double.url" 2>"$tmp/double.log" &
pids+=($!)
for _ in $(seq 100); do [ -s "$tmp/double.url" ] && break; sleep 0.1; done
double_url="$(head -n1 "$tmp/double.url")"
[ -n "$double_url" ] || die "the Marketplace double did not start: $(cat "$tmp/double.log")"

token="st-buyer-$(python3 -c 'import secrets; print(secrets.token_hex(8))')"
curl -sf -X POST "$double_url/_double/customers" -H 'content-type: application/json' \
    -d "{\"token\":\"$token\",\"customer_aws_account_id\":\"123456789012\",\"license_arn\":\"arn:aws:license-manager::123456789012:license:l-0123456789abcdef0123456789abcdef\",\"product_code\":\"prod-schemathesis\"}" \
    >/dev/null || die "the double refused the seeded customer"

api_token="st-token-$(python3 -c 'import secrets; print(secrets.token_hex(16))')"
port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
base="http://127.0.0.1:$port"
# The landing's rate limit would turn most generated landings into 429s (which the description
# lists, so they would pass unexamined): lifted here so the landing itself is exercised.
AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_REGION=us-east-1 MPLINK_API_TOKENS="$api_token" \
    "$bin/mplink" --database-url "sqlite://$tmp/schemathesis.db" serve --listen "127.0.0.1:$port" \
    --select-organization-url https://app.example.com/aws/select \
    --marketplace-endpoint-url "$double_url" \
    --register-per-minute 60000 --register-burst 10000 \
    >"$tmp/serve.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do curl -sf "$base/healthz" >/dev/null 2>&1 && break; sleep 0.1; done
curl -sf "$base/healthz" >/dev/null || die "mplink serve did not start: $(cat "$tmp/serve.log")"

location="$(curl -s -o /dev/null -w '%{redirect_url}' -d "x-amzn-marketplace-token=$token" "$base/marketplace/register")"
registration="${location##*registration=}"
case "$registration" in
    reg_*) ;;
    *) die "the seeded landing did not register (Location: ${location:-none}): $(tail -n 5 "$tmp/serve.log")" ;;
esac
echo "seeded registration ${registration:0:12}…"

# One worker: on this machine's Python 3.11, hypothesis's ast.parse in two threads at once can
# fail with a spurious "SystemError: AST constructor recursion depth mismatch" (CPython
# gh-106905), which Schemathesis reports as a runtime error of whichever operation it was on.
MPLINK_SCHEMATHESIS_REGISTRATION="$registration" "$venv/bin/schemathesis" \
    --config-file scripts/schemathesis/schemathesis.toml run docs/openapi.json \
    --url "$base" \
    --header "Authorization: Bearer $api_token" \
    --checks all \
    --phases examples,coverage,fuzzing,stateful \
    --max-examples "${MPLINK_SCHEMATHESIS_EXAMPLES:-25}" \
    --seed 20261204 \
    --request-timeout 40 \
    --max-response-time 35 \
    --workers 1 \
    --generation-database none \
    --no-color \
    --output-sanitize true \
    || die "Schemathesis found failures (above); fix the server or the description, then rerun scripts/schemathesis.sh"
