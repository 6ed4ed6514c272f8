"""One SGD train step (momentum 0.9, cross-entropy, BatchNorm in training mode) per
implementation, timed in the process that runs this file:

    python experiments/benchmarks/harness/step_impls.py IMPL MODEL BATCH STEPS

IMPL: resflax | resflax_bf16 | resflax_no_barrier | resflax_plain | resflax_lib |
resflax_lib_auto | flax_example | torchvision | torchvision_cl | torchvision_cl_retain |
torchvision_cl_bf16 | keras | matmul_jax | matmul_torch.
The resflax implementations differ in the process settings and the execution policy:

    resflax          as `python -m resflax.main` runs: the recipe's process settings
                     (resflax.runtime: malloc, XLA:CPU flags) and ops=resflax.ops.auto()
    resflax_no_barrier  the same without the barrier flag `runtime.cpu_flags` adds
    resflax_plain    the same process settings, ops=resflax.ops.plain() (pure JAX)
    resflax_lib      a library user's defaults: no process settings, create_model(name)
    resflax_lib_auto no process settings, create_model(name, ops=resflax.ops.auto())

(auto() gets the model's scan and dtype, as the CLI's.) Environment: RESFLAX_MODEL_OVERRIDES
(JSON: model fields, e.g. {"dtype": "bfloat16"}); RESFLAX_OPS (a policy string for
harness.common.parse_ops, e.g. "auto,conv=dot") replaces the implementation's policy.
Prints one JSON line: the warm-up steps' times (the first compiles or traces), then the
timed steps.
Each implementation is imported only in its own process: torch ran ~30% slower in a process
that had JAX loaded, and torch and TensorFlow in one process crashed.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

# (image size, classes, resflax name); torchvision and Keras build the same networks.
WORKLOADS = {
    "resnet18": (224, 1000, "resnet18"),
    "resnet50": (224, 1000, "resnet50"),
    "resnet56": (32, 10, "resnet56"),
    "resnet20": (32, 10, "resnet20"),
}
# The recipe a user would train each with: resflax runs under that recipe's XLA flags.
RECIPES = {"resnet18": "imagenet", "resnet50": "imagenet", "resnet56": "cifar10",
           "resnet20": "cifar10"}  # fmt: skip


def recipe_config(name: str):
    import importlib

    return importlib.import_module(f"experiments.configs.{RECIPES[name]}").get_config(name)


def recipe_flags(name: str) -> str:
    return recipe_config(name).xla_cpu_flags


def recipe_setup(name: str, barrier: bool = True) -> dict:
    """What `python -m resflax.main` sets before JAX starts, for that model's recipe (its
    process settings); returns them as the CLI's summary.json records them. barrier=False
    leaves out the barrier flag `cpu_flags` adds (cpu/barrier_flag.py measures what it does)."""
    from resflax.runtime import apply_cpu_flags, apply_host_malloc, cpu_flags

    config = recipe_config(name)
    malloc = apply_host_malloc(config.host_malloc)
    apply_cpu_flags(cpu_flags(config.xla_cpu_flags) if barrier else config.xla_cpu_flags)
    return {"host_malloc": malloc, "xla_flags": os.environ.get("XLA_FLAGS", "")}


MATMUL_N = 4096


# Untimed steps per process: the first compiles or traces; with host_malloc="retain" the
# process heap then grows once or twice to its steady size (a 13 s ResNet-50 step on this
# machine, at step 1 or 2, with over a million page faults), for every implementation alike.
WARMUP = 3


def _time_steps(step: Callable[[], object], steps: int) -> dict:
    warmup = []
    for _ in range(WARMUP):
        t0 = time.perf_counter()
        step()
        warmup.append(time.perf_counter() - t0)
    first = warmup[0]
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return {"first_s": first, "warmup_s": warmup, "step_s": times}


# --- JAX ---------------------------------------------------------------------------------


def jax_setup(model, size: int, classes: int, batch: int) -> tuple:
    """The benchmarks' starting point: a fresh SGD-momentum state and one random batch."""
    import jax
    import jax.numpy as jnp
    import optax

    from resflax.train.state import make_init

    tx = optax.sgd(0.01, momentum=0.9)
    state = jax.jit(make_init(model, tx, (1, size, size, 3)))(jax.random.key(0))
    batch_ = {
        "image": jax.random.normal(jax.random.key(1), (batch, size, size, 3)),
        "label": jax.random.randint(jax.random.key(2), (batch,), 0, classes),
        "mask": jnp.ones((batch,)),
    }
    return state, batch_


