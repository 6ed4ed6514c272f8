#!/usr/bin/env bash
# The performance check for a lent GPU machine (see the device tool's README): ResNet-50 bf16
# training on synthetic data, resflax's jit data-parallel step beside torchvision with
# torch.compile + channels_last + bf16 autocast, each in its own process, then the table with
# MFU. That machine's python3 has jax, flax, optax and torch; resflax runs from the checkout
# (no ml_collections or tensorflow needed). Writes $OUT/gpu_train_step.md. ~5 minutes on H100.
#
#   bash experiments/benchmarks/gpu.sh [BATCH] [STEPS]
set -uo pipefail
cd "$(dirname "$0")/../.."
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
batch=${1:-256}
steps=${2:-30}
out=${OUT:-/tmp}
rows=$out/gpu_rows.jsonl
: > "$rows"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader
timeout 240 python3 experiments/benchmarks/gpu_bench.py resflax "$batch" "$steps" | tail -1 | tee -a "$rows"
timeout 300 python3 experiments/benchmarks/gpu_bench.py torch "$batch" "$steps" | tail -1 | tee -a "$rows"
python3 experiments/benchmarks/gpu_bench.py table "$rows" "$out/gpu_train_step.md"
