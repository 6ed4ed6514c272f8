#!/usr/bin/env bash
# Issue 26's measurement on a lent GPU: (a) the input pipelines alone, img/s at the host's core
# count; (b) `python -m resflax.main` end to end, the imagenet recipe's ResNet-50 in bf16 at
# batch 256 on an image folder of ImageNet-like JPEGs written on that host (500x375, quality 90,
# 10 classes; an epoch of FILES images outlasts the warm-up), fed by DALI, by tf.data, and beside
# it the same step on fake data; steady-state img/s from each run's metrics.jsonl. Targets: DALI
# >= 0.95x the fake-data step and >= MLPerf v4.0's per-GPU pace (7.15k img/s H100, 7.95k H200).
# Writes $OUT/gpu_input_alone.md, $OUT/gpu_input_end_to_end.md and the runs' logs.
#
# That machine reaches no registry. DALI (and, for the tf.data rows, TensorFlow and tfds, which
# its image lacks) travel as wheels cut into parts of at most 60 MiB by carry_wheels.sh beside
# this script, one part per device call (carry: [".whl/partNN"]) while the machine stays warm;
# here they are joined and installed into /tmp/site. A pipeline whose packages are missing is
# reported as not measured, with the reason. About 7 minutes on an H100 once the parts are there.
#
#   bash experiments/benchmarks/gpu/gpu_input.sh [STEPS] [FILES]
set -uo pipefail
cd "$(dirname "$0")/../../.."
steps=${1:-120}
files=${2:-40000}
out=${OUT:-/tmp}
site=/tmp/site
if compgen -G ".whl/part*/chunk*" > /dev/null && [ ! -d /tmp/wheels ]; then
  mkdir -p /tmp/wheels
  cat .whl/part*/chunk* | tar -C /tmp/wheels -xf - \
    && python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
         --target "$site" /tmp/wheels/*.whl
fi
export PYTHONPATH=$PWD:$site PYTHONUNBUFFERED=1
card=$(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | head -1)
echo "card: $card"
python3 -c "import jax; print('jax', jax.__version__, jax.devices())"
python3 -c "import nvidia.dali as d; print('nvidia-dali', d.__version__)" || true
python3 -c "import tensorflow as t; print('tensorflow', t.__version__)" 2>&1 | tail -1 || true
folder=/tmp/resflax-jpegs

# (a) each pipeline alone (writes the folder first: about 15 s on 16 cores)
timeout 240 python3 experiments/benchmarks/input_pipelines.py --folder "$folder" \
  --write "$files" --batch 256 --batches 40 --warmup 5 --out "$out/gpu_input_alone.md"

# (b) end to end: the same recipe and step, three inputs
common=(--config=experiments/configs/imagenet.py --config.dtype=bfloat16 --config.batch_size=256
        --config.num_epochs=none --config.num_steps="$steps" --config.log_every_steps=10
        --config.eval_every_steps=0 --config.checkpoint_every_steps=0 --config.max_to_keep=1)
declare -A data=(
  [fake]="--config.data.name=fake --config.data.num_classes=10 --config.data.eval_size=256"
  [dali]="--config.data.name=image_folder --config.data.folder=$folder --config.data.pipeline=dali"
  [tfdata]="--config.data.name=image_folder --config.data.folder=$folder --config.data.pipeline=tfdata"
)
runs=()
for input in fake dali tfdata; do
  rm -rf "/tmp/w_$input"
  # shellcheck disable=SC2086 # the data flags are words
  timeout 170 python3 -m resflax.main "${common[@]}" ${data[$input]} --workdir="/tmp/w_$input" \
    > "$out/run_$input.log" 2>&1
  echo "$input: exit $? ($(tail -1 "$out/run_$input.log"))"
  runs+=("$input=/tmp/w_$input")
done
python3 experiments/benchmarks/gpu/end_to_end.py "$out/gpu_input_end_to_end.md" "$card" "${runs[@]}"
