#!/usr/bin/env bash
# Worker throughput against the ceiling, on the same load (the worker part of scripts/bench.sh).
#
#   scripts/bench/worker.sh [MESSAGES]     # default 20,000 (MPLINK_BENCH_MESSAGES)
#
# Publishes MESSAGES distinct events (half SNS, signed by LocalStack's SNS; half EventBridge;
# 2,000 subscriptions) once, captures the delivered bodies, and sends them plus 10 % duplicates,
# shuffled, to a fresh queue per run: the bare loop (examples/sqs_ceiling.rs), then
# `mplink run --exit-when-idle` on SQLite and, when it answers, PostgreSQL
# (MPLINK_TEST_POSTGRES_URL, default postgres://postgres@127.0.0.1:5432/test; `off` skips it).
# Prints one table and writes target/bench/worker.json. MPLINK_BENCH_PROFILE=dev measures the
# debug build instead of the release one (CI's tiny run, which only checks the benchmark works).
set -euo pipefail
cd "$(dirname "$0")/../.."

messages="${1:-${MPLINK_BENCH_MESSAGES:-20000}}"
pg_url="${MPLINK_TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/test}"

scripts/localstack.sh start
export AWS_ENDPOINT_URL="${AWS_ENDPOINT_URL:-http://127.0.0.1:4566}"
export AWS_ACCESS_KEY_ID="${AWS_ACCESS_KEY_ID:-test}" AWS_SECRET_ACCESS_KEY="${AWS_SECRET_ACCESS_KEY:-test}"
export AWS_REGION="${AWS_REGION:-us-east-1}" AWS_DEFAULT_REGION="${AWS_DEFAULT_REGION:-us-east-1}"

profile="${MPLINK_BENCH_PROFILE:-release}"
cargo build --locked --profile "$profile" --bin mplink --example sqs_ceiling --example bench_load
case "$profile" in dev) bin=target/debug ;; *) bin="target/$profile" ;; esac
out=target/bench
mkdir -p "$out"
tmp="$(mktemp -d)"
run_id="$(date +%s)"
venv="${MPLINK_LOCALSTACK_VENV:-$PWD/.localstack-venv}"
aws() { "$venv/bin/aws" --endpoint-url "$AWS_ENDPOINT_URL" --output text "$@"; }
# LocalStack is shared: the rule (it matches every marketplace event on the default bus), the
# topic and the queues of this run go when it ends.
cleanup() {
    set +e
    aws events remove-targets --rule "mplink-bench-$run_id" --ids "$(aws events list-targets-by-rule \
        --rule "mplink-bench-$run_id" --query 'Targets[].Id' | tr '\t' ' ')" >/dev/null 2>&1
    aws events delete-rule --name "mplink-bench-$run_id" >/dev/null 2>&1
    for t in ${topics:-}; do aws sns delete-topic --topic-arn "$t" >/dev/null 2>&1; done
    for q in $(aws sqs list-queues --queue-name-prefix "mplink-bench-" --query 'QueueUrls[]' 2>/dev/null); do
        case "$q" in *"-$run_id" | *"-$run_id-dlq") aws sqs delete-queue --queue-url "$q" >/dev/null 2>&1 ;; esac
    done
    rm -rf "$tmp"
}
trap cleanup EXIT

provisioned="$("$bin/mplink" provision --queue-name "mplink-bench-staging-$run_id" \
    --create-topics-for-product "bench$run_id" --eventbridge-rule "mplink-bench-$run_id" --json)"
read -r staging topic < <(python3 -c 'import json,sys; p=json.load(sys.stdin); print(p["queue_url"], p["topic_arns"][0])' <<<"$provisioned")
# Provisioning made the product's subscription and entitlement topics; both go at the end.
topics="$(python3 -c 'import json,sys; print(" ".join(json.load(sys.stdin)["topic_arns"]))' <<<"$provisioned")"
"$bin/examples/bench_load" capture "$topic" "$staging" "$messages" "$tmp/bodies.jsonl"

