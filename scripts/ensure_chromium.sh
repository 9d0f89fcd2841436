#!/usr/bin/env bash
# Make sure Debian's headless-capable chromium is at /usr/bin/chromium.
# Idempotent: does nothing when it is already installed. Needs root (apt-get).
# Used by the browser tests of the episode viewer (tests/test_viewer_browser.py).
set -euo pipefail

CHROMIUM=/usr/bin/chromium

if [ -x "$CHROMIUM" ]; then
    echo "chromium already installed: $("$CHROMIUM" --version 2>/dev/null || echo "$CHROMIUM")"
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    echo "ensure_chromium: $CHROMIUM is missing and installing it needs root;" \
         "run: sudo apt-get install -y chromium" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
# Serialise with other apt users on this machine (apt's own lock would make us fail instead).
exec 9>/tmp/mcu-apt.lock
flock 9
if [ ! -x "$CHROMIUM" ]; then
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
fi

if [ ! -x "$CHROMIUM" ]; then
    echo "ensure_chromium: apt-get finished but $CHROMIUM is still missing" >&2
    exit 1
fi
echo "chromium installed: $("$CHROMIUM" --version 2>/dev/null || echo "$CHROMIUM")"
