#!/usr/bin/env bash
# Debian's Chromium and its WebDriver, for the browser test (tests/browser.rs) and the demo.
#
#   scripts/chromium.sh ensure    install chromium and chromium-driver with apt-get if missing
#   scripts/chromium.sh status    exit 0 when both are installed; print their versions
#
# Installing needs root (or sudo) and Debian's package archive; an install that is already there
# does nothing, so the script is safe to call before every test run.
set -euo pipefail

installed() { command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; }

versions() {
    # The Debian launcher prints shell noise on stderr on some hosts; the version is on stdout.
    echo "$(chromium --version 2>/dev/null) / $(chromedriver --version 2>/dev/null | cut -d' ' -f1-2)"
}

ensure() {
    if installed; then
        echo "Chromium present: $(versions)"
        return
    fi
    local sudo=""
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null || {
            echo "chromium and chromium-driver are missing, and installing them needs root (no sudo here)" >&2
            exit 1
        }
        sudo=sudo
    fi
    command -v apt-get >/dev/null || {
        echo "chromium and chromium-driver are missing and this is not a Debian system (no apt-get): install them by hand" >&2
        exit 1
    }
    echo "installing chromium and chromium-driver from Debian (about a minute)"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium chromium-driver >/dev/null
    installed || { echo "apt-get finished but chromium or chromedriver is still not on PATH" >&2; exit 1; }
    echo "Chromium installed: $(versions)"
}

case "${1:-}" in
    ensure) ensure ;;
    status) if installed; then echo "Chromium present: $(versions)"; else echo "chromium or chromedriver missing"; exit 1; fi ;;
    *) echo "usage: $0 ensure|status" >&2; exit 2 ;;
esac
