# One command per target. Every target installs first, so on a fresh machine `make test` is enough.
PY      := .venv/bin/python
STAMP   := .venv/.installed
# oneDNN convolutions for XLA:CPU (resflax/kernels); where oneDNN is not published (not Linux
# x86-64) the build step says so and convolutions stay XLA's.
KERNELS := resflax/kernels/_onednn_conv.so
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

.PHONY: install install-convert train finetune sweep test lint zoo bench bench-step bench-memory bench-products \
	bench-loop bench-compile bench-input clean

install: $(SETUP)

# oneDNN's headers are installed without their dependency (a second, SYCL build of
# libdnnl.so.3 that would replace onednn-cpu-gomp's in .venv/lib); Linux x86-64, as the library.
$(STAMP): pyproject.toml
	python3 -m venv .venv
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	if [ "$$(uname -sm)" = "Linux x86_64" ]; then \
	  $(PY) -m pip install --quiet --no-deps 'onednn-devel==2026.1.0'; fi
	touch $(STAMP)

$(KERNELS): resflax/kernels/onednn_conv.cc resflax/kernels/build.py $(STAMP)
	$(PY) -m resflax.kernels.build

# torch, torchvision and timm for the weight-conversion tests (several GB; CI installs them).
install-convert: .venv/.installed-convert

.venv/.installed-convert: $(SETUP)
	$(PY) -m pip install --quiet -e '.[test,convert]'
	touch $@

train: $(SETUP)
	$(PY) -m resflax.main --config=$(CONFIG) --workdir=$(WORKDIR) $(FLAGS)

finetune: $(SETUP)
	@test -n "$(SRC)" || { echo "make finetune: give SRC=<torchvision .pth or .safetensors>"; exit 1; }
	test -d runs/pretrained/$(MODEL) || \
	  $(PY) -m resflax.convert --model $(MODEL) --src $(SRC) --dst runs/pretrained/$(MODEL)
	$(PY) -m resflax.main --config=experiments/configs/finetune.py:$(MODEL) \
	  --workdir=runs/finetune_$(MODEL) --config.init_from=runs/pretrained/$(MODEL) $(FLAGS)

sweep: $(SETUP)
	$(PY) -m experiments.sweep --sweep $(SWEEP) --launcher $(LAUNCHER)

test: $(SETUP)
	XLA_FLAGS="$(XLA_TEST_FLAGS)" $(PY) -m pytest -q -n 2 --durations=10

lint: $(SETUP)
	$(PY) -m ruff check resflax experiments tests
	$(PY) -m ruff format --check resflax experiments tests

zoo: $(SETUP)
	$(PY) experiments/zoo.py --out experiments/results/zoo.md

# Performance (experiments/results/{train_step,memory,loop_overhead,products}.md); ~30 min on 2 cores.
bench: bench-step bench-memory bench-loop bench-products

bench-step: .venv/.installed-convert
	$(PY) experiments/benchmarks/cpu/train_step.py

bench-products: .venv/.installed-convert
	$(PY) experiments/benchmarks/micro/products.py
	$(PY) experiments/benchmarks/micro/products.py --cores 1

bench-memory: $(SETUP)
	$(PY) experiments/benchmarks/cpu/memory.py

bench-loop: $(SETUP)
	$(PY) experiments/benchmarks/cpu/loop_overhead.py

bench-compile: $(SETUP)
	$(PY) experiments/benchmarks/cpu/compile_vs_depth.py --out experiments/results/compile.md

bench-input: $(SETUP)
	$(PY) -m experiments.benchmarks.cpu.input_pipeline --out experiments/results/input_pipeline.md

clean:
	rm -rf .venv .pytest_cache .ruff_cache $(KERNELS)
