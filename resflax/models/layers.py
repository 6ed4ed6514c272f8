"""Factories for convolution and activation, and the residual shortcut kinds (normalisation:
`norms`).

The parent network builds `conv`, `norm` and `act` once (dtype, norm kind, train mode and the
execution policy are decided there) and hands them to stems and blocks, which only choose
shapes and names.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from resflax.ops.policy import PLAIN, Ops

ModuleDef = Any
Array = jax.Array

ACTIVATIONS = {"relu": nn.relu, "silu": nn.silu, "gelu": nn.gelu}
# Shortcut kinds: the three options of He et al. 2015 (A: zero-padded identity, B: projection
# where the shape changes, C: projection everywhere) and "D", the average-pool downsampling
# shortcut of the ResNet-D tweak (He et al. 2019, "Bag of Tricks").
SHORTCUTS = ("A", "B", "C", "D")

# torchvision initialises convolutions with kaiming_normal_(mode="fan_out", nonlinearity="relu").
conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def pad(kernel: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """Symmetric padding k//2, as torchvision/Caffe use; flax's 'SAME' pads (0, 1) at stride 2."""
    p = kernel // 2
    return ((p, p), (p, p))


def make_conv(dtype: Any = jnp.float32, ops: Ops = PLAIN) -> ModuleDef:
    """Bias-free convolution computing in `dtype` with float32 parameters, computed as the
    execution policy `ops` says (`Ops.conv`; JAX's own by default)."""
    return partial(
        nn.Conv, use_bias=False, dtype=dtype, param_dtype=jnp.float32, kernel_init=conv_init,
        conv_general_dilated=ops.conv_fn(),
    )  # fmt: skip


def get_activation(name: str, ops: Ops = PLAIN) -> Callable[[Array], Array]:
    """The activation `name`; a ReLU as `ops.act` computes it (others unchanged)."""
    if name not in ACTIVATIONS:
        raise ValueError(f"act={name!r} is not one of {tuple(ACTIVATIONS)}")
    return ops.relu() if name == "relu" else ACTIVATIONS[name]


def avg_pool_ceil(x: Array, stride: int) -> Array:
    """2x2/`stride` average pool with ceil_mode=True, count_include_pad=False (timm's avg-down)."""
    h, w = x.shape[1:3]
    padding = ((0, (-h) % stride), (0, (-w) % stride))
    return nn.avg_pool(
        x, (stride, stride), (stride, stride), padding=padding, count_include_pad=False
    )


def shortcut(
    x: Array,
    *,
    features: int,
    strides: int,
    kind: str,
    conv: ModuleDef,
    norm: ModuleDef | None,
) -> Array:
    """The residual branch's partner. Must be called inside a parent's compact method.

    Submodules are named `proj_conv` / `proj_norm` in the calling block. `norm=None` is for
    pre-activation blocks, whose projection acts on an already normalised input.
    """
    if kind not in SHORTCUTS:
        raise ValueError(f"shortcut={kind!r} is not one of {SHORTCUTS}")
    reshapes = strides != 1 or x.shape[-1] != features
    if kind == "A":
        if not reshapes:
            return x
        if x.shape[-1] > features:
            raise ValueError(
                f"shortcut 'A' zero-pads channels; it cannot reduce {x.shape[-1]} to {features}"
            )
        x = x[:, ::strides, ::strides, :]
        extra = features - x.shape[-1]
        # Split the zero channels evenly on both sides, as the reference CIFAR code does.
        return jnp.pad(x, ((0, 0), (0, 0), (0, 0), (extra // 2, extra - extra // 2)))
    if kind in ("B", "D") and not reshapes:
        return x
    if kind == "D" and strides > 1:
        x = avg_pool_ceil(x, strides)
        strides = 1
    x = conv(features, (1, 1), (strides, strides), padding="VALID", name="proj_conv")(x)
    if norm is not None:
        x = norm(name="proj_norm")(x)
    return x


def drop_path(
    module: nn.Module, x: Array, rate: float | Array | None, deterministic: bool
) -> Array:
    """Stochastic depth: drop the whole residual branch per example (Huang et al. 2016).

    `rate` may be a traced scalar (scanned stages feed one rate per block).
    """
    if deterministic or rate is None or (isinstance(rate, (int, float)) and rate == 0):
        return x
    keep = 1.0 - jnp.asarray(rate, jnp.float32)
    mask = jax.random.bernoulli(
        module.make_rng("dropout"), keep, (x.shape[0],) + (1,) * (x.ndim - 1)
    )
    return jnp.where(mask, x / keep.astype(x.dtype), jnp.zeros((), x.dtype))


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round to the nearest multiple of `divisor` (at least `divisor`), as timm sizes SE layers."""
    return max(divisor, int(value + divisor / 2) // divisor * divisor)


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation (Hu et al. 2018) with biased 1x1 convolutions, as timm's SEModule."""

    ratio: float = 1 / 16
    divisor: int = 8
    dtype: Any = jnp.float32
    act: Callable[[Array], Array] = nn.relu

    @nn.compact
    def __call__(self, x: Array) -> Array:
        channels = x.shape[-1]
        hidden = make_divisible(channels * self.ratio, self.divisor)
        dense = partial(nn.Dense, dtype=self.dtype, param_dtype=jnp.float32)
        s = jnp.mean(x.astype(jnp.float32), axis=(1, 2), keepdims=True).astype(x.dtype)
        s = self.act(dense(hidden, name="fc1")(s))
        s = nn.sigmoid(dense(channels, name="fc2")(s))
        return x * s
