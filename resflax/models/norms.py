"""Normalisation layers: BatchNorm (Flax's, with torch's running variance as an option and a
closed-form backward pass) and GroupNorm, built once by `make_norm` for a whole network."""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.linen import dtypes
from jax import lax

from resflax.kernels import channel_sums as _channel_sums
from resflax.models.layers import relu_stored, stored

ModuleDef = Any
Array = jax.Array

NORMS = ("batch", "group")
RUNNING_VARS = ("biased", "unbiased")
# "autodiff": JAX differentiates Flax's forward pass; "closed": `batch_norm_train`'s backward.
BN_GRADS = ("autodiff", "closed")
# How the closed form's per-channel sums are computed: XLA's reductions, or one Pallas kernel
# per pass on GPU (`resflax.kernels.channel_sums`).
BN_SUMS = ("xla", "pallas")
# Activations BatchNorm can apply itself (`BatchNorm.act`), fused into its closed form.
FUSABLE_ACTS = {None: lambda y: y, "relu": nn.relu, "relu_stored": relu_stored}


@partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5, 6, 7))
def batch_norm_train(
    x: Array,
    scale: Array,
    bias: Array,
    epsilon: float,
    axis_name: str | None,
    dtype: Any,
    sums: str = "xla",
    relu: bool = False,
) -> tuple[Array, Array, Array]:
    """Training-mode BatchNorm over every axis but the last: `(y, mean, var)`.

    The forward pass is Flax's (`use_fast_variance`: float32 sums of x and x², the variance
    clipped at zero; `(x - mean) * rsqrt(var + eps) * scale + bias`), so values match
    `nn.BatchNorm`. The backward pass is the closed form
    `dx = a * (g - mean(g) - (x - mean) * rsqrt(var + eps)² * mean(g * (x - mean)))`, with
    `a = scale * rsqrt(var + eps)`: two sums over the batch, read in one pass over `g` and `x`,
    and one elementwise pass. Differentiating the forward pass instead leaves the compiler
    several reductions per layer (for the mean, the variance and the affine parameters), and
    BatchNorm's passes over memory are what bound a ResNet train step once the convolutions
    run at speed. With `axis_name` the sums (and so the statistics and their gradients) are
    over that mapped axis too, as Flax's synchronised BatchNorm. `sums="pallas"` computes the
    per-channel sums of both passes with `resflax.kernels.channel_sums` (GPU; the same sums).

    `relu=True` returns `relu(y)`, and the backward pass masks the incoming gradient itself,
    recomputing the sign of the normalised value from `x`, which it reads anyway: the ReLU's
    output is then not read again to mask the gradient, one pass fewer over each BatchNorm-ReLU
    activation in each of the backward pass's two sweeps.
    """
    y, mean, var, _ = _bn_forward(x, scale, bias, epsilon, axis_name, dtype, sums, relu)
    return y, mean, var


def _sums(a: Array, b: Array | None, sums: str) -> tuple[Array, Array]:
    """`(sum a, sum a b)` over every axis but the last, float32 (`b=None`: b = a)."""
    if sums == "pallas":
        return _channel_sums.channel_sums(a, b)
    return _channel_sums.xla_sums(a, a if b is None else b)


def _channels(v: Array, ndim: int) -> Array:
    # Explicit broadcasting: the CLI and the tests run with jax_numpy_rank_promotion="raise".
    return v.reshape((1,) * (ndim - 1) + v.shape)


def _count(x: Array, axis_name: str | None) -> Any:
    n = math.prod(x.shape[:-1])
    return n * lax.psum(1, axis_name) if axis_name is not None else n


def _psum(values: tuple[Array, ...], axis_name: str | None) -> tuple[Array, ...]:
    if axis_name is None:
        return values
    # One collective for all the per-channel vectors, as Flax stacks its means.
    summed = lax.psum(jnp.stack(values), axis_name)
    return tuple(summed[i] for i in range(len(values)))