def _jax_step(model, size: int, classes: int, batch: int, steps: int) -> dict:
    import jax

    from resflax.train.step import train_step

    state, batch_ = jax_setup(model, size, classes, batch)
    t0 = time.perf_counter()
    compiled = jax.jit(train_step, donate_argnums=0).lower(state, batch_).compile()
    compile_s = time.perf_counter() - t0
    holder = {"state": state}

    def step():
        holder["state"], metrics = compiled(holder["state"], batch_)
        jax.block_until_ready(metrics)

    out = _time_steps(step, steps)
    mem = compiled.memory_analysis()
    return {**out, "compile_s": compile_s, "temp_bytes": int(mem.temp_size_in_bytes)}


def _resflax(
    name: str, batch: int, steps: int, *, process: bool, ops: str | None, barrier: bool = True
) -> dict:
    """process: apply the recipe's process settings first (as the CLI); ops: the policy string
    ("auto", "plain"), or None for none given (`create_model`'s default, plain)."""
    if process:
        execution = {"process_settings": "recipe", **recipe_setup(name, barrier)}
    else:  # nothing from resflax.runtime: malloc and XLA_FLAGS as the process started
        execution = {"process_settings": "none", "xla_flags": os.environ.get("XLA_FLAGS", "")}
    from experiments.benchmarks.harness.common import parse_ops
    from resflax.models import create_model, get_entry

    size, classes, model_name = WORKLOADS[name]
    overrides = json.loads(os.environ.get("RESFLAX_MODEL_OVERRIDES") or "{}")
    ops = os.environ.get("RESFLAX_OPS") or ops
    kwargs = dict(overrides, num_classes=classes)
    if ops is not None:
        # After the process settings: auto() asks JAX for its backend, which starts it.
        scan = overrides.get("scan", get_entry(model_name).config.get("scan", False))
        dtype = overrides.get("dtype", "float32")
        kwargs["ops"] = parse_ops(ops, scan=bool(scan), dtype=dtype)
    model = create_model(model_name, **kwargs)
    execution["ops"] = model.ops.as_dict()
    return {**_jax_step(model, size, classes, batch, steps), "execution": execution}


def resflax(name: str, batch: int, steps: int) -> dict:
    return _resflax(name, batch, steps, process=True, ops="auto")


def resflax_no_barrier(name: str, batch: int, steps: int) -> dict:
    return _resflax(name, batch, steps, process=True, ops="auto", barrier=False)


def resflax_plain(name: str, batch: int, steps: int) -> dict:
    return _resflax(name, batch, steps, process=True, ops="plain")


def resflax_lib(name: str, batch: int, steps: int) -> dict:
    return _resflax(name, batch, steps, process=False, ops=None)


def resflax_lib_auto(name: str, batch: int, steps: int) -> dict:
    return _resflax(name, batch, steps, process=False, ops="auto")


def flax_example(name: str, batch: int, steps: int) -> dict:
    from experiments.benchmarks.baselines.flax_example_style import make

    size, classes, _ = WORKLOADS[name]
    return _jax_step(make(name, classes), size, classes, batch, steps)


# --- torch -------------------------------------------------------------------------------


def _torch_model(name: str, classes: int):
    import torchvision

    if name == "resnet56":
        from experiments.benchmarks.baselines.torch_cifar import resnet56

        return resnet56(classes)
    return getattr(torchvision.models, name)(num_classes=classes)


