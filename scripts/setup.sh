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

# llama-cpp-python is source-only on PyPI. Build its wheel once into a wheelhouse shared by
# every checkout on this machine (~5 min on 2 cores). The build is portable (no -march=native):
# a native build of 0.3.36 segfaulted in decode on this machine's AVX-512/AMX CPU.
LLAMA_VERSION="$(sed -n 's/.*"llama-cpp-python==\([0-9.]*\)".*/\1/p' pyproject.toml | head -1)"
WHEELHOUSE="${MCU_WHEELHOUSE:-${XDG_CACHE_HOME:-$HOME/.cache}/mcu-sim/wheels}"
mkdir -p "$WHEELHOUSE"
if ! ls "$WHEELHOUSE"/llama_cpp_python-"$LLAMA_VERSION"-*.whl >/dev/null 2>&1; then
  echo "[setup] building llama-cpp-python $LLAMA_VERSION (once per machine, ~5 min)"
  CMAKE_ARGS="${CMAKE_ARGS:--DLLAVA_BUILD=OFF -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_TILE=OFF}" \
    "$VENV/bin/python" -m pip wheel --quiet --no-deps --no-cache-dir -w "$WHEELHOUSE" \
    "llama-cpp-python==$LLAMA_VERSION"
fi
echo "[setup] installing mcu-sim[$EXTRAS] (first time: several minutes)"
"$VENV/bin/python" -m pip install --quiet --find-links "$WHEELHOUSE" -e ".[$EXTRAS]"
echo "$WANT" > "$STAMP"
echo "[setup] done"
