"""resflax: every published ResNet as pure Flax modules, and the system to train them.

`import resflax` pulls in jax and flax only; training, data and conversion live in subpackages
that are imported on demand.
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

__version__ = "0.1.0"

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
