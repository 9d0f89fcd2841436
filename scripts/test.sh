#!/usr/bin/env bash
# Set up (idempotently) everything the tests need, then lint and run the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh "all,dev"
scripts/ensure_chromium.sh || echo "[test] no chromium: the browser tests will be skipped"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/python -m pytest "$@"
