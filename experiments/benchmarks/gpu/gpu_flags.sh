#!/usr/bin/env bash
# XLA GPU compiler options for the ResNet-50 bf16 step (run on a lent GPU after gpu.sh): the
# default step (ops=resflax.ops.auto(), as the CLI), then the same step under each candidate
# flag, each in its own process (an experimental flag may abort XLA; that row then reads
# "failed"). Cuts each process at ${LIMIT:-40} s (about 30 s each on an H200).
# Writes $OUT/gpu_flags.md and the raw rows.
#
#   bash experiments/benchmarks/gpu/gpu_flags.sh [BATCH] [STEPS] [FLAGS ...]
#
# Without FLAGS, the candidates not measured yet: Triton for every matrix product (1x1
# convolutions are cuBLAS calls in the profile; a Triton GEMM fusion can take the
# normalise-ReLU that feeds it as a prologue) and cuDNN's GEMM fusions (Hopper and later).
# Measured on an H200 on 2026-11-26, none adopted (experiments/results/gpu_train_step.md):
# fusion_block_level_rewriter, enable_conv_fusion, triton_heroless_priority_fusion,
# unsupported_enable_triton_multi_output_fusion. Every flag here exists in jaxlib 0.10.2 and
# 0.11.2 (tests/benchmarks/test_gpu_bench.py parses them).
set -uo pipefail
cd "$(dirname "$0")/../../.."
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
batch=${1:-256}
steps=${2:-15}
out=${OUT:-/tmp}
candidates=(
  "--xla_gpu_triton_gemm_any=true"
  "--xla_gpu_cudnn_gemm_fusion_level=1"
  "--xla_gpu_cudnn_gemm_fusion_level=3"
  "--xla_gpu_triton_gemm_any=true --xla_gpu_cudnn_gemm_fusion_level=3"
)
rows=$out/gpu_flags_rows.jsonl
: > "$rows"
# Later processes reuse the first one's autotuning results (compile time, not step time).
cache="--xla_gpu_per_fusion_autotune_cache_dir=/tmp/resflax-autotune"
shift $(( $# < 2 ? $# : 2 ))
[ $# -eq 0 ] || candidates=("$@")
flags=("" "${candidates[@]}")
bench=experiments/benchmarks/gpu/gpu_bench.py
for f in "${flags[@]}"; do
  label=${f:-default}
  row=$(XLA_FLAGS="$cache $f" timeout "${LIMIT:-40}" python3 "$bench" resflax "$batch" "$steps" \
    2>/dev/null | grep '^{' | tail -1)
  [ -n "$row" ] || row="{\"error\": \"no result (aborted, or over ${LIMIT:-40} s)\"}"
  python3 -c 'import json, sys; r = json.loads(sys.argv[1]); r["impl"] = "resflax " + sys.argv[2]
print(json.dumps(r))' "$row" "$label" | tee -a "$rows"
done
python3 "$bench" table "$rows" "$out/gpu_flags.md"
