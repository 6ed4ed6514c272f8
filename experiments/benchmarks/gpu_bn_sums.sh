#!/usr/bin/env bash
# One lent-GPU call for the Pallas BatchNorm sums (resflax.kernels.channel_sums): the sums alone
# on every ResNet-50 BatchNorm shape (XLA beside the kernel's settings), then the ResNet-50 bf16
# train step by default (bn_sums "auto": xla) and with bn_sums=pallas (also at batch 512), then torchvision eager and torch.compile, one process
# each (as gpu.sh). Writes $OUT/bn_sums_rows.jsonl, $OUT/gpu_rows.jsonl, $OUT/gpu_train_step.md.
#
#   bash experiments/benchmarks/gpu_bn_sums.sh [BATCH] [STEPS] [RESFLAX_VARIANT ...]
set -uo pipefail
cd "$(dirname "$0")/../.."
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
batch=${1:-256}
steps=${2:-30}
shift $(($# < 2 ? $# : 2))
variants=("$@")
[ ${#variants[@]} -gt 0 ] || variants=(default bn_sums=pallas bn_sums=pallas,batch=512)
out=${OUT:-/tmp}
rows=$out/gpu_rows.jsonl
: > "$rows"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader
timeout 150 python3 experiments/benchmarks/bn_sums.py "$batch" "$out/bn_sums_rows.jsonl" \
  4096:4 8192:8 2048:4 | grep -v '^{'
timeout 200 python3 experiments/benchmarks/gpu_bench.py resflax "$batch" "$steps" "${variants[@]}" \
  | grep '^{' | tee -a "$rows"
timeout 150 python3 experiments/benchmarks/gpu_bench.py torch "$batch" "$steps" \
  | grep '^{' | tee -a "$rows"
python3 experiments/benchmarks/gpu_bench.py table "$rows" "$out/gpu_train_step.md"
