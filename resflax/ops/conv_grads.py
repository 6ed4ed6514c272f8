"""Convolutions with gradients written for XLA:CPU (custom VJPs: reverse mode and vmap work,
forward mode does not). Used by `conv.py`'s "dot", "canonical" and "onednn" policies."""

from __future__ import annotations

from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

Array = jax.Array
NHWC = ("NHWC", "HWIO", "NHWC")


def dot_1x1(x: Array, w: Array, strides: Any, precision: Any) -> Array:
    sh, sw = strides
    if (sh, sw) != (1, 1):
        x = x[:, ::sh, ::sw]
    # As a 2-D product: differentiated from the 4-D einsum, the weight gradient contracts over
    # (n, h, w), and XLA:CPU first transposed the output gradient to put those dimensions
    # last (41 ms for one [32,56,56,256] tensor); over a 2-D (n*h*w, c) matrix it contracts
    # dimension 0 of both in place (one layer's step 0.34 -> 0.17 s).
    n, h, w_, c = x.shape
    y = _matmul(x.reshape(n * h * w_, c), w[0, 0], precision)
    return y.reshape(n, h, w_, -1)


@partial(jax.custom_vjp, nondiff_argnums=(2,))
def _matmul(x: Array, w: Array, precision: Any) -> Array:
    return jnp.dot(x, w, precision=precision)


def _matmul_fwd(x, w, precision):
    return jnp.dot(x, w, precision=precision), (x, w)


def _matmul_bwd(precision, residuals, g):
    x, w = residuals
    dx = jnp.dot(g, w.T.astype(g.dtype), precision=precision)
    return dx.astype(x.dtype), weight_grad_2d(x, g.astype(x.dtype), precision).astype(w.dtype)


_matmul.defvjp(_matmul_fwd, _matmul_bwd)


def weight_grad_2d(x: Array, g: Array, precision: Any = None) -> Array:
    """`x.T @ g` for x (rows, k) and g (rows, c): a 1x1 convolution's weight gradient.

    XLA:CPU hands this contraction over the long row dimension to Eigen, which runs it
    1.2-2x faster on one core with the operand of fewer columns first: for a layer that
    narrows the channels (k > c, the bottlenecks' first 1x1), `(g.T @ x).T`. Left alone,
    XLA folds that transpose back into the product in the slow order; the optimisation
    barrier keeps it (XLA:CPU drops barriers unless `cse_barrier_expander` is disabled,
    as `python -m resflax.main` does, and the product is then the same as `x.T @ g`).
    """
    rows = (((0,), (0,)), ((), ()))
    if x.shape[1] > g.shape[1]:
        return lax.optimization_barrier(lax.dot_general(g, x, rows, precision=precision)).T
    return lax.dot_general(x, g, rows, precision=precision)


def _conv(x: Array, w: Array, padding: Any, precision: Any, strides: Any = (1, 1)) -> Array:
    return lax.conv_general_dilated(
        x, w, strides, padding, dimension_numbers=NHWC, precision=precision
    )


@partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def conv_nhwc(x: Array, w: Array, padding: Any, precision: Any) -> Array:
    return _conv(x, w, padding, precision)


def _conv_nhwc_fwd(x, w, padding, precision):
    return _conv(x, w, padding, precision), (x, w)


def _conv_nhwc_bwd(padding, precision, residuals, g):
    x, w = residuals
    kh, kw = w.shape[:2]
    # Input gradient: correlate with the spatially flipped kernel, in and out swapped.
    flipped = jnp.flip(w, (0, 1)).transpose(0, 1, 3, 2)
    back_pad = tuple(
        (k - 1 - lo, k - 1 - hi) for k, (lo, hi) in zip((kh, kw), padding, strict=True)
    )
    dx = _conv(g, flipped.astype(g.dtype), back_pad, precision)
    # Weight gradient: input channels play the batch, the batch is contracted as features.
    dw = _conv(x.transpose(3, 1, 2, 0), g.transpose(1, 2, 0, 3).astype(x.dtype), padding, precision)
    return dx.astype(x.dtype), dw.transpose(1, 2, 0, 3).astype(w.dtype)


