#!/usr/bin/env bash
# GPU readiness check (issue 18): TensorRT fp16 engines for an untrained R50 bundle, their
# parity against ONNX Runtime on the CPU, streaming vs the eager peer loop, one live stream
# and the number of concurrent real-time streams. One summary table, bench/results/
# gpu_check.json; under 8 minutes. Exit 2 with the missing pieces named on a machine without
# an NVIDIA GPU, TensorRT >= 10 or onnxruntime-gpu. Arguments go to bench/gpu_check.py.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec timeout 480 "$PY" bench/gpu_check.py "$@"
