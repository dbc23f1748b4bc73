#!/usr/bin/env bash
# LocalStack for tests and the quickstart, in host mode (no Docker), from the pinned lock in
# scripts/localstack/requirements.txt (LocalStack 4.13.1, the newest that runs on CPython 3.11
# without an account token).
#
#   scripts/localstack.sh start    install into .localstack-venv if missing, start, wait until healthy
#   scripts/localstack.sh stop     stop the instance this script started
#   scripts/localstack.sh status   exit 0 when LocalStack answers
#
# State is in memory: a restart loses queues and topics (mplink provision recreates them).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="${MPLINK_LOCALSTACK_VENV:-$root/.localstack-venv}"
pidfile="$root/localstack.pid"
logfile="$root/localstack.log"
host="${MPLINK_LOCALSTACK_HOST:-127.0.0.1:4566}"
health="http://$host/_localstack/health"
python="${PYTHON:-python3}"

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
    GATEWAY_LISTEN="$host" LOCALSTACK_HOST="$host" SQS_ENDPOINT_STRATEGY=path \
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

stop() {
    if [ -f "$pidfile" ]; then
        pid="$(cat "$pidfile")"
        # setsid made it a process group leader: stop the whole group.
        kill -- "-$pid" 2>/dev/null || kill "$pid" 2>/dev/null || true
        for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
        rm -f "$pidfile"
        echo "LocalStack stopped"
    else
        echo "no LocalStack started by this script"
    fi
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) if healthy; then echo "LocalStack answering on $host"; else echo "LocalStack not answering on $host"; exit 1; fi ;;
    *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
