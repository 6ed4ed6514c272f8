"""Data parallelism around the pure step: `jit` over a device mesh (default), `shard_map`
over the same mesh, or `pmap`.

jit: one `Mesh` with a `data` axis; batches are sharded along it, the state is replicated, and
XLA inserts the collectives. BatchNorm statistics are over the global batch with no
`axis_name`, because the model sees the whole (sharded) array.
shard_map: the same mesh, global arrays and replicated state as jit, but the step is written
per device: each device runs the pure step on its piece of the batch, the model uses BatchNorm
`axis_name=AXIS`, gradients are averaged by a `pmean` inside the optimizer's update and metric
sums are `psum`med. The collectives are the ones written here, not the compiler's choice.
pmap: the state is replicated with a leading device axis; gradients are averaged by a
`pmean` inside the optimizer's update as under shard_map, metric sums are `psum`med, and the
model must use BatchNorm `axis_name=AXIS` for the same synchronised statistics. Kept for
compatibility: pmap is in maintenance mode since jax 0.8; shard_map is its successor.

All three keep one state tree (pmap's copies only add the leading axis, which `replicate` and
`unreplicate` handle), so a checkpoint written under any of them resumes under any other.
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

PARALLEL = ("jit", "pmap", "shard_map")
AXIS = "data"


def pmean_before(
    tx: optax.GradientTransformation, axis_name: str = AXIS
) -> optax.GradientTransformation:
    """`tx` updating with gradients averaged over `axis_name`. Unlike chaining an averaging
    transform in front of `tx` (which older pmap runs did), it adds no slot to the optimizer
    state: the state has jit's exact structure, so checkpoints move between the drivers."""

    def update(updates, state, params=None):
        return tx.update(jax.lax.pmean(updates, axis_name), state, params)

    return optax.GradientTransformation(tx.init, update)


