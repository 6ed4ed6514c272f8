"""Population training: K members of one model, each with its own seed and optimizer settings,
trained together in one jitted step (`jax.vmap` over their stacked states).

What may vary per member (`VARY`) is what leaves the architecture and the program's shapes
alone: the seed (initialisation, dropout and drop-path, and with `data_order="own"` the data
order), the learning rate, weight decay, momentum and label smoothing. The varied values enter
the step as arrays, so one compiled program serves every member. Members share each batch by
default (one input pipeline; the batch axis is sharded over the devices, the members are not);
with `data_order="own"` member k reads the order of its own seed, as a separate run would.

A member whose loss or new state is non-finite stops there: the step keeps its last good
state (its step counter no longer advances), the others go on, and the run stops (exit 2) only
when every member has stopped. docs/populations.md has the user's view.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

# Population field -> the config key it varies per member.
VARY = {
    "seed": "seed",
    "learning_rate": "optimizer.learning_rate",
    "weight_decay": "optimizer.weight_decay",
    "momentum": "optimizer.momentum",
    "label_smoothing": "label_smoothing",
}
DATA_ORDERS = ("shared", "own")
# How the members are computed (the same function either way): auto, vmap or map.
BATCHINGS = ("auto", "vmap", "map")
FIELDS = ("size", "data_order", "batching", *VARY)
# Optimizers whose update uses `optimizer.momentum` (adamw's is b1).
MOMENTUM_OPTIMIZERS = ("sgd", "lars")


def may_vary() -> str:
    """What a population may vary, for error messages."""
    return ", ".join(f"population.{k}" for k in VARY)


@dataclasses.dataclass(frozen=True)
class Members:
    """Each member's settings; index k is member k."""

    seed: tuple[int, ...]
    learning_rate: tuple[float, ...]
    weight_decay: tuple[float, ...]
    momentum: tuple[float, ...]
    label_smoothing: tuple[float, ...]
    own_order: bool = False

    @property
    def size(self) -> int:
        return len(self.seed)

    def hparams(self) -> dict[str, np.ndarray]:
        """The varied optimizer and loss settings as float32 arrays [K] (the step's input)."""
        names = ("learning_rate", "weight_decay", "momentum", "label_smoothing")
        return {name: np.asarray(getattr(self, name), np.float32) for name in names}

    def describe(self, k: int) -> dict[str, Any]:
        """Member k's settings, for logs, metrics and the summary."""
        return {"member": k, **{name: getattr(self, name)[k] for name in VARY}}

    def varied(self) -> list[str]:
        """The settings that differ between members."""
        return [name for name in VARY if len(set(getattr(self, name))) > 1]


def _check_values(name: str, values: tuple[Any, ...]) -> None:
    for value in values:
        # What the command line could not parse arrives as a string ('(0.1,abc)' is one);
        # 1e400 arrives as inf. Each is named here, before the count is compared.
        number = isinstance(value, numbers.Real) and not isinstance(value, bool)
        if not number or not math.isfinite(value):
            raise ValueError(
                f"population.{name}={values}: {value!r} is not a finite number; give a tuple "
                f"of numbers, one per member, e.g. --config.population.{name}='(0.1, 0.2)'"
            )
        if name == "seed":
            ok = isinstance(value, int) and not isinstance(value, bool) and value >= 0
            valid = "non-negative integers"
        elif name == "learning_rate":
            ok, valid = value > 0, "positive numbers"
        elif name == "weight_decay":
            ok, valid = value >= 0, "numbers >= 0"
        else:
            ok, valid = 0 <= value < 1, "numbers in [0, 1)"
        if not ok:
            raise ValueError(f"population.{name}={values}: {value!r} is invalid; give {valid}")


def members(config: Any) -> Members | None:
    """The config's population (None: a single run), checked; errors name the bad key."""
    pop = config.get("population")
    if pop is None:
        return None
    unknown = sorted(set(pop.keys()) - set(FIELDS))
    if unknown:
        raise ValueError(
            f"population.{unknown[0]} cannot vary within a population (members share one "
            f"architecture, data set and batch: one program); may vary: {may_vary()}; sweep "
            "anything else with experiments/sweep.py"
        )
    size = pop.size
    given = {name: tuple(pop[name]) for name in VARY if pop[name]}
    if size is None:
        if given or pop.data_order != "shared":
            first = next(iter(given), "data_order")
            raise ValueError(
                f"population.{first} is set but population.size is not; set "
                "--config.population.size (the number of members)"
            )
        return None
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"population.size={size} must be an integer >= 1 (unset: a single run)")
    if pop.get("batching", "auto") not in BATCHINGS:
        raise ValueError(f"population.batching={pop.batching!r} is not one of {BATCHINGS}")
    if pop.data_order not in DATA_ORDERS:
        raise ValueError(f"population.data_order={pop.data_order!r} is not one of {DATA_ORDERS}")
    _check_run(config, given)
    for name, values in given.items():
        _check_values(name, values)
        if len(values) != size:
            raise ValueError(
                f"population.{name} has {len(values)} values for population.size={size}; give "
                f"{size} (one per member) or none (every member: {VARY[name]})"
            )
    return _members(config, size, given, own_order=pop.data_order == "own")


def _check_run(config: Any, given: dict[str, tuple[Any, ...]]) -> None:
    """What the rest of the config must be for a population."""
    if config.parallel != "jit":
        raise ValueError(
            f"parallel={config.parallel!r}: a population trains under parallel='jit' only (its "
            "members are one vmapped program, the batch sharded over the devices)"
        )
    if config.init_from:
        raise ValueError(
            f"init_from={config.init_from!r}: a population starts from its members' seeds; "
            "fine-tune with single runs (or a sweep of them)"
        )
    if "momentum" in given and config.optimizer.name not in MOMENTUM_OPTIMIZERS:
        raise ValueError(
            f"population.momentum is set, but optimizer.name={config.optimizer.name!r} does not "
            f"use momentum; it applies to {MOMENTUM_OPTIMIZERS}"
        )


