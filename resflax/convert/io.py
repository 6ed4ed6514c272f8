"""Reading state dicts as name -> numpy array, never unpickling arbitrary objects."""

from __future__ import annotations

import pickle
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from resflax.extras import INSTALL

FORMATS = (".safetensors", ".pth", ".pt", ".bin")


def read_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """`.safetensors` (read without torch) or a torch checkpoint (`torch.load(weights_only=True)`,
    which refuses pickled code; a checkpoint holding anything but tensors is refused too)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"weights file {str(path)!r} does not exist")
    if path.suffix == ".safetensors":
        return _read_safetensors(path)
    if path.suffix not in FORMATS:
        raise ValueError(f"weights file {path.name!r}: unknown format; valid: {FORMATS}")
    try:
        import torch
    except ImportError as e:
        raise ValueError(
            f"weights file {str(path)!r}: reading {path.suffix} needs torch, which is not "
            f"installed: {INSTALL['convert']}; or give a .safetensors file"
        ) from e
    loaded = _torch_load(torch, path)
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


def _read_safetensors(path: Path) -> dict[str, np.ndarray]:
    try:
        from safetensors.numpy import load_file
    except ImportError as e:
        raise ValueError(
            f"weights file {str(path)!r}: reading .safetensors needs safetensors, which is not "
            f"installed: {INSTALL['convert']}, or the train extra"
        ) from e
    try:
        return dict(load_file(str(path)))
    except Exception as e:  # SafetensorError, or OSError/ValueError for odd files
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(
            f"weights file {str(path)!r} is not a readable .safetensors file (truncated or "
            f"another format?): {reason}"
        ) from e


def _torch_load(torch: Any, path: Path) -> Any:
    """`torch.load(weights_only=True)`: tensors and plain containers only. Pickled objects
    (whose unpickling could run code) are refused before any of them is built."""
    try:
        with warnings.catch_warnings():
            # "Detected pickle protocol 4 ...": the refusal below says what matters.
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # torch's own text goes on to say how to load the file unsafely: not repeated here.
        # torch names the refused global one of two ways, by whether its module is blocked.
        found = re.search(r"(?:Unsupported global: |unsupported )GLOBAL (\S+)", str(e))
        if found:
            what = (
                f"it holds a pickled {found.group(1)}, not only tensors (unpickling it could run "
                "code); save the model's state_dict() alone, or convert it to .safetensors"
            )
        else:
            what = (
                "not a state dict written by torch.save (damaged, another format, or objects "
                "pickled another way); nothing in it was run"
            )
        raise ValueError(f"{path.name}: refused by torch.load(weights_only=True): {what}") from e
    except Exception as e:  # RuntimeError for a damaged zip archive, EOFError, ...
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(
            f"weights file {str(path)!r} is not a readable torch checkpoint (truncated or "
            f"another format?): {reason}"
        ) from e