def _normalise(xf, mean, inv, scale, bias):
    # One expression for the forward pass and the backward pass's mask: the same rounding.
    d = xf.ndim
    return (xf - _channels(mean, d)) * _channels(inv * scale, d) + _channels(bias, d)


def _bn_forward(x, scale, bias, epsilon, axis_name, dtype, sums, relu):
    n = _count(x, axis_name)
    xf = x.astype(jnp.promote_types(x.dtype, jnp.float32))
    s1, s2 = _psum(_sums(x, None, sums), axis_name)
    mean = s1 / n
    raw_var = s2 / n - mean * mean
    var = jnp.maximum(0.0, raw_var)
    inv = lax.rsqrt(var + epsilon)
    y = _normalise(xf, mean, inv, scale, bias).astype(dtype)
    if relu:
        y = jnp.maximum(y, 0)
    return y, mean, var, (raw_var > 0).astype(inv.dtype)


def _bn_fwd(x, scale, bias, epsilon, axis_name, dtype, sums, relu):
    y, mean, var, active = _bn_forward(x, scale, bias, epsilon, axis_name, dtype, sums, relu)
    return (y, mean, var), (x, scale, bias, mean, var, active)


def _bn_bwd(epsilon, axis_name, dtype, sums, relu, residuals, cotangents):
    x, scale, bias, mean, var, active = residuals
    g, g_mean, g_var = cotangents
    n = _count(x, axis_name)
    xf = x.astype(mean.dtype)
    inv = lax.rsqrt(var + epsilon)
    if relu:
        # y > 0 exactly where the float32 normalised value is (rounding keeps the sign).
        g = jnp.where(_normalise(xf, mean, inv, scale, bias) > 0, g, jnp.zeros_like(g))
    gf = g.astype(mean.dtype)
    d = x.ndim
    # sum(g (x - mean)) as sum(g x) - mean sum(g), and dx below from x itself: XLA:CPU stored
    # `x - mean` for the reduction, a pass over each activation (ResNet-50: 0.17 s a step).
    # The rounding is that of the centred form, whose float32 mean is itself rounded.
    local_g, local_gx = _sums(g, x, sums)
    local_gc = local_gx - mean * local_g
    # The input's gradient is the whole mapped batch's (the transpose of psum is psum); the
    # parameters' is this shard's, as autodiff gives, for the caller to average.
    sum_g, sum_gc, g_mean, g_var = _psum((local_g, local_gc, g_mean, g_var), axis_name)
    a = inv * scale
    # dL/dvar, through rsqrt and the caller's use of `var`; zero where the clip was active.
    d_var = (-0.5 * scale * inv**3 * sum_gc + g_var) * active
    d_mean = g_mean - a * sum_g
    k = 2.0 * d_var / n
    dx = _channels(a, d) * gf + xf * _channels(k, d) + _channels(d_mean / n - mean * k, d)
    dx = dx.astype(x.dtype)
    return dx, (local_gc * inv).astype(scale.dtype), local_g.astype(scale.dtype)


batch_norm_train.defvjp(_bn_fwd, _bn_bwd)


