#!/usr/bin/env bash
# Population throughput on a lent GPU (issue 25's target: K = 8 ResNet-20 members at >= 3x the
# img/s of one member): experiments/benchmarks/population.py with more timed steps, CIFAR
# ResNet-20 and ResNet-56 at K = 1, 2, 4, 8 (and 16 for ResNet-20) beside one member's own
# step. That machine's python3 has jax (CUDA), flax and optax; resflax runs from the checkout.
# Writes $OUT/population_gpu.md and its raw rows. ~3-4 minutes on an H100 (mostly compiles).
#
#   bash experiments/benchmarks/gpu/population.sh [STEPS]
set -uo pipefail
cd "$(dirname "$0")/../../.."
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
steps=${1:-30}
out=${OUT:-/tmp}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
timeout 150 python3 experiments/benchmarks/population.py --models resnet20 --ks 1 2 4 8 16 \
  --steps "$steps" --warmup 3 --out "$out/population_gpu_resnet20.md"
timeout 150 python3 experiments/benchmarks/population.py --models resnet56 --ks 1 2 4 8 \
  --steps "$steps" --warmup 3 --out "$out/population_gpu_resnet56.md"
cat "$out"/population_gpu_resnet*.md > "$out/population_gpu.md"
