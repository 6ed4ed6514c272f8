"""`config.init_from`: start training from converted weights (`python -m resflax.convert`).
Everything is loaded except a classifier whose class count differs, which keeps its fresh
initialisation; any other missing or misshapen tensor is an error listing it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax.traverse_util import flatten_dict, unflatten_dict

HEAD = ("head", "fc")


def check_not_a_file(path: str | Path) -> None:
    """Refuses a weights file given as it came (.pth, .safetensors): only the converter reads
    those, so that a pickle is never opened by training (and a resumed run's check is cheap)."""
    if Path(path).is_file():
        raise ValueError(
            f"init_from={str(path)!r} is a file; convert it first (it is not read here): "
            f"python -m resflax.convert --model <name> --src {path} --dst <dir>, then "
            "init_from=<dir>"
        )


def load(path: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(variables as numpy, meta) from a `python -m resflax.convert` output directory."""
    import orbax.checkpoint as ocp

    check_not_a_file(path)
    root = Path(path).absolute()
    if not (root / "meta.json").is_file() or not (root / "variables").is_dir():
        raise ValueError(
            f"init_from={str(path)!r} is not a converted checkpoint (no meta.json + variables); "
            "make one with `python -m resflax.convert`"
        )
    meta = json.loads((root / "meta.json").read_text())
    checkpointer = ocp.StandardCheckpointer()
    # Not the SingleDeviceSharding constructor, which jax 0.12.1 deprecates.
    device = jax.sharding.make_single_device_sharding(jax.local_devices()[0])
    target = jax.tree.map(
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device),
        checkpointer.metadata(root / "variables").item_metadata,
    )
    variables = jax.tree.map(np.asarray, checkpointer.restore(root / "variables", target))
    return dict(variables), meta


def merge(state: Any, variables: dict[str, Any], model_name: str, meta: dict[str, Any]) -> Any:
    """`state` (a single, unreplicated TrainState) with its params and batch_stats replaced by
    `variables`, placed like the state's own arrays; the head is kept when its shape differs."""
    if meta["model"] != model_name:
        raise ValueError(
            f"init_from holds {meta['model']!r} weights, but config.model.name={model_name!r}"
        )
    out = {}
    for collection in ("params", "batch_stats"):
        mine = flatten_dict(dict(getattr(state, collection)))
        theirs = flatten_dict(dict(variables.get(collection, {})))
        merged, problems = {}, []
        for path, own in mine.items():
            loaded = theirs.get(path)
            if path[:2] == HEAD and (loaded is None or loaded.shape != own.shape):
                merged[path] = own  # a new classifier: keep its initialisation
            elif loaded is None:
                problems.append(f"missing {'/'.join(path)}")
            elif loaded.shape != own.shape:
                problems.append(f"{'/'.join(path)}: {loaded.shape} != {own.shape}")
            else:
                merged[path] = jax.device_put(loaded.astype(own.dtype), own.sharding)
        extra = sorted("/".join(p) for p in set(theirs) - set(mine))
        if problems or extra:
            raise ValueError(
                f"init_from does not fit the model ({collection}): {problems[:6]}"
                + (f"; unexpected {extra[:6]}" if extra else "")
            )
        out[collection] = unflatten_dict(merged)
    return state.replace(**out)