# A new queue holding the load; sets $queue and $sent.
fresh_queue() {
    queue="$("$bin/mplink" provision --queue-name "mplink-bench-$1-$run_id" --json |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["queue_url"])')"
    sent="$("$bin/examples/bench_load" send "$queue" "$tmp/bodies.jsonl" 10)"
}

# One timed run: "$@" under /usr/bin/time; leaves "<sent> <seconds> <user+sys> <max RSS KiB>".
measure() {
    local name="$1"; shift
    local start end
    start="$(date +%s.%N)"
    /usr/bin/time -f '%U %S %M' -o "$tmp/$name.time" "$@" >"$tmp/$name.out" 2>"$tmp/$name.err"
    end="$(date +%s.%N)"
    read -r user sys rss <"$tmp/$name.time"
    cp "$tmp/$name.err" "$out/$name.log"
    echo "$name $sent $(python3 -c "print($end - $start)") $(python3 -c "print($user + $sys)") $rss" >>"$tmp/rows"
}

: >"$tmp/rows"
fresh_queue ceiling
measure ceiling "$bin/examples/sqs_ceiling" "$queue"

worker() {
    local name="$1" db="$2"
    fresh_queue "$name"
    measure "$name" env MPLINK_LOG_FORMAT=json "$bin/mplink" --database-url "$db" run \
        --queue-url "$queue" --exit-when-idle --wait-time 1 --http-addr 127.0.0.1:0 \
        --allowed-topic-arn "$topic" --sns-cert-url-prefix "$AWS_ENDPOINT_URL/_aws/sns/"
}
worker sqlite "sqlite://$tmp/bench.db?mode=rwc"
if [ "$pg_url" != off ] && python3 -c "import socket,sys,urllib.parse as u; p=u.urlparse(sys.argv[1]); socket.create_connection((p.hostname, p.port or 5432), 2)" "$pg_url" 2>/dev/null; then
    # A database of its own, so nothing an earlier run left is measured.
    bench_db="mplink_bench_$run_id"
    psql "${pg_url%/*}/postgres" -qc "CREATE DATABASE $bench_db"
    worker postgres "${pg_url%/*}/$bench_db"
fi

python3 - "$tmp/rows" "$out/worker.json" <<'EOF'
import json, sys
import re
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]

def summary(name):
    """The worker's own totals from its exit line: a figure over rejected messages is no figure."""
    for line in open("target/bench/%s.log" % name, errors="replace"):
        if "worker stopped" in line:
            return {k: int(v) for k, v in re.findall(r"(\w+): (\d+)", line)}
    return {}
table = []
ceiling = None
for name, sent, wall, cpu, rss in rows:
    sent, wall, cpu, rss = int(sent), float(wall), float(cpu), int(rss)
    rate = sent / wall
    if name == "ceiling":
        ceiling = rate
    table.append({"run": name, "messages": sent, "seconds": round(wall, 2),
                  "msg_per_s": round(rate, 1),
                  "ratio_to_ceiling": round(rate / ceiling, 2) if ceiling else None,
                  "cpu_s_per_10k": round(cpu / sent * 10000, 2),
                  "peak_rss_mib": round(rss / 1024, 1)})
    if name != "ceiling":
        totals = summary(name)
        table[-1].update({k: totals.get(k) for k in ("received", "applied", "stale", "duplicate", "rejected")})
print("| run | messages | msg/s | ratio to ceiling | CPU-s per 10k | peak RSS MiB | applied+stale / duplicate / rejected |")
print("|---|---|---|---|---|---|---|")
for r in table:
    decided = "-" if r["run"] == "ceiling" else "%s / %s / %s" % (
        (r.get("applied") or 0) + (r.get("stale") or 0), r.get("duplicate"), r.get("rejected"))
    print("| {run} | {messages} | {msg_per_s} | {ratio_to_ceiling} | {cpu_s_per_10k} | {peak_rss_mib} | ".format(**r) + decided + " |")
json.dump(table, open(sys.argv[2], "w"), indent=1)
EOF
