"""Parameter count, exact multiply-adds and compiled memory of a model.

Multiply-adds are counted from the traced computation: every `conv_general_dilated`,
`dot_general` and oneDNN convolution (`resflax.kernels`, reached through `resflax.ops`) in the
jaxpr, descending into sub-computations (jit, remat, custom derivatives) and multiplying
`scan` bodies by their length, so any execution policy counts the same. XLA's own cost
analysis undercounts on CPU (it reports 1.69 G for a ResNet-18 of 1.81 G), so it is not used.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
from jax.extend import core as jex_core

from resflax.models.registry import create_model, get_entry
from resflax.models.resnet import ResNet


@dataclasses.dataclass(frozen=True)
class Cost:
    """params: trainable parameters (BatchNorm statistics excluded, as published counts do).
    macs: multiply-adds of one forward pass over `input_shape` (batch included).
    memory_bytes: XLA's compiled footprint of that forward pass (arguments + outputs +
    temporaries), or None when not requested.
    """

    params: int
    macs: int
    input_shape: tuple[int, ...]
    memory_bytes: int | None = None

    @property
    def gmacs(self) -> float:
        return self.macs / 1e9


def _conv_macs(eqn: Any) -> int:
    out = eqn.outvars[0].aval.shape
    rhs = eqn.invars[1].aval.shape
    out_feature_dim = eqn.params["dimension_numbers"].rhs_spec[0]
    # Each output element sums over (input features per group) x (kernel window). An input
    # dilation (the input gradient of a strided conv) inserts zeros that are not real work:
    # dividing by it makes that gradient cost what its forward conv costs.
    dilation = math.prod(eqn.params.get("lhs_dilation") or (1,))
    return math.prod(out) * (math.prod(rhs) // rhs[out_feature_dim]) // dilation


def _dot_macs(eqn: Any) -> int:
    (lhs_contract, _), _ = eqn.params["dimension_numbers"]
    lhs = eqn.invars[0].aval.shape
    return math.prod(eqn.outvars[0].aval.shape) * math.prod(lhs[d] for d in lhs_contract)


def _sub_jaxprs(value: Any) -> list[Any]:
    if isinstance(value, jex_core.ClosedJaxpr):
        return [value.jaxpr]
    if isinstance(value, jex_core.Jaxpr):
        return [value]
    return []


def walk_eqns(jaxpr: Any) -> Iterator[Any]:
    """Every equation of a (closed) jaxpr and, depth first, of the sub-jaxprs its equations
    carry (calls, custom derivatives, remat, scan bodies, cond branches), each once."""
    if isinstance(jaxpr, jex_core.ClosedJaxpr):
        jaxpr = jaxpr.jaxpr
    for eqn in jaxpr.eqns:
        yield eqn
        for value in eqn.params.values():
            for v in value if isinstance(value, tuple) else (value,):
                for sub in _sub_jaxprs(v):
                    yield from walk_eqns(sub)


def jaxpr_macs(jaxpr: Any) -> int:
    """Multiply-adds of a (closed) jaxpr, recursing into every sub-jaxpr."""
    if isinstance(jaxpr, jex_core.ClosedJaxpr):
        jaxpr = jaxpr.jaxpr
    total = 0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "conv_general_dilated":
            total += _conv_macs(eqn)
        elif name == "dot_general":
            total += _dot_macs(eqn)
        elif name == "ffi_call":
            total += _ffi_macs(eqn)
        elif name == "while":
            raise ValueError("cannot count MACs through a while loop: its trip count is dynamic")
        elif name == "cond":
            total += max(jaxpr_macs(b) for b in eqn.params["branches"])
        else:
            inner = sum(jaxpr_macs(j) for v in eqn.params.values() for j in _sub_jaxprs(v))
            total += inner * (eqn.params["length"] if name == "scan" else 1)
    return total


def _ffi_macs(eqn: Any) -> int:
    # Kernels reached through an execution policy (`resflax.ops`; imported only when seen).
    from resflax.ops.conv import ffi_macs

    macs = ffi_macs(eqn)
    if macs is None:
        raise ValueError(f"cannot count MACs of FFI call {eqn.params.get('target_name')!r}")
    return macs


def count_macs(fn: Callable[..., Any], *args: Any) -> int:
    """Exact multiply-adds of `fn(*args)`; args may be arrays or jax.ShapeDtypeStruct."""
    return jaxpr_macs(jax.make_jaxpr(fn)(*args))


def _abstract_variables(model: ResNet, shape: tuple[int, ...]) -> Any:
    x = jax.ShapeDtypeStruct(shape, jnp.float32)
    return jax.eval_shape(model.init, jax.random.key(0), x)


def count_params(model: ResNet, input_shape: tuple[int, ...]) -> int:
    """Number of trainable parameters, from shapes alone (nothing is allocated)."""
    variables = _abstract_variables(model, input_shape)
    return sum(math.prod(a.shape) for a in jax.tree_util.tree_leaves(variables["params"]))


def cost(
    name_or_model: str | ResNet,
    input_shape: tuple[int, ...] | None = None,
    *,
    memory: bool = False,
) -> Cost:
    """Parameters, forward multiply-adds and (optionally) compiled memory.

    `input_shape` (NHWC) defaults to one image at the registered model's native resolution.
    """
    if isinstance(name_or_model, str):
        entry = get_entry(name_or_model)
        model = create_model(name_or_model)
        input_shape = input_shape or (1, entry.resolution, entry.resolution, 3)
    else:
        model = name_or_model
        if input_shape is None:
            raise ValueError("cost(model) needs input_shape for a model that is not registered")
    input_shape = tuple(input_shape)
    if len(input_shape) != 4:
        raise ValueError(f"input_shape={input_shape} must be NHWC (4 numbers)")
    variables = _abstract_variables(model, input_shape)
    x = jax.ShapeDtypeStruct(input_shape, jnp.float32)
    forward = lambda v, x: model.apply(v, x)  # noqa: E731
    params = sum(math.prod(a.shape) for a in jax.tree_util.tree_leaves(variables["params"]))
    memory_bytes = None
    if memory:
        stats = jax.jit(forward).lower(variables, x).compile().memory_analysis()
        memory_bytes = (
            stats.argument_size_in_bytes
            + stats.output_size_in_bytes
            + stats.temp_size_in_bytes
            - stats.alias_size_in_bytes
        )
    # The function's multiply-adds, as papers count them, through the model's own policy
    # (oneDNN calls included); only a space-to-depth stem would add the zero taps of its 7x7
    # kernel padded to 8x8, so the stem is counted as JAX writes it.
    plain = model.clone(ops=model.ops.replace(stem_conv="lax"))
    macs = count_macs(lambda v, x: plain.apply(v, x), variables, x)
    return Cost(params, macs, input_shape, memory_bytes)
