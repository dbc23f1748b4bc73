#!/usr/bin/env bash
# LocalStack for tests and the quickstart, in host mode (no Docker), from the pinned lock in
# scripts/localstack/requirements.txt (LocalStack 4.13.1, the newest that runs on CPython 3.11
# without an account token).
#
#   scripts/localstack.sh start    install into .localstack-venv if missing, start, wait until healthy
#   scripts/localstack.sh stop     stop the instance this script started: SIGTERM, then SIGKILL
#                                  after MPLINK_LOCALSTACK_STOP_WAIT (10) s; says which ended it,
#                                  exits 1 if it is still running
#   scripts/localstack.sh status   exit 0 when LocalStack answers
#
# MPLINK_LOCALSTACK_HOST (127.0.0.1:4566) and MPLINK_LOCALSTACK_PIDFILE (./localstack.pid) let a
# second instance run beside the first.
# State is in memory: a restart loses queues and topics (mplink provision recreates them).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="${MPLINK_LOCALSTACK_VENV:-$root/.localstack-venv}"
pidfile="${MPLINK_LOCALSTACK_PIDFILE:-$root/localstack.pid}"
logfile="$root/localstack.log"
host="${MPLINK_LOCALSTACK_HOST:-127.0.0.1:4566}"
health="http://$host/_localstack/health"
python="${PYTHON:-python3}"
# Seconds `stop` waits after SIGTERM before it sends SIGKILL.
stop_wait="${MPLINK_LOCALSTACK_STOP_WAIT:-10}"

healthy() { curl -sf --max-time 2 "$health" >/dev/null 2>&1; }

install() {
    if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c 'import localstack' 2>/dev/null; then
        return
    fi
    echo "installing LocalStack into $venv (about a minute)"
    "$python" -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$root/scripts/localstack/requirements.txt"
}

start() {
    # The virtualenv also carries the aws CLI and cfn-lint the scripts use, so it is installed
    # even when some LocalStack already answers.
    install
    if healthy; then
        echo "LocalStack already answering on $host"
        return
    fi
    echo "starting LocalStack on $host (log: $logfile)"
    # SQS_DISABLE_CLOUDWATCH_METRICS: LocalStack's SQS otherwise sends itself one CloudWatch
    # PutMetricData over HTTP for every send, receive and delete. That more than doubles its
    # CPU per SQS call (it runs on one core here), keeps it busy for minutes after a load, and
    # fills a metrics store that makes it slower the longer it runs. Nothing here reads those
    # metrics (check-deploy checks the DLQ alarm's definition, not its state).
    GATEWAY_LISTEN="$host" LOCALSTACK_HOST="$host" SQS_ENDPOINT_STRATEGY=path SQS_DISABLE_CLOUDWATCH_METRICS=1 \
        SERVICES=sqs,sns,events,cloudformation,iam,sts,cloudwatch \
        setsid "$venv/bin/python" -m localstack.runtime.main >"$logfile" 2>&1 < /dev/null &
    echo $! >"$pidfile"
    for _ in $(seq 1 120); do
        if healthy; then
            echo "LocalStack is up"
            return
        fi
        if ! kill -0 "$(cat "$pidfile")" 2>/dev/null; then
            echo "LocalStack exited during start; last log lines:" >&2
            tail -n 30 "$logfile" >&2
            exit 1
        fi
        sleep 0.5
    done
    echo "LocalStack did not become healthy in 60 s; last log lines:" >&2
    tail -n 30 "$logfile" >&2
    exit 1
}

# alive PID: true while the process group PID leads still has a member (localstack forks workers).
alive() { kill -0 -- "-$1" 2>/dev/null || kill -0 "$1" 2>/dev/null; }

# wait_gone PID SECONDS: true once the group is gone, false if it outlives SECONDS.
wait_gone() {
    local i
    for i in $(seq 1 $(($2 * 4))); do
        alive "$1" || return 0
        sleep 0.25
    done
    ! alive "$1"
}

# Stops the instance this script started: SIGTERM to its process group, then SIGKILL if it is
# still there after the wait. It says which of the two ended it, and exits non-zero (keeping the
# pidfile) if even SIGKILL did not, so a caller never believes a stop that did not happen.
stop() {
    if [ ! -f "$pidfile" ]; then
        echo "no LocalStack started by this script (no $pidfile)"
        return
    fi
    local pid
    pid="$(cat "$pidfile")"
    case "$pid" in '' | *[!0-9]*)
        echo "$pidfile holds no process id ('$pid'); removing it" >&2
        rm -f "$pidfile"
        return 1 ;;
    esac
    if ! alive "$pid"; then
        rm -f "$pidfile"
        echo "LocalStack (pid $pid) was not running"
        return
    fi
    # setsid made it a process group leader: signal the whole group.
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    if wait_gone "$pid" "$stop_wait"; then
        rm -f "$pidfile"
        echo "LocalStack stopped (pid $pid, SIGTERM)"
        return
    fi
    echo "LocalStack (pid $pid) still running ${stop_wait} s after SIGTERM: sending SIGKILL" >&2
    kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
    if wait_gone "$pid" 5; then
        rm -f "$pidfile"
        echo "LocalStack killed (pid $pid, SIGKILL after ${stop_wait} s)"
        return
    fi
    echo "LocalStack (pid $pid) is STILL RUNNING after SIGKILL; pidfile $pidfile kept" >&2
    return 1
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) if healthy; then echo "LocalStack answering on $host"; else echo "LocalStack not answering on $host"; exit 1; fi ;;
    *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
