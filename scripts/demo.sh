#!/usr/bin/env bash
# Set up (idempotently) and generate one episode on the embedded local model, offline.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh images,report
OUT="${1:-runs/demo}"
.venv/bin/mcu run --config data/configs/demo.yaml --episodes 1 --out "$OUT"
.venv/bin/mcu export "$OUT" --format stark-hf
echo "episode files: $OUT/episodes/"
