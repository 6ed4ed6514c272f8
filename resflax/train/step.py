"""The pure train and eval steps. They know nothing of devices: `resflax.train.parallel`
wraps them with jit + shardings (or shard_map, or pmap) from outside."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from resflax.losses import cross_entropy, metric_sums
from resflax.train.state import TrainState

Batch = dict[str, jax.Array]


def train_step(
    state: TrainState,
    batch: Batch,
    label_smoothing: float | jax.Array = 0.0,
    tx: optax.GradientTransformation | None = None,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimizer step on `batch` ({"image", "label", "mask"}). Returns the new state and
    metric sums (see `losses.metric_sums`): sums, so that a wrapper can add them across
    devices and a loop across steps without losing exactness. `tx` (default `state.tx`) is
    an optimizer of the same state structure built from traced settings: a population
    member's (`resflax.train.population`)."""
    tx = state.tx if tx is None else tx
    mask = batch["mask"].astype(jnp.float32)

    def loss_fn(params):
        logits, updates = state.apply_fn(
            {"params": params, "batch_stats": state.batch_stats}, batch["image"], train=True,
            mutable=["batch_stats"], rngs={"dropout": state.step_key()},
        )  # fmt: skip
        per_example = cross_entropy(logits, batch["label"], label_smoothing)
        loss = jnp.sum(per_example * mask) / jnp.maximum(jnp.sum(mask), 1.0)
        return loss, (logits, updates["batch_stats"], per_example)

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    (_, (logits, batch_stats, per_example)), grads = grad_fn(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    new_state = state.replace(
        step=state.step + 1,
        params=optax.apply_updates(state.params, updates),
        batch_stats=batch_stats,
        opt_state=opt_state,
    )
    return new_state, metric_sums(logits, batch["label"], mask, per_example)


def eval_step(state: TrainState, batch: Batch) -> dict[str, jax.Array]:
    """Metric sums over the unmasked examples, with BatchNorm's running statistics."""
    logits = state.apply_fn(
        {"params": state.params, "batch_stats": state.batch_stats}, batch["image"], train=False
    )
    return metric_sums(logits, batch["label"], batch["mask"])
