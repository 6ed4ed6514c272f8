#!/usr/bin/env bash
# cpu/compile_vs_depth.py on a lent GPU machine (see the device tool): its python3 has jax and
# flax, and resflax is used straight from the checkout. Writes $OUT/compile_gpu.md (or /tmp/...).
# Sized to finish in about 6 minutes on an H100.
set -euo pipefail
cd "$(dirname "$0")/../../.."
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
out=${OUT:-/tmp}/compile_gpu.md
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out.tmp"
python3 -c "import jax, flax; print('jax', jax.__version__, 'flax', flax.__version__, jax.devices())"
python3 experiments/benchmarks/cpu/compile_vs_depth.py --models resnet20,resnet110,resnet1202 \
  --layouts unrolled,scan,scan_canonical_grad --steps 20 --timeout 240 --out "$out.tmp"
mv "$out.tmp" "$out"