def torchvision_step(
    name: str,
    batch: int,
    steps: int,
    channels_last: bool = False,
    retain: bool = False,
    bf16: bool = False,
) -> dict:
    if retain:  # resflax's host_malloc="retain", before torch starts its threads
        from resflax.runtime.host_memory import retain_freed_memory

        if not retain_freed_memory():
            raise RuntimeError("host_malloc retain needs glibc's mallopt")
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    size, classes, _ = WORKLOADS[name]
    model = _torch_model(name, classes).train()
    x = torch.randn(batch, 3, size, size)
    y = torch.randint(0, classes, (batch,))
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def step():
        opt.zero_grad(set_to_none=True)
        # bf16: torch's automatic mixed precision on CPU (float32 weights, bf16 compute).
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        loss.item()

    return _time_steps(step, steps)


# --- Keras 3 on TensorFlow ---------------------------------------------------------------


def keras(name: str, batch: int, steps: int) -> dict:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras as k
    import numpy as np

    if name != "resnet50":
        raise ValueError(f"keras.applications has no {name}; only resnet50 is compared")
    size, classes, _ = WORKLOADS[name]
    model = k.applications.ResNet50(weights=None, classes=classes, input_shape=(size, size, 3))
    # jit_compile=False: Keras' fastest CPU path here (with XLA it ran at half the speed).
    model.compile(
        optimizer=k.optimizers.SGD(0.01, momentum=0.9),
        loss="sparse_categorical_crossentropy",
        jit_compile=False,
    )
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, size, size, 3), dtype=np.float32)
    y = rng.integers(0, classes, batch)
    return _time_steps(lambda: model.train_on_batch(x, y), steps)


# --- the machine's matmul rate -----------------------------------------------------------


def matmul_jax(_: str, __: int, steps: int) -> dict:
    from resflax.runtime import DEFAULT_FLAGS, apply_cpu_flags

    apply_cpu_flags(DEFAULT_FLAGS)
    import jax

    a = jax.random.normal(jax.random.key(0), (MATMUL_N, MATMUL_N))
    f = jax.jit(lambda a: a @ a)
    return _time_steps(lambda: jax.block_until_ready(f(a)), steps)


def matmul_torch(_: str, __: int, steps: int) -> dict:
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    a = torch.randn(MATMUL_N, MATMUL_N)
    return _time_steps(lambda: torch.mm(a, a), steps)


IMPLS = {
    "resflax": resflax,
    "resflax_bf16": resflax,  # with RESFLAX_MODEL_OVERRIDES={"dtype": "bfloat16"}
    "resflax_no_barrier": resflax_no_barrier,
    "resflax_plain": resflax_plain,
    "resflax_lib": resflax_lib,
    "resflax_lib_auto": resflax_lib_auto,
    "flax_example": flax_example,
    "torchvision": torchvision_step,
    "torchvision_cl": lambda n, b, s: torchvision_step(n, b, s, channels_last=True),
    "torchvision_cl_retain": lambda n, b, s: torchvision_step(n, b, s, True, retain=True),
    "torchvision_cl_bf16": lambda n, b, s: torchvision_step(n, b, s, True, bf16=True),
    "keras": keras,
    "matmul_jax": matmul_jax,
    "matmul_torch": matmul_torch,
}


def main() -> None:
    if len(sys.argv) != 5:
        print(__doc__)
        sys.exit(0 if len(sys.argv) == 2 and sys.argv[1] in ("-h", "--help") else 2)
    impl, name, batch, steps = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    if impl not in IMPLS:
        sys.exit(f"unknown implementation {impl!r}; valid: {', '.join(IMPLS)}")
    if name not in WORKLOADS and not impl.startswith("matmul"):
        sys.exit(f"unknown model {name!r}; valid: {', '.join(WORKLOADS)}")
    result = IMPLS[impl](name, batch, steps)
    print(json.dumps({"impl": impl, "model": name, "batch": batch, **result}))


if __name__ == "__main__":
    main()
