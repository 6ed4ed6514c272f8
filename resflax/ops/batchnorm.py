"""BatchNorm in training mode with its backward pass in closed form (`Ops(norm="closed")`).

A custom VJP: reverse mode (to any order through `jax.grad` of `jax.grad`), vmap and export
work; forward mode (`jax.jvp`, `jax.linearize`) does not, which is why it is not the default.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

Array = jax.Array


@partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5, 6))
def batch_norm_train(
    x: Array,
    scale: Array,
    bias: Array,
    epsilon: float,
    axis_name: str | None,
    dtype: Any,
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
    over that mapped axis too, as Flax's synchronised BatchNorm. (A Pallas kernel for the sums
    was measured 2% slower than XLA's reductions on an H200 and removed:
    experiments/results/gpu_train_step.md.)

    `relu=True` returns `relu(y)`, and the backward pass masks the incoming gradient itself,
    recomputing the sign of the normalised value from `x`, which it reads anyway: the ReLU's
    output is then not read again to mask the gradient, one pass fewer over each BatchNorm-ReLU
    activation in each of the backward pass's two sweeps.
    """
    y, mean, var, _ = _bn_forward(x, scale, bias, epsilon, axis_name, dtype, relu)
    return y, mean, var


def _sums(a: Array, b: Array) -> tuple[Array, Array]:
    """`(sum a, sum a b)` over every axis but the last, in float32 (or wider)."""
    axes = tuple(range(a.ndim - 1))
    af = a.astype(jnp.promote_types(a.dtype, jnp.float32))
    return af.sum(axes), (af * b.astype(af.dtype)).sum(axes)


def _channels(v: Array, ndim: int) -> Array:
    # Explicit broadcasting: the CLI and the tests run with jax_numpy_rank_promotion="raise".
    return v.reshape((1,) * (ndim - 1) + v.shape)


def batch_count(x: Array, axis_name: str | None) -> Any:
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


def _bn_forward(x, scale, bias, epsilon, axis_name, dtype, relu):
    n = batch_count(x, axis_name)
    xf = x.astype(jnp.promote_types(x.dtype, jnp.float32))
    s1, s2 = _psum(_sums(x, x), axis_name)
    mean = s1 / n
    raw_var = s2 / n - mean * mean
    var = jnp.maximum(0.0, raw_var)
    inv = lax.rsqrt(var + epsilon)
    y = _normalise(xf, mean, inv, scale, bias).astype(dtype)
    if relu:
        y = jnp.maximum(y, 0)
    return y, mean, var, (raw_var > 0).astype(inv.dtype)


def _bn_fwd(x, scale, bias, epsilon, axis_name, dtype, relu):
    y, mean, var, active = _bn_forward(x, scale, bias, epsilon, axis_name, dtype, relu)
    return (y, mean, var), (x, scale, bias, mean, var, active)


def _bn_bwd(epsilon, axis_name, dtype, relu, residuals, cotangents):
    x, scale, bias, mean, var, active = residuals
    g, g_mean, g_var = cotangents
    n = batch_count(x, axis_name)
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
    local_g, local_gx = _sums(g, x)
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
