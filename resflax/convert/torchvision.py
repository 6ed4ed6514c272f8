"""torchvision ResNet / ResNeXt / Wide ResNet (and timm's ResNet-C/D and SE-ResNet, which share
torchvision's names) state dicts <-> resflax variables.

The name table is derived from resflax's stable submodule names: `stem/conv` <-> `conv1`,
`stem/norm` <-> `bn1`, `stage{i}/block{j}/conv{k}` <-> `layer{i}.{j}.conv{k}`, `norm{k}` <->
`bn{k}`, `proj_conv`/`proj_norm` <-> `downsample.0`/`downsample.1`, `head/fc` <-> `fc`.
timm's additions: the deep stem `stem/conv{1,2,3}`, `stem/norm{1,2}` <-> `conv1.{0,3,6}`,
`conv1.{1,4}` with `stem/norm3` <-> `bn1`; average-pool shortcuts (ResNet-D) put their conv and
norm at `downsample.1`/`.2` (`.0` is the pooling); squeeze-excitation `se/fc{1,2}` <-> `se.fc{1,2}`
(1x1 convolutions with bias there, dense layers here).
Layouts: conv OIHW <-> HWIO (transpose 2, 3, 1, 0), dense (out, in) <-> (in, out), 1x1 conv
(out, in, 1, 1) <-> dense (in, out); BatchNorm weight/bias <-> scale/bias, running_mean/var <->
mean/var. Every tensor's shape is checked.
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
_SE = re.compile(r"stage(\d+)/block(\d+)/se/(fc\d)$")
_DEEP_STEM = {
    "stem/conv1": ("conv1.0", "conv"), "stem/norm1": ("conv1.1", "norm"),
    "stem/conv2": ("conv1.3", "conv"), "stem/norm2": ("conv1.4", "norm"),
    "stem/conv3": ("conv1.6", "conv"), "stem/norm3": ("bn1", "norm"),
}  # fmt: skip


def _v2_key(where: str, leaf: str) -> str:
    """timm's pre-activation `resnetv2_*` names."""
    norm_leaf = _NORM.get(leaf, leaf)
    if where == "stem/conv":
        return "stem.conv.weight"
    if where == "final_norm":
        return f"norm.{norm_leaf}"
    if where == "head/fc":
        return f"head.fc.{'weight' if leaf == 'kernel' else 'bias'}"
    if m := _BLOCK.match(where):
        stage, block, kind, k = m.groups()
        tail = "weight" if kind == "conv" else norm_leaf
        return f"stages.{int(stage) - 1}.blocks.{block}.{kind}{k}.{tail}"
    if (m := _PROJ.match(where)) and m.group(3) == "conv":
        return f"stages.{int(m.group(1)) - 1}.blocks.{m.group(2)}.downsample.conv.weight"
    raise ValueError(f"resflax variable {where}/{leaf} has no timm resnetv2 counterpart")


def torchvision_key(path: tuple[str, ...], avg_down: bool = False, v2: bool = False) -> str:
    """resflax variable path (module path + leaf) -> torchvision/timm state-dict key.
    `avg_down`: the model's shortcuts pool first (ResNet-D), shifting their indices by one.
    `v2`: timm's pre-activation layout (`stem.conv`, `stages.I.blocks.J`, `norm`, `head.fc`)."""
    *module, leaf = path
    where = "/".join(module)
    if v2:
        return _v2_key(where, leaf)
    if where == "stem/conv":
        base, kind = "conv1", "conv"
    elif where == "stem/norm":
        base, kind = "bn1", "norm"
    elif where in _DEEP_STEM:
        base, kind = _DEEP_STEM[where]
    elif m := _SE.match(where):
        stage, block, fc = m.groups()
        return f"layer{stage}.{block}.se.{fc}.{'weight' if leaf == 'kernel' else 'bias'}"
    elif where == "head/fc":
        return f"fc.{'weight' if leaf == 'kernel' else 'bias'}"
    elif m := _BLOCK.match(where):
        stage, block, kind, k = m.groups()
        base = f"layer{stage}.{block}.{'conv' if kind == 'conv' else 'bn'}{k}"
    elif m := _PROJ.match(where):
        stage, block, kind = m.groups()
        base = f"layer{stage}.{block}.downsample.{(0 if kind == 'conv' else 1) + avg_down}"
    else:
        raise ValueError(
            f"resflax variable {'/'.join(path)!r} has no torchvision/timm counterpart (the "
            "pre-activation and scanned forms are not in this layout)"
        )
    return f"{base}.weight" if kind == "conv" else f"{base}.{_NORM[leaf]}"


def _to_flax(path: tuple[str, ...], value: np.ndarray, ndim: int) -> np.ndarray:
    if path[-1] == "kernel" and value.ndim == 4 and ndim == 2 and value.shape[2:] == (1, 1):
        return np.transpose(value[:, :, 0, 0])  # 1x1 conv (out, in, 1, 1) -> dense (in, out)
    if path[-1] == "kernel" and value.ndim == 4:
        return np.transpose(value, (2, 3, 1, 0))  # OIHW -> HWIO
    if path[-1] == "kernel" and value.ndim == 2:
        return np.transpose(value)  # (out, in) -> (in, out)
    return value


def _to_torch(path: tuple[str, ...], value: np.ndarray, v2: bool = False) -> np.ndarray:
    if path[-1] == "kernel" and value.ndim == 2 and ("se" in path or v2):
        return np.transpose(value)[:, :, None, None]  # dense -> timm's 1x1 conv
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


def _is_v2(flat: dict[tuple[str, ...], Any]) -> bool:
    # Only the pre-activation form has a norm after the last stage.
    return any(path[:2] == ("params", "final_norm") for path in flat)


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
    # ResNet-D shortcuts (avg-pool, then conv + norm) shift the downsample indices by one.
    avg_down = any(k.endswith("downsample.2.weight") for k in state_dict)
    v2 = _is_v2(flat)
    out: dict[tuple[str, ...], Any] = {}
    used, missing, shapes = set(), [], []
    for full, like in flat.items():
        key = torchvision_key(full[1:], avg_down, v2)
        if skipped(key):
            if isinstance(like, jax.ShapeDtypeStruct):
                raise ValueError(f"skipped key {key!r} needs a concrete target to keep")
            out[full] = like
            continue
        if key not in state_dict:
            missing.append(key)
            continue
        value = _to_flax(full, np.asarray(state_dict[key]), len(like.shape))
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


def export_torchvision(variables: Any, *, avg_down: bool = False) -> dict[str, np.ndarray]:
    """The inverse: a state dict `torchvision.models.<name>()` (or timm's model, with
    `avg_down=True` for ResNet-D shortcuts) loads strictly (num_batches_tracked included, 0)."""
    state: dict[str, np.ndarray] = {}
    flat = _flat_variables(variables)
    v2 = _is_v2(flat)
    for full, value in flat.items():
        key = torchvision_key(full[1:], avg_down, v2)
        state[key] = np.ascontiguousarray(_to_torch(full, np.asarray(value), v2))
        if key.endswith(".running_var"):
            state[key.replace("running_var", "num_batches_tracked")] = np.array(0, np.int64)
    return state
