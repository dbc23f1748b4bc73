#!/usr/bin/env bash
# The whole job, for real, on one machine: LocalStack stands in for AWS (SQS, SNS, EventBridge),
# two organizations subscribe through AWS Marketplace (one legacy SNS listing, one EventBridge
# listing), the worker links them, they cancel, the worker unlinks them, and the SaaS's own data
# is shown to be untouched. Then the buyer's path through `mplink serve --example` (the HTTP API,
# its worker and the example host pages), with the Marketplace test double answering
# ResolveCustomer: landing, the organization list, link, syncing, linked, cancelled.
#
#   scripts/demo.sh
#   MPLINK_DEMO_KEEP_SERVING=1 scripts/demo.sh   # then keeps serving, for a browser, until Ctrl-C
#
# Needs cargo, python3 and curl. Safe to run again: every run uses its own queue, product code
# and database, so nothing left over from an earlier (or interrupted) run can leak in.
set -euo pipefail
cd "$(dirname "$0")/.."

step=0
bold='' plain=''
if [ -t 1 ]; then bold=$'\033[1m' plain=$'\033[0m'; fi
heading() {
    step=$((step + 1))
    printf '\n%s%d. %s%s\n' "$bold" "$step" "$*" "$plain"
}
die() {
    echo "demo: FAILED: $*" >&2
    exit 1
}

for tool in cargo python3 curl; do
    command -v "$tool" >/dev/null || die "$tool is required but not installed"
done

heading "Starting LocalStack (local stand-in for SQS, SNS and EventBridge)"
scripts/localstack.sh start

# Point both mplink (Rust SDK) and the aws CLI at LocalStack, unless the caller chose otherwise.
# The aws CLI v1 in the venv wants AWS_DEFAULT_REGION; the Rust SDK reads AWS_REGION.
# MPLINK_LOCALSTACK_HOST is the address scripts/localstack.sh starts LocalStack on.
export AWS_ENDPOINT_URL="${AWS_ENDPOINT_URL:-http://${MPLINK_LOCALSTACK_HOST:-127.0.0.1:4566}}"
export AWS_ACCESS_KEY_ID="${AWS_ACCESS_KEY_ID:-test}"
export AWS_SECRET_ACCESS_KEY="${AWS_SECRET_ACCESS_KEY:-test}"
export AWS_REGION="${AWS_REGION:-us-east-1}"
export AWS_DEFAULT_REGION="${AWS_DEFAULT_REGION:-us-east-1}"
# Passed explicitly too: not every aws CLI v1 release reads AWS_ENDPOINT_URL. The CLI lives in
# the virtualenv scripts/localstack.sh installed (MPLINK_LOCALSTACK_VENV when set, as there).
venv="${MPLINK_LOCALSTACK_VENV:-$PWD/.localstack-venv}"
aws() { "$venv/bin/aws" --endpoint-url "$AWS_ENDPOINT_URL" --output json "$@"; }

heading "Building mplink and the Marketplace test double (the same dev profile CI and the tests use)"
cargo build --bin mplink
cargo build -p mplink-marketplace-double
mplink="${CARGO_TARGET_DIR:-target}/debug/mplink"

# A fresh database every run, so the status tables below show only this run.
mkdir -p demo
db_file=demo/mplink-demo.db
rm -f "$db_file" "$db_file-shm" "$db_file-wal"
db="sqlite://$db_file"
mp() { "$mplink" --database-url "$db" "$@"; }

# Scratch files (JSON for put-events, table snapshots) go away however the script ends.
# So do the processes it starts in the background (by their own pids).
tmp="$(mktemp -d)"
background=()
cleanup() {
    local pid
    for pid in "${background[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${background[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$tmp"
}
trap cleanup EXIT
# Background jobs of a script ignore Ctrl-C: on Ctrl-C or SIGTERM exit, so cleanup stops them.
trap 'exit 130' INT TERM

# A per-run suffix: LocalStack keeps queues between runs, and a queue of an interrupted run may
# still hold messages that would otherwise end up in this run's fresh ledger.
run_id="$(date +%s)"
product="demo${run_id}"            # AWS product codes are lowercase alphanumerics
customer="CUST${run_id}"           # what ResolveCustomer returns for the legacy listing
globex_account=845735284135
seller_account=123456789012
license_arn="arn:aws:license-manager::${seller_account}:license:l-0123456789abcdef0123456789abcdef"
agreement=agmt-demo1