def _psum_metrics(step: Callable[..., Any]) -> Callable[..., Any]:
    """The train step on one device, its metric sums added over all devices."""

    def on_device(state, batch):
        state, sums = step(state, batch)
        return state, jax.lax.psum(sums, AXIS)

    return on_device


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
    def axis_name(self) -> str | None:
        """The model's BatchNorm `axis_name`: the step runs per device under pmap and
        shard_map, so statistics must be averaged over AXIS; jit's model sees the global batch."""
        return None if self.kind == "jit" else AXIS

    @property
    def _on_mesh(self) -> bool:
        # jit and shard_map: the state and batches are global arrays on the mesh.
        return self.kind != "pmap"

    @property
    def global_devices(self) -> int:
        """Devices sharing a global batch: the mesh's, or every process's own (pmap)."""
        return self.num_devices * (1 if self._on_mesh else jax.process_count())

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
        """`tx` as this parallelism needs it: under pmap and shard_map each device has only
        its own gradients, averaged here before the update; jit's are already global."""
        return tx if self.kind == "jit" else pmean_before(tx)

    def create_state(self, init: Callable[[jax.Array], Any], key: jax.Array) -> Any:
        """Builds the state where it lives: from shapes, without a full host copy (on the
        mesh), or replicated along a leading device axis (pmap)."""
        if self._on_mesh:
            abstract = jax.eval_shape(init, key)
            replicated = jax.tree_util.tree_map(lambda _: NamedSharding(self.mesh, P()), abstract)
            return jax.jit(init, out_shardings=replicated)(key)
        return jax.pmap(lambda _: init(key), devices=self._pmap_devices)(
            np.arange(self.num_devices)
        )

    @property
    def batch_sharding(self) -> NamedSharding | None:
        """How a batch lies on the mesh (its first axis split over AXIS); None under pmap."""
        return NamedSharding(self.mesh, P(AXIS)) if self._on_mesh else None

    def shard_batch(
        self, batch: dict[str, np.ndarray], *, member_axis: bool = False
    ) -> dict[str, Any]:
        """Host batch -> per-device pieces: a sharded global array (on the mesh) or arrays
        with a leading device axis, which pmap splits over the devices as it runs (pmap).
        `member_axis`: a population's batches stacked per member ([K, batch, ...], on the
        mesh): the batch axis is sharded, the member axis is not."""
        size = np.shape(next(iter(batch.values())))[1 if member_axis else 0]
        local = self.num_devices // (jax.process_count() if self._on_mesh else 1)
        if size % local:
            where = " of this process" if jax.process_count() > 1 else ""
            raise ValueError(
                f"batch_size={size} is not divisible by the {local} devices{where}; "
                f"use a multiple of {local}"
            )
        if self._on_mesh:
            sharding = NamedSharding(self.mesh, P(None, AXIS) if member_axis else P(AXIS))
            # A global array already on the mesh (DALI on the GPU) is passed through.
            return {
                k: v if isinstance(v, jax.Array) and v.sharding == sharding
                else jax.make_array_from_process_local_data(sharding, v)
                for k, v in batch.items()
            }  # fmt: skip
        n = self.num_devices
        return {k: np.reshape(v, (n, -1, *np.shape(v)[1:])) for k, v in batch.items()}

    def _per_device(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """`fn(state, batch)` run by every device of the mesh on its piece of the batch, the
        state replicated; its outputs must be the same on every device (reduced by `fn`)."""
        # check_vma=False: with the default (True), autodiff already sums the gradient of a
        # replicated (P()) parameter over the axis (the transpose of its implicit broadcast)
        # and `pmean` of that summed value is the identity, so the update would use N times
        # the mean gradient. Off, the step sees each device's own gradient, as under pmap,
        # and reduces it explicitly; out_specs P() is then trusted, not checked (the parity
        # test holds it to jit's result). tests/train/test_parallel.py pins both behaviours.
        return jax.shard_map(
            fn, mesh=self.mesh, in_specs=(P(), P(AXIS)), out_specs=P(), check_vma=False
        )

    def train_step(self, step: Callable[..., Any]) -> Callable[..., Any]:
        """The pure `step(state, batch) -> (state, metric sums)`, run on all devices. The state
        argument is donated: its buffers are reused for the new state."""
        if self.kind == "jit":
            return jax.jit(step, donate_argnums=0)
        if self.kind == "shard_map":
            return jax.jit(self._per_device(_psum_metrics(step)), donate_argnums=0)
        pmapped = jax.pmap(
            _psum_metrics(step), axis_name=AXIS, devices=self._pmap_devices, donate_argnums=0
        )

        def run(state, batch):
            state, sums = pmapped(state, batch)
            return state, _first_copy(sums)

        return run

    def eval_step(self, step: Callable[..., Any]) -> Callable[..., Any]:
        if self.kind == "jit":
            return jax.jit(step)

        def summed(state, batch):
            return jax.lax.psum(step(state, batch), AXIS)

        if self.kind == "shard_map":
            return jax.jit(self._per_device(summed))
        pmapped = jax.pmap(summed, axis_name=AXIS, devices=self._pmap_devices)
        return lambda state, batch: _first_copy(pmapped(state, batch))

    def replicate(self, state: Any) -> Any:
        """A single copy (restored from a checkpoint, say) placed for this parallelism: as it
        is on the mesh (restoring already gave it its shardings), one copy per device under
        pmap."""
        if self._on_mesh:
            return state
        # An unmapped input returned from pmap comes back as one copy per device, placed the
        # way pmap expects its inputs (a broadcast array passed in mapped is not).
        copies = jax.pmap(lambda s, _: s, in_axes=(None, 0), devices=self._pmap_devices)
        return copies(state, np.arange(self.num_devices))

    def unreplicate(self, state: Any) -> Any:
        """A single copy of a (possibly pmap-replicated) state."""
        return state if self._on_mesh else _first_copy(state)


def _first_copy(tree: Any) -> Any:
    """Device 0's copy of a pmap output (replicated state, or psum'd sums)."""
    return jax.tree_util.tree_map(lambda x: x[0], tree)


def make_parallel(kind: str = "jit", num_devices: int | None = None) -> Parallel:
    """`kind` one of PARALLEL over the first `num_devices` local devices (default: all)."""
    if kind not in PARALLEL:
        raise ValueError(f"parallel={kind!r} is not one of {PARALLEL}")
    # jit and shard_map span every process's devices (one global mesh); pmap runs over this
    # process's own devices, and its collectives reach the other processes' by themselves.
    devices = jax.local_devices() if kind == "pmap" else jax.devices()
    if num_devices is not None and jax.process_count() > 1:
        raise ValueError(f"num_devices={num_devices} can only be set with a single process")
    if num_devices is not None and not 1 <= num_devices <= len(devices):
        raise ValueError(f"num_devices={num_devices} must be in [1, {len(devices)}]")
    return Parallel(kind, tuple(devices[: num_devices or len(devices)]))
