"""The optional parts of resflax and the extras that install them (pyproject.toml).

`pip install resflax` installs the core: jax, flax and numpy, enough for `import resflax`, the
models, the execution policies and `resflax.nnx`. Training (`resflax.train`, `resflax.data`,
`python -m resflax.main`) needs the `train` extra; reading weight files needs `convert` (or, for
`.safetensors` alone, `train`); the DALI input pipeline (`data.pipeline="dali"`) needs `dali`.
A part reached without its extra fails where it is entered, in one line naming the extra,
rather than with a ModuleNotFoundError from somewhere inside.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Sequence

# The modules each extra provides that resflax imports (import names, not package names).
MODULES = {
    "train": ("optax", "orbax.checkpoint", "absl", "ml_collections", "tensorflow",
              "tensorflow_datasets", "tensorboard", "sklearn", "matplotlib", "safetensors"),
    "convert": ("safetensors", "torch"),
    "dali": ("nvidia.dali", "PIL"),
}  # fmt: skip
# Modules of an extra that only some paths import, checked where those paths start rather than
# on entry: the DALI input pipeline trains without TensorFlow (a GPU host may not have it).
ON_USE = {"train": ("tensorflow", "tensorflow_datasets")}
INSTALL = {
    "train": "pip install 'resflax[train]' (in a checkout: make install)",
    "convert": "pip install 'resflax[convert]' (in a checkout: make install-convert)",
    # dali: the CUDA 13 build (as jax[cuda13]); resflax[dali-cuda12] beside jax[cuda12].
    "dali": "pip install 'resflax[dali]' (in a checkout: make install-dali)",
}


class MissingExtra(ImportError):
    """A part of resflax was reached without the extra that installs what it imports."""


def installed(module: str) -> bool:
    """Whether `module` can be imported (found on the path; nothing is imported but the
    parents of a dotted name). A module blocked with `sys.modules[name] = None` is not."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a missing parent package; a broken __spec__
        return False


def missing(extra: str) -> list[str]:
    """The modules of `extra` that are not installed."""
    return [m for m in MODULES[extra] if not installed(m)]


def message(extra: str, what: str, modules: Sequence[str]) -> str:
    """The one line: what needs which modules, and the command that installs them."""
    verb = "is" if len(modules) == 1 else "are"
    return f"{what} needs {', '.join(modules)}, which {verb} not installed: {INSTALL[extra]}"


def require(
    extra: str, what: str, *, modules: Sequence[str] | None = None, command_line: bool = False
) -> None:
    """Raises MissingExtra (an ImportError) naming `extra` when any of its modules is missing;
    for a command line (`command_line=True`), prints `resflax: error: <that line>` and exits
    with status 1 instead."""
    if modules is None:
        modules = [m for m in MODULES[extra] if m not in ON_USE.get(extra, ())]
    gone = [m for m in modules if not installed(m)]
    if not gone:
        return
    text = message(extra, what, gone)
    if command_line:
        print(f"resflax: error: {text}", file=sys.stderr, flush=True)
        sys.exit(1)
    raise MissingExtra(text)