heading "Provisioning the queue, the product's SNS topics and the EventBridge rule"
provisioned="$("$mplink" provision \
    --queue-name "mplink-demo-${run_id}" \
    --create-topics-for-product "$product" \
    --eventbridge-rule mplink-demo-marketplace \
    --json)"
# topic_arns lists the subscription topic first, then the entitlement topic.
read -r queue_url subscription_topic < <(python3 -c '
import json, sys
p = json.load(sys.stdin)
print(p["queue_url"], p["topic_arns"][0])' <<<"$provisioned")
[ -n "$subscription_topic" ] || die "provision printed no queue URL or topic: $provisioned"
echo "queue:              $queue_url"
echo "subscription topic: $subscription_topic"
echo "EventBridge rule:   mplink-demo-marketplace (default bus, source aws.agreement-marketplace)"

# The SaaS's own data, in the same database file: mplink must never touch it.
clusters() {
    python3 - "$db_file" <<'EOF'
import sqlite3, sys
con = sqlite3.connect(sys.argv[1])
for row in con.execute("SELECT org_id, name, status FROM clusters ORDER BY org_id, name"):
    print("  ".join(row))
EOF
}
heading "Creating the SaaS's own data (table clusters) next to mplink's tables"
python3 - "$db_file" <<'EOF'
import sqlite3, sys
con = sqlite3.connect(sys.argv[1])
con.execute("CREATE TABLE clusters (org_id TEXT NOT NULL, name TEXT NOT NULL, status TEXT NOT NULL)")
con.executemany("INSERT INTO clusters VALUES (?, ?, ?)",
                [("org-acme", "prod-eu", "running"), ("org-acme", "staging", "running")])
con.commit()
EOF
clusters | tee "$tmp/clusters-before"

heading "Linking two organizations, as the registration page would"
# Legacy SNS listing: ResolveCustomer gave a customer identifier.
mp link --org org-acme --product-code "$product" --customer-identifier "$customer"
# EventBridge listing: ResolveCustomer gave the buyer's account and the license.
mp link --org org-globex --product-code "$product" \
    --customer-account-id "$globex_account" --license-arn "$license_arn"
mp status

# Fails unless both demo organizations show the given link state and payment method
# (taken from `status --json`, the stable contract, rather than from the table).
expect_links() {
    mp status --json >"$tmp/status.jsonl"
    python3 - "$tmp/status.jsonl" "$1" "$2" <<'EOF' || die "the organizations are not $1 (see above)"
import json, sys
path, want_link, want_payment = sys.argv[1], sys.argv[2], sys.argv[3]
want_payment = None if want_payment == "null" else want_payment
with open(path) as f:
    rows = {r["org_id"]: r for r in map(json.loads, f) if r["org_id"]}
bad = []
for org in ("org-acme", "org-globex"):
    r = rows.get(org)
    if r is None:
        bad.append(org + ": no status row")
    elif (r["link_state"], r["payment_method"]) != (want_link, want_payment):
        bad.append("%s: link_state=%r payment_method=%r" % (org, r["link_state"], r["payment_method"]))
if bad:
    print("expected link_state=%r payment_method=%r, got:" % (want_link, want_payment), file=sys.stderr)
    print("\n".join("  " + b for b in bad), file=sys.stderr)
    sys.exit(1)
print("  checked: org-acme and org-globex are %s" % want_link)
EOF
}
expect_links syncing null

# One SNS notification on the product's subscription topic, as AWS Marketplace sends it.
publish_sns() {
    local message
    message="$(python3 -c 'import json, sys
print(json.dumps({"action": sys.argv[1], "customer-identifier": sys.argv[2],
                  "product-code": sys.argv[3], "offer-identifier": "offer-demo",
                  "isFreeTrialTermPresent": "false"}))' "$1" "$customer" "$product")"
    aws sns publish --topic-arn "$subscription_topic" --message "$message" >/dev/null
    echo "  SNS          $1"
}

# One aws.agreement-marketplace event on the default bus. The detail is built by python so the
# nested JSON-in-JSON of put-events needs no shell quoting.
put_event() {
    local detail_type="$1" detail="$2"
    python3 - "$detail_type" "$detail" "$globex_account" "$seller_account" >"$tmp/entries.json" <<'EOF'
import json, sys, uuid
detail = json.loads(sys.argv[2])
detail = {"requestId": str(uuid.uuid4()), "catalog": "AWSMarketplace", **detail,
          "acceptor": {"accountId": sys.argv[3]}, "proposer": {"accountId": sys.argv[4]}}
print(json.dumps([{"Source": "aws.agreement-marketplace", "DetailType": sys.argv[1],
                   "Detail": json.dumps(detail), "Resources": []}]))
EOF
    local failed
    failed="$(aws events put-events --entries "file://$tmp/entries.json" \
        --query FailedEntryCount --output text)"
    [ "$failed" = 0 ] || die "EventBridge refused the event $detail_type"
    echo "  EventBridge  $detail_type"
}
license_detail="{\"agreement\":{\"id\":\"$agreement\"},\"product\":{\"code\":\"$product\",\"id\":\"prod-demo\"},\"license\":{\"arn\":\"$license_arn\"}}"