class BatchNorm(nn.BatchNorm):
    """`nn.BatchNorm` (same variables, so checkpoints and conversions are interchangeable) with

    running_var: "biased" (Flax) or "unbiased": the running variance tracks the unbiased batch
        variance (n / (n - 1) times the biased one), as torch does; normalisation is the same.
    grad: "closed" (the default: `batch_norm_train`, the same values with fewer passes over
        memory in the backward pass) or "autodiff" (JAX differentiates Flax's forward pass).
        "closed" applies to the common case (features last, scale and bias, fast variance,
        float32 statistics, no mask or axis groups); anything else runs Flax's code.
    sums: with grad="closed", "xla" (XLA's reductions) or "pallas" (one kernel per pass on
        GPU, `resflax.kernels.channel_sums`; the same sums to float rounding).
    act: an activation applied to the output: None, "relu" or "relu_stored"
        (`layers.relu_stored`). With grad="closed" and `fuse_act` the ReLU is part of
        `batch_norm_train` (its backward pass masks the gradient from the input it reads
        anyway); otherwise it is applied after. The same values either way.
    """

    running_var: str = "biased"
    grad: str = "closed"
    sums: str = "xla"
    act: str | None = None
    fuse_act: bool = True

    @nn.compact
    def __call__(self, x, use_running_average=None, *, mask=None):
        if self.act not in FUSABLE_ACTS:
            raise ValueError(f"BatchNorm act={self.act!r} is not one of {tuple(FUSABLE_ACTS)}")
        y, fused = self._normalised(x, use_running_average, mask)
        if not fused:
            return FUSABLE_ACTS[self.act](y)
        # relu_stored's barrier: the output stored once rather than recomputed by consumers.
        return stored(y) if self.act == "relu_stored" else y

    def _normalised(self, x, use_running_average, mask) -> tuple[Array, bool]:
        """BatchNorm's output, and whether `act` is already applied (fused into the closed form)."""
        training = not nn.merge_param(
            "use_running_average", self.use_running_average, use_running_average
        )
        if not training or self.is_initializing():
            return super().__call__(x, use_running_average=use_running_average, mask=mask), False
        if self.grad == "closed" and mask is None and self._closed_form_applies(x):
            fused = self.act is not None and self.fuse_act
            y, mean, var = self._closed(x, relu=fused)
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
        return max(_count(x, self.axis_name) - 1, 1)

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

    def _closed(self, x: Array, relu: bool) -> tuple[Array, Array, Array]:
        c = x.shape[-1]
        scale = self.param("scale", self.scale_init, (c,), self.param_dtype)
        bias = self.param("bias", self.bias_init, (c,), self.param_dtype)
        dtype = dtypes.canonicalize_dtype(x, scale, bias, dtype=self.dtype)
        return batch_norm_train(
            x, scale, bias, self.epsilon, self.axis_name, dtype, self.sums, relu
        )

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
    grad: str = "closed",
    sums: str = "xla",
    fuse_act: bool = True,
) -> ModuleDef:
    """BatchNorm (optionally synchronised over `axis_name`) or GroupNorm.

    momentum=0.9 in Flax's convention is torch's momentum=0.1; epsilon 1e-5 matches torchvision.
    `running_var="unbiased"` updates the running variance as torch does; `grad="closed"`
    differentiates BatchNorm in closed form (see `BatchNorm`), its sums computed as `sums`
    says ("xla" or "pallas"), with a following ReLU fused in where `fuse_act` (see `norm_act`).
    Statistics and affine parameters stay float32 whatever the compute dtype.
    """
    if running_var not in RUNNING_VARS:
        raise ValueError(f"bn_running_var={running_var!r} is not one of {RUNNING_VARS}")
    if grad not in BN_GRADS:
        raise ValueError(f"bn_grad={grad!r} is not one of {BN_GRADS}")
    if sums not in BN_SUMS:
        raise ValueError(f"bn_sums={sums!r} is not one of {BN_SUMS}")
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
            grad=grad,
            sums=sums,
            fuse_act=fuse_act,
        )
    if kind == "group":
        return partial(
            nn.GroupNorm, num_groups=groups, epsilon=epsilon, dtype=dtype, param_dtype=jnp.float32
        )
    raise ValueError(f"norm={kind!r} is not one of {NORMS}")


def norm_act(norm: ModuleDef, act: Callable[[Array], Array], **kwargs: Any) -> Callable:
    """`act(norm(**kwargs)(x))` as a callable; a ReLU after a BatchNorm is handed to it (its
    `act` field) so that the closed form can mask the gradient itself. Same variables."""
    func = getattr(norm, "func", norm)
    if isinstance(func, type) and issubclass(func, BatchNorm):
        key = next((k for k, f in FUSABLE_ACTS.items() if k is not None and f is act), None)
        if key is not None:
            return norm(act=key, **kwargs)
    module = norm(**kwargs)
    return lambda x: act(module(x))
