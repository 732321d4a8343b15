#!/usr/bin/env bash
# The training-speed bench on a CUDA machine (see bench/gpu.py and docs/benchmarks.md):
#   bench/gpu.sh [--dry-run] [--repeats N] [--steps N] [--peak-tflops T] [--out DIR]
# Needs the [runtime] extra with deepspeed; liger-kernel and flash-attn are used when installed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || PY=python3
exec "$PY" -m bench.gpu "$@"