# SNS and EventBridge deliver to SQS asynchronously; the worker exits at the first empty
# receive, so wait until everything published has actually reached the queue.
wait_for_queue() {
    local want="$1" have=0
    for _ in $(seq 1 60); do
        have="$(aws sqs get-queue-attributes --queue-url "$queue_url" \
            --attribute-names ApproximateNumberOfMessages \
            --query Attributes.ApproximateNumberOfMessages --output text)"
        [ "$have" -ge "$want" ] && { echo "  $have messages waiting in the queue"; return; }
        sleep 0.5
    done
    die "only $have of $want messages reached the queue in 30 s (check $PWD/localstack.log)"
}

run_worker() {
    # --exit-when-idle: stop once the queue is drained instead of serving forever;
    # --http-addr :0 so a worker or demo elsewhere on :9090 does not get in the way.
    # SNS signatures are verified as in production; LocalStack serves its signing
    # certificate over http from itself, which must be trusted explicitly, and its topics
    # live in LocalStack's account rather than AWS Marketplace's, so they are listed.
    mp run --queue-url "$queue_url" --exit-when-idle --wait-time 2 --http-addr 127.0.0.1:0 \
        --sns-cert-url-prefix "$AWS_ENDPOINT_URL/_aws/sns/" \
        --allowed-topic-arn "$subscription_topic"
}

heading "AWS Marketplace confirms both subscriptions"
publish_sns subscribe-success
put_event "Purchase Agreement Created - Proposer" \
    "{\"agreement\":{\"id\":\"$agreement\",\"intent\":\"NEW\",\"status\":\"ACTIVE\"}}"
# The License event joins the agreement to the license org-globex registered with.
put_event "License Updated - Manufacturer" "$license_detail"
wait_for_queue 3

heading "Running the worker until the queue is drained"
run_worker
mp status
expect_links linked aws_marketplace

heading "Both customers cancel on AWS"
publish_sns unsubscribe-pending
# SNS timestamps order events, not arrival: make the final notice unambiguously the later one.
sleep 1
publish_sns unsubscribe-success
put_event "Purchase Agreement Ended - Proposer" \
    "{\"agreement\":{\"id\":\"$agreement\",\"status\":\"CANCELLED\"}}"
put_event "License Deprovisioned - Manufacturer" "$license_detail"
wait_for_queue 4

heading "Running the worker again"
run_worker
mp status
expect_links unlinked null

heading "The SaaS's own data is untouched"
clusters | tee "$tmp/clusters-after"
diff -u "$tmp/clusters-before" "$tmp/clusters-after" >&2 \
    || die "the clusters table changed (diff above): mplink must only touch its own tables"

# ---------------------------------------------------------------------------------------------
# The buyer's path: mplink serve (the HTTP API and the worker) and the example host pages.
heading "Starting the AWS Marketplace test double (ResolveCustomer) and mplink serve --example --worker"
# The double prints its endpoint URL on its first line.
"${CARGO_TARGET_DIR:-target}/debug/mplink-marketplace-double" --listen 127.0.0.1:0 \
    >"$tmp/double.out" 2>"$tmp/double.log" &
