"""`auto()`: the fastest measured policy for the machine JAX runs on.

The one place in resflax that asks which backend JAX runs on, how many devices it has and which
instructions the CPU has; models never do. `python -m resflax.main` resolves its policy here
once, logs it and records it in `summary.json` and the checkpoints as an execution detail.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from resflax.ops.policy import Ops


@functools.cache
def native_bf16() -> bool:
    """Whether this CPU has bf16 instructions (AVX512-BF16 or AMX). Without them oneDNN
    emulates bf16 (slower than float32) or has no bf16 convolution at all (AVX2)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "").split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def _onednn_available() -> bool:
    from resflax.kernels import onednn

    return onednn.available()


def auto_conv(backend: str, devices: int, *, scan: bool, dtype: Any) -> str:
    """XLA:CPU runs 1x1 convolutions' gradients fast only as matrix products and scanned
    stages' kxk gradients only in canonical layouts; oneDNN runs kxk convolutions faster still,
    but sees whole arrays (XLA cannot split its call over a sharded batch), so only on one
    device. GPU and TPU compilers do all of this well from JAX's own form."""
    if backend != "cpu":
        return "lax"
    bf16 = jnp.dtype(dtype) == jnp.bfloat16
    if devices == 1 and _onednn_available():
        # Without bf16 instructions every bf16 convolution would leave oneDNN again.
        return "dot" if bf16 and not native_bf16() else "onednn"
    return "canonical" if scan else "dot"


def auto(
    *,
    scan: bool = False,
    dtype: Any = "float32",
    backend: str | None = None,
    devices: int | None = None,
) -> Ops:
    """The policy measured fastest for `backend` (default: JAX's) with `devices` (default:
    all), for a model with scanned stages or not, computing in `dtype`.

    CPU: conv "onednn" on one device where the kernels are built, else "dot" ("canonical"
    when scanned); ReLU stored. GPU: the stem space-to-depth (ResNet-50 step 4.7% faster on an
    H100); ReLU stored. Everywhere: BatchNorm's closed-form backward pass with the ReLU fused
    (2-5% on XLA:CPU, 3.3% + 1.2% on an H100) and the max-pool gradient by phases. Numbers:
    docs/performance.md.
    """
    backend = backend or jax.default_backend()
    devices = jax.device_count() if devices is None else devices
    return Ops(
        conv=auto_conv(backend, devices, scan=scan, dtype=dtype),
        stem_conv="space_to_depth" if backend == "gpu" else "lax",
        norm="closed",
        fuse_relu=True,
        act="relu_stored" if backend in ("cpu", "gpu") else "relu",
        pool="phases",
    )


def population_batching(backend: str | None = None) -> str:
    """How a population's members are computed in one step (resflax.train.population):
    "vmap" (one batched program: grouped convolutions and batched products) on GPU and TPU,
    where one small member leaves the device idle; "map" (the members one after another inside
    the step, each computed as its own run) on the CPU, whose cores one member already fills and
    where XLA:CPU's batched forms were slower than K runs (experiments/results/population.md)."""
    return "map" if (backend or jax.default_backend()) == "cpu" else "vmap"


def data_device(backend: str | None = None) -> str:
    """Where DALI (data.pipeline="dali") decodes and augments: on the GPU when the step runs
    on one, else on the host's CPU cores."""
    return "gpu" if (backend or jax.default_backend()) == "gpu" else "cpu"
