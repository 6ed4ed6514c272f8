"""Data parallelism around the pure step: `jit` over a device mesh (default) or `pmap`.

jit: one `Mesh` with a `data` axis; batches are sharded along it, the state is replicated, and
XLA inserts the collectives. BatchNorm statistics are over the global batch with no
`axis_name`, because the model sees the whole (sharded) array.
pmap: the state is replicated with a leading device axis; gradients are averaged by a
`pmean` placed in front of the optimizer, metric sums are `psum`med, and the model must use
BatchNorm `axis_name=AXIS` for the same synchronised statistics.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

PARALLEL = ("jit", "pmap")
AXIS = "data"


def pmean_gradients(axis_name: str = AXIS) -> optax.GradientTransformation:
    """Averages gradients over a pmap axis; chained in front of the optimizer under pmap."""

    def update(updates, state, params=None):
        del params
        return jax.lax.pmean(updates, axis_name), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


@dataclasses.dataclass(frozen=True)
class Parallel:
    kind: str
    devices: tuple[Any, ...]

    @property
    def num_devices(self) -> int:
        return len(self.devices)

    @functools.cached_property
    def mesh(self) -> Mesh:
        return Mesh(np.array(self.devices), (AXIS,))

    @property
    def global_devices(self) -> int:
        """Devices sharing a global batch: the mesh's (jit) or every process's own (pmap)."""
        return self.num_devices * (jax.process_count() if self.kind == "pmap" else 1)

    @property
    def _pmap_devices(self) -> tuple[Any, ...] | None:
        # With several processes pmap must be left to take every process's devices itself.
        return self.devices if jax.process_count() == 1 else None

    def check_batch(self, batch_size: int) -> int:
        """The per-device batch; refuses a global batch the devices cannot share evenly."""
        n = self.global_devices
        if batch_size <= 0 or batch_size % n:
            raise ValueError(
                f"batch_size={batch_size} is not divisible by the {n} devices; "
                f"use a multiple of {n}"
            )
        return batch_size // n

    def wrap_tx(self, tx: optax.GradientTransformation) -> optax.GradientTransformation:
        return optax.chain(pmean_gradients(), tx) if self.kind == "pmap" else tx

    def create_state(self, init: Callable[[jax.Array], Any], key: jax.Array) -> Any:
        """Builds the state where it lives: from shapes, without a full host copy (jit), or
        replicated along a leading device axis (pmap)."""
        if self.kind == "jit":
            abstract = jax.eval_shape(init, key)
            replicated = jax.tree_util.tree_map(lambda _: NamedSharding(self.mesh, P()), abstract)
            return jax.jit(init, out_shardings=replicated)(key)
        return jax.pmap(lambda _: init(key), devices=self._pmap_devices)(
            np.arange(self.num_devices)
        )

    def shard_batch(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        """Host batch -> per-device pieces: a sharded global array (jit) or arrays with a
        leading device axis, which pmap splits over the devices as it runs (pmap)."""
        size = len(next(iter(batch.values())))
        local = self.num_devices // (jax.process_count() if self.kind == "jit" else 1)
        if size % local:
            where = " of this process" if jax.process_count() > 1 else ""
            raise ValueError(
                f"batch_size={size} is not divisible by the {local} devices{where}; "
                f"use a multiple of {local}"
            )
        if self.kind == "jit":
            sharding = NamedSharding(self.mesh, P(AXIS))
            return {
                k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()
            }
        n = self.num_devices
        return {k: np.reshape(v, (n, -1, *np.shape(v)[1:])) for k, v in batch.items()}

    def train_step(self, step: Callable[..., Any]) -> Callable[..., Any]:
        """The pure `step(state, batch) -> (state, metric sums)`, run on all devices. The state
        argument is donated: its buffers are reused for the new state."""
        if self.kind == "jit":
            return jax.jit(step, donate_argnums=0)

        def on_device(state, batch):
            state, sums = step(state, batch)
            return state, jax.lax.psum(sums, AXIS)

        pmapped = jax.pmap(on_device, axis_name=AXIS, devices=self._pmap_devices, donate_argnums=0)

        def run(state, batch):
            state, sums = pmapped(state, batch)
            return state, _first_copy(sums)

        return run

    def eval_step(self, step: Callable[..., Any]) -> Callable[..., Any]:
        if self.kind == "jit":
            return jax.jit(step)
        pmapped = jax.pmap(
            lambda s, b: jax.lax.psum(step(s, b), AXIS), axis_name=AXIS, devices=self._pmap_devices
        )
        return lambda state, batch: _first_copy(pmapped(state, batch))

    def replicate(self, state: Any) -> Any:
        """A single copy (restored from a checkpoint, say) placed for this parallelism: as it
        is under jit (restoring already gave it its shardings), one copy per device under pmap."""
        if self.kind == "jit":
            return state
        # An unmapped input returned from pmap comes back as one copy per device, placed the
        # way pmap expects its inputs (a broadcast array passed in mapped is not).
        copies = jax.pmap(lambda s, _: s, in_axes=(None, 0), devices=self._pmap_devices)
        return copies(state, np.arange(self.num_devices))

    def unreplicate(self, state: Any) -> Any:
        """A single copy of a (possibly pmap-replicated) state."""
        return state if self.kind == "jit" else _first_copy(state)


def _first_copy(tree: Any) -> Any:
    """Device 0's copy of a pmap output (replicated state, or psum'd sums)."""
    return jax.tree_util.tree_map(lambda x: x[0], tree)


def make_parallel(kind: str = "jit", num_devices: int | None = None) -> Parallel:
    """`kind` "jit" or "pmap" over the first `num_devices` local devices (default: all)."""
    if kind not in PARALLEL:
        raise ValueError(f"parallel={kind!r} is not one of {PARALLEL}")
    # jit spans every process's devices (one global mesh); pmap runs over this process's own
    # devices, and its collectives reach the other processes' by themselves.
    devices = jax.devices() if kind == "jit" else jax.local_devices()
    if num_devices is not None and jax.process_count() > 1:
        raise ValueError(f"num_devices={num_devices} can only be set with a single process")
    if num_devices is not None and not 1 <= num_devices <= len(devices):
        raise ValueError(f"num_devices={num_devices} must be in [1, {len(devices)}]")
    return Parallel(kind, tuple(devices[: num_devices or len(devices)]))
