#!/usr/bin/env bash
# One lent-GPU call for the Pallas BatchNorm sums (resflax.kernels.channel_sums): the sums alone
# on every ResNet-50 BatchNorm shape (XLA beside three of the kernel's tile:warps settings;
# micro/bn_sums.py), then gpu.sh: the step under auto(), with norm=closed_pallas and with it at
# batch 512 (or the variants given), torchvision beside. Writes $OUT/bn_sums_rows.jsonl and
# what gpu.sh writes.
#
#   bash experiments/benchmarks/gpu/gpu_bn_sums.sh [BATCH] [STEPS] [RESFLAX_VARIANT ...]
set -uo pipefail
cd "$(dirname "$0")/../../.."
batch=${1:-256}
PYTHONPATH=$PWD PYTHONUNBUFFERED=1 timeout 150 python3 experiments/benchmarks/micro/bn_sums.py \
  "$batch" "${OUT:-/tmp}/bn_sums_rows.jsonl" 4096:4 8192:8 2048:4 | grep -v '^{'
[ $# -gt 2 ] || set -- "$batch" "${2:-30}" default norm=closed_pallas norm=closed_pallas,batch=512
exec bash experiments/benchmarks/gpu/gpu.sh "$@"
