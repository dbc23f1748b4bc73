#!/usr/bin/env bash
# Worker throughput against the ceiling, on the same load (the worker part of scripts/bench.sh).
#
#   scripts/bench/worker.sh [MESSAGES]     # default 20,000 (MPLINK_BENCH_MESSAGES)
#
# Publishes MESSAGES distinct events (half SNS, signed by LocalStack's SNS; half EventBridge;
# 2,000 subscriptions) once, captures the delivered bodies, and sends them plus 10 % duplicates,
# shuffled, to a fresh queue per run: `mplink run --exit-when-idle`, each right after a run of
# the bare loop (examples/sqs_ceiling.rs) it is compared with, on SQLite and, when it answers, PostgreSQL
# (MPLINK_TEST_POSTGRES_URL, default postgres://postgres@127.0.0.1:5432/test; `off` skips it).
# Then, per backend: `mplink apply` of MPLINK_BENCH_APPLY generated events (default 200,000) from
# a file, the apply engine alone; and event-to-commit latency at a light steady rate
# (MPLINK_BENCH_RATE events/s, default 50, for MPLINK_BENCH_SECONDS, default 30, half SNS and half
# EventBridge) with a long-running `mplink run`, whose resident memory is read while it idles
# before the load and again after it. Prints one table and writes target/bench/worker.json.
# MPLINK_BENCH_PROFILE=dev measures the debug build instead of the release one (CI's tiny run,
# which only checks the benchmark works).
#
# The throughput part starts on a freshly restarted LocalStack (when scripts/localstack.sh
# started the one running; LocalStack slows down after long use), runs each worker right after a
# ceiling run of its own, MPLINK_BENCH_ROUNDS (2) times per backend and receive shape (A B A B),
# for each MPLINK_BENCH_SHAPES entry LOOPS:IN_FLIGHT (default "2:32 8:128": the defaults, and
# more loops), and reports a ratio only against a ceiling of at least MPLINK_BENCH_CEILING_FLOOR
# msg/s (1500): below it LocalStack, not the worker, sets the pace.
set -euo pipefail
cd "$(dirname "$0")/../.."

messages="${1:-${MPLINK_BENCH_MESSAGES:-20000}}"
rounds="${MPLINK_BENCH_ROUNDS:-2}"
shapes="${MPLINK_BENCH_SHAPES:-2:32 8:128}"
export MPLINK_BENCH_CEILING_FLOOR="${MPLINK_BENCH_CEILING_FLOOR:-1500}"
apply_events="${MPLINK_BENCH_APPLY:-200000}"
rate="${MPLINK_BENCH_RATE:-50}"
seconds="${MPLINK_BENCH_SECONDS:-30}"
pg_url="${MPLINK_TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/test}"

# A fresh LocalStack: its SQS slows down after hours of use (stop only touches an instance
# scripts/localstack.sh started; one started elsewhere is measured as it is, and the floor says
# whether its ceiling can carry a ratio).
scripts/localstack.sh stop
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
    [ -n "${worker_pid:-}" ] && kill "$worker_pid" 2>/dev/null
    for rule in $(aws events list-rules --name-prefix mplink-bench- --query 'Rules[].Name' 2>/dev/null | tr '\t' '\n' | grep -- "-$run_id\$"); do
        aws events remove-targets --rule "$rule" --ids "$(aws events list-targets-by-rule \
            --rule "$rule" --query 'Targets[].Id' | tr '\t' ' ')" >/dev/null 2>&1
        aws events delete-rule --name "$rule" >/dev/null 2>&1
    done
    for t in ${topics:-}; do aws sns delete-topic --topic-arn "$t" >/dev/null 2>&1; done
    for q in $(aws sqs list-queues --queue-name-prefix "mplink-bench-" --query 'QueueUrls[]' 2>/dev/null); do
        case "$q" in *"-$run_id" | *"-$run_id-dlq") aws sqs delete-queue --queue-url "$q" >/dev/null 2>&1 ;; esac
    done
    for db in ${bench_dbs:-}; do psql "${pg_url%/*}/postgres" -qc "DROP DATABASE IF EXISTS $db" >/dev/null 2>&1; done
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
    if ! /usr/bin/time -f '%U %S %M' -o "$tmp/$name.time" "$@" >"$tmp/$name.out" 2>"$tmp/$name.err"; then
        tail -n 20 "$tmp/$name.err" >&2
        echo "the $name run failed" >&2
        exit 1
    fi
    end="$(date +%s.%N)"
    read -r user sys rss <"$tmp/$name.time"
    cp "$tmp/$name.err" "$out/$name.log"
    cp "$tmp/$name.out" "$out/$name.out"
    echo "$name $sent $(python3 -c "print($end - $start)") $(python3 -c "print($user + $sys)") $rss" >>"$tmp/rows"
}

