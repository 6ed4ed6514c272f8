"""Drop-ins for `lax.conv_general_dilated` (as `nn.Conv(conv_general_dilated=...)` calls it),
one per `Ops.conv` / `Ops.stem_conv`: the same function to float rounding, written for the
compiler. Each takes the plain NHWC/HWIO convolutions it knows and hands every other call
(grouped, dilated, other layouts or options) to lax unchanged.

"dot": 1x1 convolutions as matrix products (XLA:CPU runs a 1x1 convolution's weight gradient
    at a fraction of its matmul rate: 0.7 s of a 10 s ResNet-50 step for one layer), strided
    kxk ones with an input gradient by phases (`conv_grads`).
"canonical": dot, plus stride-1 kxk convolutions whose gradients are canonical NHWC
    convolutions (inside a scanned stage's loop XLA:CPU runs JAX's permuted-label gradients
    10-20x slower).
"onednn": dot, with kxk convolutions (any stride) in oneDNN through XLA:CPU's FFI, and in
    bfloat16 every convolution (XLA:CPU's bf16 products are no faster than its float32 ones).
    ResNet-50's step 3.92 -> 3.59 s (ResNet-56 0.86 -> 0.53 s). An FFI call: no forward mode,
    no `jax.export`, and a sharded batch cannot be split across devices.
"space_to_depth" (`Ops.stem_conv`): a stride-2 kxk convolution as a stride-1 one over the
    input rearranged space-to-depth: plain JAX, every transformation works.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from resflax.ops.conv_grads import NHWC, conv_nhwc, conv_strided, dot_1x1

Array = jax.Array
Pads = tuple[tuple[int, int], tuple[int, int]]


class Plain(NamedTuple):
    """A call these forms handle: ungrouped, undilated 2-D NHWC/HWIO, explicit padding."""

    strides: tuple[int, int]
    padding: Pads
    precision: Any


def plain_call(
    lhs: Array, rhs: Array, window_strides: Any, padding: Any, **kw: Any
) -> Plain | None:
    """The call's strides and explicit padding if it is a plain NHWC convolution, else None.
    `kw` are lax's keyword arguments as `nn.Conv` passes them."""
    precision = kw.pop("precision", None)
    dilations = (*(kw.pop("lhs_dilation", None) or ()), *(kw.pop("rhs_dilation", None) or ()))
    groups = kw.pop("feature_group_count", 1)
    numbers = kw.pop("dimension_numbers", None)
    if lhs.ndim != 4 or groups != 1 or kw or any(d != 1 for d in dilations):
        return None
    dn = lax.conv_dimension_numbers(lhs.shape, rhs.shape, numbers)
    if dn != lax.conv_dimension_numbers(lhs.shape, rhs.shape, NHWC):
        return None
    strides = tuple(int(s) for s in window_strides)
    if isinstance(padding, str):
        padding = lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], strides, padding)
    pads = tuple(tuple(int(p) for p in pair) for pair in padding)
    return Plain(strides, pads, precision)  # type: ignore[arg-type]


def _is_1x1(rhs: Array, call: Plain) -> bool:
    return rhs.shape[:2] == (1, 1) and call.padding == ((0, 0), (0, 0))


def conv_dot(lhs: Array, rhs: Array, window_strides: Any, padding: Any, **kw: Any) -> Array:
    call = plain_call(lhs, rhs, window_strides, padding, **kw)
    if call is not None and _is_1x1(rhs, call):
        return dot_1x1(lhs, rhs, call.strides, call.precision)
    if call is not None and any(s > 1 for s in call.strides):
        return conv_strided(lhs, rhs, call.strides, call.padding, call.precision)
    return lax.conv_general_dilated(lhs, rhs, window_strides, padding, **kw)


def conv_canonical(lhs: Array, rhs: Array, window_strides: Any, padding: Any, **kw: Any) -> Array:
    call = plain_call(lhs, rhs, window_strides, padding, **kw)
    if call is not None and call.strides == (1, 1) and rhs.shape[:2] != (1, 1):
        return conv_nhwc(lhs, rhs, call.padding, call.precision)
    return conv_dot(lhs, rhs, window_strides, padding, **kw)


