"""The training state: parameters, BatchNorm statistics, optimizer state, step and PRNG key."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct


@struct.dataclass
class TrainState:
    """A pytree; `apply_fn` and `tx` are static. Per-step randomness is
    `jax.random.fold_in(key, step)`, so a restored state continues the same random stream."""

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    key: jax.Array
    apply_fn: Callable[..., Any] = struct.field(pytree_node=False)
    tx: optax.GradientTransformation = struct.field(pytree_node=False)

    def step_key(self) -> jax.Array:
        return jax.random.fold_in(self.key, self.step)


def make_init(
    model: nn.Module, tx: optax.GradientTransformation, input_shape: tuple[int, ...]
) -> Callable[[jax.Array], TrainState]:
    """A pure function key -> TrainState, for `jax.eval_shape` (shapes without allocating) and
    for `jax.jit(..., out_shardings=...)` (creating the state directly where it will live)."""

    def init(key: jax.Array) -> TrainState:
        init_key, state_key = jax.random.split(key)
        variables = model.init(init_key, jnp.zeros(input_shape, jnp.float32))
        params = variables["params"]
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            batch_stats=variables.get("batch_stats", {}),
            opt_state=tx.init(params),
            key=state_key,
            apply_fn=model.apply,
            tx=tx,
        )

    return init
