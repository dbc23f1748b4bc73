#!/usr/bin/env bash
# Fuzzes the decoder, the SNS string to sign, the certificate URL rule and the signature check
# (tests/fuzz.rs) for SECONDS per target (default 60), then replays tests/fuzz-regressions/.
#
#   scripts/fuzz.sh [SECONDS]
#
# The targets run side by side on the test harness's threads, so the run takes about
# SECONDS x 4 / (number of CPUs, at most 4), plus the build. A failing input is saved under
# tests/fuzz-regressions/<target>/ and the script exits non-zero.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${1:-60}"
if ! [[ "$seconds" =~ ^[0-9]+([.][0-9]+)?$ ]]; then
    echo "usage: scripts/fuzz.sh [SECONDS]  (SECONDS per target, default 60)" >&2
    exit 2
fi

log="$(mktemp)"
trap 'rm -f "$log"' EXIT

echo "fuzzing each target for ${seconds} s"
status=0
MPLINK_FUZZ_SECONDS="$seconds" cargo test --test app fuzz:: -- --nocapture 2>&1 | tee "$log" || status=$?

echo
echo "== fuzz summary =="
grep '^fuzz-report ' "$log" | sed 's/^fuzz-report //' || echo "(no target reported: see the output above)"
if [ "$status" -ne 0 ]; then
    echo "FAILED (cargo test exit status $status)"
    grep -E '^(fuzz [a-z_]+: input|saved as |input: |[0-9]+ regression input|  .*fuzz-regressions/)' "$log" || true
    exit "$status"
fi
echo "OK"