def conv_onednn(lhs: Array, rhs: Array, window_strides: Any, padding: Any, **kw: Any) -> Array:
    from resflax.kernels import onednn

    call = plain_call(lhs, rhs, window_strides, padding, **kw)
    bf16 = lhs.dtype == jnp.bfloat16
    if call is not None and (bf16 or not _is_1x1(rhs, call)) and onednn.handles(lhs, rhs):
        if bf16:
            _require_native_bf16()
        return onednn.conv(lhs, rhs, call.strides, call.padding)
    return conv_dot(lhs, rhs, window_strides, padding, **kw)


def _require_native_bf16() -> None:
    from resflax.ops.machine import native_bf16

    if not native_bf16():
        raise ValueError(
            "ops.conv='onednn' in bfloat16 needs a CPU with bf16 instructions (AVX512-BF16 or "
            "AMX), which this one lacks; valid here: conv='dot' or 'lax' (ops.auto() chooses)"
        )


def conv_space_to_depth(
    lhs: Array, rhs: Array, window_strides: Any, padding: Any, **kw: Any
) -> Array:
    """A stride-2 kxk convolution as a stride-1 ceil(k/2) x ceil(k/2) one over the input
    rearranged space-to-depth (each 2x2 pixel block becomes 4x the channels); the kernel
    parameter keeps its kxk shape and is rearranged on the fly (zero-padded to even size).

    For the 7x7/2 stem over 3 channels: cuDNN ran that convolution at 39 TFLOP/s of an
    H200's ~790 (1.55 ms of a 37 ms ResNet-50 step at batch 256), since 3 input channels fill
    no tensor-core tile; 12 channels and a 4x4 window do. Other convolutions go to lax.
    """
    call = plain_call(lhs, rhs, window_strides, padding, **kw)
    # Only the explicit padding a stem gives; "SAME" at stride 2 is asymmetric, left to lax.
    if call is None or call.strides != (2, 2) or isinstance(padding, str):
        return lax.conv_general_dilated(lhs, rhs, window_strides, padding, **kw)
    n, h, w, c = lhs.shape
    kh, kw_, _, out = rhs.shape
    (top, bottom), (left, right) = call.padding
    ho, wo = (h + top + bottom - kh) // 2 + 1, (w + left + right - kw_) // 2 + 1
    a, b = -(-kh // 2), -(-kw_ // 2)
    # Rows (columns) the blocks must cover: ho + a - 1 blocks of 2, cropping or padding the end.
    rows, cols = 2 * (ho + a - 1), 2 * (wo + b - 1)
    zero = jnp.zeros((), lhs.dtype)
    x = lax.pad(
        lhs, zero, ((0, 0, 0), (top, rows - h - top, 0), (left, cols - w - left, 0), (0, 0, 0))
    )
    x = x.reshape(n, rows // 2, 2, cols // 2, 2, c).transpose(0, 1, 3, 2, 4, 5)
    x = x.reshape(n, rows // 2, cols // 2, 4 * c)
    k = jnp.pad(rhs, ((0, 2 * a - kh), (0, 2 * b - kw_), (0, 0), (0, 0)))
    k = k.reshape(a, 2, b, 2, c, out).transpose(0, 2, 1, 3, 4, 5).reshape(a, b, 4 * c, out)
    return lax.conv_general_dilated(
        x, k, (1, 1), "VALID", dimension_numbers=NHWC, precision=call.precision
    )


IMPLEMENTATIONS: dict[str, Callable[..., Array]] = {
    "lax": lax.conv_general_dilated,
    "dot": conv_dot,
    "canonical": conv_canonical,
    "onednn": conv_onednn,
}


def ffi_macs(eqn: Any) -> int | None:
    """Multiply-adds of an FFI call in a jaxpr if it is one of resflax's kernels, else None
    (for `resflax.cost`)."""
    from resflax.kernels import onednn

    if eqn.params.get("target_name") == onednn.TARGET:
        return onednn.call_macs(eqn)
    return None
