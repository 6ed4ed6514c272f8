# One command per target. Every target installs first, so on a fresh machine `make test` is enough.
# The interpreter and the environment are chosen once: `make test PYTHON=python3.13
# VENV=.venv-3.13` builds a second environment beside the default one (Python 3.11+; jax 0.11
# and later need 3.12+, so the newest jax comes with the newest Python).
PYTHON  ?= python3
VENV    ?= .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
# The exact versions to install (.ci/locks/README.md): .ci/run's gate installs from a lock, one
# per environment, so that an upstream release cannot turn a good change red. The default
# environment's lock is for Python 3.11 (python3 here and in CI); with another Python, or with
# LOCK= (empty), pip resolves within pyproject.toml's ranges instead.
LOCK    ?= .ci/locks/default.txt
# oneDNN convolutions for XLA:CPU (resflax/kernels), built per environment (the file name
# carries the interpreter's extension suffix, as a compiled extension's does); where oneDNN is
# not published (not Linux x86-64) the build step says so and convolutions stay XLA's.
KERNELS := $(VENV)/.kernels-built
SETUP   := $(STAMP) $(KERNELS)
# With XLA:CPU's optimisation barriers kept, as the CLI runs: remat really recomputes and
# relu_stored really stores (resflax/runtime/xla_flags.py).
XLA_TEST_FLAGS := --xla_force_host_platform_device_count=8 --xla_disable_hlo_passes=cse_barrier_expander
export JAX_NUMPY_RANK_PROMOTION := raise

# make train [CONFIG=experiments/configs/<recipe>.py[:<arg>]] [WORKDIR=runs/...] [FLAGS="--config.x=y"]
CONFIG  ?= experiments/configs/digits.py
WORKDIR ?= runs/$(subst :,_,$(subst .py,,$(notdir $(CONFIG))))
FLAGS   ?=

SWEEP    ?= experiments/sweeps/digits_depths.py
LAUNCHER ?= local

# make finetune MODEL=resnet50 SRC=resnet50-0676ba61.pth [FLAGS="--config.data.name=..."]
MODEL ?= resnet50
SRC   ?=

# make test TESTS="tests/models tests/train/test_step.py" runs a part of the suite.
TESTS ?=

.PHONY: install install-convert install-dali train data-fashion-mnist finetune sweep test test-fast test-newest test-latest test-core lint zoo bench bench-step bench-memory bench-products \
	bench-loop bench-compile bench-input bench-population clean

install: $(SETUP)

# What the targets need: the models (the core), the train extra (training, data, sweeps, the
# oneDNN kernels) and the test extra. oneDNN's headers come from the same release as its
# library (onednn-devel-cpu-gomp pins onednn-cpu-gomp; tests/kernels/test_onednn.py checks the
# two versions agree).
$(STAMP): pyproject.toml $(wildcard $(LOCK))
	$(PYTHON) -m venv $(VENV)
	lock=$$(.ci/lock-args $(PY) "$(LOCK)") || exit 1; \
	PIP_CONSTRAINT="$$lock" $(PY) -m pip install --quiet --upgrade pip && \
	PIP_CONSTRAINT="$$lock" $(PY) -m pip install --quiet -e '.[train,test]'
	touch $(STAMP)

$(KERNELS): resflax/kernels/onednn_conv.cc resflax/kernels/build.py $(STAMP)
	$(PY) -m resflax.kernels.build
	touch $(KERNELS)

# torch, torchvision and timm for the weight-conversion tests (several GB; CI installs them).
install-convert: $(VENV)/.installed-convert

$(VENV)/.installed-convert: $(SETUP)
	lock=$$(.ci/lock-args $(PY) "$(LOCK)") || exit 1; \
	PIP_CONSTRAINT="$$lock" $(PY) -m pip install --quiet -e '.[train,test,convert]'
	touch $@

# NVIDIA DALI for data.pipeline=dali (about 700 MB with its codecs): the build for the CUDA of
# the jax plugin installed (12 or 13; without one, 13, whose CPU pipelines run anywhere). CI
# installs it and tests the DALI pipeline on the CPU (tests/data/test_dali.py).
install-dali: $(VENV)/.installed-dali

