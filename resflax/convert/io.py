"""Reading state dicts as name -> numpy array, never unpickling arbitrary objects."""

from __future__ import annotations

from pathlib import Path

import numpy as np

FORMATS = (".safetensors", ".pth", ".pt", ".bin")


def read_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """`.safetensors` (read without torch) or a torch checkpoint (`torch.load(weights_only=True)`,
    which refuses pickled code; a checkpoint holding anything but tensors is refused too)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"weights file {str(path)!r} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.numpy import load_file

        return dict(load_file(str(path)))
    if path.suffix not in FORMATS:
        raise ValueError(f"weights file {path.name!r}: unknown format; valid: {FORMATS}")
    import torch

    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises UnpicklingError (and others) for refused content
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"{path.name}: refused by torch.load(weights_only=True): {first}") from e
    if (
        isinstance(loaded, dict)
        and "state_dict" in loaded
        and isinstance(loaded["state_dict"], dict)
    ):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, dict):
        raise ValueError(f"{path.name} holds a {type(loaded).__name__}, not a state dict")
    bad = sorted(k for k, v in loaded.items() if not isinstance(v, torch.Tensor))
    if bad:
        raise ValueError(f"{path.name}: entries that are not tensors: {bad[:5]}")
    return {k: v.detach().cpu().numpy() for k, v in loaded.items()}
