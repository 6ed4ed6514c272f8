#!/usr/bin/env bash
# The performance check for a lent GPU machine (see the device tool's README): ResNet-50 bf16
# training on synthetic data, resflax's jit data-parallel step (ops=auto() as the CLI's, then
# the variants named below) beside torchvision eager and with torch.compile, channels_last and
# bf16 autocast, one process per framework, then the table with MFU. That machine's python3
# has jax, flax, optax and torch; resflax runs from the checkout (no ml_collections or
# tensorflow needed). Writes $OUT/gpu_train_step.md and the raw rows. ~4-6 minutes on an H100.
#
#   bash experiments/benchmarks/gpu/gpu.sh [BATCH] [STEPS] [RESFLAX_VARIANT ...]
set -uo pipefail
cd "$(dirname "$0")/../../.."
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
batch=${1:-256}
steps=${2:-30}
shift $(($# < 2 ? $# : 2))
variants=("$@")
# Each GPU default (auto()) switched off in turn, then a larger batch. (conv=dot aborted XLA's GPU
# compiler in jax 0.11.2 -- a Triton GEMM-fusion check -- and took the process with it.)
[ ${#variants[@]} -gt 0 ] || variants=(default fuse_relu=false norm=flax stem_conv=lax batch=512)
out=${OUT:-/tmp}
rows=$out/gpu_rows.jsonl
: > "$rows"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader
# Rows stream out as each variant finishes, so a process stopped at its limit keeps its rows.
timeout 240 python3 experiments/benchmarks/gpu/gpu_bench.py resflax "$batch" "$steps" "${variants[@]}" \
  | grep '^{' | tee -a "$rows"
timeout 200 python3 experiments/benchmarks/gpu/gpu_bench.py torch "$batch" "$steps" \
  | grep '^{' | tee -a "$rows"
python3 experiments/benchmarks/gpu/gpu_bench.py table "$rows" "$out/gpu_train_step.md"