$(VENV)/.installed-dali: $(SETUP)
	@extra=$$($(PY) -c "import importlib.util as u; print('dali-cuda12' if u.find_spec('jax_cuda12_plugin') else 'dali')"); \
	echo "make install-dali: resflax[$$extra]"; \
	lock=$$(.ci/lock-args $(PY) "$(LOCK)") || exit 1; \
	PIP_CONSTRAINT="$$lock" $(PY) -m pip install --quiet -e ".[train,test,$$extra]"
	touch $@

train: $(SETUP)
	$(PY) -m resflax.main --config=$(CONFIG) --workdir=$(WORKDIR) $(FLAGS)

# Fashion-MNIST's four IDX files (30 MB) where the fashion_mnist recipe looks by default:
# Debian's dataset-fashion-mnist, through apt as root (or sudo without a password).
FMNIST_DIR   := /usr/share/datasets/fashion-mnist
FMNIST_FILES := $(foreach f,train-images-idx3 train-labels-idx1 t10k-images-idx3 t10k-labels-idx1,$(FMNIST_DIR)/$(f)-ubyte.gz)
data-fashion-mnist:
	@if ls $(FMNIST_FILES) >/dev/null 2>&1; then echo "make data-fashion-mnist: in $(FMNIST_DIR)"; exit 0; fi; \
	as=""; [ "$$(id -u)" = 0 ] || as="sudo -n"; \
	if command -v apt-get >/dev/null && { [ -z "$$as" ] || sudo -n true 2>/dev/null; }; then \
	  { $$as apt-get install -y -q dataset-fashion-mnist || { $$as apt-get update -q && $$as apt-get install -y -q dataset-fashion-mnist; }; } >/dev/null \
	  && ls $(FMNIST_FILES) >/dev/null && echo "make data-fashion-mnist: installed dataset-fashion-mnist into $(FMNIST_DIR)"; \
	else echo "make data-fashion-mnist: no apt-get as root here: download the four IDX files from https://github.com/zalandoresearch/fashion-mnist (data/fashion) and pass --config.data.folder=<their folder>"; exit 1; fi

finetune: $(SETUP)
	@test -n "$(SRC)" || { echo "make finetune: give SRC=<torchvision .pth or .safetensors>"; exit 1; }
	test -d runs/pretrained/$(MODEL) || \
	  $(PY) -m resflax.convert --model $(MODEL) --src $(SRC) --dst runs/pretrained/$(MODEL)
	$(PY) -m resflax.main --config=experiments/configs/finetune.py:$(MODEL) \
	  --workdir=runs/finetune_$(MODEL) --config.init_from=runs/pretrained/$(MODEL) $(FLAGS)

sweep: $(SETUP)
	$(PY) -m experiments.sweep --sweep $(SWEEP) --launcher $(LAUNCHER)

test: $(SETUP)
	XLA_FLAGS="$(XLA_TEST_FLAGS)" $(PY) -m pytest -q -n 2 --durations=10 $(TESTS)

# A contributor's loop: the suite without the tests marked `slow` (`make test` and .ci/run stay
# complete).
test-fast: $(SETUP)
	XLA_FLAGS="$(XLA_TEST_FLAGS)" $(PY) -m pytest -q -n 2 -m "not slow" $(TESTS)

# The core of the suite on the newest Python 3.12+ found (.ci/newest-python) with the newest
# jax the ranges admit, in its own environment (.ci/run runs it after the full suite): the
# models and their transformations, the ops, the kernels, the process settings, the step, all
# three parallel drivers, checkpoints, NNX and one command-line run (make train's job).
NEWEST_VENV  ?= .venv-newest
NEWEST_TESTS := tests/models tests/ops tests/kernels tests/runtime tests/test_imports.py \
	tests/test_nnx.py tests/train/test_step.py tests/train/test_parallel.py \
	tests/train/test_checkpoint.py tests/test_deprecations.py \
	tests/test_main.py::test_default_run_reaches_the_accuracy_bar

