"""torchvision ResNet / ResNeXt / Wide ResNet state dicts <-> resflax variables.

The name table is derived from resflax's stable submodule names: `stem/conv` <-> `conv1`,
`stem/norm` <-> `bn1`, `stage{i}/block{j}/conv{k}` <-> `layer{i}.{j}.conv{k}`, `norm{k}` <->
`bn{k}`, `proj_conv`/`proj_norm` <-> `downsample.0`/`downsample.1`, `head/fc` <-> `fc`.
Layouts: conv OIHW <-> HWIO (transpose 2, 3, 1, 0), dense (out, in) <-> (in, out); BatchNorm
weight/bias <-> scale/bias, running_mean/var <-> mean/var. Every tensor's shape is checked.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import jax
import numpy as np
from flax.traverse_util import flatten_dict, unflatten_dict

_NORM = {"scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var"}
_BLOCK = re.compile(r"stage(\d+)/block(\d+)/(conv|norm)(\d+)$")
_PROJ = re.compile(r"stage(\d+)/block(\d+)/proj_(conv|norm)$")


def torchvision_key(path: tuple[str, ...]) -> str:
    """resflax variable path (module path + leaf) -> torchvision state-dict key."""
    *module, leaf = path
    where = "/".join(module)
    if where == "stem/conv":
        base, kind = "conv1", "conv"
    elif where == "stem/norm":
        base, kind = "bn1", "norm"
    elif where == "head/fc":
        return f"fc.{'weight' if leaf == 'kernel' else 'bias'}"
    elif m := _BLOCK.match(where):
        stage, block, kind, k = m.groups()
        base = f"layer{stage}.{block}.{'conv' if kind == 'conv' else 'bn'}{k}"
    elif m := _PROJ.match(where):
        stage, block, kind = m.groups()
        base = f"layer{stage}.{block}.downsample.{0 if kind == 'conv' else 1}"
    else:
        raise ValueError(
            f"resflax variable {'/'.join(path)!r} has no torchvision counterpart (torchvision "
            "ResNets have no SE, deep stem, pre-activation, or scanned stages)"
        )
    return f"{base}.weight" if kind == "conv" else f"{base}.{_NORM[leaf]}"


def _to_flax(path: tuple[str, ...], value: np.ndarray) -> np.ndarray:
    if path[-1] == "kernel" and value.ndim == 4:
        return np.transpose(value, (2, 3, 1, 0))  # OIHW -> HWIO
    if path[-1] == "kernel" and value.ndim == 2:
        return np.transpose(value)  # (out, in) -> (in, out)
    return value


def _to_torch(path: tuple[str, ...], value: np.ndarray) -> np.ndarray:
    if path[-1] == "kernel" and value.ndim == 4:
        return np.transpose(value, (3, 2, 0, 1))  # HWIO -> OIHW
    if path[-1] == "kernel" and value.ndim == 2:
        return np.transpose(value)
    return value


def _flat_variables(variables: Any) -> dict[tuple[str, ...], Any]:
    return {
        (collection, *path): value
        for collection in ("params", "batch_stats")
        for path, value in flatten_dict(dict(variables.get(collection, {}))).items()
    }


def import_torchvision(
    state_dict: dict[str, np.ndarray], target: Any, *, skip: Iterable[str] = ()
) -> dict[str, Any]:
    """resflax variables shaped like `target` (a model's variables, concrete or from
    `jax.eval_shape`) filled from a torchvision state dict. Keys starting with a prefix in
    `skip` (e.g. "fc" for a new number of classes) keep `target`'s values, which must then be
    concrete. Missing or unexpected keys and shape mismatches are errors listing them."""
    skip = tuple(skip)
    skipped = lambda key: any(key == s or key.startswith(s + ".") for s in skip)  # noqa: E731
    flat = _flat_variables(target)
    out: dict[tuple[str, ...], Any] = {}
    used, missing, shapes = set(), [], []
    for full, like in flat.items():
        key = torchvision_key(full[1:])
        if skipped(key):
            if isinstance(like, jax.ShapeDtypeStruct):
                raise ValueError(f"skipped key {key!r} needs a concrete target to keep")
            out[full] = like
            continue
        if key not in state_dict:
            missing.append(key)
            continue
        value = _to_flax(full, np.asarray(state_dict[key]))
        if tuple(value.shape) != tuple(like.shape):
            shapes.append(
                f"{key}: {tuple(state_dict[key].shape)} -> {value.shape}, want {like.shape}"
            )
        out[full] = value.astype(like.dtype)
        used.add(key)
    unexpected = sorted(
        k for k in state_dict
        if k not in used and not k.endswith("num_batches_tracked") and not skipped(k)
    )  # fmt: skip
    problems = []
    if missing:
        problems.append(f"missing {len(missing)}: {sorted(missing)[:8]}")
    if unexpected:
        problems.append(f"unexpected {len(unexpected)}: {unexpected[:8]}")
    if shapes:
        problems.append(f"shape mismatches {len(shapes)}: {shapes[:4]}")
    if problems:
        raise ValueError(
            "state dict does not fit the model: " + "; ".join(problems)
            + " (skip=('fc',) keeps the model's own classifier)"
        )  # fmt: skip
    nested = unflatten_dict(out)
    return {c: nested[c] for c in ("params", "batch_stats") if c in nested}


def export_torchvision(variables: Any) -> dict[str, np.ndarray]:
    """The inverse: a state dict `torchvision.models.<name>().load_state_dict` accepts
    (num_batches_tracked included, as 0)."""
    state: dict[str, np.ndarray] = {}
    for full, value in _flat_variables(variables).items():
        key = torchvision_key(full[1:])
        state[key] = np.ascontiguousarray(_to_torch(full, np.asarray(value)))
        if key.endswith(".running_var"):
            state[key.replace("running_var", "num_batches_tracked")] = np.array(0, np.int64)
    return state