conv_nhwc.defvjp(_conv_nhwc_fwd, _conv_nhwc_bwd)


@partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def conv_strided(x: Array, w: Array, strides: Any, padding: Any, precision: Any) -> Array:
    return _conv(x, w, padding, precision, strides)


def _conv_strided_fwd(x, w, strides, padding, precision):
    return _conv(x, w, padding, precision, strides), (x, w)


def _conv_strided_bwd(strides, padding, precision, residuals, g):
    x, w = residuals
    _, weight_vjp = jax.vjp(lambda w: _conv(x, w, padding, precision, strides), w)
    dx = _input_grad_by_phases(g, w, x.shape[1:3], strides, padding, precision)
    return dx.astype(x.dtype), weight_vjp(g)[0]


conv_strided.defvjp(_conv_strided_fwd, _conv_strided_bwd)


def _phase_taps(k: int, s: int, pad: int, phase: int) -> list[int]:
    """The kernel taps through which output rows reach input rows s*m + phase, ordered by
    the output row each reads (m + (phase + pad - tap) // s, consecutive)."""
    taps = [t for t in range(k) if (phase + pad - t) % s == 0]
    return sorted(taps, key=lambda t: (phase + pad - t) // s)


def _input_grad_by_phases(g, w, in_hw, strides, padding, precision):
    """Input gradient of a strided convolution as s*s stride-1 convolutions, one per input
    phase (rows and columns congruent mod s), interleaved afterwards.

    JAX's transpose is one convolution over the output gradient dilated with s-1 zeros
    between entries, which XLA:CPU runs densely: s^2 times the multiply-adds (ResNet-50's
    three stride-2 3x3 convolutions: 0.38 s of a 5.3 s step). Each phase only meets the
    kernel taps that reach it, so the phases together do the convolution's own work.
    """
    n, ho, wo, _ = g.shape
    kh, kw, cin, _ = w.shape
    (sh, sw), ((ph, _), (pw, _)) = strides, padding
    h, wd = in_hw
    mh, mw = -(-h // sh), -(-wd // sw)
    rows = []
    for a in range(sh):
        ta, ma = _phase_taps(kh, sh, ph, a), len(range(a, h, sh))
        cols = []
        for b in range(sw):
            tb, mb = _phase_taps(kw, sw, pw, b), len(range(b, wd, sw))
            if not (ta and tb and ma and mb):
                cols.append(jnp.zeros((n, mh, mw, cin), g.dtype))
                continue
            # Output rows m + d0 .. m + d1 feed input row s*m + a; pad where they run off.
            d0, d1 = (a + ph - ta[0]) // sh, (a + ph - ta[-1]) // sh
            e0, e1 = (b + pw - tb[0]) // sw, (b + pw - tb[-1]) // sw
            lo_h, lo_w = max(0, -d0), max(0, -e0)
            gp = jnp.pad(g, ((0, 0), (lo_h, max(0, ma - 1 + d1 - (ho - 1))),
                             (lo_w, max(0, mb - 1 + e1 - (wo - 1))), (0, 0)))  # fmt: skip
            gp = gp[:, d0 + lo_h : d0 + lo_h + ma + d1 - d0, e0 + lo_w : e0 + lo_w + mb + e1 - e0]
            k = w[jnp.array(ta)][:, jnp.array(tb)].transpose(0, 1, 3, 2).astype(g.dtype)
            y = _conv(gp, k, "VALID", precision)
            cols.append(jnp.pad(y, ((0, 0), (0, mh - ma), (0, mw - mb), (0, 0))))
        rows.append(jnp.stack(cols, axis=3))
    dx = jnp.stack(rows, axis=2).reshape(n, mh * sh, mw * sw, cin)
    return dx[:, :h, :wd]
