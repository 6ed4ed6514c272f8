"""A checkpoint's state tree as stored, compared with the tree a run restores into before any
array is read: the run's own layout restores as it is, an older pmap run's layout is restored
and converted (`legacy_pmap`), and anything else is refused with `LayoutMismatch` naming the
difference. Without this check orbax reports a mismatched tree as an unreadable step, which
would be taken for damage."""

from __future__ import annotations

from typing import Any

import numpy as np
import optax
import orbax.checkpoint as ocp

# {path as orbax names it on disk: (shape, dtype) of an array, or None for an empty node}.
Layout = dict[tuple[str, ...], tuple[tuple[int, ...], str] | None]


class LayoutMismatch(ValueError):
    """A checkpoint whose state tree is not the run's: another model, optimizer or version."""


def _entry(value: Any) -> tuple[tuple[int, ...], str] | None:
    shape = getattr(value, "shape", None)
    return None if shape is None else (tuple(shape), str(np.dtype(value.dtype)))


def _flat(tree: Any) -> Layout:
    # Empty nodes (optax's EmptyState, an empty dict) are part of the structure orbax checks.
    flat = ocp.tree.to_flat_dict(tree, keep_empty_nodes=True)
    return {tuple(str(k) for k in path): _entry(v) for path, v in flat.items()}


def of_target(target: Any) -> Layout:
    """The layout of a restore target (a tree of arrays or ShapeDtypeStructs), serialised as
    orbax stores it: named tuples as dicts, tuples as lists."""
    return _flat(ocp.tree.serialize_tree(target, keep_empty_nodes=True))


def of_stored(metadata: Any) -> Layout:
    """The layout of a stored pytree, from its orbax metadata (`handler.metadata(dir).tree`)."""
    return _flat(metadata)


def legacy_pmap(arrays: dict[str, Any]) -> dict[str, Any]:
    """The tree an older pmap run saved for `arrays`' run.

    Legacy: until this change pmap averaged gradients with a transform chained in front of the
    optimizer (`optax.chain(pmean_gradients(), tx)`), whose `EmptyState` made the saved
    opt_state `(EmptyState(), opt_state)`. pmap now averages inside the update, as shard_map
    does, and stores jit's tree. Remove this (and its use in checkpoint.py and its test) once no
    workdir written by such a run needs resuming."""
    return {**arrays, "opt_state": (optax.EmptyState(), arrays["opt_state"])}


def drop_legacy_slot(arrays: dict[str, Any]) -> dict[str, Any]:
    """`legacy_pmap`'s inverse: the restored arrays without the empty slot."""
    return {**arrays, "opt_state": arrays["opt_state"][1]}


def _names(paths: list[tuple[str, ...]]) -> str:
    shown = ", ".join("/".join(p) for p in paths[:2])
    return shown + (f" and {len(paths) - 2} more" if len(paths) > 2 else "")


def _show(entry: tuple[tuple[int, ...], str] | None) -> str:
    return "an empty node" if entry is None else f"{entry[1]}{list(entry[0])}"


def describe(stored: Layout, expected: Layout) -> str:
    """The differences between two layouts, in one line."""
    parts = []
    if extra := sorted(stored.keys() - expected.keys()):
        parts.append(f"only in the checkpoint: {_names(extra)}")
    if missing := sorted(expected.keys() - stored.keys()):
        parts.append(f"only in this run's state: {_names(missing)}")
    changed = sorted(k for k in stored.keys() & expected.keys() if stored[k] != expected[k])
    for path in changed[:2]:
        parts.append(
            f"{'/'.join(path)} is {_show(stored[path])} there, {_show(expected[path])} here"
        )
    if len(changed) > 2:
        parts.append(f"{len(changed) - 2} more shapes or dtypes differ")
    return "; ".join(parts)


def choose(stored: Layout, target: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """The restore target matching `stored`: `target` (False) or its legacy pmap form (True).
    Raises `LayoutMismatch` (the differences from `target`'s layout) for any other layout."""
    expected = of_target(target)
    if stored == expected:
        return target, False
    legacy = legacy_pmap(target)
    if stored == of_target(legacy):
        return legacy, True
    raise LayoutMismatch(describe(stored, expected))