: >"$tmp/rows"

# Each worker run right after a ceiling run of its own with the same receive loops and in-flight
# bound, A B A B: LocalStack's pace drifts over a run, and a ratio holds only against the ceiling
# measured next to it. `worker BACKEND DATABASE_URL...`: one database URL per run, in order.
worker() {
    local backend="$1" shape loops in_flight round name
    shift
    for shape in $shapes; do
        IFS=: read -r loops in_flight <<<"$shape"
        for round in $(seq 1 "$rounds"); do
            name="$backend-${loops}x$in_flight-$round"
            fresh_queue "ceiling-$name"
            measure "ceiling-$name" "$bin/examples/sqs_ceiling" "$queue" "$loops" "$in_flight"
            fresh_queue "$name"
            measure "$name" env MPLINK_LOG_FORMAT=json "$bin/mplink" --database-url "$1" run \
                --queue-url "$queue" --exit-when-idle --wait-time 1 --http-addr 127.0.0.1:0 \
                --receive-loops "$loops" --max-in-flight "$in_flight" \
                --allowed-topic-arn "$topic" --sns-cert-url-prefix "$AWS_ENDPOINT_URL/_aws/sns/"
            shift
        done
    done
}
runs="$(($(wc -w <<<"$shapes") * rounds))"
# The apply engine alone: generated events (unsigned SNS envelopes, so verification is off)
# through `mplink apply`'s batches.
"$bin/examples/bench_load" generate "$apply_events" "$tmp/apply.jsonl"
apply_run() {
    sent="$apply_events"
    measure "$1" "$bin/mplink" --database-url "$2" apply --verify-signatures false "$tmp/apply.jsonl"
}

# Light steady load through SNS and EventBridge to a long-running worker: event-to-commit is the
# event log's recorded_at minus the moment of publishing; the worker's debug line for each
# decision (written after the commit, with the message's SQS SentTimestamp) splits it into SNS's
# or EventBridge's own delivery and the worker's part. The staging queue stops receiving first:
# LocalStack delivers every copy, and the load is meant to be light.
staging_arn="$(aws sqs get-queue-attributes --queue-url "$staging" --attribute-names QueueArn --query 'Attributes.QueueArn')"
for sub in $(aws sns list-subscriptions-by-topic --topic-arn "$topic" \
    --query "Subscriptions[?Endpoint=='$staging_arn'].SubscriptionArn"); do
    aws sns unsubscribe --subscription-arn "$sub"
done
aws events remove-targets --rule "mplink-bench-$run_id" --ids "$(aws events list-targets-by-rule \
    --rule "mplink-bench-$run_id" --query 'Targets[].Id' | tr '\t' ' ')" >/dev/null
