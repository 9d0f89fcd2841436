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
# The stamp holds the pyproject hash and the extras installed with it. "all" covers the
# "images" and "scale" extras, so alternating demo.sh and test.sh does not reinstall.
STAMP="$VENV/.mcu-installed"
HASH="$(sha256sum pyproject.toml | cut -c1-16)"
expand_extras() { tr ',' '\n' <<<"$1" | sed 's/^all$/images\nscale\nreport/' | sed '/^$/d' | sort -u; }
if [ -f "$STAMP" ] && [ "$(head -1 "$STAMP")" = "$HASH" ]; then
  HAVE="$(tail -n +2 "$STAMP")"
  MISSING="$(comm -23 <(expand_extras "$EXTRAS") <(sort -u <<<"$HAVE"))"
  if [ -z "$MISSING" ]; then
    echo "[setup] $VENV is up to date ($EXTRAS)"
    exit 0
  fi
  EXTRAS="$EXTRAS,$(paste -sd, <<<"$HAVE")"  # keep what is there, add what is missing
fi
LOG="$VENV/setup.log"
: > "$LOG"
# pip's and the build backends' chatter goes to the log; on failure its end is shown.
quietly() {
  if ! "$@" >>"$LOG" 2>&1; then
    echo "[setup] failed: $*" >&2
    tail -n 40 "$LOG" >&2
    echo "[setup] full log: $LOG" >&2
    exit 1
  fi
}
quietly "$VENV/bin/python" -m pip install --quiet --upgrade pip wheel setuptools

# llama-cpp-python is source-only on PyPI. Build its wheel once into a wheelhouse shared by
# every checkout on this machine (~5 min on 2 cores). The build is portable (no -march=native):
# a native build of 0.3.36 segfaulted in decode on this machine's AVX-512/AMX CPU.
LLAMA_VERSION="$(sed -n 's/.*"llama-cpp-python==\([0-9.]*\)".*/\1/p' pyproject.toml | head -1)"
WHEELHOUSE="${MCU_WHEELHOUSE:-${XDG_CACHE_HOME:-$HOME/.cache}/mcu-sim/wheels}"
mkdir -p "$WHEELHOUSE"
if ! ls "$WHEELHOUSE"/llama_cpp_python-"$LLAMA_VERSION"-*.whl >/dev/null 2>&1; then
  echo "[setup] building llama-cpp-python $LLAMA_VERSION (once per machine, ~5 min)"
  export CMAKE_ARGS="${CMAKE_ARGS:--DLLAVA_BUILD=OFF -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_TILE=OFF}"
  quietly "$VENV/bin/python" -m pip wheel --quiet --no-deps --no-cache-dir -w "$WHEELHOUSE" \
    "llama-cpp-python==$LLAMA_VERSION"
fi
echo "[setup] installing mcu-sim[$EXTRAS] (first time: several minutes)"
quietly "$VENV/bin/python" -m pip install --quiet --find-links "$WHEELHOUSE" -e ".[$EXTRAS]"
{ echo "$HASH"; expand_extras "$EXTRAS"; } > "$STAMP"
echo "[setup] done (log: $LOG)"
