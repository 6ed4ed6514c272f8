"""Loss and metrics for classification, as sums and counts so that padded examples mask out
and averages over any number of batches and devices are exact."""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def cross_entropy(logits: Array, labels: Array, label_smoothing: float | Array = 0.0) -> Array:
    """Per-example softmax cross-entropy in float32, with optional label smoothing
    (Szegedy et al. 2016: the target puts `label_smoothing / classes` on every class)."""
    # Checked where it is a number; a traced value (a population member's) was checked as one.
    if isinstance(label_smoothing, int | float) and not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing={label_smoothing} must be in [0, 1)")
    logits = logits.astype(jnp.float32)
    num_classes = logits.shape[-1]
    targets = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
    targets = targets * (1.0 - label_smoothing) + label_smoothing / num_classes
    return -jnp.sum(targets * jax.nn.log_softmax(logits), axis=-1)


def topk_correct(logits: Array, labels: Array, k: int) -> Array:
    """1.0 where the label is among the k largest logits (ties counted against the label)."""
    k = min(k, logits.shape[-1])
    label_logit = jnp.take_along_axis(logits, labels[:, None], axis=-1)
    # The label is in the top k when fewer than k classes score strictly higher.
    higher = jnp.sum(logits > label_logit, axis=-1)
    return (higher < k).astype(jnp.float32)


def metric_sums(
    logits: Array, labels: Array, mask: Array, loss: Array | None = None
) -> dict[str, Array]:
    """Sums over the unmasked examples: loss, top-1 and top-5 correct, and their count."""
    mask = mask.astype(jnp.float32)
    if loss is None:
        loss = cross_entropy(logits, labels)
    return {
        "loss_sum": jnp.sum(loss * mask),
        "top1_sum": jnp.sum(topk_correct(logits, labels, 1) * mask),
        "top5_sum": jnp.sum(topk_correct(logits, labels, 5) * mask),
        "count": jnp.sum(mask),
    }


def averages(sums: dict[str, Array | float]) -> dict[str, float]:
    """loss, top1 and top5 averages from accumulated `metric_sums`."""
    count = float(sums["count"])
    if count <= 0:
        raise ValueError(f"no examples counted (count={count})")
    return {k[: -len("_sum")]: float(v) / count for k, v in sums.items() if k.endswith("_sum")}
