"""Pure flax.linen residual networks: the architecture only. Imports jax and flax (and
`resflax.ops`, the execution policy handed in from outside, which itself imports jax only)."""

from resflax.models.blocks import (
    BasicBlock,
    BottleneckBlock,
    PreActBasicBlock,
    PreActBottleneckBlock,
    ResidualBlock,
)
from resflax.models.cost import Cost, cost, count_macs, count_params
from resflax.models.heads import Head
from resflax.models.layers import SqueezeExcite, make_conv
from resflax.models.norms import BatchNorm, make_norm
from resflax.models.registry import ModelEntry, create_model, get_entry, list_models
from resflax.models.resnet import ResNet
from resflax.models.stages import Stage, stack_blocks, unstack_blocks
from resflax.models.stems import Stem

__all__ = [
    "BasicBlock",
    "BatchNorm",
    "BottleneckBlock",
    "Cost",
    "Head",
    "ModelEntry",
    "PreActBasicBlock",
    "PreActBottleneckBlock",
    "ResNet",
    "ResidualBlock",
    "SqueezeExcite",
    "Stage",
    "Stem",
    "cost",
    "count_macs",
    "count_params",
    "create_model",
    "get_entry",
    "list_models",
    "make_conv",
    "make_norm",
    "stack_blocks",
    "unstack_blocks",
]
