#!/usr/bin/env bash
# GPU check, for a host with an NVIDIA GPU: builds the demo digits CNN, ResNet-18 and a ~1 GiB MLP
# at fp32 and fp16 for each --runtimes (default eager), starts a private TorchServe with
# number_of_gpu=1, and prints one table: build time, cold start, requests/s and p50/p99 under wrk
# with binary v2 requests, GPU memory per worker, golden check error; refused builds with the reason.
#
#   bash scripts/bench/gpu_check.sh --runtimes eager onnx aoti   # needs .venv, a CUDA torch, and wrk
#
# On a host without CUDA it still runs (everything lands on the CPU), which checks the script.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
export PYTHONUNBUFFERED=1
exec "$PY" -m scripts.bench.gpu_check "$@"
