#!/usr/bin/env bash
# Create (or reuse) .venv and install mcu-sim with the given extras. Idempotent: the install
# is skipped when pyproject.toml and the extras have not changed since the last success.
# Usage: scripts/setup.sh [extras]   e.g. scripts/setup.sh "images,dev"
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS="${1:-images}"
PYTHON="${PYTHON:-python3}"
VENV="${VENV:-.venv}"

if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating $VENV with $($PYTHON --version)"
  "$PYTHON" -m venv "$VENV"
fi
STAMP="$VENV/.mcu-installed"
WANT="$(cat pyproject.toml | sha256sum | cut -c1-16)-$EXTRAS"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ]; then
  echo "[setup] $VENV is up to date ($EXTRAS)"
  exit 0
fi
"$VENV/bin/python" -m pip install --quiet --upgrade pip wheel setuptools
# llama-cpp-python builds from source once (~5 min on 2 cores); pip caches the wheel after.
export CMAKE_ARGS="${CMAKE_ARGS:--DLLAVA_BUILD=OFF}"
echo "[setup] installing mcu-sim[$EXTRAS] (first time: several minutes)"
"$VENV/bin/python" -m pip install --quiet -e ".[$EXTRAS]"
echo "$WANT" > "$STAMP"
echo "[setup] done"
