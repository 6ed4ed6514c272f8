"""Convolutions in oneDNN on XLA:CPU: `conv(x, w, strides, padding)`, differentiable.

XLA:CPU runs convolutions in Eigen, and their weight gradients only after transposing both
operands (the batch becomes the contracted feature); oneDNN, which torch and TensorFlow use
on CPU, has kernels for all three directions in the NHWC layout JAX keeps. ResNet-50's
stride-1 3x3 convolutions alone, forward and both gradients: 1.38 -> 1.10 s on 2 cores
(stage 1's weight gradient 50.6 -> 24.7 ms); see docs/performance.md.

The three directions are one FFI target (`onednn_conv.cc`), each the others' transpose, so
reverse mode works to any order; forward mode (`jax.jvp`) does not, nor does `jax.export`
(an FFI target has no compatibility guarantee): the models reach it only through
`Ops(conv="onednn")`, never by default. Float32, or bfloat16 (float32 accumulation inside
oneDNN; about twice float32's speed on CPUs with bf16 instructions); vmap runs the calls one by
one. The kernels see whole arrays: under `jax.jit` with a batch sharded over several devices XLA
cannot split the call, so `resflax.ops.auto()` picks them only where JAX has one device.
"""

from __future__ import annotations

import ctypes
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from resflax.kernels import LIBRARY

Array = jax.Array
TARGET = "resflax_onednn_conv"
FORWARD, INPUT_GRAD, WEIGHT_GRAD = 0, 1, 2


@functools.cache
def _load() -> ctypes.CDLL | None:
    if not LIBRARY.exists():
        return None
    lib = ctypes.cdll.LoadLibrary(str(LIBRARY))
    jax.ffi.register_ffi_target(TARGET, jax.ffi.pycapsule(lib.ResflaxOnednnConv), platform="cpu")
    return lib


def available() -> bool:
    """Whether the kernels are built (`python -m resflax.kernels.build`) and load."""
    try:
        return _load() is not None
    except OSError:
        return False


def _library() -> ctypes.CDLL:
    lib = _load()
    if lib is None:
        raise RuntimeError(f"oneDNN kernels not built ({LIBRARY} missing): run `make install`")
    return lib


def _dotted(v: int) -> str:
    return f"{v // 10000}.{v // 100 % 100}.{v % 100}"


def version() -> str:
    """oneDNN's version as the loaded library reports it, e.g. "3.2.0"."""
    return _dotted(_library().ResflaxOnednnVersion())


def compiled_version() -> str:
    """The version of the oneDNN headers the kernels were compiled against: must equal
    `version()` (the headers fix the layout of what is passed to the library)."""
    return _dotted(_library().ResflaxOnednnCompiledVersion())


Padding = tuple[tuple[int, int], tuple[int, int]]


def _call(kind: int, a: Array, b: Array, shape: tuple[int, ...], strides, padding) -> Array:
    _library()  # registers the target
    (top, bottom), (left, right) = padding
    return jax.ffi.ffi_call(
        TARGET, jax.ShapeDtypeStruct(shape, a.dtype), vmap_method="sequential"
    )(
        a, b,
        kind=np.int64(kind),
        strides=np.asarray(strides, np.int64),
        pad_lo=np.asarray((top, left), np.int64),
        pad_hi=np.asarray((bottom, right), np.int64),
    )  # fmt: skip


def output_shape(x_shape, w_shape, strides, padding) -> tuple[int, ...]:
    n, h, w, _ = x_shape
    kh, kw, _, co = w_shape
    (top, bottom), (left, right) = padding
    ho = (h + top + bottom - kh) // strides[0] + 1
    wo = (w + left + right - kw) // strides[1] + 1
    return (n, ho, wo, co)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def conv(x: Array, w: Array, strides: tuple[int, int], padding: Padding) -> Array:
    """`lax.conv_general_dilated(x, w, strides, padding, ("NHWC", "HWIO", "NHWC"))` in oneDNN,
    x and w both float32 or both bfloat16, padding as ((top, bottom), (left, right))."""
    return _call(FORWARD, x, w, output_shape(x.shape, w.shape, strides, padding), strides, padding)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def input_grad(g: Array, w: Array, x_shape: tuple[int, ...], strides, padding) -> Array:
    """The input's gradient of `conv` for an input of `x_shape` and output gradient `g`."""
    return _call(INPUT_GRAD, g, w, x_shape, strides, padding)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def weight_grad(x: Array, g: Array, w_shape: tuple[int, ...], strides, padding) -> Array:
    """The weights' gradient of `conv` for input `x` and output gradient `g`."""
    return _call(WEIGHT_GRAD, x, g, w_shape, strides, padding)


# All three are bilinear and each is the others' transpose: for cotangent c,
# <conv(x, w), c> = <x, input_grad(c, w)> = <w, weight_grad(x, c)>.
def _conv_fwd(x, w, strides, padding):
    return conv(x, w, strides, padding), (x, w)


def _conv_bwd(strides, padding, res, c):
    x, w = res
    return (
        input_grad(c, w, x.shape, strides, padding),
        weight_grad(x, c, w.shape, strides, padding),
    )


def _input_grad_fwd(g, w, x_shape, strides, padding):
    return input_grad(g, w, x_shape, strides, padding), (g, w)


def _input_grad_bwd(x_shape, strides, padding, res, c):
    g, w = res
    return conv(c, w, strides, padding), weight_grad(c, g, w.shape, strides, padding)


def _weight_grad_fwd(x, g, w_shape, strides, padding):
    return weight_grad(x, g, w_shape, strides, padding), (x, g)


def _weight_grad_bwd(w_shape, strides, padding, res, c):
    x, g = res
    return input_grad(g, c, x.shape, strides, padding), conv(x, c, strides, padding)


conv.defvjp(_conv_fwd, _conv_bwd)
input_grad.defvjp(_input_grad_fwd, _input_grad_bwd)
weight_grad.defvjp(_weight_grad_fwd, _weight_grad_bwd)


def call_macs(eqn: Any) -> int:
    """Multiply-adds of one kernel call in a jaxpr (for `resflax.models.cost`): n·ho·wo·kh·kw·ci·co
    in each of the three directions."""
    kind = int(dict(eqn.params["attributes"])["kind"])
    a, b = (v.aval.shape for v in eqn.invars)
    out = eqn.outvars[0].aval.shape
    _, w, y = {FORWARD: (a, b, out), INPUT_GRAD: (out, b, a), WEIGHT_GRAD: (a, out, b)}[kind]
    return math.prod(y[:3]) * math.prod(w)


def handles(x: Any, w: Any) -> bool:
    """Whether `conv` takes this pair: 4-D NHWC input and HWIO weights, both float32 or both
    bfloat16 (fast only on CPUs with bf16 instructions: `resflax.ops.machine.native_bf16`)."""
    if x.ndim != 4 or w.ndim != 4 or x.dtype != w.dtype:
        return False
    return x.dtype in (jnp.float32, jnp.bfloat16)
