"""resflax: every published ResNet as pure Flax modules, and the system to train them.

`import resflax` pulls in jax and flax only; training, data and conversion live in subpackages
that are imported on demand, and need the extras that install them (resflax/extras.py).
"""

from resflax import ops
from resflax.models import (
    BasicBlock,
    BottleneckBlock,
    PreActBasicBlock,
    PreActBottleneckBlock,
    ResNet,
    Stage,
    cost,
    create_model,
    list_models,
    stack_blocks,
    unstack_blocks,
)


def _version() -> str:
    """The installed distribution's version (pyproject.toml's, as pip recorded it); in a source
    checkout that is not installed, the one its pyproject.toml declares."""
    from importlib import metadata

    try:
        return metadata.version("resflax")
    except metadata.PackageNotFoundError:
        import tomllib
        from pathlib import Path

        pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
        try:
            return tomllib.loads(pyproject.read_text())["project"]["version"]
        except (OSError, KeyError, tomllib.TOMLDecodeError):
            return "0+unknown"


__version__ = _version()

__all__ = [
    "BasicBlock",
    "BottleneckBlock",
    "PreActBasicBlock",
    "PreActBottleneckBlock",
    "ResNet",
    "Stage",
    "__version__",
    "cost",
    "create_model",
    "list_models",
    "ops",
    "stack_blocks",
    "unstack_blocks",
]