def _members(config: Any, size: int, given: dict[str, Any], *, own_order: bool) -> Members:
    """The checked values given, and the base config's for the rest."""
    defaults = {
        "seed": tuple(config.seed + k for k in range(size)),
        "learning_rate": (config.optimizer.learning_rate,) * size,
        "weight_decay": (config.optimizer.weight_decay,) * size,
        "momentum": (config.optimizer.momentum,) * size,
        "label_smoothing": (config.label_smoothing,) * size,
    }
    values = {name: given.get(name, defaults[name]) for name in VARY}
    values["seed"] = tuple(int(s) for s in values["seed"])
    for name in ("learning_rate", "weight_decay", "momentum", "label_smoothing"):
        values[name] = tuple(float(v) for v in values[name])
    return Members(**values, own_order=own_order)


def _select(ok: jax.Array, new: Any, old: Any) -> Any:
    """`new` where `ok` [K], else `old`, leaf by leaf (leaves have the member axis first)."""

    def pick(a: jax.Array, b: jax.Array) -> jax.Array:
        return jnp.where(ok.reshape(ok.shape + (1,) * (a.ndim - 1)), a, b)

    return jax.tree_util.tree_map(pick, new, old)


def _finite(tree: Any) -> jax.Array:
    """Per member: whether every inexact leaf of `tree` (member axis first) is finite."""
    leaves = [x for x in jax.tree_util.tree_leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.stack([jnp.all(jnp.isfinite(x.reshape(x.shape[0], -1)), axis=1) for x in leaves])


def over_members(
    fn: Callable[..., Any], batching: str, batch_axis: int | None
) -> Callable[..., Any]:
    """`fn(member, hparams, batch)` for every member: "vmap" (one batched computation) or
    "map" (`lax.map`: the members one after another inside one program, each computed as a
    separate run would be). `batch_axis`: 0 where each member has its own batch, else None."""
    if batching == "vmap":
        return jax.vmap(fn, in_axes=(0, 0, batch_axis))
    if batching != "map":
        raise ValueError(f"batching={batching!r} is not one of {BATCHINGS[1:]}")

    def mapped(members, hparams, batch):
        if batch_axis is None:
            return jax.lax.map(lambda xs: fn(xs[0], xs[1], batch), (members, hparams))
        return jax.lax.map(lambda xs: fn(*xs), (members, hparams, batch))

    return mapped


def train_step(
    member_step: Callable[..., Any], own_order: bool, batching: str = "vmap"
) -> Callable[[Any, dict[str, jax.Array], Any, dict[str, jax.Array]], tuple[Any, Any]]:
    """The population's step from one member's `member_step(state, hparams, batch)`, the
    members computed as `batching` says (`over_members`).

    `(states, hparams, step, batch) -> (states, sums)`: `step` is the population's step
    before this one; a member whose own step counter is behind it has stopped and is left as
    it is. A member whose loss or new state is non-finite stops here, keeping its last good
    state; its metric sums are zero (count 0). Sums are per member, [K]."""
    every = over_members(member_step, batching, 0 if own_order else None)

    def step_fn(states, hparams, step, batch):
        new, sums = every(states, hparams, batch)
        alive = states.step == step
        parts = (new.params, new.batch_stats, new.opt_state)
        ok = alive & jnp.isfinite(sums["loss_sum"]) & jnp.all(_finite(parts), axis=0)
        sums = {k: jnp.where(ok, v, 0.0) for k, v in sums.items()}
        return _select(ok, new, states), sums

    return step_fn


def eval_step(member_eval: Callable[..., Any], batching: str = "vmap") -> Callable[..., Any]:
    """Every member's metric sums [K] on one shared batch."""
    every = over_members(lambda state, _, batch: member_eval(state, batch), batching, None)
    return lambda states, batch: every(states, jnp.zeros(states.step.shape), batch)


def stopped(steps: np.ndarray, step: int) -> list[int]:
    """The members that stopped before `step` (their own step counters are behind it)."""
    return [k for k, s in enumerate(np.asarray(steps)) if int(s) < step]


def summary_stats(values: list[float]) -> dict[str, float]:
    """mean, std (sample, n-1; 0 for one value), min and max of `values`."""
    a = np.asarray(values, np.float64)
    return {
        "mean": float(a.mean()),
        "std": float(a.std(ddof=1)) if len(a) > 1 else 0.0,
        "min": float(a.min()),
        "max": float(a.max()),
        "n": len(a),
    }


class StackedSource:
    """K training sources (member k's data order from its own seed) as one: batches stacked
    on a leading member axis, the position a list of the members' positions."""

    def __init__(self, sources: list[Any]) -> None:
        self.sources = sources

    def __iter__(self) -> StackedSource:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        batches = [next(s) for s in self.sources]
        return {k: np.stack([b[k] for b in batches]) for k in batches[0]}

    def position(self) -> dict[str, Any]:
        return {"members": [s.position() for s in self.sources]}

    def restore(self, position: dict[str, Any]) -> None:
        saved = position.get("members")
        if not isinstance(saved, list) or len(saved) != len(self.sources):
            raise ValueError(
                f"the saved data position holds {len(saved or [])} members' orders, this run "
                f"{len(self.sources)}"
            )
        for source, member in zip(self.sources, saved, strict=True):
            source.restore(member)
