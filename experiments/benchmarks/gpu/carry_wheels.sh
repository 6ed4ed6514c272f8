#!/usr/bin/env bash
# The wheels gpu_input.sh needs on the lent GPU machine, which reaches no registry and takes at
# most 64 MiB of carried files per call: downloaded here for its Python (3.12, x86-64), packed
# into one tar stream and cut into chunks of 60 MiB, each in its own folder .whl/partNN (ignored
# by git). Carry them one call each, in order, while the machine is warm (a call that names
# ".whl/part01" leaves the parts already there in place); the last call runs gpu_input.sh, which
# joins and installs them. DALI 2.4 with its codecs is ~250 MB (5 parts); WITH_TF=1 adds
# TensorFlow 2.21 and tfds 4.9.10 for the tf.data rows (~290 MB more, 5 parts).
#
#   bash experiments/benchmarks/gpu/carry_wheels.sh          # then: ls .whl
set -euo pipefail
cd "$(dirname "$0")/../../.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
rm -rf .whl && mkdir -p .whl/all
wheels=(nvidia-dali-cuda130==2.4.0 nvidia-nvimgcodec-cu13==0.9.0.20 nvidia-nvjpeg==13.3.2.43
        nvidia-nvjpeg2k-cu13==0.11.0.51 nvidia-nvtiff-cu13==0.8.0.82
        nvidia-libnvcomp-cu13==5.3.0.16 nvtx astunparse gast makefun ml-collections)
if [ "${WITH_TF:-0}" = 1 ]; then
  wheels+=(tensorflow-cpu==2.21.0 tensorflow-datasets==4.9.10 google-pasta termcolor dm-tree
           promise tensorflow-metadata simple-parsing docstring-parser immutabledict toml
           importlib_resources)
fi
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
  -d .whl/all "${wheels[@]}"
tar -C .whl/all -cf - . | split -b 60m -d -a 2 - .whl/chunk
rm -rf .whl/all
n=0
for chunk in .whl/chunk*; do
  n=$((n + 1))
  part=$(printf '.whl/part%02d' "$n")
  mkdir -p "$part" && mv "$chunk" "$part/"
done
du -sh .whl/part* 
echo "carry each of .whl/part01..part$(printf '%02d' "$n") in its own call, then run gpu_input.sh"
