#!/usr/bin/env bash
# GPU check, for a host with an NVIDIA GPU (about 4 minutes): builds the demo model and a ~1 GiB
# MLP, starts a private TorchServe with number_of_gpu=1, registers each at fp32 and fp16, and prints
# one table: cold start, throughput and p50/p99 at concurrency 64, GPU memory per worker, golden check.
#
#   bash scripts/gpu_check.sh            # needs .venv (make setup), a CUDA build of torch, and ab
#
# On a host without CUDA it still runs (everything lands on the CPU), which checks the script.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
export PYTHONUNBUFFERED=1
exec "$PY" -m scripts.gpu_check "$@"
