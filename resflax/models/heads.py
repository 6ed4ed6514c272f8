"""Classifier head: global average pool, optional hidden dense layers and dropout, logits."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from resflax.models.layers import Array


class Head(nn.Module):
    """Returns (logits, pre_logits). Logits are float32 whatever the compute dtype, so the loss
    is computed in float32. `hidden` adds dense+act layers (`hidden0`, ...) before `fc`.
    """

    num_classes: int
    hidden: Sequence[int] = ()
    dropout_rate: float = 0.0
    act: Callable[[Array], Array] = nn.relu
    dtype: Any = jnp.float32
    deterministic: bool = True

    @nn.compact
    def __call__(self, x: Array) -> tuple[Array, Array]:
        dense = partial(nn.Dense, dtype=self.dtype, param_dtype=jnp.float32)
        # Mean in float32: bf16 sums over 49+ positions lose precision.
        x = jnp.mean(x.astype(jnp.float32), axis=(1, 2)).astype(self.dtype)
        for i, width in enumerate(self.hidden):
            x = self.act(dense(width, name=f"hidden{i}")(x))
        pre_logits = x
        if self.dropout_rate:
            x = nn.Dropout(self.dropout_rate, deterministic=self.deterministic)(x)
        logits = dense(self.num_classes, name="fc")(x)
        return logits.astype(jnp.float32), pre_logits
