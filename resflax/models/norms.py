"""Normalisation layers: BatchNorm (Flax's, with torch's running variance as an option, and
computed in training mode as the execution policy says) and GroupNorm, built once by
`make_norm` for a whole network."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.linen import dtypes
from jax import lax

from resflax.ops.act import relu_stored
from resflax.ops.batchnorm import batch_count
from resflax.ops.policy import PLAIN, Ops

ModuleDef = Any
Array = jax.Array

NORMS = ("batch", "group")
RUNNING_VARS = ("biased", "unbiased")
# Activations BatchNorm can apply itself (`BatchNorm.act`): a closed-form policy fuses them.
ACTS = (None, "relu")


class BatchNorm(nn.BatchNorm):
    """`nn.BatchNorm` (same variables, so checkpoints and conversions are interchangeable) with

    running_var: "biased" (Flax) or "unbiased": the running variance tracks the unbiased batch
        variance (n / (n - 1) times the biased one), as torch does; normalisation is the same.
    act: None or "relu", applied to the output (as `ops.relu()` computes it).
    ops: the execution policy. With a closed-form `ops.norm`, training mode runs
        `resflax.ops.batchnorm.batch_norm_train` where it applies (features last, scale and
        bias, fast variance, float32 statistics, no mask or axis groups), the ReLU inside it
        when `ops.fuse_relu`; the same values as Flax's code, which runs otherwise.
    """

    running_var: str = "biased"
    act: str | None = None
    ops: Ops = PLAIN

    @nn.compact
    def __call__(self, x, use_running_average=None, *, mask=None):
        if self.act not in ACTS:
            raise ValueError(f"BatchNorm act={self.act!r} is not one of {ACTS}")
        y, fused = self._normalised(x, use_running_average, mask)
        if fused:
            return self.ops.store(y)
        return self.ops.relu()(y) if self.act == "relu" else y

    def _normalised(self, x, use_running_average, mask) -> tuple[Array, bool]:
        """BatchNorm's output, and whether `act` is already applied (fused into the closed form)."""
        training = not nn.merge_param(
            "use_running_average", self.use_running_average, use_running_average
        )
        if not training or self.is_initializing():
            return super().__call__(x, use_running_average=use_running_average, mask=mask), False
        closed = self.ops.batch_norm_train()
        if closed is not None and mask is None and self._closed_form_applies(x):
            fused = self.act is not None and self.ops.fuse_relu
            y, mean, var = self._closed(closed, x, relu=fused)
            self._update_running(x, mean, var)
            return y, fused
        if self.running_var == "biased":
            return super().__call__(x, use_running_average=use_running_average, mask=mask), False
        old = self.get_variable("batch_stats", "var")
        y = super().__call__(x, use_running_average=use_running_average, mask=mask)
        new = self.get_variable("batch_stats", "var")
        # new = m * old + (1 - m) * biased; torch adds (1 - m) * biased / (n - 1) on top.
        self.put_variable("batch_stats", "var", new + (new - self.momentum * old) / self._dof(x))
        return y, False

    def _dof(self, x: Array) -> Any:
        return max(batch_count(x, self.axis_name) - 1, 1)

    def _closed_form_applies(self, x: Array) -> bool:
        axes = (self.axis,) if isinstance(self.axis, int) else tuple(self.axis)
        return (
            len(axes) == 1
            and axes[0] % x.ndim == x.ndim - 1
            and self.use_scale
            and self.use_bias
            and self.use_fast_variance
            and self.force_float32_reductions
            and self.axis_index_groups is None
        )

    def _closed(self, closed: Callable, x: Array, relu: bool) -> tuple[Array, Array, Array]:
        c = x.shape[-1]
        scale = self.param("scale", self.scale_init, (c,), self.param_dtype)
        bias = self.param("bias", self.bias_init, (c,), self.param_dtype)
        dtype = dtypes.canonicalize_dtype(x, scale, bias, dtype=self.dtype)
        return closed(x, scale, bias, self.epsilon, self.axis_name, dtype, relu=relu)

    def _update_running(self, x: Array, mean: Array, var: Array) -> None:
        ra_mean = self.variable("batch_stats", "mean", jnp.zeros, mean.shape, jnp.float32)
        ra_var = self.variable("batch_stats", "var", jnp.ones, var.shape, jnp.float32)
        m = self.momentum
        mean, var = lax.stop_gradient(mean), lax.stop_gradient(var)
        ra_mean.value = m * ra_mean.value + (1.0 - m) * mean
        new_var = m * ra_var.value + (1.0 - m) * var
        if self.running_var == "unbiased":
            new_var = new_var + (1.0 - m) * var / self._dof(x)
        ra_var.value = new_var


def make_norm(
    kind: str = "batch",
    *,
    train: bool = False,
    dtype: Any = jnp.float32,
    axis_name: str | None = None,
    momentum: float = 0.9,
    epsilon: float = 1e-5,
    groups: int = 32,
    running_var: str = "biased",
    ops: Ops = PLAIN,
) -> ModuleDef:
    """BatchNorm (optionally synchronised over `axis_name`) or GroupNorm.

    momentum=0.9 in Flax's convention is torch's momentum=0.1; epsilon 1e-5 matches torchvision.
    `running_var="unbiased"` updates the running variance as torch does; `ops` says how
    BatchNorm's training form is computed (see `BatchNorm`). Statistics and affine parameters
    stay float32 whatever the compute dtype.
    """
    if running_var not in RUNNING_VARS:
        raise ValueError(f"bn_running_var={running_var!r} is not one of {RUNNING_VARS}")
    if kind == "batch":
        return partial(
            BatchNorm,
            use_running_average=not train,
            momentum=momentum,
            epsilon=epsilon,
            dtype=dtype,
            param_dtype=jnp.float32,
            axis_name=axis_name,
            running_var=running_var,
            ops=ops,
        )
    if kind == "group":
        return partial(
            nn.GroupNorm, num_groups=groups, epsilon=epsilon, dtype=dtype, param_dtype=jnp.float32
        )
    raise ValueError(f"norm={kind!r} is not one of {NORMS}")


def norm_act(norm: ModuleDef, act: Callable[[Array], Array], **kwargs: Any) -> Callable:
    """`act(norm(**kwargs)(x))` as a callable; a ReLU after a BatchNorm is handed to it (its
    `act` field), so that a closed-form policy can fuse it. Same variables and values."""
    func = getattr(norm, "func", norm)
    if isinstance(func, type) and issubclass(func, BatchNorm) and act in (nn.relu, relu_stored):
        return norm(act="relu", **kwargs)
    module = norm(**kwargs)
    return lambda x: act(module(x))