background+=("$!")
for _ in $(seq 1 100); do [ -s "$tmp/double.out" ] && break; sleep 0.1; done
double_url="$(head -n 1 "$tmp/double.out")"
[ -n "$double_url" ] || die "the Marketplace test double printed no endpoint URL: $(cat "$tmp/double.log")"

# One buyer: what ResolveCustomer returns for the token AWS Marketplace posts.
web_token="demo-registration-token-${run_id}"
web_license="arn:aws:license-manager::${seller_account}:license:l-$(printf '%032d' "$run_id")"
web_agreement="agmt-web${run_id}"
seed_customer() {
    curl -sf -X POST "$double_url/_double/customers" -H 'content-type: application/json' \
        -d "{\"token\":\"$1\",\"customer_aws_account_id\":\"$globex_account\",\"license_arn\":\"$2\",\"product_code\":\"$product\"}" \
        >/dev/null || die "the double refused the customer for token $1"
}
seed_customer "$web_token" "$web_license"

api_token="demo-api-token-$(python3 -c 'import secrets; print(secrets.token_hex(16))')"
port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
base="http://127.0.0.1:$port"
# --worker: the same process consumes the queue (with `run`'s flags), sharing the database pool.
# The token through the environment, as in production: a command line is visible in `ps`.
MPLINK_API_TOKENS="$api_token" "$mplink" --database-url "$db" serve --listen "127.0.0.1:$port" \
    --marketplace-endpoint-url "$double_url" --example \
    --worker --queue-url "$queue_url" --wait-time 1 --http-addr 127.0.0.1:0 \
    --sns-cert-url-prefix "$AWS_ENDPOINT_URL/_aws/sns/" --allowed-topic-arn "$subscription_topic" \
    >"$tmp/serve.log" 2>&1 &
serve_pid=$!
background+=("$serve_pid")
for _ in $(seq 1 100); do
    curl -sf "$base/example/" >/dev/null 2>&1 && break
    kill -0 "$serve_pid" 2>/dev/null || die "mplink serve exited: $(tail -n 20 "$tmp/serve.log")"
    sleep 0.2
done
curl -sf "$base/example/" >/dev/null || die "mplink serve did not answer on $base"
echo "Marketplace double: $double_url"
echo "mplink serve:       $base   (API: $base/v1/…, OpenAPI: $base/openapi.json)"
echo "example host:       $base/example/"
echo "landing:            $base/example/aws-landing.html?token=$web_token"

# Below, curl plays the browser on the same pages' backend (/example/api/…, which calls /v1
# with the token server-side); tests/browser.rs drives the very same path in Chromium.
heading "AWS Marketplace posts the buyer's token to /marketplace/register"
read -r code location < <(curl -s -o /dev/null -w '%{http_code} %{redirect_url}\n' \
    --data-urlencode "x-amzn-marketplace-token=$web_token" "$base/marketplace/register")
[ "$code" = 303 ] || die "/marketplace/register answered $code, not 303 ($(tail -n 5 "$tmp/serve.log"))"
registration="${location##*registration=}"
echo "  303 See Other → $location"

heading "Select an Organization to Link: mplink's verdict on each of the user's organizations"
curl -sf "$base/example/api/registrations/$registration/organizations" >"$tmp/orgs.json" \
    || die "the organization list did not load"
python3 - "$tmp/orgs.json" <<'EOF' || die "the organization list is not as expected (see above)"
import json, sys
orgs = json.load(open(sys.argv[1]))["organizations"]
for o in orgs:
    print("  %-10s %-26s %s" % (o["name"], o["billing_today"],
          "[Link]" if o["linkable"] else "[Link disabled] tooltip: " + o["reason_text"]))
linkable = [o["org_id"] for o in orgs if o["linkable"]]
assert linkable == ["org-acme"], linkable
assert all(o["reason_text"] for o in orgs if not o["linkable"])
EOF

