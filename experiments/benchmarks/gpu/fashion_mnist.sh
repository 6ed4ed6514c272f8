#!/usr/bin/env bash
# Zhong et al.'s Fashion-MNIST protocol (the fashion_mnist recipe's `paper` schedule: 300 epochs,
# batch 128, lr 0.1 ÷10 at 150 and 225) for ResNet-20 on a lent GPU, K seeds as one population
# (vmap), for as long as the call allows: at LIMIT seconds `timeout` sends SIGTERM, resflax saves
# a checkpoint and exits cleanly, and the run (its newest checkpoint, metrics, summary) goes to
# $OUT/fmnist_run, so the next lent call carries it back and resumes exactly where it stopped.
#
# That machine reaches no registry and its image lacks ml_collections; the data (30 MB) and that
# wheel travel with the call. Here, once:
#   bash experiments/benchmarks/gpu/fashion_mnist.sh --prepare     # .fmnist/ and .whl/
# There (carry [".fmnist", ".whl"], and ".fmnist-run" to resume a copy of $OUT/fmnist_run):
#   bash experiments/benchmarks/gpu/fashion_mnist.sh [K] [LIMIT]    # default 8 seeds, 480 s
set -uo pipefail
cd "$(dirname "$0")/../../.."
if [ "${1:-}" = "--prepare" ]; then
  mkdir -p .fmnist .whl
  cp /usr/share/datasets/fashion-mnist/*-ubyte.gz .fmnist/ || { echo "make data-fashion-mnist first"; exit 1; }
  python3 -m pip download --quiet --no-deps --only-binary=:all: -d .whl ml-collections==1.1.0
  grep -qx "/.fmnist/" .git/info/exclude 2>/dev/null || echo "/.fmnist/" >> .git/info/exclude
  grep -qx "/.whl/" .git/info/exclude 2>/dev/null || echo "/.whl/" >> .git/info/exclude
  du -sh .fmnist .whl
  exit 0
fi
k=${1:-8}
limit=${2:-480}
out=${OUT:-/tmp}
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site \
  .whl/ml_collections-*.whl || exit 1
export PYTHONPATH=$PWD:/tmp/site PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
workdir=.fmnist-run
start=$SECONDS
timeout --signal=TERM --kill-after=60 "$limit" python3 -m resflax.main \
  --config=experiments/configs/fashion_mnist.py:resnet20,paper --workdir="$workdir" \
  --config.data.folder=.fmnist --config.population.size="$k" --config.population.batching=vmap \
  --config.max_to_keep=1 --config.checkpoint_every_steps=2340 \
  2>&1 | tee "$out/fashion_mnist_gpu.log"
echo "fashion_mnist.sh: exit ${PIPESTATUS[0]} after $((SECONDS - start)) s (K=$k, limit $limit s)"
cp -r "$workdir" "$out/fmnist_run"
