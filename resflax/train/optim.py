"""Optimizers and learning-rate schedules (optax), with every argument checked where it enters."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import optax

Number = float | jax.Array


def _number(value: Any) -> bool:
    """A Python number, checked here; an array (a population member's traced setting) was
    checked as a number where it was given (resflax.train.population)."""
    return isinstance(value, int | float)


OPTIMIZERS = ("sgd", "adamw", "lars")
SCHEDULES = ("constant", "piecewise", "cosine")


def scaled_learning_rate(base_lr: float, batch_size: int, reference_batch: int | None) -> float:
    """Linear scaling (Goyal et al. 2017): lr = base_lr * batch / reference_batch."""
    if batch_size <= 0:
        raise ValueError(f"batch_size={batch_size} must be positive")
    if reference_batch is None:
        return base_lr
    if reference_batch <= 0:
        raise ValueError(f"reference_batch={reference_batch} must be positive (or None)")
    return base_lr * batch_size / reference_batch


def make_schedule(
    kind: str,
    *,
    learning_rate: Number,
    total_steps: int,
    warmup_steps: int = 0,
    boundaries: Sequence[int] = (),
    decay_factor: float = 0.1,
    end_learning_rate: float = 0.0,
) -> optax.Schedule:
    """`constant`, `piecewise` (multiply by `decay_factor` at each absolute step in
    `boundaries`, e.g. He et al. 2015's ÷10 at 32k and 48k) or `cosine` (to
    `end_learning_rate` at `total_steps`), each after an optional linear warmup from 0."""
    if kind not in SCHEDULES:
        raise ValueError(f"schedule={kind!r} is not one of {SCHEDULES}")
    if _number(learning_rate) and not learning_rate > 0:
        raise ValueError(f"learning_rate={learning_rate} must be positive")
    if total_steps <= 0:
        raise ValueError(f"total_steps={total_steps} must be positive")
    if not 0 <= warmup_steps < total_steps:
        raise ValueError(f"warmup_steps={warmup_steps} must be in [0, total_steps={total_steps})")
    bounds = [int(b) for b in boundaries]
    if kind == "piecewise":
        if bounds != sorted(set(bounds)) or any(b <= warmup_steps for b in bounds):
            raise ValueError(
                f"boundaries={tuple(bounds)} must increase strictly and lie after warmup_steps="
                f"{warmup_steps}"
            )
        if not 0 < decay_factor <= 1:
            raise ValueError(f"decay_factor={decay_factor} must be in (0, 1]")
        # join_schedules shifts the main schedule by the warmup; boundaries stay absolute.
        main = optax.piecewise_constant_schedule(
            learning_rate, {b - warmup_steps: decay_factor for b in bounds}
        )
    elif kind == "cosine":
        main = optax.cosine_decay_schedule(
            learning_rate, total_steps - warmup_steps, alpha=end_learning_rate / learning_rate
        )
    else:
        main = optax.constant_schedule(learning_rate)
    if not warmup_steps:
        return main
    warmup = optax.linear_schedule(0.0, learning_rate, warmup_steps)
    return optax.join_schedules([warmup, main], [warmup_steps])


def decay_mask(params: Any, decay_norm_and_bias: bool = False) -> Any:
    """True where weight decay applies: kernels (rank ≥ 2); BatchNorm scales/biases and dense
    biases (rank 1) only when `decay_norm_and_bias`."""
    return jax.tree_util.tree_map(lambda p: decay_norm_and_bias or p.ndim > 1, params)


def make_optimizer(
    name: str,
    schedule: optax.Schedule,
    *,
    momentum: Number = 0.9,
    nesterov: bool = False,
    weight_decay: Number = 0.0,
    decay_norm_and_bias: bool = False,
    grad_clip_norm: float | None = None,
    b1: float = 0.9,
    b2: float = 0.999,
    trust_coefficient: float = 0.001,
) -> optax.GradientTransformation:
    """`sgd` (momentum, optional Nesterov; weight decay added to the gradient as L2, as in the
    ResNet papers), `adamw` (decoupled decay) or `lars` (You et al. 2017, for large batches)."""
    if name not in OPTIMIZERS:
        raise ValueError(f"optimizer={name!r} is not one of {OPTIMIZERS}")
    if _number(weight_decay) and weight_decay < 0:
        raise ValueError(f"weight_decay={weight_decay} must be non-negative")
    if _number(momentum) and not 0 <= momentum < 1:
        raise ValueError(f"momentum={momentum} must be in [0, 1)")
    if grad_clip_norm is not None and grad_clip_norm <= 0:
        raise ValueError(f"grad_clip_norm={grad_clip_norm} must be positive (or None)")

    def mask(params: Any) -> Any:
        return decay_mask(params, decay_norm_and_bias)

    if name == "sgd":
        tx = optax.chain(
            optax.add_decayed_weights(weight_decay, mask),
            # No momentum slot for a Python 0; an array (a population's) always has one.
            optax.sgd(
                schedule,
                momentum=None if _number(momentum) and not momentum else momentum,
                nesterov=nesterov,
            ),
        )
    elif name == "adamw":
        tx = optax.adamw(schedule, b1=b1, b2=b2, weight_decay=weight_decay, mask=mask)
    else:
        tx = optax.lars(
            schedule, weight_decay=weight_decay, weight_decay_mask=mask, trust_ratio_mask=mask,
            trust_coefficient=trust_coefficient, momentum=momentum, nesterov=nesterov,
        )  # fmt: skip
    if grad_clip_norm:
        tx = optax.chain(optax.clip_by_global_norm(grad_clip_norm), tx)
    return tx
