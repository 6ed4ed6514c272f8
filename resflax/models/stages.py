"""A stage: `num_blocks` residual blocks, the first one strided; unrolled, scanned or remat'ed.

Unrolled, the blocks are `block0`, `block1`, ... . Scanned, `block0` (which changes the shape)
stays on its own and the identical blocks 1..n-1 become one `nn.scan` named `blocks` whose
parameters and statistics are stacked along axis 0. `stack_blocks` / `unstack_blocks` convert
variables between the two layouts, so a checkpoint trained one way can be used the other way.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from resflax.models.layers import Array, ModuleDef

REMAT_POLICIES: dict[str, Callable[..., bool] | None] = {
    "nothing": None,  # recompute everything in the backward pass
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


class Stage(nn.Module):
    """`block` is a block class (or partial) with conv/norm/act and the knobs already bound.

    drop_path_rates: one stochastic-depth rate per block (empty means none).
    scan: run blocks 1..n-1 with `nn.scan` (constant compile time in depth).
    scan_unroll: iterations per loop trip when scanned (1 = a plain loop; `num_blocks - 1`
        unrolls completely, which is what XLA:CPU runs fastest; see docs/scan.md).
    remat: recompute each block's activations in the backward pass (`nn.remat`). Unscanned
        on XLA:CPU (jaxlib < 0.12) this saves memory only with `resflax.runtime.BARRIER_FLAG`
        in XLA_FLAGS (`resflax.runtime.setup()` and the CLI add it); without it a warning says
        so, once per process.
    """

    block: ModuleDef
    num_blocks: int
    features: int
    strides: int = 1
    drop_path_rates: Sequence[float] = ()
    scan: bool = False
    scan_unroll: int = 1
    remat: bool = False
    remat_policy: str = "nothing"

    @nn.compact
    def __call__(self, x: Array) -> Array:
        if self.num_blocks < 1:
            raise ValueError(f"num_blocks={self.num_blocks} must be at least 1")
        rates = tuple(self.drop_path_rates) or (0.0,) * self.num_blocks
        if len(rates) != self.num_blocks:
            raise ValueError(f"{len(rates)} drop_path_rates given for {self.num_blocks} blocks")
        if self.remat_policy not in REMAT_POLICIES:
            raise ValueError(
                f"remat_policy={self.remat_policy!r} is not one of {tuple(REMAT_POLICIES)}"
            )
        block = self.block
        if self.remat:
            from resflax.runtime.xla_flags import warn_if_remat_ineffective

            warn_if_remat_ineffective()
            # prevent_cse only matters outside loops; inside scan it would block optimisations.
            remat = partial(
                nn.remat, prevent_cse=not self.scan, policy=REMAT_POLICIES[self.remat_policy]
            )
            if isinstance(block, partial):  # lifted transforms take the class, not a partial
                block = partial(remat(block.func), *block.args, **block.keywords)
            else:
                block = remat(block)
        # A zero rate travels as None: through nn.remat a float would become a traced value
        # and stochastic depth would then ask for a "dropout" rng it does not need.
        x = block(self.features, strides=self.strides, name="block0")(x, rates[0] or None)
        if not self.scan:
            for i in range(1, self.num_blocks):
                x = block(self.features, name=f"block{i}")(x, rates[i] or None)
            return x
        if self.num_blocks == 1:
            return x
        scanned_rates = jnp.asarray(rates[1:], jnp.float32) if any(rates[1:]) else None
        unroll = max(1, min(self.scan_unroll, self.num_blocks - 1))
        body = nn.scan(
            _scan_body,
            variable_axes={"params": 0, "batch_stats": 0},
            split_rngs={"params": True, "dropout": True},
            length=self.num_blocks - 1,
            unroll=unroll,
        )
        x, _ = body(block(self.features, name="blocks"), x, scanned_rates)
        return x


def _scan_body(module: nn.Module, carry: Array, rate: Array | None) -> tuple[Array, None]:
    return module(carry, rate), None


_BLOCK_KEY = re.compile(r"block(\d+)$")


def unstack_blocks(tree: Mapping[str, Any]) -> dict[str, Any]:
    """Scanned layout -> unrolled: every `blocks` entry (stacked on axis 0) becomes block1..n-1.

    Works on a variables dict ({"params": ..., "batch_stats": ...}) or any subtree of it.
    """
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if key == "blocks":
            n = jax.tree_util.tree_leaves(value)[0].shape[0]
            for i in range(n):
                out[f"block{i + 1}"] = jax.tree_util.tree_map(lambda a, i=i: a[i], value)
        elif isinstance(value, Mapping):
            out[key] = unstack_blocks(value)
        else:
            out[key] = value
    return out


def stack_blocks(tree: Mapping[str, Any]) -> dict[str, Any]:
    """Unrolled layout -> scanned: block1..n-1 of each stage are stacked into `blocks`."""
    out: dict[str, Any] = {}
    later = sorted(
        (int(m.group(1)), k) for k in tree if (m := _BLOCK_KEY.match(k)) and m.group(1) != "0"
    )
    if later:
        indices = [i for i, _ in later]
        if indices != list(range(1, len(later) + 1)):
            raise ValueError(f"blocks {indices} are not numbered 1..{len(later)} without gaps")
        out["blocks"] = jax.tree_util.tree_map(
            lambda *a: jnp.stack(a), *[stack_blocks(tree[k]) for _, k in later]
        )
    for key, value in tree.items():
        if (m := _BLOCK_KEY.match(key)) and m.group(1) != "0":
            continue
        out[key] = stack_blocks(value) if isinstance(value, Mapping) else value
    return out
