"""Checkpoints with orbax: the training state, the data position and the run's model
fingerprint, saved together per step. A workdir holding another model is refused with a clear
message instead of a shape error deep inside a restore."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from resflax.train.state import TrainState


def _leaves(state: TrainState) -> dict[str, Any]:
    return {
        "step": state.step,
        "params": state.params,
        "batch_stats": state.batch_stats,
        "opt_state": state.opt_state,
        "key": state.key,
    }


def _arrays(state: TrainState) -> dict[str, Any]:
    # Typed PRNG keys are stored as their raw key data; everything else as it is.
    return {**_leaves(state), "key": jax.random.key_data(state.key)}


def _restore_target(target: TrainState) -> dict[str, Any]:
    """Shapes and dtypes of what is stored, placed like `target`'s leaves (shardings kept
    where the target has them, so a replicated or sharded state restores in place)."""
    shapes = jax.eval_shape(_arrays, target)
    return jax.tree_util.tree_map(
        lambda a, t: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=getattr(t, "sharding", None)),
        shapes,
        _leaves(target),
    )


def _state_handler() -> ocp.PyTreeCheckpointHandler:
    """orbax's pytree handler with replica-parallel saving off. That default splits every
    replicated array into one slice per replica and jit-compiles each slice op per shape and
    device: ResNet-20 on 8 devices spent 2.3 s of its first save compiling them (30 arrays on
    8 devices: 10.7 s against 0.09 s without), while a replicated state is written once anyway."""
    arrays = ocp.type_handlers.ArrayHandler(use_replica_parallel=False)
    types = ocp.type_handlers.create_type_handler_registry(
        (jax.Array, arrays), (np.ndarray, ocp.type_handlers.NumpyHandler())
    )
    return ocp.PyTreeCheckpointHandler(type_handler_registry=types)


def _key_impl(key: Any) -> Any:
    if isinstance(key, jax.Array):
        return jax.random.key_impl(key)
    # An abstract target's key (a ShapeDtypeStruct): jax.random has no public accessor for
    # its implementation, so read it off the key dtype.
    return key.dtype._impl


class Checkpointer:
    """Saves under `<workdir>/checkpoints/<step>/{state,data,meta}`, keeping `max_to_keep`.

    `fingerprint` (JSON-able: model name and overrides, say) is written with every step and
    compared on restore, less `legacy_keys` (settings older checkpoints recorded there that no
    longer identify the model). Saves are asynchronous unless `async_save=False`; orbax writes each
    step to a temporary directory and renames it when complete, so an interrupted save never
    becomes the latest step.
    """

    def __init__(
        self,
        workdir: str | Path,
        fingerprint: dict[str, Any],
        *,
        max_to_keep: int = 3,
        async_save: bool = True,
        legacy_keys: tuple[str, ...] = (),
    ) -> None:
        if max_to_keep < 1:
            raise ValueError(f"max_to_keep={max_to_keep} must be at least 1")
        self.workdir = Path(workdir)
        # As JSON will give it back (tuples become lists), so that comparisons are like for like.
        self.fingerprint = json.loads(json.dumps(dict(fingerprint)))
        # Keys older checkpoints' fingerprints may hold that no longer identify a model.
        self.legacy_keys = tuple(legacy_keys)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, enable_async_checkpointing=async_save, create=True
        )
        handlers = ocp.handlers.DefaultCheckpointHandlerRegistry()
        state = _state_handler()
        handlers.add("state", ocp.args.PyTreeSave, state)
        handlers.add("state", ocp.args.PyTreeRestore, state)
        for item in ("data", "meta"):
            handlers.add(item, ocp.args.JsonSave)
            handlers.add(item, ocp.args.JsonRestore)
        self.manager = ocp.CheckpointManager(
            (self.workdir / "checkpoints").absolute(), options=options, handler_registry=handlers
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def check_fingerprint(self) -> None:
        """Raises if the workdir's latest checkpoint was written for a different model."""
        step = self.latest_step()
        if step is None:
            return
        saved = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        theirs = {k: v for k, v in dict(saved["meta"]).items() if k not in self.legacy_keys}
        if theirs != self.fingerprint:
            raise ValueError(
                f"workdir {self.workdir} holds checkpoints of {theirs}, not {self.fingerprint}; "
                "use another --workdir (nothing there was changed)"
            )

    def save(self, state: TrainState, data_position: dict[str, Any]) -> None:
        step = int(jax.device_get(state.step))
        self.manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.PyTreeSave(_arrays(state)),
                data=ocp.args.JsonSave(dict(data_position)),
                meta=ocp.args.JsonSave(self.fingerprint),
            ),
        )

    def restore(self, target: TrainState) -> tuple[TrainState, dict[str, Any]] | None:
        """The latest (state, data position), shaped and placed like `target` (a concrete or
        abstract state: `jax.eval_shape` output with shardings works); None when empty."""
        step = self.latest_step()
        if step is None:
            return None
        self.check_fingerprint()
        stored = _restore_target(target)
        restore_args = ocp.checkpoint_utils.construct_restore_args(stored)
        saved = self.manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.PyTreeRestore(stored, restore_args=restore_args),
                data=ocp.args.JsonRestore(),
            ),
        )
        arrays = dict(saved["state"])
        key = jax.random.wrap_key_data(arrays.pop("key"), impl=_key_impl(target.key))
        state = target.replace(**arrays, key=key)
        return state, dict(saved["data"])

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()