test-newest:
	@py="$$(.ci/newest-python)"; \
	if [ -z "$$py" ]; then echo "make test-newest: no Python 3.12+ on PATH or in pyenv"; exit 1; fi; \
	echo "make test-newest: $$py ($$($$py --version)) in $(NEWEST_VENV)"; \
	$(MAKE) --no-print-directory test VENV=$(NEWEST_VENV) PYTHON="$$py" LOCK=.ci/locks/newest.txt \
	  TESTS="$(NEWEST_TESTS)"

# The canary: the latest releases within pyproject's ranges on the newest Python, in a new
# environment, through the same core of the suite; on success it rewrites .ci/locks/newest.txt,
# so moving the gate forward is this command and one reviewed diff (`git diff .ci/locks`).
LATEST_VENV ?= .venv-latest
test-latest:
	@py="$$(.ci/newest-python)"; \
	if [ -z "$$py" ]; then echo "make test-latest: no Python 3.12+ on PATH or in pyenv"; exit 1; fi; \
	rm -rf $(LATEST_VENV); \
	$(MAKE) --no-print-directory test VENV=$(LATEST_VENV) PYTHON="$$py" LOCK= TESTS="$(NEWEST_TESTS)" \
	  && .ci/freeze-lock $(LATEST_VENV)/bin/python .ci/locks/newest.txt \
	  && echo "make test-latest: passed; review and commit: git diff .ci/locks/newest.txt"

# `pip install resflax` (no extras) is enough for the models: builds the wheel (checking its
# metadata and build log), installs it alone into a new venv under the test's tmp folder (the
# packages from the registries, through pip's cache) and runs models and README's reuse
# example there (tests/test_packaging.py). About 2 minutes, so not part of `make test`;
# .ci/run runs it.
test-core: $(SETUP)
	lock=$$(.ci/lock-args $(PY) .ci/locks/core.txt) || exit 1; \
	RESFLAX_TEST_CORE_INSTALL=1 RESFLAX_CORE_LOCK="$$lock" XLA_FLAGS="$(XLA_TEST_FLAGS)" $(PY) -m pytest -q -rs --durations=3 \
	  tests/test_packaging.py::test_the_core_install_is_enough_for_the_models

lint: $(SETUP)
	$(PY) -m ruff check resflax experiments tests
	$(PY) -m ruff format --check resflax experiments tests

zoo: $(SETUP)
	$(PY) experiments/zoo.py --out experiments/results/zoo.md

# Performance (experiments/results/{train_step,memory,loop_overhead,products}.md); ~30 min on 2 cores.
bench: bench-step bench-memory bench-loop bench-products

bench-step: $(VENV)/.installed-convert
	$(PY) experiments/benchmarks/cpu/train_step.py

bench-products: $(VENV)/.installed-convert
	$(PY) experiments/benchmarks/micro/products.py
	$(PY) experiments/benchmarks/micro/products.py --cores 1

bench-memory: $(SETUP)
	$(PY) experiments/benchmarks/cpu/memory.py

bench-loop: $(SETUP)
	$(PY) experiments/benchmarks/cpu/loop_overhead.py

bench-compile: $(SETUP)
	$(PY) experiments/benchmarks/cpu/compile_vs_depth.py --out experiments/results/compile.md

# Population training: K = 1, 2, 4, 8 CIFAR ResNet-20/56 members in one step vs one member's.
bench-population: $(SETUP)
	$(PY) experiments/benchmarks/population.py

# The tf.data pipeline beside the train step, then both pipelines alone on image files (DALI's
# CPU pipeline where the dali extra is installed); on a GPU: experiments/benchmarks/gpu/gpu_input.sh
bench-input: $(SETUP)
	$(PY) -m experiments.benchmarks.cpu.input_pipeline --out experiments/results/input_pipeline.md
	$(PY) experiments/benchmarks/input_pipelines.py --folder $${TMPDIR:-/tmp}/resflax-jpegs \
	  --write 2048 --batch 64 --batches 12 --dtype float32 --out experiments/results/input_pipelines_cpu.md

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache resflax/kernels/_onednn_conv*.so