# Rows of a query on the event log, tab-separated, from either backend.
event_log() {
    case "$1" in
        sqlite:*) python3 -c 'import sqlite3,sys; [print(*r, sep="\t") for r in sqlite3.connect(sys.argv[1]).execute(sys.argv[2])]' \
            "$(sqlite_path "$1")" "$2" ;;
        *) psql "$1" -AtF $'\t' -c "$2" ;;
    esac
}
committed_count() { event_log "$1" "SELECT count(*) FROM mplink_event_log" 2>/dev/null || echo 0; }
sqlite_path() { local path="${1#sqlite://}"; echo "${path%%\?*}"; }
rss_kib() { awk -v k="$2:" '$1 == k {print $2}' "/proc/$1/status"; }
latency_run() {
    local name="$1" db="$2" latency_queue
    # A queue of its own per run: a worker that stopped leaves its cancelled long polls open on the
    # SQS side, and a message handed to one stays invisible for the visibility timeout.
    latency_queue="$("$bin/mplink" provision --queue-name "mplink-bench-$name-$run_id" --topic-arn "$topic" \
        --eventbridge-rule "mplink-bench-$name-$run_id" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["queue_url"])')"
    MPLINK_LOG_FORMAT=json MPLINK_LOG=info,mplink::process=debug \
        "$bin/mplink" --database-url "$db" run --queue-url "$latency_queue" \
        --http-addr 127.0.0.1:0 --allowed-topic-arn "$topic" \
        --sns-cert-url-prefix "$AWS_ENDPOINT_URL/_aws/sns/" >"$tmp/$name.out" 2>"$tmp/$name.err" &
    worker_pid=$!
    sleep 5
    local idle_before
    idle_before="$(rss_kib "$worker_pid" VmRSS)"
    "$bin/examples/bench_load" steady "$topic" "$rate" "$seconds" "$tmp/$name.published.jsonl"
    # Every event committed (or 30 s gone by: the table then says how many were not), then idle.
    local waited=0
    while [ "$(committed_count "$db")" -lt "$((rate * seconds))" ] && [ "$waited" -lt 300 ]; do
        sleep 0.1
        waited=$((waited + 1))
    done
    sleep 5
    echo "$name $idle_before $(rss_kib "$worker_pid" VmRSS) $(rss_kib "$worker_pid" VmHWM)" >>"$tmp/idle"
    kill -TERM "$worker_pid"
    wait "$worker_pid" || true
    worker_pid=
    cp "$tmp/$name.err" "$out/$name.log"
    event_log "$db" "SELECT message_id, recorded_at FROM mplink_event_log" >"$tmp/$name.committed.tsv"
}
: >"$tmp/idle"

worker sqlite $(for n in $(seq 1 "$runs"); do echo "sqlite://$tmp/bench-$n.db?mode=rwc"; done)
apply_run sqlite-apply "sqlite://$tmp/apply.db?mode=rwc"
latency_run sqlite-latency "sqlite://$tmp/latency.db?mode=rwc"
if [ "$pg_url" != off ] && python3 -c "import socket,sys,urllib.parse as u; p=u.urlparse(sys.argv[1]); socket.create_connection((p.hostname, p.port or 5432), 2)" "$pg_url" 2>/dev/null; then
    # Databases of their own, so nothing an earlier run left is measured.
    drains=""
    for kind in $(seq -f 'drain%g' 1 "$runs") apply latency; do
        bench_dbs="${bench_dbs:-} mplink_bench_${kind}_$run_id"
        psql "${pg_url%/*}/postgres" -qc "CREATE DATABASE mplink_bench_${kind}_$run_id"
        case "$kind" in drain*) drains="$drains ${pg_url%/*}/mplink_bench_${kind}_$run_id" ;; esac
    done
    # shellcheck disable=SC2086 # one URL per word
    worker postgres $drains
    apply_run postgres-apply "${pg_url%/*}/mplink_bench_apply_$run_id"
    latency_run postgres-latency "${pg_url%/*}/mplink_bench_latency_$run_id"
fi

python3 scripts/bench/worker_summary.py "$tmp" "$out/worker.json"
