"""Max-pooling, with the gradient by phases as an option (`Ops(pool="phases")`).

JAX differentiates `lax.reduce_window(max)` into a select-and-scatter that XLA:CPU lowers
through index arrays (iota, reduce-window over (value, index) pairs, scatter): 0.3-0.45 s of
a 6 s ResNet-50 step for the stem's pool. Here the backward pass finds, for each output, the
first of the k*k window offsets whose input equals the pooled maximum (row-major window
order, which is what select-and-scatter picks, so the gradient is the same array, ties
included), stores that offset as one byte, and routes the gradient by it, phase by phase of
the stride. The stem's pool gradient at batch 256 in bf16 on an H100: 1.37 ms, against 2.77 ms
for select-and-scatter; batch 32 fp32 on XLA:CPU: 85 ms against 410 ms
(`experiments/benchmarks/micro/pool_grad.py`).
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

Array = jax.Array


def max_pool(x: Array, window: int, stride: int, padding: int, phases: bool = False) -> Array:
    """k x k max-pool of NHWC `x` with stride s and symmetric padding p (padded with -inf,
    as torch's MaxPool2d). `phases`: the gradient below (a custom VJP: no forward mode);
    otherwise JAX's own (select-and-scatter). The same values and gradients."""
    if x.ndim != 4:
        raise ValueError(f"max_pool expects NHWC input, got shape {x.shape}")
    if not 0 <= padding <= window // 2:
        raise ValueError(f"padding={padding} must be in [0, window // 2 = {window // 2}]")
    if phases:
        return _max_pool(x, window, stride, padding)
    return _forward(x, window, stride, padding)


def _forward(x, window, stride, padding):
    pads = ((0, 0), (padding, padding), (padding, padding), (0, 0))
    # A concrete -inf (not a traced array): JAX then recognises the max monoid and uses its
    # differentiable reduce_window_max primitive, as Flax's max_pool does.
    init = np.array(-np.inf, x.dtype)
    return lax.reduce_window(x, init, lax.max, (1, window, window, 1), (1, stride, stride, 1), pads)


@partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _max_pool(x, window, stride, padding):
    return _forward(x, window, stride, padding)


def _fwd(x, window, stride, padding):
    y = _forward(x, window, stride, padding)
    return y, (x, y)


def _bwd(window, stride, padding, residuals, g):
    x, y = residuals
    h, w = x.shape[1:3]
    ho, wo = y.shape[1:3]
    hp, wp = h + 2 * padding, w + 2 * padding
    xp = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)),
                 constant_values=-jnp.inf)  # fmt: skip
    span_h, span_w = stride * (ho - 1) + 1, stride * (wo - 1) + 1
    offsets = [divmod(k, window) for k in range(window * window)]
    # The first window offset holding each output's maximum, found in one pass over x and
    # stored (one byte per output): routing the gradient then reads only it and g. Left to
    # itself XLA fuses the search into the routing and repeats it for every offset.
    index = jnp.int8 if len(offsets) < 128 else jnp.int32
    first = jnp.full(y.shape, len(offsets), index)
    for k in reversed(range(len(offsets))):
        i, j = offsets[k]
        seen = xp[:, i : i + span_h : stride, j : j + span_w : stride]
        first = jnp.where(seen == y, index(k), first)
    first = lax.optimization_barrier(first)
    # Route it back phase by phase: padded input rows r = stride * q + phase receive from the
    # offsets i = phase + stride * t at output row q - t (columns alike), so each phase is a
    # sum of shifted output-sized arrays, and the phases interleave into the input grid.
    # Summed in float32: up to four windows send to one input, and in bf16 every partial sum
    # was rounded (and converted back and forth); the result is rounded once, at the end.
    g = g.astype(jnp.promote_types(g.dtype, jnp.float32))
    zero = jnp.zeros((), g.dtype)
    n, c = g.shape[0], g.shape[-1]
    qh, qw = -(-hp // stride), -(-wp // stride)
    rows = []
    for ph in range(stride):
        cols = []
        for pw in range(stride):
            acc = jnp.zeros((n, qh, qw, c), g.dtype)
            for i in range(ph, window, stride):
                for j in range(pw, window, stride):
                    part = jnp.where(first == i * window + j, g, zero)
                    th, tw = (i - ph) // stride, (j - pw) // stride
                    config = ((0, 0, 0), (th, qh - th - ho, 0), (tw, qw - tw - wo, 0), (0, 0, 0))
                    acc = acc + lax.pad(part, zero, config)
            cols.append(acc)
        rows.append(jnp.stack(cols, axis=3))
    dxp = jnp.stack(rows, axis=2).reshape(n, qh * stride, qw * stride, c)
    return (dxp[:, padding : padding + h, padding : padding + w].astype(x.dtype),)


_max_pool.defvjp(_fwd, _bwd)