billing() { curl -sf "$base/example/api/organizations/org-acme/billing" >"$tmp/billing.json"; }
show_billing() {
    python3 - "$tmp/billing.json" <<'EOF'
import json, sys
d = json.load(open(sys.argv[1])); b = d["billing"]
print("  payment method: %s   Edit: %s   link: %s" % (b["payment_method_text"] or "none",
      "enabled" if b["edit_enabled"] else "disabled", b["link_state"]))
if b["notice"]:
    print("  notice: " + b["notice"])
print("  resources: " + ", ".join(r["name"] for r in d["resources"]))
EOF
}
# wait_billing EXPR WHAT: polls the billing page's view (as the page does, every second) until
# the Python expression EXPR over b (mplink's billing view) holds.
wait_billing() {
    for _ in $(seq 1 60); do
        if billing && python3 -c 'import json, sys
b = json.load(open(sys.argv[1]))["billing"]
sys.exit(0 if eval(sys.argv[2]) else 1)' "$tmp/billing.json" "$1"; then
            show_billing
            return
        fi
        sleep 0.5
    done
    die "the billing page never showed $2 (last: $(cat "$tmp/billing.json" 2>/dev/null); serve log: $(tail -n 5 "$tmp/serve.log"))"
}

heading "The buyer links Acme Corp: the billing page shows the sync in progress"
curl -sf -X POST -H 'content-type: application/json' -d '{"org_id":"org-acme"}' \
    "$base/example/api/registrations/$registration/link" >/dev/null || die "linking org-acme failed"
wait_billing 'b["syncing"] and b["payment_method"] is None' "the syncing notice"

web_license_detail="{\"agreement\":{\"id\":\"$web_agreement\"},\"product\":{\"code\":\"$product\",\"id\":\"prod-demo\"},\"license\":{\"arn\":\"$web_license\"}}"
heading "AWS Marketplace confirms (EventBridge → SQS → the worker inside mplink serve)"
put_event "Purchase Agreement Created - Proposer" \
    "{\"agreement\":{\"id\":\"$web_agreement\",\"intent\":\"NEW\",\"status\":\"ACTIVE\"}}"
put_event "License Updated - Manufacturer" "$web_license_detail"
wait_billing 'b["payment_method"] == "aws_marketplace" and not b["edit_enabled"]' "the AWS Marketplace subscription"

heading "The buyer cancels: the agreement ends, then the license is deprovisioned"
# EventBridge event times have second resolution and order the events: keep them apart.
sleep 1
put_event "Purchase Agreement Ended - Proposer" \
    "{\"agreement\":{\"id\":\"$web_agreement\",\"status\":\"CANCELLED\"}}"
wait_billing 'b["link_state"] == "unlink_pending"' "the pending cancellation"
sleep 1
put_event "License Deprovisioned - Manufacturer" "$web_license_detail"
wait_billing 'b["link_state"] == "unlinked" and b["payment_method"] is None and b["edit_enabled"] and b["notice"]' \
    "no payment method with the notice that the data was kept"

# With Chromium installed (scripts/chromium.sh ensure), a look at the pages the buyer saw.
if command -v chromium >/dev/null 2>&1; then
    heading "Screenshots of the example pages (headless Chromium)"
    shoot() {
        # --no-sandbox: Chromium's sandbox cannot start as root in a container.
        if timeout 60 chromium --headless --no-sandbox --disable-gpu --hide-scrollbars \
            --window-size=1100,760 --virtual-time-budget=3000 --screenshot="$PWD/demo/$1.png" \
            "$2" >/dev/null 2>&1; then
            echo "  demo/$1.png"
        else
            echo "  (no screenshot of $2: chromium failed)"
        fi
    }
    shoot select "$base/example/select.html?registration=$registration"
    shoot billing "$base/example/billing.html?org=org-acme"
fi

echo
echo "Demo passed: both organizations were linked, then unlinked; their clusters are untouched;"
echo "the buyer's path through mplink serve went from the landing to linked to cancelled."
echo "Database: $PWD/$db_file (try: $mplink --database-url $db status --json)"
echo "The same path in Chromium, with screenshots: cargo test --test browser (target/browser-artifacts/)"
if [ "${MPLINK_DEMO_KEEP_SERVING:-}" = 1 ]; then
    fresh="demo-registration-token-${run_id}-browser"
    seed_customer "$fresh" "arn:aws:license-manager::${seller_account}:license:l-$(printf '%031d9' "$run_id")"
    echo
    echo "Serving until Ctrl-C. Open in a browser: $base/example/aws-landing.html?token=$fresh"
    echo "(the link then stays syncing until AWS's events for its license arrive, as above)"
    wait "$serve_pid" || true
fi
echo "LocalStack keeps running for another try; stop it with: scripts/localstack.sh stop"
